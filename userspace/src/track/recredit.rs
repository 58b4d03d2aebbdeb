//! Listener entries whose process is gone. `LW_LISTENERS` credits a
//! port's accepts to the process that put its listener into LISTEN, or
//! that last executed holding it, and the kernel writes an accept's
//! `accepted` evidence only into that process's entry, and only while the
//! entry says it listens (`record_accepted` in `ebpf/src/procs.rs`). When
//! that process exits while another holds the listener on (a server that
//! listened, forked and left; a listener handed over a Unix socket by a
//! process that exited since), the port's accepts are credited to nobody.
//! [`Recrediting::check`] finds such entries and credits each to a
//! process holding its listener now, chosen from `/proc` as the seeding
//! chooses, and gives it `listening` evidence.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use loopwarden_common::{Listener, ListenerKey, ProcState, evidence};

use super::seed::{EXIST, Maps, errno, plant};
use crate::kernel::pins::PinDir;

/// The wait before an entry no holder was found for is looked for again,
/// doubled at each try up to [`MAX_WAIT`]: a listener in flight over a
/// Unix socket has a holder a moment later, one an io_uring holds as a
/// fixed file never has one `/proc` shows.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Entries looked for in `/proc` and not credited: when each may be tried
/// again, as long as it stays as it was.
#[derive(Default)]
pub struct Recrediting {
    tried: HashMap<ListenerKey, Tried>,
    /// `LW_PROCS`, `LW_LISTENERS` and `LW_TRACKED`, opened at the first
    /// check.
    maps: Option<Maps>,
}

struct Tried {
    held: Listener,
    next: Instant,
    wait: Duration,
}

impl Recrediting {
    /// Looks for `LW_LISTENERS` entries (pinned in `pins`) whose credited
    /// process has no `LW_PROCS` entry that says it listens, and credits
    /// those not tried lately anew: the ones it credited. `/proc` is read
    /// only when there are some (the walk the seeding makes at start).
    /// The maps are opened from their pins once and kept: no one replaces
    /// them while the daemon holds the run directory's lock (`detach`
    /// refuses); a map that fails to read is opened anew at the next check.
    pub fn check(&mut self, pins: &PinDir) -> Result<Vec<Recredit>, String> {
        let mut maps = match self.maps.take() {
            Some(maps) => maps,
            None => Maps::pinned(pins)?,
        };
        let now = Instant::now();
        let due = self.due(stale(&maps)?, now);
        if due.is_empty() {
            self.maps = Some(maps);
            return Ok(Vec::new());
        }
        // A failed walk is a try too: it is not made again every second.
        let planted = plant(&mut maps, None, &due);
        let recredited = planted.as_ref().map_or(&[][..], |(_, r)| r.as_slice());
        self.tried(due, recredited, now);
        self.maps = Some(maps);
        planted.map(|(_, recredited)| recredited)
    }

    /// Of the `stale` entries, those to look for now: each not tried yet,
    /// changed since its try, or whose wait is over. Tries of entries no
    /// longer stale, or changed, are forgotten.
    fn due(
        &mut self,
        stale: HashMap<ListenerKey, Listener>,
        now: Instant,
    ) -> HashMap<ListenerKey, Listener> {
        self.tried
            .retain(|key, tried| stale.get(key) == Some(&tried.held));
        stale
            .into_iter()
            .filter(|(key, _)| self.tried.get(key).is_none_or(|t| t.next <= now))
            .collect()
    }

    /// Notes the `due` entries looked for at `now` and not among
    /// `recredited`: each waits twice as long as at its last try.
    fn tried(
        &mut self,
        due: HashMap<ListenerKey, Listener>,
        recredited: &[Recredit],
        now: Instant,
    ) {
        for (key, held) in due {
            if recredited.iter().any(|r| r.key == key) {
                self.tried.remove(&key);
                continue;
            }
            let wait = self
                .tried
                .get(&key)
                .map_or(FIRST_WAIT, |t| (t.wait * 2).min(MAX_WAIT));
            self.tried.insert(
                key,
                Tried {
                    held,
                    next: now + wait,
                    wait,
                },
            );
        }
    }
}

/// A listener entry whose credited process was gone, credited anew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recredit {
    pub key: ListenerKey,
    /// The process it credited, and the one it credits now.
    pub from: u32,
    pub to: u32,
}

