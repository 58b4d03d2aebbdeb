//! Provenance: the origin of each protected connection, carried from the
//! connect hook to the accepted socket, and the `cgroup/getsockopt`
//! program that hands it to the service.
//!
//! 1. The connect hook records the caller by the client socket's cookie
//!    ([`connecting`]: in a slot of `LW_ORIGIN_SLOTS`, without a hash-map
//!    operation, or in `LW_ORIGIN_PENDING` when its slots are taken), and
//!    marks the destination port in `LW_CONN_PORTS`.
//! 2. The client's handshake completes (`inet_sock_set_state`
//!    SYN_SENT→ESTABLISHED, see [`crate::sockets`]): the record moves to a
//!    slot of `LW_CONN_SLOTS` its connection's addresses hash to, or to
//!    `LW_CONNS` under them when those slots are taken
//!    ([`client_established`]).
//! 3. The server's side completes (SYN_RECV→ESTABLISHED on the accepted
//!    socket, after the client's: the client's ACK creates it): the entry
//!    is bound to that socket by its cookie and the client's first
//!    sequence number ([`server_established`]).
//! 4. The accepted socket closes: its entry goes ([`closed`]).
//!
//! The slots are arrays the program indexes directly (the verifier inlines
//! the lookup): a connection kept in them costs no hash-map operation from
//! connect to close.
//!
//! Steps 2 to 4 look a connection up only when its server's port is
//! marked ([`port_marked`]): every other TCP connection on the host (an
//! untagged one, a client's socket closing on its ephemeral port) pays a
//! byte load instead of a hash lookup at each of them.
//!
//! `getsockopt` finds the entry by the socket's addresses and namespace
//! ([`lw_getsockopt`], [`netns_inum`], [`find_conn`]). (Socket-local
//! storage would hold the record on the socket itself, but allocating and
//! freeing it, charged to the memory cgroup and freed after an RCU grace
//! period, cost more per connection than everything else the tag does.)

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sockopt},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_tcp_sock},
    },
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use loopwarden_common::{
    Addr, CONN_SLOT_PROBES, ConnectEvent, ORIGIN_SLOT_PROBES, ORIGIN_SLOTS,
    origin::{ConnEntry, ConnKey, ConnSlot, LW_ORIGIN, OriginRecord, OriginSlot, SOL_LOOPWARDEN},
};

use crate::{
    addr::v4_mapped,
    atomic::cas,
    connect::{AF_INET, AF_INET6},
    identity::{load, offset, probe},
    maps::{
        CONN_PORTS, CONN_SLOTS, CONNS, ORIGIN_PENDING, ORIGIN_SLOTS as SLOTS, byte_of, byte_set,
    },
    sockets::tcp_sock,
};

const RECORD_SIZE: usize = core::mem::size_of::<OriginRecord>();
/// The longest a connect's handshake can take: Linux gives up on a SYN
/// after about 127 s (`tcp_syn_retries` 6); 3 minutes leaves room.
const HANDSHAKE_NS: u64 = 180_000_000_000;
/// What a cgroup sockopt program sees of a larger `optval`.
const PAGE_SIZE: i32 = 4096;

/// The answer for a socket without a tag (read-only data).
static UNKNOWN: OriginRecord = OriginRecord::unknown();
/// What a pending entry starts as, before the connect hook fills it.
static PENDING_ENTRY: ConnEntry = ConnEntry::pending();

