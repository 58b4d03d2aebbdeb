//! Audit mode and the daemon's lifecycle: reports without refusing, the
//! right identity in the report, one instance at a time, nothing left
//! attached after exit, clear errors.

use std::process::Command;

use loopwarden_tests::{
    AS_NOBODY, Daemon, Install, Netns, PROTECTED, TempDir, connects, hex_bytes, loopwarden_bin,
    map_dump, map_generations, policy, prog_ids, rule, run, run_failing_start,
};

#[test]
fn audit_mode_lets_the_relay_through_and_reports_exe_and_uid() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let daemon = Daemon::start(&policy(&ns, "audit", ""));
    // A direct client of the protected port, before the relay: its report,
    // had it one, would come before the relay's.
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
    // Relay running as nobody (uid 65534).
    let _relay = ns.socat_relay(9001, &format!("TCP:127.0.0.1:{PROTECTED}"), Some(65534));
    assert_eq!(ns.curl("http://127.0.0.1:9001/"), Ok(200));
    let ev = daemon.wait_event("would-deny by socat", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat"
    });
    assert_eq!(ev["rule"], "catalog:socat");
    assert_eq!(ev["uid"], 65534);
    assert_eq!(ev["user"], "nobody");
    assert_eq!(ev["exe"], "/usr/bin/socat");
    assert!(
        ev["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("TCP-LISTEN:9001")),
        "{ev}"
    );
    assert!(ev["pid"].as_u64().is_some_and(|p| p > 0));
    assert!(ev["ppid"].as_u64().is_some_and(|p| p > 0));
    // The direct curl is not reported at all.
    assert!(
        daemon.events().iter().all(|e| e["comm"] != "curl"),
        "{:#?}",
        daemon.events()
    );
}

#[test]
fn mode_flag_overrides_the_file_and_human_lines_read_well() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    // File says enforce; --mode audit wins.
    let daemon = Daemon::start_with(&policy(&ns, "enforce", ""), &["--mode", "audit"]);
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(ok, "audit mode refused a connect: {stderr}");
    daemon.wait_event("would-deny", |e| e["verdict"] == "would-deny");
    // A reload of the file (still enforce) says the flag still wins, and
    // it does.
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr(
        "the file says mode enforce, but --mode audit overrides it",
        1,
    );
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(
        ok,
        "audit mode refused a connect after the reload: {stderr}"
    );
}

/// The soft limit of open files a process starts with (often 1,024) is
/// raised to the hard one: a sweep holds a socket in every network
/// namespace it looks in. Control: the daemon starts with a soft limit
/// below the hard one (this process's, lowered for the start).
#[test]
fn the_daemon_raises_its_open_files_limit_to_the_hard_one() {
    let ns = Netns::new();
    let mut ours = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) },
        0
    );
    let lowered = libc::rlimit {
        rlim_cur: ours.rlim_max.min(1024) / 2,
        rlim_max: ours.rlim_max,
    };
    /// Puts this process's limit back, also when the start fails (the
    /// tests after this one run in this process).
    struct Restore(libc::rlimit);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: setrlimit reads the struct we own.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
        }
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
    let restore = Restore(ours);
    let daemon = Daemon::start(&policy(&ns, "audit", ""));
    drop(restore);
    let pid = daemon.pid().expect("the daemon's pid");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("its limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let hard = if ours.rlim_max == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        ours.rlim_max.to_string()
    };
    assert_eq!(
        (fields[3], fields[4]),
        (hard.as_str(), hard.as_str()),
        "{line} (started with a soft limit of {})",
        lowered.rlim_cur
    );
}

#[test]
fn a_second_instance_refuses_to_start() {
    let ns = Netns::new();
    let first = Daemon::start(&policy(&ns, "audit", ""));
    let run_dir = TempDir::new("second");
    // Same run dir as the first: copy it by pointing at the first's lock.
    let lock_dir = first_run_dir(&first);
    let config = run_dir.path().join("c.toml");
    std::fs::write(&config, policy(&ns, "audit", "")).expect("config");
    // A pin dir of its own, never the host's: were it to start, nothing
    // would be pinned where the host's daemon keeps its pins.
    let pin_dir = format!("/sys/fs/bpf/lwt-second-{}", std::process::id());
    let out = run_failing_start(
        Command::new(loopwarden_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--run-dir")
            .arg(&lock_dir)
            .arg("--pin-dir")
            .arg(&pin_dir),
    );
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "the refused start pinned into {pin_dir}"
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(
        stderr.contains(&first.pid().expect("running").to_string()),
        "names the holder: {stderr}"
    );
}

/// The run dir the harness gave a daemon (`<tmp>/run`), read back from its
/// command line.
fn first_run_dir(daemon: &Daemon) -> String {
    let pid = daemon.pid().expect("running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--run-dir")
        .expect("--run-dir");
    args[at + 1].clone()
}

#[test]
fn sigterm_leaves_enforcement_pinned_and_detach_removes_it() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    assert!(ns.socat_connect(&target).0, "reachable without loopwarden");
    let mut daemon = Daemon::start(&policy(&ns, "enforce", ""));
    let install = std::sync::Arc::clone(daemon.install());
    let ours = install.linked_prog_ids();
    assert_eq!(ours.len(), 2, "both links pinned and running programs");
    assert!(!ns.socat_connect(&target).0, "enforcing before the stop");
    assert!(daemon.stop(), "the daemon exits 0 on SIGTERM");
    daemon.wait_stderr("enforcement stays attached and pinned", 1);
    assert!(
        !ns.socat_connect(&target).0,
        "the daemon's exit ended enforcement"
    );
    let out = install.detach();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached"),
        "{out:?}"
    );
    let (ok, stderr) = ns.socat_connect(&target);
    assert!(ok, "still refused after detach: {stderr}");
    let loaded: Vec<u64> = prog_ids("lw_connect4")
        .into_iter()
        .chain(prog_ids("lw_connect6"))
        .filter(|id| ours.contains(id))
        .collect();
    assert!(loaded.is_empty(), "programs left loaded: {loaded:?}");
    assert!(!install.pin_dir().exists(), "pins left behind");
}

