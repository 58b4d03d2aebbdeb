//! `cgroup/getsockopt`: the service asks about a socket it accepted and
//! gets its connection's origin record, or "unknown".

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sockopt},
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use loopwarden_common::{
    Addr,
    origin::{ConnEntry, ConnKey, LW_ORIGIN, OriginRecord, SOL_LOOPWARDEN},
};

use super::conns::{HeldSlot, find_conn};
use crate::{
    addr::v4_mapped,
    connect::{AF_INET, AF_INET6},
    identity::{offset, probe, sock_words},
};

const RECORD_SIZE: usize = core::mem::size_of::<OriginRecord>();

/// What a cgroup sockopt program sees of a larger `optval`.
const PAGE_SIZE: i32 = 4096;

/// The answer for a socket without a tag (read-only data).
static UNKNOWN: OriginRecord = OriginRecord::unknown();

/// `getsockopt(fd, SOL_LOOPWARDEN, LW_ORIGIN, buf, &len)`: the accepted
/// socket's origin, or [`OriginRecord::unknown`] when loopwarden has none;
/// `len` must be at least the record's size (else the kernel's own answer,
/// EOPNOTSUPP or ENOPROTOOPT, stands). Every other option is left to the
/// kernel.
#[cgroup_sockopt(getsockopt)]
pub fn lw_getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: context fields the getsockopt program type may read and write.
    unsafe {
        if (*so).level != SOL_LOOPWARDEN || (*so).optname != LW_ORIGIN {
            // Past a page the program sees a truncated copy: leave the
            // caller's buffer as the kernel filled it (a kernel without
            // 6.5's "bpf: Don't EFAULT for getsockopt with wrong optlen"
            // fails the call when a larger optlen is left standing;
            // Debian's 6.1 and 6.12 have it, so no test here can tell).
            if ptr::read_volatile(&(*so).optlen) > PAGE_SIZE {
                ptr::write_volatile(&raw mut (*so).optlen, 0);
            }
            return 1;
        }
        let optval = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if optval.add(RECORD_SIZE) > end {
            return 1;
        }
        let found = entry_of(so);
        // The kernel's buffer for optval is allocated (or on its stack,
        // for small ones) 8-byte aligned: the record is copied in words.
        let out = optval.cast::<OriginRecord>();
        match found {
            Some(found) => {
                out.write(ptr::read(&raw const (*found.entry).record));
                if !found.still_held() {
                    out.write(UNKNOWN);
                }
            }
            // Another loopwarden's program (a second pin directory) may
            // have answered already: its answer stands.
            None if ptr::read_volatile(&(*so).retval) == 0 => return 1,
            None => out.write(UNKNOWN),
        }
        // Two 32-bit stores: the verifier refuses a merged 64-bit one.
        ptr::write_volatile(&raw mut (*so).optlen, RECORD_SIZE as i32);
        ptr::write_volatile(&raw mut (*so).retval, 0);
    }
    1
}

/// A connection's entry as [`entry_of`] found it, and what must still
/// hold once its record is copied out.
struct Found {
    entry: *mut ConnEntry,
    /// The accepted socket's cookie, which the entry bore.
    cookie: u64,
    /// The client's first sequence number, as the entry bore it.
    seq: u32,
    /// Its slot and the slot's owner word as read (`None`: in `LW_CONNS`).
    slot: Option<HeldSlot>,
}

impl Found {
    /// Whether the entry is still the connection's after the copy. The
    /// program runs with the socket locked (the kernel takes the lock
    /// around cgroup getsockopt programs), so this socket's close cannot
    /// give its slot back meanwhile; but `LW_CONNS` may recycle an element
    /// for another connection's insert on another CPU, and a record copied
    /// meanwhile may mix the two: not given out. A slot's owner word
    /// changes at every release and claim (to cookies, never reused); a
    /// recycled element is another connection's, whose server's cookie
    /// (near the record's start) and first sequence number (its end) are
    /// others.
    ///
    /// # Safety
    /// The pointers are into the maps' values, as [`entry_of`] found them.
    #[inline(always)]
    unsafe fn still_held(&self) -> bool {
        // SAFETY: as the caller promises.
        unsafe {
            let seq = ptr::read_volatile(&(*self.entry).first_seq) == self.seq
                && ptr::read_volatile(&(*self.entry).record.server_cookie) == self.cookie;
            match self.slot {
                Some((slot, owner)) => seq && ptr::read_volatile(&(*slot).owner) == owner,
                None => seq,
            }
        }
    }
}

