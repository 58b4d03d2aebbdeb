//! Seeding the kernel's tracking maps from `/proc` when the daemon starts
//! (and, narrowed to the listeners whose process no longer listens, when
//! the upkeep credits them anew: [`plant`]).
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
//!   namespace that has processes: its `(netns, port)` in `LW_LISTENERS`
//!   (with its socket cookie, from a `NETLINK_SOCK_DIAG` dump), and
//!   `listening` evidence for each process holding it;
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

mod late;
mod plan;
mod scan;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError},
    sys::SyscallError,
};
use loopwarden_common::{
    EXE_NAME_LEN, Evidence, Listener, ListenerKey, ProcState, SCRIPT_LEN, evidence,
    maps::{self, TRACKED_LOST, TRACKED_MAYBE},
    script_hash,
};
use tracing::{info, warn};

use self::{
    plan::{Plan, Sock},
    scan::{listener_cookies, scan, tcp_sockets},
};
use crate::{
    kernel::pins::PinDir,
    policy::CompiledPolicy,
    track::{
        notes::{self, Notes},
        recredit::{Recredit, credit_anew},
    },
};

/// `bpf_map_update_elem` flags: create only, update only.
const NOEXIST: u64 = aya_obj::generated::BPF_NOEXIST as u64;
pub(super) const EXIST: u64 = aya_obj::generated::BPF_EXIST as u64;

/// Listeners' socket cookies by network namespace, then socket inode.
type Cookies = HashMap<u32, HashMap<u64, u64>>;

/// What a seeding wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    /// `LW_LISTENERS` entries created.
    pub listeners: usize,
    /// `LW_PROCS` entries created, or given standing evidence they lacked.
    pub processes: usize,
    /// Entries the two maps hold after the seeding (adopted maps hold
    /// what the kernel tracked before: the seeding then adds little).
    pub listeners_held: usize,
    pub processes_held: usize,
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
        "seeded {} listeners, {} processes from /proc (in {} ms); the maps hold {} listeners, \
         {} processes (the rest the kernel tracked already, in maps a restart adopted, or \
         since the attach)",
        seeded.listeners,
        seeded.processes,
        started.elapsed().as_millis(),
        seeded.listeners_held,
        seeded.processes_held
    );
    seeded
}

fn try_seed(ebpf: &mut Ebpf, policy: Option<&CompiledPolicy>) -> Result<Seeded, String> {
    let mut maps = Maps::of_object(ebpf)?;
    let (mut seeded, _) = plant(&mut maps, policy, &HashMap::new())?;
    seeded.listeners_held = maps.listeners.keys().count();
    seeded.processes_held = maps.procs.keys().count();
    Ok(seeded)
}

/// The maps the seeding writes.
pub(super) struct Maps {
    pub(super) procs: BpfHashMap<MapData, u32, ProcState>,
    pub(super) listeners: BpfHashMap<MapData, ListenerKey, Listener>,
    pub(super) tracked: Notes,
}

impl Maps {
    /// Taken out of the loaded object (the programs keep them).
    fn of_object(ebpf: &mut Ebpf) -> Result<Self, String> {
        let tracked = ebpf
            .take_map(maps::TRACKED)
            .ok_or_else(|| format!("the eBPF object has no map {}", maps::TRACKED))?;
        Ok(Self {
            procs: take(ebpf, maps::PROCS)?,
            listeners: take(ebpf, maps::LISTENERS)?,
            tracked: Array::try_from(tracked).map_err(|e| format!("map {}: {e}", maps::TRACKED))?,
        })
    }

    /// Opened from their pins in `pins`.
    pub(super) fn pinned(pins: &PinDir) -> Result<Self, String> {
        let open = |name: &str| {
            MapData::from_pin(pins.map(name)).map_err(|e| format!("opening {name}: {e}"))
        };
        let hash = |name: &str| Ok::<_, String>(Map::HashMap(open(name)?));
        Ok(Self {
            procs: BpfHashMap::try_from(hash(maps::PROCS)?)
                .map_err(|e| format!("map {}: {e}", maps::PROCS))?,
            listeners: BpfHashMap::try_from(hash(maps::LISTENERS)?)
                .map_err(|e| format!("map {}: {e}", maps::LISTENERS))?,
            tracked: Array::try_from(Map::Array(open(maps::TRACKED)?))
                .map_err(|e| format!("map {}: {e}", maps::TRACKED))?,
        })
    }
}

