//! The RFC 1413 ident responder (`[ident]`), end to end: bound inside the
//! test's namespace, asked by a raw client and by PostgreSQL's `ident`
//! authentication. A direct local client's connection is answered with
//! its user; a relay's with `NO-USER`, so the relay's uid never vouches
//! for whoever is behind it.

use loopwarden_tests::{
    Daemon, Install, Netns, PROTECTED, Policy, TempDir, UNPROTECTED,
    ident::{
        HeldConnection, IDENT_PORT, PG_USER, Postgres, connection_port_of, error_reply,
        holding_server, holding_server_as, holding_server_dropping_to, ident_exchange, ident_query,
        ident_query_as, ident_query_at, ident_query_listening, trickle, trickle_after_refusal,
        uid_of, user_reply,
    },
    idle::IdleClients,
    provenance::fork_client,
};

/// The responder's slots (`provenance::ident::MAX_CLIENTS`).
const MAX_CLIENTS: usize = 64;

/// Where a relay listens in the test namespace.
const RELAY_PORT: u16 = 9001;
/// PostgreSQL's port in the test namespace.
const PG_PORT: u16 = 5432;
/// `[ident] timeout_ms` in these tests: short, so a silent client is
/// closed soon (the tests read the close, they do not time it).
const TIMEOUT_MS: u32 = 300;

/// A policy for `ns` in audit mode protecting `port`, with the responder
/// on 127.0.0.1 and ::1 inside `ns`.
fn config(ns: &Netns, port: u16) -> String {
    config_with_timeout(ns, &[port], TIMEOUT_MS)
}

/// [`config`] protecting `ports`, `timeout_ms` for a query.
fn config_with_timeout(ns: &Netns, ports: &[u16], timeout_ms: u32) -> String {
    Policy::new(ns, "audit")
        .ports(ports)
        .extra(&format!(
            "[ident]\nlisten = [\"127.0.0.1:{IDENT_PORT}\", \"[::1]:{IDENT_PORT}\"]\nnetns = \
             \"{}\"\ntimeout_ms = {timeout_ms}\n",
            ns.path()
        ))
        .text()
}

/// Starts the daemon on [`config`] and checks it says where it answers.
fn daemon(ns: &Netns, port: u16) -> Daemon {
    daemon_on(ns, &config(ns, port))
}

fn daemon_on(ns: &Netns, config: &str) -> Daemon {
    let daemon = Daemon::start(config);
    daemon.wait_stderr(
        &format!(
            "ident (RFC 1413): answering on 127.0.0.1:{IDENT_PORT}, [::1]:{IDENT_PORT} in network \
             namespace {}",
            ns.path()
        ),
        1,
    );
    daemon
}

