//! Whether a daemon runs for a run directory: who holds its instance lock
//! (from `/proc/locks`), and what its `status.json` says.

use std::path::Path;

use super::DaemonReport;
use crate::{
    daemon::status_file,
    holder::{Holder, LockState, alive, lock_holder, owned_by_root},
};

/// Who holds `<run_dir>/loopwarden.lock`, and what status.json says.
///
/// The lock is looked up in `/proc/locks` rather than by trying to take it:
/// a `status` that held the lock even for a moment could make a daemon
/// starting at that instant, or a `detach`, fail with "another loopwarden is
/// already running". Only when `/proc/locks` cannot be read is the lock
/// tried (and released at once).
///
/// With no daemon for `run_dir`, the holder of the pin directory
/// `pin_dir`'s lock (from `/proc/locks` only: never tried) is named too: a
/// daemon given another `--run-dir`, whose run directory is read from its
/// command line when it can be.
pub(super) fn daemon_report(run_dir: &Path, pin_dir: &Path) -> DaemonReport {
    let (reported, unread) = match status_file::read_or_why(run_dir) {
        Ok(reported) => (reported, None),
        Err(why) => (None, Some(why)),
    };
    let lock = run_dir.join("loopwarden.lock");
    let holder = lock_holder(&lock, true);
    let running = match (&holder, &reported) {
        (LockState::Held(Some(pid)), Some(r)) => *pid == r.pid && alive(r.pid),
        (LockState::Held(_), Some(r)) => alive(r.pid),
        (LockState::Held(Some(pid)), None) => alive(*pid),
        (LockState::Held(None), None) => true,
        (LockState::Free, _) => false,
    };
    // Root's process only (anyone who may open the directory may lock
    // it), and not the one holding this run directory's lock (a daemon
    // starting here, before its status.json). Looked up only when no
    // daemon runs for this run directory, or the one that runs pins
    // elsewhere.
    // Looked up too when the daemon that runs pins elsewhere: another one
    // may report for these pins.
    let pins_elsewhere = running
        && reported
            .as_ref()
            .and_then(|r| r.pin_dir.as_deref())
            .is_some_and(|theirs| theirs != pin_dir);
    let elsewhere = (!running || pins_elsewhere)
        .then(|| Holder::of(pin_dir))
        .flatten()
        .filter(|h| {
            owned_by_root(h.pid) && !matches!(holder, LockState::Held(Some(p)) if p == h.pid)
        });
    DaemonReport {
        running,
        lock_holder: match holder {
            LockState::Held(pid) => pid,
            LockState::Free => None,
        },
        reported,
        unread,
        elsewhere,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_run_dir_means_no_daemon() {
        let report = daemon_report(
            Path::new("/nonexistent/loopwarden-run"),
            Path::new("/nonexistent/loopwarden-pins"),
        );
        assert!(!report.running);
        assert_eq!(report.describe(), "no daemon");
    }
}
