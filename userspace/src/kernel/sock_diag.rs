//! TCP sockets through `NETLINK_SOCK_DIAG` (what `ss` uses): a dump of the
//! sockets of one network namespace, one socket found by its exact id, and
//! `SOCK_DESTROY` of one of them.
//!
//! A sock_diag socket answers for the network namespace it was created in,
//! whichever thread uses it later: [`SockDiag::open`] is called inside the
//! namespace (see [`crate::resolve::in_netns`]) and the handle is used from
//! anywhere.
//!
//! Messages are encoded by hand; the layouts are `struct nlmsghdr`
//! (`include/uapi/linux/netlink.h`), `struct inet_diag_req_v2` and
//! `struct inet_diag_msg` (`include/uapi/linux/inet_diag.h`). Not with
//! `netlink-packet-sock-diag`: it sends every message as
//! `SOCK_DIAG_BY_FAMILY`, so it cannot say `SOCK_DESTROY`, and it brings
//! `netlink-packet-core` and `netlink-sys` for three fixed layouts.
//!
//! # Minimum kernel version
//! `SOCK_DESTROY` needs Linux 4.5 and `CONFIG_INET_DIAG_DESTROY`, and
//! `CAP_NET_ADMIN` over the socket's network namespace.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// `SOCK_DIAG_BY_FAMILY` (`include/uapi/linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY`.
const SOCK_DESTROY: u16 = 21;
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Receive buffer: the kernel fills at most this much per dump message batch.
const RECV_BUF: usize = 64 * 1024;
/// No kernel answer for this long means something is wrong: give up.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// How to get TCP socket diagnostics where the kernel has none: said by
/// `doctor`, the sweep and the daemon's answers alike.
pub const NO_TCP_DIAG_FIX: &str = "the kernel has no TCP socket diagnostics: load them (`modprobe \
                                   tcp_diag`, which loads inet_diag), or use a kernel with \
                                   CONFIG_INET_TCP_DIAG";

/// How to fix a sock_diag error the kernel gives for a missing feature, in
/// a few words, or `None` for any other error. `ENOENT` answers a dump of a
/// family no diagnostics module serves (`inet_diag`/`tcp_diag` are modules
/// on most distribution kernels, loaded on demand unless module loading is
/// off); `EOPNOTSUPP` a `SOCK_DESTROY` the kernel was built without.
pub fn missing_feature_fix(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error()? {
        libc::ENOENT => Some(NO_TCP_DIAG_FIX),
        libc::EOPNOTSUPP => {
            Some("the kernel cannot destroy sockets: use one with CONFIG_INET_DIAG_DESTROY=y")
        }
        _ => None,
    }
}

/// TCP states (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;

    /// The `idiag_states` bit of a state.
    pub const fn bit(state: u8) -> u32 {
        1 << state
    }
}

/// `struct inet_diag_sockid` as the kernel reported it: echoed unchanged to
/// destroy exactly that socket (the cookie makes a recycled address/port
/// pair harmless: the kernel answers `ENOENT`, `ESTALE` on older kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockId {
    /// Network byte order, as on the wire.
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// IPv4 in the first 4 bytes, or the IPv6 address.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Bound interface index (0: none).
    pub interface: u32,
    /// The socket cookie, as two host-order words (low word first).
    pub cookie: [u32; 2],
}

impl SockId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sport);
        out.extend_from_slice(&self.dport);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.interface.to_ne_bytes());
        out.extend_from_slice(&self.cookie[0].to_ne_bytes());
        out.extend_from_slice(&self.cookie[1].to_ne_bytes());
    }

    fn decode(b: &[u8; SOCKID_LEN]) -> Self {
        let word = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&b[4..20]);
        dst.copy_from_slice(&b[20..36]);
        SockId {
            sport: [b[0], b[1]],
            dport: [b[2], b[3]],
            src,
            dst,
            interface: word(36),
            cookie: [word(40), word(44)],
        }
    }
}

/// One TCP socket from a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// A [`state`] value.
    pub state: u8,
    /// Local end.
    pub src: SocketAddr,
    /// Remote end (for a connected socket: what it connected to).
    pub dst: SocketAddr,
    /// The socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`).
    pub cookie: u64,
    /// Inode of the socket in sockfs (0 once no descriptor refers to it).
    pub inode: u64,
    /// Owner uid as the kernel records it (the creator's).
    pub uid: u32,
    /// The kernel's id, for [`SockDiag::destroy`].
    pub id: SockId,
}

