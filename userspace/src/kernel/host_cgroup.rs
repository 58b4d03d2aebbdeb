//! The host's cgroup v2 root, given explicitly (`--host-cgroup-root`,
//! [`ENV`]) to a loopwarden that runs in a container whose cgroup namespace
//! is not the host's (a Kubernetes DaemonSet).
//!
//! Owns the check that the given path really is the root of the cgroup v2
//! hierarchy (not the container's own `/sys/fs/cgroup`, which is only its
//! namespace's subtree), and the translation of the cgroup paths
//! `/proc/PID/cgroup` shows inside a cgroup namespace (relative to the
//! namespace's root: `/../../system.slice/x.service`) into paths below the
//! host root, which the enricher and the cut read cgroup ids from.

use std::{
    collections::VecDeque,
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// The environment variable that gives the host root (for containers).
pub const ENV: &str = "LOOPWARDEN_HOST_CGROUP_ROOT";

/// `statfs` type of cgroup v2 (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where this process's cgroup namespace root lies below the host root
/// (e.g. `/kubepods.slice/.../cri-containerd-x.scope`); set once when a
/// host root is used from a child cgroup namespace.
static NS_ROOT: OnceLock<String> = OnceLock::new();

/// A path given as the host's cgroup root that is not.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error("--host-cgroup-root {}: cannot read it", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--host-cgroup-root {}: not a cgroup v2 mount (filesystem type {f_type:#x}); bind-mount \
         the host's cgroup v2 hierarchy there (its /sys/fs/cgroup, or /sys/fs/cgroup/unified on \
         hybrid hosts)",
        path.display()
    )]
    NotCgroup2 { path: PathBuf, f_type: i64 },
    #[error(
        "--host-cgroup-root {}: a cgroup below the hierarchy's root (it has a cgroup.type file, \
         which every cgroup but the root has), e.g. a container's own /sys/fs/cgroup; mount the \
         host's /sys/fs/cgroup there (a hostPath volume)",
        path.display()
    )]
    NotRoot { path: PathBuf },
    #[error(
        "--host-cgroup-root {}: this process (pid {pid}, cgroup {own} in its namespace) is in no \
         cgroup below it, so cgroup paths cannot be placed; is it really this host's hierarchy?",
        path.display()
    )]
    SelfNotFound {
        path: PathBuf,
        pid: u32,
        own: String,
    },
}

/// Checks that `path` is the root of the cgroup v2 hierarchy, and from a
/// child cgroup namespace records where that namespace's root lies below it.
///
/// What is checked, and why it is enough:
/// - `statfs` says cgroup2: a mount of the (single) v2 hierarchy, not a
///   directory that looks like one;
/// - no `cgroup.type` file: the kernel creates it in every cgroup except the
///   hierarchy's root (`CFTYPE_NOT_ON_ROOT`, kernel/cgroup/cgroup.c), so a
///   bind mount of a sub-cgroup or a cgroup2 mount made inside a cgroup
///   namespace (whose root is the namespace's cgroup) is refused: programs
///   attached there would judge only that subtree;
/// - this process is found in a `cgroup.procs` below it (pids there are in
///   the reader's pid namespace): the hierarchy is this kernel's.
pub fn use_host_root(path: &Path) -> Result<PathBuf, HostCgroupError> {
    let unreadable = |source| HostCgroupError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let f_type = statfs_type(path).map_err(unreadable)?;
    if f_type != CGROUP2_SUPER_MAGIC {
        return Err(HostCgroupError::NotCgroup2 {
            path: path.to_owned(),
            f_type,
        });
    }
    fs::read(path.join("cgroup.procs")).map_err(unreadable)?;
    if path.join("cgroup.type").exists() {
        return Err(HostCgroupError::NotRoot {
            path: path.to_owned(),
        });
    }
    let own = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| crate::events::cgroup_v2_path(&t))
        .unwrap_or_default();
    let pid = std::process::id();
    let not_found = || HostCgroupError::SelfNotFound {
        path: path.to_owned(),
        pid,
        own: own.clone(),
    };
    let host = find_pid(path, pid).ok_or_else(not_found)?;
    let ns_root = ns_root(&host, &own).ok_or_else(not_found)?;
    if super::compat::in_child_cgroup_namespace() {
        let _ = NS_ROOT.set(ns_root);
    }
    Ok(path.to_owned())
}

/// A cgroup path read from `/proc/PID/cgroup` as a path below the host
/// root: unchanged unless [`use_host_root`] placed a child namespace.
pub fn host_path(path: &str) -> String {
    match NS_ROOT.get() {
        Some(ns_root) => join(ns_root, path),
        None => path.to_owned(),
    }
}

/// `rel` (which may climb with `..`) below `base`, both `/`-rooted.
fn join(base: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The namespace root below the host root, from this process's cgroup
/// there (`host`) and in its namespace (`own`): `host` minus `own`'s tail.
fn ns_root(host: &str, own: &str) -> Option<String> {
    let own = own.trim_end_matches('/');
    if own.split('/').any(|p| p == "..") {
        return None;
    }
    let root = host.strip_suffix(own)?;
    Some(if root.is_empty() { "/" } else { root }.to_owned())
}

/// The path (below `root`, `/`-rooted) of the cgroup whose `cgroup.procs`
/// lists `pid`, breadth first.
fn find_pid(root: &Path, pid: u32) -> Option<String> {
    let pid = pid.to_string();
    let mut queue = VecDeque::from([PathBuf::new()]);
    while let Some(rel) = queue.pop_front() {
        let dir = root.join(&rel);
        if fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|procs| procs.split_whitespace().any(|p| p == pid))
        {
            return Some(format!("/{}", rel.display()));
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(rel.join(entry.file_name()));
            }
        }
    }
    None
}

fn statfs_type(path: &Path) -> std::io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer we own.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // `__fsword_t` is not i64 everywhere
    Ok(buf.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_paths_placed_below_the_host_root() {
        assert_eq!(
            join("/kube/pod1", "/../../system.slice/x"),
            "/system.slice/x"
        );
        assert_eq!(join("/kube/pod1", "/"), "/kube/pod1");
        assert_eq!(join("/kube/pod1", "/sub"), "/kube/pod1/sub");
        assert_eq!(join("/", "/a/b"), "/a/b");
        assert_eq!(join("/a", "/../../.."), "/");
    }

    #[test]
    fn namespace_root_from_own_cgroup() {
        assert_eq!(ns_root("/kube/pod1", "/").as_deref(), Some("/kube/pod1"));
        assert_eq!(
            ns_root("/kube/pod1/init", "/init").as_deref(),
            Some("/kube/pod1")
        );
        assert_eq!(ns_root("/x", "/x").as_deref(), Some("/"));
        assert_eq!(ns_root("/", "/").as_deref(), Some("/"));
        assert_eq!(ns_root("/kube/pod1", "/other"), None);
        assert_eq!(ns_root("/kube/pod1", "/../pod1"), None);
    }

    #[test]
    fn refuses_what_is_not_a_cgroup2_root() {
        let tmp = std::env::temp_dir();
        assert!(matches!(
            use_host_root(&tmp),
            Err(HostCgroupError::NotCgroup2 { .. })
        ));
        assert!(matches!(
            use_host_root(Path::new("/nonexistent/cgroup")),
            Err(HostCgroupError::Unreadable { .. })
        ));
    }
}
