//! The daemon: checks the host, compiles the policy, loads and attaches the
//! programs, then turns kernel events into audit lines until SIGINT/SIGTERM.
//!
//! Start-up order matters: the policy is written into the maps before the
//! programs are attached, so the first connect they see is already judged
//! by the full policy. SIGHUP re-reads the config; a bad config is reported
//! and the running policy stays. Every few seconds the policy is compiled
//! again so that executables installed and cgroups (units) started after
//! start-up are picked up. Whenever a policy in enforce mode is installed,
//! open connections it would have refused are cut ([`crate::cut`]).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use loopwarden_common::flags;
use tokio::{
    io::{
        Interest,
        unix::{AsyncFd, AsyncFdReadyMutGuard},
    },
    signal::unix::{SignalKind, signal},
};
use tracing::{error, info, warn};

use crate::{
    btf::{self, BtfError},
    compat::{self, CompatError},
    config::{Config, ConfigError, DEFAULT_CONFIG_PATH},
    cut,
    events::{Enricher, LogFormat, parse_event},
    loader::{LoaderError, Programs},
    maps::{Counters, MapsError, PolicyMaps, StatsMap, take_events},
    policy::{self, CompiledPolicy, Mode, PolicyError},
    resolve::{self, HostResolver},
};

/// Default directory for the instance lock.
pub const DEFAULT_RUN_DIR: &str = "/run/loopwarden";
/// How often the policy is re-resolved and kernel counters are read.
const REFRESH: Duration = Duration::from_secs(1);
/// How often queued reports are collected: the kernel wakes the daemon at
/// once only for refusals and for a backlog (see `ebpf/src/connect.rs`).
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

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
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
    pub run_dir: PathBuf,
}

/// Where the policy comes from, so SIGHUP can read it again.
#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    fn pick(config: Option<&Path>) -> Self {
        match config {
            Some(path) => Source::File(path.to_owned()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Source::File(PathBuf::from(DEFAULT_CONFIG_PATH))
            }
            None => Source::Embedded,
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Embedded => "embedded default policy".to_owned(),
        }
    }

    fn read(&self) -> Result<Config, ConfigError> {
        match self {
            Source::File(path) => Config::from_file(path),
            Source::Embedded => Ok(Config::embedded_default()),
        }
    }
}

/// Compiles `config` and applies the `--mode` override. `lenient`: for
/// re-resolving the running config (see [`policy::compile_lenient`]).
fn compile_policy(
    config: &Config,
    resolver: &HostResolver,
    mode: Option<Mode>,
    lenient: bool,
) -> Result<CompiledPolicy, DaemonError> {
    let mut policy = if lenient {
        policy::compile_lenient(config, resolver)?
    } else {
        policy::compile(config, resolver)?
    };
    if let Some(mode) = mode {
        apply_mode(&mut policy, mode);
    }
    Ok(policy)
}

/// Sets the mode of a compiled policy (the `--mode` override).
pub fn apply_mode(policy: &mut CompiledPolicy, mode: Mode) {
    policy.mode = mode;
    match mode {
        Mode::Enforce => policy.settings.flags |= flags::ENFORCE,
        Mode::Audit => policy.settings.flags &= !flags::ENFORCE,
    }
}

/// An exclusive lock on `<run_dir>/loopwarden.lock`, held for the daemon's
/// lifetime (the kernel drops it when the process exits, however it exits).
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    pub fn acquire(run_dir: &Path) -> Result<Self, DaemonError> {
        fs::create_dir_all(run_dir).map_err(io_err(format!("creating {}", run_dir.display())))?;
        let path = run_dir.join("loopwarden.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let holder = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(DaemonError::AlreadyRunning { path, holder });
        }
        file.set_len(0)
            .map_err(io_err("truncating the lock file"))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("writing the lock file"))?;
        Ok(Self { _file: file })
    }
}

