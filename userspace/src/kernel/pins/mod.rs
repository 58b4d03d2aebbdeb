//! Where enforcement lives between daemons: the links and maps pinned in
//! bpffs, and the rules for adopting, replacing and removing them.
//!
//! ```text
//! <pin dir>/links/lw_connect4   the cgroup links: while pinned, the programs stay attached
//! <pin dir>/links/lw_connect6
//! <pin dir>/maps/LW_*           every map the programs use (policy, events, counters, meta)
//! <pin dir>/staging-<pid>/LW_*  fresh maps of a daemon replacing an incompatible set (or resizing one)
//! ```
//!
//! A daemon adopts pinned maps only when `LW_META` carries its
//! [`LAYOUT_VERSION`] and every map has exactly the type, key, value,
//! size and flags its own object declares (the capacity of a [`RESIZABLE`] map as
//! its config asks); anything else is replaced, never misread. A
//! resizable map pinned with another capacity is replaced alone.
//! Replacement never leaves a gap: the new programs, with their own fresh
//! maps already holding the policy, take over the pinned links in place
//! (`BPF_LINK_UPDATE`), and only then are the old map pins swapped.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData, MapInfo};
use loopwarden_common::{LAYOUT_VERSION, META_MAGIC, Meta, maps};

pub use self::{
    bpffs::{BPFFS_MOUNT, is_bpffs},
    removal::{Removed, remove_link},
};
use self::{
    bpffs::{mount_bpffs, mount_hint},
    removal::remove_tree,
};

mod bpffs;
mod removal;

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/loopwarden";

/// Errors preparing or inspecting the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{} is not on a BPF filesystem: pinned programs and maps need bpffs (mount it with \
         `mount -t bpf bpf {BPFFS_MOUNT}`, or pass --pin-dir under {BPFFS_MOUNT})",
        path.display()
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "bpffs is not mounted on {BPFFS_MOUNT}, and this process runs in a mount namespace of its \
         own (not its parent's, or not pid 1's: a container's, a unit's PrivateMounts=, an \
         `unshare -m`): a bpffs it mounted would be that namespace's alone, and the pins, \
         enforcement with them, would go when the namespace goes; mount it where the host sees \
         it first (`mount -t bpf bpf {BPFFS_MOUNT}` as root on the host; the packaged unit does \
         this before it starts), then start again"
    )]
    PrivateMountNamespace,
    #[error("mounting bpffs on {BPFFS_MOUNT} failed ({})", mount_hint(source))]
    Mount {
        #[source]
        source: io::Error,
    },
    #[error(
        "the pin directory {} was removed or made anew while this process locked it (a \
         `loopwarden detach` or a failed start at the same moment): the lock held is on a \
         directory that is gone; start again",
        path.display()
    )]
    Replaced { path: PathBuf },
    #[error(
        "another loopwarden pinned its programs in {} while this one started (there was nothing \
         to lock when this one looked, so it had taken itself for the first); start again: the \
         next start adopts them",
        path.display()
    )]
    PinnedSince { path: PathBuf },
    #[error(
        "another loopwarden uses the pin directory {} (its lock is held{}); stop it first, or \
         give this one its own --pin-dir",
        path.display(),
        holder.as_ref().map(|h| format!(" by {h}")).unwrap_or_default()
    )]
    Busy {
        path: PathBuf,
        /// Who holds the lock, when `/proc/locks` names it.
        holder: Option<crate::holder::Holder>,
    },
    #[error(
        "{what} {} failed: bpffs is mounted read-only in this process's mount namespace, so \
         nothing can be pinned. A systemd unit's ProtectKernelTunables=yes mounts {BPFFS_MOUNT} \
         read-only, and a ReadWritePaths= of it does not undo that (the packaged unit leaves \
         ProtectKernelTunables out for this reason); so does a container's read-only /sys. Give \
         loopwarden a writable bpffs",
        path.display()
    )]
    ReadOnly { what: &'static str, path: PathBuf },
    #[error("{what} {} failed", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PinError {
    let path = path.to_owned();
    move |source| PinError::io(what, path, source)
}

