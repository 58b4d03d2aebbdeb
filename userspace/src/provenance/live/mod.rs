//! Whether the connection an entry (in `LW_CONN_SLOTS` or `LW_CONNS`)
//! names is still open: its accepted socket, found through sock_diag in
//! the connection's network namespace by its addresses and cookie.
//!
//! The kernel removes an entry when the accepted socket closes, but it
//! skips a tracing program's run nested on one CPU, so a close can go
//! unseen and its entry stay until a connection with the same addresses
//! takes its slot over, or the LRU map evicts it. `getsockopt`
//! never answers from such an entry (the client's first sequence number
//! differs); with this check the daemon does not either: `who`, `conns`,
//! the query socket and ident never name a closed connection, nor answer
//! for a later connection between the same addresses with a closed one's
//! origin.
//!
//! A namespace no process is in and no `/run/netns` file names is gone,
//! and its connections with it. Where the check cannot be made (a
//! sock_diag error such as a kernel without `tcp_diag`, a namespace that
//! cannot be entered) the daemon names none of its connections rather than
//! risk naming a closed connection's origin (`who` answers `unavailable`,
//! `conns` leaves them out, ident `UNKNOWN-ERROR`), and a warning says so,
//! once per namespace. `getsockopt` does not depend on it.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use loopwarden_common::origin::OriginRecord;
use tracing::{debug, warn};

mod sockets;

use self::sockets::{
    OWNED_MAX, accepted_sockets, accepted_states, by_netns, dumped_owner, sock_id, still_open,
};
use super::conns::netns_of;
use crate::{
    cut::procs::network_namespaces,
    error_chain,
    kernel::sock_diag::{self, Dumped, SockDiag, state},
    resolve,
};

/// How many namespaces' files (and warnings said) are remembered: past
/// that many, all are forgotten and found again when asked about (a host
/// that makes namespaces without end would grow the tables without end).
const NAMESPACES_REMEMBERED: usize = 4096;

/// Where bind-mounted namespace files live (`ip netns add`).
const NAMED_NETNS: &str = "/run/netns";

