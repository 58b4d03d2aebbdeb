//! Per-process state (`LW_PROCS`): the evidence that a process faces the
//! network, its catalogued lineage and its script. Written by the tracking
//! programs ([`crate::sockets`], [`crate::process`]), read by the connect
//! hooks.

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_jiffies64};
use loopwarden_common::{
    Addr, Evidence, ProcState, evidence,
    maps::{TRACKED_LOST, TRACKED_MAYBE},
    stats,
};

use crate::{
    identity::Task,
    maps::{PROCS, RECORDED, TRACKED, byte_of, byte_set, count},
};

/// Which of a process's two kinds of evidence a new one replaces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Listening or accepted: no time limit.
    Standing,
    /// Received or connected: counts within the relay window.
    Recent,
}

/// A state with nothing in it, in read-only data: new entries are copied
/// from it and then written in place, so no program builds one on its
/// stack (the verifier allows 512 bytes for a whole call chain, and
/// Linux 6.1 counts frames more coarsely than later kernels).
static EMPTY: ProcState = ProcState::EMPTY;

/// The zeroed state, for a process with none.
#[inline(always)]
pub fn empty() -> *const ProcState {
    &EMPTY
}

/// `tgid`'s entry, created empty if it has none; `None` if the map is full
/// (counted, and the process noted as lost) or was when the process's
/// state was lost before.
#[inline(always)]
pub fn entry(tgid: u32) -> Option<*mut ProcState> {
    if let Some(state) = PROCS.get_ptr_mut(tgid) {
        return Some(state);
    }
    if note(tgid) == TRACKED_LOST {
        return None;
    }
    // Not replacing one another CPU made since the lookup (two threads'
    // first moves, a softirq's write): its writes would land in the
    // element this insert discarded, and be lost.
    put(tgid, &EMPTY, BPF_NOEXIST);
    PROCS.get_ptr_mut(tgid)
}

/// Records evidence of `kind` about the peer `addr`:`port` for process
/// `tgid`, now. Accepted evidence is not overwritten by a later listen.
#[inline(always)]
pub fn record(tgid: u32, slot: Slot, kind: u8, addr: Addr, port: u16) {
    if slot == Slot::Recent && recorded_lately(u64::from(tgid), kind, &addr, port) {
        return;
    }
    if let Some(state) = entry(tgid) {
        write(state, tgid, slot, kind, addr, port);
    }
}

/// Records `accepted` evidence about the peer `addr`:`port` for `tgid`,
/// the process that listened on the port (from softirq): written only into
/// the entry it has, and only while that entry says it listens (standing
/// listening or accepted evidence). One that exited since has no entry,
/// and none is made for its pid; a later process that took the pid has an
/// entry only of its own, which says it listens only if it listens itself
/// (then it faces the network anyway). Before this check, such a process
/// (one an interpreter's script or a catalogued lineage had given an
/// entry) took the dead listener's accepted evidence and was refused as a
/// relay.
#[inline(always)]
pub fn record_accepted(tgid: u32, addr: Addr, port: u16) {
    if !maybe_tracked(tgid) {
        return;
    }
    let Some(state) = PROCS.get_ptr_mut(tgid) else {
        return;
    };
    // SAFETY: a pointer to the map's value (volatile: a racing writer).
    let standing = unsafe { core::ptr::read_volatile(&(*state).standing.kind) };
    if evidence::listens(standing) {
        write(state, tgid, Slot::Standing, evidence::ACCEPTED, addr, port);
    }
}

/// Records `received` evidence about `addr`:`port` for the current
/// process. The per-CPU note of the last write is keyed by the current
/// task, a pointer (which the JIT reads inline on Linux 6.14 and later),
/// so a receive already recorded this tick makes no helper call; the tgid
/// is read only for a write.
#[inline(always)]
pub fn record_received(addr: Addr, port: u16) {
    let task = Task::current();
    if recorded_lately(task.0, evidence::RECEIVED, &addr, port) {
        return;
    }
    let tgid = task.tgid();
    if let Some(state) = entry(tgid) {
        write(state, tgid, Slot::Recent, evidence::RECEIVED, addr, port);
    }
}

