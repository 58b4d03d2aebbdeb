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
//!
//! [`start`] starts it, up to the ready line; [`services`] opens the query
//! socket and the metrics; [`serve`] is the event loop.

mod detach;
mod fullness;
mod getsockopt;
mod host_addrs;
mod installed;
mod kept_config;
mod lock;
mod pinned_mode;
mod resolving;
mod rings;
mod scope_file;
mod serve;
mod services;
mod start;
pub mod status_file;
mod sweeper;
mod systemd;

use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

pub(crate) use self::scope_file::pinned_scope;
pub use self::{detach::detach, lock::InstanceLock};
use self::{serve::Signals, systemd::notify_systemd_ready};
use crate::{
    config::ConfigError,
    events::LogFormat,
    kernel::{
        btf::BtfError,
        compat::CompatError,
        host_cgroup::HostCgroupError,
        loader::{Cause, LoaderError, errno_in},
        maps::MapsError,
        pins::PinError,
    },
    policy::{Mode, PolicyError},
    provenance::ident::IdentStartError,
};

pub use crate::run_file::DEFAULT_RUN_DIR;
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
    /// The ident responder's `[ident] listen` addresses (or its `netns`)
    /// could not be taken at start.
    #[error("starting the ident responder failed")]
    Ident(#[source] IdentStartError),
    #[error(
        "{what}: a start would put the defaults (audit mode unless --mode says otherwise, and \
         none of the file's rules) in place of the pinned policy, {pinned}; {fix}"
    )]
    WouldWeaken {
        what: String,
        /// What is known of the pinned policy's mode.
        pinned: &'static str,
        fix: &'static str,
    },
    /// A start whose `[protect] netns` names no namespace that exists,
    /// over a pinned policy that judges connects somewhere (see
    /// [`pinned_mode::pinned_judges_somewhere`]).
    #[error(
        "none of the network namespaces [protect] netns names exists (see the warnings): a \
         start would put a policy that judges no connect anywhere in place of the pinned one; \
         make the namespace first, or fix the name"
    )]
    ScopedToNothing,
    #[error(
        "another loopwarden is already running (lock {path} is held{}); stop it first (a \
         daemon for other pins runs beside it with its own --run-dir and --pin-dir)",
        holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default()
    )]
    AlreadyRunning {
        path: PathBuf,
        /// Who holds the lock, when `/proc/locks` names it.
        holder: Option<crate::holder::Holder>,
    },
    #[error(
        "a daemon{} enforces through {}: stop it first (`detach` ends enforcement, so it \
         refuses while a daemon runs; a daemon's exit leaves enforcement pinned)",
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default(),
        path.display()
    )]
    DetachBusy {
        path: PathBuf,
        holder: Option<crate::holder::Holder>,
    },
    #[error(
        "the run directory {} is not private: {why}; make it and the directories above it \
         root's (or this daemon's user's) and writable by no one else (chown root, chmod \
         go-w; one above it may be sticky, as /tmp), or give the daemon another --run-dir",
        path.display()
    )]
    RunDir { path: PathBuf, why: String },
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
    /// The policy file is bad (EX_CONFIG), or an option or address it
    /// names is (`--pin-dir` off bpffs, a `--run-dir` another user may
    /// write, a `--host-cgroup-root` that is not the host's cgroup v2
    /// root, an `[ident] listen` address in use).
    pub const CONFIG: u8 = 78;
    /// The kernel or host lacks something loopwarden needs: cgroup v2, BTF,
    /// a recent enough kernel, or a program the kernel refuses to load
    /// (EX_UNAVAILABLE).
    pub const UNSUPPORTED: u8 = 69;
    /// Not privileged enough (EX_NOPERM): a capability the daemon uses is
    /// not effective, or the kernel refused a load, attach or mount with
    /// `EPERM` (lockdown, an LSM).
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
            DaemonError::Config(_)
            | DaemonError::Policy(_)
            | DaemonError::WouldWeaken { .. }
            | DaemonError::ScopedToNothing => exit::CONFIG,
            DaemonError::Compat(
                CompatError::NotRoot { .. } | CompatError::MissingCapabilities { .. },
            ) => exit::NO_PERMISSION,
            // The operator's option, not the host: named, and not for a
            // restart; but one not readable yet (a mount not in place at
            // boot) may be by the next start.
            DaemonError::Compat(CompatError::HostCgroup(HostCgroupError::Unreadable {
                ..
            })) => exit::FAILURE,
            DaemonError::Compat(CompatError::HostCgroup(_)) => exit::CONFIG,
            DaemonError::Compat(_) | DaemonError::Btf(_) => exit::UNSUPPORTED,
            // The kernel refusing a program: a helper, program type or
            // verifier limit it lacks (a restart would be refused the same
            // way), or by its errno a privilege, or memory.
            DaemonError::Loader(LoaderError::Verify { error, .. }) => {
                match Cause::of_refusal(error) {
                    Cause::Kernel => exit::UNSUPPORTED,
                    Cause::Privilege => exit::NO_PERMISSION,
                    Cause::Memory => exit::FAILURE,
                }
            }
            // A load or attach the kernel refused: by its errno, a feature
            // it lacks (as above), a privilege, or memory (a restart may do).
            DaemonError::Loader(
                e @ (LoaderError::Load(_)
                | LoaderError::Btf(_)
                | LoaderError::Track { .. }
                | LoaderError::Attach { .. }
                | LoaderError::AttachRaw { .. }),
            ) => match Cause::of(e) {
                Cause::Kernel => exit::UNSUPPORTED,
                Cause::Privilege => exit::NO_PERMISSION,
                Cause::Memory => exit::FAILURE,
            },
            DaemonError::AlreadyRunning { .. }
            | DaemonError::DetachBusy { .. }
            | DaemonError::Pins(PinError::Busy { .. }) => exit::ALREADY_RUNNING,
            // A pin directory off bpffs is the operator's to fix (its
            // `--pin-dir`), as are a mount this process may not make and a
            // bpffs its sandbox made read-only; a kernel without bpffs
            // lacks a feature. None is for a restart.
            DaemonError::Pins(
                PinError::NotBpffs { .. }
                | PinError::PrivateMountNamespace
                | PinError::ReadOnly { .. },
            )
            | DaemonError::RunDir { .. } => exit::CONFIG,
            DaemonError::Pins(e @ PinError::Mount { .. }) => match Cause::of(e) {
                Cause::Privilege => exit::NO_PERMISSION,
                Cause::Kernel => exit::UNSUPPORTED,
                Cause::Memory => exit::FAILURE,
            },
            // An address of `[ident] listen` another socket holds, or that
            // is no address to listen on: the file's to fix; a port below
            // 1024 without the capability: the privileges'. An address not
            // configured yet (the unit starts before the network), a
            // `netns` file another unit makes: a restart's.
            DaemonError::Ident(e) => match errno_in(e) {
                Some(libc::EACCES | libc::EPERM) => exit::NO_PERMISSION,
                Some(libc::EADDRINUSE | libc::EINVAL) => exit::CONFIG,
                _ => exit::FAILURE,
            },
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
    /// a line per report (see [`crate::events::report`]).
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

