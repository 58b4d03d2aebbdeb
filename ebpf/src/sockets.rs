//! Socket tracepoints: the evidence that a process faces the network, as it
//! happens.
//!
//! - `inet_sock_set_state` (TCP state changes): a socket on a non-loopback
//!   address entering LISTEN (in the listening process: `listening`, and
//!   the port's owner is remembered); a passive handshake completing with a
//!   non-local peer (in softirq: the evidence goes to the port's listener,
//!   `accepted`); an active one completing (the connecting process is found
//!   by socket cookie from its connect: `connected`).
//! - `tcp_rcv_space_adjust` (TCP data consumed by a reader, in the reading
//!   process, after each segment `recvmsg` copies and after each `splice`
//!   or zero-copy read): data from a peer that is not loopback, other than
//!   a DNS answer, is `received` evidence. UDP is seen by the `recvmsg`
//!   hooks ([`crate::recvmsg`]).
//!
//! The state changes also carry protected connections' origins to the
//! accepted socket ([`crate::origin`]).
//!
//! Both run in tp_btf programs: their arguments are BTF-typed, so field
//! loads are checked by the verifier and run as direct loads.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use loopwarden_common::{Addr, Listener, ListenerKey, Pending, evidence, origin::ConnKey, stats};

use crate::{
    addr::{is_loopback, is_unspecified, v4_mapped},
    connect::{AF_INET, AF_INET6},
    identity::{load, offset, probe},
    maps::{LISTENERS, PENDING, count},
    origin,
    procs::{Slot, record, record_accepted, record_received},
};

pub const IPPROTO_TCP: u16 = 6;
pub const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSE_WAIT: i32 = 8;
pub const TCP_LISTEN: i32 = 10;
/// DNS and mDNS answers are not evidence: data from these ports, over UDP,
/// and over TCP on a connection the receiver opened (see [`lw_receive`]).
pub const DNS_PORTS: [u16; 2] = [53, 5353];

/// One side of a socket: address and port (host order).
pub struct End {
    pub addr: Addr,
    pub port: u16,
}

/// How a `struct sock`'s fields are read: [`Btf`] loads from a BTF-typed
/// pointer (a tracepoint's argument), [`Probe`] copies from an address the
/// verifier has no type for (one read out of an fd table).
pub trait Reader {
    fn at<T: Copy + Default>(base: u64, offset: u32) -> T;
}

/// Direct, fault-handled loads ([`load`]).
pub struct Btf;

impl Reader for Btf {
    #[inline(always)]
    fn at<T: Copy + Default>(base: u64, offset: u32) -> T {
        load(base, offset)
    }
}

/// `bpf_probe_read_kernel` ([`probe`]).
pub struct Probe;

impl Reader for Probe {
    #[inline(always)]
    fn at<T: Copy + Default>(base: u64, offset: u32) -> T {
        probe(base + u64::from(offset))
    }
}

/// The peer (`remote`) or local end of `sk`; `None` for other families.
#[inline(always)]
fn end(sk: u64, remote: bool) -> Option<End> {
    end_by::<Btf>(sk, remote)
}

/// [`end`], read with `R`.
#[inline(always)]
pub fn end_by<R: Reader>(sk: u64, remote: bool) -> Option<End> {
    let family: u16 = R::at(sk, offset!(sk_family));
    let (v4, v6, port) = if remote {
        (
            offset!(sk_daddr),
            offset!(sk_v6_daddr),
            u16::from_be(R::at(sk, offset!(sk_dport))),
        )
    } else {
        (
            offset!(sk_rcv_saddr),
            offset!(sk_v6_rcv_saddr),
            R::at(sk, offset!(sk_num)),
        )
    };
    let addr = match family {
        AF_INET => v4_mapped(R::at(sk, v4)),
        AF_INET6 => Addr {
            words: [
                R::at(sk, v6),
                R::at(sk, v6 + 4),
                R::at(sk, v6 + 8),
                R::at(sk, v6 + 12),
            ],
        },
        _ => return None,
    };
    Some(End { addr, port })
}

/// `sk` as the `tcp_sock` it is (the verifier allows reads past `struct
/// sock` through it); `None` were it not a TCP socket.
#[inline(always)]
pub fn tcp_sock(sk: u64) -> Option<u64> {
    // SAFETY: the helper checks what `sk` is and returns NULL if not TCP.
    let tcp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) };
    if tcp.is_null() {
        return None;
    }
    Some(tcp as u64)
}

/// The inode number of `sk`'s network namespace.
#[inline(always)]
fn netns(sk: u64) -> u32 {
    netns_by::<Btf>(sk)
}

/// [`netns`], read with `R`.
#[inline(always)]
fn netns_by<R: Reader>(sk: u64) -> u32 {
    let net: u64 = R::at(sk, offset!(sk_net));
    R::at(net, offset!(net_inum))
}

/// A connection as `LW_CONN_SLOTS` and `LW_CONNS` name it.
#[inline(always)]
fn conn_key(sk: u64, client: &End, server: &End) -> ConnKey {
    ConnKey {
        netns: netns(sk),
        client_port: client.port,
        server_port: server.port,
        client: client.addr,
        server: server.addr,
    }
}

