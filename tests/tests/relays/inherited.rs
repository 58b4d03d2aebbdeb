//! Listeners a program inherits across an exec: systemd socket activation
//! (pid 1 listens, its child executes the service with the socket as fd
//! 3), `systemd-socket-activate`, a server that re-executes itself. The
//! exec clears the evidence the process carried; the exec tracepoint gives
//! `listening` back to a program that holds a non-loopback listener (the
//! port's accepts are credited to it from then on), and `accepted` to one
//! that holds a connection accepted from a remote client (systemd
//! `Accept=yes`, `systemd-socket-activate --accept`).

use loopwarden_tests::{FD3_RELAY, HAND_DOWN, handed_down_relay, wait_for_explained};

use super::*;

const HANDED_DOWN_PORT: u16 = 9031;
const ACTIVATED_PORT: u16 = 9032;

/// A child executed holding its parent's listener on the link address (fd
/// 3, as systemd hands a socket to a service with `Accept=no`, or fd 200,
/// as systemd 255 and later hand it to their executor) is refused as a
/// relay when it asks the service (`listening` on that address), though
/// the exec cleared its evidence. Under the same daemon the same child is
/// served when it is executed without the listener, with a listener on
/// 127.0.0.1 instead, or with a connection it did not accept (one to the
/// remote side, from an ephemeral port, or from the listener's own port,
/// bound beside it with `SO_REUSEPORT`). Without the daemon all are
/// served. Fails against a build whose exec clears the evidence whatever
/// the program holds (the first two are served), one that reads only the
/// first 32 descriptors (fd 200 is served), one that takes a loopback
/// listener or any connected socket for evidence, or one that takes any
/// connection on a listener's port for accepted (the bound one is
/// refused).
#[test]
fn a_program_executed_holding_its_parents_listener_is_network_facing() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let peer_port = 9041;
    let _peer = topo.remote.spawn(
        SYSTEM_PYTHON,
        &[
            "-m",
            "http.server",
            "--bind",
            REMOTE_ADDR,
            &peer_port.to_string(),
        ],
    );
    topo.remote.wait_listening(peer_port);
    let ask = concat!(ask_py!(), "print(ask(int(sys.argv[1])), flush=True)");
    let asked = |mode: &str| {
        let printed = printed(
            topo.local
                .cmd(SYSTEM_PYTHON)
                .env("PEER", REMOTE_ADDR)
                .env("PEER_PORT", peer_port.to_string())
                .args([
                    "-c",
                    HAND_DOWN,
                    mode,
                    LOCAL_ADDR,
                    &HANDED_DOWN_PORT.to_string(),
                    SYSTEM_PYTHON,
                    "-c",
                    ask,
                    &PROTECTED.to_string(),
                ]),
        );
        (mode.to_owned(), printed.join(" "))
    };
    let modes = ["keep", "high", "drop", "loopback", "connected", "bound"];
    let served = |mode: &str| (mode.to_owned(), "status 200".to_owned());
    for mode in modes {
        assert_eq!(asked(mode), served(mode));
    }

    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    for mode in ["drop", "loopback", "connected", "bound"] {
        assert_eq!(asked(mode), served(mode));
    }
    for (n, mode) in ["keep", "high"].into_iter().enumerate() {
        assert_eq!(asked(mode), (mode.to_owned(), "error 111".to_owned()));
        let ev = wait_for(
            "the refusal of the child holding the listener",
            Duration::from_secs(10),
            || {
                daemon
                    .events()
                    .into_iter()
                    .filter(|e| e["verdict"] == "deny")
                    .nth(n)
            },
        );
        assert_eq!(ev["rule"], "relay", "{mode}: {ev:#}");
        assert_eq!(ev["via_how"], "listening", "{mode}: {ev:#}");
        assert_eq!(
            ev["via"],
            format!("{LOCAL_ADDR}:{HANDED_DOWN_PORT}"),
            "{mode}: {ev:#}"
        );
    }
}

