//! Relays started before the daemon: the tracking programs never saw their
//! listen, so the kernel knows their listeners (and their scripts) only
//! because the daemon seeds its tracking maps from `/proc` at start. A
//! connection such a relay accepts after the start is then `accepted`
//! evidence like any other, and its connect to the service is refused.
//!
//! Each relay is first shown to work with no daemon (so a refusal is
//! loopwarden's doing); it keeps running, unchanged, while the daemon
//! starts. Likewise a catalogued tunnel's lineage reaches the processes
//! already running below it.

use std::{path::Path, time::Duration};

use loopwarden_tests::{
    Daemon, LOCAL_ADDR, PROTECTED, Policy, REMOTE_ADDR, SYSTEM_PYTHON, TempDir, Topology, exe_name,
    handed_down_relay_run_by, listener_tgids,
    locked::LockedMemory,
    loopwarden_bin, reuseport_relay, spawn_forwarder,
    stallfs::{StallFs, Stalled},
    talk::Talker,
    wait_for,
};
use serde_json::Value;

const SOCAT_PORT: u16 = 9001;
const FORWARDER_PORT: u16 = 9006;
const HANDED_DOWN_PORT: u16 = 9007;
const SHARED_PORT: u16 = 9008;
const LATE_FORK_PORT: u16 = 9009;
const REVERSE_PORT: u16 = 4444;

/// The protected service as relays reach it.
fn service() -> String {
    format!("127.0.0.1:{PROTECTED}")
}

/// Catalog off (only the relay verdict can refuse), relay deny, enforce.
fn start_daemon(topo: &Topology) -> Daemon {
    let daemon = Daemon::start(
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("deny")
            .text(),
    );
    daemon.wait_stderr("from /proc (in ", 1);
    daemon
}

/// Checks a refusal by the relay verdict on seeded evidence: the remote
/// client, accepted by the listener the daemon seeded.
fn assert_refused_as_accepted(ev: &Value) {
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    assert_eq!(ev["dst"], service(), "{ev:#}");
    assert_eq!(ev["via_how"], "accepted", "{ev:#}");
    let via = ev["via"].as_str().unwrap_or_default();
    assert!(via.starts_with(&format!("{REMOTE_ADDR}:")), "{ev:#}");
}

/// The number of listeners the daemon's seeding line reports.
fn seeded_listeners(daemon: &Daemon) -> usize {
    let stderr = daemon.stderr_text();
    let line = stderr
        .lines()
        .find(|l| l.contains("from /proc (in "))
        .unwrap_or_else(|| panic!("no seeding line:\n{stderr}"));
    line.split("seeded ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no listener count in {line:?}"))
}

#[test]
fn a_forking_socat_started_before_the_daemon_is_refused() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let _socat = topo.local.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{SOCAT_PORT},bind={LOCAL_ADDR},fork,reuseaddr"),
            &format!("TCP:{}", service()),
        ],
    );
    topo.local.wait_listening(SOCAT_PORT);
    let url = format!("http://{LOCAL_ADDR}:{SOCAT_PORT}/");
    assert_eq!(
        topo.remote.curl(&url),
        Ok(200),
        "socat does not relay even without loopwarden"
    );

    let daemon = start_daemon(&topo);
    // socat's listener, and the service's own on [::].
    assert!(seeded_listeners(&daemon) >= 2, "{}", daemon.stderr_text());
    let result = topo.remote.curl(&url);
    assert_ne!(
        result,
        Ok(200),
        "socat started before the daemon got through"
    );
    let socat = exe_name(Path::new("/usr/bin/socat"));
    let ev = daemon.wait_event("the relay deny of socat", |e| {
        e["verdict"] == "deny" && e["exe_name"] == socat.as_str()
    });
    assert_refused_as_accepted(&ev);
}

