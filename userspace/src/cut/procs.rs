//! Who holds a socket, and who that is, from `/proc` (through the `procfs`
//! crate): socket inodes to the pids whose descriptor tables hold them, a
//! pid's [`ProcessIdentity`] in the kernel's terms, and the network
//! namespaces that have processes.
//!
//! Everything here is read after the fact, so it describes the process as
//! it is now, not as it was at connect(): see [`crate::cut`] for what that
//! means.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    io::Read,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use loopwarden_common::{ExeKey, MAX_ANCESTORS};
use procfs::{
    FromRead, ProcResult,
    process::{FDInfo, FDTarget, Process, all_processes},
};

use crate::{
    events::{cgroup_v2_path, proc_cmdline_at},
    policy::ProcessIdentity,
    resolve,
};

/// Threads whose comm is read per process, at most: a comm rule is matched
/// against the process's comm and these.
const MAX_THREADS: usize = 256;
/// `/proc/PID/exe` of a process whose executable was deleted ends so.
const DELETED: &[u8] = b" (deleted)";

/// What `/proc` says about a process holding a socket: its identity for
/// matching, and what an audit line shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub ppid: u32,
    /// Real gid.
    pub gid: u32,
    /// The process's comm (its main thread's).
    pub comm: String,
    /// `/proc/PID/exe` as the link reads.
    pub exe: Option<String>,
    pub parent_exe: Option<String>,
    pub cmdline: Option<String>,
    /// cgroup v2 path below the root, e.g. `/system.slice/x.service`.
    pub cgroup: Option<String>,
    pub identity: ProcessIdentity,
}

/// A pid's file as raw bytes, without the trailing newline: `comm` is bytes
/// in the kernel, and procfs's parsed forms are lossy UTF-8.
struct RawLine(Vec<u8>);

impl FromRead for RawLine {
    fn from_read<R: Read>(mut r: R) -> ProcResult<Self> {
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        Ok(RawLine(bytes))
    }
}

/// The ids `/proc/PID/status` gives a process: its parent's pid and its
/// real uid and gid.
#[derive(Debug, PartialEq, Eq)]
struct Ids {
    ppid: u32,
    ruid: u32,
    rgid: u32,
}

impl Ids {
    /// From `status` as the kernel wrote it (bytes: its `Name:` line is
    /// the comm, whatever its bytes); `None` without all three lines.
    fn of_status(status: &[u8]) -> Option<Self> {
        let field = |name: &[u8]| -> Option<u32> {
            let line = status
                .split(|&b| b == b'\n')
                .find_map(|line| line.strip_prefix(name))?;
            std::str::from_utf8(line)
                .ok()?
                .split_ascii_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some(Ids {
            ppid: field(b"PPid:")?,
            ruid: field(b"Uid:")?,
            rgid: field(b"Gid:")?,
        })
    }
}

/// The `/proc` directory a process's descriptor table, executable, command
/// line and network namespace are read through: its own, unless its main
/// thread has exited while other threads run (a zombie leader, whose
/// `fd`, `exe`, `cmdline` and `ns/net` read as nothing), then that of a
/// thread still running. `None` when no thread of it runs.
fn live_dir(pid: u32) -> Option<PathBuf> {
    let own = PathBuf::from(format!("/proc/{pid}"));
    if zombie(&own) {
        running_thread(pid, &own)
    } else {
        Some(own)
    }
}

/// The `/proc` directory of a thread of process `pid` (whose own is
/// `own`) other than its main one that is still running.
fn running_thread(pid: u32, own: &Path) -> Option<PathBuf> {
    let main = pid.to_string();
    std::fs::read_dir(own.join("task"))
        .ok()?
        .filter_map(Result::ok)
        .map(|task| task.path())
        .find(|task| task.file_name() != Some(OsStr::new(&main)) && !zombie(task))
}

/// Whether the task whose `/proc` directory is `dir` has exited (its
/// state, after the comm's closing parenthesis, is `Z`), or is gone.
pub(crate) fn zombie(dir: &Path) -> bool {
    let Ok(stat) = std::fs::read(dir.join("stat")) else {
        return true;
    };
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return true;
    };
    stat[close + 1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'Z')
}

