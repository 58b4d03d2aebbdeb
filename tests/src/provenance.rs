//! Helpers of the provenance tests: a service that accepts and holds
//! connections and asks the kernel (`getsockopt(SOL_LOOPWARDEN,
//! LW_ORIGIN)`) about each, clients that hold a connection open (one that
//! exits while a forked child keeps the socket), and ways to ask the daemon:
//! `loopwarden who` / `loopwarden conns` and the raw query socket, run in a
//! namespace as a chosen uid.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::{Netns, Proc, SYSTEM_PYTHON, TempDir, loopwarden_bin, run, wait_for, write_script};

/// A service on `127.0.0.1:PORT` and `[::1]:PORT` for every port given
/// (`holder.py OUT PORT...`) that accepts, never answers, and closes only
/// when the client does.
/// For each accepted connection it appends one JSON line to OUT: the
/// addresses as it sees them (`peer`, `local`), its `SO_COOKIE`, and what
/// `getsockopt(0x4c57, 1, 1024)` said (its `len`, `status`, `server_uid`,
/// `tgid`, `server_cookie`, `verdict`, `rule`, `via_kind`; `errno` if the call
/// failed). On SIGUSR1 it asks again for every connection it holds and
/// appends those lines too, marked `"reask": true`.
const HOLDER: &str = r#"import json, os, select, signal, socket, struct, sys
out = open(sys.argv[1], "a")
listeners = []
for port in sys.argv[2:]:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(256)
        listeners.append(s)
def name(addr):
    return ("[%s]:%d" if ":" in addr[0] else "%s:%d") % addr[:2]
def describe(c):
    line = {"peer": name(c.getpeername()), "local": name(c.getsockname()),
            "cookie": struct.unpack("=Q", c.getsockopt(socket.SOL_SOCKET, 57, 8))[0]}
    try:
        rec = c.getsockopt(0x4c57, 1, 1024)
        line.update(len=len(rec), status=rec[8], server_uid=struct.unpack_from("=I", rec, 12)[0],
                    server_cookie=struct.unpack_from("=Q", rec, 24)[0],
                    tgid=struct.unpack_from("=I", rec, 152)[0],
                    verdict=rec[176], rule=rec[177], via_kind=rec[258])
    except OSError as e:
        line["errno"] = e.errno
    return line
held = []
def reask(*_):
    for c in held:
        out.write(json.dumps(dict(describe(c), reask=True)) + "\n")
    out.flush()
signal.signal(signal.SIGUSR1, reask)
while True:
    for r in select.select(listeners + held, [], [])[0]:
        if r not in listeners:
            # Requests are never answered; the client's close is, with ours.
            if not r.recv(65536):
                held.remove(r)
                r.close()
            continue
        c, _ = r.accept()
        held.append(c)
        out.write(json.dumps(describe(c)) + "\n")
        out.flush()
"#;

/// Connects to `ADDR PORT` (from `ADDR:FROM` if given) and holds the
/// connection until killed.
const HOLD_CLIENT: &str = r#"import socket, sys, time
src = (sys.argv[1], int(sys.argv[3])) if len(sys.argv) > 3 else None
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), source_address=src)
while True: time.sleep(3600)
"#;

/// Connects to `ADDR PORT`, forks a child that keeps the socket (and
/// nothing else) open, prints `pid=PARENT child=CHILD port=LOCAL_PORT` and
/// exits: the connection outlives the process that made it.
const FORK_CLIENT: &str = r#"import os, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
child = os.fork()
if child == 0:
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2): os.dup2(devnull, fd)
    while True: time.sleep(3600)
print("pid=%d child=%d port=%d" % (os.getpid(), child, s.getsockname()[1]), flush=True)
os._exit(0)
"#;

/// Sends each line of stdin to the query socket `argv[1]` and prints each
/// answer line, reading while it writes (so a flood of requests never
/// deadlocks on full socket buffers); a missing answer prints nothing. A
/// daemon silent for 60 s fails it (a timeout), not the suite's time limit.
const RAW_QUERY: &str = r#"import socket, sys, threading
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
lines = sys.stdin.buffer.read()
def send():
    try:
        s.sendall(lines)
        s.shutdown(socket.SHUT_WR)
    except OSError: pass
threading.Thread(target=send, daemon=True).start()
try:
    for answer in s.makefile("rb"):
        sys.stdout.buffer.write(answer)
