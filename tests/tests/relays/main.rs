//! Relay detection, end to end: a "local" namespace with the protected
//! service and a "remote" one standing for the network, joined by a veth
//! pair ([`Topology`]). Real relays (socat, nginx, `ssh -L`, `ssh -R`, bore,
//! a python forwarder) carry a remote client's request to the service; their
//! connect() is made by a network-facing process and is reported (audit) or
//! refused (`[relay] action = "deny"`) by the relay verdict, with the remote
//! party named in `via`. Direct local clients are never flagged.
//!
//! Every relay is first shown to work without loopwarden
//! (`catalogued::relays_work_without_loopwarden` and each test's first phase), so a
//! refusal is loopwarden's doing. Relays are started after the daemon in
//! each phase, so the kernel sees their listen, accept and traffic.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use loopwarden_tests::{
    Daemon, Fields, LOCAL_ADDR, LOCAL_ADDR6, Netns, PROTECTED, Policy, Proc, REMOTE_ADDR,
    REMOTE_ADDR6, SYSTEM_PYTHON, Sshd, TempDir, Topology, exe_name, greeter, nginx_proxy, rule,
    run, run_ok, spawn_forwarder, wait_for, write_script,
};
use serde_json::Value;

/// Python: `ask(port)` asks the service on 127.0.0.1:`port` for `/` and
/// returns `status N` or `error ERRNO` (what the relay tests' clients
/// print).
macro_rules! ask_py {
    () => {
        r#"
import os, socket, sys
def ask(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return "status " + s.recv(64).split()[1].decode()
    except OSError as e:
        return "error %d" % e.errno
"#
    };
}

mod catalogued;
mod direct;
mod inherited;
mod kinds;
mod lineage;
mod reload;
mod tunnels;
mod untracked;

use kinds::{ALL, Kind, Via};

const SOCAT_PORT: u16 = 9001;
const NGINX_PORT: u16 = 9002;
const SSH_L_PORT: u16 = 9003;
const SSH_R_PORT: u16 = 9004;
const BORE_PORT: u16 = 9005;
const FORWARDER_PORT: u16 = 9006;
const INETD_PORT: u16 = 9007;
const HAPROXY_PORT: u16 = 9008;
const CADDY_PORT: u16 = 9009;
const SOCAT6_PORT: u16 = 9011;
const SSHD_PORT: u16 = 2222;
/// bore's control port (fixed in bore).
const BORE_CONTROL: u16 = 7835;
/// The default `[relay] window_ms`.
const WINDOW_MS: u64 = 2000;

/// The lines `cmd` printed; it must succeed.
fn printed(cmd: &mut std::process::Command) -> Vec<String> {
    let out = run_ok(cmd);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The protected service as relays reach it.
fn service() -> String {
    format!("127.0.0.1:{PROTECTED}")
}

/// The bore binary: `bore` on `PATH`, else `~/.cargo/bin/bore`.
fn bore_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("bore"))
            .find(|p| p.is_file())
    });
    let in_cargo = || {
        std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cargo/bin/bore"))
            .filter(|p| p.is_file())
    };
    on_path
        .or_else(in_cargo)
        .expect("bore is not installed (cargo install bore-cli)")
}

/// Splits a socket address string (`1.2.3.4:5`, `[::1]:5`) into host and port.
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

/// `ev` is `accepted` evidence naming a client on the remote side.
fn assert_accepted_from_the_remote_side(ev: &Value) {
    assert_eq!(ev["via_how"], "accepted", "{ev:#}");
    let via = ev["via"].as_str().unwrap_or_default();
    assert_eq!(
        split_addr(via).map(|(host, _)| host),
        Some(REMOTE_ADDR),
        "{ev:#}"
    );
}

