//! One pass over `/proc` for the seeding: which network namespaces have
//! processes and their TCP sockets, who holds which socket, each process's
//! parent and executable, and the interpreters' scripts as the exec
//! handler reads them; and the listeners' socket cookies, from a
//! `NETLINK_SOCK_DIAG` dump in each namespace.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
};

use loopwarden_common::{
    ARGV0_MAX_LEN, ExeKey, SCRIPT_LEN, SCRIPT_MAX_ARGS, ScriptOption, is_interpreter, script_option,
};
use procfs::{
    ProcError,
    process::{FDTarget, Process, all_processes},
};
use tracing::warn;

use super::plan::Sock;
use crate::{
    cut::procs::{exe_file_name, live, note_own_tables},
    events::cmdline::Waiting,
    kernel::sock_diag::{SockDiag, TcpSocket, state},
    resolve::{self, in_first_netns},
};

/// Pids kept per network namespace to read its socket tables through (one
/// may exit meanwhile).
const PIDS_PER_NETNS: usize = 4;

/// One pass over `/proc`: which network namespaces have processes, who
/// holds which socket, and the interpreters' scripts.
#[derive(Default)]
pub(super) struct Scan {
    /// Network namespace inode number → some of its pids, in order of
    /// first appearance.
    pub(super) netns: Vec<(u32, Vec<u32>)>,
    /// Socket inode → the pids holding a descriptor to it, ascending.
    pub(super) owners: HashMap<u64, Vec<u32>>,
    /// Interpreters' scripts, by pid.
    pub(super) scripts: HashMap<u32, [u8; SCRIPT_LEN]>,
    /// Interpreters whose command line could not be read (a read of it
    /// waits on its memory map lock): their scripts are not known.
    pub(super) unread_scripts: Vec<u32>,
    /// Each process's parent and executable's file name, by pid (only
    /// when the scan was asked for them).
    pub(super) family: HashMap<u32, (u32, Vec<u8>)>,
    /// Every pid the walk listed.
    pub(super) walked: HashSet<u32>,
    /// Socket inode → the pids holding it as standard input or output.
    pub(super) stdio: HashMap<u64, Vec<u32>>,
}

/// Walks every process once, reading each one's parent too (one more
/// file) if `family`, and each interpreter's script if `scripts`. A
/// process that vanishes or cannot be read midway is skipped (or only
/// partly seen): that is normal.
pub(super) fn scan(family: bool, scripts: bool) -> Result<Scan, ProcError> {
    let mut scan = Scan::default();
    let mut index: HashMap<u32, usize> = HashMap::new();
    for process in all_processes()?.flatten() {
        let Ok(pid) = u32::try_from(process.pid) else {
            continue;
        };
        scan.walked.insert(pid);
        // A main thread that has exited while others run reads as no
        // descriptors and no executable: such a process is read through a
        // running thread (kernel threads, with no executable either, pay
        // one more read of their `stat` for it).
        let (process, exe) = match process.exe() {
            Ok(exe) => (process, Some(exe)),
            Err(_) => match live(process) {
                Some(process) => {
                    let exe = process.exe().ok();
                    (process, exe)
                }
                None => continue,
            },
        };
        // The namespace of the main thread (one stat: procfs's
        // namespaces() stats them all).
        if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            && let Ok(inode) = u32::try_from(meta.ino())
        {
            match index.get(&inode) {
                Some(&i) if scan.netns[i].1.len() < PIDS_PER_NETNS => scan.netns[i].1.push(pid),
                Some(_) => {}
                None => {
                    index.insert(inode, scan.netns.len());
                    scan.netns.push((inode, vec![pid]));
                }
            }
        }
        if let Ok(fds) = process.fd() {
            for fd in fds.flatten() {
                if let FDTarget::Socket(inode) = fd.target {
                    let pids = scan.owners.entry(inode).or_default();
                    if pids.last() != Some(&pid) {
                        pids.push(pid);
                    }
                    if fd.fd <= 1 {
                        let pids = scan.stdio.entry(inode).or_default();
                        if pids.last() != Some(&pid) {
                            pids.push(pid);
                        }
                    }
                }
            }
        }
        if let Some(exe) = exe {
            let name = exe_file_name(&exe);
            if scripts && is_interpreter(&name) {
                match read_cmdline(&process) {
                    Ok(cmdline) => {
                        if let Some(script) = cmdline.and_then(|c| script_of(&c)) {
                            scan.scripts.insert(pid, script);
                        }
                    }
                    Err(Waiting) => scan.unread_scripts.push(pid),
                }
            }
            if family
                && let Ok(stat) = process.stat()
                && let Ok(ppid) = u32::try_from(stat.ppid)
            {
                scan.family.insert(pid, (ppid, name));
            }
        }
    }
    for pids in scan.owners.values_mut() {
        pids.sort_unstable();
        pids.dedup();
    }
    Ok(scan)
}

