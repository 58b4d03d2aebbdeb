//! Attaching the loaded programs: the cgroup hooks' pinned links (updated
//! in place when pinned already), the tracing links, and the benchmark's
//! unpinned baseline (the `cgroup/getsockopt` links: [`super::getsockopt`]).

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSockAddr, CgroupSockopt, ProgramError, links::FdLink,
};
use loopwarden_common::programs;

use super::{BASELINE_TRACKER, LoaderError, Programs, Takeover, typed};
use crate::kernel::{
    pins::{PinDir, remove_link},
    sys,
};

impl Programs {
    /// Makes the pinned links run these programs: each pinned link is
    /// switched to its new program in place (`BPF_LINK_UPDATE`: the old
    /// program judges every connect until the update, the new one every
    /// connect after); a link not pinned yet is created and pinned. Staged
    /// maps then replace the old pinned maps.
    ///
    /// The enforcing programs (connect, recvmsg, bind) take over last: the
    /// tracking programs are attached and `seed` fills their maps from
    /// /proc first, so a new set of maps (a replacement) never judges a
    /// connect while its evidence and lineage are still empty; and the
    /// steps that can fail (a cgroup to open, a link to attach) fail while
    /// the old programs still judge with the maps they were given. In a
    /// replacement the old tracking programs go on feeding those maps
    /// until then: the new ones are pinned beside them (`<name>_new_<start>`) and
    /// take their pins only once every enforcing link runs the new
    /// programs, and a start that fails before removes its own.
    ///
    /// `getsockopt` names the cgroups where the `cgroup/getsockopt` program
    /// answers services (attached, or updated in place, and pinned; the
    /// pinned links of other cgroups are removed once the caller's start
    /// is whole, by [`Unnamed::remove`], all of them for an empty list);
    /// `None` leaves them as pinned.
    pub fn attach_pinned(
        &mut self,
        cgroup_root: &Path,
        pins: &PinDir,
        getsockopt: Option<&[PathBuf]>,
        seed: impl FnOnce(&mut aya::Ebpf),
    ) -> Result<(Takeover, Unnamed), LoaderError> {
        let cgroup = open_cgroup(cgroup_root)?;
        // A replacement's new maps are not the old programs': their
        // trackers stay until the enforcing links are switched.
        let beside = self.staged;
        if self.tracking
            && let Err(e) = self.attach_trackers(pins, beside)
        {
            if beside {
                remove_new_trackers(pins);
            }
            return Err(e);
        }
        let mut undo = LinkUndo::default();
        let taken = self.take_over(&cgroup, cgroup_root, pins, getsockopt, seed, &mut undo);
        let unnamed = match &taken {
            Ok(_) => Unnamed(std::mem::take(&mut undo.unnamed)),
            Err(_) => {
                undo.put_back();
                Unnamed(Vec::new())
            }
        };
        if beside && self.tracking {
            match &taken {
                Ok(_) => self.promote_trackers(pins)?,
                Err(_) => remove_new_trackers(pins),
            }
        }
        let takeover = taken?;
        remove_stale_new_trackers(pins);
        if self.staged {
            self.remove_foreign_links(pins);
            pins.promote_staging()?;
            self.staged = false;
        }
        Ok((takeover, unnamed))
    }

    /// [`Programs::attach_pinned`] past the trackers: the seed, getsockopt
    /// and the enforcing links; each link switched or attached is written
    /// in `undo`, for the caller to put back should a later one fail.
    fn take_over(
        &mut self,
        cgroup: &File,
        cgroup_root: &Path,
        pins: &PinDir,
        getsockopt: Option<&[PathBuf]>,
        seed: impl FnOnce(&mut aya::Ebpf),
        undo: &mut LinkUndo,
    ) -> Result<Takeover, LoaderError> {
        seed(&mut self.ebpf);
        if let Some(targets) = getsockopt {
            self.attach_getsockopt(cgroup_root, pins, targets, Pinned::Update(undo))?;
        }
        let mut takeover = Takeover::Updated;
        for &name in self.names {
            let pin = pins.link(name);
            let prog = typed::<CgroupSockAddr>(&mut self.ebpf, name)?;
            if pin.exists()
                && let Update::Switched { before } = update_link(name, &pin, prog)?
            {
                undo.switched.push((pin, before));
                continue;
            }
            takeover = Takeover::Attached;
            let link_id = attach(prog, cgroup, cgroup_root, name)?;
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
            undo.attached.push(pin);
        }
        Ok(takeover)
    }

