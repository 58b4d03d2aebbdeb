//! Executables' files over time: upgraded and removed ones keep matching
//! their running processes, one walk per compile, btrfs subvolumes refused
//! where the programs cannot tell them apart.

use super::*;

const RELAY: &str = "catalog = false\n[[rule]]\nname = \"relay-exe\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\n";

fn running(exe: ExeKey) -> TestIdentity {
    TestIdentity {
        exe,
        ..TestIdentity::default()
    }
}

#[test]
fn an_upgraded_exe_keeps_matching_while_the_old_file_runs() {
    let mut host = host();
    host.processes.insert(500, key(10));
    let first = compile_lenient(&config(RELAY), &host, None).unwrap();
    assert_eq!(first.exe, BTreeMap::from([(key(10), 1)]));
    assert_eq!(
        first.exe_paths[Path::new("/usr/bin/socat")],
        ExeIdentities {
            current: Some(key(10)),
            kept: BTreeMap::new(),
        }
    );
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    // Nothing known about the path yet: one walk, to look for deleted
    // files started from it.
    assert_eq!(host.walks.get(), 1);

    // The upgrade: a new file (inode 11) at the path; pid 500 still
    // runs inode 10.
    host.put_exe("/usr/bin/socat", key(11));
    let upgraded = compile_lenient(&config(RELAY), &host, Some(&first)).unwrap();
    assert_eq!(upgraded.exe, BTreeMap::from([(key(10), 1), (key(11), 1)]));
    assert_eq!(simulate(&upgraded, &running(key(10))), Some(0));
    assert_eq!(simulate(&upgraded, &running(key(11))), Some(0));
    assert_eq!(simulate(&upgraded, &running(key(12))), None);
    assert_eq!(
        upgraded.exe_paths[Path::new("/usr/bin/socat")],
        ExeIdentities {
            current: Some(key(11)),
            kept: BTreeMap::from([(key(10), 500)]),
        }
    );
    assert_eq!(
        upgraded.rules[0].matches,
        "exe in [/usr/bin/socat (dev 0:27 ino 11), /usr/bin/socat (dev 0:27 ino 10; \
         replaced on disk, still running as pid 500)]"
    );
    assert_eq!(upgraded.warnings.len(), 1, "{:?}", upgraded.warnings);
    let warning = &upgraded.warnings[0];
    assert!(warning.starts_with("test.toml:5:"), "{warning}");
    assert!(
        warning.contains(
            "rule `relay-exe`: exe /usr/bin/socat (dev 0:27 ino 10) was replaced on disk"
        ),
        "{warning}"
    );
    assert!(warning.contains("pid 500"), "{warning}");
    assert!(
        upgraded
            .to_string()
            .contains("replaced on disk, still running as pid 500")
    );
    assert_eq!(host.walks.get(), 2);

    // While pid 500 runs it, no walk is needed, and nothing changes.
    let steady = compile_lenient(&config(RELAY), &host, Some(&upgraded)).unwrap();
    assert_eq!(steady, upgraded);
    assert_eq!(host.walks.get(), 2);

    // pid 500 exits, but a fork of it (pid 501) still runs the old file.
    host.processes.remove(&500);
    host.processes.insert(501, key(10));
    let forked = compile_lenient(&config(RELAY), &host, Some(&steady)).unwrap();
    assert_eq!(
        forked.exe_paths[Path::new("/usr/bin/socat")].kept,
        BTreeMap::from([(key(10), 501)])
    );
    assert_eq!(host.walks.get(), 3);

    // The last process of the old file exits: its identity is dropped.
    host.processes.remove(&501);
    let gone = compile_lenient(&config(RELAY), &host, Some(&forked)).unwrap();
    assert_eq!(gone.exe, BTreeMap::from([(key(11), 1)]));
    assert_eq!(simulate(&gone, &running(key(10))), None);
    assert!(gone.warnings.is_empty(), "{:?}", gone.warnings);
    assert_eq!(host.walks.get(), 4);
    // And nothing is left to check.
    let quiet = compile_lenient(&config(RELAY), &host, Some(&gone)).unwrap();
    assert_eq!(quiet, gone);
    assert_eq!(host.walks.get(), 4);
}

