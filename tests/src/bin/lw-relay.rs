//! `lw-relay LISTEN TARGET`: a threaded TCP forwarder no catalog names, for
//! `cargo xtask vm-test`, whose guests have busybox but no relay of their
//! own. Per accepted connection it connects to TARGET before reading, then
//! copies both ways: what the relay verdict must recognise by behaviour.

use std::{
    io,
    net::{Shutdown, TcpListener, TcpStream},
    thread,
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

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, target] = args.as_slice() else {
        eprintln!("usage: lw-relay LISTEN_ADDR:PORT TARGET_ADDR:PORT");
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
