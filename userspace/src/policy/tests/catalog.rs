//! The catalog: symlinked binaries, release-asset and wrapper names, and
//! the embedded default policy on a bare host.

use super::*;

#[test]
fn catalog_follows_symlinked_binaries() {
    let policy = compile_ok("catalog = true\n", &host());
    let bore = TestIdentity {
        exe_name: "bore-x86_64",
        ..TestIdentity::default()
    };
    let rule = simulate(&policy, &bore).unwrap();
    assert_eq!(policy.rules[rule].name, "catalog:bore");
    assert_eq!(
        policy.rules[rule].matches,
        "exe_name in [bore*, bore-x86_64*]"
    );
    assert!(policy.warnings.is_empty());

    // A copy whose file name does not begin with the catalog's name is
    // matched by its real name, as the entry matches (here: exactly).
    let mut r = host().with_exe("/opt/tools/secure-shell", key(41));
    r.found.insert(
        "ssh".to_owned(),
        vec![PathBuf::from("/opt/tools/secure-shell")],
    );
    let policy = compile_ok("catalog = true\n", &r);
    let named = |exe_name| TestIdentity {
        exe_name,
        ..TestIdentity::default()
    };
    let rule = simulate(&policy, &named("secure-shell")).unwrap();
    assert_eq!(policy.rules[rule].name, "catalog:ssh");
    assert_eq!(
        policy.rules[rule].matches,
        "exe_name in [ssh, dbclient, secure-shell]"
    );
    assert_eq!(simulate(&policy, &named("secure-shell-x")), None);

    // A name installed as a multi-call program (`nc -> busybox`) does not
    // make that program's every applet the entry's: a warning says so.
    let mut r = host().with_exe("/bin/busybox", key(42));
    r.found
        .insert("nc".to_owned(), vec![PathBuf::from("/bin/busybox")]);
    let policy = compile_ok("catalog = true\n", &r);
    assert_eq!(simulate(&policy, &named("busybox")), None);
    assert_ne!(simulate(&policy, &named("nc")), None);
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    assert!(
        policy.warnings[0].starts_with("catalog:netcat: /bin/busybox is busybox"),
        "{:?}",
        policy.warnings
    );

    // k3s installs kubectl as a link to itself: the k3s server, whose own
    // connections on loopback never stop, is not kubectl.
    let mut r = host().with_exe("/usr/local/bin/k3s", key(43));
    r.found.insert(
        "kubectl".to_owned(),
        vec![PathBuf::from("/usr/local/bin/k3s")],
    );
    let policy = compile_ok(
        "catalog = true
",
        &r,
    );
    assert_eq!(simulate(&policy, &named("k3s")), None);
    assert_ne!(simulate(&policy, &named("kubectl")), None);
}

/// The catalog rule `name` (its name) matches, as the kernel would.
fn catalog_match(policy: &CompiledPolicy, exe_name: &'static str) -> Option<String> {
    let id = TestIdentity {
        exe_name,
        comm: "x",
        ..TestIdentity::default()
    };
    simulate(policy, &id).map(|rule| policy.rules[rule].name.clone())
}

#[test]
fn catalog_prefixes_match_release_and_wrapper_names() {
    let policy = compile(&Config::embedded_default(), &FakeResolver::default()).unwrap();
    for (exe_name, rule) in [
        ("cloudflared", "cloudflared"),
        ("cloudflared-linux-amd64", "cloudflared"),
        ("chisel_1.10.1_linux_amd64", "chisel"),
        (".tailscaled-wrapped", "tailscaled"),
        ("tailscaled.real", "tailscaled"),
        ("bore-v0.5.2-x86_64-unknown-linux-musl", "bore"),
        ("websocat.x86_64-unknown-linux-musl", "websocat"),
        ("systemd-socket-proxyd", "systemd-socket-proxyd"),
        ("sshd", "sshd"),
        ("sshd-session", "sshd"),
        ("dropbear", "sshd"),
        ("ssh", "ssh"),
        ("socat", "socat"),
        ("socat1", "socat"),
        ("socat-x", "socat"),
        ("nc", "netcat"),
        ("nc.openbsd", "netcat"),
        ("tor", "tor"),
        ("code", "vscode"),
        ("code-insiders", "vscode"),
        ("code-tunnel", "code-tunnel"),
        ("code-tunnel-insiders", "code-tunnel"),
        ("kubectl", "kubectl"),
        ("inlets-pro", "inlets"),
        ("nginx-debug", "nginx"),
    ] {
        assert_eq!(
            catalog_match(&policy, exe_name),
            Some(format!("catalog:{rule}")),
            "{exe_name}"
        );
    }
    for exe_name in [
        // Exact entries: other programs that begin with their names.
        "ssh-keygen",
        "ssh-agent",
        "ssh_x",
        "torsocks",
        "tor-resolve",
        "codex",
        "code-oss",
        "nc6",
        "nc-config",
        "netcat-x",
        "socat1-x",
        // A prefix matches at a separator only.
        "cloudflaredx",
        "borealis",
        "chiseled",
        "sshdx",
        // Only one leading dot is dropped; a separator must follow the prefix.
        "..tailscaled",
        "-bore",
        "x-bore",
        "curl",
        "bash",
    ] {
        assert_eq!(catalog_match(&policy, exe_name), None, "{exe_name}");
    }
}

