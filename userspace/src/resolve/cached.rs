//! The identity of a file a process runs, from what the kernel has cached
//! of it: `statx()` with `AT_STATX_DONT_SYNC`. A plain `stat()` of
//! `/proc/PID/exe` asks the file's filesystem, and a FUSE server that
//! stops answering (one a user runs, where `user_allow_other` lets root's
//! requests reach it) or an NFS server that is down would hold the caller,
//! which is the daemon's event loop or its refresh, until it answers. With
//! the flag FUSE and NFS answer from the inode as the kernel holds it; the
//! device and inode number, all the identity is made of, never change.

use std::{io, path::Path};

use loopwarden_common::ExeKey;
use rustix::fs::{AtFlags, CWD, StatxFlags, statx};

/// What [`cached`] tells of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cached {
    /// Device (the kernel's encoding) and inode.
    pub key: ExeKey,
    /// Its links: 0 for a deleted file.
    pub nlink: u32,
    /// Its type and permission bits (`st_mode`).
    pub mode: u16,
}

/// The identity of the file at `path`, links followed (`/proc/PID/exe`
/// included), from the kernel's cached inode.
pub fn cached(path: impl AsRef<Path>) -> io::Result<Cached> {
    let stx = statx(
        CWD,
        path.as_ref(),
        AtFlags::STATX_DONT_SYNC,
        StatxFlags::INO | StatxFlags::NLINK | StatxFlags::MODE,
    )?;
    Ok(Cached {
        key: ExeKey::from_major_minor(
            u64::from(stx.stx_dev_major),
            u64::from(stx.stx_dev_minor),
            stx.stx_ino,
        ),
        nlink: stx.stx_nlink,
        mode: stx.stx_mode,
    })
}

/// The identity of the executable process `pid` runs ([`cached`] of its
/// `/proc/PID/exe`); `None` for a kernel thread or a process gone.
pub fn proc_exe(pid: u32) -> Option<Cached> {
    cached(format!("/proc/{pid}/exe")).ok()
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt as _};

    use super::*;

    #[test]
    fn the_cached_identity_is_stats() {
        let meta = fs::metadata("/proc/self/exe").unwrap();
        let id = proc_exe(std::process::id()).unwrap();
        assert_eq!(id.key, crate::resolve::exe_key(&meta));
        assert_eq!(u64::from(id.nlink), meta.nlink());
        assert!(cached("/nonexistent-loopwarden").is_err());
        assert_eq!(proc_exe(0), None);
    }

    #[test]
    fn a_deleted_file_has_no_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let file = fs::File::create(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let id = cached(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ))
        .unwrap();
        assert_eq!(id.nlink, 0);
    }
}
