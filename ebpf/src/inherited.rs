//! What an executed program inherits in its descriptors. exec clears the
//! evidence a process carried (see [`crate::process`]); these are the
//! cases where the new program still faces the network, read from its fd
//! table at exec:
//!
//! - A network connection as its standard input or output: inetd-style
//!   servers (inetd, systemd `Accept=yes` units with
//!   `StandardInput=socket`, `ncat --sh-exec`, socat `EXEC:...,nofork`,
//!   tcpserver) fork per connection and exec a program with the accepted
//!   socket as fds 0 and 1, and a program that connects before it reads
//!   would never show `received`. A TCP socket there whose peer is not
//!   local (not loopback, not the socket's own address) is `stdio`
//!   evidence, standing for the program's life.
//! - A listener on a non-loopback address among its first
//!   [`LISTENER_FDS`] descriptors, for a process that listened (or whose
//!   parent did) before the exec: systemd socket activation (pid 1 listens,
//!   its child executes the service with the socket as fd 3),
//!   `systemd-socket-activate`, nginx's binary upgrade, a server that
//!   re-executes itself. It is `listening` evidence, and the port's
//!   accepts are credited to the program from then on.
//!
//! The fd array's elements have no BTF type the verifier can follow, so
//! the file, its inode, its socket and the socket's fields are copied with
//! `bpf_probe_read_kernel`: 70–350 ns more per exec here for the standard
//! descriptors (README, Performance); the listener scan runs only for a
//! process that listened.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use loopwarden_common::{Addr, evidence, stats};

use crate::{
    addr::{is_loopback, is_unspecified},
    identity::{Task, load, offset, probe},
    maps::{LISTENERS, count},
    procs::{Slot, record},
    sockets::{End, IPPROTO_TCP, Probe, TCP_LISTEN, end_by, listener_key_by},
};

/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// Standard input and output.
const STDIO_FDS: u32 = 2;
/// How many descriptors the listener scan reads.
pub const LISTENER_FDS: u32 = 32;

/// The fd array of `task` (the current task, BTF-typed) and its length.
#[inline(always)]
fn fd_array(task: Task) -> Option<(u64, u32)> {
    let files: u64 = load(task.0, offset!(task_files));
    if files == 0 {
        return None;
    }
    let fdt: u64 = load(files, offset!(files_fdt));
    if fdt == 0 {
        return None;
    }
    Some((
        load(fdt, offset!(fdtable_fd)),
        load(fdt, offset!(fdtable_max_fds)),
    ))
}

/// The non-local peer of a TCP connection that `task` (the current task,
/// BTF-typed) holds as fd 0 or 1, if any.
#[inline(always)]
pub fn stdio_peer(task: Task) -> Option<(Addr, u16)> {
    let (fds, max_fds) = fd_array(task)?;
    for fd in 0..STDIO_FDS {
        if fd >= max_fds {
            break;
        }
        let file: u64 = probe(fds + 8 * u64::from(fd));
        if let Some(peer) = tcp_socket(file).and_then(socket_peer) {
            return Some(peer);
        }
    }
    None
}

/// Gives `tgid` (the current process, `task`, which has just executed a
/// program) `listening` evidence if it holds a TCP listener on a
/// non-loopback address among its first [`LISTENER_FDS`] descriptors, and
/// credits it with the accepts of every such listener there
/// (`LW_LISTENERS`): it holds them now, whoever put them into LISTEN.
#[inline(always)]
pub fn claim_listeners(tgid: u32, task: Task) {
    let Some((fds, max_fds)) = fd_array(task) else {
        return;
    };
    let mut scan = Scan {
        fds,
        max_fds: u64::from(max_fds),
        tgid,
        found: 0,
        addr: Addr::default(),
        port: 0,
    };
    // `bpf_loop` (Linux 5.17): the verifier checks the callback once, where
    // an open-coded loop had it walk every iteration's paths (Linux 6.1 gave
    // up at its million instructions).
    // SAFETY: the callback has the helper's signature and reads `scan`,
    // which outlives the call, through its context pointer.
    unsafe {
        bpf_loop(
            LISTENER_FDS,
            scan_fd as *mut c_void,
            (&raw mut scan).cast(),
            0,
        );
    }
    if scan.found != 0 {
        record(
            tgid,
            Slot::Standing,
            evidence::LISTENING,
            scan.addr,
            scan.port,
        );
    }
}

/// What [`claim_listeners`] carries from one descriptor to the next.
#[repr(C)]
struct Scan {
    fds: u64,
    max_fds: u64,
    tgid: u32,
    /// Whether `addr`:`port`, the first listener found, is set.
    found: u32,
    addr: Addr,
    port: u16,
}

/// `bpf_loop`'s callback: descriptor `index` of the [`Scan`] at `ctx`; 1
/// (stop) past the table.
#[inline(never)]
extern "C" fn scan_fd(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` on `claim_listeners`' stack.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    if index >= scan.max_fds {
        return 1;
    }
    let Some(sk) = tcp_socket(probe(scan.fds + 8 * index)) else {
        return 0;
    };
    let Some(local) = non_loopback_listener(sk) else {
        return 0;
    };
    if LISTENERS
        .insert(listener_key_by::<Probe>(sk, local.port), scan.tgid, 0)
        .is_err()
    {
        count(stats::UNTRACKED);
    }
    if scan.found == 0 {
        (scan.found, scan.addr, scan.port) = (1, local.addr, local.port);
    }
    0
}

/// The local end of `sk`, a TCP socket, if it listens on an address that
/// is not loopback.
#[inline(always)]
fn non_loopback_listener(sk: u64) -> Option<End> {
    let state: u8 = probe(sk + u64::from(offset!(sk_state)));
    if i32::from(state) != TCP_LISTEN {
        return None;
    }
    let local = end_by::<Probe>(sk, false)?;
    (!is_loopback(&local.addr)).then_some(local)
}

/// The socket of `file` if it is a TCP socket.
#[inline(always)]
fn tcp_socket(file: u64) -> Option<u64> {
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
    (protocol == IPPROTO_TCP).then_some(sk)
}

/// The non-local peer of the TCP socket `sk`.
#[inline(always)]
fn socket_peer(sk: u64) -> Option<(Addr, u16)> {
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