/// `detach` removes loopwarden's pins and nothing else: a `--pin-dir`
/// that is not on bpffs is refused with its marker file left, and on
/// bpffs what is not loopwarden's (another tool's directories beside ours)
/// is left and named.
#[test]
fn detach_removes_only_what_is_loopwardens() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let (targets, install) = enforcing_without_a_daemon(&ns);

    let elsewhere = TempDir::new("not-bpffs");
    let marker = elsewhere.path().join("links").join("keep-me");
    std::fs::create_dir_all(marker.parent().expect("a parent")).expect("links dir");
    std::fs::write(&marker, "not loopwarden's").expect("marker");
    let run_dir = TempDir::new("detach-run");
    let out = run(Command::new(loopwarden_bin()).arg("detach").args([
        "--pin-dir",
        &elsewhere.path().display().to_string(),
        "--run-dir",
        &run_dir.path().display().to_string(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "detach off bpffs succeeded: {out:?}");
    assert!(stderr.contains("is not on a BPF filesystem"), "{stderr}");
    assert!(marker.exists(), "detach removed a file off bpffs");
    assert_reached(&ns, &targets, false, "a refused detach ended enforcement");

    // Directories of another tool in and beside ours (bpffs takes
    // directories from mkdir; files only from BPF_OBJ_PIN).
    let foreign = [
        install.pin_dir().join("other-tool"),
        install.pin_dir().join("links").join("other-tool"),
    ];
    for dir in &foreign {
        std::fs::create_dir(dir).expect("a foreign directory on bpffs");
    }
    let out = install.detach();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("detached: removed"), "{stdout}");
    assert!(
        stdout.contains("left 2 entries that are not loopwarden's"),
        "{stdout}"
    );
    assert_reached(&ns, &targets, true, "still refused after detach");
    for dir in &foreign {
        assert!(dir.exists(), "detach removed {}", dir.display());
    }
    assert!(
        !install.pin_dir().join("links/lw_connect4").exists()
            && !install.pin_dir().join("maps").exists(),
        "loopwarden's own pins left"
    );
    for dir in foreign.iter().chain([&install.pin_dir().join("links")]) {
        std::fs::remove_dir(dir).expect("removing the test's directory");
    }
    std::fs::remove_dir(install.pin_dir()).expect("the pin dir, empty now");
}

/// socat addresses of the protected service over IPv4 and IPv6.
fn protected_targets() -> [String; 2] {
    [
        format!("TCP:127.0.0.1:{PROTECTED}"),
        format!("TCP6:[::1]:{PROTECTED}"),
    ]
}

/// Fails with `what` (and socat's error) unless a connect from `ns` to each
/// of `targets` succeeds exactly when `reached`.
fn assert_reached(ns: &Netns, targets: &[String], reached: bool, what: &str) {
    for target in targets {
        let (ok, stderr) = ns.socat_connect(target);
        assert_eq!(ok, reached, "{what} ({target}): {stderr}");
    }
}

/// The protected service's targets, reached from `ns` without loopwarden,
/// and then refused by the pins an enforcing daemon stopped with SIGTERM
/// left: those targets, and that daemon's install.
fn enforcing_without_a_daemon(ns: &Netns) -> ([String; 2], std::sync::Arc<Install>) {
    let targets = protected_targets();
    assert_reached(ns, &targets, true, "reachable without loopwarden");
    let install = enforcement_left_pinned(ns, &policy(ns, "enforce", ""), &targets);
    (targets, install)
}

/// Starts an enforcing daemon on `config` and stops it with SIGTERM; its
/// install, whose pinned links must still refuse `targets`.
fn enforcement_left_pinned(
    ns: &Netns,
    config: &str,
    targets: &[String],
) -> std::sync::Arc<Install> {
    let mut daemon = Daemon::start(config);
    let install = std::sync::Arc::clone(daemon.install());
    assert!(daemon.stop(), "the daemon exits 0 on SIGTERM");
    assert_reached(ns, targets, false, "enforcing after the daemon's exit");
    install
}

/// `detach` ends enforcement before it returns, even while another
/// process still holds the links: removing a pin only drops a reference,
/// which the kernel releases later (after an RCU grace period, from a work
/// queue) or, with another holder, not at all.
#[test]
fn detach_ends_enforcement_at_once_even_while_the_links_are_held() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let (targets, install) = enforcing_without_a_daemon(&ns);
    let held = [
        install.hold_link("lw_connect4"),
        install.hold_link("lw_connect6"),
    ];
    let out = install.detach();
    assert!(out.status.success(), "{out:?}");
    assert_reached(&ns, &targets, true, "still refused after detach");
    drop(held);
}