/// [`record`]'s write into `tgid`'s entry `state`.
#[inline(always)]
fn write(state: *mut ProcState, tgid: u32, slot: Slot, kind: u8, addr: Addr, port: u16) {
    let ev = Evidence {
        addr,
        ktime_ns: now(),
        port,
        kind,
        _pad: [0; 5],
    };
    mark(tgid);
    // SAFETY: a pointer to the map's value; a racing writer can at worst
    // interleave two pieces of evidence, each of which is true.
    unsafe {
        match slot {
            Slot::Standing => {
                if !(kind == evidence::LISTENING && (*state).standing.kind == evidence::ACCEPTED) {
                    (*state).standing = ev;
                }
            }
            Slot::Recent => (*state).recent = ev,
        }
    }
}

/// Whether this CPU wrote this very evidence within the current jiffy (a
/// clock tick: 1 to 10 ms) for `who` (a tgid, or the current task's
/// pointer: kernel addresses never equal a tgid); if not, notes that it
/// is writing it now. So evidence can be a tick older than it says, which
/// the window dwarfs. The tick is read, not the clock: on virtual machines
/// `bpf_ktime_get_ns()` costs more than the rest of the receive path. (A
/// program preempted
/// between the check and the write can at worst make another skip one
/// write, or write once more.)
#[inline(always)]
fn recorded_lately(who: u64, kind: u8, addr: &Addr, port: u16) -> bool {
    // SAFETY: a plain helper call.
    let at = unsafe { bpf_jiffies64() };
    let Some(last) = RECORDED.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a pointer to this CPU's slot of the map.
    unsafe {
        if (*last).who == who
            && (*last).kind == kind
            && (*last).port == port
            && (*last).addr == *addr
            && (*last).jiffies == at
        {
            return true;
        }
        (*last).who = who;
        (*last).kind = kind;
        (*last).port = port;
        (*last).addr = *addr;
        (*last).jiffies = at;
    }
    false
}

/// Forgets this CPU's last write (an exec cleared that process's evidence).
#[inline(always)]
pub fn forget_recorded() {
    if let Some(last) = RECORDED.get_ptr_mut(0) {
        // SAFETY: a pointer to this CPU's slot of the map.
        unsafe { (*last).who = 0 };
    }
}

/// Whether `LW_PROCS` may hold `tgid` (no: it surely does not).
#[inline(always)]
pub fn maybe_tracked(tgid: u32) -> bool {
    byte_set(&TRACKED, tgid)
}

/// `tgid`'s note in `LW_TRACKED`: 0 (no entry), [`TRACKED_MAYBE`] or
/// [`TRACKED_LOST`]; an unreadable note reads as [`TRACKED_MAYBE`] (look
/// the entry up).
#[inline(always)]
pub fn note(tgid: u32) -> u8 {
    match byte_of(&TRACKED, tgid) {
        // SAFETY: a pointer into the map's value.
        Some(b) => unsafe { core::ptr::read_volatile(b) },
        None => TRACKED_MAYBE,
    }
}

/// Notes that `LW_PROCS` may hold `tgid`: before an entry is made, and
/// again at each write (which mends a note a racing removal cleared). A
/// lost process's note stays lost.
#[inline(always)]
pub fn mark(tgid: u32) {
    if let Some(b) = byte_of(&TRACKED, tgid) {
        // SAFETY: a pointer into the map's value; one byte per tgid, so
        // no other process's note shares the store.
        unsafe {
            if core::ptr::read_volatile(b) != TRACKED_LOST {
                core::ptr::write_volatile(b, TRACKED_MAYBE);
            }
        }
    }
}

