//! The bench's load: a listener that accepts and immediately closes, and a
//! client that connects and closes in a loop; a receiver and a sender (a TCP
//! stream or UDP datagrams); a loop spawning `/bin/true`. All are hidden
//! xtask subcommands started inside the bench namespaces with `ip netns
//! exec`, so the client's executable is this binary (the daemon's rules can
//! name it). Each prints one line, `ops=N bytes=B errors=E elapsed_ns=T`
//! (`bench-client --alternate` one per window before it), which [`drive`]
//! reads back.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

mod drive;

pub use self::drive::{Run, Server, Target, run_alternating, run_client, run_receive, run_timed};

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

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

#[derive(clap::Args)]
pub struct ReceiveArgs {
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// Address and port to receive on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Seconds to count for, from the first data received.
    #[arg(long)]
    pub seconds: f64,
}

#[derive(clap::Args)]
pub struct SendArgs {
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// Address and port to send to.
    #[arg(long)]
    pub to: SocketAddr,
    /// Bytes per write (TCP) or per datagram (UDP).
    #[arg(long)]
    pub size: usize,
    /// Give up after this many seconds (the bench stops it sooner).
    #[arg(long)]
    pub seconds: f64,
}

#[derive(clap::Args)]
pub struct SpawnArgs {
    #[arg(long)]
    pub seconds: f64,
    /// The program spawned (no arguments), waited for each time.
    #[arg(long, default_value = "/bin/true")]
    pub program: String,
}

#[derive(clap::Args)]
pub struct GetsockoptArgs {
    #[arg(long)]
    pub seconds: f64,
}

#[derive(clap::Args)]
pub struct BindArgs {
    #[arg(long)]
    pub seconds: f64,
}

/// Bytes per UDP datagram of the receive loads: small, so the per-packet
/// path (where `lw_receive` runs) dominates.
pub const DATAGRAM_SIZE: usize = 64;
/// Bytes per write of the TCP stream (and per read of its receiver).
pub const STREAM_CHUNK: usize = 64 * 1024;
/// A helper that stops delivering for this long has failed.
const STALL: Duration = Duration::from_secs(2);
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

fn print_result(ops: u64, bytes: u64, errors: u64, elapsed: Duration) {
    println!(
        "ops={ops} bytes={bytes} errors={errors} elapsed_ns={}",
        elapsed.as_nanos()
    );
}

/// `bench-receive`: receives on `listen` (accepting one TCP connection, or
/// UDP datagrams) and counts reads and bytes for `seconds` from the first
/// read, then prints `ops=N bytes=B errors=0 elapsed_ns=T` (ops: reads).
/// Prints `listening` once bound.
pub fn receive(args: &ReceiveArgs) -> anyhow::Result<()> {
    die_with_parent();
    let duration = Duration::from_secs_f64(args.seconds);
    let listen = args.listen;
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut read: Box<Reader> = match args.proto {
        Proto::Tcp => {
            let listener =
                TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
            announce()?;
            let mut stream = accept_within(&listener, STALL)?;
            stream.set_read_timeout(Some(STALL))?;
            Box::new(move |buf| stream.read(buf))
        }
        Proto::Udp => {
            let socket =
                UdpSocket::bind(listen).with_context(|| format!("cannot bind {listen}"))?;
            socket.set_read_timeout(Some(STALL))?;
            announce()?;
            // With the source address, as UDP tunnels (QUIC, WireGuard)
            // read: what makes the recvmsg hooks run.
            Box::new(move |buf| socket.recv_from(buf).map(|(n, _)| n))
        }
    };
    // The first read starts the clock and is not counted.
    let first = read(&mut buf).context("waiting for the first data")?;
    if first == 0 {
        bail!("the sender closed the stream at once");
    }
    let (mut ops, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        let n = read(&mut buf).context("receiving")?;
        if n == 0 && args.proto == Proto::Tcp {
            bail!("the sender closed the stream early");
        }
        ops += 1;
        bytes += n as u64;
        if start.elapsed() >= duration {
            break;
        }
    }
    print_result(ops, bytes, 0, start.elapsed());
    Ok(())
}

