//! The bind guard: `cgroup/bind4` and `cgroup/bind6`.
//!
//! A port of `[bind] loopback_only` may be bound to loopback addresses only
//! (127.0.0.0/8, `::1`, `::ffff:127.0.0.0/104`): a TCP (or MPTCP) bind() of
//! it to anything else — the wildcards `0.0.0.0`, `::` and `::ffff:0.0.0.0`,
//! a host address — by a process the guard does not exempt (`allow_exe`,
//! `allow_uid`) is refused in enforce mode, with `EADDRNOTAVAIL` ("Cannot
//! assign requested address"), and reported as [`BIND_RULE`]; in audit mode
//! it proceeds and is reported as would-deny. UDP binds are not judged.
//!
//! The policy is read from one generation under its sequence lock, as the
//! connect hooks do (see `connect::try_connect`).

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use loopwarden_common::{BIND_RULE, GenKey, PORT_WORDS, Settings, flags, stats, verdict};

use crate::{
    addr,
    connect::{
        AF_INET, AF_INET6, Destination, IPPROTO_MPTCP, IPPROTO_TCP, SOCK_STREAM, destination,
        report_guard,
    },
    identity::Task,
    maps::{ATTEMPTS, BIND_EXE, BIND_PORTS, BIND_UID, SETTINGS, count, generation, netns_in_scope},
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
/// What a refused bind() fails with.
const EADDRNOTAVAIL: i32 = 99;

#[cgroup_sock_addr(bind4)]
pub fn lw_bind4(ctx: SockAddrContext) -> i32 {
    try_bind(&ctx, AF_INET)
}

#[cgroup_sock_addr(bind6)]
pub fn lw_bind6(ctx: SockAddrContext) -> i32 {
    try_bind(&ctx, AF_INET6)
}

#[inline(always)]
fn try_bind(ctx: &SockAddrContext, family: u16) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: context reads of fields the sock_addr program type may read.
    let (sock_type, protocol) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).type_),
            core::ptr::read_volatile(&(*sa).protocol),
        )
    };
    if sock_type != SOCK_STREAM || (protocol != IPPROTO_TCP && protocol != IPPROTO_MPTCP) {
        return ALLOW;
    }
    let at = destination(sa, family);
    if addr::is_loopback(&at.addr) {
        return ALLOW;
    }
    for _ in 0..ATTEMPTS {
        let g = generation();
        let Some(settings) = SETTINGS.get_ptr(g) else {
            return ALLOW;
        };
        // SAFETY: pointers into the map's value; volatile loads stay between
        // the two `seq` reads (see `connect::try_connect`).
        let seq = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        // SAFETY: as above.
        let policy_flags = unsafe { core::ptr::read_volatile(&(*settings).flags) };
        // SAFETY: a reference into the map's value.
        let judged = judge(ctx, unsafe { &*settings }, g, policy_flags, &at);
        // SAFETY: as above.
        let again = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        if seq != again || seq & 1 == 1 {
            count(stats::RETRIED);
            continue;
        }
        let Some(netns_cookie) = judged else {
            return ALLOW;
        };
        let enforce = policy_flags & flags::ENFORCE != 0;
        let outcome = if enforce {
            verdict::DENY
        } else {
            verdict::WOULD_DENY
        };
        report_guard(ctx, &at, family, seq, outcome, BIND_RULE, netns_cookie);
        if !enforce {
            return ALLOW;
        }
        // SAFETY: plain helper call; the negative errno replaces EPERM.
        unsafe { bpf_set_retval(-EADDRNOTAVAIL) };
        return REFUSE;
    }
    count(stats::RACED);
    ALLOW
}

/// Whether generation `g` (settings `s`, whose flags are `policy_flags`)
/// guards this bind: `Some(netns cookie)` if the caller may not make it.
#[inline(always)]
fn judge(
    ctx: &SockAddrContext,
    s: &Settings,
    g: u32,
    policy_flags: u32,
    at: &Destination,
) -> Option<u64> {
    let on = flags::ENABLED | flags::BIND_GUARD;
    if policy_flags & on != on || !port_guarded(g, at.port) {
        return None;
    }
    // SAFETY: helper valid for cgroup sock_addr programs (5.8+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if !netns_in_scope(s, g, policy_flags, netns_cookie) {
        return None;
    }
    // SAFETY: the values are plain u8 flags, only tested for presence.
    unsafe {
        let uid = Task::current().uid_gid() as u32;
        if BIND_UID.get(GenKey::new(g, uid)).is_some() {
            return None;
        }
        if BIND_EXE
            .get(GenKey::new(g, Task::current().exe()))
            .is_some()
        {
            return None;
        }
    }
    Some(netns_cookie)
}

#[inline(always)]
fn port_guarded(g: u32, port: u16) -> bool {
    match BIND_PORTS.get_ptr(g * PORT_WORDS + u32::from(port >> 6)) {
        // SAFETY: a pointer into the map's value (volatile: see try_bind).
        Some(word) => (unsafe { core::ptr::read_volatile(word) } >> (port & 63)) & 1 == 1,
        None => false,
    }
}
