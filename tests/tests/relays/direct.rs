//! Direct local clients (after a DNS lookup too, over UDP or TCP) are
//! never flagged in either mode, nor is a proxy that listens only on
//! loopback, nor a program an inetd-style server there executes for a
//! local client; a process whose network evidence is older than the
//! relay window is direct again, one that reads right after another from
//! the same server has evidence of its own, a later listen leaves the
//! accepted remote party in `via`, and an allow rule exempts a relay from
//! the relay verdict.

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

    // wget is installed by `cargo xtask setup --tests`: never swapped for
    // another client.
    run_ok(
        ns.cmd("/usr/bin/wget")
            .args(["-q", "-O", "/dev/null", &url]),
    );

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
    let policy = relay_deny(&topo.local).extra(&rule("bridge", "allow", "exe", python));
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

/// Hears from the remote server, then asks the service at once and again
/// after `WAIT` seconds, printing what each request got.
const HEAR_THEN_ASK_TWICE: &str = concat!(
    ask_py!(),
    r#"
import time
remote, remote_port, port, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
r = socket.create_connection((remote, remote_port), timeout=3)
assert r.recv(16) == b"hello"
r.close()
print(ask(port), flush=True)
time.sleep(wait)
print(ask(port), flush=True)
"#
);

/// On one CPU: hears from the remote greeter on `argv[1]:argv[2]` (the
/// first two bytes), hands the connection to a child it forked before
/// (so the child started with no evidence), and at once lets the child
/// read the rest; the child then asks the service on 127.0.0.1:`argv[3]`
/// and prints what it got.
const HEAR_THEN_HAND_OVER: &str = concat!(
    ask_py!(),
    r#"
os.sched_setaffinity(0, {0})
remote, remote_port, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mine, theirs = socket.socketpair()
child = os.fork()
if child == 0:
    try:
        _, fds, _, _ = socket.recv_fds(theirs, 1, 1)
        r = socket.socket(fileno=fds[0])
        theirs.recv(1)
        assert r.recv(16) == b"llo"
        print(ask(port), flush=True)
    finally:
        os._exit(0)
r = socket.create_connection((remote, remote_port), timeout=3)
socket.send_fds(mine, [b"f"], [r.fileno()])
assert r.recv(2) == b"he"
mine.send(b"g")
os.waitpid(child, 0)
"#
);

/// Two processes that read from the same remote server on one CPU within
/// one clock tick each get their evidence: the per-CPU note that spares a
/// repeated write is the reader's own. A process hears from the greeter
/// and at once hands the connection to a child forked before (no evidence
/// of its own), which reads the rest and asks the service: refused as a
/// relay (`relay = "deny"`, catalog off) with `via_how` `received`.
/// Without the daemon it is served. A build whose note ignores the reader
/// lets the child through (whenever both reads fall in one tick, nearly
/// always).
#[test]
fn a_process_that_reads_right_after_another_from_the_same_server_has_its_own_evidence() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let _greeter = greeter(&topo, HANDED_OVER_PORT);
    let asked = || {
        printed(topo.local.cmd(SYSTEM_PYTHON).args([
            "-c",
            HEAR_THEN_HAND_OVER,
            REMOTE_ADDR,
            &HANDED_OVER_PORT.to_string(),
            &PROTECTED.to_string(),
        ]))
    };
    assert_eq!(asked(), ["status 200"]);

    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    assert_eq!(asked(), ["error 111"]);
    let ev = relay_refusal(&daemon, "the child's refusal");
    assert_eq!(ev["via_how"], "received", "{ev:#}");
    assert_eq!(
        ev["via"],
        format!("{REMOTE_ADDR}:{HANDED_OVER_PORT}"),
        "{ev:#}"
    );
}

const HANDED_OVER_PORT: u16 = 9020;

/// A one-shot forwarder on `argv[1]`: accepts one client on port
/// `argv[2]`, then listens on port `argv[3]` too, then asks the service on
/// 127.0.0.1:`argv[4]` for the client before reading anything from it (as
/// socat does), and answers the client 200 if the service answered, 502
/// if not.
const ACCEPT_LISTEN_ASK: &str = concat!(
    ask_py!(),
    r#"
addr, first, second, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
listener = socket.create_server((addr, first))
client, _ = listener.accept()
another = socket.create_server((addr, second))
status = "200 OK" if ask(port) == "status 200" else "502 Bad Gateway"
client.sendall(("HTTP/1.0 %s\r\nContent-Length: 0\r\n\r\n" % status).encode())
client.close()
"#
);

const ACCEPTING_PORT: u16 = 9021;
const LATER_LISTENING_PORT: u16 = 9022;