/// `process`, or, when its main thread has exited while others run, a
/// running thread of it read as the process ([`live_dir`]).
pub(crate) fn live(process: Process) -> Option<Process> {
    let own = PathBuf::from(format!("/proc/{}", process.pid));
    if !zombie(&own) {
        return Some(process);
    }
    Process::new_with_root(running_thread(process.pid as u32, &own)?).ok()
}

/// Socket inode → the pids holding it; pid → when it started.
pub type Holders = (HashMap<u64, Vec<u32>>, HashMap<u32, u64>);

/// For each of `inodes`, the pids that hold a descriptor to that socket,
/// and when each holder started (clock ticks after boot, read right after
/// its descriptors): a pid read again later is the holder only while it
/// started then ([`ProcReader::owner`]). One pass over every process: its
/// descriptor table (read through a running thread where the main one has
/// exited), and the tables of its threads that have their own
/// ([`note_thread_tables`]); processes that vanish or cannot be read are
/// skipped.
pub fn socket_owners(inodes: &HashSet<u64>) -> ProcResult<Holders> {
    let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut started = HashMap::new();
    if inodes.is_empty() {
        return Ok((owners, started));
    }
    for process in all_processes()?.flatten() {
        let pid = process.pid as u32;
        let Ok(fds) = process.fd() else { continue };
        let (held, added) = note_sockets(fds.flatten(), pid, inodes, &mut owners);
        // Also for sockets some process holds: a thread with a table of its
        // own may have handed its socket to another process (by fork or over
        // a Unix socket), which is then not its only holder.
        let in_threads = note_thread_tables(&process, inodes, &mut owners);
        if (added || in_threads)
            && let Ok(stat) = process.stat()
        {
            started.insert(pid, stat.starttime);
        }
        // An empty table: perhaps a main thread that has exited. The
        // process's start time is its main thread's (a zombie's `stat`
        // still tells it), which `ProcReader::owner` compares, not the
        // running thread's it reads the table through.
        if held == 0
            && let Ok(stat) = process.stat()
            && let Some(live) = live(process)
            && let Ok(fds) = live.fd()
            && note_sockets(fds.flatten(), pid, inodes, &mut owners).1
        {
            started.insert(pid, stat.starttime);
        }
    }
    Ok((owners, started))
}

/// [`note_thread_tables`] for every process.
pub(crate) fn note_own_tables(
    inodes: &HashSet<u64>,
    owners: &mut HashMap<u64, Vec<u32>>,
) -> ProcResult<()> {
    for process in all_processes()?.flatten() {
        note_thread_tables(&process, inodes, owners);
    }
    Ok(())
}

/// Adds `process` to `owners` for each of `inodes` held in the table of a
/// thread of it that has a descriptor table of its own
/// (`unshare(CLONE_FILES)`, or `clone` without `CLONE_FILES`), which its
/// `fd` does not show. Of a process with more than one thread, a thread's
/// table is read unless it is one read already: the process's (its main
/// thread's, which [`socket_owners`] reads) or another thread's of it, as
/// `kcmp` tells (where it cannot, every thread's is read). So it costs a
/// listing of the process's threads, and for one with several, a read of
/// its `stat` and a system call per thread and table.
fn note_thread_tables(
    process: &Process,
    inodes: &HashSet<u64>,
    owners: &mut HashMap<u64, Vec<u32>>,
) -> bool {
    let pid = process.pid;
    let Ok(tasks) = process.tasks() else {
        return false;
    };
    let tids: Vec<i32> = tasks.flatten().map(|task| task.tid).collect();
    if tids.len() < 2 {
        return false;
    }
    let mut added = false;
    let own = PathBuf::from(format!("/proc/{pid}"));
    // A main thread that has exited has no table to compare with.
    let mut read: Vec<i32> = if zombie(&own) { Vec::new() } else { vec![pid] };
    for tid in tids {
        if read.iter().any(|&r| r == tid || same_table(r, tid)) {
            continue;
        }
        let dir = own.join("task").join(tid.to_string());
        if let Ok(fds) = Process::new_with_root(dir).and_then(|t| t.fd()) {
            added |= note_sockets(fds.flatten(), pid as u32, inodes, owners).1;
        }
        read.push(tid);
    }
    added
}