/// A protected connect to port `port` that proceeds, at `now`: its origin
/// waits for the handshake in a slot of `LW_ORIGIN_SLOTS` it claims by the
/// socket's cookie, or, when the slots it may use are taken, in
/// `LW_ORIGIN_PENDING` under the cookie; in the entry it will have once
/// connected. The port is marked (before the SYN leaves, so its
/// handshake finds the mark). Returns the caller's part of the entry for
/// the connect hook to fill in place (nothing else writes this cookie's
/// entry: the handshake has not begun).
#[inline(always)]
pub fn connecting(cookie: u64, port: u16, now: u64) -> Option<*mut ConnectEvent> {
    mark_port(port);
    let entry = match claim(cookie, now) {
        Some(slot) => {
            // SAFETY: the slot is this connect's; its entry is written
            // whole but for `conn` (the handshake's) and `origin` (the
            // caller's), field by field rather than copied from read-only
            // data.
            unsafe {
                let entry = &raw mut (*slot).entry;
                let rec = &raw mut (*entry).record;
                (*rec).magic = PENDING_ENTRY.record.magic;
                (*rec).version = PENDING_ENTRY.record.version;
                (*rec).size = PENDING_ENTRY.record.size;
                (*rec).status = PENDING_ENTRY.record.status;
                (*rec)._pad0 = [0; 3];
                (*rec).server_uid = 0;
                (*rec).established_ns = 0;
                (*rec).server_cookie = 0;
                (*entry).first_seq = 0;
                (*entry)._pad = 0;
                entry
            }
        }
        None => {
            // By reference: the helper copies from the read-only data in place.
            #[allow(clippy::needless_borrows_for_generic_args)]
            ORIGIN_PENDING.insert(cookie, &PENDING_ENTRY, 0).ok()?;
            ORIGIN_PENDING.get_ptr_mut(cookie)?
        }
    };
    // SAFETY: a pointer into the map's value.
    Some(unsafe { &raw mut (*entry).record.origin })
}

/// A connect that failed before its handshake completed.
#[inline(always)]
pub fn connect_failed(cookie: u64) {
    match owned_slot(cookie) {
        Some(slot) => {
            release(slot, cookie);
        }
        None => {
            let _ = ORIGIN_PENDING.remove(cookie);
        }
    }
}

/// The client socket with cookie `cookie` completed its handshake on the
/// connection `key`: its pending entry, named for its connection, moves to
/// a slot of `LW_CONN_SLOTS` or to `LW_CONNS`.
#[inline(always)]
pub fn client_established(cookie: u64, key: &ConnKey) {
    if let Some(slot) = owned_slot(cookie) {
        // SAFETY: a pointer into the map's value, which only this
        // socket's connect and handshake write while it owns the slot.
        unsafe { insert_conn(&raw mut (*slot).entry, key, cookie) };
        // Still this connect's after the copy, so no claim (which takes
        // the slot before it writes) wrote into it meanwhile. Only a claim
        // older than any handshake is ever taken over: a handshake that
        // completed that late (`tcp_syn_retries` raised) and lost its slot
        // has no origin, never a mixed one.
        if !release(slot, cookie) {
            closed(key);
        }
        return;
    }
    let Some(entry) = ORIGIN_PENDING.get_ptr_mut(cookie) else {
        return;
    };
    // SAFETY: a pointer into the map's value, which only this socket's
    // connect and handshake write.
    unsafe { insert_conn(entry, key, cookie) };
    let _ = ORIGIN_PENDING.remove(cookie);
}

/// The pending entry at `entry` of the client socket with cookie `cookie`,
/// named for its connection `key`, copied whole into a slot of
/// `LW_CONN_SLOTS` it claims, or into `LW_CONNS` (by reference: a
/// by-value entry would be copied to the stack).
///
/// # Safety
/// `entry` points into a map value only this connection's connect and
/// handshake write.
#[inline(always)]
unsafe fn insert_conn(entry: *mut ConnEntry, key: &ConnKey, cookie: u64) {
    // SAFETY: as the caller promises; `slot` is this connection's.
    unsafe {
        (*entry).record.conn = *key;
        if let Some(slot) = claim_conn(key, cookie) {
            ptr::copy_nonoverlapping(entry, &raw mut (*slot).entry, 1);
            return;
        }
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = CONNS.insert(key, &*entry, 0);
    }
}

