//! Provenance, end to end: a service in a test namespace accepts protected
//! connections (on 127.0.0.1 and [::1]) and holds them open; the origin the
//! kernel bound to each is asked for three ways — `getsockopt(SOL_LOOPWARDEN,
//! LW_ORIGIN)` on the accepted socket, `loopwarden who` / `loopwarden conns`,
//! and the raw query socket — and must name the process that connected
//! (also after it exited), the verdict, the rule and, for relays (socat,
//! `ssh -L`), the remote party. Each uid sees only the connections its own
//! sockets accepted, closed connections disappear, a connection to an
//! unprotected port is unknown, and misbehaving query clients do not keep
//! the daemon from answering the others. getsockopt also knows an IPv4
//! client of a dual-stack listener, and never answers with an entry a
//! missed close left behind. A resized connection table keeps the open
//! connections' origins, and a nearly full one is warned of.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::Duration,
};

use loopwarden_tests::{
    Daemon, Install, LOCAL_ADDR, Netns, PROTECTED, Policy, Proc, REMOTE_ADDR, SYSTEM_PYTHON, Sshd,
    TempDir, Topology, UNPROTECTED, exe_id, exe_name, hex_args, hex_bytes, loopwarden_bin,
    map_dump, map_show,
    provenance::{Holder, conns, loopwarden, netns_inode, raw_query, who},
    rule, run, wait_for, write_script,
};
use serde_json::{Value, json};

/// The uid the service runs as in the access test.
const NOBODY: u32 = 65534;
/// Another unprivileged uid (needs no passwd entry).
const OTHER: u32 = 4242;
const SOCAT_PORT: u16 = 9001;
const SSH_L_PORT: u16 = 9003;
const SSHD_PORT: u16 = 2222;

/// Audit mode, `PROTECTED` only, no catalog, the relay verdict `audit`,
/// allowed connects reported too (their audit lines are compared with the
/// origins).
fn config(ns: &Netns) -> String {
    let policy = Policy::new(ns, "audit").catalog(false).relay("audit");
    format!("log_allowed = true\n{}", policy.text())
}

/// `peer` and `local` of a connection the holding service accepted.
fn ends(accepted: &Value) -> (String, String) {
    let text = |k: &str| accepted[k].as_str().expect("address").to_owned();
    (text("peer"), text("local"))
}

/// The audit line of the connect by `pid`.
fn audit_line(daemon: &Daemon, pid: u64) -> Value {
    daemon.wait_event(&format!("for pid {pid}"), |e| e["pid"] == pid)
}

/// The origin repeats what the audit line said about the same connect.
fn assert_matches_audit(origin: &Value, audit: &Value, fields: &[&str]) {
    for field in fields {
        assert_eq!(
            origin[field], audit[field],
            "{field}: {origin:#} vs {audit:#}"
        );
    }
    assert_eq!(
        origin["client_cookie"], audit["socket_cookie"],
        "{origin:#}"
    );
}

/// Fields an origin and its audit line share whether or not the process
/// still runs.
const KERNEL_FIELDS: [&str; 11] = [
    "pid",
    "tid",
    "ppid",
    "uid",
    "comm",
    "exe_name",
    "exe_id",
    "cgroup_id",
    "verdict",
    "rule",
    "via_how",
];

/// Waits until neither `who` nor `conns` knows the connection from `peer`
/// and the kernel has removed its `LW_CONNS` entry (the daemon does not
/// answer from an entry a missed close left, so its answers alone would
/// not show that the close removed it).
fn wait_gone(ns: &Netns, install: &Install, peer: &str, local: &str) {
    let run_dir = install.run_dir();
    let port = port_of(peer);
    wait_for(
        &format!("the connection from {peer} to leave the daemon's answers and LW_CONNS"),
        Duration::from_secs(10),
        || {
            let unknown = matches!(who(ns, None, &run_dir, peer, local), Err((1, _)));
            let listed = conns(ns, None, &run_dir)
                .iter()
                .any(|o| o["client"] == peer);
            let kept = conns_entries(install)
                .iter()
                .any(|(key, _)| key[4..6] == port.to_ne_bytes());
            (unknown && !listed && !kept).then_some(())
        },
    );
}

/// The port of `addr` (`ip:port` or `[ip]:port`).
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// One request line.
fn line(request: Value) -> String {
    request.to_string()
}

