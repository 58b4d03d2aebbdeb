//! `lw-origin-probe PROTECTED_PORT UNPROTECTED_PORT`: for `cargo xtask
//! vm-test`, whose guests have no Python. On each port of 127.0.0.1 it
//! listens, connects to itself, sends a few bytes and closes its side, and
//! then asks the accepted socket for its origin
//! (`loopwarden_client::origin`, one getsockopt): the protected port's
//! answer must name this process and its connection, the other's must be
//! "unknown". Prints one line per port; exits 1 on a wrong answer.
//!
//! Then, as root, it asks a getsockopt whose answer is larger than a page
//! (`SO_PEERGROUPS` with [`GROUPS`] supplementary groups): the
//! `cgroup/getsockopt` program sees only a page of it and must leave the
//! kernel's answer standing, whole (a kernel without 6.5's "bpf: Don't
//! EFAULT for getsockopt with wrong optlen" fails the call when a program
//! leaves that length as it found it; Debian's 6.1 has it backported).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    process::ExitCode,
};

use loopwarden_client::Origin;

/// The accepted socket's origin, and the client's own address. Asked
/// after the client sent data and closed its side: the answer holds for
/// the connection's whole life.
fn ask(port: u16) -> Result<(Option<Origin>, std::net::SocketAddr), String> {
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let mut client = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let (mut accepted, _) = listener.accept().map_err(|e| e.to_string())?;
    client.write_all(b"hello").map_err(|e| e.to_string())?;
    client
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut received = Vec::new();
    accepted
        .read_to_end(&mut received)
        .map_err(|e| e.to_string())?;
    let origin = loopwarden_client::origin(&accepted).map_err(|e| e.to_string())?;
    Ok((origin, client.local_addr().map_err(|e| e.to_string())?))
}

/// Supplementary groups the large answer names: 4 bytes each, past a page.
const GROUPS: u32 = 1100;

/// Takes [`GROUPS`] supplementary groups and asks a socket pair made with
/// them for its peer's groups with a two-page buffer: the answer's length
/// and groups.
fn peer_groups() -> Result<(usize, Vec<u32>), String> {
    let gids: Vec<libc::gid_t> = (100_000..100_000 + GROUPS).collect();
    let os_err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain system calls on buffers that outlive them.
    unsafe {
        if libc::setgroups(gids.len(), gids.as_ptr()) != 0 {
            return Err(os_err("setgroups"));
        }
        let mut fds = [0; 2];
        if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) != 0 {
            return Err(os_err("socketpair"));
        }
        let mut buf = vec![0u32; 2048];
        let mut len = (buf.len() * 4) as libc::socklen_t;
        let rc = libc::getsockopt(
            fds[0],
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            buf.as_mut_ptr().cast(),
            &mut len,
        );
        let err = os_err("getsockopt(SO_PEERGROUPS)");
        libc::close(fds[0]);
        libc::close(fds[1]);
        if rc != 0 {
            return Err(err);
        }
        let len = len as usize;
        buf.truncate(len / 4);
        Ok((len, buf))
    }
}

fn main() -> ExitCode {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let [protected, unprotected] = ports[..] else {
        eprintln!("usage: lw-origin-probe PROTECTED_PORT UNPROTECTED_PORT");
        return ExitCode::from(2);
    };
    let me = std::process::id();
    let mut ok = true;
    for (port, known) in [(protected, true), (unprotected, false)] {
        let right = match ask(port) {
            Ok((Some(o), mine)) => {
                println!(
                    "port {port}: pid {} comm {} verdict {} client {} (self {me}, {mine})",
                    o.pid,
                    o.comm,
                    o.verdict.name(),
                    o.client
                );
                known && o.pid == me && o.client == mine && o.is_direct()
            }
            Ok((None, _)) => {
                println!("port {port}: unknown");
                !known
            }
            Err(e) => {
                println!("port {port}: {e}");
                false
            }
        };
        ok &= right;
    }
    match peer_groups() {
        Ok((len, groups)) => {
            let whole = groups.iter().copied().eq(100_000..100_000 + GROUPS);
            println!(
                "SO_PEERGROUPS: {len} bytes, {} groups, whole: {whole}",
                groups.len()
            );
            ok &= len == GROUPS as usize * 4 && whole;
        }
        Err(e) => {
            println!("SO_PEERGROUPS: {e}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
