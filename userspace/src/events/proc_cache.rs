//! [`ProcCache`]: what `/proc` says about each reported process (its
//! executable's path, command line, cgroup and parent), cached by pid and
//! start time, and executable and cgroup paths kept by identity for
//! processes gone before their line is written.

use std::{collections::HashMap, fs, path::Path, sync::Arc};

use loopwarden_common::{ConnectEvent, ExeKey, SCRIPT_LEN};

use super::{
    cap::{CMDLINE_BUDGET, PATH_BUDGET, cap_owned},
    cmdline::Waiting,
    proc::{
        file_id, is_file, proc_cgroup, proc_cmdline, proc_exe, proc_link, same_process, started_by,
    },
};
use crate::fresh::Fresh;

/// Processes whose `/proc` details are kept; past it the cache starts over
/// (a few hundred bytes each, at most some 8 KiB: every path and the
/// command line are cut to their budgets in [`super::cap`]).
const PROC_CACHE_MAX: usize = 2048;
/// Executable paths kept by identity; past it the cache starts over.
const EXE_CACHE_MAX: usize = 1024;
/// cgroup paths kept by id; past it the cache starts over.
const CGROUP_CACHE_MAX: usize = 1024;

/// What `/proc` told about one process (pid and start time), and the kernel
/// facts it was read for: an event reporting another executable (an exec
/// since), parent, cgroup or fork state reads it again.
pub(super) struct ProcInfo {
    pub(super) exe_key: ExeKey,
    pub(super) ppid: u32,
    /// [`ConnectEvent::forked`]: whether the parent may speak for it.
    pub(super) forked: u8,
    pub(super) cgroup_id: u64,
    /// The script the kernel read at the process's last exec: another one
    /// is an exec of the same interpreter since.
    pub(super) script: [u8; SCRIPT_LEN],
    pub(super) exe: Option<String>,
    pub(super) cmdline: Option<String>,
    /// Whether the command line was not read because a read of it waits:
    /// read again for the process's next event.
    pub(super) cmdline_waiting: bool,
    pub(super) cgroup: Option<String>,
    pub(super) parent_exe: Option<String>,
    pub(super) parent_exe_id: Option<ExeKey>,
}

/// `/proc` details by (pid, start time), and executable paths by identity
/// for processes that exit before userspace reads their `/proc` entry.
#[derive(Default)]
pub(super) struct ProcCache {
    by_process: HashMap<(u32, u64), ProcInfo>,
    exes: HashMap<ExeKey, String>,
    /// cgroup paths by id, as found by id for processes gone (a cgroup id
    /// is never another cgroup's).
    cgroups: HashMap<u64, String>,
}

impl ProcCache {
    pub(super) fn get(&self, ev: &ConnectEvent) -> Option<&ProcInfo> {
        self.by_process.get(&(ev.tgid, ev.start_boottime_ns))
    }

    /// Reads `/proc` for the process of `ev` unless what is cached was
    /// read for the same executable, script, parent and cgroup.
    pub(super) fn fill(&mut self, ev: &ConnectEvent, cgroup_root: &Path) {
        let key = (ev.tgid, ev.start_boottime_ns);
        if self.by_process.get(&key).is_some_and(|i| {
            !i.cmdline_waiting
                && i.exe_key == ev.exe
                && i.script == ev.script
                && i.ppid == ev.ppid
                && i.forked == ev.forked
                && i.cgroup_id == ev.cgroup_id
        }) {
            return;
        }
        let info = self.read(ev, cgroup_root);
        if self.by_process.len() >= PROC_CACHE_MAX {
            self.by_process.clear();
        }
        self.by_process.insert(key, info);
    }

