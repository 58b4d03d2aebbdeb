//! Which files and directories only root (or the daemon's own user) could
//! have put where they are, or point elsewhere. A command's copies found by
//! name become names the catalog's rules match (see
//! [`super::HostResolver`]'s `find_executables`), so a copy another user
//! could plant or retarget (a link in a directory they own, such as a conda
//! install's `/opt/conda/bin`, or a `$PATH` entry of theirs) must not
//! count; the run directory's files are made by path (see
//! `daemon::lock`), so no other user may be able to swap a link in on the
//! way to it; and an exemption naming a file another user could replace
//! is warned of.
//!
//! A path is walked one component at a time, its links followed by hand
//! ([`super::walk`]; not with `realpath()`, which would hide a link
//! another user owns on the way): each directory it goes through must be
//! owned by one of the owners and writable by no one else, or be sticky
//! (`/tmp`, where others cannot rename or remove what is not theirs; the
//! component there must then be the owners' own, since another user could
//! have made it first).

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::walk::{Event, Stop};

/// Why the directory `dir` is not private to `owners`, if it is not: the
/// walk to it must be theirs alone (see the module's documentation), and
/// `dir` itself writable by no one else, not even sticky.
// Used by the daemon's lock, which fuzz builds leave out.
#[cfg_attr(fuzzing, allow(dead_code))]
pub(crate) fn not_private(dir: &Path, owners: &[u32]) -> Option<String> {
    match walk(dir, owners) {
        Err(why) => Some(why),
        Ok((real, meta)) if !meta.is_dir() => {
            Some(format!("{} is not a directory", real.display()))
        }
        Ok((real, meta)) if meta.permissions().mode() & 0o022 != 0 => {
            Some(others_write(&real, &meta))
        }
        Ok(_) => None,
    }
}

/// Why the walk to `dir` is not `owners`' alone, if it is not (see the
/// module's documentation); `dir` itself may be sticky (`/tmp`, where a
/// directory of theirs can be made).
// Used by the daemon's lock, which fuzz builds leave out.
#[cfg_attr(fuzzing, allow(dead_code))]
pub(crate) fn not_private_walk(dir: &Path, owners: &[u32]) -> Option<String> {
    walk(dir, owners).err()
}

/// The file the path `copy` leads to, and its metadata, if the walk to it
/// is root's alone and the file is root's and writable by no one else:
/// another user could neither point `copy` elsewhere nor change what it
/// leads to. `None` too for a loop or a path that does not resolve.
pub(super) fn root_only_target(copy: &Path) -> Option<(PathBuf, fs::Metadata)> {
    let (real, meta) = walk(copy, &[0]).ok()?;
    (meta.is_file() && meta.uid() == 0 && meta.permissions().mode() & 0o022 == 0)
        .then_some((real, meta))
}

fn others_write(path: &Path, meta: &fs::Metadata) -> String {
    format!(
        "{} may be written by its group or others (mode {:o})",
        path.display(),
        meta.permissions().mode() & 0o7777
    )
}

/// Walks `path` (made absolute) to what it names, links followed by hand;
/// that and its metadata, or why not, when a directory on the way, or a
/// link or directory in a sticky one, is not `owners`' alone.
fn walk(path: &Path, owners: &[u32]) -> Result<(PathBuf, fs::Metadata), String> {
    // Whether the directory the walk is in is writable by others (then
    // sticky).
    let mut shared = false;
    super::walk::walk(path, &mut |event| match event {
        Event::Entered(dir, meta) => {
            shared = enter(dir, meta, owners)?;
            Ok(())
        }
        Event::Found(next, here) if shared && !owners.contains(&here.uid()) => Err(format!(
            "{} is owned by uid {}, in a directory others may write",
            next.display(),
            here.uid()
        )),
        Event::Found(..) | Event::Reading(_) => Ok(()),
    })
    .map_err(|stop| match stop {
        Stop::Refused(why) | Stop::Unwalkable(why) => why,
    })
}