/// Runs the daemon until SIGINT or SIGTERM. Enforcement stays pinned when
/// it returns: only `loopwarden detach` removes it.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let started = Instant::now();
    // Handlers first: a signal during start-up is acted on once ready,
    // instead of killing the process with its default action.
    let signals = Signals::install()?;
    raise_open_files_limit();
    let mut running = start::start(&opts, started)?;
    // Removed before `running` lets the locks go (locals drop in reverse).
    let _query = running.query_socket(&opts.run_dir);
    let _metrics = running.metrics(&opts.run_dir, started);
    notify_systemd_ready();
    running.serve(signals, &opts.run_dir).await
}

/// Raises the soft limit of open files to the hard one. A sweep holds a
/// socket-diagnostics socket in every network namespace it looks in, and
/// the query, ident and metrics listeners one a client: the soft limit's
/// usual default, 1,024 (kept low for `select(2)`, which this process does
/// not use), would fail them, and everything else the daemon opens with
/// them, on a host with a thousand namespaces. Best effort: the limit
/// stays as it was if it cannot be raised.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur >= limit.rlim_max
    {
        return;
    }
    let was = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        tracing::warn!(
            "raising the open files limit from {was} to {} failed: {}",
            limit.rlim_max,
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use aya::{programs::ProgramError, sys::SyscallError};

    use super::*;

    #[test]
    fn a_refused_attach_exits_by_what_its_errno_says() {
        let attach = |errno| {
            DaemonError::Loader(LoaderError::Attach {
                name: "lw_connect4",
                path: "/sys/fs/cgroup".into(),
                source: ProgramError::SyscallError(SyscallError {
                    call: "bpf_link_create",
                    io_error: io::Error::from_raw_os_error(errno),
                }),
            })
        };
        // A restart cannot mend a kernel or privileges it lacks (the unit's
        // RestartPreventExitStatus), and may mend a memory shortage.
        assert_eq!(attach(libc::EINVAL).exit_code(), exit::UNSUPPORTED);
        assert_eq!(attach(libc::EPERM).exit_code(), exit::NO_PERMISSION);
        assert_eq!(attach(libc::ENOMEM).exit_code(), exit::FAILURE);
    }

    #[test]
    fn ident_start_errors_exit_by_what_mends_them() {
        let ident = |errno| {
            DaemonError::Ident(IdentStartError::OwnNetns(io::Error::from_raw_os_error(
                errno,
            )))
        };
        assert_eq!(ident(libc::EADDRINUSE).exit_code(), exit::CONFIG);
        assert_eq!(ident(libc::EACCES).exit_code(), exit::NO_PERMISSION);
        // Not configured yet, or a file another unit makes: a restart may do.
        assert_eq!(ident(libc::EADDRNOTAVAIL).exit_code(), exit::FAILURE);
        assert_eq!(ident(libc::ENOENT).exit_code(), exit::FAILURE);
    }

    #[test]
    fn bpffs_problems_exit_with_what_no_restart_mends() {
        let mount = |errno| {
            DaemonError::Pins(PinError::Mount {
                source: io::Error::from_raw_os_error(errno),
            })
        };
        assert_eq!(mount(libc::EPERM).exit_code(), exit::NO_PERMISSION);
        assert_eq!(mount(libc::ENODEV).exit_code(), exit::UNSUPPORTED);
        let elsewhere = DaemonError::Pins(PinError::NotBpffs {
            path: "/tmp/pins".into(),
        });
        assert_eq!(elsewhere.exit_code(), exit::CONFIG);
        let private = DaemonError::Pins(PinError::PrivateMountNamespace);
        assert_eq!(private.exit_code(), exit::CONFIG);
        let read_only = |errno| {
            DaemonError::Pins(PinError::io(
                "creating",
                "/sys/fs/bpf/loopwarden".into(),
                io::Error::from_raw_os_error(errno),
            ))
        };
        assert_eq!(read_only(libc::EROFS).exit_code(), exit::CONFIG);
        assert_eq!(read_only(libc::EIO).exit_code(), exit::FAILURE);
        // Another daemon pinned a set and went while this start looked: the
        // next start adopts it, so a supervisor must restart.
        let since = DaemonError::Pins(PinError::PinnedSince {
            path: "/sys/fs/bpf/loopwarden".into(),
        });
        assert_eq!(since.exit_code(), exit::FAILURE);
    }

    #[test]
    fn a_refused_program_exits_by_what_its_errno_says() {
        let refused = |errno, log: &str| {
            DaemonError::Loader(LoaderError::Verify {
                name: "lw_connect4",
                error: ProgramError::LoadError {
                    io_error: io::Error::from_raw_os_error(errno),
                    verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
                },
            })
        };
        let log = "R1 invalid mem access 'scalar'";
        assert_eq!(refused(libc::EACCES, log).exit_code(), exit::UNSUPPORTED);
        assert_eq!(refused(libc::EINVAL, log).exit_code(), exit::UNSUPPORTED);
        assert_eq!(refused(libc::EPERM, "").exit_code(), exit::NO_PERMISSION);
        assert_eq!(refused(libc::EACCES, "").exit_code(), exit::NO_PERMISSION);
        assert_eq!(refused(libc::ENOMEM, log).exit_code(), exit::FAILURE);
    }
}
