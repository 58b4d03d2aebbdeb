//! The query socket `<run_dir>/query.sock`: newline-delimited JSON requests
//! ([`super::request`]) answered from `LW_CONNS`, for services and for
//! `loopwarden who` / `loopwarden conns`.
//!
//! Every client runs in a task of its own; the lookups (map reads, `/proc`,
//! NSS) run on the blocking pool, and every read, lookup and write has a
//! deadline, so no client can hold up the daemon's event loop or another
//! client. A lookup past [`LOOKUP_TIMEOUT`] (a user name asked of a
//! directory service that does not answer) is answered `unavailable` and
//! left to its thread; one uid has at most [`MAX_CLIENTS_PER_UID`]
//! lookups running, other users than root [`LOOKUPS`] together.
//! Bounds: [`MAX_CLIENTS`] at once (the next closes the client idle
//! longest), at most [`MAX_CLIENTS_PER_UID`] of them one user's (the next
//! gets `busy` and is closed), a
//! request line of at most [`MAX_LINE`] bytes (`too-long`, then closed),
//! [`IDLE`] to send one (`timeout`, then closed), [`WRITE_TIMEOUT`] to take
//! an answer (closed).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::oneshot,
    task::JoinHandle,
    time::timeout,
};
use tracing::{debug, warn};

use super::{
    Conns, netns_of,
    request::{Caller, ErrorCode, Reply, Request},
};
use crate::{
    clients::Clients,
    events::{SharedRules, SharedUserNames},
    kernel::sockopt,
    resolve,
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
/// How long an answer's lookup may take before the client is told it is
/// unavailable (the lookup's thread goes on alone): a walk of a million
/// connections takes seconds, and `loopwarden who`/`conns` wait 30 s.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(25);
/// Lookups of other users than root running at once, those past their
/// deadline included (each holds a thread of the blocking pool, which
/// ident and the metrics page use too); root has its own
/// [`MAX_CLIENTS_PER_UID`] beside them.
const LOOKUPS: usize = MAX_CLIENTS;
/// Clients served at once.
pub const MAX_CLIENTS: usize = 128;
/// Clients of one uid served at once, so that one user's clients cannot
/// take every slot from the others (root's included).
pub const MAX_CLIENTS_PER_UID: usize = 16;

/// A client's place among those served, given back when it drops.
struct Slot {
    clients: Arc<Clients<u32>>,
    id: u64,
}

impl Slot {
    /// A place for a client of `uid`, and the signal that it must stop
    /// (see [`Clients::admit`]); `Err` (the uid) when that uid holds
    /// [`MAX_CLIENTS_PER_UID`] already.
    fn take(clients: &Arc<Clients<u32>>, uid: u32) -> Result<(Slot, oneshot::Receiver<()>), u32> {
        let (id, stop) = clients.admit_within(uid, MAX_CLIENTS_PER_UID)?;
        let slot = Slot {
            clients: Arc::clone(clients),
            id,
        };
        Ok((slot, stop))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clients.leave(self.id);
    }
}

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

/// How many walks of every connection ([`Shared::walks`]) other users
/// than root run at once, one a uid; root has one of its own beside them.
const WALKS: usize = 4;

/// What every client task shares.
struct Shared {
    /// The uids whose walk of every connection the maps hold (`conns`,
    /// `who` by cookie) is under way: a few tens of milliseconds each at
    /// the default capacity, so however many clients ask at once, [`WALKS`]
    /// run at most, one a uid (and root's), and a `who` by addresses (one
    /// lookup) never waits behind them.
    walks: ByUid,
    /// Lookups running on the blocking pool, by uid: counted until their
    /// thread is done, past [`LOOKUP_TIMEOUT`] too.
    lookups: ByUid,
    maps_dir: PathBuf,
    /// The connection maps, opened at the first request that needs them
    /// (and again after a failed open).
    conns: Mutex<Option<Arc<Conns>>>,
    cgroup_root: PathBuf,
    rules: SharedRules,
    /// User names, one cache and one lookup thread for every request.
    names: SharedUserNames,
    /// The daemon's network namespace (inode), the host's: root there is
    /// root of every namespace ([`Caller::is_host_root`]).
    own_netns: Option<u32>,
}

impl Shared {
    fn conns(&self) -> Result<Arc<Conns>, String> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = &*conns {
            return Ok(open.clone());
        }
        let open = Arc::new(Conns::open(&self.maps_dir).map_err(|e| crate::error_chain(&e))?);
        *conns = Some(open.clone());
        Ok(open)
    }
}

