//! The network namespaces of the policy in force, kept in
//! `<run_dir>/scope.json`, so that a namespace kept in the scope after its
//! name went (see [`crate::policy::compile_lenient`]) stays in it when the
//! daemon restarts: a start resolves the names as they are, and without
//! the file would drop it, letting a relay there through.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{kernel::pins::PinDir, policy::Netns, run_file::InstallFile};

/// The file's name in the run directory.
pub const FILE: &str = "scope.json";

/// Where the scope is kept, and for which maps: a namespace is kept by its
/// cookie, which only this boot's kernel gave it.
pub(super) struct ScopeFile(InstallFile);

/// What the file holds after its stamp.
#[derive(Serialize, Deserialize)]
struct Scope {
    netns: Vec<Netns>,
}

/// The namespaces the policy in force in the pins at `pin_dir` is scoped
/// to, as the daemon of `run_dir` kept them: what its reload keeps in the
/// scope after their names went (`check-config --as-daemon`); none when
/// the file is not there, not readable or not those pins'.
pub(crate) fn pinned_scope(run_dir: &Path, pin_dir: &Path) -> Vec<Netns> {
    ScopeFile::pinned(run_dir, &PinDir::new(pin_dir)).load()
}

impl ScopeFile {
    /// The file of the maps pinned in `pins` now (read before they are
    /// loaded: the scope they enforce is what a start must not drop, be
    /// they adopted or replaced).
    pub(super) fn pinned(run_dir: &Path, pins: &PinDir) -> Self {
        Self::new(run_dir, pins.root(), pins.generation_id())
    }

    /// The file of the maps whose `LW_GENERATION` has id `maps_id`.
    pub(super) fn new(run_dir: &Path, pin_dir: &Path, maps_id: Option<u32>) -> Self {
        Self(InstallFile::new(run_dir, FILE, pin_dir, maps_id))
    }

    /// The namespaces a predecessor's policy in these maps was scoped to;
    /// none when there is no file, it does not parse, or it is another
    /// set of maps'.
    pub(super) fn load(&self) -> Vec<Netns> {
        self.0
            .file
            .load::<Scope>()
            .map(|scope| scope.netns)
            .unwrap_or_default()
    }

    /// Writes the scope of the policy just installed (a failure is warned
    /// of once; the next install tries again).
    pub(super) fn save(&mut self, netns: &[Netns]) {
        let scope = Scope {
            netns: netns.to_vec(),
        };
        self.0.save(
            &scope,
            "a daemon started after this one drops a namespace kept in the scope after its name \
             went",
        );
    }

    /// Writes `netns` again if the last write failed (each refresh asks: a
    /// policy that does not change installs nothing, and would not).
    pub(super) fn retry(&mut self, netns: &[Netns]) {
        if self.0.failed() {
            self.save(netns);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn the_scope_round_trips_for_its_maps_only() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Path::new("/sys/fs/bpf/loopwarden");
        let kept = vec![Netns {
            path: "/run/netns/blue".to_owned(),
            cookie: 4099,
            inode: 4026532_u32,
        }];
        let mut file = ScopeFile::new(dir.path(), pins, Some(7));
        file.save(&kept);
        assert!(!file.0.failed());
        assert_eq!(file.load(), kept);
        // One flat object: the stamp's fields beside the scope's.
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        let saved: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(saved["pin_dir"], "/sys/fs/bpf/loopwarden", "{text}");
        assert_eq!(saved["maps_id"], 7, "{text}");
        assert_eq!(saved["netns"][0]["cookie"], 4099, "{text}");
        // Another set of maps', another directory's, unknown maps: none.
        for (pins, id) in [
            (pins, Some(8)),
            (Path::new("/sys/fs/bpf/x"), Some(7)),
            (pins, None),
        ] {
            assert!(ScopeFile::new(dir.path(), pins, id).load().is_empty());
        }
        // Another boot's (cookies and map ids start over): none.
        let mut rebooted = ScopeFile::new(dir.path(), pins, Some(7));
        rebooted.0.file.stamp.boot_id = Some("another boot".to_owned());
        assert!(rebooted.load().is_empty());
        // A broken file: none.
        fs::write(dir.path().join(FILE), b"{").unwrap();
        assert!(file.load().is_empty());
    }
}
