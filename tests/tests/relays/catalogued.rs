//! Each catalogued relay works without loopwarden, is reported in audit
//! mode and refused under `[relay] action = "deny"`; an IPv6 peer is shown
//! bracketed; bore is known under its release-asset names.

use super::*;
use crate::{
    direct::{direct_clients, dns_responder},
    kinds::{bore, socat6},
};

#[test]
fn relays_work_without_loopwarden() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    // The link itself.
    assert_eq!(
        topo.remote
            .curl(&format!("http://{LOCAL_ADDR}:{PROTECTED}/")),
        Ok(200),
        "the service itself from remote"
    );
    for kind in ALL {
        assert_relays(&topo, kind);
    }
    let relay = socat6(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200), "socat over IPv6");
    drop(relay);
    let dir = TempDir::new("bore-asset");
    for name in ASSET_NAMES {
        let copy = bore_copy(&dir, name);
        let relay = bore(&topo, &copy);
        assert_eq!(relay.fetch(&topo), Ok(200), "{name}");
    }
    // The direct clients work, and the DNS answer is what they expect.
    let _dns = dns_responder(&topo);
    let sshd = Sshd::start(&topo.local, "127.0.0.1", SSHD_PORT);
    direct_clients(&topo, &sshd);
}

#[test]
fn socat_is_a_relay() {
    relay_is_reported_and_refused(Kind::Socat);
}

#[test]
fn nginx_is_a_relay() {
    relay_is_reported_and_refused(Kind::Nginx);
}

#[test]
fn sshd_forwarding_for_ssh_dash_l_is_a_relay() {
    relay_is_reported_and_refused(Kind::SshL);
}

#[test]
fn the_ssh_client_forwarding_for_ssh_dash_r_is_a_relay() {
    relay_is_reported_and_refused(Kind::SshR);
}

#[test]
fn bore_is_a_relay() {
    relay_is_reported_and_refused(Kind::Bore);
}

#[test]
fn a_python_forwarder_with_no_catalogued_name_is_a_relay() {
    relay_is_reported_and_refused(Kind::Forwarder);
}

#[test]
fn an_inetd_style_program_executed_with_the_connection_as_stdio_is_a_relay() {
    relay_is_reported_and_refused(Kind::Inetd);
}

#[test]
fn haproxy_is_a_relay() {
    relay_is_reported_and_refused(Kind::HaProxy);
}

#[test]
fn caddy_is_a_relay() {
    relay_is_reported_and_refused(Kind::Caddy);
}

/// socat relaying from the link's IPv6 address: audited by the relay
/// verdict with its remote party bracketed in `via`, then refused under
/// relay deny (served without loopwarden and in audit mode).
#[test]
fn an_ipv6_peer_is_shown_bracketed() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    assert_eq!(socat6(&topo).fetch(&topo), Ok(200), "without loopwarden");
    let daemon = Daemon::start(&Policy::new(&topo.local, "audit").catalog(false).text());
    let relay = socat6(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200));
    let ev = daemon.wait_event("relay audit of socat over IPv6", |e| {
        e["rule"] == "relay" && relay.is_its(e)
    });
    assert_eq!(ev["verdict"], "audit", "{ev:#}");
    let via = ev["via"].as_str().unwrap_or_default();
    assert!(via.starts_with(&format!("[{REMOTE_ADDR6}]:")), "{ev:#}");
    assert_via(
        &ev,
        &Via {
            host: REMOTE_ADDR6,
            port: None,
            how: &["accepted"],
        },
    );
    drop(daemon);
    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    assert_ne!(
        relay.fetch(&topo),
        Ok(200),
        "socat over IPv6 under relay deny"
    );
    let ev = relay_refusal(&daemon, "the refusal of socat over IPv6");
    assert!(relay.is_its(&ev), "{ev:#}");
    assert!(
        ev["via"]
            .as_str()
            .is_some_and(|via| via.starts_with(&format!("[{REMOTE_ADDR6}]:"))),
        "{ev:#}"
    );
}

#[test]
fn audit_mode_with_relay_deny_reports_would_deny() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let policy = Policy::new(&topo.local, "audit")
        .catalog(false)
        .relay("deny");
    let daemon = Daemon::start(&policy.text());
    let relay = Kind::Socat.start(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200));
    let ev = daemon.wait_event("would-deny of socat", |e| {
        e["rule"] == "relay" && relay.is_its(e)
    });
    assert_eq!(ev["verdict"], "would-deny", "{ev:#}");
    assert_via(&ev, &Kind::Socat.expected_via());
}

/// Release-asset names of bore, as downloaded or as a wrapper installs it.
const ASSET_NAMES: [&str; 2] = ["bore-v0.5.2-x86_64-unknown-linux-musl", ".bore-wrapped"];

/// A copy of bore named `name` in `dir`.
fn bore_copy(dir: &TempDir, name: &str) -> PathBuf {
    let copy = dir.path().join(name);
    if !copy.exists() {
        std::fs::copy(bore_bin(), &copy).expect("copying bore");
    }
    copy
}

#[test]
fn bore_under_a_release_asset_name_is_catalogued() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("bore-asset");
    for name in ASSET_NAMES {
        let copy = bore_copy(&dir, name);
        {
            let relay = bore(&topo, &copy);
            assert_eq!(relay.fetch(&topo), Ok(200), "{name} without loopwarden");
        }
        // Relay detection off: only the catalog can refuse it.
        let policy = Policy::new(&topo.local, "enforce")
            .catalog(true)
            .relay("allow");
        let daemon = Daemon::start(&policy.text());
        let relay = bore(&topo, &copy);
        let result = relay.fetch(&topo);
        assert_ne!(result, Ok(200), "{name} was not refused");
        let ev = daemon.wait_event(&format!("deny of {name}"), |e| {
            e["verdict"] == "deny" && relay.is_its(e)
        });
        assert_eq!(ev["rule"], "catalog:bore", "{ev:#}");
        assert_eq!(ev["exe_name"], exe_name(&copy), "{ev:#}");
    }
}
