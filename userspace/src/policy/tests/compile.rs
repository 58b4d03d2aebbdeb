//! What compiling yields and refuses: settings, ports, netns, unresolvable
//! or missing names, limits, warnings and the summary.

use loopwarden_common::{NETNS_INLINE, NETNS_NOT_INLINE};

use super::*;

#[test]
fn settings_flags_ports_and_netns() {
    let policy = compile_ok(
        r#"
mode = "enforce"
deny_errno = "EPERM"
catalog = false
log_allowed = true
[protect]
ports = [22, "8080", "9000-9100", 9101]
netns = "/run/netns/blue"
host_addresses = true
[[rule]]
name = "r"
action = "deny"
comm = "x"
"#,
        &host(),
    );
    let s = &policy.settings;
    assert_eq!(
        s.flags,
        flags::ENABLED
            | flags::ENFORCE
            | flags::NETNS_SCOPED
            | flags::HOST_ADDRS
            | flags::LOG_ALLOWED
            | flags::RELAY
            | flags::PROVENANCE
    );
    assert_eq!(s.deny_errno, 1);
    assert!(policy.host_addresses);
    assert_eq!(
        policy.netns,
        [Netns {
            path: "/run/netns/blue".to_owned(),
            cookie: 4096,
            inode: 0,
        }]
    );
    for port in [22, 8080, 9000, 9050, 9100, 9101] {
        assert!(policy.ports.contains(port), "{port}");
    }
    for port in [0, 21, 23, 8081, 8999, 9102, 65535] {
        assert!(!policy.ports.contains(port), "{port}");
    }
    let Ports::Some(words) = &policy.ports else {
        panic!("expected a bitmap");
    };
    assert_eq!(words[0], 1 << 22);
    assert_eq!(policy.ports.to_string(), "22, 8080, 9000-9101");
    // One namespace: compared inline, without the map lookup.
    assert_eq!((s.netns_inline, s.netns), (1, [4096, 0, 0, 0]));
}

#[test]
fn up_to_four_namespaces_are_compared_inline_more_are_looked_up() {
    let mut host = host();
    let names = ["a", "b", "c", "d", "e"];
    for (i, name) in names.iter().enumerate() {
        host.netns
            .insert(PathBuf::from(format!("/run/netns/{name}")), 100 + i as u64);
    }
    let scoped = |names: &[&str]| {
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("\"/run/netns/{n}\""))
            .collect();
        let text = format!(
            "catalog = false\n[protect]\nnetns = [{}]\n",
            list.join(", ")
        );
        compile(&config(&text), &host).unwrap().settings
    };
    // The same namespace twice counts once.
    let s = scoped(&["d", "a", "d", "c", "b"]);
    assert_eq!((s.netns_inline, s.netns), (4, [100, 101, 102, 103]));
    let s = scoped(&names);
    assert_eq!(s.netns_inline, NETNS_NOT_INLINE);
    assert_eq!(s.netns, [0; NETNS_INLINE]);
    // Unscoped: nothing inline (the programs do not look).
    let s = compile(&config("catalog = false\n"), &host)
        .unwrap()
        .settings;
    assert_eq!((s.netns_inline, s.flags & flags::NETNS_SCOPED), (0, 0));
}

/// An `exe` that leads to a program that is many programs (busybox, snap)
/// matches all it runs: warned of, naming it. One that leads to a file of
/// another name that is one program is not (a versioned python).
#[test]
fn an_exe_that_links_to_a_multi_call_program_is_warned_of() {
    let r = host()
        .with_link("/bin/nc", "/bin/busybox", key(60))
        .with_link("/usr/bin/python3", "/usr/bin/python3.11", key(61));
    let rule = |exe: &str| format!("[[rule]]\nname = \"r\"\naction = \"deny\"\nexe = \"{exe}\"\n");
    let policy = compile_ok(&rule("/bin/nc"), &r);
    assert!(
        policy
            .warnings
            .iter()
            .any(|w| w.contains("exe /bin/nc is a link to /bin/busybox, a program that is many")),
        "{:?}",
        policy.warnings
    );
    let policy = compile_ok(&rule("/usr/bin/python3"), &r);
    assert!(
        !policy.warnings.iter().any(|w| w.contains("many programs")),
        "{:?}",
        policy.warnings
    );
}

