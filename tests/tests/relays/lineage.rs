//! Relays known by what they run and where they come from: an interpreted
//! script a rule names (past the interpreter's options, never a module or
//! code), a catalogued tunnel's children, the evidence a forked child
//! inherits and an exec clears, none that a process with a dead one's
//! pid could inherit, and a dead listener's accepts credited to the
//! process holding its listener now.

use loopwarden_tests::{listener_tgids, talk::Talker};

use super::*;
use crate::kinds::forwarder;

/// Item 4: an interpreter's script is known from exec, shown in the
/// relay's events, and a rule can name it.
#[test]
fn a_script_rule_names_an_interpreted_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    // Relay detection off: only a rule can refuse the forwarder. A script
    // rule naming another file does not match it (the positive control).
    let other = rule("scripted", "deny", "script", "/nonexistent/other.py");
    let daemon = Daemon::start(
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("audit")
            .extra(&other)
            .text(),
    );
    let relay = forwarder(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200));
    let ev = daemon.wait_event("the forwarder's relay audit", |e| {
        e["rule"] == "relay" && relay.is_its(e)
    });
    let script = ev["script"].as_str().unwrap_or_default().to_owned();
    assert!(script.ends_with("/forwarder.py"), "{ev:#}");
    // The next daemon adopts the pinned maps, and with them what the
    // kernel learnt at the forwarder's exec.
    let install = daemon.install().clone();
    drop(daemon);

    let named = rule("scripted", "deny", "script", &script);
    let daemon = Daemon::start_in(
        &install,
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("allow")
            .extra(&named)
            .text(),
        &[],
    );
    assert!(
        relay.fetch(&topo).is_err(),
        "a forwarder named by its script got through"
    );
    let ev = daemon.wait_event("the script rule's refusal", |e| {
        e["verdict"] == "deny" && relay.is_its(e)
    });
    assert_eq!(ev["rule"], "scripted", "{ev:#}");
    assert_eq!(ev["script"], script.as_str(), "{ev:#}");
}

/// A script is the first operand past the interpreter's options, and `-m`
/// or `-c` mean none: with rules naming the script file, the module name
/// and the code, the file run plainly, run after `-u -B`, and run by an
/// interpreter whose `argv[0]` is a path longer than one read of it (as a
/// shebang in a Nix store names its interpreter) is refused by the
/// script's rule, while the same file imported as a module (`-m ask`) or
/// by code (`-c "import ask"`) is served. Without the daemon all five are
/// served. The long `argv[0]` fails against a build that gives up on an
/// `argv[0]` of 63 bytes or more.
#[test]
fn a_script_is_read_past_the_interpreters_options_and_m_or_c_mean_none() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("script-options");
    let ask = write_script(&dir, "ask.py", ASK);
    let port = PROTECTED.to_string();
    // The interpreter by a path of about 200 bytes, through a symlink.
    let long_dir = dir.path().join("d".repeat(90)).join("e".repeat(90));
    std::fs::create_dir_all(&long_dir).expect("the long directory");
    let long_python = long_dir.join("python3");
    std::os::unix::fs::symlink(SYSTEM_PYTHON, &long_python).expect("the long symlink");
    let long_python = long_python.to_str().expect("utf-8 path").to_owned();
    let asked = || -> Vec<String> {
        [
            (SYSTEM_PYTHON, vec![ask.as_str(), &port]),
            (SYSTEM_PYTHON, vec!["-u", "-B", &ask, &port]),
            (&long_python, vec![ask.as_str(), &port]),
            (SYSTEM_PYTHON, vec!["-m", "ask", &port]),
            (SYSTEM_PYTHON, vec!["-c", "import ask", &port]),
        ]
        .iter()
        .flat_map(|(python, args)| printed(ns.cmd(python).args(args).current_dir(dir.path())))
        .collect()
    };
    assert_eq!(asked(), ["status 200"; 5]);

    let daemon = script_rules_alone(
        &ns,
        &[
            rule("by-file", "deny", "script", &ask),
            rule("by-module", "deny", "script", "ask"),
            rule("by-code", "deny", "script", "import ask"),
        ],
    );
    assert_eq!(
        asked(),
        [
            "error 111",
            "error 111",
            "error 111",
            "status 200",
            "status 200"
        ]
    );
    for ev in &refusals(&daemon, 3) {
        assert_eq!(ev["rule"], "by-file", "{ev:#}");
        assert_eq!(ev["script"], ask.as_str(), "{ev:#}");
    }
}

