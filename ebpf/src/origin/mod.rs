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
//!    sequence number, and its slot becomes the socket's
//!    ([`server_established`]).
//! 4. The accepted socket closes: its entry goes, if it is still that
//!    socket's ([`closed`]).
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
//! ([`getsockopt`]). (Socket-local storage would hold the record on the
//! socket itself, but allocating and freeing it, charged to the memory
//! cgroup and freed after an RCU grace period, cost more per connection
//! than everything else the tag does.)
//!
//! Its parts: the pending origins ([`pending`], step 1), the live
//! connections ([`conns`], steps 2 to 4) and the `getsockopt` program
//! ([`getsockopt`]); the hand-over from the first to the second is here.

mod conns;
mod getsockopt;
mod pending;

use core::ptr;

use loopwarden_common::{Addr, ConnectEvent, origin::ConnKey};

pub use self::{
    conns::{closed, server_established},
    pending::{
        Pending, PendingCopy, claim_copy, connect_failed, connecting, copy_origin, pend,
        release_copy,
    },
};
use self::{
    conns::{discard, insert_conn},
    pending::{owned_slot, release},
};
use crate::{
    addr::{is_loopback, is_unspecified},
    identity::{load, offset},
    maps::{CONN_PORTS, ORIGIN_PENDING, byte_of, byte_set},
    sockets::tcp_sock,
};

/// Whether the connect `origin` records (its destination and port) made
/// the connection `key`. An earlier connect of the socket that failed
/// unseen (refused by a later program, or failing after the hook: an
/// IPv4-mapped address on an `IPV6_V6ONLY` socket) leaves its record, and
/// the socket, connected again where no hook judges (another port, or
/// another address of the host: `host_addresses = false`), must not take
/// it for this connection's origin. A connect to the unspecified address
/// reached the loopback address, or from a socket bound first its own.
///
/// # Safety
/// `origin` points into a map's value.
#[inline(always)]
unsafe fn made(origin: *const ConnectEvent, key: &ConnKey) -> bool {
    // SAFETY: the caller's pointer; each field read once, as it is now.
    let (dport, daddr) = unsafe {
        let words = &(*origin).daddr.words;
        (
            ptr::read_volatile(&(*origin).dport),
            Addr {
                words: [
                    ptr::read_volatile(&words[0]),
                    ptr::read_volatile(&words[1]),
                    ptr::read_volatile(&words[2]),
                    ptr::read_volatile(&words[3]),
                ],
            },
        )
    };
    dport == key.server_port
        && (daddr == key.server
            || (is_unspecified(&daddr) && (is_loopback(&key.server) || key.server == key.client)))
}

/// The longest a connect's handshake can take: Linux gives up on a SYN
/// after about 127 s (`tcp_syn_retries` 6); 3 minutes leaves room.
const HANDSHAKE_NS: u64 = 180_000_000_000;

/// The client socket `sk`, with cookie `cookie`, completed its handshake
/// on the connection `key`: its pending entry, named for its connection
/// and marked with its first sequence number, moves to a slot of
/// `LW_CONN_SLOTS` or to `LW_CONNS`.
#[inline(always)]
pub fn client_established(sk: u64, cookie: u64, key: &ConnKey) {
    if let Some(slot) = owned_slot(cookie) {
        // SAFETY: a pointer into the map's value.
        if !unsafe { made(&raw const (*slot).entry.record.origin, key) } {
            release(slot, cookie);
            return;
        }
        let seq = client_first_seq(sk);
        // SAFETY: a pointer into the map's value, which only this
        // socket's connect and handshake write while it owns the slot.
        unsafe { insert_conn(&raw mut (*slot).entry, key, cookie, seq) };
        // Still this connect's after the copy, so no claim (which takes
        // the slot before it writes) wrote into it meanwhile. Only a claim
        // older than any handshake is ever taken over: a handshake that
        // completed that late (`tcp_syn_retries` raised) and lost its slot
        // has no origin, never a mixed one.
        if !release(slot, cookie) {
            discard(key, cookie);
        }
        return;
    }
    let Some(entry) = ORIGIN_PENDING.get_ptr_mut(cookie) else {
        return;
    };
    // SAFETY: a pointer into the map's value.
    if !unsafe { made(&raw const (*entry).record.origin, key) } {
        let _ = ORIGIN_PENDING.remove(cookie);
        return;
    }
    let seq = client_first_seq(sk);
    // SAFETY: a pointer into the map's value, which no program writes in
    // place (a connect hands its entry over whole, see `pend`), unless the
    // LRU map recycles it for another connect's insert meanwhile (it may
    // reuse even a recent element when full): then its cookie is the
    // other's after the copy, and the copy is taken back.
    let intact = unsafe {
        insert_conn(entry, key, cookie, seq);
        ptr::read_volatile(&(*entry).record.origin.socket_cookie) == cookie
    };
    let _ = ORIGIN_PENDING.remove(cookie);
    if !intact {
        discard(key, cookie);
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

/// The same number from the client's side: its socket's `snd_una` minus
/// `bytes_acked` is its initial sequence number at any point of its life
/// (the SYN counts in both); 0 if the socket cannot be read as TCP.
#[inline(always)]
fn client_first_seq(sk: u64) -> u32 {
    match tcp_sock(sk) {
        Some(tcp) => {
            let snd_una: u32 = load(tcp, offset!(tcp_snd_una));
            let acked: u64 = load(tcp, offset!(tcp_bytes_acked));
            snd_una.wrapping_sub(acked as u32).wrapping_add(1)
        }
        None => 0,
    }
}
