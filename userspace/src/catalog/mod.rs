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
//! The entries are data, in `catalog.toml` beside this file (embedded in the
//! binary, parsed once). A name matches as a prefix unless the entry or the
//! name says `match = "exact"`: a prefix name also matches any name it
//! begins that continues with `-`, `_` or `.`, such as
//! `cloudflared-linux-amd64` or NixOS's `.tailscaled-wrapped`
//! ([`loopwarden_common::exe_name_candidates`] says exactly which).
//!
//! Tunnels and relays whose purpose is to carry outside traffic to a local
//! port are `deny`. Reverse proxies and netcat are `audit`: they are often
//! intended, but an operator should see what they reach.
//!
//! Entries of [`Class::Browser`] (Chromium, Firefox, Electron) carry no
//! action: the policy's `[browsers]` table says per port how browsers are
//! judged (an API port refuses them, a web UI port lets them in).

use std::sync::LazyLock;

use loopwarden_common::{EXE_NAME_LEN, exe_name_prefix_key};
use serde::Deserialize;

use crate::policy::{Action, fixed_name};

/// Prefix of the names of catalog rules; user rules may not use it.
pub const CATALOG_PREFIX: &str = "catalog:";

/// How a catalog name matches an executable file name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameMatch {
    /// The name, or the name continued at a separator (see the module docs).
    #[default]
    Prefix,
    /// The name only.
    Exact,
}

impl NameMatch {
    /// The `LW_RULES_EXE_NAME` key for `name` matching this way: the plain
    /// NUL-padded name, or its prefix-form key.
    pub fn key(self, name: &str) -> [u8; EXE_NAME_LEN] {
        match self {
            NameMatch::Exact => fixed_name(name),
            NameMatch::Prefix => exe_name_prefix_key(name.as_bytes()),
        }
    }

    /// `name` as shown to people: `name*` for a prefix.
    pub fn show(self, name: &str) -> String {
        match self {
            NameMatch::Exact => name.to_owned(),
            NameMatch::Prefix => format!("{name}*"),
        }
    }
}

/// What kind of program an entry names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// A tunnel, relay or proxy: judged by the entry's action.
    #[default]
    Tunnel,
    /// A web browser: judged by the port's `[browsers]` treatment.
    Browser,
}

/// One built-in rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The rule is named `catalog:<name>`.
    pub name: String,
    /// Executable file names it matches, each as `matching` says (same order).
    pub exe_names: Vec<String>,
    /// How each of `exe_names` matches.
    pub matching: Vec<NameMatch>,
    pub class: Class,
    /// The verdict of a tunnel entry; `None` for a browser (the port's
    /// `[browsers]` treatment decides).
    pub action: Option<Action>,
    /// The rule also matches the entry's descendants (the kernel's lineage:
    /// a tunnel that runs its forwarding in child programs, such as VS
    /// Code's tunnel server). Never for tools that start login sessions.
    pub children: bool,
    /// Why it is in the catalog, for `check-config` and the documentation.
    pub why: String,
}

impl CatalogEntry {
    /// The rule name as reported: `catalog:<name>`.
    pub fn rule_name(&self) -> String {
        format!("{CATALOG_PREFIX}{}", self.name)
    }

    /// The executable names with how each matches.
    pub fn names(&self) -> impl Iterator<Item = (&str, NameMatch)> {
        self.exe_names
            .iter()
            .map(String::as_str)
            .zip(self.matching.iter().copied())
    }

    /// The executable names as shown to people (`name*` for a prefix).
    pub fn shown_names(&self) -> Vec<String> {
        self.names().map(|(name, how)| how.show(name)).collect()
    }
}

/// The built-in rules, in the order they are tried: `catalog.toml`, parsed
/// the first time it is used.
pub static CATALOG: LazyLock<Vec<CatalogEntry>> = LazyLock::new(|| parse(CATALOG_TOML));