impl TcpSocket {
    /// Parses the payload of a `SOCK_DIAG_BY_FAMILY` reply (an
    /// `inet_diag_msg` and attributes, which are ignored).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let msg: &[u8; MSG_LEN] = payload.get(..MSG_LEN)?.try_into().ok()?;
        let family = msg[0];
        let id = SockId::decode(msg[4..4 + SOCKID_LEN].try_into().ok()?);
        let word = |at: usize| u32::from_ne_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]]);
        let addr = |raw: &[u8; 16]| -> Option<IpAddr> {
            match i32::from(family) {
                libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
                libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
                _ => None,
            }
        };
        let after_id = 4 + SOCKID_LEN;
        Some(TcpSocket {
            family,
            state: msg[1],
            src: SocketAddr::new(addr(&id.src)?, u16::from_be_bytes(id.sport)),
            dst: SocketAddr::new(addr(&id.dst)?, u16::from_be_bytes(id.dport)),
            cookie: u64::from(id.cookie[0]) | u64::from(id.cookie[1]) << 32,
            // idiag_expires, idiag_rqueue, idiag_wqueue, then these two.
            uid: word(after_id + 12),
            inode: u64::from(word(after_id + 16)),
            id,
        })
    }
}

/// A `NETLINK_SOCK_DIAG` socket bound to the network namespace it was
/// opened in.
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

