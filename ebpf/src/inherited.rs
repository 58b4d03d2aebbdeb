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
//! - For a process that listened or accepted (or whose parent did) before
//!   the exec, its first [`SCAN_FDS`] descriptors: a connection from a
//!   non-local peer accepted on a port a non-loopback listener holds
//!   (systemd `Accept=yes` hands it over as fd 3) is `accepted` evidence
//!   naming that peer; else a listener on a non-loopback address (systemd
//!   socket activation with `Accept=no`: pid 1 listens, its child executes
//!   the service with the socket as fd 3; `systemd-socket-activate`, nginx's
//!   binary upgrade, a server that re-executes itself) is `listening`
//!   evidence, and the port's accepts are credited to the program from
//!   then on.
//!
//! The fd array's elements have no BTF type the verifier can follow, so
//! the file, its inode, its socket and the socket's fields are copied with
//! `bpf_probe_read_kernel`: 70–350 ns more per exec here for the standard
//! descriptors (README, Performance); the scan of the first 1,024 (those
//! the bitmap of open descriptors says are open) runs only for a process
//! that listened or accepted.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use loopwarden_common::{Addr, evidence};

use crate::{
    addr::{is_loopback, is_unspecified},
    identity::{Task, load, offset, probe},
    procs::{Slot, record},
    sockets::{
        IPPROTO_TCP, Probe, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, accepted_by, end_by,
        holds_listener, listener_key_by,
    },
};

/// `S_IFMT` and `S_IFSOCK` of `inode.i_mode`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// Standard input and output.
const STDIO_FDS: u32 = 2;
/// How many descriptors the scan of a listening process's exec covers:
/// the listener systemd (255 and later) hands its executor is a copy at
/// the lowest descriptor pid 1 has free, often past 100.
const SCAN_FDS: u32 = 1024;
/// Descriptors per word of the open-descriptor bitmap.
const WORD_BITS: u64 = 64;

/// The fd table of `task` (the current task, BTF-typed).
#[inline(always)]
fn fd_table(task: Task) -> Option<u64> {
    let files: u64 = load(task.0, offset!(task_files));
    if files == 0 {
        return None;
    }
    let fdt: u64 = load(files, offset!(files_fdt));
    (fdt != 0).then_some(fdt)
}

/// The fd array of the fd table `fdt` and its length.
#[inline(always)]
fn fd_array(fdt: u64) -> (u64, u32) {
    (
        load(fdt, offset!(fdtable_fd)),
        load(fdt, offset!(fdtable_max_fds)),
    )
}

/// The non-local peer of a TCP connection that `task` (the current task,
/// BTF-typed) holds as fd 0 or 1, if any.
#[inline(always)]
pub fn stdio_peer(task: Task) -> Option<(Addr, u16)> {
    let (fds, max_fds) = fd_array(fd_table(task)?);
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
/// program) the evidence its first [`SCAN_FDS`] descriptors hold:
/// `accepted` for a TCP connection from a non-local peer accepted on a
/// port a non-loopback listener holds (systemd `Accept=yes` hands one over
/// as fd 3), else `listening` for a TCP listener on a non-loopback
/// address. It is credited with the accepts of every such listener there
/// (`LW_LISTENERS`): it holds them now, whoever put them into LISTEN.
#[inline(always)]
pub fn claim_descriptors(tgid: u32, task: Task) {
    let Some(fdt) = fd_table(task) else {
        return;
    };
    let (fds, max_fds) = fd_array(fdt);
    let mut scan = Scan {
        fds,
        max_fds: u64::from(max_fds),
        open_fds: load(fdt, offset!(fdtable_open_fds)),
        word: 0,
        tgid: u64::from(tgid),
    };
    // `bpf_loop` (Linux 5.17) with a callback that only walks the bitmap:
    // each open descriptor goes to `lw_inherited_fd`, a global function
    // the verifier checks once, on its own. (An open-coded loop, or the
    // descriptor's work inside the callback, had the verifier walk every
    // iteration's paths past its million instructions.)
    // SAFETY: the callback has the helper's signature and reads `scan`,
    // which outlives the call, through its context pointer.
    unsafe {
        bpf_loop(SCAN_FDS, scan_fd as *mut c_void, (&raw mut scan).cast(), 0);
    }
}

/// What [`claim_descriptors`] carries from one descriptor to the next.
#[repr(C)]
struct Scan {
    /// The fd array and its length.
    fds: u64,
    max_fds: u64,
    /// The open-descriptor bitmap, and its word for the descriptors at
    /// hand.
    open_fds: u64,
    word: u64,
    tgid: u64,
}

/// `bpf_loop`'s callback: descriptor `index` of the [`Scan`] at `ctx`,
/// read only if the bitmap says it is open (one read per 64); 1 (stop)
/// past the table.
#[inline(never)]
extern "C" fn scan_fd(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` on `claim_descriptors`' stack.
    let scan = unsafe { &mut *ctx.cast::<Scan>() };
    if index >= scan.max_fds {
        return 1;
    }
    let bit = index % WORD_BITS;
    if bit == 0 {
        scan.word = probe(scan.open_fds + index / WORD_BITS * 8);
    }
    if (scan.word >> bit) & 1 != 0 {
        lw_inherited_fd(probe(scan.fds + 8 * index), scan.tgid);
    }
    0
}

/// One open descriptor, `file`, of process `tgid` after its exec: a
/// non-loopback listener is credited to `tgid` (`LW_LISTENERS`) and gives
/// it `listening` evidence; a connection accepted from a non-local peer
/// gives it `accepted` evidence, which a listener's does not replace. A
/// global function (scalar arguments, no inlining): the verifier checks it
/// once, not at every iteration of the scan.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lw_inherited_fd(file: u64, tgid: u64) -> i64 {
    let tgid = tgid as u32;
    let Some(sk) = tcp_socket(file) else {
        return 0;
    };
    let state: u8 = probe(sk + u64::from(offset!(sk_state)));
    match i32::from(state) {
        TCP_LISTEN => {
            let Some(local) = end_by::<Probe>(sk, false) else {
                return 0;
            };
            if is_loopback(&local.addr) {
                return 0;
            }
            // Its cookie as its listen took it (0 if nothing took one:
            // a listener from before the daemon).
            let cookie: u64 = probe(sk + u64::from(offset!(sk_cookie)));
            let key = listener_key_by::<Probe>(sk, local.port);
            holds_listener(tgid, key, &local, cookie);
        }
        TCP_ESTABLISHED | TCP_CLOSE_WAIT => {
            if let Some((addr, port)) = accepted_peer(sk) {
                record(tgid, Slot::Standing, evidence::ACCEPTED, addr, port);
            }
        }
        _ => {}
    }
    0
}

/// The non-local peer of `sk`, a connected TCP socket, if its local port
/// is one a non-loopback listener in its namespace holds (`LW_LISTENERS`):
/// a connection accepted there, not one this host opened.
#[inline(always)]
fn accepted_peer(sk: u64) -> Option<(Addr, u16)> {
    let peer = socket_peer(sk)?;
    let port: u16 = probe(sk + u64::from(offset!(sk_num)));
    accepted_by::<Probe>(sk, port).then_some(peer)
}

/// The socket of `file` if it is a TCP socket.
#[inline(always)]
fn tcp_socket(file: u64) -> Option<u64> {
    if file == 0 {
        return None;
    }
    let inode: u64 = probe(file + u64::from(offset!(file_inode)));
    if inode == 0 {
        return None;
    }
    let mode: u16 = probe(inode + u64::from(offset!(inode_mode)));
    if mode & S_IFMT != S_IFSOCK {
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
