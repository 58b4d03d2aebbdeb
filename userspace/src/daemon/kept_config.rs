//! The config of the policy in force, kept in `<run_dir>/config.json` at
//! each install, so that a daemon restarted on a file it refuses (a typo
//! saved before the restart) goes on re-resolving the policy it keeps:
//! without it, the pinned policy would stay as the previous daemon last
//! resolved it, and an executable a rule names, upgraded since (a new
//! inode), would pass until a good reload.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    config::{Config, ConfigError},
    kernel::pins::PinDir,
    policy::Mode,
    run_file::InstallFile,
};

/// The file's name in the run directory.
pub const FILE: &str = "config.json";

/// The `--mode` override `mode` as it applies to a kept config: to make it
/// enforce only. A start on a refused file never put the pinned policy in
/// a weaker mode, and `--mode audit` was given for the file refused.
pub(super) fn kept_override(mode: Option<Mode>) -> Option<Mode> {
    mode.filter(|m| *m == Mode::Enforce)
}

/// Where the config is kept, and for which maps.
pub(super) struct KeptConfig(InstallFile);

/// What the file holds after its stamp.
#[derive(Serialize, Deserialize)]
struct Kept {
    /// The install of the policy compiled from it (`Settings::seq`): a
    /// later install whose write failed leaves a file that is not its own.
    seq: u64,
    /// The mode that policy ran in (`--mode` may have overridden the
    /// file's).
    mode: Mode,
    /// Where it was read from.
    source: String,
    /// Its text (`None`: the embedded default).
    text: Option<String>,
}

/// What the file held, to put back.
pub(super) struct Held(Option<Kept>);

impl KeptConfig {
    /// The file of the maps pinned in `pins` now (read before they are
    /// loaded).
    pub(super) fn pinned(run_dir: &Path, pins: &PinDir) -> Self {
        Self::new(run_dir, pins.root(), pins.generation_id())
    }

    /// The file of the maps whose `LW_GENERATION` has id `maps_id`.
    pub(super) fn new(run_dir: &Path, pin_dir: &Path, maps_id: Option<u32>) -> Self {
        Self(InstallFile::new(run_dir, FILE, pin_dir, maps_id).private())
    }

    /// The config the policy installed as `seq` in these maps was compiled
    /// from, in the mode it ran in, parsed again; `None` when there is no
    /// file, it is another set of maps' or another install's. Its errors
    /// name it as kept here.
    pub(super) fn load(&self, seq: u64) -> Option<Result<Config, ConfigError>> {
        let kept = self.0.file.load::<Kept>().filter(|k| k.seq == seq)?;
        let mut config = match &kept.text {
            Some(text) => match Config::from_str_named(text, &self.describe(&kept.source)) {
                Ok(config) => config,
                Err(e) => return Some(Err(e)),
            },
            None => Config {
                source: self.describe(&kept.source),
                ..Config::embedded_default()
            },
        };
        config.mode = kept.mode;
        Some(Ok(config))
    }

    /// How a config read from `source` is named once kept here.
    pub(super) fn describe(&self, source: &str) -> String {
        format!("{source}{}", self.suffix())
    }

    fn suffix(&self) -> String {
        format!(" as kept in {}", self.0.file.path.display())
    }

    /// Writes `config`, from which the policy installed as `seq`, running in
    /// `mode`, was compiled (a failure is warned of once; each refresh
    /// tries again, [`KeptConfig::retry`]). Readable by its owner only: a
    /// policy file may be too.
    pub(super) fn save(&mut self, seq: u64, mode: Mode, config: &Config) {
        // A kept config kept again (a refresh of a start that keeps one)
        // is still the file's.
        let source = config.source.strip_suffix(&self.suffix());
        let kept = Kept {
            seq,
            mode,
            source: source.unwrap_or(&config.source).to_owned(),
            text: config.text.as_deref().map(str::to_owned),
        };
        self.0.save(
            &kept,
            "a daemon restarted on a policy file it refuses keeps the pinned policy as it is, \
             without re-resolving it",
        );
    }

