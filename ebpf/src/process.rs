//! Process tracepoints: keep `LW_PROCS` true to each process's life.
//!
//! - fork: a child process (not a thread) starts with a copy of its
//!   parent's state: socat's and sshd's forked children carry the accepted
//!   connection they were forked for, nginx's workers their master's
//!   listeners, a tunnel's children its lineage.
//! - exec: a new program starts with no evidence (a login shell execed by
//!   sshd is not sshd), unless its standard input or output is a TCP
//!   connection from a non-local peer (`stdio`), or, for a process that
//!   listened, it holds a connection accepted from one (`accepted`) or a
//!   listener on a non-loopback address (`listening`): see
//!   [`crate::inherited`]. It keeps its lineage, or takes its own if its
//!   file name is in a catalog rule that extends to descendants; an
//!   interpreter records the script on its command line.
//! - exit: the process's state goes with it.
//!
//! A process whose state `LW_PROCS`, full, could not take is noted lost
//! (`LW_TRACKED`), and so are the children it forks: it is judged
//! network-facing, never as a process nothing is known of, until it exits
//! or executes a program (then only when the policy has no lineage it may
//! have lost).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user_str},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use loopwarden_common::{
    ARGV0_READS, SCRIPT_LEN, SCRIPT_MAX_ARGS, ScriptOption, evidence, maps::TRACKED_LOST,
    script_hash, script_option,
};

