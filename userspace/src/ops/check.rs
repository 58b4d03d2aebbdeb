//! `check-config`: the file parsed and compiled as a start (or a running
//! daemon's reload) would, the compiled policy and the daemon's own settings
//! shown; and what it checks beyond the policy itself: the settings the
//! daemon resolves only when it starts (`[ident] netns`) or follows at
//! each refresh (`[provenance] getsockopt_cgroups`), which compiling the
//! policy does not read.

use std::path::{Path, PathBuf};

use crate::{
    config::Config,
    daemon::DaemonError,
    kernel::btf,
    policy::{self, Resolver as _},
    resolve::HostResolver,
};

/// What `check-config` found.
pub struct Checked {
    /// Warnings, each `file:line:col: what`, to print first.
    pub warnings: Vec<String>,
    /// The summary to print (`# FILE: OK`, the compiled policy, the
    /// daemon's settings), or why the file is refused (exit code 78).
    pub outcome: Result<String, String>,
}

/// The daemon whose reload `check-config --as-daemon` checks.
pub struct Running<'a> {
    pub run_dir: &'a Path,
    pub pin_dir: &'a Path,
}

/// Checks the policy file at `path` (`None`: the embedded default) as a
/// start would (`daemon`: as that running daemon's reload would, keeping
/// the namespaces its policy keeps in the scope), its cgroups resolved
/// under `cgroup_root`. `Err` for a file that does not parse or compile,
/// with the exit code `run` gives it.
pub fn check(
    path: Option<&Path>,
    daemon: Option<Running>,
    cgroup_root: PathBuf,
) -> Result<Checked, DaemonError> {
    let as_daemon = daemon.is_some();
    let (config, name) = match path {
        None => (Config::embedded_default(), "embedded default".to_owned()),
        Some(path) => (Config::from_file(path)?, path.display().to_string()),
    };
    let refused = |refusal: String| Checked {
        warnings: Vec::new(),
        outcome: Err(refusal),
    };
    if as_daemon && let Some(refusal) = config.reload_refusal() {
        return Ok(refused(refusal));
    }
    // As the daemon would resolve it on this kernel: paths on btrfs are
    // accepted where the programs can read subvolumes.
    let btrfs = btf::kernel_offsets(Path::new(btf::VMLINUX_BTF))
        .is_ok_and(|offsets| offsets.btrfs_inode_vfs != 0);
    let resolver = HostResolver::new(cgroup_root).with_btrfs_subvolumes(btrfs);
    let compiled = if let Some(daemon) = daemon {
        // What the daemon's policy keeps in its scope (none when no daemon
        // ran with these pins, or they cannot be read).
        let kept = crate::daemon::pinned_scope(daemon.run_dir, daemon.pin_dir);
        let before = (!kept.is_empty()).then(|| policy::predecessor_scope(&config, kept));
        policy::compile_lenient(&config, &resolver, before.as_ref())
    } else {
        policy::compile(&config, &resolver)
    }?;
    let (errors, start_warnings) = start_settings(&config, &resolver);
    let mut warnings = compiled.warnings.to_vec();
    warnings.extend(start_warnings);
    // A reload never applies them (they need a restart): for the daemon's
    // check, only warnings.
    if let Some(error) = errors.first() {
        if !as_daemon {
            return Ok(Checked {
                warnings,
                outcome: Err(error.clone()),
            });
        }
        warnings.extend(errors);
    }
    if as_daemon && let Some(refusal) = compiled.reload_refusal() {
        return Ok(Checked {
            warnings,
            outcome: Err(refusal),
        });
    }
    Ok(Checked {
        warnings,
        outcome: Ok(format!(
            "# {name}: OK\n{compiled}{}",
            daemon_settings(&config)
        )),
    })
}

