//! How large the LRU hash maps (`LW_CONNS`, `LW_ORIGIN_PENDING`,
//! `LW_PENDING`) are created, so that each holds its nominal capacity of
//! live entries before it evicts any.
//!
//! The kernel's common LRU hands free elements to each CPU in batches of
//! up to 128 (`LOCAL_FREE_TARGET`, kernel/bpf/bpf_lru_list.c) and keeps
//! them for that CPU. An insert on a CPU whose own batch is used up, once
//! the map's shared free list is empty, evicts a live element, though
//! other CPUs may still hold free ones ("BPF_MAP_TYPE_LRU_HASH can recycle
//! most recent elements well before the map is full", Linux 6.16's
//! `bpf: Adjust free target to avoid global starvation of LRU map`, which
//! still lets those batches take half the map). Each map is therefore
//! created with 128 elements per possible CPU beyond its nominal capacity,
//! which is what the config asks for and what `status`, the metrics and
//! the fullness warning show.

use loopwarden_common::{MAX_CONNS, MAX_ORIGIN_PENDING, MAX_PENDING, maps};

/// Free elements the kernel's common LRU may hold back for one CPU.
const PER_CPU_BATCH: u32 = 128;

/// The LRU hash maps and the nominal capacity the object declares for
/// each (`LW_CONNS`'s is the config's, [`sizes`]).
const MAPS: [(&str, u32); 3] = [
    (maps::CONNS, MAX_CONNS),
    (maps::ORIGIN_PENDING, MAX_ORIGIN_PENDING),
    (maps::PENDING, MAX_PENDING),
];

/// Each LRU map's `max_entries`, `LW_CONNS` holding `conns` live entries.
pub fn sizes(conns: u32) -> [(&'static str, u32); 3] {
    MAPS.map(|(name, declared)| {
        let capacity = if name == maps::CONNS { conns } else { declared };
        (name, max_entries(capacity))
    })
}

/// The elements the per-CPU batches may hold back on this host.
fn held_back() -> u32 {
    // The possible CPUs, as the kernel sizes its per-CPU lists; one if
    // that cannot be read (the same file the programs' loading needs).
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    u32::try_from(cpus)
        .unwrap_or(u32::MAX)
        .saturating_mul(PER_CPU_BATCH)
}

/// `max_entries` of an LRU map that must hold `capacity` live entries.
fn max_entries(capacity: u32) -> u32 {
    capacity.saturating_add(held_back())
}

/// The nominal capacity of the map `name` created with `max_entries`
/// (for a map that is not an LRU map, `max_entries` itself).
pub fn capacity(name: &str, max_entries: u32) -> u32 {
    if MAPS.iter().any(|&(lru, _)| lru == name) {
        max_entries.saturating_sub(held_back())
    } else {
        max_entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lru_map_is_created_larger_and_shown_at_its_nominal_capacity() {
        let made = max_entries(16_384);
        assert!(made >= 16_384 + PER_CPU_BATCH, "{made}");
        assert_eq!(capacity(maps::CONNS, made), 16_384);
        assert_eq!(capacity(maps::PENDING, max_entries(8192)), 8192);
        let conns = sizes(1024);
        assert_eq!(conns[0], (maps::CONNS, max_entries(1024)));
        assert_eq!(
            capacity(maps::ORIGIN_PENDING, conns[1].1),
            MAX_ORIGIN_PENDING
        );
        // A plain hash map is shown as it is.
        assert_eq!(capacity(maps::PROCS, 32_768), 32_768);
    }
}
