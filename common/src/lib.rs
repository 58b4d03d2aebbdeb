//! Types shared by the loopwarden kernel programs (`loopwarden-ebpf`) and the
//! userspace daemon (`loopwarden`).
//!
//! Everything here is `#[repr(C)]`, built from fixed-width integers, with
//! padding written out as fields, so both sides agree on every byte. The
//! `const` assertions at the bottom fail the build if a layout drifts.
//!
//! The policy is evaluated in the kernel without an interpreter: each rule has
//! an index `0..MAX_RULES`, and for every attribute a rule can match on
//! (executable, executable name, comm, uid, cgroup, parent/ancestor
//! executable) there is a hash map from the attribute's value to the bitmask
//! of rules that accept that value. Rules that do not constrain an attribute
//! are in that attribute's "wildcard" mask in [`Settings`]. The matching rules
//! are the AND over all attributes; the first match is the lowest set bit.
//!
//! Policies are installed by generation: every policy entry is keyed (or
//! indexed) by a generation slot (0 or 1), userspace writes a complete new
//! generation into the slot not in force and then switches `LW_GENERATION`
//! with one 4-byte write. Each slot's [`Settings::seq`] is a sequence lock:
//! odd while userspace rewrites the slot, a new even number once it is whole.
//! A program reads `seq` before and after it judges; if it changed (the
//! program was so late that its slot was reused by a later install) it
//! judges again from the generation then in force. So a connect is always
//! judged by one whole policy, however long a program run is delayed.
//!
//! The maps outlive the daemon (they are pinned in bpffs). [`LAYOUT_VERSION`]
//! names their layout and meaning; a daemon adopts pinned maps only when
//! `LW_META` carries the same version and every map has the shape it expects.
#![no_std]

mod names;
mod offsets;
pub mod origin;

pub use names::{
    ExeNameCandidates, FILTER_WORDS, exe_filter_value, exe_name_candidates, exe_name_prefix_key,
    filter_bit, filter_has, name_prefix,
};
pub use offsets::KernelOffsets;

/// Version of the pinned maps' layout and meaning. Bump it with any change
/// to a map's key, value, size or interpretation: a daemon then replaces the
/// pinned maps (and the programs, through their links) instead of adopting
/// them.
pub const LAYOUT_VERSION: u32 = 12;
/// `LW_META[0].magic`: "loopward".
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"loopward");

