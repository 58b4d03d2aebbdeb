//! Relays known by what they run and where they come from: an interpreted
//! script a rule names, a catalogued tunnel's children.

use super::*;
use crate::kinds::forwarder;

/// Item 4: an interpreter's script is known from exec, shown in the
/// relay's events, and a rule can name it.
#[test]
fn a_script_rule_names_an_interpreted_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    // Relay detection off: only a rule can refuse the forwarder. A script
    // rule naming another file does not match it (the positive control).
    let other = rule("scripted", "deny", "script", "/nonexistent/other.py");
    let daemon = Daemon::start(
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("audit")
            .extra(&other)
            .text(),
    );
    let relay = forwarder(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200));
    let ev = daemon.wait_event("the forwarder's relay audit", |e| {
        e["rule"] == "relay" && relay.is_its(e)
    });
    let script = ev["script"].as_str().unwrap_or_default().to_owned();
    assert!(script.ends_with("/forwarder.py"), "{ev:#}");
    // The next daemon adopts the pinned maps, and with them what the
    // kernel learnt at the forwarder's exec.
    let install = daemon.install().clone();
    drop(daemon);

    let named = rule("scripted", "deny", "script", &script);
    let daemon = Daemon::start_in(
        &install,
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("allow")
            .extra(&named)
            .text(),
        &[],
    );
    assert!(
        relay.fetch(&topo).is_err(),
        "a forwarder named by its script got through"
    );
    let ev = daemon.wait_event("the script rule's refusal", |e| {
        e["verdict"] == "deny" && relay.is_its(e)
    });
    assert_eq!(ev["rule"], "scripted", "{ev:#}");
    assert_eq!(ev["script"], script.as_str(), "{ev:#}");
}

/// A catalog entry marked `children` (VS Code's `code-tunnel`) also
/// matches what the tunnel runs: the kernel's lineage passes through fork
/// and exec. A plain shell running the same client is the control.
#[test]
fn a_catalogued_tunnels_children_are_matched_through_lineage() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("lineage");
    let tunnel = dir.path().join("code-tunnel");
    std::fs::copy("/bin/bash", &tunnel).expect("copying bash");
    let tunnel = tunnel.to_str().expect("utf-8 temp dir").to_owned();
    let daemon = Daemon::start(&Policy::new(&ns, "enforce").relay("allow").text());
    let client = format!(
        "curl -sS -o /dev/null --max-time 5 -w %{{http_code}} http://127.0.0.1:{PROTECTED}/"
    );
    let plain = run(ns.cmd("/bin/bash").args(["-c", &client]));
    assert!(
        plain.status.success(),
        "a shell's curl was refused: {plain:?}"
    );
    let child = run(ns.cmd(&tunnel).args(["-c", &client]));
    assert!(
        !child.status.success(),
        "the tunnel's child curl got through"
    );
    let ev = daemon.wait_event("the child's refusal", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "curl"
    });
    assert_eq!(ev["rule"], "catalog:code-tunnel", "{ev:#}");
}
