//! `loopwarden status` as text: one labelled line per fact.

use super::{DaemonReport, Report};
use crate::daemon::status_file::SweepOutcome;

impl Report {
    /// The human-readable form.
    pub fn human(&self) -> String {
        let mut out = format!("loopwarden: {}\n", self.summary);
        let mut line = |label: &str, text: String| {
            out.push_str(&format!("{label:<10}{text}\n"));
        };
        line("pins", self.pin_dir.display().to_string());
        let root = self
            .cgroup2_root
            .as_ref()
            .map_or("(no cgroup v2 mount)".to_owned(), |p| {
                p.display().to_string()
            });
        for link in &self.links {
            let text = if let Some(e) = &link.error {
                format!("{}: unreadable: {e}", link.program)
            } else if !link.pinned {
                format!("{}: not pinned", link.program)
            } else {
                format!(
                    "{}: link {} runs program {} ({}), {}",
                    link.program,
                    opt(link.link_id),
                    opt(link.prog_id),
                    link.prog_name.as_deref().unwrap_or("not loaded"),
                    match link.attached_at_root {
                        Some(true) => format!("attached at the cgroup v2 root {root}"),
                        Some(false) => format!("NOT attached at the cgroup v2 root {root}"),
                        None => "attachment unknown (no cgroup v2 root to ask)".to_owned(),
                    }
                )
            };
            line("link", text);
        }
        for t in &self.tracking {
            let text = if let Some(e) = &t.error {
                format!("{}: unreadable: {e}", t.program)
            } else if !t.pinned {
                format!("{} ({}): not pinned", t.program, t.tracepoint)
            } else {
                match (&t.prog_name, t.attached_at_root) {
                    (None, _) => {
                        format!("{} ({}): runs no loaded program", t.program, t.tracepoint)
                    }
                    (Some(_), Some(false)) => format!(
                        "{} ({}): NOT attached at the cgroup v2 root",
                        t.program, t.tracepoint
                    ),
                    (Some(name), _) => format!(
                        "{} ({}): attached, runs {name}{}",
                        t.program,
                        t.tracepoint,
                        skipped_text(t.skipped_runs)
                    ),
                }
            };
            line("tracking", text);
        }
        // Without root no pin was inspected (`links` is empty): nothing is
        // said of the guards and the tag, rather than "off". Otherwise each
        // line says what the policy read states, or why it is not known.
        if !self.links.is_empty() {
            line("bind", self.bind_text());
            line("egress", self.egress_text());
            line("origins", self.origins_text());
        }
        match (&self.layout, &self.maps_error) {
            (_, Some(e)) => line("maps", format!("not decoded: {e}")),
            (Some(layout), None) => line("maps", format!("layout {layout} (this build's)")),
            (None, None) => {}
        }
        if let Some(p) = &self.policy {
            line(
                "policy",
                format!(
                    "#{} (slot {}): mode {}, {} rules, deny errno {}, ports {}{}{}; relay verdict {} \
                     (window {} ms)",
                    p.seq,
                    p.slot,
                    p.mode,
                    p.rules,
                    p.deny_errno,
                    if p.all_ports { "all" } else { "listed" },
                    match (p.netns_scoped, p.netns_in_scope) {
                        (false, _) => String::new(),
                        (true, Some(n)) => format!(", scoped to {n} network namespaces"),
                        (true, None) => format!(
                            ", scoped to more than {} network namespaces",
                            loopwarden_common::NETNS_INLINE
                        ),
                    },
                    if p.host_addresses {
                        ", host addresses too"
                    } else {
                        ""
                    },
                    p.relay,
                    p.relay_window_ms,
                ),
            );
        }
        line("daemon", self.daemon.describe());
        if let Some(r) = self
            .daemon
            .reported
            .as_ref()
            .filter(|_| self.daemon.running)
        {
            line(
                "source",
                match (&r.kept_config, r.own_policy) {
                    (Some(kept), _) => format!(
                        "{} (refused at start: in force is the predecessor's policy, compiled and \
                         re-resolved from {kept})",
                        r.policy_source
                    ),
                    (None, true) => r.policy_source.clone(),
                    (None, false) => format!(
                        "{} (did not parse: the pinned policy of a predecessor is kept)",
                        r.policy_source
                    ),
                },
            );
            if let Some(reload) = &r.last_reload {
                let text = match &reload.error {
                    None => format!("ok at {}", reload.at),
                    Some(e) => format!("FAILED at {}: {e}", reload.at),
                };
                line("reload", text);
            }
            if let Some(failing) = &r.refresh_failing {
                line(
                    "refresh",
                    format!(
                        "re-resolving the policy FAILS since {}: {}",
                        failing.at,
                        failing.error.as_deref().unwrap_or("?")
                    ),
                );
            }
            if let Some(sweep) = &r.last_sweep {
                line("sweep", sweep_text(sweep));
            }
            if let Some(w) = &r.waiting {
                line(
                    "waiting",
                    format!(
                        "{} has waited for the system since {} (a path the policy names on a \
                         filesystem that does not answer, or NSS): the policy in force stays",
                        w.what, w.since
                    ),
                );
            }
        }
        if !self.counters.is_empty() {
            let counters: Vec<String> = self
                .counters
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect();
            line("counters", counters.join(" "));
        }
        if let Some(lost) = &self.lost_reports {
            line(
                "lost",
                format!(
                    "{} reports lost (ring buffer full or no daemon reading), {} not yet reported by a daemon",
                    lost.total, lost.unreported
                ),
            );
        }
        out
    }