#[test]
fn direct_connections_are_named_and_relayed_or_unknown_ones_are_not() {
    let ns = Netns::new();
    let dir = TempDir::new("ident");
    let _protected = holding_server(&ns, PROTECTED);
    let _unprotected = holding_server(&ns, UNPROTECTED);
    let daemon = daemon(&ns, PROTECTED);

    // Direct clients, as root and as nobody, over IPv4 and IPv6.
    let root = HeldConnection::open(&ns, &dir, "127.0.0.1", PROTECTED, None);
    let nobody = HeldConnection::open(&ns, &dir, "127.0.0.1", PROTECTED, Some(65534));
    let root6 = HeldConnection::open(&ns, &dir, "::1", PROTECTED, None);
    let ask = |conn: &HeldConnection| format!("{} , {PROTECTED}", conn.local_port);
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &ask(&root)),
        user_reply(root.local_port, PROTECTED, "root")
    );
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &ask(&nobody)),
        user_reply(nobody.local_port, PROTECTED, "nobody")
    );
    assert_eq!(
        ident_query(&ns, "::1", &ask(&root6)),
        user_reply(root6.local_port, PROTECTED, "root")
    );
    // A client whose connecting process exited (its child keeps the
    // socket): still named.
    let forked = fork_client(&ns, &dir, "127.0.0.1", PROTECTED);
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &format!("{} , {PROTECTED}", forked.port)),
        user_reply(forked.port, PROTECTED, "root")
    );
    // The IPv6 connection is not found through the IPv4 responder: the
    // query's addresses are part of the connection asked about.
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &ask(&root6)),
        error_reply(root6.local_port, PROTECTED, "NO-USER")
    );

    // A socat relay's connection to the service: flagged (catalog:socat),
    // so no user is named, though the relay runs as root.
    let _relay = ns.socat_relay(RELAY_PORT, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    let behind_relay = HeldConnection::open(&ns, &dir, "127.0.0.1", RELAY_PORT, None);
    let socat_port = connection_port_of(&ns, "socat", PROTECTED);
    daemon.wait_event("would-deny by socat", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat"
    });
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &format!("{socat_port} , {PROTECTED}")),
        error_reply(socat_port, PROTECTED, "NO-USER")
    );
    // Connections loopwarden does not know: to an unprotected port (the
    // client's own, to the relay; another to UNPROTECTED), and the direct
    // connection's ports swapped.
    let unprotected = HeldConnection::open(&ns, &dir, "127.0.0.1", UNPROTECTED, None);
    for (here, there) in [
        (behind_relay.local_port, RELAY_PORT),
        (unprotected.local_port, UNPROTECTED),
        (PROTECTED, root.local_port),
    ] {
        assert_eq!(
            ident_query(&ns, "127.0.0.1", &format!("{here} , {there}")),
            error_reply(here, there, "NO-USER")
        );
    }

    // Several queries on one connection, answered in order; tabs and bare
    // LF accepted; the client closes first.
    let exchange = ident_exchange(
        &ns,
        "127.0.0.1",
        &[
            format!(
                "{}\t,{PROTECTED}\r\n{socat_port} , {PROTECTED}\r\n",
                nobody.local_port
            )
            .as_bytes(),
            format!("  {},{PROTECTED}\n", root.local_port).as_bytes(),
        ],
        true,
    );
    assert!(exchange.closed, "{exchange:?}");
    assert_eq!(
        exchange.lines(),
        [
            user_reply(nobody.local_port, PROTECTED, "nobody"),
            error_reply(socat_port, PROTECTED, "NO-USER"),
            user_reply(root.local_port, PROTECTED, "root"),
        ]
    );
}

/// A connection is named only to its server (as RFC 1413 means ident to
/// be used: the user that owns its accepted socket, whether it ran as
/// that user when it listened or became it after) and to root: another
/// user asking the same is answered `NO-USER`, as for a connection
/// loopwarden does not know, over IPv4 and IPv6. Fails against a build
/// that answers whoever asks (that user learns who made the connection),
/// or one that knows the server only by its listener's owner (a server
/// that became nobody after it listened as root is refused).
#[test]
fn a_connection_is_named_only_to_its_server_and_to_root() {
    let ns = Netns::new();
    let dir = TempDir::new("ident-askers");
    let _daemon = daemon(&ns, PROTECTED);
    // The service runs as nobody, or listens as root and becomes nobody;
    // its client runs as root.
    for dropping in [false, true] {
        let _protected = match dropping {
            false => holding_server_as(&ns, PROTECTED, Some(NOBODY)),
            true => holding_server_dropping_to(&ns, PROTECTED, NOBODY),
        };
        for host in ["127.0.0.1", "::1"] {
            let client = HeldConnection::open(&ns, &dir, host, PROTECTED, None);
            let query = format!("{} , {PROTECTED}", client.local_port);
            let named = user_reply(client.local_port, PROTECTED, "root");
            let unknown = error_reply(client.local_port, PROTECTED, "NO-USER");
            let asked = |uid| ident_query_as(&ns, host, &query, uid);
            let case = format!("{host}, dropping {dropping}");
            assert_eq!(asked(Some(NOBODY)), named, "{case}");
            assert_eq!(asked(None), named, "{case}");
            assert_eq!(asked(Some(OTHER_UID)), unknown, "{case}");
        }
    }
}

