//! Cgroup v2 names: a rule's `cgroup` (a path below the root, or a bare
//! unit name searched for below it) as the directory a program attaches to
//! and the id (its inode number) the kernel programs compare.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use nix::unistd::Uid;

use super::{HostResolver, with_context};
use crate::policy::CgroupId;

/// Deepest level below the cgroup root a bare unit name is searched at.
const UNIT_SEARCH_DEPTH: u32 = 6;
/// Most cgroup directories a bare unit name's search reads. The daemon
/// resolves names again every second on its event loop, and a unit not
/// running makes the search read every cgroup down to
/// [`UNIT_SEARCH_DEPTH`]: with no bound, a user creating directories in a
/// delegated subtree (`user@UID.service`) would slow every second of it.
/// A host's own tree (a Kubernetes node's pods and containers included)
/// stays well below.
const UNIT_SEARCH_DIRS: usize = 8192;

impl HostResolver {
    /// A cgroup directory given as a path relative to the root.
    pub(super) fn cgroup_by_path(&self, rel: &str) -> io::Result<CgroupId> {
        let rel = Path::new(rel.trim_start_matches('/'));
        let mut level = 0u32;
        for component in rel.components() {
            match component {
                Component::Normal(_) => level += 1,
                Component::CurDir => {}
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "cgroup path {} must stay below the cgroup root",
                            rel.display()
                        ),
                    ));
                }
            }
        }
        let dir = self.cgroup_root.join(rel);
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(CgroupId {
                id: meta.ino(),
                level,
            }),
            Ok(_) => Err(self.no_cgroup(&rel.to_string_lossy())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Err(self.no_cgroup(&rel.to_string_lossy()))
            }
            Err(e) => Err(with_context(
                e,
                &format!("reading cgroup {}", dir.display()),
            )),
        }
    }

    /// The directory of a cgroup given as a rule's `cgroup` is (a path
    /// below the root, or a bare unit name found below it): where a program
    /// is attached for it.
    pub fn cgroup_dir(&self, path_or_unit: &str) -> io::Result<PathBuf> {
        if path_or_unit.contains('/') {
            self.cgroup_by_path(path_or_unit)?;
            Ok(self.cgroup_root.join(path_or_unit.trim_start_matches('/')))
        } else {
            self.find_unit(path_or_unit).map(|(dir, _)| dir)
        }
    }

    /// A cgroup directory named `unit` anywhere below the root, shallowest
    /// first.
    pub(super) fn cgroup_by_name(&self, unit: &str) -> io::Result<CgroupId> {
        let (dir, level) = self.find_unit(unit)?;
        Ok(CgroupId {
            id: fs::metadata(dir)?.ino(),
            level,
        })
    }

    /// The directory named `unit` below the root, at the shallowest level
    /// that has one, and its level. Two there (a unit of that name under
    /// each of two users' managers) are an error: which one a bare name
    /// means is not for directory order to decide. Only cgroups in
    /// directories root (or this process's user) owns, all the way up,
    /// are found: a tree delegated to a user (below `user@UID.service`, a
    /// container's) is theirs to name as they like, and a cgroup they make
    /// there under a system unit's name must neither take that name's
    /// rules (an allow rule's exemption) nor make it ambiguous. A unit in
    /// such a tree is named by its path.
    fn find_unit(&self, unit: &str) -> io::Result<(PathBuf, u32)> {
        if unit.is_empty() || unit == "." || unit == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{unit:?} is not a cgroup name"),
            ));
        }
        let mut found: Vec<PathBuf> = Vec::new();
        let mut found_level = 0;
        // With whether it and every directory above it are root's.
        let mut queue = VecDeque::from([(self.cgroup_root.clone(), 0u32, true)]);
        let mut read = 0;
        let euid = Uid::effective().as_raw();
        let ours = |entry: &fs::DirEntry| {
            entry
                .metadata()
                .is_ok_and(|m| m.uid() == 0 || m.uid() == euid)
        };
        // Directories of that name others own, left out.
        let mut theirs = 0usize;
        while let Some((dir, level, owned)) = queue.pop_front() {
            // Breadth first: past the level of the first match, no other
            // is as shallow.
            if !found.is_empty() && level >= found_level {
                break;
            }
            if read == UNIT_SEARCH_DIRS {
                let what = if found.is_empty() {
                    "not found in"
                } else {
                    // Another as near may be past the budget: no guess.
                    "found, but another as near the root may be past"
                };
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "cgroup {unit} {what} the {UNIT_SEARCH_DIRS} cgroups nearest to {} (the \
                         search stops there): name it by its path below the root",
                        self.cgroup_root.display()
                    ),
                ));
            }
            read += 1;
            // Unreadable directories are skipped: the unit may be elsewhere.
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                // In a directory of root's only root made it (a unit
                // delegated to a user, `user@1000.service`, is theirs, but
                // its name was root's to give); below one of a user's, the
                // user did.
                if entry.file_name() == OsStr::new(unit) {
                    if owned {
                        found.push(entry.path());
                        found_level = level + 1;
                    } else {
                        theirs += 1;
                    }
                } else if level + 1 < UNIT_SEARCH_DEPTH {
                    queue.push_back((entry.path(), level + 1, owned && ours(&entry)));
                }
            }
        }
        match found.len() {
            0 if theirs > 0 => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "cgroup {unit} not found under {} among root's cgroups ({theirs} of that \
                     name belong to other users, whose cgroups a bare name never means): name \
                     a user's unit by its path",
                    self.cgroup_root.display()
                ),
            )),
            0 => Err(self.no_cgroup(unit)),
            1 => Ok((found.remove(0), found_level)),
            _ => {
                found.sort();
                let paths: Vec<String> = found
                    .iter()
                    .map(|p| {
                        let rel = p.strip_prefix(&self.cgroup_root).unwrap_or(p);
                        rel.display().to_string()
                    })
                    .collect();
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "cgroup name {unit} is ambiguous: {} cgroups below {} have it ({}); \
                         name the one meant by its path",
                        found.len(),
                        self.cgroup_root.display(),
                        paths.join(", ")
                    ),
                ))
            }
        }
    }

    fn no_cgroup(&self, name: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "cgroup {name} not found under {}",
                self.cgroup_root.display()
            ),
        )
    }
}

