//! Executable names as the rule maps key them: the exact file name, and the
//! prefix forms through which a catalog entry also matches its project's
//! release-asset and wrapper names (`cloudflared-linux-amd64`,
//! `chisel_1.10.1_linux_amd64`, `.tailscaled-wrapped`). This mirrors
//! `loopwarden_common::exe_name_candidates`, word by word: one leading `.`
//! dropped, then the whole name and its truncations before each of its
//! first [`MAX_PREFIX_CANDIDATES`] separators (`-`, `_`, `.`) among its
//! first `PREFIX_CUT_LIMIT` bytes, each with
//! [`EXE_NAME_PREFIX_MARK`] in its last byte.

use loopwarden_common::{
    EXE_NAME_LEN, EXE_NAME_PREFIX_MARK, GenKey, INTERPRETERS, MAX_PREFIX_CANDIDATES, Settings,
};

use crate::maps::{RULES_EXE_NAME, in_filter, mask};

/// A name (at most `EXE_NAME_LEN - 1` bytes, NUL-padded) as little-endian
/// words: byte `i` is bits `8 * (i % 8)..` of word `i / 8`.
pub type Words = [u64; EXE_NAME_LEN / 8];

/// The mark in the last byte of a prefix-form key.
const MARK: u64 = (EXE_NAME_PREFIX_MARK as u64) << 56;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const ONES: u64 = 0x0101_0101_0101_0101;

/// 0x80 in exactly the bytes of `w` that are zero.
#[inline(always)]
pub fn zero_bytes(w: u64) -> u64 {
    !(((w & LOW7).wrapping_add(LOW7)) | w | LOW7)
}

/// 0x80 in the bytes of `w` that are a separator.
#[inline(always)]
fn separators(w: u64) -> u64 {
    zero_bytes(w ^ (ONES * b'-' as u64))
        | zero_bytes(w ^ (ONES * b'_' as u64))
        | zero_bytes(w ^ (ONES * b'.' as u64))
}

/// `n` without one leading `.`.
#[inline(always)]
fn normalized(n: &Words) -> Words {
    if n[0] & 0xff != u64::from(b'.') {
        return *n;
    }
    [
        (n[0] >> 8) | (n[1] << 56),
        (n[1] >> 8) | (n[2] << 56),
        (n[2] >> 8) | (n[3] << 56),
        n[3] >> 8,
    ]
}

/// Whether any key of the name beginning with `head` (its first 15 bytes)
/// can be in the settings' name filter: the exact name, the normalized
/// one, and each cut before a separator in the normalized name's first 7
/// bytes (a later cut leaves the same first 7 bytes, which is all the
/// filter sees). False proves no rule names the executable, so its whole
/// name is not even read.
#[inline(always)]
pub fn may_be_named(live: &Settings, head: &[u64; 2]) -> bool {
    let w = head[0];
    let n = if w & 0xff == u64::from(b'.') {
        (w >> 8) | (head[1] << 56)
    } else {
        w
    };
    let mut hit = in_filter(&live.exe_name_filter, w & FIRST7)
        || in_filter(&live.exe_name_filter, n & FIRST7);
    // Separators at indexes 1..7 of the normalized name.
    let mut seps = separators(n) & 0x0080_8080_8080_8000;
    for _ in 0..MAX_PREFIX_CANDIDATES {
        if seps == 0 {
            break;
        }
        let keep = (1u64 << (seps.trailing_zeros() & !7)) - 1;
        seps &= seps - 1;
        hit |= in_filter(&live.exe_name_filter, n & keep);
    }
    hit
}

/// The first 7 bytes of a word.
const FIRST7: u64 = 0x00ff_ffff_ffff_ffff;

/// The first 7 bytes of a key, as the settings' name filter takes them
/// (`loopwarden_common::name_prefix`).
#[inline(always)]
pub fn filter_value(key: &Words) -> u64 {
    key[0] & FIRST7
}