#[test]
fn direct_clients_are_named_while_connected_and_after_they_exit() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let run_dir = daemon.install().run_dir();
    let holder = Holder::start(&ns, &[PROTECTED], None);

    // curl over IPv4, waiting for an answer that never comes.
    let mut curl = ns.spawn(
        "curl",
        &[
            "-s",
            "--max-time",
            "300",
            &format!("http://127.0.0.1:{PROTECTED}/"),
        ],
    );
    let accepted = holder.wait_accepted(1);
    let (peer, local) = ends(&accepted);
    assert_eq!(local, format!("127.0.0.1:{PROTECTED}"));
    let pid = u64::from(curl.pid());
    // The service's own question, answered by the kernel.
    assert_eq!(accepted["status"], 1, "{accepted}");
    assert_eq!(accepted["tgid"], pid, "{accepted}");
    assert_eq!(accepted["server_cookie"], accepted["cookie"], "{accepted}");

    let origin = who(&ns, None, &run_dir, &peer, &local).expect("who knows curl's connection");
    let curl_path = std::fs::canonicalize("/usr/bin/curl").expect("curl");
    assert_eq!(origin["pid"], pid, "{origin:#}");
    assert_eq!(origin["comm"], "curl");
    assert_eq!(origin["exe_name"], exe_name(&curl_path));
    assert_eq!(origin["exe_id"], exe_id(&curl_path));
    assert_eq!(origin["exe"], curl_path.to_str().unwrap());
    assert!(
        origin["cmdline"].as_str().unwrap().starts_with("curl -s"),
        "{origin:#}"
    );
    assert_eq!(origin["alive"], true);
    assert_eq!(origin["verdict"], "allow");
    assert_eq!(origin["rule"], Value::Null);
    assert_eq!(origin["client"], peer);
    assert_eq!(origin["server"], local);
    assert_eq!(origin["server_uid"], 0);
    assert_eq!(origin["server_cookie"], accepted["cookie"]);
    assert_eq!(origin["netns"], netns_inode(&ns));
    for stamp in ["connected_at", "established_at"] {
        let text = origin[stamp].as_str().unwrap_or_default();
        assert!(
            humantime::parse_rfc3339(text).is_ok(),
            "{stamp}: {origin:#}"
        );
    }
    let audit = audit_line(&daemon, pid);
    assert_matches_audit(&origin, &audit, &KERNEL_FIELDS);
    assert_matches_audit(&origin, &audit, &["user", "exe", "cmdline", "cgroup"]);

    // The raw socket: by the two ends (with an id), by cookie, and conns.
    let answers = raw_query(
        &ns,
        None,
        &run_dir,
        &[
            line(json!({"op": "who", "peer": peer, "local": local, "id": 7})),
            line(json!({"op": "who", "cookie": accepted["cookie"], "id": "c"})),
            line(json!({"op": "conns"})),
        ],
    );
    assert_eq!(answers.len(), 3, "{answers:#?}");
    assert_eq!(answers[0]["v"], 1);
    assert_eq!(answers[0]["ok"], true, "{answers:#?}");
    assert_eq!(answers[0]["id"], 7);
    assert_eq!(answers[1]["id"], "c");
    assert_eq!(answers[0]["origin"]["pid"], pid);
    assert_eq!(answers[1]["origin"]["pid"], pid, "{answers:#?}");
    let listed = answers[2]["conns"].as_array().expect("conns");
    assert_eq!(listed.len(), 1, "{answers:#?}");
    assert_eq!(listed[0]["pid"], pid);

    // For people: aligned lines, and every connection from the peer's address.
    let out = loopwarden(&ns, None, &run_dir, &["who", &peer, &local]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&format!("\npid:            {pid} (running)\n")),
        "{text}"
    );
    assert!(text.contains("\ncomm:           curl\n"), "{text}");
    let out = loopwarden(&ns, None, &run_dir, &["who", "127.0.0.1", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert_eq!(all.len(), 1, "{out:?}");
    assert_eq!(all[0]["pid"], pid);

    // A closed connection disappears.
    curl.kill();
    wait_gone(&ns, daemon.install(), &peer, &local);

    // Over IPv6, from a process that exits while its child keeps the socket.
    let (pid, child) = holder.fork_client(&ns, "::1", PROTECTED);
    let accepted = holder.wait_accepted(2);
    let (peer, local) = ends(&accepted);
    assert_eq!(local, format!("[::1]:{PROTECTED}"));
    assert_eq!(accepted["tgid"], pid, "{accepted}");
    let origin = who(&ns, None, &run_dir, &peer, &local).expect("who knows it after exit");
    assert_eq!(origin["pid"], pid, "{origin:#}");
    assert_eq!(origin["alive"], false);
    assert_eq!(
        origin["exe"],
        Value::Null,
        "/proc of an exited process lends nothing"
    );
    assert_eq!(origin["cmdline"], Value::Null);
    assert_eq!(origin["exe_name"], exe_name(Path::new(SYSTEM_PYTHON)));
    assert_matches_audit(
        &origin,
        &audit_line(&daemon, u64::from(pid)),
        &KERNEL_FIELDS,
    );
    let listed = conns(&ns, None, &run_dir);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["pid"], pid);
    // SAFETY: plain kill(2) of the child the client left behind.
    unsafe { libc::kill(child as i32, libc::SIGKILL) };
    wait_gone(&ns, daemon.install(), &peer, &local);
}

#[test]
fn rules_are_named_by_the_policy_that_judged_the_connect() {
    let ns = Netns::new();
    let python = exe_name(Path::new(SYSTEM_PYTHON));
    let with_rule = |name: &str| {
        let policy = Policy::new(&ns, "audit").catalog(false).relay("audit");
        policy
            .extra(&rule(name, "audit", "exe_name", &python))
            .text()
    };
    let daemon = Daemon::start(&with_rule("watch-python"));
    let run_dir = daemon.install().run_dir();
    let holder = Holder::start(&ns, &[PROTECTED], None);
    let _first = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
    let (peer1, local1) = ends(&holder.wait_accepted(1));
    let origin = who(&ns, None, &run_dir, &peer1, &local1).expect("the first connection");
    assert_eq!(origin["verdict"], "audit", "{origin:#}");
    assert_eq!(origin["rule"], "watch-python", "{origin:#}");

    // The rule renamed by a reload: new connects carry the new name, the
    // open one keeps the name of the policy that judged it.
    std::fs::write(daemon.config_path(), with_rule("python-watched")).expect("rewrite");
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("installed: ", 1);
    let _second = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
    let (peer2, local2) = ends(&holder.wait_accepted(2));
    let origin = who(&ns, None, &run_dir, &peer2, &local2).expect("the second connection");
    assert_eq!(origin["rule"], "python-watched", "{origin:#}");
    let origin = who(&ns, None, &run_dir, &peer1, &local1).expect("the first connection");
    assert_eq!(origin["rule"], "watch-python", "{origin:#}");
}