/// A later listen does not overwrite `accepted` evidence, so a relay's
/// record names the remote party behind its connect, not its own address:
/// a forwarder on the link address accepts a remote client, then listens
/// on a second port, then connects to the service for the client. Under
/// relay deny it is refused, `via_how` `accepted` and `via` the remote
/// client (whose request then gets 502). Without the daemon the request
/// gets 200.
#[test]
fn a_later_listen_leaves_the_accepted_remote_party_in_via() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let fetched = || {
        let _forwarder = topo.local.spawn(
            SYSTEM_PYTHON,
            &[
                "-c",
                ACCEPT_LISTEN_ASK,
                LOCAL_ADDR,
                &ACCEPTING_PORT.to_string(),
                &LATER_LISTENING_PORT.to_string(),
                &PROTECTED.to_string(),
            ],
        );
        topo.local.wait_listening(ACCEPTING_PORT);
        topo.remote
            .curl(&format!("http://{LOCAL_ADDR}:{ACCEPTING_PORT}/"))
    };
    assert_eq!(fetched(), Ok(200));

    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    assert_eq!(fetched(), Ok(502));
    let ev = relay_refusal(&daemon, "the forwarder's refusal");
    assert_via(
        &ev,
        &Via {
            host: REMOTE_ADDR,
            port: None,
            how: &["accepted"],
        },
    );
}

const AGED_SERVER_PORT: u16 = 9013;
/// The relay window of the aged-evidence test, well under its wait.
const AGED_WINDOW_MS: u64 = 300;

/// What [`HEAR_THEN_ASK_TWICE`] printed in local, having heard from the
/// greeter on `remote_port` and waited `wait` seconds between its asks.
fn hear_then_ask_twice(topo: &Topology, remote_port: u16, wait: &str) -> Vec<String> {
    printed(topo.local.cmd(SYSTEM_PYTHON).args([
        "-c",
        HEAR_THEN_ASK_TWICE,
        REMOTE_ADDR,
        &remote_port.to_string(),
        &PROTECTED.to_string(),
        wait,
    ]))
}

/// The relay verdict looks back only as far as `[relay] window_ms`: a
/// process that heard from a remote server and then connects to the
/// service at once is refused as a relay (`relay = "deny"`), and the same
/// process connecting again after the window has passed, with nothing
/// heard since, is let through as a direct client. Without loopwarden
/// both requests reach the service.
#[test]
fn evidence_older_than_the_window_no_longer_makes_a_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let _greeter = greeter(&topo, AGED_SERVER_PORT);
    let asked = || hear_then_ask_twice(&topo, AGED_SERVER_PORT, "1.0");
    assert_eq!(asked(), ["status 200", "status 200"]);

    let policy = relay_deny(&topo.local).window_ms(AGED_WINDOW_MS);
    let daemon = Daemon::start(&policy.text());
    assert_eq!(asked(), ["error 111", "status 200"]);
    let ev = relay_refusal(&daemon, "the refusal within the window");
    assert_eq!(
        ev["via"],
        format!("{REMOTE_ADDR}:{AGED_SERVER_PORT}"),
        "{ev:#}"
    );
}

/// Hears from the remote server, then asks the service `TRIES` times,
/// `EVERY` seconds apart, then once more after `REST` seconds, printing
/// what each request got: a tunnel client that tries a refused connect
/// again and again (localtunnel, every second), hearing nothing meanwhile.
const HEAR_THEN_RETRY: &str = concat!(
    ask_py!(),
    r#"
import time
remote, remote_port, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tries, every, rest = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
r = socket.create_connection((remote, remote_port), timeout=3)
assert r.recv(16) == b"hello"
r.close()
for _ in range(tries):
    print(ask(port), flush=True)
    time.sleep(every)
time.sleep(rest)
print(ask(port), flush=True)
"#
);

const RETRY_SERVER_PORT: u16 = 9037;
/// The relay window of the retry test: its tries come more often, and go
/// on for longer (eight, 0.3 s apart); its rest is longer.
const RETRY_WINDOW_MS: u64 = 1500;

/// A relay that tries again within the window of its last refusal is
/// refused again: a process that heard from a remote server and then asks
/// the service every 0.3 s, hearing nothing more, is refused at each of
/// eight tries (2.4 s, past the 1.5 s window from what it heard), and let
/// through once it has kept away for a whole window. Without loopwarden
/// every request reaches the service. Fails against a build that times the
/// evidence from when it was heard only: the sixth try went through.
#[test]
fn a_relay_that_retries_within_the_window_stays_refused() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let _greeter = greeter(&topo, RETRY_SERVER_PORT);
    let asked = || {
        printed(topo.local.cmd(SYSTEM_PYTHON).args([
            "-c",
            HEAR_THEN_RETRY,
            REMOTE_ADDR,
            &RETRY_SERVER_PORT.to_string(),
            &PROTECTED.to_string(),
            "8",
            "0.3",
            "2.5",
        ]))
    };
    assert_eq!(asked(), vec!["status 200"; 9]);

    let policy = relay_deny(&topo.local).window_ms(RETRY_WINDOW_MS);
    let daemon = Daemon::start(&policy.text());
    let mut want = vec!["error 111"; 8];
    want.push("status 200");
    assert_eq!(asked(), want);
    let ev = relay_refusal(&daemon, "a retry's refusal");
    assert_eq!(
        ev["via"],
        format!("{REMOTE_ADDR}:{RETRY_SERVER_PORT}"),
        "{ev:#}"
    );
}