    /// Removes the pinned links of programs this build does not attach
    /// (a downgrade past a version that added one): they would go on
    /// running, by the maps being replaced, until a `detach`. Only our
    /// names (`lw_`), as `detach` removes: a pin directory shared with
    /// another tool keeps its links. Best effort: one that cannot be
    /// removed is said.
    fn remove_foreign_links(&self, pins: &PinDir) {
        let trackers = programs::TRACKERS.iter().map(|&(name, _)| name);
        let ours: Vec<&str> = self.names.iter().copied().chain(trackers).collect();
        remove_links_named(
            pins,
            |name| {
                name.starts_with(programs::PREFIX)
                    && !ours.contains(&name)
                    && !name.starts_with(programs::GETSOCKOPT)
            },
            "a program this version does not have",
        );
    }

    /// Attaches each tracking program with a new link, pinned over the
    /// previous daemon's (a tracing link cannot take a new program in
    /// place): for an instant both run, which only records some evidence
    /// twice; at no instant does neither. With `beside`, pinned beside it
    /// as `<name>_new` instead, both running, for
    /// [`Programs::promote_trackers`].
    fn attach_trackers(&mut self, pins: &PinDir, beside: bool) -> Result<(), LoaderError> {
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
            let fresh = new_tracker_pin(pins, name);
            link.pin(&fresh)
                .map_err(|e| pin_failed(crate::error_chain(&e)))?;
            if !beside {
                std::fs::rename(&fresh, &pin).map_err(|e| pin_failed(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Moves the tracking links pinned beside the old ones over them: the
    /// old programs, and their feeding of the old maps, end.
    fn promote_trackers(&self, pins: &PinDir) -> Result<(), LoaderError> {
        for &(name, _) in programs::TRACKERS {
            let (fresh, pin) = (new_tracker_pin(pins, name), pins.link(name));
            std::fs::rename(&fresh, &pin).map_err(|e| LoaderError::PinLink {
                name,
                path: pin.display().to_string(),
                message: e.to_string(),
            })?;
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

/// How [`Programs::attach_getsockopt`] treats a cgroup whose link is
/// pinned already.
#[derive(Debug)]
pub enum Pinned<'a> {
    /// Switched to this program in place (a start, over a predecessor's),
    /// what it switched and attached written in the undo.
    Update(&'a mut LinkUndo),
    /// Left as it is (this daemon's own).
    Keep,
}

/// The getsockopt links of cgroups a start's policy no longer names
/// ([`Programs::attach_pinned`]): removed by [`Unnamed::remove`] once the
/// start is whole, so that one failing later leaves the policy before it
/// with its answers.
#[derive(Debug)]
#[must_use = "the links stay until removed"]
pub struct Unnamed(Vec<PathBuf>);

impl Unnamed {
    /// Removes them, saying each.
    pub fn remove(self) {
        for pin in self.0 {
            match remove_link(&pin) {
                Ok(()) => tracing::info!(
                    "removed the getsockopt link pinned at {} (a cgroup the policy no longer \
                     names)",
                    pin.display()
                ),
                Err(e) => tracing::warn!(
                    "removing the getsockopt link pinned at {} (a cgroup the policy no longer \
                     names) failed: {e}",
                    pin.display()
                ),
            }
        }
    }
}

/// The links a start switched to its programs (with the program each ran
/// before, if it could be opened) and the links it attached: what a start
/// that fails part-way puts back, so the programs before it go on judging
/// every connect, with the maps they were given and their trackers
/// feeding them (see [`Programs::attach_pinned`]).
#[derive(Debug, Default)]
pub struct LinkUndo {
    /// The links switched to the new programs in place, with what each
    /// ran before.
    pub(super) switched: Vec<(PathBuf, Option<OwnedFd>)>,
    /// The links made anew.
    pub(super) attached: Vec<PathBuf>,
    /// The getsockopt links of cgroups the start's policy no longer
    /// names: handed over as [`Unnamed`] once it has taken over, left if
    /// it fails.
    pub(super) unnamed: Vec<PathBuf>,
}

impl LinkUndo {
    /// Switches each link back to the program it ran, and removes the
    /// links attached; says what it could not put back.
    fn put_back(self) {
        for (pin, before) in self.switched.into_iter().rev() {
            let restored = match &before {
                Some(prog) => sys::obj_get(&pin)
                    .and_then(|link| sys::link_update(link.as_fd(), prog.as_fd(), None)),
                None => Err(io::Error::other("its program could not be opened")),
            };
            match restored {
                Ok(()) => tracing::warn!(
                    "the start failed: the link pinned at {} runs the program it ran before",
                    pin.display()
                ),
                Err(e) => tracing::error!(
                    "the start failed, and the link pinned at {} could not be switched back to \
                     the program it ran before ({e}): it runs this start's, with maps no \
                     tracking program feeds, until a daemon starts",
                    pin.display()
                ),
            }
        }
        for pin in self.attached.into_iter().rev() {
            if let Err(e) = remove_link(&pin) {
                tracing::error!(
                    "the start failed, and the link it attached at {} could not be removed: {e}",
                    pin.display()
                );
            }
        }
    }
}

/// What [`update_link`] did.
pub(super) enum Update {
    /// The link runs the new program; `before`: the one it ran, if it
    /// could be opened.
    Switched { before: Option<OwnedFd> },
    /// The link was detached already: its pin is removed.
    Detached,
}

/// Switches the cgroup link pinned at `pin` to `prog` in place
/// (`BPF_LINK_UPDATE`) and checks that it runs it. When the pinned link is
/// detached already (`ENOLINK`: a `detach` stopped between detaching it
/// and removing its pin, or its cgroup was removed), nothing runs through
/// it, so its pin is removed for the caller to attach anew.
pub(super) fn update_link(
    name: &'static str,
    pin: &Path,
    prog: &mut impl ProgramFd,
) -> Result<Update, LoaderError> {
    let update = |source| LoaderError::LinkUpdate {
        name,
        path: pin.display().to_string(),
        source,
    };
    let link = sys::obj_get(pin).map_err(update)?;
    let (prog_fd, want) = prog.fd_and_id().map_err(LoaderError::verify(name))?;
    let before = sys::link_prog_id(&link).and_then(sys::prog_by_id).ok();
    match sys::link_update(link.as_fd(), prog_fd.as_fd(), None) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
            tracing::warn!(
                "the link pinned at {} was detached already; attaching {name} anew",
                pin.display()
            );
            std::fs::remove_file(pin).map_err(update)?;
            return Ok(Update::Detached);
        }
        Err(e) => return Err(update(e)),
    }
    let runs = sys::link_prog_id(&link).ok();
    if want.is_some() && want != runs {
        // Put back what it ran, as a failed start's undo would.
        if let Some(prog) = &before {
            let _ = sys::link_update(link.as_fd(), prog.as_fd(), None);
        }
        return Err(update(io::Error::other(format!(
            "the link runs program {runs:?} after the update, not {want:?}"
        ))));
    }
    Ok(Update::Switched { before })
}

/// Where a new tracking link of program `name` is pinned beside the old
/// one until it takes its pin (bpffs refuses names with dots): named by
/// this start (the clock when it first named one: a pid may be the same
/// at every start, in a container), so that a start never takes the place
/// of a start killed part-way, whose new trackers may still feed the maps
/// a link it had switched judges with, until every enforcing link runs
/// this start's programs ([`remove_stale_new_trackers`]).
fn new_tracker_pin(pins: &PinDir, name: &str) -> PathBuf {
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| crate::monotonic().as_nanos());
    pins.link(&format!("{name}_new_{start}"))
}

/// Removes the tracking links that earlier starts pinned beside the old
/// ones and left (killed part-way): once every enforcing link runs this
/// start's programs, nothing judges with the maps they feed.
fn remove_stale_new_trackers(pins: &PinDir) {
    remove_links_named(
        pins,
        |name| {
            programs::TRACKERS
                .iter()
                .any(|&(tracker, _)| name.starts_with(&format!("{tracker}_new")))
        },
        "left by a start that did not finish",
    );
}

/// Removes each link pinned in `pins` whose name `stale` picks, saying so
/// with `why`. Best effort: one that cannot be removed is said.
fn remove_links_named(pins: &PinDir, stale: impl Fn(&str) -> bool, why: &str) {
    let Ok(entries) = std::fs::read_dir(pins.links_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !stale(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        match remove_link(&path) {
            Ok(()) => tracing::info!("removed the link pinned at {} ({why})", path.display()),
            Err(e) => tracing::warn!(
                "removing the link pinned at {} ({why}) failed: {e}",
                path.display()
            ),
        }
    }
}

/// Removes the tracking links a failed replacement pinned beside the old
/// ones, which go on running as before.
fn remove_new_trackers(pins: &PinDir) {
    for &(name, _) in programs::TRACKERS {
        let fresh = new_tracker_pin(pins, name);
        if let Err(e) = std::fs::remove_file(&fresh)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("removing {} failed: {e}", fresh.display());
        }
    }
}

/// What [`update_link`] needs of a loaded program, whatever its type.
pub(super) trait ProgramFd {
    /// A duplicate of the program's descriptor, and its id if the kernel
    /// says.
    fn fd_and_id(&self) -> Result<(std::os::fd::OwnedFd, Option<u32>), ProgramError>;
}

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

pub(super) fn open_cgroup(cgroup_root: &Path) -> Result<File, LoaderError> {
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
