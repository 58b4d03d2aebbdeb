//! `loopwarden status` and `loopwarden doctor` against the real state: with
//! nothing pinned, with a daemon enforcing, after a SIGKILL of the daemon
//! (pinned, no daemon), with an incompatible LW_META, and after detach; and
//! doctor on this host.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use loopwarden_tests::{
    AS_NOBODY, Daemon, Install, Netns, PROTECTED, TempDir, counter, loopwarden_bin, map_update,
    policy, run, run_ok,
};
use serde_json::Value;

/// `loopwarden status` of `install`: exit code, text, and the `--json` form
/// (read right after the text).
fn status(install: &Install) -> (Option<i32>, String, Value) {
    let text = run(Command::new(loopwarden_bin())
        .arg("status")
        .args(install.dir_args()));
    let json = run(Command::new(loopwarden_bin())
        .args(["status", "--json"])
        .args(install.dir_args()));
    assert_eq!(
        text.status.code(),
        json.status.code(),
        "text and --json disagree"
    );
    let value: Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&json.stdout)
        )
    });
    (
        text.status.code(),
        String::from_utf8_lossy(&text.stdout).into_owned(),
        value,
    )
}

/// `loopwarden status` of run directory `run_dir` and pin directory
/// `pin_dir`: exit code and text.
fn status_of(run_dir: &std::path::Path, pin_dir: &std::path::Path) -> (Option<i32>, String) {
    let out = run(Command::new(loopwarden_bin())
        .arg("status")
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--pin-dir")
        .arg(pin_dir));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What no policy read could tell is `null` in `status --json`.
fn assert_unread(json: &Value) {
    assert!(json["bind"]["guard"].is_null(), "{json:#}");
    assert!(json["egress_rules"].is_null(), "{json:#}");
    assert!(json["provenance"]["tag"].is_null(), "{json:#}");
}

/// `loopwarden status` of `install` as uid 65534 (nobody), run from a
/// copy of the binary nobody may execute: exit code and text.
fn status_as_nobody(install: &Install) -> (Option<i32>, String) {
    let dir = TempDir::new("status-nobody");
    let bin = dir.path().join("loopwarden");
    std::fs::copy(loopwarden_bin(), &bin).expect("copy the binary");
    for path in [dir.path(), bin.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    }
    let out = run(Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .arg(&bin)
        .arg("status")
        .args(install.dir_args()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The policy sequence number the daemon's ready line names.
fn ready_seq(daemon: &Daemon) -> u64 {
    let stderr = daemon.stderr_text();
    let at = stderr
        .find("policy #")
        .expect("a policy # in the ready line")
        + "policy #".len();
    stderr[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a sequence number")
}

fn prog_ids(report: &Value) -> Vec<u64> {
    report["links"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["prog_id"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn status_follows_attach_sigkill_incompatible_meta_and_detach() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let install = Install::new();

    // Nothing pinned.
    let (code, text, json) = status(&install);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("not enforcing: nothing pinned"), "{text}");
    assert!(
        text.contains("\nbind      guard off (nothing pinned);"),
        "{text}"
    );
    assert!(
        text.contains("\norigins   nothing tagged (nothing pinned);"),
        "{text}"
    );
    assert_eq!(json["state"], "not-enforcing");
    assert_unread(&json);
    assert_eq!(json["daemon"]["running"], false);
    // Positive control: the relay reaches the service without loopwarden.
    assert!(
        ns.socat_connect(&target).0,
        "control: socat reaches the service"
    );

    // A daemon enforcing.
    let mut daemon = Daemon::start_in(&install, &policy(&ns, "enforce", ""), &[]);
    let (ok, err) = ns.socat_connect(&target);
    assert!(!ok, "the relay was not refused");
    assert!(err.contains("Connection refused"), "{err}");
    daemon.wait_event("the relay's refusal", |e| e["verdict"] == "deny");
    // Asked with the run directory and another pin directory (here one
    // that does not exist: nothing is read there but its absence): the
    // daemon's own is named, with the command that reports on it.
    let elsewhere = TempDir::new("status-other-pins");
    let other = elsewhere.path().join("pins");
    let out = run(Command::new(loopwarden_bin())
        .arg("status")
        .arg("--run-dir")
        .arg(install.run_dir())
        .arg("--pin-dir")
        .arg(&other));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        said.contains(&format!(
            "the daemon of this run directory pins in {} (`loopwarden status --pin-dir {} \
             --run-dir {}` reports on it)",
            install.pin_dir().display(),
            install.pin_dir().display(),
            install.run_dir().display()
        )),
        "{said}"
    );
    let (code, text, json) = status(&install);
    assert_eq!(code, Some(0), "{text}");
    let pid = daemon.pid().expect("running");
    let version =
        String::from_utf8_lossy(&run_ok(Command::new(loopwarden_bin()).arg("--version")).stdout)
            .trim()
            .trim_start_matches("loopwarden ")
            .to_owned();
    assert!(
        text.contains(&format!("running: pid {pid}, version {version}")),
        "{text}"
    );
    assert!(text.contains("mode enforce"), "{text}");
    assert!(text.contains("\nbind      guard off;"), "{text}");
    assert!(text.contains("\negress    guard off\n"), "{text}");
    assert!(
        text.contains("\norigins   connections are tagged, "),
        "{text}"
    );
    assert_eq!(json["state"], "active");
    assert_eq!(json["bind"]["guard"], false, "{json:#}");
    assert_eq!(json["egress_rules"], 0, "{json:#}");
    assert_eq!(json["provenance"]["tag"], true, "{json:#}");
    // Without root nothing is read, and nothing read is stated.
    let (nobody_code, nobody_text) = status_as_nobody(&install);
    assert_eq!(nobody_code, Some(4), "{nobody_text}");
    assert!(nobody_text.contains("need root"), "{nobody_text}");
    // Read by nobody as it is (0644 here)...
    assert!(nobody_text.contains(", version "), "{nobody_text}");
    // ... and root's alone (the unit's UMask=0077): said so, where the
    // build before guessed at an older daemon. (The daemon rewrites the
    // file, 0644, after an install or a sweep: asked again then.)
    let file = install.run_dir().join("status.json");
    let private = (0..5)
        .find_map(|_| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
            let (_, text) = status_as_nobody(&install);
            let mode = std::fs::metadata(&file)
                .expect("status.json")
                .permissions()
                .mode();
            (mode & 0o777 == 0o600).then_some(text)
        })
        .expect("the daemon rewrote status.json at each try");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
    assert!(
        private.contains("not readable by this user") && !private.contains("an older version"),
        "{private}"
    );
    // Root without CAP_SYS_ADMIN cannot look the links' programs up: it
    // says so, where it said they ran none (exit 3).
    let out = run(Command::new("setpriv")
        .args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"])
        .arg(loopwarden_bin())
        .arg("status")
        .args(install.dir_args()));
    let capless = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        capless.contains("this process lacks CAP_SYS_ADMIN"),
        "{capless}"
    );
    // Asked with another run directory: no daemon there, and the one that
    // holds the pins' lock is named, with its own run directory.
    let elsewhere = TempDir::new("status-elsewhere");
    let out = run(Command::new(loopwarden_bin())
        .args(["status", "--pin-dir"])
        .arg(install.pin_dir())
        .arg("--run-dir")
        .arg(elsewhere.path()));
    let other = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{other}");
    assert!(
        other.contains(&format!(
            "no daemon for this run directory; pid {pid} holds the pin directory's lock: a \
             daemon given --run-dir {}",
            install.run_dir().display()
        )),
        "{other}"
    );
    assert!(
        other.contains(&format!("reported by the daemon of pid {pid}")),
        "{other}"
    );
    for unread in ["\nbind ", "\negress ", "\norigins ", "\nlink "] {
        assert!(
            !nobody_text.contains(unread),
            "{unread:?} stated without root: {nobody_text}"
        );
    }
    assert_eq!(json["daemon"]["running"], true);
    assert_eq!(json["daemon"]["reported"]["pid"], pid);
    assert_eq!(json["daemon"]["reported"]["version"], version.as_str());
    assert_eq!(json["policy"]["mode"], "enforce");
    let seq = ready_seq(&daemon);
    assert_eq!(json["policy"]["seq"], seq, "{json:#}");
    assert!(text.contains(&format!("#{seq} ")), "{text}");
    assert_eq!(
        prog_ids(&json),
        install.linked_prog_ids(),
        "status names other programs than bpftool"
    );
    assert!(
        json["links"]
            .as_array()
            .is_some_and(|ls| ls.iter().all(|l| l["attached_at_root"] == true)),
        "{json:#}"
    );
    assert!(counter(&json, "denied") >= 1, "{json:#}");
    assert!(counter(&json, "checked") >= counter(&json, "denied"));
    // The tracking programs run too, and the relay verdict is shown.
    let tracking = json["tracking"].as_array().cloned().unwrap_or_default();
    assert_eq!(tracking.len(), 7, "{json:#}");
    for t in &tracking {
        assert_eq!(t["pinned"], true, "{t:#}");
        assert_eq!(t["prog_name"], t["program"], "{t:#}");
        // The UDP receive hooks are cgroup hooks: checked at the root.
        let cgroup_hook = t["tracepoint"]
            .as_str()
            .is_some_and(|tp| tp.starts_with("cgroup/"));
        let at_root = if cgroup_hook {
            Value::Bool(true)
        } else {
            Value::Null
        };
        assert_eq!(t["attached_at_root"], at_root, "{t:#}");
        // The runs the kernel skipped, as bpftool reads them.
        let program = t["program"].as_str().expect("a program");
        assert_eq!(t["skipped_runs"], install.skipped_runs(program), "{t:#}");
    }
    assert_eq!(json["policy"]["relay"], "audit", "{json:#}");
    assert!(
        text.contains("relay verdict audit (window 2000 ms)"),
        "{text}"
    );
    assert!(!text.contains("incomplete"), "{text}");
    let denied_before = counter(&json, "denied");
    assert!(!ns.socat_connect(&target).0, "refused once, not twice");
    let (_, _, json) = status(&install);
    assert!(
        counter(&json, "denied") > denied_before,
        "the denied counter did not move: {json:#}"
    );

    // A reload that fails: the daemon says so, the policy stays.
    // Scoped like the good one: were it ever taken, nothing outside the
    // test would be judged by it.
    std::fs::write(
        install.config_path(),
        format!("bogus = 1\n{}", policy(&ns, "enforce", "")),
    )
    .expect("rewrite");
    daemon.allow_error("reload failed");
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("reload failed", 1);
    let (code, text, json) = loopwarden_tests::wait_for(
        "status.json to record the failed reload",
        std::time::Duration::from_secs(5),
        || {
            // The text is read before the JSON: both must show it (the
            // daemon may write status.json between the two reads).
            let got = status(&install);
            (got.2["daemon"]["reported"]["last_reload"]["ok"] == false
                && got.1.contains("FAILED at"))
            .then_some(got)
        },
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("FAILED at"), "{text}");
    // Its first line says so too.
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("whose last reading of its policy file FAILED"),
        "{text}"
    );
    assert_eq!(
        json["summary"].as_str(),
        Some(first.trim_start_matches("loopwarden: ")),
        "{json:#}"
    );
    assert_eq!(
        json["policy"]["seq"], seq,
        "a failed reload changed the policy"
    );

    // SIGKILL: enforcement stays, nobody reports.
    daemon.kill9();
    let (code, text, json) = status(&install);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("no daemon: enforcing the pinned policy, unreported"),
        "{text}"
    );
    assert!(text.contains(&format!("the last one: pid {pid}")), "{text}");
    assert_eq!(json["daemon"]["running"], false);
    assert_eq!(json["policy"]["seq"], seq);
    assert_eq!(prog_ids(&json), install.linked_prog_ids());
    assert!(
        !ns.socat_connect(&target).0,
        "not refused after the SIGKILL"
    );

    // A tracking program whose pin is gone (and so detached): still
    // active, but status says relay detection is incomplete.
    std::fs::remove_file(install.pin_dir().join("links/lw_receive")).expect("unpinning");
    let (code, text, json) = status(&install);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("relay detection incomplete (lw_receive is not running)"),
        "{text}"
    );
    assert!(
        text.contains("lw_receive (tcp_rcv_space_adjust): not pinned"),
        "{text}"
    );
    assert_eq!(json["state"], "active");

    // LW_META of another layout: status refuses to decode the maps.
    let mut meta = b"loopward".to_vec();
    meta.extend(1u32.to_le_bytes());
    meta.extend([0u8; 12]);
    map_update(&install, "LW_META", &0u32.to_ne_bytes(), &meta);
    let (code, text, json) = status(&install);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("incompatible layout 1"), "{text}");
    assert!(
        text.contains("\nbind      guard unknown (no policy read);"),
        "{text}"
    );
    assert!(
        text.contains("\negress    guard unknown (no policy read)\n"),
        "{text}"
    );
    assert!(
        text.contains("\norigins   tagging unknown (no policy read);"),
        "{text}"
    );
    assert_unread(&json);
    assert_eq!(json["state"], "unreadable");
    assert_eq!(json["layout"], 1);
    assert!(json["policy"].is_null() && json["counters"] == serde_json::json!([]));

    // Detached: nothing enforces, and the relay gets through again.
    let out = install.detach();
    assert!(out.status.success(), "{out:?}");
    let (code, text, json) = status(&install);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("never started, or detached"), "{text}");
    assert_eq!(json["state"], "not-enforcing");
    assert!(
        ns.socat_connect(&target).0,
        "the relay is still refused after detach"
    );
}

