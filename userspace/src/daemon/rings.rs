//! What the kernel sends the daemon: the reports in the ring buffers
//! (drained in batches, refusals first), the programs' own log, and the
//! counters of reports the rings had to drop.

use std::io;

use aya::maps::{MapData, RingBuf};
use loopwarden_common::verdict;
use tokio::io::{
    Interest,
    unix::{AsyncFd, AsyncFdReadyMutGuard},
};
use tracing::warn;

use super::{DaemonError, io_err};
use crate::{
    events::{parse_event, report::Reporter},
    kernel::{
        maps::{Counters, StatsMap},
        pins::PinDir,
    },
};

pub(super) type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Registers a ring buffer's descriptor with the reactor.
pub(super) fn watch<T: std::os::fd::AsRawFd>(
    inner: T,
    what: &str,
) -> Result<AsyncFd<T>, DaemonError> {
    // SAFETY: `inner` owns its descriptor (an aya map fd) and keeps it open and
    // unchanged until the AsyncFd, which owns `inner`, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| io_err(what)(io::Error::from(e)))
}

pub(super) async fn readable(
    logger: &mut Option<AsyncFd<KernelLogger>>,
) -> io::Result<Option<AsyncFdReadyMutGuard<'_, KernelLogger>>> {
    match logger {
        Some(fd) => fd.readable_mut().await.map(Some),
        None => std::future::pending().await,
    }
}

/// Records taken from one ring per [`drain`]: a flood the daemon cannot
/// keep up with still lets it turn to refusals, ticks and signals (what is
/// left is taken at the next wakeup or drain tick).
const DRAIN_BATCH: usize = 16 * 1024;

/// Reports the queued events, the rings in the order given (refusals
/// first), and writes the batch.
pub(super) fn drain(rings: &mut [&mut RingBuf<MapData>], reporter: &mut Reporter) {
    read(rings, reporter);
    reporter.flush();
}

/// Reports the queued events like [`drain`], leaving their lines to go
/// out with a full batch or the next [`drain`] (at most the 100 ms drain
/// tick later): a flood of other reports, which wakes the daemon every
/// few dozen records, is written in a few large batches, not many small
/// ones each handed to the writing thread.
pub(super) fn read(rings: &mut [&mut RingBuf<MapData>], reporter: &mut Reporter) {
    for ring in rings.iter_mut() {
        for _ in 0..DRAIN_BATCH {
            let Some(item) = ring.next() else {
                break;
            };
            match parse_event(&item) {
                Some(ev) => {
                    drop(item);
                    reporter.event(&ev);
                }
                None => warn!(
                    "ignoring a short record ({} bytes) from the kernel",
                    item.len()
                ),
            }
        }
    }
}

/// Reports events the ring buffer had to drop, and remembers in `LW_META`
/// what was reported, so the next daemon reports only what it missed.
pub(super) struct CounterReport {
    pub(super) pins: PinDir,
    pub(super) last: Counters,
}

impl CounterReport {
    /// Once per refresh: the reports lost since the last call, per verdict
    /// (`allow`, `audit`, `would-deny`, `deny`), in one line.
    pub(super) fn report(&mut self, stats: &mut StatsMap) {
        let now = match stats.read() {
            Ok(now) => now,
            Err(e) => {
                warn!("reading kernel counters failed: {e}");
                return;
            }
        };
        let lost: Vec<u64> = now
            .dropped_by_verdict
            .iter()
            .zip(self.last.dropped_by_verdict)
            .map(|(now, last)| now.saturating_sub(last))
            .collect();
        if lost.iter().any(|&n| n > 0) {
            // At warning, as refusals: what `journalctl -p warning` shows.
            warn!(
                lost_allow = lost[usize::from(verdict::ALLOW)],
                lost_audit = lost[usize::from(verdict::AUDIT)],
                lost_would_deny = lost[usize::from(verdict::WOULD_DENY)],
                lost_deny = lost[usize::from(verdict::DENY)],
                lost_total = lost.iter().sum::<u64>(),
                total_dropped = now.dropped,
                "events lost: a ring buffer was full, or no daemon was reading (the connects were \
                 still judged; only their reports are missing)"
            );
            if let Err(e) = stats.set_drops_reported(&now.dropped_by_verdict) {
                warn!("recording the reported drops in LW_DROPS_REPORTED failed: {e}");
            }
            // What this line reported, the per-verdict counts: `dropped`,
            // read apart from them, may count a loss made since, which is
            // reported next time (and is unreported until then).
            let reported = now.dropped_by_verdict.iter().sum();
            if let Err(e) = self.pins.update_meta(|m| m.dropped_reported = reported) {
                warn!("recording the reported drops in LW_META failed: {e}");
            }
        }
        if now.raced > self.last.raced {
            warn!(
                allowed = now.raced - self.last.raced,
                "connects allowed unjudged: the policy was rewritten faster than they could be judged"
            );
        }
        self.last = now;
    }
}
