//! Direct clients named while connected and after they exit, the rule
//! that judged them, unprotected connections and those older than the
//! daemon unknown, an origin kept when its slots are taken, and a connect
//! that never completes leaving no pending origin.

use super::*;

/// `loopwarden who PEER LOCAL` says the connection is unknown (exit 1).
fn assert_unknown_to_who(ns: &Netns, run_dir: &Path, peer: &str, local: &str) {
    let (code, stderr) = who(ns, None, run_dir, peer, local).expect_err("unknown");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown"), "{stderr}");
}

/// curl fetching `url` from a service that never answers: it holds its
/// connection for up to 5 minutes.
fn waiting_curl(ns: &Netns, url: &str) -> Proc {
    ns.spawn("curl", &["-s", "--max-time", "300", url])
}

#[test]
fn direct_clients_are_named_while_connected_and_after_they_exit() {
    use loopwarden_tests::ident::{error_reply, ident_query, user_reply};

    let ns = Netns::new();
    let daemon = Daemon::start(&config_with_ident(&ns));
    let run_dir = daemon.install().run_dir();
    let holder = Holder::start(&ns, &[PROTECTED], None);

    // curl over IPv4, waiting for an answer that never comes.
    let mut curl = waiting_curl(&ns, &format!("http://127.0.0.1:{PROTECTED}/"));
    let accepted = holder.wait_accepted(1);
    let (peer, local) = ends(&accepted);
    assert_eq!(local, format!("127.0.0.1:{PROTECTED}"));
    let pid = u64::from(curl.pid());
    // The service's own question, answered by the kernel: with the
    // record, whose length the answer tells however large the buffer.
    assert_eq!(accepted["status"], 1, "{accepted}");
    assert_eq!(accepted["len"], 328, "{accepted}");
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
            // Another namespace named: root here is root of this one only.
            line(json!({"op": "who", "cookie": accepted["cookie"], "netns": 1})),
        ],
    );
    assert_eq!(answers.len(), 4, "{answers:#?}");
    assert_eq!(answers[3]["error"], "forbidden", "{answers:#?}");
    // Root in the host's namespace may name any: the cookie is found in
    // the namespace that holds it, and in no other.
    let by_host = raw_query_from_host(
        &run_dir,
        &[
            line(json!({"op": "who", "cookie": accepted["cookie"], "netns": netns_inode(&ns)})),
            line(json!({"op": "who", "cookie": accepted["cookie"], "netns": 1})),
        ],
    );
    assert_eq!(by_host[0]["origin"]["pid"], pid, "{by_host:#?}");
    assert_eq!(by_host[1]["error"], "unknown", "{by_host:#?}");
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
    // The two ends the other way round (as `ss` lists the service's
    // socket): found, with a word on the order.
    let out = loopwarden(&ns, None, &run_dir, &["who", &local, &peer]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(&format!("\npid:            {pid} (running)\n")),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("found with PEER and LOCAL the other way round"),
        "{out:?}"
    );
    let out = loopwarden(&ns, None, &run_dir, &["who", "127.0.0.1", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert_eq!(all.len(), 1, "{out:?}");
    assert_eq!(all[0]["pid"], pid);

    // ident names curl's user.
    let client_port = peer.rsplit_once(':').expect("ADDR:PORT").1;
    let ident = format!("{client_port} , {PROTECTED}");
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &ident),
        user_reply(client_port, PROTECTED, "root")
    );

    // A closed connection disappears, for ident too.
    curl.kill();
    wait_gone(&ns, daemon.install(), &peer, &local);
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &ident),
        error_reply(client_port, PROTECTED, "NO-USER")
    );
    let out = loopwarden(&ns, None, &run_dir, &["who", "127.0.0.1", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, b"[]\n", "{out:?}");

    // curl over IPv6: the service's getsockopt and the daemon name it too.
    let mut curl6 = waiting_curl(&ns, &format!("http://[::1]:{PROTECTED}/"));
    let accepted = holder.wait_accepted(2);
    let (peer, local) = ends(&accepted);
    assert_eq!(local, format!("[::1]:{PROTECTED}"));
    assert_eq!(accepted["status"], 1, "{accepted}");
    assert_eq!(accepted["tgid"], curl6.pid(), "{accepted}");
    assert_eq!(accepted["verdict"], 0, "allow: {accepted}");
    assert_eq!(accepted["via_kind"], 0, "no evidence: {accepted}");
    let origin = who(&ns, None, &run_dir, &peer, &local).expect("who knows curl over IPv6");
    assert_eq!(origin["pid"], curl6.pid(), "{origin:#}");
    assert_eq!(origin["comm"], "curl", "{origin:#}");
    assert_eq!(origin["client"], peer, "{origin:#}");
    curl6.kill();
    wait_gone(&ns, daemon.install(), &peer, &local);

    // Over IPv6, from a process that exits while its child keeps the socket.
    let client = holder.fork_client(&ns, "::1", PROTECTED);
    let pid = client.pid;
    let accepted = holder.wait_accepted(3);
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
    // The service asks the kernel again now that the process that
    // connected is gone: the same answer.
    let again = holder.reask(1);
    assert_eq!(again[0]["peer"], accepted["peer"], "{again:#?}");
    assert_eq!(again[0]["status"], 1, "{again:#?}");
    assert_eq!(again[0]["tgid"], pid, "{again:#?}");
    assert_matches_audit(
        &origin,
        &audit_line(&daemon, u64::from(pid)),
        &KERNEL_FIELDS,
    );
    let listed = conns(&ns, None, &run_dir);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["pid"], pid);
    drop(client);
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
    daemon.wait_installed(1);
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
    assert_eq!(plain["len"], 328, "{plain}");
    assert_eq!(plain["tgid"], 0, "{plain}");
    assert!(plain.get("errno").is_none(), "{plain}");

    // The daemon: the same.
    let (peer, local) = ends(&tagged);
    let origin = who(&ns, None, &run_dir, &peer, &local).expect("the protected one is known");
    assert_eq!(origin["pid"], protected_client.pid());
    let (peer, local) = ends(&plain);
    assert_unknown_to_who(&ns, &run_dir, &peer, &local);
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

