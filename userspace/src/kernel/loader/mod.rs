//! Loading the kernel programs and attaching them to the cgroup v2 root.
//!
//! The daemon's links and maps are pinned in bpffs (see [`super::pins`]):
//! enforcement outlives the process that attached it, whatever ends that
//! process. A starting daemon loads its programs against the pinned maps
//! (or fresh ones when the pinned set is incompatible) and puts them into
//! the pinned links in place, so at no instant is no program attached.
//! Only `loopwarden detach` removes enforcement. The benchmark's baseline
//! program is attached unpinned and goes with its process.
//!
//! This file loads; [`attach`] attaches, [`error`] says what failed.
//!
//! # Minimum kernel version
//! 5.18: `bpf_set_retval` in cgroup programs (enforced by [`crate::kernel::compat`]).

mod attach;
mod error;
mod getsockopt;

use std::collections::HashMap;

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, CgroupSockAddr, CgroupSockopt, Program, ProgramError},
};
use loopwarden_common::{KernelOffsets, OFFSETS_GLOBAL, maps, programs};

pub use self::{
    attach::Pinned,
    error::{Cause, LoaderError, errno_in},
    getsockopt::GetsockoptChange,
};
use super::{
    lru,
    pins::{self, MapShape, PinDir, PinError, PinState},
};

/// The kernel programs, built by `build.rs` from the `ebpf` crate.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loopwarden-ebpf"));

/// The programs the daemon runs in the cgroup hooks: the judges, the
/// UDP receive trackers and the bind guard (attached whether or not the
/// policy turns it on, like the trackers: the policy maps say).
const ENFORCER: &[&str] = &[
    programs::CONNECT4,
    programs::CONNECT6,
    programs::RECVMSG4,
    programs::RECVMSG6,
    programs::BIND4,
    programs::BIND6,
];
/// The no-op program benchmarks use to measure the cost of measuring.
const BASELINE: &[&str] = &[programs::BASELINE4];
/// Its tracing counterpart (`tp_btf`), on the tracepoint of `lw_receive`.
const BASELINE_TRACKER: (&str, &str) = (programs::BASELINE_RECEIVE, programs::RECEIVE_TRACEPOINT);

/// The loaded (not yet attached) programs and their maps.
pub struct Programs {
    pub ebpf: Ebpf,
    names: &'static [&'static str],
    /// The tracking programs (`tp_btf`) are loaded too.
    tracking: bool,
    /// Maps were created fresh in the staging directory (replacing an
    /// incompatible pinned set); they move into place after the takeover.
    staged: bool,
}

/// How the pinned links came to run this daemon's programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// No link was pinned: attached and pinned now.
    Attached,
    /// The pinned links now run our programs (replaced in place).
    Updated,
}

/// The shapes of the maps our object pins, `LW_CONNS` holding `conns`
/// entries (`[provenance] connections`), each LRU map with room for the
/// kernel's per-CPU batches ([`lru`]).
pub fn object_shapes(conns: u32) -> Result<HashMap<String, MapShape>, LoaderError> {
    let mut shapes = pins::object_shapes(EBPF_OBJECT).map_err(LoaderError::Object)?;
    for (name, max_entries) in lru::sizes(conns) {
        if let Some(shape) = shapes.get_mut(name) {
            shape.max_entries = max_entries;
        }
    }
    Ok(shapes)
}

