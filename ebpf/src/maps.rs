//! Every map the programs use, in one place. Names come from
//! `loopwarden_common::maps`; userspace sizes some of them at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use loopwarden_common::{
    Addr, AncestorMasks, BROWSER_PORT_WORDS, COMM_LEN, CONN_PORT_ENTRIES,
    CONN_SLOTS as CONN_SLOTS_LEN, EXE_NAME_LEN, EgressKey, ExeKey, FILTER_WORDS, GENERATIONS,
    GenKey, Listener, ListenerKey, MAX_CONNS, MAX_EGRESS_PREFIXES, MAX_LISTENERS, MAX_MAP_ENTRIES,
    MAX_NETNS, MAX_ORIGIN_PENDING, MAX_PENDING, MAX_TRACKED, Meta, NETNS_INLINE, NETNS_NOT_INLINE,
    ORIGIN_SLOTS as ORIGIN_SLOTS_LEN, PORT_WORDS, Pending, ProcState, Settings, TRACKED_ENTRIES,
    filter_bit, flags,
    origin::{ConnEntry, ConnKey, ConnSlot, OriginSlot},
    stats, verdict,
};

#[map(name = "LW_GENERATION")]
pub static GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "LW_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(GENERATIONS, 0);

#[map(name = "LW_PORTS")]
pub static PORTS: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_WORDS, 0);

// Generational maps hold two policies while one replaces the other.

#[map(name = "LW_NETNS")]
pub static NETNS: HashMap<GenKey<u64>, u8> = HashMap::with_max_entries(GENERATIONS * MAX_NETNS, 0);

#[map(name = "LW_HOST_ADDRS")]
pub static HOST_ADDRS: HashMap<GenKey<Addr>, u8> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_RULES_EXE")]
pub static RULES_EXE: HashMap<GenKey<ExeKey>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_RULES_EXE_NAME")]
pub static RULES_EXE_NAME: HashMap<GenKey<[u8; EXE_NAME_LEN]>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_RULES_COMM")]
pub static RULES_COMM: HashMap<GenKey<[u8; COMM_LEN]>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_RULES_UID")]
pub static RULES_UID: HashMap<GenKey<u32>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_RULES_CGROUP")]
pub static RULES_CGROUP: HashMap<GenKey<u64>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_RULES_ANCESTOR")]
pub static RULES_ANCESTOR: HashMap<GenKey<ExeKey>, AncestorMasks> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

/// 1 MiB: about 3970 events (264 bytes with the record header) before
/// userspace must catch up.
#[map(name = "LW_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Refusals and audit mode's would-be refusals only, apart from the other
/// reports so a flood of those cannot push one out: 256 KiB, about 990.
#[map(name = "LW_DENIALS")]
pub static DENIALS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

#[map(name = "LW_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Userspace's bookkeeping beside the pinned maps; the programs never read it.
#[map(name = "LW_META")]
pub static META: Array<Meta> = Array::with_max_entries(1, 0);

/// Userspace's count of the losses it reported, per verdict; never read here.
#[map(name = "LW_DROPS_REPORTED")]
pub static DROPS_REPORTED: Array<u64> = Array::with_max_entries(verdict::COUNT, 0);

/// Adds one to a per-CPU counter. The slot is this CPU's, but not this
/// program's alone: a cgroup program can be preempted by another task's
/// (it runs with migration disabled, not preemption), and a softirq's
/// tracepoint can interrupt it, so the add is one atomic instruction, not
/// a load and a store another add could fall between.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a successful lookup of a per-CPU
        // slot: valid, and 8-byte aligned.
        unsafe { crate::atomic::add(slot, 1) };
    }
}

/// Looks up a rule mask, 0 when the value is in no rule. The load is
/// volatile so it stays inside the policy's sequence-lock section (see
/// `connect::try_connect`).
#[inline(always)]
pub fn mask<K>(map: &HashMap<K, u64>, key: &K) -> u64 {
    match map.get_ptr(key) {
        // SAFETY: a pointer to the map's value, read once.
        Some(v) => unsafe { core::ptr::read_volatile(v) },
        None => 0,
    }
}

