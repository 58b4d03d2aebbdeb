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
    collections::HashMap,
    fmt, fs,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use loopwarden_common::{ConnectEvent, ExeKey, NO_RULE, verdict};
use serde::{Serialize, Serializer};

use crate::{cut::Cut, kernel::maps::addr_from_key, policy::RuleInfo};

/// How audit lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `key=value` pairs after a timestamp and verdict, for people.
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

/// Repeats summarised into one record (see [`crate::report`]): `count`
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
    /// Present on a summary line only (see [`Repeat`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Repeat>,
}

/// Rule lists of this many recent installs are kept, so a report queued
/// before a policy change still names the rule that judged it.
const RULE_LISTS_KEPT: usize = 64;
/// How long a user name found for a uid is used before asking NSS again.
const USER_NAME_TTL: Duration = Duration::from_secs(60);
/// How long a uid NSS had no name for (or failed on) shows none before
/// asking again: a user created meanwhile (a `DynamicUser=` unit starting)
/// is named within this time.
const USER_MISSING_TTL: Duration = Duration::from_secs(5);
/// Past this many cached uids, expired entries are dropped (all of them, if
/// none has expired): the cache stays small however many uids connect.
const USER_CACHE_MAX: usize = 4096;
/// Processes whose `/proc` details are kept; past it the cache starts over
/// (a few hundred bytes each).
const PROC_CACHE_MAX: usize = 2048;
/// Executable paths kept by identity; past it the cache starts over.
const EXE_CACHE_MAX: usize = 1024;

/// What `/proc` told about one process (pid and start time), and the kernel
/// facts it was read for: an event reporting another executable (an exec
/// since), parent or cgroup reads it again.
struct ProcInfo {
    exe_key: ExeKey,
    ppid: u32,
    cgroup_id: u64,
    exe: Option<String>,
    cmdline: Option<String>,
    cgroup: Option<String>,
    parent_exe: Option<String>,
    parent_exe_id: Option<ExeKey>,
}

/// Turns kernel events into [`AuditRecord`]s.
pub struct Enricher {
    /// Rule lists by the `policy_seq` of their install, newest last.
    rules: std::collections::VecDeque<(u64, Vec<RuleInfo>)>,
    /// The cgroup v2 mount, to check a `/proc` cgroup path against the id
    /// the kernel reported.
    cgroup_root: PathBuf,
    users: UserNames,
    procs: ProcCache,
}

/// `/proc` details by (pid, start time), and executable paths by identity
/// for processes that exit before userspace reads their `/proc` entry.
#[derive(Default)]
struct ProcCache {
    by_process: HashMap<(u32, u64), ProcInfo>,
    exes: HashMap<ExeKey, String>,
}

impl Enricher {
    pub fn new(cgroup_root: PathBuf) -> Self {
        Self {
            rules: std::collections::VecDeque::new(),
            cgroup_root,
            users: UserNames::default(),
            procs: ProcCache::default(),
        }
    }

    /// Records the rule names of the policy installed as `seq`.
    pub fn set_rules(&mut self, seq: u64, rules: Vec<RuleInfo>) {
        if self.rules.len() == RULE_LISTS_KEPT {
            self.rules.pop_front();
        }
        self.rules.push_back((seq, rules));
    }

