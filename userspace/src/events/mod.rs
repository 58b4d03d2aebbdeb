//! From kernel records to audit lines.
//!
//! The kernel's [`ConnectEvent`] is the authority on who connected: pid,
//! uid, comm, cgroup id and the executable's identity were read inside
//! connect(). What the kernel cannot cheaply give (the executable's path,
//! the command line, the cgroup path, the user name) is added here from
//! `/proc`, best effort: a process that has already exited keeps its kernel
//! identity and shows `?` for the rest. What `/proc` said about a process is
//! cached by pid and start time (which name one process for the life of the
//! boot), checked against the executable, parent and cgroup each event
//! reports, so a flood from one process costs one set of `/proc` reads.
//! User names come from NSS (so SSSD, LDAP and `DynamicUser=` users are
//! named) through a cache that forgets: a uid without a name is asked about
//! again a few seconds later, a name is kept for a minute (a dynamic uid may
//! pass to another unit's user).
//!
//! Records borrow what they can from those caches and are written straight
//! into the caller's buffer ([`AuditRecord::write_line`]): no allocation per
//! line once the caches are warm.
//!
//! Connections cut by [`crate::cut`] are reported through the same record
//! ([`Enricher::cut`]), built from `/proc` alone: see there for the fields
//! that are only best effort.

use std::{
    borrow::Cow,
    fmt,
    io::Write as _,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use loopwarden_common::{ConnectEvent, ExeKey, evidence, verdict};
use serde::{Serialize, Serializer};

mod cap;
pub mod cmdline;
pub mod diagnostics;
mod enrich;
pub mod output;
mod proc;
mod proc_cache;
pub mod report;
pub mod rule_file;
pub mod stderr;
pub mod tally;
#[cfg(test)]
mod tests;
mod users;
mod writer;

pub use self::{
    enrich::{Enricher, SharedRules},
    proc::{
        cgroup_v2_path, cmdline_text, proc_cmdline, proc_cmdline_at, same_process, starttime_ticks,
    },
    users::SharedUserNames,
    writer::{Batch, Writer},
};

/// How audit lines (`--log-format`) and diagnostics (`--diagnostics-format`)
/// are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: an audit line's `key=value` pairs after a timestamp and
    /// verdict; a diagnostic's text after a timestamp and level.
    Human,
    /// One JSON object per line, for machines.
    Json,
}

/// An executable's identity as `major:minor:inode` (the kernel's device
/// encoding split back into major and minor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExeId(pub ExeKey);

impl fmt::Display for ExeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ExeKey { dev, ino } = self.0;
        write!(f, "{}:{}:{}", dev >> 20, dev & 0xf_ffff, ino)
    }
}

/// A wall-clock time shown as RFC 3339, UTC, milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Time(pub SystemTime);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_millis(self.0), f)
    }
}

fn display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn display_opt<T: fmt::Display, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Repeats summarised into one record (see [`report`]): `count`
/// connects identical to this record's (same process, destination, verdict
/// and rule) between `first` and `last`, after the previous line of the same
/// flow, none of them with a line of its own. The record's own fields are
/// those of the last of them.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Repeat {
    pub count: u64,
    #[serde(serialize_with = "display")]
    pub first: Time,
    #[serde(serialize_with = "display")]
    pub last: Time,
}

