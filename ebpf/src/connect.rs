//! The connect4/connect6 hooks: destination filter, identity, rule match,
//! verdict.
//!
//! Return value: 1 lets connect() proceed; 0 refuses it. With
//! `bpf_set_retval(-errno)` before returning 0 the caller sees that errno
//! instead of EPERM (kernel/bpf/cgroup.c, `__cgroup_bpf_run_filter_sock_addr`).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, bpf_sock_addr},
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm, bpf_get_netns_cookie,
        bpf_get_socket_cookie, bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    maps::HashMap,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use loopwarden_common::{
    Addr, COMM_LEN, ConnectEvent, EXE_NAME_LEN, Evidence, GenKey, MAX_ANCESTORS,
    MAX_CGROUP_LEVELS_USED, NO_RULE, PORT_WORDS, RELAY_RULE, SCRIPT_LEN, Settings, evidence,
    exe_filter_value, flags, stats, verdict,
};

use crate::{
    addr::V4_MAPPED_WORD,
    egress,
    identity::{self, Task},
    maps::{
        ATTEMPTS, BROWSER_PORTS, DENIALS, EVENTS, HOST_ADDRS, NETNS, PORTS, PROCS, RULES_ANCESTOR,
        RULES_CGROUP, RULES_COMM, RULES_EXE, RULES_SCRIPT, RULES_UID, SETTINGS, count, generation,
        in_filter, mask, rd,
    },
    names::{self, Words},
    origin,
    procs::{self, now},
    sockets,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const SOCK_STREAM: u32 = 1;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_MPTCP: u32 = 262;
const EPERM: u32 = 1;
/// Queued bytes (a quarter of the ring) past which every report wakes the reader.
const WAKEUP_BACKLOG: u64 = 256 * 1024;

#[cgroup_sock_addr(connect4)]
pub fn lw_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET) {
        Ok(v) | Err(v) => v,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn lw_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, AF_INET6) {
        Ok(v) | Err(v) => v,
    }
}

/// Where the connect goes, as read from the context (for recvmsg: where
/// the datagram came from).
pub struct Destination {
    pub addr: Addr,
    pub port: u16,
    pub loopback: bool,
}

#[inline(always)]
pub fn destination(sa: *const bpf_sock_addr, family: u16) -> Destination {
    // SAFETY: `sa` is the context pointer the kernel passed us. Each field is
    // read with its own 32-bit load: the verifier rejects wider loads of
    // user_ip6, and volatile keeps LLVM from merging them.
    unsafe {
        let port = u16::from_be(core::ptr::read_volatile(&(*sa).user_port) as u16);
        if family == AF_INET {
            let ip4 = core::ptr::read_volatile(&(*sa).user_ip4);
            Destination {
                addr: Addr {
                    words: [0, 0, V4_MAPPED_WORD.to_be(), ip4],
                },
                port,
                loopback: is_local_v4(u32::from_be(ip4)),
            }
        } else {
            let w = [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ];
            let high_zero = w[0] == 0 && w[1] == 0;
            let last = u32::from_be(w[3]);
            // `::1`, `::` (the kernel connects it to `::1`), and the
            // IPv4-mapped forms of the local IPv4 destinations.
            let loopback = high_zero
                && ((w[2] == 0 && last <= 1)
                    || (u32::from_be(w[2]) == V4_MAPPED_WORD && is_local_v4(last)));
            Destination {
                addr: Addr { words: w },
                port,
                loopback,
            }
        }
    }
}

/// 127.0.0.0/8, and 0.0.0.0, which the kernel routes to 127.0.0.1 after this
/// hook has run (`ip_route_connect`): host order.
#[inline(always)]
fn is_local_v4(ip: u32) -> bool {
    ip >> 24 == 127 || ip == 0
}

#[inline(always)]
fn port_protected(generation: u32, port: u16) -> bool {
    match PORTS.get_ptr(generation * PORT_WORDS + u32::from(port >> 6)) {
        // SAFETY: a pointer into the map's value (volatile: see try_connect).
        Some(word) => (unsafe { core::ptr::read_volatile(word) } >> (port & 63)) & 1 == 1,
        None => false,
    }
}

