//! Compiling a validated config into map contents: each rule gets a bit,
//! each value of each criterion the bits of the rules accepting it; names
//! are resolved through a [`Resolver`], leniently or strictly.
//!
//! The rules themselves here; the values they name resolved in [`values`];
//! the egress and bind guards in [`guards`]; the browsers' and the
//! catalog's rules in [`builtin`].

use std::collections::BTreeMap;

use loopwarden_common::{MAX_RULES, PORT_WORDS, Settings, flags, script_hash};

use super::{
    Action, BindGuard, BrowserPorts, CompiledPolicy, EgressGuard, LiveExes, Mode, PolicyError,
    Ports, Resolver, RuleInfo, fixed_name,
};
use crate::{
    catalog::{CATALOG, CatalogEntry},
    config::{Config, PortSet, Rule},
    error_chain,
};

mod builtin;
pub(super) mod capacity;
mod guards;
mod values;

/// How a compile takes a value it cannot use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leniency {
    /// Every such value is an error (`check-config`).
    Strict,
    /// A value that does not resolve warns and matches nothing, but one
    /// the policy cannot hold (a cgroup past the depths it compares, a
    /// path whose file cannot be told apart) is an error, as `check-config`
    /// says: a start, a reload, `check-config --as-daemon`.
    Load,
    /// Both warn and match nothing: the re-resolution each second, which
    /// follows cgroups and files made since the file was loaded.
    Refresh,
}

pub(super) fn compile_with(
    config: &Config,
    resolver: &dyn Resolver,
    leniency: Leniency,
    previous: Option<&CompiledPolicy>,
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
        leniency,
        previous,
        live: None,
        policy: blank(config, config.rules.len() + catalog.len()),
    };
    // Each step checks that the policy still fits its maps, so the error
    // names the part that filled one. A value that does not resolve (a
    // strict compile's) is kept with the others and the rest compiled, so
    // every one is said (the policy is not used then, so what a failed
    // step added matters to nothing but the map's room); past a map's
    // room, nothing more.
    let mut unresolved = Vec::new();
    let full = |unresolved: &mut Vec<PolicyError>, e| {
        PolicyError::after(in_file_order(std::mem::take(unresolved)), e)
    };
    keep(&mut unresolved, compiler.netns(&config.protect.netns));
    compiler
        .fits(None, || "`[protect] netns`".to_owned())
        .map_err(|e| full(&mut unresolved, e))?;
    keep(&mut unresolved, compiler.bind(&config.bind));
    compiler
        .fits(None, || "`[bind]`".to_owned())
        .map_err(|e| full(&mut unresolved, e))?;
    keep(&mut unresolved, compiler.egress(&config.egress));
    compiler
        .fits(None, || "`[[egress]]`".to_owned())
        .map_err(|e| full(&mut unresolved, e))?;
    for rule in &config.rules {
        keep(&mut unresolved, compiler.user_rule(rule));
        compiler
            .fits(Some(rule.at), || format!("rule `{}`", rule.name))
            .map_err(|e| full(&mut unresolved, e))?;
    }
    keep(&mut unresolved, compiler.browsers_rule(&config.browsers));
    compiler
        .fits(None, || "`[browsers]`".to_owned())
        .map_err(|e| full(&mut unresolved, e))?;
    PolicyError::all(in_file_order(unresolved))?;
    for entry in catalog {
        compiler.catalog_rule(entry, config.browsers.action);
    }
    compiler.fits(None, || {
        "the catalog's rules (`catalog = false` leaves them out)".to_owned()
    })?;
    Ok(compiler.policy)
}

/// `problems` in the order of the file (they are found in the order of
/// the compile: namespaces, guards, rules, browsers; a file may name them
/// in another).
fn in_file_order(mut problems: Vec<PolicyError>) -> Vec<PolicyError> {
    problems.sort_by_key(|p| {
        p.at()
            .map_or((usize::MAX, usize::MAX), |at| (at.line, at.column))
    });
    problems
}

/// Keeps `outcome`'s problems with the others.
fn keep(unresolved: &mut Vec<PolicyError>, outcome: Result<(), PolicyError>) {
    if let Err(e) = outcome {
        unresolved.extend(e.into_problems());
    }
}

/// The policy of `config` before any of its values is resolved: its mode,
/// settings, ports and browser verdicts, no namespace and no rule (room
/// for `rules`).
pub(super) fn blank(config: &Config, rules: usize) -> CompiledPolicy {
    CompiledPolicy {
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
        rules: Vec::with_capacity(rules),
        bind: BindGuard::default(),
        browsers: BrowserPorts::compile(&config.browsers, config.mode),
        egress: EgressGuard::default(),
        warnings: config.warnings.clone(),
        users: BTreeMap::new(),
    }
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
    /// Whether unresolvable values warn instead of failing (see
    /// [`compile_lenient`]).
    leniency: Leniency,
    /// The policy this one replaces: what its executable paths stood for,
    /// and the network namespaces its scope held.
    previous: Option<&'a CompiledPolicy>,
    /// The running executables, looked up at most once per compile.
    live: Option<LiveExes>,
    policy: CompiledPolicy,
}

impl Compiler<'_> {
    /// In lenient mode, records `err` as a warning and returns `None`;
    /// otherwise returns it.
    pub(super) fn tolerate<T>(
        &mut self,
        result: Result<T, PolicyError>,
    ) -> Result<Option<T>, PolicyError> {
        self.tolerate_as(result, "this value matches nothing until it resolves again")
    }

    /// [`Compiler::tolerate`], saying `meanwhile` about the value.
    pub(super) fn tolerate_as<T>(
        &mut self,
        result: Result<T, PolicyError>,
        meanwhile: &str,
    ) -> Result<Option<T>, PolicyError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.leniency != Leniency::Strict => {
                self.policy
                    .warnings
                    .push(format!("{}; {meanwhile}", error_chain(&e)));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// [`Compiler::tolerate_as`] for a value the policy cannot hold, as
    /// opposed to one that does not resolve: tolerated only by a
    /// re-resolution ([`Leniency::Refresh`]).
    pub(super) fn tolerate_limit<T>(
        &mut self,
        result: Result<T, PolicyError>,
        meanwhile: &str,
    ) -> Result<Option<T>, PolicyError> {
        match result {
            Err(e) if self.leniency != Leniency::Refresh => Err(e),
            result => self.tolerate_as(result, meanwhile),
        }
    }

    /// The running executables: one walk of `/proc`, the first time only.
    pub(super) fn live(&mut self) -> &LiveExes {
        let resolver = self.resolver;
        self.live.get_or_insert_with(|| resolver.live_exes())
    }

    /// Registers the next rule and returns its bit.
    pub(super) fn add_rule(&mut self, info: RuleInfo, constrains: &Constrains) -> u64 {
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

    pub(super) fn user_rule(&mut self, rule: &Rule) -> Result<(), PolicyError> {
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
        let exempts = rule.action == Action::Allow;
        let exe = self.exes(&rule.name, "exe", &c.exe, exempts)?;
        let parent = self.exes(&rule.name, "parent_exe", &c.parent_exe, exempts)?;
        let ancestor = self.exes(&rule.name, "ancestor_exe", &c.ancestor_exe, exempts)?;
        if rule.action == Action::Allow {
            self.replaceable(&rule.name, "exe", &c.exe);
            self.replaceable(&rule.name, "parent_exe", &c.parent_exe);
            self.replaceable(&rule.name, "ancestor_exe", &c.ancestor_exe);
        }
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
        self.linked_names(&rule.name, &c.exe_name);
        self.unread_scripts(&rule.name, &c.script);
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
