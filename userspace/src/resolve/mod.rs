//! [`HostResolver`]: the [`Resolver`] that asks the running system.
//!
//! Owns turning config names into the identifiers the kernel programs see:
//! executable paths into `(dev, i_ino)` keys in the kernel's device
//! encoding (with the filesystem they live on, so that ones the kernel would
//! see under another device can be refused), executable names into files
//! found on the usual search paths, user names into uids (through NSS),
//! cgroup paths and unit names into cgroup v2 ids (directory inode numbers),
//! and network namespace files into `SO_NETNS_COOKIE` values; and finding
//! which executables processes run now. Network namespaces (cookies,
//! running code inside one, interface addresses) are in [`netns`]; cgroup
//! paths and unit names in [`cgroups`]; users in [`users`] (through NSS);
//! executables by name, and scripts' interpreters, in [`search`].

pub(crate) mod cached;
mod cgroups;
pub(crate) mod isolate;
mod netns;
mod search;
pub(crate) mod stall;
pub(crate) mod trust;
mod users;
mod walk;

use std::{
    collections::HashSet,
    ffi::OsStr,
    fs::{self, File},
    io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use loopwarden_common::ExeKey;
use tracing::debug;

pub use self::cgroups::path_by_id as cgroup_path_by_id;
use self::netns::cookie_via_setns;
pub use self::netns::{
    current_netns_cookie, current_netns_inum, in_first_netns, in_netns, in_netns_of,
    in_scoped_netns, interface_addresses,
};
pub(crate) use self::search::interpreter_of;
use self::search::{search_dirs, shebang};
pub use self::users::{uid_by_name, user_name};
use crate::policy::{CgroupId, ExeFile, LiveExe, LiveExes, MountDev, Resolver};

/// Resolves names against this host.
#[derive(Clone, Debug)]
pub struct HostResolver {
    cgroup_root: PathBuf,
    btrfs_subvolumes: bool,
}

impl HostResolver {
    /// `cgroup_root` is the cgroup v2 mount point
    /// ([`crate::kernel::compat::Host::cgroup2_root`]).
    pub fn new(cgroup_root: PathBuf) -> Self {
        Self {
            cgroup_root,
            btrfs_subvolumes: false,
        }
    }

    /// Whether the kernel programs read a btrfs file's subvolume device
    /// (their offsets found btrfs, [`crate::kernel::btf::btrfs_offsets`]):
    /// then they see a file on btrfs under the device `stat()` reports.
    pub fn with_btrfs_subvolumes(mut self, yes: bool) -> Self {
        self.btrfs_subvolumes = yes;
        self
    }

    /// The cgroup v2 mount point it resolves cgroups under.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }
}

impl Resolver for HostResolver {
    fn exe(&self, path: &Path) -> io::Result<ExeFile> {
        stall::answers(path)?;
        let meta = fs::metadata(path)?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        // A first line that cannot be read for a filesystem that does not
        // answer: the path counts as not there, as for its lookup.
        if let Some(line) = shebang(path)? {
            let (interpreter, reads_scripts) = interpreter_of(&line);
            let instead = if reads_scripts {
                format!(
                    "a rule names a script with `script = \"{}\"`, or the process by its \
                     `cgroup` or `uid`",
                    path.display()
                )
            } else {
                format!(
                    "nor can a `script` rule name it: {interpreter} is not an interpreter whose \
                     script the kernel reads (python, node, perl, ruby, php, deno); name the \
                     process by its `cgroup` or `uid`, or by what starts it (`parent_exe`)"
                )
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is a script (`#!{line}`): the kernel sees the interpreter that runs \
                     it, never the script, so this never matches; {instead}",
                    path.display(),
                ),
            ));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not executable (no execute bit): no process runs it, so this never \
                     matches; name the file a process runs (`readlink /proc/PID/exe` shows it)",
                    path.display()
                ),
            ));
        }
        let real_path = fs::canonicalize(path)?;
        let key = exe_key(&meta);
        let mut mount = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|info| mount_of(&info, &real_path));
        if let Some(mount) = &mut mount
            && self.btrfs_subvolumes
            && mount.fs_type == "btrfs"
        {
            // The programs read the subvolume's device, as stat() does.
            mount.dev = key.dev;
        }
        Ok(ExeFile {
            key,
            real_path,
            mount,
        })
    }

    /// One pass over `/proc`: a `stat()` of every process's `exe` (which
    /// works on a deleted file too) and, for the few deleted ones, a
    /// `readlink()`. Measured on the 2-core development VM (kernel 6.18,
    /// shared with other builds, release build): about 6 µs per process,
    /// 0.5 ms for its ~85 processes (kernel threads included), 3.6 ms with
    /// 500 more; some 60 ms on a host running 10,000. Compiling calls it at
    /// most once, and only when there is something to check (see
    /// [`Resolver::live_exes`]); while the process shown for a kept
    /// identity still runs it, a `stat()` of its `exe` (2 µs) replaces the
    /// walk.
    fn live_exes(&self) -> LiveExes {
        let mut live = LiveExes::new();
        let Ok(processes) = procfs::process::all_processes() else {
            return live;
        };
        for process in processes.flatten() {
            let Ok(pid) = u32::try_from(process.pid()) else {
                continue;
            };
            // Kernel threads have no executable; processes that exited
            // meanwhile have none any more.
            let Some(exe) = cached::proc_exe(pid) else {
                continue;
            };
            let entry = live.entry(exe.key).or_insert(LiveExe {
                pid,
                deleted_path: None,
            });
            entry.pid = entry.pid.min(pid);
            if exe.nlink == 0
                && entry.deleted_path.is_none()
                && trusted_deleted(pid, exe.mode)
                && let Ok(link) = process.exe()
            {
                entry.deleted_path = deleted_path(&link);
            }
        }
        live
    }

    fn running_exe(&self, pid: u32) -> Option<ExeKey> {
        cached::proc_exe(pid).map(|exe| exe.key)
    }

    fn exe_file_name(&self, path: &Path) -> io::Result<String> {
        stall::answers(path)?;
        let real = fs::canonicalize(path)?;
        let name = real.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", real.display()),
            )
        })?;
        name.to_str().map(str::to_owned).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file name of {} is not UTF-8", real.display()),
            )
        })
    }

    fn find_executables(&self, name: &str) -> Vec<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Vec::new();
        }
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for dir in search_dirs() {
            let candidate = dir.join(name);
            // Most names are in few directories: one lstat rules a miss out,
            // where canonicalize() would read every component's link (this
            // runs for every name in every directory at each refresh).
            if stall::answers_as_mount_point(&candidate).is_err() {
                continue;
            }
            let Ok(entry) = fs::symlink_metadata(&candidate) else {
                continue;
            };
            // A link may lead onto a filesystem that does not answer (a
            // `/usr/local/bin` entry linking into an NFS tree).
            if entry.file_type().is_symlink() && stall::answers(&candidate).is_err() {
                continue;
            }
            // Only root's copies: a link another user could plant or
            // point elsewhere would add any file's name to a rule.
            let Some((real, meta)) = trust::root_only_target(&candidate) else {
                debug!(
                    "{}: not counted as an installed copy of {name}: its file is not root's \
                     or others may write it, or it or a link on the way is in a directory \
                     that is not root's alone",
                    candidate.display()
                );
                continue;
            };
            // Named by where it was found (a link's own path, which the
            // warnings show), each file once.
            let executable = meta.permissions().mode() & 0o111 != 0;
            if executable && seen.insert(real) {
                found.push(candidate);
            }
        }
        found
    }

    fn user(&self, name: &str) -> io::Result<Option<u32>> {
        uid_by_name(name)
    }

    fn netns_inode(&self, path: &Path) -> Option<u32> {
        fs::metadata(path).ok().map(|meta| meta.ino() as u32)
    }

    fn script_interpreter(&self, path: &Path) -> Option<(String, bool)> {
        stall::answers(path).ok()?;
        shebang(path).ok()?.map(|line| interpreter_of(&line))
    }

    fn missing_exe(&self, path: &Path) -> Option<(PathBuf, u64)> {
        let (dir, name) = (path.parent()?, path.file_name()?);
        stall::answers(dir).ok()?;
        let real = fs::canonicalize(dir).ok()?;
        let meta = fs::metadata(&real).ok()?;
        Some((real.join(name), exe_key(&meta).dev))
    }

    fn others_may_replace(&self, path: &Path) -> bool {
        // One that cannot be read is warned of as such (`exe`).
        stall::answers(path).is_ok()
            && fs::symlink_metadata(path).is_ok()
            && trust::root_only_target(path).is_none()
    }

    fn cgroup(&self, path_or_unit: &str) -> io::Result<CgroupId> {
        if path_or_unit.contains('/') {
            self.cgroup_by_path(path_or_unit)
        } else {
            self.cgroup_by_name(path_or_unit)
        }
    }

    fn netns(&self, path: &Path) -> io::Result<u64> {
        let file = File::open(path)
            .map_err(|e| with_context(e, &format!("opening {}", path.display())))?;
        let target = file.metadata()?;
        // Our own namespace needs no setns (and so no privileges).
        let own = fs::metadata("/proc/thread-self/ns/net");
        if own.is_ok_and(|own| own.dev() == target.dev() && own.ino() == target.ino()) {
            return current_netns_cookie();
        }
        cookie_via_setns(file, path)
    }
}

