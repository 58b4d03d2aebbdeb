//! Policies as TOML text: one scoped to a test's namespace ([`policy`],
//! [`Policy`] with the catalog and relay settings spelled out) and rules.

use crate::{Netns, PROTECTED};

/// A policy scoped to `ns`, protecting `PROTECTED`, with the catalog on.
pub fn policy(ns: &Netns, mode: &str, extra: &str) -> String {
    format!(
        "mode = \"{mode}\"\ncatalog = true\n\n[protect]\nports = [{PROTECTED}]\nnetns = [\"{}\"]\n\n{extra}\n",
        ns.path()
    )
}

/// One `[[rule]]` table: `criterion = "value"`.
pub fn rule(name: &str, action: &str, criterion: &str, value: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\naction = \"{action}\"\n{criterion} = \"{value}\"\n")
}

/// A policy scoped to one namespace, with every setting the relay tests
/// vary spelled out: `Policy::new(&ns, "enforce").catalog(false).relay("deny").text()`.
/// Defaults: the catalog on, `PROTECTED` only, no `[relay]` table.
pub struct Policy {
    mode: String,
    catalog: bool,
    /// `[protect] ports`, as TOML.
    ports: String,
    netns: String,
    relay_action: Option<String>,
    window_ms: Option<u64>,
    extra: String,
}

impl Policy {
    pub fn new(ns: &Netns, mode: &str) -> Self {
        Self {
            mode: mode.to_owned(),
            catalog: true,
            ports: format!("[{PROTECTED}]"),
            netns: ns.path(),
            relay_action: None,
            window_ms: None,
            extra: String::new(),
        }
    }

    /// `catalog = true|false`.
    pub fn catalog(mut self, on: bool) -> Self {
        self.catalog = on;
        self
    }

    /// The protected ports (replacing `PROTECTED`).
    pub fn ports(mut self, ports: &[u16]) -> Self {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        self.ports = format!("[{}]", ports.join(", "));
        self
    }

    /// Every port protected (`ports = "all"`, the default policy's).
    pub fn all_ports(mut self) -> Self {
        self.ports = "\"all\"".to_owned();
        self
    }

    /// `[relay] action = "..."`.
    pub fn relay(mut self, action: &str) -> Self {
        self.relay_action = Some(action.to_owned());
        self
    }

    /// `[relay] window_ms = ...`.
    pub fn window_ms(mut self, ms: u64) -> Self {
        self.window_ms = Some(ms);
        self
    }

    /// More tables (e.g. `[[rule]]`s from [`rule`]) at the end.
    pub fn extra(mut self, tables: &str) -> Self {
        self.extra.push_str(tables);
        self.extra.push('\n');
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let mut text = format!(
            "mode = \"{}\"\ncatalog = {}\n\n[protect]\nports = {}\nnetns = [\"{}\"]\n\n",
            self.mode, self.catalog, self.ports, self.netns
        );
        if self.relay_action.is_some() || self.window_ms.is_some() {
            text.push_str("[relay]\n");
            if let Some(action) = &self.relay_action {
                text.push_str(&format!("action = \"{action}\"\n"));
            }
            if let Some(ms) = self.window_ms {
                text.push_str(&format!("window_ms = {ms}\n"));
            }
            text.push('\n');
        }
        text.push_str(&self.extra);
        text
    }
}