#[test]
fn unprotected_connections_are_unknown_to_getsockopt_and_the_daemon() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let run_dir = daemon.install().run_dir();
    let holder = Holder::start(&ns, &[PROTECTED, UNPROTECTED], None);

    let _unprotected = holder.hold_client(&ns, "127.0.0.1", UNPROTECTED);
    let plain = holder.wait_accepted(1);
    let protected_client = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
    let tagged = holder.wait_accepted(2);

    // getsockopt from the service: known with the caller's tgid, or status 0.
    assert_eq!(tagged["status"], 1, "{tagged}");
    assert_eq!(tagged["tgid"], protected_client.pid(), "{tagged}");
    assert_eq!(tagged["server_uid"], 0, "{tagged}");
    assert!(tagged.get("errno").is_none(), "{tagged}");
    assert_eq!(plain["status"], 0, "{plain}");
    assert_eq!(plain["tgid"], 0, "{plain}");
    assert!(plain.get("errno").is_none(), "{plain}");

    // The daemon: the same.
    let (peer, local) = ends(&tagged);
    let origin = who(&ns, None, &run_dir, &peer, &local).expect("the protected one is known");
    assert_eq!(origin["pid"], protected_client.pid());
    let (peer, local) = ends(&plain);
    let (code, stderr) = who(&ns, None, &run_dir, &peer, &local).expect_err("unknown");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown"), "{stderr}");
    let answers = raw_query(
        &ns,
        None,
        &run_dir,
        &[line(json!({"op": "who", "peer": peer, "local": local}))],
    );
    assert_eq!(answers[0]["ok"], false, "{answers:#?}");
    assert_eq!(answers[0]["error"], "unknown", "{answers:#?}");
    let listed = conns(&ns, None, &run_dir);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["pid"], protected_client.pid());
}

/// A protected connect whose handshake never completes leaves nothing
/// behind: its origin waits in `LW_ORIGIN_PENDING` while its SYN is
/// unanswered (the listener's accept queue is full, so the kernel drops
/// it: the positive control), and goes when the socket closes; so does a
/// refused one's.
#[test]
fn a_connect_that_never_completes_leaves_no_pending_origin() {
    const STALLED: &str = r#"import os, socket, sys, time
port, dir = int(sys.argv[1]), sys.argv[2]
def wait(name):
    while not os.path.exists(os.path.join(dir, name)):
        time.sleep(0.02)
def say(name):
    open(os.path.join(dir, name), "w").close()
listener = socket.socket()
listener.bind(("127.0.0.1", port))
listener.listen(0)
queued = socket.create_connection(("127.0.0.1", port))
stalled = socket.socket()
stalled.setblocking(False)
assert stalled.connect_ex(("127.0.0.1", port)) == 115  # EINPROGRESS
say("stalled")
wait("close")
stalled.close()
queued.close()
listener.close()
try:
    socket.create_connection(("127.0.0.1", port), timeout=5)
    sys.exit("a connect to a closed port succeeded")
except ConnectionRefusedError:
    pass
say("closed")
wait("exit")
"#;
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let entries = || map_dump(daemon.install(), "LW_ORIGIN_PENDING").len();
    let dir = TempDir::new("stalled");
    let script = write_script(&dir, "stalled.py", STALLED);
    let mut proc = ns.spawn(
        SYSTEM_PYTHON,
        &[
            &script,
            &PROTECTED.to_string(),
            &dir.path().to_string_lossy(),
        ],
    );
    let said = |name: &str| dir.path().join(name).exists().then_some(());
    wait_for("the stalled connect", Duration::from_secs(10), || {
        said("stalled")
    });
    // The queued connection's origin moved on to `LW_CONNS`; the stalled
    // one's waits.
    assert_eq!(entries(), 1, "the stalled connect's pending origin");
    std::fs::write(dir.path().join("close"), "").expect("writing the close mark");
    wait_for("the refused connect", Duration::from_secs(10), || {
        proc.assert_running();
        said("closed")
    });
    assert_eq!(
        entries(),
        0,
        "pending origins after the close and the refusal"
    );
    // The queued, the stalled and the refused connect were each judged.
    let pid = proc.pid();
    let reports = || {
        let events = daemon.events();
        let n = events
            .iter()
            .filter(|e| e["pid"] == pid && e["dst_port"] == PROTECTED)
            .count();
        (n >= 3).then_some(n)
    };
    let n = wait_for("three reports", Duration::from_secs(10), reports);
    assert_eq!(n, 3, "{:#?}", daemon.events());
    std::fs::write(dir.path().join("exit"), "").expect("writing the exit mark");
}

