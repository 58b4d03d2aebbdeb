//! The mode of the pinned policy: said in `LW_META` at each install
//! ([`say_mode`]), so that a later version that cannot read this one's
//! settings still knows it, and read back by a start that would put the
//! embedded defaults in place of a policy that enforces ([`weakening`]),
//! or a policy scoped to no namespace in place of one that judges some
//! ([`pinned_judges_somewhere`]).

use std::path::Path;

use loopwarden_common::{LAYOUT_VERSION, META_MAGIC, Meta, flags, meta_mode};
use tracing::warn;

use super::{installed::Source, status_file};
use crate::{
    kernel::pins::{PinDir, PinState},
    policy::{Mode, Netns},
};

/// Writes `mode`, the mode of the policy in force (`None`: not known), into
/// `LW_META`, where a later version that cannot read this one's settings
/// (an upgrade to another layout) finds it: a start without a policy file
/// must not put the audit-mode defaults in place of an enforcing policy.
/// A failure is warned about; that version then takes the policy as
/// enforcing.
pub(super) fn say_mode(pins: &PinDir, mode: Option<Mode>) {
    if let Err(e) = pins.update_meta(|m| m.mode = mode_word(mode)) {
        warn!("recording the mode in force in LW_META failed: {e}");
    }
}

/// `LW_META`'s word for `mode` ([`meta_mode`]).
pub(super) fn mode_word(mode: Option<Mode>) -> u32 {
    match mode {
        Some(Mode::Enforce) => meta_mode::ENFORCING,
        Some(Mode::Audit) => meta_mode::REPORTING,
        None => meta_mode::UNSAID,
    }
}

/// Why this start's config would be the defaults in place of a pinned
/// policy that enforces, if it would, as a reload refuses them: an empty
/// file (truncated, most likely), whatever `--mode` says, or no file where
/// the default path had one (removed) without `--mode` (with it the
/// defaults run in the mode it names: the operator's word, and the way to
/// run the embedded default enforcing). Then the pinned policy stays, as
/// for a file that does not parse. Pinned settings of this build's layout
/// say their mode; of another layout (an upgrade), `LW_META` says it
/// ([`say_mode`]). What cannot be read, or an older version did not say,
/// counts as enforcing.
pub(super) fn weakening(
    source: &Source,
    config: &crate::config::Config,
    mode: Option<Mode>,
    pins: &PinDir,
    state: &PinState,
) -> Option<(String, &'static str, &'static str)> {
    if state == &PinState::Absent {
        return None;
    }
    let what = match source {
        Source::Embedded if mode.is_none() => (
            format!(
                "no policy file at {} (nor --config)",
                crate::config::DEFAULT_CONFIG_PATH
            ),
            "restore the file, or give `--mode enforce` to run the defaults enforcing (a file \
             that says `mode = \"audit\"` runs them reporting only)",
        ),
        Source::File(_) if config.empty => (
            format!(
                "{} has no settings (it is empty or only comments: truncated?)",
                config.source
            ),
            "write the policy again (`mode = \"audit\"` alone runs the defaults, reporting only)",
        ),
        _ => return None,
    };
    // Pinned maps of this layout (adopted, or replaced for another shape
    // or `--replace`) say their mode in their settings; of another, in
    // `LW_META`, where a version that wrote it said it.
    let meta = pins.meta().ok().filter(|m| m.magic == META_MAGIC);
    let ours = readable_settings(state, meta.as_ref());
    let said = match meta.map(|m| m.mode) {
        Some(meta_mode::REPORTING) => Some(Mode::Audit),
        Some(meta_mode::ENFORCING) => Some(Mode::Enforce),
        _ => None,
    };
    let pinned = match ours.then(|| pinned_mode(pins)).flatten().or(said) {
        Some(Mode::Audit) => return None,
        Some(Mode::Enforce) => "which enforces",
        None => {
            "which may enforce (its mode cannot be read: pinned by a loopwarden of another \
             layout that does not say it, or by a start that did not finish)"
        }
    };
    Some((what.0, pinned, what.1))
}

/// The mode of the policy in force in the pinned maps, read from their
/// settings (`None`: not readable as this build's).
pub(super) fn pinned_mode(pins: &PinDir) -> Option<Mode> {
    let in_force = crate::kernel::inspect::in_force(pins).ok()?;
    Some(match status_file::mode_name(in_force.settings.flags) {
        "enforce" => Mode::Enforce,
        _ => Mode::Audit,
    })
}

/// Whether the policy in force in the pinned maps judges connects
/// somewhere: any but one scoped by `[protect] netns` to namespaces none of
/// which is alive now (none existed when it was installed, a first start
/// before they were made; or those it named are gone since, and may be
/// made again). A start must not put a policy that judges nothing (a name
/// mistyped since, which a reload refuses) in place of one that does; in
/// place of one that judges nothing either, it installs it and waits for
/// its namespaces. `kept` is the pinned policy's scope as its daemon kept
/// it (`scope.json`); without it, a scoped policy's namespaces count as
/// alive. Pinned maps of another layout, whose settings this build cannot
/// read, count as judging.
pub(super) fn pinned_judges_somewhere(pins: &PinDir, state: &PinState, kept: &[Netns]) -> bool {
    if *state == PinState::Absent {
        return false;
    }
    let meta = pins.meta().ok().filter(|m| m.magic == META_MAGIC);
    let Some(in_force) = readable_settings(state, meta.as_ref())
        .then(|| crate::kernel::inspect::in_force(pins).ok())
        .flatten()
    else {
        return true;
    };
    let s = in_force.settings;
    if s.flags & flags::NETNS_SCOPED == 0 {
        return true;
    }
    s.netns_inline != 0
        && (kept.is_empty()
            || kept.iter().any(|ns| {
                crate::resolve::in_scoped_netns(Path::new(&ns.path), ns.cookie, ns.inode, || Ok(()))
                    .is_ok()
            }))
}

/// Whether the pinned maps' settings are this build's to read: adopted
/// (compatible, or one map resized), or replaced for another shape or by
/// `--replace` while `meta` (`LW_META`, its magic checked) says this
/// layout.
fn readable_settings(state: &PinState, meta: Option<&Meta>) -> bool {
    match state {
        PinState::Compatible | PinState::Resized { .. } => true,
        _ => meta.is_some_and(|m| m.layout == LAYOUT_VERSION),
    }
}
