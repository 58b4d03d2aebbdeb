//! Executables by name: the directories searched for them, and what the
//! `#!` line of a script runs.

use std::{
    fs, io,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use loopwarden_common::is_interpreter;

use super::{stall, trust};
use crate::fresh::Fresh;

/// Directories searched for executables by name, before `$PATH`.
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/lib/openssh",
    "/usr/libexec/openssh",
];
/// Searched after `$PATH`.
const EXTRA_DIRS: &[&str] = &["/root/.cargo/bin"];
/// `/opt/*/bin` is searched too.
const OPT_DIR: &str = "/opt";

/// The interpreter line of a file that starts with `#!` (what follows it,
/// up to 128 bytes), which the kernel runs in the file's place; `None` for
/// any other file (one that cannot be read included: a failure to run it
/// is not this one to say); `Err` for one on a filesystem that does not
/// answer ([`stall::read`]).
pub(super) fn shebang(path: &Path) -> io::Result<Option<String>> {
    use std::io::Read as _;
    let file = path.to_owned();
    // Never waiting: not for a FIFO swapped in after the caller's check,
    // nor for the break of a lease its owner holds on the file, nor for a
    // filesystem that does not answer (`Err`).
    let head = stall::read(path, move || {
        let mut head = Vec::with_capacity(130);
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(file)
            .ok()?
            .take(130)
            .read_to_end(&mut head)
            .ok()?;
        Some(head)
    })?;
    let line = head.as_deref().and_then(|head| head.strip_prefix(b"#!"));
    Ok(line.map(|line| {
        let line = line.split(|&b| b == b'\n').next().unwrap_or(line);
        String::from_utf8_lossy(line).trim().to_owned()
    }))
}

/// The interpreter a `#!` line (what follows `#!`) runs, by its name as
/// written (through `env`: `#!/usr/bin/env python3` runs `python3`, found
/// on the search path), and whether the kernel reads its script: as the
/// kernel decides, by the name of the file that runs ([`is_interpreter`]
/// of the file the path leads to: `python3` to `python3.11`), or by the
/// name as written when that file cannot be found here.
pub(crate) fn interpreter_of(line: &str) -> (String, bool) {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    let name = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (written, file) = if name(Path::new(first)) == "env" {
        // `env -S ...`, `env -u NAME ...`, `env NAME=value ...`: the
        // first word that is none of them, looked for as env looks.
        let mut program = None;
        while let Some(word) = words.next() {
            match word {
                "-u" | "--unset" | "-C" | "--chdir" => {
                    words.next();
                }
                w if w.starts_with('-') || w.contains('=') => {}
                w => {
                    program = Some(w);
                    break;
                }
            }
        }
        let program = program.unwrap_or(first);
        let file = if program.contains('/') {
            Some(PathBuf::from(program))
        } else {
            search_dirs()
                .into_iter()
                .map(|dir| dir.join(program))
                .find(|path| stall::answers(path).is_ok() && path.is_file())
        };
        (program, file)
    } else {
        (first, Some(PathBuf::from(first)))
    };
    let real = file
        .filter(|file| stall::answers(file).is_ok())
        .and_then(|file| fs::canonicalize(file).ok());
    let reads = match real {
        Some(real) => is_interpreter(name(&real).as_bytes()),
        None => is_interpreter(name(Path::new(written)).as_bytes()),
    };
    (name(Path::new(written)), reads)
}

/// How long a list of [`search_dirs`] serves again: a compile asks once
/// per catalogued name (some 70 times), all within a few milliseconds, and
/// the list is the same each time.
const SEARCH_DIRS_KEPT: Duration = Duration::from_millis(200);

/// [`list_search_dirs`], as listed at most [`SEARCH_DIRS_KEPT`] ago (the
/// directories' contents are read anew by each caller).
pub(super) fn search_dirs() -> Vec<PathBuf> {
    static LAST: Fresh<Vec<PathBuf>> = Fresh::new(SEARCH_DIRS_KEPT);
    LAST.get(list_search_dirs)
}

/// Every directory searched for executables, in order, duplicates
/// included, but those on a filesystem that does not answer now
/// ([`stall::answering`]) and, besides the system's own, those that are not
/// root's alone (an `/opt/conda` of a user's): no copy found there would
/// count ([`trust::root_only_target`]), and a link there could lead onto a
/// filesystem its user keeps from answering.
fn list_search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    if stall::answers(Path::new(OPT_DIR)).is_ok()
        && let Ok(opt) = fs::read_dir(OPT_DIR)
    {
        let mut opt_bins: Vec<PathBuf> = opt.flatten().map(|e| e.path().join("bin")).collect();
        opt_bins.sort();
        dirs.extend(opt_bins);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|p| p.is_absolute()));
    }
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    let mut dirs = stall::answering(dirs);
    dirs.retain(|dir| {
        SYSTEM_DIRS.iter().any(|system| dir == Path::new(system))
            || trust::not_private_walk(dir, &[0]).is_none()
    });
    dirs
}
