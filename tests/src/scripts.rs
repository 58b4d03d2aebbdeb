//! What the connect-path and kernel-matcher tests (connect_paths.rs,
//! matcher.rs) need around their scripts: the system Python, a probe's
//! output, executables' identities as the kernel reports them, and a
//! cgroup of the test's own.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use crate::TempDir;

/// The system Python the tests' connect scripts run under (`python3` on
/// `PATH` may be another one, e.g. pyenv's shim).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The output of a probe script that prints `pid=PID` and then one line
/// per thing it tried: the pid and those lines, `expected` of them.
pub fn probe_lines(out: &Output, expected: usize) -> (u32, Vec<String>) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let pid = lines
        .next()
        .and_then(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid line: {text}"));
    let lines: Vec<String> = lines.map(str::to_owned).collect();
    assert_eq!(lines.len(), expected, "{text}");
    (pid, lines)
}

/// A copy of the system Python's executable at `dir/name`: a distinct
/// executable (its own identity) a policy can name.
pub fn python_copy(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::copy(
        std::fs::canonicalize(SYSTEM_PYTHON).expect("resolving python"),
        &path,
    )
    .expect("copying python");
    path
}

/// `major:minor:inode` of the file at `path` (symlinks followed): the
/// identity audit records show as `exe_id`, read by the kernel.
pub fn exe_id(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {} failed: {e}", path.display()));
    let dev = meta.dev();
    format!("{}:{}:{}", libc::major(dev), libc::minor(dev), meta.ino())
}

/// The file name of `path` once symlinks are resolved: what the kernel
/// reports as `exe_name` for a process running it.
pub fn exe_name(path: &Path) -> String {
    let real = std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("resolving {} failed: {e}", path.display()));
    // The kernel reports at most 31 bytes of it.
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(31).collect()
}

/// The `key=value` words of the last line a test script printed; indexing a
/// missing key panics with the script's whole output.
pub struct Fields {
    map: std::collections::HashMap<String, String>,
    output: String,
}

impl Fields {
    pub fn of(out: &Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let map = stdout
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            map,
            output: format!(
                "status: {}\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

impl std::ops::Index<&str> for Fields {
    type Output = str;

    fn index(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("the script printed no {key}=\n{}", self.output))
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.output)
    }
}

/// Writes a script to `dir/name` and returns its path.
pub fn write_script(dir: &TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("writing {name} failed: {e}"));
    path.to_string_lossy().into_owned()
}

/// A cgroup directly below the cgroup v2 root (found in
/// /proc/self/mountinfo), named `name`. On drop every process below it is
/// moved back to the root and the cgroups are removed bottom-up.
pub struct TestCgroup {
    pub root: PathBuf,
    pub name: String,
    /// `root/name`.
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                post.starts_with("cgroup2 ")
                    .then(|| pre.split(' ').nth(4).map(PathBuf::from))
                    .flatten()
            })
            .expect("a cgroup v2 mount");
        let path = root.join(name);
        std::fs::create_dir(&path).expect("creating the test cgroup");
        Self {
            root,
            name: name.to_owned(),
            path,
        }
    }

    /// Its `cgroup.procs` file: write a pid to move that process in.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Removes it now, its processes moved to the root first, as a unit's
    /// stop does: [`TestCgroup::make`] makes a new cgroup of the same name.
    pub fn remove_now(&self) {
        Self::remove(&self.path, &self.root);
        assert!(
            !self.path.exists(),
            "{} was not removed",
            self.path.display()
        );
    }

    /// Makes it (again, after [`TestCgroup::remove_now`]).
    pub fn make(&self) {
        std::fs::create_dir(&self.path).expect("making the test cgroup");
    }

    /// Its id: the inode number of its directory.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.path)
            .expect("the test cgroup")
            .ino()
    }

    fn remove(dir: &Path, root: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove(&entry.path(), root);
                }
            }
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        Self::remove(&self.path, &self.root);
    }
}
