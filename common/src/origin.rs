//! Provenance: the origin of a protected connection, bound to it for its
//! whole life and handed to the service that accepted it.
//!
//! The connect hook records the caller (a [`ConnectEvent`]) by the client
//! socket's cookie (in a slot of `LW_ORIGIN_SLOTS`, [`OriginSlot`], or in
//! `LW_ORIGIN_PENDING`); when the client's handshake completes, the record
//! moves, named by the connection's addresses ([`ConnKey`]), to a slot of
//! `LW_CONN_SLOTS` ([`ConnSlot`]) or to `LW_CONNS`; when the server's side
//! completes, the entry is bound to the accepted socket (its cookie, once
//! its [`ConnEntry::first_seq`] matched), and it goes when that socket
//! closes. A
//! service asks with one `getsockopt(fd, SOL_LOOPWARDEN, LW_ORIGIN,
//! &record, &len)` on the accepted socket and gets an [`OriginRecord`];
//! the daemon answers the same from those two maps.

use crate::{Addr, CONN_SLOTS, ConnectEvent, ORIGIN_SLOTS};

/// The private `getsockopt` level the `cgroup/getsockopt` program answers
/// ("LW"; no kernel protocol level is near it).
pub const SOL_LOOPWARDEN: i32 = 0x4c57;
/// The option at [`SOL_LOOPWARDEN`]: the connection's [`OriginRecord`].
pub const LW_ORIGIN: i32 = 1;

/// [`OriginRecord::magic`]: "LWOR", little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"LWOR");
/// [`OriginRecord::version`]: bumped when a field changes meaning or
/// moves. Fields may be added at the end without a bump; `size` grows,
/// and the program must then still answer a buffer of the version-1 size
/// (328 bytes), with the record's first bytes.
pub const VERSION: u16 = 1;

/// [`OriginRecord::status`] values.
pub mod status {
    /// loopwarden knows nothing of this connection: not to a protected
    /// destination, older than the tag, or not TCP. Every other field but
    /// the header is zero.
    pub const UNKNOWN: u8 = 0;
    /// The origin below was recorded at connect time.
    pub const KNOWN: u8 = 1;
}

/// The answer to `getsockopt(SOL_LOOPWARDEN, LW_ORIGIN)`, kept in a
/// [`ConnEntry`]: a fixed layout, native byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginRecord {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// Bytes of the record as this kernel side wrote it.
    pub size: u16,
    /// [`status`] value.
    pub status: u8,
    pub _pad0: [u8; 3],
    /// Owner (uid) of the accepted socket: the uid of the process that
    /// created the listener. Who may ask the daemon about the connection.
    pub server_uid: u32,
    /// CLOCK_MONOTONIC when the server's side of the handshake completed
    /// (0 while it has not).
    pub established_ns: u64,
    /// Socket cookie of the accepted socket (0 until it is established).
    pub server_cookie: u64,
    /// The connection: namespace and both ends.
    pub conn: ConnKey,
    /// The caller of connect() as judged: `socket_cookie` is the client
    /// socket's, `daddr`/`dport` where it connected, `ktime_ns` when.
    pub origin: ConnectEvent,
}

impl OriginRecord {
    /// The answer for a socket loopwarden knows nothing of.
    pub const fn unknown() -> Self {
        OriginRecord {
            magic: MAGIC,
            version: VERSION,
            size: core::mem::size_of::<OriginRecord>() as u16,
            status: status::UNKNOWN,
            _pad0: [0; 3],
            server_uid: 0,
            established_ns: 0,
            server_cookie: 0,
            conn: ConnKey {
                netns: 0,
                client_port: 0,
                server_port: 0,
                client: Addr { words: [0; 4] },
                server: Addr { words: [0; 4] },
            },
            origin: ConnectEvent::zeroed(),
        }
    }
}

