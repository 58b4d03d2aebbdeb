//! Bits of [`crate::Settings::flags`].

/// A policy is installed. Without it every connect is allowed untouched.
pub const ENABLED: u32 = 1 << 0;
/// Deny rules deny (enforce mode). Without it they are only reported.
pub const ENFORCE: u32 = 1 << 1;
/// Every destination port is protected (the port bitmap is not read).
pub const ALL_PORTS: u32 = 1 << 2;
/// Only connects from the network namespaces in `LW_NETNS` are checked.
pub const NETNS_SCOPED: u32 = 1 << 3;
/// The host's own addresses in `LW_HOST_ADDRS` are protected too.
pub const HOST_ADDRS: u32 = 1 << 4;
/// Some rule matches on a parent or ancestor executable.
pub const ANCESTORS: u32 = 1 << 5;
/// Report allowed connects to protected destinations as well.
pub const LOG_ALLOWED: u32 = 1 << 6;
/// Connects by network-facing processes get the relay verdict (audit).
pub const RELAY: u32 = 1 << 7;
/// ... and the relay verdict denies (in enforce mode).
pub const RELAY_DENY: u32 = 1 << 8;
/// Some rule names an interpreted script.
pub const SCRIPTS: u32 = 1 << 9;
/// Protected connects that proceed are tagged with their origin
/// (see [`super::origin`]).
pub const PROVENANCE: u32 = 1 << 10;
/// The bind guard is on: a TCP bind() of a port in `LW_BIND_PORTS` to
/// an address other than loopback is refused (with `ENFORCE`) or
/// reported, unless `LW_BIND_EXE`/`LW_BIND_UID` exempt the caller.
pub const BIND_GUARD: u32 = 1 << 11;
/// The egress guard is on: a TCP connect by a process some egress rule
/// names, to a destination `LW_EGRESS_DST` says that rule blocks, is
/// reported, and refused (with `ENFORCE`) if the rule's action is deny.
pub const EGRESS: u32 = 1 << 12;
