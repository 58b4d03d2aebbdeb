//! Tunnel clients that carry connections in ways a socket's reads do not
//! show: over UDP datagrams (and a local peer's datagrams are no
//! evidence), and moved with splice(2).

use super::*;

/// Port the UDP tunnel client below is told about connections on.
const UDP_TUNNEL_PORT: u16 = 9010;

/// A UDP tunnel client in miniature (QUIC and WireGuard tunnels read their
/// unconnected socket with the source address): for each datagram from
/// its "server" it connects to the service and prints what happened.
const UDP_TUNNEL: &str = concat!(
    ask_py!(),
    r#"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], int(sys.argv[2])))
while True:
    _, peer = u.recvfrom(512)
    print(ask(int(sys.argv[3])), flush=True)
"#
);

/// [`UDP_TUNNEL`] in local, bound to `addr`, once its socket is bound.
fn udp_tunnel_client(topo: &Topology, addr: &str) -> LineReader {
    let mut cmd = topo.local.cmd(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        UDP_TUNNEL,
        addr,
        &UDP_TUNNEL_PORT.to_string(),
        &PROTECTED.to_string(),
    ]);
    let client = LineReader::spawn(cmd);
    topo.local.wait_udp_bound(UDP_TUNNEL_PORT);
    client
}

/// The remote "server" tells the local UDP tunnel client about a
/// connection; returns what the client printed.
fn udp_open(topo: &Topology, client: &mut LineReader) -> String {
    udp_send(&topo.remote, LOCAL_ADDR, client)
}

/// A datagram from `ns` to the UDP tunnel client at `addr`; returns what
/// the client printed.
fn udp_send(ns: &Netns, addr: &str, client: &mut LineReader) -> String {
    udp_send_from(ns, 0, addr, client)
}

/// [`udp_send`] from source port `port` (0: one the kernel chooses).
fn udp_send_from(ns: &Netns, port: u16, addr: &str, client: &mut LineReader) -> String {
    run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        "import socket, sys; u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         u.bind(('', int(sys.argv[3]))); u.sendto(b'open', (sys.argv[1], int(sys.argv[2])))",
        addr,
        &UDP_TUNNEL_PORT.to_string(),
        &port.to_string(),
    ]));
    client.next_line()
}

/// A child's stdout, line by line.
struct LineReader {
    _proc: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LineReader {
    fn spawn(mut cmd: std::process::Command) -> Self {
        use std::io::BufRead as _;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the UDP tunnel client");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _proc: child,
            lines,
        }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| "(no answer)".to_owned())
    }
}

impl Drop for LineReader {
    fn drop(&mut self) {
        let _ = self._proc.kill();
        let _ = self._proc.wait();
    }
}

/// UDP evidence: what a datagram from a non-local peer makes of the
/// process that reads it with its source (the recvmsg hooks).
#[test]
fn a_udp_tunnel_client_is_a_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let start = || udp_tunnel_client(&topo, LOCAL_ADDR);
    // Without loopwarden it reaches the service.
    {
        let mut client = start();
        assert_eq!(udp_open(&topo, &mut client), "status 200");
    }
    // Audit: the relay verdict names the UDP peer.
    {
        let policy = Policy::new(&topo.local, "audit").catalog(false);
        let daemon = Daemon::start(&policy.text());
        let mut client = start();
        assert_eq!(udp_open(&topo, &mut client), "status 200");
        let ev = daemon.wait_event("the UDP tunnel's relay audit", |e| e["rule"] == "relay");
        assert_eq!(ev["verdict"], "audit", "{ev:#}");
        assert_received_from_remote(&ev);
    }
    // Enforce with relay deny: refused.
    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    let mut client = start();
    assert_eq!(udp_open(&topo, &mut client), "error 111");
    relay_refusal(&daemon, "the UDP tunnel's refusal");
}

/// A datagram's source port is its sender's to choose: the UDP tunnel
/// client, whose socket's port is bound (a server's socket, not a
/// resolver's), hears from the remote side sending from port 53 and is
/// refused as a relay under relay deny (`via` the remote address and port
/// 53, `received`); without the daemon it reaches the service. Fails
/// against a build that takes every datagram from port 53 for a DNS
/// answer.
#[test]
fn a_datagram_from_the_dns_port_to_a_bound_socket_is_evidence() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let start = || udp_tunnel_client(&topo, LOCAL_ADDR);
    {
        let mut client = start();
        assert_eq!(
            udp_send_from(&topo.remote, 53, LOCAL_ADDR, &mut client),
            "status 200"
        );
    }
    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let mut client = start();
    assert_eq!(
        udp_send_from(&topo.remote, 53, LOCAL_ADDR, &mut client),
        "error 111"
    );
    let ev = relay_refusal(&daemon, "the UDP tunnel's refusal");
    assert_eq!(ev["via"], format!("{REMOTE_ADDR}:53"), "{ev:#}");
    assert_eq!(ev["via_how"], "received", "{ev:#}");
}

