//! From kernel records to audit lines.
//!
//! The kernel's [`ConnectEvent`] is the authority on who connected: pid,
//! uid, comm, cgroup id and the executable's identity were read inside
//! connect(). What the kernel cannot cheaply give (the executable's path,
//! the command line, the cgroup path, the user name) is added here from
//! `/proc`, best effort: a process that has already exited keeps its kernel
//! identity and shows `?` for the rest.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use loopwarden_common::{ConnectEvent, ExeKey, NO_RULE, verdict};
use serde::Serialize;

use crate::{
    maps::addr_from_key,
    policy::{RuleInfo, name_from_fixed},
};

/// How audit lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `key=value` pairs after a timestamp and verdict, for people.
    Human,
    /// One JSON object per line, for machines.
    Json,
}

/// One audit record: a kernel event with what userspace could add.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `deny`, `would-deny` (audit mode), `audit` or `allow`.
    pub verdict: &'static str,
    /// Name of the matched rule, if any.
    pub rule: Option<String>,
    pub dst: String,
    pub dst_port: u16,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub gid: u32,
    pub comm: String,
    /// Path of the executable, from `/proc/PID/exe`; `None` once the process exited.
    pub exe: Option<String>,
    /// The executable's file name as the kernel saw it at connect time.
    pub exe_name: String,
    /// The executable's identity as the kernel saw it: `major:minor:inode`.
    pub exe_id: String,
    /// The parent's executable path and identity, from `/proc/PPID/exe`
    /// (the kernel reports the parent's pid, read at connect time).
    pub parent_exe: Option<String>,
    pub parent_exe_id: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
}

/// Turns kernel events into [`AuditRecord`]s.
pub struct Enricher {
    rules: Vec<RuleInfo>,
    /// The cgroup v2 mount, to check a `/proc` cgroup path against the id
    /// the kernel reported.
    cgroup_root: PathBuf,
    /// Wall clock minus CLOCK_MONOTONIC, to date kernel timestamps.
    boot_offset: Duration,
    users: HashMap<u32, Option<String>>,
    /// Executable paths seen before, by identity, for processes that exit
    /// before userspace reads their `/proc` entry.
    exes: HashMap<ExeKey, String>,
}

impl Enricher {
    pub fn new(rules: Vec<RuleInfo>, cgroup_root: PathBuf) -> Self {
        Self {
            rules,
            cgroup_root,
            boot_offset: boot_offset(),
            users: HashMap::new(),
            exes: HashMap::new(),
        }
    }

    /// Swaps in the rule names of a reloaded policy.
    pub fn set_rules(&mut self, rules: Vec<RuleInfo>) {
        self.rules = rules;
    }