/// A relay in front of the responder does not lend its owner to whoever
/// asks through it. With the ident port protected too (as the embedded
/// default policy protects every loopback port), a query through a socat
/// relay (flagged: `catalog:socat`) is answered `NO-USER`, whether the
/// relay runs as root or as the service's own user, about a connection
/// the same query asked directly by either names; over IPv4 and IPv6.
/// Fails against a build that takes the asking socket's owner whoever is
/// behind it (the relays' queries name the client).
#[test]
fn a_relay_in_front_of_the_responder_asks_as_nobody() {
    let ns = Netns::new();
    let dir = TempDir::new("ident-relayed-asker");
    let _protected = holding_server_as(&ns, PROTECTED, Some(NOBODY));
    let daemon = daemon_on(
        &ns,
        &config_with_timeout(&ns, &[PROTECTED, IDENT_PORT], TIMEOUT_MS),
    );
    for (relay_uid, relay_port) in [(None, RELAY_PORT), (Some(NOBODY), RELAY_PORT + 1)] {
        for host in ["127.0.0.1", "::1"] {
            let target = match host {
                "::1" => format!("TCP6:[::1]:{IDENT_PORT}"),
                _ => format!("TCP4:127.0.0.1:{IDENT_PORT}"),
            };
            let listen = match host {
                "::1" => relay_port + 10,
                _ => relay_port,
            };
            // Reached over IPv4 whichever family it asks the responder in.
            let _relay = ns.socat_relay(listen, &target, relay_uid);
            ns.wait_listening(listen);
            let client = HeldConnection::open(&ns, &dir, host, PROTECTED, None);
            let query = format!("{} , {PROTECTED}", client.local_port);
            let case = format!("{host}, relay as {relay_uid:?}");
            // The positive control: asked directly, by the relay's user.
            assert_eq!(
                ident_query_as(&ns, host, &query, relay_uid),
                user_reply(client.local_port, PROTECTED, "root"),
                "{case}"
            );
            assert_eq!(
                ident_query_at(&ns, ("127.0.0.1", listen), &query, None),
                error_reply(client.local_port, PROTECTED, "NO-USER"),
                "{case}"
            );
        }
    }
    daemon.wait_event("the relays' connects to the ident port reported", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat" && e["dst_port"] == IDENT_PORT
    });
}

/// An asker the policy flags without refusing it keeps its rights as a
/// server and loses root's. With the ident port protected, a process
/// listening on `0.0.0.0` (a network-facing server: `listening` evidence,
/// judged `audit` by the relay verdict) that asks as the connection's
/// server (nobody) is answered with the client's user, as it would be
/// directly; one that asks as root is answered `NO-USER`, about that
/// connection and about one to a service root runs (root's services are
/// many), where root asking directly (the positive control) is answered.
/// Fails against a build that takes any flagged asker for nobody (a
/// network-facing server could not ask about its own clients), and
/// against one that lets it ask as root, or as the server of root's
/// services.
#[test]
fn an_asker_flagged_but_not_refused_asks_only_as_a_server() {
    let ns = Netns::new();
    let dir = TempDir::new("ident-flagged-asker");
    let _protected = holding_server_as(&ns, PROTECTED, Some(NOBODY));
    let _root_served = holding_server(&ns, ROOT_SERVED_PORT);
    let daemon = daemon_on(
        &ns,
        &config_with_timeout(&ns, &[PROTECTED, ROOT_SERVED_PORT, IDENT_PORT], TIMEOUT_MS),
    );
    let client = HeldConnection::open(&ns, &dir, "127.0.0.1", PROTECTED, None);
    let query = format!("{} , {PROTECTED}", client.local_port);
    let named = user_reply(client.local_port, PROTECTED, "root");
    let unknown = error_reply(client.local_port, PROTECTED, "NO-USER");
    assert_eq!(ident_query_as(&ns, "127.0.0.1", &query, None), named);
    assert_eq!(
        ident_query_listening(&ns, &query, Some(NOBODY), LISTENING_PORT),
        named,
        "the server, network-facing"
    );
    assert_eq!(
        ident_query_listening(&ns, &query, None, LISTENING_PORT + 1),
        unknown,
        "root, network-facing"
    );
    let to_root = HeldConnection::open(&ns, &dir, "127.0.0.1", ROOT_SERVED_PORT, None);
    let query = format!("{} , {ROOT_SERVED_PORT}", to_root.local_port);
    assert_eq!(
        ident_query_as(&ns, "127.0.0.1", &query, None),
        user_reply(to_root.local_port, ROOT_SERVED_PORT, "root")
    );
    assert_eq!(
        ident_query_listening(&ns, &query, None, LISTENING_PORT + 2),
        error_reply(to_root.local_port, ROOT_SERVED_PORT, "NO-USER"),
        "root, network-facing, about a service root runs"
    );
    daemon.wait_event("a network-facing asker's connect reported", |e| {
        e["verdict"] == "audit" && e["via_how"] == "listening" && e["dst_port"] == IDENT_PORT
    });
}

