//! What one policy may hold of each kind of value, all its rules together:
//! the capacity of the kernel map that holds them. The compiler checks it
//! after each step, so a policy that does not fit is refused with the
//! rule that filled a map, before anything is written.

use loopwarden_common::{MAX_EGRESS_PREFIXES, MAX_MAP_ENTRIES, MAX_NETNS, maps};

use super::Compiler;
use crate::{
    config::Location,
    policy::{CompiledPolicy, PolicyError},
};

/// How many values of one kind a policy needs, and how many fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The kernel map that holds them.
    pub map: &'static str,
    /// What they are, as the file names them.
    pub what: &'static str,
    pub needed: usize,
    pub max: u32,
}

/// Every kind of value `p` holds, with its map's capacity.
fn capacities(p: &CompiledPolicy) -> [Capacity; 14] {
    let entries = |map, what, needed| Capacity {
        map,
        what,
        needed,
        max: MAX_MAP_ENTRIES,
    };
    [
        Capacity {
            map: maps::NETNS,
            what: "network namespaces (`[protect] netns`)",
            needed: p.netns.len(),
            max: MAX_NETNS,
        },
        entries(maps::RULES_EXE, "executables (`exe`)", p.exe.len()),
        entries(
            maps::RULES_EXE_NAME,
            "executable names (`exe_name`, the catalog's included)",
            p.exe_name.len(),
        ),
        entries(maps::RULES_COMM, "`comm` values", p.comm.len()),
        entries(maps::RULES_UID, "users (`uid` and `user`)", p.uid.len()),
        entries(maps::RULES_CGROUP, "cgroups (`cgroup`)", p.cgroup.len()),
        entries(
            maps::RULES_ANCESTOR,
            "parent and ancestor executables (`parent_exe`, `ancestor_exe`)",
            p.ancestor.len(),
        ),
        entries(maps::RULES_SCRIPT, "scripts (`script`)", p.script.len()),
        entries(
            maps::BIND_EXE,
            "`[bind] allow_exe` executables",
            p.bind.exe.len(),
        ),
        entries(maps::BIND_UID, "`[bind]` users", p.bind.uid.len()),
        entries(maps::EGRESS_UID, "`[[egress]]` users", p.egress.uid.len()),
        entries(
            maps::EGRESS_EXE,
            "`[[egress]]` executables",
            p.egress.exe.len(),
        ),
        entries(
            maps::EGRESS_CGROUP,
            "`[[egress]]` cgroups",
            p.egress.cgroup.len(),
        ),
        Capacity {
            map: maps::EGRESS_DST,
            what: "`[[egress]]` destination prefixes",
            needed: p.egress.prefixes.len(),
            max: MAX_EGRESS_PREFIXES,
        },
    ]
}

/// The first kind of value `p` holds more of than its map does.
pub fn first_over(p: &CompiledPolicy) -> Option<Capacity> {
    capacities(p)
        .into_iter()
        .find(|c| c.needed > c.max as usize)
}

impl Compiler<'_> {
    /// Fails if the policy so far holds more of some kind of value than
    /// its map does; `part` names what was compiled last (the rule that
    /// filled it), written at `at`.
    pub(super) fn fits(
        &self,
        at: Option<Location>,
        part: impl FnOnce() -> String,
    ) -> Result<(), PolicyError> {
        match first_over(&self.policy) {
            None => Ok(()),
            Some(over) => Err(PolicyError::TooManyValues {
                file: self.file.to_owned(),
                at,
                part: part(),
                what: over.what,
                needed: over.needed,
                max: over.max,
            }),
        }
    }
}
