//! Helpers of the ident responder's tests (`tests/ident.rs`): a raw RFC
//! 1413 client, processes that hold connections open, and a PostgreSQL
//! server with `ident` authentication, all inside a test's namespace.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Netns, Proc, SYSTEM_PYTHON, TempDir, provenance::as_uid, run, run_ok, wait_for};

/// The ident port the responder serves in the tests' namespaces.
pub const IDENT_PORT: u16 = 113;

/// The responder's line naming `user` for the ports `here`, `there`.
pub fn user_reply(here: impl std::fmt::Display, there: u16, user: &str) -> String {
    format!("{here} , {there} : USERID : UNIX : {user}\r\n")
}

/// The responder's error line `token` for the ports `here`, `there`.
pub fn error_reply(
    here: impl std::fmt::Display,
    there: impl std::fmt::Display,
    token: &str,
) -> String {
    format!("{here} , {there} : ERROR : {token}\r\n")
}

/// What a raw ident client read.
#[derive(Debug)]
pub struct Exchange {
    /// Everything the responder sent.
    pub replies: String,
    /// Whether the responder closed the connection (the client read EOF);
    /// false: the client gave up waiting.
    pub closed: bool,
}

impl Exchange {
    /// The reply lines, each with its CR-LF.
    pub fn lines(&self) -> Vec<&str> {
        self.replies.split_inclusive('\n').collect()
    }
}

/// A raw ident client: connects to `server` (`HOST PORT`), sends `chunks`
/// one `send()` each, half-closes its side when `half_close`, then reads
/// until the responder closes (or a generous safety limit: `closed` is
/// then false).
const CLIENT: &str = r#"import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
for chunk in sys.argv[4:]:
    s.sendall(bytes.fromhex(chunk))
if sys.argv[3] == "half-close":
    s.shutdown(socket.SHUT_WR)
data, status = b"", "TIMEOUT"
try:
    while d := s.recv(4096):
        data += d
    status = "EOF"
except socket.timeout:
    pass
print(status)
print(data.hex())
"#;

/// Runs [`CLIENT`] in `ns` against the responder at `host`.
pub fn ident_exchange(ns: &Netns, host: &str, chunks: &[&[u8]], half_close: bool) -> Exchange {
    ident_exchange_as(ns, (host, IDENT_PORT), chunks, half_close, None)
}

/// [`ident_exchange`] with whatever listens at `at` (the responder, or a
/// relay in front of it), as `uid` (and its gid, no groups), when given.
pub fn ident_exchange_as(
    ns: &Netns,
    (host, port): (&str, u16),
    chunks: &[&[u8]],
    half_close: bool,
    uid: Option<u32>,
) -> Exchange {
    let hex: Vec<String> = chunks
        .iter()
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let out = run_ok(
        as_uid(ns, uid, SYSTEM_PYTHON)
            .args(["-c", CLIENT, host, &port.to_string()])
            .arg(if half_close { "half-close" } else { "wait" })
            .args(&hex),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let closed = lines.next() == Some("EOF");
    let hex = lines.next().unwrap_or("");
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok())
        .collect();
    Exchange {
        replies: String::from_utf8_lossy(&bytes).into_owned(),
        closed,
    }
}

/// One query (CR-LF appended) on its own connection, the client closing
/// its side after it: the reply line.
pub fn ident_query(ns: &Netns, host: &str, query: &str) -> String {
    ident_query_as(ns, host, query, None)
}

/// [`ident_query`] asked as `uid`, when given.
pub fn ident_query_as(ns: &Netns, host: &str, query: &str, uid: Option<u32>) -> String {
    ident_query_at(ns, (host, IDENT_PORT), query, uid)
}

/// [`ident_query_as`] of whatever listens at `at` (a relay in front of
/// the responder).
pub fn ident_query_at(ns: &Netns, at: (&str, u16), query: &str, uid: Option<u32>) -> String {
    let line = format!("{query}\r\n");
    let exchange = ident_exchange_as(ns, at, &[line.as_bytes()], true, uid);
    assert!(exchange.closed, "the responder kept {exchange:?} open");
    exchange.replies
}

/// A client of the responder at 127.0.0.1 that first listens on
/// `0.0.0.0:argv[1]` (so loopwarden knows it as network-facing: `listening`
/// evidence), then asks `argv[2]` and prints the reply.
const LISTENING_CLIENT: &str = r#"import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(1)
s = socket.create_connection(("127.0.0.1", 113), timeout=10)
s.sendall((sys.argv[2] + "\r\n").encode())
s.shutdown(socket.SHUT_WR)
data = b""
while d := s.recv(4096):
    data += d