/// What a process runs and where it came from: two holders of one
/// listener that are parent and child and run one image are a fork that
/// executed nothing since (see `Plan::add_namespace`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Image {
    /// Its parent's pid.
    pub(super) ppid: u32,
    /// When it started (clock ticks after boot, `/proc/PID/stat`).
    pub(super) started: u64,
    /// Its executable's device and inode.
    pub(super) exe: ExeKey,
    /// An interpreter's script, as the scan read it.
    pub(super) script: Option<[u8; SCRIPT_LEN]>,
}

impl Scan {
    /// The [`Image`] of process `pid`, read now, its script from the
    /// scan; `None` if it has gone or cannot be read. The executable's
    /// identity is the kernel's cached inode ([`resolve::cached`]), not
    /// opened nor `stat()`ed: an open would wake fanotify and IMA, and
    /// either would wait on a FUSE or NFS server that stops answering,
    /// which would hold the daemon's start. (A pid recycled between the
    /// two reads gives a wrong image: the worst is a port credited to
    /// another of its holders.)
    pub(super) fn image(&self, pid: u32) -> Option<Image> {
        let process = Process::new(i32::try_from(pid).ok()?).ok()?;
        let stat = process.stat().ok()?;
        let exe = resolve::cached::proc_exe(pid)?.key;
        Some(Image {
            ppid: u32::try_from(stat.ppid).ok()?,
            started: stat.starttime,
            exe,
            script: self.scripts.get(&pid).copied(),
        })
    }

    /// Adds the holders of those of `socks` the plan may credit that only
    /// a thread's own descriptor table shows: processes with a thread that
    /// has a table of its own ([`note_own_tables`]), the socket's only
    /// holders or beside a process it was handed on to.
    pub(super) fn add_own_tables<'a>(&mut self, socks: impl Iterator<Item = &'a Sock>) {
        let inodes: HashSet<u64> = socks.filter_map(Sock::creditable_inode).collect();
        if inodes.is_empty() {
            return;
        }
        if let Err(e) = note_own_tables(&inodes, &mut self.owners) {
            warn!("seeding: reading the descriptor tables of threads failed: {e}");
        }
        for inode in &inodes {
            if let Some(pids) = self.owners.get_mut(inode) {
                pids.sort_unstable();
            }
        }
    }
}

/// The most of a command line [`script_of`] can need: `argv[0]` and the
/// arguments after it it looks at, each with its NUL and one byte more.
/// Cut there, an argument it reaches still reads as at least `SCRIPT_LEN`
/// bytes, so it judges it as it would whole.
const CMDLINE_READ: usize = ARGV0_MAX_LEN + 1 + (SCRIPT_MAX_ARGS - 1) * (SCRIPT_LEN + 1);

/// The start of `/proc/PID/cmdline` as bytes, as much as [`script_of`] can
/// need (a command line may run to megabytes), opened through the pid's
/// directory, so a recycled pid cannot answer for it, and read on a reader
/// thread that the process cannot hold the seeding on
/// ([`crate::events::cmdline`]).
fn read_cmdline(process: &Process) -> Result<Option<Vec<u8>>, Waiting> {
    let Ok(file) = process.open_relative("cmdline") else {
        return Ok(None);
    };
    let dir = PathBuf::from(format!("/proc/{}", process.pid));
    crate::events::cmdline::read(&dir, file, CMDLINE_READ)
}

/// The script the kernel's exec handler (`read_script` in
/// `ebpf/src/process.rs`) reads from this command line (`/proc/PID/cmdline`:
/// arguments each ending in a NUL): the first operand after argv[0], options
/// skipped or ending the search as [`script_option`] says (the one after
/// `--` whatever it starts with), at most five arguments looked at;
/// kept to `SCRIPT_LEN - 1` bytes, NUL-padded. The kernel reads each
/// argument as a string of at most `SCRIPT_LEN` bytes, NUL included, and
/// gives up where one was cut short before the script (it cannot find the
/// next).
fn script_of(cmdline: &[u8]) -> Option<[u8; SCRIPT_LEN]> {
    let body = cmdline.strip_suffix(&[0]).unwrap_or(cmdline);
    if body.is_empty() {
        return None;
    }
    let mut args = body.split(|&b| b == 0);
    let argv0 = args.next()?;
    if argv0.len() > ARGV0_MAX_LEN {
        return None;
    }
    let mut operand_next = false;
    for arg in args.take(SCRIPT_MAX_ARGS - 1) {
        match arg.first() {
            Some(b'-') if !operand_next => {
                if arg.len() >= SCRIPT_LEN - 1 {
                    return None;
                }
                match script_option(arg) {
                    ScriptOption::Skip => {}
                    ScriptOption::OperandNext => operand_next = true,
                    ScriptOption::NoScript => return None,
                }
            }
            // An empty operand: the kernel keeps its NUL, i.e. nothing.
            None => return None,
            Some(_) => {
                let mut script = [0; SCRIPT_LEN];
                let len = arg.len().min(SCRIPT_LEN - 1);
                script[..len].copy_from_slice(&arg[..len]);
                return Some(script);
            }
        }
    }
    None
}

