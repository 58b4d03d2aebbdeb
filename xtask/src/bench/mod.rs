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

mod egress;
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
    cell::Cell,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, bail};

pub use self::plan::{Config, Sample, Workload};
use self::{
    load::{Proto, Run, Server, Target},
    netns::Netns,
    stats::{Snapshot, StatsEnabled},
    warden::Warden,
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

/// Everything a bench run sets up, torn down on drop.
struct Bench<'a> {
    args: &'a BenchArgs,
    bin: PathBuf,
    xtask: PathBuf,
    // Fields drop in declaration order: scratch dir, listeners, namespaces
    // (with the veth pair), sysctl.
    dir: TempDir,
    /// The loopback listeners (the request load's apart), and the outbound
    /// load's in the peer namespace.
    _servers: [Server; 3],
    netns: Netns,
    /// The receive loads' senders run here, across the veth pair.
    peer: Netns,
    stats: StatsEnabled,
}

impl<'a> Bench<'a> {
    fn new(args: &'a BenchArgs, bin: PathBuf, xtask: PathBuf) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let stats = StatsEnabled::enable()?;
        let netns = Netns::create(format!("lwbench-{pid}"))?;
        let peer = Netns::create(format!("lwbench-{pid}-peer"))?;
        netns.link_veth(&peer)?;
        let server = Server::start(
            &netns,
            &xtask,
            &[args.protected_port, args.unprotected_port],
            None,
            false,
        )?;
        let responder = Server::start(
            &netns,
            &xtask,
            &[args.request_port, args.request_unprotected_port],
            None,
            true,
        )?;
        // The outbound load's server, across the veth pair.
        let peer_server = Server::start(
            &peer,
            &xtask,
            &[args.unprotected_port],
            Some(netns::VETH_PEER.into()),
            false,
        )?;
        let dir = TempDir::create(std::env::temp_dir().join(format!("lwbench-{pid}")))?;
        Ok(Self {
            args,
            bin,
            xtask,
            dir,
            _servers: [server, responder, peer_server],
            netns,
            peer,
            stats,
        })
    }