/// Whether `value`'s bit is set in a filter of the settings in the map
/// (`live`, not a stack copy: one load at a bounded variable offset, no
/// branches for the verifier to walk; volatile, so it stays inside the
/// sequence-lock section).
#[inline(always)]
pub fn in_filter(filter: &[u64; FILTER_WORDS], value: u64) -> bool {
    let bit = filter_bit(value);
    // SAFETY: a reference into the map's value; the index is masked in bounds.
    let word =
        unsafe { core::ptr::read_volatile(&filter[(bit >> 6) as usize & (FILTER_WORDS - 1)]) };
    (word >> (bit & 63)) & 1 == 1
}

/// Whether a policy (settings `s` of generation `g`, flags
/// `policy_flags`) applies in the network namespace with cookie `cookie`:
/// everywhere unless it is scoped ([`flags::NETNS_SCOPED`]). The cookies
/// the settings carry inline are compared (no hash lookup, on every
/// judged connect of a scoped policy); only a policy scoped to more
/// namespaces than they hold looks `LW_NETNS` up. Volatile loads, inside
/// the sequence-lock section.
#[inline(always)]
pub fn netns_in_scope(s: &Settings, g: u32, policy_flags: u32, cookie: u64) -> bool {
    if policy_flags & flags::NETNS_SCOPED == 0 {
        return true;
    }
    let inline = rd!(s.netns_inline);
    if inline == NETNS_NOT_INLINE {
        // SAFETY: the value is a plain u8 flag, only tested for presence.
        return unsafe { NETNS.get(GenKey::new(g, cookie)).is_some() };
    }
    let mut i = 0;
    while i < NETNS_INLINE {
        if (i as u32) < inline && rd!(s.netns[i]) == cookie {
            return true;
        }
        i += 1;
    }
    false
}

/// Judgements attempted before giving up on a policy that keeps being
/// rewritten under the program (see the sequence lock in loopwarden_common).
pub const ATTEMPTS: usize = 2;

/// A volatile load of a field of the policy in the map: every load between
/// the two reads of `seq` must be one (see `connect::judge_connect`).
macro_rules! rd {
    ($place:expr) => {
        // SAFETY: a field of a reference into the map's value.
        unsafe { core::ptr::read_volatile(&$place) }
    };
}
pub(crate) use rd;

/// Byte `index % 64` of entry `index / 64` of a byte-per-index array
/// (`LW_TRACKED`, `LW_CONN_PORTS`): one byte each, so a store to one
/// index never races with a store to another.
#[inline(always)]
pub fn byte_of(map: &Array<[u8; 64]>, index: u32) -> Option<*mut u8> {
    let entry = map.get_ptr_mut(index >> 6)?;
    // SAFETY: a pointer into the map's value; the index is masked in bounds.
    Some(unsafe { (*entry).as_mut_ptr().add((index & 63) as usize) })
}

/// Whether `index`'s byte in `map` is set: these arrays are filters in
/// front of a hash lookup, so an unreadable byte counts as set.
#[inline(always)]
pub fn byte_set(map: &Array<[u8; 64]>, index: u32) -> bool {
    match byte_of(map, index) {
        // SAFETY: a pointer into the map's value.
        Some(b) => (unsafe { core::ptr::read_volatile(b) }) != 0,
        None => true,
    }
}

/// The policy generation slot in force: 0 or 1.
#[inline(always)]
pub fn generation() -> u32 {
    match GENERATION.get_ptr(0) {
        // SAFETY: a pointer into the map's value; volatile so that every
        // attempt of a judgement reads it afresh.
        Some(g) => unsafe { core::ptr::read_volatile(g) & 1 },
        None => 0,
    }
}

/// Rules by interpreted script (the path on the interpreter's command line).
#[map(name = "LW_RULES_SCRIPT")]
pub static RULES_SCRIPT: HashMap<GenKey<u64>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

/// What the kernel knows about each tracked process, by tgid. Entries go
/// when the process exits; a full map counts `stats::UNTRACKED`.
#[map(name = "LW_PROCS")]
pub static PROCS: HashMap<u32, ProcState> = HashMap::with_max_entries(MAX_TRACKED, 0);

/// Which tgids may have an `LW_PROCS` entry (see loopwarden_common::maps::TRACKED).
#[map(name = "LW_TRACKED")]
pub static TRACKED: Array<[u8; 64]> = Array::with_max_entries(TRACKED_ENTRIES, 0);