/// A datagram from a local peer is not evidence: the UDP tunnel client,
/// bound to every address, hears from a local sender (127.0.0.1) and
/// reaches the service under relay deny (catalog off); then it hears from
/// the remote "server" and is refused (the positive control). Without the
/// daemon it reaches the service both times.
#[test]
fn a_datagram_from_a_local_peer_is_not_evidence() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let asked = || {
        let mut client = udp_tunnel_client(&topo, "0.0.0.0");
        [
            udp_send(&topo.local, "127.0.0.1", &mut client),
            udp_open(&topo, &mut client),
        ]
    };
    assert_eq!(asked(), ["status 200", "status 200"]);

    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    assert_eq!(asked(), ["status 200", "error 111"]);
    let ev = daemon.wait_event("the refusal after the remote datagram", |e| {
        e["verdict"] == "deny"
    });
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    assert_received_from_remote(&ev);
}

/// The record names a datagram from the remote side as its evidence.
fn assert_received_from_remote(ev: &Value) {
    assert_via(
        ev,
        &Via {
            host: REMOTE_ADDR,
            port: None,
            how: &["received"],
        },
    );
}

/// Port of the remote end the splicing client below reads from.
const SPLICE_SERVER_PORT: u16 = 9012;

/// A tunnel client that moves what it receives with splice(2) (as Go's
/// `io.Copy` between two TCP connections does on Linux), so no byte of it
/// is copied to the process: it connects to its server, and for each
/// message spliced out of that connection connects to the service.
const SPLICE_TUNNEL: &str = concat!(
    ask_py!(),
    r#"
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
r, w = os.pipe()
while True:
    n = os.splice(c.fileno(), w, 512)
    if n == 0:
        break
    os.read(r, n)
    print(ask(int(sys.argv[3])), flush=True)
"#
);

/// The remote server: accepts the client, waits past the relay window (so
/// the client's `connected` evidence has expired), then sends one message.
const SPLICE_SERVER: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
c, _ = s.accept()
time.sleep(1.0)
c.sendall(b"open")
time.sleep(30)
"#;

/// The window of the splice test: well under the server's wait.
const SPLICE_WINDOW_MS: u64 = 300;

/// Starts the remote server and the splicing client; returns the client's
/// first line (what its connect to the service did) and the server.
fn splice_open(topo: &Topology) -> (String, Proc) {
    let port = SPLICE_SERVER_PORT.to_string();
    let server = topo
        .remote
        .spawn(SYSTEM_PYTHON, &["-c", SPLICE_SERVER, REMOTE_ADDR, &port]);
    topo.remote.wait_listening(SPLICE_SERVER_PORT);
    let mut cmd = topo.local.cmd(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        SPLICE_TUNNEL,
        REMOTE_ADDR,
        &port,
        &PROTECTED.to_string(),
    ]);
    let client = LineReader::spawn(cmd);
    (client.next_line(), server)
}

/// Data received by splice(2) is `received` evidence like data read with
/// recv(): the relay verdict names the server it came from.
#[test]
fn a_tunnel_client_that_splices_what_it_receives_is_a_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    // Without loopwarden it reaches the service.
    assert_eq!(splice_open(&topo).0, "status 200");
    // Audit: the relay verdict, from the data spliced out of the
    // connection (the connect to the server is older than the window).
    {
        let policy = Policy::new(&topo.local, "audit")
            .catalog(false)
            .window_ms(SPLICE_WINDOW_MS);
        let daemon = Daemon::start(&policy.text());
        let (line, _server) = splice_open(&topo);
        assert_eq!(line, "status 200");
        let ev = daemon.wait_event("the splicing client's relay audit", |e| {
            e["rule"] == "relay"
        });
        assert_eq!(ev["verdict"], "audit", "{ev:#}");
        assert_eq!(ev["via_how"], "received", "{ev:#}");
        assert_eq!(
            ev["via"],
            format!("{REMOTE_ADDR}:{SPLICE_SERVER_PORT}"),
            "{ev:#}"
        );
    }
    // Enforce with relay deny: refused.
    let policy = relay_deny(&topo.local).window_ms(SPLICE_WINDOW_MS);
    let daemon = Daemon::start(&policy.text());
    let (line, _server) = splice_open(&topo);
    assert_eq!(line, "error 111");
    relay_refusal(&daemon, "the splicing client's refusal");
}
