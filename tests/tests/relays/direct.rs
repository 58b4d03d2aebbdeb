//! Direct local clients (after a DNS lookup too) are never flagged in
//! either mode, and an allow rule exempts a relay from the relay verdict.

use super::*;

/// A DNS server in remote on port 53 of the link address: answers any
/// query with one A record.
pub(crate) fn dns_responder(topo: &Topology) -> Proc {
    let script = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{REMOTE_ADDR}", 53))
while True:
    q, peer = s.recvfrom(512)
    end = 12
    while q[end]: end += q[end] + 1
    question = q[12:end + 5]
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton("{REMOTE_ADDR}")
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, peer)
"#
    );
    let p = topo.remote.spawn(SYSTEM_PYTHON, &["-c", &script]);
    topo.remote.wait_udp_bound(53);
    p
}

/// Asks the DNS responder (over a connected UDP socket as glibc does, or
/// with sendto), reads the answer, then connects to the service at once.
const DNS_THEN_CONNECT: &str = r#"
import socket, struct, sys
server, port, connected = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "connected"
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x0arelay-test\x07example\x00\x00\x01\x00\x01"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
if connected:
    u.connect((server, 53)); u.send(q); a = u.recv(512)
else:
    u.sendto(q, (server, 53)); a, _ = u.recvfrom(512)
ident, _, _, answers = struct.unpack(">HHHH", a[:8])
s = socket.create_connection(("127.0.0.1", port), timeout=3)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
status = s.recv(64).split()[1].decode()
print(f"id={ident:#x} answers={answers} addr={socket.inet_ntoa(a[-4:])} status={status}")
"#;

/// Runs every direct client in local against the service (and `ssh`
/// against `sshd`) and asserts each succeeded.
pub(crate) fn direct_clients(topo: &Topology, sshd: &Sshd) {
    let ns = &topo.local;
    let url = format!("http://127.0.0.1:{PROTECTED}/");

    assert_eq!(ns.curl(&url), Ok(200), "curl");

    if Path::new("/usr/bin/wget").exists() {
        run_ok(
            ns.cmd("/usr/bin/wget")
                .args(["-q", "-O", "/dev/null", &url]),
        );
    } else {
        let out = run_ok(ns.cmd(SYSTEM_PYTHON).args([
            "-c",
            &format!("import socket; socket.create_connection(('127.0.0.1', {PROTECTED}))"),
        ]));
        assert!(out.status.success());
    }

    let out = run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        &format!("import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).status)"),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200", "urllib");

    let out = run_ok(ns.cmd("/bin/bash").args([
        "-c",
        &format!(
            r#"for i in 1 2 3; do
                exec 3<>/dev/tcp/127.0.0.1/{PROTECTED}
                printf 'GET / HTTP/1.0\r\n\r\n' >&3
                read -r line <&3
                echo "$line"
                exec 3<&-
            done"#
        ),
    ]));
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        lines.lines().filter(|l| l.contains(" 200 ")).count(),
        3,
        "bash /dev/tcp: {lines}"
    );

    let mut args = sshd.client_args();
    args.extend([
        "root@127.0.0.1".to_owned(),
        "echo".to_owned(),
        "ssh-ok".to_owned(),
    ]);
    let out = run_ok(ns.cmd("ssh").args(&args));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ssh-ok");

    for how in ["connected", "sendto"] {
        let out = run(ns.cmd(SYSTEM_PYTHON).args([
            "-c",
            DNS_THEN_CONNECT,
            REMOTE_ADDR,
            &PROTECTED.to_string(),
            how,
        ]));
        let f = Fields::of(&out);
        assert_eq!(&f["id"], "0x1234", "DNS ({how}) {f:?}");
        assert_eq!(&f["answers"], "1", "DNS ({how}) {f:?}");
        assert_eq!(&f["addr"], REMOTE_ADDR, "DNS ({how}) {f:?}");
        assert_eq!(&f["status"], "200", "DNS then connect ({how}) {f:?}");
    }
}

/// Direct clients under `[relay] action = "deny"` in `mode`: all succeed,
/// none is flagged. A socat relay afterwards is the marker: once its record
/// is in, any earlier client's would be too.
fn direct_clients_are_never_flagged(mode: &str) {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let _dns = dns_responder(&topo);
    let policy = Policy::new(&topo.local, mode)
        .catalog(false)
        .ports(&[PROTECTED, SSHD_PORT])
        .relay("deny");
    let daemon = Daemon::start(&policy.text());
    let sshd = Sshd::start(&topo.local, "127.0.0.1", SSHD_PORT);
    direct_clients(&topo, &sshd);

    let marker = Kind::Socat.start(&topo);
    let _ = marker.fetch(&topo);
    daemon.wait_event("the marker relay", |e| {
        e["rule"] == "relay" && marker.is_its(e)
    });
    // Refusals have a ring of their own: give the other one a moment too.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flagged: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| is_flagged(e) && !marker.is_its(e))
        .collect();
    assert!(
        flagged.is_empty(),
        "direct clients were flagged ({mode}): {flagged:#?}"
    );
}

#[test]
fn direct_clients_are_never_flagged_in_enforce_mode() {
    direct_clients_are_never_flagged("enforce");
}

#[test]
fn direct_clients_are_never_flagged_in_audit_mode() {
    direct_clients_are_never_flagged("audit");
}

#[test]
fn an_allow_rule_exempts_a_relay_from_the_relay_verdict() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let python = std::fs::canonicalize(SYSTEM_PYTHON).expect("resolving the system python");
    let python = python.to_str().expect("utf-8 path");
    let policy = Policy::new(&topo.local, "enforce")
        .catalog(false)
        .relay("deny")
        .extra(&rule("bridge", "allow", "exe", python));
    let daemon = Daemon::start(&policy.text());
    let relay = Kind::Forwarder.start(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200), "the exempted forwarder");

    // Not exempted: refused by the same policy.
    let marker = Kind::Socat.start(&topo);
    assert_ne!(marker.fetch(&topo), Ok(200));
    daemon.wait_event("the marker relay", |e| {
        e["verdict"] == "deny" && marker.is_its(e)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let refused: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| relay.is_its(e) && (e["verdict"] == "deny" || e["rule"] == "relay"))
        .collect();
    assert!(refused.is_empty(), "the exempted forwarder: {refused:#?}");
}
