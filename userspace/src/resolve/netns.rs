//! Network namespaces: a namespace's cookie, running code inside another
//! namespace (in a short-lived thread of its own), and the addresses of
//! the interfaces in one.

use std::{
    fs::File,
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::{
    sched::{self, CloneFlags},
    sys::socket::{self, AddressFamily, SockFlag, SockType},
};

use super::with_context;
use crate::kernel::sockopt;

/// `SO_NETNS_COOKIE` of the calling thread's network namespace (Linux 5.14+).
pub fn current_netns_cookie() -> io::Result<u64> {
    let socket = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| with_context(e.into(), "creating a socket"))?;
    sockopt::get(&socket, sockopt::SO_NETNS_COOKIE)
        .map_err(|e| with_context(e, "reading SO_NETNS_COOKIE (needs Linux 5.14 or newer)"))
}

/// The inode number of the calling thread's network namespace (what the
/// kernel keys connections by), as `/proc/thread-self/ns/net` names it.
pub fn current_netns_inum() -> io::Result<u32> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino() as u32)
}

/// Enters the namespace in a short-lived thread of its own and reads the
/// cookie there; the calling thread never changes namespace.
pub(super) fn cookie_via_setns(file: File, path: &Path) -> io::Result<u64> {
    in_netns_file(file, path, current_netns_cookie)
}

/// Runs `f` in a short-lived thread that has entered the network namespace
/// at `path`; the calling thread never changes namespace. Needs root.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let file = File::open(path)
        .map_err(|e| with_context(e, &format!("opening network namespace {}", path.display())))?;
    in_netns_file(file, path, f)
}

/// Runs `f` inside the first of `paths` (namespace files) that can be
/// entered and on which `f` succeeds: `f`'s result and that path. `None`
/// when none did; `last` then holds the last failure (as it was if no path
/// was tried).
pub fn in_first_netns<T: Send + 'static>(
    paths: impl IntoIterator<Item = PathBuf>,
    f: impl Fn() -> io::Result<T> + Clone + Send + 'static,
    last: &mut io::Error,
) -> Option<(T, PathBuf)> {
    for path in paths {
        match in_netns(&path, f.clone()) {
            Ok(value) => return Some((value, path)),
            // A process entered by may have exited meanwhile: the next one.
            Err(e) => *last = e,
        }
    }
    None
}

/// Most processes tried to enter a namespace whose file is gone.
const PIDS_TRIED: usize = 4;

/// Runs `f` inside a namespace of the policy's scope: entered by its file
/// `path`, or, when that is gone (a name removed while processes keep the
/// namespace alive), by `/proc/PID/ns/net` of a process in it, found by
/// its `inode`. `f` runs only where the cookie is the namespace's
/// `cookie`: an inode number is reused once its namespace is gone, a
/// cookie never. The `/proc` walk is made only when the file is gone.
pub fn in_scoped_netns<T: Send + 'static>(
    path: &Path,
    cookie: u64,
    inode: u32,
    f: impl Fn() -> io::Result<T> + Clone + Send + 'static,
) -> io::Result<T> {
    in_netns_that_is(
        vec![path.to_owned()],
        (inode != 0 && !path.exists()).then_some(inode),
        move || Ok(current_netns_cookie()? == cookie),
        "another network namespace (its inode number was reused)",
        format!("network namespace {} is gone", path.display()),
        f,
    )
}

/// Runs `f` inside the network namespace with inode number `inode`,
/// entered by the first of `paths` (the namespace files of processes found
/// in it) that still is it, else by a process found in it now: those
/// processes may have exited since, and their pids be others', in other
/// namespaces. `f` runs only where the inode is `inode`.
pub fn in_netns_of<T: Send + 'static>(
    paths: Vec<PathBuf>,
    inode: u32,
    f: impl Fn() -> io::Result<T> + Clone + Send + 'static,
) -> io::Result<T> {
    in_netns_that_is(
        paths,
        Some(inode),
        move || Ok(current_netns_inum()? == inode),
        "another network namespace (the process entered by has exited)",
        format!("network namespace net:[{inode}] is gone"),
        f,
    )
}

/// Runs `f` inside the first of `paths` (namespace files) where `is_it`
/// says the namespace entered is the one meant (else `f` is not run there:
/// `other` says why), then, with `inode` given, of up to [`PIDS_TRIED`]
/// processes in the namespace with that inode number now. `gone` is the
/// error when none was entered.
fn in_netns_that_is<T: Send + 'static>(
    paths: Vec<PathBuf>,
    inode: Option<u32>,
    is_it: impl Fn() -> io::Result<bool> + Clone + Send + 'static,
    other: &'static str,
    gone: String,
    f: impl Fn() -> io::Result<T> + Clone + Send + 'static,
) -> io::Result<T> {
    let checked = move || {
        if !is_it()? {
            return Err(io::Error::new(io::ErrorKind::NotFound, other));
        }
        f()
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, gone);
    in_first_netns(paths, checked.clone(), &mut last)
        .or_else(|| {
            let now = pids_in_netns(inode?).map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")));
            in_first_netns(now, checked, &mut last)
        })
        .map(|(value, _)| value)
        .ok_or(last)
}

/// Up to [`PIDS_TRIED`] processes whose network namespace has inode `inode`.
fn pids_in_netns(inode: u32) -> impl Iterator<Item = i32> {
    procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter(move |process| {
            std::fs::metadata(format!("/proc/{}/ns/net", process.pid))
                .is_ok_and(|meta| meta.ino() as u32 == inode)
        })
        .map(|process| process.pid)
        .take(PIDS_TRIED)
}

fn in_netns_file<T: Send + 'static>(
    file: File,
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let shown = path.display().to_string();
    let worker = std::thread::Builder::new()
        .name("lw-netns".into())
        .spawn(move || {
            sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                // EINVAL: the file is no network namespace; EPERM: no
                // CAP_SYS_ADMIN.
                let why = match e {
                    nix::errno::Errno::EINVAL => {
                        "it is not a network namespace file: name one such as /run/netns/NAME \
                         or /proc/PID/ns/net"
                    }
                    nix::errno::Errno::EPERM => "entering one needs root (CAP_SYS_ADMIN)",
                    _ => "entering it failed",
                };
                with_context(
                    e.into(),
                    &format!("entering network namespace {shown}: {why}"),
                )
            })?;
            f()
        })?;
    worker.join().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the network namespace worker thread panicked",
        ))
    })
}

/// The non-loopback addresses of every interface in the calling thread's
/// network namespace.
pub fn interface_addresses() -> io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            addr.as_sockaddr_in()
                .map(|sin| IpAddr::V4(sin.ip()))
                .or_else(|| addr.as_sockaddr_in6().map(|sin6| IpAddr::V6(sin6.ip())))
        })
        .filter(|a| !a.is_loopback())
        .collect())
}
