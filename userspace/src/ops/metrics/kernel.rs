//! What the metrics read from the pinned maps: the kernel's own counters
//! (`LW_STATS`, per CPU, summed), the policy in force, how full the
//! tracking maps are, how many connections carry an origin, and the
//! tracking programs' runs the kernel skipped. Blocking
//! (map syscalls): called on the blocking pool.
//!
//! Counting a hash map's entries walks its keys (`BPF_MAP_GET_NEXT_KEY`),
//! at most its capacity of steps (a walk that races deletions may start
//! over; it stops there). The counts are kept for [`USAGE_TTL`], so
//! scrapes however frequent cost at most one walk per second. The daemon
//! counts with [`usage`] too, to warn of a map nearly full.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::{
    Pod,
    maps::{HashMap as AyaHashMap, Map, MapData},
};
use loopwarden_common::{
    Listener, ListenerKey, Pending, ProcState, maps,
    origin::{ConnEntry, ConnKey},
};

use crate::{
    kernel::{
        inspect::{self, Counter, InForce},
        lru,
        pins::PinDir,
    },
    provenance::Conns,
};

/// How long map entry counts are reused.
pub const USAGE_TTL: Duration = Duration::from_secs(1);

/// The maps whose use is reported: the kernel's tracking state, each
/// bounded (past capacity the kernel counts `untracked` or evicts).
pub const USAGE_MAPS: [&str; 4] = [maps::PROCS, maps::LISTENERS, maps::PENDING, maps::CONNS];

/// A map's entries and capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub map: &'static str,
    pub entries: u32,
    pub capacity: u32,
}

/// One reading of the pins.
pub struct Reading {
    pub counters: Result<Vec<Counter>, String>,
    pub in_force: Option<InForce>,
    pub usage: Vec<Usage>,
    /// Accepted protected connections whose origin the kernel holds, in
    /// `LW_CONN_SLOTS` and `LW_CONNS` (`None`: they cannot be opened).
    pub tagged: Option<usize>,
    /// Each pinned tracking program's runs the kernel skipped (nested on a
    /// CPU already running it).
    pub skipped: Vec<(&'static str, u64)>,
}

/// What walking the maps and the programs counted.
#[derive(Clone)]
struct Counted {
    usage: Vec<Usage>,
    tagged: Option<usize>,
    skipped: Vec<(&'static str, u64)>,
}

/// Reads the pins, with map usage and the tagged connections cached.
pub struct KernelSource {
    pins: PinDir,
    counted: Mutex<Option<(Instant, Counted)>>,
}

impl KernelSource {
    pub fn new(pins: PinDir) -> Self {
        Self {
            pins,
            counted: Mutex::new(None),
        }
    }

    /// Counters and policy afresh; map usage and the tagged connections
    /// at most [`USAGE_TTL`] old.
    pub fn read(&self) -> Reading {
        let meta = inspect::meta(&self.pins).map_err(|e| crate::error_chain(&e));
        let counters = meta
            .clone()
            .and_then(|_| inspect::counters(&self.pins).map_err(|e| crate::error_chain(&e)));
        let in_force = meta.ok().and_then(|_| inspect::in_force(&self.pins).ok());
        let Counted {
            usage,
            tagged,
            skipped,
        } = self.counted();
        Reading {
            counters,
            in_force,
            usage,
            tagged,
            skipped,
        }
    }

    fn counted(&self) -> Counted {
        let mut cached = self
            .counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, counted)) = &*cached
            && at.elapsed() < USAGE_TTL
        {
            return counted.clone();
        }
        let counted = Counted {
            usage: usage(&self.pins),
            tagged: Conns::open(&self.pins.maps_dir())
                .ok()
                .map(|conns| conns.held()),
            skipped: skipped_runs(&self.pins),
        };
        *cached = Some((Instant::now(), counted.clone()));
        counted
    }
}

/// The skipped runs of each tracking program pinned in `pins` (one whose
/// program cannot be read is left out): four syscalls a program, cached
/// with the map counts.
fn skipped_runs(pins: &PinDir) -> Vec<(&'static str, u64)> {
    loopwarden_common::programs::TRACKERS
        .iter()
        .chain(loopwarden_common::programs::CGROUP_TRACKERS)
        .filter_map(
            |&(program, _)| match inspect::link(pins, program, 0, None) {
                inspect::LinkState::Pinned(link) => Some((program, link.skipped_runs?)),
                _ => None,
            },
        )
        .collect()
}

/// Entries and capacity of each of [`USAGE_MAPS`] pinned in `pins` (one
/// that cannot be opened as ours is left out).
pub fn usage(pins: &PinDir) -> Vec<Usage> {
    USAGE_MAPS
        .iter()
        .filter_map(|&name| count(pins, name))
        .collect()
}

/// Entries and capacity of the pinned map `name`; `None` when it cannot
/// be opened as ours.
fn count(pins: &PinDir, name: &'static str) -> Option<Usage> {
    let data = MapData::from_pin(pins.map(name)).ok()?;
    let max_entries = data.info().ok()?.max_entries();
    let entries = match name {
        maps::PROCS => keys::<u32, ProcState>(Map::HashMap(data), max_entries),
        maps::LISTENERS => keys::<ListenerKey, Listener>(Map::HashMap(data), max_entries),
        maps::PENDING => keys::<u64, Pending>(Map::LruHashMap(data), max_entries),
        maps::CONNS => keys::<ConnKey, ConnEntry>(Map::LruHashMap(data), max_entries),
        _ => None,
    }?;
    Some(Usage {
        map: name,
        entries,
        capacity: lru::capacity(name, max_entries),
    })
}

/// Keys of a hash map, walking at most `capacity` of them.
fn keys<K: Pod, V: Pod>(map: Map, capacity: u32) -> Option<u32> {
    let map: AyaHashMap<MapData, K, V> = AyaHashMap::try_from(map).ok()?;
    let walked = map
        .keys()
        .take(capacity as usize)
        .take_while(Result::is_ok)
        .count();
    u32::try_from(walked).ok()
}