/// Credits the listener entry at `key` to `tgid`, a holder of a listener
/// on its port whose socket cookie is `cookie` (`None`: not read); whether
/// it wrote. Only if the entry is still `held` (a listen since, or a close,
/// changed it: the kernel's wins), its process still does not listen (an
/// exec's scan may have made it listen again), and `tgid`'s entry says it
/// listens (else the kernel would credit it nothing). The same listener
/// keeps its cookie and the one kept before it; another on the port (an
/// IPv6 one beside it, one of a `SO_REUSEPORT` group) takes the port over
/// as a listen would, the held one kept before it. (A listen or close
/// between the reads and the write is lost: the window is a few
/// syscalls.)
pub(super) fn credit_anew(
    listeners: &mut BpfHashMap<MapData, ListenerKey, Listener>,
    procs: &BpfHashMap<MapData, u32, ProcState>,
    key: ListenerKey,
    held: &Listener,
    tgid: u32,
    cookie: Option<u64>,
) -> Result<bool, MapError> {
    if held.tgid == tgid {
        return Ok(false);
    }
    match listeners.get(&key, 0) {
        Ok(now) if now == *held => {}
        Ok(_) | Err(MapError::KeyNotFound) => return Ok(false),
        Err(e) => return Err(e),
    }
    if listens(procs, held.tgid)? || !listens(procs, tgid)? {
        return Ok(false);
    }
    let credited = match cookie {
        Some(cookie) if held.cookie != 0 && cookie != held.cookie => {
            Listener::taking_over(Some(held), tgid, cookie)
        }
        _ => Listener { tgid, ..*held },
    };
    match listeners.insert(key, credited, EXIST) {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The entries of `maps`' `LW_LISTENERS` whose accepts the kernel would
/// credit to nobody: their process has no `LW_PROCS` entry (it is gone),
/// or one whose standing evidence does not say it listens (a process that
/// took the pid since, or one that executed a program that does not hold
/// the listener).
fn stale(maps: &Maps) -> Result<HashMap<ListenerKey, Listener>, String> {
    let mut stale = HashMap::new();
    for entry in maps.listeners.iter() {
        let (key, held) = match entry {
            Ok(entry) => entry,
            // Removed while the walk ran.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => {
                return Err(format!(
                    "reading {}: {e}",
                    loopwarden_common::maps::LISTENERS
                ));
            }
        };
        let listens = listens(&maps.procs, held.tgid)
            .map_err(|e| format!("reading {}: {e}", loopwarden_common::maps::PROCS))?;
        if !listens {
            stale.insert(key, held);
        }
    }
    Ok(stale)
}

/// Whether `tgid`'s `LW_PROCS` entry says it listens: the process an
/// accept's evidence is written for (`record_accepted`).
fn listens(procs: &BpfHashMap<MapData, u32, ProcState>, tgid: u32) -> Result<bool, MapError> {
    match procs.get(&tgid, 0) {
        Ok(state) => Ok(evidence::listens(state.standing.kind)),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ListenerKey {
        ListenerKey {
            netns: 1,
            port,
            _pad: 0,
        }
    }

    fn held(tgid: u32) -> Listener {
        Listener {
            tgid,
            cookie: 7,
            ..Listener::default()
        }
    }

    fn ports(due: &HashMap<ListenerKey, Listener>) -> Vec<u16> {
        let mut ports: Vec<u16> = due.keys().map(|k| k.port).collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn an_entry_no_holder_was_found_for_waits_twice_as_long_each_time() {
        let mut r = Recrediting::default();
        let t0 = Instant::now();
        let stale = || HashMap::from([(key(80), held(10))]);
        let due = r.due(stale(), t0);
        assert_eq!(ports(&due), [80]);
        r.tried(due, &[], t0);
        assert!(r.due(stale(), t0 + Duration::from_millis(999)).is_empty());
        let t1 = t0 + FIRST_WAIT;
        let due = r.due(stale(), t1);
        assert_eq!(ports(&due), [80]);
        r.tried(due, &[], t1);
        assert!(r.due(stale(), t1 + FIRST_WAIT).is_empty());
        let t2 = t1 + 2 * FIRST_WAIT;
        assert_eq!(ports(&r.due(stale(), t2)), [80]);
        // The wait stops growing: tried whenever due, for an hour.
        let mut t = t2;
        while t < t0 + Duration::from_secs(3600) {
            let due = r.due(stale(), t);
            r.tried(due, &[], t);
            t = r.tried[&key(80)].next;
        }
        let last = t - MAX_WAIT;
        assert_eq!(r.tried[&key(80)].wait, MAX_WAIT);
        assert!(
            r.due(stale(), last + MAX_WAIT - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(ports(&r.due(stale(), last + MAX_WAIT)), [80]);
    }

    #[test]
    fn a_changed_or_new_entry_is_due_at_once_and_a_credited_one_is_forgotten() {
        let mut r = Recrediting::default();
        let t0 = Instant::now();
        let due = r.due(
            HashMap::from([(key(80), held(10)), (key(81), held(11))]),
            t0,
        );
        let credited = Recredit {
            key: key(81),
            from: 11,
            to: 12,
        };
        r.tried(due, &[credited], t0);
        assert_eq!(r.tried.len(), 1, "the credited entry is not kept");
        // Port 80's entry now names another gone process; port 82 is new.
        let stale = HashMap::from([(key(80), held(20)), (key(82), held(12))]);
        assert_eq!(ports(&r.due(stale, t0)), [80, 82]);
        // An entry no longer stale is forgotten.
        assert!(r.due(HashMap::new(), t0).is_empty());
        assert!(r.tried.is_empty());
    }
}
