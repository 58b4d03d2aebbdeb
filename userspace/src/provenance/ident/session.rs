//! One ident client: its queries answered in order, each from `LW_CONNS`,
//! until it closes, takes too long over a query, sends an invalid one, or
//! is closed to make room for a new client.

use std::{io, net::SocketAddr, pin::Pin, sync::Arc};

use loopwarden_common::{
    evidence,
    origin::{OriginRecord, status},
    verdict,
};
use tokio::{
    io::AsyncWrite as _,
    net::TcpStream,
    sync::{Semaphore, oneshot},
    time::{Instant, timeout, timeout_at},
};
use tracing::debug;

use super::{
    Shared,
    request::{self, Answer, Echo, INVALID_PORT, MAX_REQUEST, NO_USER, Ports, UNKNOWN_ERROR},
};
use crate::{
    kernel::sockopt,
    provenance::{Seen, conn_key},
};

/// How long a reply waits for a user's name from NSS.
const NAME_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Most user name lookups running at once (a lookup past its deadline
/// counts until NSS returns).
pub(super) const NAME_LOOKUPS: usize = 8;

/// The most a client refused for an invalid query may still send before
/// its connection is closed regardless.
const DRAIN_MAX: usize = 64 * 1024;

/// What loopwarden knows of the connection a query names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// Made by a local process the policy allowed, with no relay evidence:
    /// its uid is the user.
    Direct { uid: u32 },
    /// Made by a relay, or by a caller a rule reported: no user is named.
    Flagged,
    /// Not a protected connection loopwarden tagged.
    Unknown,
    /// Whether the connection is open could not be checked.
    Unchecked,
}

impl Origin {
    /// The origin a `LW_CONNS` entry records.
    pub(super) fn of(record: Option<&OriginRecord>) -> Self {
        match record {
            Some(r) if r.status == status::KNOWN => {
                if r.origin.verdict == verdict::ALLOW && r.origin.via.kind == evidence::NONE {
                    Origin::Direct { uid: r.origin.uid }
                } else {
                    Origin::Flagged
                }
            }
            _ => Origin::Unknown,
        }
    }
}

/// Serves client `id` until it is done (see the module documentation), or
/// until `stop`'s sender is dropped, whatever the session is waiting for
/// then (a read, a reply's write, the drain after a refusal).
pub(super) async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    id: u64,
    stop: oneshot::Receiver<()>,
) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    tokio::select! {
        () = session(stream, &shared, id, peer) => {}
        _ = stop => debug!("ident: closing {peer}, the client idle longest, for a new one"),
    }
}

/// Answers client `peer`'s queries in order until it is done.
async fn session(stream: TcpStream, shared: &Arc<Shared>, id: u64, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // Which accepted socket is this session's: the asking connection's
    // entry is believed only when it is that socket's.
    let cookie = sockopt::get::<u64>(&stream, sockopt::SO_COOKIE).ok();
    let asking = Asking {
        local,
        peer,
        cookie,
    };
    let mut pending = Vec::with_capacity(64);
    let mut chunk = [0u8; 512];
    // The next query must be whole by then (RFC 1413's idle timeout).
    let mut deadline = Instant::now() + shared.timeout;
    loop {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            match request::parse(&line[..end]) {
                Ok(ports) => {
                    // Idle again while the reply is written: a client that
                    // sends queries and never reads the replies (its window
                    // full, the write waiting) is one to close for the next.
                    let lookup = answer(ports, asking, shared);
                    let reply = shared.clients.looking_up(id, lookup).await;
                    if !send(&stream, &reply, shared).await {
                        return;
                    }
                    deadline = Instant::now() + shared.timeout;
                }
                Err(echo) => return refuse(stream, echo, shared).await,
            }
        }
        // A whole query and its CR, still waiting for the LF, is no longer.
        if pending.len() > MAX_REQUEST + 1 {
            return refuse(stream, Echo::default(), shared).await;
        }
        match timeout_at(deadline, read(&stream, &mut chunk)).await {
            Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&chunk[..n]),
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                debug!("ident: reading from {peer} failed: {e}");
                return;
            }
            Err(_) => {
                debug!(
                    "ident: {peer} sent no whole query in {:?}; closing",
                    shared.timeout
                );
                return;
            }
        }
    }
}

