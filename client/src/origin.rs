//! The origin record of an accepted socket: reading it with `getsockopt`
//! ([`origin`]), checking and decoding it ([`decode`]) into a friendly
//! [`Origin`].

use std::{
    fmt, io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _},
    time::Duration,
};

use loopwarden_common::{
    Addr, NO_RULE, RELAY_RULE, evidence,
    origin::{LW_ORIGIN, MAGIC, OriginRecord, SOL_LOOPWARDEN, VERSION, status},
    verdict,
};

/// Bytes of the version-1 record.
const RECORD_SIZE: usize = size_of::<OriginRecord>();
/// The buffer [`origin`] passes: room for fields later versions append
/// to the record (the program answers with as much as it has).
const BUFFER: usize = 512;

/// Why the origin of a socket could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `ENOPROTOOPT`/`EOPNOTSUPP`: nothing answers `SOL_LOOPWARDEN` on this
    /// socket. loopwarden's `cgroup/getsockopt` program is not attached
    /// here: the daemon never ran, was detached, runs with
    /// `[provenance] getsockopt = false`, or its `getsockopt_cgroups` do
    /// not hold this process. Unlike `Ok(None)`, this says nothing about
    /// the connection. (Where the program is attached, every socket gets
    /// an answer: one that is not TCP, as a TCP connection loopwarden did
    /// not tag, is `Ok(None)`.)
    #[error(
        "loopwarden is not answering getsockopt(SOL_LOOPWARDEN, LW_ORIGIN) on this socket: \
         is the daemon running with [provenance] getsockopt = true, and do its \
         getsockopt_cgroups, if set, hold this process?"
    )]
    NotAnswering,
    /// Any other `getsockopt` failure (e.g. `EBADF`, `ENOTSOCK`).
    #[error("getsockopt(SOL_LOOPWARDEN, LW_ORIGIN) failed: {0}")]
    Io(#[from] io::Error),
    /// Fewer bytes than a version-1 record.
    #[error("the origin record is {len} bytes, shorter than the {RECORD_SIZE} of version 1")]
    Short { len: usize },
    /// The record does not start with `LWOR`: something else answered.
    #[error("not a loopwarden origin record: magic {found:#010x}, expected {MAGIC:#010x}")]
    BadMagic { found: u32 },
    /// A record version this client does not read.
    #[error(
        "origin record version {found}; this client reads version {VERSION}: \
         use a loopwarden-client that matches the running loopwarden"
    )]
    Version { found: u16 },
    /// The record's own `size` is smaller than version 1's.
    #[error("the origin record says it is {size} bytes, less than the {RECORD_SIZE} of version 1")]
    BadSize { size: u16 },
    /// A status that is neither known nor unknown.
    #[error("origin record status {found} is neither 1 (known) nor 0 (unknown)")]
    BadStatus { found: u8 },
}

/// How loopwarden judged the connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed: no rule refused or flagged it.
    Allow,
    /// Allowed and reported: a rule (or the relay verdict) with action
    /// `audit` matched.
    Audit,
    /// A deny matched, but loopwarden runs in audit mode: reported, let through.
    WouldDeny,
    /// Refused. A refused connect makes no connection, so a service does
    /// not see this one; it is here to decode every value.
    Deny,
    /// A value this client does not know.
    Other(u8),
}

impl Verdict {
    fn from_raw(v: u8) -> Self {
        match v {
            verdict::ALLOW => Verdict::Allow,
            verdict::AUDIT => Verdict::Audit,
            verdict::WOULD_DENY => Verdict::WouldDeny,
            verdict::DENY => Verdict::Deny,
            other => Verdict::Other(other),
        }
    }

    /// The name the audit lines and the query socket use: `allow`,
    /// `audit`, `would-deny`, `deny`; `unknown` for [`Verdict::Other`].
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
            Verdict::WouldDeny => "would-deny",
            Verdict::Deny => "deny",
            Verdict::Other(_) => "unknown",
        }
    }
}

/// Which rule decided the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Index into the policy's rules, the user's first, then the catalog's
    /// (`loopwarden status` lists them; the query socket gives the name).
    Index(u8),
    /// The relay verdict: the caller was network-facing.
    Relay,
}

