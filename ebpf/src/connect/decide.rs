//! What one policy generation says about a connect ([`decide`]), and
//! carrying it out ([`act`]).

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use loopwarden_common::{
    GenKey, NO_RULE, RELAY_RULE, Settings, evidence, flags, maps::TRACKED_LOST, stats, verdict,
};

use super::{
    ALLOW, Destination, REFUSE, browser_verdict, port_protected, record::record, rules::match_rules,
};
use crate::{
    identity::Task,
    maps::{HOST_ADDRS, PROCS, count, netns_in_scope, rd},
    names::Words,
    procs::{self, elapsed, now},
};

const EPERM: u32 = 1;

/// What one policy generation says about a connect. Computed without side
/// effects, so it can be thrown away if the generation changed meanwhile.
pub(super) struct Decision {
    /// Not a protected destination for this policy (or no policy).
    pub(super) pass: bool,
    /// [`verdict`] value; `report` false: allowed silently.
    pub(super) outcome: u8,
    pub(super) report: bool,
    pub(super) rule: u8,
    pub(super) deny_errno: u32,
    pub(super) netns_cookie: u64,
    pub(super) task: Task,
    pub(super) exe_file: u64,
    /// The relay window the judgement used.
    pub(super) window_ns: u64,
    /// Tag the connection with its origin if it proceeds.
    pub(super) tag: bool,
    /// A refusal by the relay verdict on recent evidence: [`act`] holds
    /// that evidence fresh once reported ([`hold_recent`]).
    pub(super) hold: bool,
    /// The caller's process: the report reads its `LW_PROCS` entry again
    /// (a pointer or a few-valued summary kept across the judgement would
    /// multiply the paths the verifier walks).
    pub(super) tgid: u32,
}

impl Decision {
    #[inline(always)]
    pub(super) fn pass() -> Self {
        Decision {
            pass: true,
            outcome: verdict::ALLOW,
            report: false,
            rule: NO_RULE,
            deny_errno: 0,
            netns_cookie: 0,
            task: Task::null(),
            exe_file: 0,
            window_ns: 0,
            tag: false,
            hold: false,
            tgid: 0,
        }
    }
}

/// Filters the destination and judges the caller by generation `g`, whose
/// settings are `settings`.
#[inline(always)]
pub(super) fn decide(
    ctx: &SockAddrContext,
    settings: &Settings,
    g: u32,
    dst: &Destination,
) -> Decision {
    // Read single fields in place: the full settings are copied only for a
    // connect that is actually judged.
    // SAFETY: a reference into the map's value.
    let policy_flags = unsafe { core::ptr::read_volatile(&settings.flags) };
    if policy_flags & flags::ENABLED == 0 {
        return Decision::pass();
    }
    if !dst.loopback
        && (policy_flags & flags::HOST_ADDRS == 0
            // SAFETY: the value is a plain u8 flag, only tested for presence.
            || unsafe { HOST_ADDRS.get(GenKey::new(g, dst.addr)).is_none() })
    {
        return Decision::pass();
    }
    if policy_flags & flags::ALL_PORTS == 0 && !port_protected(g, dst.port) {
        return Decision::pass();
    }
    // SAFETY: helper valid for cgroup sock_addr programs (5.8+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if !netns_in_scope(settings, g, policy_flags, netns_cookie) {
        return Decision::pass();
    }
    let s = settings;
    let task = Task::current();
    // NULL for kernel threads: every read through it then yields 0.
    let exe_file = task.exe_file();
    // Loads from the task, not `bpf_get_current_pid_tgid()`: the JIT reads
    // the current task inline (Linux 6.14 and later), a helper call costs
    // the connect tens of ns.
    let tgid = task.tgid();
    // What the tracking programs know of the caller, copied out of its
    // entry at once (a process without one reads the zeroed state: either
    // way the values are loads from map memory, so the verifier's paths
    // merge here), and compared only after the rules (a comparison's
    // result kept live across them would double the paths it walks).
    let note = procs::note(tgid);
    let found = if note != 0 { PROCS.get_ptr(tgid) } else { None };
    let p = match found {
        Some(p) => p,
        None => procs::empty(),
    };
    // SAFETY: a pointer to a map's value; volatile reads (see try_connect)
    // of its fields, the lineage 8-byte aligned (checked in
    // loopwarden_common).
    let tracked = unsafe {
        Tracked {
            script_hash: core::ptr::read_volatile(&(*p).script_hash),
            lineage: core::ptr::read_volatile((*p).lineage.as_ptr().cast()),
            recent_kind: core::ptr::read_volatile(&(*p).recent.kind),
            recent_at: core::ptr::read_volatile(&(*p).recent.ktime_ns),
            standing_kind: core::ptr::read_volatile(&(*p).standing.kind),
            note,
        }
    };
    let matched = match_rules(s, g, task, exe_file, &tracked);
    let recent = tracked.recent_kind != evidence::NONE
        && elapsed(now(), tracked.recent_at) <= rd!(s.relay_window_ns);
    let facing = tracked.note == TRACKED_LOST || tracked.standing_kind != evidence::NONE || recent;
    let mut rule = if matched == 0 {
        NO_RULE
    } else {
        matched.trailing_zeros() as u8
    };
    let bit = if matched == 0 { 0 } else { 1u64 << rule };
    let deny = if rd!(s.flags) & flags::ENFORCE != 0 {
        verdict::DENY
    } else {
        verdict::WOULD_DENY
    };
    let (mut outcome, mut report) = if bit & rd!(s.browser) != 0 {
        // A browser: the port's treatment of browsers decides.
        let v = browser_verdict(g, dst.port);
        (
            v,
            v != verdict::ALLOW || rd!(s.flags) & flags::LOG_ALLOWED != 0,
        )
    } else if bit & rd!(s.deny) != 0 {
        (deny, true)
    } else if bit & rd!(s.audit) != 0 {
        (verdict::AUDIT, true)
    } else {
        (verdict::ALLOW, rd!(s.flags) & flags::LOG_ALLOWED != 0)
    };
    // The relay verdict: a network-facing caller, unless a user's allow
    // rule or a browser-class rule (judged by the port alone) exempts it.
    // The stricter of it and the rule's verdict stands.
    let mut hold = false;
    if facing && rd!(s.flags) & flags::RELAY != 0 && bit & rd!(s.exempt) == 0 {
        let relay = if rd!(s.flags) & flags::RELAY_DENY != 0 {
            deny
        } else {
            verdict::AUDIT
        };
        if relay > outcome {
            outcome = relay;
            rule = RELAY_RULE;
            report = true;
            hold = relay == deny && recent;
        }
    }
    Decision {
        pass: false,
        outcome,
        report,
        rule,
        deny_errno: rd!(s.deny_errno),
        netns_cookie,
        task,
        exe_file,
        window_ns: rd!(s.relay_window_ns),
        tag: rd!(s.flags) & flags::PROVENANCE != 0,
        hold,
        tgid,
    }
}

