//! `cargo xtask bench`: connects per second to a protected and an unprotected
//! port (IPv4, and the protected one over IPv6), requests per second to a
//! protected port (a connection carrying one request and its response), receive
//! throughput (a TCP stream and UDP datagrams from a second namespace over a
//! veth pair, UDP datagrams over loopback) and spawns per second, with the
//! daemon absent, in audit mode and in enforce mode, measured as interleaved
//! rounds inside private network namespaces (rates with BPF statistics off);
//! plus each program's own cost per run from the kernel's BPF statistics,
//! counted in a window of its own after each rate window, net of their own
//! overhead, calibrated each round with no-op programs (`loopwarden baseline`:
//! one on connect4, one on the receive tracepoint). Then protected against
//! unprotected connects in alternating windows of one client, under no
//! daemon, untagged and tagged ([`paired`]), and the reporting phase
//! ([`reporting`]): floods of reports at fixed rates, counted in the daemon's
//! output, with its CPU and resident size.
//!
//! `--versus OTHER` runs none of that: two daemon builds, each in turn in
//! every round, on the protected connect loads ([`versus`]).
//!
//! Here: the options and the order of the phases; the namespaces, servers
//! and daemons they run in are [`fixture`]'s.

mod egress;
mod fixture;
pub mod load;
mod netns;
mod paired;
mod plan;
mod report;
pub mod reporting;
mod stats;
mod versus;
mod warden;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, bail};

pub use self::plan::{Config, Sample, Workload};
use self::{
    fixture::{Bench, toml_str},
    stats::Snapshot,
};
use crate::{daemon, proc::say, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds of (absent, baseline, audit, enforce, report-all) × workloads
    /// (connects, receives, spawns; report-all runs only the connects).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Seconds per rate measurement (BPF statistics off).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Seconds per count of the programs' runs (statistics on), after each
    /// rate measurement.
    #[arg(long, default_value_t = 1.0)]
    pub stats_seconds: f64,
    /// Fail when a target is missed or a rate ratio is worse than noise.
    #[arg(long)]
    pub strict: bool,
    /// Port the daemon protects.
    #[arg(long, default_value_t = 18080)]
    pub protected_port: u16,
    /// Port it does not.
    #[arg(long, default_value_t = 18081)]
    pub unprotected_port: u16,
    /// Bench this daemon binary instead of building target/release/loopwarden.
    #[arg(long)]
    pub daemon: Option<PathBuf>,
    /// Seconds per flood of the reporting phase.
    #[arg(long, default_value_t = 5.0)]
    pub report_seconds: f64,
    /// Port the receive loads use (TCP and UDP; not protected).
    #[arg(long, default_value_t = 18083)]
    pub receive_port: u16,
    /// Protected port whose server answers a request on each connection
    /// (the request load).
    #[arg(long, default_value_t = 18084)]
    pub request_port: u16,
    /// Unprotected port with the same server (the paired comparison's
    /// reference for requests).
    #[arg(long, default_value_t = 18085)]
    pub request_unprotected_port: u16,
    /// Port the reporting phase reports every connect to (nothing listens).
    #[arg(long, default_value_t = 18082)]
    pub report_port: u16,
    /// Only the reporting floods whose name contains this (e.g. `50k`).
    #[arg(long)]
    pub report_only: Option<String>,
    /// Skip the cost rounds (only the reporting phase).
    #[arg(long)]
    pub skip_costs: bool,
    /// Skip the reporting phase.
    #[arg(long)]
    pub skip_reporting: bool,
    /// Seconds per configuration (no daemon, untagged, tagged) and load
    /// (bare connects, requests) of the paired comparison after the
    /// rounds: one client alternating between a protected and an
    /// unprotected port (0: skip it).
    #[arg(long, default_value_t = 20.0)]
    pub paired_seconds: f64,
    /// Seconds per window of the paired comparison.
    #[arg(long, default_value_t = 0.5)]
    pub window: f64,
    /// Compare the daemon with this other build instead of the usual
    /// phases: `--rounds` rounds of each build in turn, tagged and
    /// untagged, on bare connects and requests (`--seconds` each, then
    /// `--stats-seconds` counted), B's rate over A's and each program's
    /// ns per run, B minus A, per round.
    #[arg(long, value_name = "DAEMON")]
    pub versus: Option<PathBuf>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM into a flag checked between measurements, so the
/// guards (namespace, daemon, sysctl) still clean up.
fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.seconds <= 0.0 || args.stats_seconds <= 0.0 || args.window <= 0.0 {
        bail!("--rounds, --seconds, --stats-seconds and --window must be positive");
    }
    if args.paired_seconds < 0.0 {
        bail!("--paired-seconds must not be negative (0 skips the paired comparison)");
    }
    setup::require_root("the bench (network namespaces, eBPF, sysctls)")?;
    // Checked before a build: a mistyped path should not wait for one.
    let versus = match &args.versus {
        Some(other) => Some(
            other
                .canonicalize()
                .with_context(|| format!("cannot find the --versus daemon {}", other.display()))?,
        ),
        None => None,
    };
    let bin = match &args.daemon {
        Some(bin) => {
            setup::test_prerequisites()?;
            bin.canonicalize()
                .with_context(|| format!("cannot find {}", bin.display()))?
        }
        None => {
            setup::toolchain(false)?;
            setup::test_prerequisites()?;
            daemon::build(true)?
                .canonicalize()
                .context("the daemon binary is missing after the build")?
        }
    };
    let xtask = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .context("cannot find the xtask binary")?;
    catch_signals();

    let loaded_before = stats::snapshot(None)?;
    let bench = Bench::new(args, bin, xtask)?;
    if let Some(other) = versus {
        let measured = bench.measure_versus(&other);
        if measured.is_err() {
            bench.dir.keep();
        }
        let a = bench.bin.clone();
        drop(bench);
        warn_left_behind(&loaded_before);
        versus::print(&versus::compare(&measured?), &a, &other, args.rounds);
        return Ok(());
    }
    let samples = if args.skip_costs {
        Ok(Vec::new())
    } else {
        bench.measure()
    };
    let paired = match &samples {
        Ok(_) if !args.skip_costs && args.paired_seconds > 0.0 => bench.measure_paired(),
        _ => Ok(Vec::new()),
    };
    let reporting = match (&samples, &paired) {
        (Ok(_), Ok(_)) if !args.skip_reporting => bench.measure_reporting().map(Some),
        _ => Ok(None),
    };
    if samples.is_err() || paired.is_err() || reporting.is_err() {
        bench.dir.keep();
    }
    drop(bench);
    warn_left_behind(&loaded_before);
    report::print(args, &samples?, &paired?, reporting?.as_ref())
}

/// Warns about `lw_*` programs that are loaded now but were not before the
/// bench: a daemon or baseline process that did not clean up. Program
/// release after exit is asynchronous, so this looks a few times.
fn warn_left_behind(before: &Snapshot) {
    let mut left = Vec::new();
    for _ in 0..10 {
        let Ok(now) = stats::snapshot(None) else {
            return;
        };
        left = now
            .into_keys()
            .filter(|name| !before.contains_key(name))
            .collect();
        if left.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    say!(
        "warning: programs still loaded after the bench: {}",
        left.join(", ")
    );
}
