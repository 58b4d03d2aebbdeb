//! Real services the relay tests start in a namespace: an sshd for port
//! forwards, a Python forwarder no catalog names, a relay handed its
//! listener across an exec, nginx as a reverse proxy,
//! a remote server a tunnel client hears from.

use std::{path::Path, process::Command, sync::Mutex, time::Duration};

use crate::{
    Netns, PROTECTED, Proc, REMOTE_ADDR, SYSTEM_PYTHON, TempDir, Topology, run_ok, wait_for,
    write_script,
};

/// How many [`Sshd`]s are running, and whether one of them created
/// `/run/sshd` (removed again when the last one stops).
static SSHD_PRIVSEP: Mutex<(usize, bool)> = Mutex::new((0, false));

/// An sshd in a namespace listening on `addr:port`, with a throwaway host
/// key and a client key (`key`) authorized for root.
pub struct Sshd {
    proc: Proc,
    /// The client's private key (`ssh -i`).
    pub key: String,
    port: u16,
    _dir: TempDir,
}

impl Sshd {
    pub fn start(ns: &Netns, addr: &str, port: u16) -> Self {
        let dir = TempDir::new("sshd");
        let d = dir.path().to_str().expect("utf-8 temp dir").to_owned();
        for key in ["host", "client"] {
            run_ok(Command::new("ssh-keygen").args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &format!("{d}/{key}"),
            ]));
        }
        std::fs::copy(format!("{d}/client.pub"), format!("{d}/authorized_keys"))
            .expect("authorized_keys");
        // sshd insists on its privilege-separation directory.
        {
            let mut privsep = SSHD_PRIVSEP.lock().unwrap_or_else(|e| e.into_inner());
            let dir = Path::new("/run/sshd");
            if privsep.0 == 0 && !dir.exists() {
                std::fs::create_dir_all(dir).expect("creating /run/sshd");
                privsep.1 = true;
            }
            privsep.0 += 1;
        }
        let proc = ns.spawn(
            "/usr/sbin/sshd",
            &[
                "-D",
                "-e",
                "-f",
                "/dev/null",
                "-p",
                &port.to_string(),
                "-h",
                &format!("{d}/host"),
                "-o",
                &format!("ListenAddress={addr}"),
                "-o",
                &format!("AuthorizedKeysFile={d}/authorized_keys"),
                "-o",
                "StrictModes=no",
                "-o",
                "PidFile=none",
                "-o",
                "UsePAM=no",
                "-o",
                "PermitRootLogin=prohibit-password",
                "-o",
                "AllowTcpForwarding=yes",
            ],
        );
        // Constructed before waiting, so a timeout still stops it.
        let sshd = Self {
            proc,
            key: format!("{d}/client"),
            port,
            _dir: dir,
        };
        ns.wait_listening(port);
        sshd
    }

    /// Options for an `ssh` client of this server (key, no host key checks,
    /// no prompts, fail if a forward cannot be set up, the port), to be
    /// followed by the client's own options and `root@ADDR`.
    pub fn client_args(&self) -> Vec<String> {
        [
            "-i",
            &self.key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &self.port.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.proc.kill();
        let mut privsep = SSHD_PRIVSEP.lock().unwrap_or_else(|e| e.into_inner());
        privsep.0 = privsep.0.saturating_sub(1);
        if privsep.0 == 0 && privsep.1 {
            let _ = std::fs::remove_dir("/run/sshd");
            privsep.1 = false;
        }
    }
}

/// A threaded TCP forwarder no catalog names, in Python: `FORWARDER
/// LISTEN_ADDR LISTEN_PORT TARGET_PORT` accepts on the listen address and,
/// per connection, connects to 127.0.0.1:TARGET_PORT before reading, then
/// pumps both ways.
pub const FORWARDER: &str = r#"import socket, sys, threading
def pump(a, b):
    try:
        while d := a.recv(65536): b.sendall(d)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(c):
    try: u = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    except OSError: return c.close()
    threading.Thread(target=pump, args=(c, u), daemon=True).start(); pump(u, c)
l = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True: threading.Thread(target=serve, args=(l.accept()[0],), daemon=True).start()
"#;

