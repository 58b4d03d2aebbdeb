//! Validation: raw values to [`super::Config`], with positions. This file
//! holds the top level and the small tables (`[metrics]`, `[ident]`); the
//! guards' tables are in [`guards`], rules and the values lists hold in
//! [`rules`].

mod guards;
mod rules;

use self::rules::cgroup;

use std::{collections::HashMap, ops::Range};

use loopwarden_common::MAX_RULES;
use toml::Spanned;

use super::{
    CONNECTIONS, Config, ConfigError, IDENT_TIMEOUT_MS, Ident, Located, Location, Metrics,
    PortRange, PortSet, Problem, Protect, Provenance, RELAY_WINDOW_MS, Relay,
    lines::LineIndex,
    raw::{OneOrMany, RawConfig, RawIdent, RawMetrics},
};
use crate::catalog::CATALOG;

pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    pub(super) lines: &'a LineIndex<'a>,
}

impl Validator<'_> {
    fn invalid(&self, span: &Range<usize>, problem: Problem) -> ConfigError {
        self.invalid_at(self.lines.locate(span.start), problem)
    }

    fn invalid_at(&self, at: Location, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            at,
            problem,
        }
    }

    /// Validates every table and rule: a table's first problem and each
    /// rule's are all said ([`ConfigError::Several`]), not only the first
    /// in the file.
    pub(super) fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let defaults = Config::embedded_default();
        let mut warnings = Vec::new();
        let mut problems = Problems::default();
        let empty = raw.is_empty();
        if empty {
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
            problems.keep(
                Err(self.invalid(
                    &span,
                    Problem::TooManyRules {
                        user: raw.rule.len(),
                        catalog: catalog_rules,
                        max: MAX_RULES,
                    },
                )),
                (),
            );
        }

        let mut protect = match raw.protect {
            None => defaults.protect,
            Some(p) => Protect {
                ports: match p.ports {
                    None => defaults.protect.ports,
                    Some(ports) => problems.keep(self.ports(ports), defaults.protect.ports),
                },
                netns: match p.netns {
                    None => defaults.protect.netns,
                    Some(netns) => {
                        problems.keep(self.paths("netns", netns), defaults.protect.netns)
                    }
                },
                host_addresses: p.host_addresses.unwrap_or(defaults.protect.host_addresses),
            },
        };

        let relay = match raw.relay {
            None => defaults.relay,
            Some(r) => Relay {
                action: r.action.unwrap_or(defaults.relay.action),
                window_ms: problems.keep(
                    self.bounded(
                        r.window_ms,
                        defaults.relay.window_ms,
                        RELAY_WINDOW_MS,
                        |value| Problem::RelayWindow { value },
                    ),
                    defaults.relay.window_ms,
                ),
            },
        };

        let provenance = match raw.provenance {
            None => defaults.provenance,
            Some(p) => Provenance {
                tag: p.tag.unwrap_or(defaults.provenance.tag),
                getsockopt: p.getsockopt.unwrap_or(defaults.provenance.getsockopt),
                getsockopt_cgroups: problems.keep(
                    self.opt_values("getsockopt_cgroups", p.getsockopt_cgroups, |cg| {
                        cgroup("getsockopt_cgroups", cg)
                    }),
                    Vec::new(),
                ),
                query: p.query.unwrap_or(defaults.provenance.query),
                connections: problems.keep(
                    self.bounded(
                        p.connections,
                        defaults.provenance.connections,
                        CONNECTIONS,
                        |value| Problem::Connections { value },
                    ),
                    defaults.provenance.connections,
                ),
            },
        };

        let ident = match raw.ident {
            None => defaults.ident,
            Some(i) => problems.keep(
                self.ident(i, defaults.ident.clone(), &mut warnings),
                defaults.ident,
            ),
        };

        // Settings another one makes moot, said with the line of the one
        // that does nothing.
        if !provenance.tag
            && let Some(first) = ident.listen.first()
        {
            warnings.push(format!(
                "{}:{}: [ident] listens, but [provenance] tag = false: no connection carries \
                 its origin, so every reply is `ERROR : NO-USER` (ident authentication then \
                 refuses everyone); set tag = true, or drop [ident] listen",
                self.file, first.at
            ));
        }
        if !provenance.getsockopt
            && let Some(first) = provenance.getsockopt_cgroups.first()
        {
            warnings.push(format!(
                "{}:{}: [provenance] getsockopt_cgroups is ignored: getsockopt = false attaches \
                 no getsockopt program anywhere",
                self.file, first.at
            ));
        }

        let bind = match raw.bind {
            None => defaults.bind,
            Some(b) => problems.keep(self.bind(b, &mut warnings), defaults.bind),
        };
        let browsers = match raw.browsers {
            None => defaults.browsers,
            Some(b) => problems.keep(
                self.browsers(b, defaults.browsers.action),
                defaults.browsers,
            ),
        };
        // With the catalog off, only [browsers] exe_name and exe name
        // browsers: without them its lists judge no one.
        if !catalog
            && browsers.rules() == 0
            && let Some((_, first)) = browsers
                .lists()
                .into_iter()
                .find_map(|(action, list)| Some((action, list.first()?)))
        {
            warnings.push(format!(
                "{}:{}: [browsers] lists ports, but with catalog = false no program is a \
                 browser unless [browsers] exe_name or exe names it: the lists judge no one",
                self.file, first.at.line
            ));
        }
        if let PortSet::Ranges(protected) = &protect.ports {
            let unprotected = unprotected_before(protected);
            let inside = |r: &PortRange| {
                unprotected[usize::from(r.last) + 1] == unprotected[usize::from(r.first)]
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
        self.warn_browsers_by_host_address(&protect, &bind, &browsers, &mut warnings);
        let metrics = match raw.metrics {
            None => defaults.metrics,
            Some(m) => problems.keep(self.metrics(m, defaults.metrics.clone()), defaults.metrics),
        };
        // (An ident responder in a namespace of its own binds there.)
        if let Some(listen) = &metrics.listen
            && ident.netns.is_none()
            && let Some(first) = ident.listen.iter().find(|a| overlap(a.value, listen.value))
        {
            problems.keep(
                Err(self.invalid_at(
                    listen.at,
                    Problem::ListenTwice {
                        addr: listen.value,
                        first_line: first.at.line,
                    },
                )),
                (),
            );
        }
        // The metrics port is protected like any other: a relay to it is
        // judged by the policy.
        if let Some(listen) = &metrics.listen {
            protect.ports.include(listen.value.port());
        }

        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(raw.rule.len());
        for raw_rule in raw.rule {
            // A rule that fails still takes its name: a later one of the
            // same name is said now, not after the first is mended.
            let named = (
                raw_rule.name.get_ref().clone(),
                self.lines.locate(raw_rule.name.span().start).line,
            );
            let Some(rule) = problems.keep(self.rule(raw_rule).map(Some), None) else {
                seen.entry(named.0).or_insert(named.1);
                continue;
            };
            if let Some(&first_line) = seen.get(&rule.name) {
                problems.keep(
                    Err(self.invalid_at(
                        rule.at,
                        Problem::DuplicateRuleName {
                            name: rule.name,
                            first_line,
                        },
                    )),
                    (),
                );
                continue;
            }
            seen.insert(rule.name.clone(), rule.at.line);
            self.warn_broad_allow(&rule, &mut warnings);
            rules.push(rule);
        }

        let egress = self.egress_rules(raw.egress, &mut warnings, &mut problems);
        ConfigError::all(problems.0)?;

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
            empty,
            text: None,
        })
    }

    fn metrics(&self, raw: RawMetrics, defaults: Metrics) -> Result<Metrics, ConfigError> {
        let listen = match raw.listen {
            None => defaults.listen,
            Some(text) => {
                let span = text.span();
                let text = text.into_inner();
                let addr = listen_addr(text).map_err(|problem| self.invalid(&span, problem))?;
                if !addr.ip().to_canonical().is_loopback() {
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

    /// A count or a duration within `bounds` (`default` when absent);
    /// `problem` says what is wrong with one outside them.
    fn bounded(
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

    fn ident(
        &self,
        raw: RawIdent,
        defaults: Ident,
        warnings: &mut Vec<String>,
    ) -> Result<Ident, ConfigError> {
        let listen = match raw.listen {
            None => defaults.listen,
            Some(list) => self.values("listen", list, listen_addr)?,
        };
        for (i, addr) in listen.iter().enumerate() {
            if let Some(first) = listen[..i].iter().find(|a| overlap(a.value, addr.value)) {
                return Err(self.invalid_at(
                    addr.at,
                    Problem::ListenTwice {
                        addr: addr.value,
                        first_line: first.at.line,
                    },
                ));
            }
            if !addr.value.ip().to_canonical().is_loopback() {
                warnings.push(format!(
                    "{}:{}: ident listens on {}, not a loopback address: any host that can \
                     reach it may ask it (the services that ask are on this host: \
                     \"127.0.0.1:113\" and \"[::1]:113\" serve them)",
                    self.file, addr.at, addr.value
                ));
            }
        }
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
        if let (true, Some(netns)) = (listen.is_empty(), &netns) {
            warnings.push(format!(
                "{}:{}: [ident] netns is set but [ident] lists no listen address: the ident \
                 responder is off (add listen = [\"127.0.0.1:113\", \"[::1]:113\"])",
                self.file, netns.at
            ));
        }
        let timeout_ms = self.bounded(
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
}

/// What is wrong so far: each check's problem is kept, and a stand-in
/// taken for its value, so the rest of the file is still checked.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// `checked`'s value, or `stand_in` with its problem kept.
    fn keep<T>(&mut self, checked: Result<T, ConfigError>, stand_in: T) -> T {
        checked.unwrap_or_else(|problem| {
            self.0.push(problem);
            stand_in
        })
    }
}

/// Whether two listen addresses take the same port: one address (an
/// IPv4-mapped IPv6 one is its IPv4 address), or a wildcard (`0.0.0.0`
/// holds every IPv4 address of the port, `[::]` every address, as the
/// daemon binds it dual-stack under the default `net.ipv6.bindv6only=0`).
fn overlap(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    let holds = |w: std::net::IpAddr, o: std::net::IpAddr| {
        w.is_unspecified() && (w.is_ipv6() || o.is_ipv4())
    };
    a.port() == b.port() && (ia == ib || holds(ia, ib) || holds(ib, ia))
}

/// An address the daemon listens on: a socket address with a port.
fn listen_addr(text: String) -> Result<std::net::SocketAddr, Problem> {
    match text.parse::<std::net::SocketAddr>() {
        Err(_) => Err(Problem::BadSocketAddr { text }),
        Ok(addr) if addr.port() == 0 => Err(Problem::ListenPortZero { text }),
        Ok(addr) => Ok(addr),
    }
}

/// For each port `p` (and 65536), how many ports below it `ranges` leaves
/// out: a range is inside them when the count does not grow across it.
/// Linear in the ranges however many and however long (a file may list
/// millions), where checking each port of each range against each range
/// was not.
fn unprotected_before(ranges: &[PortRange]) -> Vec<u32> {
    const PORTS: usize = 1 << 16;
    // +1 where a range starts, -1 past where it ends.
    let mut starts = vec![0i64; PORTS + 1];
    for r in ranges {
        starts[usize::from(r.first)] += 1;
        starts[usize::from(r.last) + 1] -= 1;
    }
    let mut before = Vec::with_capacity(PORTS + 1);
    let (mut covering, mut left_out) = (0i64, 0u32);
    for (port, delta) in starts.iter().enumerate().take(PORTS) {
        before.push(left_out);
        covering += delta;
        // Port 0 is never a protected port: counted as left out.
        if covering == 0 || port == 0 {
            left_out += 1;
        }
    }
    before.push(left_out);
    before
}