/// Checks the directory `dir` (with metadata `meta`), reached by the walk:
/// owned by one of `owners`, writable by no one else unless sticky.
/// Whether others may write it (sticky).
fn enter(dir: &Path, meta: &fs::Metadata, owners: &[u32]) -> Result<bool, String> {
    if !owners.contains(&meta.uid()) {
        return Err(format!("{} is owned by uid {}", dir.display(), meta.uid()));
    }
    let mode = meta.permissions().mode();
    let others = mode & 0o022 != 0;
    if others && mode & 0o1000 == 0 {
        return Err(others_write(dir, meta));
    }
    Ok(others)
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

    /// Whether the directory `dir` is root's alone.
    fn root_only_dir(dir: &Path) -> bool {
        not_private(dir, &[0]).is_none()
    }

    /// [`root_only_target`]'s path.
    fn target(copy: &Path) -> Option<PathBuf> {
        root_only_target(copy).map(|(real, _)| real)
    }

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    /// A directory in `scratch` anyone may write, sticky (as `/tmp`).
    fn sticky(scratch: &Scratch) -> PathBuf {
        let dir = scratch.0.join("sticky");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        dir
    }

    #[test]
    fn why_a_directory_is_not_private_is_said() {
        let scratch = Scratch::new("why");
        let why = not_private(&scratch.0, &[4_000_000]).unwrap();
        assert!(why.contains("is owned by uid"), "{why}");
        let me = nix::unistd::Uid::effective().as_raw();
        let why = not_private(&sticky(&scratch), &[0, me]).unwrap();
        assert!(
            why.contains("may be written by its group or others"),
            "{why}"
        );
        let why = not_private(Path::new("/nonexistent-loopwarden"), &[0]).unwrap();
        assert!(why.contains("cannot be read"), "{why}");
        assert_eq!(not_private(Path::new("/usr/bin"), &[0]), None);
    }

    /// `/tmp/lw -> /etc`, made by another user before root names
    /// `/tmp/lw`: `/etc` is root's, but the link is theirs to point
    /// elsewhere later. In a sticky directory only the owners' own links and
    /// directories are followed; a directory of the owners' there is.
    #[test]
    fn a_link_another_user_owns_in_a_sticky_directory_is_not_followed() {
        let scratch = Scratch::new("sticky");
        let shared = scratch.0.join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let link = shared.join("lw");
        symlink("/etc", &link).unwrap();
        let ours = shared.join("ours");
        fs::create_dir(&ours).unwrap();
        fs::set_permissions(&ours, fs::Permissions::from_mode(0o755)).unwrap();
        if root() {
            assert_eq!(not_private(&link, &[0]), None);
            assert_eq!(not_private(&ours, &[0]), None);
            std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
            let why = not_private(&link, &[0]).unwrap();
            assert!(
                why.contains("lw is owned by uid 65534, in a directory others may write"),
                "{why}"
            );
            std::os::unix::fs::chown(&ours, Some(65534), None).unwrap();
            assert!(not_private(&ours, &[0]).is_some());
        } else {
            assert!(not_private(&link, &[0]).is_some());
        }
        // The sticky directory itself is no private one.
        assert!(not_private(&shared, &[0, 4_000_000]).is_some());
    }

    #[test]
    fn system_directories_are_roots_and_the_temporary_one_is_not() {
        assert!(root_only_dir(Path::new("/usr/bin")));
        // World-writable: sticky is enough above a directory, not for it.
        let scratch = Scratch::new("tmp");
        assert!(!root_only_dir(&sticky(&scratch)));
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
        assert_eq!(target(&direct), root().then_some(expected));
        // The copy links to a link of the other user's, which they can point
        // anywhere.
        let hop = theirs.join("hop");
        symlink("/bin/sh", &hop).unwrap();
        let via = system.join("via");
        symlink(&hop, &via).unwrap();
        if root() {
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        }
        assert_eq!(target(&via), None);
        // A file others may write is not root's alone, wherever it is.
        let writable = system.join("writable");
        fs::copy("/bin/sh", &writable).unwrap();
        fs::set_permissions(&writable, fs::Permissions::from_mode(0o757)).unwrap();
        assert_eq!(target(&writable), None);
        // A loop resolves to nothing.
        let a = system.join("a");
        symlink(system.join("b"), &a).unwrap();
        symlink(&a, system.join("b")).unwrap();
        assert_eq!(target(&a), None);
    }
}