    fn read(&mut self, ev: &ConnectEvent, cgroup_root: &Path) -> ProcInfo {
        let pid = ev.tgid;
        // /proc/PID speaks for the caller only while PID is still the same
        // process (same start time); a recycled pid lends it nothing.
        let alive = same_process(pid, ev.start_boottime_ns);
        // The parent's /proc speaks for the parent only if it started
        // before the caller did: a pid taken after the parent exited lends
        // nothing either.
        let parent = ev.ppid != 0 && started_by(ev.ppid, ev.start_boottime_ns);
        // A forked child that did not exec (socat's per-connection child) has
        // its parent's executable: when it is already gone, the parent still
        // tells its path, command line and cgroup. Only if the kernel saw it
        // execute nothing: a child that executed the same program (`python3`
        // starting `python3 tool.py`) has a command line of its own, which
        // the parent's is not.
        let parent_exe_id = parent
            .then(|| file_id(&format!("/proc/{}/exe", ev.ppid)))
            .flatten();
        let forked = parent
            && ev.forked != 0
            && ev.exe != ExeKey::default()
            && proc_exe(ev.ppid, &ev.exe).is_some();
        let own_exe = alive.then(|| proc_exe(pid, &ev.exe)).flatten();
        // The caller's own command line only while it still runs the image
        // that connected: one that executed another program since (exec
        // keeps the pid and start time) has that program's arguments.
        let own_image = own_exe.is_some() || (alive && ev.exe == ExeKey::default());
        let exe = own_exe
            .or_else(|| forked.then(|| proc_exe(ev.ppid, &ev.exe)).flatten())
            .or_else(|| self.cached_exe(&ev.exe));
        if let Some(path) = &exe {
            if self.exes.len() >= EXE_CACHE_MAX {
                self.exes.clear();
            }
            self.exes.insert(ev.exe, path.clone());
        }
        // The parent's only when the process's own has none: one whose
        // read waits is not the parent's (and is read again next time).
        let (cmdline, cmdline_waiting) = match own_image.then(|| proc_cmdline(pid)) {
            Some(Ok(Some(own))) => (Some((own, pid)), false),
            Some(Err(Waiting)) => (None, true),
            Some(Ok(None)) | None => match forked.then(|| proc_cmdline(ev.ppid)) {
                Some(Ok(parents)) => (parents.map(|p| (p, ev.ppid)), false),
                Some(Err(Waiting)) => (None, true),
                None => (None, false),
            },
        };
        let parent_exe = parent.then(|| proc_link(ev.ppid, "exe")).flatten();
        // The checks above came before the reads: a pid that was taken by
        // another process in between is not the same one now, and what was
        // read through it is dropped. (The executable and the cgroup are
        // checked by their kernel identities instead.)
        let still = |by: u32| {
            if by == pid {
                same_process(pid, ev.start_boottime_ns)
            } else {
                started_by(ev.ppid, ev.start_boottime_ns)
            }
        };
        let cmdline = cmdline.filter(|&(_, by)| still(by)).map(|(text, _)| text);
        let parent_exe = parent_exe.filter(|_| still(ev.ppid));
        // The kernel's cgroup id decides which path is right; for a
        // process gone (or in another cgroup since), the id names it.
        let cgroup = [alive.then_some(pid), forked.then_some(ev.ppid)]
            .into_iter()
            .flatten()
            .filter_map(proc_cgroup)
            .find(|path| cgroup_id_of(cgroup_root, path) == Some(ev.cgroup_id))
            .or_else(|| self.cgroup_by_id(cgroup_root, ev.cgroup_id));
        ProcInfo {
            exe_key: ev.exe,
            ppid: ev.ppid,
            forked: ev.forked,
            cgroup_id: ev.cgroup_id,
            script: ev.script,
            // Cut here too, so the cache's entries stay small.
            exe: exe.map(|v| cap_owned(v, PATH_BUDGET)),
            cmdline: cmdline.map(|v| cap_owned(v, CMDLINE_BUDGET)),
            cmdline_waiting,
            cgroup: cgroup.map(|v| cap_owned(v, PATH_BUDGET)),
            parent_exe: parent_exe.map(|v| cap_owned(v, PATH_BUDGET)),
            parent_exe_id,
        }
    }

    /// The path of cgroup `id`, found by its id ([`crate::resolve::cgroup_path_by_id`])
    /// once, then from the cache.
    fn cgroup_by_id(&mut self, cgroup_root: &Path, id: u64) -> Option<String> {
        if let Some(path) = self.cgroups.get(&id) {
            return Some(path.clone());
        }
        let path = crate::resolve::cgroup_path_by_id(cgroup_root, id)?;
        if self.cgroups.len() >= CGROUP_CACHE_MAX {
            self.cgroups.clear();
        }
        self.cgroups.insert(id, path.clone());
        Some(path)
    }

    /// A path seen earlier for this identity, if it still names the same
    /// file. On a filesystem whose server may stop answering (FUSE, NFS, SMB
    /// and the like), where looking the path up again asks the server, it
    /// is taken as it was seen while the path is still on the identity's
    /// filesystem: the event loop never waits for such a server.
    fn cached_exe(&self, id: &ExeKey) -> Option<String> {
        let path = self.exes.get(id)?;
        let remote_mount = mountinfo()
            .and_then(|info| crate::resolve::mount_of(&info, Path::new(path)))
            .filter(|mount| crate::resolve::stall::may_stall(&mount.fs_type));
        if let Some(mount) = remote_mount {
            return (mount.dev == id.dev).then(|| path.clone());
        }
        is_file(path, path, id).then(|| path.clone())
    }
}

/// How long a read of `/proc/self/mountinfo` serves [`ProcCache`]'s
/// lookups of gone processes' executables: a flood of short-lived clients
/// (a new flow each) would read and parse it at every line, and a host
/// with thousands of mounts has megabytes of it.
const MOUNTINFO_KEPT: std::time::Duration = std::time::Duration::from_secs(1);

/// `/proc/self/mountinfo`, as read at most [`MOUNTINFO_KEPT`] ago.
fn mountinfo() -> Option<Arc<str>> {
    static LAST: Fresh<Option<Arc<str>>> = Fresh::new(MOUNTINFO_KEPT);
    LAST.get(|| {
        fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .map(Arc::from)
    })
}

/// The id (directory inode) of a cgroup v2 path like `/system.slice/x`.
fn cgroup_id_of(cgroup_root: &Path, path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    fs::metadata(dir).ok().map(|m| m.ino())
}
