//! The guards' tables: `[bind]`, `[browsers]` and `[[egress]]`.

use std::collections::HashMap;

use loopwarden_common::{MAX_EGRESS_PREFIXES, MAX_EGRESS_RULES};
use toml::Spanned;

use super::{
    Problems, Validator,
    rules::{cidr, exe_name, name_value, port_range, subject_cgroup},
};
use crate::{
    config::{
        Bind, Browsers, ConfigError, Criteria, Egress, EgressDestination, Located, PortRange,
        PortSet, Problem, Protect,
        raw::{OneOrMany, PortItem, RawBind, RawBrowsers, RawEgress},
    },
    policy::{
        Action,
        egress::{self, Builtin},
    },
};

impl Validator<'_> {
    pub(super) fn bind(
        &self,
        raw: RawBind,
        warnings: &mut Vec<String>,
    ) -> Result<Bind, ConfigError> {
        let mut loopback_only = Vec::new();
        if let Some(ports) = raw.loopback_only {
            let outer = ports.span();
            for (span, item) in ports.into_inner().0 {
                let span = span.unwrap_or_else(|| outer.clone());
                let range = match item {
                    PortItem::Text(text) if text == "all" => Err(Problem::BindAllPorts),
                    item => port_range(item),
                };
                loopback_only.push(range.map_err(|problem| self.invalid(&span, problem))?);
            }
        }
        let bind = Bind {
            loopback_only,
            allow_exe: self.opt_paths("allow_exe", raw.allow_exe)?,
            allow_user: self.opt_values("allow_user", raw.allow_user, |user| {
                name_value("allow_user", user)
            })?,
            allow_uid: self.opt_values("allow_uid", raw.allow_uid, Ok)?,
        };
        let allowed =
            !bind.allow_exe.is_empty() || !bind.allow_user.is_empty() || !bind.allow_uid.is_empty();
        if bind.loopback_only.is_empty() && allowed {
            warnings.push(format!(
                "{}: [bind] lists exemptions but no loopback_only ports, so the bind guard is off",
                self.file
            ));
        }
        Ok(bind)
    }

    pub(super) fn browsers(
        &self,
        raw: RawBrowsers,
        action: Action,
    ) -> Result<Browsers, ConfigError> {
        // Each port's first listing: a later one is an error naming it.
        let mut listed: Vec<(PortRange, &'static str, usize)> = Vec::new();
        let mut list = |name: &'static str, raw: Option<Spanned<OneOrMany<PortItem>>>| {
            let mut ranges = Vec::new();
            let Some(raw) = raw else {
                return Ok(ranges);
            };
            let outer = raw.span();
            for (span, item) in raw.into_inner().0 {
                let span = span.unwrap_or_else(|| outer.clone());
                let range = match item {
                    PortItem::Text(text) if text == "all" => {
                        Err(Problem::BrowsersAllPorts { list: name })
                    }
                    item => port_range(item),
                }
                .map_err(|problem| self.invalid(&span, problem))?;
                let at = self.lines.locate(span.start);
                if let Some((other, first_list, first_line)) = listed
                    .iter()
                    .find(|(r, _, _)| r.first <= range.last && range.first <= r.last)
                {
                    let problem = Problem::BrowsersPortTwice {
                        port: range.first.max(other.first),
                        first_list,
                        first_line: *first_line,
                    };
                    return Err(self.invalid(&span, problem));
                }
                listed.push((range, name, at.line));
                ranges.push(Located { value: range, at });
            }
            Ok(ranges)
        };
        Ok(Browsers {
            action: raw.action.unwrap_or(action),
            deny: list("deny", raw.deny)?,
            audit: list("audit", raw.audit)?,
            allow: list("allow", raw.allow)?,
            exe_name: self.opt_values("exe_name", raw.exe_name, exe_name)?,
            exe: self.opt_paths("exe", raw.exe)?,
        })
    }

    /// The `[[egress]]` tables, with the limits that span them: names
    /// unique, at most [`MAX_EGRESS_RULES`] rules and
    /// [`MAX_EGRESS_PREFIXES`] distinct prefixes. Each rule's problem is
    /// kept in `problems`, as the rules' are.
    pub(super) fn egress_rules(
        &self,
        raw: Vec<RawEgress>,
        warnings: &mut Vec<String>,
        problems: &mut Problems,
    ) -> Vec<Egress> {
        if raw.len() > MAX_EGRESS_RULES {
            problems.keep(
                Err(self.invalid(
                    &raw[MAX_EGRESS_RULES].name.span(),
                    Problem::TooManyEgressRules {
                        count: raw.len(),
                        max: MAX_EGRESS_RULES,
                    },
                )),
                (),
            );
            return Vec::new();
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut prefixes: std::collections::BTreeSet<ipnet::Ipv6Net> = egress::metadata().collect();
        let mut rules = Vec::with_capacity(raw.len());
        for r in raw {
            let span = r.name.span();
            // A rule that fails still takes its name.
            let named = (r.name.get_ref().clone(), self.lines.locate(span.start).line);
            let Some(rule) = problems.keep(self.egress(r).map(Some), None) else {
                seen.entry(named.0).or_insert(named.1);
                continue;
            };
            if let Some(&first_line) = seen.get(&rule.name) {
                problems.keep(
                    Err(self.invalid(
                        &span,
                        Problem::DuplicateEgressName {
                            name: rule.name,
                            first_line,
                        },
                    )),
                    (),
                );
                continue;
            }
            seen.insert(rule.name.clone(), rule.at.line);
            self.warn_ipv4_in_ipv6(&rule, warnings);
            self.warn_idle_allows(&rule, warnings);
            prefixes.extend(rule.deny.iter().flat_map(|d| d.value.prefixes()));
            prefixes.extend(rule.allow.iter().map(|a| egress::mapped(a.value)));
            if prefixes.len() > MAX_EGRESS_PREFIXES as usize {
                problems.keep(
                    Err(self.invalid(
                        &span,
                        Problem::TooManyEgressPrefixes {
                            count: prefixes.len(),
                            max: MAX_EGRESS_PREFIXES,
                        },
                    )),
                    (),
                );
                break;
            }
            rules.push(rule);
        }
        rules
    }

    /// An allow entry carves an exception out of the rule's deny entries
    /// (the longest prefix decides): one inside none of them lets nothing
    /// through that the rule refuses, and one that is a whole deny entry
    /// takes it back. Both are said: neither is what it was written for.
    fn warn_idle_allows(&self, rule: &Egress, warnings: &mut Vec<String>) {
        let denied: Vec<ipnet::Ipv6Net> =
            rule.deny.iter().flat_map(|d| d.value.prefixes()).collect();
        for a in &rule.allow {
            let allowed = egress::mapped(a.value);
            let what = if denied.contains(&allowed) {
                "is a whole deny entry of the rule: it takes that entry back (but for the \
                 cloud metadata addresses, which no allow reopens)"
            } else if !denied.iter().any(|d| d.contains(&allowed)) {
                "is inside none of the rule's deny entries: it lets through nothing the rule \
                 refuses (an allow carves an exception out of a deny entry)"
            } else {
                continue;
            };
            warnings.push(format!(
                "{}:{}: egress rule `{}`: allow {} {what}",
                self.file, a.at.line, rule.name, a.value
            ));
        }
    }

    /// An IPv6 deny prefix short enough to hold `::ffff:0:0/96` (`::/0`,
    /// `::/64`) also denies every IPv4 address, which the kernel looks up
    /// in that form: said, unless the rule names IPv4 itself (a deny or
    /// allow entry of its own there).
    fn warn_ipv4_in_ipv6(&self, rule: &Egress, warnings: &mut Vec<String>) {
        let v4_mapped: ipnet::Ipv6Net = "::ffff:0:0/96".parse().expect("a valid prefix");
        // An IPv4 allow says the writer knows IPv4 is in it; an IPv4 deny
        // beside it says the contrary (it is redundant).
        // (Written in IPv4-mapped form too: `::ffff:10.0.0.0/104`.)
        let names_ipv4 = |net: &ipnet::IpNet| match net {
            ipnet::IpNet::V4(_) => true,
            ipnet::IpNet::V6(v6) => v4_mapped.contains(v6),
        };
        if rule.allow.iter().any(|a| names_ipv4(&a.value)) {
            return;
        }
        for d in &rule.deny {
            if let EgressDestination::Cidr(net @ ipnet::IpNet::V6(v6)) = d.value
                && v6.contains(&v4_mapped)
            {
                warnings.push(format!(
                    "{}:{}: egress rule `{}` denies {net}, which holds every IPv4 address too \
                     (IPv4 is looked up as ::ffff:a.b.c.d); add allow = [\"0.0.0.0/0\"] to \
                     leave IPv4 out",
                    self.file, d.at.line, rule.name
                ));
            }
        }
    }

    fn egress(&self, raw: RawEgress) -> Result<Egress, ConfigError> {
        let name_span = raw.name.span();
        let name = self.rule_name(raw.name)?;
        // Lines name it `egress:NAME` already.
        if let Some(bare) = name.strip_prefix(crate::events::EGRESS_PREFIX) {
            return Err(self.invalid(
                &name_span,
                Problem::EgressPrefixed {
                    bare: bare.to_owned(),
                },
            ));
        }
        let action = match raw.action.get_ref() {
            Action::Deny | Action::Audit => *raw.action.get_ref(),
            Action::Allow => {
                return Err(self.invalid(&raw.action.span(), Problem::EgressAction { rule: name }));
            }
        };
        let criteria = Criteria {
            exe: self.opt_paths("exe", raw.exe)?,
            uid: self.opt_values("uid", raw.uid, Ok)?,
            user: self.opt_values("user", raw.user, |user| name_value("user", user))?,
            cgroup: self.opt_values("cgroup", raw.cgroup, |cg| subject_cgroup("cgroup", cg))?,
            ..Criteria::default()
        };
        if criteria.is_empty() {
            return Err(self.invalid(&name_span, Problem::EgressNoSubject { rule: name }));
        }
        if raw.deny.get_ref().0.is_empty() {
            return Err(self.invalid(&raw.deny.span(), Problem::EgressDenyEmpty));
        }
        let deny = self.values("deny", raw.deny, |text| match Builtin::from_name(&text) {
            Some(set) => Ok(EgressDestination::Set(set)),
            None => cidr(text.clone())
                .and_then(|net| reachable(text, net))
                .map(EgressDestination::Cidr),
        })?;
        let allow = self.opt_values("allow", raw.allow, |text| {
            let net = cidr(text.clone())?;
            let inside = egress::metadata().find(|m| m.contains(&egress::mapped(net)));
            match inside {
                Some(metadata) => Err(Problem::AllowInMetadata {
                    allow: text,
                    metadata: egress::show(&metadata),
                }),
                None => Ok(net),
            }
        })?;
        Ok(Egress {
            name,
            at: self.lines.locate(name_span.start),
            action,
            criteria,
            deny,
            allow,
        })
    }
}

