//! The TOML policy file: parsing, defaults and validation.
//!
//! This module owns the file format. It turns text into a validated
//! [`Config`] in which every value remembers where it was written
//! ([`Location`]), so later stages (name resolution in
//! [`crate::policy::compile`]) can point at the offending line too. Nothing
//! here touches the host beyond reading the file.
//!
//! # Format
//!
//! ```toml
//! mode = "audit"                 # "audit" (default) | "enforce"
//! deny_errno = "ECONNREFUSED"    # default; or "EPERM"
//! catalog = true                 # default: append the built-in tunnel catalog after the rules below
//! log_allowed = false            # default: report allowed connects to protected destinations too
//!
//! [protect]
//! ports = "all"                  # default; or ports and ranges: [8080, "9000-9100"]
//! netns = ["/run/netns/blue"]    # only check connects made in these network namespaces (absent = all)
//! host_addresses = false         # default: also protect the host's own non-loopback addresses
//!
//! [relay]
//! action = "audit"               # default: the verdict for a connect by a network-facing process;
//!                                # "deny" refuses it (in enforce mode); "allow" turns it off
//! window_ms = 2000               # default: how recent received/connected evidence must be
//!
//! [provenance]
//! tag = true                     # default: bind each protected connection's origin to it
//! getsockopt = true              # default: services ask with getsockopt(SOL_LOOPWARDEN, LW_ORIGIN)
//!                                # (a cgroup/getsockopt program at the root: every getsockopt pays for it)
//! getsockopt_cgroups = ["ollama.service"] # default: none (the root); attach it only in these
//!                                # cgroups and their subtrees: where the protected services run
//! query = true                   # default: answer on <run_dir>/query.sock (and `who`, `conns`)
//! connections = 16384            # default: live tagged connections the kernel holds origins for
//!                                # (about 430 bytes each, preallocated); past it the oldest become
//!                                # "unknown". A change takes effect at the next start, keeping them
//!
//! [ident]
//! listen = ["127.0.0.1:113", "[::1]:113"] # default: none (off); the RFC 1413 responder's addresses
//! netns = "/run/netns/blue"      # bind those addresses inside this network namespace
//! relayed = "NO-USER"            # default: the error a relayed or flagged client gets;
//!                                # or "HIDDEN-USER", "UNKNOWN-ERROR"
//! timeout_ms = 30000             # default: how long a silent ident client is kept
//!
//! [bind]
//! loopback_only = [11434, "9000-9100"] # default: none (off); ports a TCP bind() may put on
//!                                # loopback addresses only: elsewhere (0.0.0.0, ::, a host
//!                                # address) it fails with EADDRNOTAVAIL (enforce) or is reported
//! allow_exe = ["/usr/sbin/nginx"] # executables that may bind those ports anywhere
//! allow_user = ["www-data"]      # ... users (resolved to uids)
//! allow_uid = [33]               # ... uids
//!
//! [browsers]
//! action = "audit"               # default: how browsers (the catalog's browser class and the
//!                                # programs below) are judged on protected ports not listed here:
//!                                # "deny" | "audit" | "allow"
//! deny = [11434, "8000-8100"]    # API ports: browsers refused (enforce) or would-deny (audit mode)
//! audit = []                     # ports where browsers are let in and reported
//! allow = [3000]                 # web UI ports: browsers let in silently
//! exe_name = ["slack"]           # programs also treated as browsers (Electron shells), by file name
//! exe = ["/opt/app/app"]         # ... by executable path
//!
//! [metrics]
//! socket = true                  # default: Prometheus metrics on <run_dir>/metrics.sock
//! listen = "127.0.0.1:9477"      # default: none; also serve them on this loopback address
//!                                # (its port joins a listed `[protect] ports`)
//!
//! [[egress]]                    # the egress guard (SSRF after DNS); one table per rule
//! name = "agent-fetch"           # required, unique among egress rules; events name it `egress:agent-fetch`
//! action = "deny"                # required: "deny" (refused in enforce mode) | "audit"
//! exe = "/usr/bin/python3"       # who: exe, user, uid, cgroup as in [[rule]] (ANDed; at least one)
//! deny = ["metadata", "private", "link-local", "loopback", "203.0.113.0/24"] # required:
//!                                # built-in sets and CIDRs it may not connect to (cloud metadata
//!                                # addresses are refused by every egress rule, listed or not)
//! allow = ["10.20.0.0/16"]       # CIDRs inside the denied ranges that stay reachable
//!                                # (never inside a metadata address)
//!
//! [[rule]]
//! name = "relay-socat"           # required, unique, [A-Za-z0-9_.:-]+; "catalog:" is reserved
//! action = "deny"                # required: "deny" | "audit" | "allow"
//! exe = "/usr/bin/socat"         # executable path(s), resolved to device+inode at load
//! exe_name = "socat"             # the executable file's name as the kernel sees it
//! comm = "socat"                 # task comm (at most 15 bytes)
//! uid = 0                        # uid(s)
//! user = "nobody"                # user name(s), resolved to uids
//! cgroup = "cloudflared.service" # cgroup v2 path below the root, or a bare unit name
//! parent_exe = "/usr/sbin/sshd"  # the direct parent's executable path(s)
//! ancestor_exe = "/usr/sbin/sshd" # any ancestor's executable path(s)
//! script = "/opt/relay/relay.py" # the script an interpreter runs, as its command line gives it
//! ```
//!
//! Rules are tried in file order, then the catalog's; the first rule that
//! matches decides, unless the caller is network-facing and the relay
//! verdict is stricter (a user rule with `action = "allow"` exempts a
//! process from the relay verdict). Every criterion takes one value or a list; a list matches
//! when any of its values does, and a rule matches when all of its criteria
//! do. Two pairs name the same attribute and therefore combine as one
//! criterion (any value of either matches): `uid` with `user`, and
//! `parent_exe` with `ancestor_exe`. A rule needs at least one criterion.
//!
//! Every key of every table is checked: a misspelt key is an error, not a
//! silently ignored setting.
//!
//! A file is read only if it is UTF-8 and at most [`MAX_CONFIG_BYTES`] long;
//! a file with no settings at all (empty, or only comments) is the
//! [`Config::embedded_default`], with a warning that says so.