/// A link pinned but detached already (a `detach` killed between its two
/// steps) runs nothing: the next daemon attaches a new one in its place
/// instead of failing to update it, and enforces again.
#[test]
fn a_start_over_a_pinned_but_detached_link_attaches_anew() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let targets = protected_targets();
    let config = policy(&ns, "enforce", "");
    let install = enforcement_left_pinned(&ns, &config, &targets);
    install.detach_link_in_place("lw_connect4");
    install.detach_link_in_place("lw_connect6");
    assert_reached(&ns, &targets, true, "the detached links refuse nothing");
    let daemon = Daemon::start_in(&install, &config, &[]);
    daemon.wait_stderr("was detached already", 2);
    assert_reached(&ns, &targets, false, "enforcing again after the start");
    assert_eq!(install.linked_prog_ids().len(), 2, "both links pinned anew");
}

#[test]
fn not_root_is_a_clear_error() {
    let out = run_failing_start(
        Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .arg(loopwarden_bin())
            .args(["run", "--run-dir", "/tmp/loopwarden-nonroot-test"]),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("root"), "{stderr}");
}

/// In a pid namespace of its own (a container without `--pid=host`) the
/// daemon would seed and report the namespace's pids for the kernel's: it
/// is refused, with nothing pinned, and `doctor` says why.
#[test]
fn a_pid_namespace_of_its_own_is_a_clear_error() {
    let dir = TempDir::new("pidns");
    let pin_dir = format!("/sys/fs/bpf/lwt-pidns-{}", std::process::id());
    let in_pid_ns = |args: &[&str]| {
        let mut cmd = Command::new("unshare");
        // --kill-child: a daemon that did start dies with `unshare`.
        cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(loopwarden_bin())
            .args(args);
        cmd
    };
    let run_dir = dir.path().join("run").display().to_string();
    // A start that should have failed and pinned is detached, also when
    // the test fails.
    struct Detach<'a>(&'a str, &'a str);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            if std::path::Path::new(self.0).exists() {
                run(Command::new(loopwarden_bin()).args([
                    "detach",
                    "--pin-dir",
                    self.0,
                    "--run-dir",
                    self.1,
                ]));
            }
        }
    }
    let _detach = Detach(&pin_dir, &run_dir);
    let out = run_failing_start(&mut in_pid_ns(&[
        "run",
        "--run-dir",
        &run_dir,
        "--pin-dir",
        &pin_dir,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "the start pinned into {pin_dir}"
    );
    assert!(!out.status.success(), "started in a child pid namespace");
    assert!(
        stderr.contains("pid namespace of its own") && stderr.contains("--pid=host"),
        "{stderr}"
    );
    // `doctor` says why; the same doctor in the host's namespace passes.
    let pid_check = |mut doctor: Command| {
        let out = run(doctor.args(["doctor", "--json"]));
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("doctor --json parses");
        let checks = report["checks"].as_array().cloned().unwrap_or_default();
        let check = checks.into_iter().find(|c| c["name"] == "pid namespace");
        check.unwrap_or_else(|| panic!("no pid namespace check: {report:#}"))["level"].clone()
    };
    assert_eq!(pid_check(in_pid_ns(&[])), "fail");
    assert_eq!(pid_check(Command::new(loopwarden_bin())), "ok");
}

#[test]
fn a_bad_config_names_file_and_line_and_nothing_is_attached() {
    let dir = TempDir::new("badcfg");
    let path = dir.path().join("bad.toml");
    // Scoped to the test's namespace, and its pins in an install removed
    // on drop: a build that took the file judges nothing else, and leaves
    // nothing.
    let ns = Netns::new();
    let install = Install::new();
    std::fs::write(
        &path,
        format!(
            "mode = \"audit\"\n\n[protect]\nports = [8080]\nbogus = 1\nnetns = [\"{}\"]\n",
            ns.path()
        ),
    )
    .expect("config");
    let pin_dir = install.pin_dir().display().to_string();
    let run_with = |extra: &[&str]| {
        let mut args: Vec<String> = ["run"]
            .into_iter()
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect();
        for (flag, value) in [
            ("--config", path.display().to_string()),
            ("--run-dir", install.run_dir().display().to_string()),
            ("--pin-dir", pin_dir.clone()),
        ] {
            args.extend([flag.to_owned(), value]);
        }
        args
    };
    for args in [
        vec!["check-config".to_owned(), path.display().to_string()],
        run_with(&[]),
        // With nothing pinned, `--replace` replaces nothing: no word of
        // a predecessor's enforcement, which there is none of.
        run_with(&["--replace"]),
    ] {
        let out = run_failing_start(Command::new(loopwarden_bin()).args(&args));
        assert!(!out.status.success(), "{args:?} accepted a bad config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if args[0] == "run" {
            assert_eq!(out.status.code(), Some(78), "EX_CONFIG: {out:?}");
            assert!(
                !stderr.contains("keep enforcing") && !stderr.contains("will be replaced"),
                "{args:?} spoke of pins there are none of: {stderr}"
            );
        }
        assert!(stderr.contains("bad.toml"), "{stderr}");
        assert!(stderr.contains("bad.toml:5:"), "{stderr}");
        assert!(stderr.contains("bogus"), "{stderr}");
    }
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "a failed start left {pin_dir}"
    );
}

