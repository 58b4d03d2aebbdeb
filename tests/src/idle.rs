//! Clients that connect to a server and then send nothing, holding their
//! connections open, each asked later whether the server closed it: how
//! the tests fill a server's client slots.

use std::{path::Path, process::Command, time::Duration};

use crate::{Netns, SYSTEM_PYTHON, talk::Talker, wait_for};

/// Idle clients, connected one after another a few milliseconds apart.
pub struct IdleClients(Talker);

impl IdleClients {
    /// argv: `tcp HOST PORT` or `unix PATH -`, then one entry per client:
    /// the effective uid it connects as (`-`: the script's own), which a
    /// Unix socket's server reads as its `SO_PEERCRED` uid.
    const SCRIPT: &str = r#"import os, socket, sys, time
kind, a, b = sys.argv[1:4]
socks = []
for uid in sys.argv[4:]:
    if uid != "-":
        os.seteuid(int(uid))
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(a)
    else:
        s = socket.create_connection((a, int(b)))
    if uid != "-":
        os.seteuid(0)
    socks.append(s)
    time.sleep(0.005)
print("ready", flush=True)
for line in sys.stdin:
    states = []
    for s in socks:
        s.setblocking(False)
        try:
            states.append("closed" if s.recv(1) == b"" else "data")
        except BlockingIOError:
            states.append("open")
        except ConnectionResetError:
            states.append("closed")
    print(" ".join(states), flush=True)
"#;

    /// `n` clients of the TCP server at `host`:`port` in `ns`.
    pub fn tcp(ns: &Netns, host: &str, port: u16, n: usize) -> Self {
        let mut cmd = ns.cmd(SYSTEM_PYTHON);
        cmd.args(["-c", Self::SCRIPT, "tcp", host, &port.to_string()])
            .args(vec!["-"; n]);
        Self::start(cmd)
    }

    /// A client of the Unix socket at `path` for each of `uids`, connected
    /// as that uid (the script runs as root and changes only its
    /// effective uid around each connect).
    pub fn unix(path: &Path, uids: &[u32]) -> Self {
        let mut cmd = Command::new(SYSTEM_PYTHON);
        cmd.args(["-c", Self::SCRIPT, "unix"])
            .arg(path)
            .arg("-")
            .args(uids.iter().map(u32::to_string));
        Self::start(cmd)
    }

    fn start(mut cmd: Command) -> Self {
        let mut clients = Talker::spawn(&mut cmd, "the idle clients");
        assert_eq!(
            clients.line(),
            "ready",
            "the idle clients did not all connect"
        );
        Self(clients)
    }

    /// Each client's connection, in the order they connected: `open`,
    /// `closed` (by the server) or `data` (it was sent something).
    pub fn states(&mut self) -> Vec<String> {
        let line = self.0.ask("check");
        line.split_whitespace().map(str::to_owned).collect()
    }

    /// Waits (up to 10 s) for `server` to close the first client, the one
    /// idle longest, and checks that it closed no other.
    pub fn assert_only_the_first_closed(&mut self, server: &str) {
        let states = wait_for(
            &format!("{server} to close the client idle longest"),
            Duration::from_secs(10),
            || {
                let states = self.states();
                (states[0] == "closed").then_some(states)
            },
        );
        assert!(states[1..].iter().all(|s| s == "open"), "{states:?}");
    }
}
