//! Rules (`[[rule]]`) and the values lists hold: one value or many, with
//! their positions; paths, names, ports and CIDRs.

use std::path::{Path, PathBuf};

use loopwarden_common::{COMM_LEN, EXE_NAME_LEN, SCRIPT_LEN};
use toml::Spanned;

use super::Validator;
use crate::{
    catalog::CATALOG_PREFIX,
    config::{
        ConfigError, Criteria, Located, MAX_NAME_BYTES, MAX_PATH_BYTES, PortRange, PortSet,
        Problem, Rule,
        raw::{OneOrMany, PortItem, RawRule},
    },
    events::EGRESS_PREFIX,
    events::{BIND_RULE_NAME, BROWSERS_RULE_NAME, RELAY_RULE_NAME},
    policy::{Action, egress},
};

impl Validator<'_> {
    /// A rule's name: letters, digits and `_ . : -`.
    pub(super) fn rule_name(&self, raw: Spanned<String>) -> Result<String, ConfigError> {
        let span = raw.span();
        let name = raw.into_inner();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
        if name.is_empty() || !name.chars().all(valid_char) {
            return Err(self.invalid(&span, Problem::BadRuleName { name }));
        }
        Ok(name)
    }

    /// An `allow` rule that names no program (no `exe`, `exe_name`,
    /// `script` or `cgroup`: a `uid`, a `comm` the process sets itself, a
    /// parent) comes before the catalog, so it lets the tunnels it covers
    /// through, exempt from the relay verdict: said, since that is seldom
    /// what was meant.
    pub(super) fn warn_broad_allow(&self, rule: &Rule, warnings: &mut Vec<String>) {
        let c = &rule.criteria;
        if rule.action != Action::Allow
            || !c.exe.is_empty()
            || !c.exe_name.is_empty()
            || !c.script.is_empty()
            || !c.cgroup.is_empty()
        {
            return;
        }
        warnings.push(format!(
            "{}:{}: allow rule `{}` names no program (exe, exe_name, script or cgroup): it \
             comes before the catalog, so the tunnels and relays it covers (cloudflared, ssh \
             -R, ...) connect unjudged, exempt from the relay verdict too; name the programs \
             it means{}",
            self.file,
            rule.at.line,
            rule.name,
            if c.comm.is_empty() {
                ""
            } else {
                " (a comm is the process's to set: any program may take it)"
            }
        ));
    }

    pub(super) fn rule(&self, raw: RawRule) -> Result<Rule, ConfigError> {
        let name_span = raw.name.span();
        let name = self.rule_name(raw.name)?;
        // Lines, metrics and `who` name the built-in and egress rules so
        // (and find an egress rule's name by its prefix).
        if let Some(prefix) = [CATALOG_PREFIX, EGRESS_PREFIX]
            .into_iter()
            .find(|p| name.starts_with(p))
        {
            return Err(self.invalid(&name_span, Problem::ReservedRuleName { name, prefix }));
        }
        if name == "-" {
            return Err(self.invalid(&name_span, Problem::DashRuleName));
        }
        if name == RELAY_RULE_NAME {
            return Err(self.invalid(&name_span, Problem::RelayRuleName));
        }
        if name == BIND_RULE_NAME {
            return Err(self.invalid(&name_span, Problem::BindRuleName));
        }
        if name == BROWSERS_RULE_NAME {
            return Err(self.invalid(&name_span, Problem::BrowsersRuleName));
        }

        let criteria = Criteria {
            exe: self.opt_paths("exe", raw.exe)?,
            exe_name: self.opt_values("exe_name", raw.exe_name, exe_name)?,
            comm: self.opt_values("comm", raw.comm, |comm| {
                if comm.len() >= COMM_LEN {
                    let len = comm.len();
                    return Err(Problem::CommTooLong { comm, len });
                }
                name_value("comm", comm)
            })?,
            uid: self.opt_values("uid", raw.uid, Ok)?,
            user: self.opt_values("user", raw.user, |user| name_value("user", user))?,
            cgroup: self.opt_values("cgroup", raw.cgroup, |cg| subject_cgroup("cgroup", cg))?,
            parent_exe: self.opt_paths("parent_exe", raw.parent_exe)?,
            ancestor_exe: self.opt_paths("ancestor_exe", raw.ancestor_exe)?,
            script: self.opt_values("script", raw.script, |script| {
                // The kernel keeps SCRIPT_LEN - 1 bytes: one that long
                // reads the same as every longer one starting with it.
                if script.len() >= SCRIPT_LEN - 1 {
                    let len = script.len();
                    return Err(Problem::ScriptTooLong { script, len });
                }
                name_value("script", script)
            })?,
        };
        if criteria.is_empty() {
            return Err(self.invalid(&name_span, Problem::NoCriteria { rule: name }));
        }
        Ok(Rule {
            name,
            at: self.lines.locate(name_span.start),
            action: raw.action,
            criteria,
        })
    }

    /// Checks each value of a one-or-many key with `check`, keeping positions.
    pub(super) fn values<T, U>(
        &self,
        field: &'static str,
        raw: Spanned<OneOrMany<T>>,
        check: impl Fn(T) -> Result<U, Problem>,
    ) -> Result<Vec<Located<U>>, ConfigError> {
        let outer = raw.span();
        let items = raw.into_inner().0;
        if items.is_empty() {
            return Err(self.invalid(&outer, Problem::EmptyList { field }));
        }
        items
            .into_iter()
            .map(|(span, value)| {
                let span = span.unwrap_or_else(|| outer.clone());
                match check(value) {
                    Ok(value) => Ok(Located {
                        value,
                        at: self.lines.locate(span.start),
                    }),
                    Err(problem) => Err(self.invalid(&span, problem)),
                }
            })
            .collect()
    }

    pub(super) fn opt_values<T, U>(
        &self,
        field: &'static str,
        raw: Option<Spanned<OneOrMany<T>>>,
        check: impl Fn(T) -> Result<U, Problem>,
    ) -> Result<Vec<Located<U>>, ConfigError> {
        raw.map_or_else(|| Ok(Vec::new()), |raw| self.values(field, raw, check))
    }

    pub(super) fn paths(
        &self,
        field: &'static str,
        raw: Spanned<OneOrMany<String>>,
    ) -> Result<Vec<Located<PathBuf>>, ConfigError> {
        self.values(field, raw, |path| {
            if !Path::new(&path).is_absolute() {
                return Err(Problem::RelativePath { field, path });
            }
            // Such a path could never resolve; say why instead of echoing it.
            if path.len() > MAX_PATH_BYTES {
                let len = path.len();
                return Err(Problem::PathTooLong { field, len });
            }
            if let Some(len) = path
                .split('/')
                .map(str::len)
                .find(|&len| len > MAX_NAME_BYTES)
            {
                return Err(Problem::PathComponentTooLong { field, len });
            }
            Ok(PathBuf::from(path))
        })
    }

    pub(super) fn opt_paths(
        &self,
        field: &'static str,
        raw: Option<Spanned<OneOrMany<String>>>,
    ) -> Result<Vec<Located<PathBuf>>, ConfigError> {
        raw.map_or_else(|| Ok(Vec::new()), |raw| self.paths(field, raw))
    }

    pub(super) fn ports(&self, raw: Spanned<OneOrMany<PortItem>>) -> Result<PortSet, ConfigError> {
        let outer = raw.span();
        let items = raw.into_inner().0;
        if let [(_, PortItem::Text(text))] = items.as_slice()
            && text == "all"
        {
            return Ok(PortSet::All);
        }
        if items.is_empty() {
            return Err(self.invalid(&outer, Problem::EmptyList { field: "ports" }));
        }
        items
            .into_iter()
            .map(|(span, item)| {
                let span = span.unwrap_or_else(|| outer.clone());
                port_range(item).map_err(|problem| self.invalid(&span, problem))
            })
            .collect::<Result<_, _>>()
            .map(PortSet::Ranges)
    }
}

