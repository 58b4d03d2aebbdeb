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
mod report;

use std::{fs, path::Path};

use loopwarden_common::{Meta, flags, maps, programs, stats};

pub use self::report::{
    BindReport, DaemonReport, LinkReport, LostReport, PolicyReport, ProvenanceReport, Report,
    State, TrackerReport,
};
use self::{daemon::daemon_report, report::link_report};
use crate::{
    daemon::status_file,
    kernel::{
        compat,
        inspect::{self, InspectError, LinkState},
        lru,
        pins::PinDir,
        sys,
    },
    provenance::{Conns, Seen},
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
    // Root without them would read attached links as not attached.
    if let Some(why) = lacking_capabilities() {
        return report.finish(
            State::Unreadable,
            format!("cannot tell what is attached: {why}"),
        );
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
        // The host's root is out of sight: the links may well be attached.
        if missing.pinned
            && missing.prog_name.is_some()
            && host_cgroup_root.is_none()
            && compat::in_child_cgroup_namespace()
        {
            let summary = format!(
                "unknown: link {} is pinned, but this process is in a child cgroup namespace, \
                 where the host's cgroup v2 root cannot be seen; give the host's cgroup2 mount \
                 with --host-cgroup-root, or run status in the host's cgroup namespace",
                missing.program
            );
            return report.finish(State::Unreadable, summary);
        }
        // Pinned and running a program, but the root could not be asked
        // (none found, not opened, or the query failed): unknown, not "not
        // attached".
        if missing.pinned && missing.prog_name.is_some() && missing.attached_at_root.is_none() {
            let summary = format!(
                "unknown: link {} is pinned and runs a program, but whether it is attached at \
                 the cgroup v2 root cannot be seen ({}); give the host's cgroup2 mount with \
                 --host-cgroup-root",
                missing.program,
                match host_cgroup_root {
                    Some(root) => format!(
                        "{} is no cgroup v2 root, or could not be asked",
                        root.display()
                    ),
                    None => "no cgroup v2 root found to ask".to_owned(),
                }
            );
            return report.finish(State::Unreadable, summary);
        }
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
    // Scoped to namespaces, none of which is in scope: nothing is judged
    // (a name that did not exist at the first start, or namespaces gone
    // since; its daemon installs them once they are made).
    if policy.netns_scoped && policy.netns_in_scope == Some(0) {
        return report.finish(
            State::NotEnforcing,
            "not enforcing: the pinned policy is scoped to network namespaces ([protect] \
             netns), none of which exists now: it judges no connect until one is made"
                .to_owned(),
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
    // The run directory's daemon pins elsewhere: it reads none of these
    // pins' reports.
    let pins_elsewhere = report
        .daemon
        .reported
        .as_ref()
        .filter(|_| report.daemon.running)
        .and_then(|r| r.pin_dir.clone())
        .filter(|theirs| *theirs != pin_dir);
    // The run directory's daemon speaks for these pins only if they are its.
    let own = report.daemon.running && pins_elsewhere.is_none();
    let who = match (&report.daemon.elsewhere, &pins_elsewhere) {
        _ if own && failed_reload => {
            "reported by the daemon, whose last reading of its policy file FAILED (at start or \
             at a reload: it keeps the policy before; see `reload` below)"
                .to_owned()
        }
        _ if own => "reported by the daemon".to_owned(),
        (Some(other), _) => format!(
            "reported by the daemon of pid {}, whose run directory is {} (not {})",
            other.pid,
            other
                .run_dir
                .as_deref()
                .map_or("another".to_owned(), human::shown_path),
            report.run_dir.display()
        ),
        (None, Some(theirs)) => format!(
            "no daemon reports for these pins: enforcing the pinned policy, unreported (the \
             daemon of this run directory pins in {}: `{}` reports on it)",
            theirs.display(),
            crate::ops::command("status", theirs, Some(run_dir))
        ),
        (None, None) => "no daemon: enforcing the pinned policy, unreported".to_owned(),
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
    let refresh = match report.daemon.reported.as_ref() {
        Some(r) if own && r.refresh_failing.is_some() => {
            "; its re-resolution of the policy FAILS (see `refresh` below)"
        }
        _ => "",
    };
    let summary = format!(
        "active: policy #{} in {} mode, {what}; {who}{refresh}{tracking}{bind}",
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
            netns_in_scope: (s.flags & flags::NETNS_SCOPED != 0
                && s.netns_inline != loopwarden_common::NETNS_NOT_INLINE)
                .then_some(s.netns_inline),
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
            .map(|conns| conns.list(|_| Seen::Always).len());
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

/// Why this process cannot see what is attached, if it cannot: which of
/// [`compat::INSPECT_CAPS`] it lacks, or why its capabilities are unknown.
fn lacking_capabilities() -> Option<String> {
    let needed = || compat::names_of(&compat::INSPECT_CAPS).join(" and ");
    match compat::effective_capabilities() {
        Ok(eff) => {
            let lacking = compat::missing_of(&compat::INSPECT_CAPS, eff);
            (!lacking.is_empty()).then(|| {
                format!(
                    "this process lacks {} (status needs {} effective)",
                    lacking.join(" and "),
                    needed()
                )
            })
        }
        Err(e) => Some(format!("{e} (status needs {} effective)", needed())),
    }
}

fn errno_name(errno: u32) -> String {
    match errno as i32 {
        libc::ECONNREFUSED => "ECONNREFUSED".to_owned(),
        libc::EPERM => "EPERM".to_owned(),
        other => other.to_string(),
    }
}
