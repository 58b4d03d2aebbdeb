//! How rules match an identity: criteria within and across fields,
//! wildcards, comm, uid and user, cgroup levels, parent against ancestor,
//! and user rules before the catalog.

use super::*;

#[test]
fn cgroup_rules_may_name_at_most_four_levels() {
    let mut r = host();
    for level in 1..=5u32 {
        r.cgroups.insert(
            format!("l{level}"),
            CgroupId {
                id: 100 + u64::from(level),
                level,
            },
        );
    }
    let rules = |n: u32| {
        (1..=n)
            .map(|l| format!("[[rule]]\nname = \"r{l}\"\naction = \"deny\"\ncgroup = \"l{l}\"\n"))
            .collect::<String>()
    };
    let policy = compile(&config(&format!("catalog = false\n{}", rules(4))), &r).unwrap();
    assert_eq!(policy.settings.cgroup_levels, 0b11110);
    let err = compile(&config(&format!("catalog = false\n{}", rules(5))), &r)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rule `r5`"), "{err}");
    assert!(err.contains("no more than 4 different levels"), "{err}");
    // A start and a reload refuse it too (a value that only does not
    // resolve would warn), as `check-config` says.
    let err = compile_lenient(&config(&format!("catalog = false\n{}", rules(5))), &r, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no more than 4 different levels"), "{err}");
    // Re-resolution (a cgroup made since the load) keeps going, with that
    // value matching nothing.
    let policy =
        compile_refresh(&config(&format!("catalog = false\n{}", rules(5))), &r, None).unwrap();
    assert_eq!(policy.settings.cgroup_levels.count_ones(), 4);
    assert_eq!(policy.settings.wild_cgroup, 0);
}

#[test]
fn multi_criteria_rule_masks_and_wildcards() {
    let policy = compile_ok(
        r#"
catalog = false
[[rule]]
name = "multi"
action = "deny"
exe = "/usr/bin/socat"
comm = "socat"
user = "nobody"
cgroup = "cloudflared.service"

[[rule]]
name = "by-name"
action = "audit"
exe_name = "socat"

[[rule]]
name = "lineage"
action = "allow"
parent_exe = "/usr/sbin/sshd"
ancestor_exe = "/usr/bin/tmux"
"#,
        &host(),
    );
    let s = &policy.settings;
    assert_eq!(s.active, 0b111);
    assert_eq!(s.deny, 0b001);
    assert_eq!(s.audit, 0b010);
    assert_eq!(s.wild_exe, 0b110);
    assert_eq!(s.wild_exe_name, 0b101);
    assert_eq!(s.wild_comm, 0b110);
    assert_eq!(s.wild_uid, 0b110);
    assert_eq!(s.wild_cgroup, 0b110);
    assert_eq!(s.wild_ancestor, 0b011);
    assert_eq!(s.cgroup_levels, 1 << 2);
    assert_eq!(
        s.flags,
        flags::ENABLED | flags::ALL_PORTS | flags::ANCESTORS | flags::RELAY | flags::PROVENANCE
    );
    assert_eq!(s.deny_errno, 111);

    assert_eq!(policy.exe, BTreeMap::from([(key(10), 0b001)]));
    assert_eq!(policy.comm, BTreeMap::from([(fixed_name("socat"), 0b001)]));
    assert_eq!(policy.uid, BTreeMap::from([(65534, 0b001)]));
    assert_eq!(policy.cgroup, BTreeMap::from([(21, 0b001)]));
    assert_eq!(
        policy.exe_name,
        BTreeMap::from([(fixed_name("socat"), 0b010)])
    );
    assert_eq!(
        policy.ancestor,
        BTreeMap::from([
            (
                key(20),
                AncestorMasks {
                    parent: 0b100,
                    ancestor: 0
                }
            ),
            (
                key(30),
                AncestorMasks {
                    parent: 0,
                    ancestor: 0b100
                }
            ),
        ])
    );
    assert_eq!(
        policy.rules[0].matches,
        "exe /usr/bin/socat (dev 0:27 ino 10) and comm socat and uid 65534 (user nobody) \
         and cgroup cloudflared.service (id 21, level 2)"
    );
    assert_eq!(
        policy.rules[2].matches,
        "(parent_exe /usr/sbin/sshd (dev 0:27 ino 20) or ancestor_exe /usr/bin/tmux (dev 0:27 ino 30))"
    );
    // The allow rule names no program of its own: said.
    let [warning] = policy.warnings.as_slice() else {
        panic!("{:?}", policy.warnings);
    };
    assert!(
        warning.contains("allow rule `lineage` names no program"),
        "{warning}"
    );

    // All criteria of rule 0 hold: it wins over rule 1 (same exe name).
    let socat = TestIdentity {
        exe: key(10),
        exe_name: "socat",
        comm: "socat",
        uid: 65534,
        cgroups: vec![ROOT_CGROUP, 10, 21],
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&policy, &socat), Some(0));
    // One criterion fails (uid): rule 0 is out, rule 1 still matches.
    let other_uid = TestIdentity {
        uid: 0,
        ..socat.clone()
    };
    assert_eq!(simulate(&policy, &other_uid), Some(1));
    // Below the unit's cgroup still counts as inside it.
    let child_cgroup = TestIdentity {
        cgroups: vec![ROOT_CGROUP, 10, 21, 22],
        ..socat.clone()
    };
    assert_eq!(simulate(&policy, &child_cgroup), Some(0));
    let sibling_cgroup = TestIdentity {
        cgroups: vec![ROOT_CGROUP, 10, 23],
        ..socat.clone()
    };
    assert_eq!(simulate(&policy, &sibling_cgroup), Some(1));
    // Neither.
    assert_eq!(simulate(&policy, &TestIdentity::default()), None);
}

