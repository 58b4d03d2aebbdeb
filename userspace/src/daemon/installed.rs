//! The policy in force and where it comes from: the source (a file or the
//! embedded default) that SIGHUP reads again, compiling with the `--mode`
//! override, the host addresses installed with it, and [`Installed`], which
//! installs what a reload or a re-resolution compiled (off the event loop,
//! [`super::resolving`]), then asks the sweeper to cut what the new policy
//! would have refused.

use std::path::{Path, PathBuf};

use loopwarden_common::flags;
use tracing::{error, info, warn};

use super::{
    DaemonError,
    kept_config::KeptConfig,
    pinned_mode::say_mode,
    resolving::{Compiled, Job, KEEPING},
    scope_file::ScopeFile,
    status_file,
    sweeper::Sweeper,
};
use crate::{
    config::{Config, ConfigError, DEFAULT_CONFIG_PATH},
    events::Enricher,
    kernel::{maps::PolicyMaps, pins::PinDir},
    policy::{self, CompiledPolicy, Mode},
    resolve::HostResolver,
};

/// Where the policy comes from, so SIGHUP can read it again.
#[derive(Clone, Debug)]
pub(super) enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    pub(super) fn pick(config: Option<&Path>) -> Self {
        match config {
            Some(path) => Source::File(path.to_owned()),
            None => Self::default_at(Path::new(DEFAULT_CONFIG_PATH)),
        }
    }

    /// The file at `path` unless nothing is there (not even a link): a
    /// dangling link, a loop or a file that cannot be read is that file,
    /// whose reading then says what is wrong, never a silent fall back to
    /// the embedded default.
    fn default_at(path: &Path) -> Self {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Source::Embedded,
            _ => Source::File(path.to_owned()),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Embedded => "embedded default policy".to_owned(),
        }
    }

    pub(super) fn read(&self) -> Result<Config, ConfigError> {
        match self {
            Source::File(path) => Config::from_file(path),
            Source::Embedded => Ok(Config::embedded_default()),
        }
    }
}

/// Compiles `config` with the `--mode` override in place of its `mode`.
/// Names that do not resolve are warnings and match nothing (see
/// [`policy::compile_lenient`]): one missing executable or user never
/// leaves the rest unenforced. A `refresh` (the re-resolution each second,
/// [`policy::compile_refresh`]) takes a value past the policy's limits so
/// too. The files `previous` matched for an
/// executable path keep matching while processes still run them (an
/// upgraded binary).
pub(super) fn compile_policy(
    config: &Config,
    resolver: &HostResolver,
    mode: Option<Mode>,
    previous: Option<&CompiledPolicy>,
    refresh: bool,
) -> Result<CompiledPolicy, DaemonError> {
    // The override replaces the file's mode before compiling, not in the
    // compiled policy: the mode decides the browsers' per-port verdicts as
    // well as the rules' flag.
    let overridden;
    let config = match mode {
        Some(mode) if mode != config.mode => {
            overridden = Config {
                mode,
                ..config.clone()
            };
            &overridden
        }
        _ => config,
    };
    Ok(if refresh {
        policy::compile_refresh(config, resolver, previous)?
    } else {
        policy::compile_lenient(config, resolver, previous)?
    })
}

/// How a setting is said, by the config it is read from.
type Describe = dyn Fn(&Config) -> String;

/// A setting a reload does not apply: which, what runs, what the file says.
#[derive(Debug, PartialEq, Eq)]
struct Unapplied {
    what: &'static str,
    running: String,
    file: String,
}

