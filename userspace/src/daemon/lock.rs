//! One daemon per run directory: an exclusive lock on
//! `<run_dir>/loopwarden.lock`, held for the daemon's lifetime (the kernel
//! drops it when the process exits, however it exits). `loopwarden detach`
//! takes the same lock, so it never pulls enforcement from under a running
//! daemon.

use std::{
    fs::{self, DirBuilder, File, OpenOptions, TryLockError},
    io::{self, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::Path,
};

use tracing::warn;

use super::{DaemonError, io_err};
use crate::resolve::trust::{not_private, not_private_walk};

/// The held lock; dropping it releases it.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock and writes our pid into it, or says who holds it.
    /// The run directory must be private to root (or this process's
    /// user): its files are made and followed by path, and another user
    /// who could write there could swap a link in (a lock file linked to
    /// `/etc/shadow` would be truncated).
    pub fn acquire(run_dir: &Path) -> Result<Self, DaemonError> {
        let owners = [0, nix::unistd::Uid::effective().as_raw()];
        // What is missing is made only at the end of a private walk (the
        // last directory may be sticky, as `/tmp`): a path through another
        // user's link would have root make directories where they choose.
        if let Some(existing) = run_dir.ancestors().skip(1).find(|d| d.exists())
            && !run_dir.exists()
            && let Some(why) = not_private_walk(existing, &owners)
        {
            return Err(DaemonError::RunDir {
                path: run_dir.to_owned(),
                why,
            });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(run_dir)
            .map_err(io_err(format!("creating {}", run_dir.display())))?;
        let mut why = not_private(run_dir, &owners);
        if why.is_some() {
            tighten(run_dir, &owners);
            why = not_private(run_dir, &owners);
        }
        if let Some(why) = why {
            return Err(DaemonError::RunDir {
                path: run_dir.to_owned(),
                why,
            });
        }
        let path = run_dir.join("loopwarden.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        // Made by another user while the directory was open to them (a
        // hard link to another file of theirs, or of root's where
        // `fs.protected_hardlinks` is 0): never written.
        let meta = file
            .metadata()
            .map_err(io_err(format!("inspecting {}", path.display())))?;
        if let Some(why) = crate::run_file::not_made_by(&meta, &owners) {
            return Err(DaemonError::RunDir {
                path: run_dir.to_owned(),
                why: format!(
                    "{} is {why}: it is not one this daemon made (remove it)",
                    path.display()
                ),
            });
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // From `/proc/locks`: the file's pid is that of whoever took
                // the lock last, and may be stale.
                let holder = crate::holder::Holder::of(&path);
                return Err(DaemonError::AlreadyRunning { path, holder });
            }
            Err(TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", path.display()))(e));
            }
        }
        file.set_len(0)
            .map_err(io_err("truncating the lock file"))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("writing the lock file"))?;
        file.flush()
            .map_err(|e: io::Error| io_err("writing the lock file")(e))?;
        Ok(Self { _file: file })
    }
}

/// A run directory that is the owners' and only too open (a Kubernetes
/// `emptyDir` is made 0777, a tmpfs 1777) is made private: writable by its
/// owner alone. Said as a warning; nothing is done to one of another
/// user's, or below one.
fn tighten(run_dir: &Path, owners: &[u32]) {
    let Ok(meta) = fs::symlink_metadata(run_dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() || !owners.contains(&meta.uid()) || mode & 0o022 == 0 {
        return;
    }
    let private = mode & !0o1022;
    match fs::set_permissions(run_dir, fs::Permissions::from_mode(private)) {
        Ok(()) => warn!(
            "the run directory {} was writable by its group or others (mode {mode:o}): made it \
             {private:o}",
            run_dir.display()
        ),
        Err(e) => warn!(
            "the run directory {} is writable by its group or others (mode {mode:o}), and \
             making it {private:o} failed: {e}",
            run_dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    #[test]
    fn a_run_directory_is_made_private_and_what_others_made_there_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        // Made with its parents, private: taken, with this pid in the lock.
        let run = tmp.path().join("a/run");
        let lock = InstanceLock::acquire(&run).unwrap();
        let pid = fs::read_to_string(run.join("loopwarden.lock")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        assert_eq!(fs::metadata(&run).unwrap().permissions().mode() & 0o022, 0);
        drop(lock);
        // Ours but open to all (an emptyDir): made private, and a link
        // someone put where the lock goes meanwhile is not followed.
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let target = tmp.path().join("precious");
        fs::write(&target, "precious").unwrap();
        symlink(&target, shared.join("loopwarden.lock")).unwrap();
        let err = InstanceLock::acquire(&shared).err().unwrap();
        assert!(err.to_string().contains("opening"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(
            fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // A lock file with another name for it: not written either.
        fs::remove_file(shared.join("loopwarden.lock")).unwrap();
        fs::hard_link(&target, shared.join("loopwarden.lock")).unwrap();
        let err = InstanceLock::acquire(&shared).err().unwrap();
        assert_eq!(err.exit_code(), super::super::exit::CONFIG);
        assert!(err.to_string().contains("with 2 links"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        fs::remove_file(shared.join("loopwarden.lock")).unwrap();
        drop(InstanceLock::acquire(&shared).unwrap());
        // Another user's: refused, and left as it is; nothing is made
        // below it either.
        if nix::unistd::Uid::effective().is_root() {
            let theirs = tmp.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let below = theirs.join("made/run");
            let err = InstanceLock::acquire(&below).err().unwrap();
            assert_eq!(err.exit_code(), super::super::exit::CONFIG);
            assert!(err.to_string().contains("is owned by uid 65534"), "{err}");
            assert!(!theirs.join("made").exists());
            std::os::unix::fs::chown(&shared, Some(65534), None).unwrap();
            let err = InstanceLock::acquire(&shared).err().unwrap();
            assert_eq!(err.exit_code(), super::super::exit::CONFIG);
            let text = err.to_string();
            assert!(
                text.contains("is not private") && text.contains("is owned by uid 65534"),
                "{text}"
            );
        }
    }
}