/// Calls `f` with each prefix-form key of `name`, the whole (normalized)
/// name first.
#[inline(always)]
pub fn for_each_prefix_key(name: &Words, mut f: impl FnMut(&Words)) {
    let n = normalized(name);
    f(&[n[0], n[1], n[2], n[3] | MARK]);
    // Cuts only before separators in the first PREFIX_CUT_LIMIT (16)
    // bytes, the first two words; one at index 0 cuts nothing.
    let mut low = separators(n[0]) & !0x80;
    let mut high = separators(n[1]);
    for _ in 0..MAX_PREFIX_CANDIDATES {
        let key = if low != 0 {
            // Bytes of the first word before the separator.
            let keep = (1u64 << (low.trailing_zeros() & !7)) - 1;
            low &= low - 1;
            [n[0] & keep, 0, 0, MARK]
        } else if high != 0 {
            let keep = (1u64 << (high.trailing_zeros() & !7)) - 1;
            high &= high - 1;
            [n[0], n[1] & keep, 0, MARK]
        } else {
            break;
        };
        f(&key);
    }
}

/// [`INTERPRETERS`] as words: a prefix-form key (`python3.11` gives
/// `python3`) equal to one of these makes the exec handler read the
/// script from the command line.
const INTERPRETER_WORDS: [u64; INTERPRETERS.len()] = {
    let mut words = [0; INTERPRETERS.len()];
    let mut i = 0;
    while i < INTERPRETERS.len() {
        words[i] = word(INTERPRETERS[i]);
        i += 1;
    }
    words
};

const fn word(name: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let mut i = 0;
    while i < name.len() {
        bytes[i] = name[i];
        i += 1;
    }
    u64::from_le_bytes(bytes)
}

/// Whether an executable of this file name is an interpreter whose
/// operand is a script.
#[inline(always)]
pub fn is_interpreter(name: &Words) -> bool {
    let mut found = false;
    for_each_prefix_key(name, |key| {
        if key[1] == 0 && key[2] == 0 && key[3] == MARK {
            for w in INTERPRETER_WORDS {
                found |= key[0] == w;
            }
        }
    });
    found
}

/// A `GenKey<[u8; EXE_NAME_LEN]>` built from words (copied a word at a
/// time).
#[repr(C)]
pub struct NameKey {
    generation: u32,
    _pad: u32,
    name: Words,
}

impl NameKey {
    #[inline(always)]
    pub fn new(generation: u32, name: &Words) -> Self {
        NameKey {
            generation,
            _pad: 0,
            name: *name,
        }
    }

    #[inline(always)]
    pub fn key(&self) -> &GenKey<[u8; EXE_NAME_LEN]> {
        // SAFETY: same size and field offsets (both #[repr(C)]); the view
        // needs less alignment than the words have.
        unsafe { &*(self as *const Self).cast::<GenKey<[u8; EXE_NAME_LEN]>>() }
    }
}

/// Rules of generation `g` (whose live settings are `live`) naming the
/// executable file name `name`: exactly, or through one of its prefix
/// forms. Each key is checked against the settings' name filter first.
///
/// A BPF subprogram of its own: the keys' stack then is not part of every
/// caller's frame (the verifier's limit is 512 bytes per call chain).
#[inline(never)]
pub fn name_mask(g: u32, live: &Settings, name: &Words) -> u64 {
    let mut m = 0;
    for_each_key(name, |key| m |= key_mask(g, live, key));
    m
}

/// The first of `name`'s keys (the exact one, then the prefix forms) that
/// some rule of `rules` names in generation `g`: what a process's lineage
/// records, so that a connect later costs one lookup, not the candidates.
#[inline(always)]
pub fn first_key(g: u32, live: &Settings, name: &Words, rules: u64) -> Option<Words> {
    let mut found = None;
    for_each_key(name, |key| {
        if found.is_none() && key_mask(g, live, key) & rules != 0 {
            found = Some(*key);
        }
    });
    found
}

/// `name`'s exact key, then its prefix forms.
#[inline(always)]
fn for_each_key(name: &Words, mut f: impl FnMut(&Words)) {
    f(name);
    for_each_prefix_key(name, f);
}

/// The rules naming `key`, after the settings' name filter.
#[inline(always)]
pub fn key_mask(g: u32, live: &Settings, key: &Words) -> u64 {
    if in_filter(&live.exe_name_filter, filter_value(key)) {
        mask(&RULES_EXE_NAME, NameKey::new(g, key).key())
    } else {
        0
    }
}
