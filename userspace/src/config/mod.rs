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
//! timeout_ms = 60000             # default: how long a client may take over each query
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
    os::{
        fd::AsFd as _,
        unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    },
    path::Path,
    time::Duration,
};

use nix::poll::{self, PollFd, PollFlags, PollTimeout};

/// How long a FIFO given as the policy file may take to be written to.
const FIFO_WAIT: Duration = Duration::from_secs(10);

mod error;
mod hints;
mod lines;
mod raw;
mod tables;
#[cfg(test)]
mod tests;
mod validate;

pub use self::{
    error::{ConfigError, Problem},
    tables::{
        Bind, Browsers, CONNECTIONS, Criteria, DenyErrno, Egress, EgressDestination,
        IDENT_TIMEOUT_MS, Ident, IdentError, Metrics, PortRange, PortSet, Protect, Provenance,
        RELAY_WINDOW_MS, Relay, Rule,
    },
};
use self::{lines::LineIndex, raw::RawConfig, validate::Validator};
use crate::policy::{Action, Mode};

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
    /// The file has no settings (it is empty or only comments): the
    /// defaults, and most likely a file truncated by accident, which a
    /// reload does not put in force.
    pub empty: bool,
    /// The text it was parsed from (`None`: the embedded default): what
    /// the daemon keeps of the policy in force for its successor (see
    /// `daemon::kept_config`).
    pub text: Option<std::sync::Arc<str>>,
}

impl Config {
    /// Why a running daemon's reload refuses this config, if it does: a
    /// file with no settings (see [`Config::empty`]) would put the
    /// defaults, audit mode, in place of a running policy. The daemon's
    /// reload and `check-config --as-daemon` say the same.
    pub fn reload_refusal(&self) -> Option<String> {
        self.empty.then(|| {
            format!(
                "{} has no settings (it is empty or only comments: truncated?); the defaults \
                 replace a running policy only at start (write `mode = \"audit\"` for them)",
                self.source
            )
        })
    }

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
                // RFC 1413 recommends an idle timeout of 60 to 180 s.
                timeout_ms: 60_000,
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
            empty: false,
            text: None,
        }
    }

    /// Reads and validates the file at `path`: a directory, a file over
    /// [`MAX_CONFIG_BYTES`] or one that is not UTF-8 is refused with an
    /// error saying so.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_file_waiting(path.as_ref(), FIFO_WAIT)
    }

    /// [`Config::from_file`], a FIFO waited for `fifo_wait` at most.
    fn from_file_waiting(path: &Path, fifo_wait: Duration) -> Result<Self, ConfigError> {
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
        // Opened without waiting: a FIFO nothing writes to would hold the
        // open for ever. Reads wait again once it is open (a pipe whose
        // writer is slow, as `<(...)` is, is read whole), and a FIFO waits
        // [`FIFO_WAIT`] at most for its writer (see below).
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(read_error)?;
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )
        .map_err(|e| read_error(e.into()))?;
        let meta = file.metadata().map_err(read_error)?;
        if meta.is_dir() {
            return Err(ConfigError::IsDirectory {
                path: path.to_owned(),
            });
        }
        // A FIFO opened before its writer reads as empty at once: wait for
        // the writer's first bytes (or its close, `: > fifo`), not for
        // ever. A pipe whose writer came and went reads as it is.
        if meta.file_type().is_fifo() {
            let mut poll = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            let waited = PollTimeout::try_from(fifo_wait).unwrap_or(PollTimeout::MAX);
            if poll::poll(&mut poll, waited).map_err(|e| read_error(e.into()))? == 0 {
                return Err(ConfigError::UnwrittenFifo {
                    path: path.to_owned(),
                });
            }
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
            let context = at.and_then(|at| lines.context(at));
            let key = context
                .as_deref()
                .and_then(|c| c.strip_prefix('`')?.strip_suffix('`'));
            // One line, so it reads well in the journal.
            let mut message = hints::humanize(&e.message().trim().replace('\n', "; "), key);
            if let Some(context) = &context {
                message = format!("{context}: {message}");
            }
            // `[rule]` written for `[[rule]]`: say how to write it.
            if message.contains("expected a sequence") {
                for table in ["rule", "egress"] {
                    if text.lines().any(|l| l.trim() == format!("[{table}]")) {
                        message.push_str(&format!(
                            " (each `[[{table}]]` is written with double brackets: they are a \
                             list of tables)"
                        ));
                    }
                }
            }
            ConfigError::Syntax {
                file: name.to_owned(),
                at,
                message,
            }
        })?;
        if let Some(at) = nul_escape(text) {
            return Err(ConfigError::Syntax {
                file: name.to_owned(),
                at: Some(lines.locate(at)),
                message: "a string holds a NUL character (`\\u0000`): no name, path or \
                          command line the kernel compares can hold one, so the value would \
                          match nothing; remove it"
                    .to_owned(),
            });
        }
        let mut config = Validator {
            file: name,
            lines: &lines,
        }
        .config(raw)?;
        config.text = Some(text.into());
        Ok(config)
    }
}

/// Where a string value that holds NUL is written (the offset of its
/// `\u0000` or `\U00000000` escape, the only way to write one: TOML
/// refuses the byte itself); `None` when no value holds one. An escape
/// that is no NUL (in a comment, or a literal string's backslash) is
/// passed over: the values are looked at, parsed, first.
fn nul_escape(text: &str) -> Option<usize> {
    const ESCAPES: [&str; 2] = ["\\u0000", "\\U00000000"];
    if !ESCAPES.iter().any(|e| text.contains(e)) {
        return None;
    }
    fn holds_nul(value: &toml::Value) -> bool {
        match value {
            toml::Value::String(s) => s.contains('\0'),
            toml::Value::Array(items) => items.iter().any(holds_nul),
            toml::Value::Table(table) => {
                table.iter().any(|(k, v)| k.contains('\0') || holds_nul(v))
            }
            _ => false,
        }
    }
    if !holds_nul(&toml::from_str(text).ok()?) {
        return None;
    }
    ESCAPES.iter().filter_map(|e| text.find(e)).min()
}
