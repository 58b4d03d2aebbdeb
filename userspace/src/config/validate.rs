//! Validation: raw values to [`super::Config`], with positions.

use std::{
    collections::HashMap,
    ops::Range,
    path::{Path, PathBuf},
};

use loopwarden_common::{
    COMM_LEN, EXE_NAME_LEN, MAX_EGRESS_PREFIXES, MAX_EGRESS_RULES, MAX_RULES, SCRIPT_LEN,
};
use toml::Spanned;

use super::{
    Bind, Browsers, Config, ConfigError, Criteria, Egress, EgressDestination, IDENT_TIMEOUT_MS,
    Ident, Located, MAX_NAME_BYTES, MAX_PATH_BYTES, Metrics, PortRange, PortSet, Problem, Protect,
    Provenance, RELAY_WINDOW_MS, Relay, Rule,
    lines::LineIndex,
    raw::{
        OneOrMany, PortItem, RawBind, RawBrowsers, RawConfig, RawEgress, RawIdent, RawMetrics,
        RawRule,
    },
};
use crate::{
    catalog::{CATALOG, CATALOG_PREFIX},
    events::{BIND_RULE_NAME, BROWSERS_RULE_NAME, RELAY_RULE_NAME},
    policy::{
        Action,
        egress::{self, Builtin},
    },
};

pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    pub(super) lines: &'a LineIndex<'a>,
}

