//! What can go wrong loading and attaching the programs, and what to do
//! about it.

use std::io;

use aya::{BtfError, EbpfError, programs::ProgramError};

use crate::kernel::{compat::MIN_KERNEL, pins::PinError};

/// Errors loading or attaching the programs.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("loading the eBPF object failed ({})", Cause::of(.0).hint())]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program named {name}")]
    MissingProgram { name: &'static str },
    /// Made by [`LoaderError::verify`]. No `source`: aya's error holds
    /// the verifier's whole log (up to 16 MiB), which the message would
    /// print again; [`refusal`] names its errno and the log's last lines.
    #[error("the kernel refused program {name}: {}", refusal(.error))]
    Verify {
        name: &'static str,
        error: ProgramError,
    },
    #[error("opening the cgroup {path} failed")]
    OpenCgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {name} to the cgroup v2 root {path} failed")]
    Attach {
        name: &'static str,
        path: String,
        #[source]
        source: ProgramError,
    },
    #[error(
        "attaching {name} to the cgroup {path} failed (cgroup sockopt programs need \
         CONFIG_CGROUP_BPF)"
    )]
    AttachRaw {
        name: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("pinning the link of {name} at {path} failed: {message}")]
    PinLink {
        name: &'static str,
        path: String,
        message: String,
    },
    #[error(
        "putting {name} into the pinned link {path} failed (opening the pin, or the kernel's \
         BPF_LINK_UPDATE); the previously pinned program keeps enforcing"
    )]
    LinkUpdate {
        name: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the eBPF object cannot be parsed: {0}")]
    Object(String),
    #[error(
        "reading the kernel's BTF (/sys/kernel/btf/vmlinux) for the tracking programs failed \
         (the kernel needs CONFIG_DEBUG_INFO_BTF)"
    )]
    Btf(#[source] BtfError),
    #[error(
        "attaching {name} to the tracepoint {tracepoint} failed (tp_btf programs need Linux \
         5.5+ with BTF)"
    )]
    Track {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// What the errno under a failed load, attach or mount says is wrong: the
/// kernel (a missing feature: a restart will not help), the privileges, or
/// the memory at hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Kernel,
    Privilege,
    Memory,
}

impl Cause {
    /// The cause the first errno in `err`'s chain names; the kernel's when
    /// there is none (BTF relocations, an object the kernel cannot take).
    pub fn of(err: &(dyn std::error::Error + 'static)) -> Self {
        match errno_in(err) {
            Some(libc::EPERM | libc::EACCES) => Cause::Privilege,
            Some(libc::ENOMEM | libc::EAGAIN) => Cause::Memory,
            _ => Cause::Kernel,
        }
    }

    /// What to do about it, for an error message.
    pub fn hint(self) -> &'static str {
        match self {
            Cause::Kernel => "the kernel needs CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF",
            Cause::Privilege => {
                "not permitted: run as root with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and \
                 CAP_SYS_ADMIN, and check the kernel lockdown mode"
            }
            Cause::Memory => {
                "out of memory: a memory limit (the unit's or the container's cgroup) is too \
                 low for the maps"
            }
        }
    }
}

/// The first OS error number in `err` and its sources.
pub fn errno_in(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        next = e.source();
    }
    None
}

/// How many lines of the verifier's log a refusal shows: its last ones,
/// which say why (the whole log is logged at debug level).
const VERIFIER_TAIL: usize = 20;

impl LoaderError {
    /// A program `name` the kernel refused to load (or that could not be
    /// given to it), its verifier's whole log at debug level.
    pub fn verify(name: &'static str) -> impl FnOnce(ProgramError) -> LoaderError {
        move |error| {
            if let ProgramError::LoadError { verifier_log, .. } = &error {
                tracing::debug!("the verifier's log of {name}:\n{verifier_log}");
            }
            LoaderError::Verify { name, error }
        }
    }
}

impl Cause {
    /// The cause of a refused program load: `EPERM` the privileges (no
    /// `CAP_BPF`, lockdown); `EACCES` too when the verifier wrote nothing
    /// (an LSM refused before it ran), but the kernel's when it did (the
    /// verifier rejects many programs with `EACCES`); `ENOMEM` the memory;
    /// anything else the kernel's.
    pub fn of_refusal(error: &ProgramError) -> Self {
        match error {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => match io_error.raw_os_error() {
                Some(libc::EPERM) => Cause::Privilege,
                Some(libc::EACCES) if verifier_log.to_string().trim().is_empty() => {
                    Cause::Privilege
                }
                Some(libc::ENOMEM) => Cause::Memory,
                _ => Cause::Kernel,
            },
            other => Cause::of(other),
        }
    }
}

