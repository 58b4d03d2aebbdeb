//! Does this host have what the kernel programs need?
//!
//! Owns the start-up checks, each failing with a message that says what is
//! missing and how to fix it: the capabilities the daemon uses (checked
//! themselves, not uid 0, so a unit can bound them), a mounted cgroup v2 hierarchy (found in
//! `/proc/self/mountinfo`, never assumed, in the host's cgroup namespace; or
//! given with `--host-cgroup-root`, see [`host_cgroup`]), the kernel's own BTF, and a kernel
//! recent enough for the helpers the programs call.
//!
//! # Minimum kernel version
//!
//! 5.18: the connect hooks refuse with `bpf_set_retval(-ECONNREFUSED)`, which
//! cgroup programs can call since Linux 5.18.

use std::{
    ffi::CStr,
    fs,
    path::{Path, PathBuf},
};

use crate::kernel::{btf::VMLINUX_BTF, host_cgroup, mountinfo};

/// The oldest kernel (major, minor) the programs load on.
pub const MIN_KERNEL: (u32, u32) = (5, 18);

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The capabilities the daemon uses (bits from
/// include/uapi/linux/capability.h), each for:
/// - `CAP_BPF`: loading programs and creating maps;
/// - `CAP_PERFMON`: tracing programs (tp_btf, fentry) and the probe_read helpers;
/// - `CAP_NET_ADMIN`: cgroup socket programs, and SOCK_DESTROY (the cut);
/// - `CAP_SYS_ADMIN`: mounting bpffs, `setns` into network namespaces named
///   by the policy, and looking up programs and links by id;
/// - `CAP_SYS_PTRACE`: `/proc/PID/{exe,fd,ns}` of other users' processes and
///   of processes with more capabilities (attribution, seeding, the cut);
/// - `CAP_DAC_READ_SEARCH`: resolving rule paths in directories root cannot
///   search without it (e.g. a 0700 home).
pub const REQUIRED_CAPS: [(&str, u32); 6] = [
    ("CAP_BPF", 39),
    ("CAP_PERFMON", 38),
    ("CAP_NET_ADMIN", 12),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_DAC_READ_SEARCH", 2),
];

/// What the checks found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Mount point of the cgroup v2 hierarchy (the root cgroup).
    pub cgroup2_root: PathBuf,
    /// The kernel's BTF, for [`crate::kernel::btf::kernel_offsets`].
    pub btf_path: PathBuf,
    /// `uname -r`.
    pub kernel_release: String,
}

/// A host that cannot run loopwarden.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error(
        "loopwarden must run as root (it loads eBPF programs and attaches them to the root cgroup): run it with sudo"
    )]
    NotRoot { euid: u32 },
    #[error(
        "loopwarden lacks {}: it needs {} effective; run it as root, or add the missing ones to the \
         unit's CapabilityBoundingSet= (and AmbientCapabilities= when not root)",
        missing.join(", "),
        required_names().join(" ")
    )]
    MissingCapabilities { missing: Vec<&'static str> },
    #[error("reading the capabilities in /proc/self/status failed")]
    Capabilities {
        #[source]
        source: std::io::Error,
    },
    #[error("reading {} to find the cgroup v2 mount failed", path.display())]
    MountInfo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cgroup v2 is not mounted (no cgroup2 mount of the hierarchy's root in {}): mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup` \
         (on hybrid hosts `/sys/fs/cgroup/unified`), or boot with systemd.unified_cgroup_hierarchy=1",
        mountinfo.display()
    )]
    NoCgroup2 { mountinfo: PathBuf },
    #[error(
        "loopwarden runs in a cgroup namespace: attached at its root it would judge only the \
         connects of processes in that namespace's subtree; run it in the host's cgroup namespace \
         (e.g. outside the container, or with --cgroupns=host), or mount the host's cgroup v2 \
         hierarchy into the container and name it with --host-cgroup-root PATH (or {})",
        crate::kernel::host_cgroup::ENV
    )]
    CgroupNamespace,
    #[error(
        "loopwarden runs in a pid namespace of its own: the kernel programs name processes by \
         the host's pids, and /proc here shows this namespace's, so what it seeds and reports \
         would name the wrong processes; run it in the host's pid namespace (e.g. outside the \
         container, `docker run --pid=host`, or `hostPID: true` in a pod)"
    )]
    PidNamespace,
    #[error(transparent)]
    HostCgroup(#[from] crate::kernel::host_cgroup::HostCgroupError),
    #[error(
        "kernel BTF not found at {}: the kernel needs CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.x have it)",
        path.display()
    )]
    NoBtf { path: PathBuf },
    #[error("uname() failed")]
    Uname {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read a kernel version from release {release:?}")]
    UnknownRelease { release: String },
    #[error(
        "kernel {release} is too old: loopwarden needs Linux {}.{} or newer (cgroup programs call bpf_set_retval); upgrade the kernel",
        MIN_KERNEL.0, MIN_KERNEL.1
    )]
    KernelTooOld {
        release: String,
        version: (u32, u32, u32),
    },
}

