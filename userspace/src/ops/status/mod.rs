//! `loopwarden status`: is anything enforcing, and what?
//!
//! Everything about enforcement comes from the kernel through the pins,
//! never from a daemon: whether `links/lw_connect4` and `links/lw_connect6`
//! are pinned, which programs they run and whether the cgroup v2 root runs
//! them ([`inspect::link`]); the layout of the pinned maps (`LW_META`), the
//! policy in force (`LW_GENERATION`, `LW_SETTINGS`) and the counters
//! (`LW_STATS`); whether the tracking programs that recognise relays
//! (`links/lw_sock_state`, ...) are pinned and run. The daemon's own report (`<run_dir>/status.json`: pid,
//! version, policy source, last reload) is shown only while the run
//! directory's lock is held by the pid it names.
//!
//! Exit codes ([`exit`]): 0 a policy is in force through attached, pinned
//! programs (with or without a daemon); 3 nothing enforces; 4 the pins
//! cannot be read or are of another layout.

mod daemon;
mod human;

use std::{
    fs,
    path::{Path, PathBuf},
};

use loopwarden_common::{Meta, flags, maps, programs, stats};
use serde::Serialize;

use self::daemon::daemon_report;
use crate::{
    daemon::status_file::{self, DaemonStatus},
    holder::Holder,
    kernel::{
        compat,
        inspect::{self, Counter, InspectError, LinkState},
        lru,
        pins::PinDir,
        sys,
    },
    provenance::Conns,
};

