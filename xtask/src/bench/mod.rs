//! `cargo xtask bench`: connects per second to a protected and an unprotected
//! port with the daemon absent, in audit mode and in enforce mode, measured as
//! interleaved rounds inside a private network namespace; plus each program's
//! own cost per run from the kernel's BPF statistics, net of the statistics'
//! own overhead, calibrated each round with a no-op program
//! (`loopwarden baseline`). Then the reporting phase ([`reporting`]):
//! floods of reports at fixed rates, counted in the daemon's output, with its
//! CPU and resident size.

pub mod load;
mod netns;
mod report;
pub mod reporting;
mod stats;
mod warden;

use std::{
    cell::Cell,
    fmt, fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, bail};

use self::{
    load::{ClientRun, Server},
    netns::Netns,
    stats::{Snapshot, StatsEnabled},
    warden::Warden,
};
use crate::{daemon, proc::say, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds of (absent, baseline, audit, enforce) × (protected, unprotected).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
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
    /// Port the reporting phase reports every connect to (nothing listens).
    #[arg(long, default_value_t = 18082)]
    pub report_port: u16,
    /// Only the reporting floods whose name contains this (e.g. `50k`).
    #[arg(long)]
    pub report_only: Option<String>,
    /// Skip the connect-cost rounds (only the reporting phase).
    #[arg(long)]
    pub skip_costs: bool,
    /// Skip the reporting phase.
    #[arg(long)]
    pub skip_reporting: bool,
}

/// Whether and how the daemon runs during a measurement.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Config {
    Absent,
    /// Calibration: only `loopwarden baseline`'s no-op `lw_baseline4` is
    /// attached, to measure what the BPF statistics cost by themselves. Not
    /// part of the rate comparison.
    Baseline,
    Audit,
    Enforce,
    /// Audit mode with a rule matching the bench client: every protected
    /// connect is reported. The cost of reporting, not a realistic policy.
    ReportAll,
}

impl Config {
    /// The configurations compared in the rate table.
    const ALL: [Self; 4] = [Self::Absent, Self::Audit, Self::Enforce, Self::ReportAll];
    /// Every phase of a round, in the order it runs.
    const PHASES: [Self; 5] = [
        Self::Absent,
        Self::Baseline,
        Self::Audit,
        Self::Enforce,
        Self::ReportAll,
    ];

    /// The daemon's `--mode`.
    fn mode(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            _ => "audit",
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Absent => "absent",
            Self::Baseline => "baseline",
            Self::Audit => "audit",
            Self::Enforce => "enforce",
            Self::ReportAll => "report-all",
        })
    }
}

/// Which port the client connects to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Target {
    Protected,
    Unprotected,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Protected => "protected",
            Self::Unprotected => "unprotected",
        })
    }
}

/// One measurement: a client run plus the BPF counters that moved meanwhile.
pub struct Sample {
    /// 0-based.
    pub round: u32,
    pub config: Config,
    pub target: Target,
    pub run: ClientRun,
    pub progs: Snapshot,
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
    if args.rounds == 0 || args.seconds <= 0.0 {
        bail!("--rounds and --seconds must be positive");
    }
    setup::require_root("the bench (network namespaces, eBPF, sysctls)")?;
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
    let samples = if args.skip_costs {
        Ok(Vec::new())
    } else {
        bench.measure()
    };
    let reporting = match &samples {
        Ok(_) if !args.skip_reporting => bench.measure_reporting().map(Some),
        _ => Ok(None),
    };
    if samples.is_err() || reporting.is_err() {
        bench.dir.keep();
    }
    drop(bench);
    warn_left_behind(&loaded_before);
    report::print(args, &samples?, reporting?.as_ref())
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
    // Fields drop in declaration order: scratch dir, listeners, namespace, sysctl.
    dir: TempDir,
    _server: Server,
    netns: Netns,
    _stats: StatsEnabled,
}