#[test]
fn sighup_reloads_and_a_bad_reload_keeps_the_running_policy() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let daemon = Daemon::start(&policy(&ns, "audit", ""));
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    assert!(ns.socat_connect(&target).0, "audit mode lets it through");

    std::fs::write(daemon.config_path(), policy(&ns, "enforce", "")).expect("rewrite");
    let install = daemon.install();
    let before = pinned_generation(install);
    daemon.signal(libc::SIGHUP);
    daemon.wait_installed(1);
    assert!(!ns.socat_connect(&target).0, "enforcing after the reload");
    // The reload went in as a whole generation in the other slot.
    assert_eq!(pinned_generation(install), 1 - before);
    let entries = map_generations(&install.pin_dir().join("maps/LW_RULES_EXE_NAME"));
    assert!(entries.contains(&(1 - before)), "{entries:?}");

    // A broken file is reported; enforcement stays as it was.
    daemon.allow_error("reload failed, keeping the running policy");
    // (Scoped like the good one: were it ever taken, nothing outside the
    // test would be judged by it.)
    std::fs::write(
        daemon.config_path(),
        format!("nonsense = 1\n{}", policy(&ns, "enforce", "")),
    )
    .expect("rewrite");
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("reload failed, keeping the running policy", 1);
    assert!(
        daemon.stderr_text().contains("loopwarden.toml:1:"),
        "{}",
        daemon.stderr_text()
    );
    assert!(!ns.socat_connect(&target).0, "still enforcing");
}

/// Refused connects from python3 while the daemon is frozen (SIGSTOP),
/// then lets it go; returns how many connects were refused.
fn refused_while_frozen(ns: &Netns, daemon: &Daemon, connects: u32) -> u64 {
    daemon.signal(libc::SIGSTOP);
    let script = format!(
        r#"
import socket
refused = 0
for _ in range({connects}):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", {PROTECTED}))
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(refused)
"#
    );
    let out = run(ns.cmd("/usr/bin/python3").args(["-c", &script]));
    daemon.signal(libc::SIGCONT);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out:?}"))
}

/// Refusals the daemon's lines stand for (alone or in a summary's count).
fn refusals_reported(daemon: &Daemon) -> u64 {
    daemon
        .events()
        .iter()
        .filter(|e| e["verdict"] == "deny")
        .map(connects)
        .sum()
}

#[test]
fn refusals_past_their_own_ring_buffer_spill_into_the_other_and_none_is_lost() {
    let ns = Netns::new();
    // A listener on the port, and a connect to it that succeeds before the
    // daemon starts: each refusal counted below is the daemon's.
    let _servers = ns.http_servers();
    assert!(ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}")).0);
    let rule = rule("py", "deny", "exe", "/usr/bin/python3");
    let daemon = Daemon::start_with(&policy(&ns, "enforce", &rule), &["--repeat-interval", "1s"]);
    // Three times what `LW_DENIALS` holds (256 KiB, 264 bytes a record:
    // about 990), less than it and `LW_EVENTS` (1 MiB) together.
    assert_eq!(refused_while_frozen(&ns, &daemon, 3000), 3000);
    loopwarden_tests::wait_for_explained(
        "every refusal reported",
        std::time::Duration::from_secs(10),
        || (refusals_reported(&daemon) == 3000).then_some(()),
        || {
            format!(
                ": {} reported; the daemon's stderr:\n{}",
                refusals_reported(&daemon),
                daemon.stderr_text()
            )
        },
    );
    // A full count of the kernel's counters (once a second) later: nothing
    // was counted lost.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    daemon.assert_no_reports_lost();
}

#[test]
fn events_the_ring_buffer_drops_are_counted_exactly_by_verdict() {
    let ns = Netns::new();
    // A listener on the port, and a connect to it that succeeds before the
    // daemon starts: each refusal counted below is the daemon's.
    let _servers = ns.http_servers();
    assert!(ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}")).0);
    let rule = rule("py", "deny", "exe", "/usr/bin/python3");
    let daemon = Daemon::start_with(&policy(&ns, "enforce", &rule), &["--repeat-interval", "1s"]);
    daemon.allow_error("events lost");
    // More refusals than both ring buffers hold (about 4,960 records:
    // refusals spill from `LW_DENIALS` into `LW_EVENTS`).
    assert_eq!(refused_while_frozen(&ns, &daemon, 12000), 12000);
    daemon.wait_stderr("events lost", 1);
    // Every refusal is either in a line (alone or counted in a summary) or
    // in the lost count: exactly, per verdict.
    let accounted = loopwarden_tests::wait_for(
        "every refusal reported or counted lost",
        std::time::Duration::from_secs(10),
        || {
            let reported = refusals_reported(&daemon);
            let lost = lost(&daemon, "lost_deny");
            (reported + lost == 12000).then_some((reported, lost))
        },
    );
    assert!(
        accounted.1 > 0,
        "all {} refusals fit: the test did not overflow the buffer",
        accounted.0
    );
    for other in ["lost_allow", "lost_audit", "lost_would_deny"] {
        assert_eq!(lost(&daemon, other), 0, "{other}");
    }
}

