//! One daemon per run directory: an exclusive lock on
//! `<run_dir>/loopwarden.lock`, held for the daemon's lifetime (the kernel
//! drops it when the process exits, however it exits). `loopwarden detach`
//! takes the same lock, so it never pulls enforcement from under a running
//! daemon.

use std::{
    fs::{self, DirBuilder, File, OpenOptions, TryLockError},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

use super::{DaemonError, io_err};
use crate::resolve::trust::not_private;

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
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(run_dir)
            .map_err(io_err(format!("creating {}", run_dir.display())))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if let Some(why) = not_private(run_dir, &[0, euid]) {
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
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    #[test]
    fn a_run_directory_others_may_write_is_refused_and_a_private_one_taken() {
        let tmp = tempfile::tempdir().unwrap();
        // Made with its parents, private: taken, with this pid in the lock.
        let run = tmp.path().join("a/run");
        let lock = InstanceLock::acquire(&run).unwrap();
        let pid = fs::read_to_string(run.join("loopwarden.lock")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        assert_eq!(
            fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o755
        );
        drop(lock);
        // Writable by others: refused before any file is made in it.
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        symlink("/nonexistent-target", shared.join("loopwarden.lock")).unwrap();
        let err = InstanceLock::acquire(&shared).err().unwrap();
        assert_eq!(err.exit_code(), super::super::exit::CONFIG);
        let text = err.to_string();
        assert!(
            text.contains("is not private")
                && text.contains("may be written by its group or others"),
            "{text}"
        );
        // A link where the lock goes is never followed, even in a private
        // directory.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        let err = InstanceLock::acquire(&shared).err().unwrap();
        assert!(err.to_string().contains("opening"), "{err}");
        assert!(!Path::new("/nonexistent-target").exists());
    }
}