/// Where [`an_asker_flagged_but_not_refused_asks_only_as_a_server`]'s
/// askers listen, and the protected port of its service run as root.
const LISTENING_PORT: u16 = 9101;
const ROOT_SERVED_PORT: u16 = 8084;

/// nobody's uid, and one no account has.
const NOBODY: u32 = 65534;
const OTHER_UID: u32 = 4242;

#[test]
fn malformed_queries_get_invalid_port_and_silent_clients_are_closed() {
    let ns = Netns::new();
    let dir = TempDir::new("ident");
    let _protected = holding_server(&ns, PROTECTED);
    let _daemon = daemon(&ns, PROTECTED);
    let direct = HeldConnection::open(&ns, &dir, "127.0.0.1", PROTECTED, None);
    let valid = format!("{} , {PROTECTED}\r\n", direct.local_port);

    // A valid query on a connection the client keeps open: answered, and
    // the connection stays usable for the next one.
    let exchange = ident_exchange(
        &ns,
        "127.0.0.1",
        &[valid.as_bytes(), valid.as_bytes()],
        false,
    );
    let answer = user_reply(direct.local_port, PROTECTED, "root");
    assert_eq!(exchange.lines(), [answer.clone(), answer], "{exchange:?}");

    // Each malformed query gets INVALID-PORT and the responder closes the
    // connection: the valid query after it on the same connection is never
    // answered. The client itself never closes.
    let too_long = format!("{}{valid}", " ".repeat(1000));
    for (query, echo) in [
        ("abc\r\n", (0, 0)),
        ("0 , 80\r\n", (0, 80)),
        ("70000 , 80\r\n", (70000, 80)),
        ("80 : 81\r\n", (0, 0)),
        (too_long.as_str(), (0, 0)),
    ] {
        let exchange = ident_exchange(
            &ns,
            "127.0.0.1",
            &[format!("{query}{valid}").as_bytes()],
            false,
        );
        assert!(exchange.closed, "{query:?}: {exchange:?}");
        assert_eq!(
            exchange.replies,
            error_reply(echo.0, echo.1, "INVALID-PORT"),
            "{query:?}"
        );
    }
    // An over-long line with no end in sight: refused as soon as it is
    // too long, not read for ever.
    let endless = "1".repeat(2000);
    let exchange = ident_exchange(&ns, "127.0.0.1", &[endless.as_bytes()], false);
    assert!(exchange.closed, "{exchange:?}");
    assert_eq!(exchange.replies, error_reply(0, 0, "INVALID-PORT"));

    // A client that sends nothing is closed after timeout_ms, unanswered.
    let silent = ident_exchange(&ns, "127.0.0.1", &[], false);
    assert!(
        silent.closed,
        "the responder kept a silent client: {silent:?}"
    );
    assert_eq!(silent.replies, "");
    // So is one that stops half-way through a query.
    let partial = ident_exchange(&ns, "::1", &[b"123 , "], false);
    assert!(partial.closed, "{partial:?}");
    assert_eq!(partial.replies, "");
    // And one that trickles a query in a byte at a time, each well within
    // timeout_ms of the last: the timeout is for the whole query (the
    // client would take 100 s to reach the 1000-byte limit).
    assert_eq!(trickle(&ns, "127.0.0.1"), "EOF");
    // A refused client gets timeout_ms in all to take its reply, not
    // timeout_ms for each byte it goes on sending.
    assert_eq!(trickle_after_refusal(&ns, "127.0.0.1"), "CLOSED");
}