/// The verdict a browser-class rule gets at `port` in generation `g`
/// (userspace resolved the port's `[browsers]` treatment and the mode into
/// it): one load, and a number from map memory, so the verifier walks one
/// path for all four verdicts.
#[inline(always)]
fn browser_verdict(g: u32, port: u16) -> u8 {
    let (index, shift) = loopwarden_common::browser_slot(g, port);
    match BROWSER_PORTS.get_ptr(index) {
        // SAFETY: a pointer into the map's value (volatile: see try_connect).
        Some(word) => {
            loopwarden_common::browser_verdict(unsafe { core::ptr::read_volatile(word) }, shift)
        }
        None => verdict::ALLOW,
    }
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: u16) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // Cheapest rejections first: most connects on a host are not TCP to loopback.
    // SAFETY: context reads of fields the sock_addr program type may read.
    let (sock_type, protocol) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).type_),
            core::ptr::read_volatile(&(*sa).protocol),
        )
    };
    if sock_type != SOCK_STREAM || (protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP) {
        return Ok(ALLOW);
    }
    let dst = destination(sa, family);
    // The egress guard (SSRF after DNS): every destination, before the
    // protected-destination judgement. Both are BPF subprograms: the
    // verifier walks the judgement once after the guard's paths (they
    // meet at the call with the same few registers), and the two stack
    // frames are never live together.
    if egress::on() && egress::refuses(ctx, &dst, family) {
        return Ok(REFUSE);
    }
    Ok(judge_connect(ctx, &dst, family))
}

/// The protected-destination judgement of a TCP connect to `dst`.
#[inline(never)]
fn judge_connect(ctx: &SockAddrContext, dst: &Destination, family: u16) -> i32 {
    if !dst.loopback {
        // Not judged here (unless it is a protected host address), but
        // once its handshake completes the caller has connected to a
        // non-local peer: `connected` evidence (see `sockets`).
        // SAFETY: plain helper call valid for sock_addr programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        sockets::connecting(cookie, Task::current().tgid());
    }
    for _ in 0..ATTEMPTS {
        // One generation slot for the whole decision, read under its
        // sequence lock: `seq` before and after must agree (and be even),
        // or the slot was rewritten while we read it and we start again from
        // the generation now in force.
        let generation = generation();
        let Some(settings) = SETTINGS.get_ptr(generation) else {
            return ALLOW;
        };
        // Every load of policy memory in between is volatile too (or a
        // helper call), so the compiler keeps them all between the two
        // `seq` loads; x86-64 keeps loads in program order (the kernel's
        // seqcount readers rely on the same).
        // SAFETY: a pointer into the map's value.
        let seq = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        // SAFETY: as above; the copy is checked by the second `seq` read.
        let decision = decide(ctx, unsafe { &*settings }, generation, dst);
        // SAFETY: as above.
        let again = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        if seq != again || seq & 1 == 1 {
            count(stats::RETRIED);
            continue;
        }
        return act(ctx, &decision, dst, family, seq);
    }
    count(stats::RACED);
    ALLOW
}

/// What one policy generation says about a connect. Computed without side
/// effects, so it can be thrown away if the generation changed meanwhile.
struct Decision {
    /// Not a protected destination for this policy (or no policy).
    pass: bool,
    /// [`verdict`] value; `report` false: allowed silently.
    outcome: u8,
    report: bool,
    rule: u8,
    deny_errno: u32,
    netns_cookie: u64,
    task: Task,
    exe_file: u64,
    /// The relay window the judgement used.
    window_ns: u64,
    /// Tag the connection with its origin if it proceeds.
    tag: bool,
    /// The caller's process: the report reads its `LW_PROCS` entry again
    /// (a pointer or a few-valued summary kept across the judgement would
    /// multiply the paths the verifier walks).
    tgid: u32,
}

impl Decision {
    #[inline(always)]
    fn pass() -> Self {
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
            tgid: 0,
        }
    }
}