    /// The name of rule `index` of the policy installed as `seq`; `#N` for
    /// a policy this daemon did not install (adopted from a predecessor).
    fn rule_name(&self, seq: u64, index: u8) -> Option<Cow<'_, str>> {
        if index == NO_RULE {
            return None;
        }
        let name = self
            .rules
            .iter()
            .rev()
            .find(|(s, _)| *s == seq)
            .and_then(|(_, rules)| rules.get(usize::from(index)))
            .map_or_else(
                || Cow::Owned(format!("#{index}")),
                |r| Cow::Borrowed(r.name.as_str()),
            );
        Some(name)
    }

    /// The record of a kernel event, `/proc` details from the cache (read
    /// now for a process not seen before).
    pub fn enrich<'a>(&'a mut self, ev: &'a ConnectEvent) -> AuditRecord<'a> {
        let now = Instant::now();
        self.procs.fill(ev, &self.cgroup_root);
        self.users.refresh(ev.uid, now);
        let info = self.procs.get(ev);
        let ip = addr_from_key(&ev.daddr);
        // Show plain IPv4 for an IPv4 socket; keep the mapped form a v6 socket used.
        let ip = match (ev.family, ip.to_ipv4_mapped()) {
            (2, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(ip),
        };
        AuditRecord {
            // Taken afresh for every record: the lines follow the wall
            // clock when NTP steps it.
            time: Time(event_time(ev.ktime_ns)),
            verdict: verdict_name(ev.verdict),
            rule: self.rule_name(ev.policy_seq, ev.rule),
            dst: SocketAddr::new(ip, ev.dport),
            src: None,
            dst_port: ev.dport,
            pid: ev.tgid,
            tid: ev.pid,
            ppid: ev.ppid,
            uid: ev.uid,
            user: self.users.cached(ev.uid),
            gid: ev.gid,
            comm: str_from_fixed(&ev.comm),
            exe: info.and_then(|i| i.exe.as_deref()),
            exe_name: str_from_fixed(&ev.exe_name),
            exe_id: ExeId(ev.exe),
            parent_exe: info.and_then(|i| i.parent_exe.as_deref()),
            parent_exe_id: info.and_then(|i| i.parent_exe_id).map(ExeId),
            cmdline: info.and_then(|i| i.cmdline.as_deref()),
            cgroup: info.and_then(|i| i.cgroup.as_deref()),
            cgroup_id: ev.cgroup_id,
            netns_cookie: ev.netns_cookie,
            socket_cookie: ev.socket_cookie,
            repeat: None,
        }
    }

    /// The record of a connection [`crate::cut`] destroyed. Everything
    /// comes from `/proc` as the owner is now, not from the kernel at
    /// connect(): `time` is when it was cut; `tid` is the pid (which thread
    /// connected is not known); `comm` is the process's (main thread's);
    /// `uid`/`gid` are the real ids; `exe_name` is the file name of the
    /// `/proc/PID/exe` link target; `cgroup_id` is the inode of the cgroup's
    /// directory (0 if it could not be read).
    pub fn cut<'a>(&'a mut self, cut: &'a Cut) -> AuditRecord<'a> {
        let owner = &cut.owner;
        let id = &owner.identity;
        let parent = id
            .ancestors
            .first()
            .filter(|key| **key != ExeKey::default());
        self.users.refresh(id.uid, Instant::now());
        AuditRecord {
            time: Time(SystemTime::now()),
            verdict: CUT,
            rule: Some(Cow::Borrowed(cut.rule_name.as_str())),
            dst: cut.socket.dst,
            src: Some(cut.socket.src),
            dst_port: cut.socket.dst.port(),
            pid: owner.pid,
            tid: owner.pid,
            ppid: owner.ppid,
            uid: id.uid,
            user: self.users.cached(id.uid),
            gid: owner.gid,
            comm: Cow::Borrowed(owner.comm.as_str()),
            exe: owner.exe.as_deref(),
            exe_name: String::from_utf8_lossy(&id.exe_name),
            exe_id: ExeId(id.exe),
            parent_exe: owner.parent_exe.as_deref(),
            parent_exe_id: parent.copied().map(ExeId),
            cmdline: owner.cmdline.as_deref(),
            cgroup: owner.cgroup.as_deref(),
            cgroup_id: id.cgroups.last().copied().unwrap_or(0),
            netns_cookie: cut.netns_cookie,
            socket_cookie: cut.socket.cookie,
            repeat: None,
        }
    }
}

/// A NUL-padded kernel string, borrowed when it is valid UTF-8.
fn str_from_fixed(buf: &[u8]) -> Cow<'_, str> {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end])
}

/// The wall-clock time of a `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) stamp.
pub fn event_time(ktime_ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + boot_offset() + Duration::from_nanos(ktime_ns)
}

impl ProcCache {
    fn get(&self, ev: &ConnectEvent) -> Option<&ProcInfo> {
        self.by_process.get(&(ev.tgid, ev.start_boottime_ns))
    }

    /// Reads `/proc` for the process of `ev` unless what is cached was
    /// read for the same executable, parent and cgroup.
    fn fill(&mut self, ev: &ConnectEvent, cgroup_root: &std::path::Path) {
        let key = (ev.tgid, ev.start_boottime_ns);
        if self.by_process.get(&key).is_some_and(|i| {
            i.exe_key == ev.exe && i.ppid == ev.ppid && i.cgroup_id == ev.cgroup_id
        }) {
            return;
        }
        let info = self.read(ev, cgroup_root);
        if self.by_process.len() >= PROC_CACHE_MAX {
            self.by_process.clear();
        }
        self.by_process.insert(key, info);
    }