/// Serves `<run_dir>/query.sock` (replacing a stale socket file; the caller
/// holds the run directory's instance lock) from the connection maps
/// pinned in `maps_dir`, naming rules from `rules`. Must run inside the runtime.
pub fn serve(
    run_dir: &Path,
    maps_dir: PathBuf,
    cgroup_root: PathBuf,
    rules: SharedRules,
) -> Result<QueryServer, RunSocketError> {
    // Anyone may connect: each request is judged by its SO_PEERCRED.
    let (listener, socket) = run_socket::bind(run_dir.join(SOCKET_NAME))?;
    let shared = Arc::new(Shared {
        walks: ByUid::default(),
        lookups: ByUid::default(),
        maps_dir,
        conns: Mutex::new(None),
        cgroup_root,
        rules,
        names: SharedUserNames::default(),
        own_netns: resolve::current_netns_inum().ok(),
    });
    let accept = tokio::spawn(accept_loop(listener, shared));
    Ok(QueryServer {
        accept,
        _socket: socket,
    })
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let clients = Arc::new(Clients::new("query socket", MAX_CLIENTS));
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
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                debug!("reading a query client's credentials failed: {e}");
                continue;
            }
        };
        let netns = caller_netns(&stream);
        // Root of the host by the socket's namespace and the process's (a
        // pid another process may have by now counts only where the
        // socket's agrees).
        let in_host = |ns: Option<u32>| ns.is_some() && ns == shared.own_netns;
        let caller = Caller {
            uid: cred.uid(),
            netns,
            host_netns: in_host(netns)
                && in_host(
                    cred.pid()
                        .and_then(|pid| u32::try_from(pid).ok())
                        .and_then(|pid| netns_of(pid).ok()),
                ),
        };
        match Slot::take(&clients, caller.share()) {
            Ok((slot, stop)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = client(stream, caller, shared, &slot) => {}
                        _ = stop => debug!(
                            "query socket: closed a client of uid {}, idle longest",
                            caller.uid
                        ),
                    }
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream, caller));
            }
        }
    }
}

/// One error line for a client whose share ([`Caller::share`]) holds
/// [`MAX_CLIENTS_PER_UID`] already, then close.
async fn refuse(mut stream: UnixStream, caller: Caller) {
    let whose = if caller.share() == caller.uid {
        format!("uid {}", caller.uid)
    } else {
        "uid 0 outside the host's network namespace".to_owned()
    };
    let reply = Reply::error(
        None,
        ErrorCode::Busy,
        format!(
            "{MAX_CLIENTS_PER_UID} clients of {whose} are being served; close one, or try \
             again shortly"
        ),
    );
    let _ = timeout(WRITE_TIMEOUT, stream.write_all(&reply.line())).await;
}

/// The network namespace (inode) `stream`'s client connected from: the
/// namespace its socket was made in, as the kernel made the accepted one
/// there (`SIOCGSKNS`). Taken from the socket, not from `/proc/PID` of the
/// pid `SO_PEERCRED` gave, which another process may have by then, or
/// whose main thread may be in another namespace than the thread that
/// connected. `None` when it cannot be told.
fn caller_netns(stream: &impl std::os::fd::AsRawFd) -> Option<u32> {
    sockopt::netns_inode(stream)
        .inspect_err(|e| debug!("reading a query client's network namespace failed: {e}"))
        .ok()
}

