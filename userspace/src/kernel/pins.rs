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
//! [`LAYOUT_VERSION`] and every map has exactly the type, key, value and
//! size its own object declares (the capacity of a [`RESIZABLE`] map as
//! its config asks); anything else is replaced, never misread. A
//! resizable map pinned with another capacity is replaced alone.
//! Replacement never leaves a gap: the new programs, with their own fresh
//! maps already holding the policy, take over the pinned links in place
//! (`BPF_LINK_UPDATE`), and only then are the old map pins swapped.

use std::{
    collections::HashMap,
    ffi::CString,
    fs, io,
    os::{
        fd::AsFd as _,
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData, MapInfo};
use loopwarden_common::{LAYOUT_VERSION, META_MAGIC, Meta, maps};

use super::sys;

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/loopwarden";
/// Where bpffs is normally mounted; mounted there when missing.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors preparing or inspecting the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{} is not on a BPF filesystem: pinned programs and maps need bpffs (mount it with \
         `mount -t bpf bpf {BPFFS_MOUNT}`, or pass --pin-dir under {BPFFS_MOUNT})",
        path.display()
    )]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs on {BPFFS_MOUNT} failed ({})", mount_hint(source))]
    Mount {
        #[source]
        source: io::Error,
    },
    #[error(
        "another loopwarden uses the pin directory {} (its lock is held); stop it first, or give \
         this one its own --pin-dir",
        path.display()
    )]
    Busy { path: PathBuf },
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
    move |source| PinError::Io { what, path, source }
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

/// The shape a map must have: type, key size, value size, max entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
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
                if entry.file_name().to_string_lossy().starts_with("staging-") {
                    tracing::info!("removing {} (left by an interrupted start)", path.display());
                    remove_tree(&path).map_err(io_err("removing", &path))?;
                }
            }
        }
        Ok(lock)
    }

    /// Takes the pin directory's lock (an flock on the directory itself,
    /// which bpffs supports like any filesystem), or says another daemon
    /// holds it.
    pub fn lock(&self) -> Result<PinLock, PinError> {
        let dir = fs::File::open(&self.root).map_err(io_err("opening", &self.root))?;
        match dir.try_lock() {
            Ok(()) => Ok(PinLock { _dir: dir }),
            Err(fs::TryLockError::WouldBlock) => Err(PinError::Busy {
                path: self.root.clone(),
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
                    name.starts_with("lw_")
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

    /// Writes `LW_META` (our layout version, the drops already reported).
    pub fn write_meta(&self, dropped_reported: u64) -> Result<(), String> {
        let path = self.map(maps::META);
        let data = MapData::from_pin(&path).map_err(|e| e.to_string())?;
        let mut meta: Array<MapData, Meta> =
            Array::try_from(aya::maps::Map::Array(data)).map_err(|e| e.to_string())?;
        meta.set(
            0,
            Meta {
                magic: META_MAGIC,
                layout: LAYOUT_VERSION,
                _pad: 0,
                dropped_reported,
            },
            0,
        )
        .map_err(|e| e.to_string())
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
fn is_staging(path: &Path) -> bool {
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
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Whether `path` (or, if it does not exist yet, its nearest existing
/// ancestor) is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(c_path) = CString::new(existing.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the struct we own; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and outlives the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

/// Why a mount of bpffs failed, by its errno.
fn mount_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            "not permitted: it needs CAP_SYS_ADMIN in the initial mount namespace (systemd: \
             the unit mounts it before start)"
        }
        Some(libc::ENODEV) => "the kernel has no bpf filesystem: it needs CONFIG_BPF_SYSCALL",
        _ => "mount it by hand: mount -t bpf bpf /sys/fs/bpf",
    }
}

fn mount_bpffs() -> Result<(), PinError> {
    tracing::info!("bpffs is not mounted: mounting it on {BPFFS_MOUNT}");
    fs::create_dir_all(BPFFS_MOUNT).map_err(|source| PinError::Mount { source })?;
    let c = |s: &str| CString::new(s).expect("no NUL in constants");
    let (source, target, fstype, data) = (c("bpf"), c(BPFFS_MOUNT), c("bpf"), c("mode=0700"));
    // SAFETY: all four are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
