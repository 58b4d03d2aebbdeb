//! What the kernel tracks per process: network-facing evidence, lineage,
//! interpreted scripts, outbound connects awaiting their handshake, listeners.

use crate::{Addr, EXE_NAME_LEN, SCRIPT_LEN, evidence};

/// One piece of evidence that a process faces the network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The non-local peer (for [`evidence::LISTENING`], the listening address).
    pub addr: Addr,
    /// `bpf_ktime_get_ns()` when it was seen.
    pub ktime_ns: u64,
    /// The peer's port (the listening port), host order.
    pub port: u16,
    /// [`evidence`] value.
    pub kind: u8,
    pub _pad: [u8; 5],
}

impl Evidence {
    /// No evidence.
    pub const NONE: Evidence = Evidence {
        addr: Addr { words: [0; 4] },
        ktime_ns: 0,
        port: 0,
        kind: evidence::NONE,
        _pad: [0; 5],
    };
}

/// `LW_PROCS` value: what the kernel knows about one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcState {
    /// Listening or accepted: holds until the process executes another
    /// program; children inherit it.
    pub standing: Evidence,
    /// Received or connected: counts only within the relay window.
    pub recent: Evidence,
    /// The `LW_RULES_EXE_NAME` key (exact or prefix form) through which a
    /// catalog rule extending to descendants named the nearest such
    /// executable this process or an ancestor ran (zero: none).
    pub lineage: [u8; EXE_NAME_LEN],
    /// The script an interpreter was started with (zero: none).
    pub script: [u8; SCRIPT_LEN],
    /// [`script_hash`] of `script` (0: none): what script rules key on.
    pub script_hash: u64,
}

impl ProcState {
    /// A state with nothing in it.
    pub const EMPTY: ProcState = ProcState {
        standing: Evidence::NONE,
        recent: Evidence::NONE,
        lineage: [0; EXE_NAME_LEN],
        script: [0; SCRIPT_LEN],
        script_hash: 0,
    };
}

/// Interpreters whose first operand is the script they run: an executable
/// one of whose prefix-form keys ([`exe_name_candidates`](crate::exe_name_candidates)) is one of these
/// names has its script read at exec (and by the seeding from `/proc`).
/// Versioned names are listed as their cuts leave them: Debian's
/// `perl5.36.0`, `ruby3.1` and `php8.2` give `perl5`, `ruby3` and `php8`
/// (what `/usr/bin/ruby` and `/usr/bin/php` resolve to there), and
/// Alpine's `php83` has no separator to cut at. At most 8 bytes each.
pub const INTERPRETERS: [&[u8]; 21] = [
    b"python", b"python2", b"python3", b"node", b"nodejs", b"perl", b"perl5", b"ruby", b"ruby1",
    b"ruby2", b"ruby3", b"php", b"php5", b"php7", b"php8", b"php81", b"php82", b"php83", b"php84",
    b"php85", b"deno",
];
/// Whether an executable of this file name is an interpreter whose operand
/// is a script: one of its prefix-form candidates is one of
/// [`INTERPRETERS`] (`python3.11` gives `python3`), as
/// `names::is_interpreter` decides in the kernel (userspace's copy).
pub fn is_interpreter(name: &[u8]) -> bool {
    crate::exe_name_candidates(name).any(|key| {
        INTERPRETERS
            .iter()
            .any(|interpreter| key == crate::exe_name_prefix_key(interpreter))
    })
}

/// Command-line arguments looked at for an interpreter's script: `argv[0]`
/// and the five after it.
pub const SCRIPT_MAX_ARGS: usize = 6;
/// Reads of `SCRIPT_LEN` bytes the exec handler makes at most to find where
/// `argv[0]` ends (an interpreter run by a long path, as a shebang in a Nix
/// store names it): one more than the script's own read would need.
pub const ARGV0_READS: usize = 5;
/// The longest `argv[0]` past which an interpreter's script is still found:
/// each read but the last takes `SCRIPT_LEN - 1` bytes of it.
pub const ARGV0_MAX_LEN: usize = ARGV0_READS * (crate::SCRIPT_LEN - 1) - 1;

/// FNV-1a of a script path's bytes up to its first NUL (at most
/// `SCRIPT_LEN - 1` of them); never 0, which means "no script". The kernel
/// computes it at exec, userspace for `script` rules.
#[inline(always)]
pub const fn script_hash(script: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < script.len() && i < SCRIPT_LEN - 1 && script[i] != 0 {
        h ^= script[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    if h == 0 { 1 } else { h }
}

/// `LW_PENDING` value: an outbound connect awaiting its handshake.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub tgid: u32,
    pub _pad: u32,
}

/// `LW_LISTENERS` key: a listening port in one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerKey {
    /// Inode number of the network namespace.
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}