/// A close the state tracepoint never sees (the kernel skips a run nested
/// on one CPU) leaves a connection's entry in `LW_CONNS`. Written back by
/// hand under the addresses of a later, untagged connection, it must not
/// be that connection's answer, from getsockopt or from the daemon (`who`,
/// `conns`); the same entry written before its connection's handshake (as
/// the kernel writes one) is: the positive control, through the same
/// lookups. (The later connections go to the unprotected port, which the
/// test marks in `LW_CONN_PORTS` as a tagged connect would have: the
/// kernel looks up only connections to marked ports.)
#[test]
fn an_entry_a_missed_close_left_is_never_a_later_connections_answer() {
    const STALE_FROM: u16 = 41001;
    const FRESH_FROM: u16 = 41002;
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let install = daemon.install();
    let holder = Holder::start(&ns, &[PROTECTED, UNPROTECTED], None);
    let client = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
    let tagged = holder.wait_accepted(1);
    assert_eq!(tagged["status"], 1, "{tagged}");
    let (peer, _) = ends(&tagged);
    let port = port_of(&peer);
    let (key, entry) = conns_entries(install)
        .into_iter()
        .find(|(key, _)| key[4..6] == port.to_ne_bytes())
        .expect("the tagged connection's entry");
    // The same entry, as if for a connection from `from` to the
    // unprotected port (which the kernel never tags).
    let under = |from: u16| {
        let mut key = key.clone();
        key[4..6].copy_from_slice(&from.to_ne_bytes());
        key[6..8].copy_from_slice(&UNPROTECTED.to_ne_bytes());
        key
    };

    mark_port(install, UNPROTECTED);

    // Left behind: established, bound to the first connection's socket.
    write_entry(install, &under(STALE_FROM), &entry);
    let _stale = holder.hold_client_from(&ns, "127.0.0.1", UNPROTECTED, STALE_FROM);
    let stale = holder.wait_accepted(2);
    assert_eq!(stale["peer"], format!("127.0.0.1:{STALE_FROM}"), "{stale}");
    assert_eq!(
        (&stale["status"], &stale["tgid"]),
        (&json!(0), &json!(0)),
        "{stale}"
    );
    let run_dir = install.run_dir();
    let (stale_peer, stale_local) = ends(&stale);
    let said = who(&ns, None, &run_dir, &stale_peer, &stale_local);
    assert!(matches!(said, Err((1, _))), "{said:?}");

    // Waiting for its handshake (not established, connected just now).
    let mut pending = entry.clone();
    pending[16..32].fill(0); // established_ns, server_cookie
    pending[ENTRY_CONNECT_NS..ENTRY_CONNECT_NS + 8].copy_from_slice(&monotonic_ns().to_ne_bytes());
    pending[ENTRY_FIRST_SEQ..ENTRY_FIRST_SEQ + 4].fill(0);
    write_entry(install, &under(FRESH_FROM), &pending);
    let _fresh = holder.hold_client_from(&ns, "127.0.0.1", UNPROTECTED, FRESH_FROM);
    let fresh = holder.wait_accepted(3);
    assert_eq!(fresh["status"], 1, "{fresh}");
    assert_eq!(fresh["tgid"], client.pid(), "{fresh}");
    assert_eq!(fresh["server_cookie"], fresh["cookie"], "{fresh}");
    let (fresh_peer, fresh_local) = ends(&fresh);
    let origin = who(&ns, None, &run_dir, &fresh_peer, &fresh_local).expect("the fresh entry");
    assert_eq!(origin["pid"], client.pid(), "{origin:#}");
    let listed: Vec<Value> = conns(&ns, None, &run_dir)
        .into_iter()
        .map(|o| o["client"].clone())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for expected in [&peer, &fresh_peer] {
        assert!(listed.contains(&json!(expected)), "{listed:?}");
    }
}

/// A dual-stack listener (`[::]`, not v6-only) accepts an IPv4 client on
/// an IPv6 socket whose addresses are IPv4-mapped, while the client's
/// socket is IPv4: getsockopt on the accepted socket must still find the
/// connection the client's side named. The same listener on the
/// unprotected port is the control: "unknown".
#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_known_to_getsockopt() {
    const DUAL_STACK: &str = r#"import json, os, socket, struct, sys
out = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(1)
    c = socket.create_connection(("127.0.0.1", port))
    a, peer = s.accept()
    rec = a.getsockopt(0x4c57, 1, 328)
    out.append({"port": port, "family": a.family, "peer": peer[0], "status": rec[8],
                "tgid": struct.unpack_from("=I", rec, 152)[0]})
print(json.dumps({"pid": os.getpid(), "answers": out}))
"#;
    let ns = Netns::new();
    let _daemon = Daemon::start(&config(&ns));
    let out = loopwarden_tests::run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        DUAL_STACK,
        &PROTECTED.to_string(),
        &UNPROTECTED.to_string(),
    ]));
    let said: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    let (protected, unprotected) = (&said["answers"][0], &said["answers"][1]);
    for answer in [protected, unprotected] {
        assert_eq!(answer["family"], libc::AF_INET6, "{said}");
        assert_eq!(answer["peer"], "::ffff:127.0.0.1", "{said}");
    }
    assert_eq!(protected["status"], 1, "{said}");
    assert_eq!(protected["tgid"], said["pid"], "{said}");
    assert_eq!(
        (&unprotected["status"], &unprotected["tgid"]),
        (&json!(0), &json!(0)),
        "{said}"
    );
}

/// Where `ConnEntry` (common/src/origin.rs) keeps the connect's time
/// (`record.origin.ktime_ns`) and `first_seq`.
const ENTRY_CONNECT_NS: usize = 72;
const ENTRY_FIRST_SEQ: usize = 328;

/// Every `LW_CONNS` entry of `install`, as (key, value) bytes.
fn conns_entries(install: &Install) -> Vec<(Vec<u8>, Vec<u8>)> {
    map_dump(install, "LW_CONNS")
        .iter()
        .map(|e| (hex_bytes(&e["key"]), hex_bytes(&e["value"])))
        .collect()
}

/// Writes one `LW_CONNS` entry of `install` (bpftool).
fn write_entry(install: &Install, key: &[u8], value: &[u8]) {
    let out = run(Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(install.pin_dir().join("maps/LW_CONNS"))
        .args(["key", "hex"])
        .args(hex_args(key))
        .args(["value", "hex"])
        .args(hex_args(value)));
    assert!(out.status.success(), "{out:?}");
}

/// Marks `port` in `LW_CONN_PORTS` of `install` (bpftool), keeping the
/// other ports' marks in its entry: 64 bytes, one per port.
fn mark_port(install: &Install, port: u16) {
    let map = install.pin_dir().join("maps/LW_CONN_PORTS");
    let key = hex_args(&(u32::from(port) / 64).to_ne_bytes());
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(&map)
        .args(["key", "hex"])
        .args(&key));
    assert!(out.status.success(), "{out:?}");
    let found: Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    let mut bytes = hex_bytes(&found["value"]);
    assert_eq!(bytes.len(), 64, "{found}");
    bytes[usize::from(port % 64)] = 1;
    let out = run(Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&map)
        .args(["key", "hex"])
        .args(&key)
        .args(["value", "hex"])
        .args(hex_args(&bytes)));
    assert!(out.status.success(), "{out:?}");
}

