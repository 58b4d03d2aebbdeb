//! Provenance: the origin of each protected connection, carried from the
//! connect hook to the accepted socket, and the `cgroup/getsockopt`
//! program that hands it to the service.
//!
//! 1. The connect hook records the caller by the client socket's cookie
//!    ([`connecting`], `LW_ORIGIN_PENDING`).
//! 2. The client's handshake completes (`inet_sock_set_state`
//!    SYN_SENT→ESTABLISHED, see [`crate::sockets`]): the record moves to
//!    `LW_CONNS` under the connection's addresses ([`client_established`]).
//! 3. The server's side completes (SYN_RECV→ESTABLISHED on the accepted
//!    socket, after the client's: the client's ACK creates it): the record
//!    is copied into the socket's storage, `LW_SK_ORIGIN`, which the kernel
//!    frees with the socket ([`server_established`]).
//! 4. The accepted socket closes: its `LW_CONNS` entry goes ([`closed`]).

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_socket_cookie, bpf_sk_storage_get},
    },
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use loopwarden_common::{
    ConnectEvent,
    origin::{self, ConnKey, LW_ORIGIN, OriginRecord, SOL_LOOPWARDEN},
};

use crate::maps::{CONNS, ORIGIN_PENDING, SCRATCH, sk_origin};

const RECORD_SIZE: usize = core::mem::size_of::<OriginRecord>();
/// The longest a connect's handshake can take: Linux gives up on a SYN
/// after about 127 s (`tcp_syn_retries` 6); 3 minutes leaves room.
const HANDSHAKE_NS: u64 = 180_000_000_000;
/// What a cgroup sockopt program sees of a larger `optval`.
const PAGE_SIZE: i32 = 4096;

/// The answer for a socket without a tag (read-only data).
static UNKNOWN: OriginRecord = OriginRecord::unknown();
/// What a pending origin starts as, before the connect hook fills it.
static NO_EVENT: ConnectEvent = ConnectEvent::zeroed();

/// A protected connect that proceeds: its origin waits for the handshake
/// in `LW_ORIGIN_PENDING` under the socket's cookie. Returns the entry,
/// zeroed, for the caller to fill in place (nothing else writes this
/// cookie's entry: the handshake has not begun).
#[inline(always)]
pub fn connecting(cookie: u64) -> Option<*mut ConnectEvent> {
    // By reference: the helper copies from the read-only data in place.
    #[allow(clippy::needless_borrows_for_generic_args)]
    ORIGIN_PENDING.insert(cookie, &NO_EVENT, 0).ok()?;
    ORIGIN_PENDING.get_ptr_mut(cookie)
}

/// A connect that failed before its handshake completed.
#[inline(always)]
pub fn connect_failed(cookie: u64) {
    let _ = ORIGIN_PENDING.remove(cookie);
}

/// The client socket with cookie `cookie` completed its handshake on the
/// connection `key`: a pending origin moves to `LW_CONNS`.
#[inline(always)]
pub fn client_established(cookie: u64, key: &ConnKey) {
    let Some(ev) = ORIGIN_PENDING.get_ptr(cookie) else {
        return;
    };
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `rec` is this CPU's scratch slot, which only this program
    // uses (and the kernel never runs it nested on one CPU); `ev` points
    // into a map value, copied whole.
    unsafe {
        (*rec).magic = origin::MAGIC;
        (*rec).version = origin::VERSION;
        (*rec).size = RECORD_SIZE as u16;
        (*rec).status = origin::status::KNOWN;
        (*rec)._pad0 = [0; 3];
        (*rec).server_uid = 0;
        (*rec).established_ns = 0;
        (*rec).server_cookie = 0;
        (*rec).conn = *key;
        (*rec).origin = ptr::read(ev);
        // By reference: a by-value record would be copied to the stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = CONNS.insert(key, &*rec, 0);
    }
    let _ = ORIGIN_PENDING.remove(cookie);
}

/// The accepted socket `sk` (owned by `uid`) completed its handshake on
/// the connection `key`: a recorded origin becomes the socket's tag.
#[inline(always)]
pub fn server_established(sk: u64, key: &ConnKey, uid: u32) {
    let Some(rec) = CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: `rec` points into the map's value; `sk` is the tracepoint's
    // socket argument, a full socket in its handshake's last step.
    unsafe {
        // An entry another accepted socket took, or one whose connect is
        // older than any handshake, is a dead connection's (its close was
        // not seen, or its server never accepted it) that happens to share
        // these addresses: never this socket's origin.
        let now = bpf_ktime_get_ns();
        if (*rec).established_ns != 0 || now.wrapping_sub((*rec).origin.ktime_ns) > HANDSHAKE_NS {
            return;
        }
        (*rec).server_uid = uid;
        (*rec).established_ns = now;
        (*rec).server_cookie = bpf_get_socket_cookie(sk as *mut c_void);
        // The new storage starts as a copy of `rec`.
        bpf_sk_storage_get(
            sk_origin(),
            sk as *mut c_void,
            rec.cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        );
    }
}

/// Socket `sk` closed: if it carries a tag, its connection leaves `LW_CONNS`
/// (the tag itself goes with the socket).
#[inline(always)]
pub fn closed(sk: u64) {
    // SAFETY: a lookup without creation on the tracepoint's socket.
    let tag = unsafe { bpf_sk_storage_get(sk_origin(), sk as *mut c_void, ptr::null_mut(), 0) }
        .cast::<OriginRecord>();
    if tag.is_null() {
        return;
    }
    // SAFETY: non-NULL: the socket's storage; its key is read in place
    // (by reference: the map helper takes a pointer to it).
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = CONNS.remove(unsafe { &(*tag).conn });
}

/// `getsockopt(fd, SOL_LOOPWARDEN, LW_ORIGIN, buf, &len)`: the accepted
/// socket's tag, or [`OriginRecord::unknown`] when it has none; `len`
/// must be at least the record's size (else the kernel's own answer,
/// ENOPROTOOPT, stands). Every other option is left to the kernel.
#[cgroup_sockopt(getsockopt)]
pub fn lw_getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: context fields the getsockopt program type may read and write.
    unsafe {
        if (*so).level != SOL_LOOPWARDEN || (*so).optname != LW_ORIGIN {
            // Past a page the program sees a truncated copy: leave the
            // caller's buffer as the kernel filled it (on kernels before
            // 6.5 a larger optlen left standing fails the call).
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
        let sk = (*so).__bindgen_anon_1.sk;
        let tag =
            bpf_sk_storage_get(sk_origin(), sk.cast(), ptr::null_mut(), 0).cast::<OriginRecord>();
        // The kernel's buffer for optval is allocated (or on its stack,
        // for small ones) 8-byte aligned: the record is copied in words.
        let out = optval.cast::<OriginRecord>();
        if tag.is_null() {
            // Another loopwarden's program (a second pin directory) may
            // have answered already: its answer stands.
            if ptr::read_volatile(&(*so).retval) == 0 {
                return 1;
            }
            out.write(UNKNOWN);
        } else {
            out.write(ptr::read(tag));
        }
        // Two 32-bit stores: the verifier refuses a merged 64-bit one.
        ptr::write_volatile(&raw mut (*so).optlen, RECORD_SIZE as i32);
        ptr::write_volatile(&raw mut (*so).retval, 0);
    }
    1
}