#[test]
fn lineage_rules_keep_an_upgraded_parent_too() {
    let text = "catalog = false\n[[rule]]\nname = \"fwd\"\naction = \"deny\"\nparent_exe = \"/usr/sbin/sshd\"\n[[rule]]\nname = \"under\"\naction = \"audit\"\nancestor_exe = \"/usr/sbin/sshd\"\n";
    let mut host = host();
    host.processes.insert(1, key(1));
    host.processes.insert(700, key(20));
    let first = compile_lenient(&config(text), &host, None).unwrap();
    host.put_exe("/usr/sbin/sshd", key(21));
    let upgraded = compile_lenient(&config(text), &host, Some(&first)).unwrap();
    for sshd in [key(20), key(21)] {
        assert_eq!(
            upgraded.ancestor[&sshd],
            AncestorMasks {
                parent: 0b01,
                ancestor: 0b10
            }
        );
    }
    let child_of = |parent| TestIdentity {
        ancestors: vec![parent, key(1)],
        ..TestIdentity::default()
    };
    assert_eq!(simulate(&upgraded, &child_of(key(20))), Some(0));
    assert_eq!(simulate(&upgraded, &child_of(key(21))), Some(0));
    // One walk served both rules.
    assert_eq!(host.walks.get(), 2);
    assert_eq!(upgraded.warnings.len(), 2, "{:?}", upgraded.warnings);
}

#[test]
fn a_removed_exe_still_matches_its_running_processes() {
    let mut host = host();
    host.processes.insert(500, key(10));
    let first = compile_lenient(&config(RELAY), &host, None).unwrap();
    // Uninstalled, or between an upgrade's removal and its new file.
    host.exes.remove(Path::new("/usr/bin/socat"));
    let removed = compile_lenient(&config(RELAY), &host, Some(&first)).unwrap();
    assert_eq!(removed.exe, BTreeMap::from([(key(10), 1)]));
    assert_eq!(
        removed.exe_paths[Path::new("/usr/bin/socat")],
        ExeIdentities {
            current: None,
            kept: BTreeMap::from([(key(10), 500)]),
        }
    );
    assert!(
        removed.warnings.iter().any(|w| w.contains(
            "until it resolves again, this value matches only the earlier file still running (pid 500)"
        )),
        "{:?}",
        removed.warnings
    );
    // Once it exits, the rule matches nothing, but still constrains exe.
    host.processes.clear();
    let gone = compile_lenient(&config(RELAY), &host, Some(&removed)).unwrap();
    assert!(gone.exe.is_empty());
    assert_eq!(gone.settings.wild_exe, 0);
    assert_eq!(simulate(&gone, &running(key(10))), None);
}

/// Two processes running files deleted from `/usr/bin/socat`: pid 300
/// inode 9 on the test keys' filesystem (kept), pid 301 the same on another
/// (another mount namespace's: not kept), whose key it returns.
fn deleted_here_and_elsewhere(host: &mut FakeResolver) -> ExeKey {
    host.processes.insert(300, key(9));
    host.deleted.insert(key(9), PathBuf::from("/usr/bin/socat"));
    let elsewhere = ExeKey::from_major_minor(0, 99, 9);
    host.processes.insert(301, elsewhere);
    host.deleted
        .insert(elsewhere, PathBuf::from("/usr/bin/socat"));
    elsewhere
}

#[test]
fn without_history_deleted_files_started_from_the_path_are_kept() {
    let mut host = host().with_exe("/usr/bin/other", key(50));
    deleted_here_and_elsewhere(&mut host);
    // Deleted, but started from another path: not kept.
    host.processes.insert(302, key(8));
    host.deleted
        .insert(key(8), PathBuf::from("/usr/bin/socat.old"));
    // Running the current file: it is the current identity anyway.
    host.processes.insert(303, key(10));

    // check-config (strict) shows it as well as the daemon.
    let policy = compile_ok(RELAY, &host);
    assert_eq!(policy.exe, BTreeMap::from([(key(9), 1), (key(10), 1)]));
    assert!(
        policy.to_string().contains(
            "/usr/bin/socat (dev 0:27 ino 9; replaced on disk, still running as pid 300)"
        ),
        "{policy}"
    );
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    assert_eq!(host.walks.get(), 1);

    // From then on, history decides: the kept file stays while pid 300
    // runs it, without a walk.
    let next = compile_lenient(&config(RELAY), &host, Some(&policy)).unwrap();
    assert_eq!(next, policy);
    assert_eq!(host.walks.get(), 1);
}