/// The superblock device (`major:minor` as mountinfo prints `sb->s_dev`) of
/// the mount holding `path` (canonical).
pub fn superblock_dev(mountinfo: &str, path: &Path) -> Option<(u64, u64)> {
    mount_of(mountinfo, path).map(|mount| (mount.dev >> 20, mount.dev & 0xf_ffff))
}

/// The mount holding `path` (canonical), from `/proc/self/mountinfo` text:
/// the longest mount point that is a prefix of it, the last one listed when
/// several are stacked.
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<MountDev> {
    let mut best: Option<(usize, MountDev)> = None;
    for mount in crate::kernel::mountinfo::mounts(mountinfo) {
        if !path.starts_with(&mount.mount_point) {
            continue;
        }
        let depth = mount.mount_point.components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((
                depth,
                MountDev {
                    dev: ExeKey::from_major_minor(mount.major, mount.minor, 0).dev,
                    fs_type: mount.fs_type.to_owned(),
                    mount_point: mount.mount_point,
                },
            ));
        }
    }
    best.map(|(_, mount)| mount)
}

/// Whether the path a deleted executable of process `pid` (of mode
/// `mode`) was started from tells what it was: the process runs in this
/// daemon's user namespace and under its root directory, and no one but
/// the file's owner could write the file. A user can make a file of its
/// own read as deleted from any path: in a user and mount namespace of its
/// own, bind-mounted over that path, started there, then unlinked.
/// Mounting in this daemon's user namespace takes privilege; a container
/// that has it (a rootful one, no user namespace of its own) has a root of
/// its own, where its paths name its files, not the host's.
fn trusted_deleted(pid: u32, mode: u16) -> bool {
    let same = |what: &str| {
        let id =
            |pid: &str| fs::metadata(format!("/proc/{pid}/{what}")).map(|m| (m.dev(), m.ino()));
        matches!((id(&pid.to_string()), id("self")), (Ok(theirs), Ok(ours)) if theirs == ours)
    };
    mode & 0o022 == 0 && same("ns/user") && same("root")
}

