//! The connect loads: `bench-server`, a listener that closes each
//! connection at once (or answers its request), and `bench-client`, which
//! connects and closes in a loop (or alternates between two ports in
//! windows, for the paired comparison).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{STALL, die_with_parent, linger_zero, print_result};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Ports to listen on (127.0.0.1 and ::1, or `--addr`).
    #[arg(required = true)]
    pub ports: Vec<u16>,
    /// Listen on this address instead of the loopback ones.
    #[arg(long)]
    pub addr: Option<IpAddr>,
    /// Answer each connection's request ([`REQUEST`]) with [`RESPONSE`],
    /// one connection at a time, instead of closing it at once.
    #[arg(long)]
    pub respond: bool,
}

#[derive(clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub seconds: f64,
    /// Connect to ::1 instead of 127.0.0.1.
    #[arg(long)]
    pub ipv6: bool,
    /// Connect to this address instead (overrides `--ipv6`).
    #[arg(long)]
    pub addr: Option<IpAddr>,
    /// Send [`REQUEST`] on each connection and read the whole [`RESPONSE`]
    /// before closing (a server started with `--respond`).
    #[arg(long)]
    pub request: bool,
    /// Alternate between `--port` and this port in windows of `--window`
    /// seconds, a pair at a time (each pair in the other order than the
    /// last), printing a line per window before the total.
    #[arg(long)]
    pub alternate: Option<u16>,
    /// Seconds per window of `--alternate`.
    #[arg(long, default_value_t = 0.5)]
    pub window: f64,
}

/// What `bench-client --request` sends on each connection: an HTTP/1.0
/// request, the shape of what the services loopwarden protects receive.
pub const REQUEST: &[u8] = b"GET /v1/models HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
/// What `bench-server --respond` answers it with.
pub const RESPONSE: &[u8] =
    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"data\":[]}";

/// `bench-server`: one accept loop per port and family; prints `listening`
/// once all are bound.
pub fn server(args: &ServerArgs) -> anyhow::Result<()> {
    die_with_parent();
    let mut threads = Vec::new();
    let addrs = match args.addr {
        Some(addr) => vec![addr],
        None => vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    };
    for (&port, addr) in args
        .ports
        .iter()
        .flat_map(|port| addrs.iter().map(move |addr| (port, addr)))
    {
        let addr = SocketAddr::new(*addr, port);
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        // A full accept queue drops SYNs and costs the client a 1 s retransmit:
        // raise std's backlog to the namespace's somaxconn (listen(2) again
        // on a listening socket only updates the backlog).
        // SAFETY: listen(2) on a socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), i32::from(u16::MAX)) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot raise the backlog on port {port}"));
        }
        let respond = args.respond;
        threads.push(std::thread::spawn(move || {
            loop {
                // Errors (e.g. a connection reset before accept) are expected under load.
                if let Ok((stream, _)) = listener.accept() {
                    if respond {
                        let _ = answer(stream);
                    } else {
                        linger_zero(&stream);
                    }
                }
            }
        }));
    }
    println!("listening");
    std::io::stdout().flush()?;
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

/// One connection of `bench-server --respond`: reads the request up to
/// its blank line, answers in one write, and waits for the client to close
/// (with a reset: neither side keeps a TIME_WAIT socket).
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(STALL))?;
    let mut request = [0u8; 1024];
    let mut len = 0;
    while !request[..len].ends_with(b"\r\n\r\n") {
        match stream.read(&mut request[len..])? {
            0 => return Ok(()),
            n => len += n,
        }
        if len == request.len() {
            return Ok(());
        }
    }
    stream.write_all(RESPONSE)?;
    loop {
        match stream.read(&mut request) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // The client's close, as it closes: with a reset.
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

/// `bench-client --request`'s exchange on a connected `stream`: the request
/// out, the whole response in.
fn exchange(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(STALL))?;
    stream.write_all(REQUEST)?;
    let mut response = [0u8; RESPONSE.len()];
    stream.read_exact(&mut response)?;
    if response != RESPONSE {
        return Err(std::io::Error::other("unexpected response"));
    }
    Ok(())
}

/// `bench-client`: connect()+close() (with `--request`, an exchange in
/// between) for `seconds`, then prints `ops=N bytes=0 errors=E
/// elapsed_ns=T` (ops: connections). With `--alternate`, first a line
/// `window port=P ops=N bytes=0 errors=E elapsed_ns=T` per window.
pub fn client(args: &ClientArgs) -> anyhow::Result<()> {
    die_with_parent();
    let ip = match (args.addr, args.ipv6) {
        (Some(addr), _) => addr,
        (None, true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (None, false) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let duration = Duration::from_secs_f64(args.seconds);
    let mut total = Loop::default();
    let start = Instant::now();
    match args.alternate {
        None => total = Loop::run(SocketAddr::new(ip, args.port), args.request, duration),
        Some(other) => {
            let window = Duration::from_secs_f64(args.window);
            let mut pair = 0u32;
            while start.elapsed() < duration {
                let mut ports = [args.port, other];
                if pair % 2 == 1 {
                    ports.reverse();
                }
                for port in ports {
                    let run = Loop::run(SocketAddr::new(ip, port), args.request, window);
                    print!("window port={port} ");
                    print_result(run.connects, 0, run.errors, run.elapsed);
                    total.add(run);
                }
                pair += 1;
            }
            total.elapsed = start.elapsed();
        }
    }
    if let Some(err) = &total.first_error {
        eprintln!(
            "bench-client: {} connects failed, first: {err}",
            total.errors
        );
    }
    print_result(total.connects, 0, total.errors, total.elapsed);
    Ok(())
}

/// What a connect loop did.
#[derive(Default)]
struct Loop {
    connects: u64,
    errors: u64,
    first_error: Option<std::io::Error>,
    elapsed: Duration,
}

impl Loop {
    /// Connects to `addr` and closes (with `request`, an exchange in
    /// between) until `duration` has passed.
    fn run(addr: SocketAddr, request: bool, duration: Duration) -> Self {
        let mut done = Self::default();
        let start = Instant::now();
        while start.elapsed() < duration {
            match TcpStream::connect(addr).and_then(|mut stream| {
                if request {
                    exchange(&mut stream)?;
                }
                Ok(stream)
            }) {
                Ok(stream) => {
                    // RST on close: no TIME_WAIT, so ephemeral ports never run out.
                    linger_zero(&stream);
                    done.connects += 1;
                }
                // A bare connect's server closes with a reset as soon as it
                // has accepted. When that reset lands before connect() has
                // looked at its socket again, connect() returns ECONNRESET
                // for a connection that was made, handshake and accept and
                // all (about 1 in 10,000 here, with or without a daemon).
                Err(err) if !request && err.kind() == ErrorKind::ConnectionReset => {
                    done.connects += 1;
                }
                Err(err) => {
                    done.errors += 1;
                    done.first_error.get_or_insert(err);
                }
            }
        }
        done.elapsed = start.elapsed();
        done
    }

    fn add(&mut self, other: Self) {
        self.connects += other.connects;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    use super::{answer, exchange, linger_zero};

    #[test]
    fn a_request_gets_the_whole_response_and_the_server_sees_the_close() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                answer(stream).unwrap();
            }
        });
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).unwrap();
            exchange(&mut stream).unwrap();
            linger_zero(&stream);
        }
        // Each answer returned once its client closed: the second
        // connection was accepted after the first one's answer ended.
        server.join().unwrap();
    }
}