/// Slot `i` of `LW_CONN_SLOTS` the connection `key` may be kept in.
#[inline(always)]
fn conn_probe(key: &ConnKey, i: u32) -> Option<*mut ConnSlot> {
    CONN_SLOTS.get_ptr_mut(key.slot(i))
}

/// A slot of `LW_CONN_SLOTS` claimed for the connection `key`, whose
/// client socket has cookie `cookie`: the first of its
/// [`CONN_SLOT_PROBES`] that holds a dead connection's entry with its
/// addresses (its close was not seen: while a socket is open no other
/// connection has its two ends), else the first that is free or holds a
/// connection whose server's handshake never completed (connected longer
/// ago than any handshake takes). Claimed whole before it is written
/// (the claim does not wait for a slot's writer: a client's handshake
/// completes before its server's side, the only other writer, starts).
#[inline(always)]
fn claim_conn(key: &ConnKey, cookie: u64) -> Option<*mut ConnSlot> {
    let mut free: Option<(*mut ConnSlot, u64)> = None;
    for i in 0..CONN_SLOT_PROBES {
        let Some(slot) = conn_probe(key, i) else {
            continue;
        };
        // SAFETY: pointers into the map's value; the owner word changes
        // only by compare-and-swap.
        unsafe {
            let owner = ptr::read_volatile(&(*slot).owner);
            let rec = &raw const (*slot).entry.record;
            if owner != 0 && (*rec).conn == *key {
                return cas(&raw mut (*slot).owner, owner, cookie).then_some(slot);
            }
            // (The clock is read only for a taken slot whose server's
            // handshake has not completed: rarely.)
            let dead = owner == 0
                || (ptr::read_volatile(&(*rec).established_ns) == 0
                    && bpf_ktime_get_ns().wrapping_sub((*rec).origin.ktime_ns) > HANDSHAKE_NS);
            if dead && free.is_none() {
                free = Some((slot, owner));
            }
        }
    }
    let (slot, owner) = free?;
    // SAFETY: as above.
    unsafe { cas(&raw mut (*slot).owner, owner, cookie) }.then_some(slot)
}

/// The slot of `LW_CONN_SLOTS` that holds the connection `key`, if one
/// does.
#[inline(always)]
fn conn_slot(key: &ConnKey) -> Option<*mut ConnSlot> {
    for i in 0..CONN_SLOT_PROBES {
        let Some(slot) = conn_probe(key, i) else {
            continue;
        };
        // SAFETY: a pointer into the map's value.
        unsafe {
            if ptr::read_volatile(&(*slot).owner) != 0 && (*slot).entry.record.conn == *key {
                return Some(slot);
            }
        }
    }
    None
}

/// The entry of the connection `key`: in its slot, or in `LW_CONNS`.
#[inline(always)]
fn find_conn(key: &ConnKey) -> Option<*mut ConnEntry> {
    match conn_slot(key) {
        // SAFETY: a pointer into the map's value.
        Some(slot) => Some(unsafe { &raw mut (*slot).entry }),
        None => CONNS.get_ptr_mut(key),
    }
}

/// The first slot a connect with socket cookie `cookie` may use: a
/// multiplicative hash of the cookie (cookies are handed out in per-CPU
/// runs, and a server's accepted sockets take every other one), so
/// neighbouring cookies scatter over the slots.
#[inline(always)]
fn first_slot(cookie: u64) -> u32 {
    (cookie.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - ORIGIN_SLOTS.trailing_zeros())) as u32
}

/// Slot `i` of those the connect with socket cookie `cookie` may use
/// (`i` < [`ORIGIN_SLOT_PROBES`]): the following ones, from the first.
#[inline(always)]
fn probe_slot(cookie: u64, i: u32) -> Option<*mut OriginSlot> {
    SLOTS.get_ptr_mut((first_slot(cookie) + i) & (ORIGIN_SLOTS - 1))
}

