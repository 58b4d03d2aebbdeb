//! How a compiled policy reads to people: the summary `loopwarden
//! check-config` prints, and the names of modes, actions, ports and
//! executable identities in messages.

use std::fmt;

use loopwarden_common::{ExeKey, flags};

use super::{Action, CompiledPolicy, Mode, Ports};
use crate::config::DenyErrno;

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl CompiledPolicy {
    /// The `browsers:` lines: each treatment and its ports.
    fn browsers_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = self.rules.iter().filter(|r| r.browser).count();
        writeln!(
            f,
            "browsers:    {rules} browser-class rules (action `port` below), judged by the port:"
        )?;
        let what = |action: Action| match (action, self.mode) {
            (Action::Deny, Mode::Audit) => "would-deny: audit mode",
            (Action::Deny, Mode::Enforce) => "refused",
            (Action::Audit, _) => "let in, reported",
            (Action::Allow, _) => "let in",
        };
        for (action, ranges) in &self.browsers.listed {
            if ranges.is_empty() {
                continue;
            }
            let ports: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            writeln!(f, "  {action:<5}  {} ({})", ports.join(", "), what(*action))?;
        }
        let action = self.browsers.action;
        writeln!(
            f,
            "  {action:<5}  every other protected port ({})",
            what(action)
        )
    }
}

impl Ports {
    /// The protected ports as inclusive ranges, lowest first; `None` for
    /// [`Ports::All`].
    pub fn ranges(&self) -> Option<Vec<(u16, u16)>> {
        let Ports::Some(_) = self else { return None };
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for port in 0..=u16::MAX {
            if !self.contains(port) {
                continue;
            }
            match ranges.last_mut() {
                Some((_, last)) if u32::from(*last) + 1 == u32::from(port) => *last = port,
                _ => ranges.push((port, port)),
            }
        }
        Some(ranges)
    }
}

impl fmt::Display for Ports {
    /// `all`, or compact ranges: `22, 8080, 9000-9100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(ranges) = self.ranges() else {
            return f.write_str("all");
        };
        if ranges.is_empty() {
            return f.write_str("none");
        }
        for (i, (first, last)) in ranges.into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

/// An [`ExeKey`] the way people read device numbers: `dev 8:1 ino 1234`.
pub(super) struct ExeId(pub(super) ExeKey);

impl fmt::Display for ExeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev {} ino {}", DevName(self.0.dev), self.0.ino)
    }
}

/// A device number in the kernel's encoding, shown as `major:minor`.
pub(super) struct DevName(pub(super) u64);

impl fmt::Display for DevName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 20, self.0 & 0xf_ffff)
    }
}

/// Symbolic name of the deny errnos the config allows.
fn errno_name(errno: u32) -> Option<&'static str> {
    [DenyErrno::Econnrefused, DenyErrno::Eperm]
        .into_iter()
        .find(|e| e.errno() == errno)
        .map(DenyErrno::name)
}