#[test]
fn renamed_comm_still_matched_by_exe() {
    let policy = compile_ok(
        "catalog = false\n[[rule]]\nname = \"socat\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\n",
        &host(),
    );
    let disguised = TestIdentity {
        exe: key(10),
        exe_name: "socat",
        comm: "kworker/0:1",
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&policy, &disguised), Some(0));
    let other = TestIdentity {
        comm: "socat",
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&policy, &other), None);
}

#[test]
fn or_within_a_field_and_across_fields() {
    let policy = compile_ok(
        r#"
catalog = false
[[rule]]
name = "r"
action = "audit"
comm = ["a", "b"]
uid = [0, 1000]
"#,
        &host(),
    );
    let id = |comm, uid| TestIdentity {
        comm,
        uid,
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&policy, &id("a", 0)), Some(0));
    assert_eq!(simulate(&policy, &id("b", 1000)), Some(0));
    assert_eq!(simulate(&policy, &id("b", 0)), Some(0));
    assert_eq!(simulate(&policy, &id("a", 5)), None);
    assert_eq!(simulate(&policy, &id("c", 0)), None);
    assert_eq!(
        policy.rules[0].matches,
        "comm in [a, b] and uid in [0, 1000]"
    );
}

#[test]
fn comm_matches_any_of_the_callers_comms() {
    let policy = compile_ok(
        r#"
mode = "enforce"
catalog = false
[[rule]]
name = "local-curl"
action = "allow"
comm = "curl"
[[rule]]
name = "relay-thread"
action = "deny"
comm = "relay"
"#,
        &host(),
    );
    let id = |comms: &[&str]| ProcessIdentity {
        comms: comms.iter().map(|c| c.as_bytes().to_vec()).collect(),
        ..ProcessIdentity::default()
    };
    // The thread's comm or the process's: either one decides.
    assert_eq!(policy.first_match(&id(&["main", "relay"])), Some(1));
    assert_eq!(policy.denial(&id(&["relay", "main"]), 8080, 0), Some(1));
    // First match wins across the list too: the allow rule comes first.
    assert_eq!(policy.first_match(&id(&["relay", "curl"])), Some(0));
    assert_eq!(policy.denial(&id(&["relay", "curl"]), 8080, 0), None);
    assert_eq!(policy.first_match(&id(&["main"])), None);
    assert_eq!(policy.first_match(&id(&[])), None);
}

