//! The rule names of recent installs, kept in `<run_dir>/rules.json`, so
//! that a daemon started on pins its predecessor filled names the rules of
//! that predecessor's policies (the reports it left queued, the origins of
//! connections opened before the restart) instead of `#N`.

use std::{io, path::Path};

use serde::{Deserialize, Serialize};

use crate::{policy::RuleInfo, run_file::StampedFile};

/// The file's name in the run directory.
pub const FILE: &str = "rules.json";
/// Rule lists kept in the file, each with the installs that share it
/// (re-resolutions: new ids, the same rules): enough for the reports a
/// restart leaves queued and the connections opened under the last few
/// policies, however many re-resolutions since; small enough to rewrite at
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
    /// `(policy_seqs, rules)`: each list once, with the installs that
    /// followed one another with it; oldest first.
    #[serde(default)]
    runs: Vec<(Vec<u64>, Vec<RuleInfo>)>,
    /// The form of earlier versions, read only: `(policy_seq, rules)`,
    /// oldest first.
    #[serde(default, skip_serializing)]
    lists: Vec<(u64, Vec<RuleInfo>)>,
}

impl RuleFile {
    pub fn new(run_dir: &Path, pin_dir: &Path, maps_id: Option<u32>) -> Self {
        Self {
            file: StampedFile::new(run_dir.join(FILE), pin_dir, maps_id),
        }
    }

    /// Writes the newest [`KEPT`] rule lists of `lists` (`(policy_seq,
    /// rules)`, oldest first; installs that follow one another with the
    /// same rules share one list, as the enricher keeps them: the same
    /// slice), with every install that shares them, replacing the file
    /// whole.
    pub fn save<'a>(
        &self,
        lists: impl DoubleEndedIterator<Item = (u64, &'a [RuleInfo])>,
    ) -> io::Result<()> {
        let mut runs: Vec<(Vec<u64>, &[RuleInfo])> = Vec::new();
        for (seq, rules) in lists.rev() {
            if let Some((seqs, last)) = runs.last_mut()
                && (std::ptr::eq(*last, rules) || *last == rules)
            {
                seqs.push(seq);
                continue;
            }
            if runs.len() == KEPT {
                break;
            }
            runs.push((vec![seq], rules));
        }
        let runs = runs
            .into_iter()
            .rev()
            .map(|(mut seqs, rules)| {
                seqs.reverse();
                (seqs, rules.to_vec())
            })
            .collect();
        self.file.save(&Lists {
            runs,
            lists: Vec::new(),
        })
    }

    /// The lists a predecessor saved for these pins, those of policies up
    /// to `seq` (the one in force), oldest first; none when there is no
    /// file, it does not parse, or it is another set of maps'.
    pub fn load(&self, seq: u64) -> Vec<(u64, Vec<RuleInfo>)> {
        let Some(saved) = self.file.load::<Lists>() else {
            return Vec::new();
        };
        let runs = saved
            .runs
            .into_iter()
            .flat_map(|(seqs, rules)| seqs.into_iter().map(move |s| (s, rules.clone())));
        saved
            .lists
            .into_iter()
            .chain(runs)
            .filter(|(s, _)| *s <= seq)
            .collect()
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
        // Hundreds of installs that share lists (re-resolutions) keep the
        // newest KEPT lists, and every install of them.
        let shared: Vec<Vec<RuleInfo>> = (0..10).map(|i| rules(&format!("s{i}"))).collect();
        let installs: Vec<(u64, &[RuleInfo])> = (1..=1000)
            .map(|seq| (seq, shared[(seq as usize - 1) / 100].as_slice()))
            .collect();
        file.save(installs.iter().copied()).unwrap();
        let loaded = file.load(1000);
        assert_eq!(loaded.len(), KEPT * 100);
        assert_eq!(loaded[0], (201, shared[2].clone()));
        assert_eq!(loaded.last(), Some(&(1000, shared[9].clone())));
        // The file of an earlier version still reads.
        fs::write(
            &file.file.path,
            serde_json::to_vec(&serde_json::json!({
                "pin_dir": "/sys/fs/bpf/loopwarden",
                "maps_id": 7,
                "boot_id": file.file.stamp.boot_id,
                "lists": [[4, rules("old")]],
            }))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(file.load(20), vec![(4, rules("old"))]);
        file.save(lists.iter().map(|(s, r)| (*s, r.as_slice())))
            .unwrap();
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
