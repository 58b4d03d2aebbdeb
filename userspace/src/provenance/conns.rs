//! `LW_CONN_SLOTS` and `LW_CONNS`, read from their pins: the live
//! protected connections and their origins, by the connection's
//! addresses. Only entries whose accepted socket is still open are
//! answered ([`Liveness`]).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap as AyaHashMap, Map, MapData, MapError};
use loopwarden_common::{
    Addr, CONN_SLOT_PROBES, maps,
    origin::{ConnEntry, ConnKey, ConnSlot, OriginRecord},
};

use super::live::Liveness;
use crate::track::notes::{self, Notes};

/// Errors opening the map.
#[derive(Debug, thiserror::Error)]
pub enum ConnsError {
    #[error(
        "opening {} failed (is a loopwarden daemon of this version enforcing? `loopwarden \
         status` says)",
        path.display()
    )]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// To whom a record is answered, as a caller's filter says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// While its accepted socket is open.
    Always,
    /// While its accepted socket is open and this uid owns it: the
    /// accepting process's uid since its `accept()` (`sock_graft`), where
    /// the record's `server_uid` is its listener's.
    IfOwnedBy(u32),
    /// Never.
    Never,
}

impl Seen {
    /// How the user `uid` sees `record` as its server: the user owning the
    /// accepted socket when the connection was established (its
    /// listener's owner, `server_uid`) or now (a service that listened as
    /// root and then became its own user, or was handed its listener).
    pub fn as_server(uid: u32, record: &OriginRecord) -> Self {
        if record.server_uid == uid {
            Self::Always
        } else {
            Self::IfOwnedBy(uid)
        }
    }

    /// Whether a record is seen whose accepted socket `owner` owns
    /// (`None`: it is not open, or could not be checked).
    fn by(self, owner: Option<u32>) -> bool {
        match (self, owner) {
            (Self::Never, _) | (_, None) => false,
            (Self::Always, Some(_)) => true,
            (Self::IfOwnedBy(uid), Some(owner)) => owner == uid,
        }
    }
}

/// The pinned `LW_CONN_SLOTS` and `LW_CONNS` (and `LW_CONN_PORTS`).
pub struct Conns {
    slots: Array<MapData, ConnSlot>,
    /// Which ports tagged connects went to.
    ports: Notes,
    map: AyaHashMap<MapData, ConnKey, ConnEntry>,
    /// The most keys a walk of `map` reads (see [`Conns::accepted`]).
    walk_limit: usize,
    live: Liveness,
}

impl Conns {
    /// Opens the maps pinned in `maps_dir` (`PinDir::maps_dir`).
    pub fn open(maps_dir: &Path) -> Result<Self, ConnsError> {
        let pinned = |name: &str, kind: fn(MapData) -> Map| {
            let path = maps_dir.join(name);
            let map = MapData::from_pin(&path).map(kind);
            (path, map)
        };
        let failed = |path| move |source| ConnsError::Open { path, source };
        let (path, slots) = pinned(maps::CONN_SLOTS, Map::Array);
        let slots = slots.and_then(Array::try_from).map_err(failed(path))?;
        let (path, ports) = pinned(maps::CONN_PORTS, Map::Array);
        let ports = ports.and_then(Array::try_from).map_err(failed(path))?;
        let (path, map) = pinned(maps::CONNS, Map::LruHashMap);
        // Its capacity unread: the largest a config may ask for.
        const LARGEST: u32 = *crate::config::CONNECTIONS.end() as u32;
        let capacity = match &map {
            Ok(Map::LruHashMap(data)) => data.info().map_or(LARGEST, |i| i.max_entries()),
            _ => LARGEST,
        };
        let map = map.and_then(AyaHashMap::try_from).map_err(failed(path))?;
        Ok(Self {
            slots,
            ports,
            map,
            walk_limit: 2 * capacity as usize,
            live: Liveness::new(),
        })
    }

