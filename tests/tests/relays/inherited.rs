//! Listeners a program inherits across an exec: systemd socket activation
//! (pid 1 listens, its child executes the service with the socket as fd
//! 3), `systemd-socket-activate`, a server that re-executes itself. The
//! exec clears the evidence the process carried; the exec tracepoint gives
//! `listening` back to a program that holds a non-loopback listener, and
//! the port's accepts are credited to it from then on.

use loopwarden_tests::wait_for_explained;

use super::*;

/// Python, arguments MODE ADDR PORT PROGRAM...: listens on `ADDR:PORT`,
/// forks a child that executes PROGRAM (as pid 1 starts a socket-activated
/// service) with the listener as fd 3 (MODE `keep`) or without it (`drop`:
/// the listener is close-on-exec), and holds the listener until the child
/// exits. The child is killed when this process dies.
const HAND_DOWN: &str = r#"
import ctypes, os, signal, socket, sys
mode, addr, port, program = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
listener = socket.create_server((addr, port))
pid = os.fork()
if pid == 0:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if mode == "keep":
        if listener.fileno() != 3:
            os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)
    os.execv(program[0], program)
os.waitpid(pid, 0)
"#;

/// Python, argument TARGET: serves connections on the listener it was
/// given as fd 3, connecting to the service on 127.0.0.1:TARGET as soon as
/// it accepts, before it reads the request (so it never has `received`
/// evidence at the connect), and answers what came back, or 502.
const FD3_RELAY: &str = r#"
import socket, sys
listener = socket.socket(fileno=3)
while True:
    c, _ = listener.accept()
    try:
        u = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        c.recv(65536)
        c.sendall(b"HTTP/1.0 502 Bad Gateway\r\n\r\n")
        c.close()
        continue
    u.sendall(c.recv(65536))
    while d := u.recv(65536):
        c.sendall(d)
    c.close()
"#;

const HANDED_DOWN_PORT: u16 = 9031;
const ACTIVATED_PORT: u16 = 9032;

/// A child executed holding its parent's listener on the link address (fd
/// 3, as systemd hands a socket to a service with `Accept=no`) is refused
/// as a relay when it asks the service (`listening` on that address),
/// though the exec cleared its evidence; the same child executed without
/// the listener is served, under the same daemon. Without the daemon both
/// are served. Fails against a build whose exec clears the evidence
/// whatever the program holds (the first is served).
#[test]
fn a_program_executed_holding_its_parents_listener_is_network_facing() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let ask = concat!(ask_py!(), "print(ask(int(sys.argv[1])), flush=True)");
    let asked = |mode: &str| {
        printed(topo.local.cmd(SYSTEM_PYTHON).args([
            "-c",
            HAND_DOWN,
            mode,
            LOCAL_ADDR,
            &HANDED_DOWN_PORT.to_string(),
            SYSTEM_PYTHON,
            "-c",
            ask,
            &PROTECTED.to_string(),
        ]))
    };
    assert_eq!(asked("keep"), ["status 200"]);
    assert_eq!(asked("drop"), ["status 200"]);

    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    assert_eq!(asked("drop"), ["status 200"]);
    assert_eq!(asked("keep"), ["error 111"]);
    let ev = relay_refusal(&daemon, "the refusal of the child holding the listener");
    assert_eq!(ev["via_how"], "listening", "{ev:#}");
    assert_eq!(
        ev["via"],
        format!("{LOCAL_ADDR}:{HANDED_DOWN_PORT}"),
        "{ev:#}"
    );
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
    let target = PROTECTED.to_string();
    let handed_down = || {
        let port = HANDED_DOWN_PORT.to_string();
        let args = ["-c", HAND_DOWN, "keep", LOCAL_ADDR, &port];
        let proc = topo.local.spawn(
            SYSTEM_PYTHON,
            &[&args[..], &[SYSTEM_PYTHON, &relay, &target]].concat(),
        );
        topo.local.wait_listening(HANDED_DOWN_PORT);
        proc
    };
    let activated = || {
        let listen = format!("{LOCAL_ADDR}:{ACTIVATED_PORT}");
        let proc = topo.local.spawn(
            "systemd-socket-activate",
            &["-l", &listen, SYSTEM_PYTHON, &relay, &target],
        );
        topo.local.wait_listening(ACTIVATED_PORT);
        proc
    };
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
    let remote_client = |ev: &Value| {
        assert_eq!(ev["via_how"], "accepted", "{ev:#}");
        let via = ev["via"].as_str().unwrap_or_default();
        assert_eq!(
            split_addr(via).map(|(host, _)| host),
            Some(REMOTE_ADDR),
            "{ev:#}"
        );
    };
    assert_eq!(fetch(HANDED_DOWN_PORT), Ok(502));
    remote_client(&refusal(&relays.0, 0));
    assert_eq!(fetch(ACTIVATED_PORT), Ok(502));
    let ev = refusal(&relays.1, 0);
    assert_eq!(ev["via_how"], "listening", "{ev:#}");
    // The relay read the refused request: that `received` evidence ages
    // past the window first.
    std::thread::sleep(Duration::from_millis(3 * window_ms));
    assert_eq!(fetch(ACTIVATED_PORT), Ok(502));
    remote_client(&refusal(&relays.1, 1));
}