/// Finds accepted sockets in any network namespace.
pub struct Liveness {
    /// The caller's own namespace (inode number), entered by nothing.
    own: Option<u32>,
    /// A namespace file that was namespace N the last time it was entered.
    paths: Mutex<HashMap<u32, PathBuf>>,
    /// Namespaces whose connections could not be checked, said once each.
    warned: Mutex<HashSet<u32>>,
    /// Whether the kernel was seen to have TCP socket diagnostics (probed
    /// until it has: without them every lookup says "no such socket").
    tcp_diag: AtomicBool,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new()
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            own: netns_of(std::process::id()).ok(),
            paths: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            tcp_diag: AtomicBool::new(false),
        }
    }

    /// The uid owning `record`'s accepted socket now, if it is open: the
    /// accepting process's since its `accept()` (`sock_graft`), where
    /// `server_uid` is its listener's. `Err` when that cannot be checked
    /// (warned of once per namespace).
    pub fn accepted_owner(&self, record: &OriginRecord) -> io::Result<Option<u32>> {
        let owners = self.open_in(record.conn.netns, &[record])?;
        Ok(owners.first().copied().flatten())
    }

    /// The uid owning the open TCP socket of namespace `netns` whose local
    /// end is `local` and peer `peer` (a client's socket connected to this
    /// daemon: who asks), if there is one (looked up by its ends, then, if
    /// that misses and `local` is this host's, found in a dump:
    /// [`dumped_owner`]); `Err` when that cannot be checked (warned of once
    /// per namespace).
    pub fn owner(
        &self,
        netns: u32,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> io::Result<Option<u32>> {
        let (family, id) = sock_id(local, peer, None);
        self.diag(netns)
            .and_then(|mut diag| {
                self.probe_tcp(&mut diag)?;
                // Not a listener (the lookup falls back to one) nor a
                // closed socket's remains.
                let found = diag
                    .find(family, &id)?
                    .filter(|s| s.state != state::LISTEN && s.state != state::TIME_WAIT);
                match found {
                    Some(socket) => Ok(Some(socket.uid)),
                    // Dumped only for a socket of this host's: on loopback,
                    // or from the address it asks at. An asker on another
                    // host has none here, and would have each of its
                    // queries walk every socket of the namespace.
                    None if local.ip().to_canonical().is_loopback()
                        || local.ip().to_canonical() == peer.ip().to_canonical() =>
                    {
                        dumped_owner(&mut diag, local, peer)
                    }
                    None => Ok(None),
                }
            })
            .inspect_err(|e| self.cannot_check(netns, e))
    }

    /// The cookies of the open sockets `uid` owns in namespace `netns` (in
    /// the states an accepted socket may be in): one dump of the
    /// namespace, keeping only those, at most [`OWNED_MAX`]; `Err` when it
    /// cannot be checked, or `uid` owns more.
    pub fn owned_by(&self, netns: u32, uid: u32) -> io::Result<HashSet<u64>> {
        let mut diag = self.diag(netns).inspect_err(|e| {
            if e.kind() != io::ErrorKind::NotFound {
                self.cannot_check(netns, e);
            }
        })?;
        let mut found = Vec::new();
        let mut truncated = false;
        self.probe_tcp(&mut diag)
            .and_then(|()| {
                for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                    let (dumped, _) = diag.dump_kept(
                        family,
                        accepted_states(),
                        OWNED_MAX,
                        |socket| socket.uid == uid && still_open(socket),
                        &mut found,
                    )?;
                    truncated |= dumped == Dumped::Truncated;
                }
                Ok(())
            })
            .inspect_err(|e| self.cannot_check(netns, e))?;
        if truncated {
            return Err(io::Error::other(format!(
                "uid {uid} owns more than {OWNED_MAX} sockets in net:[{netns}]"
            )));
        }
        Ok(found.into_iter().map(|socket| socket.cookie).collect())
    }

    /// The uid owning each of `records`' accepted socket, if it is open
    /// ([`Liveness::accepted_owner`]; one sock_diag lookup each, one
    /// namespace entered per namespace); `None` too for those it cannot
    /// check.
    pub fn owners(&self, records: &[OriginRecord]) -> Vec<Option<u32>> {
        let mut owners = vec![None; records.len()];
        for (netns, indices) in by_netns(records) {
            let these: Vec<&OriginRecord> = indices.iter().map(|&i| &records[i]).collect();
            if let Ok(found) = self.open_in(netns, &these) {
                for (&i, found) in indices.iter().zip(found) {
                    owners[i] = found;
                }
            }
        }
        owners
    }

    /// Whether each of `records`' accepted socket is gone, its close done:
    /// no socket of its namespace has its cookie, or the one that does is
    /// in TIME_WAIT ([`accepted_sockets`]). `false` for a socket that is
    /// there in any other state (open, or an orphan whose close is still
    /// to come) and for one that cannot be checked, a namespace not found
    /// among processes and `/run/netns` included (a thread or a descriptor
    /// alone may hold it).
    pub fn gone(&self, records: &[OriginRecord]) -> Vec<bool> {
        let mut gone = vec![false; records.len()];
        for (netns, indices) in by_netns(records) {
            let these: Vec<&OriginRecord> = indices.iter().map(|&i| &records[i]).collect();
            let found = self.diag(netns).and_then(|mut diag| {
                self.probe_tcp(&mut diag)?;
                accepted_sockets(&mut diag, &these)
            });
            match found {
                Ok(found) => {
                    for (i, socket) in indices.into_iter().zip(found) {
                        gone[i] = socket.is_none_or(|s| s.state == state::TIME_WAIT);
                    }
                }
                Err(e) => debug!("provenance: the sockets of net:[{netns}] could not be read: {e}"),
            }
        }
        gone
    }

    /// The owner of the accepted socket of each of `records`, all of
    /// namespace `netns`, if it is open; `Err` when that cannot be checked
    /// (warned of).
    fn open_in(&self, netns: u32, records: &[&OriginRecord]) -> io::Result<Vec<Option<u32>>> {
        let mut diag = match self.diag(netns) {
            Ok(diag) => diag,
            // No process is in it any more and no file names it: its
            // connections went with it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!("provenance: network namespace net:[{netns}] is gone: {e}");
                return Ok(vec![None; records.len()]);
            }
            Err(e) => {
                self.cannot_check(netns, &e);
                return Err(e);
            }
        };
        self.probe_tcp(&mut diag)
            .and_then(|()| accepted_sockets(&mut diag, records))
            .map(|found| {
                found
                    .into_iter()
                    .map(|socket| socket.filter(still_open).map(|s| s.uid))
                    .collect()
            })
            .inspect_err(|e| self.cannot_check(netns, e))
    }

    /// Whether the kernel has TCP socket diagnostics, asked until it has.
    fn probe_tcp(&self, diag: &mut SockDiag) -> io::Result<()> {
        if !self.tcp_diag.load(Ordering::Relaxed) {
            diag.probe_tcp()?;
            self.tcp_diag.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Says, once per namespace, that its connections cannot be checked
    /// and are answered unknown.
    fn cannot_check(&self, netns: u32, e: &io::Error) {
        let first = {
            let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
            if warned.len() >= NAMESPACES_REMEMBERED {
                warned.clear();
            }
            warned.insert(netns)
        };
        if first {
            let fix = sock_diag::missing_feature_fix(e)
                .map(|fix| format!(" ({fix})"))
                .unwrap_or_default();
            warn!(
                "provenance: cannot tell whether the connections of network namespace \
                 net:[{netns}] are still open, so conns leaves them out, who and the query \
                 socket answer unavailable and ident UNKNOWN-ERROR for them (getsockopt still \
                 answers): {}{fix}",
                error_chain(e)
            );
        }
    }

    /// A sock_diag socket in namespace `netns`.
    fn diag(&self, netns: u32) -> io::Result<SockDiag> {
        if Some(netns) == self.own {
            return SockDiag::open();
        }
        let known = self
            .paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&netns)
            .cloned();
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no process is in network namespace net:[{netns}] and no {NAMED_NETNS} file \
                 names it"
            ),
        );
        // The file that worked last time and the named ones first: walking
        // /proc is the costly way.
        let cheap = known.into_iter().chain(named_files());
        if let Some(diag) = self.enter(netns, cheap, &mut last) {
            return Ok(diag);
        }
        self.enter(netns, process_files(netns), &mut last)
            .ok_or(last)
    }

    /// A sock_diag socket opened in namespace `netns` through the first of
    /// `paths` that is that namespace and can be entered (remembered for
    /// next time); `last` keeps the last failure.
    fn enter(
        &self,
        netns: u32,
        paths: impl IntoIterator<Item = PathBuf>,
        last: &mut io::Error,
    ) -> Option<SockDiag> {
        // The file may name another namespace by now (a pid reused), also
        // between this look and its open: the namespace entered is checked
        // again, from inside.
        let this_netns = paths
            .into_iter()
            .filter(|path| fs::metadata(path).map(|m| m.ino() as u32).ok() == Some(netns));
        let open_there = move || match resolve::current_netns_inum()? {
            now if now == netns => SockDiag::open(),
            now => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("entered net:[{now}], not net:[{netns}]: the file names another by now"),
            )),
        };
        let (diag, path) = resolve::in_first_netns(this_netns, open_there, last)?;
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        if paths.len() >= NAMESPACES_REMEMBERED {
            paths.clear();
        }
        paths.insert(netns, path);
        Some(diag)
    }
}