    fn read(&mut self, ev: &ConnectEvent, cgroup_root: &std::path::Path) -> ProcInfo {
        let pid = ev.tgid;
        // /proc/PID speaks for the caller only while PID is still the same
        // process (same start time); a recycled pid lends it nothing.
        let alive = same_process(pid, ev.start_boottime_ns);
        // A forked child that did not exec (socat's per-connection child) has
        // its parent's executable: when it is already gone, the parent still
        // tells its path, command line and cgroup.
        let parent_exe_id = (ev.ppid != 0)
            .then(|| file_id(&format!("/proc/{}/exe", ev.ppid)))
            .flatten();
        let forked = ev.exe != ExeKey::default() && proc_exe(ev.ppid, &ev.exe).is_some();
        let exe = alive
            .then(|| proc_exe(pid, &ev.exe))
            .flatten()
            .or_else(|| forked.then(|| proc_exe(ev.ppid, &ev.exe)).flatten())
            .or_else(|| self.cached_exe(&ev.exe));
        if let Some(path) = &exe {
            if self.exes.len() >= EXE_CACHE_MAX {
                self.exes.clear();
            }
            self.exes.insert(ev.exe, path.clone());
        }
        let cmdline = alive
            .then(|| proc_cmdline(pid))
            .flatten()
            .or_else(|| forked.then(|| proc_cmdline(ev.ppid)).flatten());
        // The kernel's cgroup id decides which path is right.
        let cgroup = [alive.then_some(pid), forked.then_some(ev.ppid)]
            .into_iter()
            .flatten()
            .filter_map(proc_cgroup)
            .find(|path| cgroup_id_of(cgroup_root, path) == Some(ev.cgroup_id));
        ProcInfo {
            exe_key: ev.exe,
            ppid: ev.ppid,
            cgroup_id: ev.cgroup_id,
            exe,
            cmdline,
            cgroup,
            parent_exe: proc_link(ev.ppid, "exe"),
            parent_exe_id,
        }
    }

    /// A path seen earlier for this identity, if it still names the same file.
    fn cached_exe(&self, id: &ExeKey) -> Option<String> {
        let path = self.exes.get(id)?;
        is_file(path, path, id).then(|| path.clone())
    }
}

/// The id (directory inode) of a cgroup v2 path like `/system.slice/x`.
fn cgroup_id_of(cgroup_root: &std::path::Path, path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    fs::metadata(dir).ok().map(|m| m.ino())
}

/// User names by uid, from NSS, cached for a while (see the module
/// documentation): one lookup per uid per minute at most, so a slow
/// directory service costs the event loop little.
struct UserNames {
    lookup: fn(u32) -> std::io::Result<Option<String>>,
    /// The name (`None`: none, or the lookup failed) and when to ask again.
    cache: HashMap<u32, (Option<String>, Instant)>,
}

impl Default for UserNames {
    fn default() -> Self {
        Self {
            lookup: crate::resolve::user_name,
            cache: HashMap::new(),
        }
    }
}

impl UserNames {
    /// The name of `uid`, asking NSS when the cached answer has expired.
    #[cfg(test)]
    fn name(&mut self, uid: u32, now: Instant) -> Option<&str> {
        self.refresh(uid, now);
        self.cached(uid)
    }

    /// The name cached for `uid` (see [`UserNames::refresh`]).
    fn cached(&self, uid: u32) -> Option<&str> {
        self.cache.get(&uid).and_then(|(name, _)| name.as_deref())
    }

    /// Asks NSS about `uid` unless a cached answer is still fresh.
    fn refresh(&mut self, uid: u32, now: Instant) {
        if let Some((_, until)) = self.cache.get(&uid)
            && now < *until
        {
            return;
        }
        // A failed lookup shows no name and is retried like a missing one.
        let name = (self.lookup)(uid).ok().flatten();
        let ttl = if name.is_some() {
            USER_NAME_TTL
        } else {
            USER_MISSING_TTL
        };
        if self.cache.len() >= USER_CACHE_MAX {
            self.cache.retain(|_, (_, until)| now < *until);
            if self.cache.len() >= USER_CACHE_MAX {
                self.cache.clear();
            }
        }
        self.cache.insert(uid, (name, now + ttl));
    }
}

