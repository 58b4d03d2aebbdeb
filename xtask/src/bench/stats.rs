//! The kernel's own accounting of BPF program run time
//! (`kernel.bpf_stats_enabled`): cumulative `run_time_ns` and `run_cnt` per
//! program, read with `bpftool -j prog show`.

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::Context as _;

use crate::proc::{self, say};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// BPF run-time statistics, switched on for the windows that count program
/// runs and off for those that measure rates (with them on, every program
/// run pays two clock reads, which no production host does); restores the
/// previous setting on drop. Left on throughout when something else had
/// turned them on.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn enable() -> anyhow::Result<Self> {
        let previous = fs::read_to_string(SYSCTL)
            .with_context(|| format!("cannot read {SYSCTL}"))?
            .trim()
            .to_owned();
        say!("enabling kernel.bpf_stats_enabled (was {previous})");
        let stats = Self { previous };
        stats.set(true)?;
        if stats.kept_on() {
            say!(
                "warning: kernel.bpf_stats_enabled was on already, so it stays on: the rates \
                 include the statistics' cost of every program run"
            );
        }
        Ok(stats)
    }

    /// Whether statistics stay on throughout (someone else turned them on).
    pub fn kept_on(&self) -> bool {
        self.previous != "0"
    }

    /// Switches statistics on or off (never off when [`Self::kept_on`]).
    pub fn set(&self, on: bool) -> anyhow::Result<()> {
        let value = if on || self.kept_on() { "1" } else { "0" };
        fs::write(SYSCTL, value).with_context(|| format!("cannot write {SYSCTL}"))
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        say!("restoring kernel.bpf_stats_enabled = {}", self.previous);
        if let Err(err) = fs::write(SYSCTL, &self.previous) {
            say!("warning: cannot restore {SYSCTL}: {err}");
        }
    }
}

/// Cumulative counters of one program (or the sum over programs sharing a name).
#[derive(Clone, Copy, Default, Debug)]
pub struct Counters {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl Counters {
    pub fn since(self, earlier: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
        }
    }

    pub fn add(&mut self, other: Self) {
        self.run_time_ns += other.run_time_ns;
        self.run_cnt += other.run_cnt;
    }
}

/// Counters by program name.
pub type Snapshot = BTreeMap<String, Counters>;

/// Which programs to count: those the daemon process holds (found through its
/// fdinfo), or when that finds none, every program whose name starts with `lw_`.
pub fn snapshot(daemon_pid: Option<u32>) -> anyhow::Result<Snapshot> {
    let owned = daemon_pid.map(owned_prog_ids).unwrap_or_default();
    let json = proc::output(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    let progs: serde_json::Value =
        serde_json::from_str(&json).context("cannot parse `bpftool -j prog show` output")?;
    let mut snapshot = Snapshot::new();
    for prog in progs
        .as_array()
        .context("bpftool did not print a JSON array")?
    {
        let id = prog["id"].as_u64().unwrap_or(0);
        let name = prog["name"].as_str().unwrap_or("");
        let ours = if owned.is_empty() {
            name.starts_with("lw_")
        } else {
            owned.contains(&id)
        };
        if !ours {
            continue;
        }
        let name = if name.is_empty() {
            format!("prog#{id}")
        } else {
            name.to_owned()
        };
        snapshot.entry(name).or_default().add(Counters {
            run_time_ns: prog["run_time_ns"].as_u64().unwrap_or(0),
            run_cnt: prog["run_cnt"].as_u64().unwrap_or(0),
        });
    }
    Ok(snapshot)
}

/// The per-program deltas between two snapshots.
pub fn delta(before: &Snapshot, after: &Snapshot) -> Snapshot {
    after
        .iter()
        .map(|(name, counters)| {
            let earlier = before.get(name).copied().unwrap_or_default();
            (name.clone(), counters.since(earlier))
        })
        .collect()
}

/// IDs of the BPF programs `pid` holds through program or link fds.
fn owned_prog_ids(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = fds
        .filter_map(|fd| fs::read_to_string(fd.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