/// Whether threads `a` and `b` share one descriptor table: `kcmp(2)` with
/// `KCMP_FILES` (neither nix nor rustix wraps it). `false` where the kernel
/// cannot tell (built without `CONFIG_KCMP`, a seccomp filter that refuses
/// it, a thread gone, a thread that has exited and has no table).
fn same_table(a: i32, b: i32) -> bool {
    const KCMP_FILES: libc::c_int = 2;
    let unused: libc::c_ulong = 0;
    // SAFETY: kcmp takes integers and reads no memory of ours.
    unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, unused, unused) == 0 }
}

/// Adds `pid` to `owners` for each of `fds` that is a socket of `inodes`;
/// how many descriptors there were, and whether it added it.
fn note_sockets(
    fds: impl Iterator<Item = FDInfo>,
    pid: u32,
    inodes: &HashSet<u64>,
    owners: &mut HashMap<u64, Vec<u32>>,
) -> (usize, bool) {
    let (mut seen, mut added) = (0, false);
    for fd in fds {
        seen += 1;
        if let FDTarget::Socket(inode) = fd.target
            && inodes.contains(&inode)
        {
            let pids = owners.entry(inode).or_default();
            if !pids.contains(&pid) {
                pids.push(pid);
                added = true;
            }
        }
    }
    (seen, added)
}

/// A network namespace with processes: its identity and the namespace
/// files of processes in it (`/proc/PID/ns/net`, or a running thread's
/// where the main one has exited), tried in order to enter it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsWithFiles {
    /// Device and inode of the namespace file.
    pub id: (u64, u64),
    pub files: Vec<PathBuf>,
}

/// Namespace files kept per namespace to enter it by (a process may exit
/// meanwhile).
const FILES_PER_NETNS: usize = 4;

/// Every network namespace some process is in (that of its main thread, or
/// of a running thread where the main one has exited), in order of first
/// appearance.
pub fn network_namespaces() -> ProcResult<Vec<NetnsWithFiles>> {
    let mut found: Vec<NetnsWithFiles> = Vec::new();
    let mut index: HashMap<(u64, u64), usize> = HashMap::new();
    for process in all_processes()?.flatten() {
        // procfs's Process::namespaces() stats every namespace of the
        // process; one stat of ns/net is all this needs.
        let mut file = PathBuf::from(format!("/proc/{}/ns/net", process.pid));
        let meta = match std::fs::metadata(&file) {
            Ok(meta) => meta,
            // A main thread that has exited has no namespaces to show.
            Err(_) => {
                let Some(dir) = live_dir(process.pid as u32) else {
                    continue;
                };
                file = dir.join("ns/net");
                let Ok(meta) = std::fs::metadata(&file) else {
                    continue;
                };
                meta
            }
        };
        let id = (meta.dev(), meta.ino());
        match index.get(&id) {
            Some(&i) if found[i].files.len() < FILES_PER_NETNS => found[i].files.push(file),
            Some(_) => {}
            None => {
                index.insert(id, found.len());
                found.push(NetnsWithFiles {
                    id,
                    files: vec![file],
                });
            }
        }
    }
    Ok(found)
}

/// Reads processes' identities, caching what several owners share (the
/// executables of common ancestors, cgroup ids).
pub struct ProcReader {
    cgroup_root: PathBuf,
    /// pid → (executable key, ppid); `None` for a pid that cannot be read.
    lineage: HashMap<u32, Option<(ExeKey, u32)>>,
    cgroups: HashMap<String, Vec<u64>>,
    owners: HashMap<u32, Option<Owner>>,
}