/// A connection's entry (`LW_CONNS`' value, and a [`ConnSlot`]'s): the
/// record and what binds it to the accepted socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEntry {
    pub record: OriginRecord,
    /// The client's initial sequence number plus one, written at the
    /// client's handshake (its socket's `snd_una - bytes_acked + 1`, mod
    /// 2^32): the accepted socket's `rcv_nxt - bytes_received` for the
    /// connection's whole life (data and FIN count in both). The server's
    /// handshake binds only an entry whose value matches its socket's (and
    /// `getsockopt` answers only the socket an entry is bound to), so an
    /// entry a missed close left behind, or one whose server never
    /// accepted it, is never the answer for a later connection between the
    /// same addresses.
    pub first_seq: u32,
    pub _pad: u32,
}

impl ConnEntry {
    /// What a protected connect's entry starts as, waiting for its
    /// handshake: a known record whose caller (`origin`) the connect hook
    /// fills in and whose connection (`conn`) and server side the state
    /// tracepoint does.
    pub const fn pending() -> Self {
        ConnEntry {
            record: OriginRecord {
                status: status::KNOWN,
                ..OriginRecord::unknown()
            },
            first_seq: 0,
            _pad: 0,
        }
    }
}

/// `LW_ORIGIN_SLOTS`' value: a protected connect's entry while its
/// handshake is under way, kept without a hash-map operation. The slot is
/// the connect's while `owner` holds its socket cookie: claimed by
/// compare-and-swap from 0 (or from a claim older than any handshake,
/// `claimed_ns` being CLOCK_MONOTONIC when it was made), given back when
/// the entry moves on (to `LW_CONN_SLOTS` or `LW_CONNS`) or the connect
/// fails.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginSlot {
    pub owner: u64,
    pub claimed_ns: u64,
    pub entry: ConnEntry,
}

impl OriginSlot {
    /// Slot `i` (< [`crate::ORIGIN_SLOT_PROBES`]) of `LW_ORIGIN_SLOTS` the
    /// connect whose client socket has cookie `cookie` may claim: the ones
    /// following a multiplicative hash of the cookie (cookies are handed
    /// out in per-CPU runs, and a server's accepted sockets take every
    /// other one), so neighbouring cookies scatter over the slots.
    #[inline(always)]
    pub fn probe(cookie: u64, i: u32) -> u32 {
        (hashed_slot(cookie, ORIGIN_SLOTS) + i) & (ORIGIN_SLOTS - 1)
    }
}

/// Which of `slots` (a power of two) the value `x` names: its Fibonacci
/// (multiplicative) hash, whose top bits spread values in a row over the
/// slots.
#[inline(always)]
const fn hashed_slot(x: u64, slots: u32) -> u32 {
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - slots.trailing_zeros())) as u32
}

/// `LW_CONN_SLOTS`' value: a protected connection's entry, from the
/// client's handshake to the accepted socket's close, kept without a
/// hash-map operation in one of the [`crate::CONN_SLOT_PROBES`] slots from
/// [`ConnKey::first_slot`]. `owner` holds the cookie of the socket the
/// slot is for. First the client socket's, which claims it by
/// compare-and-swap from 0, or from a dead connection's entry: one with
/// the same addresses, or one whose server did not complete its handshake
/// within any handshake's time of `claimed_ns` (the claimer's connect
/// time, CLOCK_MONOTONIC, written before the claim, so a slot claimed and
/// not yet written never looks dead). Then the accepted socket's, which
/// takes it over when its handshake completes and gives it back when it
/// closes ([`CONN_RELEASING`] meanwhile). So a close frees only its own
/// connection's slot, never that of a new connection between the same
/// addresses and ports made while the kernel was closing the old one. A
/// free slot's key has client port 0, which no connection has.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnSlot {
    pub owner: u64,
    pub claimed_ns: u64,
    pub entry: ConnEntry,
}

/// A [`ConnSlot`]'s owner while its accepted socket's close gives it
/// back: no socket's cookie (they count up from 1), so no lookup matches
/// the slot and no claim takes it until it is free.
pub const CONN_RELEASING: u64 = u64::MAX;

impl ConnSlot {
    /// Whether the slot holds a connection's entry (it is neither free
    /// nor being given back).
    pub const fn is_taken(&self) -> bool {
        self.owner != 0 && self.owner != CONN_RELEASING
    }
}

