//! The kernel matcher itself, driven through the real programs: rules with
//! several criteria, value lists, `allow` and `audit` actions, first match
//! wins, `comm` (a thread's or its process's name), `parent_exe`,
//! `ancestor_exe` and `cgroup`. Each refusal has a positive control in the
//! same test: the same code path, from a process the rule does not match.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use loopwarden_tests::{
    AS_NOBODY, Daemon, Fields, Netns, PROTECTED, SYSTEM_PYTHON, TempDir, TestCgroup,
    assert_denied_exactly, exe_id, exe_name, policy, rule, run, run_ok, write_script,
};
use serde_json::Value;

/// Connects to 127.0.0.1:argv[1] and prints who it is and what happened,
/// including its parent's executable (to check the process tree's shape).
const CONNECT: &str = r#"
import errno, os, socket, sys
port = int(sys.argv[1])
s = socket.socket()
try:
    s.connect(("127.0.0.1", port))
    r = "connected"
except OSError as e:
    r = errno.errorcode.get(e.errno, str(e.errno))
try:
    parent = os.readlink(f"/proc/{os.getppid()}/exe")
except OSError:
    parent = "?"  # not ours to read (running as another user)
print(f"pid={os.getpid()} ppid={os.getppid()} uid={os.getuid()} "
      f"parent={parent} result={r}", flush=True)
"#;

/// Runs argv[1:] as a child and exits with its status: a process that is
/// the parent of whatever it is given.
const SPAWN: &str = r#"
import subprocess, sys
sys.exit(subprocess.run(sys.argv[1:]).returncode)
"#;

/// Names its main thread argv[2] (the process's name), then connects from
/// the main thread (argv[3] = "-") or from a second thread named argv[3].
const COMM: &str = r#"
import ctypes, errno, os, socket, sys, threading
port, process_name, thread_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
prctl = ctypes.CDLL(None).prctl
PR_SET_NAME = 15
prctl(PR_SET_NAME, process_name.encode(), 0, 0, 0)
out = {}
def connect():
    if thread_name != "-":
        prctl(PR_SET_NAME, thread_name.encode(), 0, 0, 0)
    tid = threading.get_native_id()
    out["tid"] = tid
    out["thread_comm"] = open(f"/proc/self/task/{tid}/comm").read().strip()
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        out["result"] = "connected"
    except OSError as e:
        out["result"] = errno.errorcode.get(e.errno, str(e.errno))
if thread_name == "-":
    connect()
else:
    t = threading.Thread(target=connect)
    t.start()
    t.join()
out["process_comm"] = open("/proc/self/comm").read().strip()
print(f"pid={os.getpid()} " + " ".join(f"{k}={v}" for k, v in out.items()), flush=True)
"#;

/// A test's scripts, written to its own temporary directory.
struct Scripts {
    dir: TempDir,
    connect: String,
    spawn: String,
    comm: String,
}

impl Scripts {
    fn new() -> Self {
        let dir = TempDir::new("matcher");
        let connect = write_script(&dir, "connect.py", CONNECT);
        let spawn = write_script(&dir, "spawn.py", SPAWN);
        let comm = write_script(&dir, "comm.py", COMM);
        Self {
            dir,
            connect,
            spawn,
            comm,
        }
    }

    /// A copy of the system Python's executable named `name` (a different
    /// inode and file name; it still finds its standard library).
    fn python_copy(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::copy(
            std::fs::canonicalize(SYSTEM_PYTHON).expect("resolving python"),
            &path,
        )
        .expect("copying python");
        path
    }
}

fn python() -> &'static Path {
    Path::new(SYSTEM_PYTHON)
}

/// Runs `argv` inside `ns` and parses the script's report.
fn in_ns(ns: &Netns, argv: &[&str]) -> Fields {
    Fields::of(&run(ns.cmd(argv[0]).args(&argv[1..])))
}

