//! A port's accepts stay credited to its listener when another listener
//! on the port closes: a server reloading gracefully (haproxy, envoy, a
//! zero-downtime restart) opens its successor's listener with
//! `SO_REUSEPORT` before the predecessor closes its own, and the
//! predecessor's close must not take the successor's entry with it.

use loopwarden_tests::{failed_listen_relay, listener_tgids, reuseport_relay};

use super::*;

const RELOAD_PORT: u16 = 9035;
const FAILED_LISTEN_PORT: u16 = 9036;

/// A `listen()` that fails on a port another socket of the process
/// listens on (both bound with `SO_REUSEADDR`, as a service started twice
/// at once is) leaves the port credited to the live listener: the relay
/// serving on it is refused naming the remote client it accepted
/// (`accepted`). Without the daemon it serves. Fails against a build
/// whose failed listen's close removes the port's entry (its listen wrote
/// over the live one's): the port is credited to nobody, and the refusal
/// says `listening`.
#[test]
fn a_failed_listen_beside_a_relay_leaves_its_port_credited() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("failed-listen");
    let fetch = || {
        topo.remote
            .curl(&format!("http://{LOCAL_ADDR}:{FAILED_LISTEN_PORT}/"))
    };
    {
        let _relay = failed_listen_relay(&topo.local, &dir, LOCAL_ADDR, FAILED_LISTEN_PORT);
        assert_eq!(fetch(), Ok(200));
    }

    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let relay = failed_listen_relay(&topo.local, &dir, LOCAL_ADDR, FAILED_LISTEN_PORT);
    assert_credited_and_refused(
        &daemon,
        &topo,
        FAILED_LISTEN_PORT,
        relay.pid(),
        "the failed listen",
    );
}

/// Asserts that `port`'s accepts are credited to the relay `pid` alone
/// (after `what`), and that a remote client's fetch through it is refused
/// naming that client (`accepted`).
fn assert_credited_and_refused(daemon: &Daemon, topo: &Topology, port: u16, pid: u32, what: &str) {
    assert_eq!(
        listener_tgids(daemon.install(), &topo.local, port),
        vec![pid],
        "the port's accepts after {what}"
    );
    assert_eq!(
        topo.remote.curl(&format!("http://{LOCAL_ADDR}:{port}/")),
        Ok(502)
    );
    let ev = relay_refusal(daemon, &format!("the relay's refusal after {what}"));
    assert_eq!(ev["pid"], pid, "{ev:#}");
    assert_accepted_from_the_remote_side(&ev);
}

/// A relay that takes its port over from a predecessor as a graceful
/// reload does (its own listener with `SO_REUSEPORT`, opened before the
/// predecessor's closes) is refused naming the remote client it accepted
/// (`accepted`): the predecessor's close leaves the port credited to the
/// successor, and the successor's own close removes the entry. Without the
/// daemon the same takeover serves. Fails against a build whose listener
/// close removes the port's entry whoever holds it (no entry once the
/// predecessor has exited: the successor's accepts would name nobody, and
/// its refusal say `listening`), or one that never removes it.
#[test]
fn a_relay_that_takes_its_port_over_from_a_predecessor_names_the_remote_client() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("reload");
    let start = |name: &str| reuseport_relay(&topo.local, &dir, LOCAL_ADDR, RELOAD_PORT, name);
    // The predecessor, then its successor, which is returned once the
    // predecessor has exited.
    let reload = |n: usize| {
        let mut predecessor = start(&format!("predecessor {n}"));
        let successor = start(&format!("successor {n}"));
        predecessor.kill();
        successor
    };
    let fetch = || {
        topo.remote
            .curl(&format!("http://{LOCAL_ADDR}:{RELOAD_PORT}/"))
    };
    {
        let _successor = reload(0);
        assert_eq!(fetch(), Ok(200));
    }

    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let mut successor = reload(1);
    assert_credited_and_refused(
        &daemon,
        &topo,
        RELOAD_PORT,
        successor.pid(),
        "the predecessor's close",
    );
    successor.kill();
    wait_forgotten(&daemon, &topo.local, RELOAD_PORT, "the successor's close");
}

/// Python, arguments ADDR FILE: listens on `ADDR` at a port the kernel
/// chooses (bound to port 0, which sets no `SOCK_BINDPORT_LOCK`: the
/// kernel gives the port back before the listener's close is seen), or,
/// with ADDR `-`, without a bind (the kernel chooses the port in
/// `listen()`), and writes the port to FILE.
const PORT_ZERO_LISTENER: &str = r#"
import os, socket, sys, time
if sys.argv[1] == "-":
    listener = socket.socket()
    listener.listen()
else:
    listener = socket.create_server((sys.argv[1], 0))
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(600)
"#;

/// A listener on a port the kernel chose at its bind (as RPC services and
/// passive FTP bind) is credited with its port while it listens, and its
/// close removes the entry, though the kernel has given the port back by
/// then. One that listens without a bind, whose port the kernel chooses
/// only after loopwarden sees the listen, leaves no entry under port 0,
/// while it listens or after.
/// Fails against a build that keys the close by the port the socket
/// reads then (0: the entry stays), or that credits port 0 (an entry no
/// close removes).
#[test]
fn a_listener_on_a_port_the_kernel_chose_is_forgotten_when_it_closes() {
    let topo = Topology::new();
    let dir = TempDir::new("port-zero");
    let script = write_script(&dir, "listener.py", PORT_ZERO_LISTENER);
    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let start = |addr: &str| {
        let file = dir.path().join(format!("port-{addr}"));
        let listener = topo.local.spawn(
            SYSTEM_PYTHON,
            &[script.as_str(), addr, &file.to_string_lossy()],
        );
        let port: u16 = wait_for("the listener's port", Duration::from_secs(10), || {
            std::fs::read_to_string(&file).ok()?.parse().ok()
        });
        (listener, port)
    };
    let (mut unbound, _) = start("-");
    let nobody: Vec<u32> = Vec::new();
    assert_eq!(listener_tgids(daemon.install(), &topo.local, 0), nobody);
    unbound.kill();
    assert_eq!(listener_tgids(daemon.install(), &topo.local, 0), nobody);
    let (mut listener, port) = start(LOCAL_ADDR);
    assert_eq!(
        listener_tgids(daemon.install(), &topo.local, port),
        vec![listener.pid()]
    );
    listener.kill();
    wait_forgotten(&daemon, &topo.local, port, "the listener's close");
}

/// Waits until `what` has removed every `LW_LISTENERS` entry of `port` in
/// `ns`.
fn wait_forgotten(daemon: &Daemon, ns: &Netns, port: u16, what: &str) {
    wait_for(
        &format!("{what} to remove its entry"),
        Duration::from_secs(10),
        || {
            listener_tgids(daemon.install(), ns, port)
                .is_empty()
                .then_some(())
        },
    );
}