/// `/proc/PID/exe` of a deleted file reads `<path> (deleted)`.
fn deleted_path(link: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = link.as_os_str().as_bytes();
    bytes
        .strip_suffix(b" (deleted)")
        .map(|path| PathBuf::from(OsStr::from_bytes(path)))
}

/// The kernel's key for a file: `sb->s_dev` is `major << 20 | minor`.
pub(crate) fn exe_key(meta: &fs::Metadata) -> ExeKey {
    let dev = meta.dev();
    ExeKey::from_major_minor(
        u64::from(libc::major(dev)),
        u64::from(libc::minor(dev)),
        meta.ino(),
    )
}

fn with_context(error: io::Error, what: &str) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("loopwarden-resolve-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn resolver() -> HostResolver {
        HostResolver::new(PathBuf::from("/nonexistent-cgroup-root"))
    }

    #[test]
    fn exe_uses_kernel_device_encoding() {
        let r = resolver();
        let key = r.exe(Path::new("/proc/self/exe")).unwrap().key;
        let meta = fs::metadata("/proc/self/exe").unwrap();
        let dev = meta.dev();
        assert_eq!(key.ino, meta.ino());
        assert_eq!(
            key.dev,
            (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev))
        );
    }

    #[test]
    fn a_script_is_refused_with_its_interpreter_named() {
        let tmp = TempDir::new("script");
        let script = tmp.0.join("agent");
        fs::write(&script, "#!/usr/bin/python3 -u\nprint('hi')\n").unwrap();
        let err = resolver().exe(&script).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            text.contains("is a script (`#!/usr/bin/python3 -u`)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("script = \"{}\"", script.display())),
            "{text}"
        );
        // A shell script: no `script` rule could name it either.
        let shell = tmp.0.join("relay.sh");
        fs::write(&shell, "#!/bin/sh\nexec socat\n").unwrap();
        let text = resolver().exe(&shell).unwrap_err().to_string();
        assert!(text.contains("is a script (`#!/bin/sh`)"), "{text}");
        assert!(!text.contains("script = "), "{text}");
        assert!(
            text.contains("sh is not an interpreter whose script"),
            "{text}"
        );
        // A binary (this test's own) resolves.
        assert!(resolver().exe(Path::new("/proc/self/exe")).is_ok());
        assert_eq!(shebang(Path::new("/proc/self/exe")).unwrap(), None);
    }

    #[test]
    fn an_interpreter_is_named_through_env_and_links() {
        for (line, name, reads) in [
            ("/usr/bin/python3 -u", "python3", true),
            ("/usr/bin/env python3", "python3", true),
            ("/usr/bin/env -S node --experimental", "node", true),
            ("/usr/bin/env LANG=C perl", "perl", true),
            ("/usr/bin/env -u LANG python3", "python3", true),
            ("/bin/bash", "bash", false),
            ("/bin/sh -e", "sh", false),
            ("/usr/bin/env bash", "bash", false),
            ("/usr/bin/awk -f", "awk", false),
        ] {
            assert_eq!(interpreter_of(line), (name.to_owned(), reads), "{line}");
        }
        // A link of another name to an interpreter: its target's name.
        let tmp = TempDir::new("interp");
        let link = tmp.0.join("agent-runtime");
        symlink(std::env::current_exe().unwrap(), &link).unwrap();
        assert!(!interpreter_of(link.to_str().unwrap()).1);
        // Named like an interpreter, leading to another program: the
        // kernel sees the program.
        let fake = tmp.0.join("python3");
        symlink(std::env::current_exe().unwrap(), &fake).unwrap();
        assert_eq!(
            interpreter_of(fake.to_str().unwrap()),
            ("python3".to_owned(), false)
        );
        let python = fs::canonicalize("/usr/bin/python3").unwrap();
        symlink(&python, tmp.0.join("py")).unwrap();
        let line = tmp.0.join("py").display().to_string();
        assert_eq!(interpreter_of(&line), ("py".to_owned(), true));
    }

    #[test]
    fn exe_follows_symlinks() {
        let tmp = TempDir::new("exe");
        let target = tmp.0.join("tool-1.2");
        fs::write(&target, b"\x7fELF").unwrap();
        let r = resolver();
        // Nothing runs a file without an execute bit.
        let err = r.exe(&target).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not executable (no execute bit)"),
            "{err}"
        );
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.0.join("tool");
        symlink(&target, &link).unwrap();
        assert_eq!(r.exe(&link).unwrap(), r.exe(&target).unwrap());
        assert_eq!(r.exe_file_name(&link).unwrap(), "tool-1.2");
        let err = r.exe(&tmp.0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn finds_executables_on_path() {
        let r = resolver();
        let found = r.find_executables("sh");
        assert!(!found.is_empty());
        // Named where found (`sh`, a link to dash here), each file once.
        assert!(
            found
                .iter()
                .all(|p| p.is_absolute() && p.file_name() == Some(OsStr::new("sh"))),
            "{found:?}"
        );
        let unique: HashSet<_> = found.iter().map(|p| fs::canonicalize(p).unwrap()).collect();
        assert_eq!(unique.len(), found.len());
        assert!(r.find_executables("no-such-tool-loopwarden").is_empty());
        assert!(r.find_executables("../bin/sh").is_empty());
    }

    #[test]
    fn users_through_nss() {
        let r = resolver();
        assert_eq!(r.user("root").unwrap(), Some(0));
        assert_eq!(user_name(0).unwrap().as_deref(), Some("root"));
        let nobody = r.user("nobody").unwrap().expect("a user named nobody");
        assert_eq!(user_name(nobody).unwrap().as_deref(), Some("nobody"));
        assert_eq!(r.user("no-such-user-loopwarden").unwrap(), None);
        // Not a name NSS can be asked about: no such user, not an error.
        assert_eq!(r.user("nul\0byte").unwrap(), None);
        // A uid nobody has (the top of the 32-bit range is reserved).
        assert_eq!(user_name(u32::MAX - 1).unwrap(), None);
    }

    #[test]
    fn superblock_dev_takes_the_deepest_and_latest_mount() {
        let info = "\
22 1 254:0 / / rw - ext4 /dev/vda rw
30 22 0:45 / /home rw - btrfs /dev/vdb rw
31 22 0:46 /@data /srv/data\\040x rw - btrfs /dev/vdb rw
32 31 0:47 / /srv/data\\040x rw - btrfs /dev/vdb rw
";
        assert_eq!(
            superblock_dev(info, Path::new("/usr/bin/socat")),
            Some((254, 0))
        );
        assert_eq!(
            superblock_dev(info, Path::new("/home/u/bin/x")),
            Some((0, 45))
        );
        assert_eq!(
            superblock_dev(info, Path::new("/srv/data x/bin")),
            Some((0, 47))
        );
        // A path prefix that is not a component prefix does not count.
        assert_eq!(
            superblock_dev(info, Path::new("/homework/x")),
            Some((254, 0))
        );
    }

    #[test]
    fn mount_of_names_the_filesystem_type() {
        let info = "\
22 1 254:0 / / rw shared:1 - ext4 /dev/vda rw
30 22 0:45 / /home rw shared:2 master:1 - btrfs /dev/vdb rw,subvol=/@home
";
        let home = mount_of(info, Path::new("/home/u/bin/x")).unwrap();
        assert_eq!(home.dev, ExeKey::from_major_minor(0, 45, 0).dev);
        assert_eq!(home.fs_type, "btrfs");
        assert_eq!(home.mount_point, Path::new("/home"));
        let root = mount_of(info, Path::new("/usr/bin/x")).unwrap();
        assert_eq!(root.dev, ExeKey::from_major_minor(254, 0, 0).dev);
        assert_eq!(root.fs_type, "ext4");
    }

    #[test]
    fn exe_reports_its_filesystem() {
        let r = resolver();
        let exe = std::env::current_exe().unwrap();
        let file = r.exe(&exe).unwrap();
        assert_eq!(file.real_path, fs::canonicalize(&exe).unwrap());
        let mount = file.mount.expect("mountinfo names a mount for every path");
        if mount.fs_type == "btrfs" || mount.fs_type == "overlay" {
            println!("skipped: the build directory is on {}", mount.fs_type);
            return;
        }
        // Where stat() and the superblock agree, the two devices are equal.
        assert_eq!(mount.dev, file.key.dev, "{mount:?}");
    }

    #[test]
    fn deleted_exe_links() {
        assert_eq!(
            deleted_path(Path::new("/usr/sbin/sshd (deleted)")),
            Some(PathBuf::from("/usr/sbin/sshd"))
        );
        assert_eq!(deleted_path(Path::new("/usr/sbin/sshd")), None);
    }

    #[test]
    fn live_exes_include_this_process_and_deleted_files() {
        let r = resolver();
        let me = std::process::id();
        let own = r.running_exe(me).expect("our own /proc/self/exe");
        assert_eq!(own, r.exe(Path::new("/proc/self/exe")).unwrap().key);
        assert_eq!(r.running_exe(u32::MAX - 1), None);

        // A copy of sleep, started, then deleted as an upgrade would.
        let tmp = TempDir::new("live");
        let copy = tmp.0.join("sleeper");
        fs::copy("/bin/sleep", &copy).unwrap();
        let real = fs::canonicalize(&copy).unwrap();
        let key = r.exe(&copy).unwrap().key;
        let mut child = std::process::Command::new(&copy).arg("30").spawn().unwrap();
        let started = std::time::Instant::now();
        while r.running_exe(child.id()) != Some(key) {
            assert!(started.elapsed().as_secs() < 10, "the copy did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        fs::remove_file(&copy).unwrap();
        let live = r.live_exes();
        let _ = child.kill();
        let _ = child.wait();

        let mine = &live[&own];
        assert!(mine.pid <= me, "{mine:?}");
        assert_eq!(live[&key].pid, child.id());
        assert_eq!(live[&key].deleted_path.as_deref(), Some(real.as_path()));
    }

    /// A deleted file started in a user namespace of its own (where a user
    /// may bind-mount it over any path), or one others could write, tells
    /// no path: an allow rule keeps no such file as its old version.
    #[test]
    fn a_deleted_file_tells_its_path_only_from_this_user_namespace_and_unwritable() {
        let r = resolver();
        let tmp = TempDir::new("live-untrusted");
        let run_deleted = |name: &str, mode: u32, wrap: &[&str]| {
            let copy = tmp.0.join(name);
            fs::copy("/bin/sleep", &copy).unwrap();
            fs::set_permissions(&copy, fs::Permissions::from_mode(mode)).unwrap();
            let key = r.exe(&copy).unwrap().key;
            let mut cmd = std::process::Command::new(wrap.first().copied().unwrap_or("env"));
            cmd.args(wrap.iter().skip(1)).arg(&copy).arg("30");
            let child = cmd.spawn().unwrap();
            let started = std::time::Instant::now();
            while !r.live_exes().contains_key(&key) {
                assert!(started.elapsed().as_secs() < 10, "{name} did not start");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            fs::remove_file(&copy).unwrap();
            (child, key)
        };
        let mut children = vec![
            run_deleted("own-ns", 0o755, &["unshare", "--user", "--map-root-user"]),
            run_deleted("writable", 0o757, &[]),
            run_deleted("control", 0o755, &[]),
        ];
        let live = r.live_exes();
        for (child, _) in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let told = |i: usize| live[&children[i].1].deleted_path.clone();
        assert_eq!(told(0), None);
        assert_eq!(told(1), None);
        // Positive control: the same file, from here and unwritable, tells.
        assert!(
            told(2).is_some_and(|p| p.ends_with("control")),
            "{:?}",
            told(2)
        );
    }

    #[test]
    fn netns_cookie() {
        let cookie = match current_netns_cookie() {
            Ok(cookie) => cookie,
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                println!("skipped: this kernel has no SO_NETNS_COOKIE (Linux < 5.14)");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_ne!(cookie, 0);
        assert_eq!(
            resolver().netns(Path::new("/proc/self/ns/net")).unwrap(),
            cookie
        );
        assert_eq!(
            resolver()
                .netns(Path::new("/nonexistent/ns"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped setns part: entering a network namespace needs root");
            return;
        }
        let file = File::open("/proc/self/ns/net").unwrap();
        assert_eq!(
            cookie_via_setns(file, Path::new("/proc/self/ns/net")).unwrap(),
            cookie
        );
    }
}
