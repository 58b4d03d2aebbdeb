//! The egress guard (SSRF after DNS), judged inside `cgroup/connect4` and
//! `connect6` before the protected-destination judgement.
//!
//! An `[[egress]]` rule names a service (uid, executable identity, cgroup)
//! and the destinations it may not reach. By the time connect() runs, the
//! application has resolved its hostname and followed its redirects: the
//! address here is the one it really connects to, so a name that resolves
//! to a private or metadata address is caught like a literal one.
//!
//! The destination is looked up in `LW_EGRESS_DST`, an LPM trie whose
//! value for each prefix is the mask of the egress rules that block it
//! (userspace computes it over the union of every rule's prefixes, so the
//! longest match answers for every rule at once: one lookup, never a scan).
//! IPv4 destinations are looked up in their IPv4-mapped form, so `a.b.c.d`
//! and `::ffff:a.b.c.d` hit the same entries; `0.0.0.0` (and its mapped
//! form) is looked up as `127.0.0.1` and `::` as `::1`, where the kernel
//! connects them.
//!
//! A blocked connect is reported as rule `EGRESS_RULE_BASE + r`; a deny
//! rule in enforce mode refuses it with the policy's `deny_errno`. The
//! policy is read from one generation under its sequence lock, as in
//! `connect::try_connect`.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_netns_cookie, bpf_set_retval},
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use loopwarden_common::{
    Addr, EGRESS_RULE_BASE, EgressKey, GenKey, Settings, flags, stats, verdict,
};

use crate::{
    addr::{self, V4_MAPPED_WORD},
    connect::{Destination, cgroup_mask, report_guard},
    identity::Task,
    maps::{
        ATTEMPTS, EGRESS_CGROUP, EGRESS_DST, EGRESS_EXE, EGRESS_UID, SETTINGS, count, generation,
        in_filter, mask, netns_in_scope, rd,
    },
};

/// What the guard found in one generation: the rule that blocks the
/// connect and how.
struct Blocked {
    /// Egress rule index (`0..MAX_EGRESS_RULES`).
    rule: u8,
    /// 1: the rule's action is deny; 0: audit.
    deny: u8,
    /// 1: enforce mode.
    enforce: u8,
    deny_errno: u32,
    netns_cookie: u64,
}

/// Judges a TCP connect to `dst`; true: it is refused (the caller returns
/// 0 at once). A BPF subprogram (see `connect::try_connect`). The
/// judgement's outcome leaves the sequence-lock loop as numbers the
/// verifier does not know, so it walks the report once, not once per
/// attempt and verdict.
#[inline(never)]
pub fn refuses(ctx: &SockAddrContext, dst: &Destination, family: u16) -> bool {
    let mut judged = None;
    let mut seq = 0;
    let mut whole = false;
    for _ in 0..ATTEMPTS {
        let g = generation();
        let Some(settings) = SETTINGS.get_ptr(g) else {
            return false;
        };
        // SAFETY: pointers into the map's value; every load between the
        // two `seq` reads is volatile (see `connect::try_connect`).
        seq = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        // SAFETY: as above.
        judged = judge(ctx, unsafe { &*settings }, g, dst);
        // SAFETY: as above.
        let again = unsafe { core::ptr::read_volatile(&(*settings).seq) };
        if seq == again && seq & 1 == 0 {
            whole = true;
            break;
        }
        count(stats::RETRIED);
    }
    if !whole {
        count(stats::RACED);
        return false;
    }
    let Some(b) = judged else {
        return false;
    };
    // AUDIT (1) for an audit rule, WOULD_DENY (2) for a deny rule in
    // audit mode, DENY (3) in enforce mode: arithmetic, not branches.
    let outcome = verdict::AUDIT + b.deny + (b.deny & b.enforce);
    report_guard(
        ctx,
        dst,
        family,
        seq,
        outcome,
        EGRESS_RULE_BASE + b.rule,
        b.netns_cookie,
    );
    if outcome != verdict::DENY {
        return false;
    }
    // A refused connect, as the rules' refusals are counted.
    count(stats::DENIED);
    // SAFETY: plain helper call; the negative errno replaces EPERM.
    unsafe { bpf_set_retval(-(b.deny_errno as i32)) };
    true
}