/// A relay that inherits its listener across an exec and connects before
/// it reads is refused, naming the remote client it accepted (`accepted`,
/// the remote address): handed down by a parent that keeps holding it (the
/// accepts are credited to the program that holds the listener since its
/// exec, not to the parent that put it into LISTEN), and by a real
/// `systemd-socket-activate`, which listens and executes the relay itself
/// at the first connection (that one is refused as `listening`: its
/// handshake completed before the exec). Without the daemon both relays
/// serve the remote client. Fails against a build that gives no evidence
/// back at exec (all are served), or that leaves the accepts credited to
/// the parent (`listening` where `accepted` is wanted).
#[test]
fn a_relay_that_inherits_its_listener_names_the_remote_client() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("inherited-listener");
    let relay = write_script(&dir, "relay.py", FD3_RELAY);
    let handed_down = || handed_down_relay(&topo.local, &dir, LOCAL_ADDR, HANDED_DOWN_PORT);
    let activated = || socket_activate(&topo, ACTIVATED_PORT, &[], &relay);
    let fetch = |port: u16| topo.remote.curl(&format!("http://{LOCAL_ADDR}:{port}/"));
    {
        let _relays = (handed_down(), activated());
        assert_eq!(fetch(HANDED_DOWN_PORT), Ok(200));
        assert_eq!(fetch(ACTIVATED_PORT), Ok(200));
        assert_eq!(fetch(ACTIVATED_PORT), Ok(200));
    }

    // Started after the daemon, so that their listeners are not credited
    // to them by the daemon's seeding from /proc.
    let window_ms = 300;
    let daemon = Daemon::start(&relay_deny(&topo.local).window_ms(window_ms).text());
    let relays = (handed_down(), activated());
    // The `n`th refusal of the relay that `started` is (executed in
    // place, as `systemd-socket-activate` does) or forked.
    let refusal = |started: &Proc, n: usize| {
        let refusals = || -> Vec<Value> {
            daemon
                .events()
                .into_iter()
                .filter(|e| e["verdict"] == "deny")
                .collect()
        };
        let ev = wait_for_explained(
            &format!("refusal {n} of the relay {} started", started.pid()),
            Duration::from_secs(10),
            || {
                refusals()
                    .into_iter()
                    .filter(|e| e["pid"] == started.pid() || e["ppid"] == started.pid())
                    .nth(n)
            },
            || format!("refusals: {:#?}", refusals()),
        );
        assert_eq!(ev["rule"], "relay", "{ev:#}");
        ev
    };
    assert_eq!(fetch(HANDED_DOWN_PORT), Ok(502));
    assert_accepted_from_the_remote_side(&refusal(&relays.0, 0));
    assert_eq!(fetch(ACTIVATED_PORT), Ok(502));
    let ev = refusal(&relays.1, 0);
    assert_eq!(ev["via_how"], "listening", "{ev:#}");
    // The relay read the refused request: that `received` evidence ages
    // past the window first.
    std::thread::sleep(Duration::from_millis(3 * window_ms));
    assert_eq!(fetch(ACTIVATED_PORT), Ok(502));
    assert_accepted_from_the_remote_side(&refusal(&relays.1, 1));
}

/// Python, argument TARGET: serves the one connection it was given as fd
/// 3 (as systemd `Accept=yes` and `systemd-socket-activate --accept` hand
/// it over), connecting to the service on 127.0.0.1:TARGET first, before
/// it reads the request, and answers what came back, or 502.
const CONNECTION_RELAY: &str = r#"
import socket, sys
c = socket.socket(fileno=3)
try:
    u = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
except OSError:
    c.recv(65536)
    c.sendall(b"HTTP/1.0 502 Bad Gateway\r\n\r\n")
    sys.exit(0)
u.sendall(c.recv(65536))
while d := u.recv(65536):
    c.sendall(d)
"#;

const PER_CONNECTION_PORT: u16 = 9033;

/// A program executed per connection with the accepted connection as fd 3
/// (a real `systemd-socket-activate --accept`, as systemd's `Accept=yes`
/// hands it over) is refused as a relay when its remote client's request
/// makes it ask the service before it reads (`accepted`, the remote
/// client named), though the exec cleared the evidence it was forked
/// with; the same relay serving a client on this host (from the link
/// address to itself: not a remote party) is served under the same
/// daemon. Without the daemon both are served. Fails against a build that
/// reads only fds 0 and 1 at exec (the remote client is served).
#[test]
fn a_program_executed_with_an_accepted_connection_names_its_remote_client() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("per-connection");
    let relay = write_script(&dir, "relay.py", CONNECTION_RELAY);
    let start = || socket_activate(&topo, PER_CONNECTION_PORT, &["--accept"], &relay);
    let url = format!("http://{LOCAL_ADDR}:{PER_CONNECTION_PORT}/");
    {
        let _activator = start();
        assert_eq!(topo.remote.curl(&url), Ok(200));
        assert_eq!(topo.local.curl(&url), Ok(200));
    }

    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let _activator = start();
    assert_eq!(topo.local.curl(&url), Ok(200));
    assert_eq!(topo.remote.curl(&url), Ok(502));
    assert_accepted_from_the_remote_side(&relay_refusal(&daemon, "the remote client's refusal"));
}

/// Starts a real `systemd-socket-activate` listening on the link address's
/// `port` (with `options`), which executes the Python script `relay` with
/// the service's port as its argument.
fn socket_activate(topo: &Topology, port: u16, options: &[&str], relay: &str) -> Proc {
    let listen = format!("{LOCAL_ADDR}:{port}");
    let target = PROTECTED.to_string();
    let args = [
        &["-l", listen.as_str()],
        options,
        &[SYSTEM_PYTHON, relay, &target],
    ]
    .concat();
    let proc = topo.local.spawn("systemd-socket-activate", &args);
    topo.local.wait_listening(port);
    proc
}