/// Reads `/proc` and writes what it shows into `maps` (lineage by
/// `policy`), never over what the kernel recorded, except the `stale`
/// listener entries (whose credited process has no entry that says it
/// listens), each credited to a process holding its port's listener now
/// if the map still holds it as it was. What it wrote, and the stale
/// entries it credited anew.
pub(super) fn plant(
    maps: &mut Maps,
    policy: Option<&CompiledPolicy>,
    stale: &HashMap<ListenerKey, Listener>,
) -> Result<(Seeded, Vec<Recredit>), String> {
    let now = u64::try_from(crate::monotonic().as_nanos()).unwrap_or(u64::MAX);
    // Lineage only comes from catalog rules that extend to descendants.
    let lineage = policy.filter(|p| p.settings.inherited != 0);
    // Crediting stale listeners anew writes their credits and their
    // holders' standing evidence, nothing else: what else the walk finds
    // the kernel has recorded since the start, or chose not to.
    let recrediting = !stale.is_empty();
    let mut scan =
        scan(lineage.is_some(), !recrediting).map_err(|e| format!("listing processes: {e}"))?;
    let socks: Vec<(u32, Vec<Sock>)> = scan
        .netns
        .iter()
        .filter_map(|(netns, pids)| Some((*netns, tcp_sockets(*netns, pids)?)))
        .collect();
    scan.add_own_tables(socks.iter().flat_map(|(_, socks)| socks));
    let mut plan = Plan::default();
    for (netns, socks) in &socks {
        plan.add_namespace(*netns, socks, &scan.owners, |pid| scan.image(pid), now);
        plan.add_stdio(socks, &scan.stdio, now);
    }
    if let Some(policy) = lineage {
        plan.add_lineage(&scan.family, |name| policy.lineage_key(name));
    }
    if !recrediting && !scan.unread_scripts.is_empty() {
        warn!(
            "the scripts of {} interpreters were not read (reading their command lines waits on \
             their memory map locks): script rules do not match them until they execute a \
             program again (pids {:?})",
            scan.unread_scripts.len(),
            scan.unread_scripts
        );
    }
    if recrediting {
        plan.only_listeners(|key| {
            stale.contains_key(&ListenerKey {
                netns: key.0,
                port: key.1,
                _pad: 0,
            })
        });
    }
    // (A credited listener that closes between the dump and the write
    // leaves an entry with its cookie that no close removes, until the
    // port's next listen: the window is the milliseconds between them.)
    let cookies: Cookies = scan
        .netns
        .iter()
        .filter_map(|(netns, pids)| {
            let wanted: HashSet<u64> = plan
                .listeners
                .range((*netns, 0)..=(*netns, u16::MAX))
                .map(|(_, credit)| credit.inode)
                .collect();
            (!wanted.is_empty()).then(|| (*netns, listener_cookies(*netns, pids, &wanted)))
        })
        .collect();
    let (mut seeded, recredited, given) = write(&plan, &cookies, &scan.scripts, stale, maps);
    if !recrediting {
        let late = late::seed(&scan.walked, given, maps);
        if late > 0 {
            info!("seeding: {late} processes forked during it given their parents' state");
        }
        seeded.processes += late;
        // Last, after every note the seeding set. (At the start only:
        // later, an entry without its note may be one the kernel left at
        // an exit race, which the connect hook must not read, and which
        // the reaping removes.)
        let repaired = repair_marks(&maps.procs, &mut maps.tracked);
        if repaired > 0 {
            info!("seeding: set {repaired} notes of {} again", maps::TRACKED);
        }
    }
    Ok((seeded, recredited))
}