/// The settings a reload does not apply (they bind sockets or size maps
/// at start) that differ between `old` (what runs) and `new` (the file).
fn needs_restart(old: &Config, new: &Config) -> Vec<Unapplied> {
    // (`[provenance] getsockopt` and its cgroups are followed at each
    // refresh: see `super::getsockopt`.) Each is told apart by what it
    // says, which holds values only: a line moved by an edit elsewhere in
    // the file is no change.
    let settings: [(&'static str, &Describe); 4] = [
        ("[provenance] query", &|c| {
            let on = if c.provenance.query { "on" } else { "off" };
            format!("query socket {on}")
        }),
        ("[provenance] connections", &|c| {
            format!("{} connections", c.provenance.connections)
        }),
        ("[ident]", &|c| c.ident.describe()),
        ("[metrics]", &|c| c.metrics.describe()),
    ];
    settings
        .into_iter()
        .filter_map(|(what, describe)| {
            let (running, file) = (describe(old), describe(new));
            (running != file).then_some(Unapplied {
                what,
                running,
                file,
            })
        })
        .collect()
}

/// The installed policy and what it was compiled from.
pub(super) struct Installed {
    pub(super) source: Source,
    /// `--config`, to pick the source again on SIGHUP.
    pub(super) config_arg: Option<PathBuf>,
    pub(super) resolver: HostResolver,
    /// The last config that compiled: the periodic refresh recompiles it, so
    /// an edit to the file takes effect only on SIGHUP. `None` while the
    /// policy pinned by a predecessor is in force as it is.
    pub(super) config: Option<Config>,
    /// `config` is the one a predecessor kept for its pinned policy
    /// ([`KeptConfig`]), in force because the start's file was refused;
    /// until a reload puts a file in force.
    pub(super) kept: bool,
    /// The config the settings read only at start came from (the
    /// defaults for a daemon that started on a bad file, keeping the
    /// pinned policy): what a reload's changes to them are told against,
    /// however many reloads since.
    pub(super) started: Config,
    pub(super) policy: Option<CompiledPolicy>,
    /// While `policy` is `None` (the start's file did not compile, and a
    /// predecessor's pinned policy is kept): a stand-in for that policy
    /// with the scope it had (`scope.json`), so the first reload that
    /// installs keeps a namespace of it whose name went.
    pub(super) predecessor: Option<CompiledPolicy>,
    /// The host addresses installed with it.
    pub(super) addrs: Vec<std::net::IpAddr>,
    pub(super) maps: PolicyMaps,
    /// Where `LW_META` says the mode in force ([`super::pinned_mode::say_mode`]).
    pub(super) pins: PinDir,
    /// The last periodic re-resolution error, reported once until it changes.
    pub(super) refresh_error: Option<String>,
    /// Cuts what a newly installed enforce-mode policy would have refused.
    pub(super) sweeper: Sweeper,
    /// Where each install's scope is kept for the next daemon.
    pub(super) scope_file: ScopeFile,
    /// Where each install's config is kept for the next daemon.
    pub(super) kept_config: KeptConfig,
    /// Whether the ident responder waits: for a config (the start's file
    /// did not parse: the first good reload starts it, as a start would
    /// have), or for its addresses (not configured yet at start: tried
    /// again every second).
    pub(super) ident_pending: bool,
    /// The last failure to start the waiting responder, said once until
    /// it changes.
    pub(super) ident_error: Option<String>,
}

/// The policy `source` holds now, compiled (with `previous`, the policy in
/// force), and its config; why it is not one to put in force. A policy
/// file that is gone (the source `was` a file, and the default path is
/// deleted or moved aside) does not give way to the embedded default, nor
/// does one without settings (truncated, most likely) to the defaults:
/// both would drop an enforcing host to audit mode. `metrics_port`, the
/// port of the metrics listener that runs (bound at start, until a
/// restart), is protected whatever the file's `[metrics]` says now.
pub(super) fn read_fresh(
    was: &Source,
    source: &Source,
    resolver: &HostResolver,
    mode: Option<Mode>,
    previous: Option<&CompiledPolicy>,
    metrics_port: Option<u16>,
) -> Result<(CompiledPolicy, Config), String> {
    if let (Source::File(was), Source::Embedded) = (was, source) {
        return Err(format!(
            "{} is gone; the embedded default replaces a policy file only at start (write the \
             file again and reload, or restart the daemon for the default)",
            was.display()
        ));
    }
    let mut config = source
        .read()
        .map_err(|e| crate::error_chain(&DaemonError::from(e)))?;
    if let Some(port) = metrics_port {
        config.protect.ports.include(port);
    }
    if let Some(refusal) = config.reload_refusal() {
        return Err(refusal);
    }
    let policy = compile_policy(&config, resolver, mode, previous, false)
        .map_err(|e| crate::error_chain(&e))?;
    if let Some(refusal) = policy.reload_refusal() {
        for warning in &policy.warnings {
            warn!("{warning}");
        }
        return Err(refusal);
    }
    Ok((policy, config))
}

impl Installed {
    /// SIGHUP: the source is picked again (a config file created since
    /// start is read) and read, off the event loop ([`Compiles`]).
    pub(super) fn reload_job(&self) -> Job {
        Job::Reload {
            config_arg: self.config_arg.clone(),
            was: self.source.clone(),
            previous: self.policy.clone().or_else(|| self.predecessor.clone()),
            metrics_port: self.started.metrics.listen.as_ref().map(|l| l.value.port()),
        }
    }

    /// The reload of `source` came to `outcome`. A bad config is reported
    /// and the running policy stays, with its source and config: the
    /// periodic refresh goes on re-resolving what is in force, not what was
    /// refused.
    pub(super) fn reloaded(
        &mut self,
        source: Source,
        outcome: Result<Compiled, String>,
        enricher: &mut Enricher,
    ) {
        match outcome {
            Ok(Compiled {
                policy,
                config,
                addrs,
            }) => {
                if self.policy.as_ref() == Some(&policy) {
                    info!("policy unchanged");
                }
                // A file's mode that `--mode` overrides is said at each
                // reload, as at the start: the edit did not take.
                let overridden = (policy.mode != config.mode).then_some((policy.mode, config.mode));
                let outcome = self.install(policy, &config, addrs, enricher, Sweep::Anew);
                match &outcome {
                    Ok(_) => {
                        // Only from a file now in force: a responder a
                        // refused file configured would be half a reload.
                        self.start_pending_ident(&config);
                        if let Some((running, file)) = overridden {
                            warn!(
                                "the file says mode {file}, but --mode {running} overrides it: \
                                 the policy runs in {running} mode (restart without --mode for \
                                 the file's)"
                            );
                        }
                        for Unapplied {
                            what,
                            running,
                            file,
                        } in needs_restart(&self.started, &config)
                        {
                            warn!(
                                "{what} changed: that takes effect when the daemon restarts \
                                 (running: {running}; the file: {file})"
                            );
                        }
                        // Nothing installed (the file's policy is the one
                        // in force, as it resolves now), yet the file is
                        // the config in force: what a restart on a refused
                        // file compiles again.
                        if outcome == Ok(false)
                            && let (Some(policy), Ok((_, settings))) =
                                (&self.policy, self.maps.in_force())
                        {
                            self.kept_config.save(settings.seq, policy.mode, &config);
                        }
                        self.source = source;
                        self.config = Some(config);
                        self.kept = false;
                    }
                    Err(e) => error!("{e}, keeping the running one"),
                }
                // An explicit reload sweeps again even when nothing changed:
                // what kept the last sweep from cutting (socket diagnostics
                // not loaded, say) may have been fixed since.
                if outcome == Ok(false)
                    && let Some(policy) = &self.policy
                {
                    self.sweeper.request(policy, &self.addrs);
                }
                status_file::record(self, Some(outcome.map(drop)));
            }
            Err(e) => {
                error!("reload failed, keeping the running policy: {e}");
                status_file::record(self, Some(Err(e)));
            }
        }
    }

    /// Periodic: the same config resolved again (off the event loop),
    /// picking up executables installed, cgroups created and host
    /// addresses changed since; `None` while the policy pinned by a
    /// predecessor is in force.
    pub(super) fn refresh_job(&self) -> Option<Job> {
        Some(Job::Refresh {
            config: Box::new(self.config.clone()?),
            previous: self.policy.clone(),
            kept: self.kept,
        })
    }

    /// The re-resolution came to `outcome`: installed if it differs.
    pub(super) fn refreshed(&mut self, outcome: Result<Compiled, String>, enricher: &mut Enricher) {
        let outcome = outcome.and_then(|c| {
            self.install(c.policy, &c.config, c.addrs, enricher, Sweep::After)
                .map_err(|e| format!("{e} at a re-resolution, {KEEPING}"))
        });
        match outcome {
            Ok(installed) => {
                if self.refresh_error.take().is_some() {
                    info!("re-resolving the policy works again");
                    status_file::refresh(None);
                }
                // A re-resolution is no reload: the status file's last
                // reload stays the operator's.
                if installed {
                    status_file::record(self, None);
                }
            }
            // Said once, not at every refresh, until it changes or works.
            Err(message) => {
                if self.refresh_error.as_deref() != Some(message.as_str()) {
                    warn!("{message}");
                    status_file::refresh(Some(message.clone()));
                    self.refresh_error = Some(message);
                }
            }
        }
        if let Some(policy) = &self.policy {
            self.scope_file.retry(&policy.netns);
            if let (Some(config), Ok((_, settings))) = (&self.config, self.maps.in_force()) {
                self.kept_config.retry(settings.seq, policy.mode, config);
            }
        }
        if self.ident_pending
            && let Some(config) = self.config.clone()
        {
            self.start_pending_ident(&config);
        }
    }

    /// Starts the ident responder `config` asks for, if the start could
    /// not (its file did not parse, or its addresses were not there yet):
    /// what a restart would do, so a host whose services authenticate by
    /// ident is not left without it until one. One that cannot be bound
    /// is said (once, until the reason changes), and tried again at the
    /// next refresh and reload.
    fn start_pending_ident(&mut self, config: &Config) {
        if !self.ident_pending {
            return;
        }
        if !config.ident.listen.is_empty() {
            let maps_dir = self.pins.maps_dir();
            let started = crate::provenance::ident::bind(config).and_then(|b| b.serve(&maps_dir));
            match started {
                Ok(serving) => info!("ident (RFC 1413): answering on {serving}"),
                Err(e) => {
                    let message = crate::error_chain(&e);
                    if self.ident_error.as_deref() != Some(message.as_str()) {
                        error!(
                            "starting the ident responder failed: {message}; tried again every \
                             second"
                        );
                        self.ident_error = Some(message);
                    }
                    return;
                }
            }
        }
        self.ident_pending = false;
        self.ident_error = None;
        // Told against what now runs, as a restart would be.
        self.started.ident = config.ident.clone();
    }

    /// Installs `fresh`, compiled from `config`, with host addresses `addrs`
    /// (`None`: they could not be listed, and those in force stay) unless
    /// they are what is in force already; says whether it installed, or why
    /// it could not (for the caller to log).
    pub(super) fn install(
        &mut self,
        fresh: CompiledPolicy,
        config: &Config,
        addrs: Option<Vec<std::net::IpAddr>>,
        enricher: &mut Enricher,
        sweep: Sweep,
    ) -> Result<bool, String> {
        let addrs = addrs.unwrap_or_else(|| self.addrs.clone());
        let current = self.policy.as_ref();
        if current == Some(&fresh) && self.addrs == addrs {
            return Ok(false);
        }
        for warning in fresh
            .warnings
            .iter()
            .filter(|w| !current.is_some_and(|p| p.warnings.contains(w)))
        {
            warn!("{warning}");
        }
        // Said enforcing before a policy that enforces is, and said
        // reporting only once it is in force: `LW_META` never says less
        // than the policy in force does.
        if fresh.mode == Mode::Enforce {
            say_mode(&self.pins, Some(Mode::Enforce));
        }
        let seq = match self.maps.install(&fresh, &addrs) {
            Ok(seq) => seq,
            // With its causes: an update's errno is in its source. Said
            // by the caller.
            Err(e) => {
                let e = crate::error_chain(&e);
                return Err(format!("installing the new policy failed: {e}"));
            }
        };
        say_mode(&self.pins, Some(fresh.mode));
        match sweep {
            // Only the host addresses changed (a pod's came or went):
            // what the sweep under way cuts, the policy in force cuts too,
            // but for connections to an address gone.
            Sweep::After if current == Some(&fresh) => {
                self.sweeper.request_after(&fresh, &addrs);
            }
            // At once: a sweep under way, judging by the policy before,
            // stops before its next cut (one between its check and its cut
            // still goes, as it would a moment earlier).
            _ => self.sweeper.request(&fresh, &addrs),
        }
        let line = installed_line(seq, current, &fresh);
        if weakens(current, &fresh) {
            warn!("{line}");
        } else {
            info!("{line}");
        }
        enricher.set_rules(seq, fresh.named_rules());
        self.scope_file.save(&fresh.netns);
        self.kept_config.save(seq, fresh.mode, config);
        self.policy = Some(fresh);
        self.addrs = addrs;
        Ok(true)
    }
}

/// How an install asks for its sweep.
pub(super) enum Sweep {
    /// Stopping one under way (a reload: another file, another mode).
    Anew,
    /// After one under way, where only the host addresses changed (a
    /// re-resolution of the same file); else as [`Sweep::Anew`].
    After,
}

/// What a policy enforces, in words: its mode and its relay verdict.
fn stance(policy: &CompiledPolicy) -> String {
    let relay = match (
        policy.settings.flags & flags::RELAY != 0,
        policy.settings.flags & flags::RELAY_DENY != 0,
    ) {
        (false, _) => "off",
        (true, false) => "audit",
        (true, true) => "deny",
    };
    format!("{} mode, relay verdict {relay}", policy.mode)
}

/// Whether `after` refuses less than `before` did: enforce mode given up,
/// or a relay verdict that denied no longer denying.
fn weakens(before: Option<&CompiledPolicy>, after: &CompiledPolicy) -> bool {
    let Some(before) = before else {
        return false;
    };
    let denies = |p: &CompiledPolicy| p.settings.flags & flags::RELAY_DENY != 0;
    (before.mode == Mode::Enforce && after.mode != Mode::Enforce)
        || (before.mode == Mode::Enforce && denies(before) && !denies(after))
}

/// The line an install is said with: its number, rules and stance, and
/// the stance before when that changed (a reload that turns enforcement
/// off must not read like any other).
fn installed_line(seq: u64, before: Option<&CompiledPolicy>, after: &CompiledPolicy) -> String {
    let now = stance(after);
    let mut line = format!(
        "policy #{seq} installed: {} rules, {now}",
        after.rules.len()
    );
    if let Some(was) = before.map(stance).filter(|was| *was != now) {
        line.push_str(&format!(" (was {was})"));
        if weakens(before, after) {
            line.push_str(": refusals it made are now only reported");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use loopwarden_common::verdict;

    use super::*;

    /// Only a default path with nothing there picks the embedded default:
    /// a dangling link is the file, whose reading fails and says why.
    #[test]
    fn a_dangling_link_at_the_default_path_is_no_missing_file() {
        let dir = std::env::temp_dir().join(format!("lw-default-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (missing, link) = (dir.join("missing.toml"), dir.join("link.toml"));
        std::os::unix::fs::symlink(dir.join("gone.toml"), &link).unwrap();
        assert!(matches!(Source::default_at(&missing), Source::Embedded));
        let picked = Source::default_at(&link);
        assert!(
            matches!(&picked, Source::File(p) if *p == link),
            "{picked:?}"
        );
        assert!(picked.read().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The metrics listener a daemon started with stays protected after a
    /// reload of a file that no longer names it (or names another port):
    /// it is served until a restart.
    #[test]
    fn a_reload_keeps_the_running_metrics_port_protected() {
        let dir = std::env::temp_dir().join(format!("lw-metrics-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("loopwarden.toml");
        std::fs::write(
            &path,
            "catalog = false\n[protect]\nports = [8080]\n[metrics]\nlisten = \"127.0.0.1:9478\"\n",
        )
        .unwrap();
        let resolver = HostResolver::new(PathBuf::from("/nonexistent"));
        let source = Source::File(path);
        let reload = |running| read_fresh(&source, &source, &resolver, None, None, running);
        let (policy, _) = reload(Some(9477)).unwrap();
        for port in [8080, 9477, 9478] {
            assert!(policy.ports.contains(port), "{port}");
        }
        // The control: without a running listener, only the file's ports.
        let (policy, _) = reload(None).unwrap();
        assert!(!policy.ports.contains(9477));
        assert!(policy.ports.contains(9478));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_install_says_its_stance_and_a_weakening_one_says_what_was() {
        let resolver = HostResolver::new(PathBuf::from("/nonexistent"));
        let policy = |text: &str| {
            let config = Config::from_str_named(text, "t.toml").unwrap();
            compile_policy(&config, &resolver, None, None, false).unwrap()
        };
        let enforce = policy("mode = \"enforce\"\ncatalog = false\n[relay]\naction = \"deny\"\n");
        let audit = policy("mode = \"audit\"\ncatalog = false\n[relay]\naction = \"deny\"\n");
        let relay_audit =
            policy("mode = \"enforce\"\ncatalog = false\n[relay]\naction = \"audit\"\n");
        assert_eq!(
            installed_line(2, None, &enforce),
            "policy #2 installed: 0 rules, enforce mode, relay verdict deny"
        );
        assert!(!weakens(None, &audit));
        assert!(weakens(Some(&enforce), &audit));
        assert!(weakens(Some(&enforce), &relay_audit));
        assert!(!weakens(Some(&audit), &enforce));
        assert!(!weakens(Some(&enforce), &enforce));
        assert_eq!(
            installed_line(4, Some(&enforce), &audit),
            "policy #4 installed: 0 rules, audit mode, relay verdict deny (was enforce mode, \
             relay verdict deny): refusals it made are now only reported"
        );
        assert_eq!(
            installed_line(6, Some(&audit), &enforce),
            "policy #6 installed: 0 rules, enforce mode, relay verdict deny (was audit mode, \
             relay verdict deny)"
        );
    }

    /// `--mode` decides what the file's `mode` would have: the rules' flag
    /// and the verdict a browser gets at a port `[browsers]` denies.
    #[test]
    fn the_mode_override_decides_the_browsers_verdicts_too() {
        let resolver = HostResolver::new(PathBuf::from("/nonexistent"));
        for (file, flag, enforce, denied) in [
            ("enforce", Some(Mode::Audit), false, verdict::WOULD_DENY),
            ("audit", Some(Mode::Enforce), true, verdict::DENY),
            ("enforce", None, true, verdict::DENY),
            ("audit", None, false, verdict::WOULD_DENY),
        ] {
            let text = format!(
                "mode = \"{file}\"\ncatalog = false\n[protect]\nports = [11434]\n\
                 [browsers]\ndeny = [11434]\n"
            );
            let config = Config::from_str_named(&text, "t.toml").unwrap();
            let policy = compile_policy(&config, &resolver, flag, None, false).unwrap();
            let case = format!("file {file}, --mode {flag:?}");
            assert_eq!(
                policy.settings.flags & flags::ENFORCE != 0,
                enforce,
                "{case}"
            );
            assert_eq!(policy.browsers.verdict(11434), denied, "{case}");
            assert_eq!(policy.mode == Mode::Enforce, enforce, "{case}");
        }
    }

    /// What a reload cannot apply is named by value: the same settings on
    /// other lines are no change.
    #[test]
    fn settings_read_at_start_are_compared_by_value() {
        let parse = |text: &str| Config::from_str_named(text, "t.toml").unwrap();
        let tables =
            "[ident]\nlisten = \"127.0.0.1:113\"\n[metrics]\nlisten = \"127.0.0.1:9477\"\n";
        let old = parse(tables);
        let moved = parse(&format!("# a comment\n\n{tables}"));
        assert!(needs_restart(&old, &moved).is_empty());
        let other = parse(&tables.replace("9477", "9478").replace(":113", ":1113"));
        let whats = |changed: Vec<Unapplied>| changed.iter().map(|c| c.what).collect::<Vec<_>>();
        let changed = needs_restart(&old, &other);
        assert_eq!(whats(needs_restart(&old, &other)), ["[ident]", "[metrics]"]);
        assert_eq!(changed[1].running, "socket on, on 127.0.0.1:9477");
        assert_eq!(changed[1].file, "socket on, on 127.0.0.1:9478");
        assert!(
            changed[0].running.starts_with("127.0.0.1:113;"),
            "{changed:?}"
        );
        assert!(
            changed[0].file.starts_with("127.0.0.1:1113;"),
            "{changed:?}"
        );
        // A daemon started on a bad file compares with the defaults.
        let default = Config::embedded_default();
        assert_eq!(
            whats(needs_restart(&default, &old)),
            ["[ident]", "[metrics]"]
        );
        assert!(needs_restart(&default, &parse("mode = \"audit\"\n")).is_empty());
    }
}
