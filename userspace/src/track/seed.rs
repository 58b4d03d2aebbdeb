//! Seeding the kernel's tracking maps from `/proc` when the daemon starts.
//!
//! The tracking programs record evidence as it happens (see
//! `ebpf/src/sockets.rs` and `process.rs`): a process that was already
//! listening when they were first attached has no `listening` evidence and,
//! worse, its listener is not in `LW_LISTENERS`, so the connections it
//! accepts later never become `accepted` evidence. Right after the programs
//! are attached, [`seed`] reads what is true now and writes what the kernel
//! would have recorded:
//!
//! - each TCP socket in LISTEN on a non-loopback address, in every network
//!   namespace that has processes: its `(netns, port)` in `LW_LISTENERS`,
//!   and `listening` evidence for each process holding it;
//! - each established connection on such a port with a non-loopback peer
//!   (an accepted connection): `accepted` evidence, naming the peer, for
//!   each process holding it;
//! - each interpreter's script, read from its command line as the exec
//!   handler reads it;
//! - lineage: a process running a catalogued tunnel whose rule extends to
//!   descendants (`children = true`), and each process below one, gets the
//!   key the exec handler would have given the tunnel, so what the tunnel
//!   runs after the start is matched through it.
//!
//! Not seeded: `received` and `connected` evidence (anything from before
//! the start is older than any sensible window). Lineage is read from the
//! processes' current executables and parents: a process that executed a
//! tunnel and then another program, or one reparented away from its
//! tunnel, is not given it.
//!
//! What the kernel recorded always wins: entries are created with
//! `BPF_NOEXIST`, a listener the kernel already knows is left alone, and an
//! existing process entry only gains standing evidence where it has none.
//! A process seen here may exec or exit (and its pid be reused) before its
//! entry is written; the window is the few milliseconds of the walk, and
//! the worst outcome is evidence about what the process was a moment ago.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io::Read as _,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    sys::SyscallError,
};
use loopwarden_common::{
    Addr, EXE_NAME_LEN, Evidence, INTERPRETERS, ListenerKey, ProcState, SCRIPT_LEN,
    SCRIPT_MAX_ARGS, evidence, exe_name_candidates, exe_name_prefix_key, maps, script_hash,
};
use procfs::{
    ProcError,
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process, all_processes},
};
use tracing::{info, warn};

use crate::{cut::procs::exe_file_name, policy::CompiledPolicy};

/// `bpf_map_update_elem` flags: create only, update only.
const NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;
const EXIST: u64 = aya_obj::generated::BPF_EXIST as u64;

/// Pids kept per network namespace to read its socket tables through (one
/// may exit meanwhile).
const PIDS_PER_NETNS: usize = 4;

/// What a seeding wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    /// `LW_LISTENERS` entries created.
    pub listeners: usize,
    /// `LW_PROCS` entries created, or given standing evidence they lacked.
    pub processes: usize,
}

/// Seeds `LW_LISTENERS` and `LW_PROCS` of the loaded (and attached)
/// object from `/proc`, lineage by `policy` (the one installed, if any),
/// and logs what it did. Failures are warnings: the kernel's own tracking
/// goes on regardless.
pub fn seed(ebpf: &mut Ebpf, policy: Option<&CompiledPolicy>) -> Seeded {
    let started = Instant::now();
    let seeded = match try_seed(ebpf, policy) {
        Ok(seeded) => seeded,
        Err(e) => {
            warn!("seeding process tracking from /proc failed: {e}");
            return Seeded::default();
        }
    };
    info!(
        "seeded {} listeners, {} processes from /proc (in {} ms)",
        seeded.listeners,
        seeded.processes,
        started.elapsed().as_millis()
    );
    seeded
}

