//! The metrics page: every family, from the pins and the daemon's tally.

use std::time::SystemTime;

use loopwarden_common::verdict;
use tracing::debug;

use super::{
    Shared,
    text::{Exposition, Kind},
};
use crate::{daemon::status_file, events::verdict_name};

/// Seconds since the epoch.
fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const VERDICTS: [u8; 4] = [
    verdict::ALLOW,
    verdict::AUDIT,
    verdict::WOULD_DENY,
    verdict::DENY,
];

/// The kernel's counters as metric families: name, HELP.
fn counter_family(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "checked" => (
            "loopwarden_connects_checked_total",
            "Connects to a protected destination the kernel judged (after the port and network \
             namespace filters). Kernel counter LW_STATS checked.",
        ),
        "denied" => (
            "loopwarden_connects_denied_total",
            "Connects the kernel refused (verdict deny): by a rule, the relay verdict or the \
             egress guard. Kernel counter LW_STATS denied.",
        ),
        "relayed" => (
            "loopwarden_connects_relayed_total",
            "Connects the relay verdict decided. Kernel counter LW_STATS relayed.",
        ),
        "reported" => (
            "loopwarden_kernel_reports_total",
            "Reports the kernel queued for the daemon (ring buffers). Kernel counter LW_STATS \
             reported.",
        ),
        "retried" => (
            "loopwarden_judgements_retried_total",
            "Judgements started again because the policy slot was rewritten meanwhile. Kernel \
             counter LW_STATS retried.",
        ),
        "raced" => (
            "loopwarden_connects_raced_total",
            "Connects allowed unjudged because every attempt raced a policy rewrite. Kernel \
             counter LW_STATS raced.",
        ),
        "untracked" => (
            "loopwarden_untracked_total",
            "Processes or listeners the tracking maps had no room for. Kernel counter LW_STATS \
             untracked.",
        ),
        _ => return None,
    })
}