/// Verdict of a record made by [`Enricher::cut`].
pub const CUT: &str = "cut";

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::DENY => "deny",
        verdict::WOULD_DENY => "would-deny",
        verdict::AUDIT => "audit",
        _ => "allow",
    }
}

impl AuditRecord<'_> {
    /// One line, without the trailing newline.
    pub fn format(&self, format: LogFormat) -> String {
        let mut buf = Vec::new();
        self.write_line(format, &mut buf);
        buf.pop();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Appends one line, newline included, to `buf`.
    pub fn write_line(&self, format: LogFormat, buf: &mut Vec<u8>) {
        match format {
            LogFormat::Json => {
                let start = buf.len();
                if let Err(e) = serde_json::to_writer(&mut *buf, self) {
                    buf.truncate(start);
                    let _ = write!(
                        buf,
                        "{{\"error\":\"serializing an audit record failed: {e}\"}}"
                    );
                }
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
        if let Some(src) = &self.src {
            let _ = write!(buf, " src={src}");
        }
        let _ = write!(
            buf,
            " pid={} ppid={} uid={}({}) comm={} exe={} exe_name={} exe_id={} parent_exe={}",
            self.pid,
            self.ppid,
            self.uid,
            self.user.unwrap_or(unknown),
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

/// A value quoted when it has spaces, quotes or control characters.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        if !value.is_empty()
            && value
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\')
        {
            f.write_str(value)
        } else {
            write!(f, "{value:?}")
        }
    }
}

/// `/proc/PID/exe`, checked against the kernel's identity so a recycled pid
/// never lends its executable to another process's event.
fn proc_exe(pid: u32, id: &ExeKey) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let path = proc_link(pid, "exe")?;
    is_file(&format!("/proc/{pid}/exe"), &path, id).then_some(path)
}

/// Whether the file reached through `stat_path`, known by the name `path`,
/// is the one the kernel identified as `id`: by `stat()`, or, where `stat()`
/// reports another device than the superblock's (btrfs subvolumes), by the
/// superblock device of the mount holding `path`.
fn is_file(stat_path: &str, path: &str, id: &ExeKey) -> bool {
    let Some(seen) = file_id(stat_path) else {
        return false;
    };
    if seen == *id {
        return true;
    }
    seen.ino == id.ino
        && fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|info| crate::resolve::superblock_dev(&info, std::path::Path::new(path)))
            .is_some_and(|(major, minor)| ExeKey::from_major_minor(major, minor, seen.ino) == *id)
}

/// The kernel-encoded identity of the file at `path` (symlinks followed).
fn file_id(path: &str) -> Option<ExeKey> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).ok()?;
    Some(ExeKey::from_major_minor(
        u64::from(libc::major(meta.dev())),
        u64::from(libc::minor(meta.dev())),
        meta.ino(),
    ))
}

fn proc_link(pid: u32, what: &str) -> Option<String> {
    if pid == 0 {
        return None;
    }
    fs::read_link(format!("/proc/{pid}/{what}"))
        .ok()
        .map(|p| p.display().to_string())
}

fn proc_cmdline(pid: u32) -> Option<String> {
    cmdline_text(&fs::read(format!("/proc/{pid}/cmdline")).ok()?)
}