/// The host's own non-loopback addresses for `host_addresses = true`: those
/// of the namespaces the policy is scoped to, or of the daemon's own.
fn host_addresses(policy: &CompiledPolicy) -> Vec<std::net::IpAddr> {
    if !policy.host_addresses {
        return Vec::new();
    }
    if policy.netns.is_empty() {
        return resolve::interface_addresses().unwrap_or_else(|e| {
            warn!("listing this host's addresses failed: {e}");
            Vec::new()
        });
    }
    let mut out = Vec::new();
    for ns in &policy.netns {
        match resolve::in_netns(Path::new(&ns.path), resolve::interface_addresses) {
            Ok(addrs) => out.extend(addrs),
            Err(e) => warn!("listing the addresses of {} failed: {e}", ns.path),
        }
    }
    out
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    // Handlers first: a signal during start-up is acted on once ready,
    // instead of killing the process with its default action.
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err("installing SIGHUP handler"))?;
    let host = compat::check_host()?;
    let _lock = InstanceLock::acquire(&opts.run_dir)?;
    let source = Source::pick(opts.config.as_deref());
    let resolver = HostResolver::new(host.cgroup2_root.clone());
    let config = source.read()?;
    let policy = compile_policy(&config, &resolver, opts.mode, false)?;
    for warning in &policy.warnings {
        warn!("{warning}");
    }
    let offsets = btf::kernel_offsets(&host.btf_path)?;

    let mut programs = Programs::load(&offsets)?;
    let mut policy_maps = PolicyMaps::take(&mut programs.ebpf)?;
    let stats = StatsMap::take(&mut programs.ebpf)?;
    let ring = take_events(&mut programs.ebpf)?;
    let logger = match aya_log::EbpfLogger::init(&mut programs.ebpf) {
        Ok(logger) => Some(watch(logger, "watching the kernel log buffer")?),
        Err(e) => {
            warn!("kernel program diagnostics unavailable: {e}");
            None
        }
    };
    policy_maps.install(&policy, &host_addresses(&policy))?;
    programs.attach(&host.cgroup2_root)?;
    info!(
        "ready: {} mode, {} rules from {}, attached to cgroup {} (kernel {})",
        match policy.mode {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        },
        policy.rules.len(),
        source.describe(),
        host.cgroup2_root.display(),
        host.kernel_release,
    );

    let mut events = watch(ring, "watching the event ring buffer")?;
    let mut logger = logger;
    let mut enricher = Enricher::new(policy.rules.clone(), host.cgroup2_root.clone());
    cut_connections(&policy, &resolver, &mut enricher, opts.log_format);
    let mut installed = Installed {
        source,
        mode: opts.mode,
        resolver,
        config,
        policy,
        maps: policy_maps,
        refresh_error: None,
        log_format: opts.log_format,
    };
    notify_systemd_ready();
    let mut tick = tokio::time::interval(REFRESH);
    let mut drain_tick = tokio::time::interval(DRAIN);
    let mut last = Counters::default();

    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.map_err(io_err("waiting for events"))?;
                drain(guard.get_inner_mut(), &mut enricher, opts.log_format);
                guard.clear_ready();
            }
            guard = readable(&mut logger) => {
                if let Some(mut guard) = guard.map_err(io_err("waiting for kernel log records"))? {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
            _ = drain_tick.tick() => {
                drain(events.get_mut(), &mut enricher, opts.log_format);
            }
            _ = tick.tick() => {
                last = report_counters(&stats, last);
                // Reports queued under the old rule numbering go out first.
                drain(events.get_mut(), &mut enricher, opts.log_format);
                installed.refresh(&mut enricher);
            }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading {}", installed.source.describe());
                drain(events.get_mut(), &mut enricher, opts.log_format);
                installed.reload(&mut enricher);
            }
            _ = sigint.recv() => { info!("SIGINT: detaching"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: detaching"); break; }
        }
    }
    // Whatever is still queued is reported before the programs go away.
    drain(events.get_mut(), &mut enricher, opts.log_format);
    report_counters(&stats, last);
    drop(events);
    drop(programs);
    info!("detached; exiting");
    Ok(())
}

/// Tells systemd (`Type=notify`) the programs are attached, if it asked.
fn notify_systemd_ready() {
    use std::os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound()
        .and_then(|sock| addr.and_then(|addr| sock.send_to_addr(b"READY=1", &addr)));
    if let Err(e) = sent {
        warn!("notifying systemd at {path} failed: {e}");
    }
}

type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Registers a ring buffer's descriptor with the reactor.
fn watch<T: std::os::fd::AsRawFd>(inner: T, what: &str) -> Result<AsyncFd<T>, DaemonError> {
    // SAFETY: `inner` owns its descriptor (an aya map fd) and keeps it open and
    // unchanged until the AsyncFd, which owns `inner`, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| io_err(what)(io::Error::from(e)))
}

async fn readable(
    logger: &mut Option<AsyncFd<KernelLogger>>,
) -> io::Result<Option<AsyncFdReadyMutGuard<'_, KernelLogger>>> {
    match logger {
        Some(fd) => fd.readable_mut().await.map(Some),
        None => std::future::pending().await,
    }
}

/// Writes every queued event as an audit line on stdout.
fn drain(ring: &mut RingBuf<MapData>, enricher: &mut Enricher, format: LogFormat) {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    while let Some(item) = ring.next() {
        match parse_event(&item) {
            Some(ev) => {
                let line = enricher.enrich(&ev).format(format);
                if let Err(e) = writeln!(out, "{line}") {
                    error!("writing an audit line failed: {e}");
                }
            }
            None => warn!(
                "ignoring a short record ({} bytes) from the kernel",
                item.len()
            ),
        }
    }
    if let Err(e) = out.flush() {
        error!("flushing audit lines failed: {e}");
    }
}

