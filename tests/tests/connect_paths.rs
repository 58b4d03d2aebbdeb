//! Every way a process can start a TCP connect to a protected loopback port
//! goes through the programs: blocking and non-blocking connect(), after a
//! bind() to another loopback source, TCP Fast Open (sendto with
//! MSG_FASTOPEN and the TCP_FASTOPEN_CONNECT option), io_uring (inline and
//! in an io-wq worker), a socket passed with SCM_RIGHTS, a renamed thread and
//! a process in its own pid namespace. Each test refuses the connect from a
//! process a deny rule matches and, in the same test, lets the very same
//! code path through where the rule does not apply.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Stdio},
    thread,
};

use loopwarden_tests::{
    Daemon, Fields, Netns, PROTECTED, SYSTEM_PYTHON, UNPROTECTED, assert_denied_exactly, exe_id,
    exe_name, policy, rule, run_ok,
};
use serde_json::Value;

/// A port nothing listens on in the test namespace (and not protected).
const CLOSED: u16 = 8089;

/// Shared by every script: `attempt` runs a connect and names its outcome
/// (`connected` or the errno's symbolic name), `report` prints `key=value`
/// words on one line.
const PRELUDE: &str = r#"
import ctypes, errno, os, select, socket, sys, threading
def attempt(f):
    try:
        f()
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def report(**kv):
    print(" ".join(f"{k}={v}" for k, v in kv.items()), flush=True)
port = int(sys.argv[1])
"#;

/// Runs `body` (after [`PRELUDE`]) under the system Python in `ns` with
/// `port` as its argument.
fn py(ns: &Netns, body: &str, port: u16) -> Fields {
    let script = format!("{PRELUDE}{body}");
    Fields::of(&run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        &script,
        &port.to_string(),
    ])))
}

/// A deny rule named "python" on the system Python's executable.
fn python_rule() -> String {
    rule("python", "deny", "exe", SYSTEM_PYTHON)
}

/// Waits for the deny record of process `pid` and checks what every such
/// record must say: the protected destination and the process's executable
/// as the kernel identified it (device and inode, file name).
fn expect_deny(daemon: &Daemon, rule: &str, pid: &str, exe: &Path) -> Value {
    let pid: u64 = pid.parse().expect("a pid");
    let ev = daemon.wait_event(&format!("deny of pid {pid} by {rule}"), |e| {
        e["verdict"] == "deny" && e["pid"] == pid
    });
    assert_eq!(ev["rule"], rule, "{ev}");
    assert_eq!(ev["dst"], format!("127.0.0.1:{PROTECTED}"), "{ev}");
    assert_eq!(ev["exe_id"], exe_id(exe), "{ev}");
    assert_eq!(ev["exe_name"], exe_name(exe), "{ev}");
    ev
}

fn python() -> &'static Path {
    Path::new(SYSTEM_PYTHON)
}

const BLOCKING: &str = r#"
s = socket.socket()
report(pid=os.getpid(), result=attempt(lambda: s.connect(("127.0.0.1", port))))
"#;

/// Runs `body` (a connect that reports its `result`) in a namespace of its
/// own: to the protected port before the daemon (connects), then under an
/// enforcing deny rule on Python to the unprotected port (connects) and to
/// the protected one (refused, by the only deny record). Returns that
/// record.
fn refused_with_controls(body: &str) -> Value {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let before = py(&ns, body, PROTECTED);
    assert_eq!(&before["result"], "connected", "control before the daemon");

    let daemon = Daemon::start(&policy(&ns, "enforce", &python_rule()));
    let unprotected = py(&ns, body, UNPROTECTED);
    assert_eq!(
        &unprotected["result"], "connected",
        "control: unprotected port"
    );
    let refused = py(&ns, body, PROTECTED);
    assert_eq!(&refused["result"], "ECONNREFUSED");
    let ev = expect_deny(&daemon, "python", &refused["pid"], python());
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
    ev
}

