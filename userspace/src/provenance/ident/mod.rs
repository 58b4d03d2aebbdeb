//! The RFC 1413 ident responder (`[ident] listen`): ident-aware services
//! (PostgreSQL's `ident` authentication, IRC servers, ...) ask it which
//! user holds the other end of a TCP connection, and it answers from the
//! origin loopwarden bound to that connection at `connect()`
//! (`LW_CONN_SLOTS`, `LW_CONNS`): the user only for a direct connection
//! (allowed, no relay evidence); `[ident] relayed` for a relayed or
//! reported one, so a relay's uid is never handed out as the remote
//! party's; `NO-USER` for a connection loopwarden knows nothing of.
//!
//! The listeners are bound at start, before the programs are attached
//! ([`bind`]), in `[ident] netns` when it is set (by
//! a short-lived thread that enters it: sockets keep the namespace they
//! were made in), and connections are looked up in that namespace. Each
//! client is served by a task of its own, at most [`MAX_CLIENTS`] at once,
//! so no client can stall the daemon or another client: a client has
//! `[ident] timeout_ms` for each query (RFC 1413's idle timeout, counted
//! from its connect or its last reply, however it trickles the bytes in),
//! each reply as long to be taken, and a new client when all slots are
//! taken closes the one idle longest, so clients that hold connections
//! open keep no one else out. The `[ident]` table is read at start only: a
//! reload (SIGHUP) leaves the responder as it is.

mod request;
mod session;

use std::{
    fmt, io,
    net::{SocketAddr, TcpListener as StdListener},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::TcpListener;
use tracing::warn;

use super::{Conns, ConnsError, netns_of};
use crate::clients::Clients;
use crate::config::{Config, IdentError, Location};

/// Clients served at once; one more closes the one idle longest.
pub const MAX_CLIENTS: usize = 64;
/// Pause after a failed `accept()` (e.g. out of descriptors), so the
/// failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the responder could not start.
#[derive(Debug, thiserror::Error)]
pub enum IdentStartError {
    #[error(
        "{file}:{at}: [ident] listen \"{addr}\": cannot bind it{}{}",
        netns.as_ref().map(|p| format!(" in network namespace {}", p.display())).unwrap_or_default(),
        bind_hint(source, *addr)
    )]
    Bind {
        /// The config file.
        file: String,
        addr: SocketAddr,
        at: Location,
        netns: Option<PathBuf>,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{at}: [ident] netns \"{}\"", path.display())]
    Netns {
        file: String,
        path: PathBuf,
        at: Location,
        #[source]
        source: io::Error,
    },
    #[error("reading this daemon's own network namespace failed")]
    OwnNetns(#[source] io::Error),
    #[error("the ident responder needs the connection maps (LW_CONN_SLOTS, LW_CONNS)")]
    Conns(#[from] ConnsError),
}

impl IdentStartError {
    /// Whether time may mend it, as the network comes up: an address no
    /// interface has yet (the unit starts before the network), a `netns`
    /// file another unit has not made yet. The daemon starts without the
    /// responder then, and tries again every second.
    pub fn may_mend_itself(&self) -> bool {
        match self {
            Self::Bind { source, .. } => source.raw_os_error() == Some(libc::EADDRNOTAVAIL),
            Self::Netns { source, .. } => source.kind() == io::ErrorKind::NotFound,
            Self::OwnNetns(_) | Self::Conns(_) => false,
        }
    }
}

/// What an operator can do about a failed bind.
fn bind_hint(error: &io::Error, addr: SocketAddr) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need CAP_NET_BIND_SERVICE)"
        }
        io::ErrorKind::AddrInUse => " (another identd, or another loopwarden, listens there)",
        io::ErrorKind::AddrNotAvailable => " (no interface has that address in that namespace)",
        _ => "",
    }
}

/// What every client's task needs.
struct Shared {
    conns: Conns,
    /// The listeners' network namespace (inode number).
    netns: u32,
    relayed: IdentError,
    /// How long a client may take over each query, and a reply to be taken.
    timeout: Duration,
    clients: Clients<SocketAddr>,
    /// Permits for user name lookups (see `session::user_name`).
    name_lookups: Arc<tokio::sync::Semaphore>,
}