/// The network namespace's inode number and the local port: whose
/// listener a socket belongs to.
#[inline(always)]
fn listener_key(sk: u64, port: u16) -> ListenerKey {
    listener_key_by::<Btf>(sk, port)
}

/// [`listener_key`], read with `R`.
#[inline(always)]
pub fn listener_key_by<R: Reader>(sk: u64, port: u16) -> ListenerKey {
    ListenerKey {
        netns: netns_by::<R>(sk),
        port,
        _pad: 0,
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn lw_sock_state(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let protocol: u16 = load(sk, offset!(sk_protocol));
    if protocol != IPPROTO_TCP {
        return 0;
    }
    match (old, new) {
        (_, TCP_LISTEN) => {
            // In the process calling listen().
            let Some(local) = end(sk, false) else {
                return 0;
            };
            if is_loopback(&local.addr) {
                return 0;
            }
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            // Its cookie taken now, so its close (and an exec's scan)
            // reads the same one.
            // SAFETY: `sk` is the tracepoint's socket.
            let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
            holds_listener(tgid, listener_key(sk, local.port), &local, cookie);
        }
        // (A connection's socket is cloned from its listener's, so it
        // goes from LISTEN to SYN_RECV: only CLOSE ends a listener.)
        (TCP_LISTEN, TCP_CLOSE) => {
            if let Some(port) = closing_port(sk) {
                let key = listener_key(sk, port);
                let cookie: u64 = load(sk, offset!(sk_cookie));
                // Only this listener's entry goes (or one whose listener
                // is not known), back to the listener before it if one is
                // kept; a kept one that closes is forgotten. (A listen
                // between the lookup and the write loses its entry: the
                // window is a few instructions.)
                // SAFETY: the value is plain data.
                let Some(held) = (unsafe { LISTENERS.get(key) }).copied() else {
                    return 0;
                };
                match held.closed(cookie) {
                    None => {
                        let _ = LISTENERS.remove(key);
                    }
                    Some(after) if after != held => {
                        let _ = LISTENERS.insert(key, after, 0);
                    }
                    Some(_) => {}
                }
            }
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            // Softirq: the current task is nobody in particular.
            let (Some(peer), Some(local)) = (end(sk, true), end(sk, false)) else {
                return 0;
            };
            if origin::port_marked(local.port) {
                let uid = load(sk, offset!(sk_uid));
                origin::server_established(sk, &conn_key(sk, &peer, &local), uid);
            }
            if is_loopback(&peer.addr) || same_host(&local, &peer) {
                return 0;
            }
            // SAFETY: the value is plain data.
            if let Some(listener) = unsafe { LISTENERS.get(listener_key(sk, local.port)) } {
                // The listener may have exited (a daemon's parent that
                // listened, forked and left), and its pid be another's.
                record_accepted(listener.tgid, peer.addr, peer.port);
            }
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            let cookie: u64 = load(sk, offset!(sk_cookie));
            let (Some(local), Some(peer)) = (end(sk, false), end(sk, true)) else {
                return 0;
            };
            // A protected connect's origin moves on, whatever the peer.
            if origin::port_marked(peer.port) {
                origin::client_established(sk, cookie, &conn_key(sk, &local, &peer));
            }
            // A connect to loopback is never pending here (see `connecting`).
            if is_loopback(&peer.addr) {
                return 0;
            }
            // SAFETY: the value is plain data.
            let Some(pending) = (unsafe { PENDING.get(cookie) }).copied() else {
                return 0;
            };
            let _ = PENDING.remove(cookie);
            if same_host(&local, &peer) {
                return 0;
            }
            record(
                pending.tgid,
                Slot::Recent,
                evidence::CONNECTED,
                peer.addr,
                peer.port,
            );
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            let cookie: u64 = load(sk, offset!(sk_cookie));
            let _ = PENDING.remove(cookie);
            // Only the peer's port is needed (a TCP socket's family is
            // always one `end` reads).
            let peer_port = u16::from_be(load(sk, offset!(sk_dport)));
            if origin::port_marked(peer_port) {
                origin::connect_failed(cookie);
            }
        }
        (_, TCP_CLOSE) => {
            // An accepted socket whose cookie nobody took (nearly all of
            // them) carries no origin: the server's side of a tagged
            // connection took its cookie when its handshake completed.
            let cookie: u64 = load(sk, offset!(sk_cookie));
            if cookie == 0 {
                return 0;
            }
            let Some(port) = closing_port(sk) else {
                return 0;
            };
            // A client socket's port (an ephemeral one) is not marked.
            if !origin::port_marked(port) {
                return 0;
            }
            let (Some(peer), Some(mut local)) = (end(sk, true), end(sk, false)) else {
                return 0;
            };
            local.port = port;
            origin::closed(&conn_key(sk, &peer, &local), cookie);
        }
        _ => {}
    }
    0
}

/// The local port of the TCP socket `sk` as it closes. By now the kernel
/// has given the port back (`inet_num` reads 0) unless the socket holds
/// `SOCK_BINDPORT_LOCK`: a client's port, an accepted socket's (a child
/// does not inherit its listener's lock) and that of a listener whose port
/// the kernel chose alike. The source port stands, read through the helper
/// that types the socket as TCP; only a socket bound to its port by its
/// own bind() does without the call.
#[inline(always)]
fn closing_port(sk: u64) -> Option<u16> {
    match load::<u16>(sk, offset!(sk_num)) {
        0 => {
            let tcp = tcp_sock(sk)?;
            Some(u16::from_be(load(tcp, offset!(tcp_inet_sport))))
        }
        num => Some(num),
    }
}

/// Process `tgid` holds the listener `key` on the non-loopback address
/// `local`, whose socket cookie is `cookie` (0: not known): the port's
/// accepts are credited to it, and it has `listening` evidence.
#[inline(always)]
pub fn holds_listener(tgid: u32, key: ListenerKey, local: &End, cookie: u64) {
    // The evidence first: a handshake completing in between is credited
    // only to a process whose evidence says it listens.
    record(
        tgid,
        Slot::Standing,
        evidence::LISTENING,
        local.addr,
        local.port,
    );
    // A listen() without a bind(): the kernel chooses its port after this
    // program sees it, so the port is not known.
    if local.port == 0 {
        return;
    }
    // SAFETY: the value is plain data.
    let listener = Listener::taking_over(unsafe { LISTENERS.get(key) }, tgid, cookie);
    if LISTENERS.insert(key, listener, 0).is_err() {
        count(stats::UNTRACKED);
    }
}

/// Remembers an outbound TCP connect to a non-local peer (called from the
/// connect hooks): its completion becomes `connected` evidence.
#[inline(always)]
pub fn connecting(cookie: u64, tgid: u32) {
    let _ = PENDING.insert(cookie, Pending { tgid, _pad: 0 }, 0);
}

#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn lw_receive(ctx: BtfTracePointContext) -> i32 {
    // The TCP socket read from: its peer is the connection's remote end.
    let sk: u64 = ctx.arg(0);
    let Some(peer) = end(sk, true) else {
        return 0;
    };
    if is_loopback(&peer.addr) || is_unspecified(&peer.addr) {
        return 0;
    }
    // A read by a task holds the socket lock (`lock_sock`); the kernel's
    // own readers in softirq (a TLS or sockmap stream parser) do not, and
    // the task they interrupted is nobody's reader.
    let owned: i32 = load(sk, offset!(sk_lock_owned));
    if owned == 0 {
        return 0;
    }
    let Some(local) = end(sk, false) else {
        return 0;
    };
    if same_host(&local, &peer) || (DNS_PORTS.contains(&peer.port) && !accepted(sk, local.port)) {
        return 0;
    }
    record_received(peer.addr, peer.port);
    0
}

/// Whether a TCP socket with local port `port` was accepted: a listener of
/// its namespace holds that port (the kernel never hands such a port out
/// as a connect's ephemeral one) and the socket's user did not bind it (a
/// client's `SO_REUSEPORT`, another address or device: see
/// [`port_bound_by_user`]). A DNS server's answer is not evidence,
/// but only on a connection this side opened: a peer's source port is the
/// peer's to choose, and a client of this host's listener that connects
/// from port 53 is no DNS server.
#[inline(always)]
fn accepted(sk: u64, port: u16) -> bool {
    accepted_by::<Btf>(sk, port)
}

/// [`accepted`], read with `R`.
#[inline(always)]
pub fn accepted_by<R: Reader>(sk: u64, port: u16) -> bool {
    // SAFETY: the value is plain data, not read.
    !port_bound_by_user::<R>(sk)
        && unsafe { LISTENERS.get(listener_key_by::<R>(sk, port)) }.is_some()
}

/// `SOCK_BINDPORT_LOCK` in `sk_userlocks`: the socket's user bound its
/// port.
pub const SOCK_BINDPORT_LOCK: u64 = 8;

/// Whether the user of the socket `sk` bound its port itself
/// (`SOCK_BINDPORT_LOCK`), read with `R`: a client's `bind()`, never an
/// accepted socket (a child does not inherit its listener's lock). False
/// where this kernel's BTF does not name `sk_userlocks`: a client bound to
/// a listener's port is then taken for accepted, as before.
#[inline(always)]
fn port_bound_by_user<R: Reader>(sk: u64) -> bool {
    let field = offset!(sk_userlocks_bit);
    if field == 0 {
        return false;
    }
    // The byte that holds the lock's bit, alone: the verifier refuses a
    // typed load reaching past the field (a `u8` on recent kernels).
    let bit = field + SOCK_BINDPORT_LOCK.trailing_zeros();
    let byte: u8 = R::at(sk, bit / 8);
    byte & (1 << (bit % 8)) != 0
}

/// Whether a connection's two ends have one address: a connection to one
/// of this host's own addresses, which the kernel routes over loopback
/// and sends from that same address (a direct client of a protected host
/// address, `[protect] host_addresses`). Not the network.
#[inline(always)]
fn same_host(local: &End, peer: &End) -> bool {
    local.addr == peer.addr
}