/// The arguments of a `/proc/PID/cmdline` (NUL-separated) joined by spaces;
/// `None` when there are none.
pub fn cmdline_text(raw: &[u8]) -> Option<String> {
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// The cgroup v2 path (`0::/system.slice/x.service`) of a process.
fn proc_cgroup(pid: u32) -> Option<String> {
    cgroup_v2_path(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The cgroup v2 path in `/proc/PID/cgroup` text (its `0::` line).
pub fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Whether `/proc/PID` is still the process that started at `start_ns`
/// (CLOCK_BOOTTIME), compared the way the kernel reports it: in clock ticks.
fn same_process(pid: u32, start_ns: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    starttime_ticks(&stat) == Some(start_ns / (1_000_000_000 / clock_ticks()))
}

/// Field 22 (starttime) of `/proc/PID/stat`; the comm (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing `)`.
pub fn starttime_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        ticks if ticks > 0 => ticks as u64,
        _ => 100,
    }
}

/// Wall-clock time of CLOCK_MONOTONIC zero.
fn boot_offset() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
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

#[cfg(test)]
mod tests {
    use loopwarden_common::Addr;

    use super::*;
    use crate::{
        cut::{
            procs::Owner,
            sock_diag::{SockId, TcpSocket},
        },
        kernel::maps::addr_key,
        policy::{Action, ProcessIdentity},
    };

    fn event() -> ConnectEvent {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"socat");
        let mut exe_name = [0u8; 32];
        exe_name[..5].copy_from_slice(b"socat");
        ConnectEvent {
            ktime_ns: 1,
            policy_seq: 2,
            socket_cookie: 7,
            netns_cookie: 9,
            start_boottime_ns: 0,
            cgroup_id: 11,
            exe: ExeKey::from_major_minor(254, 1, 4242),
            daddr: addr_key(&"127.0.0.2".parse().unwrap()),
            tgid: u32::MAX - 1,
            pid: u32::MAX - 1,
            ppid: 0,
            uid: 0,
            gid: 0,
            dport: 8080,
            family: 2,
            verdict: verdict::DENY,
            rule: 0,
            _pad0: 0,
            _pad1: 0,
            comm,
            exe_name,
        }
    }

    fn enricher() -> Enricher {
        let mut enricher = Enricher::new(PathBuf::from("/nonexistent"));
        enricher.set_rules(
            2,
            vec![RuleInfo {
                name: "catalog:socat".into(),
                action: Action::Deny,
                matches: "exe_name in [socat]".into(),
            }],
        );
        enricher
    }

    #[test]
    fn a_rule_of_an_unknown_policy_is_named_by_its_index() {
        let mut ev = event();
        ev.policy_seq = 99;
        let line = enricher().enrich(&ev).format(LogFormat::Human);
        assert!(line.contains(" rule=#0 "), "{line}");
    }

    #[test]
    fn human_line_names_verdict_rule_destination_and_identity() {
        let line = enricher().enrich(&event()).format(LogFormat::Human);
        assert!(
            line.contains(" DENY rule=catalog:socat dst=127.0.0.2:8080 "),
            "{line}"
        );
        assert!(line.contains("comm=socat"), "{line}");
        assert!(line.contains("exe_id=254:1:4242"), "{line}");
        // No such process: the path is unknown, not guessed.
        assert!(line.contains("exe=?"), "{line}");
    }

    #[test]
    fn json_line_parses_back() {
        let mut ev = event();
        ev.family = 10;
        ev.daddr = Addr {
            words: addr_key(&"::ffff:127.0.0.1".parse().unwrap()).words,
        };
        ev.verdict = verdict::WOULD_DENY;
        ev.rule = NO_RULE;
        let line = enricher().enrich(&ev).format(LogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["verdict"], "would-deny");
        assert_eq!(v["dst"], "[::ffff:127.0.0.1]:8080");
        assert_eq!(v["rule"], serde_json::Value::Null);
        assert_eq!(v["exe_name"], "socat");
    }

    fn cut() -> Cut {
        Cut {
            rule: 0,
            rule_name: "catalog:socat".into(),
            socket: TcpSocket {
                family: 2,
                state: 1,
                src: "127.0.0.1:40000".parse().unwrap(),
                dst: "127.0.0.2:8080".parse().unwrap(),
                cookie: 4711,
                inode: 99,
                uid: 0,
                id: SockId::zero(),
            },
            netns_cookie: 9,
            owner: Owner {
                pid: 321,
                ppid: 320,
                gid: 0,
                comm: "socat".into(),
                exe: Some("/usr/bin/socat".into()),
                parent_exe: Some("/usr/bin/socat".into()),
                cmdline: Some("socat TCP-LISTEN:9001,fork TCP:127.0.0.2:8080".into()),
                cgroup: Some("/".into()),
                identity: ProcessIdentity {
                    exe: ExeKey::from_major_minor(254, 1, 4242),
                    exe_name: b"socat".to_vec(),
                    comms: vec![b"socat".to_vec()],
                    uid: 0,
                    cgroups: vec![1],
                    ancestors: vec![ExeKey::from_major_minor(254, 1, 4242)],
                },
            },
        }
    }

    #[test]
    fn cut_records_name_the_socket() {
        let (mut cutter, cut) = (enricher(), cut());
        let record = cutter.cut(&cut);
        let line = record.format(LogFormat::Human);
        assert!(
            line.contains(
                " CUT rule=catalog:socat dst=127.0.0.2:8080 src=127.0.0.1:40000 pid=321 ppid=320 "
            ),
            "{line}"
        );
        assert!(line.contains("exe=/usr/bin/socat"), "{line}");
        assert!(line.contains("exe_id=254:1:4242"), "{line}");
        assert!(line.contains("cmdline=\"socat TCP-LISTEN"), "{line}");
        assert!(line.ends_with(" socket_cookie=4711"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&record.format(LogFormat::Json)).unwrap();
        assert_eq!(v["verdict"], "cut");
        assert_eq!(v["src"], "127.0.0.1:40000");
        assert_eq!(v["dst_port"], 8080);
        assert_eq!(v["socket_cookie"], 4711);
        assert_eq!(v["parent_exe_id"], "254:1:4242");
        assert_eq!(v["cgroup_id"], 1);
        // Kernel records have no source: the field is left out, not null.
        let kernel = enricher().enrich(&event()).format(LogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&kernel).unwrap();
        assert!(v.get("src").is_none(), "{kernel}");
        assert!(
            !enricher()
                .enrich(&event())
                .format(LogFormat::Human)
                .contains("socket_cookie")
        );
    }

    #[test]
    fn user_names_come_from_nss() {
        let mut users = UserNames::default();
        let now = Instant::now();
        assert_eq!(users.name(0, now), Some("root"));
        let nobody = crate::resolve::uid_by_name("nobody")
            .unwrap()
            .expect("a user named nobody");
        assert_eq!(users.name(nobody, now), Some("nobody"));
        assert_eq!(users.name(u32::MAX - 1, now), None);
    }

    /// A lookup that knows uid 1000 only once the test "creates" it.
    fn late_user(uid: u32) -> std::io::Result<Option<String>> {
        use std::sync::atomic::Ordering;
        Ok((uid == 1000 && LATE_USER_EXISTS.load(Ordering::SeqCst)).then(|| "late".to_owned()))
    }

    static LATE_USER_EXISTS: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    #[test]
    fn a_missing_user_is_asked_for_again_and_names_expire() {
        use std::sync::atomic::Ordering;
        let mut users = UserNames {
            lookup: late_user,
            cache: HashMap::new(),
        };
        let t0 = Instant::now();
        assert_eq!(users.name(1000, t0), None);
        LATE_USER_EXISTS.store(true, Ordering::SeqCst);
        // Still cached as missing for a moment...
        assert_eq!(users.name(1000, t0 + Duration::from_secs(1)), None);
        // ...then asked again.
        let t1 = t0 + USER_MISSING_TTL;
        assert_eq!(users.name(1000, t1), Some("late"));
        LATE_USER_EXISTS.store(false, Ordering::SeqCst);
        assert_eq!(users.name(1000, t1 + Duration::from_secs(1)), Some("late"));
        // A name is kept a minute, then asked about again (a dynamic uid
        // may have gone).
        assert_eq!(users.name(1000, t1 + USER_NAME_TTL), None);
    }

    #[test]
    fn the_user_cache_stays_bounded() {
        let mut users = UserNames {
            lookup: |_| Ok(None),
            cache: HashMap::new(),
        };
        let t0 = Instant::now();
        for uid in 0..USER_CACHE_MAX as u32 {
            users.name(uid, t0);
        }
        assert_eq!(users.cache.len(), USER_CACHE_MAX);
        // Nothing expired yet: the cache starts over.
        users.name(u32::MAX, t0);
        assert_eq!(users.cache.len(), 1);
    }

    #[test]
    fn starttime_is_field_22_even_with_odd_comms() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(starttime_ticks(stat), Some(987654));
        assert_eq!(starttime_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_recognised_by_its_start_time() {
        let stat = fs::read_to_string("/proc/self/stat").unwrap();
        let ticks = starttime_ticks(&stat).unwrap();
        let ns = ticks * (1_000_000_000 / clock_ticks());
        assert!(same_process(std::process::id(), ns));
        assert!(!same_process(std::process::id(), ns + 10_000_000_000));
    }

    #[test]
    fn short_records_are_rejected() {
        assert!(parse_event(&[0u8; 10]).is_none());
    }
}
