//! Addresses: which are loopback, and the IPv4-mapped form every address is
//! kept in.

use loopwarden_common::Addr;

/// `::ffff:0:0/96` third word, host order.
pub const V4_MAPPED_WORD: u32 = 0x0000_ffff;

/// An IPv4 address (network order) as `::ffff:a.b.c.d`.
#[inline(always)]
pub fn v4_mapped(ip4: u32) -> Addr {
    Addr {
        words: [0, 0, V4_MAPPED_WORD.to_be(), ip4],
    }
}

/// 127.0.0.0/8 (host order).
#[inline(always)]
pub fn is_loopback_v4(ip: u32) -> bool {
    ip >> 24 == 127
}

/// `::1` and `::ffff:127.0.0.0/104`, words in network order.
#[inline(always)]
pub fn is_loopback(a: &Addr) -> bool {
    let w = a.words;
    w[0] == 0
        && w[1] == 0
        && ((w[2] == 0 && u32::from_be(w[3]) == 1)
            || (u32::from_be(w[2]) == V4_MAPPED_WORD && is_loopback_v4(u32::from_be(w[3]))))
}

/// `::` or `::ffff:0.0.0.0`: no peer (an unconnected socket).
#[inline(always)]
pub fn is_unspecified(a: &Addr) -> bool {
    let w = a.words;
    w[0] == 0 && w[1] == 0 && w[3] == 0 && (w[2] == 0 || u32::from_be(w[2]) == V4_MAPPED_WORD)
}