/// Notes that `tgid`'s state was lost (`LW_PROCS` was full): until it
/// exits (or executes a program while the policy has no lineage rules: see
/// `process::start_over`), the process is judged network-facing
/// ([`evidence::UNTRACKED`]).
#[inline(always)]
pub fn lose(tgid: u32) {
    if let Some(b) = byte_of(&TRACKED, tgid) {
        // SAFETY: as in mark.
        unsafe { core::ptr::write_volatile(b, TRACKED_LOST) };
    }
}

/// Notes that a lost process is lost no longer ([`TRACKED_MAYBE`]: it may
/// have an entry).
#[inline(always)]
pub fn mark_found(tgid: u32) {
    if let Some(b) = byte_of(&TRACKED, tgid) {
        // SAFETY: as in mark.
        unsafe { core::ptr::write_volatile(b, TRACKED_MAYBE) };
    }
}

/// Removes `tgid`'s entry, and its note unless the process is lost.
#[inline(always)]
pub fn remove_entry(tgid: u32) {
    if note(tgid) == TRACKED_LOST {
        let _ = PROCS.remove(tgid);
    } else {
        remove(tgid);
    }
}

/// Removes `tgid`'s entry, then its note.
#[inline(always)]
pub fn remove(tgid: u32) {
    let _ = PROCS.remove(tgid);
    if let Some(b) = byte_of(&TRACKED, tgid) {
        // SAFETY: as in mark.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
}

/// `BPF_ANY` and `BPF_NOEXIST` of `bpf_map_update_elem`.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
/// `EEXIST`, which an insert with [`BPF_NOEXIST`] returns negated.
const EEXIST: i32 = 17;

/// Adds or replaces `tgid`'s state (see [`put`]).
#[inline(always)]
pub fn insert(tgid: u32, state: &ProcState) {
    put(tgid, state, BPF_ANY);
}

/// Inserts `tgid`'s state with `flags`; a failure other than an entry
/// already there (the map full) is counted and the process noted as lost
/// (its state is not silently gone: see [`TRACKED_LOST`]).
#[inline(always)]
fn put(tgid: u32, state: &ProcState, flags: u64) {
    mark(tgid);
    match PROCS.insert(tgid, state, flags) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {}
        Err(_) => {
            count(stats::UNTRACKED);
            lose(tgid);
        }
    }
}

/// The evidence a lost process is judged by: no peer, seen `at`.
#[inline(always)]
pub fn untracked(at: u64) -> Evidence {
    Evidence {
        addr: Addr { words: [0; 4] },
        ktime_ns: at,
        port: 0,
        kind: evidence::UNTRACKED,
        _pad: [0; 5],
    }
}

/// Which of a process's pieces of evidence makes it network-facing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Neither,
    Standing,
    Recent,
}

/// The evidence that makes a process network-facing at `now`: recent
/// evidence within `window_ns` first (it names the party behind this very
/// connect), else standing evidence.
#[inline(always)]
pub fn network_facing(state: &ProcState, now: u64, window_ns: u64) -> Which {
    // SAFETY: reads of a map value's fields (volatile: see connect's
    // sequence-lock section).
    let (recent, at, standing) = unsafe {
        (
            core::ptr::read_volatile(&state.recent.kind),
            core::ptr::read_volatile(&state.recent.ktime_ns),
            core::ptr::read_volatile(&state.standing.kind),
        )
    };
    if recent != evidence::NONE && elapsed(now, at) <= window_ns {
        Which::Recent
    } else if standing != evidence::NONE {
        Which::Standing
    } else {
        Which::Neither
    }
}

/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, as evidence is timed.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// How long before `now` the time `then` was; 0 when `then` is later: a
/// time another CPU took after this program read its clock (a wrapping
/// difference would make it about 584 years old).
#[inline(always)]
pub fn elapsed(now: u64, then: u64) -> u64 {
    now.saturating_sub(then)
}