#[test]
fn doctor_passes_on_this_host_and_json_parses() {
    let text = run(Command::new(loopwarden_bin()).arg("doctor"));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(0), "{stdout}");
    for line in stdout.lines().filter(|l| !l.starts_with("every required")) {
        let level = line.split_whitespace().next().unwrap_or_default();
        assert!(
            ["ok", "warn", "FAIL"].contains(&level),
            "a line without a level: {line}"
        );
    }
    let json = run(Command::new(loopwarden_bin()).args(["doctor", "--json"]));
    assert_eq!(json.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&json.stdout).expect("doctor --json parses");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().expect("checks");
    for name in [
        "capabilities",
        "kernel",
        "cgroup v2",
        "cgroup namespace",
        "pid namespace",
        "BTF",
        "bpffs",
        "program type",
        "connect hooks",
        "helpers",
        "map types",
        "programs",
        "link update",
    ] {
        let check = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report:#}"));
        assert_eq!(check["required"], true, "{check:#}");
        assert_eq!(check["level"], "ok", "{check:#}");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{stdout}"
        );
    }
    assert!(
        checks
            .iter()
            .filter(|c| c["required"] == true)
            .all(|c| c["level"] == "ok"),
        "{report:#}"
    );
    // The probes leave nothing behind.
    let cgroup_root = String::from_utf8_lossy(
        &run_ok(
            Command::new("sh").args(["-c", "ls /sys/fs/cgroup /sys/fs/cgroup/unified 2>/dev/null"]),
        )
        .stdout,
    )
    .into_owned();
    assert!(
        !cgroup_root.contains("loopwarden-doctor-"),
        "a probe cgroup was left: {cgroup_root}"
    );
}