/// How a dump ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dumped {
    /// Every socket was read.
    Complete,
    /// `limit` sockets were read; the rest were not.
    Truncated,
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace,
/// neither bound nor connected.
fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The netlink address of port `port` (0: the kernel's).
fn netlink_addr(port: u32) -> libc::sockaddr_nl {
    // SAFETY: zeroed sockaddr_nl is valid; family and port set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_pid = port;
    addr
}

/// The size of a [`netlink_addr`], as the socket calls take it.
const NETLINK_ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_nl>() as _;

/// Sends `bytes` in one datagram from `fd` to netlink port `port`.
fn send_to(fd: &OwnedFd, bytes: &[u8], port: u32) -> io::Result<()> {
    let addr = netlink_addr(port);
    // SAFETY: the buffer and the address are valid for the sizes given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&raw const addr).cast(),
            NETLINK_ADDR_LEN,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl SockDiag {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let fd = diag_socket()?;
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: the option value is a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // Connected to the kernel (port 0): the kernel then refuses any
        // other sender's message to this socket. The daemon opens these in
        // every namespace with a process, some of which a user namespace's
        // owner administers, who could otherwise send a forged answer (an
        // early end of a dump, sockets that are not there) to our port.
        let kernel = netlink_addr(0);
        // SAFETY: the address is valid for the size given.
        let rc =
            unsafe { libc::connect(fd.as_raw_fd(), (&raw const kernel).cast(), NETLINK_ADDR_LEN) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Appends the TCP sockets of `family` (`AF_INET` or `AF_INET6`) whose
    /// state is in `states` (a mask of [`state::bit`]s) to `out`, stopping
    /// after `limit` sockets.
    pub fn dump(
        &mut self,
        family: u8,
        states: u32,
        limit: usize,
        out: &mut Vec<TcpSocket>,
    ) -> io::Result<Dumped> {
        self.dump_kept(family, states, limit, |_| true, out)
            .map(|(dumped, _)| dumped)
    }

    /// [`SockDiag::dump`] of the sockets `keep` takes: only they count
    /// toward `limit` (the others are read and dropped, so sockets nobody
    /// asked about cannot use it up). Also returns how many were read.
    pub fn dump_kept(
        &mut self,
        family: u8,
        states: u32,
        limit: usize,
        mut keep: impl FnMut(&TcpSocket) -> bool,
        out: &mut Vec<TcpSocket>,
    ) -> io::Result<(Dumped, usize)> {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        let seq = self.send(SOCK_DIAG_BY_FAMILY, flags, family, states, &SockId::zero())?;
        let (mut taken, mut read) = (0usize, 0usize);
        let dumped = self.until(seq, RECV_BUF, |msg| match msg.kind {
            NLMSG_DONE => Some(done_status(msg.payload).map(|()| Dumped::Complete)),
            NLMSG_ERROR => Some(Err(error_status(msg.payload))),
            SOCK_DIAG_BY_FAMILY => {
                let sock = TcpSocket::parse(msg.payload)?;
                read += 1;
                if !keep(&sock) {
                    return None;
                }
                // The rest of the dump is dropped with the socket's queue.
                if taken == limit {
                    return Some(Ok(Dumped::Truncated));
                }
                out.push(sock);
                taken += 1;
                None
            }
            _ => None,
        })??;
        Ok((dumped, read))
    }

    /// Whether the kernel has TCP socket diagnostics (`tcp_diag`): `Err`
    /// with `ENOENT` when it has none. [`SockDiag::find`] cannot tell: it
    /// answers `ENOENT` for a socket that is not there too. A dump of no
    /// state can, in one round trip.
    pub fn probe_tcp(&mut self) -> io::Result<()> {
        self.dump(libc::AF_INET as u8, 0, 0, &mut Vec::new())
            .map(drop)
    }

    /// The socket `id` names exactly (addresses, ports and cookie, unless
    /// both cookie words are `INET_DIAG_NOCOOKIE`, `u32::MAX`) among the
    /// connected TCP sockets of `family`, if it exists.
    /// An IPv4 `id` also finds an IPv6 socket with IPv4-mapped addresses.
    pub fn find(&mut self, family: u8, id: &SockId) -> io::Result<Option<TcpSocket>> {
        let flags = libc::NLM_F_REQUEST as u16;
        let seq = self.send(SOCK_DIAG_BY_FAMILY, flags, family, u32::MAX, id)?;
        self.until(seq, 4096, |msg| match msg.kind {
            SOCK_DIAG_BY_FAMILY => Some(Ok(TcpSocket::parse(msg.payload))),
            // No such socket; or one with these addresses, another cookie.
            NLMSG_ERROR => Some(match error_code(msg.payload) {
                Some(e) if e == -libc::ENOENT || e == -libc::ESTALE => Ok(None),
                _ => Err(error_status(msg.payload)),
            }),
            _ => None,
        })?
    }

    /// Destroys one socket (`SOCK_DESTROY`): the kernel aborts it as
    /// `tcp_abort()` does (its owner gets `ECONNABORTED`, the peer a reset).
    pub fn destroy(&mut self, sock: &TcpSocket) -> io::Result<()> {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let seq = self.send(SOCK_DESTROY, flags, sock.family, u32::MAX, &sock.id)?;
        self.until(seq, 4096, |msg| {
            (msg.kind == NLMSG_ERROR).then(|| match error_code(msg.payload) {
                Some(0) => Ok(()),
                _ => Err(error_status(msg.payload)),
            })
        })?
    }

    /// Reads the kernel's messages answering request `seq` (into a buffer
    /// of `buf_len` bytes) until `on` returns what one of them says.
    fn until<R>(
        &self,
        seq: u32,
        buf_len: usize,
        mut on: impl FnMut(&Message<'_>) -> Option<R>,
    ) -> io::Result<R> {
        let mut buf = vec![0u8; buf_len];
        loop {
            let len = self.recv(&mut buf)?;
            for msg in Messages::new(&buf[..len]) {
                if msg.seq == seq
                    && let Some(said) = on(&msg)
                {
                    return Ok(said);
                }
            }
        }
    }

    fn send(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        states: u32,
        id: &SockId,
    ) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let request = encode_request(kind, flags, self.seq, family, states, id);
        send_to(&self.fd, &request, 0)?;
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the buffer is valid for writes of its length.
            let len =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if len >= 0 {
                return Ok(len as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl SockId {
    /// All zeros: "any socket" in a dump request.
    pub const fn zero() -> Self {
        SockId {
            sport: [0; 2],
            dport: [0; 2],
            src: [0; 16],
            dst: [0; 16],
            interface: 0,
            cookie: [0; 2],
        }
    }
}

const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;

/// An `nlmsghdr` followed by an `inet_diag_req_v2` for TCP.
fn encode_request(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    states: u32,
    id: &SockId,
) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + REQ_LEN;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    out.push(family);
    out.push(libc::IPPROTO_TCP as u8);
    out.push(0); // idiag_ext: no extensions
    out.push(0); // pad
    out.extend_from_slice(&states.to_ne_bytes());
    id.encode(&mut out);
    out
}

/// One netlink message of a received batch.
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of one `recv`, each `NLMSG_ALIGN`ed (4 bytes).
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Message<'a>;

    fn next(&mut self) -> Option<Message<'a>> {
        let hdr = self.rest.get(..NLMSG_HDR_LEN)?;
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let msg = Message {
            kind: u16::from_ne_bytes([hdr[4], hdr[5]]),
            seq: u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]),
            payload: &self.rest[NLMSG_HDR_LEN..len],
        };
        let aligned = (len + 3) & !3;
        self.rest = self.rest.get(aligned..).unwrap_or(&[]);
        Some(msg)
    }
}

/// The (negative) errno of an `NLMSG_ERROR`/`NLMSG_DONE` payload.
fn error_code(payload: &[u8]) -> Option<i32> {
    let b = payload.get(..4)?;
    Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn error_status(payload: &[u8]) -> io::Error {
    match error_code(payload) {
        Some(code) if code < 0 => io::Error::from_raw_os_error(-code),
        _ => io::Error::new(io::ErrorKind::InvalidData, "malformed netlink error"),
    }
}

fn done_status(payload: &[u8]) -> io::Result<()> {
    match error_code(payload) {
        Some(code) if code < 0 => Err(io::Error::from_raw_os_error(-code)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    };

    use super::*;

    /// An `inet_diag_msg` as the kernel would send it.
    fn diag_msg(family: u8, state: u8, id: &SockId, uid: u32, inode: u32) -> Vec<u8> {
        let mut out = vec![family, state, 0, 0];
        id.encode(&mut out);
        for word in [0u32, 0, 0, uid, inode] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out
    }

    #[test]
    fn request_layout() {
        let id = SockId {
            sport: 40000u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
            src: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            interface: 3,
            cookie: [0xdead_beef, 7],
        };
        let req = encode_request(SOCK_DESTROY, 5, 9, 2, u32::MAX, &id);
        assert_eq!(req.len(), 72);
        assert_eq!(&req[0..4], &72u32.to_ne_bytes());
        assert_eq!(&req[4..6], &21u16.to_ne_bytes());
        assert_eq!(&req[6..8], &5u16.to_ne_bytes());
        assert_eq!(&req[8..12], &9u32.to_ne_bytes());
        assert_eq!(&req[16..20], &[2, 6, 0, 0]);
        assert_eq!(&req[20..24], &u32::MAX.to_ne_bytes());
        assert_eq!(&req[24..28], &[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(&req[28..32], &[127, 0, 0, 1]);
        assert_eq!(&req[44..48], &[127, 0, 0, 2]);
        assert_eq!(&req[60..64], &3u32.to_ne_bytes());
        assert_eq!(&req[64..68], &0xdead_beefu32.to_ne_bytes());
        assert_eq!(&req[68..72], &7u32.to_ne_bytes());
    }

    #[test]
    fn reply_parses_and_echoes_the_id() {
        let mut src = [0u8; 16];
        src[15] = 1;
        let id = SockId {
            sport: 50123u16.to_be_bytes(),
            dport: 8080u16.to_be_bytes(),
            src,
            dst: "::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets(),
            interface: 0,
            cookie: [5, 1],
        };
        let payload = diag_msg(libc::AF_INET6 as u8, state::ESTABLISHED, &id, 1000, 4242);
        let sock = TcpSocket::parse(&payload).unwrap();
        assert_eq!(sock.src, "[::1]:50123".parse().unwrap());
        assert_eq!(sock.dst, "[::ffff:127.0.0.1]:8080".parse().unwrap());
        assert_eq!(sock.state, state::ESTABLISHED);
        assert_eq!(sock.cookie, 1 << 32 | 5);
        assert_eq!(sock.uid, 1000);
        assert_eq!(sock.inode, 4242);
        assert_eq!(sock.id, id);
        assert!(TcpSocket::parse(&payload[..MSG_LEN - 1]).is_none());
        // An unknown family is not guessed at.
        assert!(TcpSocket::parse(&diag_msg(1, 1, &id, 0, 0)).is_none());
    }

    #[test]
    fn messages_are_split_on_aligned_boundaries() {
        let mut buf = Vec::new();
        for (kind, payload) in [(20u16, vec![1u8, 2, 3]), (3u16, vec![0u8; 4])] {
            let len = (NLMSG_HDR_LEN + payload.len()) as u32;
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&77u32.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&payload);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
        }
        let msgs: Vec<(u16, u32, usize)> = Messages::new(&buf)
            .map(|m| (m.kind, m.seq, m.payload.len()))
            .collect();
        assert_eq!(msgs, [(20, 77, 3), (3, 77, 4)]);
        // A length past the buffer ends the batch instead of reading past it.
        buf[0] = 0xff;
        assert_eq!(Messages::new(&buf).count(), 0);
    }

    /// The netlink port id of `fd` (bound, automatically if need be).
    fn port_of(fd: i32) -> u32 {
        let mut addr = netlink_addr(0);
        let mut len = NETLINK_ADDR_LEN;
        // SAFETY: the address is valid for the size given.
        let rc = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        addr.nl_pid
    }

    /// A sock_diag socket of this test's, bound to a port of its own.
    fn other_socket() -> OwnedFd {
        let fd = diag_socket().unwrap();
        let any = netlink_addr(0);
        // SAFETY: the address is valid for the size given.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const any).cast(), NETLINK_ADDR_LEN) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        fd
    }

    /// Sends a bare `NLMSG_NOOP` (a 16-byte header) from `from` to `to`.
    fn send_noop(from: &OwnedFd, to: u32) -> io::Result<()> {
        let msg: [u32; 4] = [16, u32::from(libc::NLMSG_NOOP as u16), 0, 0];
        let bytes: Vec<u8> = msg.iter().flat_map(|w| w.to_ne_bytes()).collect();
        send_to(from, &bytes, to)
    }

    /// Only the kernel reaches a sock_diag socket of ours: another socket's
    /// message to its port is refused, while the same message reaches a
    /// socket that is not connected to the kernel (the control). (As root:
    /// only a sender with CAP_NET_ADMIN may send to a user port at all.)
    #[test]
    fn only_the_kernel_may_answer_on_our_socket() {
        let diag = SockDiag::open().unwrap();
        let sender = other_socket();
        let control = other_socket();
        send_noop(&sender, port_of(control.as_raw_fd())).expect("the control is reached");
        let refused = send_noop(&sender, port_of(diag.fd.as_raw_fd()))
            .expect_err("another socket's message reached ours");
        assert_eq!(
            refused.raw_os_error(),
            Some(libc::ECONNREFUSED),
            "{refused}"
        );
    }

    /// Sockets `keep` leaves out do not use up the limit: with three
    /// connections (six established sockets) and a limit of one, the dump
    /// of the one kept is complete; the control, keeping all, is cut short.
    #[test]
    fn sockets_not_kept_do_not_count_toward_the_limit() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let _accepted: Vec<_> = (0..3).map(|_| listener.accept().unwrap()).collect();
        let wanted = clients[1].local_addr().unwrap();
        let mut diag = SockDiag::open().unwrap();
        let established = state::bit(state::ESTABLISHED);
        let v4 = libc::AF_INET as u8;
        let mut kept = Vec::new();
        let (dumped, read) = diag
            .dump_kept(v4, established, 1, |s| s.src == wanted, &mut kept)
            .unwrap();
        assert_eq!(dumped, Dumped::Complete);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].src, wanted);
        assert!(read >= 6, "{read} sockets read");
        let mut all = Vec::new();
        assert_eq!(
            diag.dump(v4, established, 1, &mut all).unwrap(),
            Dumped::Truncated
        );
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn dump_finds_this_processs_connection_and_destroy_aborts_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server_addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(server_addr).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let client_addr = client.local_addr().unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", client.as_raw_fd()))
            .unwrap()
            .ino();

        let mut diag = SockDiag::open().unwrap();
        let mut sockets = Vec::new();
        let states = state::bit(state::ESTABLISHED) | state::bit(state::LISTEN);
        let done = diag
            .dump(libc::AF_INET as u8, states, usize::MAX, &mut sockets)
            .unwrap();
        assert_eq!(done, Dumped::Complete);
        let ours = sockets
            .iter()
            .find(|s| s.src == client_addr && s.dst == server_addr)
            .copied()
            .expect("the client socket is in the dump");
        assert_eq!(ours.state, state::ESTABLISHED);
        assert_eq!(ours.inode, inode);
        assert!(
            sockets
                .iter()
                .any(|s| s.state == state::LISTEN && s.src == server_addr)
        );
        let mut one = Vec::new();
        assert_eq!(
            diag.dump(libc::AF_INET as u8, states, 1, &mut one).unwrap(),
            Dumped::Truncated
        );
        assert_eq!(one.len(), 1);

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped the destroy part: SOCK_DESTROY needs CAP_NET_ADMIN");
            return;
        }
        // A stale cookie names no socket.
        let mut stale = ours;
        stale.id.cookie[0] ^= 1;
        let err = diag.destroy(&stale).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)),
            "{err}"
        );
        client.write_all(b"still up").unwrap();

        diag.destroy(&ours).unwrap();
        let mut buf = [0u8; 16];
        let err = client.read(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        // The peer was reset (after the data sent before the abort).
        let mut got = Vec::new();
        let _ = accepted.read_to_end(&mut got);
        assert!(got.starts_with(b"still up") || got.is_empty());
    }
}
