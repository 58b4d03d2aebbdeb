//! What can go wrong loading and attaching the programs, and what to do
//! about it.

use std::io;

use aya::{BtfError, EbpfError, programs::ProgramError};

use crate::kernel::pins::PinError;

/// Errors loading or attaching the programs.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("loading the eBPF object failed ({})", Cause::of(.0).hint())]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program named {name}")]
    MissingProgram { name: &'static str },
    #[error("the kernel refused program {name}{}", verifier_hint(.source))]
    Verify {
        name: &'static str,
        #[source]
        source: ProgramError,
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

fn verifier_hint(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError { verifier_log, .. } => format!(":\n{verifier_log}"),
        _ => String::new(),
    }
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
}