    /// The origin of the connection `key`, once the server's side has
    /// accepted it (before that it is no connection a service could ask
    /// about), if `sees` shows it: from its slot, as the kernel finds it,
    /// or from `LW_CONNS`. `Err` when whether it is open (and whose) cannot
    /// be checked (asked only of a record `sees` may show, so an error
    /// tells nothing of one it never does).
    pub fn get(
        &self,
        key: &ConnKey,
        sees: impl Fn(&OriginRecord) -> Seen,
    ) -> io::Result<Option<OriginRecord>> {
        let found = self.find(key).filter(|record| record.established_ns != 0);
        self.if_seen(found, sees)
    }

    /// Whether a tagged connect went to `port` (in any namespace) since
    /// the maps were made: then a connection to it that has no entry lost
    /// its origin (its entry evicted, or its handshake unseen). `false`
    /// when the map cannot be read.
    pub fn port_tagged(&self, port: u16) -> bool {
        // A byte per port, read as `LW_TRACKED`'s byte per tgid is.
        notes::note(&self.ports, port.into()).is_ok_and(|byte| byte != 0)
    }

    /// The uid owning the open TCP socket of namespace `netns` whose local
    /// end is `local` and peer `peer` ([`Liveness::owner`]).
    pub fn owner(
        &self,
        netns: u32,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> io::Result<Option<u32>> {
        self.live.owner(netns, local, peer)
    }

    /// The entry of the connection `key`: in its slot, as the kernel finds
    /// it, or in `LW_CONNS`; handshake done or not, open or not (what the
    /// sweep of admitted connections asks about a socket it found open,
    /// telling which of its sockets it is by their cookies).
    pub fn find(&self, key: &ConnKey) -> Option<OriginRecord> {
        settled(|| self.find_once(key))
    }

    /// [`Conns::find`]'s one read.
    fn find_once(&self, key: &ConnKey) -> Option<OriginRecord> {
        (0..CONN_SLOT_PROBES)
            .filter_map(|i| self.slots.get(&key.slot(i), 0).ok())
            .find(|slot| slot.is_taken() && slot.entry.record.conn == *key)
            .map(|slot| slot.entry)
            .or_else(|| self.map.get(key, 0).ok())
            .map(|entry| named(*key, entry))
    }

    /// `record`, if there is one and `sees` shows it as its accepted
    /// socket is now (open, and whose).
    fn if_seen(
        &self,
        record: Option<OriginRecord>,
        sees: impl Fn(&OriginRecord) -> Seen,
    ) -> io::Result<Option<OriginRecord>> {
        match record.map(|record| (sees(&record), record)) {
            Some((Seen::Always, record)) => Ok(Seen::Always
                .by(self.live.accepted_owner(&record)?)
                .then_some(record)),
            // Another user's connection, unless the asker owns its socket:
            // one whose owner cannot be read is answered as not open, as
            // any other user's is (an error would tell it apart).
            Some((seen @ Seen::IfOwnedBy(_), record)) => Ok(self
                .live
                .accepted_owner(&record)
                .is_ok_and(|owner| seen.by(owner))
                .then_some(record)),
            _ => Ok(None),
        }
    }

    /// Whether `record`, read once in a walk, is what its connection's
    /// entry holds when read again ([`Conns::find`]).
    fn still(&self, record: &OriginRecord) -> bool {
        self.find(&record.conn).is_some_and(|now| now == *record)
    }

    /// Every accepted protected connection the maps hold that `sees`
    /// shows: only those it may show are checked (a sock_diag lookup each,
    /// and the namespaces entered for them); those that cannot be checked
    /// are left out.
    ///
    /// Another user's connection is kept only if the asker owns its
    /// accepted socket: the sockets it owns in that namespace are listed
    /// first (one dump, kept for the walk), so that a user who owns none
    /// costs a walk, not a copy and a check of every connection there.
    pub fn list(&self, sees: impl Fn(&OriginRecord) -> Seen) -> Vec<OriginRecord> {
        let mut owned: HashMap<(u32, u32), Option<HashSet<u64>>> = HashMap::new();
        let (seen, records): (Vec<Seen>, Vec<OriginRecord>) = self
            .accepted()
            .map(|r| (sees(&r), r))
            .filter(|(seen, r)| match *seen {
                Seen::Never => false,
                Seen::Always => true,
                Seen::IfOwnedBy(uid) => owned
                    .entry((r.conn.netns, uid))
                    .or_insert_with(|| self.live.owned_by(r.conn.netns, uid).ok())
                    .as_ref()
                    .is_some_and(|cookies| cookies.contains(&r.server_cookie)),
            })
            .filter(|(_, r)| self.still(r))
            .unzip();
        let owners = self.live.owners(&records);
        records
            .into_iter()
            .zip(seen.into_iter().zip(owners))
            .filter_map(|(record, (seen, owner))| seen.by(owner).then_some(record))
            .collect()
    }

    /// How many accepted connections the maps hold, open or not (a
    /// connection whose close the kernel missed counts until its entry is
    /// taken over or evicted): one read of each slot and a walk of
    /// `LW_CONNS`, no check of the sockets.
    pub fn held(&self) -> usize {
        self.accepted().count()
    }

    /// The connection whose accepted socket has cookie `cookie`, if `sees`
    /// shows it ([`Conns::get`]).
    pub fn by_cookie(
        &self,
        cookie: u64,
        sees: impl Fn(&OriginRecord) -> Seen,
    ) -> io::Result<Option<OriginRecord>> {
        // The whole walk, found or not, and `sees` before the cookie: a
        // record it never shows costs what one that is not there does.
        // (One it may show, another user's in the asker's namespace,
        // costs the lookup of its socket's owner too: timing can tell the
        // asker that a cookie there is a protected connection's, of
        // sockets whose cookies and owners `ss -e` shows it anyway.)
        let found = self
            .accepted()
            .filter(|record| sees(record) != Seen::Never)
            .filter(|record| record.server_cookie == cookie)
            .last()
            .filter(|record| self.still(record));
        self.if_seen(found, sees)
    }

    /// Copies every entry of `LW_CONNS` into `into`, the `LW_CONNS` of a
    /// freshly loaded set of programs (a resize: same entries, another
    /// capacity; the slots are adopted as they are), keeping any entry
    /// `into` already holds (the new programs' own, newer).
    /// Returns how many were copied; past `into`'s capacity the LRU map
    /// drops the oldest.
    pub fn copy_into(&self, into: &mut Map) -> Result<usize, MapError> {
        /// `BPF_NOEXIST`: insert only where no entry is.
        const NOEXIST: u64 = 1;
        let mut into: AyaHashMap<&mut MapData, ConnKey, ConnEntry> = AyaHashMap::try_from(into)?;
        let mut copied = 0;
        for (key, entry) in self.map.iter().filter_map(Result::ok) {
            match into.insert(key, entry, NOEXIST) {
                Ok(()) => copied += 1,
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(copied)
    }

    /// Every entry the server's side has accepted, open or not: those in
    /// slots, then those in `LW_CONNS` (but for a connection a slot holds:
    /// the kernel answers from the slot).
    fn accepted(&self) -> impl Iterator<Item = OriginRecord> + '_ {
        let in_slots: Vec<ConnEntry> = self
            .slots
            .iter()
            .filter_map(Result::ok)
            .filter(ConnSlot::is_taken)
            .map(|slot| slot.entry)
            .collect();
        // A key the walk has given already is not given again: the
        // kernel's next-key lookup starts over from the first key when the
        // one the walk stands on goes (a close, an eviction), and gives
        // again every key given before. Such restarts cannot keep a walk
        // going for long (each follows a removal), but it reads no more
        // than twice the map's capacity whatever happens.
        let mut given: HashSet<ConnKey> = in_slots.iter().map(|e| e.record.conn).collect();
        let in_map = self
            .map
            .iter()
            .take(self.walk_limit)
            .filter_map(Result::ok)
            .filter(move |(key, _)| given.insert(*key));
        in_slots
            .into_iter()
            .map(|entry| named(entry.record.conn, entry))
            .chain(in_map.map(|(key, entry)| named(key, entry)))
            .filter(|record| record.established_ns != 0)
    }
}

/// What `read` gives twice in a row (of up to [`READS`] reads): a map
/// lookup copies an entry without a lock, so a copy made while the kernel
/// rewrote it on another CPU (a slot taken over, an LRU element given to
/// another connection) could mix two connections' records. Two copies
/// that agree leave out a write under way, not one whose program was
/// preempted midway (a preemptible kernel's), whose torn entry two reads
/// see alike. `None` when no two reads agree, or there is nothing.
fn settled<T: PartialEq>(read: impl Fn() -> Option<T>) -> Option<T> {
    /// Reads before an entry that keeps changing is given up on.
    const READS: usize = 4;
    let mut last = read()?;
    for _ in 1..READS {
        let now = read()?;
        if now == last {
            return Some(now);
        }
        last = now;
    }
    None
}

/// The record of `entry`, naming the connection it is found under (the
/// kernel writes the same into the record; what is checked to be open and
/// answered is what was asked about).
fn named(key: ConnKey, entry: ConnEntry) -> OriginRecord {
    OriginRecord {
        conn: key,
        ..entry.record
    }
}

/// The key naming the connection from `client` to `server` in the
/// network namespace `netns` (an inode number, see [`netns_of`]).
pub fn conn_key(netns: u32, client: SocketAddr, server: SocketAddr) -> ConnKey {
    ConnKey {
        netns,
        client_port: client.port(),
        server_port: server.port(),
        client: Addr::from_ip(client.ip()),
        server: Addr::from_ip(server.ip()),
    }
}

/// The socket address `addr`:`port` as the kernel stored it (IPv4-mapped
/// addresses shown as IPv4).
pub fn socket_addr(addr: &Addr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.to_ip(), port)
}

/// The network namespace of process `pid`, as its inode number (what the
/// kernel keys connections by).
pub fn netns_of(pid: u32) -> io::Result<u32> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
    Ok(meta.ino() as u32)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Two reads that agree are the answer; an entry rewritten under the
    /// reads is read again; one that never settles, or is gone, is none.
    #[test]
    fn a_read_counts_once_two_in_a_row_agree() {
        let reads = |seq: &'static [Option<u32>]| {
            let at = Cell::new(0);
            settled(|| {
                let v = seq.get(at.get()).copied().flatten();
                at.set(at.get() + 1);
                v
            })
        };
        assert_eq!(reads(&[Some(1), Some(1)]), Some(1));
        assert_eq!(reads(&[Some(1), Some(2), Some(2)]), Some(2));
        assert_eq!(reads(&[Some(1), Some(2), Some(3), Some(4), Some(4)]), None);
        assert_eq!(reads(&[Some(1), None]), None);
        assert_eq!(reads(&[None]), None);
    }

    /// A record is seen only while its accepted socket is open, and, for
    /// a user seeing it by that socket, only while the user owns it.
    #[test]
    fn a_record_is_seen_by_its_sockets_owner() {
        assert!(Seen::Always.by(Some(7)));
        assert!(!Seen::Always.by(None));
        assert!(Seen::IfOwnedBy(7).by(Some(7)));
        assert!(!Seen::IfOwnedBy(7).by(Some(0)));
        assert!(!Seen::IfOwnedBy(7).by(None));
        assert!(!Seen::Never.by(Some(7)));
        let mut record = OriginRecord::unknown();
        record.server_uid = 7;
        assert_eq!(Seen::as_server(7, &record), Seen::Always);
        assert_eq!(Seen::as_server(8, &record), Seen::IfOwnedBy(8));
    }

    #[test]
    fn addresses_round_trip_in_kernel_form() {
        for text in [
            "127.0.0.1:8080",
            "[::1]:443",
            "[fd77::2]:22",
            "10.77.0.2:53422",
        ] {
            let sa: SocketAddr = text.parse().unwrap();
            let key = conn_key(7, sa, sa);
            assert_eq!(socket_addr(&key.client, key.client_port), sa);
        }
        // What the kernel writes for 127.0.0.1: ::ffff:127.0.0.1, network order.
        let key = conn_key(
            0,
            "127.0.0.1:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
        );
        assert_eq!(key.client.words[2], 0x0000_ffffu32.to_be());
        assert_eq!(key.client.words[3], 0x7f00_0001u32.to_be());
        assert_eq!(key.server.words[3], 1u32.to_be());
    }
}
