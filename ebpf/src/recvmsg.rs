//! `cgroup/recvmsg4` and `cgroup/recvmsg6`: the source of each datagram an
//! unconnected UDP socket receives, in the receiving process. UDP tunnels
//! (QUIC in cloudflared, WireGuard in tailscaled) read from unconnected
//! sockets and ask for each datagram's source, which is when the kernel
//! runs these hooks (`udp_recvmsg` with a `msg_name`); a datagram from a
//! non-local peer other than a DNS answer is `received` evidence. They
//! never change what the caller gets (they return 1).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::bpf_probe_read_kernel,
    macros::{cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::SockAddrContext,
};
use loopwarden_common::SOCK_COPY_WORDS;

use crate::{
    atomic::{barrier, cas},
    connect::{AF_INET, AF_INET6, destination},
    identity::offset,
    procs::record_received,
    sockets::{DNS_PORTS, SOCK_BINDPORT_LOCK},
};

/// mDNS's port: responders and queriers bound to it hear each other there.
const MDNS_PORT: u16 = 5353;

/// Per CPU, the copy of a socket's start that `sk_userlocks` is read from
/// (at byte 512 on Linux 6.1, 243 on 6.12: more than the stack could
/// hold). Scratch memory of this load's programs: not pinned.
#[map(name = "LW_SOCK_COPY")]
static SOCK_COPY: PerCpuArray<SockCopy> = PerCpuArray::with_max_entries(1, 0);

/// One CPU's copy, and who uses it. A cgroup program runs with migration
/// off but, on a fully preemptible kernel (`preempt=full`, `PREEMPT_RT`),
/// not with preemption off: another task's `recvmsg` on this CPU can run
/// between this one's copy and its read. The copy is claimed first
/// (`busy` from 0 to 1, one compare-and-swap); a program that finds it
/// claimed reads nothing and takes the datagram for an answer, as where
/// the field cannot be read.
#[repr(C)]
struct SockCopy {
    busy: u64,
    words: [u64; SOCK_COPY_WORDS],
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lw_recvmsg4(ctx: SockAddrContext) -> i32 {
    received(&ctx, AF_INET);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lw_recvmsg6(ctx: SockAddrContext) -> i32 {
    received(&ctx, AF_INET6);
    1
}

#[inline(always)]
fn received(ctx: &SockAddrContext, family: u16) {
    // For recvmsg the context's address is the datagram's source.
    let src = destination(ctx.sock_addr, family);
    if src.loopback {
        return;
    }
    if DNS_PORTS.contains(&src.port) {
        // SAFETY: the context's socket, which the kernel always sets here.
        let sk = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk };
        if is_answer(sk, src.port) {
            return;
        }
    }
    record_received(src.addr, src.port);
}

/// Whether a datagram from DNS port `port` to socket `sk` is an answer,
/// not evidence: the socket's port was chosen by the kernel (a resolver's,
/// whether it connects or uses `sendto`), or both ends are mDNS's. A socket
/// whose user bound its port is a server's, and its clients choose their
/// source ports: one that sends from port 53 is no DNS server. Where the
/// kernel's BTF does not name `sk_userlocks`, every datagram from those
/// ports is taken for an answer, as before.
#[inline(always)]
fn is_answer(sk: *mut bpf_sock, port: u16) -> bool {
    // SAFETY: a field of the context's socket (host order).
    let local = unsafe { core::ptr::read_volatile(&(*sk).src_port) } as u16;
    if port == MDNS_PORT && local == MDNS_PORT {
        return true;
    }
    !port_bound_by_user(sk).unwrap_or(false)
}

/// Whether the user bound `sk`'s port (`SOCK_BINDPORT_LOCK`); `None` if
/// that cannot be read (or this CPU's copy is in use: see [`SockCopy`]).
/// The field is taken from a copy of the socket's start, up to its word,
/// at its BTF bit offset (a bitfield on older kernels): a cgroup program
/// may not offset its socket's pointer, so the copy starts at the socket.
#[inline(always)]
fn port_bound_by_user(sk: *mut bpf_sock) -> Option<bool> {
    let bit = offset!(sk_userlocks_bit) as usize;
    let index = bit / 64;
    if bit == 0 || index >= SOCK_COPY_WORDS {
        return None;
    }
    let copy = SOCK_COPY.get_ptr_mut(0)?;
    // SAFETY: a field of the map's value, 8-byte aligned.
    if !unsafe { cas(&raw mut (*copy).busy, 0, 1) } {
        return None;
    }
    // SAFETY: the helper copies from any kernel address and fails cleanly,
    // into the value's words, of which it holds `SOCK_COPY_WORDS`.
    let copied = unsafe {
        bpf_probe_read_kernel(
            (&raw mut (*copy).words).cast(),
            ((index + 1) * 8) as u32,
            sk as *const c_void,
        )
    };
    // SAFETY: as above; `index` is within the words.
    let word = (copied == 0).then(|| unsafe { core::ptr::read_volatile(&(*copy).words[index]) });
    // The read above stays before the release.
    barrier();
    // SAFETY: as for the claim.
    unsafe { core::ptr::write_volatile(&raw mut (*copy).busy, 0) };
    // Little-endian: a word's bit n is the field's bit n mod 64.
    word.map(|word| (word >> (bit % 64)) & SOCK_BINDPORT_LOCK != 0)
}
