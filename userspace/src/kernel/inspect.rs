//! Read-only views of what is pinned, for `loopwarden status`: the links
//! (which program each runs, whether it is loaded and attached at the cgroup
//! v2 root) and typed readers over the pinned maps (`LW_META`,
//! `LW_GENERATION` + `LW_SETTINGS`, `LW_STATS`). Nothing here writes, and
//! nothing asks a daemon: this is the kernel's own state.
//!
//! The policy maps are decoded only after [`meta`] says they are of our
//! layout; a map whose key or value size differs from ours fails to open
//! (aya checks both) instead of being misread.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapError, PerCpuArray};
use loopwarden_common::{LAYOUT_VERSION, META_MAGIC, Meta, Settings, maps, stats, verdict};

use super::{pins::PinDir, sys};

/// Why a pinned map could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("pinned map {name} cannot be opened as ours")]
    Open {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading pinned map {name} failed")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("LW_META cannot be read: {0}")]
    Meta(String),
    #[error("LW_META was never written (a start that was interrupted)")]
    MetaUnwritten,
    #[error("incompatible layout {found} (this loopwarden reads layout {LAYOUT_VERSION})")]
    Layout { found: u32 },
}

/// One pinned link, as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No pin.
    Absent,
    /// A pin that is not a link we can read.
    Unreadable(String),
    Pinned(PinnedLink),
}

/// A pinned cgroup link and its program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedLink {
    pub link_id: u32,
    pub prog_id: u32,
    /// The program's name, if it is loaded (it is while a link holds it).
    pub prog_name: Option<String>,
    /// Runs of the program the kernel skipped: it would have run nested on
    /// a CPU already running it (`None`: not readable).
    pub skipped_runs: Option<u64>,
    /// Whether the link is a cgroup link for the expected connect hook.
    pub cgroup_link: bool,
    /// The id of the cgroup the link is attached to (0: the cgroup is gone).
    pub cgroup_id: u64,
    /// Whether the cgroup v2 root lists this program for the hook
    /// (`BPF_PROG_QUERY`); `None` when the root could not be asked.
    pub attached_at_root: Option<bool>,
}

/// The program names of the links and their connect hooks.
pub const LINKS: [(&str, u32); 2] = [
    (
        loopwarden_common::programs::CONNECT4,
        sys::ATTACH_INET4_CONNECT,
    ),
    (
        loopwarden_common::programs::CONNECT6,
        sys::ATTACH_INET6_CONNECT,
    ),
];

/// The tracking programs attached at the cgroup root (the UDP receive
/// hooks) and their hooks.
pub const CGROUP_TRACKER_LINKS: [(&str, u32); 2] = [
    (
        loopwarden_common::programs::RECVMSG4,
        sys::ATTACH_UDP4_RECVMSG,
    ),
    (
        loopwarden_common::programs::RECVMSG6,
        sys::ATTACH_UDP6_RECVMSG,
    ),
];

/// The bind guard's links and their hooks: attached while a daemon runs,
/// doing nothing unless the policy turns the guard on.
pub const BIND_LINKS: [(&str, u32); 2] = [
    (loopwarden_common::programs::BIND4, sys::ATTACH_INET4_BIND),
    (loopwarden_common::programs::BIND6, sys::ATTACH_INET6_BIND),
];

/// Looks at the pinned link of `program` (hook `attach_type`), and whether
/// the cgroup v2 root at `cgroup_root` runs its program.
pub fn link(
    pins: &PinDir,
    program: &str,
    attach_type: u32,
    cgroup_root: Option<&Path>,
) -> LinkState {
    let pin: PathBuf = pins.link(program);
    if !pin.exists() {
        return LinkState::Absent;
    }
    let info = match sys::obj_get(&pin).and_then(sys::link_info) {
        Ok(info) => info,
        Err(e) => return LinkState::Unreadable(format!("{}: {e}", pin.display())),
    };
    let prog = sys::prog_by_id(info.prog_id).and_then(sys::prog_info).ok();
    let prog_name = prog.as_ref().map(|p| p.name.clone());
    let skipped_runs = prog.map(|p| p.recursion_misses);
    let attached_at_root = cgroup_root.and_then(|root| {
        let dir = fs::File::open(root).ok()?;
        let ids = sys::prog_query(&dir, attach_type).ok()?;
        let root_id = fs::metadata(root).ok()?.ino();
        Some(ids.contains(&info.prog_id) && info.cgroup_id == root_id)
    });
    LinkState::Pinned(PinnedLink {
        link_id: info.id,
        prog_id: info.prog_id,
        prog_name,
        skipped_runs,
        cgroup_link: info.link_type == sys::LINK_TYPE_CGROUP && info.attach_type == attach_type,
        cgroup_id: info.cgroup_id,
        attached_at_root,
    })
}

