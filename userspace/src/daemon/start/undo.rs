//! What a start that fails once it has begun changing bpffs puts back.

use std::{io, path::Path};

use tracing::{error, warn};

use crate::{
    daemon::{
        kept_config::{Held, KeptConfig},
        scope_file::ScopeFile,
    },
    kernel::{
        maps::PolicyMaps,
        pins::{PinDir, PinLock},
    },
    policy::Netns,
};

/// What a start that fails past [`PinDir::prepare`] undoes, when dropped
/// ([`Undo::disarm`]ed once the start has succeeded): a first start (nothing was
/// pinned before it) removes every pin it made, its links detached first,
/// so no program it attached goes on enforcing or tracking without a
/// daemon; a replacement removes the maps it staged and did not promote
/// (the old programs go on with the maps they were given, see
/// [`Programs::attach_pinned`](crate::kernel::loader::Programs::attach_pinned)).
pub(super) struct Undo<'a> {
    pins: &'a PinDir,
    /// Proof that the pin directory's lock is held while this removes.
    lock: &'a PinLock,
    first: bool,
    /// `LW_GENERATION` and `LW_META`'s mode word as they were before this
    /// start installed its policy into adopted maps, which the programs
    /// already running read: put back, so a failed start leaves the policy
    /// before it in force, as it found it. (Tracking programs it attached
    /// in place of the pinned ones stay: the same layout's, whose maps
    /// they share.)
    policy_before: Option<(u32, Option<u32>)>,
    /// The scope file of the adopted maps, and the namespaces it held
    /// before this start saved its policy's: written back with the policy
    /// before.
    scope_before: Option<(ScopeFile, Vec<Netns>)>,
    /// The same for the kept config file.
    config_before: Option<(KeptConfig, Held)>,
}

impl<'a> Undo<'a> {
    /// What a start that has locked `pins` (`lock`) undoes; `first`: nothing
    /// was pinned before it.
    pub(super) fn new(pins: &'a PinDir, lock: &'a PinLock, first: bool) -> Self {
        Undo {
            pins,
            lock,
            first,
            policy_before: None,
            scope_before: None,
            config_before: None,
        }
    }

    /// Notes the policy in force in the adopted maps `maps`, and what the
    /// scope file (which speaks for it) holds, before this start installs
    /// its own into them: in force at once in the maps the running
    /// programs read, so put back should the start fail before it is whole
    /// (the slot in force now is not written).
    pub(super) fn keep_before(&mut self, maps: &PolicyMaps, run_dir: &Path) {
        self.policy_before = maps
            .in_force()
            .ok()
            .map(|(generation, _)| (generation, self.pins.meta().map(|m| m.mode).ok()));
        let before = ScopeFile::new(run_dir, self.pins.root(), maps.id());
        let netns = before.load();
        self.scope_before = Some((before, netns));
        let before = KeptConfig::new(run_dir, self.pins.root(), maps.id());
        let held = before.held();
        self.config_before = Some((before, held));
    }

    /// The start is whole: nothing is undone.
    pub(super) fn disarm(mut self) {
        self.scope_before = None;
        self.config_before = None;
        std::mem::forget(self);
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some((generation, mode)) = self.policy_before {
            let put_back = self
                .pins
                .set_generation(generation)
                .and_then(|()| match mode {
                    Some(mode) => self.pins.update_meta(|m| m.mode = mode),
                    None => Ok(()),
                });
            // The files speak for the policy before only if it is back.
            if put_back.is_ok() {
                if let Some((file, netns)) = &mut self.scope_before {
                    file.save(netns);
                }
                if let Some((file, held)) = &self.config_before {
                    file.put_back(held);
                }
            }
            match put_back {
                Ok(()) => warn!("the start failed: the policy in force before it is put back"),
                Err(e) => error!(
                    "the start failed after installing its policy, and putting back the one \
                     before failed: {e}; the new policy stays in force (`loopwarden status` \
                     shows it)"
                ),
            }
        }
        if self.first {
            match self.pins.remove_all_held(self.lock) {
                Ok(removed) => warn!(
                    "the start failed: the {} pins of loopwarden's are removed (no policy was \
                     pinned before it)",
                    removed.pins.len()
                ),
                Err(e) => error!(
                    "the start failed, and removing the pins it made failed too: {}; \
                     `loopwarden detach --pin-dir {}` removes them",
                    crate::error_chain(&e),
                    self.pins.root().display()
                ),
            }
            return;
        }
        let staging = self.pins.staging();
        if let Err(e) = self.pins.remove_staging()
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(
                "removing the maps this failed start staged in {} failed: {e}; the next start \
                 removes them",
                staging.display()
            );
        }
    }
}
