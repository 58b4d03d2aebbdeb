//! The daemon's files in its run directory (`status.json`, `rules.json`,
//! `scope.json`): each replaced whole, through a temporary file of this
//! process made anew (never opened through a link another process put
//! there), so a reader sees the old file or the new one, never half of
//! one; and the stamp that ties a file to the set of pinned maps it
//! speaks of.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Default run directory: the instance lock and the daemon's files.
pub const DEFAULT_RUN_DIR: &str = "/run/loopwarden";

/// The set of pinned maps a run file speaks of: a file left by a daemon
/// of another pin directory, of maps made afresh in this one (after a
/// detach or a replacement, whose policy sequence numbers start over), or
/// of another boot (map ids start over at each) is never taken for theirs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinStamp {
    pub pin_dir: PathBuf,
    /// The kernel's id of the set's `LW_GENERATION` map (ids are never
    /// reused while the system runs); `None` when it cannot be read.
    pub maps_id: Option<u32>,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: Option<String>,
}

impl PinStamp {
    /// The stamp of the maps with `LW_GENERATION` id `maps_id` pinned in
    /// `pin_dir`, in this boot.
    pub fn new(pin_dir: &Path, maps_id: Option<u32>) -> Self {
        Self {
            pin_dir: pin_dir.to_owned(),
            maps_id,
            boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned()),
        }
    }

    /// Whether a file stamped `saved` speaks of these maps: the same
    /// directory, and the same map id and boot, both known.
    pub fn matches(&self, saved: &PinStamp) -> bool {
        saved.pin_dir == self.pin_dir
            && self.maps_id.is_some()
            && saved.maps_id == self.maps_id
            && self.boot_id.is_some()
            && saved.boot_id == self.boot_id
    }
}

/// A run file whose contents speak of one set of pinned maps: its
/// [`PinStamp`], then the fields of a body (`rules.json`, `scope.json`).
#[derive(Clone, Debug)]
pub struct StampedFile {
    pub path: PathBuf,
    /// The maps it speaks of ([`PinStamp::maps_id`] `None`: nothing is
    /// loaded).
    pub stamp: PinStamp,
}

/// A stamped file as written and read: the stamp's fields, then the
/// body's.
#[derive(Serialize, Deserialize)]
struct Stamped<S, T> {
    #[serde(flatten)]
    stamp: S,
    #[serde(flatten)]
    body: T,
}

impl StampedFile {
    /// `path`, speaking of the maps with `LW_GENERATION` id `maps_id`
    /// pinned in `pin_dir`, in this boot.
    pub fn new(path: PathBuf, pin_dir: &Path, maps_id: Option<u32>) -> Self {
        Self {
            path,
            stamp: PinStamp::new(pin_dir, maps_id),
        }
    }

    /// Writes `body` (a struct: its fields follow the stamp's), replacing
    /// the file whole ([`replace`]).
    pub fn save<T: Serialize>(&self, body: &T) -> io::Result<()> {
        self.save_with_mode(body, 0o644)
    }

    /// [`StampedFile::save`], the file readable by its owner only.
    pub fn save_private<T: Serialize>(&self, body: &T) -> io::Result<()> {
        self.save_with_mode(body, 0o600)
    }

    fn save_with_mode<T: Serialize>(&self, body: &T, mode: u32) -> io::Result<()> {
        let stamped = Stamped {
            stamp: &self.stamp,
            body,
        };
        let mut text = serde_json::to_vec(&stamped).map_err(io::Error::other)?;
        text.push(b'\n');
        replace_with_mode(&self.path, &text, false, mode)
    }

    /// The body saved for these maps; `None` when there is no file, it is
    /// not one the daemon wrote ([`read_own`]), it does not parse, or it
    /// is another set of maps'.
    pub fn load<T: DeserializeOwned>(&self) -> Option<T> {
        let text = read_own(&self.path).ok()?;
        let saved: Stamped<PinStamp, T> = serde_json::from_slice(&text).ok()?;
        self.stamp.matches(&saved.stamp).then_some(saved.body)
    }
}