#[test]
fn one_walk_per_compile_at_most() {
    let text = "catalog = false\n[[rule]]\nname = \"a\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/usr/bin/tmux\"]\nancestor_exe = \"/usr/sbin/sshd\"\n";
    let mut host = host();
    host.processes.insert(10, key(10));
    host.processes.insert(30, key(30));
    let first = compile_lenient(&config(text), &host, None).unwrap();
    assert_eq!(host.walks.get(), 1);
    host.put_exe("/usr/bin/socat", key(11));
    host.put_exe("/usr/bin/tmux", key(31));
    host.put_exe("/usr/sbin/sshd", key(21));
    let next = compile_lenient(&config(text), &host, Some(&first)).unwrap();
    assert_eq!(host.walks.get(), 2);
    assert_eq!(
        next.exe.keys().copied().collect::<Vec<_>>(),
        [key(10), key(11), key(30), key(31)]
    );
    // sshd's old file runs nowhere: dropped at once.
    assert_eq!(next.ancestor.keys().copied().collect::<Vec<_>>(), [key(21)]);
}

/// `host()` with `path` on a btrfs subvolume: `stat()` reports the
/// subvolume's anonymous device 0:46, the kernel the filesystem's 0:45.
fn on_btrfs(mut host: FakeResolver, path: &str, ino: u64) -> FakeResolver {
    host.put_exe(path, ExeKey::from_major_minor(0, 46, ino));
    if let Some((file, _)) = host.exes.get_mut(Path::new(path)) {
        file.mount = Some(MountDev {
            dev: ExeKey::from_major_minor(0, 45, 0).dev,
            fs_type: "btrfs".to_owned(),
            mount_point: PathBuf::from("/home"),
        });
    }
    host
}

#[test]
fn an_exe_on_a_btrfs_subvolume_is_refused_with_what_to_use_instead() {
    let host = on_btrfs(host(), "/home/u/bin/relay", 257);
    let text = "catalog = false\n[[rule]]\nname = \"relay-exe\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/home/u/bin/relay\"]\n";
    let err = compile(&config(text), &host).unwrap_err();
    assert!(
        matches!(
            &err,
            PolicyError::ExeAmbiguous {
                field: "exe",
                stat_dev: 46,
                mount,
                ..
            } if mount.dev == 45
        ),
        "{err:?}"
    );
    let message = err.to_string();
    for expected in [
        "test.toml:5:",
        "rule `relay-exe`: exe /home/u/bin/relay is on btrfs (mounted at /home)",
        "stat() reports device 0:46",
        "the filesystem's device 0:45",
        "inode numbers repeat across btrfs subvolumes",
        "`exe_name`",
        "`cgroup`",
        "move the binary to a filesystem without subvolumes",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing: {message}"
        );
    }

    // A start and a reload refuse it too; a re-resolution skips that
    // value with the same explanation, the rule keeping its other value
    // and never widening.
    let err = compile_lenient(&config(text), &host, None).unwrap_err();
    assert!(matches!(err, PolicyError::ExeAmbiguous { .. }), "{err:?}");
    let policy = compile_refresh(&config(text), &host, None).unwrap();
    assert_eq!(policy.exe, BTreeMap::from([(key(10), 1)]));
    assert_eq!(policy.settings.wild_exe, 0);
    assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
    assert!(policy.warnings[0].contains("is on btrfs"));
    assert!(policy.warnings[0].ends_with("this value is skipped (it matches nothing)"));
    // No alias key: another subvolume's inode 257 on 0:45 matches nothing.
    let other_subvolume = ExeKey::from_major_minor(0, 45, 257);
    assert_eq!(simulate(&policy, &running(other_subvolume)), None);
    assert_eq!(
        policy.exe_paths[Path::new("/home/u/bin/relay")],
        ExeIdentities::default()
    );
}

#[test]
fn lineage_paths_on_btrfs_are_refused_too() {
    let host = on_btrfs(host(), "/home/u/bin/agent", 300);
    for field in ["parent_exe", "ancestor_exe"] {
        let text = format!(
            "catalog = false\n[[rule]]\nname = \"l\"\naction = \"audit\"\n{field} = \"/home/u/bin/agent\"\n"
        );
        let err = compile(&config(&text), &host).unwrap_err().to_string();
        assert!(
            err.contains(&format!("rule `l`: {field} /home/u/bin/agent is on btrfs")),
            "{err}"
        );
        assert!(compile_lenient(&config(&text), &host, None).is_err());
        let policy = compile_refresh(&config(&text), &host, None).unwrap();
        assert!(policy.ancestor.is_empty());
        assert_eq!(policy.settings.wild_ancestor, 0);
    }
    // Where stat() and the superblock agree (or mountinfo says nothing),
    // nothing is refused.
    let mut host = host;
    if let Some((file, _)) = host.exes.get_mut(Path::new("/home/u/bin/agent")) {
        file.mount = None;
    }
    compile_ok(
        "catalog = false\n[[rule]]\nname = \"l\"\naction = \"audit\"\nparent_exe = \"/home/u/bin/agent\"\n",
        &host,
    );
}

