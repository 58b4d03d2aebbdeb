//! Parsing and validation tests: every bad input names file, line and problem.

use std::path::PathBuf;

use loopwarden_common::MAX_RULES;

use super::{lines::LineIndex, *};
use crate::catalog::CATALOG;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_named(text, "test.toml")
}

/// Parses `text`, expecting an error whose message names `test.toml` at
/// `line` and contains `phrase`.
pub(super) fn expect_error(text: &str, line: usize, phrase: &str) -> ConfigError {
    let err = match parse(text) {
        Ok(config) => panic!("expected an error containing {phrase:?}, parsed {config:?}"),
        Err(err) => err,
    };
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("test.toml:{line}:")),
        "expected line {line}: {message}"
    );
    assert!(
        message.contains(phrase),
        "expected {phrase:?} in: {message}"
    );
    err
}

#[test]
fn empty_file_is_the_embedded_default() {
    for text in ["", "\n  \n", "# nothing yet\n\n# still nothing\n"] {
        let config = parse(text).unwrap();
        let [warning] = config.warnings.as_slice() else {
            panic!("expected one warning: {:?}", config.warnings);
        };
        assert!(warning.starts_with("test.toml: "), "{warning}");
        assert!(warning.contains("no settings"), "{warning}");
        assert!(warning.contains("audit mode"), "{warning}");
        assert_eq!(
            config,
            Config {
                source: "test.toml".to_owned(),
                warnings: config.warnings.clone(),
                ..Config::embedded_default()
            }
        );
    }
    // Any setting, even one that repeats a default, is no accident.
    assert!(parse("mode = \"audit\"\n").unwrap().warnings.is_empty());
    assert!(parse("[protect]\n").unwrap().warnings.is_empty());
    let d = Config::embedded_default();
    assert_eq!(d.mode, Mode::Audit);
    assert_eq!(d.deny_errno.errno(), 111);
    assert!(d.catalog);
    assert!(!d.log_allowed);
    assert_eq!(d.protect.ports, PortSet::All);
    assert!(d.protect.netns.is_empty());
    assert!(!d.protect.host_addresses);
    assert!(d.rules.is_empty());
    assert_eq!(d.source, EMBEDDED_SOURCE);
}

const FULL: &str = r#"
mode = "enforce"
deny_errno = "EPERM"
catalog = false
log_allowed = true

[protect]
ports = [8080, "9000-9100", "22"]
netns = ["/run/netns/blue", "/proc/1/ns/net"]
host_addresses = true

[[rule]]
name = "relay-socat"
action = "deny"
exe = "/usr/bin/socat"
exe_name = ["socat", "socat1"]
comm = "socat"
uid = [0, 1000]
user = "nobody"
cgroup = "cloudflared.service"
parent_exe = "/usr/sbin/sshd"
ancestor_exe = ["/usr/sbin/sshd", "/usr/bin/tmux"]

[[rule]]
name = "allow.me:1"
action = "allow"
uid = 33
"#;