impl ProcReader {
    /// `cgroup_root`: the cgroup v2 mount, where cgroup ids are read.
    pub fn new(cgroup_root: PathBuf) -> Self {
        Self {
            cgroup_root,
            lineage: HashMap::new(),
            cgroups: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    /// The process `pid`, or `None` when it is gone or unreadable, or when
    /// `started` is given and it did not start then (clock ticks after
    /// boot): the holder [`socket_owners`] found, not a process that took
    /// its pid since.
    pub fn owner(&mut self, pid: u32, started: Option<u64>) -> Option<&Owner> {
        if !self.owners.contains_key(&pid) {
            let owner = self.read_owner(pid, started);
            self.owners.insert(pid, owner);
        }
        self.owners.get(&pid).and_then(Option::as_ref)
    }

    fn read_owner(&mut self, pid: u32, started: Option<u64>) -> Option<Owner> {
        let process = Process::new(pid as i32).ok()?;
        // Through the directory opened: what is read below is this
        // process's while it lives (checked at the end).
        if let Some(started) = started
            && process.stat().ok()?.starttime != started
        {
            return None;
        }
        // Read as bytes: procfs's `status()` and `cgroups()` fail on a
        // line that is not UTF-8, and any process can name itself so
        // (`Name:` is its comm, which the kernel prints unescaped): such a
        // process would never be judged, nor its connections cut.
        let status = Ids::of_status(&process.read::<RawLine>("status").ok()?.0)?;
        let ppid = status.ppid;
        // The executable and command line through a running thread where
        // the main one has exited (they read as nothing through it).
        let dir = live_dir(pid)?;
        let exe_link = std::fs::read_link(dir.join("exe")).ok();
        let exe_name = exe_link.as_deref().map(exe_file_name).unwrap_or_default();
        let comm = process.read::<RawLine>("comm").ok()?.0;
        let mut comms = vec![comm.clone()];
        if let Ok(tasks) = process.tasks() {
            for task in tasks.flatten().take(MAX_THREADS) {
                if let Ok(RawLine(c)) = task.read::<RawLine>("comm")
                    && !comms.contains(&c)
                {
                    comms.push(c);
                }
            }
        }
        let cgroup = process
            .read::<RawLine>("cgroup")
            .ok()
            .and_then(|RawLine(text)| cgroup_v2_path(&String::from_utf8_lossy(&text)))
            .map(|path| crate::kernel::host_cgroup::host_path(&path));
        let cgroup_ids = cgroup
            .as_deref()
            .map(|path| self.cgroup_ids(path))
            .unwrap_or_default();
        // Both read by the pid's path (the command line: its first 4 KiB,
        // as an audit line carries it, since each candidate socket keeps a
        // copy), then checked once through the pid's directory, opened
        // before: while that process still exists, its pid was not
        // recycled in between, so they were its.
        let exe = resolve::cached::cached(dir.join("exe"))
            .ok()
            .map(|exe| exe.key);
        // (One that waits is shown as unknown.)
        let cmdline = proc_cmdline_at(&dir).ok().flatten();
        // Gone meanwhile: what was read by its pid's path (the executable's
        // name, the command line) may be another process's, which took
        // the pid since; and its descriptors are closed.
        if process.stat().is_err() {
            return None;
        }
        let identity = ProcessIdentity {
            exe: exe.unwrap_or_default(),
            exe_name,
            comms,
            uid: status.ruid,
            cgroups: cgroup_ids,
            ancestors: self.ancestors(ppid),
            tracked: None,
        };
        let parent_exe = (ppid != 0)
            .then(|| Process::new(ppid as i32).ok()?.exe().ok())
            .flatten();
        Some(Owner {
            pid,
            ppid,
            gid: status.rgid,
            comm: String::from_utf8_lossy(&comm).into_owned(),
            exe: exe_link.map(|p| p.display().to_string()),
            parent_exe: parent_exe.map(|p| p.display().to_string()),
            cmdline,
            cgroup,
            identity,
        })
    }

    /// The executables of `parent` and its ancestors, walked as the kernel's
    /// `ancestor_mask` does: the parent always (pid 0, the idle task, has no
    /// executable: a zero key), then the next generation while the last
    /// one's pid is above 1, at most [`MAX_ANCESTORS`].
    fn ancestors(&mut self, parent: u32) -> Vec<ExeKey> {
        let mut out = Vec::new();
        let mut cur = parent;
        // A process gone meanwhile ends the walk: the kernel would now see
        // its children reparented; this does not guess.
        while let Some((exe, ppid)) = self.lineage(cur) {
            out.push(exe);
            if out.len() == MAX_ANCESTORS || cur <= 1 {
                break;
            }
            cur = ppid;
        }
        out
    }

    fn lineage(&mut self, pid: u32) -> Option<(ExeKey, u32)> {
        if pid == 0 {
            return Some((ExeKey::default(), 0));
        }
        *self.lineage.entry(pid).or_insert_with(|| {
            let process = Process::new(pid as i32).ok()?;
            let ppid = u32::try_from(process.stat().ok()?.ppid).unwrap_or(0);
            Some((exe_key(&process), ppid))
        })
    }

    /// Ids of the cgroup at `path` (below the root) and of its ancestors,
    /// root (level 0) first: the inode numbers of the directories. Stops at
    /// the first directory that cannot be read (the cgroup went away).
    fn cgroup_ids(&mut self, path: &str) -> Vec<u64> {
        if let Some(ids) = self.cgroups.get(path) {
            return ids.clone();
        }
        let mut ids = Vec::new();
        let mut dir = self.cgroup_root.clone();
        let levels = std::iter::once(None).chain(
            Path::new(path.trim_start_matches('/'))
                .components()
                .map(Some),
        );
        for component in levels {
            if let Some(component) = component {
                dir.push(component);
            }
            match std::fs::metadata(&dir) {
                Ok(meta) => ids.push(meta.ino()),
                Err(_) => break,
            }
        }
        self.cgroups.insert(path.to_owned(), ids.clone());
        ids
    }
}

/// The executable's identity in the kernel's device encoding, from the
/// kernel's cached inode (never opening the file, nor waiting for a FUSE
/// or NFS server: see [`resolve::cached`]); a zero key for a process
/// without one (a kernel thread), as the kernel reads a NULL `mm`. Read by
/// the pid's path, then checked through the pid's directory (`process`,
/// opened before): while that process still exists, its pid was not
/// recycled in between, so the file was its.
fn exe_key(process: &Process) -> ExeKey {
    let Ok(pid) = u32::try_from(process.pid) else {
        return ExeKey::default();
    };
    match resolve::cached::proc_exe(pid) {
        Some(exe) if process.stat().is_ok() => exe.key,
        _ => ExeKey::default(),
    }
}

/// The executable's file name (its dentry name) from the `/proc/PID/exe`
/// link target: the last component, without the ` (deleted)` the kernel
/// appends for an unlinked file.
pub(crate) fn exe_file_name(link: &Path) -> Vec<u8> {
    let name = link.file_name().map(OsStr::as_bytes).unwrap_or_default();
    name.strip_suffix(DELETED).unwrap_or(name).to_vec()
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd as _,
    };

    use super::*;

    #[test]
    fn exe_file_name_drops_the_deleted_marker() {
        assert_eq!(exe_file_name(Path::new("/usr/bin/socat")), b"socat");
        assert_eq!(exe_file_name(Path::new("/opt/x/relay (deleted)")), b"relay");
        assert_eq!(exe_file_name(Path::new("/")), b"");
    }

    #[test]
    fn this_process_owns_its_socket_and_reads_as_the_kernel_would_see_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", client.as_raw_fd()))
            .unwrap()
            .ino();
        let owners = socket_owners(&HashSet::from([inode])).unwrap().0;
        let me = std::process::id();
        assert_eq!(owners.get(&inode), Some(&vec![me]));

        let root = crate::kernel::compat::find_cgroup2_root()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        let mut reader = ProcReader::new(root.clone());
        let owner = reader.owner(me, None).unwrap().clone();
        let id = &owner.identity;
        let exe = std::fs::metadata("/proc/self/exe").unwrap();
        assert_eq!(id.exe, resolve::exe_key(&exe));
        let real = std::fs::canonicalize("/proc/self/exe").unwrap();
        assert_eq!(
            id.exe_name,
            real.file_name().unwrap().as_bytes(),
            "{owner:?}"
        );
        // The main thread's comm comes first; the test threads' follow.
        let comm = std::fs::read("/proc/self/comm").unwrap();
        assert_eq!(id.comms[0], comm.trim_ascii_end());
        let thread_comm = std::fs::read("/proc/thread-self/comm").unwrap();
        assert!(id.comms.iter().any(|c| c == thread_comm.trim_ascii_end()));
        // SAFETY: getuid/getppid have no preconditions.
        assert_eq!(id.uid, unsafe { libc::getuid() });
        assert_eq!(owner.ppid, unsafe { libc::getppid() } as u32);
        let parent_exe = std::fs::metadata(format!("/proc/{}/exe", owner.ppid)).unwrap();
        assert_eq!(id.ancestors[0], resolve::exe_key(&parent_exe));
        assert!(id.ancestors.len() <= MAX_ANCESTORS);
        // The cgroup chain runs from the root to this process's cgroup.
        if let Some(path) = &owner.cgroup {
            let own = std::fs::metadata(root.join(path.trim_start_matches('/')));
            if let Ok(own) = own {
                assert_eq!(id.cgroups.last(), Some(&own.ino()), "{owner:?}");
                assert_eq!(id.cgroups[0], std::fs::metadata(&root).unwrap().ino());
                let depth = Path::new(path.trim_start_matches('/')).components().count();
                assert_eq!(id.cgroups.len(), depth + 1);
            }
        }
        assert!(owner.cmdline.is_some());
        assert!(reader.owner(u32::MAX - 1, None).is_none());
    }

