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

/// What an argument that starts with `-`, before an interpreter's first
/// operand, means for finding its script ([`script_option`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptOption {
    /// Options only (flags, or a value attached): the search goes on.
    Skip,
    /// `--`: the next argument is the operand, whatever it starts with.
    OperandNext,
    /// No script can be named: code or a module runs (`-c`, `-e`), the
    /// script comes from standard input (`-`), or the next argument may be
    /// an option's value, which would be taken for the script.
    NoScript,
}

/// A set of option letters (ASCII 64..127) as bits.
const fn letters(set: &[u8]) -> u64 {
    let mut bits = 0u64;
    let mut i = 0;
    while i < set.len() {
        bits |= 1 << (set[i] - 64);
        i += 1;
    }
    bits
}

const fn has_letter(set: u64, b: u8) -> bool {
    b >= 64 && b < 128 && (set >> (b - 64)) & 1 != 0
}

/// Short options that run code or a module, never a file, in one of the
/// interpreters (Python's `-c` and `-m`, Perl's `-e`, `-E` and `-M`, Node's
/// and Ruby's `-e` and `-r`, PHP's `-r`): wherever one stands in a group of
/// options, no script is named (Python's `-E` and Perl's `-c`, flags, end
/// the search too: failing to name a script only keeps a `script` rule
/// from matching).
const CODE_OPTIONS: u64 = letters(b"ceEmMr");
/// Short options that take a value, attached (`-Wignore`) or as the next
/// argument, in one of the interpreters (Python's `-W` and `-X`; Ruby's,
/// Perl's and Node's `-I` and `-C`; PHP's `-d`, `-z`, `-t`, `-f`, `-F` and
/// `-R`). Ending a group, the next argument is the value, unless
/// the interpreter takes the letter for a flag (Python's `-d`, `-I`, `-R`):
/// which one it is cannot be told here, so no script is named.
const VALUE_OPTIONS: u64 = letters(b"WXICdzftFR");

/// What the argument `arg` (NUL-terminated or not; starting with `-`)
/// before an interpreter's first operand means for its script: the kernel's
/// exec handler and the seeding from `/proc` both ask. Never a script that
/// is not the one that runs: `python3 -W /opt/bridge.py relay.py` runs
/// `relay.py`, and a `script` rule naming `/opt/bridge.py` must not match.
/// A long option (`--name`) without `=` may take the next argument
/// (`node --require x`), so it names no script either.
#[inline(always)]
pub fn script_option(arg: &[u8]) -> ScriptOption {
    let at = |i: usize| if i < arg.len() { arg[i] } else { 0 };
    match (at(1), at(2)) {
        (0, _) => return ScriptOption::NoScript,
        (b'-', 0) => return ScriptOption::OperandNext,
        (b'-', _) => {
            let mut i = 2;
            while i < arg.len() && i < crate::SCRIPT_LEN {
                match arg[i] {
                    0 => break,
                    b'=' => return ScriptOption::Skip,
                    _ => i += 1,
                }
            }
            return ScriptOption::NoScript;
        }
        _ => {}
    }
    let mut i = 1;
    while i < crate::SCRIPT_LEN {
        let b = at(i);
        if b == 0 {
            return ScriptOption::Skip;
        }
        if has_letter(CODE_OPTIONS, b) {
            return ScriptOption::NoScript;
        }
        if has_letter(VALUE_OPTIONS, b) {
            return if at(i + 1) == 0 {
                ScriptOption::NoScript
            } else {
                ScriptOption::Skip
            };
        }
        i += 1;
    }
    ScriptOption::NoScript
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

/// `LW_LISTENERS` value: the process a listener's accepts are credited to,
/// and the listener's socket cookie, so that only its own close removes
/// the entry (another listener on the port, one the port's next server
/// opened before the old one closed, keeps it). 0: the cookie is not
/// known (the seeding could not read it, or an exec's scan found the
/// listener before anything took its cookie), and any listener's close on
/// the port removes the entry.
///
/// It also keeps the listener whose entry it took (`prev_*`, 0 for none):
/// a predecessor still open, or the live listener a `listen()` that then
/// failed on the taken port (its socket closes at once) wrote over. When
/// this listener closes first, the entry becomes that one's again; when
/// that one closes first, it is forgotten (one of unknown cookie, at any
/// other listener's close on the port). One is kept, not a chain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listener {
    pub tgid: u32,
    pub _pad: u32,
    pub cookie: u64,
    pub prev_tgid: u32,
    pub _pad2: u32,
    pub prev_cookie: u64,
}

