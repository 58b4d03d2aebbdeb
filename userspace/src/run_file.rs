//! The daemon's files in its run directory (`status.json`, `rules.json`):
//! each replaced whole, through a temporary file of this process made
//! anew (never opened through a link another process put there), so a
//! reader sees the old file or the new one, never half of one.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// Replaces `path` with `contents` (mode 0644); `sync`: on disk before the
/// rename.
pub fn replace(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    // A stale one of this pid's (pid reuse) goes first.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)?;
    file.write_all(contents)?;
    if sync {
        file.sync_all()?;
    }
    fs::rename(&tmp, path)
}
