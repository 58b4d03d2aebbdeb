//! Step 1: a protected connect's origin, kept by its client socket's
//! cookie until the handshake completes: in a slot of `LW_ORIGIN_SLOTS`
//! it claims, or in `LW_ORIGIN_PENDING` when its slots are taken.

use core::ptr;

use loopwarden_common::{
    ConnectEvent, ORIGIN_SLOT_PROBES,
    origin::{ConnEntry, OriginSlot},
};

use super::{HANDSHAKE_NS, mark_port};
use crate::{
    atomic::cas,
    maps::{ORIGIN_PENDING, ORIGIN_SLOTS as SLOTS},
    procs::elapsed,
};

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

/// Slot `i` of those the connect with socket cookie `cookie` may use
/// (`i` < [`ORIGIN_SLOT_PROBES`]; see [`OriginSlot::probe`]).
#[inline(always)]
fn probe_slot(cookie: u64, i: u32) -> Option<*mut OriginSlot> {
    SLOTS.get_ptr_mut(OriginSlot::probe(cookie, i))
}

/// A slot of `LW_ORIGIN_SLOTS` claimed for the connect with socket cookie
/// `cookie` at `now`: the first of its [`ORIGIN_SLOT_PROBES`] that is
/// free, already this socket's, or whose claim is older than any
/// handshake (its connect's failure was not seen: refused by a program
/// after this one, or failed before it sent a SYN). `claimed_ns` is
/// written before the claim, so a slot seen taken shows its claim's time
/// (a claim that loses the race has written a time as recent). A claim
/// made after `now` was read (by a connect on another CPU, or while this
/// one was preempted) is as recent as can be, never stale: taking it over
/// mixed two connects' records and lost one of them.
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
                && elapsed(now, ptr::read_volatile(&(*slot).claimed_ns)) <= HANDSHAKE_NS
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
pub(super) fn owned_slot(cookie: u64) -> Option<*mut OriginSlot> {
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
pub(super) fn release(slot: *mut OriginSlot, cookie: u64) -> bool {
    // SAFETY: a pointer into the map's value, 8-byte aligned.
    unsafe { cas(&raw mut (*slot).owner, cookie, 0) }
}
