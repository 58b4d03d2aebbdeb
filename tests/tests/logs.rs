//! Logs where operators look: under systemd (`$JOURNAL_STREAM` naming the
//! stream) every line starts with its syslog priority, refusals and lost
//! reports at warning, audits at notice; without it nothing is prefixed.
//! JSON lines, audit and diagnostic alike, carry `"v":1` and the host name.

use std::{process::Command, sync::Arc};

use loopwarden_tests::{
    Daemon, Install, Netns, PROTECTED, loopwarden_bin, policy, rule, run, wait_for,
};
use serde_json::Value;

/// Enforce mode in `ns`: python3 refused, socat audited (before the
/// catalog refuses it), allowed connects reported too.
fn config(ns: &Netns) -> String {
    let rules = format!(
        "{}{}",
        rule("py", "deny", "exe", "/usr/bin/python3"),
        rule("socat-audited", "audit", "exe_name", "socat")
    );
    policy(ns, "enforce", &rules).replacen(
        "catalog = true",
        "catalog = true\nlog_allowed = true",
        1,
    )
}

/// A connect from python3 to the protected port: `connected` or `refused`.
fn python_connects(ns: &Netns) -> String {
    let script = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {PROTECTED}))\n    \
         print('connected')\nexcept ConnectionRefusedError:\n    print('refused')\n"
    );
    let out = run(ns.cmd("/usr/bin/python3").args(["-c", &script]));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One refused connect from python3, one audited from socat, one allowed
/// from curl. The refused one reaches the service without the daemon
/// (each caller checks that before starting it).
fn one_of_each(ns: &Netns) {
    assert_eq!(python_connects(ns), "refused");
    assert!(ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}")).0);
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
}

/// Freezes the daemon while python3 makes 8,000 refused connects (more
/// than the ring buffers hold: about 4,960, refusals spilling from their
/// own into the other), then lets it go.
fn overflow(ns: &Netns, daemon: &Daemon) {
    daemon.signal(libc::SIGSTOP);
    let script = format!(
        "import socket\nfor _ in range(8000):\n    s = socket.socket()\n    try:\n        \
         s.connect(('127.0.0.1', {PROTECTED}))\n    except ConnectionRefusedError:\n        \
         pass\n    s.close()\n"
    );
    let out = run(ns.cmd("/usr/bin/python3").args(["-c", &script]));
    daemon.signal(libc::SIGCONT);
    assert!(out.status.success(), "{out:?}");
    daemon.wait_stderr("events lost", 1);
}

/// The line of `lines` holding `text`.
fn line_with(lines: &str, text: &str) -> String {
    lines
        .lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text:?} in:\n{lines}"))
        .to_owned()
}

/// An audit line after its priority prefix, checked for version and host.
fn audit_json(line: &str, prefix: &str) -> Value {
    let json = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix}"));
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(v["v"], 1, "{line}");
    assert_eq!(v["host"], hostname(), "{line}");
    v
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("reading the host name")
        .trim()
        .to_owned()
}

#[test]
fn under_the_journal_refusals_and_losses_are_warnings_and_audits_notices() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let install = Install::new();
    std::fs::write(install.config_path(), config(&ns)).expect("writing the config");
    // As systemd does with StandardOutput=journal: stdout and stderr are
    // one stream, and $JOURNAL_STREAM names it (here the harness's stderr
    // pipe, which both go to).
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "exec 1>&2; JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\" \"$@\"",
    ])
    .arg(loopwarden_bin())
    .args(install.run_args())
    .env("LOOPWARDEN_LOG", "info");
    assert_eq!(python_connects(&ns), "connected", "without the daemon");
    let daemon = Daemon::start_cmd(&Arc::clone(&install), cmd);
    daemon.allow_error("events lost");
    assert!(line_with(&daemon.stderr_text(), "ready:").starts_with("<6>"));

    one_of_each(&ns);
    let text = |verdict: &str| format!("\"verdict\":\"{verdict}\"");
    let lines = wait_for(
        "a deny, an audit and an allow line",
        std::time::Duration::from_secs(10),
        || {
            let all = daemon.stderr_text();
            ["deny", "audit", "allow"]
                .iter()
                .all(|v| all.contains(&text(v)))
                .then_some(all)
        },
    );
    let deny = audit_json(&line_with(&lines, &text("deny")), "<4>");
    assert_eq!(deny["rule"], "py");
    let audit = audit_json(&line_with(&lines, &text("audit")), "<5>");
    assert_eq!(audit["rule"], "socat-audited");
    let allow = audit_json(&line_with(&lines, &text("allow")), "<6>");
    assert_eq!(allow["exe_name"], "curl");

    overflow(&ns, &daemon);
    let loss = line_with(&daemon.stderr_text(), "events lost");
    assert!(loss.starts_with("<4>"), "{loss}");
    assert!(loss.contains(" WARN "), "{loss}");
    // Every line has its priority.
    for line in daemon.stderr_text().lines() {
        let priority = line.strip_prefix('<').and_then(|l| l.get(..2));
        assert!(
            matches!(priority, Some("3>" | "4>" | "5>" | "6>" | "7>")),
            "a line without a priority: {line}"
        );
    }
}

#[test]
fn without_the_journal_nothing_is_prefixed_and_json_diagnostics_are_versioned() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    // A JOURNAL_STREAM that names another file (an inherited variable) is
    // not the journal's: nothing is prefixed either.
    let install = Install::new();
    std::fs::write(install.config_path(), config(&ns)).expect("writing the config");
    let mut cmd = Command::new(loopwarden_bin());
    cmd.args(["run", "--config"])
        .arg(install.config_path())
        .args(["--log-format", "json", "--repeat-interval", "0"])
        .args(install.dir_args())
        .env("LOOPWARDEN_LOG", "info")
        .env("JOURNAL_STREAM", "1:1");
    assert_eq!(python_connects(&ns), "connected", "without the daemon");
    let daemon = Daemon::start_cmd(&install, cmd);
    daemon.allow_error("events lost");

    one_of_each(&ns);
    for verdict in ["deny", "audit", "allow"] {
        let line = daemon.wait_event(verdict, |e| e["verdict"] == verdict);
        assert_eq!(line["v"], 1);
        assert_eq!(line["host"], hostname());
    }
    overflow(&ns, &daemon);
    for line in daemon.stdout_lines() {
        assert!(line.starts_with("{\"v\":1,"), "{line}");
    }
    // Diagnostics follow --log-format: JSON, versioned, with the fields.
    let stderr = daemon.stderr_text();
    for line in stderr.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(v["v"], 1, "{line}");
        assert_eq!(v["host"], hostname(), "{line}");
        assert!(v["time"].is_string() && v["target"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
    }
    let ready: Value = serde_json::from_str(&line_with(&stderr, "ready:")).expect("JSON");
    assert_eq!(ready["level"], "info");
    let loss: Value = serde_json::from_str(&line_with(&stderr, "events lost")).expect("JSON");
    assert_eq!(loss["level"], "warn");
    assert!(loss["lost_deny"].as_u64().is_some_and(|n| n > 0), "{loss}");
    assert_eq!(loss["lost_allow"], 0, "{loss}");
}
