//! `[[rule]]` tables: criteria, names, paths and how many fit.

use super::*;

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
    // The kernel reads 31 bytes of a file's name: a name of 31 reads as
    // every longer one starting with it.
    for len in [31, 32] {
        expect_error(
            &rule(&format!("exe_name = \"{}\"", "x".repeat(len))),
            6,
            &format!(
                "is {len} bytes: the kernel reads the first 31 bytes of a file's name, so it could not tell one of 31 or more from longer ones that start alike; give at most 30 bytes"
            ),
        );
    }
    parse(&rule(&format!("exe_name = \"{}\"", "x".repeat(30)))).unwrap();
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
    for (name, glob) in [("python3*", '*'), ("node?", '?'), ("[pn]ode", '[')] {
        expect_error(
            &rule(&format!("exe_name = \"{name}\"")),
            6,
            &format!(
                "exe_name `{name}` contains `{glob}`: a rule's exe_name is matched as the file's exact name"
            ),
        );
    }
    // Whitespace at an end, or a line break a multi-line string keeps:
    // matched exactly, never matching.
    for (value, shown) in [
        ("exe_name = \"socat \"", "exe_name \"socat \""),
        ("comm = \" socat\"", "comm \" socat\""),
        ("user = \"alice\\t\"", "user \"alice\\t\""),
        (
            "script = \"\"\"\n/opt/bridge.py\n\"\"\"",
            "script \"/opt/bridge.py\\n\"",
        ),
    ] {
        expect_error(
            &rule(value),
            6,
            &format!("{shown} has whitespace at an end or a control character"),
        );
    }
    // Inside a name, a space is a name's (Firefox's threads' comm).
    parse(&rule("comm = \"Web Content\"")).unwrap();
    expect_error(&rule("comm = []"), 6, "`comm` is an empty list");
    expect_error(&rule("user = \"\""), 6, "`user` is an empty string");
    expect_error(
        &rule("cgroup = [\"app.service\", \"system.slice/../../x\"]"),
        6,
        "cgroup `system.slice/../../x` has a `..` component",
    );
    for (path, below) in [
        ("/sys/fs/cgroup/system.slice", "system.slice"),
        (
            "/sys/fs/cgroup/unified/user.slice/x.scope",
            "user.slice/x.scope",
        ),
    ] {
        expect_error(
            &rule(&format!("cgroup = \"{path}\"")),
            6,
            &format!(
                "is a path on the cgroup filesystem: a cgroup is named by its path below the cgroup v2 root, so write `{below}`"
            ),
        );
    }
    for root in ["/", "/./", "."] {
        expect_error(
            &rule(&format!("cgroup = \"{root}\"")),
            6,
            "is the root cgroup, which holds every process",
        );
    }
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
    expect_error(
        &named("catalog:socat"),
        2,
        "starts with `catalog:`, which is reserved",
    );
    expect_error(
        &named("egress:x"),
        2,
        "starts with `egress:`, which is reserved",
    );
    expect_error(&named("-"), 2, "lines name no rule so");
    // A rule written as a single table says how to write it.
    expect_error(
        "[rule]\nname = \"x\"\naction = \"deny\"\ncomm = \"x\"\n",
        1,
        "each `[[rule]]` is written with double brackets",
    );
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