/// The path (like `/system.slice/x.service`) of the cgroup v2 whose id is
/// `id`, below the mount `cgroup_root`, found by its file handle: cgroupfs
/// gives a directory's id as its handle (`FILEID_KERNFS`), so this works
/// for a cgroup whose processes are all gone, which `/proc` cannot tell.
/// Needs CAP_DAC_READ_SEARCH (root). `None` when the cgroup is gone too,
/// or is not below `cgroup_root`.
pub fn path_by_id(cgroup_root: &Path, id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    /// `struct file_handle` with its 8 bytes of handle: the kernfs id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    /// `FILEID_KERNFS` (include/linux/exportfs.h).
    const FILEID_KERNFS: i32 = 0xfe;
    if id == 0 {
        return None;
    }
    let root = fs::File::open(cgroup_root).ok()?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `handle` is a `struct file_handle` whose `handle_bytes`
    // says how many bytes of handle follow its header; it outlives the
    // call, which only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(
            root.as_raw_fd(),
            (&raw mut handle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor open_by_handle_at just opened, owned by nothing else.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let below = path.strip_prefix(cgroup_root).ok()?;
    Some(format!("/{}", below.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Resolver as _;

    #[test]
    fn cgroups_in_a_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let service = tmp.path().join("system.slice/foo.service");
        let nested = tmp
            .path()
            .join("user.slice/user-1000.slice/user@1000.service/app.slice/bar.service");
        fs::create_dir_all(&service).unwrap();
        fs::create_dir_all(&nested).unwrap();
        fs::write(tmp.path().join("cgroup.procs"), b"").unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let r = HostResolver::new(tmp.path().to_path_buf());

        let by_path = r.cgroup("system.slice/foo.service").unwrap();
        assert_eq!(
            by_path,
            CgroupId {
                id: ino(&service),
                level: 2
            }
        );
        assert_eq!(r.cgroup("/system.slice/foo.service").unwrap(), by_path);
        assert_eq!(r.cgroup("foo.service").unwrap(), by_path);
        assert_eq!(
            r.cgroup("/").unwrap(),
            CgroupId {
                id: ino(tmp.path()),
                level: 0
            }
        );
        assert_eq!(
            r.cgroup("bar.service").unwrap(),
            CgroupId {
                id: ino(&nested),
                level: 5
            }
        );
        assert_eq!(
            r.cgroup("user.slice/user-1000.slice/").unwrap(),
            CgroupId {
                id: ino(&tmp.path().join("user.slice/user-1000.slice")),
                level: 2
            }
        );

        // A tree delegated to a user is theirs: a cgroup of theirs under a
        // name is never what the bare name means (as root, where the
        // others are root's; by path it still is). The delegated unit
        // itself, in root's directory, still is.
        if nix::unistd::Uid::effective().is_root() {
            let delegated = tmp
                .path()
                .join("user.slice/user-1000.slice/user@1000.service");
            for dir in [&delegated, &delegated.join("app.slice"), &nested] {
                std::os::unix::fs::chown(dir, Some(1000), None).unwrap();
            }
            assert_eq!(r.cgroup("user@1000.service").unwrap().id, ino(&delegated));
            let theirs = r.cgroup("bar.service").unwrap_err();
            assert_eq!(theirs.kind(), io::ErrorKind::NotFound);
            assert!(
                theirs
                    .to_string()
                    .contains("1 of that name belong to other users"),
                "{theirs}"
            );
            let planted = delegated.join("foo.service");
            fs::create_dir(&planted).unwrap();
            std::os::unix::fs::chown(&planted, Some(1000), None).unwrap();
            assert_eq!(r.cgroup("foo.service").unwrap(), by_path);
            assert_eq!(
                r.cgroup("user.slice/user-1000.slice/user@1000.service/app.slice/bar.service")
                    .unwrap()
                    .id,
                ino(&nested)
            );
            fs::remove_dir(&planted).unwrap();
            for dir in [&delegated, &delegated.join("app.slice"), &nested] {
                std::os::unix::fs::chown(dir, Some(0), None).unwrap();
            }
        }

        let missing = r.cgroup("missing.service").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(missing.to_string().contains("missing.service"), "{missing}");

        // The same name under two users' managers, as shallow as each
        // other: no guess. One shallower wins over deeper ones.
        let other = tmp
            .path()
            .join("user.slice/user-1001.slice/user@1001.service/app.slice/bar.service");
        fs::create_dir_all(&other).unwrap();
        let twice = r.cgroup("bar.service").unwrap_err();
        assert_eq!(twice.kind(), io::ErrorKind::InvalidInput);
        let text = twice.to_string();
        assert!(
            text.contains("cgroup name bar.service is ambiguous: 2 cgroups")
                && text
                    .contains("user.slice/user-1000.slice/user@1000.service/app.slice/bar.service")
                && text
                    .contains("user.slice/user-1001.slice/user@1001.service/app.slice/bar.service"),
            "{text}"
        );
        fs::create_dir_all(tmp.path().join("system.slice/bar.service")).unwrap();
        assert_eq!(r.cgroup("bar.service").unwrap().level, 2);
        let missing = r.cgroup("system.slice/missing.service").unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(
            missing.to_string().contains("system.slice/missing.service"),
            "{missing}"
        );
        // A file is not a cgroup.
        assert_eq!(
            r.cgroup("cgroup.procs").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            r.cgroup("/cgroup.procs").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            r.cgroup("system.slice/../..").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn unit_search_reads_a_bounded_number_of_cgroups() {
        let tmp = tempfile::tempdir().unwrap();
        // A user's delegated subtree full of directories, and a unit one
        // level deeper than all of them.
        let many = tmp.path().join("user.slice/user@1000.service");
        for i in 0..UNIT_SEARCH_DIRS {
            fs::create_dir_all(many.join(format!("d{i}"))).unwrap();
        }
        fs::create_dir_all(tmp.path().join("system.slice/a/b/deep.service")).unwrap();
        let r = HostResolver::new(tmp.path().to_path_buf());
        let err = r.cgroup("deep.service").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("name it by its path"), "{err}");
        // Named by its path, it is found; so is a unit above the crowd.
        assert_eq!(r.cgroup("system.slice/a/b/deep.service").unwrap().level, 4);
        assert_eq!(r.cgroup("b").unwrap().level, 3);
    }

    /// This process's own cgroup, found again by its id; an id of no
    /// cgroup, and 0, are not found.
    #[test]
    fn a_cgroup_is_found_by_its_id() {
        let root = crate::kernel::compat::cgroup2_root(None).expect("a cgroup v2 mount");
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = crate::events::cgroup_v2_path(&own).expect("a cgroup v2 line");
        let id = fs::metadata(root.join(own.trim_start_matches('/')))
            .unwrap()
            .ino();
        let found = path_by_id(&root, id);
        if Uid::effective().is_root() {
            assert_eq!(found.as_deref(), Some(own.as_str()));
        } else {
            // Handles need CAP_DAC_READ_SEARCH.
            assert_eq!(found, None);
        }
        assert_eq!(path_by_id(&root, 0), None);
        assert_eq!(path_by_id(&root, u64::MAX - 1), None);
    }

    #[test]
    fn unit_search_depth_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("1/2/3/4/5/6/7/deep.service");
        fs::create_dir_all(&deep).unwrap();
        let r = HostResolver::new(tmp.path().to_path_buf());
        assert_eq!(r.cgroup("6").unwrap().level, 6);
        assert_eq!(r.cgroup("7").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(r.cgroup("1/2/3/4/5/6/7/deep.service").unwrap().level, 8);
    }
}