/// CLOCK_MONOTONIC now, in ns (the clock of `bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A client in the remote namespace holds a connection through a relay in
/// the local one; the relay's connect to the service is accepted as
/// connection `n`. Returns the client and the service's record of it.
fn through_relay(
    topo: &Topology,
    holder: &Holder,
    n: usize,
    addr: &str,
    port: u16,
) -> (Proc, Value) {
    let client = holder.hold_client(&topo.remote, addr, port);
    (client, holder.wait_accepted(n))
}

/// The origin of a relayed connection: the process the holding service's
/// getsockopt named, audited by the relay verdict, with the remote party
/// and how it was seen (`how`).
fn assert_relayed(origin: &Value, accepted: &Value, how: &str) {
    assert_eq!(origin["pid"], accepted["tgid"], "{origin:#}");
    assert_eq!(origin["verdict"], "audit", "{origin:#}");
    assert_eq!(origin["rule"], "relay", "{origin:#}");
    let via = origin["via"].as_str().unwrap_or_default();
    assert!(via.starts_with(&format!("{REMOTE_ADDR}:")), "{origin:#}");
    assert_eq!(origin["via_how"], how, "{origin:#}");
}

#[test]
fn relays_are_named_with_the_remote_party() {
    let topo = Topology::new();
    let daemon = Daemon::start(&config(&topo.local));
    let run_dir = daemon.install().run_dir();
    let holder = Holder::start(&topo.local, &[PROTECTED], None);
    let service = format!("TCP:127.0.0.1:{PROTECTED}");

    // socat, forking per connection, connects right after accepting.
    let socat = topo.local.socat_relay(SOCAT_PORT, &service, None);
    let (_socat_client, accepted) = through_relay(&topo, &holder, 1, LOCAL_ADDR, SOCAT_PORT);
    let (peer, local) = ends(&accepted);
    let origin = who(&topo.local, None, &run_dir, &peer, &local).expect("socat's connection");
    assert_eq!(
        origin["exe_name"],
        exe_name(Path::new("/usr/bin/socat")),
        "{origin:#}"
    );
    assert_eq!(origin["ppid"], socat.pid(), "socat's per-connection child");
    assert_relayed(&origin, &accepted, "accepted");
    let socat_pid = origin["pid"].as_u64().unwrap();
    assert_matches_audit(&origin, &audit_line(&daemon, socat_pid), &KERNEL_FIELDS);
    assert_matches_audit(&origin, &audit_line(&daemon, socat_pid), &["via"]);

    // sshd carrying an `ssh -L` forward from the remote namespace.
    let sshd = Sshd::start(&topo.local, LOCAL_ADDR, SSHD_PORT);
    let mut args = sshd.client_args();
    let forward = format!("{SSH_L_PORT}:127.0.0.1:{PROTECTED}");
    args.extend(["-N", "-L", &forward, &format!("root@{LOCAL_ADDR}")].map(str::to_owned));
    let mut ssh = Proc::spawn(topo.remote.cmd("ssh").args(&args));
    topo.remote.wait_listening(SSH_L_PORT);
    ssh.assert_running();
    let (_ssh_client, accepted) = through_relay(&topo, &holder, 2, "127.0.0.1", SSH_L_PORT);
    let (peer, local) = ends(&accepted);
    let origin = who(&topo.local, None, &run_dir, &peer, &local).expect("sshd's connection");
    assert_eq!(
        origin["exe_name"],
        exe_name(Path::new("/usr/sbin/sshd")),
        "{origin:#}"
    );
    assert_relayed(&origin, &accepted, "received");
    let sshd_pid = origin["pid"].as_u64().unwrap();
    assert_matches_audit(&origin, &audit_line(&daemon, sshd_pid), &KERNEL_FIELDS);

    // Both in `conns`, as JSON and as a table.
    let listed = conns(&topo.local, None, &run_dir);
    let pids: Vec<&Value> = listed.iter().map(|o| &o["pid"]).collect();
    assert_eq!(pids, [socat_pid, sshd_pid], "{listed:#?}");
    let out = loopwarden(&topo.local, None, &run_dir, &["conns"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "CLIENT", "SERVER", "PID", "USER", "EXE", "VERDICT", "RULE", "VIA", "AGE"
        ],
        "{table}"
    );
    assert_eq!(rows.len(), 3, "{table}");
    for (row, pid) in rows[1..].iter().zip([socat_pid, sshd_pid]) {
        assert_eq!(row[2], pid.to_string(), "{table}");
        assert_eq!(row[5..7], ["audit", "relay"], "{table}");
        assert!(row[7].starts_with(REMOTE_ADDR), "{table}");
    }
}

