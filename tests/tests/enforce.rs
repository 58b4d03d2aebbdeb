//! Enforce mode, end to end: real programs in the real kernel, real relays
//! (socat, sshd port forwarding, bore, a renamed python) against a real HTTP
//! service in the test's own network namespace.

use std::process::Command;

use loopwarden_tests::{
    Daemon, Netns, NetnsAlias, PROTECTED, Sshd, TempDir, UNPROTECTED, nginx_proxy, policy, rule,
    run_ok,
};
use serde_json::Value;

fn is_deny_by(exe_name: &'static str) -> impl Fn(&Value) -> bool {
    move |e: &Value| e["verdict"] == "deny" && e["exe_name"] == exe_name
}

#[test]
fn socat_relay_is_refused_while_curl_and_unprotected_ports_work() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let daemon = Daemon::start(&policy(&ns, "enforce", ""));

    // A shell-driven client is the local user: allowed.
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
    assert_eq!(ns.curl(&format!("http://[::1]:{PROTECTED}/")), Ok(200));

    // A relay into the protected port: its connect() is refused, so the
    // remote side of the relay gets nothing.
    let _relay = ns.socat_relay(9001, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    assert!(ns.curl("http://127.0.0.1:9001/").is_err());
    let ev = daemon.wait_event("deny by socat", is_deny_by("socat"));
    assert_eq!(ev["rule"], "catalog:socat");
    assert_eq!(ev["dst"], format!("127.0.0.1:{PROTECTED}"));
    assert_eq!(ev["uid"], 0);
    assert_eq!(ev["user"], "root");
    assert_eq!(ev["exe"], "/usr/bin/socat");

    // The same relay program reaches a port the policy does not protect.
    let _relay2 = ns.socat_relay(9002, &format!("TCP:127.0.0.1:{UNPROTECTED}"), None);
    assert_eq!(ns.curl("http://127.0.0.1:9002/"), Ok(200));

    // The caller sees ECONNREFUSED, as if nothing listened.
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(!ok);
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

#[test]
fn every_loopback_form_is_protected() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    // (socat address, destination as reported): the server listens on [::],
    // so each of these reaches it.
    let forms = |port: u16| {
        [
            ("TCP4:127.0.0.2", "127.0.0.2"),
            ("TCP6:[::1]", "[::1]"),
            ("TCP6:[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]"),
            // The unspecified addresses: the kernel connects them to loopback.
            ("TCP4:0.0.0.0", "0.0.0.0"),
            ("TCP6:[::]", "[::]"),
            ("TCP6:[::ffff:0.0.0.0]", "[::ffff:0.0.0.0]"),
        ]
        .map(|(target, dst)| (format!("{target}:{port}"), format!("{dst}:{port}")))
    };
    for (target, _) in forms(PROTECTED) {
        let (ok, stderr) = ns.socat_connect(&target);
        assert!(
            ok,
            "{target} does not reach the service even without loopwarden: {stderr}"
        );
    }
    let daemon = Daemon::start(&policy(&ns, "enforce", ""));
    for (target, dst) in forms(PROTECTED) {
        let (ok, stderr) = ns.socat_connect(&target);
        assert!(!ok, "{target} was not refused");
        assert!(stderr.contains("Connection refused"), "{target}: {stderr}");
        daemon.wait_event(&format!("deny to {dst}"), |e| {
            e["verdict"] == "deny" && e["dst"] == dst.as_str()
        });
    }
    // And the same forms are fine for the unprotected port.
    for (target, _) in forms(UNPROTECTED) {
        let (ok, stderr) = ns.socat_connect(&target);
        assert!(ok, "{target}: {stderr}");
    }
}