/// Starts [`FORWARDER`] in `ns` as `python3 DIR/forwarder.py` (a script
/// file, as interpreters' scripts are matched), listening on
/// `addr`:`port`, relaying to the protected service; returns the process
/// and the script's path.
pub fn spawn_forwarder(ns: &Netns, dir: &TempDir, addr: &str, port: u16) -> (Proc, String) {
    let script = write_script(dir, "forwarder.py", FORWARDER);
    let proc = ns.spawn(
        SYSTEM_PYTHON,
        &[&script, addr, &port.to_string(), &PROTECTED.to_string()],
    );
    ns.wait_listening(port);
    (proc, script)
}

/// Python, arguments MODE ADDR PORT PROGRAM...: listens on `ADDR:PORT`
/// (`SO_REUSEPORT`), forks a child that executes PROGRAM (as pid 1 starts
/// a socket-activated service), and holds the listener until the child
/// exits. What the child is executed with, by MODE: the listener as fd 3
/// (`keep`) or as fd 200 (`high`: systemd 255 and later hand it to their
/// executor at the lowest descriptor pid 1 has free), nothing (`drop`: the
/// listener is close-on-exec), a listener on 127.0.0.1:PORT as fd 3
/// (`loopback`), or as fd 3 a connection to `$PEER`:`$PEER_PORT`, from an
/// ephemeral port (`connected`) or from `ADDR:PORT`, bound with
/// `SO_REUSEPORT` beside the listener (`bound`). The child is killed when
/// this process dies.
pub const HAND_DOWN: &str = r#"
import ctypes, os, signal, socket, sys
mode, addr, port, program = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
listener = socket.create_server((addr, port), reuse_port=True)
peer = lambda: (os.environ["PEER"], int(os.environ["PEER_PORT"]))
def bound():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((addr, port))
    s.connect(peer())
    return s
handed, fd = {
    "keep": lambda: (listener, 3),
    "high": lambda: (listener, 200),
    "drop": lambda: (None, None),
    "loopback": lambda: (socket.create_server(("127.0.0.1", port)), 3),
    "connected": lambda: (socket.create_connection(peer()), 3),
    "bound": lambda: (bound(), 3),
}[mode]()
parent = os.getpid()
pid = os.fork()
if pid == 0:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    if handed is not None:
        if handed.fileno() != fd:
            os.dup2(handed.fileno(), fd)
        os.set_inheritable(fd, True)
    os.execv(program[0], program)
os.waitpid(pid, 0)
"#;

/// Python, arguments TARGET [READY [ADDR PORT]]: serves connections on
/// the listener it was given as fd 3 (or, given ADDR and PORT, on its own
/// there, opened with `SO_REUSEPORT`), connecting to the service on
/// 127.0.0.1:TARGET as soon as it accepts, before it reads the request
/// (so it never has `received` evidence at the connect), and answers what
/// came back, or 502. Creates the file READY once it listens.
pub const FD3_RELAY: &str = r#"
import socket, sys
if len(sys.argv) > 4:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((sys.argv[3], int(sys.argv[4])))
    listener.listen()
else:
    listener = socket.socket(fileno=3)
if len(sys.argv) > 2:
    open(sys.argv[2], "w").close()
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

/// Python, arguments ADDR PORT RELAY ARGS...: binds two sockets to
/// ADDR:PORT with `SO_REUSEADDR` (as a service started twice at once
/// does), listens on the first, has the second's `listen()` fail on the
/// port the first holds (and closes it), and then runs the Python script
/// RELAY in this same process (no exec, which would credit the listener
/// anew) with ARGS and the first as fd 3.
pub const FAILED_LISTEN: &str = r#"
import os, socket, sys
addr, port, relay = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def bound():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    return s
live, failed = bound(), bound()
live.listen()
try:
    failed.listen()
    sys.exit("the second listen() on the port did not fail")
except OSError:
    failed.close()
os.dup2(live.fileno(), 3)
sys.argv = sys.argv[3:]
exec(compile(open(relay).read(), relay, "exec"))
"#;

/// Starts [`FAILED_LISTEN`] in `ns` on `addr`:`port`, running
/// [`FD3_RELAY`] (written to `dir`) on the listener whose twin's listen
/// failed; returns once the relay serves.
pub fn failed_listen_relay(ns: &Netns, dir: &TempDir, addr: &str, port: u16) -> Proc {
    let port = port.to_string();
    let prelude = ["-c", FAILED_LISTEN, addr, &port];
    fd3_relay(ns, dir, "the relay beside a failed listen", &prelude, &[])
}