/// Serves one client until it closes, misbehaves or times out.
async fn client(stream: UnixStream, caller: Caller, shared: Arc<Shared>, slot: &Slot) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = (MAX_LINE + 1) as u64;
        let mut bounded = (&mut read).take(limit);
        let (reply, last) = match timeout(IDLE, bounded.read_until(b'\n', &mut line)).await {
            Err(_) => (
                Answered::from(Reply::error(
                    None,
                    ErrorCode::Timeout,
                    format!("no request within {} s", IDLE.as_secs()),
                )),
                true,
            ),
            Ok(Err(_) | Ok(0)) => return,
            Ok(Ok(_)) if line.last() != Some(&b'\n') && line.len() > MAX_LINE => (
                Answered::from(Reply::error(
                    None,
                    ErrorCode::TooLong,
                    format!("a request line is at most {MAX_LINE} bytes"),
                )),
                true,
            ),
            Ok(Ok(_)) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                // Idle again while the reply is written (see
                // `Clients::looking_up`).
                let lookup = answer(&line, caller, &shared);
                (slot.clients.looking_up(slot.id, lookup).await, false)
            }
        };
        // A walk's answer counts among the walks under way until it is
        // written (or its client dropped): its memory is bounded by them.
        match timeout(WRITE_TIMEOUT, write.write_all(&reply.line)).await {
            Ok(Ok(())) if !last => {}
            _ => return,
        }
    }
}

/// A reply line, serialized, and the walk it answers (held until written).
struct Answered {
    line: Vec<u8>,
    _walk: Option<Arc<Held>>,
}

impl From<Reply> for Answered {
    fn from(reply: Reply) -> Self {
        Answered {
            line: reply.line(),
            _walk: None,
        }
    }
}

/// Things under way (walks, lookups), counted by the uid that asked for
/// them, each while its [`Held`] lives.
#[derive(Default)]
struct ByUid(Arc<Mutex<HashMap<u32, usize>>>);

impl ByUid {
    /// One more for `uid`, if `admit` lets it given the counts now.
    fn take(&self, uid: u32, admit: impl FnOnce(&HashMap<u32, usize>) -> bool) -> Option<Held> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !admit(&counts) {
            return None;
        }
        *counts.entry(uid).or_default() += 1;
        Some(Held {
            counts: Arc::clone(&self.0),
            uid,
        })
    }

    /// How many `uid` holds.
    #[cfg(test)]
    fn count(&self, uid: u32) -> usize {
        let counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&uid).copied().unwrap_or(0)
    }

    /// A walk of every connection for `uid`, unless one of its own runs,
    /// or (but for root's) [`WALKS`] of other users' run already: users
    /// who take every walk (one with many subordinate uids can) still
    /// leave root its own.
    fn walk(&self, uid: u32) -> Option<Held> {
        self.take(uid, |walks| {
            let users = walks.keys().filter(|&&u| u != 0).count();
            !walks.contains_key(&uid) && (uid == 0 || users < WALKS)
        })
    }

    /// A lookup for `uid`, unless [`MAX_CLIENTS_PER_UID`] of its own run
    /// (as many as its clients: only lookups past their deadline add up),
    /// or (but for root's) [`LOOKUPS`] of other users'.
    fn lookup(&self, uid: u32) -> Option<Held> {
        self.take(uid, |lookups| {
            let users: usize = lookups
                .iter()
                .filter(|&(&u, _)| u != 0)
                .map(|(_, n)| n)
                .sum();
            lookups.get(&uid).copied().unwrap_or(0) < MAX_CLIENTS_PER_UID
                && (uid == 0 || users < LOOKUPS)
        })
    }
}