#[test]
fn a_relay_started_before_the_daemon_is_refused() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let _relay = ns.socat_relay(9001, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    assert_eq!(
        ns.curl("http://127.0.0.1:9001/"),
        Ok(200),
        "relay works before the daemon"
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", ""));
    assert!(ns.curl("http://127.0.0.1:9001/").is_err());
    daemon.wait_event("deny by the early socat", is_deny_by("socat"));
}

#[test]
fn a_process_that_renamed_itself_is_matched_by_its_executable() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let rule = rule("python-relay", "deny", "exe", "/usr/bin/python3");
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    // Renames itself to "curl" (an allowed client) before connecting.
    let script = format!(
        r#"
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"curl", 0, 0, 0)
s = socket.socket()
try:
    s.connect(("127.0.0.1", {PROTECTED}))
    print("connected")
except ConnectionRefusedError:
    print("refused")
"#
    );
    let out = run_ok(ns.cmd("/usr/bin/python3").args(["-c", &script]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    let ev = daemon.wait_event("deny of the renamed python", |e| {
        e["verdict"] == "deny" && e["rule"] == "python-relay"
    });
    assert_eq!(ev["comm"], "curl");
    assert!(
        ev["exe_name"]
            .as_str()
            .is_some_and(|n| n.starts_with("python3")),
        "{ev}"
    );
    // The real curl is still fine.
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
}

#[test]
fn eperm_can_be_chosen_instead_of_econnrefused() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    assert!(ns.socat_connect(&target).0, "reached without the daemon");
    let _daemon = Daemon::start(&format!(
        "deny_errno = \"EPERM\"\n{}",
        policy(&ns, "enforce", "")
    ));
    let (ok, stderr) = ns.socat_connect(&target);
    assert!(!ok);
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
}

#[test]
fn ssh_local_forward_is_refused() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let sshd = Sshd::start(&ns, "127.0.0.1", 2222);
    let mut args = sshd.client_args();
    args.extend([
        "-N".to_owned(),
        "-L".to_owned(),
        format!("9003:127.0.0.1:{PROTECTED}"),
        "root@127.0.0.1".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The forward works before the daemon starts; then the same forward's
    // next request (sshd connects anew for each) is refused.
    let mut forward = ns.spawn("ssh", &args);
    ns.wait_listening(9003);
    assert_eq!(ns.curl("http://127.0.0.1:9003/"), Ok(200), "the forward");
    let daemon = Daemon::start(&policy(&ns, "enforce", ""));
    forward.assert_running();
    assert!(ns.curl("http://127.0.0.1:9003/").is_err());
    let ev = daemon.wait_event("deny by sshd", |e| {
        e["verdict"] == "deny" && e["rule"] == "catalog:sshd"
    });
    assert_eq!(ev["dst"], format!("127.0.0.1:{PROTECTED}"));
}

#[test]
fn bore_tunnel_is_refused() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let _server = ns.spawn(
        "bore",
        &["server", "--min-port", "9100", "--max-port", "9199"],
    );
    ns.wait_listening(7835);
    let daemon = Daemon::start(&policy(&ns, "enforce", ""));
    let _client = ns.spawn(
        "bore",
        &[
            "local",
            &PROTECTED.to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
            "--port",
            "9150",
        ],
    );
    ns.wait_listening(9150);
    // The tunnel's public side is up, but its connect to the service is refused.
    let result = ns.curl("http://127.0.0.1:9150/");
    assert!(result.is_err(), "curl through bore got {result:?}");
    let ev = daemon.wait_event("deny by bore", is_deny_by("bore"));
    assert_eq!(ev["rule"], "catalog:bore");
    // The same tunnel to an unprotected port works.
    let _client2 = ns.spawn(
        "bore",
        &[
            "local",
            &UNPROTECTED.to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
            "--port",
            "9151",
        ],
    );
    ns.wait_listening(9151);
    assert_eq!(ns.curl("http://127.0.0.1:9151/"), Ok(200));
}

#[test]
fn connections_outside_the_policy_namespace_are_untouched() {
    let ns = Netns::new();
    let other = Netns::new();
    let _servers = other.http_servers();
    let _daemon = Daemon::start(&policy(&ns, "enforce", ""));
    let (ok, stderr) = other.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(
        ok,
        "a relay outside the policy's namespace was judged: {stderr}"
    );
}