/// Outbound connects to non-local peers, by socket cookie, until the
/// handshake completes (evidence) or fails.
#[map(name = "LW_PENDING")]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Who listens on each non-loopback port: accepted connections are the
/// listener's evidence.
#[map(name = "LW_LISTENERS")]
pub static LISTENERS: HashMap<ListenerKey, Listener> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Per CPU, the received/connected evidence last written to `LW_PROCS`:
/// the same again within the same jiffy is not written again (a stream's
/// every read would otherwise look the process up). A cache of
/// this load's programs only: not pinned.
#[map(name = "LW_RECORDED")]
pub static RECORDED: PerCpuArray<Recorded> = PerCpuArray::with_max_entries(1, 0);

/// [`RECORDED`]'s value.
#[repr(C)]
pub struct Recorded {
    pub addr: Addr,
    /// `bpf_jiffies64()` when it was written.
    pub jiffies: u64,
    /// A tgid, or a task's address (see `procs::recorded_lately`).
    pub who: u64,
    pub port: u16,
    pub kind: u8,
    pub _pad: [u8; 5],
}

/// Protected connects that proceed, in slots claimed by client socket
/// cookie, until the client's handshake completes (see [`crate::origin`]).
#[map(name = "LW_ORIGIN_SLOTS")]
pub static ORIGIN_SLOTS: Array<OriginSlot> = Array::with_max_entries(ORIGIN_SLOTS_LEN, 0);

/// Protected connects that proceed and found no free slot, by client
/// socket cookie, until the client's handshake completes.
#[map(name = "LW_ORIGIN_PENDING")]
pub static ORIGIN_PENDING: LruHashMap<u64, ConnEntry> =
    LruHashMap::with_max_entries(MAX_ORIGIN_PENDING, 0);

/// Protected connections in slots their addresses hash to, from the
/// client's handshake to the accepted socket's close (mappable: the
/// daemon gives back those whose close this program did not see).
#[map(name = "LW_CONN_SLOTS")]
pub static CONN_SLOTS: Array<ConnSlot> =
    Array::with_max_entries(CONN_SLOTS_LEN, loopwarden_common::maps::CONN_SLOTS_FLAGS);

/// Protected connections by their addresses, from the client's handshake
/// to the accepted socket's close, that found their slots taken.
#[map(name = "LW_CONNS")]
pub static CONNS: LruHashMap<ConnKey, ConnEntry> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// Ports tagged connects went to (see
/// loopwarden_common::maps::CONN_PORTS).
#[map(name = "LW_CONN_PORTS")]
pub static CONN_PORTS: Array<[u8; 64]> = Array::with_max_entries(CONN_PORT_ENTRIES, 0);

// The bind guard's policy (see [`crate::bind`]), generational like the rest.

// The browsers' verdict per port (see `connect::browser_verdict`).

#[map(name = "LW_BROWSER_PORTS")]
pub static BROWSER_PORTS: Array<u64> = Array::with_max_entries(GENERATIONS * BROWSER_PORT_WORDS, 0);

#[map(name = "LW_BIND_PORTS")]
pub static BIND_PORTS: Array<u64> = Array::with_max_entries(GENERATIONS * PORT_WORDS, 0);

#[map(name = "LW_BIND_EXE")]
pub static BIND_EXE: HashMap<GenKey<ExeKey>, u8> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_BIND_UID")]
pub static BIND_UID: HashMap<GenKey<u32>, u8> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

// The egress guard's policy (see [`crate::egress`]), generational like the
// rest: the LPM trie's keys start with the generation.

/// Destination prefixes and the egress rules blocking each (an LPM trie
/// is created without preallocation: aya adds `BPF_F_NO_PREALLOC`).
#[map(name = "LW_EGRESS_DST")]
pub static EGRESS_DST: LpmTrie<EgressKey, u64> =
    LpmTrie::with_max_entries(GENERATIONS * MAX_EGRESS_PREFIXES, 0);

#[map(name = "LW_EGRESS_UID")]
pub static EGRESS_UID: HashMap<GenKey<u32>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_EGRESS_EXE")]
pub static EGRESS_EXE: HashMap<GenKey<ExeKey>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);

#[map(name = "LW_EGRESS_CGROUP")]
pub static EGRESS_CGROUP: HashMap<GenKey<u64>, u64> =
    HashMap::with_max_entries(GENERATIONS * MAX_MAP_ENTRIES, 0);