impl<'a> Bench<'a> {
    fn new(args: &'a BenchArgs, bin: PathBuf, xtask: PathBuf) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let stats = StatsEnabled::enable()?;
        let netns = Netns::create(format!("lwbench-{pid}"))?;
        let server = Server::start(
            &netns,
            &xtask,
            &[args.protected_port, args.unprotected_port],
        )?;
        let dir = TempDir::create(std::env::temp_dir().join(format!("lwbench-{pid}")))?;
        Ok(Self {
            args,
            bin,
            xtask,
            dir,
            _server: server,
            netns,
            _stats: stats,
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
        say!("warming up ...");
        load::run_client(
            &self.netns,
            &self.xtask,
            args.unprotected_port,
            args.seconds.min(1.0),
        )?;

        let total = args.rounds as usize * Config::PHASES.len() * 2;
        let mut samples = Vec::with_capacity(total);
        for round in 0..args.rounds {
            // Alternate the order within a pair so neither path always goes first.
            let targets = if round % 2 == 0 {
                [Target::Protected, Target::Unprotected]
            } else {
                [Target::Unprotected, Target::Protected]
            };
            for config in Config::PHASES {
                check_interrupted()?;
                let warden = self.start_daemon(config, round)?;
                let pid = warden.as_ref().and_then(Warden::pid);
                for target in targets {
                    check_interrupted()?;
                    let sample = self.measure_one(round, config, target, pid)?;
                    say!(
                        "[{}/{total}] round {} {config:<8} {target:<11} {:>9.0} connects/s{}",
                        samples.len() + 1,
                        round + 1,
                        sample.run.rate(),
                        if sample.run.errors > 0 {
                            format!(" ({} connect errors)", sample.run.errors)
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

    fn measure_one(
        &self,
        round: u32,
        config: Config,
        target: Target,
        pid: Option<u32>,
    ) -> anyhow::Result<Sample> {
        let port = match target {
            Target::Protected => self.args.protected_port,
            Target::Unprotected => self.args.unprotected_port,
        };
        let before = stats::snapshot(pid)?;
        let run = load::run_client(&self.netns, &self.xtask, port, self.args.seconds)?;
        let after = stats::snapshot(pid)?;
        if run.connects == 0 {
            bail!("no connect to port {port} succeeded ({config}, {target})");
        }
        Ok(Sample {
            round,
            config,
            target,
            run,
            progs: stats::delta(&before, &after),
        })
    }

    fn start_daemon(&self, config: Config, round: u32) -> anyhow::Result<Option<Warden>> {
        let mode = match config {
            Config::Absent => return Ok(None),
            Config::Baseline => {
                let log = self.dir.path().join(format!("baseline-{}.log", round + 1));
                return Warden::start_baseline(&self.bin, &log).map(Some);
            }
            Config::Audit | Config::Enforce | Config::ReportAll => config.to_string(),
        };
        let file = self.dir.path().join(format!("{mode}.toml"));
        fs::write(&file, self.daemon_config(config))
            .with_context(|| format!("cannot write {}", file.display()))?;
        let log = self.dir.path().join(format!("{mode}-{}.log", round + 1));
        let run_dir = self.dir.path().join(format!("run-{mode}-{}", round + 1));
        Warden::start(&self.bin, &file, &run_dir, &log).map(Some)
    }

    /// The policy under test, with the catalog on. Audit and enforce: a deny
    /// rule for another executable, so connects succeed but take the full
    /// identity and matching path, as an ordinary client does under a real
    /// policy. Report-all: an audit rule matching the bench client, so every
    /// protected connect is also reported.
    fn daemon_config(&self, config: Config) -> String {
        let (name, action, exe) = match config {
            Config::ReportAll => ("bench-audit", "audit", self.xtask.as_path()),
            _ => ("bench-deny-other", "deny", Path::new("/usr/bin/socat")),
        };
        format!(
            "mode = {mode}\n\n[protect]\nports = [{port}]\nnetns = [{netns}]\n\n\
             [[rule]]\nname = {name}\naction = {action}\nexe = {exe}\n",
            mode = toml_str(config.mode()),
            port = self.args.protected_port,
            netns = toml_str(&self.netns.path()),
            name = toml_str(name),
            action = toml_str(action),
            exe = toml_str(&exe.to_string_lossy()),
        )
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
