//! Entries of `LW_PROCS` whose process is gone. The exit tracepoint
//! deletes a process's entry, but a connect's `connected` evidence is
//! written when its handshake completes (in softirq, for the pid that
//! connected): a process that exits before its SYN-ACK arrives gets an
//! entry after its exit, as does one whose exit run the kernel skipped
//! (a recursion miss). Nothing else would ever remove them, and a full
//! table judges every new process with state to keep as network-facing.

use aya::maps::{HashMap, Map, MapData};
use loopwarden_common::{ProcState, maps};
use procfs::process::Process;

use crate::kernel::pins::PinDir;

/// The largest pid Linux gives (`PID_MAX_LIMIT` on 64-bit): the kernel
/// writes entries only under tgids up to it. A larger key is no process's
/// leak (another tool's, or a test's stand-in for a host with a larger
/// `pid_max`): left alone.
const PID_MAX_LIMIT: u32 = 1 << 22;

/// Removes the entries of `LW_PROCS` pinned in `pins` whose pid no
/// process has: how many. Each pid is looked at again right before its
/// entry goes, so a process that took the pid meanwhile keeps its entry
/// (one that takes it in the moment between that look and the removal
/// loses what it inherited: pid reuse that fast needs the whole pid space
/// to wrap in that moment).
pub fn reap(pins: &PinDir) -> Result<usize, String> {
    let data = MapData::from_pin(pins.map(maps::PROCS))
        .map_err(|e| format!("opening {}: {e}", maps::PROCS))?;
    let capacity = data
        .info()
        .map_err(|e| format!("reading {}'s info: {e}", maps::PROCS))?
        .max_entries();
    let mut procs: HashMap<MapData, u32, ProcState> = HashMap::try_from(Map::HashMap(data))
        .map_err(|e| format!("opening {}: {e}", maps::PROCS))?;
    let gone: Vec<u32> = procs
        .keys()
        .take(capacity as usize)
        .map_while(Result::ok)
        .filter(|&tgid| tgid <= PID_MAX_LIMIT && !alive(tgid))
        .collect();
    Ok(gone
        .into_iter()
        .filter(|&tgid| !alive(tgid) && procs.remove(&tgid).is_ok())
        .count())
}

/// Whether a process (or a thread: its id is no free pid either) has pid
/// `tgid`: `/proc/PID` opens. A zombie keeps its pid, and its entry, until
/// it is reaped.
fn alive(tgid: u32) -> bool {
    i32::try_from(tgid).is_ok_and(|pid| Process::new(pid).is_ok())
}