#[test]
fn a_python_forwarder_started_before_the_daemon_is_refused_with_its_script() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("seed-forwarder");
    // Per connection it connects to the service before reading.
    let (_forwarder, script) = spawn_forwarder(&topo.local, &dir, LOCAL_ADDR, FORWARDER_PORT);
    let url = format!("http://{LOCAL_ADDR}:{FORWARDER_PORT}/");
    assert_eq!(
        topo.remote.curl(&url),
        Ok(200),
        "the forwarder does not relay even without loopwarden"
    );

    let daemon = start_daemon(&topo);
    let result = topo.remote.curl(&url);
    assert_ne!(
        result,
        Ok(200),
        "the forwarder started before the daemon got through"
    );
    let python = exe_name(Path::new(SYSTEM_PYTHON));
    let ev = daemon.wait_event("the relay deny of the forwarder", |e| {
        e["verdict"] == "deny" && e["exe_name"] == python.as_str()
    });
    assert_refused_as_accepted(&ev);
    // The script as the kernel would have read it at exec.
    assert_eq!(ev["script"], script.as_str(), "{ev:#}");
}

/// A relay handed its listener across an exec by a parent that keeps
/// holding it (as pid 1 starts a socket-activated service with
/// `Accept=no`), started before the daemon, is refused naming the remote
/// client it accepted: the seeding credits the port's accepts to the
/// relay, not to the parent, as the kernel's exec scan would have. Without
/// the daemon it serves. Fails against a build whose seeding credits the
/// lowest pid (the parent: the relay is refused as `listening`).
#[test]
fn a_relay_handed_its_listener_before_the_daemon_names_the_remote_client() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("seed-handed-down");
    refused_handed_down_relay(&topo, &dir, &[SYSTEM_PYTHON]);
}

/// Starts a handed-down relay run by `python` ([`handed_down_relay_run_by`])
/// and shows it serving, then starts the daemon and checks that the relay
/// is refused naming its remote client; returns the refusal.
fn refused_handed_down_relay(topo: &Topology, dir: &TempDir, python: &[&str]) -> Value {
    let parent = handed_down_relay_run_by(&topo.local, dir, LOCAL_ADDR, HANDED_DOWN_PORT, python);
    let url = format!("http://{LOCAL_ADDR}:{HANDED_DOWN_PORT}/");
    assert_eq!(
        topo.remote.curl(&url),
        Ok(200),
        "the relay does not relay even without loopwarden"
    );

    let daemon = start_daemon(topo);
    assert_eq!(topo.remote.curl(&url), Ok(502));
    let ev = daemon.wait_event("the relay deny of the handed-down relay", |e| {
        e["verdict"] == "deny"
    });
    assert_eq!(ev["ppid"], parent.pid(), "{ev:#}");
    assert_refused_as_accepted(&ev);
    ev
}

/// A relay handed its listener before the daemon started, running an
/// executable on a filesystem whose server stops answering the daemon
/// (a FUSE server here; an NFS server that is down does the same): the
/// seeding compares the listener's holders' executables from the kernel's
/// cached inodes (`statx` with `AT_STATX_DONT_SYNC`), so the daemon comes
/// up, credits the relay, and refuses it naming the remote client. Without
/// the daemon it serves. Fails against a build whose seeding `stat()`s
/// `/proc/PID/exe`: the daemon waits for the server for ever, and never
/// becomes ready.
#[test]
fn a_relay_on_a_filesystem_that_stops_answering_stalls_no_start() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("seed-stallfs");
    let fs = StallFs::mount(
        &dir,
        &dir.path().join("mnt"),
        Stalled::Exe(&loopwarden_bin()),
    );
    let tool = fs.tool();
    let python = [
        "/usr/bin/env",
        "PYTHONHOME=/usr",
        tool.to_str().expect("utf-8"),
    ];
    let ev = refused_handed_down_relay(&topo, &dir, &python);
    assert_eq!(ev["exe"], tool.display().to_string(), "{ev:#}");
}