/// In audit mode, the refusal enforce mode would make has the refusals'
/// ring: a flood of audited reports that overflows the other ring, with
/// the daemon stopped, loses none of them.
#[test]
fn a_would_deny_is_not_crowded_out_by_a_flood_of_other_reports() {
    let ns = Netns::new();
    let rules = rule("py", "audit", "exe", "/usr/bin/python3")
        + &rule("socat", "deny", "exe", "/usr/bin/socat");
    let daemon = Daemon::start_with(&policy(&ns, "audit", &rules), &["--repeat-interval", "1s"]);
    daemon.allow_error("events lost");
    daemon.signal(libc::SIGSTOP);
    // More audited connects than `LW_EVENTS` holds (about 3,970), to a
    // listener that takes them as fast as they come (http.server's
    // backlog of 5 would drop SYNs), then the would-be refusal.
    let script = format!(
        r#"
import socket, subprocess, threading
server = socket.create_server(("127.0.0.1", {PROTECTED}), backlog=4096)
def take():
    while True:
        server.accept()[0].close()
threading.Thread(target=take, daemon=True).start()
for _ in range(6000):
    socket.create_connection(("127.0.0.1", {PROTECTED})).close()
subprocess.run(["/usr/bin/socat", "-u", "/dev/null", "TCP:127.0.0.1:{PROTECTED}"], check=True)
"#
    );
    let flood = run(ns.cmd("/usr/bin/python3").args(["-c", &script]));
    daemon.signal(libc::SIGCONT);
    assert!(
        flood.status.success(),
        "audit mode let both through: {flood:?}"
    );
    daemon.wait_event("the would-deny made after the flood", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat"
    });
    daemon.wait_stderr("events lost", 1);
    // A full count of the kernel's counters (once a second) later.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        lost(&daemon, "lost_audit") > 0,
        "the flood did not overflow LW_EVENTS: the test shows nothing"
    );
    assert_eq!(lost(&daemon, "lost_would_deny"), 0);
}

/// The sum of a `lost_*` field over the daemon's `events lost` lines.
fn lost(daemon: &Daemon, field: &str) -> u64 {
    daemon.stderr_sum("events lost", field)
}

#[test]
fn human_log_lines_carry_the_whole_identity() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let daemon = Daemon::start_with(&policy(&ns, "audit", ""), &["--log-format", "human"]);
    let _relay = ns.socat_relay(9001, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    assert_eq!(ns.curl("http://127.0.0.1:9001/"), Ok(200));
    let line = loopwarden_tests::wait_for(
        "a human audit line",
        std::time::Duration::from_secs(10),
        || {
            daemon
                .stdout_lines()
                .into_iter()
                .find(|l| l.contains("WOULD-DENY"))
        },
    );
    for field in [
        "rule=catalog:socat",
        &format!("dst=127.0.0.1:{PROTECTED}"),
        "uid=0(root)",
        "comm=socat",
        "exe=/usr/bin/socat",
        "cmdline=\"socat TCP-LISTEN:9001",
        "ppid=",
        "cgroup=",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
}

/// Forks a child that connects to 127.0.0.1:`argv[1]` and exits, then
/// forks until a child gets that pid back (written to `ns_last_pid` before
/// each fork) and executes a Python that sleeps, with `recycled-PID` in
/// its command line (a marker this script's own text, the parent's
/// command line, lacks); writes `PID REFUSED RECYCLED` to `argv[2]` and
/// waits to be killed. Its own command line carries `argv[3]`.
const RECYCLE_A_PID: &str = r#"
import os, socket, sys, time
port, report = int(sys.argv[1]), sys.argv[2]
pid = os.fork()
if pid == 0:
    refused = False
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3)
    except ConnectionRefusedError:
        refused = True
    finally:
        os._exit(0 if refused else 1)
_, status = os.waitpid(pid, 0)
# /proc gives start times in clock ticks (10 ms): the next holder of the
# pid starts in a later tick.
time.sleep(0.05)
recycled = 0
for _ in range(100):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    child = os.fork()
    if child == 0:
        try:
            sleep = "import time; time.sleep(15)"
            os.execv(sys.executable, [sys.executable, "-c", sleep, "recycled-%d" % pid])
        finally:
            os._exit(1)
    if child == pid:
        recycled = child
        break
    os.kill(child, 9)
    os.waitpid(child, 0)
with open(report, "w") as f:
    f.write("%d %d %d\n" % (pid, int(status == 0), recycled))
time.sleep(30)
"#;

/// A report's command line is read from `/proc` only while its pid is
/// still the process that connected: a forked child refused while the
/// daemon was stopped, whose pid another process (the same executable,
/// with a marker in its command line) holds by the time the daemon reads
/// the report, is reported with its parent's command line (the same
/// executable, still running: the positive control that the line is read
/// at all), never the other process's.
#[test]
fn a_report_never_takes_the_command_line_of_a_later_process_with_its_pid() {
    let run = StoppedRun::start("recycle", RECYCLE_A_PID);
    let [pid, refused, recycled] = run.numbers();
    let _sleep = KillOnDrop(recycled);
    assert_eq!(refused, 1, "the child's connect was not refused");
    assert_eq!(recycled, pid, "no child got pid {pid} back");
    let ev = run.refusal(pid, "the child's refusal");
    let cmdline = ev["cmdline"].as_str().unwrap_or_default();
    assert!(cmdline.contains("parent-marker"), "{ev:#}");
    assert!(!cmdline.contains(&format!("recycled-{pid}")), "{ev:#}");
}

