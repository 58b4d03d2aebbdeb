//! Socket options of `SOL_SOCKET` that nix does not name and not every
//! libc exports (`SO_COOKIE`, `SO_NETNS_COOKIE`), read with one
//! `getsockopt(2)`, and a socket's network namespace ([`netns_inode`]).

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
};

/// `SO_COOKIE` (Linux 4.12): the socket's cookie, a `u64` (what
/// `bpf_get_socket_cookie` returns for it).
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
pub const SO_COOKIE: libc::c_int = 0x003b;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
pub const SO_COOKIE: libc::c_int = 57;

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie of the socket's network
/// namespace, a `u64`.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
pub const SO_NETNS_COOKIE: libc::c_int = 0x0050;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
pub const SO_NETNS_COOKIE: libc::c_int = 71;

/// The inode number of the network namespace `socket` was made in
/// (`SIOCGSKNS`, Linux 4.9; it takes `CAP_NET_ADMIN` there). An accepted
/// Unix stream socket is made in its connecting socket's: so it names the
/// client's namespace with no pid to race.
pub fn netns_inode(socket: &impl AsRawFd) -> io::Result<u32> {
    // SAFETY: SIOCGSKNS takes no argument; it returns a new descriptor.
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGSKNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor just returned, owned by nothing else.
    let ns = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(ns.metadata()?.ino() as u32)
}

/// The integer types an option's value is read as: every bit pattern of
/// them is a value (the kernel writes whatever it has).
pub trait Value: Copy + Default + sealed::Sealed {}
impl Value for i32 {}
impl Value for u32 {}
impl Value for u64 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for i32 {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// The value of `SOL_SOCKET` option `option` of `socket`, as `T` (the
/// option's size).
pub fn get<T: Value>(socket: &impl AsRawFd, option: libc::c_int) -> io::Result<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given; any
    // bytes the kernel writes make a valid T (see `Value`).
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}
