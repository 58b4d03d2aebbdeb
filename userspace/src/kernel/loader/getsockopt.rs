//! The `cgroup/getsockopt` program's links: one pinned per cgroup the
//! policy names (or at the root), switched in place at a start, and the
//! links of cgroups no longer named removed once the new ones run.

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::programs::CgroupSockopt;
use loopwarden_common::programs;

use super::{
    LoaderError, Programs,
    attach::{Pinned, Update, open_cgroup, update_link},
    typed,
};
use crate::kernel::{
    pins::{PinDir, remove_link},
    sys,
};

impl Programs {
    /// Makes a pinned `cgroup/getsockopt` link run our program in each
    /// cgroup of `targets` (the root, or the cgroups the policy names),
    /// and removes the pinned links of cgroups no longer named or gone (an
    /// empty `targets` removes them all, each detached at once:
    /// [`remove_link`]). A link pinned already is switched to this
    /// program in place with [`Pinned::Update`] (a start), left as it is
    /// with [`Pinned::Keep`] (the daemon's own, looked at again).
    pub fn attach_getsockopt(
        &mut self,
        cgroup_root: &Path,
        pins: &PinDir,
        targets: &[PathBuf],
        pinned: Pinned,
    ) -> Result<GetsockoptChange, LoaderError> {
        let name = programs::GETSOCKOPT;
        let pin_failed = |pin: &Path, message: String| LoaderError::PinLink {
            name,
            path: pin.display().to_string(),
            message,
        };
        let mut change = GetsockoptChange::default();
        let mut wanted = Vec::with_capacity(targets.len());
        for dir in targets {
            // Named by the cgroup opened, not by its path: one removed and
            // made again in between is attached under its new name. One
            // removed since it was named (its unit stopping or restarting)
            // is left out, as one not found then would have been: the
            // next look names its successor. The other targets go on.
            let cgroup = match open_cgroup(dir) {
                Ok(cgroup) => cgroup,
                Err(LoaderError::OpenCgroup { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    change.gone.push(dir.to_owned());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let pin = pins.link(&getsockopt_pin(&cgroup, dir == cgroup_root).map_err(
                |source| LoaderError::OpenCgroup {
                    path: dir.display().to_string(),
                    source,
                },
            )?);
            wanted.push((pin, dir, cgroup));
        }
        let prog = typed::<CgroupSockopt>(&mut self.ebpf, name)?;
        let mut pinned = pinned;
        for (pin, dir, cgroup) in &wanted {
            let (pin, dir) = (pin.as_path(), dir.as_path());
            if pin.exists() {
                match &mut pinned {
                    Pinned::Keep => continue,
                    Pinned::Update(undo) => {
                        if let Update::Switched { before } = update_link(name, pin, prog)? {
                            undo.switched.push((pin.to_owned(), before));
                            continue;
                        }
                    }
                }
            }
            // aya 0.14 cannot turn a sockopt link into a pinnable FdLink:
            // the link is created and pinned with our own bpf(2) calls.
            let prog_fd = prog.fd().map_err(LoaderError::verify(name))?;
            let link = sys::link_create(prog_fd.as_fd(), cgroup.as_fd(), sys::ATTACH_GETSOCKOPT)
                .map_err(|e| LoaderError::AttachRaw {
                    name,
                    path: dir.display().to_string(),
                    source: e,
                })?;
            sys::obj_pin(link.as_fd(), pin).map_err(|e| pin_failed(pin, e.to_string()))?;
            if let Pinned::Update(undo) = &mut pinned {
                undo.attached.push(pin.to_owned());
            }
            change.attached.push(dir.to_owned());
        }
        // The cgroups no longer named lose theirs only now: a move from the
        // root to named cgroups (or back) never leaves a service between
        // the two without an answer. At a start, only once the start has
        // taken over (a start that fails leaves them, see [`LinkUndo`]).
        if let Ok(entries) = std::fs::read_dir(pins.links_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let ours = entry.file_name().to_string_lossy().starts_with(name);
                if !ours || wanted.iter().any(|(pin, ..)| *pin == path) {
                    continue;
                }
                match &mut pinned {
                    Pinned::Update(undo) => undo.unnamed.push(path),
                    Pinned::Keep => {
                        remove_link(&path).map_err(|e| pin_failed(&path, e.to_string()))?;
                        change.removed.push(path);
                    }
                }
            }
        }
        Ok(change)
    }
}

/// What [`Programs::attach_getsockopt`] changed.
#[derive(Debug, Default)]
pub struct GetsockoptChange {
    /// The cgroups given a new link.
    pub attached: Vec<PathBuf>,
    /// The pins of the links removed.
    pub removed: Vec<PathBuf>,
    /// The cgroups removed between their naming and the attach.
    pub gone: Vec<PathBuf>,
}

/// The pin name of the `cgroup/getsockopt` link in the open cgroup
/// `cgroup`: the program's name at the root (`root`), with the cgroup's
/// id (its inode number, never reused) below it.
fn getsockopt_pin(cgroup: &File, root: bool) -> io::Result<String> {
    if root {
        return Ok(programs::GETSOCKOPT.to_owned());
    }
    use std::os::unix::fs::MetadataExt as _;
    let id = cgroup.metadata()?.ino();
    Ok(format!("{}_{id:x}", programs::GETSOCKOPT))
}