#[test]
fn blocking_connect_is_refused() {
    let ev = refused_with_controls(BLOCKING);
    assert_eq!(ev["tid"], ev["pid"], "{ev}");
}

/// A blocking connect of an MPTCP socket (`IPPROTO_MPTCP`, 262: what Go
/// programs may use): falls back to plain TCP against a TCP server.
const MPTCP: &str = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
report(pid=os.getpid(), result=attempt(lambda: s.connect(("127.0.0.1", port))))
"#;

/// MPTCP connects are judged like TCP ones: a relay cannot pass by asking
/// for MPTCP. (On Linux 6.18 the hook judges the connect of the MPTCP
/// socket's first subflow, a TCP socket, so this holds even without the
/// hook's own acceptance of `IPPROTO_MPTCP`.) The controls: the same
/// connect before the daemon, and to the unprotected port under it.
#[test]
fn mptcp_connect_is_refused() {
    refused_with_controls(MPTCP);
}

/// A non-blocking connect: what it returned, whether the socket became
/// writable, and SO_ERROR afterwards.
const NONBLOCKING: &str = r#"
s = socket.socket()
s.setblocking(False)
rc = s.connect_ex(("127.0.0.1", port))
out = dict(pid=os.getpid(), connect=errno.errorcode.get(rc, str(rc)) if rc else "0")
if rc == errno.EINPROGRESS:
    _, w, _ = select.select([], [s], [], 5)
    out["writable"] = bool(w)
e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
out["so_error"] = errno.errorcode.get(e, str(e)) if e else "0"
report(**out)
"#;

#[test]
fn nonblocking_connect_is_refused_at_once_not_through_so_error() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    // Controls: a normal non-blocking connect is in progress, then completes.
    let before = py(&ns, NONBLOCKING, PROTECTED);
    assert_eq!(
        (&before["connect"], &before["writable"], &before["so_error"]),
        ("EINPROGRESS", "True", "0"),
        "control before the daemon"
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &python_rule()));
    let unprotected = py(&ns, NONBLOCKING, UNPROTECTED);
    assert_eq!(
        (
            &unprotected["connect"],
            &unprotected["writable"],
            &unprotected["so_error"]
        ),
        ("EINPROGRESS", "True", "0"),
        "control: unprotected port"
    );
    // A port nothing listens on: the refusal comes later, through SO_ERROR.
    let closed = py(&ns, NONBLOCKING, CLOSED);
    assert_eq!(
        (&closed["connect"], &closed["writable"], &closed["so_error"]),
        ("EINPROGRESS", "True", "ECONNREFUSED"),
        "a closed port"
    );
    // loopwarden refuses inside connect() itself, before a SYN exists:
    // connect() fails at once with ECONNREFUSED (never EINPROGRESS), and
    // SO_ERROR is left clear.
    let refused = py(&ns, NONBLOCKING, PROTECTED);
    assert_eq!(&refused["connect"], "ECONNREFUSED", "{refused:?}");
    assert_eq!(refused.get("writable"), None, "{refused:?}");
    assert_eq!(&refused["so_error"], "0", "{refused:?}");
    expect_deny(&daemon, "python", &refused["pid"], python());
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

/// Binds to 127.0.0.5 (any port) before connecting to 127.0.0.1.
const BOUND: &str = r#"
s = socket.socket()
s.bind(("127.0.0.5", 0))
r = attempt(lambda: s.connect(("127.0.0.1", port)))
report(pid=os.getpid(), result=r, src=s.getsockname()[0],
       peer=s.getpeername()[0] if r == "connected" else "-")
"#;