#[test]
fn a_new_client_closes_the_one_idle_longest_when_all_slots_are_taken() {
    let ns = Netns::new();
    let dir = TempDir::new("ident");
    let _protected = holding_server(&ns, PROTECTED);
    // A minute to send a query: only a new client can close an idle one.
    let _daemon = daemon_on(&ns, &config_with_timeout(&ns, &[PROTECTED], 60_000));
    let direct = HeldConnection::open(&ns, &dir, "127.0.0.1", PROTECTED, None);

    // Every slot taken by a client that sends nothing.
    let mut idle = IdleClients::tcp(&ns, "127.0.0.1", IDENT_PORT, MAX_CLIENTS);
    let before = idle.states();
    assert_eq!(before.len(), MAX_CLIENTS);
    assert!(before.iter().all(|s| s == "open"), "{before:?}");

    // One more client is answered ...
    assert_eq!(
        ident_query(
            &ns,
            "127.0.0.1",
            &format!("{} , {PROTECTED}", direct.local_port)
        ),
        user_reply(direct.local_port, PROTECTED, "root")
    );
    // ... and the client that connected first, idle longest, made room.
    idle.assert_only_the_first_closed("the responder");
}

/// Opens N connections to the responder at 127.0.0.1:PORT one after
/// another, each with a small receive buffer, sends each QUERIES queries at
/// once and never reads a reply; the next is opened once the last one's
/// unread replies stop growing (its buffer full: the responder's writes
/// wait). Prints `ready` and holds them until killed.
const FLOOD: &str = r#"import fcntl, socket, struct, sys, termios, time
n, port, queries = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def unread(s):
    return struct.unpack("i", fcntl.ioctl(s, termios.FIONREAD, b"\0" * 4))[0]
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect(("127.0.0.1", port))
    s.sendall(b"1,1\r\n" * queries)
    last, still, deadline = -1, 0, time.time() + 5
    while still < 5 and time.time() < deadline:
        time.sleep(0.01)
        try:
            q = unread(s)
        except OSError:
            break
        still, last = (still + 1, last) if q == last and q > 0 else (0, q)
    socks.append(s)
print("ready", flush=True)
time.sleep(3600)
"#;

/// The responder's open connections in `ns` (`ss` lines, local port
/// [`IDENT_PORT`]) and its clients' (remote port [`IDENT_PORT`]).
fn ident_sockets(ns: &Netns, side: &str) -> Vec<String> {
    let out = ns
        .cmd("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( {side} = :{IDENT_PORT} )"),
        ])
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Once the flood has settled: how many of its connections the responder
/// keeps, every one with replies queued that its client does not read
/// (`ss`'s Send-Q), the others closed.
fn flood_settled(ns: &Netns) -> Option<usize> {
    let waiting = ident_sockets(ns, "sport")
        .iter()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|q| q != "0"))
        .count();
    let open = ident_sockets(ns, "dport").len();
    (waiting == open && waiting >= MAX_CLIENTS).then_some(waiting)
}

#[test]
fn clients_that_never_read_their_replies_keep_no_one_out() {
    let ns = Netns::new();
    let dir = TempDir::new("ident");
    let _protected = holding_server(&ns, PROTECTED);
    // A minute for a reply's write: only a new client can close a client
    // whose replies wait.
    let _daemon = daemon_on(&ns, &config_with_timeout(&ns, &[PROTECTED], 60_000));
    let direct = HeldConnection::open(&ns, &dir, "127.0.0.1", PROTECTED, None);
    let query = format!("{} , {PROTECTED}", direct.local_port);
    let answer = user_reply(direct.local_port, PROTECTED, "root");
    // Answered before the flood (the positive control) ...
    assert_eq!(ident_query(&ns, "127.0.0.1", &query), answer);

    // Twice the responder's places, every one with its replies waiting:
    // with the namespace's send buffers at their least, a reply's write
    // waits once a few kilobytes are unread.
    let sysctl = ns
        .cmd("sysctl")
        .args(["-qw", "net.ipv4.tcp_wmem=4096 4096 4096"])
        .status()
        .expect("running sysctl");
    assert!(sysctl.success(), "sysctl net.ipv4.tcp_wmem failed");
    let mut flood = loopwarden_tests::talk::Talker::spawn(
        ns.cmd(loopwarden_tests::SYSTEM_PYTHON).args([
            "-c",
            FLOOD,
            &(2 * MAX_CLIENTS).to_string(),
            &IDENT_PORT.to_string(),
            "4000",
        ]),
        "the flooding clients",
    );
    assert_eq!(flood.line(), "ready");
    let kept = loopwarden_tests::wait_for_explained(
        "the flooding clients kept, each with replies waiting to be written",
        std::time::Duration::from_secs(30),
        || flood_settled(&ns),
        || {
            format!(
                "; the responder's sockets:\n{}\nits clients':\n{}",
                ident_sockets(&ns, "sport").join("\n"),
                ident_sockets(&ns, "dport").join("\n")
            )
        },
    );
    // ... and during it: a client whose reply waits is closed to make room.
    assert_eq!(
        ident_query(&ns, "127.0.0.1", &query),
        answer,
        "{kept} flooding clients kept"
    );
}

