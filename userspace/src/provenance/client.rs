//! `loopwarden who` and `loopwarden conns`: a client of the query socket
//! ([`super::query`]) that prints origins for people (aligned `key: value`
//! lines, a table) or as JSON.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use loopwarden_client::query::{self, Query};
use serde_json::{Value, json};

use super::{query::SOCKET_NAME, show};

/// Exit codes of `who` and `conns`.
pub mod exit {
    /// At least one connection found.
    pub const FOUND: u8 = 0;
    /// None known (or none the caller may see).
    pub const NONE: u8 = 1;
    /// Bad arguments, no daemon to ask, or a refused request.
    pub const ERROR: u8 = 2;
}

/// How long the daemon may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors asking the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no loopwarden daemon answers at {} ({error}): start it (`loopwarden run`, or \
         `systemctl start loopwarden`) with `[provenance] query = true`, or point --run-dir at \
         its run directory",
        path.display()
    )]
    NotRunning { path: PathBuf, error: io::Error },
    #[error(
        "the daemon at {} did not answer within {} s: it is busy or stalled (`loopwarden status` \
         says what it waits for)",
        path.display(),
        ANSWER_TIMEOUT.as_secs()
    )]
    NoAnswer { path: PathBuf },
    #[error(
        "the daemon at {} closed the connection before answering, on a second connection too: \
         it is stopping or restarting; ask again",
        path.display()
    )]
    Closed { path: PathBuf },
    #[error(
        "{} may not be opened by this user ({error}): the socket is open to every user, so \
         the run directory's permissions keep you out; ask as root, or point --run-dir at the \
         daemon's run directory",
        path.display()
    )]
    NotPermitted { path: PathBuf, error: io::Error },
    #[error("asking the daemon at {} failed", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon's answer is not what the protocol says: {0}")]
    BadAnswer(String),
    /// The daemon refused the request (anything but `unknown`).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
}

/// The client end of a connection: `ADDR:PORT`, or just `ADDR` (any port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Socket(SocketAddr),
    Ip(IpAddr),
}

impl FromStr for Peer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Peer::Socket)
            .or_else(|_| s.trim_matches(['[', ']']).parse().map(Peer::Ip))
            .map_err(|_| {
                format!("{s:?} is not ADDR:PORT or ADDR (e.g. 127.0.0.1:53422, [::1]:53422, ::1)")
            })
    }
}

impl Peer {
    /// Whether the connection's client is this peer. An IPv4-mapped
    /// address (`[::ffff:127.0.0.1]:N`, what a dual-stack listener's
    /// `getpeername` gives) is the IPv4 address the daemon prints.
    fn matches(self, client: SocketAddr) -> bool {
        let client_ip = client.ip().to_canonical();
        match self {
            Peer::Socket(addr) => {
                addr.ip().to_canonical() == client_ip && addr.port() == client.port()
            }
            Peer::Ip(ip) => ip.to_canonical() == client_ip,
        }
    }
}

/// `who`'s LOCAL: the service's own end.
pub fn parse_local(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "{s:?} is not ADDR:PORT, the service's own end as getsockname gives it (e.g. \
             127.0.0.1:8080, [::1]:8080)"
        )
    })
}

/// A network namespace named by a file (`/run/netns/NAME`,
/// `/proc/PID/ns/net`) or by its inode number, as its inode.
pub fn parse_netns(s: &str) -> Result<u32, String> {
    if let Ok(inode) = s.parse() {
        return Ok(inode);
    }
    std::fs::metadata(s)
        .map(|meta| meta.ino() as u32)
        .map_err(|e| {
            format!("{s}: {e} (give a namespace file such as /run/netns/NAME or an inode number)")
        })
}

/// What a command prints (on stdout; `note` on stderr) and its exit code.
pub struct Printed {
    pub text: String,
    pub note: Option<String>,
    pub code: u8,
}

/// Sends one request to the daemon of `run_dir` through the client
/// library (a connect and an answer that wait [`ANSWER_TIMEOUT`] at most):
/// the answer when `ok`, `None` for `unknown`.
pub fn ask(run_dir: &Path, request: Value) -> Result<Option<Value>, ClientError> {
    let path = run_dir.join(SOCKET_NAME);
    let failed = |e: query::Error| client_error(&path, e);
    let mut query = Query::connect_timeout(&path, Some(ANSWER_TIMEOUT)).map_err(failed)?;
    query.ask(request).map_err(failed)
}

