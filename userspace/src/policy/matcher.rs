//! The userspace copy of the kernel's matcher (`match_rules` in
//! ebpf/src/connect/rules.rs): which rule a process with a given identity matches.
//! The cut of admitted connections judges their owners with it, and the unit
//! tests check compiled policies against it.

use std::collections::BTreeMap;

use loopwarden_common::{
    EXE_NAME_LEN, ExeKey, MAX_ANCESTORS, MAX_CGROUP_LEVELS_USED, ProcState, RELAY_RULE, evidence,
    exe_name_candidates, flags, verdict,
};

use super::{CompiledPolicy, fixed_bytes};

/// Who a process is, in the terms the kernel programs match on; read from
/// `/proc` by [`crate::cut`] for connections made before a policy applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The executable's device (kernel encoding) and inode.
    pub exe: ExeKey,
    /// The executable's file name (dentry name), raw bytes.
    pub exe_name: Vec<u8>,
    /// comm values that may speak for the caller (the thread's and the
    /// process's); a comm criterion matches when any of them does.
    pub comms: Vec<Vec<u8>>,
    /// Real uid.
    pub uid: u32,
    /// cgroup v2 ids from the root (level 0) down to the process's own.
    pub cgroups: Vec<u64>,
    /// Executables of the parent, the grandparent, ... as the kernel walks
    /// them: the parent always, then one more generation while the last one
    /// has a pid above 1, at most [`MAX_ANCESTORS`] in all.
    pub ancestors: Vec<ExeKey>,
    /// What the kernel's tracking programs know of the process
    /// (`LW_PROCS`): its evidence, lineage and script; `None` if nothing.
    pub tracked: Option<ProcState>,
}

/// Why a connect is refused: the first matching rule (its index), or the
/// relay verdict ([`RELAY_RULE`]).
pub type Denial = u8;

impl CompiledPolicy {
    /// The lineage the kernel's exec handler gives a process executing a
    /// file of this name (`inherited_key` in ebpf/src/process.rs): the
    /// first of its keys (the plain name, then its prefix forms) that a
    /// catalog rule extending to descendants names; `None` if none does.
    pub fn lineage_key(&self, name: &[u8]) -> Option<[u8; EXE_NAME_LEN]> {
        let inherited = self.settings.inherited;
        if inherited == 0 {
            return None;
        }
        let names = |key: &[u8; EXE_NAME_LEN]| {
            self.exe_name.get(key).copied().unwrap_or(0) & inherited != 0
        };
        std::iter::once(fixed_bytes(name))
            .chain(exe_name_candidates(name))
            .find(names)
    }

