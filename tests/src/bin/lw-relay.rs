//! `lw-relay LISTEN TARGET`: a threaded TCP forwarder no catalog names, for
//! `cargo xtask vm-test`, whose guests have busybox but no relay of their
//! own. Per accepted connection it connects to TARGET before reading, then
//! copies both ways: what the relay verdict must recognise by behaviour.
//!
//! `lw-relay --greet LISTEN`: accepts one connection and sends it a line.
//! `lw-relay --dial SERVER TARGET`: a tunnel client in miniature: connects
//! to SERVER, takes its first message with splice(2) (no byte is copied to
//! the process), then connects to TARGET; exits 1 if that connect fails.
//! `lw-relay --udp-dial BIND FROM TARGET`: a UDP tunnel client in
//! miniature: its UDP socket, bound to BIND, takes a datagram sent from
//! FROM (a second socket of this process, bound there) with recvfrom(2),
//! then connects to TARGET; exits 1 if that connect fails.

use std::{
    io::{self, Write as _},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn serve(client: TcpStream, target: &str) -> io::Result<()> {
    let upstream = TcpStream::connect(target)?;
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    thread::spawn(move || pump(c2, u2));
    pump(upstream, client);
    Ok(())
}

/// Accepts one connection, greets it, and keeps it open a while.
fn greet(listen: &str) -> io::Result<()> {
    let (mut client, _) = TcpListener::bind(listen)?.accept()?;
    client.write_all(b"open\n")?;
    thread::sleep(Duration::from_secs(30));
    Ok(())
}

/// Splices the server's first message into a pipe, then connects to
/// `target`.
fn dial(server: &str, target: &str) -> io::Result<()> {
    let upstream = TcpStream::connect(server)?;
    let mut pipe = [0; 2];
    // SAFETY: a two-int array for the new descriptors.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: valid descriptors; no offsets (a socket and a pipe).
    let n = unsafe {
        libc::splice(
            upstream.as_raw_fd(),
            std::ptr::null_mut(),
            pipe[1],
            std::ptr::null_mut(),
            512,
            0,
        )
    };
    if n <= 0 {
        return Err(io::Error::other(format!(
            "splice from {server}: {}",
            io::Error::last_os_error()
        )));
    }
    TcpStream::connect(target).map(drop)
}

/// Takes a datagram from `from` on a socket bound to `bind`, then connects
/// to `target`.
fn udp_dial(bind: &str, from: &str, target: &str) -> io::Result<()> {
    let socket = UdpSocket::bind(bind)?;
    UdpSocket::bind(from)?.send_to(b"open\n", socket.local_addr()?)?;
    let mut buf = [0; 64];
    // recvfrom with an address: what the kernel's recvmsg hooks see.
    let (_, sender) = socket.recv_from(&mut buf)?;
    eprintln!(
        "lw-relay: a datagram from {sender} on {}",
        socket.local_addr()?
    );
    TcpStream::connect(target).map(drop)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "--greet", listen] => return greet(listen),
        [_, "--dial", server, target] => exit_on_error(dial(server, target)),
        [_, "--udp-dial", bind, from, target] => exit_on_error(udp_dial(bind, from, target)),
        _ => {}
    }
    let [_, listen, target] = args.as_slice() else {
        eprintln!(
            "usage: lw-relay LISTEN_ADDR:PORT TARGET_ADDR:PORT | --greet LISTEN_ADDR:PORT | \
             --dial SERVER_ADDR:PORT TARGET_ADDR:PORT | \
             --udp-dial BIND_ADDR:PORT FROM_ADDR:PORT TARGET_ADDR:PORT"
        );
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen)?;
    for client in listener.incoming() {
        let client = client?;
        let target = target.clone();
        thread::spawn(move || {
            // A refused connect just closes the client's connection.
            let _ = serve(client, &target);
        });
    }
    Ok(())
}

/// Exits 1 with the error on stderr, or 0.
fn exit_on_error(result: io::Result<()>) -> ! {
    if let Err(e) = result {
        eprintln!("lw-relay: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}