fn try_seed(ebpf: &mut Ebpf, policy: Option<&CompiledPolicy>) -> Result<Seeded, String> {
    let now = u64::try_from(crate::monotonic().as_nanos()).unwrap_or(u64::MAX);
    let scan = scan().map_err(|e| format!("listing processes: {e}"))?;
    let mut plan = Plan::default();
    for (netns, pids) in &scan.netns {
        if let Some(socks) = tcp_sockets(*netns, pids) {
            plan.add_namespace(*netns, &socks, &scan.owners, now);
        }
    }
    if let Some(policy) = policy {
        plan.add_lineage(&scan.family, |name| policy.lineage_key(name));
    }
    let mut procs: BpfHashMap<_, u32, ProcState> = take(ebpf, maps::PROCS)?;
    let mut listeners: BpfHashMap<_, ListenerKey, u32> = take(ebpf, maps::LISTENERS)?;
    let tracked = ebpf
        .take_map(maps::TRACKED)
        .ok_or_else(|| format!("the eBPF object has no map {}", maps::TRACKED))?;
    let mut tracked: Array<_, [u8; 64]> =
        Array::try_from(tracked).map_err(|e| format!("map {}: {e}", maps::TRACKED))?;
    Ok(write(
        &plan,
        &scan.scripts,
        &mut procs,
        &mut listeners,
        &mut tracked,
    ))
}

/// Sets `tgid`'s note in `LW_TRACKED` (read, set, written back: a note the
/// kernel sets in the same entry meanwhile can be lost, and is set again
/// at that process's next write).
fn mark(tracked: &mut Array<MapData, [u8; 64]>, tgid: u32) -> Result<(), MapError> {
    let mut entry = tracked.get(&(tgid >> 6), 0)?;
    entry[(tgid & 63) as usize] = 1;
    tracked.set(tgid >> 6, entry, 0)
}

/// The hash map `name`, taken out of the object (the programs keep it).
fn take<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, String> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| format!("the eBPF object has no map {name}"))?;
    BpfHashMap::try_from(map).map_err(|e| format!("map {name}: {e}"))
}

/// One pass over `/proc`: which network namespaces have processes, who
/// holds which socket, and the interpreters' scripts.
#[derive(Default)]
struct Scan {
    /// Network namespace inode number → some of its pids, in order of
    /// first appearance.
    netns: Vec<(u32, Vec<u32>)>,
    /// Socket inode → the pids holding a descriptor to it, ascending.
    owners: HashMap<u64, Vec<u32>>,
    /// Interpreters' scripts, by pid.
    scripts: HashMap<u32, [u8; SCRIPT_LEN]>,
    /// Each process's parent and executable's file name, by pid.
    family: HashMap<u32, (u32, Vec<u8>)>,
}

