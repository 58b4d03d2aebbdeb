//! `loopwarden`: the command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use loopwarden::{
    catalog::CATALOG,
    config::DEFAULT_CONFIG_PATH,
    daemon::{self, DEFAULT_RUN_DIR, DaemonError},
    events::{LogFormat, diagnostics::Diagnostics, stderr},
    kernel::{compat, loader::Programs, pins::DEFAULT_PIN_DIR},
    ops,
    ops::generate::{self, Artifact},
    policy::Mode,
    provenance::{self, client::Printed},
};
use tracing_subscriber::{EnvFilter, fmt::writer::BoxMakeWriter};

/// Refuses or reports TCP connections that tunnels and relays (cloudflared,
/// tailscaled, ngrok, frpc, bore, socat, sshd forwarding, ...) make to
/// protected local ports, attributed in the kernel to the process that called
/// connect().
///
/// Local services often trust any peer on 127.0.0.1/::1; a tunnel on the same
/// host turns that trust into a remote bypass. loopwarden decides inside
/// connect(), from the caller's executable, uid, cgroup and ancestry.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: load the policy, attach the kernel programs, and write
    /// one audit line per reported connect to stdout until SIGINT/SIGTERM.
    ///
    /// Without --config, reads /etc/loopwarden/loopwarden.toml, or runs the
    /// embedded default policy (audit mode, every loopback port, built-in
    /// tunnel catalog) when that file does not exist. SIGHUP reloads the file.
    Run {
        /// Policy file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Override the policy's mode: `audit` reports, `enforce` refuses.
        #[arg(long, value_enum)]
        mode: Option<CliMode>,
        /// Audit line format on stdout (and of diagnostics on stderr,
        /// unless --diagnostics-format says otherwise). `json` lines carry
        /// `"v":1` and `"host"`.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
        /// Diagnostics format on stderr; default: as --log-format.
        #[arg(long, value_enum, value_name = "FORMAT")]
        diagnostics_format: Option<LogFormat>,
        /// Reports of one flow (same process, destination, verdict and
        /// rule) within this interval: the first gets its line at once, the
        /// rest one summary line at the end of the interval. `0` writes a
        /// line per report; at most 1h.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = loopwarden::events::report::parse_interval)]
        repeat_interval: std::time::Duration,
        /// Directory for the instance lock (one daemon per directory).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// bpffs directory where the links and maps are pinned (mounted
        /// when bpffs is not).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Replace the pinned programs and maps even if they are compatible.
        #[arg(long, hide = true)]
        replace: bool,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// Stop enforcing: remove the pinned links and maps. The daemon leaves
    /// enforcement in place when it exits (so a restart or upgrade never
    /// opens a gap); this is how to end it. Refuses while a daemon runs.
    Detach {
        /// The run directory of the daemon (its lock must be free).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// The pin directory to empty.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Say whether enforcement is attached and pinned, the policy in force
    /// (mode, sequence number, rules), the kernel's counters, and which
    /// daemon (if any) reports for it. Read from the pins in bpffs, not from
    /// the daemon.
    #[command(
        after_help = "Exit codes: 0 active (attached, pinned, a policy in force: enforce or \
                      audit mode, also when no daemon runs), 3 not enforcing (nothing pinned, \
                      detached, links not attached, or the policy disabled), 4 pins unreadable \
                      or of an incompatible layout."
    )]
    Status {
        /// The pin directory to read.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// The run directory of the daemon (its lock and status.json).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// Check this host: probe the program type, helpers, maps and link
    /// updates the programs need, BTF, the cgroup v2 mount and namespace,
    /// bpffs, capabilities, lockdown, unprivileged BPF and SOCK_DESTROY.
    /// One line per check with what to change; exits 0 when every required
    /// check passes, 1 otherwise.
    Doctor {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// Validate a policy file and print the compiled policy; exits non-zero
    /// on any error (file, line and what is wrong).
    CheckConfig {
        /// Policy file; the default path when omitted.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Check the embedded default policy instead of a file.
        #[arg(long, conflicts_with = "file")]
        default: bool,
        /// Check the file as a running daemon's reload reads it (what the
        /// unit's `ExecReload` runs): a value that does not resolve here
        /// yet (an executable not installed, a user or network namespace
        /// not created) is a warning and matches nothing until it does,
        /// and a file with no settings is an error. Without it, any value
        /// that does not resolve is an error.
        #[arg(long, conflicts_with = "default")]
        as_daemon: bool,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// List the built-in catalog of tunnels and relays.
    Catalog,
    /// Who is on the other end of a protected connection: the process that
    /// called connect() (pid, user, executable, command line), the verdict
    /// and rule that judged it, and the relay evidence, asked from the
    /// daemon through its query socket.
    ///
    /// PEER is the client's end as the service sees it (getpeername), LOCAL
    /// the service's (getsockname). Without LOCAL, every connection from
    /// PEER (which may then be an address without a port). Connections are
    /// looked up in the caller's network namespace; a user sees only those
    /// whose accepted socket it owns, root in the host's network namespace
    /// all (root in another, its own namespace's).
    #[command(
        after_help = "Exit codes: 0 found, 1 unknown (or none), 2 usage, connection or permission errors."
    )]
    Who {
        /// The client's end: ADDR:PORT, or ADDR without LOCAL.
        #[arg(value_name = "PEER", value_parser = clap::value_parser!(provenance::client::Peer))]
        peer: provenance::client::Peer,
        /// The service's end: ADDR:PORT.
        #[arg(value_name = "LOCAL", value_parser = provenance::client::parse_local)]
        local: Option<std::net::SocketAddr>,
        /// Print JSON: an origin object (`null` when unknown); an array without
        /// LOCAL (`[]` when none).
        #[arg(long)]
        json: bool,
        /// The run directory of the daemon (where query.sock is).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Look in this network namespace (root in the host's network
        /// namespace only, for another than its own): a file such as
        /// /run/netns/NAME or /proc/PID/ns/net, or an inode number.
        #[arg(long, value_name = "PATH_OR_INODE", value_parser = provenance::client::parse_netns)]
        netns: Option<u32>,
    },
    /// List the open protected connections and their origins (for a user,
    /// those whose accepted socket it owns, in its network namespace; for
    /// root in the host's network namespace, all; for root in another, its
    /// own namespace's), asked from the daemon through its query socket.
    #[command(
        after_help = "Exit codes: 0 some listed, 1 none, 2 usage, connection or permission errors."
    )]
    Conns {
        /// Print a JSON array of origins instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this network namespace's (another than the caller's: root
        /// in the host's only): a file such as /run/netns/NAME or
        /// /proc/PID/ns/net, or an inode number.
        #[arg(long, value_name = "PATH_OR_INODE", value_parser = provenance::client::parse_netns)]
        netns: Option<u32>,
        /// The run directory of the daemon (where query.sock is).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// For benchmarks: attach a no-op connect4 program and a no-op tracing
    /// program on lw_receive's tracepoint until SIGINT/SIGTERM, so
    /// `kernel.bpf_stats_enabled` can measure the cost of measuring.
    #[command(hide = true)]
    Baseline,
    /// For packaging (`cargo xtask dist`): write the man pages or the bash,
    /// zsh and fish completions, generated from these definitions, into DIR.
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Artifact,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `--host-cgroup-root`, for the commands that attach to, inspect or
/// resolve names in the cgroup v2 hierarchy.
#[derive(Debug, clap::Args)]
struct HostCgroup {
    /// Where the host's cgroup v2 hierarchy root is mounted, for a
    /// loopwarden in a container whose cgroup namespace is not the host's
    /// (e.g. the host's /sys/fs/cgroup as a hostPath volume at
    /// /host/sys/fs/cgroup). It must be a cgroup2 mount of the hierarchy's
    /// root; without it, a child cgroup namespace is refused.
    #[arg(long, value_name = "PATH", env = "LOOPWARDEN_HOST_CGROUP_ROOT")]
    host_cgroup_root: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CliMode {
    Audit,
    Enforce,
}

impl From<CliMode> for Mode {
    fn from(m: CliMode) -> Self {
        match m {
            CliMode::Audit => Mode::Audit,
            CliMode::Enforce => Mode::Enforce,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Run { .. });
    if !daemon {
        // A one-shot command's output piped into `head` ends quietly, as
        // other Unix tools do, not with a panic on EPIPE. The daemon keeps
        // SIGPIPE ignored: a closed stdout is an error it logs and lives
        // through (`report::Reporter::flush`).
        // SAFETY: restoring the default disposition, before any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let diagnostics = match &cli.command {
        Command::Run {
            log_format,
            diagnostics_format,
            ..
        } => diagnostics_format.unwrap_or(*log_format),
        _ => LogFormat::Human,
    };
    if daemon {
        // One malloc arena: the daemon's few threads allocate little, and
        // per-thread arenas would each keep their own freed memory resident.
        // SAFETY: mallopt has no preconditions; called before any thread
        // starts (the diagnostics' below is the first).
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
    // The daemon's diagnostics go through a queue and a thread of their
    // own, so a stalled reader of stderr never holds its event loop.
    let writer = match daemon.then(stderr::Queued::spawn).flatten() {
        Some(queued) => {
            // A panic's message comes after the lines queued before it,
            // which explain it (the process may end with the panic).
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                stderr::flush(std::time::Duration::from_secs(1));
                report(info);
            }));
            BoxMakeWriter::new(queued)
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LOOPWARDEN_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(writer)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr()) && diagnostics == LogFormat::Human,
        )
        .event_format(Diagnostics::new(diagnostics))
        .init();
    let outcome = dispatch(cli.command);
    // What is queued is written before the last word.
    stderr::finish(std::time::Duration::from_secs(2));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loopwarden: error: {e:#}");
            let code = e
                .downcast_ref::<DaemonError>()
                .map_or(daemon::exit::FAILURE, DaemonError::exit_code);
            ExitCode::from(code)
        }
    }
}