/// The files in [`NAMED_NETNS`].
fn named_files() -> Vec<PathBuf> {
    fs::read_dir(NAMED_NETNS)
        .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default()
}

/// `/proc/PID/ns/net` of a few processes in namespace `netns` (a walk
/// over every process).
fn process_files(netns: u32) -> Vec<PathBuf> {
    network_namespaces()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.id.1 as u32 == netns)
        .flat_map(|ns| ns.files)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{
        sockets::{DUMP_PAST, dumped_by_cookie, find_accepted},
        *,
    };
    use crate::kernel::sock_diag::TcpSocket;

    /// The owner of an open socket is found by its two ends, IPv4, IPv6 and
    /// an IPv6 socket with IPv4-mapped addresses (asked as IPv4) alike; a
    /// socket with other ends is nobody's, and the listener the lookup
    /// falls back to is not taken for one.
    #[test]
    fn a_sockets_owner_is_found_by_its_ends() {
        use std::net::{TcpListener, TcpStream};

        let live = Liveness::new();
        let netns = netns_of(std::process::id()).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        for (listen, connect) in [
            ("127.0.0.1:0", None),
            ("[::1]:0", None),
            ("[::]:0", Some("[::ffff:127.0.0.1]")),
        ] {
            let listener = TcpListener::bind(listen).unwrap();
            let port = listener.local_addr().unwrap().port();
            let to: SocketAddr = match connect {
                Some(host) => format!("{host}:{port}").parse().unwrap(),
                None => listener.local_addr().unwrap(),
            };
            let client = TcpStream::connect(to).unwrap();
            let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
            assert_eq!(live.owner(netns, local, peer).unwrap(), Some(me), "{to}");
            let elsewhere = SocketAddr::new(peer.ip(), peer.port().wrapping_add(1));
            assert_eq!(live.owner(netns, local, elsewhere).unwrap(), None, "{to}");
            // The listener's port with a peer no connection has.
            let nobody = SocketAddr::new(local.ip(), 9);
            assert_eq!(live.owner(netns, to, nobody).unwrap(), None, "{to}");
        }
    }

    /// A socket bound to a device (`SO_BINDTODEVICE`), which sock_diag's
    /// lookup by addresses misses, has its owner found by a dump.
    #[test]
    fn a_device_bound_sockets_owner_is_found() {
        use std::{
            net::{TcpListener, TcpStream},
            os::fd::{FromRawFd as _, IntoRawFd as _},
        };

        use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: SO_BINDTODEVICE needs CAP_NET_RAW");
            return;
        }
        let live = Liveness::new();
        let netns = netns_of(std::process::id()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        socket::setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from("lo")).unwrap();
        let SocketAddr::V4(v4) = to else {
            unreachable!()
        };
        socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(v4)).unwrap();
        // SAFETY: a connected TCP socket's descriptor, handed over whole.
        let client = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let me = nix::unistd::geteuid().as_raw();
        let (family, id) = sock_id(local, peer, None);
        let mut diag = SockDiag::open().unwrap();
        assert!(
            diag.find(family, &id)
                .unwrap()
                .is_none_or(|s| s.state == state::LISTEN),
            "the lookup by addresses found the device-bound socket: the dump is not tried"
        );
        assert_eq!(live.owner(netns, local, peer).unwrap(), Some(me));
    }

    /// The owners of many records are found by one dump as by a lookup
    /// each: an open accepted socket's owner, none for a closed one's or
    /// for a cookie no socket has.
    #[test]
    fn many_records_are_found_by_one_dump_as_by_lookups() {
        use std::net::{TcpListener, TcpStream};

        use super::super::conns::conn_key;

        let netns = netns_of(std::process::id()).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let live = Liveness::new();
        let mut held = Vec::new();
        let mut records = Vec::new();
        for i in 0..(DUMP_PAST + 8) {
            let client = TcpStream::connect(to).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let mut record = OriginRecord::unknown();
            let from = client.local_addr().unwrap();
            record.conn = conn_key(netns, from, to);
            // The accepted socket's cookie, as the kernel reports it.
            let (family, id) = sock_id(to, from, None);
            let socket = live.diag(netns).unwrap().find(family, &id).unwrap();
            record.server_cookie = socket.expect("the accepted socket").cookie;
            records.push(record);
            // The first closed, by its server first: in TIME_WAIT, nobody's.
            if i == 0 {
                drop(accepted);
                drop(client);
                continue;
            }
            // The second closed by its server while its client holds on:
            // an orphan in FIN_WAIT2, nobody's either.
            if i == 1 {
                drop(accepted);
                held.push(client);
                continue;
            }
            held.extend([accepted, client]);
        }
        let mut unknown = records[2];
        // (Not all ones: the kernel's "no cookie", which matches any.)
        unknown.server_cookie = 1;
        records.push(unknown);
        // An open socket's cookie under other addresses (an entry a missed
        // close left behind, bound to a socket still open): not its socket.
        let mut moved = records[2];
        moved.conn.client_port = 1;
        records.push(moved);
        let refs: Vec<&OriginRecord> = records.iter().collect();
        let mut diag = live.diag(netns).unwrap();
        let owner = |s: Option<TcpSocket>| s.filter(still_open).map(|s| s.uid);
        let dumped: Vec<Option<u32>> = dumped_by_cookie(&mut diag, &refs)
            .unwrap()
            .into_iter()
            .map(owner)
            .collect();
        let looked_up: Vec<Option<u32>> = refs
            .iter()
            .map(|r| owner(find_accepted(&mut diag, r).unwrap()))
            .collect();
        assert_eq!(dumped, looked_up);
        let open = 2..records.len() - 2;
        assert_eq!(dumped[..2], [None, None]);
        assert!(dumped[open.clone()].iter().all(|&o| o == Some(me)));
        assert_eq!(dumped[open.end..], [None, None]);
        assert_eq!(live.owners(&records), dumped);
        // Gone: the one in TIME_WAIT, the cookie no socket has and the one
        // under other addresses; the orphan still closing is not, nor are
        // the open ones.
        let gone = live.gone(&records);
        assert_eq!(gone[..2], [true, false]);
        assert!(gone[open.clone()].iter().all(|&g| !g));
        assert_eq!(gone[open.end..], [true, true]);
        // The same by lookups (few records), which dump only their misses.
        let few = [records[0], records[1], records[2], moved];
        assert_eq!(live.gone(&few), [true, false, false, true]);
        assert_eq!(live.owners(&few), [None, None, Some(me), None]);

        // IPv6, and an IPv4 client of a dual-stack listener (its accepted
        // socket IPv6, its ends IPv4-mapped): found by lookups and by a
        // dump alike.
        let dual = TcpListener::bind("[::]:0").unwrap();
        let port = dual.local_addr().unwrap().port();
        let mut sixes = Vec::new();
        for host in ["127.0.0.1", "::1"] {
            let client = TcpStream::connect((host, port)).unwrap();
            let (accepted, _) = dual.accept().unwrap();
            let (from, to) = (client.local_addr().unwrap(), accepted.local_addr().unwrap());
            let mut record = OriginRecord::unknown();
            record.conn = conn_key(netns, from, to);
            let (family, id) = sock_id(to, from, None);
            let socket = live.diag(netns).unwrap().find(family, &id).unwrap();
            record.server_cookie = socket.expect("the accepted socket").cookie;
            sixes.push(record);
            held.extend([accepted, client]);
        }
        let refs: Vec<&OriginRecord> = sixes.iter().collect();
        let dumped: Vec<Option<u32>> = dumped_by_cookie(&mut diag, &refs)
            .unwrap()
            .into_iter()
            .map(owner)
            .collect();
        assert_eq!(dumped, [Some(me), Some(me)]);
        assert_eq!(live.owners(&sixes), [Some(me), Some(me)]);
        assert_eq!(live.gone(&sixes), [false, false]);
        drop(held);
    }

    /// The namespaces warned of stay a bounded set however many there are
    /// (and one warned of is not warned of again until then).
    #[test]
    fn the_namespaces_remembered_stay_bounded() {
        let live = Liveness::new();
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        for netns in 0..(NAMESPACES_REMEMBERED as u32 * 2 + 1) {
            live.cannot_check(netns, &e);
        }
        let warned = live.warned.lock().unwrap();
        assert!(warned.len() <= NAMESPACES_REMEMBERED, "{}", warned.len());
        assert!(warned.contains(&(NAMESPACES_REMEMBERED as u32 * 2)));
    }
}