/// What a refused program load says: the syscall's error, what to do,
/// and the verifier log's last lines.
fn refusal(error: &ProgramError) -> String {
    let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = error
    else {
        return crate::error_chain(error);
    };
    let hint = match Cause::of_refusal(error) {
        Cause::Kernel => format!(
            "the kernel lacks something the program needs: loopwarden needs Linux {}.{} or \
             later with BTF; `loopwarden doctor` names what is missing",
            MIN_KERNEL.0, MIN_KERNEL.1
        ),
        cause => cause.hint().to_owned(),
    };
    let log = verifier_log.to_string();
    let lines: Vec<&str> = log.lines().filter(|line| !line.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("{io_error} ({hint}); the verifier wrote no log");
    }
    let tail = &lines[lines.len().saturating_sub(VERIFIER_TAIL)..];
    format!(
        "{io_error} ({hint}); the last {} of the verifier's {} log lines (all of them with \
         LOOPWARDEN_LOG=debug):\n{}",
        tail.len(),
        lines.len(),
        tail.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load error as aya reports one: the syscall's errno under two
    /// layers.
    fn load_error(errno: i32) -> LoaderError {
        LoaderError::Track {
            name: "lw_exec",
            tracepoint: "sched_process_exec",
            source: ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_raw_tracepoint_open",
                io_error: io::Error::from_raw_os_error(errno),
            }),
        }
    }

    #[test]
    fn the_errno_under_a_failure_names_its_cause() {
        assert_eq!(Cause::of(&load_error(libc::EPERM)), Cause::Privilege);
        assert_eq!(Cause::of(&load_error(libc::ENOMEM)), Cause::Memory);
        assert_eq!(Cause::of(&load_error(libc::EINVAL)), Cause::Kernel);
        assert_eq!(errno_in(&load_error(libc::EACCES)), Some(libc::EACCES));
        // No errno at all: the kernel's (a relocation it cannot take).
        let bare = LoaderError::Object("bad".into());
        assert_eq!(errno_in(&bare), None);
        assert_eq!(Cause::of(&bare), Cause::Kernel);
    }

    fn refused(errno: i32, log: &str) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
        }
    }

    #[test]
    fn a_refused_load_is_the_verifiers_unless_it_wrote_nothing() {
        let log = "0: (b7) r0 = 0\nR1 invalid mem access 'scalar'\n";
        assert_eq!(
            Cause::of_refusal(&refused(libc::EACCES, log)),
            Cause::Kernel
        );
        assert_eq!(
            Cause::of_refusal(&refused(libc::EACCES, "")),
            Cause::Privilege
        );
        assert_eq!(
            Cause::of_refusal(&refused(libc::EPERM, "")),
            Cause::Privilege
        );
        assert_eq!(
            Cause::of_refusal(&refused(libc::ENOMEM, log)),
            Cause::Memory
        );
        assert_eq!(Cause::of_refusal(&refused(libc::E2BIG, log)), Cause::Kernel);
    }

    /// The message names the errno and what to do, and shows the log's
    /// last lines once: not the whole log, not twice.
    #[test]
    fn a_refusal_shows_the_end_of_the_log_once() {
        let log: String = (0..5000)
            .map(|i| format!("{i}: insn\n"))
            .collect::<String>()
            + "R1 invalid mem access 'scalar'\nprocessed 5000 insns\n";
        let err = LoaderError::verify("lw_connect4")(refused(libc::EACCES, &log));
        let text = format!("{:#}", anyhow::Error::from(err));
        assert!(
            text.starts_with("the kernel refused program lw_connect4: "),
            "{text}"
        );
        assert!(text.contains("Permission denied"), "{text}");
        assert!(text.contains("loopwarden doctor"), "{text}");
        assert!(
            text.contains("the last 20 of the verifier's 5002 log lines"),
            "{text}"
        );
        assert_eq!(text.matches("R1 invalid mem access").count(), 1, "{text}");
        assert!(!text.contains("\n4980: insn"), "{text}");
        assert!(text.contains("\n4982: insn"), "{text}");
        assert!(text.lines().count() <= 22, "{text}");

        let text = LoaderError::verify("lw_exec")(refused(libc::EPERM, "")).to_string();
        assert!(text.contains("not permitted"), "{text}");
        assert!(text.contains("the verifier wrote no log"), "{text}");
    }
}
