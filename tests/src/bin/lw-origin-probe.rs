//! `lw-origin-probe PROTECTED_PORT UNPROTECTED_PORT`: for `cargo xtask
//! vm-test`, whose guests have no Python. On each port of 127.0.0.1 it
//! listens, connects to itself and asks the accepted socket for its origin
//! (`loopwarden_client::origin`, one getsockopt): the protected port's
//! answer must name this process and its connection, the other's must be
//! "unknown". Prints one line per port; exits 1 on a wrong answer.

use std::{
    net::{TcpListener, TcpStream},
    process::ExitCode,
};

use loopwarden_client::Origin;

/// The accepted socket's origin, and the client's own address.
fn ask(port: u16) -> Result<(Option<Origin>, std::net::SocketAddr), String> {
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let client = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let (accepted, _) = listener.accept().map_err(|e| e.to_string())?;
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
