//! The connect4/connect6 hooks: destination filter, identity, rule match,
//! verdict.
//!
//! Return value: 1 lets connect() proceed; 0 refuses it. With
//! `bpf_set_retval(-errno)` before returning 0 the caller sees that errno
//! instead of EPERM (kernel/bpf/cgroup.c, `__cgroup_bpf_run_filter_sock_addr`).

use aya_ebpf::{
    EbpfContext, bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie,
    macros::cgroup_sock_addr, programs::SockAddrContext,
};
use loopwarden_common::{Addr, PORT_WORDS, flags, stats, verdict};

use self::decide::{act, decide};
use crate::{
    addr::V4_MAPPED_WORD,
    egress,
    identity::Task,
    maps::{ATTEMPTS, BROWSER_PORTS, PORTS, SETTINGS, count, generation, rd},
    sockets,
};

mod decide;
mod record;
mod rules;

pub use record::report_guard;
pub use rules::cgroup_mask;

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const SOCK_STREAM: u32 = 1;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_MPTCP: u32 = 262;

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
            let read = || {
                [
                    core::ptr::read_volatile(&(*sa).user_ip6[0]),
                    core::ptr::read_volatile(&(*sa).user_ip6[1]),
                    core::ptr::read_volatile(&(*sa).user_ip6[2]),
                    core::ptr::read_volatile(&(*sa).user_ip6[3]),
                ]
            };
            let w = read();
            let high_zero = w[0] == 0 && w[1] == 0;
            let last = u32::from_be(w[3]);
            // `::1`, `::` (the kernel connects it to `::1`), and the
            // IPv4-mapped forms of the local IPv4 destinations.
            let loopback = high_zero
                && ((w[2] == 0 && last <= 1)
                    || (u32::from_be(w[2]) == V4_MAPPED_WORD && is_local_v4(last)));
            // The address is read again for the record. The tests above
            // taught the verifier the words' values, differently on each
            // way of being loopback, so keeping these words would make it
            // walk the judgement once per way: 283,602 instructions
            // processed for this hook against 112,915 for connect4, and
            // 3 s of the start. Fresh loads look the same on every path:
            // 112,841.
            Destination {
                addr: Addr { words: read() },
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
    // The policy in force, read once for the two checks below, each of
    // which sends a connect it cannot settle on to a judgement that reads
    // the policy again under its sequence lock.
    let g = generation();
    let Some(s) = SETTINGS.get_ptr(g) else {
        // As the judgements: no settings, no policy.
        return Ok(ALLOW);
    };
    // SAFETY: a pointer into the map's value; volatile loads between the
    // two `seq` reads (see `judge_connect`).
    let s = unsafe { &*s };
    let seq = rd!(s.seq);
    let policy_flags = rd!(s.flags);
    // The egress guard (SSRF after DNS): every destination, before the
    // protected-destination judgement. Both are BPF subprograms: the
    // verifier walks the judgement once after the guard's paths (they
    // meet at the call with the same few registers), and the two stack
    // frames are never live together.
    if policy_flags & flags::EGRESS != 0
        && egress::applies(s, seq)
        && egress::refuses(ctx, &dst, family)
    {
        return Ok(REFUSE);
    }
    if !dst.loopback && !sockets::DNS_PORTS.contains(&dst.port) {
        // Not judged (unless it is a protected host address), but once its
        // handshake completes the caller has connected to a non-local
        // peer: `connected` evidence (see `sockets`). Not for a DNS
        // server's port: a resolver falls back to TCP for a truncated
        // answer, and an answer is not evidence (nor is it read: see
        // `lw_receive`).
        // SAFETY: plain helper call valid for sock_addr programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        sockets::connecting(cookie, Task::current().tgid());
    }
    if passes(g, policy_flags, &dst) && seq & 1 == 0 && rd!(s.seq) == seq {
        return Ok(ALLOW);
    }
    Ok(judge_connect(ctx, &dst, family))
}

/// Whether generation `g`, whose flags are `policy_flags`, lets a connect
/// to `dst` pass unjudged, as [`decide`] would: no policy, an outbound
/// destination while no host address is protected, or a port it does not
/// protect. Most connects on a host are these, and they skip the
/// judgement's subprogram call (the call and its return cost a connect
/// about 50 ns on a host with return-thunk mitigations, more than this
/// check).
#[inline(always)]
fn passes(g: u32, policy_flags: u32, dst: &Destination) -> bool {
    policy_flags & flags::ENABLED == 0
        || (!dst.loopback && policy_flags & flags::HOST_ADDRS == 0)
        || (policy_flags & flags::ALL_PORTS == 0 && !port_protected(g, dst.port))
}

/// The protected-destination judgement of a TCP connect to `dst`.
#[inline(never)]
fn judge_connect(ctx: &SockAddrContext, dst: &Destination, family: u16) -> i32 {
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