/// The socket cookies of the TCP listeners with socket inodes `wanted` in
/// network namespace `netns`, by inode: a `NETLINK_SOCK_DIAG` dump made
/// inside the namespace, entered through the first of `pids` that can be
/// (the dump gives a socket that had none its cookie, which
/// `bpf_get_socket_cookie` returns from then on). A listener it does not
/// find (closed since, or the dump failed, which is warned about) is left
/// out: its entry has no cookie, and any close on its port removes it.
pub(super) fn listener_cookies(
    netns: u32,
    pids: &[u32],
    wanted: &HashSet<u64>,
) -> HashMap<u64, u64> {
    let paths = pids
        .iter()
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")));
    let mut last = io::Error::other("no process in it to enter it through");
    let Some((mut diag, _)) = in_first_netns(paths, SockDiag::open, &mut last) else {
        warn!("reading the TCP listeners of network namespace {netns} failed: {last}");
        return HashMap::new();
    };
    let mut listeners = Vec::new();
    let listening = state::bit(state::LISTEN);
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let keep = |s: &TcpSocket| wanted.contains(&s.inode);
        if let Err(e) = diag.dump_kept(family, listening, wanted.len(), keep, &mut listeners) {
            warn!("reading the TCP listeners of network namespace {netns} failed: {e}");
            break;
        }
    }
    listeners.iter().map(|l| (l.inode, l.cookie)).collect()
}