fn port(p: u16) -> String {
    p.to_string()
}

/// Waits for the record of process `pid` with `verdict` by `rule`.
fn expect_record(daemon: &Daemon, verdict: &str, rule: &str, pid: &str) -> Value {
    let pid: u64 = pid.parse().expect("a pid");
    let ev = daemon.wait_event(&format!("{verdict} of pid {pid}"), |e| {
        e["pid"] == pid && e["verdict"] == verdict
    });
    assert_eq!(ev["rule"], rule, "{ev}");
    assert_eq!(ev["dst"], format!("127.0.0.1:{PROTECTED}"), "{ev}");
    ev
}

/// Panics unless the deny records are exactly the processes in `pids`.

#[test]
fn a_rule_with_two_criteria_matches_only_when_both_do() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    let rule = format!(
        "[[rule]]\nname = \"python-as-nobody\"\naction = \"deny\"\nexe = \"{SYSTEM_PYTHON}\"\nuid = 65534\n"
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let p = port(PROTECTED);
    // Only the executable matches: python as root.
    let root = in_ns(&ns, &[SYSTEM_PYTHON, &s.connect, &p]);
    assert_eq!((&root["result"], &root["uid"]), ("connected", "0"));
    // Only the uid matches: curl as nobody.
    let curl = ns.curl_as_nobody(&format!("http://127.0.0.1:{PROTECTED}/"));
    assert!(
        curl.status.success(),
        "curl as nobody: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    // Both: python as nobody.
    let mut argv = AS_NOBODY.to_vec();
    argv.extend([SYSTEM_PYTHON, &s.connect, &p]);
    let nobody = in_ns(&ns, &argv);
    assert_eq!(
        (&nobody["result"], &nobody["uid"]),
        ("ECONNREFUSED", "65534")
    );
    let ev = expect_record(&daemon, "deny", "python-as-nobody", &nobody["pid"]);
    assert_eq!(ev["uid"], 65534, "{ev}");
    assert_eq!(ev["exe_id"], exe_id(python()), "{ev}");
    assert_denied_exactly(&daemon, &[&nobody["pid"]]);
}

#[test]
fn a_value_list_matches_any_of_its_values() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    // Three executables running the same script, differing only by file name.
    let b = s.python_copy("lw-py-b");
    let c = s.python_copy("lw-py-c");
    let rule = format!(
        "[[rule]]\nname = \"two-names\"\naction = \"deny\"\nexe_name = [\"{}\", \"lw-py-b\"]\n",
        exe_name(python())
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let p = port(PROTECTED);
    let control = in_ns(&ns, &[&c.to_string_lossy(), &s.connect, &p]);
    assert_eq!(
        &control["result"], "connected",
        "control: a name not listed"
    );
    let first = in_ns(&ns, &[SYSTEM_PYTHON, &s.connect, &p]);
    assert_eq!(&first["result"], "ECONNREFUSED", "the first value");
    let second = in_ns(&ns, &[&b.to_string_lossy(), &s.connect, &p]);
    assert_eq!(&second["result"], "ECONNREFUSED", "the second value");
    let ev = expect_record(&daemon, "deny", "two-names", &first["pid"]);
    assert_eq!(ev["exe_name"], exe_name(python()), "{ev}");
    let ev = expect_record(&daemon, "deny", "two-names", &second["pid"]);
    assert_eq!(ev["exe_name"], "lw-py-b", "{ev}");
    assert_eq!(ev["exe_id"], exe_id(&b), "{ev}");
    assert_denied_exactly(&daemon, &[&first["pid"], &second["pid"]]);
}

/// socat's one-shot connect to the protected port, optionally as nobody.
fn socat_connect(ns: &Netns, as_nobody: bool) -> (bool, String) {
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let socat = ["socat", "-T", "3", "-u", "OPEN:/dev/null", &target];
    let out = if as_nobody {
        run(ns.cmd(AS_NOBODY[0]).args(&AS_NOBODY[1..]).args(socat))
    } else {
        run(ns.cmd(socat[0]).args(&socat[1..]))
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_allow_rule_before_a_deny_wins_first_match() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    // Rule order: allow root's socat, then a user rule that would deny it,
    // then the catalog (which denies every socat).
    let rules = "[[rule]]\nname = \"root-socat\"\naction = \"allow\"\nexe_name = \"socat\"\nuid = 0\n\n\
                 [[rule]]\nname = \"later-deny\"\naction = \"deny\"\nexe_name = \"socat\"\nuid = 0\n";
    // log_allowed: an allowed connect is reported too, naming the rule.
    let daemon = Daemon::start(&format!(
        "log_allowed = true\n{}",
        policy(&ns, "enforce", rules)
    ));
    let (ok, stderr) = socat_connect(&ns, false);
    assert!(ok, "root's socat was refused: {stderr}");
    let allowed = daemon.wait_event("allow of root's socat", |e| {
        e["verdict"] == "allow" && e["exe_name"] == "socat"
    });
    assert_eq!(allowed["rule"], "root-socat", "{allowed}");
    assert_eq!(allowed["uid"], 0, "{allowed}");
    // The allow rule does not cover nobody: the catalog refuses.
    let (ok, stderr) = socat_connect(&ns, true);
    assert!(!ok, "nobody's socat got through");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    let denied = daemon.wait_event("deny of nobody's socat", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "socat"
    });
    assert_eq!(denied["rule"], "catalog:socat", "{denied}");
    assert_eq!(denied["uid"], 65534, "{denied}");
    // The later user rule never decided anything.
    assert!(
        daemon.events().iter().all(|e| e["rule"] != "later-deny"),
        "{:#?}",
        daemon.events()
    );
}

#[test]
fn an_audit_rule_reports_and_allows() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    let rule = rule("watch-python", "audit", "exe", SYSTEM_PYTHON);
    // Enforce mode, catalog on: refusals are live, audit rules still allow.
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let audited = in_ns(&ns, &[SYSTEM_PYTHON, &s.connect, &port(PROTECTED)]);
    assert_eq!(&audited["result"], "connected");
    let ev = expect_record(&daemon, "audit", "watch-python", &audited["pid"]);
    assert_eq!(ev["exe_id"], exe_id(python()), "{ev}");
    // The same daemon does refuse what a deny rule matches.
    let (ok, stderr) = socat_connect(&ns, false);
    assert!(!ok && stderr.contains("Connection refused"), "{stderr}");
    daemon.wait_event("deny of socat", |e| {
        e["verdict"] == "deny" && e["rule"] == "catalog:socat"
    });
    assert!(
        daemon
            .events()
            .iter()
            .filter(|e| e["rule"] == "watch-python")
            .all(|e| e["verdict"] == "audit"),
        "{:#?}",
        daemon.events()
    );
}