/// `net`, unless it holds its family's unspecified address and not the
/// loopback address the kernel connects that to (the programs look a
/// connect to `0.0.0.0` or `::` up as `127.0.0.1` or `::1`), and nothing
/// else a connect reaches but `0.0.0.0/8`'s rare others: a deny of it
/// would refuse nothing. (`0.0.0.0/7` and shorter hold public addresses:
/// they stand.)
/// An IPv4-mapped IPv6 prefix (`::ffff:0.0.0.0/104`) is judged as the
/// IPv4 one it maps (`0.0.0.0/8`): the programs look IPv4 up in that form.
fn reachable(text: String, net: ipnet::IpNet) -> Result<ipnet::IpNet, Problem> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mapped = match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok()),
        _ => None,
    };
    let (judged, unspecified, loopback, names): (ipnet::IpNet, IpAddr, IpAddr, _) =
        match (net, mapped) {
            (_, Some(v4)) => (
                v4.into(),
                Ipv4Addr::UNSPECIFIED.into(),
                Ipv4Addr::LOCALHOST.into(),
                ("::ffff:0.0.0.0", "::ffff:127.0.0.1"),
            ),
            (ipnet::IpNet::V4(_), None) => (
                net,
                Ipv4Addr::UNSPECIFIED.into(),
                Ipv4Addr::LOCALHOST.into(),
                ("0.0.0.0", "127.0.0.1"),
            ),
            (ipnet::IpNet::V6(_), None) => (
                net,
                Ipv6Addr::UNSPECIFIED.into(),
                Ipv6Addr::LOCALHOST.into(),
                ("::", "::1"),
            ),
        };
    // (No IPv6 prefix holds `::` but not `::1` but `::/128`.)
    let this_network = judged.prefix_len() >= 8;
    if this_network && judged.contains(&unspecified) && !judged.contains(&loopback) {
        return Err(Problem::EgressUnspecified {
            text,
            unspecified: names.0,
            loopback: names.1,
        });
    }
    Ok(net)
}