/// The page, from the pins and the daemon's tally.
pub(super) fn render(shared: &Shared) -> String {
    let mut page = Exposition::default();
    page.single(
        "loopwarden_up",
        Kind::Gauge,
        "1: the daemon answered this scrape.",
        1,
    );
    page.family(
        "loopwarden_build_info",
        Kind::Gauge,
        "The daemon's version, as a label; always 1.",
    );
    page.sample(
        "loopwarden_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    page.single(
        "loopwarden_start_time_seconds",
        Kind::Gauge,
        "When the daemon started, in seconds since the epoch.",
        unix_seconds(shared.started),
    );

    let reading = shared.kernel.read();
    page.single(
        "loopwarden_kernel_counters_readable",
        Kind::Gauge,
        "1 when the pinned LW_STATS could be read (the kernel counters below are present only \
         then).",
        u64::from(reading.counters.is_ok()),
    );
    match &reading.counters {
        Ok(counters) => {
            for counter in counters {
                if let Some((name, help)) = counter_family(&counter.name) {
                    page.single(name, Kind::Counter, help, counter.value);
                }
            }
            page.family(
                "loopwarden_decisions_total",
                Kind::Counter,
                "Connects to a protected destination the kernel judged, by verdict (reported or \
                 not). Kernel counters LW_STATS decided_*.",
            );
            for v in VERDICTS {
                let decided = format!("decided_{}", verdict_name(v).replace('-', "_"));
                if let Some(counter) = counters.iter().find(|c| c.name == decided) {
                    page.sample(
                        "loopwarden_decisions_total",
                        &[("verdict", verdict_name(v))],
                        counter.value,
                    );
                }
            }
            page.family(
                "loopwarden_reports_lost_total",
                Kind::Counter,
                "Reports lost because a ring buffer was full or no daemon read (the connects were \
                 judged all the same), by verdict. Kernel counters LW_STATS lost_*.",
            );
            for v in VERDICTS {
                let lost = format!("lost_{}", verdict_name(v).replace('-', "_"));
                if let Some(counter) = counters.iter().find(|c| c.name == lost) {
                    page.sample(
                        "loopwarden_reports_lost_total",
                        &[("verdict", verdict_name(v))],
                        counter.value,
                    );
                }
            }
        }
        Err(e) => debug!("metrics: kernel counters unreadable: {e}"),
    }

    page.family(
        "loopwarden_reported_connects_total",
        Kind::Counter,
        "Connects reported to this daemon, by verdict, rule (- for none) and destination port \
         (other: past 2048 series), each once whether on a line or in a summary; the bind \
         guard's reports are binds (rule bind-guard, port the bound one). Counted by the daemon \
         from the reports it read (the kernel has no per-rule or per-port counter); reports lost \
         in the kernel are not included.",
    );
    let reported = shared.reported.borrow().clone();
    for (series, count) in reported.totals.iter() {
        let port = series
            .port
            .map_or_else(|| "other".to_owned(), |p| p.to_string());
        page.sample(
            "loopwarden_reported_connects_total",
            &[
                ("verdict", verdict_name(series.verdict)),
                ("rule", &series.rule),
                ("port", &port),
            ],
            *count,
        );
    }
    page.single(
        "loopwarden_audit_lines_unwritten_total",
        Kind::Counter,
        "Audit lines the daemon's standard output never took (its reader too far behind, or a \
         failed write) since start; the connects were judged all the same.",
        reported.unwritten_lines,
    );
    page.single(
        "loopwarden_audit_reports_unwritten_total",
        Kind::Counter,
        "The reports those unwritten lines stood for (a summary line stands for its count).",
        reported.unwritten_reports,
    );

    page.family(
        "loopwarden_map_entries",
        Kind::Gauge,
        "Entries in the kernel's tracking maps (counted by walking their keys, at most once a \
         second).",
    );
    for usage in &reading.usage {
        page.sample(
            "loopwarden_map_entries",
            &[("map", usage.map)],
            u64::from(usage.entries),
        );
    }
    page.family(
        "loopwarden_map_capacity",
        Kind::Gauge,
        "Capacity (max_entries) of the kernel's tracking maps.",
    );
    for usage in &reading.usage {
        page.sample(
            "loopwarden_map_capacity",
            &[("map", usage.map)],
            u64::from(usage.capacity),
        );
    }
    if let Some(tagged) = reading.tagged {
        page.single(
            "loopwarden_tagged_connections",
            Kind::Gauge,
            "Accepted protected connections whose origin the kernel holds for getsockopt, the \
             query socket and ident (in LW_CONN_SLOTS and LW_CONNS; counted at most once a \
             second). One whose close the kernel missed counts until its entry is taken over or \
             evicted.",
            tagged as u64,
        );
    }

    if !reading.skipped.is_empty() {
        page.family(
            "loopwarden_program_skipped_runs_total",
            Kind::Counter,
            "Runs of a tracking program the kernel skipped because it would have run nested on a \
             CPU already running it (bpf_prog_info.recursion_misses; counted at most once a \
             second). Each may be relay evidence, an origin or a connection's close that went \
             unseen. Counts from the program's load; a restart that loads new programs starts \
             again from 0.",
        );
        for (program, skipped) in &reading.skipped {
            page.sample(
                "loopwarden_program_skipped_runs_total",
                &[("program", program)],
                *skipped,
            );
        }
    }

    if let Some(in_force) = &reading.in_force {
        page.single(
            "loopwarden_policy_sequence",
            Kind::Gauge,
            "Sequence number of the policy in force (pinned LW_SETTINGS); it grows with every \
             install.",
            in_force.settings.seq,
        );
        page.single(
            "loopwarden_policy_generation",
            Kind::Gauge,
            "The policy slot in force (LW_GENERATION, 0 or 1).",
            u64::from(in_force.slot),
        );
        page.single(
            "loopwarden_policy_rules",
            Kind::Gauge,
            "Rules of the policy in force.",
            u64::from(in_force.settings.active.count_ones()),
        );
        page.family(
            "loopwarden_policy_mode",
            Kind::Gauge,
            "The mode of the policy in force (enforce, audit or disabled), as a label; always 1.",
        );
        page.sample(
            "loopwarden_policy_mode",
            &[("mode", status_file::mode_name(in_force.settings.flags))],
            1,
        );
    }
    if let Some(reload) = status_file::last_reload() {
        page.single(
            "loopwarden_last_reload_success",
            Kind::Gauge,
            "1 if the last reload (SIGHUP) since start succeeded, 0 if it (or the start's \
             reading of its policy file) failed and the running policy stayed. Absent before \
             any.",
            u64::from(reload.ok),
        );
        let at = humantime::parse_rfc3339(&reload.at).map_or(0, unix_seconds);
        page.single(
            "loopwarden_last_reload_timestamp_seconds",
            Kind::Gauge,
            "When that reload ended, in seconds since the epoch.",
            at,
        );
    }
    page.single(
        "loopwarden_refresh_failing",
        Kind::Gauge,
        "1 while the policy's re-resolution (every second: executables installed, cgroups \
         created, host addresses changed since) fails to compile or to install, the policy in \
         force staying as it was; 0 while it works (see `loopwarden status` and the log).",
        u64::from(status_file::refresh_failing().is_some()),
    );
    if let Some(sweep) = status_file::last_sweep() {
        page.single(
            "loopwarden_last_sweep_complete",
            Kind::Gauge,
            "1 if the last sweep of admitted connections (enforce mode: at start, on each install \
             and each SIGHUP) checked every connection and cut each one it judged, 0 if something \
             kept it from that (see `loopwarden status` and the log: e.g. no tcp_diag). Absent \
             before the first.",
            u64::from(sweep.complete),
        );
        page.single(
            "loopwarden_last_sweep_cut_connections",
            Kind::Gauge,
            "Connections the last sweep destroyed.",
            sweep.cut as u64,
        );
    }
    page.into_text()
}