/// Two relays sharing one port (`SO_REUSEPORT`), both started before the
/// daemon: the seeding credits the port to one of them with that
/// listener's socket cookie, so the other's close leaves the entry, and
/// the one left, accepting the remote client, is refused naming it
/// (`accepted`). Without the daemon the relays serve. Fails against a build
/// whose seeding writes no cookie (any close on the port removes the
/// entry: no credit is left, and the refusal says `listening`).
#[test]
fn a_seeded_listener_keeps_its_port_when_another_on_it_closes() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("seed-shared-port");
    let start = |name: &str| reuseport_relay(&topo.local, &dir, LOCAL_ADDR, SHARED_PORT, name);
    let mut relays = [start("first"), start("second")];
    let url = format!("http://{LOCAL_ADDR}:{SHARED_PORT}/");
    for _ in 0..4 {
        assert_eq!(
            topo.remote.curl(&url),
            Ok(200),
            "the relays do not relay even without loopwarden"
        );
    }

    let daemon = start_daemon(&topo);
    let credited = listener_tgids(daemon.install(), &topo.local, SHARED_PORT);
    let (kept, other) = match credited[..] {
        [tgid] if tgid == relays[0].pid() => (0, 1),
        [tgid] if tgid == relays[1].pid() => (1, 0),
        _ => panic!("the port is credited to {credited:?}, not to one relay"),
    };
    relays[other].kill();
    assert_eq!(
        listener_tgids(daemon.install(), &topo.local, SHARED_PORT),
        vec![relays[kept].pid()],
        "the port's credit after the other relay's close"
    );
    assert_eq!(topo.remote.curl(&url), Ok(502));
    let ev = daemon.wait_event("the relay deny of the relay left", |e| {
        e["verdict"] == "deny"
    });
    assert_eq!(ev["pid"], relays[kept].pid(), "{ev:#}");
    assert_refused_as_accepted(&ev);
}

/// A shell that waits for `go` to exist, then fetches the service and
/// writes curl's status code to `out` ("000": refused).
fn fetch_on_go(go: &Path, out: &Path) -> String {
    format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; \
         curl -sS -o /dev/null --max-time 5 -w %{{http_code}} http://{service}/ > {out}.tmp; \
         mv {out}.tmp {out}",
        go = go.display(),
        out = out.display(),
        service = service(),
    )
}

/// VS Code's tunnel (`code-tunnel`, catalogued with `children`) started
/// before the daemon, with a shell below it that runs a client only after
/// the start: the seeding gives both the tunnel's lineage, so the client
/// the shell forks is refused as `catalog:code-tunnel`. The same shell
/// under a plain bash, started alongside, is the control.
#[test]
fn a_catalogued_tunnels_descendants_started_before_the_daemon_are_matched_through_lineage() {
    let ns = loopwarden_tests::Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("seed-lineage");
    let tunnel = dir.path().join("code-tunnel");
    std::fs::copy("/bin/bash", &tunnel).expect("copying bash");
    let go = dir.path().join("go");
    let (under_tunnel, under_bash) = (dir.path().join("tunnel"), dir.path().join("bash"));
    // The tunnel runs a second bash (not catalogued) that does the waiting;
    // `; true` keeps the tunnel from executing it in its own place.
    let nested = format!("/bin/bash -c '{}'; true", fetch_on_go(&go, &under_tunnel));
    let _tunnel = ns.spawn(tunnel.to_str().expect("utf-8"), &["-c", &nested]);
    let _plain = ns.spawn("/bin/bash", &["-c", &fetch_on_go(&go, &under_bash)]);

    let daemon = Daemon::start(&Policy::new(&ns, "enforce").relay("allow").text());
    daemon.wait_stderr("from /proc (in ", 1);
    std::fs::write(&go, "").expect("go");
    let status = |out: &Path| {
        loopwarden_tests::wait_for(
            "the client's status",
            std::time::Duration::from_secs(20),
            || std::fs::read_to_string(out).ok(),
        )
    };
    assert_eq!(status(&under_bash), "200", "the control was refused");
    assert_eq!(
        status(&under_tunnel),
        "000",
        "the tunnel's descendant got through"
    );
    let ev = daemon.wait_event("the descendant's refusal", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "curl"
    });
    assert_eq!(ev["rule"], "catalog:code-tunnel", "{ev:#}");
}