/// How the caller was seen facing the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// It listened on a non-loopback address (`addr` is that address).
    Listening,
    /// It accepted a connection from `addr`.
    Accepted,
    /// It received data from `addr`.
    Received,
    /// Its connection to `addr` completed.
    Connected,
    /// It was executed with a connection from `addr` as its stdin or stdout
    /// (an inetd-style server's per-connection program).
    Stdio,
    /// Its state could not be kept (the kernel's process table was full):
    /// judged network-facing, with no party known (`addr` is unspecified).
    Untracked,
    /// A value this client does not know.
    Other(u8),
}

impl How {
    /// The name the audit lines use (`via_how`); `unknown` for [`How::Other`].
    pub fn name(self) -> &'static str {
        match self {
            How::Listening => "listening",
            How::Accepted => "accepted",
            How::Received => "received",
            How::Connected => "connected",
            How::Stdio => "stdio",
            How::Untracked => "untracked",
            How::Other(_) => "unknown",
        }
    }
}

/// What made the caller network-facing: the relayed party.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via {
    /// The non-local peer (for [`How::Listening`], the listening address;
    /// for [`How::Untracked`], the unspecified address: none is known).
    pub addr: SocketAddr,
    pub how: How,
    /// How long before the `connect()` it was seen (`None` for
    /// [`How::Listening`], a standing state, and [`How::Untracked`]).
    pub ago: Option<Duration>,
}

/// The file the caller was running, as `stat()` names it: with the
/// executable's file name, it says which program connected even after the
/// path was replaced. Shown as `MAJOR:MINOR:INODE`, as the audit lines'
/// `exe_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExeFile {
    /// The device's major and minor numbers.
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
}

impl fmt::Display for ExeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.major, self.minor, self.ino)
    }
}

/// The origin of a connection: who called `connect()`, as the kernel saw
/// it then, and how loopwarden judged it. Made by [`origin`] and
/// [`decode`] only; later record versions add fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Origin {
    /// Process id of the caller.
    pub pid: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Process id of its parent.
    pub ppid: u32,
    /// The caller's process had executed nothing since the fork that made
    /// it (it runs its parent's program, as socat's per-connection child
    /// does): its parent's command line speaks for it.
    pub forked: bool,
    pub uid: u32,
    pub gid: u32,
    /// The caller's thread name (`comm`, at most 15 bytes).
    pub comm: String,
    /// The executable's file name (at most 31 bytes).
    pub exe_name: String,
    /// The executable's file.
    pub exe: ExeFile,
    /// The script an interpreter caller runs, as its command line gave it.
    pub script: Option<String>,
    pub verdict: Verdict,
    /// The rule that decided, `None` if none matched.
    pub rule: Option<Rule>,
    /// What made the caller network-facing: set when it connected on
    /// behalf of a remote party.
    pub via: Option<Via>,
    /// The connecting end (IPv4-mapped addresses shown as IPv4).
    pub client: SocketAddr,
    /// The accepting end.
    pub server: SocketAddr,
    /// Network namespace inode (as `/proc/PID/ns/net` shows it).
    pub netns: u32,
    /// The caller's cgroup v2 id.
    pub cgroup_id: u64,
    /// The caller's process start (CLOCK_BOOTTIME): with `pid`, names the
    /// process even after its pid is reused.
    pub start_boottime: Duration,
    /// CLOCK_MONOTONIC at the `connect()`.
    pub connected: Duration,
    /// CLOCK_MONOTONIC when the server's side of the handshake completed.
    pub established: Duration,
    /// Owner of the accepted socket.
    pub server_uid: u32,
    /// `SO_COOKIE` of the accepted socket.
    pub server_cookie: u64,
    /// `SO_COOKIE` of the client's socket.
    pub client_cookie: u64,
}

impl Origin {
    /// A local process connected by itself: allowed, with no rule or relay
    /// evidence flagging it. Anything else was relayed or flagged.
    pub fn is_direct(&self) -> bool {
        self.verdict == Verdict::Allow && self.via.is_none()
    }
}