/// An option's value is never taken for the script: `python3 -W decoy.py
/// ask.py` runs `ask.py` (Python ignores the bad filter), so a rule naming
/// `decoy.py` must not match it, nor may one naming `ask.py` (which
/// argument is the script cannot be told from the command line alone:
/// Python's `-d` takes none); `python3 -Wignore ask.py`, the value
/// attached, is `ask.py`'s. Without the daemon both are served. Fails
/// against a build that takes an option's value for the script (the
/// decoy's rule refused the first).
#[test]
fn an_options_value_is_never_taken_for_the_script() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("script-values");
    let ask = write_script(&dir, "ask.py", ASK);
    let decoy = write_script(&dir, "decoy.py", ASK);
    let port = PROTECTED.to_string();
    let asked = || -> Vec<String> {
        [
            vec!["-W", decoy.as_str(), &ask, &port],
            vec!["-Wignore", &ask, &port],
        ]
        .iter()
        .flat_map(|args| printed(ns.cmd(SYSTEM_PYTHON).args(args).current_dir(dir.path())))
        .collect()
    };
    assert_eq!(asked(), ["status 200"; 2]);

    let daemon = script_rules_alone(
        &ns,
        &[
            rule("by-decoy", "deny", "script", &decoy),
            rule("by-file", "deny", "script", &ask),
        ],
    );
    assert_eq!(asked(), ["status 200", "error 111"]);
    for ev in &refusals(&daemon, 1) {
        assert_eq!(ev["rule"], "by-file", "{ev:#}");
        assert_eq!(ev["script"], ask.as_str(), "{ev:#}");
    }
}

/// A daemon enforcing `rules` alone in `ns`: no catalog, no relay verdict.
fn script_rules_alone(ns: &Netns, rules: &[String]) -> Daemon {
    let policy = Policy::new(ns, "enforce")
        .catalog(false)
        .relay("allow")
        .extra(&rules.concat());
    Daemon::start(&policy.text())
}

/// The daemon's refusals, once there are exactly `n` of them.
fn refusals(daemon: &Daemon, n: usize) -> Vec<Value> {
    wait_for("the refusals", Duration::from_secs(10), || {
        let found: Vec<Value> = daemon
            .events()
            .into_iter()
            .filter(|e| e["verdict"] == "deny")
            .collect();
        (found.len() == n).then_some(found)
    })
}

/// A shell named as VS Code's tunnel (`code-tunnel`, a catalog entry
/// marked `children`) in `dir`: its path.
fn code_tunnel(dir: &TempDir) -> String {
    let tunnel = dir.path().join("code-tunnel");
    std::fs::copy("/bin/bash", &tunnel).expect("copying bash");
    tunnel.to_str().expect("utf-8 temp dir").to_owned()
}

/// A catalog entry marked `children` (VS Code's `code-tunnel`) also
/// matches what the tunnel runs: the kernel's lineage passes through fork
/// and exec. A plain shell running the same client is the control.
#[test]
fn a_catalogued_tunnels_children_are_matched_through_lineage() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("lineage");
    let tunnel = code_tunnel(&dir);
    let client = format!(
        "curl -sS -o /dev/null --max-time 5 -w %{{http_code}} http://127.0.0.1:{PROTECTED}/"
    );
    let before = run(ns.cmd(&tunnel).args(["-c", &client]));
    assert!(
        before.status.success(),
        "the tunnel's child without the daemon: {before:?}"
    );
    let daemon = Daemon::start(&Policy::new(&ns, "enforce").relay("allow").text());
    let plain = run(ns.cmd("/bin/bash").args(["-c", &client]));
    assert!(
        plain.status.success(),
        "a shell's curl was refused: {plain:?}"
    );
    let child = run(ns.cmd(&tunnel).args(["-c", &client]));
    assert!(
        !child.status.success(),
        "the tunnel's child curl got through"
    );
    let ev = daemon.wait_event("the child's refusal", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "curl"
    });
    assert_eq!(ev["rule"], "catalog:code-tunnel", "{ev:#}");
}

