//! The three `bpf(2)` commands pinned enforcement needs that aya 0.14 keeps
//! crate-private: opening a pinned object, replacing a link's program in
//! place (`BPF_LINK_UPDATE`), and asking a link which program it runs.
//! Each builds the command's `union bpf_attr` member as laid out in
//! include/uapi/linux/bpf.h.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `BPF_F_REPLACE`: update only if the link still runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

fn bpf(cmd: libc::c_long, attr: &mut [u64], size: usize) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-filled buffer at least `size` bytes long
    // holding the command's fields; the kernel reads (and for info writes
    // through pointers we set) only what the command defines.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains NUL"))?;
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [0u64; 2];
    attr[0] = c_path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr, 16)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program a link runs, atomically: every run before the
/// update uses the old program, every run after it the new one; the link
/// is never without a program. With `old`, fails (EPERM) unless the link
/// still runs that program.
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old_prog: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    let words = [
        link.as_raw_fd() as u32,
        new_prog.as_raw_fd() as u32,
        if old_prog.is_some() { BPF_F_REPLACE } else { 0 },
        old_prog.map_or(0, |fd| fd.as_raw_fd() as u32),
    ];
    let mut attr = [
        u64::from(words[0]) | (u64::from(words[1]) << 32),
        u64::from(words[2]) | (u64::from(words[3]) << 32),
    ];
    bpf(BPF_LINK_UPDATE, &mut attr, 16).map(drop)
}

/// The id of the program a link runs (`bpf_link_info.prog_id`).
pub fn link_prog_id(link: impl AsFd) -> io::Result<u32> {
    // struct bpf_link_info starts { __u32 type; __u32 id; __u32 prog_id; ... }
    let mut info = [0u64; 16];
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    let mut attr = [
        u64::from(link.as_fd().as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32),
        info.as_mut_ptr() as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16)?;
    Ok((info[1] & 0xffff_ffff) as u32)
}
