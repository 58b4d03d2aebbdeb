//! The tracking upkeep's thread ([`watch`]): credits listeners anew, reaps
//! `LW_PROCS`, gives back the connection slots of sockets whose close the
//! kernel did not see ([`SlotSweep`]), and warns when a kernel tracking
//! map nears its capacity,
//! before what fills
//! it is lost: past it new processes go untracked (`LW_PROCS`: judged
//! network-facing, never as processes nothing is known of), new
//! listeners unremembered (`LW_LISTENERS`), and the oldest outbound
//! connects (`LW_PENDING`) and connections' origins (`LW_CONNS`, then
//! "unknown" to services) are forgotten.
//!
//! Counting a map walks its keys (one syscall per entry, see
//! `ops::metrics`), so it runs on a thread of its own every [`EVERY`],
//! never in the event loop, after the entries of processes that are gone
//! are removed ([`crate::track::reap`]). A map warns once when it reaches
//! [`HIGH`] percent and again only after it fell below [`LOW`]. The same
//! thread credits listeners whose process is gone anew every
//! [`LISTENERS_EVERY`] ([`Recrediting`]).

use std::{thread, time::Duration};

use loopwarden_common::maps;
use tracing::{info, warn};

use crate::{
    kernel::pins::PinDir,
    ops::metrics::{Usage, usage},
    provenance::sweep::SlotSweep,
    track::{Recredit, Recrediting},
};

/// How often the maps are counted.
const EVERY: Duration = Duration::from_secs(10);
/// How often `LW_LISTENERS` is looked through for listeners whose process
/// no longer listens: their accepts go uncredited until then (a walk of
/// the map: three syscalls per listener; `/proc` is read only when one is
/// found).
const LISTENERS_EVERY: Duration = Duration::from_secs(1);
/// Percent full at which a map warns.
const HIGH: u64 = 90;
/// Percent full below which a map that warned may warn again.
const LOW: u64 = 75;

/// Which maps have warned and not yet fallen below [`LOW`].
#[derive(Default)]
struct Fullness {
    warned: Vec<&'static str>,
}

/// What one reading says: a map that became full, or one that is no
/// longer.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Full(Usage),
    Eased(Usage),
}

impl Fullness {
    fn check(&mut self, usage: Vec<Usage>) -> Vec<Change> {
        let mut changes = Vec::new();
        for u in usage {
            let percent = u64::from(u.entries) * 100 / u64::from(u.capacity.max(1));
            let warned = self.warned.contains(&u.map);
            if !warned && percent >= HIGH {
                self.warned.push(u.map);
                changes.push(Change::Full(u));
            } else if warned && percent < LOW {
                self.warned.retain(|m| *m != u.map);
                changes.push(Change::Eased(u));
            }
        }
        changes
    }
}

/// What a full map costs, and what to do about it.
fn consequence(map: &str) -> &'static str {
    match map {
        maps::CONNS => {
            "past it the oldest connections' origins are dropped and become \"unknown\" to \
             getsockopt, the query socket and ident; raise [provenance] connections"
        }
        maps::PROCS => {
            "past it a process with evidence, a lineage or a script to keep is not tracked \
             (counted as untracked) and is judged network-facing until it exits: the relay \
             verdict applies to it and its children (via_how=untracked)"
        }
        maps::LISTENERS => "past it new non-loopback listeners are not remembered",
        maps::PENDING => {
            "past it the oldest outbound connects are forgotten before their handshake (no \
             connected evidence for them)"
        }
        _ => "past it entries are lost",
    }
}