/// Executes `argv[1:]` from a thread other than the main one (as Go's
/// `syscall.Exec` may): the kernel's exec ends every other thread, the
/// main one included, and the executing thread takes over the pid.
const EXEC_FROM_A_THREAD: &str = r#"
import os, sys, threading
t = threading.Thread(target=lambda: os.execv(sys.argv[1], sys.argv[1:]))
t.start()
t.join()
"#;

/// The lineage survives an exec from a thread other than the main one:
/// under a catalogued tunnel (`code-tunnel`, `children`), a Python process
/// that executes curl from a thread has curl refused as the tunnel's
/// (`catalog:code-tunnel`); a plain shell running the same Python is
/// served (the control), and so is the tunnel's without the daemon. Fails
/// against a build that ends a process's tracking when its main thread
/// exits (the exec's end of the main thread took the lineage with it).
#[test]
fn the_lineage_survives_an_exec_from_another_thread() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("thread-exec");
    let tunnel = code_tunnel(&dir);
    let url = format!("http://127.0.0.1:{PROTECTED}/");
    let client = format!(
        "{SYSTEM_PYTHON} -c '{EXEC_FROM_A_THREAD}' /usr/bin/curl -sS -o /dev/null --max-time 5 {url}"
    );
    let ask = |shell: &str| run(ns.cmd(shell).args(["-c", &client])).status.success();
    assert!(ask(&tunnel), "the tunnel's child without the daemon");
    let daemon = Daemon::start(&Policy::new(&ns, "enforce").relay("allow").text());
    assert!(ask("/bin/bash"), "a shell's curl was refused");
    assert!(
        !ask(&tunnel),
        "the tunnel's curl, executed from a thread, got through"
    );
    let ev = daemon.wait_event("the refusal", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "curl"
    });
    assert_eq!(ev["rule"], "catalog:code-tunnel", "{ev:#}");
}

/// Asks the service on 127.0.0.1:`argv[1]` once and prints what it got
/// (a script file: see [`LISTEN_THEN_ASK`]).
const ASK: &str = concat!(
    ask_py!(),
    r#"
print(ask(int(sys.argv[1])))
"#
);

/// Listens on `ADDR:PORT` (network-facing from then on), then has the
/// service asked twice: by a forked child running the [`ASK`] script file
/// in place, and by a program a forked child executes (the interpreter
/// running that script file, so the process keeps an entry for its script
/// after the exec); prints `forked ...` and `executed ...`.
const LISTEN_THEN_ASK: &str = r#"
import os, socket, subprocess, sys
addr, port, ask, target = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
listener = socket.create_server((addr, port))
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.dup2(w, 1)
    sys.argv = [ask, target]
    exec(open(ask).read())
    sys.stdout.flush()
    os._exit(0)
os.close(w)
os.waitpid(child, 0)
print("forked", os.read(r, 64).decode().strip(), flush=True)
run = subprocess.run([sys.executable, ask, target], capture_output=True, text=True)
print("executed", run.stdout.strip(), flush=True)
"#;

const LISTENER_PORT: u16 = 9016;

/// A forked child starts with its parent's evidence, and an executed
/// program starts with none (a login shell that sshd starts is not sshd):
/// a process listening on the link address has a forked child ask the
/// service (refused as a relay, `relay = "deny"`, catalog off) and a
/// program it executes ask it (served). Without the daemon both are
/// served.
#[test]
fn a_forked_child_carries_its_parents_evidence_and_an_exec_clears_it() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("lineage");
    let ask = write_script(&dir, "ask.py", ASK);
    let asked = || {
        printed(topo.local.cmd(SYSTEM_PYTHON).args([
            "-c",
            LISTEN_THEN_ASK,
            LOCAL_ADDR,
            &LISTENER_PORT.to_string(),
            &ask,
            &PROTECTED.to_string(),
        ]))
    };
    assert_eq!(asked(), ["forked status 200", "executed status 200"]);

    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    assert_eq!(asked(), ["forked error 111", "executed status 200"]);
    let ev = relay_refusal(&daemon, "the forked child's refusal");
    assert_eq!(ev["via_how"], "listening", "{ev:#}");
}

