//! Matching the caller against the connect rules.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm},
    maps::HashMap,
};
use loopwarden_common::{
    COMM_LEN, GenKey, MAX_ANCESTORS, MAX_CGROUP_LEVELS_USED, Settings, exe_filter_value, flags,
};

use super::decide::Tracked;
use crate::{
    identity::{self, Task},
    maps::{
        RULES_ANCESTOR, RULES_CGROUP, RULES_COMM, RULES_EXE, RULES_SCRIPT, RULES_UID, in_filter,
        mask, rd,
    },
    names,
};

/// Bitmask of the rules that match the caller. An attribute no rule
/// constrains (every active rule is in its wildcard mask) is not even read;
/// cheap attributes go first, so a connect no rule can match stops early.
/// Nothing is cached between steps: fewer branches keep the verifier's work
/// (and so the oldest supported kernels' budget) small.
#[inline(always)]
pub(super) fn match_rules(
    s: &Settings,
    g: u32,
    task: Task,
    exe_file: u64,
    tracked: &Tracked,
) -> u64 {
    let mut m = rd!(s.active);
    if m & !rd!(s.wild_uid) != 0 {
        let uid = task.uid_gid() as u32;
        m &= mask(&RULES_UID, &GenKey::new(g, uid)) | rd!(s.wild_uid);
    }
    if m & !rd!(s.wild_comm) != 0 {
        // The thread's own name or its process's (the main thread's): a
        // process cannot slip past a comm rule by connecting from a thread
        // it renamed, and a rule naming a thread still matches it.
        let thread = CommKey::current(g);
        let process = CommKey::of_task(g, task.group_leader());
        m &= mask(&RULES_COMM, thread.key()) | mask(&RULES_COMM, process.key()) | rd!(s.wild_comm);
    }
    // Names and executables are first checked against the settings'
    // filters: a client no rule names (the common case) skips the lookups.
    if m & !rd!(s.wild_exe_name) != 0 {
        // The name's head is checked first; only a possible match reads
        // the whole name.
        let mut named = if names::may_be_named(s, &identity::exe_name_head(exe_file)) {
            names::name_mask(g, s, &identity::exe_name_words(exe_file))
        } else {
            0
        };
        // Catalog rules that extend to descendants also match through the
        // lineage the caller inherited: the key that named its catalogued
        // ancestor.
        if tracked.lineage[0] != 0 && rd!(s.inherited) != 0 {
            named |= names::key_mask(g, s, &tracked.lineage) & rd!(s.inherited);
        }
        m &= named | rd!(s.wild_exe_name);
    }
    if m & !rd!(s.wild_script) != 0 {
        m &= mask(&RULES_SCRIPT, &GenKey::new(g, tracked.script_hash)) | rd!(s.wild_script);
    }
    if m & !rd!(s.wild_exe) != 0 {
        let exe = identity::exe_key(exe_file);
        let named = if in_filter(&s.exe_filter, exe_filter_value(&exe)) {
            mask(&RULES_EXE, &GenKey::new(g, exe))
        } else {
            0
        };
        m &= named | rd!(s.wild_exe);
    }
    if m & !rd!(s.wild_cgroup) != 0 {
        m &= cgroup_mask(&RULES_CGROUP, g, rd!(s.cgroup_levels)) | rd!(s.wild_cgroup);
    }
    if m & !rd!(s.wild_ancestor) != 0 && rd!(s.flags) & flags::ANCESTORS != 0 {
        m &= ancestor_mask(g, task) | rd!(s.wild_ancestor);
    }
    m
}

/// A `GenKey<[u8; COMM_LEN]>` for the caller's comm, built from words
/// (zeroed and compared a word at a time).
#[repr(C)]
struct CommKey {
    generation: u32,
    _pad: u32,
    comm: [u64; COMM_LEN / 8],
}

impl CommKey {
    /// The calling thread's comm. (Here a helper's copy, not
    /// [`Task::comm_words`]: comm values loaded into registers make the
    /// verifier walk the rest of the rules for tens of thousands more
    /// instructions.)
    #[inline(always)]
    fn current(generation: u32) -> Self {
        let mut key = CommKey {
            generation,
            _pad: 0,
            comm: [0; COMM_LEN / 8],
        };
        // SAFETY: the helper writes at most COMM_LEN bytes (NUL-padded) into
        // our buffer; on failure it zeroes it.
        unsafe { bpf_get_current_comm(key.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
        key
    }

    /// The comm of `task` (read from kernel memory).
    #[inline(always)]
    fn of_task(generation: u32, task: Task) -> Self {
        let mut key = CommKey {
            generation,
            _pad: 0,
            comm: [0; COMM_LEN / 8],
        };
        // SAFETY: same size, u8 has no alignment requirement.
        task.comm(unsafe { &mut *key.comm.as_mut_ptr().cast::<[u8; COMM_LEN]>() });
        key
    }

    #[inline(always)]
    fn key(&self) -> &GenKey<[u8; COMM_LEN]> {
        // SAFETY: same size and field offsets (both #[repr(C)]); the view
        // needs less alignment than the words have.
        unsafe { &*(self as *const Self).cast::<GenKey<[u8; COMM_LEN]>>() }
    }
}

/// Rules of `map` (`LW_RULES_CGROUP`, `LW_EGRESS_CGROUP`) naming one of the
/// caller's cgroup ancestors (or its own cgroup) at the levels some rule
/// names a cgroup at: at most [`MAX_CGROUP_LEVELS_USED`] distinct levels
/// (userspace enforces it).
#[inline(always)]
pub fn cgroup_mask(map: &HashMap<GenKey<u64>, u64>, g: u32, levels: u32) -> u64 {
    let mut m = 0u64;
    let mut left = levels;
    for _ in 0..MAX_CGROUP_LEVELS_USED {
        if left == 0 {
            break;
        }
        let level = left.trailing_zeros();
        left &= left - 1;
        // SAFETY: plain helper call; 0 means the caller is above `level`.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        m |= mask(map, &GenKey::new(g, id));
    }
    m
}

/// Rules naming the caller's parent (as parent or ancestor) or an earlier
/// ancestor's executable, up to [`MAX_ANCESTORS`] generations.
#[inline(always)]
fn ancestor_mask(g: u32, task: Task) -> u64 {
    let parent = task.parent();
    let mut m = match RULES_ANCESTOR.get_ptr(GenKey::new(g, parent.exe())) {
        Some(v) => {
            // SAFETY: a pointer into the map's value (volatile: see try_connect).
            let v = unsafe { core::ptr::read_volatile(v) };
            v.parent | v.ancestor
        }
        None => 0,
    };
    let mut cur = parent;
    for _ in 1..MAX_ANCESTORS {
        // Stop at init (tgid 1) or a NULL parent (reads as 0).
        if cur.tgid() <= 1 {
            break;
        }
        cur = cur.parent();
        if let Some(v) = RULES_ANCESTOR.get_ptr(GenKey::new(g, cur.exe())) {
            // SAFETY: as above.
            m |= unsafe { core::ptr::read_volatile(v) }.ancestor;
        }
    }
    m
}
