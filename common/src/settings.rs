//! The policy-wide settings (`LW_SETTINGS`), the browsers' per-port
//! verdicts, and `LW_META`.

use crate::{BROWSER_PORT_WORDS, FILTER_WORDS, verdict};

/// The policy-wide settings, `LW_SETTINGS[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// [`flags`](crate::flags) bits.
    pub flags: u32,
    /// Positive errno a denied connect() fails with (ECONNREFUSED or EPERM).
    pub deny_errno: u32,
    /// Bit `l` set: some cgroup rule names a cgroup at level `l`.
    pub cgroup_levels: u32,
    pub _pad0: u32,
    /// Rules present in the policy.
    pub active: u64,
    /// Rules whose action is `deny`.
    pub deny: u64,
    /// Rules whose action is `audit`.
    pub audit: u64,
    /// Rules that do not constrain the executable identity.
    pub wild_exe: u64,
    /// ... the executable file name.
    pub wild_exe_name: u64,
    /// ... the comm.
    pub wild_comm: u64,
    /// ... the uid.
    pub wild_uid: u64,
    /// ... the cgroup.
    pub wild_cgroup: u64,
    /// ... the parent or ancestors.
    pub wild_ancestor: u64,
    /// Rules that do not constrain the interpreted script.
    pub wild_script: u64,
    /// The user's `allow` rules: a process they match is exempt from the
    /// relay verdict.
    pub exempt: u64,
    /// Catalog rules that extend to descendants: they also match a process
    /// whose lineage (`ProcState::lineage`) names their executables.
    pub inherited: u64,
    /// Browser-class rules (the catalog's browsers and `[browsers]
    /// exe`/`exe_name`): when one matches first, the verdict is the port's
    /// in `LW_BROWSER_PORTS`, not the rule's action.
    pub browser: u64,
    /// How recent received/connected evidence must be to count, in ns.
    pub relay_window_ns: u64,
    /// Sequence lock of this slot: odd while userspace rewrites it, else the
    /// install's unique even number (see the crate docs).
    pub seq: u64,
    /// Filter of the executables `LW_RULES_EXE` names in this generation:
    /// bit [`filter_bit`](crate::filter_bit)`(`[`exe_filter_value`](crate::exe_filter_value)`(key))` set for each. A
    /// clear bit proves no rule names the executable, and the map lookup is
    /// skipped; a set bit may be another's (the lookup decides).
    pub exe_filter: [u64; FILTER_WORDS],
    /// Filter of the executable names `LW_RULES_EXE_NAME` holds: bit
    /// [`filter_bit`](crate::filter_bit)`(`[`name_prefix`](crate::name_prefix)`(name))` set for each.
    pub exe_name_filter: [u64; FILTER_WORDS],

    // The egress guard ([`flags::EGRESS`]): its own rule masks, bit `r`
    // for egress rule `r`.
    /// Egress rules present in the policy.
    pub egress_active: u64,
    /// Egress rules whose action is deny (the others audit).
    pub egress_deny: u64,
    /// Egress rules that do not constrain the uid.
    pub egress_wild_uid: u64,
    /// ... the executable identity.
    pub egress_wild_exe: u64,
    /// ... the cgroup.
    pub egress_wild_cgroup: u64,
    /// Bit `l` set: some egress rule names a cgroup at level `l`.
    pub egress_cgroup_levels: u32,
    pub _pad_egress: u32,
    /// Filter of the executables `LW_EGRESS_EXE` names: bit
    /// [`filter_bit`](crate::filter_bit)`(ino)` set for each. A process no egress rule names
    /// skips the lookup (and the reads of its executable's device).
    pub egress_exe_filter: [u64; FILTER_WORDS],

    /// The namespaces a scoped policy ([`NETNS_SCOPED`](crate::flags::NETNS_SCOPED)) applies
    /// in, by cookie, when it names at most [`NETNS_INLINE`] of them: the
    /// programs compare these (`netns[..netns_inline]`) and skip the
    /// `LW_NETNS` lookup. [`NETNS_NOT_INLINE`] when it names more: the
    /// lookup decides.
    pub netns_inline: u32,
    pub _pad_netns: u32,
    pub netns: [u64; NETNS_INLINE],
}

/// Namespace cookies a generation's settings carry inline.
pub const NETNS_INLINE: usize = 4;
/// `Settings::netns_inline` of a policy scoped to more namespaces than
/// [`NETNS_INLINE`].
pub const NETNS_NOT_INLINE: u32 = u32::MAX;

// (By hand: `Default` is not derived for arrays of more than 32.)
impl Default for Settings {
    fn default() -> Self {
        // SAFETY: integers and arrays of them only: all zero bytes is a
        // valid value (and the empty policy).
        unsafe { core::mem::zeroed() }
    }
}

/// Where port `port`'s browser verdict sits in `LW_BROWSER_PORTS` of
/// generation `g`: the entry's index and the shift of its two bits.
#[inline(always)]
pub const fn browser_slot(g: u32, port: u16) -> (u32, u32) {
    (
        g * BROWSER_PORT_WORDS + (port as u32 >> 5),
        (port as u32 & 31) * 2,
    )
}

/// The browser verdict of a port, read from the entry [`browser_slot`] names.
#[inline(always)]
pub const fn browser_verdict(word: u64, shift: u32) -> u8 {
    ((word >> shift) & 3) as u8
}

const _: () = assert!(verdict::COUNT == 4, "a browser verdict takes two bits");

/// [`Meta::mode`]'s values.
pub mod meta_mode {
    /// Not said (written by a build before the field, or before any
    /// policy was installed): taken as enforcing.
    pub const UNSAID: u32 = 0;
    /// The policy in force reports only (audit mode).
    pub const REPORTING: u32 = 1;
    /// The policy in force enforces, or is about to.
    pub const ENFORCING: u32 = 2;
}

/// `LW_META[0]`: written by userspace only, kept with the pinned maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`META_MAGIC`](crate::META_MAGIC) once written.
    pub magic: u64,
    /// [`LAYOUT_VERSION`](crate::LAYOUT_VERSION) of the maps beside it.
    pub layout: u32,
    /// Whether the policy in force enforces ([`meta_mode`]): what an
    /// upgrade, which cannot read the settings of another layout, goes by.
    /// Builds before this field wrote 0 here ([`meta_mode::UNSAID`]).
    pub mode: u32,
    /// `stats::DROPPED` total already reported by a daemon: a new daemon
    /// reports only the reports lost since (e.g. while none was reading).
    pub dropped_reported: u64,
}