/// Filters the destination and judges the caller by generation `g`, whose
/// settings are `settings`.
#[inline(always)]
fn decide(ctx: &SockAddrContext, settings: &Settings, g: u32, dst: &Destination) -> Decision {
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
    // SAFETY: the value is a plain u8 flag, only tested for presence.
    if policy_flags & flags::NETNS_SCOPED != 0
        && unsafe { NETNS.get(GenKey::new(g, netns_cookie)).is_none() }
    {
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
    let found = if procs::maybe_tracked(tgid) {
        PROCS.get_ptr(tgid)
    } else {
        None
    };
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
        }
    };
    let matched = match_rules(s, g, task, exe_file, &tracked);
    let facing = tracked.standing_kind != evidence::NONE
        || (tracked.recent_kind != evidence::NONE
            && now().wrapping_sub(tracked.recent_at) <= rd!(s.relay_window_ns));
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
        tgid,
    }
}

/// What `LW_PROCS` says of the caller: what rules match on, and its
/// evidence's kinds and time (compared after the rules).
struct Tracked {
    script_hash: u64,
    lineage: Words,
    recent_kind: u8,
    recent_at: u64,
    standing_kind: u8,
}

/// Carries out a decision: counts, reports and refuses as it says.
#[inline(always)]
fn act(ctx: &SockAddrContext, d: &Decision, dst: &Destination, family: u16, seq: u64) -> i32 {
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
        tgid: task.tgid(),
    };
    // Written straight into the ring buffer.
    let deny = outcome == verdict::DENY;
    let reserved = if deny {
        DENIALS.reserve::<ConnectEvent>(0)
    } else {
        EVENTS.reserve::<ConnectEvent>(0)
    };
    match reserved {
        None => {
            count(stats::DROPPED);
            count(stats::DROPPED_BY_VERDICT + u32::from(outcome & 3));
        }
        Some(mut entry) => {
            // SAFETY: plain helper call valid for sock_addr programs.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            fill(entry.as_mut_ptr(), cookie, &d, at, family, seq);
            entry.submit(wakeup_flags(deny));
            count(stats::REPORTED);
        }
    }
}

/// Bitmask of the rules that match the caller. An attribute no rule
/// constrains (every active rule is in its wildcard mask) is not even read;
/// cheap attributes go first, so a connect no rule can match stops early.
/// Nothing is cached between steps: fewer branches keep the verifier's work
/// (and so the oldest supported kernels' budget) small.
#[inline(always)]
fn match_rules(s: &Settings, g: u32, task: Task, exe_file: u64, tracked: &Tracked) -> u64 {
    let mut m = rd!(s.active);
    if m & !rd!(s.wild_uid) != 0 {
        let uid = task.uid_gid() as u32;
        m &= mask(&RULES_UID, &GenKey::new(g, uid)) | rd!(s.wild_uid);
    }
    if m & !rd!(s.wild_comm) != 0 {
        // The thread's own name or its process's (the main thread's): a
        // process cannot slip past a comm rule by connecting from a thread
        // it renamed, and a rule naming a thread still matches it.
        let thread = CommKey::current(g);
        let process = CommKey::of_task(g, task.group_leader());
        m &= mask(&RULES_COMM, thread.key()) | mask(&RULES_COMM, process.key()) | rd!(s.wild_comm);
    }
    // Names and executables are first checked against the settings'
    // filters: a client no rule names (the common case) skips the lookups.
    if m & !rd!(s.wild_exe_name) != 0 {
        // The name's head is checked first; only a possible match reads
        // the whole name.
        let mut named = if names::may_be_named(s, &identity::exe_name_head(exe_file)) {
            names::name_mask(g, s, &identity::exe_name_words(exe_file))
        } else {
            0
        };
        // Catalog rules that extend to descendants also match through the
        // lineage the caller inherited: the key that named its catalogued
        // ancestor.
        if tracked.lineage[0] != 0 && rd!(s.inherited) != 0 {
            named |= names::key_mask(g, s, &tracked.lineage) & rd!(s.inherited);
        }
        m &= named | rd!(s.wild_exe_name);
    }
    if m & !rd!(s.wild_script) != 0 {
        m &= mask(&RULES_SCRIPT, &GenKey::new(g, tracked.script_hash)) | rd!(s.wild_script);
    }
    if m & !rd!(s.wild_exe) != 0 {
        let exe = identity::exe_key(exe_file);
        let named = if in_filter(&s.exe_filter, exe_filter_value(&exe)) {
            mask(&RULES_EXE, &GenKey::new(g, exe))
        } else {
            0
        };
        m &= named | rd!(s.wild_exe);
    }
    if m & !rd!(s.wild_cgroup) != 0 {
        m &= cgroup_mask(&RULES_CGROUP, g, rd!(s.cgroup_levels)) | rd!(s.wild_cgroup);
    }
    if m & !rd!(s.wild_ancestor) != 0 && rd!(s.flags) & flags::ANCESTORS != 0 {
        m &= ancestor_mask(g, task) | rd!(s.wild_ancestor);
    }
    m
}

