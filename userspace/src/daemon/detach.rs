//! `loopwarden detach`: the one way to end enforcement. Removes the pinned
//! links (the kernel detaches the programs when the last reference goes)
//! and maps. Refuses while a daemon holds the run directory's lock, so it
//! never pulls enforcement from under a running daemon.

use std::path::Path;

use super::{DaemonError, InstanceLock};
use crate::kernel::{
    compat,
    pins::{PinDir, PinError, Removed},
};

/// Removes everything of ours pinned in `pin_dir`; returns what was
/// removed and what was left as not ours.
pub fn detach(pin_dir: &Path, run_dir: &Path) -> Result<Removed, DaemonError> {
    compat::require_root()?;
    // A run directory that is not there has no daemon: none is made to
    // say so (the pin directory's lock still keeps a daemon given another
    // out).
    let _lock = run_dir
        .exists()
        .then(|| InstanceLock::acquire(run_dir))
        .transpose()?;
    PinDir::new(pin_dir).remove_all().map_err(|e| match e {
        PinError::Busy { path, holder } => DaemonError::DetachBusy { path, holder },
        e => e.into(),
    })
}