#[test]
fn full_example() {
    let config = parse(FULL).unwrap();
    assert_eq!(config.mode, Mode::Enforce);
    assert_eq!(config.deny_errno, DenyErrno::Eperm);
    assert_eq!(config.deny_errno.errno(), 1);
    assert!(!config.catalog);
    assert!(config.log_allowed);
    assert_eq!(
        config.protect.ports,
        PortSet::Ranges(vec![
            PortRange {
                first: 8080,
                last: 8080
            },
            PortRange {
                first: 9000,
                last: 9100
            },
            PortRange {
                first: 22,
                last: 22
            },
        ])
    );
    let netns: Vec<_> = config.protect.netns.iter().map(|n| &n.value).collect();
    assert_eq!(netns, ["/run/netns/blue", "/proc/1/ns/net"]);
    assert_eq!(
        config.protect.netns[1].at,
        Location {
            line: 9,
            column: 29
        }
    );
    assert!(config.protect.host_addresses);

    assert_eq!(config.rules.len(), 2);
    let r = &config.rules[0];
    assert_eq!(r.name, "relay-socat");
    assert_eq!(r.at.line, 13);
    assert_eq!(r.action, Action::Deny);
    let c = &r.criteria;
    assert_eq!(c.exe[0].value, Path::new("/usr/bin/socat"));
    assert_eq!(
        c.exe[0].at,
        Location {
            line: 15,
            column: 7
        }
    );
    assert_eq!(c.exe_name.len(), 2);
    assert_eq!(
        c.exe_name[1].at,
        Location {
            line: 16,
            column: 22
        }
    );
    assert_eq!(c.comm[0].value, "socat");
    let uids: Vec<u32> = c.uid.iter().map(|u| u.value).collect();
    assert_eq!(uids, [0, 1000]);
    assert_eq!(c.user[0].value, "nobody");
    assert_eq!(c.cgroup[0].value, "cloudflared.service");
    assert_eq!(c.parent_exe.len(), 1);
    assert_eq!(c.ancestor_exe.len(), 2);
    assert_eq!(c.ancestor_exe[1].at.line, 22);

    let r = &config.rules[1];
    assert_eq!(r.name, "allow.me:1");
    assert_eq!(r.action, Action::Allow);
    assert_eq!(r.criteria.uid[0].value, 33);
    assert!(r.criteria.exe.is_empty());
}

#[test]
fn single_port_and_all() {
    let config = parse("[protect]\nports = 443\n").unwrap();
    assert_eq!(
        config.protect.ports,
        PortSet::Ranges(vec![PortRange {
            first: 443,
            last: 443
        }])
    );
    let config = parse("[protect]\nports = \"all\"\n").unwrap();
    assert_eq!(config.protect.ports, PortSet::All);
}

#[test]
fn invalid_toml() {
    expect_error("mode = \"audit\"\n\nmode = = 3\n", 3, "");
    expect_error("[protect\nports = 1\n", 1, "");
}

#[test]
fn unknown_fields() {
    expect_error(
        "mode = \"audit\"\nmood = \"enforce\"\n",
        2,
        "unknown field `mood`",
    );
    expect_error(
        "[protect]\nports = \"all\"\nport = 1\n",
        3,
        "unknown field `port`",
    );
    expect_error(
        "[[rule]]\nname = \"a\"\naction = \"deny\"\ncomm = \"x\"\nexe_path = \"/x\"\n",
        5,
        "unknown field `exe_path`",
    );
}

#[test]
fn bad_mode_action_errno() {
    expect_error("\nmode = \"block\"\n", 2, "unknown variant `block`");
    expect_error(
        "[[rule]]\nname = \"a\"\naction = \"drop\"\ncomm = \"x\"\n",
        3,
        "expected one of `deny`, `audit`, `allow`",
    );
    expect_error("deny_errno = \"EACCES\"\n", 1, "`ECONNREFUSED` or `EPERM`");
}

#[test]
fn missing_rule_fields() {
    expect_error(
        "[[rule]]\nname = \"a\"\ncomm = \"x\"\n",
        1,
        "missing field `action`",
    );
    expect_error(
        "[[rule]]\naction = \"deny\"\ncomm = \"x\"\n",
        1,
        "missing field `name`",
    );
}

#[test]
fn bad_ports() {
    let p = |ports: &str| format!("# protect\n[protect]\nports = {ports}\n");
    expect_error(&p("[80, \"9100-9000\"]"), 3, "9100-9000 is reversed");
    expect_error(&p("[0]"), 3, "port 0 is out of range");
    expect_error(&p("[\n  80,\n  70000,\n]"), 5, "port 70000 is out of range");
    expect_error(&p("\"9000-70000\""), 3, "port 70000 is out of range");
    expect_error(&p("\"9000..9100\""), 3, "not a port range");
    expect_error(&p("\"-5\""), 3, "not a port range");
    expect_error(&p("[]"), 3, "empty list");
    expect_error(&p("[\"all\", 80]"), 3, "\"all\" cannot be combined");
    expect_error(&p("-1"), 3, "port -1 is out of range");
    expect_error(&p("1.5"), 3, "invalid type");
}