/// Most rules a policy can hold: one bit each in a `u64` mask.
pub const MAX_RULES: usize = 64;
/// How many generations of parents the kernel walks for ancestor rules.
pub const MAX_ANCESTORS: usize = 8;
/// Deepest cgroup level (root = 0) a cgroup rule may name.
pub const MAX_CGROUP_LEVEL: usize = 31;
/// How many distinct cgroup levels the rules of one policy may name (each is
/// one ancestor lookup per judged connect).
pub const MAX_CGROUP_LEVELS_USED: usize = 4;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;
/// Bytes of the executable's file name (its dentry name) the kernel copies.
/// Longer names are truncated to `EXE_NAME_LEN - 1` bytes on both sides.
pub const EXE_NAME_LEN: usize = 32;
/// Last byte (index `EXE_NAME_LEN - 1`) of a *prefix-form* key of
/// `LW_RULES_EXE_NAME`. A plain key is a file name NUL-padded, so its last
/// byte is always 0; a prefix-form key matches every name whose
/// [`exe_name_candidates`] include it (see there).
pub const EXE_NAME_PREFIX_MARK: u8 = 1;
/// How many separator positions of a name [`exe_name_candidates`] cuts at.
pub const MAX_PREFIX_CANDIDATES: usize = 3;
/// [`exe_name_candidates`] cuts only before separators at indexes below
/// this (in the name's first two words: fewer paths for the verifier); a
/// catalog prefix name is shorter.
pub const PREFIX_CUT_LIMIT: usize = 16;
/// Bytes that end a prefix in [`exe_name_candidates`].
pub const EXE_NAME_SEPARATORS: [u8; 3] = *b"-_.";
/// Policy generations kept side by side: the one in force and the next.
pub const GENERATIONS: u32 = 2;
/// Entries one policy may put in each rule-value map (`LW_RULES_*`), and
/// capacity of `LW_HOST_ADDRS`.
pub const MAX_MAP_ENTRIES: u32 = 1024;
/// Network namespaces one policy may be scoped to.
pub const MAX_NETNS: u32 = 256;
/// Entries of the protected-port bitmap: 65536 ports / 64 bits per entry.
pub const PORT_WORDS: u32 = 1024;
/// Entries of the browser verdicts of one generation (`LW_BROWSER_PORTS`):
/// two bits per port, 32 ports per entry.
pub const BROWSER_PORT_WORDS: u32 = 2 * PORT_WORDS;
/// Bytes of an interpreted script's path (as its command line gives it) the
/// kernel keeps; longer paths are truncated to `SCRIPT_LEN - 1` bytes.
pub const SCRIPT_LEN: usize = 64;
/// Processes whose network-facing state, lineage or script the kernel
/// tracks at once (`LW_PROCS`); past it new ones are counted, not tracked.
pub const MAX_TRACKED: u32 = 32768;
/// Entries of `LW_TRACKED`: one byte per possible tgid (`PID_MAX_LIMIT`,
/// 4,194,304 on 64-bit), 64 to an entry.
pub const TRACKED_ENTRIES: u32 = 4_194_304 / 64;
/// Entries of `LW_CONN_PORTS`: a byte for each of the 65,536 ports.
pub const CONN_PORT_ENTRIES: u32 = 65_536 / 64;
/// Outbound connections to non-local peers awaiting their handshake.
pub const MAX_PENDING: u32 = 8192;
/// Listening sockets on non-loopback addresses the kernel remembers.
pub const MAX_LISTENERS: u32 = 8192;
/// Protected connects between connect() and the client's handshake
/// completing (`LW_ORIGIN_PENDING`, LRU: one never completed is evicted).
pub const MAX_ORIGIN_PENDING: u32 = 4096;
/// Live connections to protected destinations the daemon can list and
/// answer for (`LW_CONNS`, LRU: past it the oldest are forgotten, and
/// `getsockopt` and the daemon answer "unknown" for them): the object's
/// size, and the default of `[provenance] connections`, which the loader
/// sets instead.
pub const MAX_CONNS: u32 = 16384;
/// Most `[[egress]]` rules a policy can hold: one bit each in a `u64` mask.
pub const MAX_EGRESS_RULES: usize = 64;
/// Destination prefixes (the union over every egress rule's lists and the
/// built-in metadata addresses) one policy may put in `LW_EGRESS_DST`.
pub const MAX_EGRESS_PREFIXES: u32 = 4096;

pub mod maps;

pub mod programs;

/// Name of the global holding [`KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "LW_OFFSETS";

pub mod flags;

pub mod stats;

pub mod verdict;

/// Rule index in [`ConnectEvent::rule`] when no rule matched.
pub const NO_RULE: u8 = u8::MAX;
/// Rule index in [`ConnectEvent::rule`] when the relay verdict decided.
pub const RELAY_RULE: u8 = u8::MAX - 1;
/// Rule index in [`ConnectEvent::rule`] of a bind the bind guard judged:
/// `daddr`/`dport` are then the address and port bound.
pub const BIND_RULE: u8 = u8::MAX - 2;
/// Rule index in [`ConnectEvent::rule`] of egress rule `r`:
/// `EGRESS_RULE_BASE + r` (`r < MAX_EGRESS_RULES`).
pub const EGRESS_RULE_BASE: u8 = 128;

/// `LW_EGRESS_DST` key data: the generation, big-endian so that it is the
/// first 32 bits of the prefix, then the destination as the kernel sees it
/// (IPv4 as `::ffff:a.b.c.d`, words in network order). A prefix of `n`
/// address bits has `prefix_len = 32 + n`; a lookup uses 160.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EgressKey {
    /// The generation slot, `to_be()`.
    pub generation_be: u32,
    pub addr: Addr,
}

impl EgressKey {
    /// Prefix bits a lookup of a whole address uses.
    pub const FULL_PREFIX: u32 = 32 + 128;
}

