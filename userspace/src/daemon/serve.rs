//! The event loop: reports from the ring buffers, the 1 s refresh
//! (counters, the policy resolved again, the systemd watchdog), SIGHUP
//! reloads (both compiled off the loop, [`super::resolving`], and
//! installed on it); at SIGINT or SIGTERM the last reports and the run's
//! totals.

use std::time::{Duration, Instant};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::MissedTickBehavior,
};
use tracing::{info, warn};

use super::{
    DaemonError, io_err,
    resolving::{Done, Gone},
    rings::{drain, read, readable},
    start::Running,
    systemd::{notify_systemd, systemd_watchdog},
};

/// How often the policy is re-resolved and kernel counters are read.
const REFRESH: Duration = Duration::from_secs(1);
/// How often queued reports are collected: the kernel wakes the daemon at
/// once only for refusals and for a backlog (see `ebpf/src/connect/record.rs`).
const DRAIN: Duration = Duration::from_millis(100);
/// How long the exit waits for a sweep under way to stop and write its
/// lines (it stops before its next cut; one cut is a netlink round trip).
const SWEEP_WAIT: Duration = Duration::from_secs(2);

/// The signals the daemon handles.
pub(super) struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Self, DaemonError> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())
                .map_err(io_err("installing SIGINT handler"))?,
            terminate: signal(SignalKind::terminate())
                .map_err(io_err("installing SIGTERM handler"))?,
            hangup: signal(SignalKind::hangup()).map_err(io_err("installing SIGHUP handler"))?,
        })
    }
}