#[test]
fn doctor_warns_where_loopback_addresses_are_routed() {
    let ns = Netns::new();
    let route_localnet = |ns: &Netns| -> Value {
        let out = run(ns
            .cmd(loopwarden_bin().to_str().expect("a UTF-8 path"))
            .args(["doctor", "--json"]));
        let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json parses");
        let check = report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == "route_localnet")
            .cloned();
        check.unwrap_or_else(|| panic!("no route_localnet check: {report:#}"))
    };
    // A new namespace routes no loopback address ...
    let before = route_localnet(&ns);
    assert_eq!(before["level"], "ok", "{before:#}");
    // ... and once `all` does, doctor says so (a warning: not required).
    run(ns
        .cmd("sysctl")
        .args(["-qw", "net.ipv4.conf.all.route_localnet=1"]));
    let after = route_localnet(&ns);
    assert_eq!(after["level"], "warn", "{after:#}");
    assert_eq!(after["required"], false, "{after:#}");
    assert!(
        after["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("set on all:")),
        "{after:#}"
    );
}

/// A daemon that starts on a policy file that does not compile keeps its
/// predecessor's pinned policy, and says so as after a failed reload: in
/// `status` (its first line, the `source` and `reload` lines) and in the
/// metrics (`loopwarden_last_reload_success` 0), so a restart or a
/// rollout that looks healthy is not taken for the file in force. The
/// control: the same daemon on the good file says none of it. Before, the
/// first line said only "reported by the daemon", and the metric was
/// absent.
#[test]
fn a_start_on_a_file_that_does_not_compile_is_a_failed_reload() {
    let ns = Netns::new();
    let install = Install::new();
    let good = policy(&ns, "enforce", "");
    let metric = |daemon: &Daemon| {
        let path = daemon.install().run_dir().join("metrics.sock");
        loopwarden_tests::wait_for(
            "the metrics socket",
            std::time::Duration::from_secs(10),
            || path.exists().then_some(()),
        );
        loopwarden_tests::metrics::scrape_unix(&path).get("loopwarden_last_reload_success", &[])
    };
    let mut first = Daemon::start_in(&install, &good, &[]);
    let (code, text, _) = status(&install);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
    assert_eq!(metric(&first), None);
    first.kill9();

    let second = Daemon::start_in(&install, &format!("bogus = 1\n{good}"), &[]);
    second.allow_error("bogus");
    second.wait_stderr("stays in force", 1);
    let (code, text, json) = status(&install);
    assert_eq!(code, Some(0), "{text}");
    let first_line = text.lines().next().unwrap_or_default();
    assert!(
        first_line.contains("whose last reading of its policy file FAILED"),
        "{text}"
    );
    // The policy in force is the pinned one, compiled again from the
    // config the first daemon kept.
    assert!(text.contains("refused at start"), "{text}");
    assert!(text.contains("FAILED at"), "{text}");
    let reported = &json["daemon"]["reported"];
    assert!(
        reported["kept_config"]
            .as_str()
            .is_some_and(|k| k.contains(" as kept in ")),
        "{json:#}"
    );
    assert_eq!(reported["last_reload"]["ok"], false, "{json:#}");
    assert!(
        reported["last_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("bogus")),
        "{json:#}"
    );
    assert_eq!(metric(&second), Some(0.0));
}

/// A policy scoped by `[protect] netns` to a namespace that does not exist
/// (a first start takes it, with a warning) judges no connect: `status`
/// says so, not enforcing (exit 3), where the build before said "active,
/// refusing" (exit 0); the relay it names connects meanwhile. Positive
/// control: once a reload names the test's namespace, `status` says active
/// (exit 0), scoped to one namespace, and the relay is refused.
#[test]
fn a_policy_scoped_to_no_existing_namespace_is_not_enforcing() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let install = Install::new();
    let text = policy(&ns, "enforce", "");
    let typo = text.replace(
        &format!("\"{}\"", ns.path()),
        &format!("\"{}-typo\"", ns.path()),
    );
    assert_ne!(typo, text);
    let relay = || ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    let daemon = Daemon::start_in(&install, &typo, &[]);
    let (code, out, json) = status(&install);
    assert_eq!(code, Some(3), "{out}");
    let first_line = out.lines().next().unwrap_or_default();
    assert!(first_line.contains("none of which exists"), "{out}");
    assert_eq!(json["policy"]["netns_in_scope"], 0, "{json:#}");
    let (ok, stderr) = relay();
    assert!(ok, "a policy scoped to no namespace refused: {stderr}");

    std::fs::write(install.config_path(), &text).expect("rewrite");
    let installs = daemon.stderr_text().matches(" installed: ").count();
    daemon.signal(libc::SIGHUP);
    daemon.wait_installed(installs + 1);
    let (code, out, json) = status(&install);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("scoped to 1 network namespaces"), "{out}");
    assert_eq!(json["policy"]["netns_in_scope"], 1, "{json:#}");
    let (ok, stderr) = relay();
    assert!(!ok, "the relay got through the mended policy: {stderr}");

    // Whether the links are attached cannot be seen without a cgroup v2
    // root to ask: unknown (exit 4), not "not enforcing" (exit 3).
    let elsewhere = TempDir::new("status-no-cgroup-root");
    let out = run(Command::new(loopwarden_bin())
        .arg("status")
        .args(install.dir_args())
        .arg("--host-cgroup-root")
        .arg(elsewhere.path()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("cannot be seen"), "{text}");
}