/// Starts the thread that credits listeners of gone processes anew, reaps
/// `LW_PROCS`, gives back the connection slots of closed sockets and
/// counts the tracking maps pinned in `pins`.
pub(super) fn watch(pins: PinDir) -> std::io::Result<()> {
    thread::Builder::new()
        .name("lw-upkeep".to_owned())
        .spawn(move || {
            let mut fullness = Fullness::default();
            let mut reap_error: Option<String> = None;
            let mut recrediting = Recrediting::default();
            let mut recredit_error: Option<String> = None;
            let mut sweep = SlotSweep::default();
            let mut sweep_error: Option<String> = None;
            // Once at the start too: a map that cannot be mapped is said now.
            sweep_slots(&mut sweep, &pins, &mut sweep_error);
            let counts_every = (EVERY.as_millis() / LISTENERS_EVERY.as_millis()).max(1);
            for tick in 1u128.. {
                thread::sleep(LISTENERS_EVERY);
                match recrediting.check(&pins) {
                    Ok(recredited) => {
                        recredit_error = None;
                        recredited.iter().for_each(log_recredit);
                    }
                    // Said once, until it changes.
                    Err(e) if recredit_error.as_ref() != Some(&e) => {
                        warn!("crediting the listeners of processes that are gone failed: {e}");
                        recredit_error = Some(e);
                    }
                    Err(_) => {}
                }
                if tick % counts_every != 0 {
                    continue;
                }
                // Counted after the dead processes' entries went.
                match crate::track::reap(&pins) {
                    Ok(0) => reap_error = None,
                    Ok(n) => {
                        reap_error = None;
                        info!(
                            reaped = n,
                            "removed {n} {} entries of processes that are gone (an exit before \
                             a connect's handshake completed, or one the kernel did not run \
                             its tracepoint for)",
                            maps::PROCS
                        );
                    }
                    // Said once, until it changes.
                    Err(e) if reap_error.as_ref() != Some(&e) => {
                        warn!("removing the entries of processes that are gone failed: {e}");
                        reap_error = Some(e);
                    }
                    Err(_) => {}
                }
                sweep_slots(&mut sweep, &pins, &mut sweep_error);
                for change in fullness.check(usage(&pins)) {
                    match change {
                        Change::Full(u) => warn!(
                            map = u.map,
                            entries = u.entries,
                            capacity = u.capacity,
                            "{} holds {} of {} entries: {}",
                            u.map,
                            u.entries,
                            u.capacity,
                            consequence(u.map)
                        ),
                        Change::Eased(u) => info!(
                            map = u.map,
                            entries = u.entries,
                            capacity = u.capacity,
                            "{} is below {LOW}% full again ({} of {})",
                            u.map,
                            u.entries,
                            u.capacity
                        ),
                    }
                }
            }
        })
        .map(drop)
}

/// One sweep of `LW_CONN_SLOTS` pinned in `pins`, said when it gave slots
/// back; a failure is said once, until it changes (kept in `error`).
fn sweep_slots(sweep: &mut SlotSweep, pins: &PinDir, error: &mut Option<String>) {
    match sweep.sweep(&pins.maps_dir()) {
        Ok(swept) => {
            *error = None;
            let n = swept.given_back;
            if n > 0 {
                info!(
                    given_back = n,
                    "gave back {n} {} slots held for connections whose accepted socket is \
                     gone (the kernel did not run lw_sock_state for its close)",
                    maps::CONN_SLOTS
                );
            }
            let n = swept.unstuck;
            if n > 0 {
                info!(
                    given_back = n,
                    "freed {n} {} slots left marked releasing by a give-back that never \
                     finished (a daemon stopped in the middle of one)",
                    maps::CONN_SLOTS
                );
            }
        }
        Err(e) if error.as_deref() != Some(e.to_string().as_str()) => {
            warn!(
                "giving back the connection slots of closed sockets failed: {e}; slots whose \
                 close the kernel missed stay taken"
            );
            *error = Some(e.to_string());
        }
        Err(_) => {}
    }
}

/// Says that a listener's accepts are credited to another process. Its
/// comm is the process's to choose (`PR_SET_NAME`): written quoted and
/// escaped, so a newline in it cannot start a diagnostic line of its own.
fn log_recredit(r: &Recredit) {
    let comm = procfs::process::Process::new(r.to as i32)
        .and_then(|p| p.stat())
        .map_or_else(|_| "?".to_owned(), |s| s.comm);
    info!(
        port = r.key.port,
        netns = r.key.netns,
        from = r.from,
        to = r.to,
        "the listener on port {} (network namespace {}) was credited to process {}, which \
         no longer listens (gone, or its pid another's): its accepts are now credited to \
         process {} ({comm:?}), which holds it",
        r.key.port,
        r.key.netns,
        r.from,
        r.to
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(entries: u32) -> Vec<Usage> {
        vec![Usage {
            map: maps::CONNS,
            entries,
            capacity: 1000,
        }]
    }

    #[test]
    fn a_map_warns_once_per_crossing() {
        let mut f = Fullness::default();
        assert_eq!(f.check(conns(899)), []);
        assert!(matches!(f.check(conns(900)).as_slice(), [Change::Full(u)] if u.entries == 900));
        // Still full, or eased but not below LOW: nothing new.
        assert_eq!(f.check(conns(1000)), []);
        assert_eq!(f.check(conns(750)), []);
        assert!(matches!(f.check(conns(749)).as_slice(), [Change::Eased(u)] if u.entries == 749));
        assert_eq!(f.check(conns(100)), []);
        assert!(matches!(f.check(conns(950)).as_slice(), [Change::Full(_)]));
    }

    #[test]
    fn a_zero_capacity_reading_does_not_divide_by_zero() {
        let mut f = Fullness::default();
        let empty = Usage {
            map: maps::PROCS,
            entries: 0,
            capacity: 0,
        };
        assert_eq!(f.check(vec![empty]), []);
    }
}