    /// Whether no connect link is pinned: with no policy read, the
    /// policy's switches are then off, not unknown.
    fn nothing_pinned(&self) -> bool {
        !self.links.iter().any(|l| l.pinned)
    }

    /// The bind guard, and its links.
    fn bind_text(&self) -> String {
        let links: Vec<String> = self
            .bind
            .links
            .iter()
            .map(|l| match (&l.error, l.attached()) {
                (Some(e), _) => format!("{} unreadable: {e}", l.program),
                (None, true) => format!("{} attached", l.program),
                (None, false) if l.pinned => format!("{} NOT attached at the root", l.program),
                (None, false) => format!("{} not pinned", l.program),
            })
            .collect();
        let guard = match self.bind.guard {
            None if self.nothing_pinned() => "guard off (nothing pinned)",
            None => "guard unknown (no policy read)",
            Some(true) => "guard on ([bind] loopback_only)",
            Some(false) => "guard off",
        };
        format!("{guard}; {}", links.join(", "))
    }

    /// The egress guard.
    fn egress_text(&self) -> String {
        match self.egress_rules {
            None if self.nothing_pinned() => "guard off (nothing pinned)".to_owned(),
            None => "guard unknown (no policy read)".to_owned(),
            Some(0) => "guard off".to_owned(),
            Some(n) => format!("guard on: {n} [[egress]] rule(s), judged in the connect programs"),
        }
    }

    /// Whether connections are tagged, and how services can ask.
    fn origins_text(&self) -> String {
        let p = &self.provenance;
        let scoped = p.getsockopt_scoped.iter().filter(|l| l.prog_name.is_some());
        let answering = match (&p.getsockopt.error, p.getsockopt.attached()) {
            (Some(e), _) => format!("getsockopt link unreadable: {e}"),
            (None, true) => "services can ask with getsockopt (attached at the root)".to_owned(),
            (None, false) if p.getsockopt.pinned => {
                "the getsockopt link is pinned but not attached at the root".to_owned()
            }
            (None, false) if scoped.clone().count() > 0 => format!(
                "services can ask with getsockopt in {} cgroup(s) ([provenance] \
                 getsockopt_cgroups)",
                scoped.count()
            ),
            (None, false) if p.tag.is_some() => {
                "no getsockopt answers ([provenance] getsockopt = false)".to_owned()
            }
            (None, false) => "no getsockopt link pinned".to_owned(),
        };
        let tagged = match (p.tag, p.connections, p.capacity) {
            (None, ..) if self.nothing_pinned() => "nothing tagged (nothing pinned)".to_owned(),
            (None, ..) => "tagging unknown (no policy read)".to_owned(),
            (Some(false), ..) => "connections are not tagged ([provenance] tag = false)".to_owned(),
            (Some(true), Some(n), Some(max)) => {
                format!("connections are tagged, {n} live of {max}")
            }
            (Some(true), Some(n), None) => format!("connections are tagged, {n} live"),
            (Some(true), None, _) => "connections are tagged".to_owned(),
        };
        format!("{tagged}; {answering}")
    }
}

