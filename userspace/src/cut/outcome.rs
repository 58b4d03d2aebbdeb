//! What a sweep did ([`Sweep`]: its [`Cut`]s, what it examined) and what
//! kept it from being complete ([`SweepError`]).

use std::{io, net::SocketAddr};

use loopwarden_common::Evidence;
use tracing::warn;

use super::procs::Owner;
use crate::{
    error_chain,
    kernel::sock_diag::{self, TcpSocket},
};

/// One destroyed connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Index of the deny rule that matched the owner, or
    /// [`loopwarden_common::RELAY_RULE`] for the relay verdict.
    pub rule: usize,
    pub rule_name: String,
    /// The client-side socket that was destroyed.
    pub socket: TcpSocket,
    /// `SO_NETNS_COOKIE` of its network namespace (0 if unknown).
    pub netns_cookie: u64,
    /// The owner that matched the deny rule.
    pub owner: Owner,
    /// The relay evidence the connection's origin recorded at its connect,
    /// if it recorded any.
    pub relayed: Option<Relayed>,
    /// When it was cut (its line is written once the sweep is done).
    pub at: std::time::SystemTime,
}

/// The relay evidence a connection's origin recorded at its connect: the
/// remote party behind its caller then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relayed {
    pub via: Evidence,
    /// CLOCK_MONOTONIC of the connect.
    pub connect_ns: u64,
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The connections it destroyed.
    pub cuts: Vec<Cut>,
    /// Network namespaces whose sockets it listed.
    pub namespaces: usize,
    /// Sockets it examined over all of them.
    pub examined: usize,
    /// What kept it from checking or cutting everything, one line each, in
    /// the order met (each also logged as a warning). Empty: complete.
    pub problems: Vec<String>,
    /// It stopped early (before its next candidate or cut): a newer policy
    /// had been asked for.
    pub superseded: bool,
}

impl Sweep {
    /// Logs `text` as a warning and keeps it.
    pub(super) fn problem(&mut self, text: String) {
        warn!("cut: {text}");
        self.problems.push(text);
    }

    /// Logs and keeps `e`, with how to fix what the kernel lacks when the
    /// error is that.
    pub(super) fn error(&mut self, e: &SweepError) {
        let fix = match e {
            SweepError::Dump { source, .. } | SweepError::Destroy { source, .. } => {
                sock_diag::missing_feature_fix(source)
            }
            _ => None,
        };
        let text = error_chain(e);
        self.problem(match fix {
            Some(fix) => format!("{text} ({fix})"),
            None => text,
        });
    }
}

/// What went wrong in a sweep; logged, never fatal: whatever else can be
/// swept still is.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("listing network namespaces from /proc failed")]
    Namespaces(#[source] procfs::ProcError),
    #[error("opening a sock_diag socket in network namespace {netns} failed")]
    Open {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("listing the TCP sockets of network namespace {netns} failed")]
    Dump {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("walking /proc for the owners of {sockets} sockets failed")]
    Owners {
        sockets: usize,
        #[source]
        source: procfs::ProcError,
    },
    #[error(
        "cutting {src} -> {dst} (socket cookie {cookie}) of pid {pid} in network namespace {netns} failed"
    )]
    Destroy {
        src: SocketAddr,
        dst: SocketAddr,
        cookie: u64,
        pid: u32,
        netns: String,
        #[source]
        source: io::Error,
    },
}

impl SweepError {
    /// Whether the namespace is gone since it was listed (its last process
    /// exited, or its file was removed): it holds no connection to cut, so
    /// the sweep is not the less complete for it.
    pub(super) fn namespace_gone(&self) -> bool {
        matches!(self, SweepError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_namespace_that_is_gone_is_no_problem() {
        let open = |kind: io::ErrorKind| SweepError::Open {
            netns: "net:[1]".into(),
            source: io::Error::from(kind),
        };
        assert!(open(io::ErrorKind::NotFound).namespace_gone());
        assert!(!open(io::ErrorKind::PermissionDenied).namespace_gone());
        let dump = SweepError::Dump {
            netns: "net:[1]".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert!(!dump.namespace_gone(), "no tcp_diag is a problem");
    }
}
