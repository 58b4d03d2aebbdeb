//! The connect's record: kept as the connection's origin, reported into
//! the ring buffers, and the reader's wakeups.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_get_socket_cookie,
    maps::ring_buf::RingBufEntry,
    programs::SockAddrContext,
};
use loopwarden_common::{
    COMM_LEN, ConnectEvent, EXE_NAME_LEN, Evidence, SCRIPT_LEN, evidence, maps::TRACKED_LOST,
    stats, verdict,
};

use super::{Destination, decide::Decision};
use crate::{
    identity::{self, Task},
    maps::{DENIALS, EVENTS, PROCS, count},
    origin::{self, Pending, PendingCopy},
    procs::{self, now},
};

/// This CPU's claimed copy of a pending entry, given back when dropped
/// (after the last read of the record in it).
struct CopyHeld(*mut PendingCopy);

impl Drop for CopyHeld {
    fn drop(&mut self) {
        origin::release_copy(self.0);
    }
}

/// Queued bytes (a quarter of the ring) past which every report wakes the reader.
const WAKEUP_BACKLOG: u64 = 256 * 1024;

/// Reports the verdict of a guard other than the rules (the bind guard's
/// [`loopwarden_common::BIND_RULE`], the egress guard's
/// [`loopwarden_common::EGRESS_RULE_BASE`]` + r`) about the calling process, the way a
/// connect's report is made; `at` is the address the guard judged.
#[inline(always)]
pub fn report_guard(
    ctx: &SockAddrContext,
    at: &Destination,
    family: u16,
    seq: u64,
    outcome: u8,
    rule: u8,
    netns_cookie: u64,
) {
    let task = Task::current();
    let d = Decision {
        pass: false,
        outcome,
        report: true,
        rule,
        deny_errno: 0,
        netns_cookie,
        task,
        exe_file: task.exe_file(),
        window_ns: 0,
        tag: false,
        hold: false,
        tgid: task.tgid(),
    };
    // Written straight into the ring buffer.
    match reserve(outcome) {
        None => {
            count(stats::DROPPED);
            count(stats::DROPPED_BY_VERDICT + u32::from(outcome & 3));
        }
        Some((mut entry, in_denials)) => {
            // SAFETY: plain helper call valid for sock_addr programs.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            fill(entry.as_mut_ptr(), cookie, &d, at, family, seq, now());
            entry.submit(wakeup_flags(in_denials));
            count(stats::REPORTED);
        }
    }
}

/// A record for a report of `outcome`, and whether it is in `LW_DENIALS`
/// (for the wakeup). A refusal's goes in `LW_DENIALS`, and so does the
/// refusal audit mode would have made (`would-deny`: what an operator
/// rolling out in audit mode is looking for), or, when that ring is full,
/// in `LW_EVENTS`: they are lost only once both are full (about 4,960
/// records; `LW_DENIALS` alone carries a fast refusal flood over only some
/// 35 ms of the reader off the CPU). Every other report's goes in
/// `LW_EVENTS`, which a flood of those may fill without touching
/// `LW_DENIALS`. A refusal tries `LW_EVENTS` only when `LW_DENIALS` is
/// full: this costs it nothing otherwise.
#[inline(always)]
fn reserve(outcome: u8) -> Option<(RingBufEntry<ConnectEvent>, bool)> {
    let refusal = outcome == verdict::DENY || outcome == verdict::WOULD_DENY;
    if refusal && let Some(entry) = DENIALS.reserve::<ConnectEvent>(0) {
        return Some((entry, true));
    }
    EVENTS
        .reserve::<ConnectEvent>(0)
        .map(|entry| (entry, false))
}