/// Sets `tgid`'s note in `LW_TRACKED` ([`notes::set`]): a note the kernel
/// sets in the same entry (64 pids) meanwhile can be lost; [`repair_marks`]
/// sets it again.
fn mark(tracked: &mut Notes, tgid: u32) -> Result<(), MapError> {
    notes::set(tracked, tgid, TRACKED_MAYBE)
}

/// Passes over `LW_PROCS` that [`repair_marks`] makes at most.
const REPAIR_PASSES: usize = 8;

/// Sets the `LW_TRACKED` note of every `LW_PROCS` entry that lacks one,
/// pass after pass until a pass sets none (at most [`REPAIR_PASSES`]);
/// how many it set. A note [`mark`]'s write lost is the kernel's for a
/// process whose entry the kernel makes right after the note: an entry
/// without its note, which the connect hook would never look up (its
/// evidence, lineage and script unseen). A pass that writes nothing loses
/// nothing.
fn repair_marks(procs: &BpfHashMap<MapData, u32, ProcState>, tracked: &mut Notes) -> usize {
    let mut repaired = 0;
    for _ in 0..REPAIR_PASSES {
        let unmarked: Vec<u32> = procs
            .keys()
            .filter_map(Result::ok)
            .filter(|&tgid| notes::note(tracked, tgid).is_ok_and(|note| note == 0))
            .collect();
        if unmarked.is_empty() {
            break;
        }
        for tgid in unmarked {
            if mark(tracked, tgid).is_ok() {
                repaired += 1;
            }
        }
    }
    repaired
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

/// The errno of a failed map syscall.
pub(super) fn errno(e: &MapError) -> Option<i32> {
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
        self.warn_that(
            &format!("seeding {name}"),
            "those processes are tracked from their next listen, accept or receive (those a \
             full map could not take are judged network-facing until they exit)",
        );
    }

    /// Warns that `what` failed so often, and what that leaves.
    fn warn_that(&self, what: &str, leaves: &str) {
        if let Some(first) = &self.first {
            warn!(
                "{what}: {} writes failed (the first, {first}); {leaves}",
                self.count
            );
        }
    }
}