#[test]
fn postgresql_ident_authentication_accepts_a_direct_client_and_not_a_relay() {
    let ns = Netns::new();
    let pg = Postgres::start(&ns, PG_PORT);
    let daemon = daemon(&ns, PG_PORT);

    // psql run by the OS user postgres: PostgreSQL asks the responder,
    // which names postgres, and the login succeeds.
    let direct = pg.select_one(&ns, PG_PORT);
    assert_eq!(
        direct.as_deref(),
        Ok("1\n"),
        "the direct login failed; PostgreSQL's log:\n{}",
        pg.log()
    );

    // The same login through a socat relay run by the same OS user: a
    // classic identd would name postgres (the relay's owner); the
    // responder names no one, and PostgreSQL refuses the login. The relay
    // did carry the connection: the refusal is PostgreSQL's own.
    let _relay = ns.socat_relay(
        RELAY_PORT,
        &format!("TCP:127.0.0.1:{}", pg.port()),
        Some(uid_of(PG_USER)),
    );
    let relayed = pg.select_one(&ns, RELAY_PORT);
    let refusal = relayed.expect_err("a login through the relay succeeded");
    assert!(
        refusal.contains(&format!(
            "Ident authentication failed for user \"{PG_USER}\""
        )),
        "{refusal}"
    );
    daemon.wait_event("would-deny by socat", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat"
    });

    // And a direct login still works afterwards.
    assert_eq!(pg.select_one(&ns, PG_PORT).as_deref(), Ok("1\n"));
}

#[test]
fn an_address_that_cannot_be_bound_stops_the_start_before_anything_is_loaded() {
    let ns = Netns::new();
    // Something else holds the ident port in the namespace.
    let mut other_identd = holding_server(&ns, IDENT_PORT);
    let install = Install::new();
    let text = config(&ns, PROTECTED);
    std::fs::write(install.config_path(), &text).expect("config");
    // Where the first listen address is written (1-based).
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| Some((i + 1, l.strip_prefix("listen = ")?.find('"')? + 10)))
        .expect("a listen line");
    let out = install.failing_start();
    assert!(
        !out.status.success(),
        "started with port {IDENT_PORT} taken"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Where in the file, what, where, why, and what to do.
    let expected = format!(
        "{}:{line}:{column}: [ident] listen \"127.0.0.1:{IDENT_PORT}\": cannot bind it in network namespace \
         {} (another identd, or another loopwarden, listens there): Address already in use",
        install.config_path().display(),
        ns.path()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("ready:"), "{stderr}");
    // The file's to fix (EX_CONFIG), which the unit does not restart on.
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    // It stopped before loading anything: no program pinned, none attached.
    assert!(
        !install.pin_dir().exists(),
        "{} exists after a start that could not bind",
        install.pin_dir().display()
    );

    // With the port free, the same config starts and serves.
    other_identd.kill();
    let daemon = Daemon::start_in(&install, &config(&ns, PROTECTED), &[]);
    daemon.wait_stderr("ident (RFC 1413): answering on", 1);
    assert_eq!(
        ident_query(&ns, "127.0.0.1", "1 , 2"),
        error_reply(1, 2, "NO-USER")
    );
}

