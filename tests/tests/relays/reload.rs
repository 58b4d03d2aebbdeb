//! A port's accepts stay credited to its listener when another listener
//! on the port closes: a server reloading gracefully (haproxy, envoy, a
//! zero-downtime restart) opens its successor's listener with
//! `SO_REUSEPORT` before the predecessor closes its own, and the
//! predecessor's close must not take the successor's entry with it.

use loopwarden_tests::{FD3_RELAY, hex_bytes, map_dump};

use super::*;

const RELOAD_PORT: u16 = 9035;

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
    // Its own listener with `SO_REUSEPORT`, not fd 3.
    let relay = write_script(&dir, "relay.py", FD3_RELAY);
    let (port, target) = (RELOAD_PORT.to_string(), PROTECTED.to_string());
    let start = |name: &str| {
        let ready = dir.path().join(name);
        let ready_arg = ready.to_string_lossy();
        let proc = topo.local.spawn(
            SYSTEM_PYTHON,
            &[relay.as_str(), &target, &ready_arg, LOCAL_ADDR, &port],
        );
        wait_for(name, Duration::from_secs(10), || {
            ready.exists().then_some(())
        });
        proc
    };
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
    assert_eq!(
        credited(&daemon, RELOAD_PORT),
        vec![successor.pid()],
        "the port's accepts after the predecessor's close"
    );
    assert_eq!(fetch(), Ok(502));
    let ev = relay_refusal(&daemon, "the successor's refusal");
    assert_eq!(ev["pid"], successor.pid(), "{ev:#}");
    assert_eq!(ev["via_how"], "accepted", "{ev:#}");
    let via = ev["via"].as_str().unwrap_or_default();
    assert_eq!(
        split_addr(via).map(|(host, _)| host),
        Some(REMOTE_ADDR),
        "{ev:#}"
    );
    successor.kill();
    wait_for(
        "the successor's close to remove its entry",
        Duration::from_secs(10),
        || credited(&daemon, RELOAD_PORT).is_empty().then_some(()),
    );
}

/// Python, arguments ADDR FILE: listens on `ADDR` at a port the kernel
/// chooses (bound to port 0, which sets no `SOCK_BINDPORT_LOCK`: the
/// kernel gives the port back before the listener's close is seen), and
/// writes the port to FILE.
const PORT_ZERO_LISTENER: &str = r#"
import os, socket, sys, time
listener = socket.create_server((sys.argv[1], 0))
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(600)
"#;

/// A listener on a port the kernel chose (as RPC services and passive FTP
/// bind) is credited with its port while it listens, and its close
/// removes the entry, though the kernel has given the port back by then.
/// Fails against a build that keys the close by the port the socket
/// reads then (0: the entry stays).
#[test]
fn a_listener_on_a_port_the_kernel_chose_is_forgotten_when_it_closes() {
    let topo = Topology::new();
    let dir = TempDir::new("port-zero");
    let script = write_script(&dir, "listener.py", PORT_ZERO_LISTENER);
    let file = dir.path().join("port");
    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let mut listener = topo.local.spawn(
        SYSTEM_PYTHON,
        &[script.as_str(), LOCAL_ADDR, &file.to_string_lossy()],
    );
    let port: u16 = wait_for("the listener's port", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).ok()?.parse().ok()
    });
    assert_eq!(credited(&daemon, port), vec![listener.pid()]);
    listener.kill();
    wait_for(
        "the listener's close to remove its entry",
        Duration::from_secs(10),
        || credited(&daemon, port).is_empty().then_some(()),
    );
}

/// The tgids `LW_LISTENERS` credits listeners on `port` to (in any
/// namespace: the test's port is its alone).
fn credited(daemon: &Daemon, port: u16) -> Vec<u32> {
    map_dump(daemon.install(), "LW_LISTENERS")
        .iter()
        .filter(|e| hex_bytes(&e["key"])[4..6] == port.to_ne_bytes())
        .map(|e| u32::from_ne_bytes(hex_bytes(&e["value"])[..4].try_into().unwrap()))
        .collect()
}