use std::{
    fmt,
    fs::File,
    io::{self, Read as _},
    path::Path,
    path::PathBuf,
};

use loopwarden_common::{COMM_LEN, EXE_NAME_LEN};
use serde::Deserialize;

mod lines;
mod raw;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_egress;
mod validate;

use self::{
    lines::{LineIndex, Position},
    raw::RawConfig,
    validate::Validator,
};
use crate::{
    catalog::CATALOG_PREFIX,
    policy::{Action, Mode},
};

/// Where the daemon looks for its policy when not given `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/loopwarden/loopwarden.toml";

/// Name [`Config::embedded_default`] reports as its source.
pub const EMBEDDED_SOURCE: &str = "<built-in default>";

/// The largest policy file loopwarden reads. A real policy is a few
/// kilobytes (at most 64 rules of at most 1024 values per criterion); a
/// bigger file is refused before it is read, so a wrong path (a log, an
/// image, `/dev/zero`) fails at once instead of filling memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Longest path Linux accepts, in bytes, without the terminating NUL
/// (`PATH_MAX` is 4096 with it).
pub(crate) const MAX_PATH_BYTES: usize = libc::PATH_MAX as usize - 1;

/// Longest file name Linux accepts (`NAME_MAX`).
pub(crate) const MAX_NAME_BYTES: usize = 255;

/// A position in the config file, both 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub at: Location,
}

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
    /// `max_entries`).
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
    pub timeout_ms: u32,
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