/// One of a [`ByUid`]'s counts, given back when dropped.
struct Held {
    counts: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// The answer to one request line, looked up and serialized on the
/// blocking pool (a `conns` answer can run to megabytes: neither its
/// building nor its serializing holds the event loop).
async fn answer(line: &[u8], caller: Caller, shared: &Arc<Shared>) -> Answered {
    answer_within(line, caller, shared, LOOKUP_TIMEOUT, look_up).await
}

/// What the blocking pool does for a request: looks it up, serializes
/// the answer.
fn look_up(request: Request, caller: Caller, shared: &Shared) -> Vec<u8> {
    let conns = shared.conns();
    request
        .answer(
            caller,
            conns.as_deref().map_err(String::as_str),
            shared.cgroup_root.clone(),
            shared.rules.clone(),
            shared.names.clone(),
        )
        .line()
}

/// [`answer`], with `look_up` given `deadline`.
async fn answer_within(
    line: &[u8],
    caller: Caller,
    shared: &Arc<Shared>,
    deadline: Duration,
    look_up: fn(Request, Caller, &Shared) -> Vec<u8>,
) -> Answered {
    let request = match Request::parse(line) {
        Ok(request) => request,
        Err(reply) => return Answered::from(*reply),
    };
    // Refused at once rather than queued: a client waiting for its turn
    // would hold its slot as busy (see `Clients::looking_up`), and a user
    // with many clients would hold them all.
    let walk = match request.walks() {
        true => match shared.walks.walk(caller.share()) {
            Some(walk) => Some(walk),
            None => {
                return Answered::from(request.unavailable(format!(
                    "{WALKS} requests that walk every connection (conns, who by cookie) are \
                     being answered already, or one of this user's; ask again"
                )));
            }
        },
        false => None,
    };
    let Some(running) = shared.lookups.lookup(caller.share()) else {
        return Answered::from(request.busy(format!(
            "{MAX_CLIENTS_PER_UID} lookups of uid {} have not finished (a user name asked of a \
             directory service that does not answer, most likely): ask again later",
            caller.uid
        )));
    };
    let id = request.id();
    let shared = shared.clone();
    // A walk counts until both its thread is done (past the deadline too)
    // and its answer is written.
    let walk = walk.map(Arc::new);
    let walking = walk.clone();
    let lookup = tokio::task::spawn_blocking(move || {
        let (_running, _walking) = (running, walking);
        look_up(request, caller, &shared)
    });
    let failed = |why: String| Reply::error(id.clone(), ErrorCode::Unavailable, why).line();
    let line = match timeout(deadline, lookup).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => failed(format!("the lookup failed: {e}")),
        // The thread is left to finish, if it ever does.
        Err(_) => failed(format!(
            "the lookup did not finish within {deadline:?} (a user name asked of a directory \
             service that does not answer, most likely): ask again later"
        )),
    };
    Answered { line, _walk: walk }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller is placed in the namespace its socket was made in: ours
    /// for a pair made here, and, as root, a thread's own namespace for a
    /// socket that thread made and connected after `unshare(CLONE_NEWNET)`,
    /// while the process's `/proc/PID/ns/net` (its main thread's) still
    /// names ours.
    #[test]
    fn a_caller_is_placed_in_the_namespace_its_socket_was_made_in() {
        let own = netns_of(std::process::id()).expect("our namespace");
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        assert_eq!(caller_netns(&ours), Some(own));

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped the other namespace: unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN");
            return;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let (tx, rx) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let ns = std::fs::metadata("/proc/thread-self/ns/net").expect("ns");
            let theirs = std::os::unix::fs::MetadataExt::ino(&ns) as u32;
            let stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            tx.send(theirs).expect("send");
            // Held until the other end is read.
            let _ = std::io::Read::read(&mut &stream, &mut [0u8; 1]);
        });
        let (accepted, _) = listener.accept().expect("accept");
        let theirs = rx.recv().expect("the thread's namespace");
        assert_ne!(theirs, own);
        assert_eq!(netns_of(std::process::id()).expect("ours still"), own);
        assert_eq!(caller_netns(&accepted), Some(theirs));
        drop(accepted);
        client.join().expect("the client thread");
    }

    /// Whether `reply` turns its request away for the walks under way.
    fn turned_away(reply: &serde_json::Value) -> bool {
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("ask again"))
    }

    /// A caller of `uid` in the host's namespace.
    fn user(uid: u32) -> Caller {
        Caller {
            uid,
            netns: Some(4026531840),
            host_netns: true,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            walks: ByUid::default(),
            lookups: ByUid::default(),
            maps_dir: PathBuf::from("/nonexistent/maps"),
            conns: Mutex::new(None),
            cgroup_root: PathBuf::from("/nonexistent/cgroup"),
            rules: SharedRules::default(),
            names: SharedUserNames::default(),
            own_netns: Some(4026531840),
        })
    }

    /// One uid has as many lookups running as it may have clients, not
    /// more (a lookup past its deadline still counts, until its thread is
    /// done); another uid's are its own, and one done makes room. Other
    /// users than root have [`LOOKUPS`] together, and root its own.
    #[test]
    fn lookups_still_running_are_bounded_by_uid() {
        let shared = shared();
        let mut running: Vec<_> = (0..MAX_CLIENTS_PER_UID)
            .map(|_| shared.lookups.lookup(1000).expect("a lookup"))
            .collect();
        assert!(shared.lookups.lookup(1000).is_none());
        drop(shared.lookups.lookup(1001).expect("another uid's lookup"));
        running.pop();
        drop(shared.lookups.lookup(1000).expect("room again"));
        assert_eq!(shared.lookups.count(1000), MAX_CLIENTS_PER_UID - 1);
        assert_eq!(shared.lookups.count(1001), 0);
        drop(running);
        assert_eq!(shared.lookups.count(1000), 0);
        // Other users' lookups together: past [`LOOKUPS`], root's still run.
        let others: Vec<_> = (0..LOOKUPS as u32)
            .map(|i| shared.lookups.lookup(2000 + i).expect("a lookup"))
            .collect();
        assert!(shared.lookups.lookup(5000).is_none());
        drop(shared.lookups.lookup(0).expect("root's lookup"));
        drop(others);
        drop(shared.lookups.lookup(5000).expect("room again"));
    }

    /// A lookup past its deadline is answered `unavailable` (with its id)
    /// and left to its thread, which still counts among its uid's lookups
    /// and walks until it is done.
    #[test]
    fn a_lookup_past_its_deadline_is_unavailable_and_still_counted() {
        fn slow(_: Request, _: Caller, _: &Shared) -> Vec<u8> {
            std::thread::sleep(Duration::from_millis(600));
            b"late\n".to_vec()
        }
        let shared = shared();
        let caller = user(1000);
        let runtime = runtime();
        let begun = std::time::Instant::now();
        let answered = runtime.block_on(answer_within(
            br#"{"op":"conns","id":9}"#,
            caller,
            &shared,
            Duration::from_millis(50),
            slow,
        ));
        assert!(begun.elapsed() < Duration::from_millis(500));
        let reply: serde_json::Value = serde_json::from_slice(&answered.line).expect("JSON");
        assert_eq!(
            (&reply["error"], &reply["id"]),
            (&"unavailable".into(), &9.into()),
            "{reply}"
        );
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not finish within 50ms")),
            "{reply}"
        );
        drop(answered);
        assert_eq!(shared.lookups.count(1000), 1, "the lookup still runs");
        assert_eq!(shared.walks.count(1000), 1, "the walk still runs");
        // The control: the thread done, they count no more.
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(shared.lookups.count(1000), 0);
        assert_eq!(shared.walks.count(1000), 0);
        // And a lookup within its deadline is its answer.
        fn quick(_: Request, _: Caller, _: &Shared) -> Vec<u8> {
            b"{}\n".to_vec()
        }
        let answered = runtime.block_on(answer_within(
            br#"{"op":"conns"}"#,
            caller,
            &shared,
            Duration::from_millis(50),
            quick,
        ));
        assert_eq!(answered.line, b"{}\n");
    }

    /// Past [`WALKS`] walks at once, another is refused at once
    /// (`unavailable`, with its id); a `who` by addresses is not held up.
    #[test]
    fn walks_past_the_limit_are_refused_and_lookups_are_not() {
        let shared = shared();
        // One user's walk under way: that user's next is refused, another
        // user's is not.
        let first = shared.walks.walk(1000).expect("a walk");
        assert!(shared.walks.walk(1000).is_none());
        drop(shared.walks.walk(1001).expect("another user's walk"));
        drop(first);
        let running: Vec<_> = (0..WALKS as u32)
            .map(|uid| shared.walks.walk(2000 + uid).expect("a walk"))
            .collect();
        let caller = user(1000);
        let runtime = runtime();
        let ask_as = |caller: Caller, line: &str| {
            let reply = runtime.block_on(answer(line.as_bytes(), caller, &shared));
            serde_json::from_slice::<serde_json::Value>(&reply.line).expect("JSON")
        };
        let ask = |line: &str| ask_as(caller, line);
        // Root's walk is its own: other users' walks leave it.
        let root = Caller { uid: 0, ..caller };
        let conns = ask_as(root, r#"{"op":"conns","id":4}"#);
        assert!(!turned_away(&conns), "{conns}");
        for line in [
            r#"{"op":"conns","id":1}"#,
            r#"{"op":"who","cookie":7,"id":1}"#,
        ] {
            let reply = ask(line);
            assert_eq!(
                (&reply["error"], &reply["id"]),
                (&"unavailable".into(), &1.into())
            );
            assert!(turned_away(&reply), "{reply}");
        }
        let who = ask(r#"{"op":"who","peer":"127.0.0.1:5","local":"127.0.0.1:6","id":2}"#);
        assert!(!turned_away(&who), "{who}");
        drop(running);
        let conns = ask(r#"{"op":"conns","id":3}"#);
        assert!(!turned_away(&conns), "{conns}");
    }

    #[test]
    fn one_uid_takes_at_most_its_share() {
        let slots = Arc::new(Clients::new("test", MAX_CLIENTS));
        let root: Vec<_> = (0..MAX_CLIENTS_PER_UID)
            .map(|_| Slot::take(&slots, 0).expect("a slot for root"))
            .collect();
        assert_eq!(Slot::take(&slots, 0).err(), Some(0));
        // Another user is still served.
        let other = Slot::take(&slots, 1000).expect("a slot for uid 1000");
        drop(other);
        // A slot given back is taken again, and the counts go with it.
        drop(root);
        assert!(Slot::take(&slots, 0).is_ok());
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn when_all_are_taken_the_client_idle_longest_makes_room() {
        let slots = Arc::new(Clients::new("test", MAX_CLIENTS));
        let mut held = Vec::new();
        let mut uid = 1;
        while held.len() < MAX_CLIENTS {
            match Slot::take(&slots, uid) {
                Ok(client) => held.push(client),
                Err(_) => uid += 1,
            }
        }
        // Every other client was answered since: the second is idle longest.
        std::thread::sleep(Duration::from_millis(2));
        for (i, (slot, _)) in held.iter().enumerate() {
            if i != 1 {
                slot.clients.answered(slot.id);
            }
        }
        let (_root, mut root_stop) = Slot::take(&slots, 0).expect("a slot for root");
        assert_eq!(slots.len(), MAX_CLIENTS);
        let stopped: Vec<usize> = held
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (_, stop))| {
                let closed = stop.try_recv() == Err(oneshot::error::TryRecvError::Closed);
                closed.then_some(i)
            })
            .collect();
        assert_eq!(stopped, [1]);
        assert_eq!(
            root_stop.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        );
    }

    #[test]
    fn a_client_being_answered_is_never_closed_for_a_new_one() {
        use oneshot::error::TryRecvError::{Closed, Empty};
        let slots = Arc::new(Clients::new("test", 4));
        let mut held: Vec<_> = (0..4)
            .map(|uid| Slot::take(&slots, uid).expect("a slot"))
            .collect();
        for (slot, _) in &held {
            slot.clients.busy(slot.id);
        }
        // No one is idle: the next is taken beside them (and, idle until
        // its request comes, would be the one closed for the next).
        let more: Vec<_> = (4..8)
            .map(|uid| {
                let (slot, stop) = Slot::take(&slots, uid).expect("a slot");
                slot.clients.busy(slot.id);
                (slot, stop)
            })
            .collect();
        assert_eq!(slots.len(), 8);
        assert!(
            held.iter_mut()
                .all(|(_, stop)| stop.try_recv() == Err(Empty))
        );
        // Past twice the places, a newcomer is closed at once.
        let (_late, mut late_stop) = Slot::take(&slots, 8).expect("a slot");
        assert_eq!(late_stop.try_recv(), Err(Closed));
        assert_eq!(slots.len(), 8);
        // Answered, the first is idle again, and the one closed next.
        held[0].0.clients.answered(held[0].0.id);
        let (_next, mut next_stop) = Slot::take(&slots, 9).expect("a slot");
        assert_eq!(next_stop.try_recv(), Err(Empty));
        assert_eq!(held[0].1.try_recv(), Err(Closed));
        assert!(
            held[1..]
                .iter_mut()
                .all(|(_, stop)| stop.try_recv() == Err(Empty))
        );
        drop(more);
    }
}