/// One audit record: a kernel event with what userspace could add.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditRecord<'a> {
    /// RFC 3339, UTC, milliseconds.
    #[serde(serialize_with = "display")]
    pub time: Time,
    /// `deny`, `would-deny` (audit mode), `audit` or `allow`; `cut` for an
    /// open connection destroyed when a policy started to deny it.
    pub verdict: &'static str,
    /// Name of the matched rule, if any.
    pub rule: Option<Cow<'a, str>>,
    /// The port's treatment of browsers (`deny`, `audit`, `allow`) when the
    /// rule is a browser-class one: that treatment gave the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<&'static str>,
    #[serde(serialize_with = "display")]
    pub dst: SocketAddr,
    /// The client's own address and port: known for a `cut` connection,
    /// not at connect() (the port is chosen after the hook), so absent
    /// there.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "display_opt"
    )]
    pub src: Option<SocketAddr>,
    pub dst_port: u16,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: Option<&'a str>,
    pub gid: u32,
    pub comm: Cow<'a, str>,
    /// Path of the executable, from `/proc/PID/exe`; `None` once the process exited.
    pub exe: Option<&'a str>,
    /// The executable's file name as the kernel saw it at connect time.
    pub exe_name: Cow<'a, str>,
    /// The executable's identity as the kernel saw it: `major:minor:inode`.
    #[serde(serialize_with = "display")]
    pub exe_id: ExeId,
    /// The parent's executable path and identity, from `/proc/PPID/exe`
    /// (the kernel reports the parent's pid, read at connect time).
    pub parent_exe: Option<&'a str>,
    #[serde(serialize_with = "display_opt")]
    pub parent_exe_id: Option<ExeId>,
    pub cmdline: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    /// The script an interpreter caller runs, as its command line gave it
    /// (read by the kernel at exec).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<Cow<'a, str>>,
    /// What made the caller network-facing: the non-local peer (for
    /// `listening`, the listening address) ...
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "display_opt"
    )]
    pub via: Option<SocketAddr>,
    /// ... how: `accepted`, `listening`, `received`, `connected` or `stdio` ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_how: Option<&'static str>,
    /// ... and how long before the connect (not for `listening`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_ago_ms: Option<u64>,
    /// Present on a summary line only (see [`Repeat`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Repeat>,
}

/// A JSON line: the format's version and the host, then the record.
#[derive(Serialize)]
struct Versioned<'r, T> {
    v: u32,
    host: &'r str,
    #[serde(flatten)]
    record: &'r T,
}

/// The rule a record names when the relay verdict decided.
pub const RELAY_RULE_NAME: &str = "relay";

/// The rule a record names when the bind guard judged a bind()
/// ([`loopwarden_common::BIND_RULE`]).
pub const BIND_RULE_NAME: &str = "bind-guard";

/// The rule `[browsers] exe`/`exe_name` make (a browser-class rule).
pub const BROWSERS_RULE_NAME: &str = "browsers";
/// How records name egress rule `r` ([`loopwarden_common::EGRESS_RULE_BASE`]
/// `+ r`): this prefix and the rule's name.
pub const EGRESS_PREFIX: &str = "egress:";

/// Verdict of a record made by [`Enricher::cut`].
pub const CUT: &str = "cut";

/// The name of an [`loopwarden_common::evidence`] kind; `None` for none,
/// `unknown` for a kind this build does not know (a program of another
/// version wrote it): evidence all the same, never taken for none.
pub fn evidence_name(kind: u8) -> Option<&'static str> {
    match kind {
        evidence::NONE => None,
        evidence::LISTENING => Some("listening"),
        evidence::ACCEPTED => Some("accepted"),
        evidence::RECEIVED => Some("received"),
        evidence::CONNECTED => Some("connected"),
        evidence::STDIO => Some("stdio"),
        evidence::UNTRACKED => Some("untracked"),
        _ => Some("unknown"),
    }
}

/// The name of a [`verdict`]; `unknown` for a value this build does not
/// know (a program of another version wrote it), never `allow`: a client
/// that takes `allow` without `via` for a direct client must not be told
/// so of a record it cannot read.
pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::ALLOW => "allow",
        verdict::DENY => "deny",
        verdict::WOULD_DENY => "would-deny",
        verdict::AUDIT => "audit",
        _ => "unknown",
    }
}

/// The `[browsers]` treatment that gives verdict `v`.
pub fn treatment_name(v: u8) -> &'static str {
    match v {
        verdict::DENY | verdict::WOULD_DENY => "deny",
        verdict::AUDIT => "audit",
        _ => "allow",
    }
}

