//! The userspace copy of the kernel's matcher (`match_rules` in
//! ebpf/src/connect.rs): which rule a process with a given identity matches.
//! The cut of admitted connections judges their owners with it, and the unit
//! tests check compiled policies against it.

use std::collections::BTreeMap;

use loopwarden_common::{
    ExeKey, MAX_ANCESTORS, MAX_CGROUP_LEVELS_USED, exe_name_candidates, flags,
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
}

impl CompiledPolicy {
    /// The rule the kernel's `match_rules` (ebpf/src/connect.rs) picks for a
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
        let exe_name = exe_name_candidates(&id.exe_name).fold(
            mask(&self.exe_name, &fixed_bytes(&id.exe_name)),
            |acc, key| acc | mask(&self.exe_name, &key),
        );
        m &= exe_name | s.wild_exe_name;
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

    /// The first matching rule for this identity when it is a deny rule.
    pub fn denying_rule(&self, id: &ProcessIdentity) -> Option<usize> {
        self.first_match(id)
            .filter(|&rule| self.settings.deny & 1 << rule != 0)
    }
}
