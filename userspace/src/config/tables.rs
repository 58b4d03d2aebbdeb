//! The validated tables of a policy file (`[protect]`, `[relay]`,
//! `[provenance]`, `[ident]`, `[bind]`, `[browsers]`, `[metrics]`,
//! `[[rule]]`, `[[egress]]`), the values they hold and their bounds.

use std::{fmt, path::PathBuf};

use serde::Deserialize;

use super::{Located, Location};
use crate::policy::Action;

/// The errno a denied connect() fails with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum DenyErrno {
    /// "Connection refused": what a closed port looks like; tools give up
    /// quietly.
    #[default]
    #[serde(rename = "ECONNREFUSED")]
    Econnrefused,
    /// "Operation not permitted": says a policy intervened.
    #[serde(rename = "EPERM")]
    Eperm,
}

impl DenyErrno {
    /// The positive errno value.
    pub const fn errno(self) -> u32 {
        match self {
            DenyErrno::Econnrefused => libc::ECONNREFUSED as u32,
            DenyErrno::Eperm => libc::EPERM as u32,
        }
    }

    /// The symbolic name, as written in the config.
    pub const fn name(self) -> &'static str {
        match self {
            DenyErrno::Econnrefused => "ECONNREFUSED",
            DenyErrno::Eperm => "EPERM",
        }
    }
}

/// An inclusive range of destination ports; a single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    /// `8080` or `9000-9100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Which destination ports are protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSet {
    All,
    /// Never empty.
    Ranges(Vec<PortRange>),
}

impl PortSet {
    /// Adds `port` to a list that does not hold it yet (`All` holds it).
    pub fn include(&mut self, port: u16) {
        if let PortSet::Ranges(ranges) = self
            && !ranges.iter().any(|r| (r.first..=r.last).contains(&port))
        {
            ranges.push(PortRange {
                first: port,
                last: port,
            });
        }
    }
}

/// The `[protect]` table: which connects are checked at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protect {
    pub ports: PortSet,
    /// Network namespace files; empty means every namespace.
    pub netns: Vec<Located<PathBuf>>,
    /// Also protect the host's own non-loopback addresses.
    pub host_addresses: bool,
}

/// What a rule matches on. An empty list means the rule does not constrain
/// that attribute (the file cannot give an empty list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Criteria {
    /// Absolute executable paths.
    pub exe: Vec<Located<PathBuf>>,
    /// Executable file names (no `/`).
    pub exe_name: Vec<Located<String>>,
    /// Task comms, at most `COMM_LEN - 1` bytes.
    pub comm: Vec<Located<String>>,
    pub uid: Vec<Located<u32>>,
    /// User names, resolved to uids at compile time.
    pub user: Vec<Located<String>>,
    /// cgroup v2 paths below the root or bare unit names.
    pub cgroup: Vec<Located<String>>,
    /// Absolute executable paths of the direct parent.
    pub parent_exe: Vec<Located<PathBuf>>,
    /// Absolute executable paths of any ancestor.
    pub ancestor_exe: Vec<Located<PathBuf>>,
    /// Scripts as an interpreter's command line names them.
    pub script: Vec<Located<String>>,
}

impl Criteria {
    /// Whether no criterion is given (such a rule would match everything).
    pub fn is_empty(&self) -> bool {
        self.exe.is_empty()
            && self.exe_name.is_empty()
            && self.comm.is_empty()
            && self.uid.is_empty()
            && self.user.is_empty()
            && self.cgroup.is_empty()
            && self.parent_exe.is_empty()
            && self.ancestor_exe.is_empty()
            && self.script.is_empty()
    }
}

/// The `[relay]` table: the verdict for connects by network-facing processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relay {
    /// `Allow` turns the relay verdict off.
    pub action: Action,
    /// How recent received/connected evidence must be, in milliseconds.
    pub window_ms: u32,
}

/// The `[provenance]` table: what is bound to protected connections and
/// who can ask about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// Tag each protected connection that proceeds with its origin.
    pub tag: bool,
    /// Attach the `cgroup/getsockopt` program that hands the tag to the
    /// accepting service.
    pub getsockopt: bool,
    /// Where: these cgroups (paths below the root or bare unit names, like
    /// a rule's `cgroup`) and their subtrees; empty: the cgroup v2 root.
    pub getsockopt_cgroups: Vec<Located<String>>,
    /// Serve the query socket.
    pub query: bool,
    /// How many live tagged connections `LW_CONNS` holds (its
    /// `max_entries`), besides those in `LW_CONN_SLOTS`' slots.
    pub connections: u32,
}

/// The error an ident client gets for a connection that is not a direct
/// local user's (RFC 1413 error tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum IdentError {
    #[default]
    #[serde(rename = "NO-USER")]
    NoUser,
    #[serde(rename = "HIDDEN-USER")]
    HiddenUser,
    #[serde(rename = "UNKNOWN-ERROR")]
    UnknownError,
}

impl IdentError {
    /// The token as the reply spells it.
    pub const fn token(self) -> &'static str {
        match self {
            IdentError::NoUser => "NO-USER",
            IdentError::HiddenUser => "HIDDEN-USER",
            IdentError::UnknownError => "UNKNOWN-ERROR",
        }
    }
}