/// Exit codes of `loopwarden status`.
pub mod exit {
    /// Attached and pinned, a policy enabled (enforce or audit mode).
    pub const ACTIVE: u8 = 0;
    /// Nothing enforces: nothing pinned (never started, or detached), the
    /// links are gone or not attached, or the pinned policy is disabled.
    pub const NOT_ENFORCING: u8 = 3;
    /// The pins cannot be read (not root, a broken pin) or are of another
    /// layout: what they enforce is unknown to this build.
    pub const UNREADABLE: u8 = 4;
}

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
    fn attached(&self) -> bool {
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
    fn running(&self) -> bool {
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

/// Reads everything; never fails (what it cannot read, it says).
/// `host_cgroup_root` is `--host-cgroup-root` (see [`compat::cgroup2_root`]).
pub fn gather(pin_dir: &Path, run_dir: &Path, host_cgroup_root: Option<&Path>) -> Report {
    let pins = PinDir::new(pin_dir);
    let cgroup2_root = compat::cgroup2_root(host_cgroup_root);
    let daemon = daemon_report(run_dir, pin_dir);
    let mut report = Report {
        state: State::Unreadable,
        exit_code: exit::UNREADABLE,
        summary: String::new(),
        pin_dir: pin_dir.to_owned(),
        run_dir: run_dir.to_owned(),
        cgroup2_root: cgroup2_root.clone(),
        links: Vec::new(),
        tracking: Vec::new(),
        bind: BindReport {
            guard: None,
            links: Vec::new(),
        },
        egress_rules: None,
        provenance: ProvenanceReport {
            tag: None,
            getsockopt: link_report(programs::GETSOCKOPT, LinkState::Absent),
            getsockopt_scoped: Vec::new(),
            connections: None,
            capacity: None,
        },
        layout: None,
        maps_error: None,
        policy: None,
        counters: Vec::new(),
        lost_reports: None,
        daemon,
    };
    if compat::require_root().is_err() {
        return report.finish(
            State::Unreadable,
            "cannot read the pins: bpffs and bpf(2) need root (run it with sudo)".to_owned(),
        );
    }
    let cgroup_links = |links: &[(&str, u32)]| -> Vec<LinkReport> {
        links
            .iter()
            .map(|&(program, hook)| {
                link_report(
                    program,
                    inspect::link(&pins, program, hook, cgroup2_root.as_deref()),
                )
            })
            .collect()
    };
    report.links = cgroup_links(&inspect::LINKS);
    report.bind.links = cgroup_links(&inspect::BIND_LINKS);
    report.provenance.getsockopt = link_report(
        programs::GETSOCKOPT,
        inspect::link(
            &pins,
            programs::GETSOCKOPT,
            sys::ATTACH_GETSOCKOPT,
            cgroup2_root.as_deref(),
        ),
    );
    // Its links in named cgroups: `lw_getsockopt_<cgroup id>`.
    let scoped_prefix = format!("{}_", programs::GETSOCKOPT);
    let mut scoped: Vec<String> = fs::read_dir(pins.links_dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&scoped_prefix))
                .collect()
        })
        .unwrap_or_default();
    scoped.sort();
    report.provenance.getsockopt_scoped = scoped
        .iter()
        .map(|pin| link_report(pin, inspect::link(&pins, pin, sys::ATTACH_GETSOCKOPT, None)))
        .collect();
    report.tracking = loopwarden_common::programs::TRACKERS
        .iter()
        .chain(loopwarden_common::programs::CGROUP_TRACKERS)
        .map(|&(program, tracepoint)| {
            // The cgroup hooks are checked at the root like the connect
            // links; a tracepoint's link runs wherever it is pinned.
            let state = match inspect::CGROUP_TRACKER_LINKS
                .iter()
                .find(|&&(name, _)| name == program)
            {
                Some(&(_, hook)) => inspect::link(&pins, program, hook, cgroup2_root.as_deref()),
                None => inspect::link(&pins, program, 0, None),
            };
            let skipped_runs = match &state {
                LinkState::Pinned(link) => link.skipped_runs,
                _ => None,
            };
            let link = link_report(program, state);
            TrackerReport {
                program: program.to_owned(),
                tracepoint: tracepoint.to_owned(),
                pinned: link.pinned,
                prog_name: link.prog_name,
                skipped_runs,
                attached_at_root: link.attached_at_root,
                error: link.error,
            }
        })
        .collect();
    let any_map = pins.map(loopwarden_common::maps::META).exists();
    let any_link = report.links.iter().any(|l| l.pinned);
    if !any_link && !any_map {
        let mut summary = if pins.exists() {
            format!("not enforcing: nothing pinned in {}", pin_dir.display())
        } else {
            format!(
                "not enforcing: nothing pinned ({} does not exist: never started, or detached)",
                pin_dir.display()
            )
        };
        // The run directory's daemon pins elsewhere: the likely mistake.
        if let Some(theirs) = report
            .daemon
            .reported
            .as_ref()
            .filter(|_| report.daemon.running)
            .and_then(|r| r.pin_dir.as_deref())
            .filter(|theirs| *theirs != pin_dir)
        {
            summary.push_str(&format!(
                "; the daemon of this run directory pins in {} (`{}` reports on it)",
                theirs.display(),
                crate::ops::command("status", theirs, Some(run_dir))
            ));
        }
        return report.finish(State::NotEnforcing, summary);
    }
    let meta = match inspect::meta(&pins) {
        Ok(meta) => Some(meta),
        Err(e) => {
            if let InspectError::Layout { found } = e {
                report.layout = Some(found);
            }
            report.maps_error = Some(e.to_string());
            None
        }
    };
    if let Some(meta) = meta {
        report.layout = Some(meta.layout);
        if let Err(e) = report.read_maps(&pins, &meta) {
            report.maps_error = Some(e.to_string());
        }
    }
    if let Some(broken) = report.links.iter().find(|l| l.error.is_some()) {
        let why = broken.error.clone().unwrap_or_default();
        return report.finish(State::Unreadable, format!("unreadable link pin: {why}"));
    }
    if let Some(why) = &report.maps_error {
        let summary = match (report.links.iter().all(LinkReport::attached), report.layout) {
            (true, Some(layout)) if layout != loopwarden_common::LAYOUT_VERSION => format!(
                "unknown: programs attached, but the pinned maps have incompatible layout \
                 {layout}; this loopwarden cannot say what they enforce"
            ),
            _ => format!("unknown: {why}"),
        };
        return report.finish(State::Unreadable, summary);
    }
    if let Some(missing) = report.links.iter().find(|l| !l.attached()) {
        let why = if !missing.pinned {
            "is not pinned"
        } else if missing.prog_name.is_none() {
            "runs no loaded program"
        } else {
            "is not attached at the cgroup v2 root"
        };
        let summary = format!("not enforcing: link {} {why}", missing.program);
        return report.finish(State::NotEnforcing, summary);
    }
    let Some(policy) = report.policy.clone() else {
        return report.finish(State::Unreadable, "unknown: no policy read".to_owned());
    };
    if !policy.enabled {
        return report.finish(
            State::NotEnforcing,
            "not enforcing: programs attached, but the pinned policy is disabled".to_owned(),
        );
    }
    let what = match policy.mode.as_str() {
        "enforce" => "refusing",
        _ => "reporting only",
    };
    let failed_reload = report
        .daemon
        .reported
        .as_ref()
        .and_then(|r| r.last_reload.as_ref())
        .is_some_and(|reload| !reload.ok);
    let who = match &report.daemon.elsewhere {
        _ if report.daemon.running && failed_reload => {
            "reported by the daemon, whose last reload FAILED (it keeps the policy before: see \
             `reload` below)"
                .to_owned()
        }
        _ if report.daemon.running => "reported by the daemon".to_owned(),
        Some(other) => format!(
            "reported by the daemon of pid {}, whose run directory is {} (not {})",
            other.pid,
            other
                .run_dir
                .as_deref()
                .map_or("another".to_owned(), human::shown_path),
            report.run_dir.display()
        ),
        None => "no daemon: enforcing the pinned policy, unreported".to_owned(),
    };
    let tracking = match report.tracking.iter().find(|t| !t.running()) {
        Some(t) if policy.relay != "off" => format!(
            "; relay detection incomplete ({} is not running)",
            t.program
        ),
        _ => String::new(),
    };
    let bind = match report.bind.links.iter().find(|l| !l.attached()) {
        Some(l) if report.bind.guard == Some(true) => {
            format!("; bind guard incomplete ({} is not attached)", l.program)
        }
        _ => String::new(),
    };
    let summary = format!(
        "active: policy #{} in {} mode, {what}; {who}{tracking}{bind}",
        policy.seq, policy.mode
    );
    report.finish(State::Active, summary)
}

