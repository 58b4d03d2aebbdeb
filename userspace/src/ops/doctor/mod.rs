//! `loopwarden doctor`: can this host run loopwarden, and if not, what to
//! change. Each check probes the running kernel instead of guessing from its
//! version: the program type, every helper and map type the programs use
//! are loaded or created for real (aya's feature probes where aya has one),
//! `BPF_LINK_UPDATE` is tried on a throwaway cgroup, BTF is parsed, and
//! `SOCK_DESTROY` is tried on a listening socket of our own.
//!
//! A probe leaves nothing behind: probe programs are unloaded when their
//! descriptors close, the throwaway cgroup (which no process ever joins) is
//! removed, and securityfs, if it had to be mounted to read the lockdown
//! mode, is unmounted again.
//!
//! `host` checks privileges and the host's setup, `probes` the kernel's BPF
//! features, `security` lockdown, unprivileged BPF and `route_localnet`.

mod host;
mod probes;
mod security;

use std::path::Path;

use serde::Serialize;

use self::{
    host::{
        bpffs, btf, capabilities, cgroup_namespace, cgroup2, kernel_release, pid_namespace, root,
    },
    probes::{
        connect_programs, helpers, link_update, map_types, program_type, programs, sock_destroy,
    },
    security::{lockdown, other_connect_programs, route_localnet, unprivileged_bpf},
};
use crate::kernel::{compat, host_cgroup};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    /// Whether loopwarden cannot run without it (exit 1 unless ok).
    pub required: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, required: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Ok,
            required,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        name: &'static str,
        required: bool,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            level: if required { Level::Fail } else { Level::Warn },
            required,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every required check is ok.
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.ok { 0 } else { 1 }
    }

    /// One line per check: `ok|warn|FAIL  name  detail  (fix: ...)`.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<5} {:<22} {}",
                c.level.word(),
                c.name,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("  (fix: {fix})"));
            }
            out.push('\n');
        }
        out.push_str(if self.ok {
            "every required check passed\n"
        } else {
            "some required check failed: loopwarden cannot run here as is\n"
        });
        out
    }
}

/// Runs every check; `host_cgroup_root` is `--host-cgroup-root`.
pub fn run(host_cgroup_root: Option<&Path>) -> Report {
    let (cgroup_root, cgroup2_check) = match host_cgroup_root {
        Some(path) => match host_cgroup::use_host_root(path) {
            Ok(root) => {
                let check = cgroup2(Some(&root));
                (Some(root), check)
            }
            Err(e) => (
                None,
                Check::bad(
                    "cgroup v2",
                    true,
                    e.to_string(),
                    "mount the host's cgroup v2 root there",
                ),
            ),
        },
        None => {
            let root = compat::find_cgroup2_root();
            let check = cgroup2(root.as_deref());
            (root, check)
        }
    };
    let mut checks = vec![
        root(),
        capabilities(),
        kernel_release(),
        cgroup2_check,
        cgroup_namespace(host_cgroup_root.is_some()),
        pid_namespace(),
        btf(),
        bpffs(),
    ];
    // Without the capabilities the daemon has, every probe fails with
    // EPERM and says nothing about the kernel: say so once per probe
    // instead. (uid 0 is not one of them.)
    let privileged = checks[1].level == Level::Ok;
    type Probe<'a> = (&'static str, bool, Box<dyn FnOnce() -> Check + 'a>);
    let probes: Vec<Probe<'_>> = vec![
        ("program type", true, Box::new(program_type)),
        ("connect hooks", true, Box::new(connect_programs)),
        ("helpers", true, Box::new(helpers)),
        ("map types", true, Box::new(map_types)),
        ("programs", true, Box::new(programs)),
        (
            "link update",
            true,
            Box::new(|| link_update(cgroup_root.as_deref())),
        ),
        ("lockdown", false, Box::new(lockdown)),
        ("unprivileged bpf", false, Box::new(unprivileged_bpf)),
        ("route_localnet", false, Box::new(route_localnet)),
        ("sock destroy", false, Box::new(sock_destroy)),
        (
            "other connect programs",
            false,
            Box::new(|| other_connect_programs(cgroup_root.as_deref())),
        ),
    ];
    for (name, required, probe) in probes {
        if privileged || matches!(name, "unprivileged bpf" | "route_localnet") {
            checks.push(probe());
        } else {
            checks.push(Check::bad(
                name,
                required,
                "not probed: needs root with the capabilities above",
                "run loopwarden doctor as root",
            ));
        }
    }
    Report {
        ok: checks.iter().all(|c| !c.required || c.level == Level::Ok),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_failure_fails_the_report() {
        let report = |checks: Vec<Check>| Report {
            ok: checks.iter().all(|c| !c.required || c.level == Level::Ok),
            checks,
        };
        let warn = Check::bad("x", false, "meh", "later");
        assert_eq!(warn.level, Level::Warn);
        assert_eq!(report(vec![warn.clone()]).exit_code(), 0);
        let fail = Check::bad("y", true, "broken", "fix it");
        assert_eq!(fail.level, Level::Fail);
        let r = report(vec![warn, fail]);
        assert_eq!(r.exit_code(), 1);
        assert!(r.human().contains("FAIL  y"), "{}", r.human());
        assert!(r.human().contains("(fix: fix it)"), "{}", r.human());
    }

    /// A cgroup the link-update probe cannot make (a read-only cgroup
    /// mount; here a root that does not exist) is no kernel's failing: a
    /// warning that it was not probed, not a required failure blaming the
    /// kernel's version.
    #[test]
    fn a_cgroup_the_probe_cannot_make_is_not_probed_not_failed() {
        let check = probes::link_update(Some(std::path::Path::new("/nonexistent/cgroup")));
        assert_eq!(check.level, Level::Warn, "{check:?}");
        assert!(!check.required, "{check:?}");
        assert!(check.detail.starts_with("not probed"), "{check:?}");
    }
}
