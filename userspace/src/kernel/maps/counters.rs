//! The kernel's counters (`LW_STATS`, `LW_DROPS_REPORTED`) and the two
//! report ring buffers.

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
};
use loopwarden_common::{maps, stats, verdict};

use super::{MapsError, take};

/// The kernel's counters (see `loopwarden_common::stats`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub checked: u64,
    pub denied: u64,
    pub reported: u64,
    pub dropped: u64,
    pub retried: u64,
    pub raced: u64,
    /// Reports lost, indexed by `verdict` value.
    pub dropped_by_verdict: [u64; verdict::COUNT as usize],
}

/// Reader for `LW_STATS`, and `LW_DROPS_REPORTED`: the losses already
/// reported, kept beside the pinned counters for the next daemon.
pub struct StatsMap {
    stats: PerCpuArray<MapData, u64>,
    drops_reported: Array<MapData, u64>,
}

impl StatsMap {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            stats: take(ebpf, maps::STATS)?,
            drops_reported: take(ebpf, maps::DROPS_REPORTED)?,
        })
    }

    /// The per-verdict losses a daemon (this one or a predecessor on the
    /// same pinned maps) has already reported.
    pub fn drops_reported(&self) -> Result<[u64; verdict::COUNT as usize], MapsError> {
        let mut out = [0; verdict::COUNT as usize];
        for (v, slot) in out.iter_mut().enumerate() {
            *slot =
                self.drops_reported
                    .get(&(v as u32), 0)
                    .map_err(|source| MapsError::Update {
                        name: maps::DROPS_REPORTED,
                        source,
                    })?;
        }
        Ok(out)
    }

    /// Records the per-verdict losses reported so far.
    pub fn set_drops_reported(
        &mut self,
        dropped: &[u64; verdict::COUNT as usize],
    ) -> Result<(), MapsError> {
        for (v, value) in dropped.iter().enumerate() {
            self.drops_reported
                .set(v as u32, *value, 0)
                .map_err(|source| MapsError::Update {
                    name: maps::DROPS_REPORTED,
                    source,
                })?;
        }
        Ok(())
    }

    pub fn read(&self) -> Result<Counters, MapsError> {
        let get = |index: u32| -> Result<u64, MapsError> {
            let values = self
                .stats
                .get(&index, 0)
                .map_err(|source| MapsError::Update {
                    name: maps::STATS,
                    source,
                })?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            checked: get(stats::CHECKED)?,
            denied: get(stats::DENIED)?,
            reported: get(stats::REPORTED)?,
            dropped: get(stats::DROPPED)?,
            retried: get(stats::RETRIED)?,
            raced: get(stats::RACED)?,
            dropped_by_verdict: [
                get(stats::DROPPED_BY_VERDICT + u32::from(verdict::ALLOW))?,
                get(stats::DROPPED_BY_VERDICT + u32::from(verdict::AUDIT))?,
                get(stats::DROPPED_BY_VERDICT + u32::from(verdict::WOULD_DENY))?,
                get(stats::DROPPED_BY_VERDICT + u32::from(verdict::DENY))?,
            ],
        })
    }
}

/// Takes the event ring buffer (every report but refusals).
pub fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, MapsError> {
    take(ebpf, maps::EVENTS)
}

/// Takes the refusals' ring buffer.
pub fn take_denials(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, MapsError> {
    take(ebpf, maps::DENIALS)
}