/// Python for the pid-reuse scripts: `in_child(work)` runs `work` in a
/// forked child and returns its pid and what it returned;
/// `in_reused_pid(pid, work)` forks such children (writing `ns_last_pid`
/// before each) until one gets `pid`, and prints `reused ...` with what it
/// returned (or `not reused`).
macro_rules! reuse_py {
    () => {
        r#"
import time
def in_child(work):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, work().encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    return pid, out
def in_reused_pid(pid, work):
    # Another task on the host may take the pid between a write and its
    # fork (a busy host forks all the time; a daemon's idle worker thread
    # lives for seconds): while one holds it, wait rather than spend the
    # tries, and after a miss back off a little, so that a burst of forks
    # elsewhere passes.
    deadline = time.monotonic() + 60
    tries = held = 0
    while tries < 1000 and time.monotonic() < deadline:
        if os.path.exists(f"/proc/{pid}"):
            held += 1
            time.sleep(0.05)
            continue
        tries += 1
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        again, out = in_child(work)
        if again == pid:
            print("reused", out, flush=True)
            return
        time.sleep(0.001 * (tries % 20))
    print(f"not reused ({tries} tries, held by another {held} times)", flush=True)
"#
    };
}

/// Has a forked child listen on `ADDR:PORT` (network-facing from then on)
/// and ask the service on 127.0.0.1:`TARGET`, and once it has exited,
/// forks children that ask it until one gets the dead child's pid back
/// (written to `ns_last_pid` before each fork); prints `listener ...` and
/// `reused ...` (or `not reused`). This process has no state of its own
/// in `LW_PROCS` (no script, no evidence), so a forked child starts with
/// none: only what the dead child's pid left behind could give it any. No
/// child executes anything (an exec starts a process's evidence over).
const REUSE_A_LISTENERS_PID: &str = concat!(
    ask_py!(),
    reuse_py!(),
    r#"
addr, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def listen_and_ask():
    listener = socket.create_server((addr, port))
    return ask(target)
pid, out = in_child(listen_and_ask)
print("listener", out, flush=True)
in_reused_pid(pid, lambda: ask(target))
"#
);

const REUSED_LISTENER_PORT: u16 = 9017;

/// A process's evidence ends with it (`lw_exit`): a process that gets a
/// dead relay's pid back starts with none. A forked child listening on the
/// link address is refused as a relay (`relay = "deny"`, catalog off);
/// after it exits, a child forked with its pid asks the service and is
/// served. Without the daemon both are served. A build whose exit leaves
/// the entry refuses the second one too.
#[test]
fn a_process_that_reuses_a_dead_relays_pid_starts_without_its_evidence() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let asked = || {
        printed(topo.local.cmd(SYSTEM_PYTHON).args([
            "-c",
            REUSE_A_LISTENERS_PID,
            LOCAL_ADDR,
            &REUSED_LISTENER_PORT.to_string(),
            &PROTECTED.to_string(),
        ]))
    };
    assert_eq!(asked(), ["listener status 200", "reused status 200"]);

    let policy = relay_deny(&topo.local);
    let daemon = Daemon::start(&policy.text());
    assert_eq!(asked(), ["listener error 111", "reused status 200"]);
    let ev = relay_refusal(&daemon, "the listener's refusal");
    assert_eq!(ev["via_how"], "listening", "{ev:#}");
}

/// Python, arguments ADDR PORT TARGET: a forked child listens on
/// `ADDR:PORT`, hands the listener to a child of its own (which holds it
/// until the script ends) and exits, a daemon's parent that listened,
/// forked and left; `pid` is its pid.
macro_rules! hand_over_py {
    () => {
        r#"
addr, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held_r, held_w = os.pipe()
pid = os.fork()
if pid == 0:
    listener = socket.create_server((addr, port))
    if os.fork() == 0:
        # The holder: keeps the listener until the script's end closes the pipe.
        os.close(held_w)
        os.read(held_r, 1)
        os._exit(0)
    os._exit(0)
os.close(held_r)
os.waitpid(pid, 0)
"#
    };
}