impl PinError {
    /// `what` of `path` failed with `source`: [`PinError::ReadOnly`] for a
    /// read-only mount, which no restart mends.
    pub fn io(what: &'static str, path: PathBuf, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::EROFS) {
            PinError::ReadOnly { what, path }
        } else {
            PinError::Io { what, path, source }
        }
    }
}

/// The held lock of a pin directory; dropping it releases it.
pub struct PinLock {
    _dir: fs::File,
}

/// What a starting daemon finds pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinState {
    /// Nothing: a first start, or after `loopwarden detach`.
    Absent,
    /// Maps of this layout: adopt them (the policy in force stays until the
    /// new one is installed into them).
    Compatible,
    /// Maps of this layout, but `map` (one of [`RESIZABLE`]) is pinned
    /// with another capacity than the config asks for: that one map is
    /// replaced (staged fresh, its entries copied over), the rest adopted.
    Resized {
        map: &'static str,
        pinned: u32,
        wanted: u32,
    },
    /// Something else is pinned (another layout version, a map of another
    /// shape, a half-finished replacement): replace it.
    Incompatible { why: String },
}

/// The pinned maps whose capacity the config sets (`[provenance]
/// connections`): a change replaces that map alone.
pub const RESIZABLE: &[&str] = &[maps::CONNS];

/// The shape a map must have: type, key size, value size, max entries,
/// flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `BPF_F_*` flags the map was created with (`LW_CONN_SLOTS` is
    /// mapped by the daemon, which needs it mappable).
    pub map_flags: u32,
}

/// The shapes of the pinned maps as our own eBPF object declares them.
pub fn object_shapes(object: &[u8]) -> Result<HashMap<String, MapShape>, String> {
    let obj = aya_obj::Object::parse(object).map_err(|e| e.to_string())?;
    Ok(maps::PINNED
        .iter()
        .filter_map(|&name| {
            let map = obj.maps.get(name)?;
            Some((
                name.to_owned(),
                MapShape {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: map.max_entries(),
                    map_flags: map.map_flags(),
                },
            ))
        })
        .collect())
}