impl fmt::Display for CompiledPolicy {
    /// The summary `loopwarden check-config` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let mode_note = match self.mode {
            Mode::Audit => "deny rules are reported, not enforced",
            Mode::Enforce => "deny rules refuse the connect",
        };
        writeln!(f, "mode:        {} ({mode_note})", self.mode)?;
        match errno_name(s.deny_errno) {
            Some(name) => writeln!(f, "deny errno:  {name} ({})", s.deny_errno)?,
            None => writeln!(f, "deny errno:  {}", s.deny_errno)?,
        }
        writeln!(f, "ports:       {}", self.ports)?;
        if !self.scoped() {
            writeln!(f, "netns:       all")?;
        } else if self.netns.is_empty() {
            writeln!(
                f,
                "netns:       none resolved (nothing is judged until one of them exists)"
            )?;
        } else {
            let list: Vec<String> = self
                .netns
                .iter()
                .map(|n| format!("{} (cookie {})", n.path, n.cookie))
                .collect();
            writeln!(f, "netns:       {}", list.join(", "))?;
        }
        let addresses = if self.host_addresses {
            "loopback and the host's own addresses"
        } else {
            "loopback"
        };
        writeln!(f, "addresses:   {addresses}")?;
        let log_allowed = if s.flags & flags::LOG_ALLOWED != 0 {
            "yes"
        } else {
            "no"
        };
        writeln!(f, "log allowed: {log_allowed}")?;
        let window_ms = s.relay_window_ns / 1_000_000;
        match (
            s.flags & flags::RELAY != 0,
            s.flags & flags::RELAY_DENY != 0,
        ) {
            (false, _) => writeln!(f, "relay:       off")?,
            (true, deny) => writeln!(
                f,
                "relay:       {} network-facing callers (evidence window {window_ms} ms; user \
                 allow rules and browsers exempt)",
                if deny { "deny" } else { "audit" }
            )?,
        }
        match &self.bind.ports {
            None => writeln!(f, "bind guard:  off")?,
            Some(ports) => {
                let what = match self.mode {
                    Mode::Audit => "reported",
                    Mode::Enforce => "refused with EADDRNOTAVAIL",
                };
                writeln!(
                    f,
                    "bind guard:  ports {ports} on loopback only (a TCP bind of one of them to \
                     another address is {what})"
                )?;
                let exempt: Vec<&str> = self
                    .bind
                    .exe
                    .values()
                    .map(|d| d.as_str())
                    .chain(self.bind.uid.values().map(|d| d.as_str()))
                    .collect();
                if exempt.is_empty() {
                    writeln!(f, "  exempt:    none")?;
                } else {
                    writeln!(f, "  exempt:    {}", exempt.join(", "))?;
                }
            }
        }
        self.browsers_summary(f)?;
        self.egress_summary(f)?;
        writeln!(
            f,
            "rules:       {} (first match wins; the relay verdict when stricter)",
            self.rules.len()
        )?;
        let width = self.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for (i, rule) in self.rules.iter().enumerate() {
            // A browser-class rule's verdict is the port's.
            let action = if rule.browser {
                "port"
            } else {
                rule.action.name()
            };
            writeln!(
                f,
                "  {i:>2}  {:<width$}  {:<5}  {}",
                rule.name, action, rule.matches
            )?;
        }
        if !self.warnings.is_empty() {
            writeln!(f, "warnings:")?;
            for warning in &self.warnings {
                writeln!(f, "  {warning}")?;
            }
        }
        Ok(())
    }
}

impl CompiledPolicy {
    /// The egress guard's lines: each rule, whom it names, its lists and
    /// prefix counts.
    fn egress_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let guard = &self.egress;
        if guard.rules.is_empty() {
            return writeln!(f, "egress:      off");
        }
        let errno = errno_name(self.settings.deny_errno).unwrap_or("the deny errno");
        let what = match self.mode {
            Mode::Audit => "reported as would-deny".to_owned(),
            Mode::Enforce => format!("refused with {errno}"),
        };
        writeln!(
            f,
            "egress:      {} rule(s), {} prefixes in the trie (deny rules' blocked TCP connects are \
             {what}; the metadata addresses are in every rule's deny list)",
            guard.rules.len(),
            guard.prefixes.len()
        )?;
        for (i, rule) in guard.rules.iter().enumerate() {
            writeln!(
                f,
                "  {i:>2}  {}{}  {:<5}  {}",
                crate::events::EGRESS_PREFIX,
                rule.name,
                rule.action,
                rule.subjects
            )?;
            writeln!(f, "        deny:  {}", rule.deny.join(", "))?;
            if !rule.allow.is_empty() {
                writeln!(f, "        allow: {}", rule.allow.join(", "))?;
            }
            writeln!(
                f,
                "        {} prefixes (with the built-in metadata addresses)",
                rule.prefixes
            )?;
        }
        Ok(())
    }
}