/// The name a scoped policy knows its namespace by goes (`ip netns del`,
/// while processes in it keep the namespace alive): the re-resolution
/// each second keeps the namespace in the scope, so enforcement there
/// does not lapse. `check-config --as-daemon` (the unit's `ExecReload`)
/// keeps it too, as the daemon's reload would, where checking against no
/// daemon's scope refuses the file (no namespace it names exists).
#[test]
fn a_namespace_whose_name_goes_stays_protected() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let alias = NetnsAlias::new(&ns);
    let text = policy(&ns, "enforce", "")
        .replace(&format!("\"{}\"", ns.path()), &format!("\"{}\"", alias.0));
    assert!(text.contains(&alias.0), "{text}");
    let daemon = Daemon::start(&text);
    let _relay = ns.socat_relay(9001, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    let _open = ns.socat_relay(9002, &format!("TCP:127.0.0.1:{UNPROTECTED}"), None);
    assert!(ns.curl("http://127.0.0.1:9001/").is_err());
    daemon.wait_event("deny by socat", is_deny_by("socat"));

    let gone = format!("network namespace {} cannot be resolved", alias.0);
    drop(alias);
    daemon.wait_stderr(&gone, 1);
    // Refused still, in the namespace the name named; the direct client
    // and the relay to an unprotected port go through.
    assert!(ns.curl("http://127.0.0.1:9001/").is_err());
    let refusals = |d: &Daemon| d.events().iter().filter(|e| is_deny_by("socat")(e)).count();
    let before = refusals(&daemon);
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(!ok, "the relay got through once the name went");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while refusals(&daemon) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no deny line for the relay's connect after the name went:\n{}",
            daemon.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
    assert_eq!(ns.curl("http://127.0.0.1:9002/"), Ok(200));
    assert!(
        daemon.stderr_text().contains("stays in the scope"),
        "{}",
        daemon.stderr_text()
    );

    let install = daemon.install();
    let elsewhere = TempDir::new("no-daemon-run");
    let check = |run_dir: &std::path::Path| {
        loopwarden_tests::check_config(&[
            "--as-daemon".as_ref(),
            "--run-dir".as_ref(),
            run_dir.as_os_str(),
            "--pin-dir".as_ref(),
            install.pin_dir().as_os_str(),
            install.config_path().as_os_str(),
        ])
    };
    let (code, text) = check(&install.run_dir());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("stays in the scope"), "{text}");
    let (code, text) = check(elsewhere.path());
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("none of the network namespaces [protect] netns names exists"),
        "{text}"
    );
}

/// A policy scoped to up to four namespaces carries them in its settings
/// (compared inline); one scoped to more has the programs look them up in
/// `LW_NETNS`. Both judge in every namespace they name, and in no other.
#[test]
fn a_policy_scoped_to_many_namespaces_judges_in_each_and_in_no_other() {
    let named: Vec<Netns> = (0..5).map(|_| Netns::new()).collect();
    let other = Netns::new();
    let every: Vec<&Netns> = named.iter().chain([&other]).collect();
    let _servers: Vec<_> = every.iter().map(|ns| ns.http_servers()).collect();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    for ns in &every {
        let (ok, stderr) = ns.socat_connect(&target);
        assert!(
            ok,
            "a relay in {} failed before the daemon: {stderr}",
            ns.name()
        );
    }
    // Four fill the settings' inline cookies (in cookie order, which is not
    // the order of creation: every one is tried); five go to the lookup.
    for count in [4, 5] {
        let paths: Vec<String> = named[..count]
            .iter()
            .map(|ns| format!("\"{}\"", ns.path()))
            .collect();
        let _daemon = Daemon::start(&format!(
            "mode = \"enforce\"\ncatalog = true\n[protect]\nports = [{PROTECTED}]\nnetns = [{}]\n",
            paths.join(", ")
        ));
        for (i, ns) in every.iter().enumerate() {
            let (ok, stderr) = ns.socat_connect(&target);
            if i < count {
                assert!(
                    !ok,
                    "scoped to {count}: a relay in {} was not refused",
                    ns.name()
                );
                assert!(stderr.contains("Connection refused"), "{stderr}");
            } else {
                assert!(
                    ok,
                    "scoped to {count}: a relay in {} was judged: {stderr}",
                    ns.name()
                );
            }
        }
    }
}