/// Runs every check, in order: kernel version (first: a kernel older than
/// 5.8 has no `CAP_BPF` or `CAP_PERFMON`, and a root process there would be
/// told it lacks them), capabilities, the host's pid namespace, cgroup v2,
/// BTF.
/// With `host_cgroup_root` (`--host-cgroup-root`), the cgroup v2 root is
/// that path, checked by [`host_cgroup::use_host_root`], in whatever cgroup
/// namespace this process runs.
pub fn check_host(host_cgroup_root: Option<&Path>) -> Result<Host, CompatError> {
    let kernel_release = kernel_release().map_err(|source| CompatError::Uname { source })?;
    require_kernel(&kernel_release)?;
    require_capabilities()?;
    if in_child_pid_namespace() {
        return Err(CompatError::PidNamespace);
    }
    let cgroup2_root = match host_cgroup_root {
        Some(path) => host_cgroup::use_host_root(path)?,
        None => own_cgroup2_root()?,
    };
    let btf_path = PathBuf::from(VMLINUX_BTF);
    require_btf(&btf_path)?;
    Ok(Host {
        cgroup2_root,
        btf_path,
        kernel_release,
    })
}

/// The cgroup v2 root of this process's mount namespace, refused in a child
/// cgroup namespace.
fn own_cgroup2_root() -> Result<PathBuf, CompatError> {
    if in_child_cgroup_namespace() {
        return Err(CompatError::CgroupNamespace);
    }
    let mountinfo = fs::read_to_string(MOUNTINFO).map_err(|source| CompatError::MountInfo {
        path: MOUNTINFO.into(),
        source,
    })?;
    let cgroup2_root = mountinfo_cgroup2(&mountinfo).ok_or_else(|| CompatError::NoCgroup2 {
        mountinfo: MOUNTINFO.into(),
    })?;
    Ok(cgroup2_root)
}

/// Fails unless the effective uid is 0.
pub fn require_root() -> Result<(), CompatError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(CompatError::NotRoot { euid })
    }
}

/// The capabilities the read-only commands need to say what is attached:
/// `CAP_SYS_ADMIN` to look programs up by id, `CAP_NET_ADMIN` to ask a
/// cgroup which programs it runs (before Linux 6.9 `CAP_SYS_ADMIN` does
/// not stand in for it there). Without them a pinned, attached link reads
/// as running no program, or as not attached.
pub const INSPECT_CAPS: [(&str, u32); 2] = [("CAP_SYS_ADMIN", 21), ("CAP_NET_ADMIN", 12)];

/// Fails unless every one of [`REQUIRED_CAPS`] is effective, naming those
/// that are not.
pub fn require_capabilities() -> Result<(), CompatError> {
    let missing = missing_capabilities(effective_capabilities()?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CompatError::MissingCapabilities { missing })
    }
}

/// This process's effective capabilities (`CapEff:` of
/// `/proc/self/status`).
pub fn effective_capabilities() -> Result<u64, CompatError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|source| CompatError::Capabilities { source })?;
    cap_eff(&status).ok_or_else(|| CompatError::Capabilities {
        source: std::io::Error::other("no CapEff line"),
    })
}

/// The names of [`REQUIRED_CAPS`] not in the capability mask `eff`.
pub fn missing_capabilities(eff: u64) -> Vec<&'static str> {
    missing_of(&REQUIRED_CAPS, eff)
}