/// The catalog's source, embedded.
const CATALOG_TOML: &str = include_str!("catalog.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    entry: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    #[serde(default)]
    class: Class,
    action: Option<Action>,
    #[serde(default, rename = "match")]
    matching: NameMatch,
    exe_names: Vec<RawName>,
    #[serde(default)]
    children: bool,
    why: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawName {
    Plain(String),
    #[serde(rename_all = "lowercase")]
    With {
        name: String,
        #[serde(rename = "match")]
        matching: NameMatch,
    },
}

/// Parses a catalog. The embedded one is checked by the unit tests, so a
/// failure here is a bug in this build: it panics.
fn parse(text: &str) -> Vec<CatalogEntry> {
    let raw: RawCatalog = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => panic!("the built-in catalog does not parse: {e}"),
    };
    raw.entry
        .into_iter()
        .map(|e| {
            match e.class {
                Class::Tunnel => assert!(
                    matches!(e.action, Some(Action::Deny | Action::Audit)),
                    "catalog entry {}: action must be deny or audit",
                    e.name
                ),
                Class::Browser => assert!(
                    e.action.is_none(),
                    "catalog entry {}: a browser has no action ([browsers] judges it)",
                    e.name
                ),
            }
            let (exe_names, matching) = e
                .exe_names
                .into_iter()
                .map(|n| match n {
                    RawName::Plain(name) => (name, e.matching),
                    RawName::With { name, matching } => (name, matching),
                })
                .unzip();
            CatalogEntry {
                name: e.name,
                exe_names,
                matching,
                class: e.class,
                action: e.action,
                children: e.children,
                why: e.why,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use loopwarden_common::{
        EXE_NAME_SEPARATORS, MAX_PREFIX_CANDIDATES, MAX_RULES, PREFIX_CUT_LIMIT,
    };

    use super::*;

    /// Looks up a catalog entry by its rule name (`catalog:<name>`).
    fn entry_for_rule(rule_name: &str) -> Option<&'static CatalogEntry> {
        let name = rule_name.strip_prefix(CATALOG_PREFIX)?;
        CATALOG.iter().find(|entry| entry.name == name)
    }

    fn entry(name: &str) -> &'static CatalogEntry {
        entry_for_rule(&format!("{CATALOG_PREFIX}{name}"))
            .unwrap_or_else(|| panic!("no catalog entry {name}"))
    }

    #[test]
    fn names_are_unique_and_valid() {
        assert!(!CATALOG.is_empty());
        let mut names = HashSet::new();
        let mut exe_names = HashSet::new();
        for entry in CATALOG.iter() {
            assert!(names.insert(&entry.name), "duplicate {}", entry.name);
            // What the config allows in rule names.
            assert!(
                !entry.name.is_empty()
                    && entry
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                "{}",
                entry.name
            );
            assert!(
                !entry.exe_names.is_empty(),
                "{} matches nothing",
                entry.name
            );
            assert_eq!(entry.exe_names.len(), entry.matching.len());
            for (exe, how) in entry.names() {
                assert!(exe_names.insert(exe), "{exe} is in two entries");
                assert!(
                    !exe.is_empty() && !exe.contains(['/', '\0']) && exe.len() < EXE_NAME_LEN,
                    "{exe}"
                );
                if how == NameMatch::Prefix {
                    // The kernel drops one leading dot before it looks up
                    // prefixes, and cuts only at the first few separators:
                    // a prefix name must leave a cut for its continuations.
                    assert!(!exe.starts_with('.'), "{exe}");
                    let separators = exe
                        .bytes()
                        .skip(1)
                        .filter(|b| EXE_NAME_SEPARATORS.contains(b));
                    assert!(separators.count() < MAX_PREFIX_CANDIDATES, "{exe}");
                    // Names are cut only before separators in their first
                    // PREFIX_CUT_LIMIT bytes.
                    assert!(exe.len() < PREFIX_CUT_LIMIT, "{exe}");
                }
            }
            assert!(!entry.why.trim().is_empty(), "{}", entry.name);
            match entry.class {
                Class::Tunnel => assert!(
                    matches!(entry.action, Some(Action::Deny | Action::Audit)),
                    "{}",
                    entry.name
                ),
                Class::Browser => {
                    assert_eq!(entry.action, None, "{}", entry.name);
                    // A browser's children are its own processes (same
                    // binary) or programs it starts for the user.
                    assert!(!entry.children, "{}", entry.name);
                }
            }
        }
    }

    #[test]
    fn leaves_room_for_user_rules() {
        let tunnels = CATALOG.iter().filter(|e| e.class == Class::Tunnel);
        assert!(tunnels.count() <= MAX_RULES / 2);
        // The browsers, and `[browsers]`'s own rule, take a few more.
        assert!(CATALOG.len() < MAX_RULES / 2 + 4);
    }

    #[test]
    fn browsers() {
        let browser = |name: &str| {
            let e = entry(name);
            assert_eq!((e.class, e.action), (Class::Browser, None), "{name}");
            e
        };
        // Debian's real binary is /usr/lib/chromium/chromium (/usr/bin/chromium
        // is a shell script); Chrome's is /opt/google/chrome/chrome.
        let chromium = browser("chromium");
        for exe in ["chromium", "chrome", "msedge", "brave"] {
            assert!(chromium.exe_names.iter().any(|n| n == exe), "{exe}");
        }
        // Exact: `chrome` must not match `chrome-remote-desktop-host` or
        // the crash handler `chrome_crashpad_handler`.
        assert!(chromium.matching.iter().all(|&m| m == NameMatch::Exact));
        // A prefix: firefox-esr, firefox-bin.
        assert_eq!(browser("firefox").shown_names(), ["firefox*"]);
        browser("electron");
        // Tunnels are tried first (the browsers come last in the file).
        let first_browser = CATALOG.iter().position(|e| e.class == Class::Browser);
        assert!(
            CATALOG[first_browser.expect("browsers")..]
                .iter()
                .all(|e| e.class == Class::Browser)
        );
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
            "tor",
            "wstunnel",
            "websocat",
            "code-tunnel",
            "devtunnel",
            "teleport",
            "rinetd",
            "redir",
        ] {
            assert_eq!(entry(name).action, Some(Action::Deny), "{name}");
        }
        for name in [
            "nginx",
            "caddy",
            "haproxy",
            "traefik",
            "envoy",
            "netcat",
            "vscode",
            "kubectl",
            "systemd-socket-proxyd",
        ] {
            assert_eq!(entry(name).action, Some(Action::Audit), "{name}");
        }
        assert!(entry_for_rule("sshd").is_none());
        let sshd = entry("sshd");
        for name in ["sshd", "sshd-session", "dropbear"] {
            assert!(sshd.exe_names.iter().any(|n| n == name), "{name}");
        }
    }

    #[test]
    fn names_that_begin_other_programs_match_exactly() {
        let how = |exe: &str| {
            CATALOG
                .iter()
                .flat_map(CatalogEntry::names)
                .find(|&(name, _)| name == exe)
                .unwrap_or_else(|| panic!("{exe} is not in the catalog"))
                .1
        };
        for exe in [
            "ssh",
            "nc",
            "ncat",
            "netcat",
            "nc.openbsd",
            "nc.traditional",
            "socat1",
            "tor",
            "code",
            "code-insiders",
            // A system binary, never a release asset, and longer than the
            // prefix cut limit.
            "systemd-socket-proxyd",
        ] {
            assert_eq!(how(exe), NameMatch::Exact, "{exe}");
        }
        for exe in ["socat", "cloudflared", "sshd"] {
            assert_eq!(how(exe), NameMatch::Prefix, "{exe}");
        }
        assert_eq!(entry("socat").shown_names(), ["socat*", "socat1"]);
    }

    #[test]
    fn keys() {
        assert_eq!(
            NameMatch::Exact.key("ssh"),
            fixed_name::<EXE_NAME_LEN>("ssh")
        );
        let key = NameMatch::Prefix.key("bore");
        assert_eq!(&key[..5], b"bore\0");
        assert_eq!(
            key[EXE_NAME_LEN - 1],
            loopwarden_common::EXE_NAME_PREFIX_MARK
        );
    }

    #[test]
    fn parse_reads_match_per_entry_and_per_name() {
        let c = parse(
            r#"
[[entry]]
name = "a"
action = "audit"
match = "exact"
exe_names = ["a", { name = "a-b", match = "prefix" }]
why = "x"
"#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].action, Some(Action::Audit));
        assert_eq!(c[0].class, Class::Tunnel);
        assert_eq!(c[0].exe_names, ["a", "a-b"]);
        assert_eq!(c[0].matching, [NameMatch::Exact, NameMatch::Prefix]);
    }

    #[test]
    #[should_panic(expected = "deny or audit")]
    fn parse_refuses_allow() {
        parse("[[entry]]\nname = \"a\"\naction = \"allow\"\nexe_names = [\"a\"]\nwhy = \"x\"\n");
    }

    #[test]
    fn parse_reads_a_browser() {
        let c = parse(
            "[[entry]]\nname = \"b\"\nclass = \"browser\"\nexe_names = [\"b\"]\nwhy = \"x\"\n",
        );
        assert_eq!((c[0].class, c[0].action), (Class::Browser, None));
    }

    #[test]
    #[should_panic(expected = "a browser has no action")]
    fn parse_refuses_a_browser_with_an_action() {
        parse(
            "[[entry]]\nname = \"b\"\nclass = \"browser\"\naction = \"deny\"\nexe_names = [\"b\"]\nwhy = \"x\"\n",
        );
    }

    #[test]
    #[should_panic(expected = "action must be deny or audit")]
    fn parse_refuses_a_tunnel_without_an_action() {
        parse("[[entry]]\nname = \"a\"\nexe_names = [\"a\"]\nwhy = \"x\"\n");
    }

    #[test]
    #[should_panic(expected = "does not parse")]
    fn parse_refuses_an_unknown_class() {
        parse(
            "[[entry]]\nname = \"a\"\nclass = \"toaster\"\naction = \"deny\"\nexe_names = [\"a\"]\nwhy = \"x\"\n",
        );
    }

    #[test]
    #[should_panic(expected = "does not parse")]
    fn parse_refuses_unknown_fields() {
        parse("[[entry]]\nname = \"a\"\naction = \"deny\"\nexe_name = [\"a\"]\nwhy = \"x\"\n");
    }

    #[test]
    #[should_panic(expected = "does not parse")]
    fn parse_refuses_unknown_match() {
        parse(
            "[[entry]]\nname = \"a\"\naction = \"deny\"\nmatch = \"glob\"\nexe_names = [\"a\"]\nwhy = \"x\"\n",
        );
    }
}