pub mod evidence;

/// One piece of evidence that a process faces the network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The non-local peer (for [`evidence::LISTENING`], the listening address).
    pub addr: Addr,
    /// `bpf_ktime_get_ns()` when it was seen.
    pub ktime_ns: u64,
    /// The peer's port (the listening port), host order.
    pub port: u16,
    /// [`evidence`] value.
    pub kind: u8,
    pub _pad: [u8; 5],
}

impl Evidence {
    /// No evidence.
    pub const NONE: Evidence = Evidence {
        addr: Addr { words: [0; 4] },
        ktime_ns: 0,
        port: 0,
        kind: evidence::NONE,
        _pad: [0; 5],
    };
}

/// `LW_PROCS` value: what the kernel knows about one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcState {
    /// Listening or accepted: holds until the process executes another
    /// program; children inherit it.
    pub standing: Evidence,
    /// Received or connected: counts only within the relay window.
    pub recent: Evidence,
    /// The `LW_RULES_EXE_NAME` key (exact or prefix form) through which a
    /// catalog rule extending to descendants named the nearest such
    /// executable this process or an ancestor ran (zero: none).
    pub lineage: [u8; EXE_NAME_LEN],
    /// The script an interpreter was started with (zero: none).
    pub script: [u8; SCRIPT_LEN],
    /// [`script_hash`] of `script` (0: none): what script rules key on.
    pub script_hash: u64,
}

impl ProcState {
    /// A state with nothing in it.
    pub const EMPTY: ProcState = ProcState {
        standing: Evidence::NONE,
        recent: Evidence::NONE,
        lineage: [0; EXE_NAME_LEN],
        script: [0; SCRIPT_LEN],
        script_hash: 0,
    };
}

/// Interpreters whose first operand is the script they run: an executable
/// one of whose prefix-form keys ([`exe_name_candidates`]) is one of these
/// names has its script read at exec (and by the seeding from `/proc`).
pub const INTERPRETERS: [&[u8]; 9] = [
    b"python", b"python2", b"python3", b"node", b"nodejs", b"perl", b"ruby", b"php", b"deno",
];
/// Command-line arguments looked at for an interpreter's script: `argv[0]`
/// and the five after it.
pub const SCRIPT_MAX_ARGS: usize = 6;

/// FNV-1a of a script path's bytes up to its first NUL (at most
/// `SCRIPT_LEN - 1` of them); never 0, which means "no script". The kernel
/// computes it at exec, userspace for `script` rules.
#[inline(always)]
pub const fn script_hash(script: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < script.len() && i < SCRIPT_LEN - 1 && script[i] != 0 {
        h ^= script[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    if h == 0 { 1 } else { h }
}

/// `LW_PENDING` value: an outbound connect awaiting its handshake.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub tgid: u32,
    pub _pad: u32,
}

/// `LW_LISTENERS` key: a listening port in one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    /// Inode number of the network namespace.
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Identity of an executable file: the kernel's `sb->s_dev`
/// (`major << 20 | minor`, not userspace's `st_dev` encoding) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExeKey {
    pub dev: u64,
    pub ino: u64,
}

impl ExeKey {
    /// Builds a key from userspace `major`/`minor` device numbers.
    pub const fn from_major_minor(major: u64, minor: u64, ino: u64) -> Self {
        Self {
            dev: (major << 20) | minor,
            ino,
        }
    }
}

/// Key of a generational map: the policy generation, then the value. With
/// the value's alignment at most 8 and the header 8 bytes, there is no
/// implicit padding for the value types used here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GenKey<T> {
    pub generation: u32,
    pub _pad: u32,
    pub value: T,
}

impl<T> GenKey<T> {
    #[inline(always)]
    pub const fn new(generation: u32, value: T) -> Self {
        Self {
            generation,
            _pad: 0,
            value,
        }
    }
}

/// Value of `LW_RULES_ANCESTOR`: rules matching this executable as the direct
/// parent, and rules matching it anywhere among the ancestors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AncestorMasks {
    pub parent: u64,
    pub ancestor: u64,
}