/// The names of `needed` not in the capability mask `eff`.
pub fn missing_of(needed: &[(&'static str, u32)], eff: u64) -> Vec<&'static str> {
    needed
        .iter()
        .filter(|(_, bit)| eff & (1u64 << bit) == 0)
        .map(|(name, _)| *name)
        .collect()
}

/// The names of [`REQUIRED_CAPS`].
pub fn required_names() -> Vec<&'static str> {
    names_of(&REQUIRED_CAPS)
}

/// The names of `caps`.
pub fn names_of(caps: &[(&'static str, u32)]) -> Vec<&'static str> {
    caps.iter().map(|(name, _)| *name).collect()
}

/// The `CapEff:` mask of `/proc/PID/status` text.
pub fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The cgroup v2 root for the read-only commands: `given`
/// (`--host-cgroup-root`) if it passes [`host_cgroup::use_host_root`], else
/// [`find_cgroup2_root`].
pub fn cgroup2_root(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(path) => host_cgroup::use_host_root(path).ok(),
        None => find_cgroup2_root(),
    }
}

/// The cgroup v2 mount point of this process's mount namespace, if any.
pub fn find_cgroup2_root() -> Option<PathBuf> {
    mountinfo_cgroup2(&fs::read_to_string(MOUNTINFO).ok()?)
}

/// The cgroup v2 mount point in `/proc/PID/mountinfo` text: the first
/// `cgroup2` mount of the hierarchy's root (root field `/`). A bind mount of
/// a sub-cgroup is not enough: programs attached there would see only that
/// subtree.
pub fn mountinfo_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo::mounts(mountinfo)
        .find(|m| m.fs_type == "cgroup2" && m.root == "/")
        .map(|m| m.mount_point)
}

/// Inode number of the initial cgroup namespace (`PROC_CGROUP_INIT_INO`,
/// include/linux/proc_ns.h).
const INIT_CGROUP_NS_INO: u64 = 0xEFFF_FFFB;

/// Whether this process runs in a cgroup namespace other than the host's:
/// there the cgroup root it can attach to is only its namespace's subtree.
pub fn in_child_cgroup_namespace() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() != INIT_CGROUP_NS_INO)
}

/// Inode number of the initial pid namespace (`PROC_PID_INIT_INO`,
/// include/linux/proc_ns.h).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// Whether this process runs in a pid namespace other than the host's.
pub fn in_child_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() != INIT_PID_NS_INO)
}

/// Whether this process was started into a mount namespace of its own:
/// not its parent's, or not pid 1's (the host's init: the daemon refuses a
/// pid namespace of its own). Not by a constant as the two above: the
/// initial mount namespace's inode number is not fixed on every kernel
/// loopwarden runs on. One that cannot be read tells nothing (a pid 1 with
/// capabilities this process lacks, in some sandboxes).
pub fn in_own_mount_namespace() -> bool {
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let Some(ours) = ns("self") else {
        return false;
    };
    let parent = std::os::unix::process::parent_id().to_string();
    [ns(&parent), ns("1")]
        .into_iter()
        .flatten()
        .any(|other| other != ours)
}

/// `(major, minor, patch)` from a kernel release string, read leniently:
/// `6.18.44-fc-v769` → `(6, 18, 44)`, `6.8-rc1` → `(6, 8, 0)`,
/// `4.19.0-17-amd64` → `(4, 19, 0)`. Needs at least `major.minor`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let mut parts = release.trim().splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor_part = parts.next()?;
    let minor = leading_number(minor_part)?;
    let patch = if minor_part.bytes().all(|b| b.is_ascii_digit()) {
        parts.next().and_then(leading_number).unwrap_or(0)
    } else {
        0
    };
    Some((major, minor, patch))
}

fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> std::io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes into the struct we own.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel NUL-terminates release within the array.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

fn require_btf(path: &Path) -> Result<(), CompatError> {
    match path.try_exists() {
        Ok(true) => Ok(()),
        _ => Err(CompatError::NoBtf {
            path: path.to_owned(),
        }),
    }
}

