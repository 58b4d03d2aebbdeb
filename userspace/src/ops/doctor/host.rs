//! Checks of the host: privileges, the kernel release, cgroup v2, BTF and
//! bpffs.

use std::{fs, path::Path};

use super::Check;
use crate::{
    error_chain,
    kernel::{
        btf::{VMLINUX_BTF, kernel_offsets},
        compat,
        pins::{BPFFS_MOUNT, is_bpffs},
    },
};

/// Not required: the daemon needs the capabilities of the next check, not
/// uid 0 (a unit may grant them with `AmbientCapabilities=`).
pub(super) fn root() -> Check {
    match compat::require_root() {
        Ok(()) => Check::ok("root", false, "effective uid 0"),
        Err(_) => Check::bad(
            "root",
            false,
            "not root: the daemon runs on the capabilities below, but the pins, bpffs and \
             /run/loopwarden it writes must be writable to it",
            "run as root, or grant the capabilities below and the write access",
        ),
    }
}

pub(super) fn capabilities() -> Check {
    const NAME: &str = "capabilities";
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = compat::cap_eff(&status) else {
        return Check::bad(
            NAME,
            true,
            "CapEff not found in /proc/self/status",
            "check that /proc is mounted",
        );
    };
    let missing = compat::missing_capabilities(eff);
    if missing.is_empty() {
        Check::ok(
            NAME,
            true,
            format!("{} effective", compat::required_names().join(" ")),
        )
    } else {
        Check::bad(
            NAME,
            true,
            format!("missing {}", missing.join(" ")),
            "run as root with a full capability set (systemd: no CapabilityBoundingSet= that drops them)",
        )
    }
}

/// Required: the daemon refuses a kernel older than
/// [`compat::MIN_KERNEL`] (there, missing capabilities above may only mean
/// that the kernel predates them: `CAP_BPF` and `CAP_PERFMON` came in 5.8).
pub(super) fn kernel_release() -> Check {
    let release = match compat::kernel_release() {
        Ok(release) => release,
        Err(e) => return Check::bad("kernel", true, format!("uname failed: {e}"), "none known"),
    };
    match compat::require_kernel(&release) {
        Ok(()) => Check::ok(
            "kernel",
            true,
            format!(
                "{release} (the daemon needs {}.{} or later; the checks below probe, they do \
                 not go by version)",
                compat::MIN_KERNEL.0,
                compat::MIN_KERNEL.1
            ),
        ),
        Err(e) => Check::bad(
            "kernel",
            true,
            error_chain(&e),
            format!(
                "boot Linux {}.{} or later (a distribution's newer kernel package)",
                compat::MIN_KERNEL.0,
                compat::MIN_KERNEL.1
            ),
        ),
    }
}

pub(super) fn cgroup2(root: Option<&Path>) -> Check {
    match root {
        Some(root) => Check::ok(
            "cgroup v2",
            true,
            format!("hierarchy root mounted at {}", root.display()),
        ),
        None => Check::bad(
            "cgroup v2",
            true,
            "no cgroup2 mount of the hierarchy's root",
            "mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1",
        ),
    }
}

/// With `host_root_given`, a child namespace is fine: the cgroup v2
/// check says whether the given root is the host's.
pub(super) fn cgroup_namespace(host_root_given: bool) -> Check {
    if compat::in_child_cgroup_namespace() {
        if host_root_given {
            return Check::ok(
                "cgroup namespace",
                true,
                "a child namespace, with the host's root given (--host-cgroup-root)",
            );
        }
        Check::bad(
            "cgroup namespace",
            true,
            "running in a child cgroup namespace: its root is only a subtree",
            "run in the host's cgroup namespace (outside the container, or --cgroupns=host), \
             or mount the host's cgroup v2 root and pass --host-cgroup-root PATH",
        )
    } else {
        Check::ok("cgroup namespace", true, "the host's (initial) namespace")
    }
}

pub(super) fn pid_namespace() -> Check {
    if compat::in_child_pid_namespace() {
        Check::bad(
            "pid namespace",
            true,
            "running in a pid namespace of its own: the kernel programs name processes by the \
             host's pids",
            "run in the host's pid namespace (outside the container, --pid=host, or hostPID: true)",
        )
    } else {
        Check::ok("pid namespace", true, "the host's (initial) namespace")
    }
}

pub(super) fn btf() -> Check {
    match kernel_offsets(Path::new(VMLINUX_BTF)) {
        Ok(o) => Check::ok(
            "BTF",
            true,
            format!(
                "{VMLINUX_BTF} parsed: task_struct.mm={} mm_struct.exe_file={} file.f_inode={}; \
                 btrfs subvolumes {}",
                o.task_mm,
                o.mm_exe_file,
                o.file_inode,
                if o.btrfs_inode_vfs != 0 {
                    "told apart (executable paths on btrfs may be named in rules)"
                } else {
                    "not described (no btrfs loaded): paths on btrfs would be refused"
                }
            ),
        ),
        Err(e) => Check::bad(
            "BTF",
            true,
            error_chain(&e),
            "a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
    }
}

pub(super) fn bpffs() -> Check {
    if is_bpffs(Path::new(BPFFS_MOUNT)) {
        return Check::ok("bpffs", true, format!("mounted at {BPFFS_MOUNT}"));
    }
    let known = fs::read_to_string("/proc/filesystems").is_ok_and(|f| {
        f.lines()
            .any(|l| l.split_whitespace().last() == Some("bpf"))
    });
    if known && compat::in_own_mount_namespace() {
        Check::bad(
            "bpffs",
            true,
            format!(
                "not mounted on {BPFFS_MOUNT}, and this process runs in a mount namespace of its \
                 own: the daemon would not mount one there (its pins would go with the \
                 namespace)"
            ),
            format!(
                "mount it where the host sees it first: `mount -t bpf bpf {BPFFS_MOUNT}` on the host"
            ),
        )
    } else if known {
        Check::ok(
            "bpffs",
            true,
            format!("not mounted, but the kernel has it: the daemon mounts it on {BPFFS_MOUNT}"),
        )
    } else {
        Check::bad(
            "bpffs",
            true,
            "the kernel has no bpf filesystem (not in /proc/filesystems)",
            "a kernel with CONFIG_BPF_SYSCALL=y",
        )
    }
}