except ConnectionResetError:
    pass  # closed by the daemon with requests unread (after too-long)
"#;

/// The holding service ([`HOLDER`]) and what it has accepted.
pub struct Holder {
    _proc: Proc,
    out: PathBuf,
    dir: TempDir,
}

impl Holder {
    /// Starts it in `ns` on `ports`, as `uid` (through `setpriv`) if given.
    pub fn start(ns: &Netns, ports: &[u16], uid: Option<u32>) -> Self {
        let dir = TempDir::new("holder");
        make_world_readable(dir.path());
        let script = write_script(&dir, "holder.py", HOLDER);
        let out = dir.path().join("accepted.jsonl");
        std::fs::write(&out, "").expect("creating the holder's output");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666))
            .expect("chmod the holder's output");
        let mut args: Vec<String> = vec![script, out.display().to_string()];
        args.extend(ports.iter().map(u16::to_string));
        let proc = Proc::spawn(as_uid(ns, uid, SYSTEM_PYTHON).args(&args));
        for port in ports {
            ns.wait_listening(*port);
        }
        Self {
            _proc: proc,
            out,
            dir,
        }
    }

    /// What it accepted so far, oldest first.
    pub fn accepted(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l.get("reask").is_none())
            .collect()
    }

    /// Asks getsockopt again for every connection it holds (`held` of
    /// them), now: the answers, one per connection, oldest first.
    pub fn reask(&self, held: usize) -> Vec<Value> {
        let reasked = |lines: Vec<Value>| -> Vec<Value> {
            lines
                .into_iter()
                .filter(|l| l.get("reask").is_some())
                .collect()
        };
        let before = reasked(self.lines()).len();
        // SAFETY: kill(2) on the holder's pid.
        let rc = unsafe { libc::kill(self._proc.pid() as i32, libc::SIGUSR1) };
        assert_eq!(rc, 0, "signalling the holder");
        wait_for("the holder to ask again", Duration::from_secs(10), || {
            let now = reasked(self.lines());
            (now.len() >= before + held).then(|| now[before..].to_vec())
        })
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until it has accepted `count` connections; returns the last.
    pub fn wait_accepted(&self, count: usize) -> Value {
        wait_for(
            &format!("connection #{count} accepted by the holding service"),
            Duration::from_secs(10),
            || self.accepted().get(count - 1).cloned(),
        )
    }

    /// Starts [`HOLD_CLIENT`] in `ns`, connecting to `addr`:`port`.
    pub fn hold_client(&self, ns: &Netns, addr: &str, port: u16) -> Proc {
        self.hold(ns, &[addr, &port.to_string()])
    }

    /// [`Holder::hold_client`] from local port `from`.
    pub fn hold_client_from(&self, ns: &Netns, addr: &str, port: u16, from: u16) -> Proc {
        self.hold(ns, &[addr, &port.to_string(), &from.to_string()])
    }

    /// Starts [`HOLD_CLIENT`] in `ns` with `args`.
    fn hold(&self, ns: &Netns, args: &[&str]) -> Proc {
        let script = write_script(&self.dir, "hold_client.py", HOLD_CLIENT);
        let mut argv = vec![script.as_str()];
        argv.extend_from_slice(args);
        ns.spawn(SYSTEM_PYTHON, &argv)
    }

    /// [`fork_client`] with the holder's scratch directory.
    pub fn fork_client(&self, ns: &Netns, addr: &str, port: u16) -> ForkedClient {
        fork_client(ns, &self.dir, addr, port)
    }
}

/// A client whose connecting process has exited while its child keeps
/// the socket open; the child is killed on drop.
pub struct ForkedClient {
    /// The process that connected (gone).
    pub pid: u32,
    /// The child holding the socket.
    pub child: u32,
    /// The client's local port.
    pub port: u16,
}

impl Drop for ForkedClient {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of the child the client left behind.
        unsafe { libc::kill(self.child as i32, libc::SIGKILL) };
    }
}

/// Runs [`FORK_CLIENT`] (written to `dir`) in `ns` against `addr`:`port`.
pub fn fork_client(ns: &Netns, dir: &TempDir, addr: &str, port: u16) -> ForkedClient {
    let script = write_script(dir, "fork_client.py", FORK_CLIENT);
    let out = crate::run_ok(
        ns.cmd(SYSTEM_PYTHON)
            .args([&script, addr, &port.to_string()]),
    );
    let fields = crate::Fields::of(&out);
    ForkedClient {
        pid: fields["pid"].parse().expect("pid"),
        child: fields["child"].parse().expect("child"),
        port: fields["port"].parse().expect("port"),
    }
}