/// A slot of `LW_ORIGIN_SLOTS` claimed for the connect with socket cookie
/// `cookie` at `now`: the first of its [`ORIGIN_SLOT_PROBES`] that is
/// free, already this socket's, or whose claim is older than any
/// handshake (its connect's failure was not seen: refused by a program
/// after this one, or failed before it sent a SYN). `claimed_ns` is
/// written before the claim, so a slot seen taken shows its claim's time
/// (a claim that loses the race has written a time as recent).
#[inline(always)]
fn claim(cookie: u64, now: u64) -> Option<*mut OriginSlot> {
    for i in 0..ORIGIN_SLOT_PROBES {
        let Some(slot) = probe_slot(cookie, i) else {
            continue;
        };
        // SAFETY: pointers into the map's value; the owner word changes
        // only by compare-and-swap.
        unsafe {
            let owner = ptr::read_volatile(&(*slot).owner);
            // (A slot this socket holds already is its own: a connect that
            // a later program refused, tried again.)
            if owner != 0
                && owner != cookie
                && now.wrapping_sub(ptr::read_volatile(&(*slot).claimed_ns)) <= HANDSHAKE_NS
            {
                continue;
            }
            ptr::write_volatile(&raw mut (*slot).claimed_ns, now);
            if cas(&raw mut (*slot).owner, owner, cookie) {
                return Some(slot);
            }
        }
    }
    None
}

/// The slot the connect with socket cookie `cookie` holds, if it holds one.
/// A socket without a cookie (0: no program asked for one, so no tagged
/// connect made it) holds none: 0 is a free slot's owner word.
#[inline(always)]
fn owned_slot(cookie: u64) -> Option<*mut OriginSlot> {
    if cookie == 0 {
        return None;
    }
    for i in 0..ORIGIN_SLOT_PROBES {
        let Some(slot) = probe_slot(cookie, i) else {
            continue;
        };
        // SAFETY: a pointer into the map's value.
        if unsafe { ptr::read_volatile(&(*slot).owner) } == cookie {
            return Some(slot);
        }
    }
    None
}

/// Gives the slot back if the connect with socket cookie `cookie` still
/// holds it; whether it did.
#[inline(always)]
fn release(slot: *mut OriginSlot, cookie: u64) -> bool {
    // SAFETY: a pointer into the map's value, 8-byte aligned.
    unsafe { cas(&raw mut (*slot).owner, cookie, 0) }
}

/// The accepted socket `sk` (owned by `uid`) completed its handshake on
/// the connection `key`: a recorded origin becomes the socket's.
#[inline(always)]
pub fn server_established(sk: u64, key: &ConnKey, uid: u32) {
    let Some(entry) = find_conn(key) else {
        return;
    };
    let Some(tcp) = tcp_sock(sk) else {
        return;
    };
    let seq = first_seq(
        load(tcp, offset!(tcp_rcv_nxt)),
        load(tcp, offset!(tcp_bytes_received)),
    );
    // SAFETY: `entry` points into the map's value.
    unsafe {
        let rec = &raw mut (*entry).record;
        // An entry another accepted socket took, or one whose connect is
        // older than any handshake, is a dead connection's (its close was
        // not seen, or its server never accepted it) that happens to share
        // these addresses: never this socket's origin.
        let now = bpf_ktime_get_ns();
        if (*rec).established_ns != 0 || now.wrapping_sub((*rec).origin.ktime_ns) > HANDSHAKE_NS {
            return;
        }
        (*rec).server_uid = uid;
        (*rec).server_cookie = bpf_get_socket_cookie(sk as *mut c_void);
        (*entry).first_seq = seq;
        // Written last: `getsockopt` and the daemon take an entry with it
        // set as complete.
        (*rec).established_ns = now;
    }
}