/// The origin of the connection on `fd`, an accepted TCP socket:
/// `Ok(None)` when loopwarden knows nothing of it (a port it does not
/// protect, a connection older than the tag, one of more live connections
/// than `[provenance] connections`: not to be taken for a direct client),
/// [`Error::NotAnswering`] when
/// loopwarden's program does not answer at all.
pub fn origin(fd: impl AsFd) -> Result<Option<Origin>, Error> {
    /// The record's own alignment, so the kernel copies it in words.
    #[repr(C, align(8))]
    struct Buf([u8; BUFFER]);
    let mut buf = Buf([0; BUFFER]);
    let mut len = BUFFER as libc::socklen_t;
    // SAFETY: buf is valid for len bytes; the kernel writes at most len
    // and updates len.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            SOL_LOOPWARDEN,
            LW_ORIGIN,
            buf.0.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP) => Error::NotAnswering,
            _ => e.into(),
        });
    }
    let len = (len as usize).min(BUFFER);
    decode(&buf.0[..len])
}

/// Checks and decodes the bytes of an origin record (native byte order, as
/// `getsockopt` returns it): `Ok(None)` for status unknown. Bytes past the
/// version-1 record (fields a later version appended) are ignored.
pub fn decode(bytes: &[u8]) -> Result<Option<Origin>, Error> {
    let Some(bytes) = bytes.get(..RECORD_SIZE) else {
        return Err(Error::Short { len: bytes.len() });
    };
    // SAFETY: bytes holds RECORD_SIZE bytes; OriginRecord is #[repr(C)]
    // and made of integers only, so every bit pattern is a valid value;
    // read_unaligned makes no alignment demand.
    let r = unsafe { bytes.as_ptr().cast::<OriginRecord>().read_unaligned() };
    if r.magic != MAGIC {
        return Err(Error::BadMagic { found: r.magic });
    }
    if r.version != VERSION {
        return Err(Error::Version { found: r.version });
    }
    if usize::from(r.size) < RECORD_SIZE {
        return Err(Error::BadSize { size: r.size });
    }
    match r.status {
        status::UNKNOWN => Ok(None),
        status::KNOWN => Ok(Some(known(&r))),
        found => Err(Error::BadStatus { found }),
    }
}

fn known(r: &OriginRecord) -> Origin {
    let o = &r.origin;
    let how = match o.via.kind {
        evidence::NONE => None,
        evidence::LISTENING => Some(How::Listening),
        evidence::ACCEPTED => Some(How::Accepted),
        evidence::RECEIVED => Some(How::Received),
        evidence::CONNECTED => Some(How::Connected),
        evidence::STDIO => Some(How::Stdio),
        evidence::UNTRACKED => Some(How::Untracked),
        other => Some(How::Other(other)),
    };
    let via = how.map(|how| Via {
        addr: socket_addr(&o.via.addr, o.via.port),
        how,
        ago: (how != How::Listening && how != How::Untracked)
            .then(|| Duration::from_nanos(o.ktime_ns.saturating_sub(o.via.ktime_ns))),
    });
    let rule = match o.rule {
        NO_RULE => None,
        RELAY_RULE => Some(Rule::Relay),
        index => Some(Rule::Index(index)),
    };
    let script = text(&o.script);
    Origin {
        pid: o.tgid,
        tid: o.pid,
        ppid: o.ppid,
        forked: o.forked == 1,
        uid: o.uid,
        gid: o.gid,
        comm: text(&o.comm),
        exe_name: text(&o.exe_name),
        // The kernel's dev_t: 12 bits of major above 20 of minor.
        exe: ExeFile {
            major: (o.exe.dev >> 20) as u32,
            minor: (o.exe.dev & 0xf_ffff) as u32,
            ino: o.exe.ino,
        },
        script: (!script.is_empty()).then_some(script),
        verdict: Verdict::from_raw(o.verdict),
        rule,
        via,
        client: socket_addr(&r.conn.client, r.conn.client_port),
        server: socket_addr(&r.conn.server, r.conn.server_port),
        netns: r.conn.netns,
        cgroup_id: o.cgroup_id,
        start_boottime: Duration::from_nanos(o.start_boottime_ns),
        connected: Duration::from_nanos(o.ktime_ns),
        established: Duration::from_nanos(r.established_ns),
        server_uid: r.server_uid,
        server_cookie: r.server_cookie,
        client_cookie: o.socket_cookie,
    }
}

/// A NUL-padded kernel string, up to its first NUL, invalid UTF-8 replaced.
fn text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// An address as the kernel keys it, shown as IPv4 when it is IPv4-mapped.
fn socket_addr(addr: &Addr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.to_ip(), port)
}

#[cfg(test)]
mod tests;