/// A handed-over listener ([`hand_over_py`]) whose pid is reused after the
/// remote side connects: says `listened PID`, waits for a line (the remote
/// side connects meanwhile), then asks the service from a child forked
/// with that pid, executing nothing.
const HAND_OVER_A_LISTENER: &str = concat!(
    ask_py!(),
    reuse_py!(),
    hand_over_py!(),
    r#"
print("listened", pid, flush=True)
sys.stdin.readline()
in_reused_pid(pid, lambda: ask(target))
"#
);

/// A handed-over listener ([`hand_over_py`]) whose pid is reused before
/// the remote side connects, run from a file, so that it has an entry in
/// `LW_PROCS` (its script) which forked children inherit: children are
/// forked until one gets the pid back (each with the script's entry); that
/// one says `holding PID`, waits for a line (the remote side connects to
/// the held listener meanwhile) and asks the service.
const HOLD_THEN_REUSE: &str = concat!(
    ask_py!(),
    reuse_py!(),
    hand_over_py!(),
    r#"
def hold_then_ask():
    if os.getpid() != pid:
        return "skipped"
    print("holding", pid, flush=True)
    sys.stdin.readline()
    return ask(target)
in_reused_pid(pid, hold_then_ask)
"#
);

/// Runs a hand-over script (`script` and its arguments before ADDR PORT
/// TARGET) in `topo`'s local namespace with the listener on `port`: its
/// first line must start with `first`; then a remote client's handshake
/// completes on the held listener, and the script's last line (`reused
/// ...`) is returned.
fn hand_over_round(topo: &Topology, script: &[&str], port: u16, first: &str) -> String {
    hand_over(topo, script, port, first, |_| ()).1
}

/// [`hand_over_round`], running `before` with the script's pid between its
/// first line and the remote client's connect: the script's pid and its
/// last line.
fn hand_over(
    topo: &Topology,
    script: &[&str],
    port: u16,
    first: &str,
    before: impl FnOnce(u32),
) -> (u32, String) {
    let mut talker = Talker::spawn(
        topo.local.cmd(SYSTEM_PYTHON).args(script).args([
            LOCAL_ADDR,
            &port.to_string(),
            &PROTECTED.to_string(),
        ]),
        "the hand-over script",
    );
    let line = talker.line();
    assert!(line.starts_with(first), "{line}");
    before(talker.pid());
    let connect = format!(
        "import socket; socket.create_connection(('{LOCAL_ADDR}', {port}), timeout=3).close()"
    );
    run_ok(topo.remote.cmd(SYSTEM_PYTHON).args(["-c", &connect]));
    (talker.pid(), talker.ask("go"))
}

/// The relay verdict is on: a process listening on the link address asking
/// the service is refused (the positive control of the hand-over tests).
fn assert_a_listener_is_refused(topo: &Topology, daemon: &Daemon) {
    let listener = printed(topo.local.cmd(SYSTEM_PYTHON).args([
        "-c",
        REUSE_A_LISTENERS_PID,
        LOCAL_ADDR,
        &REUSED_LISTENER_PORT.to_string(),
        &PROTECTED.to_string(),
    ]));
    assert_eq!(listener[0], "listener error 111", "{listener:?}");
    relay_refusal(daemon, "the listener's refusal");
}

const HANDED_OVER_PORT: u16 = 9018;

/// A connection accepted on a listener whose listening process has exited
/// gives no evidence to its pid: a process that takes that pid afterwards,
/// executing nothing, asks the service and is served. A build that wrote
/// the `accepted` evidence under the dead pid (making a new entry) refused
/// it as a relay. Without the daemon it is served too.
#[test]
fn an_accept_on_a_listener_whose_process_exited_gives_its_pid_no_evidence() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let round = || {
        hand_over_round(
            &topo,
            &["-c", HAND_OVER_A_LISTENER],
            HANDED_OVER_PORT,
            "listened ",
        )
    };
    assert_eq!(round(), "reused status 200");
    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    assert_eq!(round(), "reused status 200");
    assert_a_listener_is_refused(&topo, &daemon);
}