#[test]
fn uid_and_user_rules() {
    let policy = compile_ok(
        r#"
catalog = false
[[rule]]
name = "root"
action = "allow"
uid = 0
[[rule]]
name = "nobody"
action = "deny"
user = "nobody"
"#,
        &host(),
    );
    let id = |uid| TestIdentity {
        uid,
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&policy, &id(0)), Some(0));
    assert_eq!(simulate(&policy, &id(65534)), Some(1));
    assert_eq!(simulate(&policy, &id(1000)), None);
}

#[test]
fn cgroup_matches_at_its_level() {
    let policy = compile_ok(
        "catalog = false\n[[rule]]\nname = \"sys\"\naction = \"audit\"\ncgroup = \"system.slice\"\n",
        &host(),
    );
    assert_eq!(policy.settings.cgroup_levels, 1 << 1);
    let id = |cgroups: Vec<u64>| TestIdentity {
        cgroups,
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&policy, &id(vec![ROOT_CGROUP, 10])), Some(0));
    assert_eq!(
        simulate(&policy, &id(vec![ROOT_CGROUP, 10, 55, 56])),
        Some(0)
    );
    assert_eq!(simulate(&policy, &id(vec![ROOT_CGROUP, 11, 12])), None);
    assert_eq!(simulate(&policy, &id(vec![ROOT_CGROUP])), None);
}

#[test]
fn parent_versus_ancestor() {
    let policy = compile_ok(
        r#"
catalog = false
[[rule]]
name = "forwarded"
action = "deny"
parent_exe = "/usr/sbin/sshd"
[[rule]]
name = "under-sshd"
action = "audit"
ancestor_exe = "/usr/sbin/sshd"
"#,
        &host(),
    );
    assert_ne!(policy.settings.flags & flags::ANCESTORS, 0);
    let id = |ancestors: Vec<ExeKey>| TestIdentity {
        ancestors,
        ..TestIdentity::default()
    };
    let (sshd, bash, init) = (key(20), key(2), key(1));
    assert_eq!(simulate(&policy, &id(vec![sshd, init])), Some(0));
    assert_eq!(simulate(&policy, &id(vec![bash, sshd, init])), Some(1));
    assert_eq!(simulate(&policy, &id(vec![bash, init])), None);
    let mut deep = vec![bash; MAX_ANCESTORS];
    deep.push(sshd);
    assert_eq!(simulate(&policy, &id(deep)), None);
}

#[test]
fn user_rules_come_before_the_catalog() {
    let policy = compile_ok(
        "[[rule]]\nname = \"my-socat\"\naction = \"allow\"\nexe_name = \"socat\"\n",
        &host(),
    );
    assert_eq!(policy.rules.len(), 1 + CATALOG.len());
    assert_eq!(policy.rules[0].name, "my-socat");
    let socat = TestIdentity {
        exe_name: "socat",
        comm: "socat",
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&policy, &socat), Some(0));

    let cloudflared = TestIdentity {
        exe_name: "cloudflared",
        ..TestIdentity::default()
    };
    let rule = simulate(&policy, &cloudflared).unwrap();
    assert_eq!(policy.rules[rule].name, "catalog:cloudflared");
    assert_eq!(policy.rules[rule].action, Action::Deny);
    assert_ne!(policy.settings.deny & 1 << rule, 0);

    let nginx = TestIdentity {
        exe_name: "nginx",
        ..TestIdentity::default()
    };
    let rule = simulate(&policy, &nginx).unwrap();
    assert_eq!(policy.rules[rule].name, "catalog:nginx");
    assert_ne!(policy.settings.audit & 1 << rule, 0);

    // A renamed comm does not escape the catalog: it matches the file.
    let sneaky = TestIdentity {
        exe_name: "ngrok",
        comm: "python3",
        ..TestIdentity::default()
    };
    let rule = simulate(&policy, &sneaky).unwrap();
    assert_eq!(policy.rules[rule].name, "catalog:ngrok");
}