/// A [`StampedFile`] written at each install for the next daemon, whose
/// failed write is warned of once, until a write works again (each
/// refresh tries again: [`InstallFile::failed`]).
#[derive(Clone, Debug)]
pub struct InstallFile {
    pub file: StampedFile,
    /// Readable by its owner only.
    private: bool,
    failed: bool,
}

impl InstallFile {
    /// `name` in `run_dir`, of the maps with `LW_GENERATION` id `maps_id`
    /// pinned in `pin_dir`.
    pub fn new(run_dir: &Path, name: &str, pin_dir: &Path, maps_id: Option<u32>) -> Self {
        Self {
            file: StampedFile::new(run_dir.join(name), pin_dir, maps_id),
            private: false,
            failed: false,
        }
    }

    /// Written readable by its owner only.
    pub fn private(self) -> Self {
        Self {
            private: true,
            ..self
        }
    }

    /// Writes `body`; a failure is warned of, with what it `costs`, once.
    pub fn save<T: Serialize>(&mut self, body: &T, costs: &str) {
        let saved = if self.private {
            self.file.save_private(body)
        } else {
            self.file.save(body)
        };
        match saved {
            Ok(()) => self.failed = false,
            Err(e) if !self.failed => {
                tracing::warn!(
                    "writing {} failed: {e}; {costs} (tried again at the next install and every \
                     second)",
                    self.file.path.display()
                );
                self.failed = true;
            }
            Err(_) => {}
        }
    }

    /// Whether the last write failed.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

/// The contents of a run file this daemon's kind wrote: read only if it
/// is a regular file reached without a link, owned by this process's
/// user, with one name, and that no one else may write; else an error
/// saying which. (A run file names what a start keeps: it is believed
/// only as far as the run directory's own guard goes.)
pub fn read_own(path: &Path) -> io::Result<Vec<u8>> {
    use std::{io::Read as _, os::unix::fs::MetadataExt as _};
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    let why = if !meta.is_file() {
        Some("not a regular file".to_owned())
    } else if let Some(why) = not_made_by(&meta, &[nix::unistd::geteuid().as_raw()]) {
        Some(why)
    } else if meta.mode() & 0o022 != 0 {
        Some("writable by others".to_owned())
    } else {
        None
    };
    if let Some(why) = why {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        ));
    }
    let mut contents = Vec::new();
    file.read_to_end(&mut contents)?;
    Ok(contents)
}

/// Why the file of `meta`, found in the run directory, is not one a
/// process of `owners` made there, if it is not: another user owns it, or
/// it has another name besides (a hard link made to another file while
/// the directory was open to others).
pub fn not_made_by(meta: &fs::Metadata, owners: &[u32]) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    (!owners.contains(&meta.uid()) || meta.nlink() != 1)
        .then(|| format!("owned by uid {} with {} links", meta.uid(), meta.nlink()))
}

/// Replaces `path` with `contents` (mode 0644); `sync`: on disk before the
/// rename.
pub fn replace(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    replace_with_mode(path, contents, sync, 0o644)
}

/// [`replace`], the new file made with `mode`.
fn replace_with_mode(path: &Path, contents: &[u8], sync: bool, mode: u32) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    // A stale one of this pid's (pid reuse) goes first.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)?;
    let written = file
        .write_all(contents)
        .and_then(|()| if sync { file.sync_all() } else { Ok(()) })
        .and_then(|()| fs::rename(&tmp, path));
    // A half-written file is not left beside the one it would replace (a
    // full tmpfs would fill up with them, one per try).
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A replacement that fails (here its rename: a directory stands at
    /// the path) leaves no temporary file behind.
    #[test]
    fn a_failed_replacement_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "").unwrap();
        assert!(replace(&path, b"{}", false).is_err());
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("status.json")]);
    }

    #[test]
    fn a_run_file_is_read_only_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        replace(&path, b"{}", false).unwrap();
        assert_eq!(read_own(&path).unwrap(), b"{}");
        // Through a link, with a second name, writable by others: refused.
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_own(&link).is_err());
        let second = dir.path().join("second.json");
        fs::hard_link(&path, &second).unwrap();
        assert!(read_own(&path).is_err());
        fs::remove_file(&second).unwrap();
        assert!(read_own(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_own(&path).is_err());
    }
}