/// Whether this connect goes to the guard's judgement ([`refuses`], a BPF
/// subprogram: the call and its return cost a connect about 50 ns on a
/// host with return-thunk mitigations, more than the rest of the guard's
/// work for a process no rule names), asked only when the policy in force
/// (settings `s`, read at `seq`) has egress rules: when every one names an
/// executable, only for a caller whose executable the rules' filter may
/// hold. A policy rewritten while this reads it sends the connect to the
/// judgement, which reads it again under its sequence lock.
#[inline(always)]
pub fn applies(s: &Settings, seq: u64) -> bool {
    if rd!(s.egress_active) & rd!(s.egress_wild_exe) != 0 {
        return true;
    }
    let named = in_filter(&s.egress_exe_filter, Task::current().exe_ino());
    named || rd!(s.seq) != seq || seq & 1 == 1
}

/// Whether generation `g` (settings `s`) blocks this connect: the rules
/// naming the caller, cheapest attributes first (an attribute no rule
/// constrains is not read), then one lookup of the destination.
#[inline(always)]
fn judge(ctx: &SockAddrContext, s: &Settings, g: u32, dst: &Destination) -> Option<Blocked> {
    let policy_flags = rd!(s.flags);
    let on = flags::ENABLED | flags::EGRESS;
    if policy_flags & on != on {
        return None;
    }
    let mut m = rd!(s.egress_active);
    if m & !rd!(s.egress_wild_uid) != 0 {
        let uid = Task::current().uid_gid() as u32;
        m &= mask(&EGRESS_UID, &GenKey::new(g, uid)) | rd!(s.egress_wild_uid);
    }
    if m & !rd!(s.egress_wild_cgroup) != 0 {
        m &=
            cgroup_mask(&EGRESS_CGROUP, g, rd!(s.egress_cgroup_levels)) | rd!(s.egress_wild_cgroup);
    }
    if m & !rd!(s.egress_wild_exe) != 0 {
        let task = Task::current();
        let named = if in_filter(&s.egress_exe_filter, task.exe_ino()) {
            mask(&EGRESS_EXE, &GenKey::new(g, task.exe()))
        } else {
            0
        };
        m &= named | rd!(s.egress_wild_exe);
    }
    if m == 0 {
        return None;
    }
    let key = Key::new(
        EgressKey::FULL_PREFIX,
        EgressKey {
            generation_be: g.to_be(),
            addr: lookup_form(&dst.addr),
        },
    );
    let blocking = match EGRESS_DST.get(&key) {
        // SAFETY: a reference into the map's value, read once.
        Some(v) => unsafe { core::ptr::read_volatile(v) },
        None => 0,
    };
    let hit = m & blocking;
    if hit == 0 {
        return None;
    }
    // SAFETY: helper valid for cgroup sock_addr programs (5.8+).
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if !netns_in_scope(s, g, policy_flags, netns_cookie) {
        return None;
    }
    // A deny rule decides before an audit rule; the lowest index first.
    let denying = hit & rd!(s.egress_deny);
    let first = if denying != 0 { denying } else { hit };
    Some(Blocked {
        rule: first.trailing_zeros() as u8,
        deny: u8::from(denying != 0),
        enforce: ((policy_flags & flags::ENFORCE) >> flags::ENFORCE.trailing_zeros()) as u8,
        deny_errno: rd!(s.deny_errno),
        netns_cookie,
    })
}

/// The address the trie is asked about: where the kernel connects the
/// unspecified addresses (`0.0.0.0` and `::ffff:0.0.0.0` to `127.0.0.1`,
/// `::` to `::1`), any other as it is (IPv4 already in mapped form).
#[inline(always)]
fn lookup_form(a: &Addr) -> Addr {
    if !addr::is_unspecified(a) {
        return *a;
    }
    if a.words[2] == 0 {
        Addr {
            words: [0, 0, 0, 1u32.to_be()],
        }
    } else {
        Addr {
            words: [0, 0, V4_MAPPED_WORD.to_be(), 0x7f00_0001u32.to_be()],
        }
    }
}