#[test]
fn each_uid_sees_only_the_connections_its_sockets_accepted() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let run_dir = daemon.install().run_dir();
    let holder = Holder::start(&ns, &[PROTECTED], Some(NOBODY));
    let client = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
    let accepted = holder.wait_accepted(1);
    assert_eq!(accepted["server_uid"], NOBODY, "{accepted}");
    let (peer, local) = ends(&accepted);
    let requests = [
        line(json!({"op": "who", "peer": peer, "local": local})),
        line(json!({"op": "who", "cookie": accepted["cookie"]})),
        line(json!({"op": "conns"})),
    ];

    // The uid that owns the accepted socket, and root: the origin.
    for uid in [Some(NOBODY), None] {
        let origin = who(&ns, uid, &run_dir, &peer, &local)
            .unwrap_or_else(|e| panic!("who as {uid:?}: {e:?}"));
        assert_eq!(origin["pid"], client.pid());
        assert_eq!(origin["server_uid"], NOBODY);
        let answers = raw_query(&ns, uid, &run_dir, &requests);
        assert_eq!(answers[0]["origin"]["pid"], client.pid(), "{answers:#?}");
        assert_eq!(answers[1]["origin"]["pid"], client.pid(), "{answers:#?}");
        assert_eq!(answers[2]["conns"].as_array().map(Vec::len), Some(1));
        assert_eq!(conns(&ns, uid, &run_dir).len(), 1);
    }

    // Another uid: forbidden, and nothing listed.
    let (code, stderr) = who(&ns, Some(OTHER), &run_dir, &peer, &local).expect_err("forbidden");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("forbidden"), "{stderr}");
    let answers = raw_query(&ns, Some(OTHER), &run_dir, &requests);
    assert_eq!(answers[0]["error"], "forbidden", "{answers:#?}");
    assert_eq!(answers[1]["error"], "forbidden", "{answers:#?}");
    assert_eq!(answers[2]["conns"], json!([]), "{answers:#?}");
    assert!(conns(&ns, Some(OTHER), &run_dir).is_empty());

    // Only root may name another namespace.
    let elsewhere = line(json!({"op": "who", "peer": peer, "local": local, "netns": 1}));
    let answers = raw_query(
        &ns,
        Some(NOBODY),
        &run_dir,
        std::slice::from_ref(&elsewhere),
    );
    assert_eq!(answers[0]["error"], "forbidden", "{answers:#?}");
    let answers = raw_query(&ns, None, &run_dir, &[elsewhere]);
    assert_eq!(answers[0]["error"], "unknown", "{answers:#?}");
    // Root asking from the root namespace, naming the test's.
    let out = run(Command::new(loopwarden_bin())
        .args([
            "who",
            &peer,
            &local,
            "--json",
            "--netns",
            &ns.path(),
            "--run-dir",
        ])
        .arg(&run_dir));
    let origin: Value = serde_json::from_slice(&out.stdout).expect("who --netns");
    assert_eq!(origin["pid"], client.pid());
}

/// Reads one answer line from `stream`.
fn read_answer(stream: &UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("reading an answer");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}"))
}

#[test]
fn misbehaving_query_clients_do_not_keep_others_waiting() {
    let ns = Netns::new();
    // A socket file left by a daemon that died is replaced.
    let install = Install::new();
    let run_dir = install.run_dir();
    let socket = run_dir.join("query.sock");
    std::fs::create_dir_all(&run_dir).expect("creating the run directory");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("a stale socket"));
    assert!(
        UnixStream::connect(&socket).is_err(),
        "nothing answers there"
    );
    let mut daemon = Daemon::start_in(&install, &config(&ns), &[]);
    let holder = Holder::start(&ns, &[PROTECTED], None);
    let client = holder.hold_client(&ns, "::1", PROTECTED);
    let (peer, local) = ends(&holder.wait_accepted(1));
    let who_request = line(json!({"op": "who", "peer": peer, "local": local}));

    // A client that never sends, held open throughout.
    let silent = UnixStream::connect(&socket).expect("connecting");
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    // Ten thousand malformed lines, then a good one, on one connection.
    let mut flood = vec!["{\"op\": not json".to_owned(); 10_000];
    flood.push(who_request.clone());
    let answers = raw_query(&ns, None, &run_dir, &flood);
    assert_eq!(answers.len(), 10_001);
    assert!(
        answers[..10_000]
            .iter()
            .all(|a| a["ok"] == false && a["error"] == "bad-request"),
        "{:#?}",
        &answers[..3]
    );
    assert_eq!(answers[10_000]["origin"]["pid"], client.pid());

    // An over-long line: too-long, and the connection closes unanswered.
    let answers = raw_query(
        &ns,
        None,
        &run_dir,
        &["x".repeat(5000), who_request.clone()],
    );
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_eq!(answers[0]["error"], "too-long");
    // 4096 bytes is still a line: a (bad) request, answered.
    let (head, tail) = (r#"{"op":"who","pad":""#, r#""}"#);
    let padded = format!("{head}{}{tail}", "x".repeat(4096 - head.len() - tail.len()));
    let answers = raw_query(&ns, None, &run_dir, &[padded, who_request.clone()]);
    assert_eq!(answers[0]["error"], "bad-request", "{answers:#?}");
    assert_eq!(answers[1]["origin"]["pid"], client.pid(), "{answers:#?}");

    // Meanwhile the silent one is told and closed.
    let answer = read_answer(&silent);
    assert_eq!(answer["error"], "timeout", "{answer}");
    assert_eq!((&silent).read(&mut [0; 1]).expect("EOF"), 0);

    // Past one uid's client limit (16): one `busy` line naming it; another
    // uid is still served; served again once one leaves.
    let mut idle: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&socket).expect("connecting"))
        .collect();
    let extra = UnixStream::connect(&socket).expect("connecting");
    extra
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let busy = read_answer(&extra);
    assert_eq!(busy["error"], "busy", "{busy}");
    assert!(
        busy["message"]
            .as_str()
            .is_some_and(|m| m.contains("16 clients of uid 0")),
        "{busy}"
    );
    let answers = raw_query(
        &ns,
        Some(65534),
        &run_dir,
        std::slice::from_ref(&who_request),
    );
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_ne!(answers[0]["error"], "busy", "another uid was turned away");
    idle.pop();
    wait_for("a query served again", Duration::from_secs(10), || {
        let answers = raw_query(&ns, None, &run_dir, std::slice::from_ref(&who_request));
        (answers[0]["origin"]["pid"] == client.pid()).then_some(())
    });
    drop(idle);

    // The daemon's exit removes the socket; the CLI says what to do.
    assert!(socket.exists());
    assert!(daemon.stop(), "the daemon did not exit 0");
    assert!(!socket.exists(), "{} left behind", socket.display());
    let out = loopwarden(&ns, None, &run_dir, &["who", &peer, &local]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no loopwarden daemon answers"), "{stderr}");
    assert!(stderr.contains("loopwarden run"), "{stderr}");
}