impl<'a> AuditRecord<'a> {
    /// One line, without the trailing newline.
    pub fn format(&self, format: LogFormat) -> String {
        let mut buf = Vec::new();
        self.write_line(format, &mut buf);
        buf.pop();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Appends one line, newline included, to `buf`: with its priority
    /// first when stdout is the journal's (see [`output`]); in JSON with
    /// the format's version and the host name.
    pub fn write_line(&self, format: LogFormat, buf: &mut Vec<u8>) {
        // The fields a process names, each cut to its budget (see
        // [`cap`]): a record not read from the cache (a cut's) may hold
        // longer ones.
        let capped = |v: Option<&'a str>, budget| v.map(|v| cap::cap(v, budget));
        let exe = capped(self.exe, cap::PATH_BUDGET);
        let parent_exe = capped(self.parent_exe, cap::PATH_BUDGET);
        let cmdline = capped(self.cmdline, cap::CMDLINE_BUDGET);
        let cgroup = capped(self.cgroup, cap::PATH_BUDGET);
        let cut = |v: &Option<Cow<'_, str>>| matches!(v, Some(Cow::Owned(_)));
        if [&exe, &parent_exe, &cmdline, &cgroup].into_iter().any(cut) {
            let record = AuditRecord {
                exe: exe.as_deref(),
                parent_exe: parent_exe.as_deref(),
                cmdline: cmdline.as_deref(),
                cgroup: cgroup.as_deref(),
                ..self.clone()
            };
            return record.write_within_budget(format, buf);
        }
        self.write_within_budget(format, buf);
    }

    /// [`Self::write_line`] of a record whose fields are within budget.
    fn write_within_budget(&self, format: LogFormat, buf: &mut Vec<u8>) {
        output::write_priority(
            buf,
            output::journal().stdout,
            output::verdict_priority(self.verdict),
        );
        match format {
            LogFormat::Json => {
                let start = buf.len();
                let host = output::host();
                let line = Versioned {
                    v: output::JSON_VERSION,
                    host: &host,
                    record: self,
                };
                if let Err(e) = serde_json::to_writer(&mut *buf, &line) {
                    buf.truncate(start);
                    let _ = write!(
                        buf,
                        "{{\"error\":\"serializing an audit record failed: {e}\"}}"
                    );
                }
                escape_raw(buf, start);
            }
            LogFormat::Human => self.human(buf),
        }
        buf.push(b'\n');
    }

    fn human(&self, buf: &mut Vec<u8>) {
        let unknown = "?";
        let _ = write!(
            buf,
            "{} {} rule={} dst={}",
            self.time,
            Upper(self.verdict),
            self.rule.as_deref().unwrap_or("-"),
            self.dst,
        );
        if let Some(treatment) = self.browser {
            let _ = write!(buf, " browser={treatment}");
        }
        if let Some(src) = &self.src {
            let _ = write!(buf, " src={src}");
        }
        let _ = write!(
            buf,
            " pid={} ppid={} uid={}({}) comm={} exe={} exe_name={} exe_id={} parent_exe={}",
            self.pid,
            self.ppid,
            self.uid,
            Quoted(self.user.unwrap_or(unknown)),
            Quoted(&self.comm),
            Quoted(self.exe.unwrap_or(unknown)),
            Quoted(&self.exe_name),
            self.exe_id,
            Quoted(self.parent_exe.unwrap_or(unknown)),
        );
        let _ = write!(
            buf,
            " cmdline={} cgroup={}",
            Quoted(self.cmdline.unwrap_or(unknown)),
            Quoted(self.cgroup.unwrap_or(unknown)),
        );
        if let Some(script) = &self.script {
            let _ = write!(buf, " script={}", Quoted(script));
        }
        if let (Some(via), Some(how)) = (&self.via, self.via_how) {
            match self.via_ago_ms {
                Some(ms) => {
                    let _ = write!(buf, " via={via}({how} {ms}ms before)");
                }
                None => {
                    let _ = write!(buf, " via={via}({how})");
                }
            }
        }
        // A cut names the socket that was destroyed.
        if self.verdict == CUT {
            let _ = write!(buf, " socket_cookie={}", self.socket_cookie);
        }
        if let Some(r) = &self.repeat {
            let _ = write!(
                buf,
                " repeated={} first={} last={}",
                r.count, r.first, r.last
            );
        }
    }
}

/// Escapes, in the JSON written from `start` on, the characters JSON
/// leaves raw that a human line escapes ([`json_leaves_raw`]): the line
/// breaks some readers split at (U+0085, U+2028, U+2029: Python's
/// `str.splitlines`, JavaScript before ES2019), DEL and the C1 controls
/// (U+009B is a terminal's CSI), and the characters that change how the
/// rest displays (U+202E). A process naming itself with one must neither
/// split its line nor reach the terminal of `journalctl -o cat` as it is.
/// They can only be inside strings, where `\uXXXX` means the same.
fn escape_raw(buf: &mut Vec<u8>, start: usize) {
    let line = &buf[start..];
    // Most lines are ASCII without DEL.
    if line.iter().all(|&b| b < 0x7f) {
        return;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    if !text.chars().any(json_leaves_raw) {
        return;
    }
    let mut escaped = String::with_capacity(text.len() + 64);
    for c in text.chars() {
        if json_leaves_raw(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = fmt::Write::write_fmt(&mut escaped, format_args!("\\u{unit:04x}"));
            }
        } else {
            escaped.push(c);
        }
    }
    buf.truncate(start);
    buf.extend_from_slice(escaped.as_bytes());
}

/// Whether JSON leaves `c` as it is where a human line escapes it
/// ([`reshapes`]): DEL and every non-ASCII one (JSON escapes the controls
/// below U+0020 itself).
pub(crate) fn json_leaves_raw(c: char) -> bool {
    c == '\u{7f}' || (!c.is_ascii() && reshapes(c))
}

/// An ASCII string in upper case.
struct Upper<'a>(&'a str);