    /// The rule the kernel's `match_rules` (ebpf/src/connect/rules.rs) picks for a
    /// caller with this identity: per criterion, the OR of the masks of the
    /// caller's values (for the executable name: its plain key and each of
    /// its [`exe_name_candidates`]) plus the criterion's wildcard mask; the
    /// AND over all criteria; the lowest set bit. `None` when no rule matches.
    pub fn first_match(&self, id: &ProcessIdentity) -> Option<usize> {
        fn mask<K: Ord>(map: &BTreeMap<K, u64>, k: &K) -> u64 {
            map.get(k).copied().unwrap_or(0)
        }
        let s = &self.settings;
        let mut m = s.active;
        m &= mask(&self.uid, &id.uid) | s.wild_uid;
        let comm = id
            .comms
            .iter()
            .fold(0, |acc, c| acc | mask(&self.comm, &fixed_bytes(c)));
        m &= comm | s.wild_comm;
        // The plain name, then its prefix-form keys (catalog prefixes).
        let names = |name: &[u8]| {
            exe_name_candidates(name).fold(mask(&self.exe_name, &fixed_bytes(name)), |acc, key| {
                acc | mask(&self.exe_name, &key)
            })
        };
        let mut exe_name = names(&id.exe_name);
        // Catalog rules that extend to descendants, through the lineage.
        if let Some(t) = &id.tracked
            && s.inherited != 0
            && t.lineage[0] != 0
        {
            exe_name |= mask(&self.exe_name, &t.lineage) & s.inherited;
        }
        m &= exe_name | s.wild_exe_name;
        let script = id.tracked.map_or(0, |t| t.script_hash);
        m &= mask(&self.script, &script) | s.wild_script;
        m &= mask(&self.exe, &id.exe) | s.wild_exe;
        if m & !s.wild_cgroup != 0 {
            // One ancestor lookup per level some rule names, lowest level
            // first, at most MAX_CGROUP_LEVELS_USED of them; above the
            // process's depth the kernel's helper returns 0, which no rule names.
            let mut cg = 0;
            let mut left = s.cgroup_levels;
            for _ in 0..MAX_CGROUP_LEVELS_USED {
                if left == 0 {
                    break;
                }
                let level = left.trailing_zeros() as usize;
                left &= left - 1;
                let ancestor = id.cgroups.get(level).copied().unwrap_or(0);
                cg |= mask(&self.cgroup, &ancestor);
            }
            m &= cg | s.wild_cgroup;
        }
        if m & !s.wild_ancestor != 0 && s.flags & flags::ANCESTORS != 0 {
            let mut an = 0;
            for (depth, exe) in id.ancestors.iter().take(MAX_ANCESTORS).enumerate() {
                if let Some(v) = self.ancestor.get(exe) {
                    an |= v.ancestor;
                    if depth == 0 {
                        an |= v.parent;
                    }
                }
            }
            m &= an | s.wild_ancestor;
        }
        (m != 0).then(|| m.trailing_zeros() as usize)
    }

    /// Whether the kernel's `decide` (ebpf/src/connect/decide.rs) would refuse a
    /// connect by this identity to `port` at `now_ns` (CLOCK_MONOTONIC, as
    /// the kernel's evidence is timed): its first matching rule denies (a
    /// browser-class rule: the port's browser verdict is deny), or it is
    /// network-facing, the relay verdict denies and neither a user allow
    /// rule nor a browser-class rule exempts it. Only in enforce mode does
    /// anything refuse.
    pub fn denial(&self, id: &ProcessIdentity, port: u16, now_ns: u64) -> Option<Denial> {
        self.denial_of(id, port, now_ns, false)
    }

    /// [`CompiledPolicy::denial`], where a caller also faces the network if
    /// `relayed_at_connect`: the sweep of admitted connections counts the
    /// evidence a connection's origin recorded at its connect as well as
    /// the caller's evidence now.
    pub fn denial_of(
        &self,
        id: &ProcessIdentity,
        port: u16,
        now_ns: u64,
        relayed_at_connect: bool,
    ) -> Option<Denial> {
        let s = &self.settings;
        if s.flags & flags::ENFORCE == 0 {
            return None;
        }
        let rule = self.first_match(id);
        let bit = rule.map_or(0, |r| 1u64 << r);
        let denies = if s.browser & bit != 0 {
            self.browsers.verdict(port) == verdict::DENY
        } else {
            s.deny & bit != 0
        };
        if let Some(r) = rule
            && denies
        {
            return Some(r as u8);
        }
        let facing = relayed_at_connect
            || id
                .tracked
                .is_some_and(|t| network_facing(&t, now_ns, s.relay_window_ns));
        (s.flags & flags::RELAY_DENY != 0 && bit & s.exempt == 0 && facing).then_some(RELAY_RULE)
    }
}

/// The kernel's `procs::network_facing`: recent evidence within the
/// window, or any standing evidence.
pub fn network_facing(state: &ProcState, now_ns: u64, window_ns: u64) -> bool {
    // Evidence written after `now_ns` was read (the sweep reads the clock
    // before it walks /proc) is as recent as can be, as in the kernel.
    (state.recent.kind != evidence::NONE
        && now_ns.saturating_sub(state.recent.ktime_ns) <= window_ns)
        || state.standing.kind != evidence::NONE
}
