//! Finding a connection's accepted socket through sock_diag, in the
//! namespace a [`SockDiag`] answers for: by its addresses and cookie, or
//! in one dump for many, and whether it is still open to its server.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
};

use loopwarden_common::origin::OriginRecord;

use super::super::conns::socket_addr;
use crate::kernel::sock_diag::{Dumped, SockDiag, SockId, TcpSocket, state};

/// Past this many records of one namespace asked about at once (a
/// `conns`), their sockets are found with one dump of the namespace's
/// connected TCP sockets instead of a lookup each.
pub(super) const DUMP_PAST: usize = 32;

/// The accepted socket of `record` (the server's end, with the cookie the
/// kernel bound), in whatever state, looked up by its addresses in
/// `diag`'s namespace.
pub(super) fn find_accepted(
    diag: &mut SockDiag,
    record: &OriginRecord,
) -> io::Result<Option<TcpSocket>> {
    let conn = &record.conn;
    let (family, id) = sock_id(
        socket_addr(&conn.server, conn.server_port),
        socket_addr(&conn.client, conn.client_port),
        Some(record.server_cookie),
    );
    diag.find(family, &id)
}

/// Whether the accepted socket `socket` is still open to its server: not
/// closed by it, neither in TIME_WAIT nor, after its `close()`, an orphan
/// (no file, `inode` 0) the kernel keeps to finish the exchange (in
/// FIN_WAIT1 or FIN_WAIT2 for up to `tcp_fin_timeout` while the client
/// holds its end open, LAST_ACK, CLOSING). One not accepted yet has no
/// file either, and is open (ESTABLISHED, CLOSE_WAIT, SYN_RECV); a
/// service that only shut down its sending side keeps its file.
pub(super) fn still_open(socket: &TcpSocket) -> bool {
    let after_close = [
        state::FIN_WAIT1,
        state::FIN_WAIT2,
        state::LAST_ACK,
        state::CLOSING,
        state::CLOSE,
    ];
    socket.state != state::TIME_WAIT && !(socket.inode == 0 && after_close.contains(&socket.state))
}

/// The indices of `records` by the namespace of their connection.
pub(super) fn by_netns(records: &[OriginRecord]) -> BTreeMap<u32, Vec<usize>> {
    let mut by_netns: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        by_netns.entry(record.conn.netns).or_default().push(i);
    }
    by_netns
}

/// The accepted socket of each of `records` (in `diag`'s namespace) as
/// the kernel has it, in any state, if it is there: looked up by its
/// addresses and cookie, or, past [`DUMP_PAST`] records, found in one
/// dump (and its misses looked up). A socket bound to a device
/// (`SO_BINDTODEVICE`, a VRF) is not found by its addresses alone, so
/// those the lookups miss are looked for in a dump too (which leaves out
/// TIME_WAIT: a socket only there is `None`).
pub(super) fn accepted_sockets(
    diag: &mut SockDiag,
    records: &[&OriginRecord],
) -> io::Result<Vec<Option<TcpSocket>>> {
    // The other way finds what the first missed: a dump resumes a hash
    // chain by position, so a socket removed before another between two
    // of its reads can hide that one from it.
    type Way = fn(&mut SockDiag, &[&OriginRecord]) -> io::Result<Vec<Option<TcpSocket>>>;
    let (first, then): (Way, Way) = if records.len() > DUMP_PAST {
        (dumped_by_cookie, looked_up)
    } else {
        (looked_up, dumped_by_cookie)
    };
    let mut found = first(diag, records)?;
    let missed: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
    if !missed.is_empty() {
        let these: Vec<&OriginRecord> = missed.iter().map(|&i| records[i]).collect();
        for (i, socket) in missed.into_iter().zip(then(diag, &these)?) {
            found[i] = socket;
        }
    }
    Ok(found)
}

/// [`find_accepted`] of each of `records`.
pub(super) fn looked_up(
    diag: &mut SockDiag,
    records: &[&OriginRecord],
) -> io::Result<Vec<Option<TcpSocket>>> {
    records.iter().map(|r| find_accepted(diag, r)).collect()
}

