//! What the bench measures: the daemon's configurations ([`Config`]), the
//! loads ([`Workload`]) and one measurement of one under the other
//! ([`Sample`]).

use std::fmt;

use super::{
    load::{self, Run},
    stats::Snapshot,
};

/// Whether and how the daemon runs during a measurement.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Config {
    Absent,
    /// Calibration: only `loopwarden baseline`'s no-op `lw_baseline4` is
    /// attached, to measure what the BPF statistics cost by themselves. Not
    /// part of the rate comparison.
    Baseline,
    /// Audit mode, the default `[provenance]`: protected connects that
    /// proceed are tagged with their origin.
    Audit,
    Enforce,
    /// Audit mode with `[provenance] tag = false`: the judgement alone, the
    /// path the protected-connect target is about. Connect loads only.
    Untagged,
    /// Audit mode with a rule matching the bench client: every protected
    /// connect is reported. The cost of reporting, not a realistic policy.
    ReportAll,
    /// Audit mode with an egress rule of [`egress::CIDRS`] prefixes naming
    /// the bench client, its destination allowed: the guard's whole path.
    /// Outbound load only.
    EgressNamed,
    /// ... naming another executable: what a process no rule names pays.
    EgressOther,
}

impl Config {
    /// Every phase of a round, in the order it runs (and the rate table's
    /// rows).
    pub(super) const PHASES: [Self; 8] = [
        Self::Absent,
        Self::Baseline,
        Self::Audit,
        Self::Enforce,
        Self::Untagged,
        Self::ReportAll,
        Self::EgressNamed,
        Self::EgressOther,
    ];

    /// The workloads measured in this phase: report-all and untagged are
    /// about the cost of protected connects, so they run only the connects.
    pub(super) fn workloads(self) -> &'static [Workload] {
        match self {
            Self::ReportAll | Self::Untagged => &Workload::CONNECTS,
            Self::EgressNamed | Self::EgressOther => &[Workload::Outbound],
            _ => &Workload::ALL,
        }
    }

    /// The daemon's `--mode`.
    pub(super) fn mode(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            _ => "audit",
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Absent => "absent",
            Self::Baseline => "baseline",
            Self::Audit => "audit",
            Self::Enforce => "enforce",
            Self::Untagged => "untagged",
            Self::ReportAll => "report-all",
            Self::EgressNamed => "egress-named",
            Self::EgressOther => "egress-other",
        })
    }
}

/// What runs during one measurement window.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Workload {
    /// connect()+close() to the protected port on 127.0.0.1.
    Protected,
    /// ... to the unprotected port.
    Unprotected,
    /// ... to the protected port on ::1.
    Protected6,
    /// A connection to another protected port on 127.0.0.1 that carries
    /// one HTTP/1.0 request and its response before it closes: what a
    /// service loopwarden protects sees of each client (the server answers
    /// at once; a real one takes longer, so its share of the cost is
    /// smaller).
    Request,
    /// A TCP stream from the peer namespace over the veth pair: `lw_receive`'s
    /// full path (a non-local peer).
    ReceiveTcp,
    /// UDP datagrams from the peer namespace over the veth pair. The kernel
    /// copies a linear UDP skb to the reader without the tracepoint
    /// `lw_receive` hooks: this shows whether it runs at all.
    ReceiveUdp,
    /// A TCP stream over loopback: `lw_receive`'s early exit.
    ReceiveLoopback,
    /// `/bin/true` spawned and waited for in a loop: fork, exec, exit.
    Spawn,
    /// [`Workload::Spawn`] by a process listening on the veth address: each
    /// child carries `listening` evidence into its exec, which reads its
    /// first descriptors for a listener it kept (none: the spawner's is
    /// close-on-exec), as a network server's helpers do.
    SpawnListening,
    /// connect()+close() to a server in the peer namespace across the veth
    /// pair: every outbound connection on the host (the connect hook's
    /// early exit plus `LW_PENDING`, the state tracepoint's `connected`).
    Outbound,
    /// getsockopt(SO_RCVBUF) in a loop: what `lw_getsockopt` (attached at
    /// the root) costs every getsockopt on the host.
    Getsockopt,
    /// socket()+bind(0.0.0.0:0)+close() in a loop: what `lw_bind4` costs a
    /// TCP bind the guard (on, for the protected port) does not name.
    Bind,
}

