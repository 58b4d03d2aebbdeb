//! `cgroup/recvmsg4` and `cgroup/recvmsg6`: the source of each datagram an
//! unconnected UDP socket receives, in the receiving process. UDP tunnels
//! (QUIC in cloudflared, WireGuard in tailscaled) read from unconnected
//! sockets and ask for each datagram's source, which is when the kernel
//! runs these hooks (`udp_recvmsg` with a `msg_name`); a datagram from a
//! non-local peer other than a DNS answer is `received` evidence. They
//! never change what the caller gets (they return 1).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

use crate::{
    connect::{AF_INET, AF_INET6, destination},
    procs::record_received,
    sockets::DNS_PORTS,
};

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
    if src.loopback || DNS_PORTS.contains(&src.port) {
        return;
    }
    record_received(src.addr, src.port);
}
