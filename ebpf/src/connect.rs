//! The connect4/connect6 hooks: destination filter, identity, rule match,
//! verdict.
//!
//! Return value: 1 lets connect() proceed; 0 refuses it. With
//! `bpf_set_retval(-errno)` before returning 0 the caller sees that errno
//! instead of EPERM (kernel/bpf/cgroup.c, `__cgroup_bpf_run_filter_sock_addr`).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, bpf_sock_addr},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
            bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval,
        },
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use loopwarden_common::{
    Addr, COMM_LEN, ConnectEvent, EXE_NAME_LEN, FILTER_WORDS, GenKey, MAX_ANCESTORS,
    MAX_CGROUP_LEVELS_USED, NO_RULE, PORT_WORDS, Settings, exe_filter_value, filter_bit, flags,
    stats, verdict,
};

use crate::{
    identity::{self, Task},
    maps::{
        DENIALS, EVENTS, HOST_ADDRS, NETNS, PORTS, RULES_ANCESTOR, RULES_CGROUP, RULES_COMM,
        RULES_EXE, RULES_EXE_NAME, RULES_UID, SETTINGS, count, generation, mask,
    },
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_MPTCP: u32 = 262;
const EPERM: u32 = 1;
/// Queued bytes (a quarter of the ring) past which every report wakes the reader.
const WAKEUP_BACKLOG: u64 = 256 * 1024;
/// `::ffff:0:0/96` third word, host order.
const V4_MAPPED_WORD: u32 = 0x0000_ffff;

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

/// Where the connect goes, as read from the context.
struct Destination {
    addr: Addr,
    port: u16,
    loopback: bool,
}

#[inline(always)]
fn destination(sa: *const bpf_sock_addr, family: u16) -> Destination {
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

/// Judgements attempted before giving up on a policy that keeps being
/// rewritten under the program (see the sequence lock in loopwarden_common).
const ATTEMPTS: usize = 2;

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
    for _ in 0..ATTEMPTS {
        // One generation slot for the whole decision, read under its
        // sequence lock: `seq` before and after must agree (and be even),
        // or the slot was rewritten while we read it and we start again from
        // the generation now in force.
        let generation = generation();
        let Some(settings) = SETTINGS.get_ptr(generation) else {
            return Ok(ALLOW);
        };
        // Every load of policy memory in between is volatile too (or a
        // helper call), so the compiler keeps them all between the two
        // `seq` loads; x86-64 keeps loads in program order (the kernel's
        // seqcount readers rely on the same).
        // SAFETY: a pointer into the map's value.
        let seq = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        // SAFETY: as above; the copy is checked by the second `seq` read.
        let decision = decide(ctx, unsafe { &*settings }, generation, &dst);
        // SAFETY: as above.
        let again = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        if seq != again || seq & 1 == 1 {
            count(stats::RETRIED);
            continue;
        }
        return Ok(act(ctx, &decision, &dst, family, seq));
    }
    count(stats::RACED);
    Ok(ALLOW)
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
    // SAFETY: as above.
    let s: Settings = unsafe { core::ptr::read_volatile(settings) };
    let task = Task::current();
    // NULL for kernel threads: every read through it then yields 0.
    let exe_file = task.exe_file();
    let matched = match_rules(&s, settings, g, task, exe_file);
    let rule = if matched == 0 {
        NO_RULE
    } else {
        matched.trailing_zeros() as u8
    };
    let bit = if matched == 0 { 0 } else { 1u64 << rule };
    let (outcome, report) = if bit & s.deny != 0 {
        if s.flags & flags::ENFORCE != 0 {
            (verdict::DENY, true)
        } else {
            (verdict::WOULD_DENY, true)
        }
    } else if bit & s.audit != 0 {
        (verdict::AUDIT, true)
    } else {
        (verdict::ALLOW, s.flags & flags::LOG_ALLOWED != 0)
    };
    Decision {
        pass: false,
        outcome,
        report,
        rule,
        deny_errno: s.deny_errno,
        netns_cookie,
        task,
        exe_file,
    }
}

/// Carries out a decision: counts, reports and refuses as it says.
#[inline(always)]
fn act(ctx: &SockAddrContext, d: &Decision, dst: &Destination, family: u16, seq: u64) -> i32 {
    if d.pass {
        return ALLOW;
    }
    count(stats::CHECKED);
    if d.report {
        report(ctx, d, dst, family, seq);
    }
    if d.outcome != verdict::DENY {
        return ALLOW;
    }
    count(stats::DENIED);
    // Off unless the daemon runs with debug logging (AYA_LOG_LEVEL).
    debug!(
        ctx,
        "refused: pid {} to port {} by rule {}",
        (bpf_get_current_pid_tgid() >> 32) as u32,
        dst.port,
        d.rule
    );
    if d.deny_errno != EPERM {
        // SAFETY: plain helper call; the negative errno replaces EPERM.
        unsafe { bpf_set_retval(-(d.deny_errno as i32)) };
    }
    REFUSE
}

/// Bitmask of the rules that match the caller. An attribute no rule
/// constrains (every active rule is in its wildcard mask) is not even read;
/// cheap attributes go first, so a connect no rule can match stops early.
/// Nothing is cached between steps: fewer branches keep the verifier's work
/// (and so the oldest supported kernels' budget) small.
#[inline(always)]
fn match_rules(s: &Settings, live: &Settings, g: u32, task: Task, exe_file: u64) -> u64 {
    let mut m = s.active;
    if m & !s.wild_uid != 0 {
        let uid = bpf_get_current_uid_gid() as u32;
        m &= mask(&RULES_UID, &GenKey::new(g, uid)) | s.wild_uid;
    }
    if m & !s.wild_comm != 0 {
        // The thread's own name or its process's (the main thread's): a
        // process cannot slip past a comm rule by connecting from a thread
        // it renamed, and a rule naming a thread still matches it.
        let thread = CommKey::current(g);
        let process = CommKey::of_task(g, task.group_leader());
        m &= mask(&RULES_COMM, thread.key()) | mask(&RULES_COMM, process.key()) | s.wild_comm;
    }
    // Names and executables are first checked against the settings'
    // filters: a client no rule names (the common case) skips the lookups.
    if m & !s.wild_exe_name != 0 {
        let prefix = identity::exe_name_prefix(exe_file);
        let named = if in_filter(&live.exe_name_filter, prefix) {
            let name = ExeNameKey::of(g, exe_file);
            mask(&RULES_EXE_NAME, name.key())
        } else {
            0
        };
        m &= named | s.wild_exe_name;
    }
    if m & !s.wild_exe != 0 {
        let exe = identity::exe_key(exe_file);
        let named = if in_filter(&live.exe_filter, exe_filter_value(&exe)) {
            mask(&RULES_EXE, &GenKey::new(g, exe))
        } else {
            0
        };
        m &= named | s.wild_exe;
    }
    if m & !s.wild_cgroup != 0 {
        m &= cgroup_mask(g, s.cgroup_levels) | s.wild_cgroup;
    }
    if m & !s.wild_ancestor != 0 && s.flags & flags::ANCESTORS != 0 {
        m &= ancestor_mask(g, task) | s.wild_ancestor;
    }
    m
}

/// Whether `value`'s bit is set in a filter of the settings in the map
/// (`live`, not the stack copy: one load at a bounded variable offset, no
/// branches for the verifier to walk; volatile, so it stays inside the
/// sequence-lock section).
#[inline(always)]
fn in_filter(filter: &[u64; FILTER_WORDS], value: u64) -> bool {
    let bit = filter_bit(value);
    // SAFETY: a reference into the map's value; the index is masked in bounds.
    let word =
        unsafe { core::ptr::read_volatile(&filter[(bit >> 6) as usize & (FILTER_WORDS - 1)]) };
    (word >> (bit & 63)) & 1 == 1
}

/// A `GenKey<[u8; COMM_LEN]>` for the caller's comm, built from words: a
/// byte array would be zeroed by a `memset` subprogram the verifier walks
/// byte by byte at every call site.
#[repr(C)]
struct CommKey {
    generation: u32,
    _pad: u32,
    comm: [u64; COMM_LEN / 8],
}

impl CommKey {
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

/// A `GenKey<[u8; EXE_NAME_LEN]>` for an executable's file name, built from
/// words like [`CommKey`].
#[repr(C)]
struct ExeNameKey {
    generation: u32,
    _pad: u32,
    name: [u64; EXE_NAME_LEN / 8],
}

impl ExeNameKey {
    #[inline(always)]
    fn of(generation: u32, exe_file: u64) -> Self {
        let mut key = ExeNameKey {
            generation,
            _pad: 0,
            name: [0; EXE_NAME_LEN / 8],
        };
        // A failed read leaves the name empty, which no rule names.
        // SAFETY: same size, u8 has no alignment requirement.
        let _ = identity::exe_name(exe_file, unsafe {
            &mut *key.name.as_mut_ptr().cast::<[u8; EXE_NAME_LEN]>()
        });
        key
    }

    #[inline(always)]
    fn key(&self) -> &GenKey<[u8; EXE_NAME_LEN]> {
        // SAFETY: as for CommKey::key.
        unsafe { &*(self as *const Self).cast::<GenKey<[u8; EXE_NAME_LEN]>>() }
    }
}

/// Rules naming one of the caller's cgroup ancestors (or its own cgroup) at
/// the levels some rule names a cgroup at: at most
/// [`MAX_CGROUP_LEVELS_USED`] distinct levels (userspace enforces it).
#[inline(always)]
fn cgroup_mask(g: u32, levels: u32) -> u64 {
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
        m |= mask(&RULES_CGROUP, &GenKey::new(g, id));
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

/// Writes the event straight into its ring buffer (refusals into
/// `LW_DENIALS`, the rest into `LW_EVENTS`), every field (the reserved memory
/// is not zeroed), so no stack copy of it is built. A full ring buffer
/// counts the loss by verdict: userspace reports it.
#[inline(always)]
fn report(ctx: &SockAddrContext, d: &Decision, dst: &Destination, family: u16, seq: u64) {
    let (task, exe_file) = (d.task, d.exe_file);
    let deny = d.outcome == verdict::DENY;
    let reserved = if deny {
        DENIALS.reserve::<ConnectEvent>(0)
    } else {
        EVENTS.reserve::<ConnectEvent>(0)
    };
    let Some(mut entry) = reserved else {
        count(stats::DROPPED);
        count(stats::DROPPED_BY_VERDICT + u32::from(d.outcome & 3));
        return;
    };
    let ev = entry.as_mut_ptr();
    let parent = task.parent();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record
    // of the right size; fields are written through raw pointers.
    unsafe {
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).policy_seq = seq;
        (*ev).socket_cookie = bpf_get_socket_cookie(ctx.as_ptr());
        (*ev).netns_cookie = d.netns_cookie;
        (*ev).start_boottime_ns = task.process_start();
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        (*ev).exe = identity::exe_key(exe_file);
        (*ev).daddr = dst.addr;
        (*ev).tgid = (pid_tgid >> 32) as u32;
        (*ev).pid = pid_tgid as u32;
        (*ev).ppid = parent.tgid();
        (*ev).uid = uid_gid as u32;
        (*ev).gid = (uid_gid >> 32) as u32;
        (*ev).dport = dst.port;
        (*ev).family = family;
        (*ev).verdict = d.outcome;
        (*ev).rule = d.rule;
        (*ev)._pad0 = 0;
        (*ev)._pad1 = 0;
        bpf_get_current_comm((*ev).comm.as_mut_ptr().cast(), COMM_LEN as u32);
        let name = (*ev).exe_name.as_mut_ptr();
        name.cast::<[u64; EXE_NAME_LEN / 8]>()
            .write_unaligned([0; EXE_NAME_LEN / 8]);
        let _ = identity::exe_name(exe_file, &mut *name.cast::<[u8; EXE_NAME_LEN]>());
    }
    entry.submit(wakeup_flags(deny));
    count(stats::REPORTED);
}