/// An exemption naming a file another user could replace is warned of
/// (they would choose what it lets through); a deny rule naming the same
/// file, or an exemption naming root's, is not.
#[test]
fn an_exemption_another_user_could_replace_is_warned_of() {
    let mut host = host().with_exe("/home/alice/bin/agent", key(50));
    host.replaceable
        .push(PathBuf::from("/home/alice/bin/agent"));
    let rules = |action: &str, exe: &str| {
        format!(
            "catalog = false\n[[rule]]\nname = \"agent\"\naction = \"{action}\"\nexe = \"{exe}\"\n\
             [bind]\nloopback_only = [9000]\nallow_exe = [\"{exe}\"]\n\
             [browsers]\nexe = [\"{exe}\"]\n"
        )
    };
    let policy = compile_lenient(
        &config(&rules("allow", "/home/alice/bin/agent")),
        &host,
        None,
    )
    .unwrap();
    let warned: Vec<&String> = policy
        .warnings
        .iter()
        .filter(|w| w.contains("another user could put another program there"))
        .collect();
    assert_eq!(warned.len(), 3, "{:?}", policy.warnings);
    for expected in [
        "test.toml:5:7: rule `agent`: exe /home/alice/bin/agent",
        "rule `bind-guard`: allow_exe /home/alice/bin/agent",
        "rule `browsers`: exe /home/alice/bin/agent",
    ] {
        assert!(warned.iter().any(|w| w.contains(expected)), "{warned:?}");
    }
    let deny = compile_lenient(
        &config(&rules("deny", "/home/alice/bin/agent")),
        &host,
        None,
    )
    .unwrap();
    let warned = deny
        .warnings
        .iter()
        .filter(|w| w.contains("another user could"))
        .count();
    // The bind guard's and the browsers' exemptions still are.
    assert_eq!(warned, 2, "{:?}", deny.warnings);
    let roots = compile_lenient(&config(&rules("allow", "/usr/bin/socat")), &host, None).unwrap();
    assert!(
        !roots
            .warnings
            .iter()
            .any(|w| w.contains("another user could")),
        "{:?}",
        roots.warnings
    );
}

/// An exemption follows an old file only while it runs deleted from the
/// path's file now: after the path's file was replaced by another (a link
/// pointed elsewhere, the old one still on disk, or a file that took a gone
/// one's inode), the old identity is no longer let through, though a deny
/// rule of the same path keeps it while it runs.
#[test]
fn an_exemption_keeps_an_old_file_only_while_it_runs_deleted_from_the_path() {
    const ALLOW: &str = "catalog = false\n[[rule]]\nname = \"agent\"\naction = \"allow\"\n\
                         exe = \"/usr/bin/socat\"\n";
    let both = format!("{ALLOW}{}", RELAY.trim_start_matches("catalog = false\n"));
    for (text, deleted, exempt_keeps) in [
        (ALLOW.to_owned(), false, false),
        (ALLOW.to_owned(), true, true),
        (both.clone(), false, false),
    ] {
        let mut host = host();
        host.processes.insert(500, key(10));
        let first = compile_lenient(&config(&text), &host, None).unwrap();
        host.put_exe("/usr/bin/socat", key(11));
        if deleted {
            host.deleted
                .insert(key(10), PathBuf::from("/usr/bin/socat"));
        }
        let after = compile_lenient(&config(&text), &host, Some(&first)).unwrap();
        assert_eq!(
            simulate(&after, &running(key(10))) == Some(0),
            exempt_keeps,
            "{text} deleted: {deleted}"
        );
        assert_eq!(simulate(&after, &running(key(11))), Some(0), "{text}");
        if text == both {
            // The deny rule (1) keeps it, and the next compile still does.
            assert_eq!(simulate(&after, &running(key(10))), Some(1));
            let next = compile_lenient(&config(&text), &host, Some(&after)).unwrap();
            assert_eq!(simulate(&next, &running(key(10))), Some(1));
        }
    }
}

/// A file removed (nothing at its path now) that a process still runs,
/// deleted from that path, is kept with no history (a restart after an
/// uninstall), on the device of the path's directory only.
#[test]
fn without_history_a_removed_files_running_process_is_kept() {
    let mut host = host();
    host.exes.remove(Path::new("/usr/bin/socat"));
    let elsewhere = deleted_here_and_elsewhere(&mut host);
    let policy = compile_lenient(&config(RELAY), &host, None).unwrap();
    assert_eq!(policy.exe, BTreeMap::from([(key(9), 1)]));
    assert_eq!(simulate(&policy, &running(key(9))), Some(0));
    assert_eq!(simulate(&policy, &running(elsewhere)), None);
}
