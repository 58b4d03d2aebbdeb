//! `lw-subvol DIR NAME...`: for `cargo xtask vm-test`, whose guests have
//! no btrfs-progs. Creates each NAME as a btrfs subvolume in DIR (the
//! `BTRFS_IOC_SUBVOL_CREATE` ioctl, what `btrfs subvolume create` makes).

use std::{ffi::CString, fs::File, os::fd::AsRawFd as _, process::ExitCode};

/// `struct btrfs_ioctl_vol_args`: a descriptor and a NUL-terminated name.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `_IOW(BTRFS_IOCTL_MAGIC (0x94), 14, struct btrfs_ioctl_vol_args)`.
const BTRFS_IOC_SUBVOL_CREATE: libc::c_ulong =
    (1 << 30) | ((size_of::<VolArgs>() as libc::c_ulong) << 16) | (0x94 << 8) | 14;

fn create(dir: &File, name: &str) -> Result<(), String> {
    let bytes = CString::new(name).map_err(|e| e.to_string())?;
    let bytes = bytes.as_bytes_with_nul();
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    if bytes.len() > args.name.len() {
        return Err(format!("{name}: name too long"));
    }
    args.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a valid descriptor and a properly sized, initialised argument.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), BTRFS_IOC_SUBVOL_CREATE, &raw mut args) };
    if rc != 0 {
        return Err(format!("{name}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((dir, names)) = args.split_first().filter(|(_, n)| !n.is_empty()) else {
        eprintln!("usage: lw-subvol DIR NAME...");
        return ExitCode::from(2);
    };
    let dir = match File::open(dir) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("lw-subvol: {dir}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for name in names {
        if let Err(e) = create(&dir, name) {
            eprintln!("lw-subvol: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
