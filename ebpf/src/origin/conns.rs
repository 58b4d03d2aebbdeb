//! Steps 2 to 4: a live connection's entry, named by its addresses and
//! namespace, in a slot of `LW_CONN_SLOTS` they hash to or in `LW_CONNS`;
//! bound to the accepted socket when its handshake completes, gone when
//! that socket closes (and only then: see [`closed`]).

use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie};
use loopwarden_common::{
    CONN_SLOT_PROBES,
    origin::{CONN_RELEASING, ConnEntry, ConnKey, ConnSlot},
};

use super::{HANDSHAKE_NS, first_seq};
use crate::{
    atomic::cas,
    identity::{load, offset},
    maps::{CONN_SLOTS, CONNS},
    procs::elapsed,
    sockets::tcp_sock,
};

/// The pending entry at `entry` of the client socket with cookie `cookie`
/// and first sequence number `seq`, named for its connection `key`,
/// copied whole into a slot of `LW_CONN_SLOTS` it claims, or into
/// `LW_CONNS` (by reference: a by-value entry would be copied to the
/// stack).
///
/// # Safety
/// `entry` points into a map value only this connection's connect and
/// handshake write.
#[inline(always)]
pub(super) unsafe fn insert_conn(entry: *mut ConnEntry, key: &ConnKey, cookie: u64, seq: u32) {
    // SAFETY: as the caller promises; `slot` is this connection's.
    unsafe {
        (*entry).record.conn = *key;
        (*entry).first_seq = seq;
        if let Some(slot) = claim_conn(key, cookie, (*entry).record.origin.ktime_ns) {
            ptr::copy_nonoverlapping(entry, &raw mut (*slot).entry, 1);
            return;
        }
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = CONNS.insert(key, &*entry, 0);
    }
}

/// A slot of `LW_CONN_SLOTS` and its owner word as read.
pub(super) type HeldSlot = (*mut ConnSlot, u64);

/// Slot `i` of `LW_CONN_SLOTS` the connection `key` may be kept in.
#[inline(always)]
fn conn_probe(key: &ConnKey, i: u32) -> Option<*mut ConnSlot> {
    CONN_SLOTS.get_ptr_mut(key.slot(i))
}

/// A slot of `LW_CONN_SLOTS` claimed for the connection `key`, whose
/// client socket has cookie `cookie` and connected at `connected_ns`: the
/// first of its
/// [`CONN_SLOT_PROBES`] that holds a dead connection's entry with its
/// addresses (its close was not seen, or has not reached this program
/// yet: see [`closed`]), else the first that is free or holds a
/// connection whose server's handshake did not complete (claimed longer
/// before `connected_ns` than any handshake takes: this connect's time
/// stands for the clock, which is not read); never one being given back.
/// Claimed whole before it is written (the claim does not wait for a
/// slot's writer: a client's handshake completes before its server's
/// side, the only other writer, starts), its claim time written first: a
/// claim that loses the race has written its own connect's time, which
/// may be older than the winner's, but by no more than a handshake takes
/// (both connections were in their handshakes at once), so the slot does
/// not look dead before the winner's server could have completed.
#[inline(always)]
fn claim_conn(key: &ConnKey, cookie: u64, connected_ns: u64) -> Option<*mut ConnSlot> {
    let mut free: Option<HeldSlot> = None;
    for i in 0..CONN_SLOT_PROBES {
        let Some(slot) = conn_probe(key, i) else {
            continue;
        };
        // SAFETY: pointers into the map's value; the owner word changes
        // only by compare-and-swap, but for the store that frees a slot
        // being given back.
        unsafe {
            let owner = ptr::read_volatile(&(*slot).owner);
            if owner == CONN_RELEASING {
                continue;
            }
            let rec = &raw const (*slot).entry.record;
            if owner != 0 && (*rec).conn == *key {
                return take(slot, owner, cookie, connected_ns);
            }
            let dead = owner == 0
                || (ptr::read_volatile(&(*rec).established_ns) == 0
                    && elapsed(connected_ns, ptr::read_volatile(&(*slot).claimed_ns))
                        > HANDSHAKE_NS);
            if dead && free.is_none() {
                free = Some((slot, owner));
            }
        }
    }
    let (slot, owner) = free?;
    // SAFETY: as above.
    unsafe { take(slot, owner, cookie, connected_ns) }
}

/// Claims `slot`, whose owner word read `owner`, for the client socket
/// with cookie `cookie` that connected at `connected_ns`.
///
/// # Safety
/// `slot` points into `LW_CONN_SLOTS`' value.
#[inline(always)]
unsafe fn take(
    slot: *mut ConnSlot,
    owner: u64,
    cookie: u64,
    connected_ns: u64,
) -> Option<*mut ConnSlot> {
    // SAFETY: as the caller promises.
    unsafe {
        ptr::write_volatile(&raw mut (*slot).claimed_ns, connected_ns);
        cas(&raw mut (*slot).owner, owner, cookie).then_some(slot)
    }
}

/// The slot of `LW_CONN_SLOTS` that holds the connection `key`, if one
/// does, and its owner word as read.
#[inline(always)]
fn conn_slot(key: &ConnKey) -> Option<HeldSlot> {
    for i in 0..CONN_SLOT_PROBES {
        let Some(slot) = conn_probe(key, i) else {
            continue;
        };
        // SAFETY: a pointer into the map's value.
        unsafe {
            let owner = ptr::read_volatile(&(*slot).owner);
            if owner != 0 && owner != CONN_RELEASING && (*slot).entry.record.conn == *key {
                return Some((slot, owner));
            }
        }
    }
    None
}