sys.stdout.write(data.decode())
"#;

/// [`ident_query_as`] from a process listening on `0.0.0.0:listen` (a
/// network-facing server, as loopwarden's relay evidence knows one).
pub fn ident_query_listening(ns: &Netns, query: &str, uid: Option<u32>, listen: u16) -> String {
    let out = run_ok(as_uid(ns, uid, SYSTEM_PYTHON).args([
        "-c",
        LISTENING_CLIENT,
        &listen.to_string(),
        query,
    ]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client that trickles digits at the responder at `host`, one byte every
/// 0.1 s for up to 4 s (never a whole query), reading between them: what
/// it saw, `EOF` (the responder closed it), `DATA` (it answered something)
/// or `OPEN` (it kept the client all along).
pub fn trickle(ns: &Netns, host: &str) -> String {
    const SCRIPT: &str = r#"import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.setblocking(False)
status = "OPEN"
for i in range(40):
    try:
        s.send(b"1")
        time.sleep(0.1)
        if s.recv(4096) == b"":
            status = "EOF"
        else:
            status = "DATA"
        break
    except BlockingIOError:
        pass
    except (BrokenPipeError, ConnectionResetError):
        status = "EOF"
        break
print(status)
"#;
    let out = run_ok(
        ns.cmd(SYSTEM_PYTHON)
            .args(["-c", SCRIPT, host, &IDENT_PORT.to_string()]),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A client that sends an invalid query to the responder at `host`, reads
/// its reply up to the responder's FIN, then goes on sending a byte every
/// 0.1 s for up to 4 s: `CLOSED` once its sends are refused (the responder
/// closed the connection), or `OPEN` (it kept reading them all along).
pub fn trickle_after_refusal(ns: &Netns, host: &str) -> String {
    const SCRIPT: &str = r#"import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(b"abc\r\n")
while s.recv(4096):
    pass
status = "OPEN"
for i in range(40):
    try:
        s.send(b"1")
    except (BrokenPipeError, ConnectionResetError):
        status = "CLOSED"
        break
    time.sleep(0.1)
print(status)
"#;
    let out = run_ok(
        ns.cmd(SYSTEM_PYTHON)
            .args(["-c", SCRIPT, host, &IDENT_PORT.to_string()]),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A server on `port` (all addresses) that accepts connections and keeps
/// them open, so the connections stay in `LW_CONNS`.
pub fn holding_server(ns: &Netns, port: u16) -> Proc {
    holding_server_as(ns, port, None)
}

/// [`holding_server`] run as `uid`, when given.
pub fn holding_server_as(ns: &Netns, port: u16, uid: Option<u32>) -> Proc {
    holding(ns, port, uid, None)
}

/// [`holding_server`] started as root that becomes `uid` (and its gid, no
/// groups) once it listens, as servers that bind a port as root do: its
/// listener stays root's, each socket it accepts is `uid`'s.
pub fn holding_server_dropping_to(ns: &Netns, port: u16, uid: u32) -> Proc {
    holding(ns, port, None, Some(uid))
}

/// A [`holding_server`] run as `uid`, that becomes `drop_to` once it
/// listens.
fn holding(ns: &Netns, port: u16, uid: Option<u32>, drop_to: Option<u32>) -> Proc {
    let drop = drop_to.map_or(String::new(), |to| {
        format!("os.setgroups([]); os.setgid({to}); os.setuid({to})")
    });
    let script = format!(
        r#"import os, socket
s = socket.create_server(("::", {port}), family=socket.AF_INET6, dualstack_ipv6=True)
{drop}
held = []
while True:
    held.append(s.accept()[0])
"#
    );
    let server = Proc::spawn(as_uid(ns, uid, SYSTEM_PYTHON).args(["-c", &script]));
    ns.wait_listening(port);
    server
}

/// A client that connects to `host`:`port` from `ns` (as `uid`, when
/// given) and keeps the connection open; `local_port` reports its end.
pub struct HeldConnection {
    _proc: Proc,
    /// The client's local port.
    pub local_port: u16,
}

impl HeldConnection {
    pub fn open(ns: &Netns, dir: &TempDir, host: &str, port: u16, uid: Option<u32>) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = dir.path().join(format!("held-{n}.port"));
        std::fs::write(&out, "").expect("creating the port file");
        // Writable by the client whatever user it runs as.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666))
            .expect("chmod the port file");
        let script = r#"import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
open(sys.argv[3], "w").write("%d\n" % c.getsockname()[1])
while True:
    time.sleep(3600)
"#;
        let path = out.display().to_string();
        let port_text = port.to_string();
        let args = ["-c", script, host, &port_text, &path];
        let proc = Proc::spawn(as_uid(ns, uid, SYSTEM_PYTHON).args(args));
        let local_port = wait_for(
            &format!("a connection to {host}:{port}"),
            Duration::from_secs(10),
            || std::fs::read_to_string(&out).ok()?.trim().parse().ok(),
        );
        Self {
            _proc: proc,
            local_port,
        }
    }
}

/// The local port of the established connection to `port` in `ns` whose
/// process has the command name `comm` (from `ss -p`).
pub fn connection_port_of(ns: &Netns, comm: &str, port: u16) -> u16 {
    wait_for(
        &format!("{comm}'s connection to port {port}"),
        Duration::from_secs(10),
        || {
            let out = run(ns.cmd("ss").args([
                "-Htnp",
                "state",
                "established",
                &format!("dport = :{port}"),
            ]));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .find(|line| line.contains(&format!("((\"{comm}\"")))
                .and_then(|line| line.split_whitespace().nth(2))
                .and_then(|local| local.rsplit(':').next())
                .and_then(|p| p.parse().ok())
        },
    )
}

/// The OS user PostgreSQL runs as, and that its clients connect as.
pub const PG_USER: &str = "postgres";

/// The numeric uid of the user `name`.
pub fn uid_of(name: &str) -> u32 {
    let out = run_ok(Command::new("id").args(["-u", name]));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("id -u {name} printed no uid"))
}

/// `setpriv` arguments that run the rest as [`PG_USER`].
fn as_pg_user() -> [&'static str; 7] {
    [
        "setpriv",
        "--reuid",
        PG_USER,
        "--regid",
        PG_USER,
        "--init-groups",
        "--",
    ]
}

/// The newest installed PostgreSQL server's `bin` directory.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (cargo xtask setup --tests)")
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/*/bin/postgres (cargo xtask setup --tests)")
}

/// A PostgreSQL server in a test namespace, listening on 127.0.0.1:`port`,
/// its data and sockets in a temporary directory; `host` connections
/// authenticate with `ident`. Shut down (fast) on drop, then its directory
/// is removed.
pub struct Postgres {
    server: Option<Child>,
    bin: PathBuf,
    port: u16,
    /// Removed once the server is gone (fields drop after `drop`).
    dir: TempDir,
}

impl Postgres {
    pub fn start(ns: &Netns, port: u16) -> Self {
        let bin = pg_bin();
        let dir = TempDir::new("pg");
        let owner = uid_of(PG_USER);
        std::os::unix::fs::chown(dir.path(), Some(owner), None).expect("chown the PG dir");
        let data = dir.path().join("data");
        run_ok(
            Command::new(as_pg_user()[0])
                .args(&as_pg_user()[1..])
                .arg(bin.join("initdb"))
                .args(["--no-sync", "--no-instructions", "-U", PG_USER, "-D"])
                .arg(&data)
                .current_dir(dir.path()),
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 ident\n",
        )
        .expect("writing pg_hba.conf");
        let mut cmd = ns.cmd(as_pg_user()[0]);
        cmd.args(&as_pg_user()[1..])
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "logging_collector=on", "-c", "log_filename=pg.log"])
            .arg("-c")
            .arg(format!("log_directory={}", dir.path().display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?} failed: {e}"));
        let pg = Self {
            server: Some(server),
            bin,
            port,
            dir,
        };
        ns.wait_listening(port);
        pg
    }

    /// `psql -h 127.0.0.1 -p PORT -U postgres -c 'select 1'` in `ns`, run
    /// as the OS user `postgres`: `Ok(stdout)` or `Err(stderr)`.
    pub fn select_one(&self, ns: &Netns, port: u16) -> Result<String, String> {
        let out = run(ns
            .cmd(as_pg_user()[0])
            .args(&as_pg_user()[1..])
            .arg(self.bin.join("psql"))
            .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", PG_USER, "-d", "postgres", "-c", "select 1"])
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(self.dir.path()));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        // SIGINT: fast shutdown (backends end, shared memory is released).
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
}