use crate::{
    identity::{self, Task},
    inherited,
    maps::{PROCS, SETTINGS, generation},
    names::{self, Words, is_interpreter},
    procs::{self, Slot, entry, forget_recorded, insert, record},
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn lw_fork(ctx: BtfTracePointContext) -> i32 {
    let parent = Task(ctx.arg(0));
    let child = Task(ctx.arg(1));
    let (from, to) = (parent.tgid(), child.tgid());
    if from == to {
        return 0;
    }
    // An entry or a note left under the child's pid (a write that raced
    // its last holder's exit, evidence for a dead process's socket) is not
    // the child's.
    if procs::note(to) != 0 {
        procs::remove(to);
    }
    // A lost parent's state (the map was full) is its child's too.
    if procs::note(from) == TRACKED_LOST {
        procs::lose(to);
    }
    // The value is copied by the map straight from the parent's entry.
    if let Some(state) = PROCS.get_ptr(from) {
        // SAFETY: a pointer to the map's value, valid for this run.
        insert(to, unsafe { &*state });
    }
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn lw_exit(ctx: BtfTracePointContext) -> i32 {
    let task = Task(ctx.arg(0));
    let tgid = task.tgid();
    // The last thread's exit ends the process's entry: not the main
    // thread's while others live on (its pid stays theirs), nor that of the
    // main thread an exec from another thread replaces (the exec keeps the
    // lineage). Without the offsets, the main thread's.
    let last = match task.threads_alive() {
        Some(alive) => alive <= 0,
        None => task.pid() == tgid,
    };
    if last {
        procs::remove(tgid);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn lw_exec(_ctx: BtfTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let task = Task::current();
    let listened = start_over(tgid, task);
    // A program run with its connection as stdio is that connection's
    // (any listener it also holds keeps its owner).
    if let Some((addr, port)) = inherited::stdio_peer(task) {
        record(tgid, Slot::Standing, evidence::STDIO, addr, port);
    } else if listened {
        inherited::claim_descriptors(tgid, task);
    }
    0
}

/// The state an exec leaves: no evidence; the lineage kept or taken from
/// the new file name; the script, if an interpreter runs one. Whether the
/// process listened before (standing `listening` or `accepted` evidence,
/// or state it lost): its new program may hold the listener still.
#[inline(always)]
fn start_over(tgid: u32, task: Task) -> bool {
    let name = identity::exe_name_words(task.exe_file());
    let lineage = inherited_key(&name);
    let catalogued = lineage.is_some();
    let interpreter = is_interpreter(&name);
    let mut script = [0u64; SCRIPT_LEN / 8];
    if interpreter {
        // SAFETY: same size, u8 has no alignment requirement.
        read_script(task, unsafe {
            &mut *script.as_mut_ptr().cast::<[u8; SCRIPT_LEN]>()
        });
    }
    forget_recorded();
    // A lost process's evidence would have gone with this exec: it stays
    // lost only for a lineage it may have had, which an exec keeps.
    let lost = procs::note(tgid) == TRACKED_LOST;
    if lost && !lineage_rules() {
        procs::mark_found(tgid);
    }
    let state = match PROCS.get_ptr_mut(tgid) {
        Some(s) => s,
        None if catalogued || script[0] != 0 => match entry(tgid) {
            Some(s) => s,
            None => return lost,
        },
        None => return lost,
    };
    // SAFETY: a pointer to the map's value, valid for this run; only this
    // process's exec writes its lineage and script.
    unsafe {
        let listened = lost || evidence::listens((*state).standing.kind);
        (*state).standing.kind = evidence::NONE;
        (*state).recent.kind = evidence::NONE;
        let stored = (*state).lineage.as_mut_ptr().cast::<Words>();
        if let Some(key) = lineage {
            *stored = key;
        }
        let hash = if script[0] == 0 {
            0
        } else {
            script_hash(&*script.as_ptr().cast::<[u8; SCRIPT_LEN]>())
        };
        *(*state).script.as_mut_ptr().cast::<[u64; SCRIPT_LEN / 8]>() = script;
        (*state).script_hash = hash;
        if (*stored)[0] == 0 && hash == 0 {
            procs::remove_entry(tgid);
        }
        listened
    }
}

/// Whether the policy in force has catalog rules that extend to
/// descendants (a lineage a process can inherit).
#[inline(always)]
fn lineage_rules() -> bool {
    match SETTINGS.get_ptr(generation()) {
        // SAFETY: a pointer into the map's value.
        Some(live) => (unsafe { core::ptr::read_volatile(&(*live).inherited) }) != 0,
        None => false,
    }
}

/// The key (exact or prefix form) through which a catalog rule that
/// extends to descendants names this file name; `None` if none does. Read
/// without the policy's sequence lock: a policy switch racing an exec can
/// at worst give that one process a lineage one of the two policies would
/// give it.
#[inline(always)]
fn inherited_key(name: &Words) -> Option<Words> {
    let g = generation();
    let live = SETTINGS.get_ptr(g)?;
    // SAFETY: a reference into the map's value.
    let live = unsafe { &*live };
    let inherited = live.inherited;
    if inherited == 0 {
        return None;
    }
    names::first_key(g, live, name, inherited)
}

/// The interpreter's first operand (the script) into `out`, NUL-padded:
/// options are skipped as [`script_option`] says, and where it says none
/// can be named (code or a module runs, or an option may take the next
/// argument), none is.
#[inline(always)]
fn read_script(task: Task, out: &mut [u8; SCRIPT_LEN]) {
    let (at, end) = task.args();
    let mut buf = [0u64; SCRIPT_LEN / 8];
    let Some(mut at) = past_argv0(at, end, &mut buf) else {
        return;
    };
    let mut operand_next = false;
    for _ in 1..SCRIPT_MAX_ARGS {
        if at >= end {
            return;
        }
        // Zeroed first: the helper stops at the NUL, and an earlier,
        // longer argument's bytes would follow it.
        buf = [0u64; SCRIPT_LEN / 8];
        let n = read_str(&mut buf, at);
        if n <= 0 {
            return;
        }
        at += n as u64;
        // SAFETY: same size, u8 has no alignment requirement.
        let arg = unsafe { &*buf.as_ptr().cast::<[u8; SCRIPT_LEN]>() };
        if !operand_next && arg[0] == b'-' {
            // An option that may have been cut short: the next argument
            // cannot be found.
            if n as usize >= SCRIPT_LEN {
                return;
            }
            match script_option(arg) {
                ScriptOption::Skip => {}
                ScriptOption::OperandNext => operand_next = true,
                ScriptOption::NoScript => return,
            }
            continue;
        }
        *out = *arg;
        return;
    }
}

/// Where the argument after `argv[0]` (which starts at `at`) begins. A long
/// `argv[0]` (an interpreter run by a long path, as a shebang in a Nix store
/// names it) is read on from where a read stopped, [`ARGV0_READS`] reads in
/// all; `None` if it does not end within them, or cannot be read.
#[inline(always)]
fn past_argv0(mut at: u64, end: u64, buf: &mut [u64; SCRIPT_LEN / 8]) -> Option<u64> {
    if at == 0 || at >= end {
        return None;
    }
    for _ in 0..ARGV0_READS {
        let n = read_str(buf, at);
        if n <= 0 {
            return None;
        }
        if (n as usize) < SCRIPT_LEN {
            return Some(at + n as u64);
        }
        // Cut short (or exactly `SCRIPT_LEN - 1` long): the next read starts
        // at its last byte read, or at its NUL.
        at += (SCRIPT_LEN - 1) as u64;
    }
    None
}

/// `bpf_probe_read_user_str` of at most `SCRIPT_LEN` bytes at user address
/// `at` into `buf`: the length read, NUL included, or a negative errno.
#[inline(always)]
fn read_str(buf: &mut [u64; SCRIPT_LEN / 8], at: u64) -> i64 {
    // SAFETY: the helper checks the source and writes at most SCRIPT_LEN
    // bytes, NUL included, into the buffer.
    unsafe { bpf_probe_read_user_str(buf.as_mut_ptr().cast(), SCRIPT_LEN as u32, at as *const _) }
}