/// Listens on 127.0.0.1:argv[1], makes one connection to it and prints
/// `OLD_PORT`; then, for each line of stdin, makes another and prints as
/// JSON what getsockopt(SOL_LOOPWARDEN) says of both accepted sockets
/// (`status`, or `errno N`) and the new one's client port. Every
/// connection is held until the process is killed.
const OLD_AND_NEW: &str = r#"import json, socket, sys
port = int(sys.argv[1])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen()
held = []
def pair():
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = l.accept()
    held.append((c, a))
    return c, a
def status(a):
    try:
        return a.getsockopt(0x4c57, 1, 328)[8]
    except OSError as e:
        return "errno %d" % e.errno
old = pair()
print(old[0].getsockname()[1], flush=True)
for line in sys.stdin:
    new = pair()
    print(json.dumps({"old": status(old[1]), "new": status(new[1]),
                      "new_port": new[0].getsockname()[1]}), flush=True)
"#;

/// A connection made before the daemon first ran carries no origin: the
/// kernel, the daemon and the ident responder all call it unknown, while
/// a connection the same process makes once the daemon runs is named.
#[test]
fn a_connection_older_than_the_daemon_is_unknown_to_every_way_of_asking() {
    use loopwarden_tests::ident::{error_reply, ident_query, user_reply};

    let ns = Netns::new();
    let mut proc = Talker::spawn(
        ns.cmd(SYSTEM_PYTHON)
            .args(["-c", OLD_AND_NEW, &PROTECTED.to_string()]),
        "the client making an old and a new connection",
    );
    let old_port: u16 = proc.line().trim().parse().expect("a port");

    let daemon = Daemon::start(&config_with_ident(&ns));
    let run_dir = daemon.install().run_dir();
    let answers: Value = serde_json::from_str(&proc.ask("new")).expect("JSON");
    let new_port = answers["new_port"].as_u64().expect("the new port");

    // getsockopt: an answer for both, unknown for the old one.
    assert_eq!(answers["old"], 0, "{answers}");
    assert_eq!(answers["new"], 1, "{answers}");
    // who: the same.
    let local = format!("127.0.0.1:{PROTECTED}");
    assert_unknown_to_who(&ns, &run_dir, &format!("127.0.0.1:{old_port}"), &local);
    let origin = who(
        &ns,
        None,
        &run_dir,
        &format!("127.0.0.1:{new_port}"),
        &local,
    )
    .expect("the new connection is known");
    assert_eq!(origin["pid"], proc.pid(), "{origin:#}");
    // ident: no user for the old one, root for the new one.
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &format!("{old_port} , {PROTECTED}")),
        error_reply(old_port, PROTECTED, "NO-USER")
    );
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &format!("{new_port} , {PROTECTED}")),
        user_reply(new_port, PROTECTED, "root")
    );
    drop(proc);
}