pub fn require_kernel(release: &str) -> Result<(), CompatError> {
    let version = parse_kernel_version(release).ok_or_else(|| CompatError::UnknownRelease {
        release: release.to_owned(),
    })?;
    if (version.0, version.1) < MIN_KERNEL {
        return Err(CompatError::KernelTooOld {
            release: release.to_owned(),
            version,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This VM: cgroup v1 controllers plus the v2 hierarchy at .../unified.
    const HYBRID: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const SYSTEMD: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const V1_ONLY: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn cgroup2_hybrid_and_unified() {
        assert_eq!(
            mountinfo_cgroup2(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            mountinfo_cgroup2(SYSTEMD),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn cgroup2_absent_with_v1_only() {
        assert_eq!(mountinfo_cgroup2(V1_ONLY), None);
        assert_eq!(mountinfo_cgroup2(""), None);
    }

    #[test]
    fn cgroup2_escaped_path() {
        let info = "50 31 0:40 / /mnt/my\\040cgroup\\134v2 rw - cgroup2 none rw\n";
        assert_eq!(
            mountinfo_cgroup2(info),
            Some(PathBuf::from("/mnt/my cgroup\\v2"))
        );
    }

    #[test]
    fn cgroup2_prefers_hierarchy_root() {
        let info = "\
60 31 0:38 /system.slice/x.service /run/x rw - cgroup2 cgroup2 rw
61 31 0:38 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 cgroup2 rw
";
        assert_eq!(
            mountinfo_cgroup2(info),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A sub-cgroup alone would cover only that subtree: not a root.
        let only_sub = info.lines().next().unwrap();
        assert_eq!(mountinfo_cgroup2(only_sub), None);
    }

    #[test]
    fn cgroup2_not_fooled_by_names() {
        // "cgroup2" as a mount point or source, not as the filesystem type.
        let info = "70 31 0:50 / /cgroup2 rw - tmpfs cgroup2 rw\n";
        assert_eq!(mountinfo_cgroup2(info), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v769"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15, 0)));
        assert_eq!(parse_kernel_version("6.1.0-rc1"), Some((6, 1, 0)));
        assert_eq!(parse_kernel_version("6.8-rc1"), Some((6, 8, 0)));
        assert_eq!(parse_kernel_version("6.8"), Some((6, 8, 0)));
        assert_eq!(parse_kernel_version("6.12.9+deb13-amd64"), Some((6, 12, 9)));
        assert_eq!(parse_kernel_version("6"), None);
        assert_eq!(parse_kernel_version("linux-6.1"), None);
        assert_eq!(parse_kernel_version(""), None);
    }

    #[test]
    fn kernel_minimum() {
        assert!(require_kernel("5.18.0").is_ok());
        assert!(require_kernel("6.1.0-amd64").is_ok());
        assert!(matches!(
            require_kernel("5.17.15"),
            Err(CompatError::KernelTooOld {
                version: (5, 17, 15),
                ..
            })
        ));
        assert!(matches!(
            require_kernel("4.19.0"),
            Err(CompatError::KernelTooOld { .. })
        ));
        assert!(matches!(
            require_kernel("weird"),
            Err(CompatError::UnknownRelease { .. })
        ));
    }

    #[test]
    fn running_kernel_release_parses() {
        let release = kernel_release().unwrap();
        assert!(parse_kernel_version(&release).is_some(), "{release}");
    }

    #[test]
    fn messages_say_how_to_fix() {
        let root = CompatError::NotRoot { euid: 1000 }.to_string();
        assert!(root.contains("sudo"), "{root}");
        let caps = CompatError::MissingCapabilities {
            missing: missing_capabilities(!(1u64 << 19)),
        }
        .to_string();
        assert!(
            caps.starts_with("loopwarden lacks CAP_SYS_PTRACE:")
                && caps.contains("CapabilityBoundingSet="),
            "{caps}"
        );
        assert!(missing_capabilities(0x1ff_ffff_ffff).is_empty());
        assert_eq!(cap_eff("CapEff:\t0000000000001000\n"), Some(1 << 12));
        assert_eq!(cap_eff("Name: x\n"), None);
        let cg = CompatError::NoCgroup2 {
            mountinfo: MOUNTINFO.into(),
        }
        .to_string();
        assert!(cg.contains("mount -t cgroup2 none /sys/fs/cgroup"), "{cg}");
        let ns = CompatError::CgroupNamespace.to_string();
        assert!(
            ns.contains("--host-cgroup-root PATH") && ns.contains(host_cgroup::ENV),
            "{ns}"
        );
    }
}
