//! Steps 2 to 4: a live connection's entry, named by its addresses and
//! namespace, in a slot of `LW_CONN_SLOTS` they hash to or in `LW_CONNS`;
//! bound to the accepted socket when its handshake completes, gone when
//! it closes.

use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie};
use loopwarden_common::{
    CONN_SLOT_PROBES,
    origin::{ConnEntry, ConnKey, ConnSlot},
};

use super::{HANDSHAKE_NS, first_seq};
use crate::{
    atomic::cas,
    identity::{load, offset},
    maps::{CONN_SLOTS, CONNS},
    procs::elapsed,
    sockets::tcp_sock,
};

/// The pending entry at `entry` of the client socket with cookie `cookie`,
/// named for its connection `key`, copied whole into a slot of
/// `LW_CONN_SLOTS` it claims, or into `LW_CONNS` (by reference: a
/// by-value entry would be copied to the stack).
///
/// # Safety
/// `entry` points into a map value only this connection's connect and
/// handshake write.
#[inline(always)]
pub(super) unsafe fn insert_conn(entry: *mut ConnEntry, key: &ConnKey, cookie: u64) {
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
                    && elapsed(bpf_ktime_get_ns(), (*rec).origin.ktime_ns) > HANDSHAKE_NS);
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
pub(super) fn find_conn(key: &ConnKey) -> Option<*mut ConnEntry> {
    match conn_slot(key) {
        // SAFETY: a pointer into the map's value.
        Some(slot) => Some(unsafe { &raw mut (*slot).entry }),
        None => CONNS.get_ptr_mut(key),
    }
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
        if (*rec).established_ns != 0 || elapsed(now, (*rec).origin.ktime_ns) > HANDSHAKE_NS {
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
