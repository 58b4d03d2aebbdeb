//! Relay settings and the userspace judgement, the bind guard and the
//! egress rules.

use super::*;

#[test]
fn relay_settings_exemptions_scripts_and_inherited_catalog_rules() {
    let policy = compile_ok(
        r#"
[relay]
action = "deny"
window_ms = 250
[[rule]]
name = "bridge"
action = "allow"
script = "/opt/bridge/bridge.py"
[[rule]]
name = "watched"
action = "audit"
script = ["relay.py", "/srv/relay.js"]
"#,
        &host(),
    );
    let s = &policy.settings;
    assert_eq!(
        s.flags & (flags::RELAY | flags::RELAY_DENY),
        flags::RELAY | flags::RELAY_DENY
    );
    assert_ne!(s.flags & flags::SCRIPTS, 0);
    assert_eq!(s.relay_window_ns, 250_000_000);
    // The user's allow rule exempts, and the catalog's browser-class rules
    // (judged by the port's browser treatment); tunnel entries never do.
    assert_eq!(s.exempt, 0b01 | s.browser);
    assert_ne!(s.browser, 0);
    assert_eq!(s.wild_script & 0b11, 0);
    assert_eq!(s.wild_script >> 2, s.active >> 2);
    assert_eq!(
        policy
            .script
            .get(&loopwarden_common::script_hash(b"/opt/bridge/bridge.py")),
        Some(&0b01)
    );
    assert_eq!(
        policy
            .script
            .get(&loopwarden_common::script_hash(b"relay.py")),
        Some(&0b10)
    );
    // Catalog entries marked `children` extend to descendants.
    for (i, entry) in CATALOG.iter().enumerate() {
        let bit = 1u64 << (i + 2);
        assert_eq!(s.inherited & bit != 0, entry.children, "{}", entry.name);
    }

    let off = compile_ok("[relay]\naction = \"allow\"\n", &host());
    assert_eq!(off.settings.flags & (flags::RELAY | flags::RELAY_DENY), 0);
}

#[test]
fn the_userspace_judgement_follows_the_kernels_relay_lineage_and_script_rules() {
    use loopwarden_common::{Evidence, ProcState, RELAY_RULE, evidence};
    let policy = compile_ok(
        r#"
mode = "enforce"
[relay]
action = "deny"
window_ms = 1000
[[rule]]
name = "bridge"
action = "allow"
script = "bridge.py"
"#,
        &host(),
    );
    let mut state = ProcState::EMPTY;
    let id = |state: ProcState, name: &str| ProcessIdentity {
        exe_name: name.as_bytes().to_vec(),
        tracked: Some(state),
        ..ProcessIdentity::default()
    };
    // Nothing known: allowed.
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 5_000_000_000),
        None
    );
    // Received 0.5 s ago, window 1 s: a relay; 1.5 s ago: not any more.
    state.recent = Evidence {
        kind: evidence::RECEIVED,
        ktime_ns: 4_500_000_000,
        ..Evidence::default()
    };
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 5_000_000_000),
        Some(RELAY_RULE)
    );
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 5_500_000_001),
        None
    );
    // Unless its connection's origin recorded relay evidence at the
    // connect (the sweep of admitted connections asks that too).
    assert_eq!(
        policy.denial_of(&id(state, "python3.11"), 8080, 5_500_000_001, true),
        Some(RELAY_RULE)
    );
    // Written after the clock was read (the sweep reads it before its walk
    // of /proc): as recent as can be, as the kernel takes it.
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 4_000_000_000),
        Some(RELAY_RULE)
    );
    state.recent = Evidence::default();
    // Standing evidence has no window.
    state.standing.kind = evidence::ACCEPTED;
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 99_000_000_000),
        Some(RELAY_RULE)
    );
    // The user's allow rule on its script exempts it.
    state.script_hash = loopwarden_common::script_hash(b"bridge.py");
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 99_000_000_000),
        None
    );
    assert_eq!(
        policy.denial_of(&id(state, "python3.11"), 8080, 99_000_000_000, true),
        None
    );
    state.script_hash = 0;
    // A descendant of VS Code's tunnel matches catalog:code-tunnel through
    // its lineage, whatever it is called.
    state.standing.kind = evidence::NONE;
    state.lineage = loopwarden_common::exe_name_prefix_key(b"code-tunnel");
    let rule = policy.denial(&id(state, "node"), 8080, 0).map(usize::from);
    assert_eq!(
        rule.and_then(|r| policy.rules.get(r))
            .map(|r| r.name.as_str()),
        Some("catalog:code-tunnel")
    );
    state.lineage = [0; 32];
    assert_eq!(policy.denial(&id(state, "node"), 8080, 0), None);
    // The lineage the seeding gives a running tunnel is the key the
    // exec handler would have: its prefix form for a release name too.
    let key = loopwarden_common::exe_name_prefix_key(b"code-tunnel");
    assert_eq!(policy.lineage_key(b"code-tunnel"), Some(key));
    assert_eq!(policy.lineage_key(b"code-tunnel-insiders"), Some(key));
    // Catalogued without `children`, or not at all: none.
    assert_eq!(policy.lineage_key(b"cloudflared"), None);
    assert_eq!(policy.lineage_key(b"bash"), None);
}