/// Accepts one connection on `127.0.0.1:PORT` and asks its origin every
/// 50 ms for as long as it runs, appending one JSON line per ask to OUT:
/// `n` (a count), `status` and `tgid`, or `errno` when the call failed.
const REASK: &str = r#"import json, socket, struct, sys, time
out = open(sys.argv[1], "a")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[2])))
s.listen(1)
c, _ = s.accept()
n = 0
while True:
    line = {"n": n}
    try:
        rec = c.getsockopt(0x4c57, 1, 328)
        line.update(status=rec[8], tgid=struct.unpack_from("=I", rec, 152)[0])
    except OSError as e:
        line["errno"] = e.errno
    out.write(json.dumps(line) + "\n")
    out.flush()
    n += 1
    time.sleep(0.05)
"#;

/// The asks [`REASK`] has written so far.
fn asked(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for an ask made after the first `after` ones that satisfies `ok`.
fn wait_ask(out: &Path, after: usize, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(10), || {
        asked(out).into_iter().skip(after).find(|a| ok(a))
    })
}

#[test]
fn an_open_connections_origin_outlives_daemon_restarts_and_getsockopt_can_be_turned_off() {
    let ns = Netns::new();
    let install = Install::new();
    let config = config(&ns);
    let mut daemon = Daemon::start_in(&install, &config, &[]);
    let dir = TempDir::new("reask");
    let script = write_script(&dir, "reask.py", REASK);
    let out = dir.path().join("asked.jsonl");
    let port = PROTECTED.to_string();
    let _service = ns.spawn(SYSTEM_PYTHON, &[&script, &out.display().to_string(), &port]);
    ns.wait_listening(PROTECTED);
    let dir2 = TempDir::new("reask-client");
    let hold = write_script(
        &dir2,
        "hold.py",
        "import socket, sys, time\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
         while True: time.sleep(3600)\n",
    );
    let client = ns.spawn(SYSTEM_PYTHON, &[&hold, &port]);
    let me = u64::from(client.pid());
    let named = |a: &Value| a["status"] == 1 && a["tgid"] == me;
    wait_ask(&out, 0, "the connection's origin", named);

    // No daemon: the pinned program and maps still answer.
    assert!(daemon.stop(), "the daemon did not exit cleanly");
    let n = asked(&out).len();
    wait_ask(&out, n, "the origin with no daemon running", named);

    // A new daemon adopts the pins: the socket keeps its tag, and the
    // daemon's table still names the connection.
    let mut daemon = Daemon::start_in(&install, &config, &[]);
    let n = asked(&out).len();
    wait_ask(&out, n, "the origin after the restart", named);
    let listed = conns(&ns, None, &install.run_dir());
    assert!(
        listed.iter().any(|o| o["pid"] == me),
        "conns after the restart: {listed:#?}"
    );
    assert!(daemon.stop(), "the daemon did not exit cleanly");

    // `[provenance] connections` changed: `LW_CONNS` alone is replaced at
    // the new size, the open connection's origin copied into it; every
    // other map (the policy, the tracking state) is adopted.
    let shown = |name: &str| map_show(&install, name);
    let (procs, before) = (shown("LW_PROCS"), shown("LW_CONNS"));
    assert_eq!(before["max_entries"], loopwarden_common::MAX_CONNS);
    let config = format!("{config}\n[provenance]\nconnections = 2048\n");
    let mut daemon = Daemon::start_in(&install, &config, &[]);
    daemon.wait_stderr(
        "LW_CONNS holds 16384 entries and [provenance] connections asks for 2048",
        1,
    );
    daemon.wait_stderr("LW_CONNS resized: 1 entries copied over", 1);
    let after = shown("LW_CONNS");
    assert_eq!(after["max_entries"], 2048, "{after}");
    assert_ne!(after["id"], before["id"], "LW_CONNS was not replaced");
    assert_eq!(
        shown("LW_PROCS")["id"],
        procs["id"],
        "LW_PROCS was replaced"
    );
    let n = asked(&out).len();
    wait_ask(&out, n, "the origin after the resize", named);
    let listed = conns(&ns, None, &install.run_dir());
    assert!(
        listed.iter().any(|o| o["pid"] == me),
        "conns after the resize: {listed:#?}"
    );
    let status = run(Command::new(loopwarden_bin())
        .arg("status")
        .args(install.dir_args()));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("connections are tagged, 1 live of 2048"),
        "{text}"
    );
    assert!(daemon.stop(), "the daemon did not exit cleanly");

    // `[provenance] getsockopt = false`: this loopwarden no longer answers
    // (the call fails, or another loopwarden on the host says "unknown");
    // the query socket still names the connection.
    let off = config.replace("[provenance]\n", "[provenance]\ngetsockopt = false\n");
    let mut daemon = Daemon::start_in(&install, &off, &[]);
    daemon.wait_stderr("adopted the pinned maps;", 1);
    let n = asked(&out).len();
    let after = wait_ask(&out, n, "getsockopt no longer answered", |a| {
        a.get("errno").is_some() || a["status"] == 0
    });
    if let Some(errno) = after.get("errno") {
        assert!(
            *errno == libc::ENOPROTOOPT || *errno == libc::EOPNOTSUPP,
            "{after}"
        );
    }
    let listed = conns(&ns, None, &install.run_dir());
    assert!(
        listed.iter().any(|o| o["pid"] == me),
        "conns with getsockopt off: {listed:#?}"
    );
    assert!(daemon.stop(), "the daemon did not exit cleanly");
    drop(client);
}

