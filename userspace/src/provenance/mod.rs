//! Provenance in userspace: the origins the kernel bound to protected
//! connections (see `ebpf/src/origin.rs` and [`loopwarden_common::origin`]),
//! read from the pinned `LW_CONNS` ([`Conns`]) to answer services and
//! operators.

mod conns;
pub mod ident;

pub use self::conns::{Conns, ConnsError, conn_key, netns_of, socket_addr};