    /// A process that named itself with bytes that are not UTF-8 (its
    /// comm, printed unescaped in `status` and `stat`) is read all the
    /// same: procfs's parsed `status()` fails on it, and the sweep took
    /// such a process for gone, never judging its connections.
    #[test]
    fn a_name_that_is_not_utf8_is_no_unreadable_process() {
        let status = b"Name:\t\xffrelay\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\n\
                       PPid:\t1\nUid:\t1000\t1001\t1002\t1003\nGid:\t33\t34\t35\t36\n";
        assert_eq!(
            Ids::of_status(status),
            Some(Ids {
                ppid: 1,
                ruid: 1000,
                rgid: 33
            })
        );
        assert_eq!(Ids::of_status(b"Name:\tx\nUid:\t1\t1\t1\t1\n"), None);

        let mut child = crate::testing::child_named_in_bytes();
        let mut reader = ProcReader::new(PathBuf::from("/nonexistent"));
        let owner = reader.owner(child.id(), None).cloned();
        let _ = child.kill();
        let _ = child.wait();
        let owner = owner.expect("a process named with a byte that is not UTF-8");
        assert_eq!(owner.identity.comms[0], b"\xffrelay");
        assert_eq!(owner.ppid, std::process::id());
        // SAFETY: getuid has no preconditions.
        assert_eq!(owner.identity.uid, unsafe { libc::getuid() });
    }