/// Python, arguments ADDR PORT SERVICE DIR: listens on ADDR:PORT (says
/// `listening`) and forks a child per connection, the Nth (from 0) of
/// which waits for the file DIR/go-N, then connects to 127.0.0.1:SERVICE
/// without reading from its client, and says `child PID connected` or
/// `child PID error ERRNO`.
const LATE_FORKING_RELAY: &str = r#"
import os, socket, sys, time
addr, port, service, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port))
l.listen()
print("listening", flush=True)
n = 0
while True:
    c, _ = l.accept()
    if os.fork() == 0:
        l.close()
        go = os.path.join(d, "go-%d" % n)
        while not os.path.exists(go):
            time.sleep(0.02)
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", service))
            print("child", os.getpid(), "connected", flush=True)
        except OSError as e:
            print("child", os.getpid(), "error", e.errno, flush=True)
        time.sleep(600)
    c.close()
    n += 1
"#;

/// Python, arguments ADDR PORT: at each line, connects to ADDR:PORT and
/// says `connected`, holding the connections.
const REMOTE_CLIENT: &str = r#"
import socket, sys
held = []
for _ in sys.stdin:
    held.append(socket.create_connection((sys.argv[1], int(sys.argv[2]))))
    print("connected", flush=True)
"#;

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The parent is the second field after the command's ")".
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Whether a thread of `pid` named `lw-cmdline` waits for something other
/// than its next job (a futex): a read of a command line in progress.
fn reading_a_command_line(pid: u32) -> Option<()> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .any(|task| {
            let read = |file: &str| std::fs::read_to_string(task.path().join(file));
            read("comm").is_ok_and(|c| c.trim() == "lw-cmdline")
                && read("wchan").is_ok_and(|w| !w.contains("futex") && w != "0" && !w.is_empty())
        })
        .then_some(())
}

/// A relay started before the daemon forks a child for a remote client
/// while the start's seeding is under way (held there by an interpreter
/// whose command line cannot be read: the walk waits for it after it
/// listed every process). The child was not walked, and its parent had no
/// entry for the kernel's fork to copy: the seeding gives it what it gave
/// the parent (`listening`), so the child's connect after the start, with
/// nothing read from its client, is refused under relay deny. The same
/// child's connect without the daemon reaches the service. Fails against a
/// build that gave late children nothing (the connect is let in).
#[test]
fn a_relays_child_forked_during_the_seeding_is_given_its_parents_state() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("seed-late-fork");
    let mut relay = Talker::spawn(
        topo.local
            .cmd(SYSTEM_PYTHON)
            .args(["-c", LATE_FORKING_RELAY, LOCAL_ADDR])
            .arg(LATE_FORK_PORT.to_string())
            .arg(PROTECTED.to_string())
            .arg(dir.path()),
        "the forking relay",
    );
    assert_eq!(relay.line(), "listening");
    let mut remote = Talker::spawn(
        topo.remote
            .cmd(SYSTEM_PYTHON)
            .args(["-c", REMOTE_CLIENT, LOCAL_ADDR])
            .arg(LATE_FORK_PORT.to_string()),
        "the remote client",
    );
    // Without the daemon, the child reaches the service.
    std::fs::write(dir.path().join("go-0"), "").expect("go-0");
    assert_eq!(remote.ask("connect"), "connected");
    let control = relay.line();
    assert!(control.ends_with(" connected"), "{control}");

    let first: u32 = control
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{control}"));
    // Walked after the relay (later pids), their command lines hold the
    // walk: 250 ms each (two reads of one user's processes may wait).
    let held = [
        TempDir::new("seed-late-locked"),
        TempDir::new("seed-late-locked"),
    ];
    let _locked = held.each_ref().map(|at| {
        LockedMemory::start(
            at,
            topo.local.cmd(SYSTEM_PYTHON),
            PROTECTED,
            &at.path().join("never"),
        )
    });
    let daemon = Daemon::spawn(
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("deny")
            .text(),
        &[],
    );
    let pid = daemon.pid().expect("the daemon's pid");
    let soon = |what: &str, f: &mut dyn FnMut() -> Option<u32>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = f() {
                return found;
            }
            assert!(std::time::Instant::now() < deadline, "no {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    soon("wait of the seeding for a locked command line", &mut || {
        reading_a_command_line(pid).map(|()| 0)
    });
    assert_eq!(remote.ask("connect"), "connected");
    let child = soon("second child of the relay", &mut || {
        children_of(relay.pid()).into_iter().find(|&c| c != first)
    });
    // (Else the kernel's fork copied the parent's seeded entry: nothing
    // shown.)
    assert!(
        !daemon.stderr_text().contains("from /proc (in "),
        "the child was forked after the seeding:\n{}",
        daemon.stderr_text()
    );
    daemon.wait_stderr("ready:", 1);
    // The child was not walked: the seeding gave it its state afterwards.
    assert!(
        daemon
            .stderr_text()
            .contains("processes forked during it given their parents' state"),
        "{}",
        daemon.stderr_text()
    );
    std::fs::write(dir.path().join("go-1"), "").expect("go-1");
    assert_eq!(relay.line(), format!("child {child} error 111"));
    let ev = daemon.wait_event("the late child's refusal", |e| e["pid"] == child);
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    assert_eq!(ev["via_how"], "listening", "{ev:#}");
}