impl DaemonReport {
    pub(super) fn describe(&self) -> String {
        let r = self.reported.as_ref();
        if self.running {
            match r {
                Some(r) => format!(
                    "running: pid {}, version {}, started {}",
                    r.pid, r.version, r.started_at
                ),
                None => match &self.unread {
                    Some(why) => format!("running: pid {} ({why})", opt(self.lock_holder)),
                    None => format!(
                        "running: pid {} (it wrote no status.json: an older version?)",
                        opt(self.lock_holder)
                    ),
                },
            }
        } else {
            let here = match r {
                Some(r) => format!(
                    "no daemon (the last one: pid {}, version {}, started {}, is gone)",
                    r.pid, r.version, r.started_at
                ),
                None => "no daemon".to_owned(),
            };
            match &self.elsewhere {
                Some(other) => {
                    let (given, ask) = match other.run_dir.as_deref() {
                        Some(d) => (
                            format!("--run-dir {}", shown_path(d)),
                            format!("loopwarden status --run-dir {}", shown_path(d)),
                        ),
                        None => (
                            "another --run-dir".to_owned(),
                            "loopwarden status --run-dir DIR".to_owned(),
                        ),
                    };
                    format!(
                        "{here} for this run directory; pid {} holds the pin directory's lock: \
                         a daemon given {given} (`{ask}` shows its report)",
                        other.pid
                    )
                }
                None => here,
            }
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("?".to_owned(), |v| v.to_string())
}

/// What a tracking program's skipped runs mean, when there were any.
fn skipped_text(skipped: Option<u64>) -> String {
    match skipped {
        Some(n) if n > 0 => format!(
            "; {n} runs SKIPPED by the kernel (nested on a CPU already running it): \
             evidence, an origin or a close may have gone unseen"
        ),
        _ => String::new(),
    }
}

/// The last sweep of admitted connections, in one line: what it cut, and
/// what kept it from being complete.
fn sweep_text(sweep: &SweepOutcome) -> String {
    let cut = format!(
        "{} connection{} cut ({} namespace{}, {} sockets examined)",
        sweep.cut,
        if sweep.cut == 1 { "" } else { "s" },
        sweep.namespaces,
        if sweep.namespaces == 1 { "" } else { "s" },
        sweep.sockets,
    );
    if sweep.complete {
        return format!("ok at {}: {cut}", sweep.at);
    }
    let mut problems = sweep.problems.join("; ");
    if sweep.more_problems > 0 {
        problems.push_str(&format!("; and {} more", sweep.more_problems));
    }
    format!(
        "INCOMPLETE at {}: {cut}; admitted connections may be left open: {problems}",
        sweep.at
    )
}

/// A path as another process gave it: quoted, with Rust's escapes, when it
/// holds a space, a control or a character that changes how text displays,
/// so it cannot forge a line of the output.
pub(super) fn shown_path(path: &std::path::Path) -> String {
    let text = path.to_string_lossy();
    if text
        .chars()
        .any(|c| c.is_whitespace() || crate::events::reshapes(c))
    {
        format!("{text:?}")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_processs_path_cannot_forge_a_line() {
        use std::path::Path;
        assert_eq!(shown_path(Path::new("/run/lw")), "/run/lw");
        assert_eq!(
            shown_path(Path::new("/tmp/x\nloopwarden: active")),
            "\"/tmp/x\\nloopwarden: active\""
        );
        assert_eq!(shown_path(Path::new("/tmp/a b")), "\"/tmp/a b\"");
        assert_eq!(
            shown_path(Path::new("/tmp/\u{202e}x")),
            "\"/tmp/\\u{202e}x\""
        );
    }

    fn outcome(cut: usize, problems: &[&str], more_problems: usize) -> SweepOutcome {
        SweepOutcome {
            at: "T".into(),
            cut,
            namespaces: 1,
            sockets: 12,
            complete: problems.is_empty(),
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            more_problems,
        }
    }

    #[test]
    fn skipped_runs_are_said_only_when_there_were_some() {
        assert_eq!(skipped_text(None), "");
        assert_eq!(skipped_text(Some(0)), "");
        assert!(skipped_text(Some(3)).starts_with("; 3 runs SKIPPED"));
    }

    #[test]
    fn a_complete_sweep_says_what_it_cut() {
        assert_eq!(
            sweep_text(&outcome(1, &[], 0)),
            "ok at T: 1 connection cut (1 namespace, 12 sockets examined)"
        );
    }

    #[test]
    fn an_incomplete_sweep_says_why_and_counts_the_rest() {
        assert_eq!(
            sweep_text(&outcome(0, &["a", "b"], 5)),
            "INCOMPLETE at T: 0 connections cut (1 namespace, 12 sockets examined); \
             admitted connections may be left open: a; b; and 5 more"
        );
    }
}