/// An address as the kernel sees it in `bpf_sock_addr`: IPv6 words in network
/// order; IPv4 as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub words: [u32; 4],
}

impl Addr {
    /// The kernel's form of `ip`: IPv4 as `::ffff:a.b.c.d`, the words as
    /// they sit in memory (network order).
    pub fn from_ip(ip: core::net::IpAddr) -> Self {
        let octets = match ip {
            core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            core::net::IpAddr::V6(v6) => v6.octets(),
        };
        let word =
            |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
        Addr {
            words: [word(0), word(4), word(8), word(12)],
        }
    }

    /// The address as IPv6, IPv4-mapped ones as they are.
    pub fn to_ipv6(&self) -> core::net::Ipv6Addr {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(self.words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        core::net::Ipv6Addr::from(octets)
    }

    /// The address, IPv4-mapped ones shown as IPv4.
    pub fn to_ip(&self) -> core::net::IpAddr {
        let v6 = self.to_ipv6();
        match v6.to_ipv4_mapped() {
            Some(v4) => core::net::IpAddr::V4(v4),
            None => core::net::IpAddr::V6(v6),
        }
    }
}

/// The policy-wide settings, `LW_SETTINGS[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// [`flags`] bits.
    pub flags: u32,
    /// Positive errno a denied connect() fails with (ECONNREFUSED or EPERM).
    pub deny_errno: u32,
    /// Bit `l` set: some cgroup rule names a cgroup at level `l`.
    pub cgroup_levels: u32,
    pub _pad0: u32,
    /// Rules present in the policy.
    pub active: u64,
    /// Rules whose action is `deny`.
    pub deny: u64,
    /// Rules whose action is `audit`.
    pub audit: u64,
    /// Rules that do not constrain the executable identity.
    pub wild_exe: u64,
    /// ... the executable file name.
    pub wild_exe_name: u64,
    /// ... the comm.
    pub wild_comm: u64,
    /// ... the uid.
    pub wild_uid: u64,
    /// ... the cgroup.
    pub wild_cgroup: u64,
    /// ... the parent or ancestors.
    pub wild_ancestor: u64,
    /// Rules that do not constrain the interpreted script.
    pub wild_script: u64,
    /// The user's `allow` rules: a process they match is exempt from the
    /// relay verdict.
    pub exempt: u64,
    /// Catalog rules that extend to descendants: they also match a process
    /// whose lineage (`ProcState::lineage`) names their executables.
    pub inherited: u64,
    /// Browser-class rules (the catalog's browsers and `[browsers]
    /// exe`/`exe_name`): when one matches first, the verdict is the port's
    /// in `LW_BROWSER_PORTS`, not the rule's action.
    pub browser: u64,
    /// How recent received/connected evidence must be to count, in ns.
    pub relay_window_ns: u64,
    /// Sequence lock of this slot: odd while userspace rewrites it, else the
    /// install's unique even number (see the crate docs).
    pub seq: u64,
    /// Filter of the executables `LW_RULES_EXE` names in this generation:
    /// bit [`filter_bit`]`(`[`exe_filter_value`]`(key))` set for each. A
    /// clear bit proves no rule names the executable, and the map lookup is
    /// skipped; a set bit may be another's (the lookup decides).
    pub exe_filter: [u64; FILTER_WORDS],
    /// Filter of the executable names `LW_RULES_EXE_NAME` holds: bit
    /// [`filter_bit`]`(`[`name_prefix`]`(name))` set for each.
    pub exe_name_filter: [u64; FILTER_WORDS],

    // The egress guard ([`flags::EGRESS`]): its own rule masks, bit `r`
    // for egress rule `r`.
    /// Egress rules present in the policy.
    pub egress_active: u64,
    /// Egress rules whose action is deny (the others audit).
    pub egress_deny: u64,
    /// Egress rules that do not constrain the uid.
    pub egress_wild_uid: u64,
    /// ... the executable identity.
    pub egress_wild_exe: u64,
    /// ... the cgroup.
    pub egress_wild_cgroup: u64,
    /// Bit `l` set: some egress rule names a cgroup at level `l`.
    pub egress_cgroup_levels: u32,
    pub _pad_egress: u32,
    /// Filter of the executables `LW_EGRESS_EXE` names: bit
    /// [`filter_bit`]`(ino)` set for each. A process no egress rule names
    /// skips the lookup (and the reads of its executable's device).
    pub egress_exe_filter: [u64; FILTER_WORDS],
}