/// A driver script (`python3 -c SCRIPT PORT REPORT parent-marker`) run
/// while the daemon, enforcing a rule that refuses python3, is stopped:
/// what its processes connect is reported once they are gone. The script
/// writes a line of numbers to REPORT, then waits to be killed.
struct StoppedRun {
    daemon: Daemon,
    line: String,
    _driver: loopwarden_tests::Proc,
    _dir: TempDir,
    _servers: (loopwarden_tests::Proc, loopwarden_tests::Proc),
    _ns: Netns,
}

impl StoppedRun {
    /// Runs `script` in a new namespace, the daemon stopped until the
    /// report is written (or 10 s have passed: the daemon is let go before
    /// any check).
    fn start(name: &str, script: &str) -> Self {
        let ns = Netns::new();
        let servers = ns.http_servers();
        let rule = rule("py", "deny", "exe", "/usr/bin/python3");
        let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
        let dir = TempDir::new(name);
        let report = dir.path().join("report");
        daemon.signal(libc::SIGSTOP);
        let driver = ns.spawn(
            "/usr/bin/python3",
            &[
                "-c",
                script,
                &PROTECTED.to_string(),
                report.to_str().expect("utf-8 temp dir"),
                "parent-marker",
            ],
        );
        let line = (0..200).find_map(|_| {
            let line = std::fs::read_to_string(&report)
                .ok()
                .filter(|l| l.ends_with('\n'));
            if line.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            line
        });
        daemon.signal(libc::SIGCONT);
        StoppedRun {
            daemon,
            line: line.expect("the driver reported nothing within 10 s"),
            _driver: driver,
            _dir: dir,
            _servers: servers,
            _ns: ns,
        }
    }

    /// The report's `N` numbers.
    fn numbers<const N: usize>(&self) -> [u32; N] {
        let line = &self.line;
        line.split_whitespace()
            .map(|w| w.parse().expect("a number"))
            .collect::<Vec<_>>()
            .try_into()
            .unwrap_or_else(|_| panic!("{line:?}"))
    }

    /// The daemon's report of refusing `pid`.
    fn refusal(&self, pid: u32, what: &str) -> serde_json::Value {
        self.daemon
            .wait_event(what, |e| e["verdict"] == "deny" && e["pid"] == pid)
    }
}

/// Has a forked child connect to 127.0.0.1:`argv[1]` and exit, then a
/// child that executes this same Python (with `exec-marker` in its command
/// line) do the same; writes `FORKED EXECUTED` (their pids) to `argv[2]`
/// and waits to be killed. Its own command line carries `argv[3]`.
const FORK_AND_EXEC: &str = r#"
import os, socket, sys, time
port, report = int(sys.argv[1]), sys.argv[2]
CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
except OSError:
    pass
