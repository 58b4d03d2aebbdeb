//! Prometheus metrics, served by the daemon on `<run_dir>/metrics.sock`
//! (`[metrics] socket`, on by default) and, opt-in, on a loopback TCP
//! address (`[metrics] listen`): `GET /metrics` in HTTP/1.x, answered with
//! the text exposition format ([`text`]) and `Connection: close`.
//!
//! What the numbers come from is part of each family's HELP: the kernel's
//! own per-CPU counters (`LW_STATS`) and maps, read from the pins at each
//! scrape ([`kernel`]; map entry counts at most once a second), or the
//! reports the daemon read ([`crate::events::tally`]: per rule and port, which the kernel
//! does not count). Nothing is parsed back from log lines.
//!
//! Every client runs in a task of its own with deadlines on reading the
//! request and writing the answer, at most [`MAX_CLIENTS`] at once; the map
//! reads run on the blocking pool. A scrape never holds up the event loop.

mod kernel;
mod render;
pub mod text;

use std::{
    io,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinHandle,
    time::timeout,
};
use tracing::{debug, warn};

pub use self::kernel::{USAGE_MAPS, Usage, usage};
use self::{kernel::KernelSource, render::render};
use crate::{
    clients::Clients,
    config::Metrics,
    events::tally::Reported,
    kernel::pins::PinDir,
    run_socket::{self, RunSocket, RunSocketError},
};

/// The socket's file name in the run directory.
pub const SOCKET_NAME: &str = "metrics.sock";
/// Longest request (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to read the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; one more closes the one waiting longest.
pub const MAX_CLIENTS: usize = 16;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Socket(#[from] RunSocketError),
    #[error("{what} {addr} failed")]
    Tcp {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What the numbers are read from.
pub struct Sources {
    pub pins: PinDir,
    /// Per rule, port and verdict, from [`crate::events::tally::Tally::subscribe`].
    pub reported: watch::Receiver<Arc<Reported>>,
    pub started: SystemTime,
}

/// The running server; dropping it stops accepting and removes the socket
/// file.
pub struct MetricsServer {
    tasks: Vec<JoinHandle<()>>,
    socket: Option<RunSocket>,
    /// Where it serves, for the log.
    pub serving: Vec<String>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Shared {
    kernel: KernelSource,
    reported: watch::Receiver<Arc<Reported>>,
    started: SystemTime,
    /// The clients being served (see [`Clients`]).
    clients: Clients<()>,
}

/// Serves the metrics as `config` says (nothing when it says neither).
/// Replaces a stale socket file; the caller holds the run directory's
/// instance lock. Must run inside the runtime.
pub fn serve(
    run_dir: &Path,
    config: &Metrics,
    sources: Sources,
) -> Result<MetricsServer, MetricsError> {
    let shared = Arc::new(Shared {
        kernel: KernelSource::new(sources.pins),
        reported: sources.reported,
        started: sources.started,
        clients: Clients::new("metrics", MAX_CLIENTS),
    });
    let mut server = MetricsServer {
        socket: None,
        tasks: Vec::new(),
        serving: Vec::new(),
    };
    // Each endpoint on its own: a taken TCP port leaves the socket serving.
    if let Some(listen) = &config.listen {
        match bind_tcp(listen.value) {
            Ok(listener) => {
                server
                    .serving
                    .push(format!("http://{}/metrics", listen.value));
                server
                    .tasks
                    .push(tokio::spawn(accept_tcp(listener, shared.clone())));
            }
            Err(e) => tracing::error!(
                "the metrics' TCP listener is off: {}",
                crate::error_chain(&e)
            ),
        }
    }
    if config.socket {
        // Any local user may scrape, as any may through a loopback port.
        let (listener, socket) = run_socket::bind(run_dir.join(SOCKET_NAME))?;
        server.serving.push(socket.path().display().to_string());
        server.socket = Some(socket);
        server
            .tasks
            .push(tokio::spawn(accept_unix(listener, shared)));
    }
    Ok(server)
}

/// The opt-in TCP listener on `addr`, registered with the runtime.
fn bind_tcp(addr: std::net::SocketAddr) -> Result<TcpListener, MetricsError> {
    let tcp_error = |what, source| MetricsError::Tcp { what, addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(|e| tcp_error("binding", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| tcp_error("configuring", e))?;
    TcpListener::from_std(listener).map_err(|e| tcp_error("registering", e))
}

async fn accept_unix(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => client(stream, &shared),
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => client(stream, &shared),
            Err(e) => accept_failed(e).await,
        }
    }
}

/// An accept error (out of descriptors): said, and tried again shortly.
async fn accept_failed(e: io::Error) {
    warn!("metrics: accepting a client failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serves one client in a task of its own. With [`MAX_CLIENTS`] served,
/// it takes the place of the one that has waited longest (for its request
/// to come, or for its answer to be read): clients that hold connections
/// open without asking, or never read, keep no scrape out.
fn client<S>(stream: S, shared: &Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (id, stop) = shared.clients.admit(());
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            served = answer(stream, &shared, id) => {
                if let Err(e) = served {
                    debug!("metrics: a client went away: {e}");
                }
            }
            _ = stop => debug!("metrics: closing a client, the one waiting longest, for a new one"),
        }
        shared.clients.leave(id);
    });
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

/// The request line of a complete request head.
fn parse_request(head: &[u8]) -> Request {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Request::BadMethod;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

/// Reads a request head (up to the blank line), at most [`MAX_REQUEST`]
/// bytes: `None` when it is longer or the client stopped sending.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

async fn answer<S>(mut stream: S, shared: &Arc<Shared>, id: u64) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => None,
    };
    let request = head.as_deref().map_or(Request::Bad, parse_request);
    let head_only = head.as_deref().is_some_and(|h| h.starts_with(b"HEAD "));
    let (status, content_type, body) = match request {
        Request::Metrics => {
            let render_from = shared.clone();
            let rendered = tokio::task::spawn_blocking(move || render(&render_from));
            let body = shared
                .clients
                .looking_up(id, rendered)
                .await
                .map_err(io::Error::other)?;
            ("200 OK", text::CONTENT_TYPE, body)
        }
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "the metrics are at /metrics\n".to_owned(),
        ),
        Request::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_owned(),
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            format!("send `GET /metrics HTTP/1.0` and a blank line, within {MAX_REQUEST} bytes\n"),
        ),
    };
    let mut reply = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        reply.extend_from_slice(body.as_bytes());
    }
    match timeout(WRITE_TIMEOUT, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(written) => written,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(parse_request(b"hello\n\n"), Request::Bad);
    }
}