/// Python, arguments GO OUT SERVICE: waits for the file GO, connects to
/// 127.0.0.1:SERVICE without reading its standard input, and writes
/// `connected` or `error ERRNO` to OUT.
const STDIO_RELAY: &str = r#"
import os, socket, sys, time
go, out, service = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(go):
    time.sleep(0.02)
s = socket.socket()
try:
    s.connect(("127.0.0.1", service))
    result = "connected"
except OSError as e:
    result = "error %d" % e.errno
with open(out + ".tmp", "w") as f:
    f.write(result)
os.rename(out + ".tmp", out)
time.sleep(600)
"#;

/// A relay that dialled out to a remote party and runs with that
/// connection as its standard input and output (`socat TCP:… EXEC:…,nofork`,
/// as `ncat -e` does), started before the daemon: the seeding gives it the
/// `stdio` evidence its exec would have recorded, so its connect after the
/// start, with nothing read, is refused under relay deny, naming the remote
/// party. The same relay without the daemon reaches the service. Fails
/// against a build whose seeding gave no `stdio` evidence (the connect is
/// let in).
#[test]
fn a_relay_run_on_a_connection_out_before_the_daemon_is_refused_as_stdio() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("seed-stdio");
    let script = dir.path().join("relay.py");
    std::fs::write(&script, STDIO_RELAY).expect("the relay's script");
    let mut remote = Talker::spawn(
        topo.remote.cmd(SYSTEM_PYTHON).args([
            "-c",
            &format!(
                "import socket\ns = socket.create_server(('{REMOTE_ADDR}', {REVERSE_PORT}))\n\
                 print('listening', flush=True)\nheld = []\n\
                 while True:\n    held.append(s.accept())\n    print('accepted', flush=True)\n"
            ),
        ]),
        "the remote party",
    );
    assert_eq!(remote.line(), "listening");
    let start = |n: u32| {
        let go = dir.path().join(format!("go-{n}"));
        let out = dir.path().join(format!("out-{n}"));
        let relay = topo.local.spawn(
            "socat",
            &[
                &format!("TCP:{REMOTE_ADDR}:{REVERSE_PORT}"),
                &format!(
                    "EXEC:{SYSTEM_PYTHON} {} {} {} {PROTECTED},nofork",
                    script.display(),
                    go.display(),
                    out.display()
                ),
            ],
        );
        (relay, go, out)
    };
    let result = |out: &Path| {
        wait_for("the relay's connect", Duration::from_secs(20), || {
            std::fs::read_to_string(out).ok()
        })
    };
    // Without the daemon it reaches the service.
    let (_control, go, out) = start(0);
    assert_eq!(remote.line(), "accepted");
    std::fs::write(&go, "").expect("go-0");
    assert_eq!(result(&out), "connected");

    let (relay, go, out) = start(1);
    assert_eq!(remote.line(), "accepted");
    let daemon = start_daemon(&topo);
    std::fs::write(&go, "").expect("go-1");
    assert_eq!(result(&out), "error 111");
    let ev = daemon.wait_event("the stdio relay's refusal", |e| e["pid"] == relay.pid());
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    assert_eq!(ev["via_how"], "stdio", "{ev:#}");
    assert_eq!(ev["via"], format!("{REMOTE_ADDR}:{REVERSE_PORT}"), "{ev:#}");
}