/// Lets other uids read (and traverse) `dir`.
fn make_world_readable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the test directory");
}

/// `program` in `ns`, as `uid` (and the same gid, no groups) if given.
pub fn as_uid(ns: &Netns, uid: Option<u32>, program: &str) -> Command {
    match uid {
        None => ns.cmd(program),
        Some(uid) => {
            let id = uid.to_string();
            let mut cmd = ns.cmd("setpriv");
            cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", program]);
            cmd
        }
    }
}

/// `loopwarden ARGS --run-dir RUN_DIR` in `ns`, as `uid` if given.
pub fn loopwarden(ns: &Netns, uid: Option<u32>, run_dir: &Path, args: &[&str]) -> Output {
    run(
        as_uid(ns, uid, loopwarden_bin().to_str().expect("utf-8 path"))
            .args(args)
            .arg("--run-dir")
            .arg(run_dir),
    )
}

/// `loopwarden who PEER LOCAL --json` in `ns` as `uid`: the origin, or the
/// exit code and stderr (exit 1, unknown, prints `null`).
pub fn who(
    ns: &Netns,
    uid: Option<u32>,
    run_dir: &Path,
    peer: &str,
    local: &str,
) -> Result<Value, (i32, String)> {
    let out = loopwarden(ns, uid, run_dir, &["who", peer, local, "--json"]);
    match out.status.code() {
        Some(0) => Ok(serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("who printed no JSON ({e}): {out:?}"))),
        code => {
            if code == Some(1) {
                assert_eq!(out.stdout, b"null\n", "{out:?}");
            }
            Err((
                code.unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    }
}

/// `loopwarden conns --json` in `ns` as `uid`: the origins listed (none
/// when it exits 1, which it must do exactly when there are none).
pub fn conns(ns: &Netns, uid: Option<u32>, run_dir: &Path) -> Vec<Value> {
    let out = loopwarden(ns, uid, run_dir, &["conns", "--json"]);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("conns printed no JSON array ({e}): {out:?}"));
    let want = if listed.is_empty() { 1 } else { 0 };
    assert_eq!(out.status.code(), Some(want), "{out:?}");
    listed
}

/// Sends `requests` (lines, newline added) to the query socket of
/// `run_dir` from `ns` as `uid`, on one connection; the answers.
pub fn raw_query(ns: &Netns, uid: Option<u32>, run_dir: &Path, requests: &[String]) -> Vec<Value> {
    raw_query_by(as_uid(ns, uid, SYSTEM_PYTHON), run_dir, requests)
}

/// Sends `requests` as [`raw_query`] does, from root in the host's
/// network namespace (this process's).
pub fn raw_query_from_host(run_dir: &Path, requests: &[String]) -> Vec<Value> {
    raw_query_by(Command::new(SYSTEM_PYTHON), run_dir, requests)
}

/// Sends `requests` as [`raw_query`] does, as `uid` in the host's network
/// namespace.
pub fn raw_query_from_host_as(uid: u32, run_dir: &Path, requests: &[String]) -> Vec<Value> {
    let id = uid.to_string();
    let mut python = Command::new("setpriv");
    python.args([
        "--reuid",
        &id,
        "--regid",
        &id,
        "--clear-groups",
        SYSTEM_PYTHON,
    ]);
    raw_query_by(python, run_dir, requests)
}

/// [`raw_query`] by `python`, a command that runs Python.
fn raw_query_by(mut python: Command, run_dir: &Path, requests: &[String]) -> Vec<Value> {
    let socket = run_dir.join("query.sock");
    let mut child = python
        .args(["-c", RAW_QUERY])
        .arg(&socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the raw query client");
    let mut input = requests.join("\n");
    input.push('\n');
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("writing the requests");
    }
    let out = child.wait_with_output().expect("the raw query client");
    assert!(out.status.success(), "the raw query client failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("answer {l:?}: {e}")))
        .collect()
}

/// The inode of `ns`'s namespace file, as the daemon names namespaces.
pub fn netns_inode(ns: &Netns) -> u64 {
    std::fs::metadata(ns.path()).expect("stat the netns").ino()
}