#[test]
fn catalog_prefix_keys_are_marked_and_user_names_are_not() {
    let policy = compile_ok(
        "[[rule]]\nname = \"mine\"\naction = \"allow\"\nexe_name = \"bore\"\n",
        &FakeResolver::default(),
    );
    let mark = loopwarden_common::EXE_NAME_PREFIX_MARK;
    let plain: [u8; loopwarden_common::EXE_NAME_LEN] = fixed_name("bore");
    assert_eq!(policy.exe_name.get(&plain), Some(&1));
    let mut prefix = plain;
    *prefix.last_mut().unwrap() = mark;
    assert_eq!(
        policy.exe_name.get(&prefix),
        Some(&(1 << 5)),
        "{:?}",
        policy.rules[5]
    );
    // The user's exact name comes first; a continuation reaches the catalog.
    assert_eq!(catalog_match(&policy, "bore"), Some("mine".to_owned()));
    assert_eq!(
        catalog_match(&policy, "bore-x86_64"),
        Some("catalog:bore".to_owned())
    );
    // Exact entries insert plain keys only.
    let ssh: [u8; loopwarden_common::EXE_NAME_LEN] = fixed_name("ssh");
    assert!(policy.exe_name.contains_key(&ssh));
    let mut ssh_prefix = ssh;
    *ssh_prefix.last_mut().unwrap() = mark;
    assert!(!policy.exe_name.contains_key(&ssh_prefix));
    // Every key's last byte is 0 (plain) or the mark (prefix form).
    assert!(
        policy
            .exe_name
            .keys()
            .all(|k| matches!(k.last(), Some(0 | 1)))
    );
}

#[test]
fn embedded_default_compiles_on_a_bare_host() {
    let policy = compile(&Config::embedded_default(), &FakeResolver::default()).unwrap();
    assert_eq!(policy.mode, Mode::Audit);
    assert_eq!(policy.rules.len(), CATALOG.len());
    assert_eq!(policy.ports, Ports::All);
    assert!(policy.netns.is_empty());
    assert!(policy.warnings.is_empty());
    let s = &policy.settings;
    assert_eq!(
        s.flags,
        flags::ENABLED | flags::ALL_PORTS | flags::RELAY | flags::PROVENANCE
    );
    assert_eq!(s.relay_window_ns, 2_000_000_000);
    assert_eq!(s.active.count_ones() as usize, CATALOG.len());
    assert_eq!(s.wild_exe_name, 0);
    assert_eq!(s.wild_exe, s.active);
    // Browsers are judged by port, not by an action of their own.
    assert_eq!(s.deny | s.audit | s.browser, s.active);
    assert_eq!(s.browser.count_ones(), 3);
    assert_eq!(s.browser & (s.deny | s.audit), 0);
    let audit = policy.browsers.verdict(11434);
    assert_eq!(audit, loopwarden_common::verdict::AUDIT);
}

/// A user's `exe_name` that names a command installed as a link to a file
/// of another name (`python3` to `python3.11`) is warned of, naming the
/// file's own name; one that names the file itself is not.
#[test]
fn an_exe_name_installed_as_a_link_to_another_name_is_warned_of() {
    let mut r = host().with_exe("/usr/bin/python3.11", key(43));
    // The link: found under its own name, a file of the target's.
    let target = r.exes[Path::new("/usr/bin/python3.11")].clone();
    r.exes.insert(PathBuf::from("/usr/bin/python3"), target);
    r.found.insert(
        "python3".to_owned(),
        vec![PathBuf::from("/usr/bin/python3")],
    );
    r.found.insert(
        "python3.11".to_owned(),
        vec![PathBuf::from("/usr/bin/python3.11")],
    );
    let rule = |name: &str| {
        format!(
            "catalog = false\n[[rule]]\nname = \"py\"\naction = \"deny\"\nexe_name = \"{name}\"\n"
        )
    };
    let policy = compile_ok(&rule("python3"), &r);
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    assert!(
        policy.warnings[0].contains(
            "rule `py`: exe_name `python3`: /usr/bin/python3 here is a link to `python3.11`"
        ),
        "{:?}",
        policy.warnings
    );
    assert!(compile_ok(&rule("python3.11"), &r).warnings.is_empty());
}
