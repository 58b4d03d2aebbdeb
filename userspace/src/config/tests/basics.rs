//! The file's shape: the empty and full examples, ports, unknown or
//! mistyped fields.

use super::*;

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
                empty: true,
                text: config.text.clone(),
                ..Config::embedded_default()
            }
        );
    }
    // Any setting, even one that repeats a default, is no accident.
    for text in ["mode = \"audit\"\n", "[protect]\n"] {
        let config = parse(text).unwrap();
        assert!(config.warnings.is_empty() && !config.empty, "{text}");
    }
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

/// Every table's first problem and every rule's are said, in the file's
/// order (the relay window and the ports are checked before the rules and
/// said after them, where the file has them), on one line; a single
/// problem is said as it was, without a count; a rule that fails still
/// takes its name, so a later one of that name is said at once; each
/// `[[egress]]` rule's problem is said too; and past
/// [`SHOWN_PROBLEMS`](crate::SHOWN_PROBLEMS) the line
/// counts the rest.
#[test]
fn every_problem_of_a_file_is_said_in_its_order() {
    let text = "\
[[rule]]
name = \"a\"
action = \"deny\"

[[rule]]
name = \"b\"
action = \"deny\"
uid = 1

[[rule]]
name = \"b\"
action = \"deny\"
uid = 2

[relay]
window_ms = 0

[protect]
ports = [70000]
";
    let err = parse(text).expect_err("three problems");
    let lines: Vec<usize> = err
        .problems()
        .iter()
        .map(|p| match p {
            ConfigError::Invalid { at, .. } => at.line,
            other => panic!("not a value's problem: {other}"),
        })
        .collect();
    assert_eq!(lines, [2, 11, 16, 19], "{err}");
    let message = err.to_string();
    assert!(message.starts_with("4 problems: test.toml:2:"), "{message}");
    for phrase in [
        "has no criteria",
        "already used by the rule at line 6",
        "window_ms is 0",
        "70000",
    ] {
        assert!(message.contains(phrase), "{phrase:?} in {message}");
    }
    assert!(!message.contains('\n'), "{message}");
    // One problem: as before.
    let one = expect_error("[relay]\nwindow_ms = 0\n", 2, "window_ms is 0");
    assert_eq!(one.problems().len(), 1);
    // A failed rule's name, then egress rules.
    let text = "\
[[rule]]
name = \"a\"
action = \"deny\"

[[rule]]
name = \"a\"
action = \"deny\"
uid = 1

[[egress]]
name = \"e1\"
action = \"deny\"
uid = 1000
deny = [\"no-such-class\"]

[[egress]]
name = \"e2\"
action = \"deny\"
uid = 1001
deny = [\"also-not-one\"]
";
    let err = parse(text).expect_err("four problems");
    let message = err.to_string();
    assert!(message.starts_with("4 problems: test.toml:2:"), "{message}");
    assert!(
        message.contains("test.toml:6:8: rule name `a` is already used"),
        "{message}"
    );
    assert!(message.contains("no-such-class"), "{message}");
    assert!(message.contains("also-not-one"), "{message}");
    // Many: the line shows ten and counts the rest.
    let many: String = (0..15)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\n"))
        .collect();
    let message = parse(&many).expect_err("fifteen problems").to_string();
    assert!(message.starts_with("15 problems: "), "{message}");
    assert!(message.ends_with("; and 5 more"), "{message}");
    assert_eq!(message.matches("has no criteria").count(), 10, "{message}");
}

/// A NUL in a string (`\u0000`, the only way TOML writes one) is refused
/// with its line: no name the kernel compares holds one, so the value
/// would match nothing. The same escape in a comment or a literal string
/// is no NUL, and is passed over.
#[test]
fn a_nul_in_a_string_is_refused_with_its_line() {
    expect_error(&rule("comm = \"soc\\u0000at\""), 6, "NUL");
    expect_error(&rule("script = \"a\\U00000000\""), 6, "NUL");
    expect_error(&rule("exe_name = \"\\u0000\""), 6, "NUL");
    parse(&rule("comm = 'soc\\u0000at' # \\u0000")).expect("a literal string's backslash");
}