/// An `[ident] listen` address no interface has yet (the unit starts
/// before the network) does not hold up enforcement: the daemon starts
/// without its responder, says so once, and binds it within a second or
/// two of the address appearing. Before, the start exited 1, and the unit's
/// start limit could leave a host just booted with nothing pinned.
#[test]
fn an_ident_address_not_configured_yet_is_bound_once_it_is() {
    const LATE: &str = "10.77.0.1";
    let ns = Netns::new();
    let _protected = holding_server(&ns, PROTECTED);
    let config = Policy::new(&ns, "audit")
        .ports(&[PROTECTED])
        .extra(&format!(
            "[ident]\nlisten = \"{LATE}:{IDENT_PORT}\"\nnetns = \"{}\"\ntimeout_ms = \
             {TIMEOUT_MS}\n",
            ns.path()
        ))
        .text();
    let daemon = Daemon::start(&config);
    daemon.allow_error("cannot bind it");
    let said = daemon.stderr_text();
    assert!(
        said.contains("the daemon starts without its ident responder"),
        "{said}"
    );
    // Started (ready: the programs attached), and nothing answers ident yet.
    assert!(
        !ns.socat_connect(&format!("TCP:{LATE}:{IDENT_PORT}")).0,
        "something answers on an address no interface has"
    );
    ns.add_addresses(&[&format!("{LATE}/24")]);
    daemon.wait_stderr("ident (RFC 1413): answering on", 1);
    assert_eq!(
        ident_query(&ns, LATE, "1 , 2"),
        error_reply(1, 2, "NO-USER")
    );
    // Said once, not at every second it was tried.
    assert_eq!(daemon.stderr_text().matches("cannot bind it").count(), 1);
}

/// A daemon that starts on a file that does not parse keeps the pinned
/// policy: compiled again from the config the previous daemon kept for it,
/// whose responder it starts at once; or, with no such config (an older
/// version's pins), as it is, and its responder waits: the first good
/// reload starts it, as a start would have. Before, it stayed off until a
/// restart (the reload said "[ident] changed: that takes effect when the
/// daemon restarts"), and a host whose services authenticate by ident
/// refused every login meanwhile.
#[test]
fn a_start_on_a_bad_file_starts_the_responder_at_the_first_good_reload() {
    let ns = Netns::new();
    let _protected = holding_server(&ns, PROTECTED);
    let install = Install::new();
    let good = config(&ns, PROTECTED);
    let bad = format!("bogus = 1\n{good}");
    // Positive control: the same file at start serves.
    let mut first = Daemon::start_in(&install, &good, &[]);
    first.wait_stderr("ident (RFC 1413): answering on", 1);
    assert_eq!(
        ident_query(&ns, "127.0.0.1", "1 , 2"),
        error_reply(1, 2, "NO-USER")
    );
    first.kill9();
    let mut second = Daemon::start_in(&install, &bad, &[]);
    second.allow_error("bogus");
    second.wait_stderr("compiled again from its config", 1);
    second.wait_stderr("ident (RFC 1413): answering on", 1);
    assert_eq!(
        ident_query(&ns, "127.0.0.1", "1 , 2"),
        error_reply(1, 2, "NO-USER")
    );
    second.kill9();
    std::fs::remove_file(install.run_dir().join("config.json")).expect("the kept config");
    let ident = format!("TCP:127.0.0.1:{IDENT_PORT}");
    let third = Daemon::start_in(&install, &bad, &[]);
    third.allow_error("bogus");
    third.wait_stderr("stays in force as it is", 1);
    assert!(
        !ns.socat_connect(&ident).0,
        "a responder answers after a start on a bad file"
    );
    std::fs::write(install.config_path(), &good).expect("rewrite");
    third.signal(libc::SIGHUP);
    third.wait_stderr("ident (RFC 1413): answering on", 1);
    assert_eq!(
        ident_query(&ns, "127.0.0.1", "1 , 2"),
        error_reply(1, 2, "NO-USER")
    );
    let said = third.stderr_text();
    assert!(said.contains("its [ident] responder starts then"), "{said}");
    assert!(!said.contains("[ident] changed"), "{said}");
}