/// The accepted socket of each of `records`, from one dump of both
/// families' sockets in the states an accepted socket may be in, found by
/// their cookies (unique on the host: what the kernel bound to each
/// record). A socket a dump reports twice (the kernel's walk resumes a
/// hash chain by position) counts once; a dump cut short is an error, not
/// sockets missing.
pub(super) fn dumped_by_cookie(
    diag: &mut SockDiag,
    records: &[&OriginRecord],
) -> io::Result<Vec<Option<TcpSocket>>> {
    let wanted: HashSet<u64> = records.iter().map(|r| r.server_cookie).collect();
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let (dumped, _) = diag.dump_kept(
            family,
            accepted_states(),
            wanted.len(),
            |socket| wanted.contains(&socket.cookie) && seen.insert(socket.cookie),
            &mut found,
        )?;
        // (Not expected: each wanted socket is kept once, in one family.)
        if dumped == Dumped::Truncated {
            return Err(io::Error::other("the socket dump was cut short"));
        }
    }
    let by_cookie: HashMap<u64, TcpSocket> = found.into_iter().map(|s| (s.cookie, s)).collect();
    Ok(records
        .iter()
        .map(|r| {
            by_cookie
                .get(&r.server_cookie)
                .filter(|socket| names(r, socket))
                .cloned()
        })
        .collect())
}

/// Whether `socket` is the accepted socket of `record`'s connection by its
/// two ends, as a lookup by addresses compares them: the cookie alone is
/// not enough, since an entry a missed close left behind under other
/// addresses may be bound to a socket that is still open.
pub(super) fn names(record: &OriginRecord, socket: &TcpSocket) -> bool {
    let conn = &record.conn;
    same_end(socket.src, socket_addr(&conn.server, conn.server_port))
        && same_end(socket.dst, socket_addr(&conn.client, conn.client_port))
}

/// Whether `a` and `b` are one end, an IPv4-mapped address the same as
/// its IPv4 one (a dual-stack socket's ends are mapped).
pub(super) fn same_end(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// The most sockets with the same two ends [`dumped_owner`] takes (one per
/// VRF).
pub(super) const SAME_ENDS_MAX: usize = 64;

/// The owner of the open socket whose local end is `local` and peer
/// `peer`, from a dump of the namespace: a socket bound to a device
/// (`SO_BINDTODEVICE`, a VRF), which a lookup by addresses misses, is
/// found by them there. `None` unless every such socket is one uid's (each
/// VRF may hold a connection between the same ends); a dump cut short is
/// an error.
pub(super) fn dumped_owner(
    diag: &mut SockDiag,
    local: SocketAddr,
    peer: SocketAddr,
) -> io::Result<Option<u32>> {
    let mut found = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let (dumped, _) = diag.dump_kept(
            family,
            accepted_states(),
            SAME_ENDS_MAX,
            |s| same_end(s.src, local) && same_end(s.dst, peer) && still_open(s),
            &mut found,
        )?;
        if dumped == Dumped::Truncated {
            return Err(io::Error::other("the socket dump was cut short"));
        }
    }
    let mut uids = found.iter().map(|s| s.uid);
    let first = uids.next();
    Ok(first.filter(|&uid| uids.all(|other| other == uid)))
}

/// The most sockets of one user [`Liveness::owned_by`] keeps: as many as
/// `[provenance] connections` may be.
pub(super) const OWNED_MAX: usize = 1 << 20;

/// The states (a mask of [`state::bit`]s) an accepted socket may be in
/// while it is open: neither a listener, a client's handshake nor a closed
/// connection's remains (TIME_WAIT), as the lookups leave out.
pub(super) fn accepted_states() -> u32 {
    [
        state::SYN_RECV,
        state::ESTABLISHED,
        state::FIN_WAIT1,
        state::FIN_WAIT2,
        state::CLOSE,
        state::CLOSE_WAIT,
        state::LAST_ACK,
        state::CLOSING,
    ]
    .into_iter()
    .fold(0, |bits, s| bits | state::bit(s))
}

/// The family and id `SockDiag::find` looks up the TCP socket with local
/// end `local`, peer `peer` and cookie `cookie` by (`None`: whatever its
/// cookie). IPv4 (IPv4-mapped as the kernel stores it) is looked up as
/// IPv4, which also finds an IPv6 socket with IPv4-mapped addresses.
pub(super) fn sock_id(local: SocketAddr, peer: SocketAddr, cookie: Option<u64>) -> (u8, SockId) {
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let (family, src, dst) = match (local.ip().to_canonical(), peer.ip().to_canonical()) {
        (IpAddr::V4(local), IpAddr::V4(peer)) => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&local.octets());
            dst[..4].copy_from_slice(&peer.octets());
            (libc::AF_INET as u8, src, dst)
        }
        (local, peer) => (libc::AF_INET6 as u8, v6(local).octets(), v6(peer).octets()),
    };
    // `INET_DIAG_NOCOOKIE`: any socket with these ends.
    let cookie = cookie.map_or([u32::MAX; 2], |c| [c as u32, (c >> 32) as u32]);
    let id = SockId {
        sport: local.port().to_be_bytes(),
        dport: peer.port().to_be_bytes(),
        src,
        dst,
        interface: 0,
        cookie,
    };
    (family, id)
}