/// Gives a process's entry the seeded standing evidence, lineage and
/// script it lacks; whether it gained anything. (An entry the kernel made
/// for an interpreter that was already running, at a receive or a listen
/// since the attach, has no script: the kernel reads one only at exec.)
fn fill_gaps(
    state: &mut ProcState,
    standing: Option<Evidence>,
    lineage: Option<[u8; EXE_NAME_LEN]>,
    script: Option<&[u8; SCRIPT_LEN]>,
) -> bool {
    let mut gained = false;
    if let Some(script) = script
        && state.script_hash == 0
    {
        state.script = *script;
        state.script_hash = script_hash(script);
        gained = true;
    }
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

/// Writes `plan` and `scripts` into `maps`, never over what the kernel
/// recorded but for the `stale` listener entries still as they were
/// ([`plant`], which repairs the notes after, at the start). Also what it
/// gave each process, by pid.
fn write(
    plan: &Plan,
    cookies: &Cookies,
    scripts: &HashMap<u32, [u8; SCRIPT_LEN]>,
    stale: &HashMap<ListenerKey, Listener>,
    maps: &mut Maps,
) -> (Seeded, Vec<Recredit>, HashMap<u32, ProcState>) {
    let Maps {
        procs,
        listeners,
        tracked,
    } = maps;
    let mut seeded = Seeded::default();
    // Processes first, then the listeners crediting them, as the kernel
    // writes a listen's evidence first: an accept in between finds its
    // listener's process tracked. Stale entries are credited last, once
    // their holders' evidence says they listen.
    let mut anew = Vec::new();
    // What each process was given (planned), for its late children.
    let mut given = HashMap::new();
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
        given.insert(tgid, state);
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
                // evidence, lineage and a script where it has none, read
                // and written back. A kernel write to the entry in between
                // is lost: at worst one piece of recent evidence, which the
                // process's next receive brings back.
                match procs.get(&tgid, 0) {
                    Ok(mut current) => {
                        if !fill_gaps(&mut current, standing, lineage, scripts.get(&tgid)) {
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
            Err(e) => {
                // A full map: the process is judged network-facing, as
                // the kernel judges one whose state it could not keep.
                if errno(&e) == Some(libc::E2BIG) {
                    let _ = notes::set(tracked, tgid, TRACKED_LOST);
                }
                failed.add(format_args!("pid {tgid}"), &e);
            }
        }
    }
    failed.warn(maps::PROCS);

    let mut failed = Failures::default();
    for (&(netns, port), credit) in &plan.listeners {
        let key = ListenerKey {
            netns,
            port,
            _pad: 0,
        };
        if let Some(held) = stale.get(&key) {
            let cookie = cookies
                .get(&netns)
                .and_then(|by_inode| by_inode.get(&credit.inode))
                .copied();
            anew.push((key, *held, credit.tgid, cookie));
            continue;
        }
        // Without its cookie (not read), any close of a listener on the
        // port removes the entry.
        let cookie = cookies
            .get(&netns)
            .and_then(|by_inode| by_inode.get(&credit.inode))
            .copied()
            .unwrap_or(0);
        let listener = Listener {
            tgid: credit.tgid,
            cookie,
            ..Listener::default()
        };
        match listeners.insert(key, listener, NOEXIST) {
            Ok(()) => seeded.listeners += 1,
            // A listen the kernel saw since the programs were attached.
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => failed.add(format_args!("netns {netns} port {port}"), &e),
        }
    }
    failed.warn(maps::LISTENERS);

    let mut recredited = Vec::new();
    let mut failed = Failures::default();
    for (key, held, tgid, cookie) in anew {
        match credit_anew(listeners, procs, key, &held, tgid, cookie) {
            Ok(true) => recredited.push(Recredit {
                key,
                from: held.tgid,
                to: tgid,
            }),
            Ok(false) => {}
            Err(e) => failed.add(format_args!("netns {} port {}", key.netns, key.port), &e),
        }
    }
    failed.warn_that(
        &format!(
            "crediting listeners of gone processes anew in {}",
            maps::LISTENERS
        ),
        "their ports' accepts stay uncredited until a process listens or executes holding \
         the listener, or the next try",
    );
    (seeded, recredited, given)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn this_process_listener_is_found_by_a_scan() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let scan = scan(false, true).unwrap();
        let me = std::process::id();
        let ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let (_, pids) = scan
            .netns
            .iter()
            .find(|(inode, _)| *inode == ns)
            .expect("our namespace");
        let socks = tcp_sockets(ns, pids).expect("our namespace's sockets");
        let mut plan = Plan::default();
        plan.add_namespace(ns, &socks, &scan.owners, |pid| scan.image(pid), 1);
        assert_eq!(
            plan.listeners.get(&(ns, port)).map(|c| c.tgid),
            Some(me),
            "{plan:?}"
        );
        assert_eq!(plan.standing[&me].kind, evidence::LISTENING);
    }

    /// A listener this process hands to a program it executes (as pid 1
    /// hands a socket-activated service its socket) is credited
    /// to that program, as the kernel credits the last exec that holds
    /// it; both holders get `listening` evidence.
    #[test]
    fn a_listener_handed_to_an_executed_child_is_credited_to_the_child() {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};

        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = listener.as_raw_fd();
        let mut command = std::process::Command::new("sleep");
        command.arg("30");
        // SAFETY: dup2 is async-signal-safe; the copy it makes (fd 100,
        // never the listener's own: dup2 onto itself would leave it
        // close-on-exec) is inherited.
        unsafe {
            command.pre_exec(move || match libc::dup2(fd, 100) {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
        let mut child = command.spawn().unwrap();
        let pid = child.id();
        let me = std::fs::read_link("/proc/self/exe").unwrap();
        let executed = (0..500).any(|_| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
            let done = exe.is_ok_and(|exe| exe != me);
            if !done {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done
        });
        let scan = scan(false, true).unwrap();
        let ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let (_, pids) = scan.netns.iter().find(|(inode, _)| *inode == ns).unwrap();
        let socks = tcp_sockets(ns, pids).expect("our namespace's sockets");
        let mut plan = Plan::default();
        plan.add_namespace(ns, &socks, &scan.owners, |pid| scan.image(pid), 1);
        let _ = child.kill();
        let _ = child.wait();
        assert!(executed, "sleep did not start");
        assert_eq!(
            plan.listeners.get(&(ns, port)).map(|c| c.tgid),
            Some(pid),
            "{plan:?}"
        );
        let me = std::process::id();
        assert_eq!(plan.standing[&me].kind, evidence::LISTENING);
        assert_eq!(plan.standing[&pid].kind, evidence::LISTENING);
    }

    /// A process whose main thread has exited while another runs is
    /// scanned through the running thread: the socket it holds is its.
    #[test]
    fn a_process_whose_main_thread_exited_is_scanned() {
        let (mut child, inode) = crate::testing::child_without_its_main_thread();
        let scan = scan(false, true);
        let _ = child.kill();
        let _ = child.wait();
        let owners = scan.unwrap().owners;
        assert_eq!(owners.get(&inode), Some(&vec![child.id()]));
    }

    /// A listener made by a thread that unshared its descriptor table is
    /// credited to its process: before, no holder of it was found, and the
    /// process started without its standing evidence.
    #[test]
    fn a_listener_in_a_threads_own_table_is_credited_to_its_process() {
        let (mut child, line) = crate::testing::child_in_a_threads_own_table(
            "s = socket.socket()\n\
             s.bind(('0.0.0.0', 0))\n\
             s.listen()\n\
             print(s.getsockname()[1], flush=True)\n\
             time.sleep(30)",
        );
        let port: u16 = line.trim().parse().expect("a port");
        let pid = child.id();
        let mut scan = scan(false, true).unwrap();
        let ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let (_, pids) = scan.netns.iter().find(|(inode, _)| *inode == ns).unwrap();
        let socks = tcp_sockets(ns, pids).expect("our namespace's sockets");
        let mut before = Plan::default();
        before.add_namespace(ns, &socks, &scan.owners, |pid| scan.image(pid), 1);
        scan.add_own_tables(socks.iter());
        let mut plan = Plan::default();
        plan.add_namespace(ns, &socks, &scan.owners, |pid| scan.image(pid), 1);
        let _ = child.kill();
        let _ = child.wait();
        // The case this is about: its process's table does not hold it.
        assert_eq!(before.listeners.get(&(ns, port)), None, "{before:?}");
        assert_eq!(
            plan.listeners.get(&(ns, port)).map(|c| c.tgid),
            Some(pid),
            "{plan:?}"
        );
        assert_eq!(plan.standing[&pid].kind, evidence::LISTENING);
    }

    #[test]
    fn an_entry_the_kernel_made_gains_only_what_it_lacks() {
        let mut script = [0u8; SCRIPT_LEN];
        script[..11].copy_from_slice(b"/srv/fwd.py");
        let listening = Evidence {
            kind: evidence::LISTENING,
            ..Evidence::NONE
        };
        // Received evidence since the attach: no script, no standing.
        let mut state = ProcState::EMPTY;
        state.recent.kind = evidence::RECEIVED;
        assert!(fill_gaps(&mut state, Some(listening), None, Some(&script)));
        assert_eq!(state.script, script);
        assert_eq!(state.script_hash, script_hash(&script));
        assert_eq!(state.standing.kind, evidence::LISTENING);
        assert_eq!(state.recent.kind, evidence::RECEIVED);
        // A script of its own (an exec since the scan) stays.
        let mut own = [0u8; SCRIPT_LEN];
        own[..6].copy_from_slice(b"new.py");
        let mut state = ProcState::EMPTY;
        state.script = own;
        state.script_hash = script_hash(&own);
        assert!(!fill_gaps(&mut state, None, None, Some(&script)));
        assert_eq!(state.script, own);
    }
}