/// The entry of the connection `key`: in its slot (returned too, with its
/// owner word as read), or in `LW_CONNS`.
#[inline(always)]
pub(super) fn find_conn(key: &ConnKey) -> Option<(*mut ConnEntry, Option<HeldSlot>)> {
    match conn_slot(key) {
        // SAFETY: a pointer into the map's value.
        Some(held) => Some((unsafe { &raw mut (*held.0).entry }, Some(held))),
        None => Some((CONNS.get_ptr_mut(key)?, None)),
    }
}

/// The accepted socket `sk` (owned by `uid`) completed its handshake on
/// the connection `key`: a recorded origin becomes the socket's, and so
/// does its slot (the owner word becomes the socket's cookie: only this
/// socket's close gives it back).
#[inline(always)]
pub fn server_established(sk: u64, key: &ConnKey, uid: u32) {
    let Some((entry, slot)) = find_conn(key) else {
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
        // An entry another accepted socket took, one whose client sent
        // another first sequence number, or one whose connect is older
        // than any handshake, is a dead connection's (its close was not
        // seen, or its server never accepted it) that happens to share
        // these addresses: never this socket's origin.
        let now = bpf_ktime_get_ns();
        if (*rec).established_ns != 0
            || ptr::read_volatile(&(*entry).first_seq) != seq
            || elapsed(now, (*rec).origin.ktime_ns) > HANDSHAKE_NS
        {
            return;
        }
        let cookie = bpf_get_socket_cookie(sk as *mut c_void);
        // Taken over from the client socket before it is written: a slot
        // another connection took meanwhile (by these addresses, as a dead
        // connection's) is left to it.
        if let Some((slot, owner)) = slot
            && !cas(&raw mut (*slot).owner, owner, cookie)
        {
            return;
        }
        (*rec).server_uid = uid;
        (*rec).server_cookie = cookie;
        // Written last (the barrier keeps the compiler from moving the
        // stores above after it): `getsockopt` and the daemon take an
        // entry with it set as complete.
        crate::atomic::barrier();
        ptr::write_volatile(&raw mut (*rec).established_ns, now);
    }
}

/// The socket with cookie `cookie` (not 0) closed on the connection `key` (as
/// its accepting side would name it): the connection's entry goes if it
/// is that socket's, the accepted socket's since its handshake (or the
/// client's, before: its cookie is the entry's `socket_cookie`; the
/// caller asks only for a socket whose local port is marked, so a client
/// socket's close comes here only if it bound a protected port itself,
/// and an entry whose server never accepted it waits to be taken over,
/// see [`claim_conn`], or evicted from `LW_CONNS`). Its slot
/// is found by its owner word, then given back: marked
/// [`CONN_RELEASING`], its key unnamed (client port 0, no connection's,
/// so no lookup matches it while its next connection writes it), then
/// freed. An entry in `LW_CONNS` goes if it names the socket.
///
/// An entry under these addresses that is another socket's stays: a dead
/// connection's whose close was not seen (taken over by the next
/// connection between these ends), or a new connection's, made between
/// the same addresses and ports while the kernel was closing this one
/// (it unhashes a socket before its state change reaches this program).
#[inline(always)]
pub fn closed(key: &ConnKey, cookie: u64) {
    if give_back(key, cookie) {
        return;
    }
    let Some(entry) = CONNS.get_ptr(key) else {
        return;
    };
    // SAFETY: a pointer into the map's value.
    let (server, client) = unsafe {
        (
            ptr::read_volatile(&(*entry).record.server_cookie),
            ptr::read_volatile(&(*entry).record.origin.socket_cookie),
        )
    };
    if server == cookie || client == cookie {
        let _ = CONNS.remove(key);
    }
}

/// Gives back the slot of the connection `key` that the socket with
/// cookie `cookie` owns, if one is: marked [`CONN_RELEASING`], its key
/// unnamed, then freed. Whether one was.
#[inline(always)]
fn give_back(key: &ConnKey, cookie: u64) -> bool {
    for i in 0..CONN_SLOT_PROBES {
        let Some(slot) = conn_probe(key, i) else {
            continue;
        };
        // SAFETY: pointers into the map's value; a slot marked releasing
        // is written only by the close that marked it.
        unsafe {
            if ptr::read_volatile(&(*slot).owner) != cookie {
                continue;
            }
            if cas(&raw mut (*slot).owner, cookie, CONN_RELEASING) {
                ptr::write_volatile(&raw mut (*slot).entry.record.conn.client_port, 0);
                ptr::write_volatile(&raw mut (*slot).owner, 0);
            }
        }
        return true;
    }
    false
}

/// Takes back what [`insert_conn`] wrote for the client socket with
/// cookie `cookie` on the connection `key` from a source that another
/// connect may have written meanwhile (so the copy may mix two records):
/// its slot, or its entry in `LW_CONNS` while no server's handshake has
/// bound it, whichever client's cookie the copy holds.
#[inline(always)]
pub(super) fn discard(key: &ConnKey, cookie: u64) {
    if give_back(key, cookie) {
        return;
    }
    if let Some(entry) = CONNS.get_ptr(key)
        // SAFETY: a pointer into the map's value.
        && unsafe { ptr::read_volatile(&(*entry).record.established_ns) } == 0
    {
        let _ = CONNS.remove(key);
    }
}
