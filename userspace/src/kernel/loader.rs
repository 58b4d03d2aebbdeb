//! Loading the kernel programs and attaching them to the cgroup v2 root.
//!
//! Links are owned by this process and never pinned: when the daemon exits,
//! however it exits, the kernel closes the link file descriptors and detaches
//! the programs. Nothing outlives the daemon.
//!
//! # Minimum kernel version
//! 5.18: `bpf_set_retval` in cgroup programs (enforced by [`crate::kernel::compat`]).

use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use loopwarden_common::{KernelOffsets, OFFSETS_GLOBAL, programs};

/// The kernel programs, built by `build.rs` from the `ebpf` crate.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loopwarden-ebpf"));

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
}

fn verifier_hint(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError { verifier_log, .. } => format!(":\n{verifier_log}"),
        _ => String::new(),
    }
}

/// The programs the daemon runs.
const ENFORCER: &[&str] = &[programs::CONNECT4, programs::CONNECT6];
/// The no-op program benchmarks use to measure the cost of measuring.
const BASELINE: &[&str] = &[programs::BASELINE4];

/// The loaded (not yet attached) programs and their maps.
pub struct Programs {
    pub ebpf: Ebpf,
    names: &'static [&'static str],
}

impl Programs {
    /// Loads the object with the kernel structure offsets patched in, and
    /// verifies both programs. Nothing is attached yet.
    pub fn load(offsets: &KernelOffsets) -> Result<Self, LoaderError> {
        Self::load_only(offsets, ENFORCER)
    }

    /// Loads only the no-op baseline program (see `ebpf/src/baseline.rs`).
    pub fn load_baseline() -> Result<Self, LoaderError> {
        Self::load_only(&KernelOffsets::default(), BASELINE)
    }

    fn load_only(
        offsets: &KernelOffsets,
        names: &'static [&'static str],
    ) -> Result<Self, LoaderError> {
        let log_level = kernel_log_level();
        let mut ebpf = EbpfLoader::new()
            .override_global(OFFSETS_GLOBAL, offsets, true)
            // Kernel-side aya-log calls below this level cost one compare.
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .load(EBPF_OBJECT)
            .map_err(LoaderError::Load)?;
        for &name in names {
            let prog = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| LoaderError::Verify { name, source })?;
            // How much of the verifier's budget (1M instructions) it took:
            // the margin that matters on older kernels with weaker pruning.
            if let Some(count) = prog
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count())
            {
                tracing::debug!("{name}: verified after {count} instructions");
            }
        }
        Ok(Self { ebpf, names })
    }

    /// Attaches both programs to the cgroup v2 root, so they see every
    /// connect() on the host. The links live inside `self`: dropping it (or
    /// exiting) detaches the programs.
    pub fn attach(&mut self, cgroup_root: &Path) -> Result<(), LoaderError> {
        let path = cgroup_root.display().to_string();
        let cgroup = File::open(cgroup_root).map_err(|source| LoaderError::OpenCgroup {
            path: path.clone(),
            source,
        })?;
        for &name in self.names {
            // `Single` is the mode bpf_link_create accepts here; links of
            // other programs on the same cgroup still coexist.
            program(&mut self.ebpf, name)?
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| LoaderError::Attach {
                    name,
                    path: path.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The most verbose aya-log level (aya_log_common::Level: 1 error .. 5 trace)
/// the programs emit: as verbose as this process's own log filter.
fn kernel_log_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 5,
        LevelFilter::DEBUG => 4,
        LevelFilter::INFO => 3,
        LevelFilter::WARN => 2,
        _ => 1,
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, LoaderError> {
    ebpf.program_mut(name)
        .ok_or(LoaderError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoaderError::Verify { name, source })
}
