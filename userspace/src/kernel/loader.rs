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
//! # Minimum kernel version
//! 5.18: `bpf_set_retval` in cgroup programs (enforced by [`crate::kernel::compat`]).

use std::{
    collections::HashMap,
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, BtfError, Ebpf, EbpfError, EbpfLoader,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSockAddr, CgroupSockopt, Program, ProgramError,
        links::FdLink,
    },
};
use loopwarden_common::{KernelOffsets, OFFSETS_GLOBAL, maps, programs};

use super::{
    pins::{self, MapShape, PinDir, PinError, PinState},
    sys,
};

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

/// The shapes of the maps our object pins.
pub fn object_shapes() -> Result<HashMap<String, MapShape>, LoaderError> {
    pins::object_shapes(EBPF_OBJECT).map_err(LoaderError::Object)
}

impl Programs {
    /// Loads the object with the kernel structure offsets patched in, and
    /// verifies both programs. Nothing is attached yet.
    ///
    /// The maps are the pinned ones when `state` says they are compatible
    /// (or none are pinned yet: they are created and pinned now); otherwise
    /// fresh maps are created in the staging directory.
    pub fn load_pinned(
        offsets: &KernelOffsets,
        pins: &PinDir,
        state: &PinState,
    ) -> Result<Self, LoaderError> {
        let staged = matches!(state, PinState::Incompatible { .. });
        let dir = if staged {
            let dir = pins.staging();
            std::fs::create_dir_all(&dir).map_err(|source| PinError::Io {
                what: "creating",
                path: dir.clone(),
                source,
            })?;
            dir
        } else {
            pins.maps_dir()
        };
        let paths: Vec<(&'static str, std::path::PathBuf)> = maps::PINNED
            .iter()
            .map(|&name| (name, dir.join(name)))
            .collect();
        let mut programs = Self::load_only(&paths, offsets, ENFORCER)?;
        programs.load_trackers()?;
        let name = programs::GETSOCKOPT;
        typed::<CgroupSockopt>(&mut programs.ebpf, name)?
            .load()
            .map_err(|source| LoaderError::Verify { name, source })?;
        programs.staged = staged;
        Ok(programs)
    }

    /// Loads only the no-op baseline programs (see `ebpf/src/baseline.rs`):
    /// the connect4 one and the tracing one.
    pub fn load_baseline() -> Result<Self, LoaderError> {
        let mut programs = Self::load_only(&[], &KernelOffsets::default(), BASELINE)?;
        let btf = Btf::from_sys_fs().map_err(LoaderError::Btf)?;
        let (name, tracepoint) = BASELINE_TRACKER;
        typed::<BtfTracePoint>(&mut programs.ebpf, name)?
            .load(tracepoint, &btf)
            .map_err(|source| LoaderError::Verify { name, source })?;
        Ok(programs)
    }

    /// Loads the object, each map in `pinned` reused from (or created and
    /// pinned at) its path, and verifies the programs `names`.
    fn load_only(
        pinned: &[(&'static str, std::path::PathBuf)],
        offsets: &KernelOffsets,
        names: &'static [&'static str],
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
        let mut ebpf = loader
            .override_global(OFFSETS_GLOBAL, offsets, true)
            // Kernel-side aya-log calls below this level cost one compare.
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .load(EBPF_OBJECT)
            .map_err(LoaderError::Load)?;
        for &name in names {
            let prog = typed::<CgroupSockAddr>(&mut ebpf, name)?;
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
                .map_err(|source| LoaderError::Verify { name, source })?;
        }
        drop(btf);
        crate::heap::release();
        self.tracking = true;
        Ok(())
    }

    /// Makes the pinned links run these programs: each pinned link is
    /// switched to its new program in place (`BPF_LINK_UPDATE`: the old
    /// program judges every connect until the update, the new one every
    /// connect after); a link not pinned yet is created and pinned. Staged
    /// maps then replace the old pinned maps.
    ///
    /// `getsockopt` names the cgroups where the `cgroup/getsockopt` program
    /// answers services (attached, or updated in place, and pinned; the
    /// pinned links of other cgroups are removed, all of them for an empty
    /// list); `None` leaves them as pinned.
    pub fn attach_pinned(
        &mut self,
        cgroup_root: &Path,
        pins: &PinDir,
        getsockopt: Option<&[PathBuf]>,
    ) -> Result<Takeover, LoaderError> {
        let cgroup = open_cgroup(cgroup_root)?;
        let mut takeover = Takeover::Updated;
        for &name in self.names {
            let pin = pins.link(name);
            let prog = typed::<CgroupSockAddr>(&mut self.ebpf, name)?;
            if pin.exists() {
                update_link(name, &pin, prog)?;
                continue;
            }
            takeover = Takeover::Attached;
            let link_id = attach(prog, &cgroup, cgroup_root, name)?;
            let pin_failed = |message: String| LoaderError::PinLink {
                name,
                path: pin.display().to_string(),
                message,
            };
            let link = prog
                .take_link(link_id)
                .map_err(|e| pin_failed(e.to_string()))?;
            let link = FdLink::try_from(link).map_err(|e| pin_failed(e.to_string()))?;
            // Dropping the returned handle closes our descriptor only: the
            // pin keeps the link, and with it the program, attached.
            link.pin(&pin).map_err(|e| pin_failed(e.to_string()))?;
        }
        if self.tracking {
            self.attach_trackers(pins)?;
        }
        if let Some(targets) = getsockopt {
            self.attach_getsockopt(cgroup_root, pins, targets)?;
        }
        if self.staged {
            pins.promote_staging()?;
            self.staged = false;
        }
        Ok(takeover)
    }

    /// Makes a pinned `cgroup/getsockopt` link run our program in each
    /// cgroup of `targets` (the root, or the cgroups the policy names),
    /// and removes the pinned links of cgroups no longer named (an empty
    /// `targets` removes them all). Removing a pin detaches the program
    /// once no process holds the link either.
    fn attach_getsockopt(
        &mut self,
        cgroup_root: &Path,
        pins: &PinDir,
        targets: &[PathBuf],
    ) -> Result<(), LoaderError> {
        let name = programs::GETSOCKOPT;
        let pin_failed = |pin: &Path, message: String| LoaderError::PinLink {
            name,
            path: pin.display().to_string(),
            message,
        };
        let mut wanted = Vec::with_capacity(targets.len());
        for dir in targets {
            let pin = pins.link(&getsockopt_pin(dir, cgroup_root).map_err(|source| {
                LoaderError::OpenCgroup {
                    path: dir.display().to_string(),
                    source,
                }
            })?);
            wanted.push((pin, dir));
        }
        if let Ok(entries) = std::fs::read_dir(pins.links_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let ours = entry.file_name().to_string_lossy().starts_with(name);
                if ours && !wanted.iter().any(|(pin, _)| *pin == path) {
                    std::fs::remove_file(&path).map_err(|e| pin_failed(&path, e.to_string()))?;
                }
            }
        }
        let prog = typed::<CgroupSockopt>(&mut self.ebpf, name)?;
        for (pin, dir) in wanted {
            if pin.exists() {
                update_link(name, &pin, prog)?;
                continue;
            }
            // aya 0.14 cannot turn a sockopt link into a pinnable FdLink:
            // the link is created and pinned with our own bpf(2) calls.
            let prog_fd = prog
                .fd()
                .map_err(|source| LoaderError::Verify { name, source })?;
            let cgroup = open_cgroup(dir)?;
            use std::os::fd::AsFd as _;
            let link = sys::link_create(prog_fd.as_fd(), cgroup.as_fd(), sys::ATTACH_GETSOCKOPT)
                .map_err(|e| LoaderError::AttachRaw {
                    name,
                    path: dir.display().to_string(),
                    source: e,
                })?;
            sys::obj_pin(link.as_fd(), &pin).map_err(|e| pin_failed(&pin, e.to_string()))?;
        }
        Ok(())
    }

    /// Attaches each tracking program with a new link, pinned over the
    /// previous daemon's (a tracing link cannot take a new program in
    /// place): for an instant both run, which only records some evidence
    /// twice; at no instant does neither.
    fn attach_trackers(&mut self, pins: &PinDir) -> Result<(), LoaderError> {
        for &(name, tracepoint) in programs::TRACKERS {
            let prog = typed::<BtfTracePoint>(&mut self.ebpf, name)?;
            let link_id = prog.attach().map_err(|source| LoaderError::Track {
                name,
                tracepoint,
                source,
            })?;
            let pin = pins.link(name);
            let pin_failed = |message: String| LoaderError::PinLink {
                name,
                path: pin.display().to_string(),
                message,
            };
            let link: FdLink = prog
                .take_link(link_id)
                .map_err(|e| pin_failed(e.to_string()))?
                .into();
            // bpffs refuses names with dots.
            let fresh = pins.link(&format!("{name}_new"));
            let _ = std::fs::remove_file(&fresh);
            link.pin(&fresh)
                .map_err(|e| pin_failed(crate::error_chain(&e)))?;
            std::fs::rename(&fresh, &pin).map_err(|e| pin_failed(e.to_string()))?;
        }
        Ok(())
    }

    /// Attaches the baseline programs of [`Programs::load_baseline`]
    /// without pinning them: the connect4 one to the cgroup v2 root, the
    /// tracing one to its tracepoint. The links live inside `self`: dropping
    /// it (or exiting) detaches the programs.
    pub fn attach_baseline(&mut self, cgroup_root: &Path) -> Result<(), LoaderError> {
        let cgroup = open_cgroup(cgroup_root)?;
        for &name in self.names {
            attach(
                typed::<CgroupSockAddr>(&mut self.ebpf, name)?,
                &cgroup,
                cgroup_root,
                name,
            )?;
        }
        let (name, tracepoint) = BASELINE_TRACKER;
        typed::<BtfTracePoint>(&mut self.ebpf, name)?
            .attach()
            .map_err(|source| LoaderError::Track {
                name,
                tracepoint,
                source,
            })?;
        Ok(())
    }
}

/// The pin name of the `cgroup/getsockopt` link in cgroup `dir`: the
/// program's name at the root, with the cgroup's id below it.
pub fn getsockopt_pin(dir: &Path, cgroup_root: &Path) -> io::Result<String> {
    if dir == cgroup_root {
        return Ok(programs::GETSOCKOPT.to_owned());
    }
    use std::os::unix::fs::MetadataExt as _;
    let id = std::fs::metadata(dir)?.ino();
    Ok(format!("{}_{id:x}", programs::GETSOCKOPT))
}

/// Switches the cgroup link pinned at `pin` to `prog` in place
/// (`BPF_LINK_UPDATE`) and checks that it runs it.
fn update_link(
    name: &'static str,
    pin: &Path,
    prog: &mut impl ProgramFd,
) -> Result<(), LoaderError> {
    let update = |source| LoaderError::LinkUpdate {
        name,
        path: pin.display().to_string(),
        source,
    };
    let link = sys::obj_get(pin).map_err(update)?;
    let (prog_fd, want) = prog
        .fd_and_id()
        .map_err(|source| LoaderError::Verify { name, source })?;
    use std::os::fd::AsFd as _;
    sys::link_update(link.as_fd(), prog_fd.as_fd(), None).map_err(update)?;
    let runs = sys::link_prog_id(&link).ok();
    if want.is_some() && want != runs {
        return Err(update(io::Error::other(format!(
            "the link runs program {runs:?} after the update, not {want:?}"
        ))));
    }
    Ok(())
}

/// What [`update_link`] needs of a loaded program, whatever its type.
trait ProgramFd {
    /// A duplicate of the program's descriptor, and its id if the kernel
    /// says.
    fn fd_and_id(&self) -> Result<(std::os::fd::OwnedFd, Option<u32>), ProgramError>;
}

use std::os::fd::AsFd as _;

macro_rules! program_fd {
    ($($ty:ty),*) => {$(
        impl ProgramFd for $ty {
            fn fd_and_id(&self) -> Result<(std::os::fd::OwnedFd, Option<u32>), ProgramError> {
                let fd = self.fd()?.as_fd().try_clone_to_owned()?;
                let id = self.info().map(|i| i.id()).ok();
                Ok((fd, id))
            }
        }
    )*};
}
program_fd!(CgroupSockAddr, CgroupSockopt);

fn open_cgroup(cgroup_root: &Path) -> Result<File, LoaderError> {
    File::open(cgroup_root).map_err(|source| LoaderError::OpenCgroup {
        path: cgroup_root.display().to_string(),
        source,
    })
}

/// Attaches `prog` to the cgroup with a new link. `Single` is the mode
/// bpf_link_create accepts here; links of other programs on the same cgroup
/// still coexist.
fn attach(
    prog: &mut CgroupSockAddr,
    cgroup: &File,
    cgroup_root: &Path,
    name: &'static str,
) -> Result<aya::programs::cgroup_sock_addr::CgroupSockAddrLinkId, LoaderError> {
    prog.attach(cgroup, CgroupAttachMode::Single)
        .map_err(|source| LoaderError::Attach {
            name,
            path: cgroup_root.display().to_string(),
            source,
        })
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
        .map_err(|source| LoaderError::Verify { name, source })
}