/// `check-config`'s refusal of a file a reload would refuse: said as an
/// error, with `run`'s exit code for a bad file.
fn refused(refusal: &str) -> ExitCode {
    eprintln!("loopwarden: error: {refusal}");
    ExitCode::from(daemon::exit::CONFIG)
}

/// Prints what `who`/`conns` found, or their error, and gives their exit code.
fn print(result: Result<Printed, provenance::client::ClientError>) -> ExitCode {
    match result {
        Ok(printed) => {
            print!("{}", printed.text);
            if let Some(note) = printed.note {
                eprintln!("loopwarden: {note}");
            }
            ExitCode::from(printed.code)
        }
        Err(e) => {
            eprintln!("loopwarden: error: {}", loopwarden::error_chain(&e));
            ExitCode::from(provenance::client::exit::ERROR)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            mode,
            log_format,
            diagnostics_format: _,
            repeat_interval,
            run_dir,
            pin_dir,
            replace,
            host_cgroup,
        } => {
            let opts = daemon::Options {
                config,
                mode: mode.map(Mode::from),
                log_format,
                repeat_interval,
                run_dir,
                pin_dir,
                replace,
                host_cgroup_root: host_cgroup.host_cgroup_root,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let outcome = runtime.block_on(daemon::run(opts));
            // A lookup still running on a blocking thread (a query's, stuck on
            // NSS or a hung mount) is not waited for: the exit is done.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            outcome?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach { run_dir, pin_dir } => {
            let removed = daemon::detach(&pin_dir, &run_dir)?;
            if removed.pins.is_empty() {
                println!("nothing pinned in {}", pin_dir.display());
            } else {
                println!(
                    "detached: removed {} pins from {} (loopwarden no longer enforces; the \
                     tracking programs unload within a few seconds)",
                    removed.pins.len(),
                    pin_dir.display()
                );
            }
            if !removed.foreign.is_empty() {
                let shown: Vec<String> = removed
                    .foreign
                    .iter()
                    .take(5)
                    .map(|p| p.display().to_string())
                    .collect();
                let more = removed.foreign.len().saturating_sub(shown.len());
                println!(
                    "left {} entries that are not loopwarden's: {}{}",
                    removed.foreign.len(),
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            pin_dir,
            run_dir,
            json,
            host_cgroup,
        } => {
            let report =
                ops::status::gather(&pin_dir, &run_dir, host_cgroup.host_cgroup_root.as_deref());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.human());
            }
            Ok(ExitCode::from(report.exit_code))
        }
        Command::Doctor { json, host_cgroup } => {
            let report = ops::doctor::run(host_cgroup.host_cgroup_root.as_deref());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.human());
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::CheckConfig {
            file,
            default,
            as_daemon,
            host_cgroup,
        } => {
            let cgroup_root = match host_cgroup.host_cgroup_root.as_deref() {
                Some(path) => loopwarden::kernel::host_cgroup::use_host_root(path)?,
                None => {
                    compat::find_cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
                }
            };
            let path =
                (!default).then(|| file.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH)));
            let checked = ops::check::check(path.as_deref(), as_daemon, cgroup_root)?;
            for warning in &checked.warnings {
                eprintln!("loopwarden: warning: {warning}");
            }
            match checked.outcome {
                Ok(summary) => {
                    print!("{summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(refusal) => Ok(refused(&refusal)),
            }
        }
        Command::Baseline => {
            let host = compat::check_host(None)?;
            let mut programs = Programs::load_baseline()?;
            programs.attach_baseline(&host.cgroup2_root)?;
            eprintln!(
                "baseline ready: lw_baseline4 attached to {}, lw_baseline_receive to {}",
                host.cgroup2_root.display(),
                loopwarden_common::programs::RECEIVE_TRACEPOINT
            );
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                anyhow::Ok(())
            })?;
            drop(programs);
            Ok(ExitCode::SUCCESS)
        }
        Command::Who {
            peer,
            local,
            json,
            run_dir,
            netns,
        } => Ok(print(provenance::client::who(
            &run_dir, peer, local, netns, json,
        ))),
        Command::Conns {
            json,
            run_dir,
            netns,
        } => Ok(print(provenance::client::conns(&run_dir, netns, json))),
        Command::Generate { what, dir } => {
            for path in generate::generate(what, Cli::command(), &dir)
                .with_context(|| format!("writing into {}", dir.display()))?
            {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog => {
            let width = CATALOG.iter().map(|e| e.name.len()).max().unwrap_or(0);
            for entry in CATALOG.iter() {
                // A browser's verdict is the port's `[browsers]` treatment
                // (`port`, as check-config shows it).
                let action = entry.action.map_or("port", |a| a.name());
                println!(
                    "catalog:{:<width$} {:<7} {:<6} exe_name in [{}]  {}",
                    entry.name,
                    format!("{:?}", entry.class).to_lowercase(),
                    action,
                    entry.shown_names().join(", "),
                    entry.why
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
