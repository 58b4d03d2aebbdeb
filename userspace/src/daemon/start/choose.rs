//! Which policy a start puts in force: its file's, compiled, or, when the
//! file does not read or compile and a predecessor's policy of this
//! layout is pinned, that one: compiled again from the config it was
//! compiled from ([`KeptConfig`]), or kept as it is when that config was
//! not kept.

use std::path::PathBuf;

use tracing::{error, warn};

use super::found::Found;
use crate::{
    config::{Config, ConfigError},
    daemon::{
        DaemonError, Options,
        installed::{Source, compile_policy},
        kept_config::{KeptConfig, kept_override},
        pinned_mode::{pinned_judges_somewhere, weakening},
        scope_file::ScopeFile,
    },
    kernel::{lru, pins::PinState},
    policy::{self, CompiledPolicy, Netns},
    resolve::{HostResolver, stall},
};

/// The policy a start installs, or why it installs none.
pub(super) struct Chosen {
    /// The file's config, if its policy compiled; else the pinned
    /// policy's, if it was kept.
    pub(super) config: Option<Config>,
    /// Its policy; `None`: the pinned one stays in force as it is.
    pub(super) policy: Option<CompiledPolicy>,
    /// `config` is the pinned policy's, kept (the file was refused).
    pub(super) kept_config: bool,
    /// Why the start's file is not in force, for `status` and the metrics
    /// (as a failed reload is): the pinned policy it keeps is no file's.
    pub(super) unread: Option<String>,
    /// What a reload reads.
    pub(super) reload_source: Source,
    /// The namespaces the pinned policy kept in its scope after their
    /// names went.
    pub(super) kept: Vec<Netns>,
}