#[test]
fn unresolvable_names_in_user_rules_are_errors() {
    let text = "catalog = false\n[[rule]]\nname = \"gone\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/usr/bin/gone\"]\n";
    let err = compile(&config(text), &host()).unwrap_err();
    assert!(matches!(err, PolicyError::Exe { field: "exe", .. }));
    let message = err.to_string();
    assert!(message.starts_with("test.toml:5:"), "{message}");
    assert!(message.contains("rule `gone`"), "{message}");
    assert!(message.contains("/usr/bin/gone"), "{message}");

    let text = "[[rule]]\nname = \"u\"\naction = \"deny\"\nancestor_exe = \"/usr/bin/gone\"\n";
    let err = compile(&config(text), &host()).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:4:"), "{err}");
    assert!(err.contains("ancestor_exe /usr/bin/gone"), "{err}");

    let text = "[[rule]]\nname = \"u\"\naction = \"deny\"\nuser = \"mallory\"\n";
    let err = compile(&config(text), &host()).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:4:"), "{err}");
    assert!(err.contains("rule `u`: no user named `mallory`"), "{err}");

    let text = "[protect]\nnetns = [\"/run/netns/blue\", \"/run/netns/red\"]\n";
    let err = compile(&config(text), &host()).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:2:29:"), "{err}");
    assert!(err.contains("/run/netns/red"), "{err}");
}

/// A strict compile says the first value that does not resolve in each
/// rule and table, in the file's order, not only the first in the file;
/// past a map's room it stops, and says that last.
#[test]
fn every_unresolvable_value_is_said() {
    let text = "catalog = false\n[protect]\nnetns = [\"/run/netns/red\"]\n\n[[rule]]\nname = \"gone\"\naction = \"deny\"\nexe = \"/usr/bin/gone\"\n\n[[rule]]\nname = \"fine\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\n\n[[rule]]\nname = \"nobody\"\naction = \"deny\"\nuser = \"mallory\"\n";
    let err = compile(&config(text), &host()).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 3, "{err}");
    assert!(matches!(problems[0], PolicyError::Netns { .. }), "{err}");
    assert!(matches!(problems[1], PolicyError::Exe { .. }), "{err}");
    assert!(
        matches!(problems[2], PolicyError::UnknownUser { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.starts_with("3 problems: test.toml:3:"), "{message}");
    // In the file's order, which need not be the compile's: a rule above
    // the namespaces is said first.
    let rule_first = "catalog = false\n[[rule]]\nname = \"nobody\"\naction = \"deny\"\nuser = \"mallory\"\n\n[protect]\nnetns = [\"/run/netns/red\"]\n";
    let err = compile(&config(rule_first), &host()).unwrap_err();
    let problems = err.problems();
    assert!(
        matches!(problems[0], PolicyError::UnknownUser { .. }),
        "{err}"
    );
    assert!(matches!(problems[1], PolicyError::Netns { .. }), "{err}");
    // Past a map's room the compile stops, said last, after those found.
    let uids: Vec<String> = (1..=1025).map(|u| u.to_string()).collect();
    let full = format!(
        "catalog = false\n[[rule]]\nname = \"nobody\"\naction = \"deny\"\nuser = \"mallory\"\n\n[[rule]]\nname = \"many\"\naction = \"audit\"\nuid = [{}]\n",
        uids.join(", ")
    );
    let err = compile(&config(&full), &host()).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 2, "{err}");
    assert!(
        matches!(problems[0], PolicyError::UnknownUser { .. }),
        "{err}"
    );
    assert!(
        matches!(problems[1], PolicyError::TooManyValues { .. }),
        "{err}"
    );
    // Each [[egress]] rule's too.
    let egress = "catalog = false\n[[egress]]\nname = \"e1\"\naction = \"deny\"\nexe = \"/usr/bin/gone\"\ndeny = [\"private\"]\n\n[[egress]]\nname = \"e2\"\naction = \"deny\"\nuser = \"mallory\"\ndeny = [\"private\"]\n";
    let err = compile(&config(egress), &host()).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 2, "{err}");
    assert!(matches!(problems[0], PolicyError::Exe { .. }), "{err}");
    assert!(
        matches!(problems[1], PolicyError::UnknownUser { .. }),
        "{err}"
    );
    // The control: one is said as it was.
    let one = "catalog = false\n[[rule]]\nname = \"u\"\naction = \"deny\"\nuser = \"mallory\"\n";
    let err = compile(&config(one), &host()).unwrap_err();
    assert!(matches!(err, PolicyError::UnknownUser { .. }), "{err}");
}