/// Answers an invalid query with `INVALID-PORT` and ends the connection:
/// the reply, then FIN, then what the client still sends is read and
/// dropped until it closes, sends [`DRAIN_MAX`] bytes, or the timeout
/// (one, for the reply, the FIN and the drain together) runs out
/// (closing with unread data would reset the connection, and the client
/// could lose the reply).
async fn refuse(mut stream: TcpStream, echo: Echo, shared: &Shared) {
    let deadline = Instant::now() + shared.timeout;
    let reply = request::reply(echo, Answer::Error(INVALID_PORT));
    if !matches!(
        timeout_at(deadline, write_all(&stream, reply.as_bytes())).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let shut = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_shutdown(cx));
    if !matches!(timeout_at(deadline, shut).await, Ok(Ok(()))) {
        return;
    }
    let mut sink = [0u8; 512];
    let mut drained = 0;
    while drained < DRAIN_MAX {
        match timeout_at(deadline, read(&stream, &mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// Writes one reply in a single write; false when the client is gone or
/// does not read it in time.
async fn send(stream: &TcpStream, reply: &str, shared: &Shared) -> bool {
    matches!(
        timeout(shared.timeout, write_all(stream, reply.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// Reads what the client sent (0: it closed its side).
async fn read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return result,
        }
    }
}

/// Writes all of `bytes`: one `write()` for a reply, which fits any send
/// buffer, more only if the kernel takes less.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The connection a query comes over: `peer` (the querying host) →
/// `local` (this host's end, the responder's address), whose accepted
/// socket has the cookie `cookie` (when it could be read).
#[derive(Clone, Copy, Debug)]
struct Asking {
    local: SocketAddr,
    peer: SocketAddr,
    cookie: Option<u64>,
}

impl Asking {
    /// Who asks ([`Standing::of`] the asking connection), or nobody
    /// (`None`); `Err` when the asking socket cannot be checked.
    fn who(self, shared: &Shared) -> io::Result<Option<Asker>> {
        let key = conn_key(shared.netns, self.peer, self.local);
        let record = shared
            .conns
            .find(&key)
            .filter(|r| self.cookie.is_none_or(|cookie| r.server_cookie == cookie));
        let standing = Standing::of(
            record.as_ref(),
            record.is_none() && shared.conns.port_tagged(self.local.port()),
        );
        if standing != Standing::Full {
            debug!("ident: {} asks with standing {standing:?}", self.peer);
        }
        if standing == Standing::Nobody {
            return Ok(None);
        }
        let owner = shared.conns.owner(shared.netns, self.peer, self.local)?;
        Ok(owner.map(|uid| Asker { uid, standing }))
    }
}

/// Who asks: the uid owning the asking socket (found with sock_diag), and
/// what loopwarden knows of the connection it asks over.
#[derive(Clone, Copy, Debug)]
struct Asker {
    uid: u32,
    standing: Standing,
}

impl Asker {
    /// How the asker sees `record`: root of full standing sees every
    /// connection, root of lesser standing none (as a server it would see
    /// those of every service root listens for); anyone else only those
    /// it is the server of.
    fn sees(self, record: &OriginRecord) -> Seen {
        match self {
            Asker {
                uid: 0,
                standing: Standing::Full,
            } => Seen::Always,
            Asker { uid: 0, .. } => Seen::Never,
            Asker { uid, .. } => Seen::as_server(uid, record),
        }
    }
}

/// What the asking connection's origin lets its socket's owner ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// A direct connection (allowed, no relay evidence), or one loopwarden
    /// does not tag: the owner asks with all its rights.
    Full,
    /// One flagged but not refused by the policy (relay evidence judged
    /// `audit`, as a server listening on a public address carries, or an
    /// `audit` rule), or one to a tagged port whose origin was lost: the
    /// owner asks as the server of its own connections only, since it may
    /// be asking for whoever is behind it; root, whose services are many,
    /// asks as nobody.
    AsServer,
    /// One the policy would refuse (a tunnel or relay a rule names, or the
    /// relay verdict `deny`; it proceeds in audit mode): whoever is behind
    /// it asks, as good as on another host, nobody here.
    Nobody,
}

impl Standing {
    /// The standing of a connection tagged with `record`, if it has one;
    /// `lost` when it has none though its port is tagged.
    fn of(record: Option<&OriginRecord>, lost: bool) -> Self {
        match record {
            Some(r) if r.status == status::KNOWN => match r.origin.verdict {
                verdict::WOULD_DENY | verdict::DENY => Standing::Nobody,
                _ if Origin::of(Some(r)) == Origin::Flagged => Standing::AsServer,
                _ => Standing::Full,
            },
            Some(_) => Standing::AsServer,
            None if lost => Standing::AsServer,
            None => Standing::Full,
        }
    }
}

/// The reply to a valid query over the connection `asking`. A connection
/// is answered about only to the server (as RFC 1413 means ident to be
/// used): the uid owning its accepted socket, now (the accepting
/// process's, a service that dropped privileges after its listen) or when
/// it was established (its listener's); and to root. To anyone else it is
/// unknown. Who asks is [`Asking::who`]: an asker from another host, or
/// through a relay the policy would refuse, is nobody here; one over a
/// connection otherwise flagged asks only as a server.
async fn answer(ports: Ports, asking: Asking, shared: &Arc<Shared>) -> String {
    let Asking { local, peer, .. } = asking;
    let key = conn_key(
        shared.netns,
        SocketAddr::new(local.ip(), ports.here),
        SocketAddr::new(peer.ip(), ports.there),
    );
    // Blocking: reads the map, and may enter a namespace to find the
    // asker's socket and to see that the connection is open.
    let lookup = shared.clone();
    let found = tokio::task::spawn_blocking(move || {
        let Some(asker) = asking.who(&lookup)? else {
            return Ok(None);
        };
        lookup.conns.get(&key, |record| asker.sees(record))
    });
    let origin = match found.await {
        Ok(Ok(record)) => Origin::of(record.as_ref()),
        // Not that nobody owns it: loopwarden could not tell.
        Ok(Err(_)) | Err(_) => Origin::Unchecked,
    };
    debug!(
        "ident: {peer} asked about {}:{} -> {}:{}: {origin:?}",
        local.ip(),
        ports.here,
        peer.ip(),
        ports.there
    );
    let echo = Echo::from(ports);
    match origin {
        Origin::Direct { uid } => match user_name(uid, shared).await {
            Some(Named::Login(name)) => request::reply(echo, Answer::User(&name)),
            // No name: not the uid as `OTHER` either, which PostgreSQL and
            // Squid take for a login name all the same.
            Some(Named::Nameless) => request::reply(echo, Answer::Error(NO_USER)),
            // Who it is cannot be said in time: not a name that may be wrong.
            None => request::reply(echo, Answer::Error(UNKNOWN_ERROR)),
        },
        Origin::Flagged => request::reply(echo, Answer::Error(shared.relayed.token())),
        Origin::Unknown => request::reply(echo, Answer::Error(NO_USER)),
        Origin::Unchecked => request::reply(echo, Answer::Error(UNKNOWN_ERROR)),
    }
}

/// Who a direct client is, as a reply names it.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    /// Its login name.
    Login(String),
    /// None: NSS has no name for it, or none a reply line can carry.
    Nameless,
}

/// The name NSS gives `uid`, else (NSS has none for it) that it has none;
/// `None` when NSS could not be asked in time or failed. Asked
/// off the runtime's thread, within [`NAME_DEADLINE`], and at most
/// [`NAME_LOOKUPS`] at once: with NSS hung (an LDAP server that does not
/// answer) each lookup's thread stays blocked in it, so a reply waits a
/// bounded time and the blocked threads stay few, however many clients
/// ask.
async fn user_name(uid: u32, shared: &Shared) -> Option<Named> {
    name_within(
        uid,
        &shared.name_lookups,
        crate::resolve::user_name,
        NAME_DEADLINE,
    )
    .await
}

/// [`user_name`], from `lookup`, with a permit of `permits`, waited for
/// `deadline`.
async fn name_within(
    uid: u32,
    permits: &Arc<Semaphore>,
    lookup: fn(u32) -> io::Result<Option<String>>,
    deadline: std::time::Duration,
) -> Option<Named> {
    // Waited for within the deadline: a burst of healthy lookups (a
    // connection pool opening at once) waits its turn; lookups blocked in
    // a hung NSS keep this one from running, and it gives up.
    let asked = std::time::Instant::now();
    let Ok(Ok(permit)) = timeout(deadline, Arc::clone(permits).acquire_owned()).await else {
        debug!("ident: {NAME_LOOKUPS} user name lookups still running: uid {uid} not named");
        return None;
    };
    let deadline = deadline.saturating_sub(asked.elapsed());
    let lookup = tokio::task::spawn_blocking(move || {
        let name = lookup(uid);
        drop(permit);
        name
    });
    let found = match timeout(deadline, lookup).await {
        Ok(Ok(Ok(found))) => found,
        // NSS failed (a directory service's error, no descriptor left):
        // whether the uid has a name is not known, so not a uid that a
        // service could take for a login name.
        Ok(Ok(Err(e))) => {
            debug!("ident: the user name of uid {uid} could not be looked up: {e}");
            return None;
        }
        Ok(Err(e)) => {
            debug!("ident: the user name lookup of uid {uid} failed: {e}");
            return None;
        }
        Err(_) => {
            debug!("ident: the user name of uid {uid} took longer than {deadline:?}");
            return None;
        }
    };
    // A name the reply line could not carry (RFC 1413: at most 512
    // octets, no CR, LF or NUL; no `:` here, which ends a field) is not used.
    Some(
        found
            .filter(|name| {
                !name.is_empty() && name.len() <= 512 && !name.contains(['\r', '\n', '\0', ':'])
            })
            .map_or(Named::Nameless, Named::Login),
    )
}

#[cfg(test)]
mod tests {
    use loopwarden_common::{RELAY_RULE, origin::OriginRecord};

    use super::*;

    /// A runtime for one test's lookups.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    fn known(verdict: u8, via: u8) -> OriginRecord {
        let mut r = OriginRecord::unknown();
        r.status = status::KNOWN;
        r.origin.uid = 1000;
        r.origin.verdict = verdict;
        r.origin.via.kind = via;
        r
    }

    #[test]
    fn a_hung_name_lookup_is_waited_for_a_while_and_runs_few_at_once() {
        use std::{
            sync::atomic::{AtomicU32, Ordering},
            time::Duration,
        };
        static ASKED: AtomicU32 = AtomicU32::new(0);
        fn hung(uid: u32) -> io::Result<Option<String>> {
            ASKED.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(if uid == 7 { 0 } else { 600 }));
            Ok(Some(format!("u{uid}")))
        }
        let runtime = runtime();
        let permits = Arc::new(Semaphore::new(NAME_LOOKUPS));
        let ask = |uid| {
            let permits = Arc::clone(&permits);
            async move { name_within(uid, &permits, hung, Duration::from_millis(100)).await }
        };
        runtime.block_on(async {
            assert_eq!(ask(7).await, Some(Named::Login("u7".into())), "a quick one");
            // Clients asking at once.
            let mut asking = tokio::task::JoinSet::new();
            for uid in 0..NAME_LOOKUPS as u32 * 3 {
                asking.spawn(ask(1000 + uid));
            }
            // Past its deadline, or not asked: no name, rather than a wrong one.
            while let Some(name) = asking.join_next().await {
                assert_eq!(name.unwrap(), None);
            }
        });
        // The hung ones that ran were NAME_LOOKUPS; the rest were not asked.
        assert_eq!(ASKED.load(Ordering::SeqCst), 1 + NAME_LOOKUPS as u32);
        std::thread::sleep(Duration::from_millis(700));
        runtime.block_on(async {
            assert_eq!(
                ask(7).await,
                Some(Named::Login("u7".into())),
                "permits given back"
            );
        });
    }

    #[test]
    fn a_failed_name_lookup_names_no_one() {
        fn failing(uid: u32) -> io::Result<Option<String>> {
            match uid {
                7 => Err(io::Error::from_raw_os_error(libc::EMFILE)),
                8 => Ok(None),
                _ => Ok(Some("a:b".into())),
            }
        }
        let runtime = runtime();
        let permits = Arc::new(Semaphore::new(NAME_LOOKUPS));
        let ask = |uid| name_within(uid, &permits, failing, NAME_DEADLINE);
        runtime.block_on(async {
            assert_eq!(ask(7).await, None, "an error is not a uid without a name");
            assert_eq!(ask(8).await, Some(Named::Nameless), "no such name");
            assert_eq!(
                ask(9).await,
                Some(Named::Nameless),
                "a name the line cannot carry"
            );
        });
    }

    /// More lookups at once than may run: each waits its turn (within its
    /// deadline) and is named, where the build before answered the ninth
    /// `UNKNOWN-ERROR` at once.
    #[test]
    fn a_burst_of_name_lookups_waits_its_turn() {
        fn slow(uid: u32) -> io::Result<Option<String>> {
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(Some(format!("u{uid}")))
        }
        let runtime = runtime();
        let permits = Arc::new(Semaphore::new(NAME_LOOKUPS));
        runtime.block_on(async {
            let mut asks = tokio::task::JoinSet::new();
            for uid in 0..2 * NAME_LOOKUPS as u32 {
                let permits = permits.clone();
                asks.spawn(async move { name_within(uid, &permits, slow, NAME_DEADLINE).await });
            }
            let named = asks.join_all().await;
            assert_eq!(named.len(), 2 * NAME_LOOKUPS);
            assert!(
                named.iter().all(|n| matches!(n, Some(Named::Login(_)))),
                "{named:?}"
            );
        });
    }

    #[test]
    fn only_an_allowed_connect_without_evidence_is_direct() {
        assert_eq!(
            Origin::of(Some(&known(verdict::ALLOW, evidence::NONE))),
            Origin::Direct { uid: 1000 }
        );
        for (v, via) in [
            (verdict::AUDIT, evidence::NONE),
            (verdict::WOULD_DENY, evidence::NONE),
            (verdict::ALLOW, evidence::ACCEPTED),
            (verdict::AUDIT, evidence::RECEIVED),
        ] {
            assert_eq!(Origin::of(Some(&known(v, via))), Origin::Flagged);
        }
        let mut relayed = known(verdict::AUDIT, evidence::CONNECTED);
        relayed.origin.rule = RELAY_RULE;
        assert_eq!(Origin::of(Some(&relayed)), Origin::Flagged);
    }

    /// A direct asking connection keeps its owner's rights; one the
    /// policy would refuse asks as nobody; any other flagged one, or one
    /// to a tagged port whose origin was lost, asks as a server only (a
    /// server keeps its own connections; root, whose are many, sees none).
    #[test]
    fn an_askers_standing_follows_its_own_connections_origin() {
        let direct = known(verdict::ALLOW, evidence::NONE);
        assert_eq!(Standing::of(Some(&direct), false), Standing::Full);
        assert_eq!(Standing::of(None, false), Standing::Full);
        for v in [verdict::WOULD_DENY, verdict::DENY] {
            let refused = known(v, evidence::NONE);
            assert_eq!(Standing::of(Some(&refused), false), Standing::Nobody);
        }
        for (v, via) in [
            (verdict::AUDIT, evidence::LISTENING),
            (verdict::ALLOW, evidence::ACCEPTED),
            (verdict::AUDIT, evidence::NONE),
        ] {
            let flagged = known(v, via);
            assert_eq!(Standing::of(Some(&flagged), false), Standing::AsServer);
        }
        assert_eq!(Standing::of(None, true), Standing::AsServer);

        let mut record = known(verdict::ALLOW, evidence::NONE);
        record.server_uid = 7;
        let asker = |uid, standing| Asker { uid, standing };
        assert_eq!(asker(0, Standing::Full).sees(&record), Seen::Always);
        assert_eq!(asker(0, Standing::AsServer).sees(&record), Seen::Never);
        record.server_uid = 0;
        assert_eq!(asker(0, Standing::AsServer).sees(&record), Seen::Never);
        record.server_uid = 7;
        assert_eq!(asker(7, Standing::AsServer).sees(&record), Seen::Always);
        assert_eq!(asker(8, Standing::Full).sees(&record), Seen::IfOwnedBy(8));
    }

    #[test]
    fn no_record_or_an_unknown_one_names_no_one() {
        assert_eq!(Origin::of(None), Origin::Unknown);
        assert_eq!(Origin::of(Some(&OriginRecord::unknown())), Origin::Unknown);
    }
}