/// Starts [`HAND_DOWN`] in `ns`, listening on `addr`:`port` and keeping
/// the listener while its child runs [`FD3_RELAY`] (written to `dir`)
/// with it as fd 3, as pid 1 starts a socket-activated service with
/// `Accept=no`; returns once the relay runs (a handshake before its exec
/// is credited to the parent that listened).
pub fn handed_down_relay(ns: &Netns, dir: &TempDir, addr: &str, port: u16) -> Proc {
    handed_down_relay_run_by(ns, dir, addr, port, &[SYSTEM_PYTHON])
}

/// [`handed_down_relay`] whose relay `python` runs: a Python, or a
/// command that executes one (`env PYTHONHOME=/usr COPY` for a copy).
pub fn handed_down_relay_run_by(
    ns: &Netns,
    dir: &TempDir,
    addr: &str,
    port: u16,
    python: &[&str],
) -> Proc {
    let port = port.to_string();
    let hand_down = [&["-c", HAND_DOWN, "keep", addr, &port], python].concat();
    fd3_relay(ns, dir, "the handed-down relay", &hand_down, &[])
}

/// Starts [`FD3_RELAY`] (written to `dir`) in `ns` with a listener of
/// its own on `addr`:`port`, opened with `SO_REUSEPORT` (so several can
/// share the port, as a graceful reload's successor and predecessor do);
/// returns once it listens. `name` tells it apart (its ready file, and a
/// timeout's message).
pub fn reuseport_relay(ns: &Netns, dir: &TempDir, addr: &str, port: u16, name: &str) -> Proc {
    fd3_relay(ns, dir, name, &[], &[addr, &port.to_string()])
}

/// Runs Python in `ns` with `before`, then [`FD3_RELAY`] (written to
/// `dir`) with its target (the protected service), a ready file named
/// after `name`, and `after`; returns once the relay has created the
/// file.
fn fd3_relay(ns: &Netns, dir: &TempDir, name: &str, before: &[&str], after: &[&str]) -> Proc {
    let relay = write_script(dir, "fd3-relay.py", FD3_RELAY);
    let ready = dir.path().join(format!("{name}.ready"));
    let _ = std::fs::remove_file(&ready);
    let (target, ready_arg) = (PROTECTED.to_string(), ready.to_string_lossy());
    let relay_args = [relay.as_str(), &target, &ready_arg];
    let proc = ns.spawn(SYSTEM_PYTHON, &[before, &relay_args, after].concat());
    wait_for(name, Duration::from_secs(10), || {
        ready.exists().then_some(())
    });
    proc
}

/// nginx (`/usr/sbin/nginx`, in the foreground, everything it writes in
/// `dir`) in `ns` as a reverse proxy: listening on `listen` (`ADDR:PORT`),
/// passing every request to the protected service on 127.0.0.1.
pub fn nginx_proxy(ns: &Netns, dir: &TempDir, listen: &str, port: u16) -> Proc {
    let d = dir.path().display();
    let conf = format!(
        r#"
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {listen}:{port};
        location / {{ proxy_pass http://127.0.0.1:{PROTECTED}; }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let proc = ns.spawn(
        "/usr/sbin/nginx",
        &[
            "-p",
            &d.to_string(),
            "-e",
            &format!("{d}/error.log"),
            "-c",
            &conf_path.display().to_string(),
            "-g",
            "daemon off;",
        ],
    );
    ns.wait_listening(port);
    proc
}

/// A remote server (on [`REMOTE_ADDR`]:`argv[2]`) that greets each client
/// with `hello` and closes: what a tunnel client hears before it connects
/// to the local service for a remote user.
const GREETER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
while True:
    c, _ = s.accept()
    c.sendall(b"hello")
    c.close()
"#;

/// Starts [`GREETER`] in the topology's remote namespace on `port`.
pub fn greeter(topo: &Topology, port: u16) -> Proc {
    let proc = topo.remote.spawn(
        SYSTEM_PYTHON,
        &["-c", GREETER, REMOTE_ADDR, &port.to_string()],
    );
    topo.remote.wait_listening(port);
    proc
}
