//! Compiling a validated config into map contents: each rule gets a bit,
//! each value of each criterion the bits of the rules accepting it; names
//! are resolved through a [`Resolver`], leniently or strictly.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use loopwarden_common::{
    ExeKey, MAX_CGROUP_LEVEL, MAX_CGROUP_LEVELS_USED, MAX_RULES, PORT_WORDS, Settings, flags,
    script_hash,
};

use super::{
    Action, BindGuard, BrowserPorts, CgroupId, CompiledPolicy, EgressGuard, EgressRuleInfo,
    ExeFile, ExeIdentities, LiveExes, Mode, Netns, PolicyError, Ports, Resolver, RuleInfo, egress,
    fixed_name, summary::ExeId,
};
use crate::{
    catalog::{CATALOG, CatalogEntry, Class, NameMatch},
    config::{Bind, Browsers, Config, Criteria, Egress, Located, PortSet, Rule},
    error_chain,
    events::{BIND_RULE_NAME, BROWSERS_RULE_NAME, EGRESS_PREFIX},
};

pub(super) fn compile_with(
    config: &Config,
    resolver: &dyn Resolver,
    lenient: bool,
    previous: Option<&BTreeMap<PathBuf, ExeIdentities>>,
) -> Result<CompiledPolicy, PolicyError> {
    let catalog: &[CatalogEntry] = if config.catalog { &CATALOG } else { &[] };
    let builtin = catalog.len() + config.browsers.rules();
    if config.rules.len() + builtin > MAX_RULES {
        return Err(PolicyError::TooManyRules {
            file: config.source.clone(),
            user: config.rules.len(),
            catalog: builtin,
            max: MAX_RULES,
        });
    }

    let mut compiler = Compiler {
        file: &config.source,
        resolver,
        lenient,
        previous,
        live: None,
        policy: CompiledPolicy {
            mode: config.mode,
            settings: settings(config),
            ports: ports(&config.protect.ports),
            netns: Vec::with_capacity(config.protect.netns.len()),
            host_addresses: config.protect.host_addresses,
            exe: BTreeMap::new(),
            exe_name: BTreeMap::new(),
            comm: BTreeMap::new(),
            uid: BTreeMap::new(),
            cgroup: BTreeMap::new(),
            ancestor: BTreeMap::new(),
            script: BTreeMap::new(),
            exe_paths: BTreeMap::new(),
            rules: Vec::with_capacity(config.rules.len() + catalog.len()),
            bind: BindGuard::default(),
            browsers: BrowserPorts::compile(&config.browsers, config.mode),
            egress: EgressGuard::default(),
            warnings: config.warnings.clone(),
        },
    };
    compiler.netns(&config.protect.netns)?;
    compiler.bind(&config.bind)?;
    compiler.egress(&config.egress)?;
    for rule in &config.rules {
        compiler.user_rule(rule)?;
    }
    compiler.browsers_rule(&config.browsers)?;
    for entry in catalog {
        compiler.catalog_rule(entry, config.browsers.action);
    }
    Ok(compiler.policy)
}

/// The settings that follow from the config alone; rule masks come later.
fn settings(config: &Config) -> Settings {
    let mut flags = flags::ENABLED;
    let set = |on: bool, flag: u32| if on { flag } else { 0 };
    flags |= set(config.mode == Mode::Enforce, flags::ENFORCE);
    flags |= set(config.protect.ports == PortSet::All, flags::ALL_PORTS);
    flags |= set(!config.protect.netns.is_empty(), flags::NETNS_SCOPED);
    flags |= set(config.protect.host_addresses, flags::HOST_ADDRS);
    flags |= set(config.log_allowed, flags::LOG_ALLOWED);
    flags |= set(config.relay.action != Action::Allow, flags::RELAY);
    flags |= set(config.relay.action == Action::Deny, flags::RELAY_DENY);
    flags |= set(config.provenance.tag, flags::PROVENANCE);
    Settings {
        flags,
        deny_errno: config.deny_errno.errno(),
        relay_window_ns: u64::from(config.relay.window_ms) * 1_000_000,
        ..Settings::default()
    }
}