/// `LW_META`, checked: written, and of our layout.
pub fn meta(pins: &PinDir) -> Result<Meta, InspectError> {
    let meta = pins.meta().map_err(InspectError::Meta)?;
    if meta.magic != META_MAGIC {
        return Err(InspectError::MetaUnwritten);
    }
    if meta.layout != LAYOUT_VERSION {
        return Err(InspectError::Layout { found: meta.layout });
    }
    Ok(meta)
}

fn open(pins: &PinDir, name: &'static str) -> Result<MapData, InspectError> {
    MapData::from_pin(pins.map(name)).map_err(|source| InspectError::Open { name, source })
}

/// The policy generation in force: its slot and settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InForce {
    /// The slot (0 or 1) `LW_GENERATION` points at.
    pub slot: u32,
    pub settings: Settings,
}

/// Reads `LW_GENERATION` and the settings of the slot it names. Call only
/// after [`meta`] succeeded.
pub fn in_force(pins: &PinDir) -> Result<InForce, InspectError> {
    let opened =
        |name: &'static str| -> Result<Map, InspectError> { Ok(Map::Array(open(pins, name)?)) };
    let generation: Array<MapData, u32> =
        Array::try_from(opened(maps::GENERATION)?).map_err(|source| InspectError::Open {
            name: maps::GENERATION,
            source,
        })?;
    let settings: Array<MapData, Settings> =
        Array::try_from(opened(maps::SETTINGS)?).map_err(|source| InspectError::Open {
            name: maps::SETTINGS,
            source,
        })?;
    let slot = generation.get(&0, 0).map_err(|source| InspectError::Read {
        name: maps::GENERATION,
        source,
    })? & 1;
    let settings = settings
        .get(&slot, 0)
        .map_err(|source| InspectError::Read {
            name: maps::SETTINGS,
            source,
        })?;
    Ok(InForce { slot, settings })
}

/// The name of `LW_STATS` index `index`, when this build knows it.
pub fn counter_name(index: u32) -> Option<&'static str> {
    Some(match index {
        stats::CHECKED => "checked",
        stats::DENIED => "denied",
        stats::REPORTED => "reported",
        stats::DROPPED => "dropped",
        stats::RETRIED => "retried",
        stats::RACED => "raced",
        stats::UNTRACKED => "untracked",
        stats::RELAYED => "relayed",
        i if i == stats::DROPPED_BY_VERDICT + u32::from(verdict::ALLOW) => "lost_allow",
        i if i == stats::DROPPED_BY_VERDICT + u32::from(verdict::AUDIT) => "lost_audit",
        i if i == stats::DROPPED_BY_VERDICT + u32::from(verdict::WOULD_DENY) => "lost_would_deny",
        i if i == stats::DROPPED_BY_VERDICT + u32::from(verdict::DENY) => "lost_deny",
        i if i == stats::DECIDED_BY_VERDICT + u32::from(verdict::ALLOW) => "decided_allow",
        i if i == stats::DECIDED_BY_VERDICT + u32::from(verdict::AUDIT) => "decided_audit",
        i if i == stats::DECIDED_BY_VERDICT + u32::from(verdict::WOULD_DENY) => {
            "decided_would_deny"
        }
        i if i == stats::DECIDED_BY_VERDICT + u32::from(verdict::DENY) => "decided_deny",
        _ => return None,
    })
}

/// One `LW_STATS` counter, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Counter {
    pub index: u32,
    /// [`counter_name`], or `counter[i]` for an index this build does not know.
    pub name: String,
    pub value: u64,
}

/// Every counter the pinned `LW_STATS` holds (as many as it has entries:
/// counters a newer build added show up by index). Call only after [`meta`]
/// succeeded.
pub fn counters(pins: &PinDir) -> Result<Vec<Counter>, InspectError> {
    let stats_map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pins, maps::STATS)?)).map_err(|source| {
            InspectError::Open {
                name: maps::STATS,
                source,
            }
        })?;
    (0..stats_map.len())
        .map(|index| {
            let values = stats_map
                .get(&index, 0)
                .map_err(|source| InspectError::Read {
                    name: maps::STATS,
                    source,
                })?;
            Ok(Counter {
                index,
                name: counter_name(index)
                    .map_or_else(|| format!("counter[{index}]"), str::to_owned),
                value: values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_counter_has_a_name_and_others_an_index() {
        for index in 0..stats::COUNT {
            assert!(
                counter_name(index).is_some(),
                "LW_STATS[{index}] has no name"
            );
        }
        assert_eq!(counter_name(stats::COUNT + 3), None);
    }

    #[test]
    fn nothing_pinned_reads_as_absent() {
        let pins = PinDir::new("/nonexistent/loopwarden-inspect-test");
        for (program, hook) in LINKS {
            assert_eq!(link(&pins, program, hook, None), LinkState::Absent);
        }
        assert!(matches!(meta(&pins), Err(InspectError::Meta(_))));
    }
}