/// A `GenKey<[u8; COMM_LEN]>` for the caller's comm, built from words
/// (zeroed and compared a word at a time).
#[repr(C)]
struct CommKey {
    generation: u32,
    _pad: u32,
    comm: [u64; COMM_LEN / 8],
}

impl CommKey {
    /// The calling thread's comm. (Here a helper's copy, not
    /// [`Task::comm_words`]: comm values loaded into registers make the
    /// verifier walk the rest of the rules for tens of thousands more
    /// instructions.)
    #[inline(always)]
    fn current(generation: u32) -> Self {
        let mut key = CommKey {
            generation,
            _pad: 0,
            comm: [0; COMM_LEN / 8],
        };
        // SAFETY: the helper writes at most COMM_LEN bytes (NUL-padded) into
        // our buffer; on failure it zeroes it.
        unsafe { bpf_get_current_comm(key.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
        key
    }

    /// The comm of `task` (read from kernel memory).
    #[inline(always)]
    fn of_task(generation: u32, task: Task) -> Self {
        let mut key = CommKey {
            generation,
            _pad: 0,
            comm: [0; COMM_LEN / 8],
        };
        // SAFETY: same size, u8 has no alignment requirement.
        task.comm(unsafe { &mut *key.comm.as_mut_ptr().cast::<[u8; COMM_LEN]>() });
        key
    }

    #[inline(always)]
    fn key(&self) -> &GenKey<[u8; COMM_LEN]> {
        // SAFETY: same size and field offsets (both #[repr(C)]); the view
        // needs less alignment than the words have.
        unsafe { &*(self as *const Self).cast::<GenKey<[u8; COMM_LEN]>>() }
    }
}

/// Rules of `map` (`LW_RULES_CGROUP`, `LW_EGRESS_CGROUP`) naming one of the
/// caller's cgroup ancestors (or its own cgroup) at the levels some rule
/// names a cgroup at: at most [`MAX_CGROUP_LEVELS_USED`] distinct levels
/// (userspace enforces it).
#[inline(always)]
pub fn cgroup_mask(map: &HashMap<GenKey<u64>, u64>, g: u32, levels: u32) -> u64 {
    let mut m = 0u64;
    let mut left = levels;
    for _ in 0..MAX_CGROUP_LEVELS_USED {
        if left == 0 {
            break;
        }
        let level = left.trailing_zeros();
        left &= left - 1;
        // SAFETY: plain helper call; 0 means the caller is above `level`.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        m |= mask(map, &GenKey::new(g, id));
    }
    m
}

/// Rules naming the caller's parent (as parent or ancestor) or an earlier
/// ancestor's executable, up to [`MAX_ANCESTORS`] generations.
#[inline(always)]
fn ancestor_mask(g: u32, task: Task) -> u64 {
    let parent = task.parent();
    let mut m = match RULES_ANCESTOR.get_ptr(GenKey::new(g, parent.exe())) {
        Some(v) => {
            // SAFETY: a pointer into the map's value (volatile: see try_connect).
            let v = unsafe { core::ptr::read_volatile(v) };
            v.parent | v.ancestor
        }
        None => 0,
    };
    let mut cur = parent;
    for _ in 1..MAX_ANCESTORS {
        // Stop at init (tgid 1) or a NULL parent (reads as 0).
        if cur.tgid() <= 1 {
            break;
        }
        cur = cur.parent();
        if let Some(v) = RULES_ANCESTOR.get_ptr(GenKey::new(g, cur.exe())) {
            // SAFETY: as above.
            m |= unsafe { core::ptr::read_volatile(v) }.ancestor;
        }
    }
    m
}

/// Waking the reader costs about as much as the rest of the report (an
/// irq_work per event), so reports are collected by the daemon's periodic
/// drain, and only these wake it at once:
/// - a refusal that finds `LW_DENIALS` empty, and then one refusal in
///   [`WAKEUP_EVERY`] while any are queued;
/// - in `LW_EVENTS`, past a backlog of [`WAKEUP_BACKLOG`] bytes, one record
///   in [`WAKEUP_EVERY`].
///
/// A reader already awake is not woken again for every record, and a wakeup
/// it missed (it found the next record still being written and went back to
/// sleep, or two CPUs raced past the mark) is made up a few records later,
/// long before the ring buffer fills. Every record in a ring has the same
/// size, so the queued bytes count whole records.
#[inline(always)]
fn wakeup_flags(deny: bool) -> u64 {
    let record = RECORD_BYTES;
    // Includes the record being submitted (reserved space counts).
    let queued = if deny {
        DENIALS.query(BPF_RB_AVAIL_DATA as u64)
    } else {
        EVENTS.query(BPF_RB_AVAIL_DATA as u64)
    };
    let backlog = if deny { record } else { WAKEUP_BACKLOG };
    if (deny && queued <= record)
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
/// [`crate::origin`]), and reported (refusals into `LW_DENIALS`, the rest
/// into `LW_EVENTS`) if the decision says so: copied from the origin, or
/// built in place in the ring buffer. No per-CPU scratch: a cgroup program
/// can be preempted (it only runs with migration disabled), so another
/// task's connect on the same CPU could overwrite it mid-record. A full
/// ring buffer counts the loss by verdict: userspace reports it.
#[inline(always)]
fn record(
    ctx: &SockAddrContext,
    d: &Decision,
    dst: &Destination,
    family: u16,
    seq: u64,
    tag: bool,
) {
    // SAFETY: plain helper call valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let kept = if tag {
        origin::connecting(cookie)
    } else {
        None
    };
    if let Some(ev) = kept {
        fill(ev, cookie, d, dst, family, seq);
        decided(ev);
    }
    if !d.report {
        return;
    }
    let deny = d.outcome == verdict::DENY;
    let reserved = if deny {
        DENIALS.reserve::<ConnectEvent>(0)
    } else {
        EVENTS.reserve::<ConnectEvent>(0)
    };
    let Some(mut entry) = reserved else {
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
            fill(out, cookie, d, dst, family, seq);
            decided(out);
        }
    }
    entry.submit(wakeup_flags(deny));
    count(stats::REPORTED);
}

/// Counts the decision `ev` records, by its verdict as read back from the
/// record: the verifier then knows the index only as a number from memory,
/// so the paths that reached here with different verdicts are walked once
/// (a constant index per path would be walked once per verdict).
#[inline(always)]
fn decided(ev: *const ConnectEvent) {
    // SAFETY: a record this program owns and has just written.
    let v = unsafe { core::ptr::read_volatile(&(*ev).verdict) };
    count(stats::DECIDED_BY_VERDICT + u32::from(v & 3));
}

/// Writes every field of the record at `ev` (reserved memory is not zeroed).
#[inline(always)]
fn fill(
    ev: *mut ConnectEvent,
    cookie: u64,
    d: &Decision,
    dst: &Destination,
    family: u16,
    seq: u64,
) {
    let (task, exe_file) = (d.task, d.exe_file);
    let parent = task.parent();
    let uid_gid = task.uid_gid();
    // One clock read: the connect's time, and the evidence's age at it.
    let at = now();
    // SAFETY: `ev` points at a record this program owns (the socket's
    // pending origin or a reserved ring-buffer record); fields are written
    // through raw pointers.
    unsafe {
        (*ev).ktime_ns = at;
        (*ev).policy_seq = seq;
        (*ev).socket_cookie = cookie;
        (*ev).netns_cookie = d.netns_cookie;
        (*ev).start_boottime_ns = task.process_start();
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
        let found = if procs::maybe_tracked(d.tgid) {
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
    }
}