#[test]
fn connect_after_binding_another_loopback_source_is_refused() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let before = py(&ns, BOUND, PROTECTED);
    assert_eq!(
        (&before["result"], &before["src"], &before["peer"]),
        ("connected", "127.0.0.5", "127.0.0.1"),
        "control before the daemon"
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &python_rule()));
    let unprotected = py(&ns, BOUND, UNPROTECTED);
    assert_eq!(
        (&unprotected["result"], &unprotected["src"]),
        ("connected", "127.0.0.5"),
        "control: unprotected port"
    );
    let refused = py(&ns, BOUND, PROTECTED);
    assert_eq!(
        (&refused["result"], &refused["src"]),
        ("ECONNREFUSED", "127.0.0.5")
    );
    expect_deny(&daemon, "python", &refused["pid"], python());
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

/// Enables TCP Fast Open (client and server) in the test namespace only:
/// the sysctl is per network namespace.
fn enable_fast_open(ns: &Netns) {
    run_ok(ns.cmd("sysctl").args(["-w", "net.ipv4.tcp_fastopen=3"]));
    let out = run_ok(ns.cmd("sysctl").args(["-n", "net.ipv4.tcp_fastopen"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
}

/// The connect happens inside sendto(MSG_FASTOPEN) on an unconnected
/// socket; `status` is the HTTP status that came back.
const FASTOPEN_SENDTO: &str = r#"
s = socket.socket()
got = {}
def go():
    got["sent"] = s.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, ("127.0.0.1", port))
    got["status"] = s.recv(64).split()[1].decode()
r = attempt(go)
report(pid=os.getpid(), result=r, sent=got.get("sent", "-"), status=got.get("status", "-"))
"#;

#[test]
fn tcp_fast_open_sendto_is_refused() {
    let ns = Netns::new();
    enable_fast_open(&ns);
    let _servers = ns.http_servers();
    let before = py(&ns, FASTOPEN_SENDTO, PROTECTED);
    assert_eq!(
        (&before["result"], &before["sent"], &before["status"]),
        ("connected", "18", "200"),
        "control before the daemon"
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &python_rule()));
    let unprotected = py(&ns, FASTOPEN_SENDTO, UNPROTECTED);
    assert_eq!(
        (&unprotected["result"], &unprotected["status"]),
        ("connected", "200"),
        "control: unprotected port"
    );
    // sendto() itself fails with ECONNREFUSED; nothing was sent.
    let refused = py(&ns, FASTOPEN_SENDTO, PROTECTED);
    assert_eq!(
        (&refused["result"], &refused["sent"]),
        ("ECONNREFUSED", "-")
    );
    expect_deny(&daemon, "python", &refused["pid"], python());
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

/// TCP_FASTOPEN_CONNECT: connect() returns at once and the SYN would leave
/// with the first write.
const FASTOPEN_CONNECT: &str = r#"
TCP_FASTOPEN_CONNECT = 30
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
got = {}
def go():
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    got["status"] = s.recv(64).split()[1].decode()
report(pid=os.getpid(), result=attempt(go), status=got.get("status", "-"))
"#;

#[test]
fn tcp_fast_open_connect_option_is_refused() {
    let ns = Netns::new();
    enable_fast_open(&ns);
    let _servers = ns.http_servers();
    let before = py(&ns, FASTOPEN_CONNECT, PROTECTED);
    assert_eq!(
        (&before["result"], &before["status"]),
        ("connected", "200"),
        "control before the daemon"
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &python_rule()));
    let unprotected = py(&ns, FASTOPEN_CONNECT, UNPROTECTED);
    assert_eq!(
        (&unprotected["result"], &unprotected["status"]),
        ("connected", "200"),
        "control: unprotected port"
    );
    // The deferred connect is still judged in connect() itself.
    let refused = py(&ns, FASTOPEN_CONNECT, PROTECTED);
    assert_eq!(
        (&refused["result"], &refused["status"]),
        ("ECONNREFUSED", "-")
    );
    expect_deny(&daemon, "python", &refused["pid"], python());
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

/// What one io_uring connect completed with, and which thread submitted it.
struct UringConnect {
    /// The completion's result: 0 or a negative errno.
    result: i32,
    submitter_tid: i32,
}

/// Panics unless io_uring is available to root here.
fn require_io_uring() {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "0".to_owned());
    assert_ne!(
        disabled, "2",
        "io_uring is disabled on this host (kernel.io_uring_disabled = 2)"
    );
}

/// Connects a fresh TCP socket to 127.0.0.1:`port` with IORING_OP_CONNECT,
/// from a thread of this test process that entered `ns` (setns is
/// per-thread for network namespaces). With `in_worker` the request is
/// flagged IOSQE_ASYNC, so an io-wq worker thread runs the connect.
fn uring_connect(ns: &Netns, port: u16, in_worker: bool) -> UringConnect {
    use io_uring::{IoUring, opcode, squeue, types};
    let netns = ns.path();
    let worker = thread::spawn(move || {
        let file = File::open(&netns).unwrap_or_else(|e| panic!("opening {netns}: {e}"));
        // SAFETY: setns(2) on a namespace fd we hold; it moves this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut ring = IoUring::new(4).expect("io_uring_setup");
        let mut sqe = opcode::Connect::new(
            types::Fd(sock.as_raw_fd()),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
        .build()
        .user_data(1);
        if in_worker {
            sqe = sqe.flags(squeue::Flags::ASYNC);
        }
        // SAFETY: `addr` and `sock` outlive the request: we wait for its
        // completion below before either is dropped.
        unsafe { ring.submission().push(&sqe) }.expect("submission queue full");
        ring.submit_and_wait(1).expect("io_uring_enter");
        let cqe = ring.completion().next().expect("a completion");
        assert_eq!(cqe.user_data(), 1);
        UringConnect {
            result: cqe.result(),
            // SAFETY: gettid has no preconditions.
            submitter_tid: unsafe { libc::gettid() },
        }
    });
    worker
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// This test binary, which the io_uring tests' rule names.
fn test_exe() -> PathBuf {
    std::env::current_exe().expect("the test binary's path")
}

/// io_uring connects from this test process, refused by a rule on the test
/// binary itself. Returns the deny record.
fn io_uring_connect_is_refused(in_worker: bool) -> (Value, UringConnect) {
    require_io_uring();
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let before = uring_connect(&ns, PROTECTED, in_worker);
    assert_eq!(before.result, 0, "control before the daemon");

    let exe = test_exe();
    let rule = rule("test-binary", "deny", "exe", &exe.to_string_lossy());
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let unprotected = uring_connect(&ns, UNPROTECTED, in_worker);
    assert_eq!(unprotected.result, 0, "control: unprotected port");
    let refused = uring_connect(&ns, PROTECTED, in_worker);
    assert_eq!(
        refused.result,
        -libc::ECONNREFUSED,
        "the completion carries -ECONNREFUSED"
    );
    let pid = std::process::id().to_string();
    let ev = expect_deny(&daemon, "test-binary", &pid, &exe);
    assert_denied_exactly(&daemon, &[&pid]);
    (ev, refused)
}

#[test]
fn io_uring_connect_is_refused_in_the_submitting_thread() {
    let (ev, refused) = io_uring_connect_is_refused(false);
    // Issued inline, inside io_uring_enter() of the submitting thread.
    assert_eq!(ev["tid"], refused.submitter_tid, "{ev}");
}

#[test]
fn io_uring_connect_is_refused_in_an_io_wq_worker() {
    let (ev, refused) = io_uring_connect_is_refused(true);
    // IOSQE_ASYNC: an io-wq worker thread of this process made the connect.
    // It has its own tid and comm, the process's pid and executable.
    assert_ne!(ev["tid"], refused.submitter_tid, "{ev}");
    assert_ne!(ev["tid"], ev["pid"], "{ev}");
    // Workers are named after the thread that created them.
    assert_eq!(
        ev["comm"],
        format!("iou-wrk-{}", refused.submitter_tid),
        "{ev}"
    );
}

/// One process creates the socket, another connects it after receiving it
/// over a Unix socket (SCM_RIGHTS). argv[2] says which of the two becomes
/// uid 65534 (nobody) first.
const PASSED: &str = r#"
nobody = sys.argv[2]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
child = os.fork()
role = "creator" if child == 0 else "connector"
if role == nobody:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
if role == "creator":
    s = socket.socket()
    socket.send_fds(a, [b"s"], [s.fileno()])
    s.close()
    a.recv(1)
    os._exit(0)
_, fds, _, _ = socket.recv_fds(b, 1, 1)
s = socket.socket(fileno=fds[0])
r = attempt(lambda: s.connect(("127.0.0.1", port)))
b.send(b"k")
os.waitpid(child, 0)
report(creator=child, connector=os.getpid(), uid=os.getuid(), result=r)
"#;

fn passed(ns: &Netns, port: u16, nobody: &str) -> Fields {
    let script = format!("{PRELUDE}{PASSED}");
    Fields::of(&run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        &script,
        &port.to_string(),
        nobody,
    ])))
}

