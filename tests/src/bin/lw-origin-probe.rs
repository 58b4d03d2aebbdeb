//! `lw-origin-probe PROTECTED_PORT UNPROTECTED_PORT`: for `cargo xtask
//! vm-test`, whose guests have no Python. On each port of 127.0.0.1 it
//! listens, connects to itself and asks the accepted socket
//! `getsockopt(SOL_LOOPWARDEN, LW_ORIGIN)`: the protected port's answer
//! must name this process and its connection, the other's must be
//! "unknown". Prints one line per port; exits 1 on a wrong answer.

use std::{
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
};

/// `loopwarden_common::origin`: level, option, record size, field offsets.
const SOL_LOOPWARDEN: i32 = 0x4c57;
const LW_ORIGIN: i32 = 1;
const RECORD: usize = 328;
const STATUS: usize = 8;
const CLIENT_PORT: usize = 36;
const TGID: usize = 152;

fn ask(port: u16) -> std::io::Result<(u8, u32, u16, u16)> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let client = TcpStream::connect(("127.0.0.1", port))?;
    let (accepted, _) = listener.accept()?;
    let mut buf = [0u64; RECORD / 8];
    let mut len = RECORD as libc::socklen_t;
    // SAFETY: a socket we own, a buffer of `len` bytes we own.
    let rc = unsafe {
        libc::getsockopt(
            accepted.as_raw_fd(),
            SOL_LOOPWARDEN,
            LW_ORIGIN,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the u64 buffer viewed as its bytes.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), RECORD) };
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    let u16_at = |at: usize| u16::from_ne_bytes(bytes[at..at + 2].try_into().unwrap());
    Ok((
        bytes[STATUS],
        u32_at(TGID),
        u16_at(CLIENT_PORT),
        client.local_addr()?.port(),
    ))
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
        match ask(port) {
            Ok((status, tgid, client_port, mine)) => {
                println!(
                    "port {port}: status {status} tgid {tgid} client port {client_port} (self {me}, port {mine})"
                );
                let right = if known {
                    status == 1 && tgid == me && client_port == mine
                } else {
                    status == 0 && tgid == 0
                };
                ok &= right;
            }
            Err(e) => {
                println!("port {port}: getsockopt failed: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
