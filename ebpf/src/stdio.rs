//! A program executed with a network connection as its standard input or
//! output: inetd-style servers (inetd, systemd `Accept=yes` units with
//! `StandardInput=socket`, `ncat --sh-exec`, socat `EXEC:...,nofork`,
//! tcpserver) fork per connection and
//! exec a program with the accepted socket as fds 0 and 1. exec clears the
//! `accepted` evidence its forked server carried (see [`crate::process`]),
//! and a program that connects before it reads would never show
//! `received`; so at exec the new program's fds 0 and 1 are read: a TCP
//! socket there whose peer is not local (not loopback, not the socket's
//! own address) is `stdio` evidence, standing for the program's life.
//!
//! The fd array's elements have no BTF type the verifier can follow, so
//! the file, its inode, its socket and the socket's fields are copied with
//! `bpf_probe_read_kernel`: 70–350 ns more per exec here (README,
//! Performance).

use loopwarden_common::Addr;

use crate::{
    addr::{is_loopback, is_unspecified},
    identity::{Task, load, offset, probe},
    sockets::{IPPROTO_TCP, Probe, end_by},
};

/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// Standard input and output.
const STDIO_FDS: u32 = 2;

/// The non-local peer of a TCP connection that `task` (the current task,
/// BTF-typed) holds as fd 0 or 1, if any.
#[inline(always)]
pub fn peer(task: Task) -> Option<(Addr, u16)> {
    let files: u64 = load(task.0, offset!(task_files));
    if files == 0 {
        return None;
    }
    let fdt: u64 = load(files, offset!(files_fdt));
    if fdt == 0 {
        return None;
    }
    let max_fds: u32 = load(fdt, offset!(fdtable_max_fds));
    let fds: u64 = load(fdt, offset!(fdtable_fd));
    for fd in 0..STDIO_FDS {
        if fd >= max_fds {
            break;
        }
        let file: u64 = probe(fds + 8 * u64::from(fd));
        if let Some(peer) = socket_peer(file) {
            return Some(peer);
        }
    }
    None
}

/// The non-local peer of `file` if it is a TCP socket.
#[inline(always)]
fn socket_peer(file: u64) -> Option<(Addr, u16)> {
    if file == 0 {
        return None;
    }
    let inode: u64 = probe(file + u64::from(offset!(file_inode)));
    let mode: u16 = probe(inode + u64::from(offset!(inode_mode)));
    if inode == 0 || mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = probe(file + u64::from(offset!(file_private_data)));
    let sk: u64 = probe(socket + u64::from(offset!(socket_sk)));
    if socket == 0 || sk == 0 {
        return None;
    }
    let protocol: u16 = probe(sk + u64::from(offset!(sk_protocol)));
    if protocol != IPPROTO_TCP {
        return None;
    }
    let peer = end_by::<Probe>(sk, true)?;
    if is_loopback(&peer.addr) || is_unspecified(&peer.addr) || peer.port == 0 {
        return None;
    }
    // Nor a connection whose two ends have one address: a client on this
    // host reaching one of its own addresses (routed over loopback), as
    // the state tracepoint's `same_host` decides for accepts.
    if end_by::<Probe>(sk, false)?.addr == peer.addr {
        return None;
    }
    Some((peer.addr, peer.port))
}
