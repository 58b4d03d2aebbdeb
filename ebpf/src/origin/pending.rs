//! Step 1: a protected connect's origin, kept by its client socket's
//! cookie until the handshake completes: in a slot of `LW_ORIGIN_SLOTS`
//! it claims, or in `LW_ORIGIN_PENDING` when its slots are taken.

use core::ptr;

use aya_ebpf::{macros::map, maps::PerCpuArray};
use loopwarden_common::{
    ConnectEvent, ORIGIN_SLOT_PROBES,
    origin::{ConnEntry, OriginSlot},
};

use super::{HANDSHAKE_NS, mark_port};
use crate::{
    atomic::{barrier, cas},
    maps::{ORIGIN_PENDING, ORIGIN_SLOTS as SLOTS},
    procs::elapsed,
};

/// What a pending entry starts as, before the connect hook fills it.
static PENDING_ENTRY: ConnEntry = ConnEntry::pending();

/// Where a connect's origin waits for its handshake.
pub enum Pending {
    /// In a slot it claimed: the caller's part of the entry, for the
    /// connect hook to fill in place (nothing else writes this cookie's
    /// slot: the handshake has not begun).
    Slot(*mut ConnectEvent),
    /// Its slots are taken: the connect hook fills the entry of this CPU's
    /// copy ([`claim_copy`]) and hands it to [`pend`].
    Map,
}

/// A protected connect to port `port` that proceeds, at `now`: its origin
/// waits for the handshake in a slot of `LW_ORIGIN_SLOTS` it claims by the
/// socket's cookie, or, when the slots it may use are taken, in
/// `LW_ORIGIN_PENDING` under the cookie; in the entry it will have once
/// connected. The port is marked (before the SYN leaves, so its
/// handshake finds the mark).
#[inline(always)]
pub fn connecting(cookie: u64, port: u16, now: u64) -> Pending {
    mark_port(port);
    match claim(cookie, now) {
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
                Pending::Slot(&raw mut (*entry).record.origin)
            }
        }
        None => Pending::Map,
    }
}

/// Per CPU, the entry of a connect whose slots are taken, built here
/// before it goes into `LW_ORIGIN_PENDING` whole ([`pend`]: more than the
/// stack could hold beside the judgement). Scratch memory of the connect
/// programs: not pinned.
#[map(name = "LW_PENDING_COPY")]
static PENDING_COPY: PerCpuArray<PendingCopy> = PerCpuArray::with_max_entries(1, 0);

/// One CPU's copy, and who uses it. A cgroup program runs with migration
/// off but, on a fully preemptible kernel, not with preemption off:
/// another task's connect on this CPU can run while this one builds its
/// entry. The copy is claimed first (`busy` from 0 to 1, one
/// compare-and-swap); a connect that finds it claimed keeps no origin
/// ("unknown", never another's).
#[repr(C)]
pub struct PendingCopy {
    busy: u64,
    entry: ConnEntry,
}

/// This CPU's copy, claimed, its entry what a pending one starts as; `None`
/// while another connect on this CPU holds it.
#[inline(always)]
pub fn claim_copy() -> Option<*mut PendingCopy> {
    let copy = PENDING_COPY.get_ptr_mut(0)?;
    // SAFETY: pointers into the map's value; `busy` is 8-byte aligned, and
    // the entry is this program's once claimed.
    unsafe {
        if !cas(&raw mut (*copy).busy, 0, 1) {
            return None;
        }
        ptr::copy_nonoverlapping(&raw const PENDING_ENTRY, &raw mut (*copy).entry, 1);
    }
    Some(copy)
}

/// The origin record of a claimed copy's entry, for the connect hook to fill.
#[inline(always)]
pub fn copy_origin(copy: *mut PendingCopy) -> *mut ConnectEvent {
    // SAFETY: a pointer into the map's value.
    unsafe { &raw mut (*copy).entry.record.origin }
}

/// The entry of the claimed `copy`, filled, into `LW_ORIGIN_PENDING` under
/// the connect's socket cookie `cookie`, in one update: the map copies it
/// into an element no one sees before it is whole. (Filled in the map's
/// element itself, a connect preempted mid-record could go on writing
/// into an element the LRU map had meanwhile recycled for another
/// connect, whose record would then mix the two.)
#[inline(always)]
pub fn pend(cookie: u64, copy: *mut PendingCopy) {
    // SAFETY: a pointer into the map's value, which this program claimed.
    // By reference: the helper copies from the map value in place.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = ORIGIN_PENDING.insert(cookie, unsafe { &(*copy).entry }, 0);
}

/// Gives this CPU's copy back (after its last read).
#[inline(always)]
pub fn release_copy(copy: *mut PendingCopy) {
    barrier();
    // SAFETY: as for the claim.
    unsafe { ptr::write_volatile(&raw mut (*copy).busy, 0) };
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