/// Notes that connections whose server is on port `port` may have origins
/// (pending, or in `LW_CONN_SLOTS` or `LW_CONNS`). A byte store, not a bit
/// in a shared word: two CPUs marking neighbouring ports at once cannot
/// undo each other's mark. Stored only when unset (marks are never
/// cleared): a busy port's cache line is not written at every connection.
#[inline(always)]
fn mark_port(port: u16) {
    if let Some(b) = byte_of(&CONN_PORTS, u32::from(port)) {
        // SAFETY: a pointer into the map's value.
        unsafe {
            if ptr::read_volatile(b) == 0 {
                ptr::write_volatile(b, 1);
            }
        }
    }
}

/// Whether a connection whose server is on port `port` may have an origin
/// (no: no tagged connect ever went to that port). A client socket's
/// handshake is asked with its peer's port; an accepted socket's, and any
/// socket's close, with its local port.
#[inline(always)]
pub fn port_marked(port: u16) -> bool {
    byte_set(&CONN_PORTS, u32::from(port))
}

/// The client's initial sequence number plus one, from a TCP socket's
/// `rcv_nxt` and `bytes_received` at any point of its life.
#[inline(always)]
fn first_seq(rcv_nxt: u32, bytes_received: u64) -> u32 {
    rcv_nxt.wrapping_sub(bytes_received as u32)
}

/// A socket closed on the connection `key` (as its accepting side would
/// name it): the connection's slot is given back, or, if it has none, its
/// `LW_CONNS` entry goes (without a lookup first). Whatever entry these
/// addresses have is no open connection's but this one's: while a socket
/// is open no other connection in its namespace can have its two ends, in
/// either direction. So the entry is this socket's, if it is the
/// accepting side, or a dead connection's whose close was not seen (left
/// for the daemon to filter); a client socket (on a marked port by
/// chance) names its connection the wrong way round, which only a dead
/// connection's entry could match.
#[inline(always)]
pub fn closed(key: &ConnKey) {
    let Some(slot) = conn_slot(key) else {
        let _ = CONNS.remove(key);
        return;
    };
    // SAFETY: a pointer into the map's value. The key is unnamed (client
    // port 0, no connection's) before the slot is free, so no lookup
    // matches it while its next connection writes it.
    unsafe {
        let owner = ptr::read_volatile(&(*slot).owner);
        ptr::write_volatile(&raw mut (*slot).entry.record.conn.client_port, 0);
        cas(&raw mut (*slot).owner, owner, 0);
    }
}

/// `getsockopt(fd, SOL_LOOPWARDEN, LW_ORIGIN, buf, &len)`: the accepted
/// socket's origin, or [`OriginRecord::unknown`] when loopwarden has none;
/// `len` must be at least the record's size (else the kernel's own answer,
/// ENOPROTOOPT, stands). Every other option is left to the kernel.
#[cgroup_sockopt(getsockopt)]
pub fn lw_getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: context fields the getsockopt program type may read and write.
    unsafe {
        if (*so).level != SOL_LOOPWARDEN || (*so).optname != LW_ORIGIN {
            // Past a page the program sees a truncated copy: leave the
            // caller's buffer as the kernel filled it (on kernels before
            // 6.5 a larger optlen left standing fails the call).
            if ptr::read_volatile(&(*so).optlen) > PAGE_SIZE {
                ptr::write_volatile(&raw mut (*so).optlen, 0);
            }
            return 1;
        }
        let optval = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if optval.add(RECORD_SIZE) > end {
            return 1;
        }
        let entry = entry_of(so);
        // The kernel's buffer for optval is allocated (or on its stack,
        // for small ones) 8-byte aligned: the record is copied in words.
        let out = optval.cast::<OriginRecord>();
        match entry {
            Some(entry) => out.write(ptr::read(&raw const (*entry).record)),
            // Another loopwarden's program (a second pin directory) may
            // have answered already: its answer stands.
            None if ptr::read_volatile(&(*so).retval) == 0 => return 1,
            None => out.write(UNKNOWN),
        }
        // Two 32-bit stores: the verifier refuses a merged 64-bit one.
        ptr::write_volatile(&raw mut (*so).optlen, RECORD_SIZE as i32);
        ptr::write_volatile(&raw mut (*so).retval, 0);
    }
    1
}