/// What the client library's `e` says, for people at a terminal.
fn client_error(path: &Path, e: query::Error) -> ClientError {
    let path = path.to_owned();
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    match e {
        query::Error::Connect { source, .. } => match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                path,
                error: source,
            },
            io::ErrorKind::PermissionDenied => ClientError::NotPermitted {
                path,
                error: source,
            },
            _ if timed_out(&source) => ClientError::NoAnswer { path },
            _ => ClientError::Io { path, source },
        },
        query::Error::Io(source) if timed_out(&source) => ClientError::NoAnswer { path },
        query::Error::Io(source) => ClientError::Io { path, source },
        query::Error::Forbidden { message } => ClientError::Refused {
            code: "forbidden".to_owned(),
            message,
        },
        query::Error::Timeout { message } => ClientError::Refused {
            code: "timeout".to_owned(),
            message,
        },
        query::Error::Refused { code, message } => ClientError::Refused { code, message },
        query::Error::Closed => ClientError::Closed { path },
        other => ClientError::BadAnswer(other.to_string()),
    }
}

/// The answer's payload `field`, `None` for `unknown`.
fn payload(answer: Option<Value>, field: &str) -> Option<Value> {
    answer.map(|mut answer| answer[field].take())
}

/// `loopwarden who PEER [LOCAL]`: the origin of the connection from `peer`
/// to `local`, or of every connection from `peer` without `local`.
pub fn who(
    run_dir: &Path,
    peer: Peer,
    local: Option<SocketAddr>,
    netns: Option<u32>,
    json: bool,
) -> Result<Printed, ClientError> {
    // Older connections the daemon's `conns` left out (a peer without
    // LOCAL is looked for among those it listed).
    let mut unlisted = 0;
    // A connection found with PEER and LOCAL the other way round.
    let mut swapped = false;
    let origins = match (peer, local) {
        (Peer::Socket(peer), Some(local)) => {
            let lookup = |peer: SocketAddr, local: SocketAddr| {
                let mut request = json!({"op": "who", "peer": peer, "local": local});
                if let Some(netns) = netns {
                    request["netns"] = netns.into();
                }
                ask(run_dir, request).map(|answer| payload(answer, "origin"))
            };
            let mut origin = lookup(peer, local)?;
            // `ss` lists the service's socket as `Local Peer`: the other
            // way round from `who PEER LOCAL`.
            if origin.is_none() && !json {
                origin = lookup(local, peer)?;
                swapped = origin.is_some();
            }
            if json {
                return Ok(match origin {
                    Some(origin) => found(format!("{origin:#}\n")),
                    None => Printed {
                        text: "null\n".to_owned(),
                        ..none()
                    },
                });
            }
            origin.into_iter().collect()
        }
        (Peer::Ip(ip), Some(_)) => {
            return Err(ClientError::Refused {
                code: "bad-request".to_owned(),
                message: format!("with LOCAL, PEER needs its port too (e.g. {ip}:53422)"),
            });
        }
        (peer, None) => {
            let (all, more) = all_conns(run_dir, netns)?;
            unlisted = more;
            all.into_iter()
                .filter(|o| client_of(o).is_some_and(|c| peer.matches(c)))
                .collect::<Vec<_>>()
        }
    };
    // Not found among the newest: it may be older; with LOCAL it is one
    // lookup, whatever its age.
    let none = || {
        let mut printed = none();
        if netns.is_none() && local.is_some() {
            printed.note = Some(format!(
                "{UNKNOWN}; or it is in another network namespace, which --netns names (root \
                 in the host's namespace; `loopwarden conns` lists every namespace's for it)"
            ));
        }
        if unlisted > 0 {
            printed.note = Some(format!(
                "unknown among the newest connections the daemon lists; {unlisted} older ones \
                 were not listed: give LOCAL too to look it up whatever its age"
            ));
        }
        printed
    };
    if json {
        let array = format!("{:#}\n", Value::Array(origins.clone()));
        return Ok(if origins.is_empty() {
            Printed {
                text: array,
                ..none()
            }
        } else {
            found(array)
        });
    }
    if origins.is_empty() {
        return Ok(none());
    }
    let blocks: Vec<String> = origins.iter().map(show::describe).collect();
    let mut printed = found(blocks.join("\n"));
    if swapped {
        printed.note = Some(
            "found with PEER and LOCAL the other way round: PEER is the client's end (the \
             service's getpeername), LOCAL the service's own (its getsockname)"
                .to_owned(),
        );
    }
    Ok(printed)
}

