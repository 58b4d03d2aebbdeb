//! The policy's compiles after start, off the event loop: a thread of its
//! own reads the file (SIGHUP), resolves what it names (paths, users,
//! cgroups, namespaces, the host's addresses) and hands back the policy
//! for the loop to install. A policy path on a filesystem that stops
//! answering (an NFS server that is down, a FUSE server that hangs) then
//! holds up that thread, not the reports, the query socket, the ident
//! responder or the signals.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use nix::{fcntl::OFlag, unistd::pipe2};
use tokio::io::unix::AsyncFd;

use tracing::{debug, info, warn};

use super::{
    host_addrs::host_addresses,
    installed::{Source, compile_policy, read_fresh},
    kept_config::kept_override,
    status_file::{self, Waiting},
};
use crate::{
    config::Config,
    policy::{CompiledPolicy, Mode},
    resolve::{HostResolver, isolate, stall},
};

/// What a refresh's compile is called in the daemon's lines.
const REFRESH: &str = "the 1 s re-resolution of the policy";
/// What a reload's is called.
const RELOAD: &str = "the reload";

/// How long a compile may take before the loop says it waits for one.
const SLOW: Duration = Duration::from_secs(10);

/// What installing a refreshed policy keeps when its compile fails.
pub(super) const KEEPING: &str = "keeping the installed one (executables upgraded, cgroups \
                                  created and host addresses changed since are not picked up \
                                  until this is fixed or the config reloaded)";

/// A compile asked of the thread.
pub(super) enum Job {
    /// The 1 s re-resolution of the config in force.
    Refresh {
        config: Box<Config>,
        previous: Option<CompiledPolicy>,
        /// `config` is a predecessor's, kept ([`super::kept_config`]):
        /// `--mode` overrides its mode only to enforce.
        kept: bool,
    },
    /// SIGHUP: the source picked again (`--config`, else the default path
    /// if it exists, else the embedded default), read and compiled.
    Reload {
        config_arg: Option<PathBuf>,
        /// The source of the policy in force.
        was: Source,
        previous: Option<CompiledPolicy>,
        /// The port the metrics listener the daemon started with serves
        /// on, if any: protected whatever the file says now (it is bound
        /// until a restart).
        metrics_port: Option<u16>,
    },
}

/// A policy compiled, ready to install.
pub(super) struct Compiled {
    pub(super) policy: CompiledPolicy,
    pub(super) config: Config,
    /// The host addresses to install with it (`None`: listing them
    /// failed, and those in force stay).
    pub(super) addrs: Option<Vec<IpAddr>>,
}

/// What the thread hands back: the outcome, or why there is no policy to
/// install (said by the loop).
pub(super) enum Done {
    Refresh {
        outcome: Result<Compiled, String>,
        /// How long the compile took.
        took: Duration,
    },
    Reload {
        source: Source,
        outcome: Result<Compiled, String>,
    },
}

/// The resolving thread has ended.
pub(super) struct Gone;

/// The thread, and the one compile it may have under way.
pub(super) struct Compiles {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    /// The read end of a pipe the thread writes a byte to with each
    /// compile done: what wakes the loop (the thread holds none of the
    /// loop's own descriptors, its runtime's waker among them).
    wake: AsyncFd<OwnedFd>,
    /// Set when the thread ends (it panicked).
    ended: Arc<AtomicBool>,
    /// When the compile under way was asked for, and what it is.
    busy: Option<(Instant, &'static str)>,
    /// A SIGHUP came while a compile was under way: its reload is asked
    /// for once that one is done.
    reload_waiting: bool,
    /// The wait was said (once per compile).
    slow_said: bool,
}

impl Compiles {
    /// Starts the thread, compiling with `resolver` and the `--mode`
    /// override `mode`.
    pub(super) fn spawn(resolver: HostResolver, mode: Option<Mode>) -> io::Result<Self> {
        let (jobs, asked) = mpsc::channel::<Job>();
        let (tell, done) = mpsc::channel();
        let (wake, woken) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let wake = super::rings::watch(wake, "watching the policy's resolving thread")
            .map_err(io::Error::other)?;
        let ended = Arc::new(AtomicBool::new(false));
        let on_end = EndFlag(Arc::clone(&ended));
        let write_end = woken.as_raw_fd();
        let (unshared, table) = mpsc::channel::<bool>();
        std::thread::Builder::new()
            .name("lw-resolve".into())
            .spawn(move || {
                let _on_end = on_end;
                // Signals are the loop's (a SIGHUP handled here would be
                // lost), and a compile can wait for ever.
                if let Err(e) = isolate::block_signals() {
                    warn!("the policy's resolving thread could not block signals ({e})");
                }
                let private = isolate::private_descriptors(Some(woken.as_raw_fd()));
                if let Err(e) = &private {
                    warn!(
                        "the policy's resolving thread shares the daemon's descriptors ({e}): \
                         should a compile hang in a wait no signal ends, the daemon's locks \
                         outlive its exit"
                    );
                }
                let _ = unshared.send(private.is_ok());
                // Ends when the loop drops its end (the daemon exits) or
                // stops reading.
                while let Ok(job) = asked.recv() {
                    if tell.send(run(job, &resolver, mode)).is_err() {
                        break;
                    }
                    // A full pipe has woken the loop already.
                    let _ = nix::unistd::write(&woken, &[1]);
                }
            })?;
        // The write end is the thread's: once it has a table of its own,
        // the copy left in ours goes.
        if table.recv() == Ok(true) {
            // SAFETY: our table's copy of the pipe's write end, which
            // nothing of this thread owns (the thread's `OwnedFd` is its
            // own table's).
            unsafe { libc::close(write_end) };
        }
        Ok(Self {
            jobs,
            done,
            wake,
            ended,
            busy: None,
            reload_waiting: false,
            slow_said: false,
        })
    }