"""
forked = os.fork()
if forked == 0:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError:
        pass
    finally:
        os._exit(0)
os.waitpid(forked, 0)
executed = os.fork()
if executed == 0:
    try:
        os.execv(sys.executable, [sys.executable, "-c", CONNECT, str(port), "exec-marker"])
    finally:
        os._exit(1)
os.waitpid(executed, 0)
with open(report, "w") as f:
    f.write("%d %d\n" % (forked, executed))
time.sleep(30)
"#;

/// A process that is gone when its report is read is given its parent's
/// command line only if it executed nothing since its fork (it ran its
/// parent's program, as socat's per-connection child does: the positive
/// control). A child that executed the same program (`python3` starting
/// `python3 ...`) had a command line of its own, which the parent's is
/// not: it is reported without one. Both connects are refused while the
/// daemon is stopped, so both processes have exited when it reads them.
#[test]
fn a_child_that_executed_its_parents_program_is_never_given_its_parents_command_line() {
    let run = StoppedRun::start("fork-exec", FORK_AND_EXEC);
    let [forked, executed] = run.numbers();
    let ev = run.refusal(forked, "the forked child's refusal");
    let cmdline = ev["cmdline"].as_str().unwrap_or_default();
    assert!(cmdline.contains("parent-marker"), "{ev:#}");
    let ev = run.refusal(executed, "the executed child's refusal");
    assert!(ev["cmdline"].is_null(), "{ev:#}");
}

/// Kills a pid (not a child of the test) when dropped, also on failure.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 != 0 {
            // SAFETY: a plain syscall.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

#[test]
fn sigint_exits_cleanly_and_enforcement_stays() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    assert!(ns.socat_connect(&target).0, "refused without loopwarden");
    let mut daemon = Daemon::start(&policy(&ns, "enforce", ""));
    let install = std::sync::Arc::clone(daemon.install());
    assert!(!ns.socat_connect(&target).0, "enforcing");
    daemon.wait_event("the refusal", |e| {
        e["verdict"] == "deny" && e["rule"] == "catalog:socat"
    });
    daemon.signal(libc::SIGINT);
    daemon.wait_stderr("enforcement stays attached", 1);
    assert!(daemon.stop(), "the daemon exits 0 on SIGINT");
    assert!(
        !ns.socat_connect(&target).0,
        "enforcement ended with SIGINT"
    );
    let out = install.detach();
    assert!(out.status.success(), "{out:?}");
    assert!(ns.socat_connect(&target).0, "still refused after detach");
}

/// The generation slot in force, read from the install's own pinned map.
fn pinned_generation(install: &loopwarden_tests::Install) -> u8 {
    hex_bytes(&map_dump(install, "LW_GENERATION")[0]["value"])[0]
}

#[test]
fn check_config_prints_the_compiled_policy() {
    let dir = TempDir::new("goodcfg");
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        "mode = \"enforce\"\n[protect]\nports = [8080, \"9000-9100\"]\n\n[[rule]]\nname = \"py\"\naction = \"deny\"\nexe = \"/usr/bin/python3\"\n",
    )
    .expect("config");
    let out = run(Command::new(loopwarden_bin())
        .arg("check-config")
        .arg(&path));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("enforce"), "{stdout}");
    assert!(stdout.contains("8080, 9000-9100"), "{stdout}");
    // The exe path is shown with the identity it resolved to.
    assert!(stdout.contains("exe /usr/bin/python3 (dev "), "{stdout}");
    assert!(stdout.contains("catalog:socat"), "{stdout}");
}

/// A run directory of another user's is refused (exit 78, the directory
/// and why named) before anything is made in it: the link they put where
/// the lock goes is not followed, and the file it points to keeps its
/// contents. One of root's that is only too open (an `emptyDir`, 0777) is
/// made private with a warning, and the link is still not followed. The
/// same `detach`, the link removed, runs.
#[test]
fn a_run_directory_another_user_may_write_is_refused() {
    let dir = TempDir::new("shared-run");
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).expect("run dir");
    let precious = dir.path().join("precious");
    std::fs::write(&precious, "precious\n").expect("file");
    let lock = run_dir.join("loopwarden.lock");
    std::os::unix::fs::symlink(&precious, &lock).expect("link");
    std::os::unix::fs::chown(&run_dir, Some(65534), None).expect("chown");
    let pin_dir = format!("/sys/fs/bpf/lwt-shared-run-{}", std::process::id());
    let detach = || {
        Command::new(loopwarden_bin())
            .arg("detach")
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--pin-dir", &pin_dir])
            .output()
            .expect("detach")
    };
    let out = detach();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the run directory {} is not private",
            run_dir.display()
        )) && stderr.contains("is owned by uid 65534"),
        "{stderr}"
    );
    let intact = || std::fs::read_to_string(&precious).expect("read") == "precious\n";
    assert!(intact());
    // Root's, open to all: made private, the link still not followed.
    std::os::unix::fs::chown(&run_dir, Some(0), None).expect("chown");
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let out = detach();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("was writable by its group or others (mode 777): made it 755"),
        "{stderr}"
    );
    assert!(intact());
    std::fs::remove_file(&lock).expect("unlink");
    let out = detach();
    assert!(out.status.success(), "{out:?}");
    // The lock it made in the private directory holds its pid.
    let held = std::fs::read_to_string(&lock).expect("lock");
    assert!(held.trim().parse::<u32>().is_ok(), "{held:?}");
}

/// A catalogued command's installed copy adds its file's name to the rule
/// only when only root could have put it there: the same link to
/// `/usr/bin/true` named `cloudflared` in `/opt/*/bin` adds `true*` while
/// the directory is root's, and nothing once another user owns it (a
/// conda install's `/opt/conda/bin`), who could point it at any program.
#[test]
fn a_copy_another_user_could_plant_adds_no_name_to_the_catalog() {
    struct Removed(std::path::PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    // /opt itself, if this test makes it, goes too.
    let _made_opt = (!std::path::Path::new("/opt").exists()).then(|| {
        std::fs::create_dir("/opt").expect("/opt");
        Removed(std::path::PathBuf::from("/opt"))
    });
    let opt = Removed(std::path::PathBuf::from(format!(
        "/opt/loopwarden-test-{}",
        std::process::id()
    )));
    let bin = opt.0.join("bin");
    std::fs::create_dir_all(&bin).expect("/opt/*/bin");
    std::os::unix::fs::symlink("/usr/bin/true", bin.join("cloudflared")).expect("link");
    let catalog_line = || {
        let out = run(Command::new(loopwarden_bin())
            .args(["check-config", "--default"])
            .env("LOOPWARDEN_LOG", "off"));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("catalog:cloudflared"))
            .expect("catalog:cloudflared in the compiled policy")
            .to_owned()
    };
    let line = catalog_line();
    assert!(line.contains("true*"), "root's copy counts: {line}");
    std::os::unix::fs::chown(&bin, Some(65534), None).expect("chown");
    let line = catalog_line();
    assert!(
        !line.contains("true*"),
        "another user's copy counts: {line}"
    );
}

/// `check-config --as-daemon` (the unit's `ExecReload`) judges a file as
/// the daemon's reload does: an executable not installed here is a warning
/// (plain `check-config` refuses it), an empty file an error (plain
/// `check-config` takes it for the defaults).
#[test]
fn check_config_as_daemon_judges_a_file_as_a_reload_does() {
    let dir = TempDir::new("reloadcfg");
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        "mode = \"enforce\"\n[[rule]]\nname = \"t\"\naction = \"deny\"\n\
         exe = \"/opt/not-installed/cloudflared\"\n",
    )
    .expect("config");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "# truncated\n").expect("config");
    let check = |extra: &[&str], path: &std::path::Path| {
        let mut args: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
        args.push(path.as_os_str());
        let (code, text) = loopwarden_tests::check_config(&args);
        (code == Some(0), text)
    };
    let (ok, text) = check(&[], &missing);
    assert!(
        !ok && text.contains("/opt/not-installed/cloudflared"),
        "{text}"
    );
    let (ok, text) = check(&["--as-daemon"], &missing);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning") && text.contains("not-installed"),
        "{text}"
    );
    let (ok, text) = check(&[], &empty);
    assert!(ok, "{text}");
    let (ok, text) = check(&["--as-daemon"], &empty);
    assert!(!ok && text.contains("no settings"), "{text}");
}

#[test]
fn kernel_diagnostics_reach_the_daemon_log_through_aya_log() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    assert!(ns.socat_connect(&target).0, "reached without the daemon");
    let daemon = Daemon::start_debug(&policy(&ns, "enforce", ""));
    assert!(
        daemon.stderr_text().contains("verified after"),
        "{}",
        daemon.stderr_text()
    );
    let (ok, _) = ns.socat_connect(&target);
    assert!(!ok, "the catalog's socat rule refuses");
    // Written by the kernel program with aya-log's debug!, printed by the daemon.
    daemon.wait_stderr(&format!("to port {PROTECTED} by rule"), 1);
}

#[test]
fn log_allowed_reports_every_protected_connect() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let daemon = Daemon::start(&format!(
        "log_allowed = true\n{}",
        policy(&ns, "enforce", "")
    ));
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
    let ev = daemon.wait_event("an allow record for curl", |e| {
        e["verdict"] == "allow" && e["comm"] == "curl"
    });
    assert_eq!(ev["rule"], serde_json::Value::Null);
    assert_eq!(ev["exe_name"], "curl");
}

#[test]
fn a_reload_tells_settings_read_at_start_against_those_in_force() {
    let ns = Netns::new();
    let base = policy(&ns, "audit", "");
    let mut daemon = Daemon::start(&base);
    let changed = format!("{base}\n[provenance]\nconnections = 2048\n");
    let warning = "[provenance] connections changed: that takes effect when the daemon restarts";
    // The same change reloaded twice is said twice (it is still not in
    // force); back to the running value, nothing is; changed again, it is;
    // and back again, nothing is.
    let reloads = [&changed, &changed, &base, &changed, &base];
    for (i, text) in reloads.into_iter().enumerate() {
        std::fs::write(daemon.config_path(), text).expect("rewriting the config");
        daemon.signal(libc::SIGHUP);
        daemon.wait_stderr("policy unchanged", i + 1);
    }
    // A reload's warnings come after its `policy unchanged`, so the
    // fourth's are in before the fifth's line.
    let said = daemon.stderr_text().matches(warning).count();
    assert_eq!(said, 3, "{}", daemon.stderr_text());
    assert!(daemon.stop(), "the daemon did not exit cleanly");
}

/// A SIGHUP, SIGINT or SIGTERM sent to the daemon is taken by a thread
/// that shares the loop's descriptors: the thread that compiles policies
/// (a descriptor table of its own, where the runtime's signal pipe is
/// closed) blocks them, else a signal the kernel handed to it was lost
/// (a reload that never came, seen once in CI). The control: the main
/// thread blocks none of them.
#[test]
fn the_policy_compiling_thread_leaves_signals_to_the_loop() {
    let ns = Netns::new();
    let mut daemon = Daemon::start(&policy(&ns, "audit", ""));
    let pid = daemon.pid().expect("the daemon's pid");
    let blocked = |tid: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
            .expect("reading the thread's status");
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .expect("SigBlk in the thread's status");
        u64::from_str_radix(mask.trim(), 16).expect("SigBlk is hex")
    };
    let handled = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM]
        .iter()
        .fold(0_u64, |mask, &sig| mask | 1 << (sig - 1));
    let resolving = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("listing the daemon's threads")
        .filter_map(|t| t.ok()?.file_name().into_string().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == "lw-resolve")
        })
        .expect("the daemon's lw-resolve thread");
    let mask = blocked(&resolving);
    assert_eq!(mask & handled, handled, "lw-resolve blocks {mask:#x}");
    let mask = blocked(&pid.to_string());
    assert_eq!(mask & handled, 0, "the main thread blocks {mask:#x}");
    assert!(daemon.stop(), "the daemon did not exit cleanly");
}

/// A pin directory off bpffs is refused with exit 78, and nothing is made
/// there (its `maps/` and `links/` were, before the check); on bpffs the
/// daemon makes them.
#[test]
fn a_pin_directory_off_bpffs_is_refused_with_nothing_made() {
    let dir = TempDir::new("off-bpffs");
    let pins = dir.path().join("pins");
    let run_dir = TempDir::new("off-bpffs-run");
    let start = |pin_dir: &str| {
        Command::new("timeout")
            .args(["-s", "INT", "20"])
            .arg(loopwarden_bin())
            .args(["run", "--pin-dir", pin_dir, "--run-dir"])
            .arg(run_dir.path())
            .output()
            .expect("run")
    };
    let out = start(&pins.display().to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("is not on a BPF filesystem"), "{stderr}");
    assert!(!pins.exists(), "{} was made off bpffs", pins.display());
    // The control: a pin directory on bpffs is made, with its maps/ and
    // links/, by the same start.
    let ns = Netns::new();
    let daemon = Daemon::start(&policy(&ns, "audit", ""));
    let pin_dir = daemon.install().pin_dir();
    for sub in ["maps", "links"] {
        assert!(pin_dir.join(sub).is_dir(), "{}", pin_dir.display());
    }
}