/// An executable file name as the kernel compares it.
pub(super) fn exe_name(name: String) -> Result<String, Problem> {
    if name.contains('/') {
        return Err(Problem::NotAFileName { name });
    }
    // A file could have such a name, but a value with one is a pattern
    // written in the hope that it matches, which it never would.
    if let Some(glob) = name.chars().find(|c| matches!(c, '*' | '?' | '[')) {
        return Err(Problem::ExeNameGlob { name, glob });
    }
    // The kernel reads EXE_NAME_LEN - 1 bytes of a file's name: a name
    // that long reads the same as every longer one starting with it.
    if name.len() >= EXE_NAME_LEN - 1 {
        let len = name.len();
        return Err(Problem::ExeNameTooLong { name, len });
    }
    name_value("exe_name", name)
}

/// A CIDR (or a bare address) of an egress list.
pub(super) fn cidr(text: String) -> Result<ipnet::IpNet, Problem> {
    match egress::parse_cidr(&text) {
        Ok(net) => Ok(net),
        Err(Some(network)) => Err(Problem::CidrHostBits { text, network }),
        Err(None) if text.contains(['/', ':', '.']) => Err(Problem::BadCidr { text }),
        Err(None) => Err(Problem::EgressUnknown { text }),
    }
}

/// A name a rule matches exactly (a file name, comm, user, script path,
/// cgroup): not empty, and with no whitespace at either end and no
/// control character, which a value pasted or written across lines
/// (`"""..."""` keeps the line break) carries without a sign, and which
/// would then never match.
pub(super) fn name_value(field: &'static str, value: String) -> Result<String, Problem> {
    if value.is_empty() {
        return Err(Problem::EmptyValue { field });
    }
    if value.trim() != value || value.chars().any(char::is_control) {
        return Err(Problem::StrayCharacters { field, value });
    }
    Ok(value)
}