    /// What the file holds for these maps now, for [`KeptConfig::put_back`].
    pub(super) fn held(&self) -> Held {
        Held(self.0.file.load::<Kept>())
    }

    /// Writes back what the file `held` (removes it if it held nothing for
    /// these maps): a start that failed after installing its policy puts
    /// the policy before it back, and the config that speaks for it.
    pub(super) fn put_back(&self, held: &Held) {
        let file = &self.0.file;
        let done = match &held.0 {
            Some(kept) => file.save_private(kept),
            None => std::fs::remove_file(&file.path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        };
        if let Err(e) = done {
            warn!(
                "putting back {} failed: {e}; a daemon restarted on a policy file it refuses \
                 keeps the pinned policy as it is",
                file.path.display()
            );
        }
    }

    /// Writes again if the last write failed.
    pub(super) fn retry(&mut self, seq: u64, mode: Mode, config: &Config) {
        if self.0.failed() {
            self.save(seq, mode, config);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    #[test]
    fn the_config_round_trips_for_its_maps_and_install_only() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Path::new("/sys/fs/bpf/loopwarden");
        let text = "mode = \"audit\"\n[protect]\nports = [8080]\n";
        let config = Config::from_str_named(text, "/etc/loopwarden.toml").unwrap();
        let mut file = KeptConfig::new(dir.path(), pins, Some(7));
        // Run enforcing (`--mode enforce` over the file's audit).
        file.save(3, Mode::Enforce, &config);
        assert!(!file.0.failed());
        let kept = file.load(3).unwrap().unwrap();
        assert_eq!(kept.mode, Mode::Enforce);
        assert_eq!(kept.protect, config.protect);
        assert_eq!(kept.text.as_deref(), Some(text));
        let path = dir.path().join(FILE);
        assert_eq!(
            kept.source,
            format!("/etc/loopwarden.toml as kept in {}", path.display())
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Another install's, another set of maps': none.
        assert!(file.load(4).is_none());
        assert!(KeptConfig::new(dir.path(), pins, Some(8)).load(3).is_none());
        // Kept again, it keeps the file's name.
        file.save(4, Mode::Enforce, &kept);
        assert_eq!(file.load(4).unwrap().unwrap().source, kept.source);
        // The embedded default is kept as such.
        file.save(4, Mode::Audit, &Config::embedded_default());
        let default = file.load(4).unwrap().unwrap();
        assert!(
            default.source.contains(" as kept in "),
            "{}",
            default.source
        );
        assert_eq!(
            default,
            Config {
                source: default.source.clone(),
                ..Config::embedded_default()
            }
        );
        // A text that no longer parses (an older version's) says where it is.
        let mut broken = config.clone();
        broken.text = Some("bogus = 1\n".into());
        file.save(5, Mode::Audit, &broken);
        let error = crate::error_chain(&file.load(5).unwrap().unwrap_err());
        assert!(error.contains("as kept in"), "{error}");
    }

    #[test]
    fn what_the_file_held_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Path::new("/sys/fs/bpf/loopwarden");
        let config = Config::from_str_named("mode = \"enforce\"\n", "a.toml").unwrap();
        let mut file = KeptConfig::new(dir.path(), pins, Some(7));
        let nothing = file.held();
        file.save(1, Mode::Enforce, &config);
        let first = file.held();
        file.save(2, Mode::Audit, &Config::embedded_default());
        file.put_back(&first);
        assert_eq!(file.load(1).unwrap().unwrap().mode, Mode::Enforce);
        assert!(file.load(2).is_none());
        file.put_back(&nothing);
        assert!(!dir.path().join(FILE).exists());
        // Nothing there to remove: nothing to say.
        file.put_back(&nothing);
    }
}