    /// A process whose main thread has exited while another runs (its own
    /// `fd`, `exe`, `cmdline` and `ns/net` read as nothing) is read
    /// through the running thread: it holds its socket, runs its
    /// executable, has its command line and its namespace. Before, the
    /// sweep found no holder of its connections, and left them open.
    #[test]
    fn a_process_whose_main_thread_exited_is_read_through_a_running_thread() {
        let (mut child, inode) = crate::testing::child_without_its_main_thread();
        let pid = child.id();
        let owners = socket_owners(&HashSet::from([inode])).unwrap().0;
        let mut reader = ProcReader::new(PathBuf::from("/nonexistent"));
        let owner = reader.owner(pid, None).cloned();
        let dir = live_dir(pid);
        let leaders_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count());
        let _ = child.kill();
        let _ = child.wait();
        // The case this is about: the main thread's view lists nothing.
        assert!(leaders_fds.is_err() || leaders_fds.is_ok_and(|n| n == 0));
        assert_eq!(owners.get(&inode), Some(&vec![pid]));
        let dir = dir.expect("a running thread");
        assert!(dir.starts_with(format!("/proc/{pid}/task")), "{dir:?}");
        let owner = owner.expect("the process is read");
        let python = std::fs::metadata("/usr/bin/python3").unwrap();
        assert_eq!(owner.identity.exe, resolve::exe_key(&python), "{owner:?}");
        assert!(
            owner
                .cmdline
                .as_deref()
                .is_some_and(|c| c.contains("pthread_exit")),
            "{owner:?}"
        );
    }

    /// A socket made by a thread that unshared its descriptor table is in
    /// that thread's table only: its process is found as its holder.
    /// Before, the sweep found none, and left such a connection open.
    #[test]
    fn a_socket_in_a_threads_own_table_is_held_by_its_process() {
        let (mut child, line) = crate::testing::child_in_a_threads_own_table(
            "s = socket.socket()\n\
             print(os.fstat(s.fileno()).st_ino, flush=True)\n\
             time.sleep(30)",
        );
        let pid = child.id();
        let inode: u64 = line.trim().parse().expect("an inode");
        let in_main = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.fd())
            .map(|fds| {
                fds.flatten()
                    .any(|fd| matches!(fd.target, FDTarget::Socket(i) if i == inode))
            });
        let owners = socket_owners(&HashSet::from([inode])).unwrap().0;
        let _ = child.kill();
        let _ = child.wait();
        // The case this is about: the process's own table lacks it.
        assert!(matches!(in_main, Ok(false)), "{in_main:?}");
        assert_eq!(owners.get(&inode), Some(&vec![pid]));
    }

    /// A socket made in a thread's own table and handed on by a fork has
    /// two holders: the child, whose table shows it, and the process of
    /// that thread, which must not hide behind the child (it could hand
    /// the socket to a child an allow rule names).
    #[test]
    fn a_thread_that_forked_its_socket_away_still_holds_it() {
        let (mut child, line) = crate::testing::child_in_a_threads_own_table(
            "s = socket.socket()\n\
             pid = os.fork()\n\
             if pid == 0:\n\
             \x20   libc.prctl(1, 9, 0, 0, 0)\n\
             \x20   time.sleep(30)\n\
             \x20   os._exit(0)\n\
             print(os.fstat(s.fileno()).st_ino, pid, flush=True)\n\
             time.sleep(30)",
        );
        let pid = child.id();
        let mut words = line
            .split_whitespace()
            .map(|w| w.parse::<u64>().expect("a number"));
        let (inode, forked) = (
            words.next().expect("an inode"),
            words.next().expect("a pid"),
        );
        let owners = socket_owners(&HashSet::from([inode])).unwrap().0;
        let _ = child.kill();
        let _ = child.wait();
        let mut holders = owners.get(&inode).cloned().unwrap_or_default();
        holders.sort_unstable();
        assert_eq!(holders, vec![pid, forked as u32]);
    }

    /// `kcmp` tells a thread sharing its process's table from one that
    /// does not, so only the latter's is read.
    #[test]
    fn threads_sharing_a_table_are_told_apart_from_one_with_its_own() {
        let me = std::process::id() as i32;
        let (shared, own) = std::thread::scope(|s| {
            let shared = s.spawn(|| same_table(me, nix::unistd::gettid().as_raw()));
            let own = s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).unwrap();
                same_table(me, nix::unistd::gettid().as_raw())
            });
            (shared.join().unwrap(), own.join().unwrap())
        });
        // Where kcmp is refused (a seccomp filter, no CONFIG_KCMP), no two
        // threads read as sharing, and every table is read.
        if same_table(me, me) {
            assert!(shared);
        } else {
            assert!(!shared);
        }
        assert!(!own);
    }

    #[test]
    fn ancestors_stop_after_init() {
        let mut reader = ProcReader::new(PathBuf::from("/nonexistent"));
        // pid 1's parent is the idle task (pid 0): one zero key, no further.
        assert_eq!(reader.ancestors(0), vec![ExeKey::default()]);
        // Whoever init is, the walk from it ends there.
        assert_eq!(reader.ancestors(1).len(), 1);
    }

    /// A holder is read as the owner only while it is the process that
    /// started when the walk found it: a pid taken since is none.
    #[test]
    fn a_holder_is_the_owner_only_while_it_started_when_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .unwrap()
        .ino();
        let me = std::process::id();
        let (owners, started) = socket_owners(&HashSet::from([inode])).unwrap();
        assert_eq!(owners.get(&inode), Some(&vec![me]));
        let start = *started.get(&me).expect("when it started");
        let mut reader = ProcReader::new(PathBuf::from("/nonexistent"));
        assert!(reader.owner(me, Some(start)).is_some());
        let mut reader = ProcReader::new(PathBuf::from("/nonexistent"));
        assert!(reader.owner(me, Some(start + 1)).is_none());
    }

    #[test]
    fn this_processs_network_namespace_is_listed() {
        let me = std::fs::metadata("/proc/self/ns/net").unwrap();
        let all = network_namespaces().unwrap();
        let ours = all
            .iter()
            .find(|n| n.id == (me.dev(), me.ino()))
            .expect("our own namespace");
        assert!(!ours.files.is_empty());
        let unique: HashSet<_> = all.iter().map(|n| n.id).collect();
        assert_eq!(unique.len(), all.len());
    }
}