/// Checks `via`, `via_how` and `via_ago_ms` of a relay's record.
fn assert_via(ev: &Value, want: &Via) {
    let via = ev["via"]
        .as_str()
        .unwrap_or_else(|| panic!("no via: {ev:#}"));
    let (host, port) = split_addr(via).unwrap_or_else(|| panic!("via is no address: {ev:#}"));
    assert_eq!(host, want.host, "{ev:#}");
    if let Some(p) = want.port {
        assert_eq!(port, p, "{ev:#}");
    }
    let how = ev["via_how"].as_str().unwrap_or_default();
    assert!(
        want.how.contains(&how),
        "via_how {how:?}, wanted one of {:?}: {ev:#}",
        want.how
    );
    match how {
        "listening" => assert!(ev.get("via_ago_ms").is_none(), "{ev:#}"),
        "accepted" | "stdio" => assert!(ev["via_ago_ms"].is_u64(), "{ev:#}"),
        _ => assert!(
            ev["via_ago_ms"].as_u64().is_some_and(|ms| ms <= WINDOW_MS),
            "evidence older than the window: {ev:#}"
        ),
    }
}

/// A record that says the relay verdict (or a refusal) applied.
fn is_flagged(e: &Value) -> bool {
    e["rule"] == "relay"
        || e["verdict"] == "deny"
        || e["verdict"] == "would-deny"
        || e.get("via").is_some()
}

/// Enforce mode with the catalog off and `relay = "deny"`: relays are
/// refused for what they do alone.
fn relay_deny(ns: &Netns) -> Policy {
    Policy::new(ns, "enforce").catalog(false).relay("deny")
}

/// The next refusal the daemon reports (`what` names it in a timeout),
/// which must be the relay verdict's.
fn relay_refusal(daemon: &Daemon, what: &str) -> Value {
    let ev = daemon.wait_event(what, |e| e["verdict"] == "deny");
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    ev
}

/// The relay works end to end without loopwarden.
fn assert_relays(topo: &Topology, kind: Kind) {
    let relay = kind.start(topo);
    assert_eq!(
        relay.fetch(topo),
        Ok(200),
        "{kind:?} does not relay even without loopwarden"
    );
}

/// All phases for one relay: works without loopwarden; reported by the
/// relay verdict in audit mode (catalog off, `[relay]` defaults); refused
/// by it in enforce mode; refused with the catalog on too.
fn relay_is_reported_and_refused(kind: Kind) {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    assert_relays(&topo, kind);
    let want = kind.expected_via();

    {
        let daemon = Daemon::start(&Policy::new(&topo.local, "audit").catalog(false).text());
        let relay = kind.start(&topo);
        assert_eq!(relay.fetch(&topo), Ok(200), "{kind:?} in audit mode");
        let ev = daemon.wait_event(&format!("relay audit of {kind:?}"), |e| {
            e["rule"] == "relay" && relay.is_its(e)
        });
        assert_eq!(ev["verdict"], "audit", "{ev:#}");
        assert_eq!(ev["dst"], service(), "{ev:#}");
        assert_via(&ev, &want);
    }

    {
        let policy = relay_deny(&topo.local);
        let daemon = Daemon::start(&policy.text());
        let relay = kind.start(&topo);
        let result = relay.fetch(&topo);
        assert_ne!(result, Ok(200), "{kind:?} was not refused");
        let ev = daemon.wait_event(&format!("relay deny of {kind:?}"), |e| {
            e["verdict"] == "deny" && relay.is_its(e)
        });
        assert_eq!(ev["rule"], "relay", "{ev:#}");
        assert_eq!(ev["dst"], service(), "{ev:#}");
        assert_via(&ev, &want);
    }

    let policy = Policy::new(&topo.local, "enforce")
        .catalog(true)
        .relay("deny");
    let daemon = Daemon::start(&policy.text());
    let relay = kind.start(&topo);
    let result = relay.fetch(&topo);
    assert_ne!(result, Ok(200), "{kind:?} was not refused");
    let ev = daemon.wait_event(&format!("deny of {kind:?}"), |e| {
        e["verdict"] == "deny" && relay.is_its(e)
    });
    assert_eq!(ev["rule"], kind.refused_by(), "{kind:?}: {ev:#}");
}
