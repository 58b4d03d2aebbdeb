//! The bench's load: a listener that accepts and immediately closes, and a
//! client that connects and closes in a loop ([`connect`]); a receiver and
//! a sender (a TCP stream or UDP datagrams); a loop spawning `/bin/true`. All are hidden
//! xtask subcommands started inside the bench namespaces with `ip netns
//! exec`, so the client's executable is this binary (the daemon's rules can
//! name it). Each prints one line, `ops=N bytes=B errors=E elapsed_ns=T`
//! (`bench-client --alternate` one per window before it), which [`drive`]
//! reads back.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

mod connect;
mod drive;

pub use self::{
    connect::{ClientArgs, ServerArgs, client, server},
    drive::{Run, Server, Target, run_alternating, run_client, run_receive, run_timed},
};

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
    /// Listen on this address meanwhile (close-on-exec: the children do
    /// not keep the listener).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
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
    let _listener = match args.listen {
        Some(at) => Some(TcpListener::bind(at).with_context(|| format!("cannot listen on {at}"))?),
        None => None,
    };
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
