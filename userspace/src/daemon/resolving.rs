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
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::mpsc as async_mpsc;
use tracing::{info, warn};

use super::{
    installed::{Source, compile_policy, host_addresses, read_fresh},
    status_file::{self, Waiting},
};
use crate::{
    config::Config,
    policy::{CompiledPolicy, Mode},
    resolve::HostResolver,
};

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
    },
    /// SIGHUP: the source picked again (`--config`, else the default path
    /// if it exists, else the embedded default), read and compiled.
    Reload {
        config_arg: Option<PathBuf>,
        /// The source of the policy in force.
        was: Source,
        previous: Option<CompiledPolicy>,
    },
}

/// A policy compiled, ready to install.
pub(super) struct Compiled {
    pub(super) policy: CompiledPolicy,
    pub(super) config: Config,
    /// The host addresses to install with it.
    pub(super) addrs: Vec<IpAddr>,
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

/// The thread, and the one compile it may have under way.
pub(super) struct Compiles {
    jobs: mpsc::Sender<Job>,
    done: async_mpsc::UnboundedReceiver<Done>,
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
        let (tell, done) = async_mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("lw-resolve".into())
            .spawn(move || {
                // Ends when the loop drops its end (the daemon exits) or
                // stops reading.
                while let Ok(job) = asked.recv() {
                    if tell.send(run(job, &resolver, mode)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            jobs,
            done,
            busy: None,
            reload_waiting: false,
            slow_said: false,
        })
    }

    /// Whether a compile is under way.
    pub(super) fn busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Asks for `job` (none may be under way).
    pub(super) fn ask(&mut self, job: Job) {
        let what = match job {
            Job::Refresh { .. } => "the 1 s re-resolution of the policy",
            Job::Reload { .. } => "the reload",
        };
        // A thread that is gone is found by `done`.
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
            info!("SIGHUP: the reload starts once {what} under way is done");
        }
        self.reload_waiting = true;
    }

    /// Whether a reload waits to be asked for (and no longer does).
    pub(super) fn take_reload(&mut self) -> bool {
        std::mem::take(&mut self.reload_waiting)
    }

    /// The next compile done; `None` once the thread has ended (it
    /// panicked).
    pub(super) async fn done(&mut self) -> Option<Done> {
        let done = self.done.recv().await;
        self.busy = None;
        if self.slow_said {
            status_file::waiting(None);
        }
        done
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

/// Does `job`.
fn run(job: Job, resolver: &HostResolver, mode: Option<Mode>) -> Done {
    let with_addrs = |policy: CompiledPolicy, config: Config| Compiled {
        addrs: host_addresses(&policy),
        policy,
        config,
    };
    match job {
        Job::Refresh { config, previous } => {
            let begun = Instant::now();
            let outcome = compile_policy(&config, resolver, mode, previous.as_ref())
                .map(|policy| with_addrs(policy, *config))
                .map_err(|e| format!("re-resolving the policy failed, {KEEPING}: {e}"));
            Done::Refresh {
                outcome,
                took: begun.elapsed(),
            }
        }
        Job::Reload {
            config_arg,
            was,
            previous,
        } => {
            let source = Source::pick(config_arg.as_deref());
            info!("SIGHUP: reloading {}", source.describe());
            let outcome = read_fresh(&was, &source, resolver, mode, previous.as_ref())
                .map(|(policy, config)| with_addrs(policy, config));
            Done::Reload { source, outcome }
        }
    }
}
