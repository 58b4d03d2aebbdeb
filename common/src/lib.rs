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

mod event;
mod keys;
mod names;
mod offsets;
pub mod origin;
mod settings;
mod tracking;

pub use event::ConnectEvent;
pub use keys::{Addr, AncestorMasks, EgressKey, ExeKey, GenKey};
pub use names::{
    ExeNameCandidates, FILTER_WORDS, exe_filter_value, exe_name_candidates, exe_name_prefix_key,
    filter_bit, filter_has, name_prefix,
};
pub use offsets::{KernelOffsets, SOCK_COPY_WORDS};
pub use settings::{
    Meta, NETNS_INLINE, NETNS_NOT_INLINE, Settings, browser_slot, browser_verdict, meta_mode,
};
pub use tracking::{
    ARGV0_MAX_LEN, ARGV0_READS, Evidence, INTERPRETERS, Listener, ListenerKey, Pending, ProcState,
    SCRIPT_MAX_ARGS, ScriptOption, is_interpreter, script_hash, script_option,
};

/// Version of the pinned maps' layout and meaning. Bump it with any change
/// to a map's key, value, size or interpretation: a daemon then replaces the
/// pinned maps (and the programs, through their links) instead of adopting
/// them.
pub const LAYOUT_VERSION: u32 = 19;
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
/// completing (`LW_ORIGIN_PENDING`, LRU: one never completed is evicted),
/// past those in `LW_ORIGIN_SLOTS`.
pub const MAX_ORIGIN_PENDING: u32 = 4096;
/// Slots of `LW_ORIGIN_SLOTS` (a power of two), where protected connects
/// wait for their handshake without a hash-map operation: few, so they
/// stay in the CPU's cache (a loopback handshake completes within its
/// connect() call, so few are taken at once).
pub const ORIGIN_SLOTS: u32 = 128;
/// Slots a connect tries (`OriginSlot::probe`, from its socket cookie)
/// before it waits in `LW_ORIGIN_PENDING` instead.
pub const ORIGIN_SLOT_PROBES: u32 = 4;
/// Slots of `LW_CONN_SLOTS` (a power of two), where protected
/// connections are kept from the client's handshake to the accepted
/// socket's close without a hash-map operation: few, so they stay in the
/// CPU's cache; a connection that finds its slots taken (by long-lived
/// connections) is kept in `LW_CONNS` instead.
pub const CONN_SLOTS: u32 = 256;
/// Slots a connection tries, from the one its addresses hash to, before it
/// is kept in `LW_CONNS` instead.
pub const CONN_SLOT_PROBES: u32 = 4;
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

pub mod evidence;

const _: () = assert!(core::mem::size_of::<ExeKey>() == 16);
const _: () = assert!(core::mem::size_of::<AncestorMasks>() == 16);
const _: () = assert!(core::mem::size_of::<Addr>() == 16);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 4 * 59);
const _: () = assert!(core::mem::size_of::<Evidence>() == 32);
const _: () = assert!(core::mem::size_of::<ProcState>() == 72 + EXE_NAME_LEN + SCRIPT_LEN);
const _: () = assert!(core::mem::offset_of!(ProcState, lineage) % 8 == 0);
const _: () = assert!(core::mem::size_of::<Pending>() == 8);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);
const _: () = assert!(core::mem::size_of::<Listener>() == 32);
const _: () = assert!(
    core::mem::size_of::<Settings>() == 136 + 3 * 8 * FILTER_WORDS + 48 + 8 + 8 * NETNS_INLINE
);
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
        GenKey, KernelOffsets, Listener, ListenerKey, Meta, Pending, ProcState, Settings,
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
    unsafe impl aya::Pod for Listener {}
    unsafe impl aya::Pod for EgressKey {}
    unsafe impl aya::Pod for super::origin::OriginRecord {}
    unsafe impl aya::Pod for super::origin::ConnKey {}
    unsafe impl aya::Pod for super::origin::ConnEntry {}
    unsafe impl aya::Pod for super::origin::ConnSlot {}
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