/// Pins no daemon reads, asked about with the run directory of a daemon
/// that pins elsewhere: `status` says their policy is enforced unreported
/// and names the command that reports on the daemon's own, where the build
/// before said "reported by the daemon". Positive control: the daemon's
/// own pins are said reported by it.
#[test]
fn pins_the_run_directorys_daemon_does_not_use_are_said_unreported() {
    let ns = Netns::new();
    let text = policy(&ns, "audit", "");
    let left = Install::new();
    let mut first = Daemon::start_in(&left, &text, &[]);
    assert!(first.stop(), "the first daemon exited badly");
    let install = Install::new();
    let _daemon = Daemon::start_in(&install, &text, &[]);
    let (code, said) = status_of(&install.run_dir(), left.pin_dir());
    assert_eq!(code, Some(0), "{said}");
    let first_line = said.lines().next().unwrap_or_default();
    assert!(
        first_line.contains("no daemon reports for these pins")
            && first_line.contains(&format!("pins in {}", install.pin_dir().display())),
        "{said}"
    );
    let (code, own, _) = status(&install);
    assert_eq!(code, Some(0), "{own}");
    assert!(own.contains("reported by the daemon"), "{own}");
    // A daemon of another run directory reporting for those pins again:
    // named, not "no daemon".
    let again = Daemon::start_in(&left, &text, &[]);
    let (code, said) = status_of(&install.run_dir(), left.pin_dir());
    assert_eq!(code, Some(0), "{said}");
    let pid = again.pid().expect("running");
    assert!(
        said.lines()
            .next()
            .is_some_and(|l| l.contains(&format!("reported by the daemon of pid {pid}"))),
        "{said}"
    );
}