/// One read from the receiving socket.
type Reader = dyn FnMut(&mut [u8]) -> std::io::Result<usize>;

/// Accepts one connection, failing if none comes within `limit`.
fn accept_within(listener: &TcpListener, limit: Duration) -> anyhow::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err).context("accepting the stream"),
        }
    }
}

fn announce() -> anyhow::Result<()> {
    println!("listening");
    std::io::stdout().flush()?;
    Ok(())
}

/// `bench-send`: writes a TCP stream or sends UDP datagrams of `size` bytes
/// to `to` as fast as it can, until the receiver goes away or `seconds` pass.
pub fn send(args: &SendArgs) -> anyhow::Result<()> {
    die_with_parent();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let buf = vec![0x5au8; args.size];
    let to = args.to;
    match args.proto {
        Proto::Tcp => {
            let mut stream =
                TcpStream::connect(to).with_context(|| format!("cannot connect to {to}"))?;
            while Instant::now() < deadline {
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        }
        Proto::Udp => {
            let any: SocketAddr = match to {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(any)?;
            socket
                .connect(to)
                .with_context(|| format!("cannot connect to {to}"))?;
            while Instant::now() < deadline {
                match socket.send(&buf) {
                    Ok(_) => {}
                    // A full qdisc or device queue: try again.
                    Err(err)
                        if matches!(err.kind(), ErrorKind::WouldBlock)
                            || err.raw_os_error() == Some(libc::ENOBUFS) => {}
                    // ECONNREFUSED: the receiver has gone.
                    Err(_) => break,
                }
            }
        }
    }
    Ok(())
}

/// `bench-spawn`: spawns `program` and waits for it, in a loop, for
/// `seconds`; prints `ops=N bytes=0 errors=E elapsed_ns=T` (ops: spawns).
pub fn spawn(args: &SpawnArgs) -> anyhow::Result<()> {
    die_with_parent();
    timed(args.seconds, 1, || {
        let status = Command::new(&args.program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(status) => Ok(status.success()),
            Err(err) => bail!("cannot spawn {}: {err}", args.program),
        }
    })
}

/// Runs `op` for `seconds`, in batches of `batch` between clock reads (a
/// clock read costs about as much as a fast operation), and prints
/// `ops=N bytes=0 errors=E elapsed_ns=T`; `op` says whether it succeeded.
fn timed(
    seconds: f64,
    batch: u32,
    mut op: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(seconds);
    let (mut ops, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..batch {
            ops += 1;
            if !op()? {
                errors += 1;
            }
        }
    }
    print_result(ops, 0, errors, start.elapsed());
    Ok(())
}

/// `bench-getsockopt`: `getsockopt(SOL_SOCKET, SO_RCVBUF)` on a TCP
/// socket in a loop for `seconds`; prints `ops=N ...` (ops: calls). Every
/// getsockopt in a cgroup with a `cgroup/getsockopt` program pays for it,
/// whatever the option.
pub fn getsockopt(args: &GetsockoptArgs) -> anyhow::Result<()> {
    die_with_parent();
    let socket = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot open a socket to ask")?;
    timed(args.seconds, 256, || {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, and a buffer and length we own.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        Ok(rc == 0)
    })
}

/// `bench-bind`: a TCP socket bound to `0.0.0.0:0` (a port the kernel
/// picks, which no guard names) and closed, in a loop for `seconds`;
/// prints `ops=N ...` (ops: binds).
pub fn bind(args: &BindArgs) -> anyhow::Result<()> {
    die_with_parent();
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    timed(args.seconds, 64, || {
        // SAFETY: plain socket calls on a descriptor we own and close, with
        // an address we own and its size.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                bail!("socket() failed: {}", std::io::Error::last_os_error());
            }
            let rc = libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            libc::close(fd);
            Ok(rc == 0)
        }
    })
}

fn linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized, initialized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// `ip netns exec` forks rather than execs, so killing our child (ip) alone
/// would orphan the helper: make the helper die with it.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no other effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
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