/// Waking the reader costs about as much as the rest of the report (an
/// irq_work per event), so reports are collected by the daemon's periodic
/// drain, and only these wake it at once (`denials`: the record is in
/// `LW_DENIALS`; a refusal spilled into `LW_EVENTS` is woken for as the
/// other reports there are):
/// - a refusal (or would-deny) that finds `LW_DENIALS` empty, and then one
///   in [`WAKEUP_EVERY`] while any are queued;
/// - in `LW_EVENTS`, past a backlog of [`WAKEUP_BACKLOG`] bytes, one record
///   in [`WAKEUP_EVERY`].
///
/// A reader already awake is not woken again for every record, and a wakeup
/// it missed (it found the next record still being written and went back to
/// sleep, or two CPUs raced past the mark) is made up a few records later,
/// long before the ring buffer fills. Every record in a ring has the same
/// size, so the queued bytes count whole records.
#[inline(always)]
fn wakeup_flags(denials: bool) -> u64 {
    let record = RECORD_BYTES;
    // Includes the record being submitted (reserved space counts).
    let queued = if denials {
        DENIALS.query(BPF_RB_AVAIL_DATA as u64)
    } else {
        EVENTS.query(BPF_RB_AVAIL_DATA as u64)
    };
    let backlog = if denials { record } else { WAKEUP_BACKLOG };
    if (denials && queued <= record)
        || (queued >= backlog && (queued / record).is_multiple_of(WAKEUP_EVERY))
    {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Bytes one report takes in a ring buffer: the record and its 8-byte header.
const RECORD_BYTES: u64 = (core::mem::size_of::<ConnectEvent>() as u64 + 8 + 7) & !7;
/// Past the backlog, one record in this many wakes the reader.
const WAKEUP_EVERY: u64 = 32;

/// Writes the connect's record: kept as the connection's origin if `tag`
/// (built in place in its `LW_ORIGIN_PENDING` entry, see
/// [`crate::origin`]), and reported (into the ring [`reserve`] picks) if
/// the decision says so: copied from the origin, or
/// built in place in the ring buffer. No per-CPU scratch: a cgroup program
/// can be preempted (it only runs with migration disabled), so another
/// task's connect on the same CPU could overwrite it mid-record. A full
/// ring buffer counts the loss by verdict: userspace reports it.
#[inline(always)]
pub(super) fn record(
    ctx: &SockAddrContext,
    d: &Decision,
    dst: &Destination,
    family: u16,
    seq: u64,
    tag: bool,
) {
    // SAFETY: plain helper call valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // One clock read: the connect's time, its slot's claim, and the
    // evidence's age at it.
    let at = now();
    // A connect whose slots are taken builds its entry in this CPU's copy
    // (given back once the report below has read it), and hands it to the
    // map whole.
    let mut copy = None;
    let kept = match tag.then(|| origin::connecting(cookie, dst.port, at)) {
        Some(Pending::Slot(ev)) => Some(ev),
        Some(Pending::Map) => {
            copy = origin::claim_copy().map(CopyHeld);
            copy.as_ref().map(|held| origin::copy_origin(held.0))
        }
        None => None,
    };
    match kept {
        Some(ev) => {
            fill(ev, cookie, d, dst, family, seq, at);
            decided(ev);
        }
        // No origin kept (this CPU's copy was another connect's): counted
        // here unless a report counts it.
        None if tag && !d.report => count(stats::DECIDED_BY_VERDICT + u32::from(d.outcome & 3)),
        None => {}
    }
    if let Some(held) = &copy {
        origin::pend(cookie, held.0);
    }
    if !d.report {
        return;
    }
    let Some((mut entry, in_denials)) = reserve(d.outcome) else {
        count(stats::DROPPED);
        count(stats::DROPPED_BY_VERDICT + u32::from(d.outcome & 3));
        if kept.is_none() {
            count(stats::DECIDED_BY_VERDICT + u32::from(d.outcome & 3));
        }
        return;
    };
    let out = entry.as_mut_ptr();
    match kept {
        // SAFETY: a reserved, exclusively owned record of the right size,
        // written whole from this socket's own pending entry.
        Some(ev) => unsafe { out.write(core::ptr::read(ev)) },
        None => {
            fill(out, cookie, d, dst, family, seq, at);
            decided(out);
        }
    }
    entry.submit(wakeup_flags(in_denials));
    count(stats::REPORTED);
}

/// Counts the decision `ev` records, by its verdict as read back from the
/// record: the verifier then knows the index only as a number from memory,
/// so the paths that reached here with different verdicts are walked once
/// (a constant index per path would be walked once per verdict).
#[inline(always)]
pub(super) fn decided(ev: *const ConnectEvent) {
    // SAFETY: a record this program owns and has just written.
    let v = unsafe { core::ptr::read_volatile(&(*ev).verdict) };
    count(stats::DECIDED_BY_VERDICT + u32::from(v & 3));
}

/// Writes every field of the record at `ev` (reserved memory is not
/// zeroed), made at `at` (CLOCK_MONOTONIC).
#[inline(always)]
fn fill(
    ev: *mut ConnectEvent,
    cookie: u64,
    d: &Decision,
    dst: &Destination,
    family: u16,
    seq: u64,
    at: u64,
) {
    let (task, exe_file) = (d.task, d.exe_file);
    let parent = task.parent();
    let uid_gid = task.uid_gid();
    // SAFETY: `ev` points at a record this program owns (the socket's
    // pending origin or a reserved ring-buffer record); fields are written
    // through raw pointers.
    unsafe {
        (*ev).ktime_ns = at;
        (*ev).policy_seq = seq;
        (*ev).netns_cookie = d.netns_cookie;
        let (start, forked) = task.process_start();
        (*ev).start_boottime_ns = start;
        (*ev).cgroup_id = task.cgroup_id();
        (*ev).exe = identity::exe_key(exe_file);
        (*ev).daddr = dst.addr;
        (*ev).tgid = d.tgid;
        (*ev).pid = task.pid();
        (*ev).ppid = parent.tgid();
        (*ev).uid = uid_gid as u32;
        (*ev).gid = (uid_gid >> 32) as u32;
        (*ev).dport = dst.port;
        (*ev).family = family;
        (*ev).verdict = d.outcome;
        (*ev).rule = d.rule;
        (*ev).forked = u8::from(forked);
        (*ev)._pad0 = 0;
        (*ev)._pad1 = 0;
        (*ev)
            .comm
            .as_mut_ptr()
            .cast::<[u64; COMM_LEN / 8]>()
            .write_unaligned(task.comm_words());
        (*ev)
            .exe_name
            .as_mut_ptr()
            .cast::<[u64; EXE_NAME_LEN / 8]>()
            .write_unaligned(identity::exe_name_words(exe_file));
        let script = (*ev).script.as_mut_ptr().cast::<[u64; SCRIPT_LEN / 8]>();
        let note = procs::note(d.tgid);
        let found = if note != 0 {
            PROCS.get_ptr(d.tgid)
        } else {
            None
        };
        match found {
            None => {
                (*ev).via = Evidence::NONE;
                script.write_unaligned([0; SCRIPT_LEN / 8]);
            }
            Some(state) => {
                (*ev).via = match procs::network_facing(&*state, at, d.window_ns) {
                    procs::Which::Standing => (*state).standing,
                    procs::Which::Recent => (*state).recent,
                    procs::Which::Neither => Evidence::NONE,
                };
                script.write_unaligned(core::ptr::read_volatile((*state).script.as_ptr().cast()));
            }
        }
        // A lost process's state is not in the map: what it is judged by.
        if note == TRACKED_LOST && (*ev).via.kind == evidence::NONE {
            (*ev).via = procs::untracked(at);
        }
        // Written last: a connect preempted mid-record for longer than any
        // handshake, whose slot another connect took over meanwhile, ends
        // its late writes with its own cookie, which is not the other's.
        // (A pending entry is built in this CPU's copy and handed to the
        // map whole: no connect writes into a map element another may
        // have been given.) The barrier keeps the compiler from moving the
        // plain stores above after it.
        crate::atomic::barrier();
        core::ptr::write_volatile(&raw mut (*ev).socket_cookie, cookie);
    }
}