impl Validator<'_> {
    /// A port browsers are refused on is still theirs at the host's own
    /// non-loopback addresses (its LAN address, a bridge's) when no hook
    /// judges those (`host_addresses = false`) and the service may listen
    /// on every address (the bind guard does not keep it on loopback): a
    /// page fetches `http://192.168.1.23:11434/` instead.
    pub(super) fn warn_browsers_by_host_address(
        &self,
        protect: &Protect,
        bind: &Bind,
        browsers: &Browsers,
        warnings: &mut Vec<String>,
    ) {
        if protect.host_addresses {
            return;
        }
        let kept = |port: u16| {
            bind.loopback_only
                .iter()
                .any(|b| b.first <= port && port <= b.last)
        };
        let open = |r: &PortRange| (r.first..=r.last).any(|port| !kept(port));
        let advice = "a page reaches a service that listens on every address at the host's own \
                      non-loopback address (its LAN address), which no hook judges with \
                      [protect] host_addresses = false; set host_addresses = true, or keep the \
                      service on loopback with [bind] loopback_only";
        // The ports `action = "deny"` refuses browsers on: the protected
        // ones no list names.
        let listed = |port: u16| {
            (browsers.audit.iter().chain(&browsers.allow)).any(|r| {
                let r = &r.value;
                r.first <= port && port <= r.last
            })
        };
        let denied_open = match &protect.ports {
            PortSet::All => true,
            PortSet::Ranges(ranges) => ranges
                .iter()
                .flat_map(|r| r.first..=r.last)
                .any(|port| !listed(port) && !kept(port)),
        };
        if let Some(range) = browsers.deny.iter().find(|r| open(&r.value)) {
            warnings.push(format!(
                "{}:{}: [browsers] deny lists {}, but {advice}",
                self.file, range.at.line, range.value
            ));
        } else if browsers.action == Action::Deny && denied_open {
            warnings.push(format!(
                "{}: [browsers] action = \"deny\", but {advice}",
                self.file
            ));
        }
    }
}