// (By hand: `Default` is not derived for arrays of more than 32.)
impl Default for Settings {
    fn default() -> Self {
        // SAFETY: integers and arrays of them only: all zero bytes is a
        // valid value (and the empty policy).
        unsafe { core::mem::zeroed() }
    }
}

/// Where port `port`'s browser verdict sits in `LW_BROWSER_PORTS` of
/// generation `g`: the entry's index and the shift of its two bits.
#[inline(always)]
pub const fn browser_slot(g: u32, port: u16) -> (u32, u32) {
    (
        g * BROWSER_PORT_WORDS + (port as u32 >> 5),
        (port as u32 & 31) * 2,
    )
}

/// The browser verdict of a port, read from the entry [`browser_slot`] names.
#[inline(always)]
pub const fn browser_verdict(word: u64, shift: u32) -> u8 {
    ((word >> shift) & 3) as u8
}

const _: () = assert!(verdict::COUNT == 4, "a browser verdict takes two bits");

/// `LW_META[0]`: written by userspace only, kept with the pinned maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`META_MAGIC`] once written.
    pub magic: u64,
    /// [`LAYOUT_VERSION`] of the maps beside it.
    pub layout: u32,
    pub _pad: u32,
    /// `stats::DROPPED` total already reported by a daemon: a new daemon
    /// reports only the reports lost since (e.g. while none was reading).
    pub dropped_reported: u64,
}

impl ConnectEvent {
    /// All zero (no caller, no evidence).
    pub const fn zeroed() -> Self {
        ConnectEvent {
            ktime_ns: 0,
            policy_seq: 0,
            socket_cookie: 0,
            netns_cookie: 0,
            start_boottime_ns: 0,
            cgroup_id: 0,
            exe: ExeKey { dev: 0, ino: 0 },
            daddr: Addr { words: [0; 4] },
            tgid: 0,
            pid: 0,
            ppid: 0,
            uid: 0,
            gid: 0,
            dport: 0,
            family: 0,
            verdict: 0,
            rule: 0,
            _pad0: 0,
            _pad1: 0,
            comm: [0; COMM_LEN],
            exe_name: [0; EXE_NAME_LEN],
            via: Evidence::NONE,
            script: [0; SCRIPT_LEN],
        }
    }
}

/// One reported connect, written by the kernel into `LW_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the connect.
    pub ktime_ns: u64,
    /// [`Settings::seq`] of the policy that judged it: names the rule list
    /// that [`ConnectEvent::rule`] indexes.
    pub policy_seq: u64,
    pub socket_cookie: u64,
    pub netns_cookie: u64,
    /// Start time of the process (thread-group leader), ns since boot
    /// (CLOCK_BOOTTIME): with the pid, it names the process uniquely, so
    /// userspace can tell a recycled pid from the caller.
    pub start_boottime_ns: u64,
    pub cgroup_id: u64,
    pub exe: ExeKey,
    pub daddr: Addr,
    /// Thread-group id (the process id userspace sees).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// Thread-group id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Destination port, host order.
    pub dport: u16,
    /// AF_INET or AF_INET6: the socket's family (a v6 socket can reach an
    /// IPv4-mapped address).
    pub family: u16,
    /// [`verdict`] value.
    pub verdict: u8,
    /// Index of the matched rule, or [`NO_RULE`].
    pub rule: u8,
    pub _pad0: u16,
    pub _pad1: u32,
    pub comm: [u8; COMM_LEN],
    pub exe_name: [u8; EXE_NAME_LEN],
    /// What made the caller network-facing; kind [`evidence::NONE`] if
    /// nothing (or only evidence older than the window).
    pub via: Evidence,
    /// The script an interpreter caller runs (zero: none or unknown).
    pub script: [u8; SCRIPT_LEN],
}

