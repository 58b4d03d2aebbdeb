//! The `/proc` files an audit line borrows from: executable, command line,
//! cgroup and start time of a pid, each checked against what the kernel
//! reported so a recycled pid lends nothing.

use std::{fs, path::Path};

use super::cmdline::Waiting;

use loopwarden_common::ExeKey;

/// `/proc/PID/exe`, checked against the kernel's identity so a recycled pid
/// never lends its executable to another process's event.
pub(super) fn proc_exe(pid: u32, id: &ExeKey) -> Option<String> {
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
pub(super) fn is_file(stat_path: &str, path: &str, id: &ExeKey) -> bool {
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

/// The kernel-encoded identity of the file at `path` (symlinks followed),
/// from the kernel's cached inode: never waiting for a FUSE or NFS server
/// (see [`crate::resolve::cached`]).
pub(super) fn file_id(path: &str) -> Option<ExeKey> {
    crate::resolve::cached::cached(path).ok().map(|c| c.key)
}

pub(super) fn proc_link(pid: u32, what: &str) -> Option<String> {
    if pid == 0 {
        return None;
    }
    fs::read_link(format!("/proc/{pid}/{what}"))
        .ok()
        .map(|p| p.display().to_string())
}

/// The most of a command line an audit line, an answer or the cache
/// carries: Linux lets a process have megabytes of arguments, which would
/// make each of its lines, and each cached entry, that large.
pub const CMDLINE_MAX: usize = 4096;

/// The command line of `pid`, its first [`CMDLINE_MAX`] bytes, ` …` marking
/// a longer one cut there; `Ok(None)` if it has none or cannot be read.
pub fn proc_cmdline(pid: u32) -> Result<Option<String>, Waiting> {
    proc_cmdline_at(Path::new(&format!("/proc/{pid}")))
}

/// [`proc_cmdline`] of the process (or thread) whose `/proc` directory is
/// `dir`.
///
/// Read on a reader thread, given up past [`super::cmdline::WAIT`] (and
/// not read while a read of the process waits): see [`super::cmdline`].
pub fn proc_cmdline_at(dir: &Path) -> Result<Option<String>, Waiting> {
    let Ok(file) = fs::File::open(dir.join("cmdline")) else {
        return Ok(None);
    };
    let Some(mut raw) = super::cmdline::read(dir, file, CMDLINE_MAX + 1)? else {
        return Ok(None);
    };
    let cut = raw.len() > CMDLINE_MAX;
    raw.truncate(CMDLINE_MAX);
    let text = cmdline_text(&raw).map(|mut text| {
        if cut {
            text.push_str(" …");
        }
        text
    });
    Ok(text)
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

/// The cgroup v2 path (`0::/system.slice/x.service`) of a process, below
/// the host's root (see [`crate::kernel::host_cgroup::host_path`]).
pub(super) fn proc_cgroup(pid: u32) -> Option<String> {
    cgroup_v2_path(&read_lossy(&format!("/proc/{pid}/cgroup"))?)
        .map(|path| crate::kernel::host_cgroup::host_path(&path))
}

/// The cgroup v2 path in `/proc/PID/cgroup` text (its `0::` line).
pub fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Whether `/proc/PID` is still the process that started at `start_ns`
/// (CLOCK_BOOTTIME), compared the way the kernel reports it: in clock ticks.
pub fn same_process(pid: u32, start_ns: u64) -> bool {
    start_ticks(pid) == Some(ticks(start_ns))
}

/// Whether `/proc/PID` started no later than `start_ns` (CLOCK_BOOTTIME),
/// in clock ticks: a process's parent did; a process that took the
/// parent's pid after the parent exited did not.
pub fn started_by(pid: u32, start_ns: u64) -> bool {
    start_ticks(pid).is_some_and(|began| began <= ticks(start_ns))
}

/// When `/proc/PID` started, in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    starttime_ticks(&read_lossy(&format!("/proc/{pid}/stat"))?)
}

/// A `/proc` file as text, whatever its bytes: `stat` holds the comm,
/// which a process may set to bytes that are not UTF-8 (and `cgroup` a
/// delegated cgroup's name), and `read_to_string` would fail on the whole
/// file, taking such a process for gone.
fn read_lossy(path: &str) -> Option<String> {
    Some(String::from_utf8_lossy(&fs::read(path).ok()?).into_owned())
}

/// A CLOCK_BOOTTIME time in ns, in clock ticks.
fn ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / clock_ticks())
}

/// Field 22 (starttime) of `/proc/PID/stat`; the comm (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing `)`.
pub fn starttime_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

pub(super) fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        ticks if ticks > 0 => ticks as u64,
        _ => 100,
    }
}