/// The pin directory of one loopwarden installation.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links_dir().join(program)
    }

    /// Where this process stages fresh maps while it replaces a pinned set.
    pub fn staging(&self) -> PathBuf {
        self.root.join(format!("staging-{}", std::process::id()))
    }

    /// Removes [`PinDir::staging`] and the maps pinned in it.
    pub fn remove_staging(&self) -> io::Result<()> {
        remove_tree(&self.staging())
    }

    /// Whether anything at all is pinned here.
    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// Makes sure the directory exists on bpffs, mounting bpffs at
    /// [`BPFFS_MOUNT`] when the directory is under it and it is not mounted
    /// (it is not at boot on some systems), and takes its lock (one daemon
    /// per pin directory, whatever run directory each was given). Then
    /// removes staging directories left by daemons that died half-way
    /// through a replacement, this process's own name included: one there
    /// now was left by an earlier process with this pid (pid reuse, a pid
    /// namespace), and the loader would take its maps for staged ones
    /// without checking their shape. The lock lasts as long as the returned
    /// guard; `held` is the lock taken already (before the pins were
    /// inspected).
    pub fn prepare(&self, held: Option<PinLock>) -> Result<PinLock, PinError> {
        if self.root.starts_with(BPFFS_MOUNT) && !is_bpffs(Path::new(BPFFS_MOUNT)) {
            mount_bpffs()?;
        }
        // Before anything is made: a path off bpffs is refused as it
        // stands, with nothing left behind (`is_bpffs` judges a missing
        // path by what exists of it), and once made (a mount met on the
        // way).
        if !is_bpffs(&self.root) {
            return Err(PinError::NotBpffs {
                path: self.root.clone(),
            });
        }
        for dir in [self.root.clone(), self.maps_dir(), self.links_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        // Root's alone: a user who may open the directory may also flock
        // it, which would keep every daemon and `detach` out. (Not a
        // directory bpffs is mounted on, which other tools share.)
        if self.root.parent().is_some_and(is_bpffs) {
            let private = fs::Permissions::from_mode(0o700);
            fs::set_permissions(&self.root, private)
                .map_err(io_err("making private", &self.root))?;
        }
        if !is_bpffs(&self.root) {
            return Err(PinError::NotBpffs {
                path: self.root.clone(),
            });
        }
        let lock = match held {
            Some(lock) => lock,
            None => self.lock()?,
        };
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let path = entry.path();
                // Only loopwarden's own (`staging-<pid>`, a directory),
                // as `detach` takes them: anything else of that name is
                // left alone.
                if removal::is_staging(&path) {
                    tracing::info!("removing {} (left by an interrupted start)", path.display());
                    remove_tree(&path).map_err(io_err("removing", &path))?;
                }
            }
        }
        Ok(lock)
    }

    /// Takes the pin directory's lock (an flock on the directory itself,
    /// which bpffs supports like any filesystem), or says another daemon
    /// holds it. A lock taken on a directory that is no longer the one at
    /// the path (a `detach` holding the lock emptied and removed it, and
    /// a start made it anew, after this process opened it) is refused: it
    /// would keep no one out of the new one.
    pub fn lock(&self) -> Result<PinLock, PinError> {
        let dir = fs::File::open(&self.root).map_err(io_err("opening", &self.root))?;
        self.lock_opened(dir)
    }

    /// [`PinDir::lock`] of `dir`, opened at the pin directory's path.
    fn lock_opened(&self, dir: fs::File) -> Result<PinLock, PinError> {
        match dir.try_lock() {
            Ok(()) if !is_at(&dir, &self.root) => Err(PinError::Replaced {
                path: self.root.clone(),
            }),
            Ok(()) => Ok(PinLock { _dir: dir }),
            Err(fs::TryLockError::WouldBlock) => Err(PinError::Busy {
                path: self.root.clone(),
                holder: crate::holder::Holder::of(&self.root),
            }),
            Err(fs::TryLockError::Error(e)) => Err(io_err("locking", &self.root)(e)),
        }
    }

    /// Compares what is pinned with what our object declares.
    pub fn inspect(&self, shapes: &HashMap<String, MapShape>) -> PinState {
        let present: Vec<&str> = maps::PINNED
            .iter()
            .copied()
            .filter(|name| self.map(name).exists())
            .collect();
        let links = [
            loopwarden_common::programs::CONNECT4,
            loopwarden_common::programs::CONNECT6,
        ];
        if present.is_empty() && links.iter().all(|p| !self.link(p).exists()) {
            return PinState::Absent;
        }
        let incompatible = |why: String| PinState::Incompatible { why };
        match read_meta(&self.map(maps::META)) {
            Ok(meta) if meta.magic != META_MAGIC => {
                return incompatible("LW_META was never written (an interrupted start)".into());
            }
            Ok(meta) if meta.layout != LAYOUT_VERSION => {
                return incompatible(format!(
                    "the pinned maps have layout version {}, this daemon uses {LAYOUT_VERSION}",
                    meta.layout
                ));
            }
            Ok(_) => {}
            Err(e) => return incompatible(format!("LW_META cannot be read: {e}")),
        }
        let mut resized = None;
        for &name in maps::PINNED {
            let Some(want) = shapes.get(name) else {
                return incompatible(format!("our object has no map {name}"));
            };
            let info = match MapInfo::from_pin(self.map(name)) {
                Ok(info) => info,
                Err(e) => return incompatible(format!("pinned map {name}: {e}")),
            };
            let have = MapShape {
                map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                map_flags: info.map_flags(),
            };
            let resizable = RESIZABLE.contains(&name)
                && MapShape {
                    max_entries: want.max_entries,
                    ..have
                } == *want;
            if have == *want {
                continue;
            }
            if !resizable || resized.is_some() {
                return incompatible(format!(
                    "pinned map {name} is {have:?}, this daemon expects {want:?}"
                ));
            }
            resized = Some(PinState::Resized {
                map: name,
                pinned: have.max_entries,
                wanted: want.max_entries,
            });
        }
        resized.unwrap_or(PinState::Compatible)
    }

    /// The kernel's id of the pinned `LW_GENERATION` map, if one is
    /// pinned and readable: what names the set of maps pinned here now
    /// (see [`crate::run_file::PinStamp`]).
    pub fn generation_id(&self) -> Option<u32> {
        MapInfo::from_pin(self.map(loopwarden_common::maps::GENERATION))
            .ok()
            .map(|info| info.id())
    }

    /// The capacity (`max_entries`) of the pinned map `name`, if one is
    /// pinned and readable.
    pub fn max_entries(&self, name: &str) -> Option<u32> {
        MapInfo::from_pin(self.map(name))
            .ok()
            .map(|info| info.max_entries())
    }

    /// Rewrites `LW_META` as ours (our magic and layout version) with
    /// `change` made to what it held: the drops already reported, the
    /// mode in force. What another layout's `LW_META` held is not kept.
    pub fn update_meta(&self, change: impl FnOnce(&mut Meta)) -> Result<(), String> {
        let path = self.map(maps::META);
        let mut meta = match read_meta(&path) {
            Ok(m) if m.magic == META_MAGIC && m.layout == LAYOUT_VERSION => m,
            _ => Meta::default(),
        };
        change(&mut meta);
        meta.magic = META_MAGIC;
        meta.layout = LAYOUT_VERSION;
        let data = MapData::from_pin(&path).map_err(|e| e.to_string())?;
        let mut map: Array<MapData, Meta> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(|e| e.to_string())?;
        map.set(0, meta, 0).map_err(|e| e.to_string())
    }

    /// Writes `slot` to `LW_GENERATION`: puts the policy slot it names in
    /// force (for a start that failed after installing its policy into
    /// adopted maps, through `PolicyMaps`, which the undo outlives: the
    /// slot in force before it was left untouched).
    pub fn set_generation(&self, slot: u32) -> Result<(), String> {
        let data = MapData::from_pin(self.map(maps::GENERATION)).map_err(|e| e.to_string())?;
        let mut map: Array<MapData, u32> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(|e| e.to_string())?;
        map.set(0, slot, 0).map_err(|e| e.to_string())
    }

    /// Reads `LW_META`.
    pub fn meta(&self) -> Result<Meta, String> {
        read_meta(&self.map(maps::META))
    }
}