/// The daemon's own settings in `config` (`[provenance]`, `[ident]`,
/// `[metrics]`), which the compiled policy does not carry: the lines
/// `check-config` prints after it, aligned with it.
pub fn daemon_settings(config: &Config) -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    let p = &config.provenance;
    let cgroups = if p.getsockopt_cgroups.is_empty() {
        "every cgroup".to_owned()
    } else {
        let list: Vec<&str> = p
            .getsockopt_cgroups
            .iter()
            .map(|c| c.value.as_str())
            .collect();
        list.join(", ")
    };
    let mut out = format!(
        "provenance:  tag {}, getsockopt {} (in {cgroups}), query socket {}, {} connections \
         in LW_CONNS\n",
        on(p.tag),
        on(p.getsockopt),
        on(p.query),
        p.connections
    );
    out.push_str(&format!("ident:       {}\n", config.ident.describe()));
    out.push_str(&format!("metrics:     {}\n", config.metrics.describe()));
    out
}

/// What the daemon would meet in `config`'s start-only settings on this
/// host: errors (a start would fail) and warnings (a value matching
/// nothing yet), each `file:line:col: what`.
pub fn start_settings(config: &Config, resolver: &HostResolver) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let file = &config.source;
    if !config.ident.listen.is_empty()
        && let Some(netns) = &config.ident.netns
        && let Err(e) = resolver.netns(&netns.value)
    {
        // A file not made yet (another unit's namespace) the daemon waits
        // for: it starts without the responder, and binds it once the file
        // is there (see `IdentStartError::may_mend_itself`).
        let (list, then) = if e.kind() == std::io::ErrorKind::NotFound {
            (
                &mut warnings,
                "the daemon starts without the ident responder, and starts it once the \
                 namespace is there (tried every second)",
            )
        } else {
            (
                &mut errors,
                "the daemon binds the ident responder there at start, and would not start",
            )
        };
        list.push(format!(
            "{file}:{}: [ident] netns {} cannot be resolved: {e} ({then})",
            netns.at,
            netns.value.display()
        ));
    }
    // (A policy scoped to namespaces lists theirs, at the daemon's start.)
    if config.protect.host_addresses
        && config.protect.netns.is_empty()
        && let Ok(addrs) = crate::resolve::interface_addresses()
        && addrs.len() > loopwarden_common::MAX_MAP_ENTRIES as usize
    {
        warnings.push(format!(
            "{file}: host_addresses: this host has {} addresses, and a policy holds {}: \
             connects to those listed after the first {} are not judged",
            addrs.len(),
            loopwarden_common::MAX_MAP_ENTRIES,
            loopwarden_common::MAX_MAP_ENTRIES
        ));
    }
    if config.provenance.getsockopt {
        for cgroup in &config.provenance.getsockopt_cgroups {
            if let Err(e) = resolver.cgroup(&cgroup.value) {
                warnings.push(format!(
                    "{file}:{}: getsockopt_cgroups `{}`: {e}; no getsockopt is answered there \
                     until the cgroup exists",
                    cgroup.at, cgroup.value
                ));
            }
        }
    }
    (errors, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_settings_are_shown() {
        let off = daemon_settings(&Config::embedded_default());
        assert!(off.contains("ident:       off\n"), "{off}");
        assert!(
            off.contains("metrics:     socket on, no TCP listener\n"),
            "{off}"
        );
        assert!(off.contains("getsockopt on (in every cgroup)"), "{off}");
        let text = "[ident]\nlisten = [\"127.0.0.1:113\"]\nrelayed = \"HIDDEN-USER\"\n\
                    [provenance]\ntag = false\nconnections = 2048\n\
                    [metrics]\nsocket = false\nlisten = \"[::1]:9477\"\n";
        let on = daemon_settings(&Config::from_str_named(text, "t.toml").unwrap());
        assert!(on.contains("provenance:  tag off,"), "{on}");
        assert!(on.contains("2048 connections"), "{on}");
        assert!(
            on.contains("ident:       127.0.0.1:113; a relayed client is ERROR : HIDDEN-USER"),
            "{on}"
        );
        assert!(
            on.contains("metrics:     socket off, on [::1]:9477\n"),
            "{on}"
        );
    }
}
