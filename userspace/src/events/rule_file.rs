//! The rule names of recent installs, kept in `<run_dir>/rules.json`, so
//! that a daemon started on pins its predecessor filled names the rules of
//! that predecessor's policies (the reports it left queued, the origins of
//! connections opened before the restart) instead of `#N`.

use std::{io, path::Path};

use serde::{Deserialize, Serialize};

use crate::{policy::RuleInfo, run_file::StampedFile};

/// The file's name in the run directory.
pub const FILE: &str = "rules.json";
/// Installs kept in the file: enough for the reports a restart leaves
/// queued (those of the last few policies), small enough to rewrite at
/// every install.
pub const KEPT: usize = 8;

/// Where the lists are kept, and for which maps: lists of another set of
/// maps' never name this one's rules.
#[derive(Clone, Debug)]
pub struct RuleFile {
    pub file: StampedFile,
}

/// What the file holds after its stamp.
#[derive(Serialize, Deserialize)]
struct Lists {
    /// `(policy_seq, rules)`, oldest first.
    lists: Vec<(u64, Vec<RuleInfo>)>,
}

impl RuleFile {
    pub fn new(run_dir: &Path, pin_dir: &Path, maps_id: Option<u32>) -> Self {
        Self {
            file: StampedFile::new(run_dir.join(FILE), pin_dir, maps_id),
        }
    }

    /// Writes the newest [`KEPT`] of `lists` (oldest first), replacing the
    /// file whole.
    pub fn save<'a>(
        &self,
        lists: impl DoubleEndedIterator<Item = (u64, &'a [RuleInfo])>,
    ) -> io::Result<()> {
        let mut newest: Vec<(u64, Vec<RuleInfo>)> = lists
            .rev()
            .take(KEPT)
            .map(|(seq, rules)| (seq, rules.to_vec()))
            .collect();
        newest.reverse();
        self.file.save(&Lists { lists: newest })
    }

    /// The lists a predecessor saved for these pins, those of policies up
    /// to `seq` (the one in force), oldest first; none when there is no
    /// file, it does not parse, or it is another set of maps'.
    pub fn load(&self, seq: u64) -> Vec<(u64, Vec<RuleInfo>)> {
        self.file
            .load::<Lists>()
            .map(|saved| saved.lists.into_iter().filter(|(s, _)| *s <= seq).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::policy::Action;

    fn rules(name: &str) -> Vec<RuleInfo> {
        vec![RuleInfo {
            name: name.to_owned(),
            action: Action::Deny,
            matches: "exe_name in [socat]".to_owned(),
            browser: false,
        }]
    }

    #[test]
    fn the_newest_lists_round_trip_for_their_pins_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = RuleFile::new(dir.path(), Path::new("/sys/fs/bpf/loopwarden"), Some(7));
        let lists: Vec<(u64, Vec<RuleInfo>)> =
            (1..=10).map(|i| (2 * i, rules(&format!("r{i}")))).collect();
        file.save(lists.iter().map(|(s, r)| (*s, r.as_slice())))
            .unwrap();
        // The newest KEPT, up to the seq in force.
        let loaded = file.load(20);
        assert_eq!(loaded, lists[10 - KEPT..]);
        assert_eq!(file.load(15).last().map(|(s, _)| *s), Some(14));
        // Another pin directory's, another set of maps' (made afresh in
        // it), or maps whose id is not known: nothing.
        for (pins, id) in [
            ("/sys/fs/bpf/other", Some(7)),
            ("/sys/fs/bpf/loopwarden", Some(8)),
            ("/sys/fs/bpf/loopwarden", None),
        ] {
            let other = RuleFile::new(dir.path(), Path::new(pins), id);
            assert!(other.load(20).is_empty(), "{pins} {id:?}");
        }
        // Another boot's (map ids start over at each): nothing.
        let mut rebooted = file.clone();
        rebooted.file.stamp.boot_id = Some("another boot".to_owned());
        assert!(rebooted.load(20).is_empty());
        // No file, or a broken one: nothing.
        let missing = RuleFile::new(Path::new("/nonexistent"), Path::new("/x"), Some(7));
        assert!(missing.load(20).is_empty());
        fs::write(&file.file.path, b"{").unwrap();
        assert!(file.load(20).is_empty());
    }
}
