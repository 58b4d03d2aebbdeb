//! `loopwarden`: the command line.

mod cli;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};
use cli::{Cli, Command};
use loopwarden::{
    catalog::CATALOG,
    config::DEFAULT_CONFIG_PATH,
    daemon::{self, DaemonError},
    events::{LogFormat, diagnostics::Diagnostics, stderr},
    kernel::{compat, loader::Programs},
    ops::{self, generate},
    policy::Mode,
    provenance::{self, client::Printed},
};
use tracing_subscriber::{EnvFilter, fmt::writer::BoxMakeWriter};

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

/// `check-config`'s problems, a line each (with its cause), but not
/// thousands of lines.
fn say_problems<'a>(problems: impl ExactSizeIterator<Item = &'a dyn std::error::Error>) {
    const SHOWN: usize = 100;
    let count = problems.len();
    for problem in problems.take(SHOWN) {
        eprintln!("loopwarden: error: {}", loopwarden::error_chain(problem));
    }
    if count > SHOWN {
        eprintln!("loopwarden: error: and {} more problems", count - SHOWN);
    }
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
            run_dir,
            pin_dir,
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
            let daemon = as_daemon.then_some(ops::check::Running {
                run_dir: &run_dir,
                pin_dir: &pin_dir,
            });
            let checked = match ops::check::check(path.as_deref(), daemon, cgroup_root) {
                Ok(checked) => checked,
                // Every problem the file has, a line each.
                Err(DaemonError::Config(e)) => {
                    say_problems(
                        e.problems()
                            .into_iter()
                            .map(|p| p as &dyn std::error::Error),
                    );
                    return Ok(ExitCode::from(daemon::exit::CONFIG));
                }
                Err(DaemonError::Policy(e)) => {
                    say_problems(
                        e.problems()
                            .into_iter()
                            .map(|p| p as &dyn std::error::Error),
                    );
                    return Ok(ExitCode::from(daemon::exit::CONFIG));
                }
                Err(e) => return Err(e.into()),
            };
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