#[test]
fn a_passed_socket_is_judged_by_the_process_that_connects_it() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let daemon = Daemon::start(&policy(
        &ns,
        "enforce",
        &rule("nobody", "deny", "user", "nobody"),
    ));
    // Control: the same hand-over and connect, to a port not protected.
    let unprotected = passed(&ns, UNPROTECTED, "connector");
    assert_eq!(
        (&unprotected["result"], &unprotected["uid"]),
        ("connected", "65534"),
        "control: unprotected port"
    );
    // Created by root, connected by nobody: refused.
    let refused = passed(&ns, PROTECTED, "connector");
    assert_eq!(
        (&refused["result"], &refused["uid"]),
        ("ECONNREFUSED", "65534")
    );
    let ev = expect_deny(&daemon, "nobody", &refused["connector"], python());
    assert_eq!(ev["uid"], 65534, "{ev}");
    // Created by nobody, connected by root: allowed. The identity judged is
    // the connecting process's, not the socket creator's.
    let allowed = passed(&ns, PROTECTED, "creator");
    assert_eq!((&allowed["result"], &allowed["uid"]), ("connected", "0"));
    assert_denied_exactly(&daemon, &[&refused["connector"]]);
}

/// Connects from a second thread that renamed itself to argv[2].
const THREAD: &str = r#"
out = {}
def work():
    ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME
    tid = threading.get_native_id()
    out["tid"] = tid
    out["thread_comm"] = open(f"/proc/self/task/{tid}/comm").read().strip()
    s = socket.socket()
    out["result"] = attempt(lambda: s.connect(("127.0.0.1", port)))