#[test]
fn lenient_recompile_drops_vanished_values_without_widening_the_rule() {
    let text = "catalog = false\n[protect]\nnetns = [\"/run/netns/blue\", \"/run/netns/red\"]\n\n[[rule]]\nname = \"gone\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/usr/bin/gone\"]\n\n[[rule]]\nname = \"nobody\"\naction = \"deny\"\nuser = \"mallory\"\n";
    assert!(compile(&config(text), &host()).is_err());
    let policy = compile_lenient(&config(text), &host(), None).unwrap();
    assert_eq!(policy.warnings.len(), 3, "{:?}", policy.warnings);
    assert!(policy.warnings.iter().any(|w| w.contains("/usr/bin/gone")));
    // Still scoped (to the namespace that exists), still two rules.
    assert_ne!(policy.settings.flags & flags::NETNS_SCOPED, 0);
    assert_eq!(policy.netns.len(), 1);
    assert_eq!(policy.settings.active, 0b11);
    // Rule 0 keeps its resolvable exe; rule 1 constrains uid with no
    // value left, so it matches nobody instead of everybody.
    assert_eq!(policy.exe.len(), 1);
    assert_eq!(policy.settings.wild_exe & 0b01, 0);
    assert_eq!(policy.settings.wild_uid & 0b10, 0);
    assert!(policy.uid.is_empty());
}

/// Scoped to namespaces none of which resolves: still scoped, to none, and
/// the summary says so (it said `all`).
#[test]
fn a_policy_scoped_to_no_namespace_that_exists_is_scoped_to_none() {
    let text = "[protect]\nnetns = \"/run/netns/red\"\n";
    let policy = compile_lenient(&config(text), &host(), None).unwrap();
    assert!(policy.scoped() && policy.netns.is_empty());
    let summary = policy.to_string();
    assert!(summary.contains("netns:       none resolved"), "{summary}");
    assert!(!compile_ok("", &host()).scoped());
}

/// A namespace whose name goes (`ip netns del`, while processes in it keep
/// it alive) stays in the scope of the policy re-resolved from the one
/// that had it: an enforcing policy never drops it by itself. A path new
/// to the file, or removed from it, is not kept.
#[test]
fn a_namespace_whose_name_went_stays_in_the_scope() {
    let mut host = host();
    host.netns.insert(PathBuf::from("/run/netns/red"), 77);
    let text = "[protect]\nnetns = [\"/run/netns/blue\", \"/run/netns/red\"]\n";
    let before = compile_lenient(&config(text), &host, None).unwrap();
    assert_eq!(before.netns.len(), 2);
    host.netns.remove(Path::new("/run/netns/red"));
    // Without the policy before: dropped.
    let fresh = compile_lenient(&config(text), &host, None).unwrap();
    assert_eq!(fresh.netns.len(), 1);
    // With it: kept, with a warning naming its cookie.
    let after = compile_lenient(&config(text), &host, Some(&before)).unwrap();
    assert_eq!(after.netns, before.netns);
    assert_eq!(after.settings, before.settings);
    assert!(
        after
            .warnings
            .iter()
            .any(|w| w.contains("/run/netns/red") && w.contains("stays in the scope (cookie 77)")),
        "{:?}",
        after.warnings
    );
    assert!(after.reload_refusal().is_none());
    // Every name gone: still scoped to the two namespaces, never to none.
    host.netns.clear();
    let gone = compile_lenient(&config(text), &host, Some(&after)).unwrap();
    assert_eq!(gone.netns, before.netns);
    // A path the file no longer has is not kept.
    let one = "[protect]\nnetns = \"/run/netns/blue\"\n";
    let dropped = compile_lenient(&config(one), &host, Some(&after)).unwrap();
    assert_eq!(
        dropped.netns.iter().map(|n| n.cookie).collect::<Vec<_>>(),
        [4096]
    );
    // Strict compiling (start, check-config) keeps nothing.
    assert!(compile(&config(text), &host).is_err());
}

/// A `script` value naming a shell script never matches (the kernel reads
/// no shell's script): warned of; a Python script's, a missing file's and
/// a relative value are not.
#[test]
fn a_script_rule_naming_a_shell_script_is_warned_of() {
    let mut host = host();
    host.scripts
        .insert(PathBuf::from("/srv/relay.sh"), ("bash".to_owned(), false));
    host.scripts
        .insert(PathBuf::from("/srv/relay.py"), ("python3".to_owned(), true));
    let text = "catalog = false\n[[rule]]\nname = \"r\"\naction = \"deny\"\nscript = [\"/srv/relay.sh\", \"/srv/relay.py\", \"/srv/gone.sh\", \"relay.sh\"]\n";
    let policy = compile_ok(text, &host);
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    let warning = &policy.warnings[0];
    assert!(warning.starts_with("test.toml:5:"), "{warning}");
    assert!(
        warning.contains("rule `r`: script `/srv/relay.sh` is run by bash"),
        "{warning}"
    );
    assert!(warning.contains("never matches"), "{warning}");
}