/// A cgroup as a rule or setting names it: a path below the cgroup v2
/// root or a unit name, never one with a `..` component (the resolver
/// refuses those, so the daemon would look for it every second and never
/// find it).
pub(super) fn cgroup(field: &'static str, value: String) -> Result<String, Problem> {
    let value = name_value(field, value)?;
    // Where cgroup v2 is mounted (hybrid hosts: its `unified` directory):
    // no cgroup below the root has such a path.
    for mount in ["/sys/fs/cgroup/unified/", "/sys/fs/cgroup/"] {
        if let Some(below) = value.strip_prefix(mount).filter(|b| !b.is_empty()) {
            return Err(Problem::CgroupMountPath {
                field,
                below: below.to_owned(),
                cgroup: value,
            });
        }
    }
    if value.split('/').any(|part| part == "..") {
        return Err(Problem::CgroupParentDir {
            field,
            cgroup: value,
        });
    }
    Ok(value)
}

/// A cgroup a rule or an `[[egress]]` rule names as its subject: as
/// [`cgroup`], and never the root, whose subtree is every process (a rule
/// of it alone would match everyone, which the checks that a rule names
/// someone refuse).
pub(super) fn subject_cgroup(field: &'static str, value: String) -> Result<String, Problem> {
    let value = cgroup(field, value)?;
    if value.split('/').all(|part| part.is_empty() || part == ".") {
        return Err(Problem::RootCgroup {
            field,
            cgroup: value,
        });
    }
    Ok(value)
}

fn port(port: i64) -> Result<u16, Problem> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Problem::PortOutOfRange { port }),
    }
}

pub(super) fn port_range(item: PortItem) -> Result<PortRange, Problem> {
    let text = match item {
        PortItem::Number(n) => {
            let p = port(n)?;
            return Ok(PortRange { first: p, last: p });
        }
        PortItem::Text(text) => text,
    };
    if text == "all" {
        return Err(Problem::AllInList);
    }
    let bad = || Problem::BadPortRange { text: text.clone() };
    let number = |s: &str| -> Result<u16, Problem> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        port(s.parse::<i64>().unwrap_or(i64::MAX))
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let p = number(&text)?;
            (p, p)
        }
    };
    if first > last {
        return Err(Problem::ReversedPortRange { first, last });
    }
    Ok(PortRange { first, last })
}
