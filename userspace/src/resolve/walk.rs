//! Walking a path one component at a time, as the kernel resolves it, its
//! symbolic links followed by hand, for what the kernel's own walk
//! (`stat()`, `realpath()`) would hide from a caller: who owns each link
//! and directory on the way ([`super::trust`]), and which filesystems the
//! walk enters before it reads anything on them ([`super::stall`]). The
//! caller sees each step ([`Event`]) and may end the walk there.

use std::{
    collections::VecDeque,
    ffi::OsString,
    fs,
    path::{Component, Path, PathBuf},
};

/// The most links followed on one path (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// A step of a walk, in order.
pub(super) enum Event<'a> {
    /// The walk is about to read this path (`stat()` of a directory it
    /// goes back to, `lstat()` and `readlink()` of a component): nothing
    /// of it has been read yet.
    Reading(&'a Path),
    /// The walk is now in this directory (the root first), whose metadata
    /// these are.
    Entered(&'a Path, &'a fs::Metadata),
    /// A component's own metadata (`lstat()`), before a link is followed.
    Found(&'a Path, &'a fs::Metadata),
}

/// Why a walk ended before the end of its path.
pub(super) enum Stop<E> {
    /// The caller ended it, with this.
    Refused(E),
    /// The path cannot be walked: a component cannot be read or is not a
    /// directory, or links loop (reading the path fails too, at once).
    Unwalkable(String),
}

/// Walks `path` (made absolute) to what it names, calling `visit` at each
/// step; that and its metadata at the end.
pub(super) fn walk<E>(
    path: &Path,
    visit: &mut dyn FnMut(Event) -> Result<(), E>,
) -> Result<(PathBuf, fs::Metadata), Stop<E>> {
    let path = std::path::absolute(path).map_err(|e| {
        Stop::Unwalkable(format!("{} cannot be made absolute: {e}", path.display()))
    })?;
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_front(&mut pending, &path);
    let mut at = PathBuf::from("/");
    let mut meta = enter(&at, visit)?;
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // `at` holds no link: its parent is the one `..` reaches.
            at.pop();
            meta = enter(&at, visit)?;
            continue;
        }
        let next = at.join(&name);
        visit(Event::Reading(&next)).map_err(Stop::Refused)?;
        let here = fs::symlink_metadata(&next).map_err(|e| cannot_read(&next, &e))?;
        visit(Event::Found(&next, &here)).map_err(Stop::Refused)?;
        if here.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(Stop::Unwalkable(format!(
                    "{}: too many links",
                    path.display()
                )));
            }
            let target = fs::read_link(&next).map_err(|e| cannot_read(&next, &e))?;
            if target.is_absolute() {
                at = PathBuf::from("/");
                meta = enter(&at, visit)?;
            }
            push_front(&mut pending, &target);
            continue;
        }
        // Not a link: its own metadata are the ones `stat()` gives.
        at = next;
        meta = here;
        if meta.is_dir() {
            visit(Event::Entered(&at, &meta)).map_err(Stop::Refused)?;
        } else if !pending.is_empty() {
            return Err(Stop::Unwalkable(format!(
                "{} is not a directory",
                at.display()
            )));
        }
    }
    Ok((at, meta))
}

/// Reads the directory `dir` the walk goes (back) to, and enters it.
fn enter<E>(
    dir: &Path,
    visit: &mut dyn FnMut(Event) -> Result<(), E>,
) -> Result<fs::Metadata, Stop<E>> {
    visit(Event::Reading(dir)).map_err(Stop::Refused)?;
    let meta = fs::metadata(dir).map_err(|e| cannot_read(dir, &e))?;
    visit(Event::Entered(dir, &meta)).map_err(Stop::Refused)?;
    Ok(meta)
}

fn cannot_read<E>(path: &Path, e: &std::io::Error) -> Stop<E> {
    Stop::Unwalkable(format!("{} cannot be read: {e}", path.display()))
}

/// Puts the names of `path`'s components before those still pending.
fn push_front(pending: &mut VecDeque<OsString>, path: &Path) {
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push_front(name.to_owned()),
            Component::ParentDir => pending.push_front("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}