/// Compiles the config `read` (see [`Found::look`]) into the policy the
/// start installs.
///
/// A policy that does not parse or compile (one past the rules' or the
/// maps' limits): enforcement already pinned by a predecessor of this
/// layout stays in force and this daemon reports for it until a reload
/// brings a good file (a resize the file asked for is not made); with
/// nothing to keep, the start fails (exit code EX_CONFIG, which the unit
/// does not restart).
pub(super) fn choose(
    opts: &Options,
    found: &mut Found,
    read: Result<Config, ConfigError>,
    resolver: &HostResolver,
) -> Result<Chosen, DaemonError> {
    let pins = &found.pins;
    // A namespace the pinned policy kept in its scope after its name went
    // stays in this one's: a start resolves the names as they are.
    let kept = ScopeFile::pinned(&opts.run_dir, pins).load();
    let weakened = read
        .as_ref()
        .ok()
        .and_then(|config| weakening(&found.source, config, opts.mode, pins, &found.state));
    // A start refused for a default file that is gone stands for that
    // file: a SIGHUP while it is still gone is refused as such.
    let reload_source = match (&weakened, &found.source) {
        (Some(_), Source::Embedded) => {
            Source::File(PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
        }
        (_, source) => source.clone(),
    };
    let compiled = read.map_err(DaemonError::from).and_then(|config| {
        if let Some((what, pinned, fix)) = weakened {
            return Err(DaemonError::WouldWeaken { what, pinned, fix });
        }
        let before = (!kept.is_empty()).then(|| policy::predecessor_scope(&config, kept.clone()));
        let policy = compile_policy(&config, resolver, opts.mode, before.as_ref(), false)?;
        if policy.reload_refusal().is_some() && pinned_judges_somewhere(pins, &found.state, &kept) {
            for warning in &policy.warnings {
                warn!("{warning}");
            }
            return Err(DaemonError::ScopedToNothing);
        }
        Ok((config, policy))
    });
    let (config, policy, unread) = match compiled {
        Ok((config, policy)) => {
            for warning in &policy.warnings {
                warn!("{warning}");
            }
            (Some(config), Some(policy), None)
        }
        Err(e) if found.adopts() => {
            // A file that asks for another capacity and does not compile
            // resizes nothing: the pinned set is adopted as it is.
            if let PinState::Resized { map, pinned, .. } = found.state {
                found.conns = lru::capacity(map, pinned);
                found.state = PinState::Compatible;
            }
            let why = crate::error_chain(&e);
            if let Some((config, policy)) = kept_policy(opts, found, &kept, resolver) {
                error!(
                    "{why}; the policy pinned by the previous daemon stays in force, compiled \
                     again from its config ({}) and re-resolved every second, until a reload \
                     (SIGHUP) reads a valid file",
                    config.source
                );
                let unread = format!("{why}; in force: {}", config.source);
                return Ok(Chosen {
                    config: Some(config),
                    policy: Some(policy),
                    kept_config: true,
                    unread: Some(unread),
                    reload_source,
                    kept,
                });
            }
            error!(
                "{why}; the policy pinned by the previous daemon stays in force as it is (not \
                 re-resolved: executables upgraded since pass a rule that names their path) \
                 until a reload (SIGHUP) reads a valid file; its [ident] responder starts then, \
                 its [metrics] listen address at a restart (metrics.sock serves meanwhile)"
            );
            (None, None, Some(why))
        }
        Err(e) => {
            if matches!(found.state, PinState::Incompatible { .. }) {
                error!(
                    "{}; the previously pinned programs keep enforcing their policy, \
                     unreported, until a daemon starts with a valid file (or `loopwarden \
                     detach`)",
                    crate::error_chain(&e)
                );
            }
            return Err(e);
        }
    };
    Ok(Chosen {
        config,
        policy,
        kept_config: false,
        unread,
        reload_source,
        kept,
    })
}

/// The pinned policy compiled again from the config its daemon kept for it
/// ([`KeptConfig`]), in the mode it ran in (this start's `--mode` only
/// makes it enforce: [`kept_override`]), with the namespaces it `kept` in
/// its scope; `None` (said why, but for no file) when there is no such
/// config, or it no longer parses or compiles, or compiles to a policy
/// scoped to no namespace where the pinned one judges some, or its compile
/// found a path the policy names on a filesystem that does not answer
/// (which a re-resolution would not install either): the pinned policy
/// then stays as it is.
fn kept_policy(
    opts: &Options,
    found: &Found,
    kept: &[Netns],
    resolver: &HostResolver,
) -> Option<(Config, CompiledPolicy)> {
    let seq = crate::kernel::inspect::in_force(&found.pins)
        .ok()?
        .settings
        .seq;
    let config = match KeptConfig::pinned(&opts.run_dir, &found.pins).load(seq)? {
        Ok(config) => config,
        Err(e) => {
            warn!(
                "the pinned policy's config does not parse again: {}",
                crate::error_chain(&DaemonError::from(e))
            );
            return None;
        }
    };
    let before = (!kept.is_empty()).then(|| policy::predecessor_scope(&config, kept.to_vec()));
    let turned_away = stall::turned_away();
    let compiled = compile_policy(
        &config,
        resolver,
        kept_override(opts.mode),
        before.as_ref(),
        false,
    );
    if stall::turned_away() > turned_away {
        warn!(
            "compiling the pinned policy's config again read nothing on a filesystem that does \
             not answer (said above); the pinned policy is kept as it is"
        );
        return None;
    }
    match compiled {
        Ok(policy)
            if policy.reload_refusal().is_some()
                && pinned_judges_somewhere(&found.pins, &found.state, kept) =>
        {
            warn!(
                "the pinned policy's config ({}) now judges no namespace; the pinned policy, \
                 which does, is kept as it is",
                config.source
            );
            None
        }
        Ok(policy) => {
            for warning in &policy.warnings {
                warn!("{warning}");
            }
            Some((config, policy))
        }
        Err(e) => {
            warn!(
                "the pinned policy's config does not compile again: {}",
                crate::error_chain(&e)
            );
            None
        }
    }
}
