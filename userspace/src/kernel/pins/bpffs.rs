//! bpffs: whether a path is on it, and mounting it where it is missing.

use std::{ffi::CString, fs, io, os::unix::ffi::OsStrExt as _, path::Path};

use super::PinError;

/// Where bpffs is normally mounted; mounted there when missing.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` (or, if it does not exist yet, its nearest existing
/// ancestor) is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(c_path) = CString::new(existing.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the struct we own; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and outlives the call.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 == BPF_FS_MAGIC
}

/// Why a mount of bpffs failed, by its errno.
pub(super) fn mount_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            "not permitted: it needs CAP_SYS_ADMIN in the initial mount namespace (systemd: \
             the unit mounts it before start)"
        }
        Some(libc::ENODEV) => "the kernel has no bpf filesystem: it needs CONFIG_BPF_SYSCALL",
        _ => "mount it by hand: mount -t bpf bpf /sys/fs/bpf",
    }
}

/// Mounts bpffs on [`BPFFS_MOUNT`], unless this process was started into
/// a mount namespace of its own: there the mount, and every pin made on
/// it, would live only as long as that namespace, where the pins must
/// outlive any daemon.
pub(super) fn mount_bpffs() -> Result<(), PinError> {
    if crate::kernel::compat::in_own_mount_namespace() {
        return Err(PinError::PrivateMountNamespace);
    }
    tracing::info!("bpffs is not mounted: mounting it on {BPFFS_MOUNT}");
    fs::create_dir_all(BPFFS_MOUNT).map_err(|source| PinError::Mount { source })?;
    let c = |s: &str| CString::new(s).expect("no NUL in constants");
    let (source, target, fstype, data) = (c("bpf"), c(BPFFS_MOUNT), c("bpf"), c("mode=0700"));
    // SAFETY: all four are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
