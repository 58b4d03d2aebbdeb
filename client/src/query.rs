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
    io::{self, BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

/// Where the daemon serves the query socket by default
/// (`<run_dir>/query.sock`).
pub const DEFAULT_PATH: &str = "/run/loopwarden/query.sock";
/// The protocol version this client speaks (`"v"` of every answer).
const VERSION: u64 = 1;
/// How long a request waits for its answer unless [`Query::set_timeout`]
/// says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The daemon closed the connection before answering.
    #[error("loopwarden closed the query connection before answering: connect again")]
    Closed,
    /// `forbidden`: the accepted socket is another uid's.
    #[error(
        "loopwarden refused the query (forbidden): {message}; only the accepted \
         socket's owner, or root, may ask about a connection"
    )]
    Forbidden { message: String },
    /// `timeout`: the daemon closed this connection, silent too long.
    #[error("loopwarden closed the idle query connection (timeout): {message}; connect again")]
    Timeout { message: String },
    /// Another error the daemon answered (`bad-request`, `too-long`, ...).
    #[error("loopwarden refused the query ({code}): {message}")]
    Refused { code: String, message: String },
    /// The answer is not what the protocol says.
    #[error("not a loopwarden query answer: {0}")]
    Protocol(String),
}

/// A connection to the query socket. Requests are answered in order; the
/// daemon closes a connection idle for 10 s (a later request then fails
/// with [`Error::Timeout`] or [`Error::Closed`]).
#[derive(Debug)]
pub struct Query {
    stream: BufReader<UnixStream>,
    next_id: u64,
}

impl Query {
    /// Connects to the query socket at `path` ([`DEFAULT_PATH`] for the
    /// daemon's default run directory).
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
        let query = Query {
            stream: BufReader::new(stream),
            next_id: 1,
        };
        query.set_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(query)
    }

    /// How long a request may wait to be sent and answered (`None`:
    /// forever). 10 s by default.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let stream = self.stream.get_ref();
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
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

    /// Every tagged connection the caller may see (root: all).
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
    /// `None` for the `unknown` error, [`Error`] for the others.
    fn request(&mut self, req: Value) -> Result<Option<Value>, Error> {
        let mut line = req.to_string();
        line.push('\n');
        self.stream.get_mut().write_all(line.as_bytes())?;
        let mut answer = String::new();
        if self.stream.read_line(&mut answer)? == 0 {
            return Err(Error::Closed);
        }
        let answer: Value = serde_json::from_str(&answer)
            .map_err(|e| Error::Protocol(format!("{e}: {}", answer.trim_end())))?;
        if answer["v"].as_u64() != Some(VERSION) {
            return Err(Error::Protocol(format!(
                "protocol version {} (this client speaks {VERSION}): {answer}",
                answer["v"]
            )));
        }
        if let Some(id) = answer.get("id")
            && *id != req["id"]
        {
            return Err(Error::Protocol(format!(
                "answer to request {id}, expected {}: {answer}",
                req["id"]
            )));
        }
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
}

/// Whether a query answer's origin is a direct local client: verdict
/// `allow` and no `via` (the same test as
/// [`Origin::is_direct`](crate::Origin::is_direct)).
pub fn is_direct(origin: &Value) -> bool {
    origin["verdict"] == "allow" && origin.get("via").is_none_or(Value::is_null)
}

#[cfg(test)]
mod tests;
