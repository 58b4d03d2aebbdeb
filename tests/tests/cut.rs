//! What was let in is cut: connections a relay opened while they were allowed
//! (audit mode, no daemon yet, or a rule that allowed them) are destroyed
//! when an enforce-mode policy that denies them is installed, and each is
//! reported as a `cut`; connections of allowed clients stay up.
//!
//! The service is a keep-alive echo server (the harness's HTTP server closes
//! after each response), and the clients are line-driven python processes
//! that keep one connection open and report each round trip.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::Duration,
};

use loopwarden_tests::{
    AS_NOBODY, Daemon, LOCAL_ADDR, Netns, NetnsAlias, PROTECTED, Policy, Proc, REMOTE_ADDR,
    SYSTEM_PYTHON, TempDir, Topology, greeter, policy, rule, run, spawn_forwarder, talk::Talker,
    wait_for,
};
use serde_json::Value;

/// Port the socat relay listens on (not protected).
const RELAY: u16 = 9001;

/// Echoes whatever each connection sends, keeping connections open; on
/// `[::]` so IPv4 loopback reaches it too.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", int(sys.argv[1])))
srv.listen(16)
def serve(c):
    with c:
        while True:
            data = c.recv(4096)
            if not data:
                break
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Connects once to `argv[1]:argv[2]`, then for every line on stdin sends
/// it and prints what came back: `echo <text>`, `closed` (EOF), or
/// `error <errno>`. Given `argv[3]:argv[4]`, first hears a greeting from
/// that server, as a tunnel client hears from its server before it
/// connects to the local service for a remote user.
const LINE_CLIENT: &str = r#"
import socket, sys
if len(sys.argv) > 3:
    r = socket.create_connection((sys.argv[3], int(sys.argv[4])), timeout=3)
    assert r.recv(16) == b"hello"
    r.close()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        data = s.recv(4096)
        print("echo " + data.decode().strip() if data else "closed", flush=True)
    except OSError as e:
        print("error " + str(e.errno), flush=True)
"#;

/// Runs the script given as its first argument ([`LINE_CLIENT`], with the
/// rest as its arguments) in a thread of its own that has first unshared its
/// descriptor table (`unshare(CLONE_FILES)`) and named itself `ownfiles`:
/// its connection is in that thread's table only, not its process's.
const OWN_TABLE: &str = r#"
import ctypes, sys, threading
def own(client):
    libc = ctypes.CDLL(None)
    assert libc.unshare(0x400) == 0
    libc.prctl(15, b"ownfiles", 0, 0, 0)
    exec(client, {})
client = sys.argv.pop(1)
t = threading.Thread(target=own, args=(client,))
t.start()
t.join()
"#;

/// A python client holding one TCP connection in the namespace.
struct LineClient {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    what: String,
}

impl LineClient {
    fn connect(ns: &Netns, host: &str, port: u16) -> Self {
        Self::start(ns, host, port, None)
    }

    /// A client that first hears from the server `remote` (see
    /// [`LINE_CLIENT`]).
    fn start(ns: &Netns, host: &str, port: u16, remote: Option<(&str, u16)>) -> Self {
        Self::run(ns, &[LINE_CLIENT], host, port, remote)
    }

    /// `scripts`, a client that takes [`LINE_CLIENT`]'s arguments after
    /// them and speaks as it does: [`LINE_CLIENT`] alone, or a script that
    /// runs it (its first argument).
    fn run(
        ns: &Netns,
        scripts: &[&str],
        host: &str,
        port: u16,
        remote: Option<(&str, u16)>,
    ) -> Self {
        let what = format!("python client of {host}:{port}");
        let (port, remote_port) = (port.to_string(), remote.map(|(_, p)| p.to_string()));
        let mut args = vec!["-c"];
        args.extend(scripts);
        args.extend([host, &port]);
        if let (Some((remote, _)), Some(remote_port)) = (remote, &remote_port) {
            args.extend([remote, remote_port.as_str()]);
        }
        let mut child = ns
            .cmd("python3")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {what} failed: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = Self {
            child,
            stdin,
            lines,
            what,
        };
        assert_eq!(client.next_line(), "connected", "{}", client.what);
        client
    }

    fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| format!("(no answer from the {})", self.what))
    }

    /// Sends `text` over the connection; what came back (see [`LINE_CLIENT`]).
    fn round_trip(&mut self, text: &str) -> String {
        if writeln!(self.stdin, "{text}").is_err() {
            return format!("(the {} exited)", self.what);
        }
        self.next_line()
    }

    fn assert_works(&mut self, text: &str) {
        assert_eq!(
            self.round_trip(text),
            format!("echo {text}"),
            "{}",
            self.what
        );
    }

    /// The connection is gone: the client, still running, sees EOF or an
    /// error on it.
    fn assert_cut(&mut self) {
        let answer = self.round_trip("after-the-cut");
        assert!(
            answer == "closed" || answer.starts_with("error "),
            "the {}'s connection still works: {answer}",
            self.what
        );
    }
}

impl Drop for LineClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo server on `PROTECTED` and a socat relay from `RELAY` to it.
fn services(ns: &Netns) -> (Proc, Proc) {
    let server = ns.spawn("python3", &["-c", ECHO_SERVER, &PROTECTED.to_string()]);
    ns.wait_listening(PROTECTED);
    let relay = ns.socat_relay(RELAY, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    (server, relay)
}

/// Established connections to the protected port in the namespace, as `ss`
/// lists them with their processes.
fn connections_to_protected(ns: &Netns) -> Vec<String> {
    let out = run(ns.cmd("ss").args([
        "-Htnp",
        "state",
        "established",
        "dport",
        "=",
        &format!(":{PROTECTED}"),
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn is_cut_of_socat(e: &Value) -> bool {
    e["verdict"] == "cut" && e["exe_name"] == "socat"
}

/// The record of the relay's connection that was cut, checked field by field.
fn assert_socat_cut(daemon: &Daemon) -> Value {
    let cut = daemon.wait_event("cut of the relay's connection", is_cut_of_socat);
    assert_eq!(cut["rule"], "catalog:socat", "{cut}");
    assert_eq!(cut["dst"], format!("127.0.0.1:{PROTECTED}"), "{cut}");
    assert_eq!(cut["dst_port"], PROTECTED, "{cut}");
    assert!(
        cut["src"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{cut}"
    );
    assert_eq!(cut["exe"], "/usr/bin/socat", "{cut}");
    assert_eq!(cut["uid"], 0, "{cut}");
    assert!(
        cut["cmdline"]
            .as_str()
            .is_some_and(|c| c.starts_with("socat TCP-LISTEN")),
        "{cut}"
    );
    assert_ne!(cut["socket_cookie"], 0, "{cut}");
    cut
}

fn assert_only_the_direct_client_is_connected(ns: &Netns) {
    let left = connections_to_protected(ns);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(left[0].contains("python3"), "{left:#?}");
    assert!(!left.iter().any(|l| l.contains("socat")), "{left:#?}");
}

/// In audit mode: a client through the socat relay on [`RELAY`] and a
/// direct one, each with a working connection, and the relay's
/// `would-deny` record (it was let in, and said so).
fn let_in_through_relay(ns: &Netns, daemon: &Daemon) -> (LineClient, LineClient, Value) {
    let mut through_relay = LineClient::connect(ns, "127.0.0.1", RELAY);
    let mut direct = LineClient::connect(ns, "127.0.0.1", PROTECTED);
    through_relay.assert_works("relay-before");
    direct.assert_works("direct-before");
    let let_in = daemon.wait_event("would-deny of the relay", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat"
    });
    (through_relay, direct, let_in)
}

#[test]
fn switching_audit_to_enforce_cuts_the_relay_and_spares_the_direct_client() {
    let ns = Netns::new();
    let (_server, _relay) = services(&ns);
    let daemon = Daemon::start(&policy(&ns, "audit", ""));

    // Audit mode lets the relay in, and says it would not have.
    let (mut through_relay, mut direct, let_in) = let_in_through_relay(&ns, &daemon);
    assert_eq!(connections_to_protected(&ns).len(), 2);

    std::fs::write(daemon.config_path(), policy(&ns, "enforce", "")).expect("rewriting the config");
    daemon.signal(libc::SIGHUP);
    let cut = assert_socat_cut(&daemon);
    // The very socket the kernel let in, owned by the relay's child that made it.
    assert_eq!(
        cut["socket_cookie"], let_in["socket_cookie"],
        "{cut}\n{let_in}"
    );
    assert_eq!(cut["pid"], let_in["pid"], "{cut}\n{let_in}");
    daemon.wait_stderr("cut 1 connection", 1);

    through_relay.assert_cut();
    assert_only_the_direct_client_is_connected(&ns);
    direct.assert_works("direct-after");
    assert_eq!(
        daemon
            .events()
            .iter()
            .filter(|e| e["verdict"] == "cut")
            .count(),
        1
    );

    // And the relay cannot get back in.
    let mut again = LineClient::connect(&ns, "127.0.0.1", RELAY);
    again.assert_cut();
    daemon.wait_event("deny of the relay's new connect", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "socat"
    });
    direct.assert_works("direct-last");
}

#[test]
fn a_daemon_started_in_enforce_mode_cuts_a_relay_connection_made_before_it() {
    let ns = Netns::new();
    let (_server, _relay) = services(&ns);
    let mut through_relay = LineClient::connect(&ns, "127.0.0.1", RELAY);
    let mut direct = LineClient::connect(&ns, "::1", PROTECTED);
    through_relay.assert_works("relay-before");
    direct.assert_works("direct-before");

    let daemon = Daemon::start(&policy(&ns, "enforce", ""));
    assert_socat_cut(&daemon);
    daemon.wait_stderr("cut 1 connection", 1);
    through_relay.assert_cut();
    assert_only_the_direct_client_is_connected(&ns);
    direct.assert_works("direct-after");

    // `status` says what the start's sweep did.
    let sweep = daemon
        .install()
        .wait_reported("last_sweep", Duration::from_secs(5));
    assert_eq!(sweep["cut"], 1, "{sweep:#}");
    assert_eq!(sweep["complete"], true, "{sweep:#}");
    assert_eq!(sweep["namespaces"], 1, "{sweep:#}");
    assert!(
        sweep["problems"].as_array().is_some_and(Vec::is_empty),
        "{sweep:#}"
    );
    // The two connections' four sockets and the listeners, at least.
    assert!(
        sweep["sockets"].as_u64().is_some_and(|n| n >= 6),
        "{sweep:#}"
    );
    let text = daemon.install().status_text();
    assert!(
        text.lines().any(|l| l.starts_with("sweep")
            && l.contains("1 connection cut (1 namespace, ")
            && l.contains("ok at")),
        "{text}"
    );
}

#[test]
fn a_policy_change_that_makes_the_relay_denied_cuts_it() {
    let ns = Netns::new();
    let (_server, _relay) = services(&ns);
    // Enforcing, but a user rule before the catalog allows this relay.
    let allow = rule("our-relay", "allow", "exe_name", "socat");
    let daemon = Daemon::start(&policy(&ns, "enforce", &allow));
    daemon.wait_stderr("cut 0 connections", 1);
    let mut through_relay = LineClient::connect(&ns, "127.0.0.1", RELAY);
    through_relay.assert_works("allowed");

    // Without that rule the catalog's deny rule is the first match.
    std::fs::write(daemon.config_path(), policy(&ns, "enforce", "")).expect("rewriting the config");
    daemon.signal(libc::SIGHUP);
    assert_socat_cut(&daemon);
    through_relay.assert_cut();
    assert!(connections_to_protected(&ns).is_empty());
}

/// Installs `deny_policy` (the relay verdict denies) with a SIGHUP and
/// waits for its sweep to cut exactly one connection, by the relay
/// verdict: the one the audit record `let_in` let in. Returns the cut.
fn assert_relay_deny_cuts(daemon: &Daemon, deny_policy: &str, let_in: &Value) -> Value {
    std::fs::write(daemon.config_path(), deny_policy).expect("rewriting the config");
    daemon.signal(libc::SIGHUP);
    let cut = daemon.wait_event("the cut of the relayed connection", |e| {
        e["verdict"] == "cut"
    });
    assert_eq!(cut["rule"], "relay", "{cut}");
    assert_eq!(
        cut["socket_cookie"], let_in["socket_cookie"],
        "{cut}\n{let_in}"
    );
    daemon.wait_stderr("cut 1 connection", 1);
    cut
}

#[test]
fn a_switch_to_relay_deny_cuts_a_relayed_connection_and_spares_the_direct_client() {
    let topo = Topology::new();
    let ns = &topo.local;
    let _server = ns.spawn("python3", &["-c", ECHO_SERVER, &PROTECTED.to_string()]);
    ns.wait_listening(PROTECTED);
    let relayed = |action: &str| {
        Policy::new(ns, "enforce")
            .catalog(false)
            .relay(action)
            .text()
    };
    let daemon = Daemon::start(&relayed("audit"));
    let dir = TempDir::new("cut-forwarder");
    let _forwarder = spawn_forwarder(ns, &dir, LOCAL_ADDR, RELAY);

    // The relay verdict audits: a remote user's connection through the
    // forwarder is let in, and so is a direct client's.
    let mut remote = LineClient::connect(&topo.remote, LOCAL_ADDR, RELAY);
    let mut direct = LineClient::connect(ns, "127.0.0.1", PROTECTED);
    remote.assert_works("relayed-before");
    direct.assert_works("direct-before");
    let let_in = daemon.wait_event("the relay audit", |e| e["rule"] == "relay");
    assert_eq!(let_in["verdict"], "audit", "{let_in}");

    assert_relay_deny_cuts(&daemon, &relayed("deny"), &let_in);
    remote.assert_cut();
    direct.assert_works("direct-after");
}

/// Port of the remote server the tunnel client below hears from.
const TUNNEL_SERVER_PORT: u16 = 9022;
/// The relay window of the test below: short, so that the tunnel client's
/// evidence soon ages past it.
const SHORT_WINDOW_MS: u64 = 300;

/// A tunnel client is known by recent evidence only: it hears from its
/// remote server and at once connects to the service (the relay verdict
/// audits it, `via` naming the server). Its connection then stays idle
/// past the window, so its evidence no longer makes it a relay; a switch
/// to `[relay] action = "deny"` still cuts that connection, by the
/// evidence its origin recorded at the connect (the cut line names the
/// same remote party), and spares the direct client's. Fails against a
/// build whose sweep judges by the evidence at the sweep alone.
#[test]
fn a_switch_to_relay_deny_cuts_a_relayed_connection_whose_evidence_has_aged() {
    let topo = Topology::new();
    let ns = &topo.local;
    let _server = ns.spawn("python3", &["-c", ECHO_SERVER, &PROTECTED.to_string()]);
    ns.wait_listening(PROTECTED);
    let _greeter = greeter(&topo, TUNNEL_SERVER_PORT);
    let relayed = |action: &str| {
        Policy::new(ns, "enforce")
            .catalog(false)
            .relay(action)
            .window_ms(SHORT_WINDOW_MS)
            .text()
    };
    let daemon = Daemon::start(&relayed("audit"));

    let remote = (REMOTE_ADDR, TUNNEL_SERVER_PORT);
    let mut tunnel = LineClient::start(ns, "127.0.0.1", PROTECTED, Some(remote));
    let mut direct = LineClient::connect(ns, "127.0.0.1", PROTECTED);
    tunnel.assert_works("relayed-before");
    direct.assert_works("direct-before");
    let let_in = daemon.wait_event("the relay audit", |e| e["rule"] == "relay");
    assert_eq!(let_in["verdict"], "audit", "{let_in}");
    assert_eq!(
        let_in["via"],
        format!("{REMOTE_ADDR}:{TUNNEL_SERVER_PORT}"),
        "{let_in}"
    );

    // Idle past the window: by its evidence now, no relay.
    thread::sleep(Duration::from_millis(3 * SHORT_WINDOW_MS));
    let cut = assert_relay_deny_cuts(&daemon, &relayed("deny"), &let_in);
    assert_eq!(cut["via"], let_in["via"], "{cut}\n{let_in}");
    assert_eq!(cut["via_how"], let_in["via_how"], "{cut}\n{let_in}");
    tunnel.assert_cut();
    direct.assert_works("direct-after");
}

/// Port of a socat echo service without `fork`: it closes its listener
/// once it has accepted its one client.
const ONE_SHOT: u16 = 9023;

/// With every port protected, a server whose listener has closed (socat
/// without `fork`, serving its one client) holds its accepted socket with
/// a client's look: its local port no longer listens, and its remote end,
/// the client's ephemeral port, is a protected destination. Its owner,
/// socat, matches the catalog's deny rule, yet the sweep on the switch to
/// enforce leaves that connection alone: its origin names the socket as
/// the accepted one. The positive control, in the same sweep: the socat
/// relay's connection to the service is cut. Fails against a build whose
/// sweep does not ask the origin (it cut both).
#[test]
fn the_accepted_side_of_a_connection_whose_listener_closed_is_not_cut() {
    let ns = Netns::new();
    let (_server, _relay) = services(&ns);
    let _one_shot = ns.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{ONE_SHOT},bind=127.0.0.1,reuseaddr"),
            "EXEC:cat",
        ],
    );
    ns.wait_listening(ONE_SHOT);
    let all_ports = |mode: &str| Policy::new(&ns, mode).all_ports().text();
    let daemon = Daemon::start(&all_ports("audit"));

    let mut served = LineClient::connect(&ns, "127.0.0.1", ONE_SHOT);
    let mut through_relay = LineClient::connect(&ns, "127.0.0.1", RELAY);
    served.assert_works("served-before");
    through_relay.assert_works("relay-before");
    wait_for(
        "socat to close its listener",
        Duration::from_secs(5),
        || {
            let out = run(ns
                .cmd("ss")
                .args(["-Htln", "sport", "=", &format!(":{ONE_SHOT}")]));
            out.stdout.is_empty().then_some(())
        },
    );

    std::fs::write(daemon.config_path(), all_ports("enforce")).expect("rewriting the config");
    daemon.signal(libc::SIGHUP);
    assert_socat_cut(&daemon);
    daemon.wait_stderr("cut 1 connection", 1);
    through_relay.assert_cut();
    served.assert_works("served-after");
    let cuts: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| e["verdict"] == "cut")
        .collect();
    assert_eq!(cuts.len(), 1, "{cuts:#?}");
}

/// The port the relay of the next test connects from.
const RELAY_SOURCE_PORT: u16 = 41_000;

#[test]
fn a_relay_that_listens_on_its_own_source_port_is_still_cut() {
    let ns = Netns::new();
    let server = ns.spawn("python3", &["-c", ECHO_SERVER, &PROTECTED.to_string()]);
    ns.wait_listening(PROTECTED);
    let _relay = ns.socat_relay(
        RELAY,
        &format!("TCP:127.0.0.1:{PROTECTED},sourceport={RELAY_SOURCE_PORT}"),
        None,
    );
    let daemon = Daemon::start(&policy(&ns, "audit", ""));
    let (mut through_relay, mut direct, let_in) = let_in_through_relay(&ns, &daemon);
    // (A connect's report has no source port yet: `ss` shows it.)
    let open = connections_to_protected(&ns);
    assert!(
        open.iter()
            .any(|l| l.contains("socat") && l.contains(&format!("127.0.0.1:{RELAY_SOURCE_PORT} "))),
        "{open:#?}"
    );
    // Something now listens on the relay's source port, on another
    // address: the relay's socket has an accepted socket's look.
    let _listener = ns.spawn(
        "python3",
        &[
            "-c",
            "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.2', int(sys.argv[1])))\n\
             s.listen()\ntime.sleep(3600)\n",
            &RELAY_SOURCE_PORT.to_string(),
        ],
    );
    ns.wait_listening(RELAY_SOURCE_PORT);

    std::fs::write(daemon.config_path(), policy(&ns, "enforce", "")).expect("rewriting the config");
    daemon.signal(libc::SIGHUP);
    // Its origin names it as the client's: cut all the same.
    let cut = assert_socat_cut(&daemon);
    assert_eq!(cut["socket_cookie"], let_in["socket_cookie"], "{cut}");
    daemon.wait_stderr("cut 1 connection", 1);
    through_relay.assert_cut();
    assert_only_the_direct_client_is_connected(&ns);
    direct.assert_works("direct-after");
    drop(server);
}

/// A scoped namespace whose name went (`ip netns del`, processes still in
/// it) is still swept: a switch to enforce cuts the relay's connection
/// there, the sweep entering the namespace through a process in it.
#[test]
fn a_namespace_whose_name_went_is_still_swept() {
    let ns = Netns::new();
    let (_server, _relay) = services(&ns);
    let alias = NetnsAlias::new(&ns);
    let scoped = |mode: &str| {
        policy(&ns, mode, "").replace(&format!("\"{}\"", ns.path()), &format!("\"{}\"", alias.0))
    };
    let daemon = Daemon::start(&scoped("audit"));
    let (mut through_relay, mut direct, _) = let_in_through_relay(&ns, &daemon);
    let enforce = scoped("enforce");
    let gone = format!("network namespace {} cannot be resolved", alias.0);
    drop(alias);
    daemon.wait_stderr(&gone, 1);

    std::fs::write(daemon.config_path(), enforce).expect("rewriting the config");
    daemon.signal(libc::SIGHUP);
    assert_socat_cut(&daemon);
    daemon.wait_stderr("cut 1 connection", 1);
    through_relay.assert_cut();
    direct.assert_works("direct-after");
}

/// A connection opened by a thread that has a descriptor table of its own
/// (`unshare(CLONE_FILES)`) is cut like any other once a deny rule names
/// it: the sweep finds its process through that thread's table. The build
/// before found no holder of it and left it open.
#[test]
fn a_connection_held_in_a_threads_own_descriptor_table_is_cut() {
    let ns = Netns::new();
    let _server = ns.spawn("python3", &["-c", ECHO_SERVER, &PROTECTED.to_string()]);
    ns.wait_listening(PROTECTED);
    let deny = rule("own-table", "deny", "comm", "ownfiles");
    let daemon = Daemon::start(&policy(&ns, "audit", &deny));
    let mut own = LineClient::run(&ns, &[OWN_TABLE, LINE_CLIENT], "127.0.0.1", PROTECTED, None);
    let mut direct = LineClient::connect(&ns, "127.0.0.1", PROTECTED);
    // Let in (audit), and said so: the rule names it.
    own.assert_works("own-before");
    direct.assert_works("direct-before");
    daemon.wait_event("would-deny of the thread's connect", |e| {
        e["verdict"] == "would-deny" && e["rule"] == "own-table"
    });

    std::fs::write(daemon.config_path(), policy(&ns, "enforce", &deny))
        .expect("rewriting the config");
    daemon.signal(libc::SIGHUP);
    let cut = daemon.wait_event("cut of the thread's connection", |e| {
        e["verdict"] == "cut" && e["rule"] == "own-table"
    });
    assert_eq!(cut["dst"], format!("127.0.0.1:{PROTECTED}"), "{cut}");
    assert_eq!(cut["pid"], own.child.id(), "{cut}");
    daemon.wait_stderr("cut 1 connection", 1);
    own.assert_cut();
    direct.assert_works("direct-after");
}

/// Python, arguments N FIRST: raises its soft limit of open files to its
/// hard one, listens on N loopback ports (the FIRST-th to the
/// FIRST+N-1-th of 40,000 ports of 127.0.0.2, 127.0.0.3, ...), says
/// `listening N`, and holds them.
const HOARDER: &str = r#"
import resource, socket, sys
n, first = int(sys.argv[1]), int(sys.argv[2])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
while len(held) < n:
    i = first + len(held)
    s = socket.socket()
    s.bind(("127.0.0.%d" % (2 + i // 40000), 20000 + i % 40000))
    s.listen(1)
    held.append(s)
print("listening", len(held), flush=True)
sys.stdin.readline()
"#;

/// A user's 105,000 listeners in the swept namespace do not use
/// up the sweep's budget (the ports are all it keeps of them): a daemon
/// started in enforce mode still cuts the relay's connection made before
/// it, and calls the sweep complete. Fails against a build that kept
/// listeners to judge: the sweep stopped at its limit and cut nothing.
#[test]
fn a_users_many_listeners_leave_the_sweep_its_budget() {
    let ns = Netns::new();
    let (_server, _relay) = services(&ns);
    // In processes of 15,000 each: the open files a process may have are
    // limited (20,000 on the CI host), and raising that takes a
    // capability root may lack.
    const EACH: usize = 15_000;
    const LISTENERS: usize = 7 * EACH;
    let _hoarders: Vec<Talker> = (0..7)
        .map(|n| {
            let mut hoarder = Talker::spawn(
                ns.cmd(AS_NOBODY[0]).args(&AS_NOBODY[1..]).args([
                    SYSTEM_PYTHON,
                    "-c",
                    HOARDER,
                    &EACH.to_string(),
                    &(n * EACH).to_string(),
                ]),
                "a process of the user holding many listeners",
            );
            assert_eq!(hoarder.line(), format!("listening {EACH}"));
            hoarder
        })
        .collect();
    let mut through_relay = LineClient::connect(&ns, "127.0.0.1", RELAY);
    through_relay.assert_works("relay-before");

    let daemon = Daemon::start(&policy(&ns, "enforce", ""));
    assert_socat_cut(&daemon);
    through_relay.assert_cut();
    let sweep = daemon
        .install()
        .wait_reported("last_sweep", Duration::from_secs(10));
    assert_eq!(sweep["complete"], true, "{sweep:#}");
    assert!(
        sweep["sockets"]
            .as_u64()
            .is_some_and(|n| n > LISTENERS as u64),
        "{sweep:#}"
    );
}
