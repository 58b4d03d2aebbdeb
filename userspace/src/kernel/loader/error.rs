//! What can go wrong loading and attaching the programs, and what to do
//! about it.

use std::io;

use aya::{BtfError, EbpfError, programs::ProgramError};

use crate::kernel::pins::PinError;

/// Errors loading or attaching the programs.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(
        "loading the eBPF object failed (the kernel needs CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF)"
    )]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no program named {name}")]
    MissingProgram { name: &'static str },
    #[error("the kernel refused program {name}{}", verifier_hint(.source))]
    Verify {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("opening the cgroup v2 root {path} failed")]
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
        "attaching {name} to the cgroup v2 root {path} failed (cgroup sockopt programs need \
         Linux 5.3+ with CONFIG_CGROUP_BPF)"
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
        "putting {name} into the pinned link {path} failed (the kernel needs BPF_LINK_UPDATE for \
         cgroup links, Linux 5.7+); the previously pinned program keeps enforcing"
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

fn verifier_hint(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError { verifier_log, .. } => format!(":\n{verifier_log}"),
        _ => String::new(),
    }
}
