//! Which installed files only root could have put where they are: a
//! command's copies found by name become names the catalog's rules match
//! (see [`super::HostResolver`]'s `find_executables`), so a copy another
//! user could plant or retarget (a link in a directory they own, such as
//! a conda install's `/opt/conda/bin`, or a `$PATH` entry of theirs) must
//! not count.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The most links followed from a copy to its file (the kernel's own
/// limit is 40).
const MAX_LINKS: usize = 40;

/// Whether the directory `dir` (its links followed) is root's alone
/// ([`not_private`] to uid 0).
pub(super) fn root_only_dir(dir: &Path) -> bool {
    not_private(dir, &[0]).is_none()
}

/// Why the directory `dir` (its links followed) is not private to the
/// owners `owners`, if it is not: it and each directory above it must be
/// owned by one of them, `dir` writable by no one else, and one above it
/// only when sticky (`/tmp`: others cannot rename or remove what was made
/// there). Where a file is made or followed by its path, another user who
/// could write on the way could swap a link in.
pub(crate) fn not_private(dir: &Path, owners: &[u32]) -> Option<String> {
    let real = match fs::canonicalize(dir) {
        Ok(real) => real,
        Err(e) => return Some(format!("{} cannot be resolved: {e}", dir.display())),
    };
    for (depth, d) in real.ancestors().enumerate() {
        let meta = match fs::metadata(d) {
            Ok(meta) => meta,
            Err(e) => return Some(format!("{} cannot be read: {e}", d.display())),
        };
        let mode = meta.permissions().mode();
        if !owners.contains(&meta.uid()) {
            return Some(format!("{} is owned by uid {}", d.display(), meta.uid()));
        }
        if mode & 0o022 != 0 && (depth == 0 || mode & 0o1000 == 0) {
            return Some(format!(
                "{} may be written by its group or others (mode {:o})",
                d.display(),
                mode & 0o7777
            ));
        }
    }
    None
}

/// The file the path `copy` leads to, if every link on the way, and the
/// file, is in a directory that is root's alone ([`root_only_dir`]): a
/// hop through a directory of another user's would let them choose the
/// file. `None` too for a loop or a path that does not resolve.
pub(super) fn root_only_target(copy: &Path) -> Option<PathBuf> {
    let mut path = copy.to_path_buf();
    for _ in 0..MAX_LINKS {
        let parent = path.parent()?;
        if !root_only_dir(parent) {
            return None;
        }
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return fs::canonicalize(&path).ok();
        }
        let target = fs::read_link(&path).ok()?;
        path = parent.join(target);
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A directory below the temporary one (sticky, world-writable), made
    /// by this process: root's when the tests run as root.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("loopwarden-trust-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir(&path).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn why_a_directory_is_not_private_is_said() {
        let scratch = Scratch::new("why");
        let why = not_private(&scratch.0, &[4_000_000]).unwrap();
        assert!(why.contains("is owned by uid"), "{why}");
        let why = not_private(&std::env::temp_dir(), &[0]).unwrap();
        assert!(
            why.contains("may be written by its group or others"),
            "{why}"
        );
        let why = not_private(Path::new("/nonexistent-loopwarden"), &[0]).unwrap();
        assert!(why.contains("cannot be resolved"), "{why}");
        assert_eq!(not_private(Path::new("/usr/bin"), &[0]), None);
    }

    #[test]
    fn system_directories_are_roots_and_the_temporary_one_is_not() {
        assert!(root_only_dir(Path::new("/usr/bin")));
        // World-writable: sticky is enough above a directory, not for it.
        assert!(!root_only_dir(&std::env::temp_dir()));
        assert!(!root_only_dir(Path::new("/nonexistent-loopwarden")));
    }

    #[test]
    fn a_directory_another_user_owns_or_may_write_is_not_roots() {
        let scratch = Scratch::new("dir");
        let bin = scratch.0.join("bin");
        fs::create_dir(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        // Made by this process: root's only when it is root.
        assert_eq!(root_only_dir(&bin), root());
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(!root_only_dir(&bin));
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        if root() {
            std::os::unix::fs::chown(&bin, Some(65534), None).unwrap();
            assert!(!root_only_dir(&bin));
            // Below it, though root's: the user may rename it.
            let below = bin.join("sub");
            fs::create_dir(&below).unwrap();
            std::os::unix::fs::chown(&below, Some(0), None).unwrap();
            assert!(!root_only_dir(&below));
        }
    }

    #[test]
    fn a_link_through_another_users_directory_leads_nowhere() {
        let scratch = Scratch::new("link");
        let (system, theirs) = (scratch.0.join("system"), scratch.0.join("theirs"));
        for dir in [&system, &theirs] {
            fs::create_dir(dir).unwrap();
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let direct = system.join("tunnel");
        symlink("/bin/sh", &direct).unwrap();
        let expected = fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(root_only_target(&direct), root().then_some(expected));
        // The copy links to a link of the other user's, which they can point
        // anywhere.
        let hop = theirs.join("hop");
        symlink("/bin/sh", &hop).unwrap();
        let via = system.join("via");
        symlink(&hop, &via).unwrap();
        if root() {
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        }
        assert_eq!(root_only_target(&via), None);
        // A loop resolves to nothing.
        let a = system.join("a");
        symlink(system.join("b"), &a).unwrap();
        symlink(&a, system.join("b")).unwrap();
        assert_eq!(root_only_target(&a), None);
    }
}
