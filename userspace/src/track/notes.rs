//! `LW_TRACKED`, one note per tgid: whether `LW_PROCS` may hold the
//! process, and whether its state was lost to a full map (then it is judged
//! network-facing, `via_how=untracked`).

use aya::maps::{Array, MapData, MapError};
use loopwarden_common::{Evidence, ProcState, evidence, maps::TRACKED_LOST};

/// The notes, as the pinned or loaded map holds them.
pub type Notes = Array<MapData, [u8; 64]>;

/// `tgid`'s note: 0, [`TRACKED_MAYBE`](loopwarden_common::maps::TRACKED_MAYBE)
/// or [`TRACKED_LOST`].
pub fn note(notes: &Notes, tgid: u32) -> Result<u8, MapError> {
    Ok(notes.get(&(tgid >> 6), 0)?[(tgid & 63) as usize])
}

/// Sets `tgid`'s note to `value`: read, set, written back, so a note the
/// kernel sets in the same entry (64 pids) meanwhile can be lost. The
/// seeding repairs the notes of entries afterwards; a lost note the kernel
/// wrote in that window (for a process with no entry) is not repaired: it
/// takes a full map during the seeding, once at start, or while a
/// listener is credited anew (a note for each holder credited, rarely),
/// and writing the array's single bytes from userspace would need it
/// mapped (`BPF_F_MMAPABLE`, a layout change). A lost process's note stays
/// lost, as in the kernel.
pub fn set(notes: &mut Notes, tgid: u32, value: u8) -> Result<(), MapError> {
    let mut entry = notes.get(&(tgid >> 6), 0)?;
    let byte = &mut entry[(tgid & 63) as usize];
    if *byte == TRACKED_LOST || *byte == value {
        return Ok(());
    }
    *byte = value;
    notes.set(tgid >> 6, entry, 0)
}

/// What the kernel's judgement takes a process to be: its `LW_PROCS` entry
/// (`entry`) where its note (`note`, `None` when it cannot be read) says
/// there may be one (the connect hook does not look an entry up under a
/// note of 0: one written while its process's removal ran), and for a
/// process whose note says its state was lost, standing
/// [`evidence::UNTRACKED`] where the entry (if any) has none.
pub fn judged_state(entry: Option<ProcState>, note: Option<u8>) -> Option<ProcState> {
    let Some(note) = note else {
        return entry;
    };
    if note == 0 {
        return None;
    }
    if note != TRACKED_LOST {
        return entry;
    }
    let mut state = entry.unwrap_or(ProcState::EMPTY);
    if state.standing.kind == evidence::NONE {
        state.standing = Evidence {
            kind: evidence::UNTRACKED,
            ..Evidence::NONE
        };
    }
    Some(state)
}

#[cfg(test)]
mod tests {
    use loopwarden_common::maps::TRACKED_MAYBE;

    use super::*;

    #[test]
    fn a_lost_process_is_judged_by_untracked_evidence_only_where_it_has_none() {
        assert_eq!(judged_state(None, Some(0)), None);
        assert_eq!(judged_state(None, Some(TRACKED_MAYBE)), None);
        let lost = judged_state(None, Some(TRACKED_LOST)).unwrap();
        assert_eq!(lost.standing.kind, evidence::UNTRACKED);
        assert_eq!(lost.recent.kind, evidence::NONE);
        let mut listening = ProcState::EMPTY;
        listening.standing.kind = evidence::LISTENING;
        assert_eq!(
            judged_state(Some(listening), Some(TRACKED_LOST)),
            Some(listening)
        );
        assert_eq!(
            judged_state(Some(listening), Some(TRACKED_MAYBE)),
            Some(listening)
        );
    }

    /// As the connect hook: an entry under a note of 0 (written while its
    /// process's removal ran) is not read; with the notes unreadable, the
    /// entry is all there is.
    #[test]
    fn an_entry_without_a_note_is_none_as_in_the_kernel() {
        let mut listening = ProcState::EMPTY;
        listening.standing.kind = evidence::LISTENING;
        assert_eq!(judged_state(Some(listening), Some(0)), None);
        assert_eq!(judged_state(Some(listening), None), Some(listening));
    }
}