/// A validated policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where it was read from, for messages: a path or [`EMBEDDED_SOURCE`].
    pub source: String,
    pub mode: Mode,
    pub deny_errno: DenyErrno,
    /// Append the built-in catalog after the user's rules.
    pub catalog: bool,
    /// Report allowed connects to protected destinations too.
    pub log_allowed: bool,
    pub protect: Protect,
    pub relay: Relay,
    pub provenance: Provenance,
    pub ident: Ident,
    pub bind: Bind,
    pub browsers: Browsers,
    pub metrics: Metrics,
    /// User rules in file order.
    pub rules: Vec<Rule>,
    /// Egress guard rules in file order.
    pub egress: Vec<Egress>,
    /// Things an operator should know about the file that do not stop it
    /// from loading; compiling copies them into the policy's warnings.
    pub warnings: Vec<String>,
}

impl Config {
    /// The policy the daemon runs when no file exists at
    /// [`DEFAULT_CONFIG_PATH`] and none was named: audit mode, every port,
    /// the catalog, no user rules, every network namespace. It is also the
    /// single source of the defaults for keys a file leaves out.
    pub fn embedded_default() -> Self {
        Config {
            source: EMBEDDED_SOURCE.to_owned(),
            mode: Mode::Audit,
            deny_errno: DenyErrno::Econnrefused,
            catalog: true,
            log_allowed: false,
            protect: Protect {
                ports: PortSet::All,
                netns: Vec::new(),
                host_addresses: false,
            },
            relay: Relay {
                action: Action::Audit,
                window_ms: 2000,
            },
            provenance: Provenance {
                tag: true,
                getsockopt: true,
                getsockopt_cgroups: Vec::new(),
                query: true,
                connections: loopwarden_common::MAX_CONNS,
            },
            ident: Ident {
                listen: Vec::new(),
                netns: None,
                relayed: IdentError::NoUser,
                timeout_ms: 30_000,
            },
            bind: Bind::default(),
            // Audit: the default policy only reports, and a browser on a
            // local port is as often a web UI as an attack.
            browsers: Browsers {
                action: Action::Audit,
                deny: Vec::new(),
                audit: Vec::new(),
                allow: Vec::new(),
                exe_name: Vec::new(),
                exe: Vec::new(),
            },
            metrics: Metrics {
                socket: true,
                listen: None,
            },
            rules: Vec::new(),
            egress: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Reads and validates the file at `path`: a directory, a file over
    /// [`MAX_CONFIG_BYTES`] or one that is not UTF-8 is refused with an
    /// error saying so.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let read_error = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                ConfigError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        };
        let name = path.display().to_string();
        let file = File::open(path).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        if meta.is_dir() {
            return Err(ConfigError::IsDirectory {
                path: path.to_owned(),
            });
        }
        let too_large = |size| ConfigError::TooLarge {
            file: name.clone(),
            size,
        };
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(too_large(Some(meta.len())));
        }
        // Pipes and devices report no size: read one byte past the limit.
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(too_large(None));
        }
        Self::from_bytes_named(&bytes, &name)
    }

    /// Like [`Config::from_str_named`], for the raw bytes of a file: they
    /// must be UTF-8 and at most [`MAX_CONFIG_BYTES`] long.
    pub fn from_bytes_named(bytes: &[u8], name: &str) -> Result<Self, ConfigError> {
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                file: name.to_owned(),
                size: Some(bytes.len() as u64),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let valid = &bytes[..e.valid_up_to()];
            let at = std::str::from_utf8(valid).map_or_else(
                |_| Location::default(),
                |v| LineIndex::new(v).locate(v.len()),
            );
            ConfigError::NotUtf8 {
                file: name.to_owned(),
                at,
                byte: bytes.get(e.valid_up_to()).copied().unwrap_or_default(),
            }
        })?;
        Self::from_str_named(text, name)
    }

    /// Parses and validates `text`; `name` (usually the path) prefixes every
    /// error message.
    pub fn from_str_named(text: &str, name: &str) -> Result<Self, ConfigError> {
        let lines = LineIndex::new(text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| lines.locate(span.start));
            // One line, so it reads well in the journal.
            let mut message = e.message().trim().replace('\n', "; ");
            if let Some(context) = at.and_then(|at| lines.context(at)) {
                message = format!("{context}: {message}");
            }
            ConfigError::Syntax {
                file: name.to_owned(),
                at,
                message,
            }
        })?;
        Validator {
            file: name,
            lines: &lines,
        }
        .config(raw)
    }
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {} does not exist: create it, or pass --config with the file to use \
         (`loopwarden check-config FILE` validates one)",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error(
        "config file {} is a directory: name the policy file itself (e.g. {})",
        path.display(),
        path.join("loopwarden.toml").display()
    )]
    IsDirectory { path: PathBuf },
    #[error(
        "config file {file} is {}the {MAX_CONFIG_BYTES}-byte (4 MiB) limit for policy files: is \
         this the right file?",
        size.map_or_else(|| "longer than ".to_owned(), |size| format!("{size} bytes, over "))
    )]
    TooLarge {
        file: String,
        /// `None` when the file does not say (a pipe or a device).
        size: Option<u64>,
    },
    #[error(
        "{}: not UTF-8 text (byte {byte:#04x}): policy files must be UTF-8",
        Position(file, Some(at))
    )]
    NotUtf8 {
        file: String,
        /// Where the first byte that is not UTF-8 is.
        at: Location,
        byte: u8,
    },
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type, an unknown key, a missing key.
    #[error("{}: {message}", Position(file, at.as_ref()))]
    Syntax {
        file: String,
        /// Absent only when the parser could not say.
        at: Option<Location>,
        message: String,
    },
    /// Well-formed TOML with a value the policy cannot use.
    #[error("{}: {problem}", Position(file, Some(at)))]
    Invalid {
        file: String,
        at: Location,
        problem: Problem,
    },
}