/// Walks every process once. A process that vanishes or cannot be read
/// midway is skipped (or only partly seen): that is normal.
fn scan() -> Result<Scan, ProcError> {
    let mut scan = Scan::default();
    let mut index: HashMap<u32, usize> = HashMap::new();
    for process in all_processes()?.flatten() {
        let Ok(pid) = u32::try_from(process.pid) else {
            continue;
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
                }
            }
        }
        if let Ok(exe) = process.exe() {
            let name = exe_file_name(&exe);
            if is_interpreter(&name)
                && let Some(script) = read_cmdline(&process).and_then(|c| script_of(&c))
            {
                scan.scripts.insert(pid, script);
            }
            if let Ok(stat) = process.stat()
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

/// `/proc/PID/cmdline` as bytes (through the pid's directory, so a
/// recycled pid cannot answer for it).
fn read_cmdline(process: &Process) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    process
        .open_relative("cmdline")
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// Whether an executable of this file name is an interpreter whose operand
/// is a script: one of its prefix-form candidates is an interpreter's name
/// (`python3.11` gives `python3`), as `names::is_interpreter` decides in
/// the kernel.
fn is_interpreter(name: &[u8]) -> bool {
    exe_name_candidates(name).any(|key| {
        INTERPRETERS
            .iter()
            .any(|interpreter| key == exe_name_prefix_key(interpreter))
    })
}

/// The script the kernel's exec handler (`read_script` in
/// `ebpf/src/process.rs`) reads from this command line (`/proc/PID/cmdline`:
/// arguments each ending in a NUL): the first operand after argv[0], options
/// skipped, none at `-c`, `-e` or `-m`, at most five arguments looked at;
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
    if argv0.len() >= SCRIPT_LEN - 1 {
        return None;
    }
    for arg in args.take(SCRIPT_MAX_ARGS - 1) {
        match arg.first() {
            Some(b'-') => {
                if matches!(arg, b"-c" | b"-e" | b"-m") || arg.len() >= SCRIPT_LEN - 1 {
                    return None;
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

/// The TCP sockets of network namespace `netns`, read through the first of
/// `pids` whose tables can be read; `None` (warned about unless the
/// processes were simply gone) if none could.
fn tcp_sockets(netns: u32, pids: &[u32]) -> Option<Vec<Sock>> {
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

/// What a TCP socket's state means here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Listen,
    Established,
    Other,
}

/// A TCP socket as `/proc/PID/net/tcp` (or `tcp6`) lists it.
#[derive(Clone, Copy, Debug)]
struct Sock {
    local: SocketAddr,
    remote: SocketAddr,
    state: State,
    inode: u64,
}

impl From<&TcpNetEntry> for Sock {
    fn from(e: &TcpNetEntry) -> Self {
        Sock {
            local: e.local_address,
            remote: e.remote_address,
            state: match e.state {
                TcpState::Listen => State::Listen,
                TcpState::Established => State::Established,
                _ => State::Other,
            },
            inode: e.inode,
        }
    }
}

/// 127.0.0.0/8, `::1` and `::ffff:127.0.0.0/104`: what the kernel's
/// `is_loopback` (`ebpf/src/addr.rs`) calls loopback.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Evidence of `kind` about `at`, stamped `now`.
fn evidence_at(kind: u8, at: SocketAddr, now: u64) -> Evidence {
    Evidence {
        addr: Addr::from_ip(at.ip()),
        ktime_ns: now,
        port: at.port(),
        kind,
        _pad: [0; 5],
    }
}

/// What the seeding writes, decided before anything is written.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// `(netns, port)` → the tgid its listener is credited to.
    listeners: BTreeMap<(u32, u16), u32>,
    /// Standing evidence by tgid.
    standing: BTreeMap<u32, Evidence>,
    /// Lineage by tgid.
    lineage: BTreeMap<u32, [u8; EXE_NAME_LEN]>,
}

/// Generations walked up from a process looking for its tunnel: far more
/// than real process trees have, and an end to a cycle (pid reuse while
/// the walk ran).
const MAX_GENERATIONS: usize = 64;

impl Plan {
    /// Adds what one network namespace's TCP sockets show; `owners` maps
    /// socket inodes to the pids holding them, ascending.
    fn add_namespace(
        &mut self,
        netns: u32,
        socks: &[Sock],
        owners: &HashMap<u64, Vec<u32>>,
        now: u64,
    ) {
        let holders = |inode: u64| owners.get(&inode).map(Vec::as_slice).unwrap_or_default();
        let mut ports = HashSet::new();
        for sock in socks
            .iter()
            .filter(|s| s.state == State::Listen && !is_loopback(s.local.ip()))
        {
            let port = sock.local.port();
            ports.insert(port);
            let pids = holders(sock.inode);
            // Of the processes sharing a listener (a forking server and its
            // children, nginx's master and workers) the lowest pid is
            // credited: most likely the one that called listen(), and the
            // one that outlives the others. Its forked children inherit
            // what it accepts, as they would have from the kernel.
            if let Some(&first) = pids.first() {
                self.listeners.entry((netns, port)).or_insert(first);
            }
            for &pid in pids {
                // A listen never replaces an accept (as in the kernel).
                self.standing
                    .entry(pid)
                    .or_insert_with(|| evidence_at(evidence::LISTENING, sock.local, now));
            }
        }
        for sock in socks.iter().filter(|s| {
            s.state == State::Established
                && ports.contains(&s.local.port())
                && !is_loopback(s.remote.ip())
        }) {
            for &pid in holders(sock.inode) {
                self.standing
                    .insert(pid, evidence_at(evidence::ACCEPTED, sock.remote, now));
            }
        }
    }
}

impl Plan {
    /// Adds the lineage of every process of `family` (pid → parent and file
    /// name): the key `lineage_key` gives its own file name, else its
    /// parent's lineage, as fork and exec pass it on in the kernel.
    fn add_lineage(
        &mut self,
        family: &HashMap<u32, (u32, Vec<u8>)>,
        lineage_key: impl Fn(&[u8]) -> Option<[u8; EXE_NAME_LEN]>,
    ) {
        let keys: HashMap<u32, [u8; EXE_NAME_LEN]> = family
            .iter()
            .filter_map(|(&pid, (_, name))| Some((pid, lineage_key(name)?)))
            .collect();
        if keys.is_empty() {
            return;
        }
        for &pid in family.keys() {
            let mut at = pid;
            for _ in 0..MAX_GENERATIONS {
                if let Some(key) = keys.get(&at) {
                    self.lineage.insert(pid, *key);
                    break;
                }
                match family.get(&at) {
                    Some(&(parent, _)) if parent > 1 => at = parent,
                    _ => break,
                }
            }
        }
    }
}

/// The errno of a failed map syscall.
fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// Failed writes to one map: how many, and the first error.
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, tgid_or_key: impl std::fmt::Display, e: &MapError) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("{tgid_or_key}: {}", crate::error_chain(e)));
        }
    }

    fn warn(&self, name: &str) {
        if let Some(first) = &self.first {
            warn!(
                "seeding {name}: {} writes failed (the first, {first}); those processes are \
                 tracked from their next listen, accept or receive",
                self.count
            );
        }
    }
}

