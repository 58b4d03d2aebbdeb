//! A blocking client of loopwarden's query socket: newline-delimited JSON
//! over a Unix socket, one request per line, one answer line per request
//! (README, "The query socket").
//!
//! Answers carry what the daemon adds to the kernel's record (user name,
//! executable path, command line, RFC 3339 times); they are returned as
//! JSON objects with the audit line's fields (`pid`, `comm`, `exe`,
//! `verdict`, `via`, ...) plus the connection's (`client`, `server`,
//! `alive`, ...).
//!
//! ```no_run
//! use loopwarden_client::query::{self, Query};
//!
//! let mut q = Query::connect(query::DEFAULT_PATH)?;
//! let peer = "127.0.0.1:53422".parse()?;
//! let local = "127.0.0.1:8080".parse()?;
//! match q.who(peer, local)? {
//!     Some(origin) if query::is_direct(&origin) => println!("{} connected", origin["user"]),
//!     Some(origin) => println!("relayed for {}", origin["via"]),
//!     None => println!("loopwarden knows nothing of this connection"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    io::{self, BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr},
};
use serde_json::{Value, json};

/// Where the daemon serves the query socket by default
/// (`<run_dir>/query.sock`).
pub const DEFAULT_PATH: &str = "/run/loopwarden/query.sock";
/// The protocol version this client speaks (`"v"` of every answer).
const VERSION: u64 = 1;
/// How long a request waits for its answer unless [`Query::set_timeout`]
/// says otherwise: a service's `who` is answered in milliseconds. The
/// daemon gives a lookup up to 25 s (a `conns` over many connections, a
/// directory service slow to name a user) before it answers
/// `unavailable`; a caller that gives up sooner leaves its walk held until
/// then, and its next `conns` is told `unavailable`. `loopwarden conns`
/// waits 30 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer line read: past it the answer is a protocol error,
/// not memory without end.
const MAX_ANSWER: u64 = 256 << 20;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be reached.
    #[error(
        "cannot connect to loopwarden's query socket {}: {source} \
         (is the daemon running, with [provenance] query = true?)",
        path.display()
    )]
    Connect { path: PathBuf, source: io::Error },
    /// Reading or writing failed (including the answer's timeout).
    #[error("talking to loopwarden's query socket failed: {0}")]
    Io(#[from] io::Error),
    /// The daemon closed the connection before answering, and again on a
    /// new connection (it is stopping, or restarting).
    #[error("loopwarden closed the query connection before answering")]
    Closed,
    /// `forbidden`: a caller other than root named another network
    /// namespace. (A connection whose accepted socket is another uid's is
    /// `unknown`, as one that is not open: `Ok(None)`.)
    #[error(
        "loopwarden refused the query (forbidden): {message}; only root may ask about \
         another network namespace"
    )]
    Forbidden { message: String },
    /// `timeout` answered to this request: the daemon received only part
    /// of its line in time. Not expected, as the line is written whole;
    /// the daemon's idle close, which carries no id, is answered by a new
    /// connection instead.
    #[error("loopwarden closed the query connection (timeout): {message}")]
    Timeout { message: String },
    /// Another error the daemon answered (`bad-request`, `too-long`, ...).
    #[error("loopwarden refused the query ({code}): {message}")]
    Refused { code: String, message: String },
    /// The answer is not what the protocol says.
    #[error("not a loopwarden query answer: {0}")]
    Protocol(String),
}

/// A connection to the query socket. Requests are answered in order.
/// The daemon closes a connection idle for 10 s; the next request then
/// connects again and is asked again, once (every request only reads). A
/// request that fails part-way (its answer timed out, or was not an
/// answer) leaves the connection behind: the next one starts a new
/// connection, so it never reads the answer meant for the one before.
#[derive(Debug)]
pub struct Query {
    path: PathBuf,
    timeout: Option<Duration>,
    /// `None` once a request failed part-way.
    stream: Option<BufReader<Timed>>,
    next_id: u64,
}

/// The connection, read until the request's deadline at most: each read
/// waits only for what is left of it, so an answer that comes a little
/// at a time cannot stretch the request past its timeout.
#[derive(Debug)]
struct Timed {
    stream: UnixStream,
    /// The request's deadline (`None`: none).
    deadline: Option<Instant>,
}

impl io::Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(left(self.deadline)?)?;
        (&self.stream).read(buf)
    }
}

/// What is left until `deadline` (`None`: no deadline, wait forever);
/// `TimedOut` once it has passed.
fn left(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    let Some(deadline) = deadline else {
        return Ok(None);
    };
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(Some(left)),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer within the timeout",
        )),
    }
}

