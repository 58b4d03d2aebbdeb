//! A FUSE filesystem (`stallfs.py`) of one executable, `tool` (a copy of
//! Python), whose server never answers the requests of whom a test names
//! ([`Stalled`]) and answers everyone else: a FUSE (or NFS) server that
//! stops answering the daemon.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Proc, TempDir, wait_for};

/// Whose requests go unanswered.
#[derive(Clone, Copy, Debug)]
pub enum Stalled<'a> {
    /// One thread's.
    Thread(u32),
    /// Every thread's of one process.
    Process(u32),
    /// Every thread's of every process running this executable (a daemon
    /// not started yet).
    Exe(&'a Path),
}

/// Which of their requests go unanswered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Every one.
    All,
    /// Reads of the file's contents: lookups and attributes are answered.
    Reads,
    /// All but the lookups of the names loopwarden's probe of a mount
    /// makes up (a server that stops answering right after the probe).
    AllButProbes,
}

/// The mounted filesystem; unmounted on drop (its server killed first,
/// which fails what it left unanswered).
pub struct StallFs {
    server: Proc,
    mnt: PathBuf,
}

impl StallFs {
    /// Mounts it on `mnt` (created), its script written to `dir`; returns
    /// once `tool` is there.
    pub fn mount(dir: &TempDir, mnt: &Path, stalled: Stalled) -> Self {
        Self::mount_unanswering(dir, mnt, stalled, Unanswered::All)
    }

    /// [`mount`](Self::mount), leaving `unanswered` of `stalled`'s requests
    /// unanswered.
    pub fn mount_unanswering(
        dir: &TempDir,
        mnt: &Path,
        stalled: Stalled,
        unanswered: Unanswered,
    ) -> Self {
        Self::mount_by(dir, mnt, stalled, unanswered, 0)
    }

    /// [`mount_unanswering`](Self::mount_unanswering), the mount saying
    /// that user `uid` made it (`user_id=`, as `fusermount` writes it).
    pub fn mount_by(
        dir: &TempDir,
        mnt: &Path,
        stalled: Stalled,
        unanswered: Unanswered,
        uid: u32,
    ) -> Self {
        std::fs::create_dir(mnt).expect("mount point");
        let script = dir.path().join("stallfs.py");
        std::fs::write(&script, include_str!("stallfs.py")).expect("script");
        let python = std::fs::canonicalize("/usr/bin/python3").expect("the system Python");
        let spec = match stalled {
            Stalled::Thread(tid) => format!("thread:{tid}"),
            Stalled::Process(pid) => format!("process:{pid}"),
            Stalled::Exe(exe) => format!(
                "exe:{}",
                std::fs::canonicalize(exe)
                    .expect("the stalled executable")
                    .display()
            ),
        };
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script)
            .arg(mnt)
            .arg(python)
            .arg(spec)
            .env("STALLFS_USER_ID", uid.to_string());
        match unanswered {
            Unanswered::All => {}
            Unanswered::Reads => {
                cmd.arg("reads");
            }
            Unanswered::AllButProbes => {
                cmd.arg("all-but-probes");
            }
        }
        let server = Proc::spawn(&mut cmd);
        let fs = Self {
            server,
            mnt: mnt.to_owned(),
        };
        wait_for("the FUSE mount", Duration::from_secs(10), || {
            mnt.join("tool").exists().then_some(())
        });
        fs
    }

    /// The executable it serves.
    pub fn tool(&self) -> PathBuf {
        self.mnt.join("tool")
    }
}

impl Drop for StallFs {
    fn drop(&mut self) {
        self.server.kill();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}