const _: () = assert!(core::mem::size_of::<ExeKey>() == 16);
const _: () = assert!(core::mem::size_of::<AncestorMasks>() == 16);
const _: () = assert!(core::mem::size_of::<Addr>() == 16);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 4 * 47);
const _: () = assert!(core::mem::size_of::<Evidence>() == 32);
const _: () = assert!(core::mem::size_of::<ProcState>() == 72 + EXE_NAME_LEN + SCRIPT_LEN);
const _: () = assert!(core::mem::offset_of!(ProcState, lineage) % 8 == 0);
const _: () = assert!(core::mem::size_of::<Pending>() == 8);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);
const _: () = assert!(core::mem::size_of::<Settings>() == 136 + 3 * 8 * FILTER_WORDS + 48);
const _: () = assert!(core::mem::size_of::<EgressKey>() == 20);
const _: () = assert!(EGRESS_RULE_BASE as usize + MAX_EGRESS_RULES <= BIND_RULE as usize);
const _: () = assert!(MAX_RULES <= EGRESS_RULE_BASE as usize);
const _: () = assert!(MAX_EGRESS_RULES == u64::BITS as usize);
const _: () = assert!(core::mem::size_of::<Meta>() == 24);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 160 + 32 + SCRIPT_LEN);
const _: () = assert!(MAX_RULES == u64::BITS as usize);
const _: () = assert!(MAX_RULES <= BIND_RULE as usize);
const _: () = assert!(core::mem::size_of::<GenKey<u32>>() == 12);
const _: () = assert!(core::mem::size_of::<GenKey<u64>>() == 16);
const _: () = assert!(core::mem::size_of::<GenKey<ExeKey>>() == 24);
const _: () = assert!(core::mem::size_of::<GenKey<Addr>>() == 24);
const _: () = assert!(core::mem::size_of::<GenKey<[u8; COMM_LEN]>>() == 8 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<GenKey<[u8; EXE_NAME_LEN]>>() == 8 + EXE_NAME_LEN);
const _: () = assert!(MAX_CGROUP_LEVEL < u32::BITS as usize);

#[cfg(feature = "user")]
mod user {
    use super::{
        Addr, AncestorMasks, COMM_LEN, ConnectEvent, EXE_NAME_LEN, EgressKey, Evidence, ExeKey,
        GenKey, KernelOffsets, ListenerKey, Meta, Pending, ProcState, Settings,
    };