fn read_meta(path: &Path) -> Result<Meta, String> {
    let info = MapInfo::from_pin(path).map_err(|e| e.to_string())?;
    if info.value_size() as usize != size_of::<Meta>() {
        return Err(format!(
            "LW_META holds {}-byte values, not {}",
            info.value_size(),
            size_of::<Meta>()
        ));
    }
    let data = MapData::from_pin(path).map_err(|e| e.to_string())?;
    let meta: Array<MapData, Meta> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(|e| e.to_string())?;
    meta.get(&0, 0).map_err(|e| e.to_string())
}

/// Whether the open directory `dir` is the one at `path` now.
fn is_at(dir: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (dir.metadata(), fs::metadata(path)) {
        (Ok(held), Ok(now)) => (held.dev(), held.ino()) == (now.dev(), now.ino()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lock is refused on a directory removed and made anew after it
    /// was opened (a `detach`'s removal between a start's open and its
    /// lock); a directory that stayed is locked, and its lock keeps the
    /// next one out.
    #[test]
    fn a_lock_on_a_directory_made_anew_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pins");
        fs::create_dir(&root).unwrap();
        let pins = PinDir::new(&root);
        let held = pins.lock().expect("the directory as it is");
        assert!(matches!(pins.lock(), Err(PinError::Busy { .. })));
        drop(held);

        let opened = fs::File::open(&root).unwrap();
        fs::remove_dir(&root).unwrap();
        assert!(!is_at(&opened, &root), "a removed directory");
        fs::create_dir(&root).unwrap();
        let refused = pins.lock_opened(opened);
        assert!(matches!(refused, Err(PinError::Replaced { .. })));
        assert!(is_at(&fs::File::open(&root).unwrap(), &root));
        assert!(pins.lock().is_ok());
    }
}