impl Workload {
    pub(super) const CONNECTS: [Self; 4] = [
        Self::Protected,
        Self::Unprotected,
        Self::Protected6,
        Self::Request,
    ];
    pub(super) const ALL: [Self; 12] = [
        Self::Protected,
        Self::Unprotected,
        Self::Protected6,
        Self::Request,
        Self::Outbound,
        Self::ReceiveTcp,
        Self::ReceiveUdp,
        Self::ReceiveLoopback,
        Self::Spawn,
        Self::SpawnListening,
        Self::Getsockopt,
        Self::Bind,
    ];

    pub fn is_receive(self) -> bool {
        matches!(
            self,
            Self::ReceiveTcp | Self::ReceiveUdp | Self::ReceiveLoopback
        )
    }

    /// What one operation of the load is.
    pub fn op(self) -> &'static str {
        match self {
            Self::Protected | Self::Unprotected | Self::Protected6 | Self::Outbound => "connect",
            Self::Request => "request",
            Self::ReceiveTcp | Self::ReceiveLoopback => "read",
            Self::ReceiveUdp => "datagram",
            Self::Spawn | Self::SpawnListening => "spawn",
            Self::Getsockopt => "getsockopt",
            Self::Bind => "bind",
        }
    }

    /// The unit of [`Workload::rate`].
    pub fn unit(self) -> &'static str {
        match self {
            Self::ReceiveTcp | Self::ReceiveLoopback => "MB/s",
            Self::ReceiveUdp => "datagrams/s",
            Self::Spawn | Self::SpawnListening => "spawns/s",
            Self::Getsockopt => "calls/s",
            Self::Bind => "binds/s",
            Self::Request => "requests/s",
            _ => "connects/s",
        }
    }

    /// Whether the load is a TCP stream, measured in bytes.
    pub fn is_stream(self) -> bool {
        matches!(self, Self::ReceiveTcp | Self::ReceiveLoopback)
    }

    /// The rate the rate table compares: bytes (MB/s) for the streams,
    /// operations per second otherwise.
    pub fn rate(self, run: &load::Run) -> f64 {
        if self.is_stream() {
            run.byte_rate() / 1e6
        } else {
            run.rate()
        }
    }

    /// The loopwarden programs this load makes run; the cost table shows
    /// these.
    pub fn programs(self) -> &'static [&'static str] {
        use loopwarden_common::programs as p;
        match self {
            Self::Protected | Self::Unprotected | Self::Outbound => &[p::CONNECT4, p::SOCK_STATE],
            Self::Protected6 => &[p::CONNECT6, p::SOCK_STATE],
            Self::Request => &[p::CONNECT4, p::SOCK_STATE, p::RECEIVE],
            Self::ReceiveTcp | Self::ReceiveLoopback => &[p::RECEIVE],
            Self::ReceiveUdp => &[p::RECEIVE, p::RECVMSG4],
            Self::Spawn | Self::SpawnListening => &[p::FORK, p::EXEC, p::EXIT],
            Self::Getsockopt => &[p::GETSOCKOPT],
            Self::Bind => &[p::BIND4],
        }
    }

    /// Whether `loopwarden baseline` puts a no-op program on this load's
    /// path (connect4 and the TCP receive tracepoint; not connect6, the
    /// process tracepoints, or UDP, which never reaches that tracepoint).
    pub fn has_noop_hook(self) -> bool {
        matches!(
            self,
            Self::Protected | Self::Unprotected | Self::Outbound | Self::Request
        ) || (self.is_receive() && self != Self::ReceiveUdp)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Protected => "protected",
            Self::Unprotected => "unprotected",
            Self::Protected6 => "protected6",
            Self::Request => "request",
            Self::Outbound => "outbound",
            Self::ReceiveTcp => "recv-tcp",
            Self::ReceiveUdp => "recv-udp",
            Self::ReceiveLoopback => "recv-lo",
            Self::Spawn => "spawn",
            Self::SpawnListening => "spawn-listening",
            Self::Getsockopt => "getsockopt",
            Self::Bind => "bind",
        })
    }
}

/// One measurement: a load run plus the BPF counters that moved meanwhile.
pub struct Sample {
    /// 0-based.
    pub round: u32,
    pub config: Config,
    pub workload: Workload,
    /// The rate window (BPF statistics off).
    pub run: Run,
    /// The window `progs` counts (statistics on).
    pub counted: Run,
    pub progs: Snapshot,
}