impl Running {
    /// Runs until SIGINT or SIGTERM.
    pub(super) async fn serve(
        &mut self,
        signals: Signals,
        run_dir: &std::path::Path,
    ) -> Result<(), DaemonError> {
        let Self {
            installed,
            reporter,
            counters,
            stats,
            events,
            denials,
            logger,
            pins,
            getsockopt,
            programs,
            compiles,
            ..
        } = self;
        let Signals {
            interrupt: mut sigint,
            terminate: mut sigterm,
            hangup: mut sighup,
        } = signals;
        // Kept alive from the refresh tick: a stuck event loop stops it, and
        // systemd restarts the daemon (enforcement stays pinned meanwhile).
        let mut watchdog = systemd_watchdog();
        let mut tick = interval(REFRESH);
        let mut drain_tick = interval(DRAIN);
        let mut summary_tick = reporter.interval().map(interval);
        // A refresh's cost: its tick on this thread, and the compile it
        // asked for on the resolving thread with its install, once done.
        let mut refresh_cost = Cost::default();
        let mut asking_tick: Option<Duration> = None;

        // An error ends the loop as a signal does, so what was read is
        // still reported (below) before the daemon exits with it.
        let ended: Result<(), DaemonError> = loop {
            tokio::select! {
                guard = denials.readable_mut() => {
                    let mut guard = match guard {
                        Ok(guard) => guard,
                        Err(e) => break Err(io_err("waiting for refusals")(e)),
                    };
                    guard.clear_ready();
                    drain(&mut [guard.get_inner_mut(), events.get_mut()], reporter);
                }
                guard = events.readable_mut() => {
                    let mut guard = match guard {
                        Ok(guard) => guard,
                        Err(e) => break Err(io_err("waiting for events")(e)),
                    };
                    guard.clear_ready();
                    read(&mut [denials.get_mut(), guard.get_inner_mut()], reporter);
                }
                guard = readable(logger) => {
                    match guard {
                        Ok(Some(mut guard)) => {
                            guard.get_inner_mut().flush();
                            guard.clear_ready();
                        }
                        Ok(None) => {}
                        Err(e) => break Err(io_err("waiting for kernel log records")(e)),
                    }
                }
                _ = drain_tick.tick() => {
                    drain(&mut [denials.get_mut(), events.get_mut()], reporter);
                }
                woken = compiles.woken() => {
                    if let Err(e) = woken {
                        break Err(io_err("waiting for the policy's resolving thread")(e));
                    }
                    // Installed with the rings just emptied, as the refresh is.
                    drain(&mut [denials.get_mut(), events.get_mut()], reporter);
                    let done = match compiles.try_done() {
                        Ok(Some(done)) => done,
                        Ok(None) => continue,
                        Err(Gone) => {
                            break Err(DaemonError::Io {
                                what: "the policy's resolving thread".into(),
                                source: std::io::Error::other("it ended"),
                            })
                        }
                    };
                    match done {
                        Done::Refresh { outcome, took } => {
                            let begun = Instant::now();
                            installed.refreshed(outcome, reporter.enricher());
                            let tick = asking_tick.take().unwrap_or_default();
                            refresh_cost.add(tick + took + begun.elapsed());
                        }
                        Done::Reload { source, outcome } => {
                            installed.reloaded(source, outcome, reporter.enricher());
                            getsockopt.follow(programs, pins, installed.config.as_ref(), &installed.resolver);
                        }
                    }
                    if compiles.take_reload() {
                        compiles.ask(installed.reload_job());
                    }
                }
                _ = every(&mut summary_tick) => {
                    drain(&mut [denials.get_mut(), events.get_mut()], reporter);
                    reporter.summarise();
                }
                _ = tick.tick() => {
                    // The refresh runs on this thread: it starts with the
                    // rings empty, so all their room covers it.
                    drain(&mut [denials.get_mut(), events.get_mut()], reporter);
                    let begun = Instant::now();
                    counters.report(stats);
                    reporter.say_unwritten();
                    crate::events::stderr::say_dropped();
                    reporter.publish_tally();
                    let mut asked = false;
                    if compiles.busy() {
                        // One that ended without a word (it panicked).
                        if compiles.ended() {
                            break Err(DaemonError::Io {
                                what: "the policy's resolving thread".into(),
                                source: std::io::Error::other("it ended"),
                            });
                        }
                        compiles.say_if_slow();
                    } else if let Some(job) = installed.refresh_job() {
                        compiles.ask(job);
                        asked = true;
                    }
                    getsockopt.follow(programs, pins, installed.config.as_ref(), &installed.resolver);
                    if asked {
                        asking_tick = Some(begun.elapsed());
                    } else {
                        refresh_cost.add(begun.elapsed());
                    }
                    if reporter.take_busy() {
                        crate::heap::release();
                    }
                    // Without it no policy switch cuts what it no longer
                    // admits: a restart (the pins enforce meanwhile) brings
                    // it back.
                    if !installed.sweeper.running() {
                        break Err(DaemonError::Io {
                            what: "the connection sweeper".into(),
                            source: std::io::Error::other("its thread ended"),
                        });
                    }
                    if watchdog && let Err((path, e)) = notify_systemd(b"WATCHDOG=1") {
                        warn!("the systemd watchdog at {path} is no longer fed: {e}");
                        watchdog = false;
                    }
                }
                _ = sighup.recv() => {
                    if compiles.busy() {
                        compiles.reload_after();
                    } else {
                        compiles.ask(installed.reload_job());
                    }
                }
                _ = sigint.recv() => { info!("SIGINT: exiting"); break Ok(()); }
                _ = sigterm.recv() => { info!("SIGTERM: exiting"); break Ok(()); }
            }
        };
        // A second SIGINT or SIGTERM ends the process at once, should the
        // exit below wait too long (a lookup stuck on NSS or a hung mount).
        // Not as a pid namespace's init (the DaemonSet's container), whose
        // signals left at their default the kernel ignores.
        second_signal_kills();
        // A compile under way is left to its thread, which the exit ends.
        if let Some(what) = compiles.under_way() {
            info!("{what} under way is abandoned: the daemon exits");
        }
        // The cuts of a sweep under way are reported before we go: it stops
        // before its next cut.
        if !installed.sweeper.finish(SWEEP_WAIT) {
            warn!(
                "the connection sweep under way did not stop within {SWEEP_WAIT:?}: the audit \
                 lines of what it cut may be missing"
            );
        }
        // Whatever is still queued is reported before we go.
        drain(&mut [denials.get_mut(), events.get_mut()], reporter);
        reporter.summarise();
        reporter.finish();
        counters.report(stats);
        let totals = reporter.totals();
        info!(
            reports = totals.reports,
            lines = totals.lines,
            unwritten_lines = totals.unwritten,
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
            "exiting; enforcement stays attached and pinned in {} (`{}` removes it)",
            pins.root().display(),
            crate::ops::command("detach", pins.root(), Some(run_dir))
        );
        ended
    }
}

/// An interval that, after a stall, ticks once and goes on from then
/// (tokio's default fires every missed tick back to back, each refresh
/// resolving the policy again).
fn interval(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Gives SIGINT and SIGTERM their default action back: the daemon is on its
/// way out, and another of them ends it at once.
fn second_signal_kills() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: setting a signal's disposition to the default has no
        // preconditions; tokio's handler for it is no longer waited on.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
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