#[test]
fn missing_cgroup_is_a_warning() {
    let policy = compile_ok(
        "catalog = false\n[[rule]]\nname = \"tunnel\"\naction = \"deny\"\ncgroup = [\"later.service\", \"system.slice\"]\n",
        &host(),
    );
    assert_eq!(policy.warnings.len(), 1);
    let warning = &policy.warnings[0];
    assert!(warning.starts_with("test.toml:5:"), "{warning}");
    assert!(warning.contains("rule `tunnel`"), "{warning}");
    assert!(warning.contains("later.service"), "{warning}");
    // The rule is loaded, constrained to the cgroup that exists.
    assert_eq!(policy.settings.active, 1);
    assert_eq!(policy.settings.wild_cgroup, 0);
    assert_eq!(policy.cgroup, BTreeMap::from([(10, 1)]));
    assert!(
        policy.rules[0]
            .matches
            .contains("later.service (not found)")
    );
}

#[test]
fn every_port_compiles_quickly() {
    let all_but_zero = |policy: &CompiledPolicy| {
        assert!(!policy.ports.contains(0));
        assert!((1..=u16::MAX).all(|port| policy.ports.contains(port)));
        assert_eq!(policy.ports.to_string(), "1-65535");
        // Not the "all" fast path: port 0 stays unprotected.
        assert_eq!(policy.settings.flags & flags::ALL_PORTS, 0);
    };
    all_but_zero(&compile_ok("[protect]\nports = \"1-65535\"\n", &host()));

    let list: Vec<String> = (1..=u16::MAX).map(|p| p.to_string()).collect();
    let text = format!("[protect]\nports = [{}]\n", list.join(", "));
    let start = std::time::Instant::now();
    let policy = compile_ok(&text, &host());
    let elapsed = start.elapsed();
    println!("65535 listed ports parsed and compiled in {elapsed:?}");
    all_but_zero(&policy);
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
}

/// Setting every port of every range one by one took time proportional
/// to the ranges' total length: a 4 MiB file of "1-65535" entries made
/// tens of billions of steps.
#[test]
fn overlapping_port_ranges_cost_what_their_union_does() {
    let every = PortRange {
        first: 1,
        last: u16::MAX,
    };
    let mut ranges = vec![every; 1_000_000];
    ranges.push(PortRange { first: 0, last: 0 });
    let start = std::time::Instant::now();
    let merged = ports(&PortSet::Ranges(ranges));
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(merged.ranges(), Some(vec![(0, u16::MAX)]));
    // Nested and adjacent ranges, in any order.
    let ranges = [
        (9000, 9100),
        (22, 22),
        (9050, 9060),
        (9101, 9101),
        (80, 90),
        (85, 95),
    ];
    let merged = ports(&PortSet::Ranges(
        ranges
            .iter()
            .map(|&(first, last)| PortRange { first, last })
            .collect(),
    ));
    assert_eq!(merged.to_string(), "22, 80-95, 9000-9101");
}

