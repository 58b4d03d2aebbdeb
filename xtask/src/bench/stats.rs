//! The kernel's own accounting of BPF program run time: cumulative
//! `run_time_ns` and `run_cnt` per program, switched on with
//! `BPF_ENABLE_STATS` and read from each program's info (aya's
//! `enable_stats` and `loaded_programs`).

use std::{cell::RefCell, collections::BTreeMap, fs, os::fd::OwnedFd};

use anyhow::Context as _;
use aya::sys::{Stats, enable_stats};
use loopwarden_common::programs;

use crate::proc::say;

/// The sysctl that turns statistics on for everyone, until turned off.
const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// BPF run-time statistics, on while this holds the descriptor
/// `BPF_ENABLE_STATS` returned (the kernel counts its holders, so closing
/// it never turns off what someone else turned on): on for the windows
/// that count program runs, off for those that measure rates (with them
/// on, every program run pays two clock reads, which no production host
/// does).
pub struct StatsEnabled {
    fd: RefCell<Option<OwnedFd>>,
}

impl StatsEnabled {
    pub fn enable() -> anyhow::Result<Self> {
        let stats = Self {
            fd: RefCell::new(None),
        };
        stats.set(true)?;
        let sysctl = fs::read_to_string(SYSCTL).unwrap_or_default();
        if sysctl.trim() != "0" {
            say!(
                "warning: kernel.bpf_stats_enabled is on, so statistics stay on throughout: the \
                 rates include their cost to every program run"
            );
        }
        Ok(stats)
    }

    /// Switches this holder's statistics on or off.
    pub fn set(&self, on: bool) -> anyhow::Result<()> {
        let mut fd = self.fd.borrow_mut();
        match (on, fd.is_some()) {
            (true, false) => {
                *fd = Some(
                    enable_stats(Stats::RunTime)
                        .context("BPF_ENABLE_STATS failed (BPF statistics need Linux 5.8)")?,
                );
            }
            (false, true) => *fd = None,
            _ => {}
        }
        Ok(())
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

    /// Mean ns per run, if the program ran.
    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// Counters by program name.
pub type Snapshot = BTreeMap<String, Counters>;

/// Which programs to count: those the daemon process holds (found through its
/// fdinfo), or when that finds none, every program whose name starts with `lw_`.
pub fn snapshot(daemon_pid: Option<u32>) -> anyhow::Result<Snapshot> {
    let owned = daemon_pid.map(owned_prog_ids).unwrap_or_default();
    let mut snapshot = Snapshot::new();
    for info in aya::programs::loaded_programs() {
        // A program unloaded while the list is walked is gone for both.
        let Ok(info) = info else {
            continue;
        };
        let id = u64::from(info.id());
        let name = info.name_as_str().unwrap_or("");
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
            full_name(name).to_owned()
        };
        snapshot.entry(name).or_default().add(Counters {
            run_time_ns: info.run_time().as_nanos() as u64,
            run_cnt: info.run_count(),
        });
    }
    Ok(snapshot)
}

/// The kernel keeps a program's name to 15 bytes (`BPF_OBJ_NAME_LEN`);
/// our longer names, by which the report knows them.
const LONG_NAMES: &[&str] = &[programs::BASELINE_RECEIVE];

/// `name` as the kernel keeps it, or the longer name it was cut from.
fn full_name(name: &str) -> &str {
    LONG_NAMES
        .iter()
        .find(|long| name.len() == 15 && long.starts_with(name))
        .unwrap_or(&name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_did_not_run_has_no_cost_per_run() {
        let ran = Counters {
            run_time_ns: 300,
            run_cnt: 3,
        };
        assert_eq!(ran.ns_per_run(), Some(100.0));
        assert_eq!(Counters::default().ns_per_run(), None);
    }

    #[test]
    fn names_the_kernel_cut_are_known_by_their_full_name() {
        assert_eq!(full_name("lw_baseline_rec"), programs::BASELINE_RECEIVE);
        assert_eq!(full_name(programs::SOCK_STATE), programs::SOCK_STATE);
        // A shorter prefix is another program's whole name, not a cut one.
        assert_eq!(full_name("lw_baseline"), "lw_baseline");
    }
}
