//! The settings' filters (which executables and names some rule names) only
//! ever skip a lookup that would have found nothing: every named client is
//! still judged by its rule, and a client no rule names passes.

use std::path::Path;

use loopwarden_tests::{
    Daemon, Netns, PROTECTED, SYSTEM_PYTHON, TempDir, policy, python_copy, rule, run,
};

fn bash_connects(ns: &Netns) -> bool {
    let out = run(ns
        .cmd("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{PROTECTED}")]));
    out.status.success()
}

#[test]
fn named_clients_are_judged_and_unnamed_ones_pass() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let rules = format!(
        "{}{}",
        rule("by-exe", "deny", "exe", "/usr/bin/python3"),
        rule("by-name", "deny", "exe_name", "curl"),
    );
    let python = || {
        run(ns.cmd("/usr/bin/python3").args([
            "-c",
            &format!("import socket; socket.create_connection(('127.0.0.1', {PROTECTED}))"),
        ]))
    };
    let url = format!("http://127.0.0.1:{PROTECTED}/");
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    // Each of the three connects below reaches the service without the
    // daemon.
    assert!(python().status.success(), "python3 without the daemon");
    assert_eq!(ns.curl(&url), Ok(200), "curl without the daemon");
    assert!(ns.socat_connect(&target).0, "socat without the daemon");
    let daemon = Daemon::start(&policy(&ns, "enforce", &rules));
    // By executable identity.
    assert!(!python().status.success(), "python3 got through");
    // By name: one of ours, one of the catalog's.
    assert!(ns.curl(&url).is_err());
    assert!(!ns.socat_connect(&target).0);
    // Named by no rule.
    assert!(bash_connects(&ns), "bash was refused");
    for (rule, exe_name) in [
        ("by-exe", None),
        ("by-name", Some("curl")),
        ("catalog:socat", Some("socat")),
    ] {
        daemon.wait_event(&format!("a refusal by {rule}"), |e| {
            e["verdict"] == "deny"
                && e["rule"] == rule
                && exe_name.is_none_or(|n| e["exe_name"] == n)
        });
    }
    assert!(daemon.events().iter().all(|e| e["comm"] != "bash"));
}

/// A file name too long for the dentry's inline buffer (40 bytes on recent
/// kernels, 32 on older ones) is read where the kernel keeps it, a short
/// one from the dentry itself: a catalogued tunnel under either release
/// name is refused.
#[test]
fn long_and_short_file_names_are_both_read() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("names");
    let short = python_copy(&dir, "cloudflared-linux-amd64");
    let long = python_copy(
        &dir,
        "cloudflared-linux-amd64-a-release-asset-name-beyond-forty-bytes",
    );
    let connects = |exe: &Path| {
        run(ns.cmd(&exe.to_string_lossy()).args([
            "-c",
            &format!("import socket; socket.create_connection(('127.0.0.1', {PROTECTED}))"),
        ]))
        .status
        .success()
    };
    // Without loopwarden both connect.
    assert!(connects(&short) && connects(&long));
    let daemon = Daemon::start(&policy(&ns, "enforce", ""));
    assert!(!connects(&short), "the short name got through");
    assert!(!connects(&long), "the long name got through");
    assert!(connects(Path::new(SYSTEM_PYTHON)), "python3 was refused");
    for (what, long_name) in [("short", false), ("long", true)] {
        daemon.wait_event(&format!("the {what} name's refusal"), |e| {
            let name = e["exe_name"].as_str().unwrap_or_default();
            e["verdict"] == "deny"
                && e["rule"] == "catalog:cloudflared"
                && (name.len() > "cloudflared-linux-amd64".len()) == long_name
        });
    }
}