#[test]
fn getsockopt_answers_only_in_the_cgroups_the_policy_names() {
    const SECOND: u16 = 8082;
    let ns = Netns::new();
    let cgroup =
        loopwarden_tests::TestCgroup::new(&format!("lwt-getsockopt-{}", std::process::id()));
    let policy = Policy::new(&ns, "audit")
        .catalog(false)
        .relay("audit")
        .ports(&[PROTECTED, SECOND]);
    let config = format!(
        "{}\n[provenance]\ngetsockopt_cgroups = [\"{}\"]\n",
        policy.text(),
        cgroup.name
    );
    let daemon = Daemon::start(&config);
    let dir = TempDir::new("scoped");
    let script = write_script(&dir, "reask.py", REASK);
    let hold = write_script(
        &dir,
        "hold.py",
        "import socket, sys, time\ns = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n\
         while True: time.sleep(3600)\n",
    );
    // One service started in the named cgroup (its listener, and so its
    // accepted sockets, belong to it), one in the test's own cgroup.
    let inside = dir.path().join("inside.jsonl");
    let outside = dir.path().join("outside.jsonl");
    // (Moved in from here: `ip netns exec` gives the service a /sys without
    // the cgroup mount. It waits for the move before it listens.)
    let go = dir.path().join("go");
    let in_cgroup = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; exec {SYSTEM_PYTHON} {script} {} {PROTECTED}",
        inside.display(),
        go = go.display()
    );
    let inside_service = Proc::spawn(ns.cmd("sh").args(["-c", &in_cgroup]));
    std::fs::write(cgroup.procs(), inside_service.pid().to_string()).expect("moving the service");
    std::fs::write(&go, "").expect("starting the service");
    let _outside_service = ns.spawn(
        SYSTEM_PYTHON,
        &[&script, &outside.display().to_string(), &SECOND.to_string()],
    );
    ns.wait_listening(PROTECTED);
    ns.wait_listening(SECOND);
    let a = ns.spawn(SYSTEM_PYTHON, &[&hold, &PROTECTED.to_string()]);
    let b = ns.spawn(SYSTEM_PYTHON, &[&hold, &SECOND.to_string()]);
    let (a_pid, b_pid) = (u64::from(a.pid()), u64::from(b.pid()));

    // Inside: the socket's origin.
    wait_ask(&inside, 0, "the origin inside the named cgroup", |x| {
        x["status"] == 1 && x["tgid"] == a_pid
    });
    // Outside: this loopwarden does not answer (the call fails, or another
    // loopwarden on the host says "unknown") ...
    let asked = wait_ask(&outside, 0, "an ask outside the named cgroup", |_| true);
    assert!(
        asked.get("errno").is_some() || asked["status"] == 0,
        "answered outside the named cgroup: {asked}"
    );
    // ... though the connection is tagged: the daemon names it.
    let listed = conns(&ns, None, &daemon.install().run_dir());
    assert!(listed.iter().any(|o| o["pid"] == b_pid), "{listed:#?}");
    assert!(listed.iter().any(|o| o["pid"] == a_pid), "{listed:#?}");

    // `status` shows the scoped link and no root one.
    let out = run(Command::new(loopwarden_bin())
        .args(["status", "--json"])
        .args(daemon.install().dir_args()));
    let json: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let provenance = &json["provenance"];
    assert_eq!(provenance["getsockopt"]["pinned"], false, "{provenance:#}");
    let scoped = provenance["getsockopt_scoped"]
        .as_array()
        .expect("scoped links");
    assert_eq!(scoped.len(), 1, "{provenance:#}");
    assert_eq!(scoped[0]["prog_name"], "lw_getsockopt", "{provenance:#}");
    drop((a, b, inside_service));
}

/// Accepts every connection on 127.0.0.1:PORT and holds it until killed.
const HOLD_ALL: &str = r#"import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(4096)
held = []
while True:
    held.append(s.accept()[0])
"#;

/// Opens N connections to 127.0.0.1:PORT, writes N to DONE once all are
/// established, and holds them until killed.
const OPEN_N: &str = r#"import socket, sys, time
n, port, done = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
open(done, "w").write(str(len(held)))
while True:
    time.sleep(3600)
"#;

#[test]
fn a_nearly_full_connection_table_is_warned_of_once_and_eased() {
    let ns = Netns::new();
    let dir = TempDir::new("full");
    let config = format!("{}\n[provenance]\nconnections = 1024\n", config(&ns));
    let daemon = Daemon::start(&config);
    let port = PROTECTED.to_string();
    let server = write_script(&dir, "hold_all.py", HOLD_ALL);
    let mut server = ns.spawn(SYSTEM_PYTHON, &[&server, &port]);
    ns.wait_listening(PROTECTED);
    let open = write_script(&dir, "open_n.py", OPEN_N);
    let hold = |n: usize, tag: &str| {
        let done = dir.path().join(tag);
        let client = ns.spawn(
            SYSTEM_PYTHON,
            &[&open, &n.to_string(), &port, &done.display().to_string()],
        );
        wait_for(
            &format!("{n} connections held"),
            Duration::from_secs(30),
            || {
                std::fs::metadata(&done)
                    .is_ok_and(|m| m.len() > 0)
                    .then_some(())
            },
        );
        client
    };
    let warning = "LW_CONNS holds";

    // 600 of 1024 (58%), for longer than the 10 s between two counts:
    // no warning.
    let mut first = hold(600, "first");
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        !daemon.stderr_text().contains(warning),
        "warned at 58%: {}",
        daemon.stderr_text()
    );
    // 950 (93%): one warning, with the numbers and what to do.
    let mut second = hold(350, "second");
    daemon.wait_stderr("LW_CONNS holds 950 of 1024 entries", 1);
    assert!(
        daemon
            .stderr_text()
            .contains("raise [provenance] connections"),
        "{}",
        daemon.stderr_text()
    );
    // Every connection closed (the server's sockets too): eased, and the
    // warning was given once.
    second.kill();
    first.kill();
    server.kill();
    daemon.wait_stderr("LW_CONNS is below 75% full again (0 of 1024)", 1);
    assert_eq!(daemon.stderr_text().matches(warning).count(), 1);
}
