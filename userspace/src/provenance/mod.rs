//! Provenance in userspace: the origins the kernel bound to protected
//! connections (see `ebpf/src/origin/` and [`loopwarden_common::origin`]),
//! read from the pinned `LW_CONN_SLOTS` and `LW_CONNS` ([`Conns`]) to
//! answer services and operators: [`query`] serves the query socket,
//! [`request`] answers its requests, [`answer`] turns a record into the
//! origin they carry, and [`client`] is `loopwarden who` / `loopwarden
//! conns` (printed by `show`); [`ident`] is the RFC 1413 responder.
//! [`live`] checks that a connection an entry names is still open;
//! [`sweep`] gives back the slots of connections whose close the kernel
//! did not see.

pub mod answer;
pub mod client;
mod conns;
pub mod ident;
pub mod live;
pub mod query;
pub mod request;
mod show;
pub mod sweep;

pub use self::conns::{Conns, ConnsError, Seen, conn_key, netns_of, socket_addr};