impl fmt::Display for Upper<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        self.0
            .chars()
            .try_for_each(|c| f.write_char(c.to_ascii_uppercase()))
    }
}

/// A value quoted when it has spaces, quotes or control characters (the
/// audit line's fields, `loopwarden conns`'s cells).
pub(crate) struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        if !value.is_empty() && value.chars().all(plain) {
            f.write_str(value)
        } else {
            write!(f, "{value:?}")
        }
    }
}

/// Whether `c` may stand unquoted in a human line: not a separator, a
/// quote, a control, or a character that changes how the rest displays
/// (bidirectional overrides and isolates, zero-width ones: a name holding
/// U+202E could show a line's fields reversed). The quoted form escapes
/// them (`{:?}`).
fn plain(c: char) -> bool {
    !c.is_whitespace() && c != '"' && c != '\\' && !reshapes(c)
}

/// Whether `c` is a control or may change how the text around it displays:
/// every character `{:?}` escapes but the ASCII ones it escapes for Rust's
/// sake (quotes, backslash): bidirectional marks, overrides and isolates
/// (U+061C, U+200E, U+202E, U+2066...), zero-width and other invisible
/// format characters, the Unicode line and paragraph separators, and
/// combining marks.
pub(crate) fn reshapes(c: char) -> bool {
    c.is_control() || (!c.is_ascii() && c.escape_debug().next() == Some('\\'))
}

/// The wall-clock time of a `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) stamp.
pub fn event_time(ktime_ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + boot_offset() + Duration::from_nanos(ktime_ns)
}

/// Wall-clock time of CLOCK_MONOTONIC zero.
fn boot_offset() -> Duration {
    let mono = crate::monotonic();
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(mono)
}

/// Reads a [`ConnectEvent`] out of a ring-buffer record.
pub fn parse_event(bytes: &[u8]) -> Option<ConnectEvent> {
    if bytes.len() < std::mem::size_of::<ConnectEvent>() {
        return None;
    }
    // SAFETY: the length is checked; ConnectEvent is plain integers, valid for
    // any bit pattern, and read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ConnectEvent>()) })
}
