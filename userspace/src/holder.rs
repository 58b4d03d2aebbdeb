//! Who holds a loopwarden lock: the process holding an flock on a run
//! directory's lock file or a pin directory (from `/proc/locks`, never by
//! taking it), and the `--run-dir` its command line gave.
// Fuzz builds have no `status` (`ops`), which reads some of it.
#![cfg_attr(fuzzing, allow(dead_code))]

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// The process holding a lock (a pin directory's: a daemon), and the
/// `--run-dir` its command line gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    /// Its `--run-dir`, from its command line.
    pub run_dir: Option<PathBuf>,
}

impl Holder {
    /// Who holds `lock`, when `/proc/locks` names the process (never
    /// found by taking the lock).
    pub fn of(lock: &Path) -> Option<Self> {
        match lock_holder(lock, false) {
            LockState::Held(Some(pid)) => Some(Holder {
                pid,
                run_dir: run_dir_of(pid),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(dir) = &self.run_dir {
            write!(f, ", --run-dir {}", dir.display())?;
        }
        Ok(())
    }
}

/// Whether process `pid` runs as root.
pub(crate) fn owned_by_root(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok_and(|meta| meta.uid() == 0)
}

/// The `--run-dir` process `pid` was given, from its command line (the
/// default when it gave none; a relative one from its working directory);
/// `None` when it cannot be read.
pub(crate) fn run_dir_of(pid: u32) -> Option<PathBuf> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let dir = run_dir_arg(&cmdline);
    if dir.is_absolute() {
        return Some(dir);
    }
    fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|cwd| cwd.join(dir))
}

/// The `--run-dir` of a NUL-separated command line.
fn run_dir_arg(cmdline: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(arg) = args.next() {
        if arg == b"--run-dir" {
            if let Some(dir) = args.next() {
                return PathBuf::from(std::ffi::OsStr::from_bytes(dir));
            }
        } else if let Some(dir) = arg.strip_prefix(b"--run-dir=") {
            return PathBuf::from(std::ffi::OsStr::from_bytes(dir));
        }
    }
    PathBuf::from(crate::run_file::DEFAULT_RUN_DIR)
}

pub(crate) enum LockState {
    Free,
    /// Held, by this pid when known.
    Held(Option<u32>),
}

/// Who holds an flock on `lock`, from `/proc/locks`; when that cannot be
/// read and `may_try`, by trying the lock (released at once).
pub(crate) fn lock_holder(lock: &Path, may_try: bool) -> LockState {
    let Ok(meta) = fs::metadata(lock) else {
        return LockState::Free;
    };
    match fs::read_to_string("/proc/locks") {
        Ok(locks) => {
            let dev = meta.dev();
            let key = format!(
                "{:02x}:{:02x}:{}",
                libc::major(dev),
                libc::minor(dev),
                meta.ino()
            );
            proc_locks_holder(&locks, &key).map_or(LockState::Free, LockState::Held)
        }
        Err(_) if !may_try => LockState::Free,
        Err(_) => match fs::File::open(lock).map(|f| f.try_lock()) {
            Ok(Ok(())) => LockState::Free,
            Ok(Err(_)) => LockState::Held(None),
            Err(_) => LockState::Free,
        },
    }
}

/// The holder of an `flock` on the file `key` (`major:minor:inode` as
/// `/proc/locks` prints it, hex device numbers): `Some(pid)`, `Some(None)`
/// when held by a process this pid namespace cannot name, `None` when free.
fn proc_locks_holder(locks: &str, key: &str) -> Option<Option<u32>> {
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:1018081 0 EOF"; waiters
        // ("1: -> FLOCK ...") hold nothing.
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") || fields.get(5) != Some(&key) {
            return None;
        }
        // A holder in a pid namespace this one cannot see is shown as 0.
        Some(
            fields
                .get(4)
                .and_then(|p| p.parse().ok())
                .filter(|&pid: &u32| pid != 0),
        )
    })
}

pub(crate) fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_names_the_flock_holder_of_exactly_that_file() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 77 fe:00:1018081 0 EOF
2: FLOCK  ADVISORY  WRITE 28520 fe:00:1018081 0 EOF
2: -> FLOCK  ADVISORY  WRITE 999 fe:00:1018081 0 EOF
3: FLOCK  ADVISORY  WRITE 12 fe:00:10180810 0 EOF
";
        assert_eq!(proc_locks_holder(locks, "fe:00:1018081"), Some(Some(28520)));
        assert_eq!(proc_locks_holder(locks, "fe:00:10180810"), Some(Some(12)));
        assert_eq!(proc_locks_holder(locks, "fe:01:1018081"), None);
        assert_eq!(proc_locks_holder("", "fe:00:1"), None);
        // Held from a pid namespace this one cannot name.
        let hidden = "4: FLOCK  ADVISORY  WRITE 0 fe:00:42 0 EOF\n";
        assert_eq!(proc_locks_holder(hidden, "fe:00:42"), Some(None));
    }

    #[test]
    fn a_daemons_run_directory_is_read_from_its_command_line() {
        let dir = |cmdline: &[u8]| run_dir_arg(cmdline);
        assert_eq!(
            dir(b"loopwarden\0run\0--run-dir\0/tmp/lw run\0--mode\0audit\0"),
            Path::new("/tmp/lw run")
        );
        assert_eq!(
            dir(b"loopwarden\0run\0--run-dir=/srv/lw\0"),
            Path::new("/srv/lw")
        );
        assert_eq!(
            dir(b"loopwarden\0run\0"),
            Path::new(crate::run_file::DEFAULT_RUN_DIR)
        );
        // A trailing `--run-dir` with no value: the default (clap refuses it).
        assert_eq!(
            dir(b"loopwarden\0run\0--run-dir"),
            Path::new(crate::run_file::DEFAULT_RUN_DIR)
        );
    }

    #[test]
    fn a_held_lock_of_this_process_is_seen() {
        let dir = std::env::temp_dir().join(format!("lw-status-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loopwarden.lock");
        let file = fs::File::create(&path).unwrap();
        assert!(matches!(lock_holder(&path, true), LockState::Free));
        file.lock().unwrap();
        match lock_holder(&path, true) {
            LockState::Held(pid) => assert_eq!(pid, Some(std::process::id())),
            LockState::Free => panic!("a held lock reads as free"),
        }
        drop(file);
        assert!(matches!(lock_holder(&path, true), LockState::Free));
        fs::remove_dir_all(&dir).unwrap();
    }
}