impl Report {
    fn finish(mut self, state: State, summary: String) -> Self {
        self.state = state;
        self.exit_code = state.exit_code();
        self.summary = summary;
        self
    }

    fn read_maps(&mut self, pins: &PinDir, meta: &Meta) -> Result<(), InspectError> {
        let in_force = inspect::in_force(pins)?;
        let s = in_force.settings;
        self.policy = Some(PolicyReport {
            seq: s.seq,
            slot: in_force.slot,
            mode: status_file::mode_name(s.flags).to_owned(),
            enabled: s.flags & flags::ENABLED != 0,
            deny_errno: errno_name(s.deny_errno),
            rules: s.active.count_ones(),
            all_ports: s.flags & flags::ALL_PORTS != 0,
            netns_scoped: s.flags & flags::NETNS_SCOPED != 0,
            host_addresses: s.flags & flags::HOST_ADDRS != 0,
            relay: match (
                s.flags & flags::RELAY != 0,
                s.flags & flags::RELAY_DENY != 0,
            ) {
                (false, _) => "off",
                (true, false) => "audit",
                (true, true) => "deny",
            }
            .to_owned(),
            relay_window_ms: s.relay_window_ns / 1_000_000,
        });
        self.provenance.tag = Some(s.flags & flags::PROVENANCE != 0);
        self.bind.guard = Some(s.flags & flags::BIND_GUARD != 0);
        self.egress_rules = Some(if s.flags & flags::EGRESS != 0 {
            s.egress_active.count_ones()
        } else {
            0
        });
        self.provenance.connections = Conns::open(&pins.maps_dir())
            .ok()
            .map(|conns| conns.list(|_| true).len());
        self.provenance.capacity = pins
            .max_entries(maps::CONNS)
            .map(|made| lru::capacity(maps::CONNS, made));
        self.counters = inspect::counters(pins)?;
        if let Some(dropped) = self.counters.iter().find(|c| c.index == stats::DROPPED) {
            self.lost_reports = Some(LostReport {
                total: dropped.value,
                unreported: dropped.value.saturating_sub(meta.dropped_reported),
            });
        }
        Ok(())
    }
}

fn link_report(program: &str, state: LinkState) -> LinkReport {
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

fn errno_name(errno: u32) -> String {
    match errno as i32 {
        libc::ECONNREFUSED => "ECONNREFUSED".to_owned(),
        libc::EPERM => "EPERM".to_owned(),
        other => other.to_string(),
    }
}
