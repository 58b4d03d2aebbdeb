//! Processes that started during the seeding: forked, after the walk had
//! passed their pid, by a process the seeding then gave state to. Their
//! parent had no `LW_PROCS` entry yet when `lw_fork` ran, so nothing was
//! copied, and the walk never saw them: a relay's per-connection child
//! (socat `fork`) forked for a remote party in that window would connect
//! untracked for its whole life. [`seed`] gives each what a fork would
//! have copied from its parent's seeded state.

use std::collections::{HashMap, HashSet};

use loopwarden_common::ProcState;
use procfs::process::all_processes;

use super::{Failures, Maps, NOEXIST, errno, mark};

/// `PF_FORKNOEXEC` (`include/linux/sched.h`), in `/proc/PID/stat`'s flags:
/// forked and executed nothing since.
const PF_FORKNOEXEC: u32 = 0x40;

/// Passes over `/proc` at most: each looks for the children of those the
/// one before gave state to (a generation).
const GENERATIONS: usize = 8;

/// Gives every process not in `walked` whose parent is in `given` (what
/// the seeding wrote for it) its parent's state: all of it if it executed
/// nothing since its fork, only the lineage (which an exec keeps) if it
/// did. Never over an entry the kernel made (`BPF_NOEXIST`: a child forked
/// once its parent's entry was there has its copy). Children of those so
/// given are found by the next pass (only theirs: the others' parents had
/// entries by then), until one finds none, [`GENERATIONS`] at most. How
/// many it gave state to.
pub(super) fn seed(
    walked: &HashSet<u32>,
    mut given: HashMap<u32, ProcState>,
    maps: &mut Maps,
) -> usize {
    let mut seeded = 0;
    let mut failed = Failures::default();
    // Those given state by an earlier pass.
    let mut done: HashSet<u32> = HashSet::new();
    for _ in 0..GENERATIONS {
        let Ok(processes) = all_processes() else {
            break;
        };
        let mut found = Vec::new();
        for process in processes.flatten() {
            let Ok(pid) = u32::try_from(process.pid) else {
                continue;
            };
            if walked.contains(&pid) || given.contains_key(&pid) || done.contains(&pid) {
                continue;
            }
            let Ok(stat) = process.stat() else {
                continue;
            };
            let Some(parent) = u32::try_from(stat.ppid).ok().and_then(|p| given.get(&p)) else {
                continue;
            };
            let state = if stat.flags & PF_FORKNOEXEC != 0 {
                *parent
            } else {
                ProcState {
                    lineage: parent.lineage,
                    ..ProcState::EMPTY
                }
            };
            found.push((pid, state));
        }
        if found.is_empty() {
            break;
        }
        done.extend(given.drain().map(|(pid, _)| pid));
        for (pid, state) in found {
            given.insert(pid, state);
            if state == ProcState::EMPTY {
                continue;
            }
            let written =
                mark(&mut maps.tracked, pid).and_then(|()| maps.procs.insert(pid, state, NOEXIST));
            match written {
                Ok(()) => seeded += 1,
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => failed.add(format_args!("pid {pid}"), &e),
            }
        }
    }
    failed.warn(loopwarden_common::maps::PROCS);
    seeded
}