impl Listener {
    /// The entry after the listener with cookie `cookie` closed on its
    /// port: `Some(entry)` to write, `None` to remove it; the entry as it
    /// is (`Some(*self)`) when the close is of neither listener it names.
    pub fn closed(&self, cookie: u64) -> Option<Self> {
        if self.cookie == 0 || self.cookie == cookie {
            // Back to the one before, if one is kept.
            return (self.prev_tgid != 0).then_some(Self {
                tgid: self.prev_tgid,
                cookie: self.prev_cookie,
                ..Self::default()
            });
        }
        let mut after = *self;
        if self.prev_tgid != 0 && (self.prev_cookie == 0 || self.prev_cookie == cookie) {
            after.prev_tgid = 0;
            after.prev_cookie = 0;
        }
        Some(after)
    }

    /// The entry for the listener `tgid` with cookie `cookie` (0: not
    /// known) taking its port over from `held`, the entry there if any:
    /// `held`'s listener kept as the one before, unless it is this same
    /// listener again (an exec's scan of its holder), whose own is kept.
    pub fn taking_over(held: Option<&Self>, tgid: u32, cookie: u64) -> Self {
        let (prev_tgid, prev_cookie) = match held {
            Some(held) if held.cookie == cookie => (held.prev_tgid, held.prev_cookie),
            Some(held) => (held.tgid, held.cookie),
            None => (0, 0),
        };
        Self {
            tgid,
            _pad: 0,
            cookie,
            prev_tgid,
            _pad2: 0,
            prev_cookie,
        }
    }
}

/// `LW_LISTENERS` key: a listening port in one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// Inode number of the network namespace.
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry a listen of `tgid` with `cookie` leaves over `held`.
    fn listen(held: Option<Listener>, tgid: u32, cookie: u64) -> Option<Listener> {
        Some(Listener::taking_over(held.as_ref(), tgid, cookie))
    }

    /// The entry left after the close of the listener with `cookie`.
    fn close(held: Option<Listener>, cookie: u64) -> Option<Listener> {
        held.and_then(|held| held.closed(cookie))
    }

    fn names(entry: Option<Listener>) -> Option<(u32, u32)> {
        entry.map(|e| (e.tgid, e.prev_tgid))
    }

    /// A graceful takeover: the successor listens before the predecessor
    /// closes; the port stays the successor's, then goes with it.
    #[test]
    fn a_successor_keeps_the_port_its_predecessor_leaves() {
        let old = listen(None, 10, 1);
        let both = listen(old, 20, 2);
        assert_eq!(names(both), Some((20, 10)));
        let new = close(both, 1);
        assert_eq!(names(new), Some((20, 0)));
        assert_eq!(close(new, 2), None);
    }

    /// A listen() that fails on the taken port (its socket closes at once)
    /// leaves the port to the listener it wrote over.
    #[test]
    fn a_failed_listen_gives_the_port_back() {
        let live = listen(None, 10, 1);
        let failed = listen(live, 20, 2);
        assert_eq!(close(failed, 2), live);
        // So does a predecessor's holder that an exec's scan credited.
        let scanned = listen(live, 30, 3);
        assert_eq!(close(scanned, 3), live);
    }

    /// The same listener again (an exec's scan of its holder) keeps the
    /// one before it; a close of neither leaves the entry; one of unknown
    /// cookie goes at any close, and one kept of unknown cookie is
    /// forgotten at another's.
    #[test]
    fn the_same_listener_again_and_unknown_cookies() {
        let both = listen(listen(None, 10, 1), 20, 2);
        let again = listen(both, 21, 2);
        assert_eq!(names(again), Some((21, 10)));
        assert_eq!(close(again, 9), again);
        let unknown = listen(None, 10, 0);
        assert_eq!(close(unknown, 5), None);
        let over_unknown = listen(unknown, 20, 2);
        assert_eq!(names(close(over_unknown, 5)), Some((20, 0)));
        assert_eq!(names(close(over_unknown, 2)), Some((10, 0)));
    }
}