/// Names a TCP connection (`LW_CONNS`' key, and in a [`ConnSlot`]'s
/// entry): the network namespace (inode
/// number, as `/proc/PID/ns/net` shows it) and both ends, addresses in
/// IPv4-mapped form for IPv4, ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub netns: u32,
    /// The connecting side's port.
    pub client_port: u16,
    /// The accepting side's (the protected) port.
    pub server_port: u16,
    pub client: Addr,
    pub server: Addr,
}

impl ConnKey {
    /// The first slot of `LW_CONN_SLOTS` the connection may be kept in: a
    /// multiplicative hash of its namespace, ports and client address (a
    /// client's connections differ in their ports; their addresses are
    /// mostly loopback). The client port is the word's lowest bits, so a
    /// client's ports in a row (Linux steps them by 2) scatter over the
    /// slots; shifted up, a step of 2 reached half of them.
    #[inline(always)]
    pub fn first_slot(&self) -> u32 {
        let x = ((u64::from(self.netns) ^ u64::from(self.client.words[3])) << 32)
            | (u64::from(self.server_port) << 16)
            | u64::from(self.client_port);
        hashed_slot(x, CONN_SLOTS)
    }

    /// Slot `i` (< [`crate::CONN_SLOT_PROBES`]) the connection may be kept in.
    #[inline(always)]
    pub fn slot(&self, i: u32) -> u32 {
        (self.first_slot() + i) & (CONN_SLOTS - 1)
    }
}

const _: () = assert!(core::mem::size_of::<OriginRecord>() == 32 + 40 + 256);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 40);
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 328 + 8);
const _: () = assert!(core::mem::size_of::<OriginSlot>() == 16 + 336);
const _: () = assert!(core::mem::size_of::<ConnSlot>() == 16 + 336);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CONN_SLOT_PROBES;

    /// A loopback connection from `client_port` to 8080 in one namespace.
    fn key(client_port: u16) -> ConnKey {
        let loopback = Addr::from_ip("127.0.0.1".parse().unwrap());
        ConnKey {
            netns: 4_026_531_840,
            client_port,
            server_port: 8080,
            client: loopback,
            server: loopback,
        }
    }

    #[test]
    fn a_connections_slots_follow_its_first_and_wrap_within_the_array() {
        for port in [1, 32_768, 40_000, 60_999, 65_535] {
            let k = key(port);
            for i in 0..CONN_SLOT_PROBES {
                assert!(k.slot(i) < CONN_SLOTS);
                assert_eq!(k.slot(i), (k.first_slot() + i) % CONN_SLOTS);
            }
        }
    }

    #[test]
    fn neighbouring_cookies_scatter_over_the_origin_slots() {
        // The first probes of cookies in a row (one CPU's connects: the
        // accepted sockets take every other cookie) take most of the slots
        // (random cookies would take about 81 of 128); and every probe is
        // a slot.
        let mut used = [false; ORIGIN_SLOTS as usize];
        for n in 0..ORIGIN_SLOTS as u64 {
            let cookie = 5 * 4096 + 2 * n;
            used[OriginSlot::probe(cookie, 0) as usize] = true;
            for i in 0..crate::ORIGIN_SLOT_PROBES {
                assert!(OriginSlot::probe(cookie, i) < ORIGIN_SLOTS);
            }
        }
        let distinct = used.iter().filter(|&&u| u).count();
        assert!(distinct >= 85, "{distinct} distinct slots");
    }

    #[test]
    fn neighbouring_client_ports_scatter_over_the_slots() {
        // A client's consecutive connections (ports one, two or four
        // apart) must not crowd a few slots: 256 of them take most of the
        // 256 (random ports would take about 162).
        for step in [1u16, 2, 4] {
            let mut used = [false; CONN_SLOTS as usize];
            for n in 0..CONN_SLOTS as u16 {
                used[key(40_000 + n * step).first_slot() as usize] = true;
            }
            let distinct = used.iter().filter(|&&u| u).count();
            assert!(distinct >= 200, "step {step}: {distinct} distinct slots");
        }
    }
}
