//! The built-in rules: `[browsers]`'s, and one per catalog entry.

use super::{Compiler, Constrains, describe};
use crate::policy::{Action, PolicyError, RuleInfo, fixed_name};
use crate::{
    catalog::{CatalogEntry, Class, NameMatch},
    config::Browsers,
    events::BROWSERS_RULE_NAME,
};

/// Programs that are many programs, chosen by the name they are run as (a
/// symlink's name picks the applet), or that launch others: a catalog name
/// installed as a symlink to one of them does not add the target's file
/// name, which every other applet or launched program shares (`nc ->
/// busybox` would make every busybox applet netcat, `ngrok -> snap` every
/// snap, `kubectl -> k3s` the k3s server itself, whose own connections to
/// its API server, kubelet and datastore on loopback never stop, and
/// `dbclient -> dropbearmulti` dropbear's SSH server).
const MULTI_CALL: [&str; 6] = [
    "busybox",
    "toybox",
    "coreutils",
    "snap",
    "k3s",
    "dropbearmulti",
];

/// Whether the file named `name` is a program that is many programs
/// ([`MULTI_CALL`]): a name or path that leads to it stands for all it runs.
pub(super) fn is_multi_call(name: &str) -> bool {
    MULTI_CALL.contains(&name)
}

impl Compiler<'_> {
    /// The rule of `[browsers] exe_name`/`exe`: programs judged as
    /// browsers, after the user's rules (a user's rule for them wins) and
    /// before the catalog. A rule matches when all its criteria do, so
    /// names and paths make one rule each.
    pub(super) fn browsers_rule(&mut self, browsers: &Browsers) -> Result<(), PolicyError> {
        let info = |matches: String| RuleInfo {
            name: BROWSERS_RULE_NAME.to_owned(),
            action: browsers.action,
            matches,
            browser: true,
        };
        if !browsers.exe_name.is_empty() {
            let mut parts = Vec::new();
            let names = browsers.exe_name.iter().map(|n| n.value.clone());
            describe(&mut parts, "exe_name", names);
            let constrains = Constrains {
                exe_name: true,
                ..Constrains::default()
            };
            let bit = self.add_rule(info(parts.join("")), &constrains);
            self.linked_names(BROWSERS_RULE_NAME, &browsers.exe_name);
            for name in &browsers.exe_name {
                *self
                    .policy
                    .exe_name
                    .entry(fixed_name(&name.value))
                    .or_default() |= bit;
            }
        }
        if !browsers.exe.is_empty() {
            // An exemption: from the relay verdict, and a way in on
            // `allow` ports.
            self.replaceable(BROWSERS_RULE_NAME, "exe", &browsers.exe);
            let exe = self.exes(BROWSERS_RULE_NAME, "exe", &browsers.exe, true)?;
            let mut parts = Vec::new();
            describe(&mut parts, "exe", exe.iter().map(|(_, d)| d.clone()));
            let constrains = Constrains {
                exe: true,
                ..Constrains::default()
            };
            let bit = self.add_rule(info(parts.join("")), &constrains);
            for (key, _) in exe {
                *self.policy.exe.entry(key).or_default() |= bit;
            }
        }
        Ok(())
    }

    /// A catalog entry's rule; a browser's action is `browsers`, the
    /// treatment of ports `[browsers]` does not list.
    pub(super) fn catalog_rule(&mut self, entry: &CatalogEntry, browsers: Action) {
        // Each name matches as the entry says; so does the real file name
        // of every installed copy found for it (a symlink's target).
        let mut names: Vec<(String, NameMatch)> = entry
            .names()
            .map(|(name, how)| (name.to_owned(), how))
            .collect();
        for (exe_name, how) in entry.names() {
            // Not installed or unreadable: the plain name still matches.
            for (path, real) in self.installed_copies(exe_name) {
                if is_multi_call(&real) {
                    self.policy.warnings.push(format!(
                        "{}: {} is {real}, a program that is many programs: `{real}` is not \
                         added to the rule's names (every other program it is would match), so \
                         the catalog does not know this copy of {exe_name} (the kernel sees \
                         `{real}`); the relay verdict still judges it by what it does",
                        entry.rule_name(),
                        path.display()
                    ));
                } else if !names.iter().any(|(name, _)| *name == real) {
                    names.push((real, how));
                }
            }
        }
        let mut parts = Vec::new();
        describe(
            &mut parts,
            "exe_name",
            names.iter().map(|(name, how)| how.show(name)),
        );
        let bit = self.add_rule(
            RuleInfo {
                name: entry.rule_name(),
                action: entry.action.unwrap_or(browsers),
                matches: parts.join(" and "),
                browser: entry.class == Class::Browser,
            },
            &Constrains {
                exe_name: true,
                ..Constrains::default()
            },
        );
        for (name, how) in &names {
            *self.policy.exe_name.entry(how.key(name)).or_default() |= bit;
        }
        if entry.children {
            self.policy.settings.inherited |= bit;
        }
    }
}