pub(super) fn ports(set: &PortSet) -> Ports {
    let PortSet::Ranges(ranges) = set else {
        return Ports::All;
    };
    // In order, skipping ports already set, each port is set at most once
    // however often the file repeats it: thousands of "1-65535" cost what
    // one does.
    let mut ranges: Vec<(u16, u16)> = ranges.iter().map(|r| (r.first, r.last)).collect();
    ranges.sort_unstable();
    let mut words = Box::new([0u64; PORT_WORDS as usize]);
    let mut unset = 0u32;
    for (first, last) in ranges {
        for port in u32::from(first).max(unset)..=u32::from(last) {
            words[(port >> 6) as usize] |= 1 << (port & 63);
        }
        unset = unset.max(u32::from(last) + 1);
    }
    Ports::Some(words)
}

/// Which attributes a rule constrains; the others get its wildcard bit.
#[derive(Default)]
struct Constrains {
    exe: bool,
    exe_name: bool,
    comm: bool,
    uid: bool,
    cgroup: bool,
    ancestor: bool,
    script: bool,
}

/// Builds a [`CompiledPolicy`] one rule at a time.
struct Compiler<'a> {
    file: &'a str,
    resolver: &'a dyn Resolver,
    /// Unresolvable values warn instead of failing (see [`compile_lenient`]).
    lenient: bool,
    /// What the executable paths stood for in the policy this one replaces.
    previous: Option<&'a BTreeMap<PathBuf, ExeIdentities>>,
    /// The running executables, looked up at most once per compile.
    live: Option<LiveExes>,
    policy: CompiledPolicy,
}

