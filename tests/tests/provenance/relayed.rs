//! Relayed connections (socat, `ssh -L`) named with the remote party, and
//! each uid seeing only the connections its own sockets accepted.

use loopwarden_tests::ident::{
    HeldConnection, error_reply, holding_server_dropping_to, ident_query,
};

use super::*;

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
/// and how it was seen (`how`), by the daemon and in the record getsockopt
/// gave the service.
fn assert_relayed(origin: &Value, accepted: &Value, how: &str) {
    assert_eq!(origin["pid"], accepted["tgid"], "{origin:#}");
    // The record: verdict audit (1), the relay verdict's rule (254), and
    // the evidence's kind.
    let kind = ["listening", "accepted", "received", "connected", "stdio"]
        .iter()
        .position(|k| *k == how)
        .expect("a kind of evidence")
        + 1;
    assert_eq!(accepted["verdict"], 1, "{accepted}");
    assert_eq!(accepted["rule"], 254, "{accepted}");
    assert_eq!(accepted["via_kind"], kind, "{accepted}");
    assert_eq!(origin["verdict"], "audit", "{origin:#}");
    assert_eq!(origin["rule"], "relay", "{origin:#}");
    let via = origin["via"].as_str().unwrap_or_default();
    assert!(via.starts_with(&format!("{REMOTE_ADDR}:")), "{origin:#}");
    assert_eq!(origin["via_how"], how, "{origin:#}");
}

#[test]
fn relays_are_named_with_the_remote_party() {
    let topo = Topology::new();
    let daemon = Daemon::start(&config_with_ident(&topo.local));
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
    // The raw query socket by cookie, and ident, say the same of it: no
    // user is named for a connection sshd made for a remote party.
    let answers = raw_query(
        &topo.local,
        None,
        &run_dir,
        &[line(json!({"op": "who", "cookie": accepted["cookie"]}))],
    );
    assert_eq!(answers[0]["origin"]["pid"], sshd_pid, "{answers:#?}");
    assert_eq!(answers[0]["origin"]["via_how"], "received", "{answers:#?}");
    let client_port = peer.rsplit(':').next().expect("a port");
    assert_eq!(
        ident_query(
            &topo.local,
            "127.0.0.1",
            &format!("{client_port} , {PROTECTED}")
        ),
        error_reply(client_port, PROTECTED, "NO-USER")
    );

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

    // Another uid: unknown, as a connection that does not exist (so that
    // no user can tell which are open), and nothing listed.
    let (code, stderr) = who(&ns, Some(OTHER), &run_dir, &peer, &local).expect_err("unknown");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown"), "{stderr}");
    let answers = raw_query(&ns, Some(OTHER), &run_dir, &requests);
    assert_eq!(answers[0]["error"], "unknown", "{answers:#?}");
    assert_eq!(answers[1]["error"], "unknown", "{answers:#?}");
    // Word for word the answers about connections that are not open.
    let absent = [
        line(json!({"op": "who", "peer": "127.0.0.1:1", "local": local})),
        line(json!({"op": "who", "cookie": 1})),
    ];
    let absent = raw_query(&ns, Some(OTHER), &run_dir, &absent);
    assert_eq!(answers[..2], absent[..], "{answers:#?} {absent:#?}");
    assert_eq!(answers[2]["conns"], json!([]), "{answers:#?}");
    assert!(conns(&ns, Some(OTHER), &run_dir).is_empty());

    // Only root in the host's namespace may name another namespace: not a
    // user, nor root in the test's namespace (a container's root without
    // a user namespace of its own).
    let elsewhere = line(json!({"op": "who", "peer": peer, "local": local, "netns": 1}));
    for uid in [Some(NOBODY), None] {
        let answers = raw_query(&ns, uid, &run_dir, std::slice::from_ref(&elsewhere));
        assert_eq!(answers[0]["error"], "forbidden", "{uid:?}: {answers:#?}");
    }
    // Root in a second namespace sees nothing of the first: the cookie
    // names no connection it may see, its `conns` lists none, and it may
    // not name the test's namespace (root there saw the origin above).
    let second = Netns::new();
    let into_first = line(json!({"op": "who", "peer": peer, "local": local,
                                 "netns": netns_inode(&ns)}));
    let answers = raw_query(
        &second,
        None,
        &run_dir,
        &[requests[1].clone(), requests[2].clone(), into_first],
    );
    assert_eq!(answers[0]["error"], "unknown", "{answers:#?}");
    assert_eq!(answers[1]["conns"], json!([]), "{answers:#?}");
    assert_eq!(answers[2]["error"], "forbidden", "{answers:#?}");
    // Root in the host's namespace: every namespace's connections.
    let out = run(Command::new(loopwarden_bin())
        .args(["conns", "--json", "--run-dir"])
        .arg(&run_dir));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("conns --json");
    assert!(
        listed.iter().any(|o| o["pid"] == client.pid()),
        "{listed:#?}"
    );
    // And one namespace's with --netns: the test's has it, the second none.
    let in_ns = |netns: &Netns| {
        run(Command::new(loopwarden_bin())
            .args(["conns", "--json", "--netns", &netns.path(), "--run-dir"])
            .arg(&run_dir))
    };
    let out = in_ns(&ns);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("conns --netns");
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["pid"], client.pid());
    let out = in_ns(&second);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout, b"[]\n", "{out:?}");
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

