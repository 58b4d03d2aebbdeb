//! The ready line's account of what the start did.

use crate::{
    config::Config,
    kernel::{loader::Takeover, lru, pins::PinState},
    policy::CompiledPolicy,
};

/// The policy in force, for the ready line.
pub(super) fn describe_policy(policy: Option<&CompiledPolicy>, config: Option<&Config>) -> String {
    match (policy, config) {
        (Some(p), Some(c)) if p.mode != c.mode => format!(
            "{} mode (--mode; the file says {}), {} rules",
            p.mode,
            c.mode,
            p.rules.len()
        ),
        (Some(p), _) => format!("{} mode, {} rules", p.mode, p.rules.len()),
        (None, _) => "the pinned policy".to_owned(),
    }
}

/// What start-up found pinned and did about it, for the ready line.
pub(super) fn describe_start(state: &PinState, takeover: Takeover) -> String {
    // A link attached anew (a program the pinned set did not have) does
    // not hide what was done to the rest.
    let anew = match takeover {
        Takeover::Updated => "",
        Takeover::Attached => "; links attached and pinned where none was",
    };
    match state {
        PinState::Absent => "attached and pinned".to_owned(),
        PinState::Compatible => format!(
            "adopted the pinned maps; the pinned links now run this daemon's programs{anew}"
        ),
        PinState::Resized { map, wanted, .. } => format!(
            "adopted the pinned maps but {map}, resized to {}; the pinned links now run this \
             daemon's programs{anew}",
            lru::capacity(map, *wanted)
        ),
        PinState::Incompatible { why } => {
            format!("replaced the pinned programs in place and their maps ({why}){anew}")
        }
    }
}