t = threading.Thread(target=work)
t.start()
t.join()
report(pid=os.getpid(), process_comm=open("/proc/self/comm").read().strip(), **out)
"#;

fn thread_connect(ns: &Netns, port: u16, name: &str) -> Fields {
    let script = format!("{PRELUDE}{THREAD}");
    Fields::of(&run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        &script,
        &port.to_string(),
        name,
    ])))
}

#[test]
fn a_connect_from_a_renamed_thread_is_refused() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let before = thread_connect(&ns, PROTECTED, "lw-worker");
    assert_eq!(&before["result"], "connected", "control before the daemon");
    let daemon = Daemon::start(&policy(&ns, "enforce", &python_rule()));
    let unprotected = thread_connect(&ns, UNPROTECTED, "lw-worker");
    assert_eq!(
        &unprotected["result"], "connected",
        "control: unprotected port"
    );
    let refused = thread_connect(&ns, PROTECTED, "lw-worker");
    assert_eq!(
        (
            &refused["result"],
            &refused["thread_comm"],
            &refused["process_comm"]
        ),
        ("ECONNREFUSED", "lw-worker", "python3")
    );
    assert_ne!(refused["tid"], refused["pid"]);
    let ev = expect_deny(&daemon, "python", &refused["pid"], python());
    // The record names the thread that connected, by its own tid and name.
    assert_eq!(ev["tid"].to_string(), &refused["tid"], "{ev}");
    assert_eq!(ev["comm"], "lw-worker", "{ev}");
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