/// Makes a connection to the port in argv[1] and asks its accepted socket
/// (tagged, under the daemon), its client's and a Unix socket pair every
/// other kind of getsockopt, and prints the answers as JSON: an integer, a
/// structure (with a buffer past a page), a name, loopwarden's level with
/// a buffer too short for the record and with another option, and an
/// answer larger than a page (`SO_PEERGROUPS` of a pair made with 1,100
/// supplementary groups: 4,400 bytes, of which a `cgroup/getsockopt`
/// program sees one page). `origin` is the record's status, or the error.
const OTHER_OPTIONS: &str = r#"
import ctypes, json, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
# libc's, not Python's getsockopt: that takes at most 1,024 bytes.
def answer(s, level, name, size):
    buf, n = ctypes.create_string_buffer(size), ctypes.c_uint32(size)
    if libc.getsockopt(s.fileno(), level, name, buf, ctypes.byref(n)) != 0:
        return {"errno": ctypes.get_errno()}
    return buf.raw[:n.value]
GROUPS = range(100000, 101100)
os.setgroups(GROUPS)
port = int(sys.argv[1])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", port))
l.listen()
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
c.connect(("127.0.0.1", port))
a, _ = l.accept()
p, q = socket.socketpair()
info = answer(a, socket.IPPROTO_TCP, socket.TCP_INFO, 8192)
groups = answer(p, socket.SOL_SOCKET, 59, 8192)  # SO_PEERGROUPS
record = answer(a, 0x4c57, 1, 400)
status = lambda r: r if isinstance(r, dict) else r[8]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", port))
print(json.dumps({
    "origin": status(record),
    "udp_origin": status(answer(u, 0x4c57, 1, 400)),
    "unix_origin": status(answer(p, 0x4c57, 1, 400)),
    "type": struct.unpack("i", answer(a, socket.SOL_SOCKET, socket.SO_TYPE, 4))[0],
    "rcvbuf": struct.unpack("i", answer(c, socket.SOL_SOCKET, socket.SO_RCVBUF, 4))[0],
    "tcp_info": [len(info), info[0]],
    "congestion": answer(a, socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode(),
    "short_buffer": answer(a, 0x4c57, 1, 8),
    "other_option": answer(a, 0x4c57, 2, 400),
    "peer_groups": [len(groups), struct.unpack("%dI" % (len(groups) // 4), groups) == tuple(GROUPS)],
}))
"#;

/// With the getsockopt program attached at the root, every getsockopt but
/// loopwarden's own, on a tagged connection's sockets or any other, is
/// answered by the kernel as without it, also an answer larger than the
/// page the program sees.
#[test]
fn other_getsockopt_options_get_the_kernels_own_answer() {
    let ns = Netns::new();
    let probe = || -> Value {
        let out = ns
            .cmd(SYSTEM_PYTHON)
            .args(["-c", OTHER_OPTIONS, &PROTECTED.to_string()])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the probe's JSON")
    };
    // An IPv4 socket's answer to a level it does not know (an IPv6
    // socket's is ENOPROTOOPT).
    let unknown_level = json!({ "errno": libc::EOPNOTSUPP });
    let mut without = probe();
    assert_eq!(without["origin"], unknown_level, "{without:#}");
    assert_eq!(without["tcp_info"][1], 1, "ESTABLISHED: {without:#}");
    assert_eq!(without["short_buffer"], unknown_level, "{without:#}");
    assert_eq!(without["other_option"], unknown_level, "{without:#}");
    assert_eq!(without["peer_groups"], json!([4400, true]), "{without:#}");

    assert!(without["udp_origin"]["errno"].is_number(), "{without:#}");
    assert!(without["unix_origin"]["errno"].is_number(), "{without:#}");

    let _daemon = Daemon::start(&config(&ns));
    let mut with = probe();
    assert_eq!(with["origin"], 1, "the accepted socket is tagged: {with:#}");
    // Where the program is attached, a socket that is not TCP gets an
    // answer too: status unknown, never an error (the clients document it).
    assert_eq!(with["udp_origin"], 0, "{with:#}");
    assert_eq!(with["unix_origin"], 0, "{with:#}");
    for key in ["origin", "udp_origin", "unix_origin"] {
        without[key].take();
        with[key].take();
    }
    assert_eq!(with, without);
}

/// Older than any handshake (the kernel's bound is 180 s).
const STALE_NS: u64 = 181_000_000_000;

/// A connect whose slots in `LW_ORIGIN_SLOTS` are all taken (by claims
/// written here, made now) keeps its origin in `LW_ORIGIN_PENDING` instead
/// and is named all the same, leaving the slots alone; once those claims
/// are older than any handshake, the next connect takes one over, and
/// gives it back when its handshake completes.
#[test]
fn an_origin_is_kept_when_its_slots_are_taken_and_a_stale_slot_is_taken_over() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let install = daemon.install();
    let holder = Holder::start(&ns, &[PROTECTED], None);
    let fake = |i: u32| 0xdead_0000_0000_0000 | u64::from(i);
    let fakes_left = |install: &Install| {
        slot_owners(install)
            .iter()
            .enumerate()
            .filter(|&(i, &owner)| owner == fake(i as u32))
            .count()
    };
    let slots = loopwarden_common::ORIGIN_SLOTS as usize;

    take_slots(install, fake, monotonic_ns());
    let first = holder.fork_client(&ns, "127.0.0.1", PROTECTED);
    let accepted = holder.wait_accepted(1);
    assert_eq!(accepted["status"], 1, "{accepted}");
    assert_eq!(accepted["tgid"], first.pid, "{accepted}");
    assert_eq!(fakes_left(install), slots, "taken slots are left alone");
    assert!(map_dump(install, "LW_ORIGIN_PENDING").is_empty());

    // Wrapping, as the kernel compares: stale whatever the uptime.
    take_slots(install, fake, monotonic_ns().wrapping_sub(STALE_NS));
    let second = holder.fork_client(&ns, "::1", PROTECTED);
    let accepted = holder.wait_accepted(2);
    assert_eq!(accepted["status"], 1, "{accepted}");
    assert_eq!(accepted["tgid"], second.pid, "{accepted}");
    let owners = slot_owners(install);
    assert_eq!(
        fakes_left(install),
        slots - 1,
        "one stale slot taken over: {owners:x?}"
    );
    assert_eq!(
        owners.iter().filter(|&&owner| owner == 0).count(),
        1,
        "and given back: {owners:x?}"
    );
}

/// A connection whose slots in `LW_CONN_SLOTS` are all taken (by
/// connections written here, made now, not yet accepted) is kept in
/// `LW_CONNS` instead and named all the same, leaving the slots alone;
/// once those connections are older than any handshake (their servers
/// never completed theirs), the next connection takes one over.
#[test]
fn a_connection_is_kept_when_its_slots_are_taken_and_a_dead_slot_is_taken_over() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let install = daemon.install();
    let holder = Holder::start(&ns, &[PROTECTED], None);
    let fakes_left = |install: &Install| {
        owners(install, "LW_CONN_SLOTS")
            .iter()
            .enumerate()
            .filter(|&(i, &owner)| owner == fake_conn_owner(i as u32))
            .count()
    };
    let slots = loopwarden_common::CONN_SLOTS as usize;
    let run_dir = install.run_dir();

    take_conn_slots(install, monotonic_ns());
    let first = holder.fork_client(&ns, "127.0.0.1", PROTECTED);
    let accepted = holder.wait_accepted(1);
    assert_eq!(accepted["status"], 1, "{accepted}");
    assert_eq!(accepted["tgid"], first.pid, "{accepted}");
    assert_eq!(fakes_left(install), slots, "taken slots are left alone");
    assert_eq!(map_dump(install, "LW_CONNS").len(), 1);
    let (peer, local) = ends(&accepted);
    let origin = who(&ns, None, &run_dir, &peer, &local).expect("who knows the first");
    assert_eq!(origin["pid"], first.pid, "{origin:#}");

    // Wrapping, as the kernel compares: stale whatever the uptime.
    take_conn_slots(install, monotonic_ns().wrapping_sub(STALE_NS));
    let second = holder.fork_client(&ns, "::1", PROTECTED);
    let accepted = holder.wait_accepted(2);
    assert_eq!(accepted["status"], 1, "{accepted}");
    assert_eq!(accepted["tgid"], second.pid, "{accepted}");
    assert_eq!(fakes_left(install), slots - 1, "one dead slot taken over");
    assert_eq!(map_dump(install, "LW_CONNS").len(), 1, "the first's alone");
    let (peer, local) = ends(&accepted);
    let origin = who(&ns, None, &run_dir, &peer, &local).expect("who knows the second");
    assert_eq!(origin["pid"], second.pid, "{origin:#}");
}

/// A protected connect whose handshake never completes leaves nothing
/// behind: its origin waits in `LW_ORIGIN_SLOTS` while its SYN is
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
    let entries = || {
        let install = daemon.install();
        let slots = slot_owners(install).iter().filter(|&&o| o != 0).count();
        slots + map_dump(install, "LW_ORIGIN_PENDING").len()
    };
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

/// A service bound to a device (`SO_BINDTODEVICE` to `lo`, whose accepted
/// sockets are bound to it too) has its connection named by `who` as any
/// other's. sock_diag's lookup by addresses does not find a device-bound
/// socket, so the daemon looks for it by its cookie among all of the
/// namespace's. The positive control: getsockopt on the accepted socket,
/// which the kernel answers itself, names the same process. Fails against
/// the build before, which answered such a connection as closed.
#[test]
fn a_device_bound_services_connection_is_named() {
    const BOUND: &str = r#"import os, socket, struct, sys, time
d, port = sys.argv[1], int(sys.argv[2])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
listener.bind(("127.0.0.1", port))
listener.listen(1)
client = socket.create_connection(("127.0.0.1", port))
accepted, _ = listener.accept()
rec = accepted.getsockopt(0x4c57, 1, 328)
with open(os.path.join(d, "open.tmp"), "w") as f:
    f.write("127.0.0.1:%d 127.0.0.1:%d %d %d" % (client.getsockname()[1], port, rec[8],
                                                 struct.unpack_from("=I", rec, 152)[0]))
os.rename(os.path.join(d, "open.tmp"), os.path.join(d, "open"))
while True:
    time.sleep(3600)
"#;
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let run_dir = daemon.install().run_dir();
    let dir = TempDir::new("device-bound");
    let (proc, open) = spawn_until_open(&ns, &dir, "bound.py", BOUND);
    let [peer, local, status, tgid] = open.split(' ').collect::<Vec<_>>()[..] else {
        panic!("four words: {open}");
    };
    assert_eq!((status, tgid), ("1", proc.pid().to_string().as_str()));
    let origin = who(&ns, None, &run_dir, peer, local).expect("the device-bound connection");
    assert_eq!(origin["pid"], proc.pid(), "{origin:#}");
}
