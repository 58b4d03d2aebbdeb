//! Filters and executable-name keys: how userspace and the kernel's
//! matcher turn an executable's identity and name into what the rule maps
//! are keyed and pre-filtered by.

use crate::{
    EXE_NAME_LEN, EXE_NAME_PREFIX_MARK, EXE_NAME_SEPARATORS, ExeKey, MAX_PREFIX_CANDIDATES,
    PREFIX_CUT_LIMIT,
};

/// Words of a [`Settings`](crate::Settings) filter: 4,096 bits. The catalog alone puts about
/// 70 values in the name filter: at 256 bits a fifth of the names no rule
/// has passed it (and took the name lookups), at 4,096 under 2%.
pub const FILTER_WORDS: usize = 64;
/// log2 of a filter's bits.
const FILTER_BITS_LOG2: u32 = (FILTER_WORDS * 64).trailing_zeros();
const _: () = assert!(FILTER_WORDS.is_power_of_two());

/// The bit (0..4096) of a filter that value `v` sets: the top 12 bits of a
/// Fibonacci hash.
#[inline(always)]
pub const fn filter_bit(v: u64) -> u32 {
    (v.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS_LOG2)) as u32
}

/// Whether `filter` has bit `bit` set.
#[inline(always)]
pub const fn filter_has(filter: &[u64; FILTER_WORDS], bit: u32) -> bool {
    (filter[(bit >> 6) as usize % FILTER_WORDS] >> (bit & 63)) & 1 == 1
}

/// The value an executable identity is filtered by.
#[inline(always)]
pub const fn exe_filter_value(exe: &ExeKey) -> u64 {
    exe.ino ^ exe.dev.rotate_left(32)
}

/// The value an executable name is filtered by: its first 7 bytes (fewer
/// if it is shorter), zero-padded, as a native-endian word — what
/// `bpf_probe_read_kernel_str` leaves in a zeroed 8-byte buffer.
pub const fn name_prefix(name: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let mut i = 0;
    while i < 7 && i < name.len() && name[i] != 0 {
        bytes[i] = name[i];
        i += 1;
    }
    u64::from_ne_bytes(bytes)
}

/// The prefix-form key of `name`: its first `EXE_NAME_LEN - 1` bytes (up to
/// a NUL), NUL-padded, with [`EXE_NAME_PREFIX_MARK`] as the last byte.
pub const fn exe_name_prefix_key(name: &[u8]) -> [u8; EXE_NAME_LEN] {
    let mut key = [0u8; EXE_NAME_LEN];
    let mut i = 0;
    while i < EXE_NAME_LEN - 1 && i < name.len() && name[i] != 0 {
        key[i] = name[i];
        i += 1;
    }
    key[EXE_NAME_LEN - 1] = EXE_NAME_PREFIX_MARK;
    key
}

/// The prefix-form keys ([`exe_name_prefix_key`]) an executable file name is
/// looked up by, besides its plain key. The name is read as the kernel
/// copies it: up to the first NUL, at most `EXE_NAME_LEN - 1` bytes. One
/// leading `.` is dropped (wrappers such as NixOS's `.tailscaled-wrapped`),
/// then the keys are, in order:
///
/// 1. the whole normalized name;
/// 2. the normalized name cut just before each of its first
///    [`MAX_PREFIX_CANDIDATES`] [`EXE_NAME_SEPARATORS`] at index 1 or later.
///
/// So `chisel_1.10.1_linux_amd64` yields `chisel_1.10.1_linux_amd64`,
/// `chisel`, `chisel_1` and `chisel_1.10`: a rule inserting the prefix-form
/// key of `chisel` matches it, and `chisel` itself, but not `chiseled`. A
/// name that is empty once normalized yields nothing.
///
/// The kernel's matcher (`ebpf/src/names.rs`) mirrors this function; the
/// two must change together (and [`LAYOUT_VERSION`](crate::LAYOUT_VERSION) with them).
pub fn exe_name_candidates(name: &[u8]) -> ExeNameCandidates {
    let mut len = 0;
    while len < EXE_NAME_LEN - 1 && len < name.len() && name[len] != 0 {
        len += 1;
    }
    let start = if len > 0 && name[0] == b'.' { 1 } else { 0 };
    let normalized = &name[start..len];
    let mut cuts = [0u8; MAX_PREFIX_CANDIDATES];
    let mut count = 0;
    let mut i = 1;
    while i < normalized.len() && i < PREFIX_CUT_LIMIT && count < MAX_PREFIX_CANDIDATES {
        let b = normalized[i];
        if b == EXE_NAME_SEPARATORS[0] || b == EXE_NAME_SEPARATORS[1] || b == EXE_NAME_SEPARATORS[2]
        {
            cuts[count] = i as u8;
            count += 1;
        }
        i += 1;
    }
    ExeNameCandidates {
        key: exe_name_prefix_key(normalized),
        len: normalized.len() as u8,
        cuts,
        count: count as u8,
        next: 0,
    }
}

/// Iterator of [`exe_name_candidates`].
#[derive(Clone, Debug)]
pub struct ExeNameCandidates {
    /// Prefix-form key of the whole normalized name.
    key: [u8; EXE_NAME_LEN],
    /// Length of the normalized name.
    len: u8,
    /// Separator indexes, `count` of them.
    cuts: [u8; MAX_PREFIX_CANDIDATES],
    count: u8,
    /// 0: the whole name is next; `n`: the cut at `cuts[n - 1]`.
    next: u8,
}

impl Iterator for ExeNameCandidates {
    type Item = [u8; EXE_NAME_LEN];

    fn next(&mut self) -> Option<Self::Item> {
        if self.len == 0 || self.next > self.count {
            return None;
        }
        let n = self.next as usize;
        self.next += 1;
        if n == 0 {
            return Some(self.key);
        }
        let mut key = self.key;
        let cut = self.cuts[n - 1] as usize;
        let mut i = cut;
        while i < EXE_NAME_LEN - 1 {
            key[i] = 0;
            i += 1;
        }
        Some(key)
    }
}