/// A service that listened as root and then became nobody (as services
/// that bind a port as root do) sees the connections it accepted as
/// nobody, by the accepted socket's owner now, as getsockopt and ident
/// answer it: `who` by its ends and by its cookie, and `conns`. Another
/// uid still sees none, and nobody asking from another network namespace
/// (the host's) by the cookie does not either: a socket's owner counts
/// only in the asker's own. Fails against a build that knows a user's
/// connections only by their listener's owner (root's here).
#[test]
fn a_service_that_became_its_user_after_listening_sees_its_connections() {
    let ns = Netns::new();
    let dir = TempDir::new("dropping-server");
    let daemon = Daemon::start(&config(&ns));
    let run_dir = daemon.install().run_dir();
    let _service = holding_server_dropping_to(&ns, PROTECTED, NOBODY);
    let mut clients = Vec::new();
    for host in ["127.0.0.1", "::1"] {
        let client = HeldConnection::open(&ns, &dir, host, PROTECTED, None);
        let addr = |port: u16| match host {
            "::1" => format!("[::1]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let (peer, local) = (addr(client.local_port), addr(PROTECTED));
        // Root sees it, with its listener's owner as `server_uid`.
        let origin = who(&ns, None, &run_dir, &peer, &local).expect("root's who");
        assert_eq!(origin["server_uid"], 0, "{origin:#}");
        let requests = [
            line(json!({"op": "who", "peer": peer, "local": local})),
            line(json!({"op": "who", "cookie": origin["server_cookie"]})),
            line(json!({"op": "conns"})),
        ];
        // Nobody's once the service has accepted it (the socket is root's,
        // its listener's, until then).
        let mine = wait_for(
            "nobody to see its connection",
            Duration::from_secs(10),
            || who(&ns, Some(NOBODY), &run_dir, &peer, &local).ok(),
        );
        assert_eq!(mine["pid"], origin["pid"], "{host}: {mine:#}");
        let answers = raw_query(&ns, Some(NOBODY), &run_dir, &requests);
        assert_eq!(answers[0]["origin"]["pid"], origin["pid"], "{answers:#?}");
        assert_eq!(answers[1]["origin"]["pid"], origin["pid"], "{answers:#?}");
        // The service holds every connection it accepted.
        clients.push(client);
        assert_eq!(
            answers[2]["conns"].as_array().map(Vec::len),
            Some(clients.len()),
            "{answers:#?}"
        );
        // Another uid: as a connection that is not open.
        let answers = raw_query(&ns, Some(OTHER), &run_dir, &requests);
        assert_eq!(answers[0]["error"], "unknown", "{answers:#?}");
        assert_eq!(answers[1]["error"], "unknown", "{answers:#?}");
        assert_eq!(answers[2]["conns"], json!([]), "{answers:#?}");
        // Nobody in the host's namespace, by the cookie: unknown.
        let answers = raw_query_from_host_as(NOBODY, &run_dir, &requests[1..2]);
        assert_eq!(answers[0]["error"], "unknown", "{answers:#?}");
    }
}