    pub fn enrich(&mut self, ev: &ConnectEvent) -> AuditRecord {
        let ip = addr_from_key(&ev.daddr);
        // Show plain IPv4 for an IPv4 socket; keep the mapped form a v6 socket used.
        let ip = match (ev.family, ip.to_ipv4_mapped()) {
            (2, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(ip),
        };
        let rule = (ev.rule != NO_RULE)
            .then(|| self.rules.get(usize::from(ev.rule)))
            .flatten()
            .map(|r| r.name.clone());
        let pid = ev.tgid;
        // /proc/PID speaks for the caller only while PID is still the same
        // process (same start time); a recycled pid lends it nothing.
        let alive = same_process(pid, ev.start_boottime_ns);
        // A forked child that did not exec (socat's per-connection child) has
        // its parent's executable: when it is already gone, the parent still
        // tells its path, command line and cgroup.
        let parent_id = (ev.ppid != 0)
            .then(|| file_id(&format!("/proc/{}/exe", ev.ppid)))
            .flatten();
        let forked = ev.exe != ExeKey::default() && proc_exe(ev.ppid, &ev.exe).is_some();
        let exe = alive
            .then(|| proc_exe(pid, &ev.exe))
            .flatten()
            .or_else(|| forked.then(|| proc_exe(ev.ppid, &ev.exe)).flatten())
            .or_else(|| self.cached_exe(&ev.exe));
        if let Some(path) = &exe {
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
            .find(|path| self.cgroup_id_of(path) == Some(ev.cgroup_id));
        AuditRecord {
            time: humantime::format_rfc3339_millis(
                SystemTime::UNIX_EPOCH + self.boot_offset + Duration::from_nanos(ev.ktime_ns),
            )
            .to_string(),
            verdict: verdict_name(ev.verdict),
            rule,
            dst: SocketAddr::new(ip, ev.dport).to_string(),
            dst_port: ev.dport,
            pid,
            tid: ev.pid,
            ppid: ev.ppid,
            uid: ev.uid,
            user: self.user_name(ev.uid),
            gid: ev.gid,
            comm: name_from_fixed(&ev.comm),
            exe,
            exe_name: name_from_fixed(&ev.exe_name),
            exe_id: exe_id(ev.exe.dev, ev.exe.ino),
            parent_exe: proc_link(ev.ppid, "exe"),
            parent_exe_id: parent_id.map(|id| exe_id(id.dev, id.ino)),
            cmdline,
            cgroup,
            cgroup_id: ev.cgroup_id,
            netns_cookie: ev.netns_cookie,
            socket_cookie: ev.socket_cookie,
        }
    }

    /// The id (directory inode) of a cgroup v2 path like `/system.slice/x`.
    fn cgroup_id_of(&self, path: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let dir = self.cgroup_root.join(path.trim_start_matches('/'));
        fs::metadata(dir).ok().map(|m| m.ino())
    }

    /// A path seen earlier for this identity, if it still names the same file.
    fn cached_exe(&self, id: &ExeKey) -> Option<String> {
        let path = self.exes.get(id)?;
        is_file(path, path, id).then(|| path.clone())
    }

    fn user_name(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| user_by_uid(&fs::read_to_string("/etc/passwd").ok()?, uid))
            .clone()
    }
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::DENY => "deny",
        verdict::WOULD_DENY => "would-deny",
        verdict::AUDIT => "audit",
        _ => "allow",
    }
}

impl AuditRecord {
    /// One line, without the trailing newline.
    pub fn format(&self, format: LogFormat) -> String {
        match format {
            LogFormat::Json => serde_json::to_string(self).unwrap_or_else(|e| {
                format!("{{\"error\":\"serializing an audit record failed: {e}\"}}")
            }),
            LogFormat::Human => self.human(),
        }
    }

    fn human(&self) -> String {
        let unknown = "?";
        let mut line = format!(
            "{} {} rule={} dst={} pid={} ppid={} uid={}({}) comm={} exe={} exe_name={} exe_id={} parent_exe={}",
            self.time,
            self.verdict.to_uppercase(),
            self.rule.as_deref().unwrap_or("-"),
            self.dst,
            self.pid,
            self.ppid,
            self.uid,
            self.user.as_deref().unwrap_or(unknown),
            quote(&self.comm),
            quote(self.exe.as_deref().unwrap_or(unknown)),
            quote(&self.exe_name),
            self.exe_id,
            quote(self.parent_exe.as_deref().unwrap_or(unknown)),
        );
        let _ = write!(
            line,
            " cmdline={} cgroup={}",
            quote(self.cmdline.as_deref().unwrap_or(unknown)),
            quote(self.cgroup.as_deref().unwrap_or(unknown)),
        );
        line
    }
}

/// Quotes a value when it has spaces, quotes or control characters.
fn quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\')
    {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

fn exe_id(kdev: u64, ino: u64) -> String {
    format!("{}:{}:{}", kdev >> 20, kdev & 0xf_ffff, ino)
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

/// Looks a uid up in passwd-format text.
pub fn user_by_uid(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid_field = fields.nth(1)?;
        (uid_field.parse() == Ok(uid)).then(|| name.to_owned())
    })
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
    use crate::{maps::addr_key, policy::Action};

    fn event() -> ConnectEvent {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"socat");
        let mut exe_name = [0u8; 32];
        exe_name[..5].copy_from_slice(b"socat");
        ConnectEvent {
            ktime_ns: 1,
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
        Enricher::new(
            vec![RuleInfo {
                name: "catalog:socat".into(),
                action: Action::Deny,
                matches: "exe_name in [socat]".into(),
            }],
            PathBuf::from("/nonexistent"),
        )
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

    #[test]
    fn user_lookup_reads_passwd_format() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/sbin/nologin\n";
        assert_eq!(user_by_uid(passwd, 65534).as_deref(), Some("nobody"));
        assert_eq!(user_by_uid(passwd, 5), None);
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