impl Programs {
    /// Loads the object with the kernel structure offsets patched in, and
    /// verifies both programs. Nothing is attached yet.
    ///
    /// The maps are the pinned ones when `state` says they are compatible
    /// (or none are pinned yet: they are created and pinned now); otherwise
    /// fresh maps are created in the staging directory: all of them for an
    /// incompatible set, the resized one alone for a resize. `LW_CONNS`
    /// is created with `conns` entries.
    pub fn load_pinned(
        offsets: &KernelOffsets,
        pins: &PinDir,
        state: &PinState,
        conns: u32,
    ) -> Result<Self, LoaderError> {
        let fresh = |name: &str| match state {
            PinState::Incompatible { .. } => true,
            PinState::Resized { map, .. } => *map == name,
            PinState::Absent | PinState::Compatible => false,
        };
        let staged = maps::PINNED.iter().any(|name| fresh(name));
        if staged {
            let dir = pins.staging();
            std::fs::create_dir_all(&dir)
                .map_err(|source| PinError::io("creating", dir.clone(), source))?;
        }
        let paths: Vec<(&'static str, std::path::PathBuf)> = maps::PINNED
            .iter()
            .map(|&name| {
                let dir = if fresh(name) {
                    pins.staging()
                } else {
                    pins.maps_dir()
                };
                (name, dir.join(name))
            })
            .collect();
        let mut programs = Self::load_all(&paths, offsets, conns)?;
        programs.staged = staged;
        Ok(programs)
    }

    /// Loads every program the daemon runs, its maps created and pinned
    /// nowhere, and attaches nothing: what `loopwarden doctor` proves the
    /// verifier takes.
    pub fn load_unpinned(offsets: &KernelOffsets) -> Result<Self, LoaderError> {
        Self::load_all(&[], offsets, loopwarden_common::MAX_CONNS)
    }

    /// The enforcing programs, the tracking programs and getsockopt.
    fn load_all(
        pinned: &[(&'static str, std::path::PathBuf)],
        offsets: &KernelOffsets,
        conns: u32,
    ) -> Result<Self, LoaderError> {
        let mut programs = Self::load_only(pinned, offsets, ENFORCER, conns)?;
        programs.load_trackers()?;
        let name = programs::GETSOCKOPT;
        typed::<CgroupSockopt>(&mut programs.ebpf, name)?
            .load()
            .map_err(LoaderError::verify(name))?;
        Ok(programs)
    }

    /// How many programs are loaded.
    pub fn loaded(&self) -> usize {
        self.ebpf
            .programs()
            .filter(|(_, prog)| prog.fd().is_ok())
            .count()
    }

    /// Loads only the no-op baseline programs (see `ebpf/src/baseline.rs`):
    /// the connect4 one and the tracing one.
    pub fn load_baseline() -> Result<Self, LoaderError> {
        let mut programs = Self::load_only(
            &[],
            &KernelOffsets::default(),
            BASELINE,
            loopwarden_common::MAX_CONNS,
        )?;
        let btf = Btf::from_sys_fs().map_err(LoaderError::Btf)?;
        let (name, tracepoint) = BASELINE_TRACKER;
        typed::<BtfTracePoint>(&mut programs.ebpf, name)?
            .load(tracepoint, &btf)
            .map_err(LoaderError::verify(name))?;
        Ok(programs)
    }

    /// Loads the object, each map in `pinned` reused from (or created and
    /// pinned at) its path, `LW_CONNS` sized for `conns` live entries, and
    /// verifies the programs `names`.
    fn load_only(
        pinned: &[(&'static str, std::path::PathBuf)],
        offsets: &KernelOffsets,
        names: &'static [&'static str],
        conns: u32,
    ) -> Result<Self, LoaderError> {
        let log_level = kernel_log_level();
        let mut loader = EbpfLoader::new();
        // No CO-RE: offsets come from our own BTF reader (`super::btf`), so
        // the kernel BTF aya parsed for relocations is dropped at once, and
        // its memory returned (see `release_heap`).
        loader.btf(None);
        crate::heap::release();
        for (name, path) in pinned {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, max_entries) in lru::sizes(conns) {
            loader.map_max_entries(name, max_entries);
        }
        let mut ebpf = loader
            .override_global(OFFSETS_GLOBAL, offsets, true)
            // Kernel-side aya-log calls below this level cost one compare.
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .load(EBPF_OBJECT)
            .map_err(LoaderError::Load)?;
        verify_concurrently(&mut ebpf, names)?;
        Ok(Self {
            ebpf,
            names,
            tracking: false,
            staged: false,
        })
    }

    /// Verifies the tracking programs (see `ebpf/src/sockets.rs` and
    /// `process.rs`) against the kernel's BTF, which is parsed for this
    /// and dropped again.
    fn load_trackers(&mut self) -> Result<(), LoaderError> {
        let btf = Btf::from_sys_fs().map_err(LoaderError::Btf)?;
        for &(name, tracepoint) in programs::TRACKERS {
            let prog = typed::<BtfTracePoint>(&mut self.ebpf, name)?;
            prog.load(tracepoint, &btf)
                .map_err(LoaderError::verify(name))?;
        }
        drop(btf);
        crate::heap::release();
        self.tracking = true;
        Ok(())
    }
}

/// Verifies the cgroup sock_addr programs `names` of `ebpf`, each on a
/// thread of its own. The kernel verifies a privileged loader's programs
/// concurrently, and `lw_connect4` and `lw_connect6` take most of the
/// start (about 0.8 s each on the development VM): one after the other,
/// the start waited for both. A failure is reported for the first of
/// `names` that failed, whatever the order the threads ended in.
fn verify_concurrently(ebpf: &mut Ebpf, names: &'static [&'static str]) -> Result<(), LoaderError> {
    // `programs_mut` hands out each program once: disjoint borrows, one
    // per thread, kept in the order of `names`.
    let mut progs: Vec<Option<&mut CgroupSockAddr>> = names.iter().map(|_| None).collect();
    for (found, prog) in ebpf.programs_mut() {
        if let Some(i) = names.iter().position(|&name| name == found) {
            let name = names[i];
            let prog = prog.try_into().map_err(LoaderError::verify(name))?;
            progs[i] = Some(prog);
        }
    }
    let progs = names
        .iter()
        .zip(progs)
        .map(|(&name, prog)| prog.ok_or(LoaderError::MissingProgram { name }))
        .collect::<Result<Vec<_>, _>>()?;
    let results = std::thread::scope(|scope| {
        let threads: Vec<_> = progs
            .into_iter()
            .map(|prog| {
                scope.spawn(move || {
                    prog.load()?;
                    // How much of the verifier's budget (1M instructions)
                    // it took: the margin that matters on older kernels
                    // with weaker pruning.
                    Ok(prog
                        .info()
                        .ok()
                        .and_then(|i| i.verified_instruction_count()))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Vec<Result<_, ProgramError>>>()
    });
    for (&name, result) in names.iter().zip(results) {
        match result {
            Ok(Some(count)) => tracing::debug!("{name}: verified after {count} instructions"),
            Ok(None) => {}
            Err(error) => return Err(LoaderError::verify(name)(error)),
        }
    }
    Ok(())
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

/// The program `name` of the object, as its type `P` (`CgroupSockAddr`,
/// `CgroupSockopt`, `BtfTracePoint`).
fn typed<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoaderError>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoaderError::MissingProgram { name })?
        .try_into()
        .map_err(LoaderError::verify(name))
}
