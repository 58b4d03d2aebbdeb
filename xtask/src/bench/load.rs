//! The bench's load: a listener that accepts and immediately closes, and a
//! client that connects and closes in a loop. Both are hidden xtask
//! subcommands started inside the bench namespace with `ip netns exec`, so the
//! client's executable is this binary (the daemon's rules can name it).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::netns::Netns;
use crate::proc::{self, say};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Ports to listen on (127.0.0.1).
    #[arg(required = true)]
    pub ports: Vec<u16>,
}

#[derive(clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub seconds: f64,
}

/// `bench-server`: one accept loop per port; prints `listening` once all are bound.
pub fn server(args: &ServerArgs) -> anyhow::Result<()> {
    die_with_parent();
    let mut threads = Vec::new();
    for &port in &args.ports {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        // A full accept queue drops SYNs and costs the client a 1 s retransmit:
        // raise std's backlog to the namespace's somaxconn (listen(2) again
        // on a listening socket only updates the backlog).
        // SAFETY: listen(2) on a socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), i32::from(u16::MAX)) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot raise the backlog on port {port}"));
        }
        threads.push(std::thread::spawn(move || {
            loop {
                // Errors (e.g. a connection reset before accept) are expected under load.
                if let Ok((stream, _)) = listener.accept() {
                    linger_zero(&stream);
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

/// `bench-client`: connect()+close() for `seconds`, then prints
/// `connects=N errors=E elapsed_ns=T`.
pub fn client(args: &ClientArgs) -> anyhow::Result<()> {
    die_with_parent();
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let duration = Duration::from_secs_f64(args.seconds);
    let (mut connects, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    let start = Instant::now();
    while start.elapsed() < duration {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                // RST on close: no TIME_WAIT, so ephemeral ports never run out.
                linger_zero(&stream);
                connects += 1;
            }
            Err(err) => {
                errors += 1;
                first_error.get_or_insert(err);
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(err) = first_error {
        eprintln!("bench-client: {errors} connects failed, first: {err}");
    }
    println!(
        "connects={connects} errors={errors} elapsed_ns={}",
        elapsed.as_nanos()
    );
    Ok(())
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

/// A running `bench-server`, killed on drop.
pub struct Server {
    child: Child,
}

impl Server {
    pub fn start(netns: &Netns, xtask: &Path, ports: &[u16]) -> anyhow::Result<Self> {
        let mut cmd = netns.exec(xtask);
        cmd.arg("bench-server")
            .args(ports.iter().map(u16::to_string))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        say!("starting listeners on {ports:?} in {}", netns.name());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", proc::display(&cmd)))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let server = Self { child };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading bench-server's output")?;
        if line.trim() != "listening" {
            bail!("bench-server did not start (said {:?})", line.trim());
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client run measured.
pub struct ClientRun {
    pub connects: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl ClientRun {
    pub fn rate(&self) -> f64 {
        self.connects as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `bench-client` inside `netns` against `port` for `seconds`.
pub fn run_client(
    netns: &Netns,
    xtask: &Path,
    port: u16,
    seconds: f64,
) -> anyhow::Result<ClientRun> {
    let out = proc::output(
        netns
            .exec(xtask)
            .args(["bench-client", "--port", &port.to_string(), "--seconds"])
            .arg(seconds.to_string()),
    )?;
    let field = |key: &str| -> anyhow::Result<u64> {
        out.split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("bench-client printed no {key}: {out:?}"))
    };
    Ok(ClientRun {
        connects: field("connects")?,
        errors: field("errors")?,
        elapsed: Duration::from_nanos(field("elapsed_ns")?),
    })
}
