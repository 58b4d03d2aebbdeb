//! What `loopwarden status` reports (its JSON is these types): the links,
//! the tracking programs, the policy in force, provenance, the counters and
//! the daemon.

use std::path::PathBuf;

use serde::Serialize;

use super::exit;
use crate::{
    daemon::status_file::DaemonStatus,
    holder::Holder,
    kernel::inspect::{Counter, LinkState},
};

/// The verdict, for scripts (`state` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Active,
    NotEnforcing,
    Unreadable,
}

impl State {
    pub fn exit_code(self) -> u8 {
        match self {
            State::Active => exit::ACTIVE,
            State::NotEnforcing => exit::NOT_ENFORCING,
            State::Unreadable => exit::UNREADABLE,
        }
    }
}

/// One pinned link.
#[derive(Clone, Debug, Serialize)]
pub struct LinkReport {
    pub program: String,
    pub pinned: bool,
    pub link_id: Option<u32>,
    pub prog_id: Option<u32>,
    /// The name of the program the link runs (`None`: not loaded).
    pub prog_name: Option<String>,
    /// Whether the cgroup v2 root runs it for its connect hook.
    pub attached_at_root: Option<bool>,
    pub error: Option<String>,
}

impl LinkReport {
    pub(super) fn attached(&self) -> bool {
        self.pinned && self.prog_name.is_some() && self.attached_at_root == Some(true)
    }
}

/// The policy in force.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyReport {
    pub seq: u64,
    pub slot: u32,
    /// `enforce`, `audit` or `disabled`.
    pub mode: String,
    pub enabled: bool,
    pub deny_errno: String,
    pub rules: u32,
    pub all_ports: bool,
    pub netns_scoped: bool,
    /// How many namespaces a scoped policy is in force in (`None`: not
    /// scoped, or more than its settings hold inline, looked up in
    /// `LW_NETNS`).
    pub netns_in_scope: Option<u32>,
    pub host_addresses: bool,
    /// The relay verdict: `audit`, `deny` or `off`.
    pub relay: String,
    /// How recent received/connected evidence must be, in ms.
    pub relay_window_ms: u64,
}

/// One tracking program's pinned link (see `ebpf/src/sockets.rs`,
/// `process.rs`): without it relays are recognised from less evidence.
#[derive(Clone, Debug, Serialize)]
pub struct TrackerReport {
    pub program: String,
    pub tracepoint: String,
    pub pinned: bool,
    /// The program the link runs (`None`: not loaded).
    pub prog_name: Option<String>,
    /// Runs of it the kernel skipped, as it would have run nested on a CPU
    /// already running it (counted for tracing programs, Linux 5.12+;
    /// `None`: not readable): each may be relay evidence, an origin or a
    /// close that went unseen.
    pub skipped_runs: Option<u64>,
    /// For a cgroup hook (the UDP receive hooks): whether the cgroup v2
    /// root runs it. `None` for tracepoints.
    pub attached_at_root: Option<bool>,
    pub error: Option<String>,
}

impl TrackerReport {
    pub(super) fn running(&self) -> bool {
        self.pinned && self.prog_name.is_some() && self.attached_at_root != Some(false)
    }
}

/// The bind guard: whether the policy turns it on, and its links.
#[derive(Clone, Debug, Serialize)]
pub struct BindReport {
    /// The policy in force keeps `[bind] loopback_only` ports on loopback
    /// (`None`: no policy was read).
    pub guard: Option<bool>,
    /// `lw_bind4` and `lw_bind6`.
    pub links: Vec<LinkReport>,
}

/// Provenance: whether protected connections are tagged with their
/// origin and services can ask (see `ebpf/src/origin/`).
#[derive(Clone, Debug, Serialize)]
pub struct ProvenanceReport {
    /// The policy in force tags connections (`[provenance] tag`; `None`:
    /// no policy was read).
    pub tag: Option<bool>,
    /// The `cgroup/getsockopt` link that answers services, at the root.
    pub getsockopt: LinkReport,
    /// Its links in the cgroups `[provenance] getsockopt_cgroups` names.
    pub getsockopt_scoped: Vec<LinkReport>,
    /// Accepted protected connections `LW_CONN_SLOTS` and `LW_CONNS` hold
    /// now, open ones.
    pub connections: Option<usize>,
    /// How many it can hold (`[provenance] connections`).
    pub capacity: Option<u32>,
}

/// Reports the kernel could not queue.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LostReport {
    /// Every report lost since the maps were created.
    pub total: u64,
    /// Of those, lost since a daemon last reported the count (e.g. while no
    /// daemon read).
    pub unreported: u64,
}

/// The daemon, as its run directory shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonReport {
    pub running: bool,
    /// The pid holding the run directory's lock, if any.
    pub lock_holder: Option<u32>,
    /// What it (or, when not running, the last one) wrote in status.json.
    pub reported: Option<DaemonStatus>,
    /// Why a status.json that is there was not read (not readable by this
    /// user, or it does not parse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<String>,
    /// When none runs for this run directory: the process holding the pin
    /// directory's lock (a daemon given another `--run-dir`).
    pub elsewhere: Option<Holder>,
}

/// Everything `status` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub state: State,
    pub exit_code: u8,
    /// One sentence: what enforces, or why nothing does.
    pub summary: String,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
    pub cgroup2_root: Option<PathBuf>,
    pub links: Vec<LinkReport>,
    pub tracking: Vec<TrackerReport>,
    pub bind: BindReport,
    /// Egress rules in the policy in force (0: the egress guard is off;
    /// `None`: no policy was read); they are judged in the connect programs.
    pub egress_rules: Option<u32>,
    pub provenance: ProvenanceReport,
    /// The pinned maps' layout version, when `LW_META` could be read.
    pub layout: Option<u32>,
    /// Why the maps were not decoded.
    pub maps_error: Option<String>,
    pub policy: Option<PolicyReport>,
    pub counters: Vec<Counter>,
    pub lost_reports: Option<LostReport>,
    pub daemon: DaemonReport,
}

/// The report of the link `program` in `state`.
pub(super) fn link_report(program: &str, state: LinkState) -> LinkReport {
    let mut report = LinkReport {
        program: program.to_owned(),
        pinned: false,
        link_id: None,
        prog_id: None,
        prog_name: None,
        attached_at_root: None,
        error: None,
    };
    match state {
        LinkState::Absent => {}
        LinkState::Unreadable(e) => {
            report.pinned = true;
            report.error = Some(e);
        }
        LinkState::Pinned(link) => {
            report.pinned = true;
            report.link_id = Some(link.link_id);
            report.prog_id = Some(link.prog_id);
            report.prog_name = link.prog_name;
            report.attached_at_root = link.attached_at_root.map(|at| at && link.cgroup_link);
        }
    }
    report
}