const LOOPBACK_PROXY_PORT: u16 = 9014;
const NETWORK_PROXY_PORT: u16 = 9015;

/// Listening on loopback is not facing the network: a local proxy bound to
/// 127.0.0.1 (serving local clients only) connects to the service for a
/// local client, with the catalog off and `relay = "deny"`, unflagged.
/// The positive control is the same forwarder script listening on the
/// namespace's link address: refused as a relay when a client from remote
/// comes through it.
#[test]
fn a_proxy_listening_only_on_loopback_is_not_a_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("proxies");
    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    let (local_proxy, _) = spawn_forwarder(&topo.local, &dir, "127.0.0.1", LOOPBACK_PROXY_PORT);
    let (network_proxy, _) = spawn_forwarder(&topo.local, &dir, LOCAL_ADDR, NETWORK_PROXY_PORT);

    let through = |ns: &Netns, host: &str, port: u16| ns.curl(&format!("http://{host}:{port}/"));
    assert_eq!(
        through(&topo.local, "127.0.0.1", LOOPBACK_PROXY_PORT),
        Ok(200),
        "a local client through the loopback proxy"
    );
    assert_ne!(
        through(&topo.remote, LOCAL_ADDR, NETWORK_PROXY_PORT),
        Ok(200),
        "a remote client through the proxy on the link address"
    );
    let ev = daemon.wait_event("the network proxy's refusal", |e| {
        e["verdict"] == "deny" && e["pid"] == network_proxy.pid()
    });
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    // Refusals have a ring of their own: give the other one a moment too.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flagged: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| is_flagged(e) && e["pid"] == local_proxy.pid())
        .collect();
    assert!(flagged.is_empty(), "the loopback proxy: {flagged:#?}");
}

const LOOPBACK_INETD_PORT: u16 = 9018;
const NETWORK_INETD_PORT: u16 = 9019;

/// A connection from a local client as a program's standard input and
/// output is not `stdio` evidence: an inetd-style server on 127.0.0.1
/// executes a program per connection that carries a local client's request
/// to the service (catalog off, `relay = "deny"`), unflagged, and so does
/// the same server on the namespace's link address for a client of the
/// namespace itself (both ends of its connection one address). The
/// positive control is that server's program for a remote client: refused
/// as a relay, `via_how` `stdio`.
#[test]
fn a_program_executed_with_a_local_clients_connection_is_not_a_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    let _local = kinds::spawn_inetd(&topo.local, "127.0.0.1", LOOPBACK_INETD_PORT);
    let _network = kinds::spawn_inetd(&topo.local, LOCAL_ADDR, NETWORK_INETD_PORT);

    let through = |ns: &Netns, host: &str, port: u16| ns.curl(&format!("http://{host}:{port}/"));
    assert_eq!(
        through(&topo.local, "127.0.0.1", LOOPBACK_INETD_PORT),
        Ok(200),
        "a local client through the inetd-style server on loopback"
    );
    assert_ne!(
        through(&topo.remote, LOCAL_ADDR, NETWORK_INETD_PORT),
        Ok(200),
        "a remote client through the inetd-style server on the link address"
    );
    // A client on the host itself through the link address: its
    // connection's two ends are that one address (the kernel routes it
    // over loopback), not the network.
    assert_eq!(
        through(&topo.local, LOCAL_ADDR, NETWORK_INETD_PORT),
        Ok(200),
        "a local client through the inetd-style server on the link address"
    );
    let ev = relay_refusal(&daemon, "the executed program's refusal");
    assert_eq!(ev["via_how"], "stdio", "{ev:#}");
    // Refusals have a ring of their own: give the other one a moment too.
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Only the remote client's program is flagged: one flagged for the
    // local client would name 127.0.0.1 in `via`.
    let remote = format!("{REMOTE_ADDR}:");
    let flagged: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| is_flagged(e) && !e["via"].as_str().is_some_and(|v| v.starts_with(&remote)))
        .collect();
    assert!(
        flagged.is_empty(),
        "the loopback server's program: {flagged:#?}"
    );
}