    fn measure(&self) -> anyhow::Result<Vec<Sample>> {
        let args = self.args;
        let lingering = stats::snapshot(None)?;
        if !lingering.is_empty() {
            say!(
                "warning: lw_* programs are already loaded ({}): `absent` is not really absent",
                lingering.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        self.warm_up(&Workload::ALL)?;

        let per_round: usize = Config::PHASES.iter().map(|c| c.workloads().len()).sum();
        let total = args.rounds as usize * per_round;
        let mut samples = Vec::with_capacity(total);
        for round in 0..args.rounds {
            // Odd rounds run the phases backwards: a host that slows down
            // over a round does not always favour the phases that run first
            // (absent among them).
            let mut phases = Config::PHASES.to_vec();
            if round % 2 == 1 {
                phases.reverse();
            }
            for config in phases {
                check_interrupted()?;
                let warden = self.start_daemon(config, round)?;
                let pid = warden.as_ref().and_then(Warden::pid);
                // Alternate the order so no load always goes first.
                let mut workloads = config.workloads().to_vec();
                if round % 2 == 1 {
                    workloads.reverse();
                }
                for workload in workloads {
                    check_interrupted()?;
                    let sample = self.measure_one(round, config, workload, pid)?;
                    say!(
                        "[{}/{total}] round {} {config:<10} {workload:<11} {:>10.0} {}{}",
                        samples.len() + 1,
                        round + 1,
                        workload.rate(&sample.run),
                        workload.unit(),
                        if sample.run.errors > 0 {
                            format!(" ({} errors)", sample.run.errors)
                        } else {
                            String::new()
                        }
                    );
                    samples.push(sample);
                }
                if let Some(warden) = warden {
                    warden.stop()?;
                }
            }
        }
        Ok(samples)
    }

    /// Runs each of `loads` briefly, unmeasured, before the first window.
    fn warm_up(&self, loads: &[Workload]) -> anyhow::Result<()> {
        say!("warming up ...");
        for &load in loads {
            self.run_load(load, self.args.seconds.min(0.5))?;
        }
        Ok(())
    }

    fn measure_one(
        &self,
        round: u32,
        config: Config,
        workload: Workload,
        pid: Option<u32>,
    ) -> anyhow::Result<Sample> {
        // The rate without the statistics' clock reads, then the programs'
        // runs counted in a window of their own.
        self.stats.set(false)?;
        let run = self.run_load(workload, self.args.seconds)?;
        self.stats.set(true)?;
        let before = stats::snapshot(pid)?;
        let counted = self.run_load(workload, self.args.stats_seconds)?;
        let after = stats::snapshot(pid)?;
        if run.ops == 0 || counted.ops == 0 {
            bail!("{workload}: no {} succeeded ({config})", workload.op());
        }
        Ok(Sample {
            round,
            config,
            workload,
            run,
            counted,
            progs: stats::delta(&before, &after),
        })
    }

    /// Runs `workload` for `seconds`.
    fn run_load(&self, workload: Workload, seconds: f64) -> anyhow::Result<Run> {
        let args = self.args;
        let (netns, xtask) = (&self.netns, self.xtask.as_path());
        let receive = |sender: &Netns, proto: Proto, addr: Ipv4Addr| {
            let listen = SocketAddr::from((addr, args.receive_port));
            load::run_receive(netns, sender, xtask, proto, listen, seconds)
        };
        // The connect loads: port, where, and whether each connection
        // carries a request.
        let client = |port: u16, to: Target, request: bool| {
            load::run_client(netns, xtask, port, to, seconds, request)
        };
        match workload {
            Workload::Protected => client(args.protected_port, Target::Loopback4, false),
            Workload::Unprotected => client(args.unprotected_port, Target::Loopback4, false),
            Workload::Protected6 => client(args.protected_port, Target::Loopback6, false),
            Workload::Request => client(args.request_port, Target::Loopback4, true),
            Workload::Outbound => {
                let to = Target::Addr(netns::VETH_PEER.into());
                client(args.unprotected_port, to, false)
            }
            Workload::ReceiveTcp => receive(&self.peer, Proto::Tcp, netns::VETH_LOCAL),
            Workload::ReceiveUdp => receive(&self.peer, Proto::Udp, netns::VETH_LOCAL),
            Workload::ReceiveLoopback => receive(netns, Proto::Tcp, Ipv4Addr::LOCALHOST),
            Workload::Spawn => load::run_timed(netns, xtask, "bench-spawn", seconds),
            Workload::Getsockopt => load::run_timed(netns, xtask, "bench-getsockopt", seconds),
            Workload::Bind => load::run_timed(netns, xtask, "bench-bind", seconds),
        }
    }

    fn start_daemon(&self, config: Config, round: u32) -> anyhow::Result<Option<Warden>> {
        self.start_build(&self.bin, "", config, round)
    }

    /// [`Bench::start_daemon`] with the daemon binary `bin`, its files'
    /// names marked with `label` (two builds in one round).
    fn start_build(
        &self,
        bin: &Path,
        label: &str,
        config: Config,
        round: u32,
    ) -> anyhow::Result<Option<Warden>> {
        let mode = match config {
            Config::Absent => return Ok(None),
            Config::Baseline => {
                let log = self
                    .dir
                    .path()
                    .join(format!("baseline{label}-{}.log", round + 1));
                return Warden::start_baseline(bin, &log).map(Some);
            }
            Config::Audit
            | Config::Enforce
            | Config::Untagged
            | Config::ReportAll
            | Config::EgressNamed
            | Config::EgressOther => config.to_string(),
        };
        let file = self.dir.path().join(format!("{mode}.toml"));
        fs::write(&file, self.daemon_config(config))
            .with_context(|| format!("cannot write {}", file.display()))?;
        let log = self
            .dir
            .path()
            .join(format!("{mode}{label}-{}.log", round + 1));
        let run_dir = self
            .dir
            .path()
            .join(format!("run-{mode}{label}-{}", round + 1));
        Warden::start(bin, &file, &run_dir, &log).map(Some)
    }

    /// The policy under test, with the catalog on, protecting the connect
    /// loads' protected port and the request load's. Audit and enforce: a
    /// deny rule for another executable, so connects succeed but take the
    /// full identity and matching path, as an ordinary client does under a
    /// real policy. Report-all: an audit rule matching the bench client, so
    /// every protected connect is also reported. The bind guard is on for
    /// the protected port (the bind load binds others). The egress phases
    /// add an `[[egress]]` rule (see [`egress`]).
    fn daemon_config(&self, config: Config) -> String {
        let (name, action, exe) = match config {
            Config::ReportAll => ("bench-audit", "audit", self.xtask.as_path()),
            _ => ("bench-deny-other", "deny", Path::new("/usr/bin/socat")),
        };
        let egress = match config {
            Config::EgressNamed => egress::table(&self.xtask),
            Config::EgressOther => egress::table(Path::new("/usr/bin/socat")),
            _ => String::new(),
        };
        let policy = format!(
            "mode = {mode}\n\n[protect]\nports = [{port}, {request_port}]\nnetns = [{netns}]\n\n\
             [provenance]\ntag = {tag}\n\n\
             [bind]\nloopback_only = [{port}]\n\n\
             [[rule]]\nname = {name}\naction = {action}\nexe = {exe}\n",
            mode = toml_str(config.mode()),
            tag = config != Config::Untagged,
            port = self.args.protected_port,
            request_port = self.args.request_port,
            netns = toml_str(&self.netns.path()),
            name = toml_str(name),
            action = toml_str(action),
            exe = toml_str(&exe.to_string_lossy()),
        );
        format!("{policy}\n{egress}")
    }
}

/// A TOML basic string.
fn toml_str(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A scratch directory for configs, run dirs and daemon logs; removed on drop
/// unless [`TempDir::keep`] was called (the logs explain failures).
struct TempDir {
    path: PathBuf,
    keep: Cell<bool>,
}

impl TempDir {
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path,
            keep: Cell::new(false),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(&self) {
        self.keep.set(true);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep.get() {
            say!("daemon configs and logs kept in {}", self.path.display());
        } else if let Err(err) = fs::remove_dir_all(&self.path) {
            say!("warning: cannot remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::toml_str;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(toml_str("/run/netns/x"), "\"/run/netns/x\"");
    }
}