/// Runs the comm script: process named `process`, connecting from the main
/// thread (`thread` = "-") or from a thread named `thread`.
fn comm_connect(ns: &Netns, s: &Scripts, process: &str, thread: &str) -> Fields {
    in_ns(
        ns,
        &[SYSTEM_PYTHON, &s.comm, &port(PROTECTED), process, thread],
    )
}

fn comm_rule(value: &str) -> String {
    rule("by-comm", "deny", "comm", value)
}

#[test]
fn a_comm_rule_matches_a_process_renamed_in_its_main_thread() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    let daemon = Daemon::start(&policy(&ns, "enforce", &comm_rule("lw-relay")));
    let control = comm_connect(&ns, &s, "lw-other", "-");
    assert_eq!(
        (&control["result"], &control["process_comm"]),
        ("connected", "lw-other"),
        "control: another name"
    );
    let refused = comm_connect(&ns, &s, "lw-relay", "-");
    assert_eq!(
        (&refused["result"], &refused["process_comm"]),
        ("ECONNREFUSED", "lw-relay")
    );
    let ev = expect_record(&daemon, "deny", "by-comm", &refused["pid"]);
    assert_eq!(ev["comm"], "lw-relay", "{ev}");
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

#[test]
fn a_comm_rule_matches_the_connecting_threads_name() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    let daemon = Daemon::start(&policy(&ns, "enforce", &comm_rule("lw-thread")));
    // Control: same process name, a thread with another name.
    let control = comm_connect(&ns, &s, "lw-proc", "lw-thread-z");
    assert_eq!(
        (&control["result"], &control["thread_comm"]),
        ("connected", "lw-thread-z"),
        "control: another thread name"
    );
    // Process "lw-proc", its worker thread "lw-thread" connects.
    let refused = comm_connect(&ns, &s, "lw-proc", "lw-thread");
    assert_eq!(
        (
            &refused["result"],
            &refused["thread_comm"],
            &refused["process_comm"]
        ),
        ("ECONNREFUSED", "lw-thread", "lw-proc")
    );
    assert_ne!(refused["tid"], refused["pid"]);
    let ev = expect_record(&daemon, "deny", "by-comm", &refused["pid"]);
    assert_eq!(ev["tid"].to_string(), &refused["tid"], "{ev}");
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