/// The `[ident]` table: the RFC 1413 responder (off without `listen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub listen: Vec<Located<std::net::SocketAddr>>,
    /// Network namespace file to bind the listeners in; none: the daemon's.
    pub netns: Option<Located<PathBuf>>,
    pub relayed: IdentError,
    /// How long a client may take over each query (from its connect or
    /// its last reply: RFC 1413's idle timeout), and a reply to be taken.
    pub timeout_ms: u32,
}

impl Ident {
    /// In words, as `check-config` and a reload's restart warning say it:
    /// `off`, or where it answers and how.
    pub fn describe(&self) -> String {
        if self.listen.is_empty() {
            return "off".to_owned();
        }
        let listen: Vec<String> = self.listen.iter().map(|a| a.value.to_string()).collect();
        let netns = self
            .netns
            .as_ref()
            .map(|n| format!(" in {}", n.value.display()))
            .unwrap_or_default();
        format!(
            "{}{netns}; a relayed client is ERROR : {}; a silent client is closed after {} ms",
            listen.join(", "),
            self.relayed.token(),
            self.timeout_ms
        )
    }
}

/// The `[bind]` table: the bind guard. It follows the global `mode`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bind {
    /// Ports a TCP bind() may put on loopback addresses only; empty: the
    /// guard is off.
    pub loopback_only: Vec<PortRange>,
    /// Executables exempt from the guard (they may bind anywhere).
    pub allow_exe: Vec<Located<PathBuf>>,
    /// Users exempt from the guard, resolved to uids at compile time.
    pub allow_user: Vec<Located<String>>,
    /// uids exempt from the guard.
    pub allow_uid: Vec<Located<u32>>,
}

/// The `[browsers]` table: how browser-class rules are judged, per port.
/// A browser is judged by the first rule it matches like any caller; when
/// that is a browser-class rule (the catalog's browsers, or the rule made
/// of `exe_name`/`exe`), the port's treatment is the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Browsers {
    /// The treatment of protected ports no list names.
    pub action: Action,
    /// Ports where browsers are refused (would-deny in audit mode).
    pub deny: Vec<Located<PortRange>>,
    /// Ports where browsers are let in and reported.
    pub audit: Vec<Located<PortRange>>,
    /// Ports where browsers are let in silently.
    pub allow: Vec<Located<PortRange>>,
    /// Executable file names also treated as browsers.
    pub exe_name: Vec<Located<String>>,
    /// Executable paths also treated as browsers.
    pub exe: Vec<Located<PathBuf>>,
}

impl Browsers {
    /// How many rules the table adds: one for `exe_name`, one for `exe`.
    pub fn rules(&self) -> usize {
        usize::from(!self.exe_name.is_empty()) + usize::from(!self.exe.is_empty())
    }

    /// The port lists with the treatment each gives.
    pub fn lists(&self) -> [(Action, &[Located<PortRange>]); 3] {
        [
            (Action::Deny, &self.deny),
            (Action::Audit, &self.audit),
            (Action::Allow, &self.allow),
        ]
    }
}

/// The `[metrics]` table: where the Prometheus metrics are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// Serve them on `<run_dir>/metrics.sock`.
    pub socket: bool,
    /// Also serve them over TCP on this loopback address.
    pub listen: Option<Located<std::net::SocketAddr>>,
}

impl Metrics {
    /// In words, as `check-config` and a reload's restart warning say it.
    pub fn describe(&self) -> String {
        let listen = self.listen.as_ref().map_or_else(
            || "no TCP listener".to_owned(),
            |a| format!("on {}", a.value),
        );
        format!(
            "socket {}, {listen}",
            if self.socket { "on" } else { "off" }
        )
    }
}

/// One `[[egress]]` table: a rule of the egress guard. It follows the
/// global `mode` and `deny_errno`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub name: String,
    /// Where its name is written.
    pub at: Location,
    /// `Deny` or `Audit`.
    pub action: Action,
    /// Who it applies to: `uid`/`user` with `exe` and `cgroup` (only these
    /// criteria are read).
    pub criteria: Criteria,
    pub deny: Vec<Located<EgressDestination>>,
    /// CIDRs that stay reachable inside the denied ranges.
    pub allow: Vec<Located<ipnet::IpNet>>,
}

/// An entry of an egress rule's `deny` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressDestination {
    Set(crate::policy::egress::Builtin),
    Cidr(ipnet::IpNet),
}

impl EgressDestination {
    /// Its prefixes in the kernel's form.
    pub fn prefixes(self) -> Vec<ipnet::Ipv6Net> {
        match self {
            EgressDestination::Set(set) => set.prefixes().collect(),
            EgressDestination::Cidr(net) => vec![crate::policy::egress::mapped(net)],
        }
    }
}

impl fmt::Display for EgressDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressDestination::Set(set) => f.write_str(set.name()),
            EgressDestination::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// Bounds of `[ident] timeout_ms`.
pub const IDENT_TIMEOUT_MS: std::ops::RangeInclusive<i64> = 100..=600_000;

/// Bounds of `[relay] window_ms`.
pub const RELAY_WINDOW_MS: std::ops::RangeInclusive<i64> = 1..=600_000;

/// Bounds of `[provenance] connections`: at the top, about 450 MiB of
/// kernel memory, preallocated.
pub const CONNECTIONS: std::ops::RangeInclusive<i64> = 1024..=1_048_576;

/// One `[[rule]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Where its name is written.
    pub at: Location,
    pub action: Action,
    pub criteria: Criteria,
}
