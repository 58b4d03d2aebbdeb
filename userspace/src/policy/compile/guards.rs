//! The egress and bind guards' parts of the policy.

use std::collections::BTreeMap;

use loopwarden_common::flags;

use super::{Compiler, describe, ports};
use crate::policy::{Action, BindGuard, EgressGuard, EgressRuleInfo, PolicyError, egress};
use crate::{
    config::{Bind, Egress, PortSet},
    events::{BIND_RULE_NAME, EGRESS_PREFIX},
};

impl Compiler<'_> {
    /// The egress guard: each `[[egress]]` rule gets a bit; its subjects go
    /// into the `LW_EGRESS_*` maps, its destinations (with the metadata
    /// addresses) into the prefix masks of `LW_EGRESS_DST`. A rule whose
    /// value does not resolve is said with every other such rule (a
    /// strict compile's; the policy is not used then).
    pub(super) fn egress(&mut self, rules: &[Egress]) -> Result<(), PolicyError> {
        if rules.is_empty() {
            return Ok(());
        }
        let mut guard = EgressGuard::default();
        let mut prefixes = Vec::with_capacity(rules.len());
        let mut levels = 0u32;
        let mut unresolved = Vec::new();
        for (r, rule) in rules.iter().enumerate() {
            let label = format!("{EGRESS_PREFIX}{}", rule.name);
            let c = &rule.criteria;
            let resolved = self.exes(&label, "exe", &c.exe, false).and_then(|exe| {
                let uids = self.uids(&label, c)?;
                let cgroups = self.cgroups(&label, &c.cgroup, levels)?;
                Ok((exe, uids, cgroups))
            });
            let (exe, uids, cgroups) = match resolved {
                Ok(resolved) => resolved,
                Err(e) => {
                    unresolved.push(e);
                    continue;
                }
            };
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
        PolicyError::all(unresolved)?;
        guard.prefixes = egress::blocking_masks(&prefixes);
        self.policy.settings.egress_cgroup_levels = levels;
        self.policy.settings.flags |= flags::EGRESS;
        self.policy.egress = guard;
        Ok(())
    }

    /// The bind guard: its ports and exemptions (resolved like a rule's,
    /// errors naming the rule [`BIND_RULE_NAME`]).
    pub(super) fn bind(&mut self, bind: &Bind) -> Result<(), PolicyError> {
        if bind.loopback_only.is_empty() {
            return Ok(());
        }
        self.policy.settings.flags |= flags::BIND_GUARD;
        let exe = self.exes(BIND_RULE_NAME, "allow_exe", &bind.allow_exe, true)?;
        self.replaceable(BIND_RULE_NAME, "allow_exe", &bind.allow_exe);
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
}