#[test]
fn long_paths_fail_to_resolve_clearly() {
    // The longest path Linux takes passes validation; resolving it on
    // the real host fails with the file, line, rule and reason.
    let path = format!("/{}", "a".repeat(199)).repeat(21)[..4095].to_owned();
    let text = format!("[[rule]]\nname = \"long\"\naction = \"deny\"\nexe = \"{path}\"\n");
    let resolver = crate::resolve::HostResolver::new(PathBuf::from("/nonexistent-cgroup"));
    let err = compile(&config(&text), &resolver).unwrap_err();
    assert!(matches!(err, PolicyError::Exe { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("test.toml:4:7: rule `long`: exe /aaa"),
        "{message}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("No such file or directory"), "{source}");
}

#[test]
fn config_warnings_reach_the_policy() {
    let policy = compile_ok("# all defaults\n", &host());
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    assert!(policy.warnings[0].contains("no settings"));
    assert!(policy.to_string().contains("no settings"));
}

#[test]
fn too_deep_cgroup_and_too_many_rules() {
    let mut resolver = host();
    resolver
        .cgroups
        .insert("deep".to_owned(), CgroupId { id: 5, level: 32 });
    let text = "[[rule]]\nname = \"d\"\naction = \"deny\"\ncgroup = \"deep\"\n";
    let err = compile(&config(text), &resolver).unwrap_err();
    assert!(matches!(err, PolicyError::CgroupTooDeep { level: 32, .. }));

    // A hand-built config past the limit is refused, not truncated.
    let mut config = config("[[rule]]\nname = \"r\"\naction = \"deny\"\nuid = 1\n");
    let rule = config.rules[0].clone();
    config.rules = vec![rule; MAX_RULES];
    let err = compile(&config, &resolver).unwrap_err();
    assert!(matches!(err, PolicyError::TooManyRules { .. }), "{err}");
}

/// Each criterion's values are within the documented limit, but together
/// the rules name more users than `LW_RULES_UID` holds: the compiler
/// refuses, naming the rule that filled it and the numbers, before
/// anything is written (the daemon and `check-config` alike).
#[test]
fn a_policy_whose_rules_together_overfill_a_map_is_refused_at_the_rule() {
    let uids = |from: u32, to: u32| {
        (from..=to)
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "catalog = false\n[[rule]]\nname = \"a\"\naction = \"deny\"\nuid = [{}]\n\n\
         [[rule]]\nname = \"b\"\naction = \"deny\"\nuid = [{}]\n",
        uids(1, 600),
        uids(601, 1200)
    );
    let err = compile(&config(&text), &host()).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "test.toml:8:8: rule `b`: the policy would name 1200 different users (`uid` and `user`)"
        ),
        "{err}"
    );
    assert!(err.contains("at most 1024 fit"), "{err}");
    // The same values in one rule fewer fit.
    let text = format!(
        "catalog = false\n[[rule]]\nname = \"a\"\naction = \"deny\"\nuid = [{}]\n",
        uids(1, 1024)
    );
    compile_ok(&text, &host());
}

/// Two paths of one network namespace take one of the 256 places.
#[test]
fn a_namespace_named_twice_is_kept_once() {
    let mut resolver = host();
    resolver
        .netns
        .insert(PathBuf::from("/var/run/netns/blue"), 4096);
    let policy = compile_ok(
        "[protect]\nnetns = [\"/run/netns/blue\", \"/var/run/netns/blue\"]\n",
        &resolver,
    );
    assert_eq!(policy.netns.len(), 1);
}

#[test]
fn summary() {
    let policy = compile_ok(
        r#"
mode = "enforce"
[protect]
ports = [22, "8000-8100"]
netns = "/run/netns/blue"
[[rule]]
name = "relay-socat"
action = "deny"
exe = "/usr/bin/socat"
"#,
        &host(),
    );
    let text = policy.to_string();
    for expected in [
        "mode:        enforce",
        "deny errno:  ECONNREFUSED (111)",
        "ports:       22, 8000-8100",
        "netns:       /run/netns/blue (cookie 4096)",
        "relay-socat",
        "exe /usr/bin/socat (dev 0:27 ino 10)",
        "catalog:cloudflared",
        "exe_name in [sshd*, sshd-session*, dropbear*]",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l.starts_with("   0  relay-socat")),
        "{text}"
    );
}

#[test]
fn a_failed_user_lookup_is_not_an_unknown_user() {
    let mut host = host();
    host.broken_users.push("ldapuser".to_owned());
    let text = "catalog = false\n[[rule]]\nname = \"u\"\naction = \"deny\"\nuser = [\"nobody\", \"ldapuser\"]\n";
    let err = compile(&config(text), &host).unwrap_err();
    assert!(matches!(err, PolicyError::UserLookup { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("rule `u`: looking up user `ldapuser` failed"),
        "{err}"
    );
    // Re-resolution keeps the users that resolve, says why the other
    // does not, and asks again next time.
    let policy = compile_lenient(&config(text), &host, None).unwrap();
    assert_eq!(policy.uid, BTreeMap::from([(65534, 1)]));
    assert!(
        policy.warnings[0].contains("failed: the directory did not answer; this value matches nothing until it resolves again"),
        "{:?}",
        policy.warnings
    );
    host.broken_users.clear();
    host.users.insert("ldapuser".to_owned(), 70000);
    let policy = compile_lenient(&config(text), &host, Some(&policy)).unwrap();
    assert_eq!(policy.uid, BTreeMap::from([(65534, 1), (70000, 1)]));
    assert!(policy.warnings.is_empty());
    // The directory down again: the uid found before stays (a passing
    // outage does not drop the rule's user), said.
    host.broken_users.push("ldapuser".to_owned());
    let kept = compile_lenient(&config(text), &host, Some(&policy)).unwrap();
    assert_eq!(kept.uid, policy.uid);
    assert!(
        kept.warnings[0].contains("it keeps uid 70000, which it resolved to before"),
        "{:?}",
        kept.warnings
    );
    // A user NSS says no longer exists goes.
    host.broken_users.clear();
    host.users.remove("ldapuser");
    let gone = compile_lenient(&config(text), &host, Some(&kept)).unwrap();
    assert_eq!(gone.uid, BTreeMap::from([(65534, 1)]));
}
