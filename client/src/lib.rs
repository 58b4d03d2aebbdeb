//! Ask loopwarden who is on the other end of a TCP connection your service
//! accepted.
//!
//! loopwarden judges every `connect()` to a protected local port in the
//! kernel and binds what it saw (the calling process, the verdict, and
//! whether a network-facing process made the connect on someone else's
//! behalf) to the connection. This crate reads it back two ways:
//!
//! - [`origin`]: one `getsockopt(fd, SOL_LOOPWARDEN, LW_ORIGIN)` on the
//!   accepted socket; no daemon round trip, no privileges. Answers
//!   `Ok(None)` for a connection loopwarden knows nothing of, and
//!   [`Error::NotAnswering`] when loopwarden's program is not attached.
//! - [`query::Query`]: the daemon's query socket
//!   (`/run/loopwarden/query.sock`), which adds what userspace knows (user
//!   name, executable path, command line) and can list every connection.
//!
//! The protocol both follow is in the README, "Asking loopwarden from your
//! service".
//!
//! # Example
//!
//! Refuse what was relayed to a local port, serve what a local process
//! connected directly:
//!
//! ```no_run
//! use std::net::TcpListener;
//!
//! let listener = TcpListener::bind("127.0.0.1:8080")?;
//! for stream in listener.incoming() {
//!     let stream = stream?;
//!     match loopwarden_client::origin(&stream) {
//!         Ok(Some(o)) if o.is_direct() => { /* serve: a local process connected */ }
//!         Ok(Some(o)) => eprintln!(
//!             "refused: relayed by {} (pid {}) for {:?}",
//!             o.exe_name,
//!             o.pid,
//!             o.via.map(|v| v.addr),
//!         ),
//!         // A port loopwarden does not protect, a connection older than
//!         // it, or one past `[provenance] connections`: not known to be
//!         // direct, so refuse it where loopwarden protects the port.
//!         Ok(None) => eprintln!("refused: loopwarden knows nothing of this connection"),
//!         Err(loopwarden_client::Error::NotAnswering) => { /* not running: fail open or closed */ }
//!         Err(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

mod origin;
pub mod query;

pub use origin::{Error, ExeFile, How, Origin, Rule, Verdict, Via, decode, origin};