impl Validator<'_> {
    fn invalid(&self, span: &Range<usize>, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            at: self.lines.locate(span.start),
            problem,
        }
    }

    pub(super) fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let defaults = Config::embedded_default();
        let mut warnings = Vec::new();
        if raw.is_empty() {
            // Most likely a file truncated by accident, and the defaults
            // only report: say so wherever warnings are shown.
            warnings.push(format!(
                "{}: the file has no settings (it is empty or only comments), so the built-in \
                 defaults apply: audit mode, every port, the tunnel catalog",
                self.file
            ));
        }
        let catalog = raw.catalog.unwrap_or(defaults.catalog);
        // The built-in rules: the catalog's, and the one of [browsers]
        // exe/exe_name.
        let browsers_rules = raw.browsers.as_ref().map_or(0, |b| {
            usize::from(b.exe_name.is_some()) + usize::from(b.exe.is_some())
        });
        let catalog_rules = if catalog { CATALOG.len() } else { 0 } + browsers_rules;
        if raw.rule.len() + catalog_rules > MAX_RULES {
            // Point at the first rule that does not fit.
            let first_over = MAX_RULES.saturating_sub(catalog_rules);
            let span = raw.rule.get(first_over).map_or(0..0, |r| r.name.span());
            return Err(self.invalid(
                &span,
                Problem::TooManyRules {
                    user: raw.rule.len(),
                    catalog: catalog_rules,
                    max: MAX_RULES,
                },
            ));
        }

        let mut protect = match raw.protect {
            None => defaults.protect,
            Some(p) => Protect {
                ports: match p.ports {
                    None => defaults.protect.ports,
                    Some(ports) => self.ports(ports)?,
                },
                netns: match p.netns {
                    None => defaults.protect.netns,
                    Some(netns) => self.paths("netns", netns)?,
                },
                host_addresses: p.host_addresses.unwrap_or(defaults.protect.host_addresses),
            },
        };

        let relay = match raw.relay {
            None => defaults.relay,
            Some(r) => Relay {
                action: r.action.unwrap_or(defaults.relay.action),
                window_ms: self.millis(
                    r.window_ms,
                    defaults.relay.window_ms,
                    RELAY_WINDOW_MS,
                    |value| Problem::RelayWindow { value },
                )?,
            },
        };

        let provenance = match raw.provenance {
            None => defaults.provenance,
            Some(p) => Provenance {
                tag: p.tag.unwrap_or(defaults.provenance.tag),
                getsockopt: p.getsockopt.unwrap_or(defaults.provenance.getsockopt),
                getsockopt_cgroups: self.opt_values(
                    "getsockopt_cgroups",
                    p.getsockopt_cgroups,
                    |cg| non_empty("getsockopt_cgroups", cg),
                )?,
                query: p.query.unwrap_or(defaults.provenance.query),
            },
        };

        let ident = match raw.ident {
            None => defaults.ident,
            Some(i) => self.ident(i, defaults.ident)?,
        };

        let bind = match raw.bind {
            None => defaults.bind,
            Some(b) => self.bind(b, &mut warnings)?,
        };
        let browsers = match raw.browsers {
            None => defaults.browsers,
            Some(b) => self.browsers(b, defaults.browsers.action)?,
        };
        if let PortSet::Ranges(protected) = &protect.ports {
            let inside = |r: &PortRange| {
                (r.first..=r.last)
                    .all(|p| protected.iter().any(|q| (q.first..=q.last).contains(&p)))
            };
            for (_, list) in browsers.lists() {
                for range in list.iter().filter(|r| !inside(&r.value)) {
                    warnings.push(format!(
                        "{}:{}: [browsers] lists {} but [protect] ports does not protect all of \
                         it: connects to an unprotected port are never judged",
                        self.file, range.at.line, range.value
                    ));
                }
            }
        }
        let metrics = match raw.metrics {
            None => defaults.metrics,
            Some(m) => self.metrics(m, defaults.metrics)?,
        };
        // The metrics port is protected like any other: a relay to it is
        // judged by the policy.
        if let (Some(listen), PortSet::Ranges(ranges)) = (&metrics.listen, &mut protect.ports) {
            let port = listen.value.port();
            if !ranges.iter().any(|r| (r.first..=r.last).contains(&port)) {
                ranges.push(PortRange {
                    first: port,
                    last: port,
                });
            }
        }

        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for raw_rule in raw.rule {
            let rule = self.rule(raw_rule)?;
            if let Some(&first_line) = seen.get(&rule.name) {
                return Err(ConfigError::Invalid {
                    file: self.file.to_owned(),
                    at: rule.at,
                    problem: Problem::DuplicateRuleName {
                        name: rule.name,
                        first_line,
                    },
                });
            }
            seen.insert(rule.name.clone(), rule.at.line);
            rules.push(rule);
        }

        let egress = self.egress_rules(raw.egress)?;

        Ok(Config {
            source: self.file.to_owned(),
            mode: raw.mode.unwrap_or(defaults.mode),
            deny_errno: raw.deny_errno.unwrap_or(defaults.deny_errno),
            catalog,
            log_allowed: raw.log_allowed.unwrap_or(defaults.log_allowed),
            protect,
            relay,
            provenance,
            ident,
            bind,
            browsers,
            metrics,
            rules,
            egress,
            warnings,
        })
    }

    fn metrics(&self, raw: RawMetrics, defaults: Metrics) -> Result<Metrics, ConfigError> {
        let listen = match raw.listen {
            None => defaults.listen,
            Some(text) => {
                let span = text.span();
                let text = text.into_inner();
                let addr = text
                    .parse::<std::net::SocketAddr>()
                    .map_err(|_| self.invalid(&span, Problem::BadSocketAddr { text }))?;
                if !addr.ip().is_loopback() {
                    return Err(self.invalid(&span, Problem::MetricsNotLoopback { addr }));
                }
                Some(Located {
                    value: addr,
                    at: self.lines.locate(span.start),
                })
            }
        };
        Ok(Metrics {
            socket: raw.socket.unwrap_or(defaults.socket),
            listen,
        })
    }

    /// A duration in milliseconds within `bounds` (`default` when absent);
    /// `problem` says what is wrong with one outside them.
    fn millis(
        &self,
        raw: Option<Spanned<i64>>,
        default: u32,
        bounds: std::ops::RangeInclusive<i64>,
        problem: impl FnOnce(i64) -> Problem,
    ) -> Result<u32, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let span = raw.span();
        let value = raw.into_inner();
        if !bounds.contains(&value) {
            return Err(self.invalid(&span, problem(value)));
        }
        Ok(value as u32)
    }

    fn ident(&self, raw: RawIdent, defaults: Ident) -> Result<Ident, ConfigError> {
        let listen = match raw.listen {
            None => defaults.listen,
            Some(list) => self.values("listen", list, |text: String| {
                text.parse::<std::net::SocketAddr>()
                    .map_err(|_| Problem::BadSocketAddr { text })
            })?,
        };
        let netns = match raw.netns {
            None => None,
            Some(path) => {
                let span = path.span();
                let mut one = self.paths(
                    "netns",
                    Spanned::new(
                        span.clone(),
                        OneOrMany(vec![(Some(span), path.into_inner())]),
                    ),
                )?;
                one.pop()
            }
        };
        let timeout_ms = self.millis(
            raw.timeout_ms,
            defaults.timeout_ms,
            IDENT_TIMEOUT_MS,
            |value| Problem::IdentTimeout { value },
        )?;
        Ok(Ident {
            listen,
            netns,
            relayed: raw.relayed.unwrap_or(defaults.relayed),
            timeout_ms,
        })
    }

    fn bind(&self, raw: RawBind, warnings: &mut Vec<String>) -> Result<Bind, ConfigError> {
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
                non_empty("allow_user", user)
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

    fn browsers(&self, raw: RawBrowsers, action: Action) -> Result<Browsers, ConfigError> {
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
    /// [`MAX_EGRESS_PREFIXES`] distinct prefixes.
    fn egress_rules(&self, raw: Vec<RawEgress>) -> Result<Vec<Egress>, ConfigError> {
        if raw.len() > MAX_EGRESS_RULES {
            return Err(self.invalid(
                &raw[MAX_EGRESS_RULES].name.span(),
                Problem::TooManyEgressRules {
                    count: raw.len(),
                    max: MAX_EGRESS_RULES,
                },
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut prefixes: std::collections::BTreeSet<ipnet::Ipv6Net> = egress::metadata().collect();
        let mut rules = Vec::with_capacity(raw.len());
        for r in raw {
            let span = r.name.span();
            let rule = self.egress(r)?;
            if let Some(&first_line) = seen.get(&rule.name) {
                return Err(self.invalid(
                    &span,
                    Problem::DuplicateEgressName {
                        name: rule.name,
                        first_line,
                    },
                ));
            }
            seen.insert(rule.name.clone(), rule.at.line);
            prefixes.extend(rule.deny.iter().flat_map(|d| d.value.prefixes()));
            prefixes.extend(rule.allow.iter().map(|a| egress::mapped(a.value)));
            if prefixes.len() > MAX_EGRESS_PREFIXES as usize {
                return Err(self.invalid(
                    &span,
                    Problem::TooManyEgressPrefixes {
                        count: prefixes.len(),
                        max: MAX_EGRESS_PREFIXES,
                    },
                ));
            }
            rules.push(rule);
        }
        Ok(rules)
    }

    fn egress(&self, raw: RawEgress) -> Result<Egress, ConfigError> {
        let name_span = raw.name.span();
        let name = self.rule_name(raw.name)?;
        let action = match raw.action.get_ref() {
            Action::Deny | Action::Audit => *raw.action.get_ref(),
            Action::Allow => {
                return Err(self.invalid(&raw.action.span(), Problem::EgressAction { rule: name }));
            }
        };
        let criteria = Criteria {
            exe: self.opt_paths("exe", raw.exe)?,
            uid: self.opt_values("uid", raw.uid, Ok)?,
            user: self.opt_values("user", raw.user, |user| non_empty("user", user))?,
            cgroup: self.opt_values("cgroup", raw.cgroup, |cg| non_empty("cgroup", cg))?,
            ..Criteria::default()
        };
        if criteria.is_empty() {
            return Err(self.invalid(&name_span, Problem::EgressNoSubject { rule: name }));
        }
        let deny = self.values("deny", raw.deny, |text| match Builtin::from_name(&text) {
            Some(set) => Ok(EgressDestination::Set(set)),
            None => cidr(text).map(EgressDestination::Cidr),
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

    /// A rule's name: letters, digits and `_ . : -`.
    fn rule_name(&self, raw: Spanned<String>) -> Result<String, ConfigError> {
        let span = raw.span();
        let name = raw.into_inner();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
        if name.is_empty() || !name.chars().all(valid_char) {
            return Err(self.invalid(&span, Problem::BadRuleName { name }));
        }
        Ok(name)
    }

    fn rule(&self, raw: RawRule) -> Result<Rule, ConfigError> {
        let name_span = raw.name.span();
        let name = self.rule_name(raw.name)?;
        if name.starts_with(CATALOG_PREFIX) {
            return Err(self.invalid(&name_span, Problem::ReservedRuleName { name }));
        }
        if name == RELAY_RULE_NAME {
            return Err(self.invalid(&name_span, Problem::RelayRuleName));
        }
        if name == BIND_RULE_NAME {
            return Err(self.invalid(&name_span, Problem::BindRuleName));
        }
        if name == BROWSERS_RULE_NAME {
            return Err(self.invalid(&name_span, Problem::BrowsersRuleName));
        }

        let criteria = Criteria {
            exe: self.opt_paths("exe", raw.exe)?,
            exe_name: self.opt_values("exe_name", raw.exe_name, exe_name)?,
            comm: self.opt_values("comm", raw.comm, |comm| {
                if comm.len() >= COMM_LEN {
                    let len = comm.len();
                    return Err(Problem::CommTooLong { comm, len });
                }
                non_empty("comm", comm)
            })?,
            uid: self.opt_values("uid", raw.uid, Ok)?,
            user: self.opt_values("user", raw.user, |user| non_empty("user", user))?,
            cgroup: self.opt_values("cgroup", raw.cgroup, |cg| non_empty("cgroup", cg))?,
            parent_exe: self.opt_paths("parent_exe", raw.parent_exe)?,
            ancestor_exe: self.opt_paths("ancestor_exe", raw.ancestor_exe)?,
            script: self.opt_values("script", raw.script, |script| {
                if script.len() >= SCRIPT_LEN {
                    let len = script.len();
                    return Err(Problem::ScriptTooLong { script, len });
                }
                non_empty("script", script)
            })?,
        };
        if criteria.is_empty() {
            return Err(self.invalid(&name_span, Problem::NoCriteria { rule: name }));
        }
        Ok(Rule {
            name,
            at: self.lines.locate(name_span.start),
            action: raw.action,
            criteria,
        })
    }

    /// Checks each value of a one-or-many key with `check`, keeping positions.
    fn values<T, U>(
        &self,
        field: &'static str,
        raw: Spanned<OneOrMany<T>>,
        check: impl Fn(T) -> Result<U, Problem>,
    ) -> Result<Vec<Located<U>>, ConfigError> {
        let outer = raw.span();
        let items = raw.into_inner().0;
        if items.is_empty() {
            return Err(self.invalid(&outer, Problem::EmptyList { field }));
        }
        items
            .into_iter()
            .map(|(span, value)| {
                let span = span.unwrap_or_else(|| outer.clone());
                match check(value) {
                    Ok(value) => Ok(Located {
                        value,
                        at: self.lines.locate(span.start),
                    }),
                    Err(problem) => Err(self.invalid(&span, problem)),
                }
            })
            .collect()
    }

    fn opt_values<T, U>(
        &self,
        field: &'static str,
        raw: Option<Spanned<OneOrMany<T>>>,
        check: impl Fn(T) -> Result<U, Problem>,
    ) -> Result<Vec<Located<U>>, ConfigError> {
        raw.map_or_else(|| Ok(Vec::new()), |raw| self.values(field, raw, check))
    }

    fn paths(
        &self,
        field: &'static str,
        raw: Spanned<OneOrMany<String>>,
    ) -> Result<Vec<Located<PathBuf>>, ConfigError> {
        self.values(field, raw, |path| {
            if !Path::new(&path).is_absolute() {
                return Err(Problem::RelativePath { field, path });
            }
            // Such a path could never resolve; say why instead of echoing it.
            if path.len() > MAX_PATH_BYTES {
                let len = path.len();
                return Err(Problem::PathTooLong { field, len });
            }
            if let Some(len) = path
                .split('/')
                .map(str::len)
                .find(|&len| len > MAX_NAME_BYTES)
            {
                return Err(Problem::PathComponentTooLong { field, len });
            }
            Ok(PathBuf::from(path))
        })
    }

    fn opt_paths(
        &self,
        field: &'static str,
        raw: Option<Spanned<OneOrMany<String>>>,
    ) -> Result<Vec<Located<PathBuf>>, ConfigError> {
        raw.map_or_else(|| Ok(Vec::new()), |raw| self.paths(field, raw))
    }

    fn ports(&self, raw: Spanned<OneOrMany<PortItem>>) -> Result<PortSet, ConfigError> {
        let outer = raw.span();
        let items = raw.into_inner().0;
        if let [(_, PortItem::Text(text))] = items.as_slice()
            && text == "all"
        {
            return Ok(PortSet::All);
        }
        if items.is_empty() {
            return Err(self.invalid(&outer, Problem::EmptyList { field: "ports" }));
        }
        items
            .into_iter()
            .map(|(span, item)| {
                let span = span.unwrap_or_else(|| outer.clone());
                port_range(item).map_err(|problem| self.invalid(&span, problem))
            })
            .collect::<Result<_, _>>()
            .map(PortSet::Ranges)
    }
}

/// An executable file name as the kernel compares it.
fn exe_name(name: String) -> Result<String, Problem> {
    if name.contains('/') {
        return Err(Problem::NotAFileName { name });
    }
    if name.len() >= EXE_NAME_LEN {
        let len = name.len();
        return Err(Problem::ExeNameTooLong { name, len });
    }
    non_empty("exe_name", name)
}

/// A CIDR (or a bare address) of an egress list.
fn cidr(text: String) -> Result<ipnet::IpNet, Problem> {
    match egress::parse_cidr(&text) {
        Ok(net) => Ok(net),
        Err(Some(network)) => Err(Problem::CidrHostBits { text, network }),
        Err(None) if text.contains(['/', ':', '.']) => Err(Problem::BadCidr { text }),
        Err(None) => Err(Problem::EgressUnknown { text }),
    }
}

fn non_empty(field: &'static str, value: String) -> Result<String, Problem> {
    if value.is_empty() {
        Err(Problem::EmptyValue { field })
    } else {
        Ok(value)
    }
}

fn port(port: i64) -> Result<u16, Problem> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Problem::PortOutOfRange { port }),
    }
}

fn port_range(item: PortItem) -> Result<PortRange, Problem> {
    let text = match item {
        PortItem::Number(n) => {
            let p = port(n)?;
            return Ok(PortRange { first: p, last: p });
        }
        PortItem::Text(text) => text,
    };
    if text == "all" {
        return Err(Problem::AllInList);
    }
    let bad = || Problem::BadPortRange { text: text.clone() };
    let number = |s: &str| -> Result<u16, Problem> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        port(s.parse::<i64>().unwrap_or(i64::MAX))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let p = number(&text)?;
            (p, p)
        }
    };
    if first > last {
        return Err(Problem::ReversedPortRange { first, last });
    }
    Ok(PortRange { first, last })
}
