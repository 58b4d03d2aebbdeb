//! One daemon per run directory: an exclusive lock on
//! `<run_dir>/loopwarden.lock`, held for the daemon's lifetime (the kernel
//! drops it when the process exits, however it exits). `loopwarden detach`
//! takes the same lock, so it never pulls enforcement from under a running
//! daemon.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use super::{DaemonError, io_err};

/// The held lock; dropping it releases it.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    /// Takes the lock and writes our pid into it, or says who holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self, DaemonError> {
        fs::create_dir_all(run_dir).map_err(io_err(format!("creating {}", run_dir.display())))?;
        let path = run_dir.join("loopwarden.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
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