/// A refusal by the relay verdict (`relay = "deny"`, enforcing or not) on
/// the caller's recent evidence holds that evidence as fresh as the
/// refusal (stamped once the decision is acted on, never by one a changed
/// generation threw away): a relay that tries again within the window of its last refusal
/// is refused again, and only one that keeps away for a whole window gets
/// through. (localtunnel tries a refused connect again every second, its
/// remote connection paused meanwhile, so that nothing is heard: with the
/// evidence timed from when it was heard, its third try went through.)
#[inline(always)]
fn hold_recent(tgid: u32) {
    if let Some(state) = PROCS.get_ptr_mut(tgid) {
        // SAFETY: a pointer to the map's value; a volatile store of one
        // aligned word (a tracker writing new evidence meanwhile writes
        // its own time, as recent).
        unsafe { core::ptr::write_volatile(&raw mut (*state).recent.ktime_ns, now()) };
    }
}

/// What `LW_PROCS` says of the caller: what rules match on, and its
/// evidence's kinds and time (compared after the rules).
pub(super) struct Tracked {
    pub(super) script_hash: u64,
    pub(super) lineage: Words,
    pub(super) recent_kind: u8,
    pub(super) recent_at: u64,
    pub(super) standing_kind: u8,
    /// Its `LW_TRACKED` note: [`TRACKED_LOST`] is a process whose state the
    /// full map could not take, judged network-facing.
    pub(super) note: u8,
}

/// Carries out a decision: counts, reports and refuses as it says.
#[inline(always)]
pub(super) fn act(
    ctx: &SockAddrContext,
    d: &Decision,
    dst: &Destination,
    family: u16,
    seq: u64,
) -> i32 {
    if d.pass {
        return ALLOW;
    }
    count(stats::CHECKED);
    if d.rule == RELAY_RULE {
        count(stats::RELAYED);
    }
    let tag = d.tag && d.outcome != verdict::DENY;
    if d.report || tag {
        record(ctx, d, dst, family, seq, tag);
    } else {
        // Unreported and untagged: an allow (every other verdict reports).
        count(stats::DECIDED_BY_VERDICT + u32::from(verdict::ALLOW));
    }
    // After the report, which says how old the evidence was.
    if d.hold {
        hold_recent(d.tgid);
    }
    if d.outcome != verdict::DENY {
        return ALLOW;
    }
    count(stats::DENIED);
    // Off unless the daemon runs with debug logging (AYA_LOG_LEVEL).
    debug!(
        ctx,
        "refused: pid {} to port {} by rule {}", d.tgid, dst.port, d.rule
    );
    if d.deny_errno != EPERM {
        // SAFETY: plain helper call; the negative errno replaces EPERM.
        unsafe { bpf_set_retval(-(d.deny_errno as i32)) };
    }
    REFUSE
}