/// The running responder, as the daemon reports it.
pub struct Serving {
    addrs: Vec<SocketAddr>,
    netns: Option<PathBuf>,
}

impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<String> = self.addrs.iter().map(SocketAddr::to_string).collect();
        write!(f, "{}", addrs.join(", "))?;
        match &self.netns {
            Some(path) => write!(f, " in network namespace {}", path.display()),
            None => Ok(()),
        }
    }
}

/// The responder's listeners, bound but not yet served: binding comes
/// before the programs are attached, so an address that cannot be bound
/// stops the start with nothing changed.
pub struct Bound {
    listeners: Vec<TcpListener>,
    /// The listeners' network namespace (inode number).
    netns: u32,
    serving: Serving,
    relayed: IdentError,
    timeout: Duration,
}

/// Binds every `[ident] listen` address of `config` (in `[ident] netns`
/// when it is set), on the current tokio runtime.
pub fn bind(config: &Config) -> Result<Bound, IdentStartError> {
    let file = &config.source;
    let config = &config.ident;
    let netns_path = config.netns.as_ref().map(|n| n.value.clone());
    let addrs: Vec<SocketAddr> = config.listen.iter().map(|l| l.value).collect();
    let (netns, bound) = match &config.netns {
        Some(located) => {
            let netns_error = |source| IdentStartError::Netns {
                file: file.clone(),
                path: located.value.clone(),
                at: located.at,
                source,
            };
            let inode = std::fs::metadata(&located.value)
                .map_err(netns_error)?
                .ino() as u32;
            let wanted = addrs.clone();
            let bound = crate::resolve::in_netns(&located.value, move || Ok(bind_all(&wanted)))
                .map_err(netns_error)?;
            (inode, bound)
        }
        None => {
            let inode = netns_of(std::process::id()).map_err(IdentStartError::OwnNetns)?;
            (inode, bind_all(&addrs))
        }
    };
    let mut listeners = Vec::with_capacity(bound.len());
    for (located, result) in config.listen.iter().zip(bound) {
        let bind_error = |source| IdentStartError::Bind {
            file: file.clone(),
            addr: located.value,
            at: located.at,
            netns: netns_path.clone(),
            source,
        };
        let std_listener = result.map_err(bind_error)?;
        let listener = TcpListener::from_std(std_listener).map_err(bind_error)?;
        listeners.push(listener);
    }
    Ok(Bound {
        listeners,
        netns,
        serving: Serving {
            addrs,
            netns: netns_path,
        },
        relayed: config.relayed,
        timeout: Duration::from_millis(u64::from(config.timeout_ms)),
    })
}

impl Bound {
    /// Serves the listeners, answering from the connection maps pinned in
    /// `maps_dir`.
    pub fn serve(self, maps_dir: &Path) -> Result<Serving, IdentStartError> {
        let shared = Arc::new(Shared {
            conns: Conns::open(maps_dir)?,
            netns: self.netns,
            relayed: self.relayed,
            timeout: self.timeout,
            clients: Clients::new("ident", MAX_CLIENTS),
            name_lookups: Arc::new(tokio::sync::Semaphore::new(session::NAME_LOOKUPS)),
        });
        for listener in self.listeners {
            tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        }
        Ok(self.serving)
    }
}

/// Binds each address (std sets `SO_REUSEADDR`, so a restart does not
/// wait out `TIME_WAIT`), non-blocking, in the calling thread's namespace.
fn bind_all(addrs: &[SocketAddr]) -> Vec<io::Result<StdListener>> {
    addrs
        .iter()
        .map(|addr| {
            let listener = StdListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect()
}

/// Accepts clients for ever, each served by a task of its own.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (id, stop) = shared.clients.admit(peer);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    session::serve(stream, Arc::clone(&shared), id, stop).await;
                    shared.clients.leave(id);
                });
            }
            Err(e) => {
                warn!("ident: accept() failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