/// The TCP sockets of network namespace `netns`, read through the first of
/// `pids` whose tables can be read; `None` (warned about unless the
/// processes were simply gone) if none could.
pub(super) fn tcp_sockets(netns: u32, pids: &[u32]) -> Option<Vec<Sock>> {
    let mut last = None;
    for &pid in pids {
        let process = match Process::new(pid as i32) {
            Ok(p) => p,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let v4 = match process.tcp() {
            Ok(v4) => v4,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        // No tcp6 table: IPv6 is disabled.
        let v6 = process.tcp6().unwrap_or_default();
        return Some(v4.iter().chain(&v6).map(Sock::from).collect());
    }
    match last {
        Some(ProcError::NotFound(_)) | None => {}
        Some(e) => warn!("reading the TCP sockets of network namespace {netns} failed: {e}"),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(text: &str) -> Option<[u8; SCRIPT_LEN]> {
        let mut out = [0; SCRIPT_LEN];
        let len = text.len().min(SCRIPT_LEN - 1);
        out[..len].copy_from_slice(&text.as_bytes()[..len]);
        Some(out)
    }

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for arg in args {
            bytes.extend_from_slice(arg.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    /// A command line cut at what the seeding reads gives the script the
    /// whole one gives, however long its arguments run.
    #[test]
    fn the_command_lines_start_is_all_the_script_needs() {
        let long = |n: usize| "x".repeat(n);
        let near = [SCRIPT_LEN - 2, SCRIPT_LEN - 1, SCRIPT_LEN, SCRIPT_LEN + 1];
        let mut lines: Vec<Vec<String>> = Vec::new();
        for argv0 in [1, ARGV0_MAX_LEN - 1, ARGV0_MAX_LEN, ARGV0_MAX_LEN + 1] {
            for &n in &near {
                for options in 0..SCRIPT_MAX_ARGS {
                    let mut args = vec![long(argv0)];
                    args.extend((0..options).map(|_| format!("-{}", long(n.min(SCRIPT_LEN - 3)))));
                    args.push(format!("/srv/{}", long(n)));
                    args.push(long(100_000));
                    lines.push(args);
                }
                lines.push(vec![long(argv0), format!("-{}", long(n)), long(n)]);
                lines.push(vec![long(argv0), "-c".into(), long(100_000)]);
            }
        }
        for args in &lines {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let whole = cmdline(&args);
            let cut = &whole[..whole.len().min(CMDLINE_READ)];
            assert_eq!(
                script_of(cut),
                script_of(&whole),
                "{:?}",
                args.iter().map(|a| a.len()).collect::<Vec<_>>()
            );
        }
        // It does find scripts past long arguments (the test is no no-op).
        let found = cmdline(&[&long(ARGV0_MAX_LEN), "-u", &format!("/srv/{}", long(200))]);
        assert!(script_of(&found[..CMDLINE_READ.min(found.len())]).is_some());
    }

    #[test]
    fn interpreters_are_known_by_prefix_form() {
        for name in [
            "python3",
            "python3.12",
            "python",
            "node",
            "nodejs",
            "perl",
            "ruby",
            "php",
            "deno",
            ".python3-wrapped",
            // Versioned names as distributions install them: cut at their
            // first separator, or listed whole.
            "perl5.36.0",
            "ruby3.1",
            "php8.2",
            "php83",
        ] {
            assert!(is_interpreter(name.as_bytes()), "{name}");
        }
        // Cuts are at separators only, as in the kernel: `rubyx` and `php9x`
        // are other programs.
        for name in [
            "socat",
            "pythonista",
            "nodemon",
            "bash",
            "phpstorm",
            "rubyx",
            "php9x",
            "",
        ] {
            assert!(!is_interpreter(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn the_script_is_the_first_operand_as_the_kernel_reads_it() {
        assert_eq!(
            script_of(&cmdline(&["/usr/bin/python3", "/srv/fwd.py", "-v"])),
            script("/srv/fwd.py")
        );
        // An option's value is never taken for the script: attached, the
        // search goes on; the next argument, it ends.
        assert_eq!(
            script_of(&cmdline(&[
                "python3", "-u", "-Xdev", "-Wignore", "relay.py"
            ])),
            script("relay.py")
        );
        for spoof in [
            &["python3", "-W", "/opt/bridge.py", "relay.py"][..],
            &["python3", "-uX", "/opt/bridge.py", "relay.py"],
            &["node", "--require", "/opt/bridge.js", "relay.js"],
            &["ruby", "-I", "/opt/bridge.rb", "relay.rb"],
            &["python3", "-", "/opt/bridge.py"],
            &["python3", "-c'import relay'", "/opt/bridge.py"],
            &["python3", "-uc", "import relay", "/opt/bridge.py"],
        ] {
            assert_eq!(script_of(&cmdline(spoof)), None, "{spoof:?}");
        }
        assert_eq!(
            script_of(&cmdline(&["node", "--max-old-space-size=512", "server.js"])),
            script("server.js")
        );
        assert_eq!(
            script_of(&cmdline(&["python3", "-u", "--", "-odd.py"])),
            script("-odd.py")
        );
        for code in ["-c", "-e", "-m"] {
            assert_eq!(script_of(&cmdline(&["python3", "-u", code, "x"])), None);
        }
        // At most five arguments after argv[0].
        assert_eq!(
            script_of(&cmdline(&["python3", "-a", "-b", "-s", "-u", "-q", "x.py"])),
            None
        );
        assert_eq!(
            script_of(&cmdline(&["python3", "-a", "-b", "-s", "-u", "x.py"])),
            script("x.py")
        );
        assert_eq!(script_of(&cmdline(&["python3"])), None);
        assert_eq!(script_of(&cmdline(&["python3", ""])), None);
        assert_eq!(script_of(b""), None);
        // Long paths are cut to SCRIPT_LEN - 1 bytes.
        let long = format!("/{}", "a".repeat(100));
        assert_eq!(
            script_of(&cmdline(&["python3", &long])),
            script(&long[..SCRIPT_LEN - 1])
        );
        // A long argv[0] (a Nix store's interpreter) is read on, up to
        // ARGV0_MAX_LEN bytes; past them, or past a long option before the
        // operand, the kernel cannot find the next argument.
        let long_name = format!("/{}/python3", "d".repeat(70));
        assert_eq!(script_of(&cmdline(&[&long_name, "x.py"])), script("x.py"));
        let longest = format!("/{}/python3", "d".repeat(ARGV0_MAX_LEN - 9));
        assert_eq!(longest.len(), ARGV0_MAX_LEN);
        assert_eq!(script_of(&cmdline(&[&longest, "x.py"])), script("x.py"));
        let too_long = format!("/{}/python3", "d".repeat(ARGV0_MAX_LEN - 8));
        assert_eq!(script_of(&cmdline(&[&too_long, "x.py"])), None);
        let long_opt = format!("--{}", "o".repeat(70));
        assert_eq!(script_of(&cmdline(&["python3", &long_opt, "x.py"])), None);
        // Without the final NUL (a rewritten command line) too.
        assert_eq!(script_of(b"python3\0x.py"), script("x.py"));
    }
}
