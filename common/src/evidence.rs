//! How a process became network-facing: [`crate::Evidence::kind`].

/// No evidence.
pub const NONE: u8 = 0;
/// It put a socket on a non-loopback address into LISTEN.
pub const LISTENING: u8 = 1;
/// One of its listeners completed a handshake with a non-local peer.
pub const ACCEPTED: u8 = 2;
/// It received data from a non-local peer.
pub const RECEIVED: u8 = 3;
/// Its connection to a non-local peer completed its handshake.
pub const CONNECTED: u8 = 4;
/// It was executed with a TCP connection from a non-local peer as its
/// standard input or output (an inetd-style server's per-connection
/// program).
pub const STDIO: u8 = 5;
/// Its state could not be kept: `LW_PROCS` was full when it had evidence,
/// a lineage or a script to keep there (or it is a child of such a
/// process). Judged network-facing, as the evidence it may have had would
/// have made it, until it exits or executes a program while the policy has
/// no lineage it may have lost; no peer is named.
pub const UNTRACKED: u8 = 6;

/// Whether standing evidence of `kind` says the process listens
/// (`listening` or `accepted`): the one whose accepts a listener's entry
/// may credit.
#[inline(always)]
pub fn listens(kind: u8) -> bool {
    kind == LISTENING || kind == ACCEPTED
}