#[test]
fn a_reverse_proxy_is_reported_by_the_catalog_and_refused_by_a_user_rule() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("nginx");
    let _nginx = nginx_proxy(&ns, &dir, "127.0.0.1", 9004);

    // The catalog only audits reverse proxies: the request goes through and is reported.
    {
        let daemon = Daemon::start(&policy(&ns, "enforce", ""));
        assert_eq!(ns.curl("http://127.0.0.1:9004/"), Ok(200));
        let ev = daemon.wait_event("audit of nginx", |e| {
            e["verdict"] == "audit" && e["rule"] == "catalog:nginx"
        });
        assert_eq!(ev["exe"], "/usr/sbin/nginx");
    }

    // A user rule comes before the catalog: first match wins.
    let rule = rule("no-proxies", "deny", "exe_name", "nginx");
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    assert_eq!(ns.curl("http://127.0.0.1:9004/"), Ok(502));
    daemon.wait_event("deny of nginx by the user rule", |e| {
        e["verdict"] == "deny" && e["rule"] == "no-proxies"
    });
}

/// A non-loopback address of the (test) host in `ns`: 192.0.2.1 on one
/// end of a veth pair inside it.
fn host_address(ns: &Netns) {
    for args in [
        vec!["link", "add", "lwa", "type", "veth", "peer", "name", "lwb"],
        vec!["addr", "add", "192.0.2.1/32", "dev", "lwa"],
        vec!["link", "set", "lwa", "up"],
        vec!["link", "set", "lwb", "up"],
    ] {
        run_ok(Command::new("ip").args(["-n", ns.name()]).args(&args));
    }
}

/// Under relay deny, a client of the host's own protected address is no
/// relay for having talked to that address: the connection's two ends are
/// this host (it was `connected` and `received` evidence, so a client's
/// second request within the window was refused as relayed).
#[test]
fn a_direct_client_of_a_host_address_is_not_a_relay() {
    let ns = Netns::new();
    host_address(&ns);
    let _servers = ns.http_servers();
    let config = format!(
        "mode = \"enforce\"\n[protect]\nports = [{PROTECTED}]\nnetns = [\"{}\"]\n\
         host_addresses = true\n[relay]\naction = \"deny\"\n",
        ns.path()
    );
    let relayed = format!("TCP:192.0.2.1:{PROTECTED}");
    assert!(ns.socat_connect(&relayed).0, "reached without the daemon");
    let daemon = Daemon::start(&config);
    // Three requests in a row, each reading its answer, well within the
    // 2 s window.
    let client = format!(
        "import socket\n\
         for i in range(3):\n\
         \x20   s = socket.create_connection(('192.0.2.1', {PROTECTED}), timeout=5)\n\
         \x20   s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         \x20   assert s.recv(64).startswith(b'HTTP/'), i\n\
         \x20   s.close()\n\
         print('served')\n"
    );
    let out = loopwarden_tests::run(ns.cmd("python3").args(["-c", &client]));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("served"),
        "a direct client was refused: {out:?}"
    );
    // The relay verdict is on: a relay to the same address is refused.
    let (ok, stderr) = ns.socat_connect(&relayed);
    assert!(!ok, "a relay reached the host's own address: {stderr}");
    drop(daemon);
}

#[test]
fn the_hosts_own_addresses_are_protected_when_asked() {
    let ns = Netns::new();
    host_address(&ns);
    let _servers = ns.http_servers();
    let target = format!("TCP:192.0.2.1:{PROTECTED}");
    let (ok, stderr) = ns.socat_connect(&target);
    assert!(ok, "reachable before the daemon: {stderr}");

    let config = format!(
        "mode = \"enforce\"\n[protect]\nports = [{PROTECTED}]\nnetns = [\"{}\"]\nhost_addresses = true\n",
        ns.path()
    );
    let daemon = Daemon::start(&config);
    let (ok, stderr) = ns.socat_connect(&target);
    assert!(!ok, "a relay reached the host's own address");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    daemon.wait_event("deny to the host address", |e| {
        e["verdict"] == "deny" && e["dst"] == format!("192.0.2.1:{PROTECTED}").as_str()
    });
    assert_eq!(ns.curl(&format!("http://192.0.2.1:{PROTECTED}/")), Ok(200));
}
