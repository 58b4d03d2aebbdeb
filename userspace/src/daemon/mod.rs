//! The daemon: checks the host, compiles the policy, adopts or replaces the
//! pinned programs and maps, then turns kernel events into audit lines until
//! SIGINT/SIGTERM. Its exit leaves enforcement pinned (see
//! [`crate::kernel::pins`]); [`detach`] removes it.
//!
//! Start-up order matters: the policy is written into the maps before the
//! programs take over the links, so the first connect they judge is judged
//! by the full policy. A name that does not resolve (a missing executable, a
//! user or unit that does not exist yet) is reported and matches nothing
//! until it resolves; the rest is enforced. SIGHUP picks the policy source
//! again and re-reads it; a bad file is reported and the running policy
//! stays. Every second the policy is resolved again, so executables
//! installed, cgroups (units) started and addresses added after start-up
//! are picked up. Whenever a policy in enforce mode is installed, open
//! connections it would have refused are cut ([`crate::cut`]). Under
//! systemd it sends `READY=1` once attached and, with `WatchdogSec=`,
//! `WATCHDOG=1` from that 1 s tick.

mod detach;
mod installed;
mod lock;
mod rings;
pub mod status_file;
mod sweeper;
mod systemd;

use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

pub use self::{detach::detach, lock::InstanceLock};
use self::{
    installed::{Installed, Source, compile_policy, host_addresses},
    rings::{CounterReport, drain, readable, watch},
    sweeper::Sweeper,
    systemd::{notify_systemd, notify_systemd_ready, systemd_watchdog},
};
use crate::{
    config::ConfigError,
    events::{Enricher, LogFormat},
    kernel::{
        btf::{self, BtfError},
        compat::{self, CompatError},
        loader::{self, LoaderError, Programs, Takeover},
        maps::{Counters, MapsError, PolicyMaps, StatsMap, take_denials, take_events},
        pins::{PinDir, PinError, PinState},
    },
    policy::{Mode, PolicyError},
    report::Reporter,
    resolve::HostResolver,
};

/// Default directory for the instance lock.
pub const DEFAULT_RUN_DIR: &str = "/run/loopwarden";
/// How often the policy is re-resolved and kernel counters are read.
const REFRESH: Duration = Duration::from_secs(1);
/// How often queued reports are collected: the kernel wakes the daemon at
/// once only for refusals and for a backlog (see `ebpf/src/connect/record.rs`).
const DRAIN: Duration = Duration::from_millis(100);

/// Everything that can stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Compat(#[from] CompatError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error(
        "another loopwarden is already running (lock {path} is held{}); stop it first, or give this one its own --run-dir",
        holder.map(|p| format!(" by pid {p}")).unwrap_or_default()
    )]
    AlreadyRunning { path: PathBuf, holder: Option<u32> },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Exit codes (sysexits.h), distinct so a supervisor can tell a failure
/// that a restart may fix from one it cannot (`RestartPreventExitStatus=`).
pub mod exit {
    /// The policy file is bad (EX_CONFIG).
    pub const CONFIG: u8 = 78;
    /// The kernel or host lacks something loopwarden needs: cgroup v2, BTF,
    /// a recent enough kernel, or a program the kernel refuses to load
    /// (EX_UNAVAILABLE).
    pub const UNSUPPORTED: u8 = 69;
    /// Not privileged enough: a capability the daemon uses is not
    /// effective (EX_NOPERM).
    pub const NO_PERMISSION: u8 = 77;
    /// Another daemon holds the lock (EX_TEMPFAIL: a later try may work).
    pub const ALREADY_RUNNING: u8 = 75;
    /// Anything else.
    pub const FAILURE: u8 = 1;
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::Policy(_) => exit::CONFIG,
            DaemonError::Compat(
                CompatError::NotRoot { .. } | CompatError::MissingCapabilities { .. },
            ) => exit::NO_PERMISSION,
            // The kernel refusing a program is a helper, program type or
            // verifier limit it lacks: a restart would be refused the same way.
            DaemonError::Compat(_)
            | DaemonError::Btf(_)
            | DaemonError::Loader(LoaderError::Verify { .. }) => exit::UNSUPPORTED,
            DaemonError::AlreadyRunning { .. } | DaemonError::Pins(PinError::Busy { .. }) => {
                exit::ALREADY_RUNNING
            }
            _ => exit::FAILURE,
        }
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Options of `loopwarden run`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Config file; `None` reads the default path, or the embedded default
    /// policy when that file does not exist.
    pub config: Option<PathBuf>,
    /// Overrides the file's mode.
    pub mode: Option<Mode>,
    pub log_format: LogFormat,
    /// Reports of one flow within this interval share a summary line; zero:
    /// a line per report (see [`crate::report`]).
    pub repeat_interval: Duration,
    pub run_dir: PathBuf,
    /// Where links and maps are pinned.
    pub pin_dir: PathBuf,
    /// Replace whatever is pinned even if it is compatible (new maps, the
    /// programs swapped in place through the links).
    pub replace: bool,
    /// The host's cgroup v2 root, for a daemon in a child cgroup namespace
    /// (see [`crate::kernel::host_cgroup`]); `None`: this mount namespace's.
    pub host_cgroup_root: Option<PathBuf>,
}