    /// Whether a compile is under way.
    pub(super) fn busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Whether the thread has ended (it panicked) with nothing left to
    /// hand over.
    pub(super) fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed) && self.busy.is_some()
    }

    /// What is under way, if anything (a reload waiting to follow it
    /// counts as a reload).
    pub(super) fn under_way(&self) -> Option<&'static str> {
        match self.busy {
            _ if self.reload_waiting => Some(RELOAD),
            Some((_, what)) => Some(what),
            None => None,
        }
    }

    /// Asks for `job` (none may be under way).
    pub(super) fn ask(&mut self, job: Job) {
        let what = match job {
            Job::Refresh { .. } => REFRESH,
            Job::Reload { .. } => RELOAD,
        };
        // A thread that is gone is found by `try_done`.
        if self.jobs.send(job).is_ok() {
            self.busy = Some((Instant::now(), what));
            self.slow_said = false;
        }
    }

    /// SIGHUP while a compile is under way: the reload follows it.
    pub(super) fn reload_after(&mut self) {
        if let Some((_, what)) = self.busy
            && !self.reload_waiting
        {
            // Behind a refresh that is not slow, for a few milliseconds:
            // said only when asked for.
            if what == REFRESH && !self.slow_said {
                debug!("SIGHUP: the reload starts once {what} under way is done");
            } else {
                info!("SIGHUP: the reload starts once {what} under way is done");
            }
        }
        self.reload_waiting = true;
    }

    /// Whether a reload waits to be asked for (and no longer does).
    pub(super) fn take_reload(&mut self) -> bool {
        std::mem::take(&mut self.reload_waiting)
    }

    /// Waits until the thread says a compile is done (then see
    /// [`Compiles::try_done`]).
    pub(super) async fn woken(&self) -> io::Result<()> {
        let mut guard = self.wake.readable().await?;
        let mut bytes = [0_u8; 64];
        while matches!(nix::unistd::read(self.wake.get_ref(), &mut bytes), Ok(n) if n > 0) {}
        guard.clear_ready();
        Ok(())
    }

    /// The compile done, if one is; `Err` once the thread has ended (it
    /// panicked).
    pub(super) fn try_done(&mut self) -> Result<Option<Done>, Gone> {
        let done = match self.done.try_recv() {
            Ok(done) => done,
            Err(_) if self.ended.load(Ordering::Relaxed) => return Err(Gone),
            Err(_) => return Ok(None),
        };
        self.busy = None;
        if self.slow_said {
            status_file::waiting(None);
        }
        Ok(Some(done))
    }

    /// Says, once per compile, that one has been under way for longer
    /// than [`SLOW`]: what the policy names is on a filesystem or a
    /// directory service that does not answer.
    pub(super) fn say_if_slow(&mut self) {
        if let Some((since, what)) = self.busy
            && !self.slow_said
            && since.elapsed() >= SLOW
        {
            warn!(
                "{what} has waited {} s for the system so far (a path the policy names on a \
                 filesystem that does not answer, a hung NFS or FUSE server, or a directory \
                 service that does not answer NSS): the policy in force stays, reports and \
                 queries go on",
                since.elapsed().as_secs()
            );
            self.slow_said = true;
            status_file::waiting(Some(Waiting {
                what: what.to_owned(),
                since: status_file::rfc3339(SystemTime::now() - since.elapsed()),
            }));
        }
    }
}

/// Sets its flag when dropped: the thread has ended, however it did.
struct EndFlag(Arc<AtomicBool>);

impl Drop for EndFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Does `job`.
fn run(job: Job, resolver: &HostResolver, mode: Option<Mode>) -> Done {
    let with_addrs = |policy: CompiledPolicy, config: Config| Compiled {
        addrs: host_addresses(&policy),
        policy,
        config,
    };
    match job {
        Job::Refresh {
            config,
            previous,
            kept,
        } => {
            let begun = Instant::now();
            let turned_away = stall::turned_away();
            let mode = if kept { kept_override(mode) } else { mode };
            let outcome = compile_policy(&config, resolver, mode, previous.as_ref(), true)
                .map_err(|e| format!("re-resolving the policy failed, {KEEPING}: {e}"))
                .and_then(|policy| {
                    // A path left out for a filesystem that does not
                    // answer would weaken the policy in force (a rule's
                    // file, a catalogued copy no longer known) until it
                    // answers again: the one in force stays meanwhile.
                    if previous.is_some() && stall::turned_away() > turned_away {
                        Err(format!(
                            "re-resolving the policy read nothing on a filesystem that does \
                             not answer (said above), {KEEPING}"
                        ))
                    } else {
                        Ok(with_addrs(policy, *config))
                    }
                });
            Done::Refresh {
                outcome,
                took: begun.elapsed(),
            }
        }
        Job::Reload {
            config_arg,
            was,
            previous,
            metrics_port,
        } => {
            let source = Source::pick(config_arg.as_deref());
            info!("SIGHUP: reloading {}", source.describe());
            let outcome = read_fresh(
                &was,
                &source,
                resolver,
                mode,
                previous.as_ref(),
                metrics_port,
            )
            .map(|(policy, config)| with_addrs(policy, config));
            Done::Reload { source, outcome }
        }
    }
}