/// What is wrong with a well-formed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("rule name `{name}` may only contain letters, digits and `_ . : -`")]
    BadRuleName { name: String },
    #[error(
        "rule name `{name}` starts with `{CATALOG_PREFIX}`, which is reserved for built-in rules"
    )]
    ReservedRuleName { name: String },
    #[error("rule name `relay` is reserved: lines name the relay verdict so")]
    RelayRuleName,
    #[error("rule name `bind-guard` is reserved: lines name the bind guard so")]
    BindRuleName,
    #[error("rule name `{name}` is already used by the rule at line {first_line}")]
    DuplicateRuleName { name: String, first_line: usize },
    #[error(
        "rule `{rule}` has no criteria: give at least one of exe, exe_name, comm, uid, user, \
         cgroup, parent_exe, ancestor_exe, script"
    )]
    NoCriteria { rule: String },
    #[error(
        "window_ms is {value}: give milliseconds from {} to {}",
        RELAY_WINDOW_MS.start(),
        RELAY_WINDOW_MS.end()
    )]
    RelayWindow { value: i64 },
    #[error(
        "timeout_ms is {value}: give milliseconds from {} to {}",
        IDENT_TIMEOUT_MS.start(),
        IDENT_TIMEOUT_MS.end()
    )]
    IdentTimeout { value: i64 },
    #[error(
        "connections is {value}: give how many live tagged connections to hold, from {} to {}",
        CONNECTIONS.start(),
        CONNECTIONS.end()
    )]
    Connections { value: i64 },
    #[error("`{text}` is not a socket address: write \"127.0.0.1:113\" or \"[::1]:113\"")]
    BadSocketAddr { text: String },
    #[error(
        "metrics listen address `{addr}` is not a loopback address: write e.g. \"127.0.0.1:9477\" \
         (to scrape from elsewhere, put a proxy in front)"
    )]
    MetricsNotLoopback { addr: std::net::SocketAddr },
    #[error(
        "script `{script}` is {len} bytes but the kernel keeps at most {max}, so it could never \
         match",
        max = loopwarden_common::SCRIPT_LEN - 1
    )]
    ScriptTooLong { script: String, len: usize },
    #[error("`{field}` is an empty list: remove the key or list at least one value")]
    EmptyList { field: &'static str },
    #[error("`{field}` is an empty string")]
    EmptyValue { field: &'static str },
    #[error(
        "comm `{comm}` is {len} bytes but the kernel keeps at most {max}, so it could never match \
         (match the executable with exe or exe_name instead)",
        max = COMM_LEN - 1
    )]
    CommTooLong { comm: String, len: usize },
    #[error("`{field}` must be an absolute path, not `{path}`")]
    RelativePath { field: &'static str, path: String },
    #[error(
        "`{field}` path is {len} bytes, longer than Linux allows ({MAX_PATH_BYTES}, PATH_MAX \
         without its NUL)"
    )]
    PathTooLong { field: &'static str, len: usize },
    #[error(
        "`{field}` path has a {len}-byte component, longer than Linux allows ({MAX_NAME_BYTES}, \
         NAME_MAX)"
    )]
    PathComponentTooLong { field: &'static str, len: usize },

    #[error("exe_name `{name}` contains `/`: it is the executable's file name; put paths in exe")]
    NotAFileName { name: String },
    #[error(
        "exe_name `{name}` is {len} bytes but the kernel compares at most {max}, so it would also \
         match every name sharing those bytes (match the file with exe instead)",
        max = EXE_NAME_LEN - 1
    )]
    ExeNameTooLong { name: String, len: usize },
    #[error("port {port} is out of range: ports are 1-65535")]
    PortOutOfRange { port: i64 },
    #[error("`{text}` is not a port range: write \"FIRST-LAST\", e.g. \"9000-9100\"")]
    BadPortRange { text: String },
    #[error("port range {first}-{last} is reversed: the first port must not exceed the last")]
    ReversedPortRange { first: u16, last: u16 },
    #[error("\"all\" cannot be combined with other ports")]
    AllInList,
    #[error(
        "loopback_only takes ports and ranges, not \"all\": list the ports services must keep \
         on loopback, e.g. [11434, \"9000-9100\"]"
    )]
    BindAllPorts,
    #[error("egress rule name `{name}` is already used by the egress rule at line {first_line}")]
    DuplicateEgressName { name: String, first_line: usize },
    #[error("egress rule `{rule}`: action must be \"deny\" or \"audit\"")]
    EgressAction { rule: String },
    #[error(
        "egress rule `{rule}` names no service: give at least one of exe, user, uid, cgroup \
         (to keep every process from a destination, use a firewall)"
    )]
    EgressNoSubject { rule: String },
    #[error(
        "`{text}` is neither a CIDR nor a built-in set: write a CIDR like \"203.0.113.0/24\" or \
         one of metadata, loopback, link-local, private"
    )]
    EgressUnknown { text: String },
    #[error("`{text}` is not a CIDR: write e.g. \"10.20.0.0/16\" or \"2001:db8::/32\"")]
    BadCidr { text: String },
    #[error("`{text}` has host bits set: write its network, {network}")]
    CidrHostBits { text: String, network: ipnet::IpNet },
    #[error(
        "allow `{allow}` lies inside the cloud metadata address {metadata}, which every egress rule \
         refuses: an allow can never re-open it"
    )]
    AllowInMetadata { allow: String, metadata: String },
    #[error("too many egress rules: {count}, at most {max} fit (this is the first that does not)")]
    TooManyEgressRules { count: usize, max: usize },
    #[error(
        "the egress rules list {count} distinct prefixes (with the built-in metadata addresses), \
         at most {max} fit (this rule's are the first that do not): use wider ranges"
    )]
    TooManyEgressPrefixes { count: usize, max: u32 },
    #[error(
        "[browsers] {list} takes ports and ranges, not \"all\": the table's `action` says what \
         ports no list names get"
    )]
    BrowsersAllPorts { list: &'static str },
    #[error(
        "port {port} is already listed in [browsers] {first_list} at line {first_line}: a port \
         gets one treatment"
    )]
    BrowsersPortTwice {
        port: u16,
        first_list: &'static str,
        first_line: usize,
    },
    #[error("rule name `browsers` is reserved: lines name the rule of [browsers] exe/exe_name so")]
    BrowsersRuleName,
    #[error(
        "too many rules: {user} in the file plus {catalog} from the catalog make {total}, at most \
         {max} fit (this is the first that does not); merge rules or set `catalog = false`",
        total = user + catalog
    )]
    TooManyRules {
        user: usize,
        catalog: usize,
        max: usize,
    },
}