/// Gives a process's entry the seeded standing evidence and lineage it
/// lacks; whether it gained anything.
fn fill_gaps(
    state: &mut ProcState,
    standing: Option<Evidence>,
    lineage: Option<[u8; EXE_NAME_LEN]>,
) -> bool {
    let mut gained = false;
    if let Some(ev) = standing
        && state.standing.kind == evidence::NONE
    {
        state.standing = ev;
        gained = true;
    }
    if let Some(key) = lineage
        && state.lineage[0] == 0
    {
        state.lineage = key;
        gained = true;
    }
    gained
}

/// Writes `plan` and `scripts` into the maps, never over what the kernel
/// recorded.
fn write(
    plan: &Plan,
    scripts: &HashMap<u32, [u8; SCRIPT_LEN]>,
    procs: &mut BpfHashMap<MapData, u32, ProcState>,
    listeners: &mut BpfHashMap<MapData, ListenerKey, u32>,
    tracked: &mut Array<MapData, [u8; 64]>,
) -> Seeded {
    let mut seeded = Seeded::default();
    let mut failed = Failures::default();
    for (&(netns, port), tgid) in &plan.listeners {
        let key = ListenerKey {
            netns,
            port,
            _pad: 0,
        };
        match listeners.insert(key, tgid, NOEXIST) {
            Ok(()) => seeded.listeners += 1,
            // A listen the kernel saw since the programs were attached.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => failed.add(format_args!("netns {netns} port {port}"), &e),
        }
    }
    failed.warn(maps::LISTENERS);

    let mut failed = Failures::default();
    let tgids: BTreeSet<u32> = plan
        .standing
        .keys()
        .chain(scripts.keys())
        .chain(plan.lineage.keys())
        .copied()
        .collect();
    for tgid in tgids {
        let standing = plan.standing.get(&tgid).copied();
        let lineage = plan.lineage.get(&tgid).copied();
        let mut state = ProcState::EMPTY;
        if let Some(ev) = standing {
            state.standing = ev;
        }
        if let Some(script) = scripts.get(&tgid) {
            state.script = *script;
            state.script_hash = script_hash(script);
        }
        if let Some(key) = lineage {
            state.lineage = key;
        }
        // Noted before the entry is made, as the kernel does.
        if let Err(e) = mark(tracked, tgid) {
            failed.add(format_args!("pid {tgid}"), &e);
            continue;
        }
        match procs.insert(tgid, state, NOEXIST) {
            Ok(()) => seeded.processes += 1,
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                // The kernel has an entry (a fork, an exec with a script,
                // evidence since the attach): it only gains standing
                // evidence and lineage where it has none, read and written
                // back. A kernel write to the entry in between is lost: at
                // worst one piece of recent evidence, which the process's
                // next receive brings back.
                match procs.get(&tgid, 0) {
                    Ok(mut current) => {
                        if !fill_gaps(&mut current, standing, lineage) {
                            continue;
                        }
                        match procs.insert(tgid, current, EXIST) {
                            Ok(()) => seeded.processes += 1,
                            // It exited meanwhile.
                            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                            Err(e) => failed.add(format_args!("pid {tgid}"), &e),
                        }
                    }
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => failed.add(format_args!("pid {tgid}"), &e),
                }
            }
            Err(e) => failed.add(format_args!("pid {tgid}"), &e),
        }
    }
    failed.warn(maps::PROCS);
    seeded
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

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

    #[test]
    fn lineage_passes_from_a_tunnel_to_every_process_below_it() {
        let key = exe_name_prefix_key(b"code-tunnel");
        let family: HashMap<u32, (u32, Vec<u8>)> = [
            (10, (1, "code-tunnel")),
            (11, (10, "bash")),
            (12, (11, "curl")),
            // A nested tunnel gives its own key (here the same one).
            (13, (12, "code-tunnel-insiders")),
            (20, (1, "bash")),
            (21, (20, "curl")),
            // Its parent is gone: nothing to inherit.
            (30, (29, "curl")),
            // A cycle (pids reused during the walk) ends.
            (40, (41, "sh")),
            (41, (40, "sh")),
        ]
        .into_iter()
        .map(|(pid, (ppid, name))| (pid, (ppid, name.as_bytes().to_vec())))
        .collect();
        let mut plan = Plan::default();
        plan.add_lineage(&family, |name| {
            name.starts_with(b"code-tunnel").then_some(key)
        });
        assert_eq!(
            plan.lineage.keys().copied().collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        assert!(plan.lineage.values().all(|k| *k == key));
        // No tunnel: nothing is written.
        let mut plan = Plan::default();
        plan.add_lineage(&family, |_| None);
        assert!(plan.lineage.is_empty());
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
        ] {
            assert!(is_interpreter(name.as_bytes()), "{name}");
        }
        // Cuts are at separators only, as in the kernel: `perl5.36.0` gives
        // `perl5`, not `perl` (and `ruby3.1` `ruby3`).
        for name in [
            "socat",
            "pythonista",
            "nodemon",
            "bash",
            "phpstorm",
            "perl5.36.0",
            "ruby3.1",
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
        assert_eq!(
            script_of(&cmdline(&["python3", "-u", "-X", "dev", "relay.py"])),
            script("dev"),
            "an option's value is an operand to the kernel too"
        );
        assert_eq!(
            script_of(&cmdline(&["node", "--inspect", "server.js"])),
            script("server.js")
        );
        for code in ["-c", "-e", "-m"] {
            assert_eq!(script_of(&cmdline(&["python3", "-u", code, "x"])), None);
        }
        // "-cfoo" is not "-c": an option to skip.
        assert_eq!(
            script_of(&cmdline(&["perl", "-cw", "x.pl"])),
            script("x.pl")
        );
        // At most five arguments after argv[0].
        assert_eq!(
            script_of(&cmdline(&["python3", "-a", "-b", "-d", "-f", "-g", "x.py"])),
            None
        );
        assert_eq!(
            script_of(&cmdline(&["python3", "-a", "-b", "-d", "-f", "x.py"])),
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
        // A long argv[0], or a long option before the operand: the kernel
        // cannot find the next argument.
        let long_name = format!("/{}/python3", "d".repeat(70));
        assert_eq!(script_of(&cmdline(&[&long_name, "x.py"])), None);
        let long_opt = format!("--{}", "o".repeat(70));
        assert_eq!(script_of(&cmdline(&["python3", &long_opt, "x.py"])), None);
        // Without the final NUL (a rewritten command line) too.
        assert_eq!(script_of(b"python3\0x.py"), script("x.py"));
    }

    #[test]
    fn loopback_is_the_kernels_loopback() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(127, 5, 0, 9)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()),
        ] {
            assert!(is_loopback(ip), "{ip}");
        }
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)),
            IpAddr::V6(Ipv4Addr::new(10, 77, 0, 1).to_ipv6_mapped()),
            IpAddr::V6("fd77::1".parse().unwrap()),
        ] {
            assert!(!is_loopback(ip), "{ip}");
        }
    }

    fn sock(local: &str, remote: &str, state: State, inode: u64) -> Sock {
        Sock {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
            inode,
        }
    }

    #[test]
    fn listeners_and_accepted_connections_are_planned() {
        const NS: u32 = 4026531840;
        const NOW: u64 = 77;
        let socks = [
            // socat's listener (parent 100) and a forked child's accepted
            // connection (101).
            sock("10.77.0.1:9001", "0.0.0.0:0", State::Listen, 1),
            sock("10.77.0.1:9001", "10.77.0.2:40000", State::Established, 2),
            // Its outbound half: not accepted (local port not a listener's).
            sock("127.0.0.1:50000", "127.0.0.1:8080", State::Established, 3),
            // nginx master and workers share one wildcard listener.
            sock("[::]:80", "[::]:0", State::Listen, 4),
            // A loopback-only listener and a connection to it from loopback.
            sock("127.0.0.1:8080", "0.0.0.0:0", State::Listen, 5),
            sock("127.0.0.1:8080", "127.0.0.1:50000", State::Established, 6),
            // A connection on the wildcard listener from loopback.
            sock(
                "[::ffff:127.0.0.1]:80",
                "[::ffff:127.0.0.1]:41000",
                State::Established,
                7,
            ),
            // A listener nobody holds (closing): its port still counts.
            sock("0.0.0.0:7000", "0.0.0.0:0", State::Listen, 8),
            sock("10.77.0.1:7000", "10.77.0.2:41000", State::Other, 9),
        ];
        let owners = HashMap::from([
            (1, vec![100]),
            (2, vec![101]),
            (3, vec![101]),
            (4, vec![200, 201, 202]),
            (5, vec![300]),
            (6, vec![300]),
            (7, vec![201]),
        ]);
        let mut plan = Plan::default();
        plan.add_namespace(NS, &socks, &owners, NOW);
        assert_eq!(
            plan.listeners,
            BTreeMap::from([((NS, 9001), 100), ((NS, 80), 200)])
        );
        let kinds: Vec<(u32, u8)> = plan.standing.iter().map(|(&p, e)| (p, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (100, evidence::LISTENING),
                (101, evidence::ACCEPTED),
                (200, evidence::LISTENING),
                (201, evidence::LISTENING),
                (202, evidence::LISTENING),
            ]
        );
        let accepted = plan.standing[&101];
        assert_eq!(
            accepted.addr,
            Addr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)))
        );
        assert_eq!((accepted.port, accepted.ktime_ns), (40000, NOW));
        let listening = plan.standing[&100];
        assert_eq!(
            listening.addr,
            Addr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)))
        );
        assert_eq!(listening.port, 9001);

        // The same pid listening in another namespace keeps its accept, and
        // the other namespace's listener is its own key.
        let other = [sock("0.0.0.0:9001", "0.0.0.0:0", State::Listen, 10)];
        let owners = HashMap::from([(10, vec![101])]);
        plan.add_namespace(NS + 1, &other, &owners, NOW);
        assert_eq!(plan.standing[&101].kind, evidence::ACCEPTED);
        assert_eq!(plan.listeners[&(NS + 1, 9001)], 101);
    }

    #[test]
    fn this_process_listener_is_found_by_a_scan() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let scan = scan().unwrap();
        let me = std::process::id();
        let ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let (_, pids) = scan
            .netns
            .iter()
            .find(|(inode, _)| *inode == ns)
            .expect("our namespace");
        let socks = tcp_sockets(ns, pids).expect("our namespace's sockets");
        let mut plan = Plan::default();
        plan.add_namespace(ns, &socks, &scan.owners, 1);
        assert_eq!(plan.listeners.get(&(ns, port)), Some(&me), "{plan:?}");
        assert_eq!(plan.standing[&me].kind, evidence::LISTENING);
    }
}
