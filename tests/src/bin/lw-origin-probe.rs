//! `lw-origin-probe PROTECTED_PORT UNPROTECTED_PORT`: for `cargo xtask
//! vm-test`, whose guests have no Python. On each port of 127.0.0.1 it
//! listens, connects to itself, sends a few bytes and closes its side, and
//! then asks the accepted socket for its origin
//! (`loopwarden_client::origin`, one getsockopt): the protected port's
//! answer must name this process and its connection, the other's must be
//! "unknown". Prints one line per port; exits 1 on a wrong answer.

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
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