/// `loopwarden conns`: every open protected connection the caller may see.
pub fn conns(run_dir: &Path, netns: Option<u32>, json: bool) -> Result<Printed, ClientError> {
    let (origins, more) = all_conns(run_dir, netns)?;
    let text = if json {
        format!("{:#}\n", Value::Array(origins.clone()))
    } else if origins.is_empty() {
        String::new()
    } else {
        show::table(&origins)
    };
    if origins.is_empty() {
        return Ok(Printed {
            text,
            note: Some(
                "no protected connection that loopwarden holds an origin for is open (that you \
                 may see): connections to unprotected ports, and those opened before the daemon \
                 first tagged (before its first start, or since a detach), are not listed"
                    .to_owned(),
            ),
            code: exit::NONE,
        });
    }
    Ok(Printed {
        note: (more > 0).then(|| {
            format!(
                "{more} older connections are not listed (the daemon lists the newest {})",
                origins.len()
            )
        }),
        ..found(text)
    })
}

/// The connections the daemon lists, and how many older ones it left out.
fn all_conns(run_dir: &Path, netns: Option<u32>) -> Result<(Vec<Value>, u64), ClientError> {
    let mut request = json!({"op": "conns"});
    if let Some(netns) = netns {
        request["netns"] = netns.into();
    }
    let answer = ask(run_dir, request)?;
    let more = answer
        .as_ref()
        .and_then(|a| a["more"].as_u64())
        .unwrap_or(0);
    Ok(match payload(answer, "conns") {
        Some(Value::Array(conns)) => (conns, more),
        _ => (Vec::new(), more),
    })
}

fn found(text: String) -> Printed {
    Printed {
        text,
        note: None,
        code: exit::FOUND,
    }
}

/// Why `who` finds nothing, most likely first.
const UNKNOWN: &str = "unknown: loopwarden holds no origin for such an open connection: its \
                       port is not protected, it was opened before the daemon first tagged \
                       (before its first start, or since a detach), it is closed, or it is \
                       not yours to see";

fn none() -> Printed {
    Printed {
        text: String::new(),
        note: Some(UNKNOWN.to_owned()),
        code: exit::NONE,
    }
}

fn client_of(origin: &Value) -> Option<SocketAddr> {
    origin["client"].as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_with_or_without_a_port() {
        assert_eq!(
            "127.0.0.1:53422".parse(),
            Ok(Peer::Socket("127.0.0.1:53422".parse().unwrap()))
        );
        assert_eq!("::1".parse(), Ok(Peer::Ip("::1".parse().unwrap())));
        assert_eq!("[::1]".parse(), Ok(Peer::Ip("::1".parse().unwrap())));
        assert!(
            "localhost:80"
                .parse::<Peer>()
                .unwrap_err()
                .contains("ADDR:PORT")
        );
        assert!(Peer::Ip("::1".parse().unwrap()).matches("[::1]:5".parse().unwrap()));
        assert!(!Peer::Socket("[::1]:6".parse().unwrap()).matches("[::1]:5".parse().unwrap()));
        let mapped: Peer = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert!(mapped.matches("127.0.0.1:5".parse().unwrap()));
        assert!(!mapped.matches("127.0.0.1:6".parse().unwrap()));
        let mapped_ip: Peer = "::ffff:127.0.0.1".parse().unwrap();
        assert!(mapped_ip.matches("127.0.0.1:5".parse().unwrap()));
        assert!(!mapped_ip.matches("127.0.0.2:5".parse().unwrap()));
    }
}
