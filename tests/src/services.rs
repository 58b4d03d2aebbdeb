//! Real services the relay tests start in a namespace: an sshd for port
//! forwards, a Python forwarder no catalog names, nginx as a reverse proxy,
//! a remote server a tunnel client hears from.

use std::{path::Path, process::Command, sync::Mutex};

use crate::{
    Netns, PROTECTED, Proc, REMOTE_ADDR, SYSTEM_PYTHON, TempDir, Topology, run_ok, write_script,
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