fn rule(body: &str) -> String {
    format!("mode = \"audit\"\n\n[[rule]]\nname = \"r\"\naction = \"deny\"\n{body}\n")
}

#[test]
fn bad_rules() {
    expect_error(&rule(""), 4, "rule `r` has no criteria");
    expect_error(
        &rule("comm = \"a-very-long-comm-name\""),
        6,
        "is 21 bytes but the kernel keeps at most 15",
    );
    // Exactly 15 bytes is fine.
    parse(&rule("comm = \"fifteen-bytes-x\"")).unwrap();
    expect_error(
        &rule(&format!("exe_name = \"{}\"", "x".repeat(32))),
        6,
        "is 32 bytes but the kernel compares at most 31",
    );
    parse(&rule(&format!("exe_name = \"{}\"", "x".repeat(31)))).unwrap();
    expect_error(
        &rule("exe = [\"/usr/bin/a\",\n  \"bin/socat\"]"),
        7,
        "`exe` must be an absolute path, not `bin/socat`",
    );
    expect_error(
        &rule("parent_exe = \"sshd\""),
        6,
        "`parent_exe` must be an absolute path",
    );
    expect_error(&rule("exe_name = \"/usr/bin/x\""), 6, "put paths in exe");
    expect_error(&rule("comm = []"), 6, "`comm` is an empty list");
    expect_error(&rule("user = \"\""), 6, "`user` is an empty string");
    expect_error(&rule("uid = -1"), 6, "invalid value");
    expect_error(&rule("uid = [\"root\"]"), 6, "invalid type");
    expect_error(
        "[protect]\nnetns = \"blue\"\n",
        2,
        "`netns` must be an absolute path",
    );
}

#[test]
fn bad_rule_names() {
    let named =
        |name: &str| format!("[[rule]]\nname = \"{name}\"\naction = \"deny\"\ncomm = \"x\"\n");
    expect_error(&named("has space"), 2, "may only contain");
    expect_error(&named(""), 2, "may only contain");
    expect_error(&named("catalog:socat"), 2, "reserved for built-in rules");
    let twice = format!("{}\n{}", named("same"), named("same"));
    expect_error(&twice, 7, "already used by the rule at line 2");
}

#[test]
fn too_many_rules() {
    let fit = MAX_RULES - CATALOG.len();
    parse(&rules(fit)).unwrap();
    // Rule number `fit` (0-based) starts at line 4 * fit + 1; its name is
    // on the next line.
    expect_error(&rules(fit + 1), 4 * fit + 2, "too many rules");
    let without_catalog = format!("catalog = false\n{}", rules(MAX_RULES));
    parse(&without_catalog).unwrap();
    let over = format!("catalog = false\n{}", rules(MAX_RULES + 1));
    expect_error(&over, 4 * MAX_RULES + 3, "set `catalog = false`");
}

#[test]
fn missing_file_says_how_to_fix() {
    let err = Config::from_file("/nonexistent/loopwarden.toml").unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }));
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/loopwarden.toml"),
        "{message}"
    );
    assert!(message.contains("--config"), "{message}");
    assert!(message.contains("check-config"), "{message}");
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("loopwarden-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rules(n: usize) -> String {
    (0..n)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\nuid = {i}\n"))
        .collect()
}

#[test]
fn five_thousand_rules_are_refused_at_the_first_that_does_not_fit() {
    let text = rules(5000);
    let start = std::time::Instant::now();
    let fit = MAX_RULES - CATALOG.len();
    let err = expect_error(&text, 4 * fit + 2, "too many rules: 5000 in the file");
    println!("5000 rules: {err} ({:?})", start.elapsed());
    assert!(matches!(
        err,
        ConfigError::Invalid {
            problem: Problem::TooManyRules { user: 5000, .. },
            ..
        }
    ));
}