/// What start-up found pinned and did about it, for the ready line.
fn describe_start(state: &PinState, takeover: Takeover) -> String {
    match (state, takeover) {
        (PinState::Absent, _) | (_, Takeover::Attached) => "attached and pinned".to_owned(),
        (PinState::Compatible, Takeover::Updated) => {
            "adopted the pinned maps; the pinned links now run this daemon's programs".to_owned()
        }
        (PinState::Incompatible { why }, Takeover::Updated) => {
            format!("replaced the pinned programs in place and their maps ({why})")
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM. Enforcement stays pinned when
/// it returns: only `loopwarden detach` removes it.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let started = Instant::now();
    // Handlers first: a signal during start-up is acted on once ready,
    // instead of killing the process with its default action.
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err("installing SIGHUP handler"))?;
    let host = compat::check_host(opts.host_cgroup_root.as_deref())?;
    let _lock = InstanceLock::acquire(&opts.run_dir)?;
    // Inspecting creates nothing: a start that fails on its config leaves
    // no trace in bpffs.
    let pins = PinDir::new(&opts.pin_dir);
    let shapes = loader::object_shapes()?;
    let state = if opts.replace {
        PinState::Incompatible {
            why: "--replace was given".to_owned(),
        }
    } else {
        pins.inspect(&shapes)
    };
    if let PinState::Incompatible { why } = &state {
        info!("the pinned objects will be replaced: {why}");
    }

    let source = Source::pick(opts.config.as_deref());
    let resolver = HostResolver::new(host.cgroup2_root.clone());
    // A policy that does not parse: enforcement already pinned by a
    // predecessor of this layout stays in force and this daemon reports for
    // it until a reload brings a good file; with nothing to keep, the
    // daemon exits (exit code EX_CONFIG, which the unit does not restart).
    let (config, policy) = match source.read() {
        Ok(config) => {
            let policy = compile_policy(&config, &resolver, opts.mode, None)?;
            (Some(config), Some(policy))
        }
        Err(e) if state == PinState::Compatible => {
            error!(
                "{e}; the policy pinned by the previous daemon stays in force until a reload \
                 (SIGHUP) reads a valid file"
            );
            (None, None)
        }
        Err(e) if matches!(state, PinState::Incompatible { .. }) => {
            error!(
                "{e}; the previously pinned programs keep enforcing their policy, unreported, \
                 until a daemon starts with a valid file (or `loopwarden detach`)"
            );
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(policy) = &policy {
        for warning in &policy.warnings {
            warn!("{warning}");
        }
    }
    let offsets = btf::kernel_offsets(&host.btf_path)?;
    // The RFC 1413 responder's addresses (`[ident] listen`), bound before
    // the programs load: one that cannot be bound stops the start with
    // nothing changed.
    let ident = config
        .as_ref()
        .filter(|c| !c.ident.listen.is_empty())
        .map(crate::provenance::ident::bind)
        .transpose()
        .map_err(|e| io_err("starting the ident responder")(io::Error::other(e)))?;

    let _pin_lock = pins.prepare()?;
    let mut programs = Programs::load_pinned(&offsets, &pins, &state)?;
    let mut policy_maps = PolicyMaps::take(&mut programs.ebpf)?;
    let mut stats = StatsMap::take(&mut programs.ebpf)?;
    let ring = take_events(&mut programs.ebpf)?;
    let denials = take_denials(&mut programs.ebpf)?;
    let logger = match aya_log::EbpfLogger::init(&mut programs.ebpf) {
        Ok(logger) => Some(watch(logger, "watching the kernel log buffer")?),
        Err(e) => {
            warn!("kernel program diagnostics unavailable: {e}");
            None
        }
    };
    let mut enricher = Enricher::new(host.cgroup2_root.clone());
    // Installed before the programs take over the links, so the first
    // connect they judge is judged by this policy.
    let installed_seq = match &policy {
        Some(policy) => {
            let seq = policy_maps.install(policy, &host_addresses(policy))?;
            enricher.set_rules(seq, policy.named_rules());
            Some(seq)
        }
        None => None,
    };
    let getsockopt = config.as_ref().map(|c| getsockopt_targets(c, &resolver));
    let takeover = programs.attach_pinned(&host.cgroup2_root, &pins, getsockopt.as_deref())?;
    // With the tracking programs running, what happened before they did
    // (listeners, accepted connections, interpreters' scripts) is read
    // from /proc: from now on nothing is missed between the two.
    crate::track::seed(&mut programs.ebpf, policy.as_ref());
    // What an earlier daemon already reported stays reported; drops since
    // (e.g. while no daemon was reading) are reported now. (Replaced maps
    // start from zero on both sides.)
    let dropped_reported = match (&state, pins.meta()) {
        (PinState::Compatible, Ok(meta)) => meta.dropped_reported,
        _ => 0,
    };
    let dropped_by_verdict = stats.drops_reported().unwrap_or_else(|e| {
        warn!("reading LW_DROPS_REPORTED failed: {e}");
        Default::default()
    });
    pins.write_meta(dropped_reported)
        .map_err(|e| io_err("writing LW_META")(io::Error::other(e)))?;
    // The RFC 1413 responder, bound before anything was loaded.
    if let Some(bound) = ident {
        let conns = pins.map(loopwarden_common::maps::CONNS);
        let serving = bound
            .serve(&conns)
            .map_err(|e| io_err("starting the ident responder")(io::Error::other(e)))?;
        info!("ident (RFC 1413): answering on {serving}");
    }
    // The heap the start-up needed (policy compilation, object parsing) is
    // not needed again.
    crate::heap::release();
    info!(
        "ready: {}, {} from {}, cgroup {}, pinned in {} (kernel {}); {}; enforcing {} ms after start",
        match &policy {
            Some(p) => format!("{} mode, {} rules", p.mode, p.rules.len()),
            None => "the pinned policy".to_owned(),
        },
        match installed_seq {
            Some(seq) => format!("policy #{seq}"),
            None => "no new policy".to_owned(),
        },
        source.describe(),
        host.cgroup2_root.display(),
        pins.root().display(),
        host.kernel_release,
        describe_start(&state, takeover),
        started.elapsed().as_millis(),
    );

    // What a previous policy, an audit mode or no daemon at all let in.
    let sweeper = Sweeper::spawn(
        host.cgroup2_root.clone(),
        pins.map(loopwarden_common::maps::PROCS),
        opts.log_format,
    )
    .map_err(io_err("starting the connection sweeper"))?;
    if let Some(policy) = &policy {
        sweeper.request(policy, &host_addresses(policy));
    }
    let mut events = watch(ring, "watching the event ring buffer")?;
    let mut denials = watch(denials, "watching the refusals' ring buffer")?;
    let mut reporter = Reporter::new(enricher, opts.log_format, opts.repeat_interval);
    let mut logger = logger;
    let mut installed = Installed {
        source,
        config_arg: opts.config.clone(),
        mode: opts.mode,
        resolver,
        config,
        addrs: policy.as_ref().map(host_addresses).unwrap_or_default(),
        policy,
        maps: policy_maps,
        refresh_error: None,
        sweeper,
    };
    let mut counters = CounterReport {
        pins: pins.clone(),
        last: Counters {
            dropped: dropped_reported,
            dropped_by_verdict,
            ..Counters::default()
        },
    };
    counters.report(&mut stats);
    status_file::started(&opts.run_dir, &installed);
    // The query socket (`[provenance] query`), removed when the daemon exits.
    let _query = installed
        .config
        .as_ref()
        .is_some_and(|c| c.provenance.query)
        .then(|| {
            crate::provenance::query::serve(
                &opts.run_dir,
                pins.map(loopwarden_common::maps::CONNS),
                host.cgroup2_root.clone(),
                reporter.enricher().shared_rules(),
            )
            .inspect_err(|e| error!("the query socket is off: {}", crate::error_chain(e)))
            .ok()
        })
        .flatten();
    // The Prometheus metrics (`[metrics]`, read at start), removed when
    // the daemon exits.
    let metrics_config = installed.config.as_ref().map_or_else(
        || crate::config::Config::embedded_default().metrics,
        |c| c.metrics.clone(),
    );
    let sources = crate::ops::metrics::Sources {
        pins: pins.clone(),
        reported: reporter.tally().subscribe(),
        started: SystemTime::now() - started.elapsed(),
    };
    let _metrics = crate::ops::metrics::serve(&opts.run_dir, &metrics_config, sources)
        .inspect(|m| {
            if !m.serving.is_empty() {
                info!("metrics: serving on {}", m.serving.join(" and "));
            }
        })
        .inspect_err(|e| error!("the metrics are off: {}", crate::error_chain(e)))
        .ok();
    notify_systemd_ready();
    // Kept alive from the refresh tick: a stuck event loop stops it, and
    // systemd restarts the daemon (enforcement stays pinned meanwhile).
    let mut watchdog = systemd_watchdog();
    let mut tick = tokio::time::interval(REFRESH);
    let mut drain_tick = tokio::time::interval(DRAIN);
    let mut summary_tick = reporter.interval().map(tokio::time::interval);
    let mut refresh_cost = Cost::default();

    loop {
        tokio::select! {
            guard = denials.readable_mut() => {
                let mut guard = guard.map_err(io_err("waiting for refusals"))?;
                guard.clear_ready();
                drain(&mut [guard.get_inner_mut(), events.get_mut()], &mut reporter);
            }
            guard = events.readable_mut() => {
                let mut guard = guard.map_err(io_err("waiting for events"))?;
                guard.clear_ready();
                drain(&mut [denials.get_mut(), guard.get_inner_mut()], &mut reporter);
            }
            guard = readable(&mut logger) => {
                if let Some(mut guard) = guard.map_err(io_err("waiting for kernel log records"))? {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
            _ = drain_tick.tick() => {
                drain(&mut [denials.get_mut(), events.get_mut()], &mut reporter);
            }
            _ = every(&mut summary_tick) => {
                drain(&mut [denials.get_mut(), events.get_mut()], &mut reporter);
                reporter.summarise();
            }
            _ = tick.tick() => {
                let begun = Instant::now();
                counters.report(&mut stats);
                reporter.publish_tally();
                installed.refresh(reporter.enricher());
                refresh_cost.add(begun.elapsed());
                if reporter.take_busy() {
                    crate::heap::release();
                }
                if watchdog && let Err((path, e)) = notify_systemd(b"WATCHDOG=1") {
                    warn!("the systemd watchdog at {path} is no longer fed: {e}");
                    watchdog = false;
                }
            }
            _ = sighup.recv() => {
                installed.reload(reporter.enricher());
            }
            _ = sigint.recv() => { info!("SIGINT: exiting"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: exiting"); break; }
        }
    }
    // Whatever is still queued is reported before we go.
    drain(&mut [denials.get_mut(), events.get_mut()], &mut reporter);
    reporter.summarise();
    counters.report(&mut stats);
    let totals = reporter.totals();
    info!(
        reports = totals.reports,
        lines = totals.lines,
        summary_lines = totals.summaries,
        summarised = totals.summarised,
        "reported {} connects in {} lines",
        totals.reports,
        totals.lines
    );
    info!(
        runs = refresh_cost.runs,
        mean_us = refresh_cost.mean().as_micros() as u64,
        max_us = refresh_cost.max.as_micros() as u64,
        "the 1 s refresh (counters, policy re-resolved) took {} µs on average",
        refresh_cost.mean().as_micros()
    );
    info!(
        "exiting; enforcement stays attached and pinned in {} (`loopwarden detach` removes it)",
        pins.root().display()
    );
    Ok(())
}

/// Tells systemd (`Type=notify`) the programs are attached, if it asked.
/// Where the `cgroup/getsockopt` program is attached: nowhere when
/// `[provenance] getsockopt` is off, at the root unless
/// `getsockopt_cgroups` names cgroups, else in each of those that exists
/// (one that does not is skipped with a warning: a restart attaches it).
fn getsockopt_targets(
    config: &crate::config::Config,
    resolver: &HostResolver,
) -> Vec<std::path::PathBuf> {
    let p = &config.provenance;
    if !p.getsockopt {
        return Vec::new();
    }
    if p.getsockopt_cgroups.is_empty() {
        return vec![resolver.cgroup_root().to_owned()];
    }
    p.getsockopt_cgroups
        .iter()
        .filter_map(|cg| match resolver.cgroup_dir(&cg.value) {
            Ok(dir) => Some(dir),
            Err(e) => {
                warn!(
                    "{}:{}: getsockopt_cgroups {:?}: {e}; services there cannot ask with \
                     getsockopt until a restart finds it",
                    config.source, cg.at, cg.value
                );
                None
            }
        })
        .collect()
}

/// Wall time spent in a periodic task.
#[derive(Default)]
struct Cost {
    runs: u64,
    total: Duration,
    max: Duration,
}

impl Cost {
    fn add(&mut self, took: Duration) {
        self.runs += 1;
        self.total += took;
        self.max = self.max.max(took);
    }

    fn mean(&self) -> Duration {
        self.total
            .checked_div(u32::try_from(self.runs).unwrap_or(u32::MAX))
            .unwrap_or_default()
    }
}

/// Ticks of an optional interval; never, without one.
async fn every(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