/// The entry of the connection `so`'s socket accepted, if that socket is
/// its accepting side.
///
/// # Safety
/// `so` is the program's context.
#[inline(always)]
unsafe fn entry_of(so: *mut bpf_sockopt) -> Option<*mut ConnEntry> {
    // SAFETY: the context's socket, read field by field as the program
    // type allows; `tcp` is checked for NULL.
    unsafe {
        let sk: *mut bpf_sock = (*so).__bindgen_anon_1.sk;
        // Every address field is read before the family picks: read in
        // the branches, the compiler merges the loads into one at a
        // chosen offset, which the verifier refuses on a socket.
        let (dst4, src4) = (
            ptr::read_volatile(&(*sk).dst_ip4),
            ptr::read_volatile(&(*sk).src_ip4),
        );
        let (dst6, src6) = (ip6(&(*sk).dst_ip6), ip6(&(*sk).src_ip6));
        // The kernel's family is 16 bits wide: the context widens it.
        let (client, server) = match ptr::read_volatile(&(*sk).family) as u16 {
            AF_INET => (v4_mapped(dst4), v4_mapped(src4)),
            AF_INET6 => (dst6, src6),
            _ => return None,
        };
        let key = ConnKey {
            netns: netns_inum(sk)?,
            client_port: u16::from_be(ptr::read_volatile(&(*sk).dst_port)),
            server_port: ptr::read_volatile(&(*sk).src_port) as u16,
            client,
            server,
        };
        let entry = find_conn(&key)?;
        if ptr::read_volatile(&(*entry).record.established_ns) == 0 {
            return None;
        }
        let tcp = bpf_tcp_sock(sk);
        if tcp.is_null() || first_seq((*tcp).rcv_nxt, (*tcp).bytes_received) != (*entry).first_seq {
            return None;
        }
        Some(entry)
    }
}

/// Words of `struct sock` read to find its namespace: `skc_net` lies
/// within them (48 bytes in on x86_64 Linux 6.18; the BTF offset is
/// checked against the bound).
const SOCK_PREFIX_WORDS: usize = 16;

/// The inode number of the network namespace of the socket `sk`.
/// `getsockopt` programs may not type the socket as a kernel `struct sock`
/// (`bpf_skc_to_tcp_sock` is refused) nor offset its pointer, so the
/// start of the socket is copied with `bpf_probe_read_kernel` and the
/// namespace pointer taken from it at its BTF offset.
#[inline(always)]
fn netns_inum(sk: *mut bpf_sock) -> Option<u32> {
    let index = (offset!(sk_net) / 8) as usize;
    if index >= SOCK_PREFIX_WORDS {
        return None;
    }
    let mut prefix = [0u64; SOCK_PREFIX_WORDS];
    // SAFETY: the helper copies from any kernel address and fails cleanly.
    let copied = unsafe {
        bpf_probe_read_kernel(
            prefix.as_mut_ptr().cast(),
            (SOCK_PREFIX_WORDS * 8) as u32,
            sk as *const c_void,
        )
    };
    if copied != 0 {
        return None;
    }
    let net = prefix[index];
    (net != 0).then(|| probe::<u32>(net + u64::from(offset!(net_inum))))
}

/// An IPv6 address from a `bpf_sock` field, a 32-bit load per word (the
/// only width the context allows).
#[inline(always)]
fn ip6(words: &[u32; 4]) -> Addr {
    Addr {
        words: [
            // SAFETY: reads of a context array the program type allows.
            unsafe { ptr::read_volatile(&words[0]) },
            unsafe { ptr::read_volatile(&words[1]) },
            unsafe { ptr::read_volatile(&words[2]) },
            unsafe { ptr::read_volatile(&words[3]) },
        ],
    }
}
