//! Socket options of `SOL_SOCKET` that nix does not name and not every
//! libc exports (`SO_COOKIE`, `SO_NETNS_COOKIE`, `SO_PEERPIDFD`), read
//! with one `getsockopt(2)`.

use std::{io, os::fd::AsRawFd};

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

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected a
/// Unix socket, an `int`.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
pub const SO_PEERPIDFD: libc::c_int = 0x0056;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
pub const SO_PEERPIDFD: libc::c_int = 77;

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