    // SAFETY: all are #[repr(C)], made of integers only, with no implicit padding
    // (checked by the size assertions above).
    unsafe impl aya::Pod for ExeKey {}
    unsafe impl aya::Pod for AncestorMasks {}
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for ConnectEvent {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for Evidence {}
    unsafe impl aya::Pod for ProcState {}
    unsafe impl aya::Pod for Pending {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for EgressKey {}
    unsafe impl aya::Pod for super::origin::OriginRecord {}
    unsafe impl aya::Pod for super::origin::ConnKey {}
    unsafe impl aya::Pod for super::origin::ConnEntry {}
    // SAFETY: #[repr(C)] of integers with the size assertions above showing
    // no implicit padding for exactly these value types.
    unsafe impl aya::Pod for GenKey<u32> {}
    unsafe impl aya::Pod for GenKey<u64> {}
    unsafe impl aya::Pod for GenKey<ExeKey> {}
    unsafe impl aya::Pod for GenKey<Addr> {}
    unsafe impl aya::Pod for GenKey<[u8; COMM_LEN]> {}
    unsafe impl aya::Pod for GenKey<[u8; EXE_NAME_LEN]> {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_kernel_form() {
        let v4: core::net::IpAddr = "127.0.0.1".parse().unwrap();
        let a = Addr::from_ip(v4);
        assert_eq!(a.words[2], 0x0000_ffffu32.to_be());
        assert_eq!(a.words[3], 0x7f00_0001u32.to_be());
        assert_eq!(a.to_ip(), v4);
        assert_eq!(
            a.to_ipv6(),
            "::ffff:127.0.0.1".parse::<core::net::Ipv6Addr>().unwrap()
        );
        for text in ["::1", "fd77::2", "::ffff:10.77.0.2"] {
            let ip: core::net::IpAddr = text.parse().unwrap();
            let v6: core::net::Ipv6Addr = text.parse().unwrap();
            assert_eq!(Addr::from_ip(ip).to_ipv6(), v6);
        }
    }

    /// The candidates of `name` as strings (mark checked and removed).
    fn candidates(name: &[u8]) -> [Option<[u8; EXE_NAME_LEN]>; 5] {
        let mut out = [None; 5];
        for (slot, key) in out.iter_mut().zip(exe_name_candidates(name)) {
            assert_eq!(key[EXE_NAME_LEN - 1], EXE_NAME_PREFIX_MARK);
            *slot = Some(key);
        }
        out
    }

    fn expect(name: &[u8], want: &[&[u8]]) {
        let got = candidates(name);
        assert!(want.len() <= 1 + MAX_PREFIX_CANDIDATES);
        for (i, slot) in got.iter().enumerate() {
            match (slot, want.get(i)) {
                (Some(key), Some(w)) => assert_eq!(*key, exe_name_prefix_key(w), "{i}"),
                (None, None) => {}
                (got, want) => panic!("candidate {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn prefix_keys_are_padded_and_marked() {
        let key = exe_name_prefix_key(b"bore");
        assert_eq!(&key[..4], b"bore");
        assert!(key[4..EXE_NAME_LEN - 1].iter().all(|&b| b == 0));
        assert_eq!(key[EXE_NAME_LEN - 1], EXE_NAME_PREFIX_MARK);
        assert_eq!(exe_name_prefix_key(b"bo\0re"), exe_name_prefix_key(b"bo"));
        let long = [b'a'; 40];
        let key = exe_name_prefix_key(&long);
        assert!(key[..EXE_NAME_LEN - 1].iter().all(|&b| b == b'a'));
        assert_eq!(key[EXE_NAME_LEN - 1], EXE_NAME_PREFIX_MARK);
        // The filter hashes the same first bytes as for the plain name.
        assert_eq!(name_prefix(&key), name_prefix(&long));
    }

    #[test]
    fn candidates_cut_at_the_first_separators() {
        expect(b"bore", &[b"bore"]);
        expect(
            b"chisel_1.10.1_linux_amd64",
            &[
                b"chisel_1.10.1_linux_amd64",
                b"chisel",
                b"chisel_1",
                b"chisel_1.10",
            ],
        );
        // (The second `-` is at index 17, past PREFIX_CUT_LIMIT.)
        expect(
            b"cloudflared-linux-amd64",
            &[b"cloudflared-linux-amd64", b"cloudflared"],
        );
        expect(
            b".tailscaled-wrapped",
            &[b"tailscaled-wrapped", b"tailscaled"],
        );
        // Only one leading dot is dropped; a separator at index 0 is no cut.
        expect(b"..x-y", &[b".x-y", b".x"]);
        expect(b"-x", &[b"-x"]);
        expect(b"x-", &[b"x-", b"x"]);
        expect(b"a--b", &[b"a--b", b"a", b"a-"]);
        expect(b"", &[]);
        expect(b".", &[]);
        expect(b"\0x", &[]);
        expect(b"nc.openbsd\0junk", &[b"nc.openbsd", b"nc"]);
    }

    #[test]
    fn candidates_read_what_the_kernel_copies() {
        // 31 bytes are read.
        let name = b"abcdefghijklmnopqrstuvwxyz01234-x";
        expect(name, &[&name[..EXE_NAME_LEN - 1]]);
        // Cuts only before separators at indexes below PREFIX_CUT_LIMIT
        // (counted in the normalized name).
        let name = b"abcdefghijklmno-x";
        expect(name, &[name, &name[..PREFIX_CUT_LIMIT - 1]]);
        let name = b"abcdefghijklmnop-x";
        expect(name, &[name]);
        let name = b".bcdefghijklmno-x";
        expect(name, &[&name[1..], &name[1..PREFIX_CUT_LIMIT - 1]]);
    }
}