impl Compiler<'_> {
    /// In lenient mode, records `err` as a warning and returns `None`;
    /// otherwise returns it.
    fn tolerate<T>(&mut self, result: Result<T, PolicyError>) -> Result<Option<T>, PolicyError> {
        self.tolerate_as(result, "this value matches nothing until it resolves again")
    }

    /// [`Compiler::tolerate`], saying `meanwhile` about the value.
    fn tolerate_as<T>(
        &mut self,
        result: Result<T, PolicyError>,
        meanwhile: &str,
    ) -> Result<Option<T>, PolicyError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.lenient => {
                self.policy
                    .warnings
                    .push(format!("{}; {meanwhile}", error_chain(&e)));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The running executables: one walk of `/proc`, the first time only.
    fn live(&mut self) -> &LiveExes {
        let resolver = self.resolver;
        self.live.get_or_insert_with(|| resolver.live_exes())
    }

    fn netns(&mut self, paths: &[Located<PathBuf>]) -> Result<(), PolicyError> {
        for path in paths {
            let cookie = self
                .resolver
                .netns(&path.value)
                .map_err(|source| PolicyError::Netns {
                    file: self.file.to_owned(),
                    at: path.at,
                    path: path.value.clone(),
                    source,
                });
            let Some(cookie) = self.tolerate(cookie)? else {
                continue;
            };
            self.policy.netns.push(Netns {
                path: path.value.display().to_string(),
                cookie,
            });
        }
        Ok(())
    }

    /// Registers the next rule and returns its bit.
    fn add_rule(&mut self, info: RuleInfo, constrains: &Constrains) -> u64 {
        let bit = 1u64 << self.policy.rules.len();
        let s = &mut self.policy.settings;
        s.active |= bit;
        match info.action {
            // A browser's verdict is the port's (`LW_BROWSER_PORTS`), and
            // it alone: a browser is network-facing by nature (every page
            // it loads comes from the network), so the relay verdict is
            // not for it.
            _ if info.browser => {
                s.browser |= bit;
                s.exempt |= bit;
            }
            Action::Deny => s.deny |= bit,
            Action::Audit => s.audit |= bit,
            Action::Allow => {}
        }
        let wild = |constrained: bool| if constrained { 0 } else { bit };
        s.wild_exe |= wild(constrains.exe);
        s.wild_exe_name |= wild(constrains.exe_name);
        s.wild_comm |= wild(constrains.comm);
        s.wild_uid |= wild(constrains.uid);
        s.wild_cgroup |= wild(constrains.cgroup);
        s.wild_ancestor |= wild(constrains.ancestor);
        s.wild_script |= wild(constrains.script);
        if constrains.script {
            s.flags |= flags::SCRIPTS;
        }
        if constrains.ancestor {
            s.flags |= flags::ANCESTORS;
        }
        self.policy.rules.push(info);
        bit
    }

    fn user_rule(&mut self, rule: &Rule) -> Result<(), PolicyError> {
        let c = &rule.criteria;
        let constrains = Constrains {
            exe: !c.exe.is_empty(),
            exe_name: !c.exe_name.is_empty(),
            comm: !c.comm.is_empty(),
            uid: !c.uid.is_empty() || !c.user.is_empty(),
            cgroup: !c.cgroup.is_empty(),
            ancestor: !c.parent_exe.is_empty() || !c.ancestor_exe.is_empty(),
            script: !c.script.is_empty(),
        };

        // Resolve everything first, so a failure leaves no half-added rule.
        let exe = self.exes(&rule.name, "exe", &c.exe)?;
        let parent = self.exes(&rule.name, "parent_exe", &c.parent_exe)?;
        let ancestor = self.exes(&rule.name, "ancestor_exe", &c.ancestor_exe)?;
        let uids = self.uids(&rule.name, c)?;
        let cgroups = self.cgroups(&rule.name, &c.cgroup, self.policy.settings.cgroup_levels)?;

        let mut parts = Vec::new();
        describe(&mut parts, "exe", exe.iter().map(|(_, d)| d.clone()));
        describe(
            &mut parts,
            "exe_name",
            c.exe_name.iter().map(|n| n.value.clone()),
        );
        describe(&mut parts, "comm", c.comm.iter().map(|n| n.value.clone()));
        describe(&mut parts, "uid", uids.iter().map(|(_, d)| d.clone()));
        describe(&mut parts, "cgroup", cgroups.iter().map(|(_, d)| d.clone()));
        let mut lineage = Vec::new();
        describe(
            &mut lineage,
            "parent_exe",
            parent.iter().map(|(_, d)| d.clone()),
        );
        describe(
            &mut lineage,
            "ancestor_exe",
            ancestor.iter().map(|(_, d)| d.clone()),
        );
        match lineage.len() {
            0 => {}
            1 => parts.append(&mut lineage),
            _ => parts.push(format!("({})", lineage.join(" or "))),
        }
        describe(
            &mut parts,
            "script",
            c.script.iter().map(|n| n.value.clone()),
        );

        let bit = self.add_rule(
            RuleInfo {
                name: rule.name.clone(),
                action: rule.action,
                matches: parts.join(" and "),
                browser: false,
            },
            &constrains,
        );
        let p = &mut self.policy;
        // A user's allow rule is an exemption from the relay verdict too.
        if rule.action == Action::Allow {
            p.settings.exempt |= bit;
        }
        for script in &c.script {
            *p.script
                .entry(script_hash(script.value.as_bytes()))
                .or_default() |= bit;
        }
        for (key, _) in exe {
            *p.exe.entry(key).or_default() |= bit;
        }
        for name in &c.exe_name {
            *p.exe_name.entry(fixed_name(&name.value)).or_default() |= bit;
        }
        for comm in &c.comm {
            *p.comm.entry(fixed_name(&comm.value)).or_default() |= bit;
        }
        for (uid, _) in uids {
            *p.uid.entry(uid).or_default() |= bit;
        }
        for id in cgroups.into_iter().filter_map(|(id, _)| id) {
            *p.cgroup.entry(id.id).or_default() |= bit;
            p.settings.cgroup_levels |= 1 << id.level;
        }
        for (key, _) in parent {
            p.ancestor.entry(key).or_default().parent |= bit;
        }
        for (key, _) in ancestor {
            p.ancestor.entry(key).or_default().ancestor |= bit;
        }
        Ok(())
    }

    /// Resolves the cgroups of rule `rule`, each with a description; the
    /// levels they add to `levels` (those already named) stay within
    /// [`MAX_CGROUP_LEVELS_USED`]. A cgroup not found only warns.
    fn cgroups(
        &mut self,
        rule: &str,
        cgroups: &[Located<String>],
        levels: u32,
    ) -> Result<Vec<(Option<CgroupId>, String)>, PolicyError> {
        let mut resolved = Vec::with_capacity(cgroups.len());
        let mut levels = levels;
        for cgroup in cgroups {
            match self.resolver.cgroup(&cgroup.value) {
                Ok(id)
                    if id.level as usize <= MAX_CGROUP_LEVEL
                        && (levels | 1 << id.level).count_ones() as usize
                            > MAX_CGROUP_LEVELS_USED =>
                {
                    let err = Err(PolicyError::CgroupLevels {
                        file: self.file.to_owned(),
                        at: cgroup.at,
                        rule: rule.to_owned(),
                        cgroup: cgroup.value.clone(),
                        level: id.level,
                        max: MAX_CGROUP_LEVELS_USED,
                    });
                    self.tolerate::<()>(err)?;
                    resolved.push((
                        None,
                        format!("{} (level {} over the limit)", cgroup.value, id.level),
                    ));
                }
                Ok(id) if id.level as usize > MAX_CGROUP_LEVEL => {
                    return Err(PolicyError::CgroupTooDeep {
                        file: self.file.to_owned(),
                        at: cgroup.at,
                        rule: rule.to_owned(),
                        cgroup: cgroup.value.clone(),
                        level: id.level,
                        max: MAX_CGROUP_LEVEL,
                    });
                }
                Ok(id) => {
                    levels |= 1 << id.level;
                    resolved.push((
                        Some(id),
                        format!("{} (id {}, level {})", cgroup.value, id.id, id.level),
                    ));
                }
                Err(e) => {
                    self.policy.warnings.push(format!(
                        "{}:{}: rule `{}`: cgroup `{}` not found ({e}); the rule is loaded, but \
                         this value matches nothing until the cgroup exists (the daemon looks again every second)",
                        self.file, cgroup.at, rule, cgroup.value
                    ));
                    resolved.push((None, format!("{} (not found)", cgroup.value)));
                }
            }
        }
        Ok(resolved)
    }

    /// The uids of a rule's `uid` and `user` criteria, each with a
    /// description.
    fn uids(&mut self, rule: &str, c: &Criteria) -> Result<Vec<(u32, String)>, PolicyError> {
        let mut uids: Vec<(u32, String)> = c
            .uid
            .iter()
            .map(|uid| (uid.value, uid.value.to_string()))
            .collect();
        for user in &c.user {
            if let Some(uid) = self.user(rule, user)? {
                uids.push((uid, format!("{uid} (user {})", user.value)));
            }
        }
        Ok(uids)
    }

    /// The egress guard: each `[[egress]]` rule gets a bit; its subjects go
    /// into the `LW_EGRESS_*` maps, its destinations (with the metadata
    /// addresses) into the prefix masks of `LW_EGRESS_DST`.
    fn egress(&mut self, rules: &[Egress]) -> Result<(), PolicyError> {
        if rules.is_empty() {
            return Ok(());
        }
        let mut guard = EgressGuard::default();
        let mut prefixes = Vec::with_capacity(rules.len());
        let mut levels = 0u32;
        for (r, rule) in rules.iter().enumerate() {
            let label = format!("{EGRESS_PREFIX}{}", rule.name);
            let c = &rule.criteria;
            let exe = self.exes(&label, "exe", &c.exe)?;
            let uids = self.uids(&label, c)?;
            let cgroups = self.cgroups(&label, &c.cgroup, levels)?;
            let bit = 1u64 << r;
            let s = &mut self.policy.settings;
            s.egress_active |= bit;
            if rule.action == Action::Deny {
                s.egress_deny |= bit;
            }
            let wild = |values: usize| if values == 0 { bit } else { 0 };
            s.egress_wild_uid |= wild(c.uid.len() + c.user.len());
            s.egress_wild_exe |= wild(c.exe.len());
            s.egress_wild_cgroup |= wild(c.cgroup.len());
            let mut who = Vec::new();
            describe(&mut who, "exe", exe.iter().map(|(_, d)| d.clone()));
            describe(&mut who, "uid", uids.iter().map(|(_, d)| d.clone()));
            describe(&mut who, "cgroup", cgroups.iter().map(|(_, d)| d.clone()));
            for (key, _) in exe {
                *guard.exe.entry(key).or_default() |= bit;
            }
            for (uid, _) in uids {
                *guard.uid.entry(uid).or_default() |= bit;
            }
            for id in cgroups.into_iter().filter_map(|(id, _)| id) {
                *guard.cgroup.entry(id.id).or_default() |= bit;
                levels |= 1 << id.level;
            }
            let own = egress::RulePrefixes {
                deny: egress::metadata()
                    .chain(rule.deny.iter().flat_map(|d| d.value.prefixes()))
                    .collect(),
                allow: rule.allow.iter().map(|a| egress::mapped(a.value)).collect(),
            };
            let distinct: std::collections::BTreeSet<_> =
                own.deny.iter().chain(&own.allow).collect();
            guard.rules.push(EgressRuleInfo {
                name: rule.name.clone(),
                action: rule.action,
                subjects: who.join(" and "),
                deny: rule.deny.iter().map(|d| d.value.to_string()).collect(),
                allow: rule.allow.iter().map(|a| a.value.to_string()).collect(),
                prefixes: distinct.len(),
            });
            prefixes.push(own);
        }
        guard.prefixes = egress::blocking_masks(&prefixes);
        self.policy.settings.egress_cgroup_levels = levels;
        self.policy.settings.flags |= flags::EGRESS;
        self.policy.egress = guard;
        Ok(())
    }

    /// Resolves a user name of rule `rule` to its uid (`None`: it does
    /// not resolve, tolerated).
    fn user(&mut self, rule: &str, user: &Located<String>) -> Result<Option<u32>, PolicyError> {
        let uid = match self.resolver.user(&user.value) {
            Ok(Some(uid)) => Ok(uid),
            Ok(None) => Err(PolicyError::UnknownUser {
                file: self.file.to_owned(),
                at: user.at,
                rule: rule.to_owned(),
                user: user.value.clone(),
            }),
            Err(source) => Err(PolicyError::UserLookup {
                file: self.file.to_owned(),
                at: user.at,
                rule: rule.to_owned(),
                user: user.value.clone(),
                source,
            }),
        };
        self.tolerate(uid)
    }

    /// The bind guard: its ports and exemptions (resolved like a rule's,
    /// errors naming the rule [`BIND_RULE_NAME`]).
    fn bind(&mut self, bind: &Bind) -> Result<(), PolicyError> {
        if bind.loopback_only.is_empty() {
            return Ok(());
        }
        self.policy.settings.flags |= flags::BIND_GUARD;
        let exe = self.exes(BIND_RULE_NAME, "allow_exe", &bind.allow_exe)?;
        let mut uid: BTreeMap<u32, String> = bind
            .allow_uid
            .iter()
            .map(|u| (u.value, u.value.to_string()))
            .collect();
        for user in &bind.allow_user {
            if let Some(id) = self.user(BIND_RULE_NAME, user)? {
                uid.insert(id, format!("{id} (user {})", user.value));
            }
        }
        self.policy.bind = BindGuard {
            ports: Some(ports(&PortSet::Ranges(bind.loopback_only.clone()))),
            exe: exe.into_iter().collect(),
            uid,
        };
        Ok(())
    }

    /// Resolves executable paths to keys, with a description of each: the
    /// file at each path now, and earlier ones that processes still run.
    fn exes(
        &mut self,
        rule: &str,
        field: &'static str,
        paths: &[Located<PathBuf>],
    ) -> Result<Vec<(ExeKey, String)>, PolicyError> {
        let mut resolved = Vec::with_capacity(paths.len());
        for path in paths {
            let file = self
                .resolver
                .exe(&path.value)
                .map_err(|source| PolicyError::Exe {
                    file: self.file.to_owned(),
                    at: path.at,
                    rule: rule.to_owned(),
                    field,
                    path: path.value.clone(),
                    source,
                })
                .and_then(|file| self.unambiguous(rule, field, path, file));
            let kept = self.kept(&path.value, file.as_ref().ok());
            let meanwhile = match (kept.first_key_value(), &file) {
                (Some((_, pid)), _) => format!(
                    "until it resolves again, this value matches only the earlier file still \
                     running (pid {pid})"
                ),
                (None, Err(PolicyError::ExeAmbiguous { .. })) => {
                    "this value is skipped (it matches nothing)".to_owned()
                }
                (None, _) => "this value matches nothing until it resolves again".to_owned(),
            };
            let current = self.tolerate_as(file, &meanwhile)?.map(|file| file.key);
            let shown = path.value.display();
            if let Some(key) = current {
                resolved.push((key, format!("{shown} ({})", ExeId(key))));
            }
            for (&key, pid) in &kept {
                self.policy.warnings.push(format!(
                    "{}:{}: rule `{}`: {field} {shown} ({}) was replaced on disk; it still \
                     matches while it runs (pid {pid}), and stops matching when no process \
                     runs it any more",
                    self.file,
                    path.at,
                    rule,
                    ExeId(key)
                ));
                resolved.push((
                    key,
                    format!(
                        "{shown} ({}; replaced on disk, still running as pid {pid})",
                        ExeId(key)
                    ),
                ));
            }
            self.policy
                .exe_paths
                .insert(path.value.clone(), ExeIdentities { current, kept });
        }
        Ok(resolved)
    }

    /// Refuses a file whose `stat()` device is not the one the kernel reads
    /// (btrfs, overlayfs over several filesystems): the kernel's key, the
    /// superblock's device and the inode, may name another file too.
    fn unambiguous(
        &self,
        rule: &str,
        field: &'static str,
        path: &Located<PathBuf>,
        file: ExeFile,
    ) -> Result<ExeFile, PolicyError> {
        match &file.mount {
            Some(mount) if mount.dev != file.key.dev => Err(PolicyError::ExeAmbiguous {
                file: self.file.to_owned(),
                at: path.at,
                rule: rule.to_owned(),
                field,
                path: path.value.clone(),
                stat_dev: file.key.dev,
                mount: Box::new(mount.clone()),
            }),
            _ => Ok(file),
        }
    }

    /// Earlier files of `path` that processes still run, with a pid running
    /// each: those it stood for in the previous policy, or, when that one
    /// did not have it, deleted files that processes were started from at
    /// this very path.
    fn kept(&mut self, path: &Path, current: Option<&ExeFile>) -> BTreeMap<ExeKey, u32> {
        let now = current.map(|file| file.key);
        let mut kept = BTreeMap::new();
        let previous = self.previous;
        match previous.and_then(|p| p.get(path)) {
            Some(before) => {
                for &key in before.current.iter().chain(before.kept.keys()) {
                    if Some(key) == now || kept.contains_key(&key) {
                        continue;
                    }
                    // While the process shown last time still runs the file,
                    // no walk of /proc is needed.
                    if let Some(&pid) = before.kept.get(&key)
                        && self.resolver.running_exe(pid) == Some(key)
                    {
                        kept.insert(key, pid);
                    } else if let Some(live) = self.live().get(&key) {
                        kept.insert(key, live.pid);
                    }
                }
            }
            None => {
                // Nothing known yet (start-up, check-config, a path new in a
                // reloaded file). rename() cannot cross filesystems, so an
                // upgrade leaves the old file on the device of the new one;
                // that also keeps out a file of another mount namespace that
                // happened to be deleted under the same name.
                let Some(file) = current else {
                    return kept;
                };
                for (&key, live) in self.live() {
                    if key != file.key
                        && key.dev == file.key.dev
                        && live.deleted_path.as_deref() == Some(file.real_path.as_path())
                    {
                        kept.insert(key, live.pid);
                    }
                }
            }
        }
        kept
    }

    /// The rule of `[browsers] exe_name`/`exe`: programs judged as
    /// browsers, after the user's rules (a user's rule for them wins) and
    /// before the catalog. A rule matches when all its criteria do, so
    /// names and paths make one rule each.
    fn browsers_rule(&mut self, browsers: &Browsers) -> Result<(), PolicyError> {
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
            for name in &browsers.exe_name {
                *self
                    .policy
                    .exe_name
                    .entry(fixed_name(&name.value))
                    .or_default() |= bit;
            }
        }
        if !browsers.exe.is_empty() {
            let exe = self.exes(BROWSERS_RULE_NAME, "exe", &browsers.exe)?;
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
    fn catalog_rule(&mut self, entry: &CatalogEntry, browsers: Action) {
        // Each name matches as the entry says; so does the real file name
        // of every installed copy found for it (a symlink's target).
        let mut names: Vec<(String, NameMatch)> = entry
            .names()
            .map(|(name, how)| (name.to_owned(), how))
            .collect();
        for (exe_name, how) in entry.names() {
            for path in self.resolver.find_executables(exe_name) {
                // Not installed or unreadable: the plain name still matches.
                if let Ok(real) = self.resolver.exe_file_name(&path)
                    && !names.iter().any(|(name, _)| *name == real)
                {
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

/// Appends `field v` or `field in [a, b]` to `parts`; nothing for no values.
fn describe(parts: &mut Vec<String>, field: &str, values: impl Iterator<Item = String>) {
    let values: Vec<String> = values.collect();
    match values.as_slice() {
        [] => {}
        [one] => parts.push(format!("{field} {one}")),
        many => parts.push(format!("{field} in [{}]", many.join(", "))),
    }
}