impl Query {
    /// Connects to the query socket at `path` ([`DEFAULT_PATH`] for the
    /// daemon's default run directory).
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::connect_timeout(path, Some(DEFAULT_TIMEOUT))
    }

    /// [`Query::connect`] with the timeout of [`Query::set_timeout`]
    /// from the start: the connect itself waits no longer either. A zero
    /// duration is refused (`InvalidInput`).
    pub fn connect_timeout(
        path: impl AsRef<Path>,
        timeout: Option<Duration>,
    ) -> Result<Self, Error> {
        if timeout == Some(Duration::ZERO) {
            return Err(zero_timeout());
        }
        let mut query = Query {
            path: path.as_ref().to_owned(),
            timeout,
            stream: None,
            next_id: 1,
        };
        query.stream = Some(query.open(query.deadline())?);
        Ok(query)
    }

    /// A new connection to the socket, made by `deadline` at most (see
    /// [`connect_within`]).
    fn open(&self, deadline: Option<Instant>) -> Result<BufReader<Timed>, Error> {
        let connected = match deadline {
            Some(deadline) => connect_within(&self.path, deadline),
            None => UnixStream::connect(&self.path),
        };
        let stream = connected.map_err(|source| Error::Connect {
            path: self.path.clone(),
            source,
        })?;
        Ok(BufReader::new(Timed { stream, deadline }))
    }

    /// The deadline of a request starting now: its timeout from now
    /// (`None`: none; so is a timeout too long to add to the clock,
    /// `Duration::MAX`).
    fn deadline(&self) -> Option<Instant> {
        self.timeout.and_then(|t| Instant::now().checked_add(t))
    }

    /// How long a request may take in all, to connect (again, if the
    /// daemon closed the connection), to be sent and to be answered
    /// (`None`: forever). 10 s by default. A zero duration is refused
    /// (`InvalidInput`), and the timeout before stays.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        if timeout == Some(Duration::ZERO) {
            return Err(zero_timeout());
        }
        self.timeout = timeout;
        Ok(())
    }

    /// The origin of the connection from `peer` (the client's end, as
    /// `getpeername` shows it on the accepted socket) to `local` (the
    /// service's end, `getsockname`), looked up in the caller's network
    /// namespace; `None` when loopwarden knows nothing of it.
    pub fn who(&mut self, peer: SocketAddr, local: SocketAddr) -> Result<Option<Value>, Error> {
        let id = self.take_id();
        let req =
            json!({"op": "who", "peer": peer.to_string(), "local": local.to_string(), "id": id});
        self.origin(req)
    }

    /// The origin of the connection whose accepted socket has `SO_COOKIE`
    /// `cookie`; `None` when loopwarden knows nothing of it.
    pub fn who_cookie(&mut self, cookie: u64) -> Result<Option<Value>, Error> {
        let id = self.take_id();
        self.origin(json!({"op": "who", "cookie": cookie, "id": id}))
    }

    /// Every tagged connection the caller may see (root: all), oldest
    /// first: the newest 4,096 at most (the daemon lists no more, and
    /// counts the rest in the answer's `more`, which this drops).
    pub fn conns(&mut self) -> Result<Vec<Value>, Error> {
        let id = self.take_id();
        let mut answer = self
            .request(json!({"op": "conns", "id": id}))?
            .ok_or_else(|| Error::Protocol("`unknown` answered to `conns`".into()))?;
        match answer.get_mut("conns").map(Value::take) {
            Some(Value::Array(conns)) => Ok(conns),
            _ => Err(Error::Protocol(format!("no `conns` list in {answer}"))),
        }
    }

    /// Any request the protocol has (README, "The query socket"), as a
    /// JSON object; its `id` is set here. The whole answer when `ok`
    /// (`origin`, `conns`, `more`, ...), `None` for `unknown`, [`Error`]
    /// for the other refusals: what [`Query::who`] and [`Query::conns`]
    /// are made of, for the requests they do not cover (a `who` by peer
    /// in another namespace, `conns` with its `more` count).
    pub fn ask(&mut self, mut request: Value) -> Result<Option<Value>, Error> {
        if !request.is_object() {
            return Err(Error::Protocol(format!(
                "a request is an object, not {request}"
            )));
        }
        request["id"] = self.take_id().into();
        self.request(request)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A `who` request's `origin` object.
    fn origin(&mut self, req: Value) -> Result<Option<Value>, Error> {
        let Some(mut answer) = self.request(req)? else {
            return Ok(None);
        };
        match answer.get_mut("origin").map(Value::take) {
            Some(origin @ Value::Object(_)) => Ok(Some(origin)),
            _ => Err(Error::Protocol(format!("no `origin` object in {answer}"))),
        }
    }

    /// Sends one request line and reads its answer: the answer when `ok`,
    /// `None` for the `unknown` error, [`Error`] for the others. A
    /// connection the daemon closed before the request reached it is
    /// replaced and the request sent again, once.
    fn request(&mut self, req: Value) -> Result<Option<Value>, Error> {
        let mut line = req.to_string();
        line.push('\n');
        let deadline = self.deadline();
        let answer = match self.round_trip(&line, &req["id"], deadline) {
            Err(Error::Closed) => {
                self.stream = None;
                self.round_trip(&line, &req["id"], deadline)
            }
            answer => answer,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // Part-way: what the daemon still sends belongs to this
                // request, not the next.
                self.stream = None;
                return Err(e);
            }
        };
        match answer["ok"].as_bool() {
            Some(true) => Ok(Some(answer)),
            Some(false) => {
                let code = answer["error"].as_str().unwrap_or_default().to_owned();
                let message = answer["message"].as_str().unwrap_or_default().to_owned();
                match code.as_str() {
                    "unknown" => Ok(None),
                    "forbidden" => Err(Error::Forbidden { message }),
                    "timeout" => Err(Error::Timeout { message }),
                    _ => Err(Error::Refused { code, message }),
                }
            }
            None => Err(Error::Protocol(format!("no `ok` in {answer}"))),
        }
    }

    /// Writes `line` on the connection (a new one if there is none) and
    /// reads the answer with id `id`. [`Error::Closed`] when the daemon had
    /// closed the connection before it: the write found it gone and nothing
    /// was left to read, nothing came back, or what came back is the notice
    /// of its idle close (no id; it was sent before this request). Each
    /// step waits until `deadline` at most.
    fn round_trip(
        &mut self,
        line: &str,
        id: &Value,
        deadline: Option<Instant>,
    ) -> Result<Value, Error> {
        if self.stream.is_none() {
            self.stream = Some(self.open(deadline)?);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(Error::Closed);
        };
        stream.get_mut().deadline = deadline;
        let socket = &stream.get_ref().stream;
        socket.set_write_timeout(left(deadline)?)?;
        // A daemon that closed the connection may have said why first (a
        // new connection of a uid at its limit is told `busy`, then closed):
        // a send that finds it closed still reads what it left.
        let sent = match send_all(socket, line.as_bytes()) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                false
            }
            written => written.map(|()| true)?,
        };
        // Bytes first: an answer cut short may end inside a character.
        let mut line = Vec::new();
        let read = match stream
            .by_ref()
            .take(MAX_ANSWER)
            .read_until(b'\n', &mut line)
        {
            // The daemon closed the connection with this request unread in
            // it (an idle close, or an exit, as the request was written):
            // the close is a reset, and nothing of an answer came.
            // Or as it wrote the answer (it closes the client idle
            // longest to make room for another, once its answer is made):
            // part of one came, and the rest never will.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(Error::Closed),
            Err(_) if !sent => return Err(Error::Closed),
            read => read?,
        };
        if !line.ends_with(b"\n") {
            if read as u64 == MAX_ANSWER {
                return Err(Error::Protocol(format!(
                    "an answer line longer than {MAX_ANSWER} bytes"
                )));
            }
            // Nothing, or part of an answer, then the end: closed as above.
            return Err(Error::Closed);
        }
        let text = String::from_utf8_lossy(&line);
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Protocol(format!("{e}: {}", text.trim_end())))?;
        if answer["v"].as_u64() != Some(VERSION) {
            return Err(Error::Protocol(format!(
                "protocol version {} (this client speaks {VERSION}): {answer}",
                answer["v"]
            )));
        }
        match answer.get("id") {
            None if answer["error"] == "timeout" => Err(Error::Closed),
            Some(got) if got != id => Err(Error::Protocol(format!(
                "answer to request {got}, expected {id}: {answer}"
            ))),
            _ => Ok(answer),
        }
    }
}

