//! `cargo xtask test`: everything CI checks, in order: formatting, clippy,
//! unit tests, a short fuzz run, then the root integration tests against the
//! release daemon.
//! Each step runs even when an earlier one failed; a summary ends the run.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    daemon, dist, fuzz,
    proc::{self, say},
    setup, vm,
};

/// Seconds each fuzz target runs in `cargo xtask test`: enough to replay the
/// seeds and mutate them a few thousand times at least (the slowest target,
/// config, does about a thousand inputs a second in this build), so a decoder
/// that panics on easy input fails CI. With five targets that is about 25 s,
/// after a build of about 1.5 minutes on a fresh clone (two cores), half a
/// minute later on. Longer runs: `cargo xtask fuzz --seconds N`.
const FUZZ_SECONDS: u64 = 5;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only unit tests (and lints): no root integration tests.
    #[arg(long)]
    pub unit_only: bool,
    /// Skip the short fuzz run.
    #[arg(long)]
    pub no_fuzz: bool,
    /// Skip booting Debian's 6.1 and 6.12 kernels under QEMU (`cargo xtask vm-test`).
    #[arg(long)]
    pub no_vm: bool,
}

struct Step {
    name: &'static str,
    elapsed: Duration,
    result: anyhow::Result<()>,
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    setup::toolchain(false)?;
    // The packages are the root suite's and the VM test's.
    if !args.unit_only {
        setup::test_prerequisites()?;
    }

    let tally = std::cell::RefCell::new(proc::Tally::default());
    let mut steps = Vec::new();
    let mut step = |name: &'static str, f: &dyn Fn() -> anyhow::Result<()>| {
        say!("=== {name} ===");
        let start = Instant::now();
        let result = f();
        if let Err(err) = &result {
            say!("{name} FAILED: {err:#}");
        }
        steps.push(Step {
            name,
            elapsed: start.elapsed(),
            result,
        });
    };

    if !args.no_lint {
        step("fmt", &|| {
            proc::run(proc::cargo().args(["fmt", "--all", "--check"]))
        });
        step("clippy", &|| {
            proc::run(proc::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
    }
    step("unit tests", &|| {
        proc::run_tests(
            proc::cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "loopwarden-tests",
                "--exclude",
                "loopwarden-ebpf",
            ]),
            &mut tally.borrow_mut(),
        )
    });
    if !args.no_fuzz {
        step("fuzz", &|| fuzz::fuzz(FUZZ_SECONDS, false, &[]));
    }
    if !args.unit_only {
        step("integration tests (root)", &|| {
            integration(&mut tally.borrow_mut())
        });
        if !args.no_vm {
            // The programs must verify and enforce on the kernels users run,
            // not only on this host's: Debian 12's 6.1 and 6.12.
            step("vm-test (Debian 6.1, 6.12)", &|| {
                vm::run(&vm::VmTestArgs::default())
            });
        }
    }

    summarize(&steps, tally.into_inner())
}

fn integration(tally: &mut proc::Tally) -> anyhow::Result<()> {
    setup::require_root("running the integration tests (they load eBPF programs)")?;
    let bin = daemon::build(true)?;
    let bin = bin
        .canonicalize()
        .with_context(|| format!("{} was not built", bin.display()))?;
    // tests/tests/dist.rs installs and purges this package. A packaging
    // failure fails this step, but not before the rest of the suite ran
    // (the dist tests then build their own package, and say why not).
    let deb = dist::package(&bin);
    if let Err(err) = &deb {
        say!("packaging FAILED: {err:#}");
    }
    clear_stale_test_state();
    let mut suite = proc::cargo();
    suite.args([
        "test",
        "--profile",
        "root-tests",
        "-p",
        "loopwarden-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ]);
    suite.env("LOOPWARDEN_BIN", &bin);
    if let Ok(deb) = &deb {
        suite.env("LOOPWARDEN_DEB", deb);
    }
    let result = proc::run_tests(&mut suite, tally);
    // Each test removes what it made, also when it fails; a suite killed
    // half-way (a CI timeout, ^C) cannot, and this is its cleanup.
    clear_stale_test_state();
    result.and(deb.map(drop))
}

/// Removes what a killed run of the root suite left behind, all of it named
/// `lwt-*` by the harness (tests/src): network namespaces, bpffs pin
/// directories (their links go with them) and empty cgroups at the root of
/// the cgroup v2 hierarchy. Nothing else is touched, and a failure to
/// remove one is said, not fatal.
fn clear_stale_test_state() {
    let names = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("lwt-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in names(Path::new("/run/netns")) {
        let name = ns
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        say!("removing a stale test namespace: {name}");
        if let Err(err) = proc::run(Command::new("ip").args(["netns", "del", &name])) {
            say!("warning: {err:#}");
        }
    }
    for pins in names(Path::new("/sys/fs/bpf")) {
        say!("removing stale test pins: {}", pins.display());
        if let Err(err) = fs::remove_dir_all(&pins) {
            say!("warning: {}: {err}", pins.display());
        }
    }
    if let Some(root) = cgroup2_root() {
        for cgroup in names(&root) {
            // Children first; a cgroup still holding processes stays.
            let mut dirs: Vec<PathBuf> = walk_dirs(&cgroup);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                if let Err(err) = fs::remove_dir(&dir) {
                    say!("warning: stale test cgroup {}: {err}", dir.display());
                }
            }
        }
    }
}

/// `dir` and every directory below it.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(walk_dirs(&entry.path()));
            }
        }
    }
    found
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ")
            .then(|| pre.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

fn summarize(steps: &[Step], tally: proc::Tally) -> anyhow::Result<()> {
    say!("=== summary ===");
    for step in steps {
        let verdict = if step.result.is_ok() { "ok" } else { "FAILED" };
        say!(
            "  {:<26} {:<6} {:>6.1} s",
            step.name,
            verdict,
            step.elapsed.as_secs_f64()
        );
    }
    let failed: Vec<&str> = steps
        .iter()
        .filter(|step| step.result.is_err())
        .map(|step| step.name)
        .collect();
    // The plain tally, alone on the last line, for whoever reads the log's end.
    // A step that failed without failing a test (lint, build) counts as one.
    let failed_count = if tally.failed > 0 {
        tally.failed
    } else {
        failed.len() as u64
    };
    if failed.is_empty() {
        say!("all {} steps passed", steps.len());
        println!("xtask: {} passed, {} failed", tally.passed, failed_count);
        Ok(())
    } else {
        println!("xtask: {} passed, {} failed", tally.passed, failed_count);
        anyhow::bail!("failed: {}", failed.join(", "))
    }
}