/// The entry of the connection `so`'s socket accepted, if that socket is
/// its accepting side.
///
/// # Safety
/// `so` is the program's context.
#[inline(always)]
unsafe fn entry_of(so: *mut bpf_sockopt) -> Option<Found> {
    // SAFETY: the context's socket, read field by field as the program
    // type allows; `tcp` is checked for NULL.
    unsafe {
        let sk: *mut bpf_sock = (*so).__bindgen_anon_1.sk;
        // Every address field is read before the family picks: read in
        // the branches, the compiler merges the loads into one at a
        // chosen offset, which the verifier refuses on a socket.
        let (dst4, src4) = (
            ptr::read_volatile(&(*sk).dst_ip4),
            ptr::read_volatile(&(*sk).src_ip4),
        );
        let (dst6, src6) = (ip6(&(*sk).dst_ip6), ip6(&(*sk).src_ip6));
        // The kernel's family is 16 bits wide: the context widens it.
        let (client, server) = match ptr::read_volatile(&(*sk).family) as u16 {
            AF_INET => (v4_mapped(dst4), v4_mapped(src4)),
            AF_INET6 => (dst6, src6),
            _ => return None,
        };
        let (netns, cookie) = netns_and_cookie(sk)?;
        let key = ConnKey {
            netns,
            client_port: u16::from_be(ptr::read_volatile(&(*sk).dst_port)),
            server_port: ptr::read_volatile(&(*sk).src_port) as u16,
            client,
            server,
        };
        let (entry, slot) = find_conn(&key)?;
        // Bound to this socket by its handshake, which checked the first
        // sequence number: an entry a dead connection between the same
        // ends left (its close unseen) is another socket's. (The socket's
        // own first sequence number is not compared again: the cookie
        // says as much, without the helper call that types the socket.)
        if ptr::read_volatile(&(*entry).record.established_ns) == 0
            || ptr::read_volatile(&(*entry).record.server_cookie) != cookie
        {
            return None;
        }
        let seq = ptr::read_volatile(&(*entry).first_seq);
        Some(Found {
            entry,
            cookie,
            seq,
            slot,
        })
    }
}

/// Words of `struct sock` read to find its namespace and cookie:
/// `skc_net` and `skc_cookie` lie within them (48 and 88 bytes in on
/// x86_64 Linux 6.1, 6.12 and 6.18); past them, nothing is answered.
const SOCK_PREFIX_WORDS: usize = 16;

/// The inode number of the network namespace of the socket `sk`, and the
/// socket's cookie (0 if none was given yet). `getsockopt` programs may
/// not type the socket as a kernel `struct sock` (`bpf_skc_to_tcp_sock` is
/// refused), offset its pointer, or ask its cookie: both are taken from
/// one copy of the socket's start.
#[inline(always)]
fn netns_and_cookie(sk: *mut bpf_sock) -> Option<(u32, u64)> {
    let [net, cookie] = sock_words::<SOCK_PREFIX_WORDS, 2>(
        sk as *const c_void,
        [
            (offset!(sk_net) / 8) as usize,
            (offset!(sk_cookie) / 8) as usize,
        ],
    )?;
    (net != 0).then(|| (probe::<u32>(net + u64::from(offset!(net_inum))), cookie))
}

/// An IPv6 address from a `bpf_sock` field, a 32-bit load per word (the
/// only width the context allows).
#[inline(always)]
fn ip6(words: &[u32; 4]) -> Addr {
    Addr {
        words: [
            // SAFETY: reads of a context array the program type allows.
            unsafe { ptr::read_volatile(&words[0]) },
            unsafe { ptr::read_volatile(&words[1]) },
            unsafe { ptr::read_volatile(&words[2]) },
            unsafe { ptr::read_volatile(&words[3]) },
        ],
    }
}