#[test]
fn the_bind_guard_compiles_to_ports_and_exemptions() {
    let off = compile_ok("catalog = false\n", &host());
    assert_eq!(off.bind, BindGuard::default());
    assert_eq!(off.settings.flags & flags::BIND_GUARD, 0);
    assert!(off.to_string().contains("bind guard:  off"));

    let text = "catalog = false\nmode = \"enforce\"\n[bind]\nloopback_only = [11434, \"9000-9002\"]\n\
                allow_exe = \"/usr/bin/socat\"\nallow_user = \"nobody\"\nallow_uid = 33\n";
    let p = compile_ok(text, &host());
    assert_ne!(p.settings.flags & flags::BIND_GUARD, 0);
    let ports = p.bind.ports.as_ref().expect("guard on");
    for port in [11434, 9000, 9001, 9002] {
        assert!(ports.contains(port), "{port}");
    }
    for port in [11433, 11435, 8999, 9003, 0] {
        assert!(!ports.contains(port), "{port}");
    }
    assert_eq!(p.bind.exe.keys().copied().collect::<Vec<_>>(), [key(10)]);
    assert_eq!(p.bind.uid.keys().copied().collect::<Vec<_>>(), [33, 65534]);
    let shown = p.to_string();
    assert!(
        shown.contains("bind guard:  ports 9000-9002, 11434 on loopback only"),
        "{shown}"
    );
    assert!(shown.contains("refused with EADDRNOTAVAIL"), "{shown}");
    assert!(shown.contains("/usr/bin/socat"), "{shown}");
    assert!(shown.contains("65534 (user nobody)"), "{shown}");

    // Exemptions that do not resolve fail like a rule's, naming the guard.
    let err = compile(
        &config("[bind]\nloopback_only = 80\nallow_user = \"ghost\"\n"),
        &host(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("test.toml:3:"), "{err}");
    assert!(err.contains("bind-guard") && err.contains("ghost"), "{err}");
    let err = compile(
        &config("[bind]\nloopback_only = 80\nallow_exe = \"/nope\"\n"),
        &host(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("allow_exe /nope cannot be resolved"), "{err}");
}

#[test]
fn egress_rules_compile_to_their_own_masks_and_prefixes() {
    let p = compile_ok(
        "catalog = false\n\
         [[egress]]\nname = \"fetch\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\nuser = \"nobody\"\n\
         deny = [\"private\"]\nallow = [\"10.20.0.0/16\"]\n\
         [[egress]]\nname = \"watch\"\naction = \"audit\"\ncgroup = \"cloudflared.service\"\n\
         deny = [\"loopback\", \"2001:db8::/32\"]\n",
        &host(),
    );
    let s = &p.settings;
    assert_ne!(s.flags & flags::EGRESS, 0);
    assert_eq!(s.egress_active, 0b11);
    assert_eq!(s.egress_deny, 0b01);
    assert_eq!(s.egress_wild_uid, 0b10);
    assert_eq!(s.egress_wild_exe, 0b10);
    assert_eq!(s.egress_wild_cgroup, 0b01);
    assert_eq!(s.egress_cgroup_levels, 1 << 2);
    // The rules' own maps, not the [[rule]] ones.
    assert!(p.uid.is_empty() && p.exe.is_empty() && p.cgroup.is_empty());
    assert_eq!(p.egress.uid.get(&65534), Some(&0b01));
    assert_eq!(p.egress.exe.get(&key(10)), Some(&0b01));
    assert_eq!(p.egress.cgroup.get(&21), Some(&0b10));
    let blocks = |ip: &str| egress::lookup(&p.egress.prefixes, ip.parse().unwrap());
    assert_eq!(blocks("10.1.1.1"), 0b01);
    assert_eq!(blocks("10.20.1.1"), 0b00);
    assert_eq!(blocks("127.0.0.1"), 0b10);
    assert_eq!(blocks("2001:db8::1"), 0b10);
    // Metadata is every rule's, listed or not.
    assert_eq!(blocks("169.254.169.254"), 0b11);
    assert_eq!(blocks("168.63.129.16"), 0b11);
    assert_eq!(blocks("8.8.8.8"), 0);
    assert_eq!(p.egress.rules[0].prefixes, 8 + 5 + 1);
    // Events name them after the rules.
    let named: Vec<String> = p.named_rules().into_iter().map(|r| r.name).collect();
    assert_eq!(named, ["egress:fetch", "egress:watch"]);
    let text = p.to_string();
    assert!(text.contains("egress:      2 rule(s)"), "{text}");
    assert!(
        text.contains("egress:fetch  deny   exe /usr/bin/socat"),
        "{text}"
    );
    assert!(text.contains("deny:  loopback, 2001:db8::/32"), "{text}");
    // No egress table: the guard is off.
    let off = compile_ok("catalog = false\n", &host());
    assert_eq!(off.settings.flags & flags::EGRESS, 0);
    assert!(off.to_string().contains("egress:      off"));
}
