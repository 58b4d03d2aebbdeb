//! `cargo xtask test`: everything CI checks, in order: formatting, clippy,
//! unit tests, a short fuzz run, then the root integration tests against the
//! release daemon.
//! Each step runs even when an earlier one failed; a summary ends the run.

use std::time::{Duration, Instant};

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
    setup::test_prerequisites()?;

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
    // tests/tests/dist.rs installs and purges this package.
    let deb = dist::package(&bin)?;
    proc::run_tests(
        proc::cargo()
            .args([
                "test",
                "--release",
                "-p",
                "loopwarden-tests",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .env("LOOPWARDEN_BIN", &bin)
            .env("LOOPWARDEN_DEB", &deb),
        tally,
    )
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