/// The refusal of a zero timeout.
fn zero_timeout() -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        "a zero timeout (use None to wait forever)",
    ))
}

/// Writes all of `bytes` on `stream` without raising `SIGPIPE` when the
/// daemon has closed it (`MSG_NOSIGNAL`: a process that keeps the signal's
/// default action would be killed by a plain `write`); the stream's write
/// timeout applies.
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match socket::send(stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Connects to the Unix socket at `path`, waiting until `deadline` at most:
/// `UnixStream::connect` waits without end while the daemon's backlog is
/// full (a stopped or stalled daemon). A non-blocking connect to a full
/// backlog fails with `EAGAIN` at once (Unix sockets have no connect in
/// progress to poll for), so it is tried again every few milliseconds
/// until the deadline.
fn connect_within(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    const RETRY: Duration = Duration::from_millis(5);
    let addr = UnixAddr::new(path)?;
    loop {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN | Errno::EINTR) if Instant::now() < deadline => {
                std::thread::sleep(RETRY);
            }
            Err(Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "its backlog stayed full until the timeout",
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a query answer's origin is a direct local client: verdict
/// `allow` and no `via` (the same test as
/// [`Origin::is_direct`](crate::Origin::is_direct)).
pub fn is_direct(origin: &Value) -> bool {
    origin["verdict"] == "allow" && origin.get("via").is_none_or(Value::is_null)
}

#[cfg(test)]
mod tests;