/// After a policy in enforce mode is installed: destroys the open
/// connections it would have refused (see [`cut`]) and writes one audit
/// line per connection cut.
fn cut_connections(
    policy: &CompiledPolicy,
    resolver: &HostResolver,
    enricher: &mut Enricher,
    format: LogFormat,
) {
    if policy.mode != Mode::Enforce {
        return;
    }
    let cuts = cut::sweep(policy, &host_addresses(policy), resolver.cgroup_root());
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for c in &cuts {
        if let Err(e) = writeln!(out, "{}", enricher.cut(c).format(format)) {
            error!("writing an audit line failed: {e}");
        }
    }
    if let Err(e) = out.flush() {
        error!("flushing audit lines failed: {e}");
    }
    info!("cut {} connections", cuts.len());
}

/// Reports events the ring buffer had to drop since the last call.
fn report_counters(stats: &StatsMap, last: Counters) -> Counters {
    match stats.read() {
        Ok(now) => {
            if now.dropped > last.dropped {
                error!(
                    dropped = now.dropped - last.dropped,
                    total_dropped = now.dropped,
                    "events lost: the ring buffer was full (the connects were still judged; only their reports are missing)"
                );
            }
            now
        }
        Err(e) => {
            warn!("reading kernel counters failed: {e}");
            last
        }
    }
}

/// The installed policy and what it was compiled from.
struct Installed {
    source: Source,
    mode: Option<Mode>,
    resolver: HostResolver,
    /// The last config that compiled: the periodic refresh recompiles it, so
    /// an edit to the file takes effect only on SIGHUP.
    config: Config,
    policy: CompiledPolicy,
    maps: PolicyMaps,
    /// The last periodic re-resolution error, reported once until it changes.
    refresh_error: Option<String>,
    /// For the audit lines of connections cut after an install.
    log_format: LogFormat,
}

impl Installed {
    fn compile(&self, config: &Config, lenient: bool) -> Result<CompiledPolicy, DaemonError> {
        compile_policy(config, &self.resolver, self.mode, lenient)
    }

    /// SIGHUP: re-reads the source. A bad config is reported and the running
    /// policy stays.
    fn reload(&mut self, enricher: &mut Enricher) {
        let fresh = self
            .source
            .read()
            .map_err(DaemonError::from)
            .and_then(|config| Ok((self.compile(&config, false)?, config)));
        match fresh {
            Ok((policy, config)) => {
                if policy == self.policy {
                    info!("policy unchanged");
                }
                self.config = config;
                self.install(policy, enricher);
            }
            Err(e) => error!("reload failed, keeping the running policy: {e}"),
        }
    }

    /// Periodic: resolves the same config again, picking up executables
    /// installed and cgroups created since, and refreshes host addresses.
    fn refresh(&mut self, enricher: &mut Enricher) {
        match self.compile(&self.config, true) {
            Ok(policy) => {
                if self.refresh_error.take().is_some() {
                    info!("re-resolving the policy works again");
                }
                if policy != self.policy {
                    // Writes the host addresses with the policy.
                    self.install(policy, enricher);
                    return;
                }
            }
            Err(e) => {
                let message = e.to_string();
                if self.refresh_error.as_deref() != Some(message.as_str()) {
                    warn!(
                        "re-resolving the policy failed, keeping the installed one (executables upgraded and cgroups created since are not picked up until this is fixed or the config reloaded): {message}"
                    );
                    self.refresh_error = Some(message);
                }
            }
        }
        if self.policy.host_addresses {
            if let Err(e) = self.maps.set_host_addresses(&host_addresses(&self.policy)) {
                warn!("refreshing host addresses failed: {e}");
            }
        }
    }

    fn install(&mut self, fresh: CompiledPolicy, enricher: &mut Enricher) {
        if fresh == self.policy {
            return;
        }
        for warning in fresh
            .warnings
            .iter()
            .filter(|w| !self.policy.warnings.contains(w))
        {
            warn!("{warning}");
        }
        if let Err(e) = self.maps.install(&fresh, &host_addresses(&fresh)) {
            error!("installing the new policy failed, keeping the running one: {e}");
            return;
        }
        info!("policy installed: {} rules", fresh.rules.len());
        enricher.set_rules(fresh.rules.clone());
        self.policy = fresh;
        cut_connections(&self.policy, &self.resolver, enricher, self.log_format);
    }
}
