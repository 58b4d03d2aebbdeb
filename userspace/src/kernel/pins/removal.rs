//! Taking pins down: a finished replacement's staged maps moved into
//! place, and every pin of ours removed (`detach`, or a start undoing its
//! own), links detached from their hooks first.

use std::{
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use loopwarden_common::{maps, programs};

use super::{PinDir, PinError, PinLock, io_err, is_bpffs};
use crate::kernel::sys;

impl PinDir {
    /// After the links run programs bound to the staged maps: replaces the
    /// pinned maps by them (old pins removed, staged pins moved in). Only
    /// the maps staged are replaced: all of them for an incompatible set,
    /// one for a resize.
    ///
    /// `LW_META` goes out first and comes in last: a daemon stopped in
    /// between (a crash, SIGKILL) leaves no `LW_META`, which the next start
    /// takes for a half-finished replacement, never a set of old and new
    /// maps to adopt.
    pub fn promote_staging(&self) -> Result<(), PinError> {
        let staging = self.staging();
        let remove = |pinned: &Path| match fs::remove_file(pinned) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", pinned)(e)),
        };
        let meta_staged = staging.join(maps::META).exists();
        if meta_staged {
            remove(&self.map(maps::META))?;
        }
        let others = maps::PINNED.iter().filter(|&&name| name != maps::META);
        let order = others.chain(meta_staged.then_some(&maps::META));
        for &name in order {
            let staged = staging.join(name);
            if !staged.exists() {
                continue;
            }
            let pinned = self.map(name);
            remove(&pinned)?;
            fs::rename(&staged, &pinned).map_err(io_err("moving", &staged))?;
        }
        fs::remove_dir(&staging).map_err(io_err("removing", &staging))?;
        // A whole set replaced: maps of ours that this build no longer
        // has (pinned by another version) would stay pinned, holding
        // their memory, until a detach.
        if meta_staged {
            for path in entries(&self.maps_dir()) {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                let name = name.unwrap_or_default();
                if name.starts_with("LW_") && !maps::PINNED.contains(&name.as_str()) {
                    tracing::info!(
                        "removing {} (a map this version does not have)",
                        path.display()
                    );
                    remove(&path)?;
                }
            }
        }
        Ok(())
    }

    /// Removes every pin of ours: links first, each detached from its hook
    /// before its pin goes (so enforcement has ended when this returns, see
    /// [`remove_link`]), then maps and staged maps, then the directories.
    /// Only loopwarden's names are touched (links `lw_*`, maps `LW_*`,
    /// `staging-<pid>` directories), and only on bpffs: a mistyped
    /// `--pin-dir` naming bpffs' root or some other directory removes
    /// nothing of anyone else's. What was removed, for the report, and the
    /// entries left because they are not ours.
    pub fn remove_all(&self) -> Result<Removed, PinError> {
        if !self.root.exists() {
            return Ok(Removed::default());
        }
        if !is_bpffs(&self.root) {
            return Err(PinError::NotBpffs {
                path: self.root.clone(),
            });
        }
        let lock = self.lock()?;
        self.remove_all_held(&lock)
    }

    /// [`PinDir::remove_all`] by the holder of the directory's lock (a
    /// start that fails undoes its own pins with it).
    pub fn remove_all_held(&self, _held: &PinLock) -> Result<Removed, PinError> {
        let mut removed = Removed::default();
        let staged: Vec<PathBuf> = entries(&self.root)
            .into_iter()
            .filter(|path| is_staging(path))
            .collect();
        let links = self.links_dir();
        let dirs = std::iter::once(links.clone())
            .chain(std::iter::once(self.maps_dir()))
            .chain(staged);
        for dir in dirs {
            for path in entries(&dir) {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                let name = name.unwrap_or_default();
                let ours = if dir == links {
                    name.starts_with(programs::PREFIX)
                } else {
                    name.starts_with("LW_")
                };
                if !ours {
                    removed.foreign.push(path);
                    continue;
                }
                if dir == links {
                    remove_link(&path)
                } else {
                    fs::remove_file(&path)
                }
                .map_err(io_err("removing", &path))?;
                removed.pins.push(path);
            }
            remove_empty_dir(&dir).map_err(io_err("removing", &dir))?;
        }
        // What is left in the root besides our directories is not ours.
        let maps = self.maps_dir();
        let left = entries(&self.root).into_iter();
        removed
            .foreign
            .extend(left.filter(|path| *path != links && *path != maps));
        remove_empty_dir(&self.root).map_err(io_err("removing", &self.root))?;
        Ok(removed)
    }
}

/// Removes the link pinned at `path`, detaching it from its hook first
/// so its program has stopped when this returns ([`sys::link_detach`]).
/// The detach is best effort: a tracing link cannot be detached this way,
/// and the kernel detaches any link soon after its last pin goes anyway.
pub fn remove_link(path: &Path) -> io::Result<()> {
    match sys::obj_get(path).and_then(|link| sys::link_detach(link.as_fd())) {
        Ok(()) => {}
        // Not detachable this way (tracing links), or detached already.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOLINK)
            ) => {}
        // Said: its program may go on running while something else (a
        // leaked descriptor, bpftool) holds the link.
        Err(e) => tracing::warn!(
            "detaching {} at once failed: {e}; its program runs until the last holder of the \
             link closes it",
            path.display()
        ),
    }
    fs::remove_file(path)
}

/// What [`PinDir::remove_all`] removed, and what it left as not its own.
#[derive(Debug, Default)]
pub struct Removed {
    pub pins: Vec<PathBuf>,
    pub foreign: Vec<PathBuf>,
}

/// The entries of a directory (none if it cannot be read).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten().map(|entry| entry.path()).collect()
}

/// A daemon's staging directory: `staging-<pid>`.
pub(super) fn is_staging(path: &Path) -> bool {
    path.is_dir()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("staging-"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes a directory if it is there and empty; one that still holds
/// something (not ours) is left.
fn remove_empty_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTEMPTY | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Removes a directory tree (bpffs pins are unlinked like files).
pub(super) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