/// Fails until the kernel matches `comm` against the process's name (the
/// thread-group leader's comm) as well as the calling thread's.
#[test]
fn comm_rule_matches_the_process_name_from_any_thread() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    let daemon = Daemon::start(&policy(&ns, "enforce", &comm_rule("lw-proc")));
    // Control: another process name, the same thread name.
    let control = comm_connect(&ns, &s, "lw-other", "lw-thread");
    assert_eq!(
        (&control["result"], &control["process_comm"]),
        ("connected", "lw-other"),
        "control: another process name"
    );
    // The main thread of "lw-proc".
    let main = comm_connect(&ns, &s, "lw-proc", "-");
    assert_eq!(&main["result"], "ECONNREFUSED", "from the main thread");
    expect_record(&daemon, "deny", "by-comm", &main["pid"]);
    // A worker thread "lw-thread" of process "lw-proc".
    let worker = comm_connect(&ns, &s, "lw-proc", "lw-thread");
    assert_eq!(
        (&worker["thread_comm"], &worker["process_comm"]),
        ("lw-thread", "lw-proc")
    );
    assert_eq!(
        &worker["result"], "ECONNREFUSED",
        "a thread of process lw-proc (the rule's comm) got through"
    );
    let ev = expect_record(&daemon, "deny", "by-comm", &worker["pid"]);
    assert_eq!(ev["tid"].to_string(), &worker["tid"], "{ev}");
    assert_denied_exactly(&daemon, &[&main["pid"], &worker["pid"]]);
}

/// `bash -c "<argv>; exit $?"`: bash forks (no exec optimization for a
/// command list), so bash is the parent.
fn under_bash(argv: &[&str]) -> Vec<String> {
    vec![
        "/usr/bin/bash".to_owned(),
        "-c".to_owned(),
        format!("{}; exit $?", argv.join(" ")),
    ]
}