/// DNS over TCP (what a resolver falls back to for a truncated answer) is
/// not evidence, as over UDP: neither the connect to port 53 nor the answer
/// read from it makes the process a relay (`relay = "deny"`). The positive
/// control: the same exchange with a server on another port, then the same
/// connect to the service, refused.
#[test]
fn a_dns_exchange_over_tcp_is_not_evidence() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let _dns = greeter(&topo, 53);
    let _other = greeter(&topo, AGED_SERVER_PORT);
    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    assert_eq!(
        hear_then_ask_twice(&topo, 53, "0"),
        ["status 200", "status 200"],
        "after a DNS exchange over TCP"
    );
    assert_eq!(
        hear_then_ask_twice(&topo, AGED_SERVER_PORT, "0"),
        ["error 111", "error 111"],
        "after the same exchange on another port"
    );
    let ev = daemon.wait_event("the control's refusal", |e| e["verdict"] == "deny");
    assert_eq!(
        ev["via"],
        format!("{REMOTE_ADDR}:{AGED_SERVER_PORT}"),
        "{ev:#}"
    );
}

/// A relay that never listens and has no listening evidence:
/// `relay.py ADDR PORT TARGET` forks a child that listens, hands the
/// listener over a Unix socket (`SCM_RIGHTS`) and exits. Per connection
/// the relay reads the request, asks the service on 127.0.0.1:TARGET with
/// it and answers what came back, or 502.
const HANDED_OVER_LISTENER_RELAY: &str = r#"
import os, socket, sys
mine, theirs = socket.socketpair()
pid = os.fork()
if pid == 0:
    l = socket.create_server((sys.argv[1], int(sys.argv[2])))
    socket.send_fds(theirs, [b"l"], [l.fileno()])
    os._exit(0)
_, fds, _, _ = socket.recv_fds(mine, 1, 1)
os.waitpid(pid, 0)
l = socket.socket(fileno=fds[0])
while True:
    c, _ = l.accept()
    request = c.recv(65536)
    try:
        u = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
        u.sendall(request)
        while d := u.recv(65536): c.sendall(d)
    except OSError:
        c.sendall(b"HTTP/1.0 502 Bad Gateway\r\n\r\n")
    c.close()
"#;

const HANDED_OVER_LISTENER_PORT: u16 = 9024;

/// A client's source port is the client's to choose: a relay handed its
/// listener by a process that exited (so it has no `listening` or
/// `accepted` evidence) and reads
/// each request before it connects is refused as a relay (`via_how`
/// `received`) whether the remote client connects from an ordinary port
/// or from port 53, whose data would be a DNS server's answer were the
/// connection the relay's own. Without the daemon both requests are
/// served. Fails against a build that takes any data from port 53 for a
/// DNS answer (the second request is served).
#[test]
fn a_client_connecting_from_the_dns_port_is_still_a_relays_remote_party() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("handed-over-listener");
    let script = write_script(&dir, "relay.py", HANDED_OVER_LISTENER_RELAY);
    let port = HANDED_OVER_LISTENER_PORT.to_string();
    let start_relay = || {
        let relay = topo.local.spawn(
            SYSTEM_PYTHON,
            &[&script, LOCAL_ADDR, &port, &PROTECTED.to_string()],
        );
        topo.local.wait_listening(HANDED_OVER_LISTENER_PORT);
        relay
    };
    let url = format!("http://{LOCAL_ADDR}:{HANDED_OVER_LISTENER_PORT}/");
    let fetch = |options: &[&str]| topo.remote.curl_with(options, &url);
    let relay = start_relay();
    assert_eq!(fetch(&[]), Ok(200));
    // (mDNS's port here, DNS's below: a connection's four-tuple is not
    // reused while one side's socket waits in TIME_WAIT.)
    assert_eq!(fetch(&["--local-port", "5353"]), Ok(200));
    drop(relay);

    // Started after the daemon, so that its listener is not credited to
    // the relay by the daemon's seeding from /proc.
    let window_ms = 300;
    let daemon = Daemon::start(&relay_deny(&topo.local).window_ms(window_ms).text());
    let _relay = start_relay();
    assert_eq!(fetch(&[]), Ok(502));
    let ev = relay_refusal(&daemon, "the refusal for an ordinary port");
    assert_eq!(ev["via_how"], "received", "{ev:#}");
    // The relay's evidence from that request ages past the window first.
    std::thread::sleep(Duration::from_millis(3 * window_ms));
    assert_eq!(fetch(&["--local-port", "53"]), Ok(502));
    let from_53 = format!("{REMOTE_ADDR}:53");
    let ev = daemon.wait_event("the refusal for port 53", |e| {
        e["verdict"] == "deny" && e["via"] == from_53.as_str()
    });
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    assert_eq!(ev["via_how"], "received", "{ev:#}");
}