/// The ports of [`a_process_that_takes_a_dead_listeners_pid_gets_nothing_it_accepts`]'s
/// two rounds.
const HELD_PORTS: [u16; 2] = [9023, 9024];

/// A connection accepted on a listener whose listening process has exited
/// gives no evidence to a process that took its pid and has an entry of
/// its own (a child of an interpreter running a script file): that
/// process, executing nothing, asks the service and is served, also under
/// the relay verdict (the positive control: a process listening on the
/// link address is refused). Without the daemon it is served too. A build
/// that wrote the accepted evidence into whatever entry the pid had
/// refused it as a relay.
#[test]
fn a_process_that_takes_a_dead_listeners_pid_gets_nothing_it_accepts() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("hold-then-reuse");
    let script = write_script(&dir, "hold_then_reuse.py", HOLD_THEN_REUSE);
    let round = |port| hand_over_round(&topo, &[&script], port, "holding ");
    assert_eq!(round(HELD_PORTS[0]), "reused status 200");
    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    assert_eq!(round(HELD_PORTS[1]), "reused status 200");
    assert_a_listener_is_refused(&topo, &daemon);
}

/// Python, arguments ADDR PORT TARGET: a forked child listens on
/// `ADDR:PORT`, hands the listener over a socket pair (`SCM_RIGHTS`) to
/// this process, which never listened, and exits (as some graceful-restart
/// libraries hand a listener on); this process says `holding PID`, waits
/// for a line (the remote side connects meanwhile), accepts, and asks the
/// service before it reads anything.
const HAND_OVER_AND_EXIT: &str = concat!(
    ask_py!(),
    r#"
addr, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mine, theirs = socket.socketpair()
pid = os.fork()
if pid == 0:
    listener = socket.create_server((addr, port))
    socket.send_fds(theirs, [b"l"], [listener.fileno()])
    os._exit(0)
_, fds, _, _ = socket.recv_fds(mine, 1, 1)
os.waitpid(pid, 0)
listener = socket.socket(fileno=fds[0])
print("holding", os.getpid(), flush=True)
sys.stdin.readline()
conn, _ = listener.accept()
print(ask(target), flush=True)
"#
);

/// The ports of [`a_listener_whose_process_exited_is_credited_to_its_holder`]'s
/// two rounds.
const PASSED_ON_PORTS: [u16; 2] = [9025, 9026];

/// A listener handed over a Unix socket by a process that then exits is
/// credited to the process holding it: once the daemon has found the
/// port's entry naming a gone process (within a second), the entry names
/// the holder, which, having accepted a remote client and asking the
/// service before it reads, is refused as a relay naming that client
/// (`accepted`). Without the daemon it is served. Against the build
/// before, the entry kept naming the gone process and the holder was
/// served: the kernel credits accepts only to a process that listened or
/// executed holding the listener.
#[test]
fn a_listener_whose_process_exited_is_credited_to_its_holder() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let script = ["-c", HAND_OVER_AND_EXIT];
    let round = |port: u16, daemon: Option<&Daemon>| {
        hand_over(&topo, &script, port, "holding ", |holder| {
            if let Some(daemon) = daemon {
                wait_for(
                    "the listener credited to its holder",
                    Duration::from_secs(10),
                    || {
                        (listener_tgids(daemon.install(), &topo.local, port) == [holder])
                            .then_some(())
                    },
                );
            }
        })
    };
    assert_eq!(round(PASSED_ON_PORTS[0], None).1, "status 200");

    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let (pid, answer) = round(PASSED_ON_PORTS[1], Some(&daemon));
    assert_eq!(answer, "error 111");
    let ev = relay_refusal(&daemon, "the holder's refusal");
    assert_eq!(ev["pid"], pid, "{ev:#}");
    assert_eq!(ev["via_how"], "accepted", "{ev:#}");
    let via = ev["via"].as_str().unwrap_or_default();
    assert!(via.starts_with(&format!("{REMOTE_ADDR}:")), "{ev:#}");
    daemon.wait_stderr("its accepts are now credited to process", 1);
}