#[test]
fn a_parent_exe_rule_matches_the_direct_parent_only() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    let rule = rule("python-parent", "deny", "parent_exe", SYSTEM_PYTHON);
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let p = port(PROTECTED);
    let connect = [SYSTEM_PYTHON, s.connect.as_str(), p.as_str()];
    let python_real = std::fs::canonicalize(python()).expect("realpath");
    let python_real = python_real.to_string_lossy();

    // Control: bash -> python.
    let bash: Vec<String> = under_bash(&connect);
    let bash: Vec<&str> = bash.iter().map(String::as_str).collect();
    let control = in_ns(&ns, &bash);
    assert_eq!(
        (&control["result"], &control["parent"]),
        ("connected", "/usr/bin/bash"),
        "control: a bash parent"
    );
    // python -> bash -> python: python is only the grandparent.
    let mut grand = vec![SYSTEM_PYTHON, s.spawn.as_str()];
    grand.extend(&bash);
    let grandchild = in_ns(&ns, &grand);
    assert_eq!(
        (&grandchild["result"], &grandchild["parent"]),
        ("connected", "/usr/bin/bash"),
        "a python grandparent is not a parent"
    );
    // python -> python.
    let mut child = vec![SYSTEM_PYTHON, s.spawn.as_str()];
    child.extend(connect);
    let refused = in_ns(&ns, &child);
    assert_eq!(
        (&refused["result"], &refused["parent"]),
        ("ECONNREFUSED", python_real.as_ref())
    );
    let ev = expect_record(&daemon, "deny", "python-parent", &refused["pid"]);
    assert_eq!(ev["ppid"].to_string(), &refused["ppid"], "{ev}");
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

#[test]
fn an_ancestor_exe_rule_matches_a_grandparent() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    // A private copy: no process outside the test can have it as an ancestor.
    let gp = s.python_copy("lw-grandparent");
    let gp = gp.to_string_lossy();
    let rule = rule("under-gp", "deny", "ancestor_exe", &gp);
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let p = port(PROTECTED);
    let bash = under_bash(&[SYSTEM_PYTHON, &s.connect, &p]);
    let bash: Vec<&str> = bash.iter().map(String::as_str).collect();

    // Control: the same tree under the system python.
    let mut tree = vec![SYSTEM_PYTHON, s.spawn.as_str()];
    tree.extend(&bash);
    let control = in_ns(&ns, &tree);
    assert_eq!(
        (&control["result"], &control["parent"]),
        ("connected", "/usr/bin/bash"),
        "control: another grandparent"
    );
    // lw-grandparent -> bash -> python.
    tree[0] = &*gp;
    let refused = in_ns(&ns, &tree);
    assert_eq!(
        (&refused["result"], &refused["parent"]),
        ("ECONNREFUSED", "/usr/bin/bash")
    );
    let ev = expect_record(&daemon, "deny", "under-gp", &refused["pid"]);
    assert_eq!(ev["exe_id"], exe_id(python()), "{ev}");
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}

#[test]
fn a_cgroup_rule_matches_a_shell_moved_into_the_cgroup() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let s = Scripts::new();
    let matched = TestCgroup::new(&format!("lwt-{}-match", std::process::id()));
    let other = TestCgroup::new(&format!("lwt-{}-other", std::process::id()));
    // A path below the cgroup root (rules.rs covers the bare-name form).
    let rule = rule("in-cgroup", "deny", "cgroup", &format!("/{}", matched.name));
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    // The shell joins the cgroup first: inside `ip netns exec` /sys is
    // remounted and the cgroup tree is not visible.
    let in_cgroup = |cg: &TestCgroup| {
        let script = format!(
            "echo $$ > {} && exec ip netns exec {} {SYSTEM_PYTHON} {} {PROTECTED}",
            cg.procs().display(),
            ns.name(),
            s.connect
        );
        Fields::of(&run_ok(Command::new("sh").args(["-c", &script])))
    };
    let control = in_cgroup(&other);
    assert_eq!(&control["result"], "connected", "control: a sibling cgroup");
    let refused = in_cgroup(&matched);
    assert_eq!(&refused["result"], "ECONNREFUSED");
    let ev = expect_record(&daemon, "deny", "in-cgroup", &refused["pid"]);
    // The cgroup id the kernel read is the cgroup directory's inode.
    let id = std::fs::metadata(&matched.path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("stat the test cgroup");
    assert_eq!(ev["cgroup_id"], id, "{ev}");
    assert_denied_exactly(&daemon, &[&refused["pid"]]);
}