#[test]
fn every_port() {
    let config = parse("[protect]\nports = \"1-65535\"\n").unwrap();
    assert_eq!(
        config.protect.ports,
        PortSet::Ranges(vec![PortRange {
            first: 1,
            last: 65535
        }])
    );
    // Each of the 65,535 listed on its own (about 400 KB of TOML).
    let list: Vec<String> = (1..=u16::MAX).map(|p| p.to_string()).collect();
    let text = format!("[protect]\nports = [{}]\n", list.join(", "));
    let start = std::time::Instant::now();
    let config = parse(&text).unwrap();
    let elapsed = start.elapsed();
    println!("65535 ports parsed in {elapsed:?}");
    let PortSet::Ranges(ranges) = &config.protect.ports else {
        panic!("expected ranges");
    };
    assert_eq!(ranges.len(), 65535);
    assert_eq!(
        ranges[65534],
        PortRange {
            first: 65535,
            last: 65535
        }
    );
    // Generous: a debug build on a busy machine takes well under a second.
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
}

#[test]
fn paths_longer_than_linux_allows() {
    let long = |len: usize| {
        // Components of 200 bytes: only the total is over the limit.
        let mut path = format!("/{}", "a".repeat(199)).repeat(len / 200 + 1);
        path.truncate(len);
        path
    };
    for len in [10_000, libc::PATH_MAX as usize] {
        let path = long(len);
        assert_eq!(path.len(), len);
        let err = expect_error(
            &rule(&format!("exe = \"{path}\"")),
            6,
            &format!("`exe` path is {len} bytes, longer than Linux allows (4095"),
        );
        // The message says how long, without repeating the path.
        assert!(err.to_string().len() < 200, "{err}");
    }
    // The longest Linux takes is valid here (it may still not exist).
    let fits = long(libc::PATH_MAX as usize - 1);
    let config = parse(&rule(&format!("ancestor_exe = \"{fits}\""))).unwrap();
    assert_eq!(
        config.rules[0].criteria.ancestor_exe[0]
            .value
            .as_os_str()
            .len(),
        4095
    );
    let component = format!("/usr/bin/{}", "x".repeat(256));
    expect_error(
        &format!("[protect]\nnetns = \"{component}\"\n"),
        2,
        "`netns` path has a 256-byte component, longer than Linux allows (255",
    );
    parse(&rule(&format!("exe = \"/usr/bin/{}\"", "x".repeat(255)))).unwrap();
}

#[test]
fn a_file_that_is_not_utf8_is_named_with_the_position() {
    let tmp = TempDir::new("utf8");
    let path = tmp.file("latin1.toml", b"mode = \"audit\"\n# caf\xe9\n");
    let err = Config::from_file(&path).unwrap_err();
    assert!(matches!(err, ConfigError::NotUtf8 { .. }), "{err:?}");
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "{}:2:6: not UTF-8 text (byte 0xe9): policy files must be UTF-8",
            path.display()
        )
    );
    // A binary file fails at its first byte that is not UTF-8.
    let err = Config::from_bytes_named(b"\x7fELF\x02\x01\x01\xff", "x").unwrap_err();
    assert!(err.to_string().starts_with("x:1:8: not UTF-8"), "{err}");
}

