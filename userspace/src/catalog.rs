//! The built-in catalog: rules for common tunnels, relays and reverse proxies.
//!
//! With `catalog = true` (the default) these rules follow the user's rules,
//! named `catalog:<name>`. They match on the executable file's name as the
//! kernel sees it (the dentry name of `mm->exe_file`), not on comm: a process
//! can rename its comm with `prctl(PR_SET_NAME)`, but not the file it was
//! executed from. When compiling, [`crate::policy::compile`] also adds the
//! real file name of every installed copy it finds, so a symlink such as
//! `/usr/local/bin/bore -> /opt/bore/bore-x86_64` is covered too.
//!
//! Tunnels and relays whose purpose is to carry outside traffic to a local
//! port are `deny`. Reverse proxies and netcat are `audit`: they are often
//! intended, but an operator should see what they reach.

use crate::policy::Action;

/// Prefix of the names of catalog rules; user rules may not use it.
pub const CATALOG_PREFIX: &str = "catalog:";

/// One built-in rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The rule is named `catalog:<name>`.
    pub name: &'static str,
    /// Executable file names it matches.
    pub exe_names: &'static [&'static str],
    pub action: Action,
    /// Why it is in the catalog, for `check-config` and the documentation.
    pub why: &'static str,
}

impl CatalogEntry {
    /// The rule name as reported: `catalog:<name>`.
    pub fn rule_name(&self) -> String {
        format!("{CATALOG_PREFIX}{}", self.name)
    }
}

const fn entry(
    name: &'static str,
    exe_names: &'static [&'static str],
    action: Action,
    why: &'static str,
) -> CatalogEntry {
    CatalogEntry {
        name,
        exe_names,
        action,
        why,
    }
}

const fn deny(
    name: &'static str,
    exe_names: &'static [&'static str],
    why: &'static str,
) -> CatalogEntry {
    entry(name, exe_names, Action::Deny, why)
}

const fn audit(
    name: &'static str,
    exe_names: &'static [&'static str],
    why: &'static str,
) -> CatalogEntry {
    entry(name, exe_names, Action::Audit, why)
}

/// The built-in rules, in the order they are tried.
pub const CATALOG: &[CatalogEntry] = &[
    deny(
        "cloudflared",
        &["cloudflared"],
        "Cloudflare Tunnel: publishes local services through Cloudflare's edge",
    ),
    deny(
        "tailscaled",
        &["tailscaled"],
        "Tailscale daemon: `tailscale serve` and `funnel` proxy tailnet or internet traffic to local ports",
    ),
    deny(
        "ngrok",
        &["ngrok"],
        "ngrok agent: exposes local ports on public ngrok URLs",
    ),
    deny(
        "frpc",
        &["frpc"],
        "frp client: forwards connections from an frp server to local ports",
    ),
    deny(
        "bore",
        &["bore"],
        "bore: exposes local ports through a bore server",
    ),
    deny(
        "rathole",
        &["rathole"],
        "rathole: reverse-proxy tunnel from a remote server to local ports",
    ),
    deny(
        "chisel",
        &["chisel"],
        "chisel: TCP tunnel over HTTP/WebSocket, commonly used for reverse port forwards",
    ),
    deny(
        "socat",
        &["socat", "socat1"],
        "socat: general-purpose relay, often used to bridge a remote listener to a local port",
    ),
    deny(
        "sshd",
        &["sshd", "sshd-session", "dropbear"],
        "SSH server: local ports reached through `ssh -L` (and `-R` back to the server) are connected by the server-side process",
    ),
    deny(
        "ssh",
        &["ssh"],
        "SSH client: `ssh -R` remote forwards (localhost.run, serveo, pinggy, ...) connect to local ports on behalf of remote users",
    ),
    deny(
        "zrok",
        &["zrok"],
        "zrok: OpenZiti-based sharing of local services",
    ),
    deny(
        "inlets",
        &["inlets", "inlets-pro"],
        "inlets: tunnel client exposing local services through an exit server",
    ),
    deny(
        "gost",
        &["gost"],
        "GO Simple Tunnel: multi-protocol relay and port forwarder",
    ),
    deny("pgrok", &["pgrok"], "pgrok: self-hosted ngrok alternative"),
    audit(
        "nginx",
        &["nginx"],
        "nginx: reverse proxy; usually intended, worth seeing what it reaches",
    ),
    audit(
        "caddy",
        &["caddy"],
        "Caddy: reverse proxy with automatic HTTPS",
    ),
    audit("haproxy", &["haproxy"], "HAProxy: TCP/HTTP load balancer"),
    audit("traefik", &["traefik"], "Traefik: reverse proxy"),
    audit("envoy", &["envoy"], "Envoy: service proxy"),
    audit(
        "netcat",
        &["nc", "ncat", "netcat", "nc.openbsd", "nc.traditional"],
        "netcat: ad hoc relays (`ncat --sh-exec`, `nc -l | nc`)",
    ),
];

#[cfg(test)]
mod tests {
    /// Looks up a catalog entry by its rule name (`catalog:<name>`).
    fn entry_for_rule(rule_name: &str) -> Option<&'static CatalogEntry> {
        let name = rule_name.strip_prefix(CATALOG_PREFIX)?;
        CATALOG.iter().find(|entry| entry.name == name)
    }

    use std::collections::HashSet;

    use loopwarden_common::{EXE_NAME_LEN, MAX_RULES};

    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        let mut names = HashSet::new();
        let mut exe_names = HashSet::new();
        for entry in CATALOG {
            assert!(names.insert(entry.name), "duplicate {}", entry.name);
            assert!(
                !entry.exe_names.is_empty(),
                "{} matches nothing",
                entry.name
            );
            for exe in entry.exe_names {
                assert!(exe_names.insert(*exe), "{exe} is in two entries");
                assert!(!exe.contains('/') && exe.len() < EXE_NAME_LEN, "{exe}");
            }
            assert!(!entry.why.is_empty());
        }
    }

    #[test]
    fn leaves_room_for_user_rules() {
        assert!(CATALOG.len() <= MAX_RULES / 2);
    }

    #[test]
    fn required_entries() {
        for name in [
            "cloudflared",
            "tailscaled",
            "ngrok",
            "frpc",
            "bore",
            "rathole",
            "chisel",
            "socat",
            "sshd",
            "ssh",
            "zrok",
            "inlets",
            "gost",
            "pgrok",
        ] {
            let entry = entry_for_rule(&format!("catalog:{name}")).unwrap();
            assert_eq!(entry.action, Action::Deny, "{name}");
        }
        for name in ["nginx", "caddy", "haproxy", "traefik", "envoy", "netcat"] {
            assert_eq!(
                entry_for_rule(&format!("catalog:{name}")).unwrap().action,
                Action::Audit
            );
        }
        assert!(entry_for_rule("sshd").is_none());
        let sshd = entry_for_rule("catalog:sshd").unwrap();
        assert!(sshd.exe_names.contains(&"sshd-session"));
    }
}