/// Connects, reports, then waits for stdin to close (so the test can look
/// at the process while it still exists).
const PIDNS: &str = r#"
s = socket.socket()
r = attempt(lambda: s.connect(("127.0.0.1", port)))
report(pid=os.getpid(), ppid=os.getppid(), result=r)
sys.stdin.read()
"#;

/// `unshare --pid --fork --mount-proc python3` in `ns`: killed on drop (and
/// with it the python, through `--kill-child`).
struct InPidns {
    child: Child,
    stdin: Option<ChildStdin>,
    line: String,
}

impl InPidns {
    /// Starts the script and reads its report. With `hold`, the python
    /// waits until [`InPidns::release`] (or drop); otherwise it exits.
    fn run(ns: &Netns, port: u16, hold: bool) -> Self {
        let script = format!("{PRELUDE}{PIDNS}");
        let mut child = ns
            .cmd("unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                SYSTEM_PYTHON,
                "-c",
                &script,
                &port.to_string(),
            ])
            .stdin(if hold { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting unshare");
        let stdin = child.stdin.take();
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        Self { child, stdin, line }
    }

    fn fields(&self) -> std::collections::HashMap<&str, &str> {
        self.line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect()
    }

    fn release(&mut self) {
        // EOF on its stdin ends the python, then unshare.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for InPidns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_process_in_its_own_pid_namespace_is_refused_and_reported_by_its_host_pid() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let mut before = InPidns::run(&ns, PROTECTED, false);
    assert_eq!(
        before.fields().get("result"),
        Some(&"connected"),
        "control before the daemon: {}",
        before.line
    );
    before.release();
    let daemon = Daemon::start(&policy(&ns, "enforce", &python_rule()));
    let mut unprotected = InPidns::run(&ns, UNPROTECTED, false);
    assert_eq!(
        unprotected.fields().get("result"),
        Some(&"connected"),
        "control: unprotected port: {}",
        unprotected.line
    );
    unprotected.release();

    let mut refused = InPidns::run(&ns, PROTECTED, true);
    let f = refused.fields();
    // Inside its namespace the python is pid 1 and has no visible parent.
    assert_eq!(
        (f.get("pid"), f.get("ppid"), f.get("result")),
        (Some(&"1"), Some(&"0"), Some(&"ECONNREFUSED")),
        "{}",
        refused.line
    );
    let ev = daemon.wait_event("deny in the pid namespace", |e| {
        e["verdict"] == "deny" && e["rule"] == "python"
    });
    // The record carries host (initial namespace) pids: the python's, whose
    // NSpid line lists it first and 1 in its own namespace, and as ppid the
    // unshare process the test started (ip netns exec execs it).
    let pid = ev["pid"].as_u64().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| v.split_whitespace().collect::<Vec<_>>());
    assert_eq!(nspid, Some(vec![pid.to_string().as_str(), "1"]), "{ev}");
    assert_eq!(ev["ppid"], refused.child.id(), "{ev}");
    assert_eq!(ev["tid"], ev["pid"], "{ev}");
    assert_eq!(ev["exe_id"], exe_id(python()), "{ev}");
    // Read from /proc by the daemon while the process lives.
    assert_eq!(
        ev["exe"],
        std::fs::canonicalize(python())
            .expect("realpath")
            .to_string_lossy()
            .as_ref(),
        "{ev}"
    );
    assert_eq!(ev["parent_exe"], "/usr/bin/unshare", "{ev}");
    refused.release();
    assert_denied_exactly(&daemon, &[&pid.to_string()]);
}