#[test]
fn a_directory_is_not_a_config_file() {
    let tmp = TempDir::new("dir");
    let err = Config::from_file(&tmp.0).unwrap_err();
    assert!(matches!(err, ConfigError::IsDirectory { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("config file {} is a directory", tmp.0.display())),
        "{message}"
    );
}

#[test]
fn an_empty_file_is_the_default_policy_with_a_warning() {
    let tmp = TempDir::new("empty");
    let path = tmp.file("empty.toml", b"");
    let config = Config::from_file(&path).unwrap();
    assert_eq!(config.mode, Mode::Audit);
    assert_eq!(config.protect.ports, PortSet::All);
    assert_eq!(config.warnings.len(), 1);
    assert!(
        config.warnings[0].starts_with(&path.display().to_string()),
        "{:?}",
        config.warnings
    );
}

#[test]
fn huge_files_are_refused_before_they_are_read() {
    let tmp = TempDir::new("huge");
    // 50 MiB, sparse: nothing is written, and nothing must be read.
    let path = tmp.0.join("huge.toml");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(50 << 20)
        .unwrap();
    let start = std::time::Instant::now();
    let err = Config::from_file(&path).unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(
        err.to_string(),
        format!(
            "config file {} is 52428800 bytes, over the 4194304-byte (4 MiB) limit for policy \
             files: is this the right file?",
            path.display()
        )
    );
    // Exactly at the limit is read (and then parsed: all spaces is empty).
    let path = tmp.file("limit.toml", &vec![b' '; MAX_CONFIG_BYTES as usize]);
    assert!(Config::from_file(&path).is_ok());
    // A device that never ends and says no size: read up to the limit only.
    let err = Config::from_file("/dev/zero").unwrap_err();
    assert!(
        matches!(err, ConfigError::TooLarge { size: None, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is longer than the 4194304-byte"),
        "{err}"
    );
}

#[test]
fn line_index() {
    let lines = LineIndex::new("ab\nc\u{e9}d\n\nx");
    assert_eq!(lines.locate(0), Location { line: 1, column: 1 });
    assert_eq!(lines.locate(2), Location { line: 1, column: 3 });
    assert_eq!(lines.locate(3), Location { line: 2, column: 1 });
    assert_eq!(lines.locate(6), Location { line: 2, column: 3 });
    assert_eq!(lines.locate(8), Location { line: 3, column: 1 });
    assert_eq!(lines.locate(9), Location { line: 4, column: 1 });
}

#[test]
fn relay_table_and_script_criterion() {
    let config = parse(
        "[relay]\naction = \"deny\"\nwindow_ms = 500\n\n[[rule]]\nname = \"s\"\naction = \"allow\"\nscript = [\"relay.py\", \"/srv/x.js\"]\n",
    )
    .unwrap();
    assert_eq!(config.relay.action, Action::Deny);
    assert_eq!(config.relay.window_ms, 500);
    assert_eq!(config.rules[0].criteria.script.len(), 2);
    assert_eq!(config.rules[0].criteria.script[1].at.line, 8);
    // Left out: the defaults.
    let config = parse("[relay]\n").unwrap();
    assert_eq!(config.relay, Config::embedded_default().relay);
    assert_eq!(config.relay.action, Action::Audit);

    expect_error("[relay]\nwindow_ms = 0\n", 2, "window_ms is 0");
    expect_error(
        "[[rule]]\nname = \"relay\"\naction = \"deny\"\ncomm = \"x\"\n",
        2,
        "`relay` is reserved",
    );
    expect_error("[relay]\nwindow_ms = 700000\n", 2, "from 1 to 600000");
    expect_error("[relay]\naction = \"maybe\"\n", 2, "unknown variant");
    expect_error("[relay]\nwindows = 5\n", 2, "unknown field");
    let long = "x".repeat(64);
    expect_error(
        &format!("[[rule]]\nname = \"s\"\naction = \"deny\"\nscript = \"{long}\"\n"),
        4,
        "at most 63",
    );
}

#[test]
fn provenance_and_ident_tables() {
    let config = parse(
        "[provenance]\ngetsockopt = false\n\n[ident]\nlisten = [\"127.0.0.1:113\", \"[::1]:113\"]\n\
         netns = \"/run/netns/blue\"\nrelayed = \"HIDDEN-USER\"\ntimeout_ms = 500\n",
    )
    .unwrap();
    assert!(config.provenance.tag && config.provenance.query);
    assert!(!config.provenance.getsockopt);
    let listen: Vec<String> = config
        .ident
        .listen
        .iter()
        .map(|l| l.value.to_string())
        .collect();
    assert_eq!(listen, ["127.0.0.1:113", "[::1]:113"]);
    assert_eq!(config.ident.listen[1].at.line, 5);
    assert_eq!(
        config.ident.netns.as_ref().map(|n| n.value.clone()),
        Some(PathBuf::from("/run/netns/blue"))
    );
    assert_eq!(config.ident.relayed.token(), "HIDDEN-USER");
    assert_eq!(config.ident.timeout_ms, 500);

    // Off by default; the embedded default tags and answers.
    let default = Config::embedded_default();
    assert!(default.ident.listen.is_empty());
    assert_eq!(default.ident.relayed.token(), "NO-USER");
    assert!(default.provenance.tag && default.provenance.getsockopt && default.provenance.query);

    expect_error(
        "[ident]\nlisten = [\"localhost:113\"]\n",
        2,
        "not a socket address",
    );
    expect_error("[ident]\nlisten = []\n", 2, "empty list");
    expect_error("[ident]\nnetns = \"blue\"\n", 2, "absolute path");
    expect_error("[ident]\ntimeout_ms = 0\n", 2, "from 100 to 600000");
    expect_error("[ident]\nrelayed = \"LIES\"\n", 2, "unknown variant");
    expect_error("[provenance]\ntagging = true\n", 2, "unknown field");
    let scoped =
        parse("[provenance]\ngetsockopt_cgroups = [\"ollama.service\", \"x/y\"]\n").unwrap();
    let named: Vec<&str> = scoped
        .provenance
        .getsockopt_cgroups
        .iter()
        .map(|c| c.value.as_str())
        .collect();
    assert_eq!(named, ["ollama.service", "x/y"]);
    assert!(default.provenance.getsockopt_cgroups.is_empty());
    expect_error("[provenance]\ngetsockopt_cgroups = []\n", 2, "empty list");
    expect_error(
        "[provenance]\ngetsockopt_cgroups = \"\"\n",
        2,
        "empty string",
    );
}

#[test]
fn provenance_connections_sizes_the_kernel_table_within_bounds() {
    let default = Config::embedded_default();
    assert_eq!(default.provenance.connections, loopwarden_common::MAX_CONNS);
    assert_eq!(
        parse("[provenance]\nconnections = 65536\n")
            .unwrap()
            .provenance
            .connections,
        65536
    );
    // Both bounds are accepted; one past either is refused at its line.
    for ok in [1024, 1_048_576] {
        let config = parse(&format!("[provenance]\nconnections = {ok}\n")).unwrap();
        assert_eq!(i64::from(config.provenance.connections), ok);
    }
    for bad in ["1023", "1048577", "0", "-1"] {
        expect_error(
            &format!("[provenance]\ntag = true\nconnections = {bad}\n"),
            3,
            "from 1024 to 1048576",
        );
    }
    expect_error("[provenance]\nconnections = \"many\"\n", 2, "invalid type");
}

#[test]
fn bind_table() {
    assert_eq!(parse("mode = \"audit\"\n").unwrap().bind, Bind::default());
    let config = parse(
        "[bind]\nloopback_only = [11434, \"9000-9100\"]\nallow_exe = \"/usr/sbin/nginx\"\n\
         allow_user = [\"www-data\"]\nallow_uid = [33, 0]\n",
    )
    .unwrap();
    let b = &config.bind;
    assert_eq!(
        b.loopback_only,
        [
            PortRange {
                first: 11434,
                last: 11434
            },
            PortRange {
                first: 9000,
                last: 9100
            }
        ]
    );
    assert_eq!(b.allow_exe[0].value, PathBuf::from("/usr/sbin/nginx"));
    assert_eq!(b.allow_exe[0].at.line, 3);
    assert_eq!(b.allow_user[0].value, "www-data");
    let uids: Vec<u32> = b.allow_uid.iter().map(|u| u.value).collect();
    assert_eq!(uids, [33, 0]);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // An empty list turns the guard off, like leaving the key out.
    let off = parse("[bind]\nloopback_only = []\n").unwrap();
    assert!(off.bind.loopback_only.is_empty());
    // Exemptions without ports do nothing: say so.
    let idle = parse("[bind]\nallow_uid = 33\n").unwrap();
    assert!(
        idle.warnings
            .iter()
            .any(|w| w.contains("bind guard is off")),
        "{:?}",
        idle.warnings
    );
}

#[test]
fn bad_bind_table() {
    expect_error("[bind]\nloopback_only = \"all\"\n", 2, "not \"all\"");
    expect_error("[bind]\nloopback_only = [80, \"all\"]\n", 2, "not \"all\"");
    expect_error(
        "[bind]\nloopback_only = [80, 0]\n",
        2,
        "port 0 is out of range",
    );
    expect_error("[bind]\nloopback_only = [\"9-1\"]\n", 2, "reversed");
    expect_error("[bind]\nloopback_only = [\"x\"]\n", 2, "not a port range");
    expect_error("[bind]\n\nallow_exe = \"nginx\"\n", 3, "absolute path");
    expect_error("[bind]\nallow_uid = []\n", 2, "empty list");
    expect_error("[bind]\nallow_user = \"\"\n", 2, "empty string");
    expect_error("[bind]\nports = [80]\n", 2, "unknown field");
    expect_error(
        "[[rule]]\nname = \"bind-guard\"\naction = \"deny\"\nuid = 0\n",
        2,
        "reserved",
    );
}

#[test]
fn metrics_table() {
    let default = parse("").unwrap();
    assert!(default.metrics.socket);
    assert_eq!(default.metrics.listen, None);

    let config =
        parse("[protect]\nports = [8080, \"9000-9100\"]\n\n[metrics]\nsocket = false\nlisten = \"127.0.0.1:9477\"\n")
            .unwrap();
    assert!(!config.metrics.socket);
    let listen = config.metrics.listen.as_ref().unwrap();
    assert_eq!(listen.value, "127.0.0.1:9477".parse().unwrap());
    assert_eq!(listen.at.line, 6);
    // The metrics port joins a listed port set, once.
    let PortSet::Ranges(ranges) = &config.protect.ports else {
        panic!("ports: {:?}", config.protect.ports);
    };
    assert_eq!(
        ranges.last(),
        Some(&PortRange {
            first: 9477,
            last: 9477
        })
    );
    let inside =
        parse("[protect]\nports = [\"9000-9500\"]\n[metrics]\nlisten = \"[::1]:9477\"\n").unwrap();
    assert_eq!(
        inside.protect.ports,
        PortSet::Ranges(vec![PortRange {
            first: 9000,
            last: 9500
        }])
    );
    // "all" already covers it.
    let all = parse("[metrics]\nlisten = \"127.0.0.1:9477\"\n").unwrap();
    assert_eq!(all.protect.ports, PortSet::All);

    expect_error(
        "[metrics]\nlisten = \"0.0.0.0:9477\"\n",
        2,
        "not a loopback address",
    );
    expect_error(
        "[metrics]\nlisten = \"localhost\"\n",
        2,
        "not a socket address",
    );
    expect_error("[metrics]\nport = 9477\n", 2, "unknown field");
}

/// The commented file the package installs (`contrib/loopwarden.toml`) is the
/// embedded default as it stands, and still is with every `#key = value`
/// uncommented: the values it shows are the defaults. Its example rules parse.
#[test]
fn shipped_file_shows_the_defaults() {
    let text = include_str!("../../../contrib/loopwarden.toml");
    let default = |config: &Config| Config {
        source: config.source.clone(),
        ..Config::embedded_default()
    };
    let shipped = parse(text).unwrap();
    assert!(shipped.warnings.is_empty(), "{:?}", shipped.warnings);
    assert_eq!(shipped, default(&shipped));

    let (settings, examples) = text.split_once("#[[rule]]").unwrap();
    let is_key = |l: &str| {
        l.strip_prefix('#')
            .and_then(|l| l.split_once(" = "))
            .is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    };
    let uncommented: String = settings
        .lines()
        .map(|l| if is_key(l) { &l[1..] } else { l })
        .flat_map(|l| [l, "\n"])
        .collect();
    assert!(uncommented.matches("\n").count() > 10 && uncommented.contains("\nwindow_ms = 2000\n"));
    let all_keys = parse(&uncommented).unwrap();
    assert_eq!(all_keys, default(&all_keys));

    let rules: String = format!("#[[rule]]{examples}")
        .lines()
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .flat_map(|l| [l, "\n"])
        .collect();
    let examples = parse(&rules).unwrap();
    assert_eq!(examples.rules.len(), 2);
    assert_eq!(examples.egress.len(), 1);
}

#[test]
fn browsers_table() {
    let d = parse("mode = \"audit\"\n").unwrap().browsers;
    assert_eq!(d, Config::embedded_default().browsers);
    assert_eq!(d.action, Action::Audit);
    assert_eq!(d.rules(), 0);
    let config = parse(
        "[protect]\nports = [3000, 11434, \"8000-8100\"]\n[browsers]\naction = \"allow\"\n\
         deny = [11434, \"8000-8100\"]\nallow = [3000]\naudit = []\n\
         exe_name = [\"code\", \"slack\"]\nexe = \"/opt/app/app\"\n",
    )
    .unwrap();
    let b = &config.browsers;
    assert_eq!(b.action, Action::Allow);
    let ranges = |list: &[Located<PortRange>]| -> Vec<String> {
        list.iter()
            .map(|r| format!("{}@{}", r.value, r.at.line))
            .collect()
    };
    assert_eq!(ranges(&b.deny), ["11434@5", "8000-8100@5"]);
    assert_eq!(ranges(&b.allow), ["3000@6"]);
    assert!(b.audit.is_empty());
    assert_eq!(b.exe_name[1].value, "slack");
    assert_eq!(b.exe[0].value, PathBuf::from("/opt/app/app"));
    assert_eq!(b.rules(), 2);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn bad_browsers_table() {
    // A port gets one treatment: the second listing names the first.
    let twice = "already listed in [browsers] deny at line 2";
    for (text, line, phrase) in [
        (
            "deny = [11434]\nallow = [3000, 11434]\n",
            3,
            "port 11434 is already listed",
        ),
        (
            "deny = [\"8000-8100\"]\n\naudit = [\"8100-8200\"]\n",
            4,
            "port 8100 is already",
        ),
        ("deny = [80, 80]\n", 2, twice),
        ("deny = \"all\"\n", 2, "not \"all\""),
        ("allow = [0]\n", 2, "port 0 is out of range"),
        ("action = \"block\"\n", 2, "unknown variant"),
        ("ports = [80]\n", 2, "unknown field"),
        ("exe_name = \"a/b\"\n", 2, "file name"),
        ("exe = \"app\"\n", 2, "absolute path"),
    ] {
        let err = expect_error(&format!("[browsers]\n{text}"), line, phrase);
        if phrase.contains("already") {
            assert!(err.to_string().contains(twice), "{err}");
        }
    }
    expect_error(
        "[[rule]]\nname = \"browsers\"\naction = \"deny\"\ncomm = \"x\"\n",
        2,
        "reserved",
    );
    // A listed port the policy does not protect is never judged: say so.
    let config = parse("[protect]\nports = [8080]\n[browsers]\ndeny = [\"8080-8081\"]\n").unwrap();
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.starts_with("test.toml:4: [browsers] lists 8080-8081")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn browsers_rules_count_towards_the_limit() {
    let fit = MAX_RULES - CATALOG.len() - 1;
    let rules: String = (0..=fit)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\ncomm = \"x\"\n"))
        .collect();
    let ok = rules.rsplit_once("[[rule]]").map_or("", |(head, _)| head);
    parse(&format!("[browsers]\nexe_name = \"slack\"\n{ok}")).unwrap();
    let err = parse(&format!("[browsers]\nexe_name = \"slack\"\n{rules}")).unwrap_err();
    assert!(err.to_string().contains("too many rules"), "{err}");
}
