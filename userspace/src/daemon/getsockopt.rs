//! Where the `cgroup/getsockopt` program answers services: nowhere, at the
//! cgroup v2 root, or in the cgroups `[provenance] getsockopt_cgroups`
//! names, as they are now. Looked at again at every refresh: a named
//! cgroup made after start, or made again by its unit's restart (a new
//! cgroup, which the old link never runs in), gets a link; a removed one's
//! link goes; a reload's change of the settings applies.

use std::{collections::BTreeMap, path::PathBuf};

use tracing::{info, warn};

use crate::{
    config::Config,
    kernel::{
        loader::{Pinned, Programs},
        pins::PinDir,
    },
    resolve::HostResolver,
};

/// The cgroups to attach in, and the named ones not found now, each with
/// why.
pub(super) struct Targets {
    pub(super) dirs: Vec<PathBuf>,
    pub(super) missing: BTreeMap<String, String>,
}

/// Where the program is attached for `config`: nowhere when `[provenance]
/// getsockopt` is off, at the root unless `getsockopt_cgroups` names
/// cgroups, else in each of those that exists.
pub(super) fn targets(config: &Config, resolver: &HostResolver) -> Targets {
    let p = &config.provenance;
    let mut targets = Targets {
        dirs: Vec::new(),
        missing: BTreeMap::new(),
    };
    if !p.getsockopt {
        return targets;
    }
    if p.getsockopt_cgroups.is_empty() {
        targets.dirs.push(resolver.cgroup_root().to_owned());
        return targets;
    }
    for cg in &p.getsockopt_cgroups {
        match resolver.cgroup_dir(&cg.value) {
            Ok(dir) => targets.dirs.push(dir),
            Err(e) => {
                let why = format!(
                    "{}:{}: getsockopt_cgroups {:?}: {e}",
                    config.source, cg.at, cg.value
                );
                targets.missing.insert(cg.value.clone(), why);
            }
        }
    }
    targets
}

/// Says the named cgroups missing now that were not at the last look.
fn say_missing(now: &BTreeMap<String, String>, before: &BTreeMap<String, String>) {
    for (name, why) in now {
        if !before.contains_key(name) {
            warn!(
                "{why}; services there cannot ask with getsockopt until it exists (looked for \
                 every second)"
            );
        }
    }
}

/// The attachments the daemon keeps following.
pub(super) struct Getsockopt {
    /// The named cgroups missing at the last look.
    missing: BTreeMap<String, String>,
    /// The last attach error, said once until it changes.
    error: Option<String>,
}

impl Getsockopt {
    /// What the start found: its targets' missing cgroups are said now.
    pub(super) fn started(targets: Option<&Targets>) -> Self {
        let missing = targets.map(|t| t.missing.clone()).unwrap_or_default();
        say_missing(&missing, &BTreeMap::new());
        Self {
            missing,
            error: None,
        }
    }

    /// Attaches where `config` (the one in force; none while a
    /// predecessor's pinned policy is, whose links stay as pinned) wants
    /// the program now and is not attached, and removes the links of
    /// cgroups gone or no longer named. Said when something changes.
    pub(super) fn follow(
        &mut self,
        programs: &mut Programs,
        pins: &PinDir,
        config: Option<&Config>,
        resolver: &HostResolver,
    ) {
        let Some(config) = config else {
            return;
        };
        let targets = targets(config, resolver);
        say_missing(&targets.missing, &self.missing);
        self.missing = targets.missing;
        let root = resolver.cgroup_root();
        match programs.attach_getsockopt(root, pins, &targets.dirs, Pinned::Keep) {
            Ok(change) => {
                if self.error.take().is_some() {
                    info!("attaching the getsockopt program works again");
                }
                for dir in change.attached {
                    info!(
                        "getsockopt: the program now answers services in {}",
                        dir.display()
                    );
                }
                for dir in change.gone {
                    info!(
                        "getsockopt: {} was removed before the program could be attached there \
                         (looked for again every second)",
                        dir.display()
                    );
                }
                for pin in change.removed {
                    info!(
                        "getsockopt: removed the link pinned at {} (its cgroup is gone or no \
                         longer named)",
                        pin.display()
                    );
                }
            }
            Err(e) => {
                let message = crate::error_chain(&e);
                if self.error.as_deref() != Some(message.as_str()) {
                    warn!(
                        "attaching the getsockopt program failed (tried again every second): {message}"
                    );
                    self.error = Some(message);
                }
            }
        }
    }
}
