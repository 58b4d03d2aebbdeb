//! The query socket `<run_dir>/query.sock`: newline-delimited JSON requests
//! ([`super::request`]) answered from `LW_CONNS`, for services and for
//! `loopwarden who` / `loopwarden conns`.
//!
//! Every client runs in a task of its own; the lookups (map reads, `/proc`,
//! NSS) run on the blocking pool, and every read and write has a deadline,
//! so no client can hold up the daemon's event loop or another client.
//! Bounds: [`MAX_CLIENTS`] at once (the next gets `busy` and is closed), a
//! request line of at most [`MAX_LINE`] bytes (`too-long`, then closed),
//! [`IDLE`] to send one (`timeout`, then closed), [`WRITE_TIMEOUT`] to take
//! an answer (closed).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::timeout,
};
use tracing::{debug, warn};

use super::{
    Conns, netns_of,
    request::{Caller, ErrorCode, Reply, Request},
};
use crate::{
    events::SharedRules,
    run_socket::{self, RunSocket, RunSocketError},
};

/// The socket's file name in the run directory.
pub const SOCKET_NAME: &str = "query.sock";
/// Longest request line, newline excluded.
pub const MAX_LINE: usize = 4096;
/// How long a client may take to send a complete request line.
pub const IDLE: Duration = Duration::from_secs(10);
/// How long a client may take to read an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once.
pub const MAX_CLIENTS: usize = 128;

/// The running server; dropping it stops accepting and removes the socket
/// file (clients being served finish their current request).
pub struct QueryServer {
    accept: JoinHandle<()>,
    _socket: RunSocket,
}

impl Drop for QueryServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What every client task shares.
struct Shared {
    conns_pin: PathBuf,
    /// `LW_CONNS`, opened at the first request that needs it (and again
    /// after a failed open).
    conns: Mutex<Option<Arc<Conns>>>,
    cgroup_root: PathBuf,
    rules: SharedRules,
}

impl Shared {
    fn conns(&self) -> Result<Arc<Conns>, String> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = &*conns {
            return Ok(open.clone());
        }
        let open = Arc::new(Conns::open(&self.conns_pin).map_err(|e| crate::error_chain(&e))?);
        *conns = Some(open.clone());
        Ok(open)
    }
}

/// Serves `<run_dir>/query.sock` (replacing a stale socket file; the caller
/// holds the run directory's instance lock) from the `LW_CONNS` pinned at
/// `conns_pin`, naming rules from `rules`. Must run inside the runtime.
pub fn serve(
    run_dir: &Path,
    conns_pin: PathBuf,
    cgroup_root: PathBuf,
    rules: SharedRules,
) -> Result<QueryServer, RunSocketError> {
    // Anyone may connect: each request is judged by its SO_PEERCRED.
    let (listener, socket) = run_socket::bind(run_dir.join(SOCKET_NAME))?;
    let shared = Arc::new(Shared {
        conns_pin,
        conns: Mutex::new(None),
        cgroup_root,
        rules,
    });
    let accept = tokio::spawn(accept_loop(listener, shared));
    Ok(QueryServer {
        accept,
        _socket: socket,
    })
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to close.
                warn!("accepting a query client failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(client(stream, shared.clone(), slot));
            }
            Err(_) => {
                tokio::spawn(refuse(stream));
            }
        }
    }
}

/// One error line for a client over [`MAX_CLIENTS`], then close.
async fn refuse(mut stream: UnixStream) {
    let reply = Reply::error(
        None,
        ErrorCode::Busy,
        format!("{MAX_CLIENTS} clients are being served; try again shortly"),
    );
    let _ = timeout(WRITE_TIMEOUT, stream.write_all(&reply.line())).await;
}

/// Serves one client until it closes, misbehaves or times out.
async fn client(stream: UnixStream, shared: Arc<Shared>, _slot: OwnedSemaphorePermit) {
    let caller = match stream.peer_cred() {
        Ok(cred) => Caller {
            uid: cred.uid(),
            netns: cred
                .pid()
                .and_then(|pid| u32::try_from(pid).ok())
                .and_then(|pid| netns_of(pid).ok()),
        },
        Err(e) => {
            debug!("reading a query client's credentials failed: {e}");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = (MAX_LINE + 1) as u64;
        let mut bounded = (&mut read).take(limit);
        let (reply, last) = match timeout(IDLE, bounded.read_until(b'\n', &mut line)).await {
            Err(_) => (
                Reply::error(
                    None,
                    ErrorCode::Timeout,
                    format!("no request within {} s", IDLE.as_secs()),
                ),
                true,
            ),
            Ok(Err(_) | Ok(0)) => return,
            Ok(Ok(_)) if line.last() != Some(&b'\n') && line.len() > MAX_LINE => (
                Reply::error(
                    None,
                    ErrorCode::TooLong,
                    format!("a request line is at most {MAX_LINE} bytes"),
                ),
                true,
            ),
            Ok(Ok(_)) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                (answer(&line, caller, &shared).await, false)
            }
        };
        match timeout(WRITE_TIMEOUT, write.write_all(&reply.line())).await {
            Ok(Ok(())) if !last => {}
            _ => return,
        }
    }
}

/// The answer to one request line, looked up on the blocking pool.
async fn answer(line: &[u8], caller: Caller, shared: &Arc<Shared>) -> Reply {
    let request = match Request::parse(line) {
        Ok(request) => request,
        Err(reply) => return *reply,
    };
    let shared = shared.clone();
    let lookup = tokio::task::spawn_blocking(move || {
        let conns = shared.conns();
        request.answer(
            caller,
            conns.as_deref().map_err(String::as_str),
            shared.cgroup_root.clone(),
            shared.rules.clone(),
        )
    });
    lookup.await.unwrap_or_else(|e| {
        Reply::error(
            None,
            ErrorCode::Unavailable,
            format!("the lookup failed: {e}"),
        )
    })
}
