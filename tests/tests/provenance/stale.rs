//! Entries that are not the connection's: one a missed close left is never
//! a later connection's answer, nor the answer for its own connection once
//! its server closed it, nor is a free slot's, and a close removes only
//! its own; an IPv4 client of a dual-stack listener is still its own.

use super::*;

/// A close the state tracepoint never sees (the kernel skips a run nested
/// on one CPU) leaves a connection's entry in its slot of `LW_CONN_SLOTS`
/// or in `LW_CONNS`; so does a connection whose server never accepted it
/// (reset while in the accept queue). Written back by hand, in either,
/// under the addresses of a later, untagged connection, neither must be
/// that connection's answer, from getsockopt or from the daemon (`who`,
/// `conns`). The positive control, through the same lookups: the entry
/// waiting for its handshake with the first sequence number of the
/// connection it names, as the kernel writes one at the client's
/// handshake. (The later connections go to ports the kernel never tags,
/// which the test marks in `LW_CONN_PORTS` as a tagged connect would have:
/// the kernel looks up only connections to marked ports.)
#[test]
fn an_entry_a_missed_close_left_is_never_a_later_connections_answer() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let install = daemon.install();
    let holder = Holder::start(&ns, &[PROTECTED, UNPROTECTED], None);
    let (client, peer, key, entry) = tagged_connection(&ns, install, &holder);
    // The same entry, as if for a connection from `from` to `to`.
    let under = |from: u16, to: u16| {
        let mut key = key.clone();
        key[4..6].copy_from_slice(&from.to_ne_bytes());
        key[6..8].copy_from_slice(&to.to_ne_bytes());
        key
    };
    mark_port(install, UNPROTECTED);
    for round in 0..2 {
        mark_port(install, DEFERRED_PORT + round);
    }
    let run_dir = install.run_dir();
    let dir = TempDir::new("stale");
    let mut held = Vec::new();
    let mut deferred_held = Vec::new();
    let mut known_peers = vec![peer];
    for (round, home) in [Home::Map, Home::Slot].into_iter().enumerate() {
        let stale_from = 41001 + 3 * round as u16;
        let unaccepted_from = stale_from + 1;
        let control_from = stale_from + 2;
        let deferred_port = DEFERRED_PORT + round as u16;
        let accepted = 2 + 2 * round;

        // Left behind: established, bound to the first connection's socket.
        write_entry(install, home, &under(stale_from, UNPROTECTED), &entry);
        held.push(holder.hold_client_from(&ns, "127.0.0.1", UNPROTECTED, stale_from));
        let stale = holder.wait_accepted(accepted);
        assert_eq!(stale["peer"], format!("127.0.0.1:{stale_from}"), "{stale}");
        assert_unknown(&ns, &run_dir, &stale, home);

        // Left by a connection its server never accepted: waiting for its
        // server's handshake, another client's first sequence number.
        let unaccepted = as_pending(&entry, 0x5eed);
        write_entry(
            install,
            home,
            &under(unaccepted_from, UNPROTECTED),
            &unaccepted,
        );
        held.push(holder.hold_client_from(&ns, "127.0.0.1", UNPROTECTED, unaccepted_from));
        let later = holder.wait_accepted(accepted + 1);
        assert_eq!(
            later["peer"],
            format!("127.0.0.1:{unaccepted_from}"),
            "{later}"
        );
        assert_unknown(&ns, &run_dir, &later, home);

        // The positive control: the client's handshake completes while
        // its server defers the accept; the entry is written with the
        // client's first sequence number; then the server's side completes.
        let mut deferred = Deferred::connect(&ns, &dir, control_from, deferred_port);
        let pending = as_pending(&entry, deferred.first_seq);
        write_entry(install, home, &under(control_from, deferred_port), &pending);
        let answer = deferred.accept();
        assert_eq!(answer["status"], 1, "{home:?}: {answer}");
        assert_eq!(answer["tgid"], client.pid(), "{home:?}: {answer}");
        let origin = who(
            &ns,
            None,
            &run_dir,
            &format!("127.0.0.1:{control_from}"),
            &format!("127.0.0.1:{deferred_port}"),
        )
        .unwrap_or_else(|e| panic!("{home:?}: the control's entry: {e:?}"));
        assert_eq!(origin["pid"], client.pid(), "{home:?}: {origin:#}");
        known_peers.push(format!("127.0.0.1:{control_from}"));
        deferred_held.push(deferred);
        let listed: Vec<Value> = conns(&ns, None, &run_dir)
            .into_iter()
            .map(|o| o["client"].clone())
            .collect();
        assert_eq!(listed.len(), known_peers.len(), "{home:?}: {listed:?}");
        for expected in &known_peers {
            assert!(listed.contains(&json!(expected)), "{home:?}: {listed:?}");
        }
    }
}

/// getsockopt, as the holder reported it for `accepted`, and `who` know
/// nothing of the connection.
fn assert_unknown(ns: &Netns, run_dir: &Path, accepted: &Value, home: Home) {
    assert_eq!(
        (&accepted["status"], &accepted["tgid"]),
        (&json!(0), &json!(0)),
        "{home:?}: {accepted}"
    );
    let (peer, local) = ends(accepted);
    let said = who(ns, None, run_dir, &peer, &local);
    assert!(matches!(said, Err((1, _))), "{home:?}: {said:?}");
}

/// The first round's port of [`Deferred`]'s listener (the next, the next
/// round's).
const DEFERRED_PORT: u16 = 8082;

/// A connection from 127.0.0.1:`argv[1]` to a listener on port `argv[2]`
/// with `TCP_DEFER_ACCEPT`, whose server side completes
/// only once the client sends: the client's first sequence number is
/// read in between (`TCP_REPAIR`, `TCP_QUEUE_SEQ` of the send queue:
/// its initial sequence number plus one) and printed; a line on stdin
/// sends a byte; the server accepts, asks getsockopt and prints
/// `status tgid`; then both are held until the process is killed.
const DEFERRED: &str = r#"import socket, struct, sys, time
from_port, port = int(sys.argv[1]), int(sys.argv[2])
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 30)
l.bind(("127.0.0.1", port))
l.listen(1)
c = socket.socket()
c.bind(("127.0.0.1", from_port))
c.connect(("127.0.0.1", port))
c.setsockopt(socket.IPPROTO_TCP, 19, 1)    # TCP_REPAIR
c.setsockopt(socket.IPPROTO_TCP, 20, 2)    # TCP_REPAIR_QUEUE: TCP_SEND_QUEUE
seq = c.getsockopt(socket.IPPROTO_TCP, 21)  # TCP_QUEUE_SEQ
c.setsockopt(socket.IPPROTO_TCP, 19, 0)
print(seq & 0xffffffff, flush=True)
sys.stdin.readline()
c.send(b"x")
a, _ = l.accept()
rec = a.getsockopt(0x4c57, 1, 328)
print(rec[8], struct.unpack_from("=I", rec, 152)[0], flush=True)
while True:
    time.sleep(3600)
"#;

/// [`DEFERRED`], running.
struct Deferred {
    script: Talker,
    /// The client's first sequence number (initial plus one).
    first_seq: u32,
}

impl Deferred {
    fn connect(ns: &Netns, dir: &TempDir, from: u16, port: u16) -> Self {
        let path = write_script(dir, "deferred.py", DEFERRED);
        let mut script = Talker::spawn(
            ns.cmd(SYSTEM_PYTHON)
                .arg(&path)
                .args([from.to_string(), port.to_string()]),
            "the deferred connection",
        );
        let line = script.line();
        let first_seq = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("first sequence number {line:?}: {e}"));
        Self { script, first_seq }
    }

    /// Lets the server's side complete: getsockopt's answer (`status`,
    /// `tgid`).
    fn accept(&mut self) -> Value {
        let line = self.script.ask("");
        let mut words = line.split_whitespace().map(|w| w.parse::<u64>().ok());
        json!({"status": words.next().flatten(), "tgid": words.next().flatten()})
    }
}

/// Makes a connection to 127.0.0.1:`argv[2]` with a server of its own,
/// writes `CLIENT SERVER` to `argv[1]/open`, and once `argv[1]/close`
/// exists closes the server's end first, then the client's (so the
/// accepted socket's end waits in TIME_WAIT), writes `argv[1]/closed` and
/// waits to be killed.
const SERVER_CLOSES_FIRST: &str = r#"import os, socket, sys, time
d, port = sys.argv[1], int(sys.argv[2])
def say(name, text):
    with open(os.path.join(d, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))
listener = socket.create_server(("127.0.0.1", port))
client = socket.create_connection(("127.0.0.1", port))
accepted, _ = listener.accept()
say("open", "127.0.0.1:%d 127.0.0.1:%d" % (client.getsockname()[1], port))
while not os.path.exists(os.path.join(d, "close")):
    time.sleep(0.02)
accepted.close()
client.recv(1)
client.close()
time.sleep(0.1)
say("closed", "")
while True:
    time.sleep(3600)
"#;

/// A connection its server closed first leaves the accepted socket's end
/// in TIME_WAIT, which sock_diag still finds under its addresses and
/// cookie. Its entry, written back by hand into `LW_CONNS` after the
/// kernel removed it at the close (as if that close had not been seen),
/// must not make `who` or `conns` name the closed connection. The positive
/// control: the same lookups name it from the kernel's own entry while it
/// is open.
#[test]
fn a_connection_its_server_closed_is_not_named_from_an_entry_left_behind() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let install = daemon.install();
    let run_dir = install.run_dir();
    let pair = ClosingPair::open(&ns, "time-wait");
    let (peer, local) = (pair.peer.as_str(), pair.local.as_str());
    let origin = who(&ns, None, &run_dir, peer, local).expect("the open connection's origin");
    assert_eq!(origin["pid"], pair.proc.pid(), "{origin:#}");
    let (key, entry) = conns_entries(install)
        .into_iter()
        .find(|(key, _)| key[4..6] == port_of(peer).to_ne_bytes())
        .expect("the open connection's entry");

    pair.close();
    assert!(
        conns_entries(install).iter().all(|(k, _)| *k != key),
        "the entry stayed after the close"
    );
    let waiting = run(ns.cmd("ss").args(["-Htn", "state", "time-wait"]));
    let waiting = String::from_utf8_lossy(&waiting.stdout);
    assert!(
        waiting
            .lines()
            .any(|l| l.contains(&format!("{local} ")) && l.contains(peer)),
        "the accepted socket's end is not in TIME_WAIT: {waiting}"
    );
    write_entry(install, Home::Map, &key, &entry);
    let said = who(&ns, None, &run_dir, peer, local);
    assert!(matches!(said, Err((1, _))), "{said:?}");
    let listed = conns(&ns, None, &run_dir);
    assert!(listed.is_empty(), "{listed:#?}");
}

/// The protected port [`a_slot_whose_close_the_kernel_missed_is_given_back`]
/// holds its control connection on.
const HELD_PORT: u16 = 8083;

/// A close the state tracepoint never sees (the kernel skips a run nested
/// on one CPU) leaves the accepted socket's slot of `LW_CONN_SLOTS` taken,
/// and no connection but one between the same ends would take it over.
/// Written back by hand after the close, exactly as the kernel had it
/// (the accepted socket's end now in TIME_WAIT), it must be given back by
/// the daemon's sweep (every 10 s: a slot bound at one sweep whose socket
/// the next two find gone), which says so. The positive control: the slot of a
/// connection held open all along, swept as often, is kept and still
/// names its client. A free slot marked releasing (a give-back that never
/// finished) is freed at the second sweep that sees it so. Fails against
/// the builds before, which never gave such slots back.
#[test]
fn a_slot_whose_close_the_kernel_missed_is_given_back() {
    let ns = Netns::new();
    let policy = Policy::new(&ns, "audit")
        .catalog(false)
        .relay("audit")
        .ports(&[PROTECTED, HELD_PORT]);
    let daemon = Daemon::start(&policy.text());
    let install = daemon.install();
    let run_dir = install.run_dir();
    let holder = Holder::start(&ns, &[HELD_PORT], None);
    let held_client = holder.hold_client(&ns, "127.0.0.1", HELD_PORT);
    let (held_peer, held_local) = ends(&holder.wait_accepted(1));
    let (held_index, held_slot) =
        bound_slot(install, port_of(&held_peer)).expect("the held connection's slot");

    let pair = ClosingPair::open(&ns, "missed-close");
    let (peer, local) = (pair.peer.as_str(), pair.local.as_str());
    let (index, slot) = bound_slot(install, port_of(peer)).expect("the connection's slot");
    pair.close();
    let owner = |i: u32| owners(install, "LW_CONN_SLOTS")[i as usize];
    // (Given back by the kernel at the close, unless it skipped that run
    // itself: written back either way.)
    map_update(install, "LW_CONN_SLOTS", &index.to_ne_bytes(), &slot);
    assert_ne!(
        owner(index),
        0,
        "the slot taken again, as if the close was missed"
    );
    let answer = who(&ns, None, &run_dir, peer, local);
    assert!(matches!(answer, Err((1, _))), "{answer:?}");
    // A free slot marked releasing, as a daemon killed in the middle of a
    // give-back leaves it: freed too.
    let left = owners(install, "LW_CONN_SLOTS")
        .iter()
        .enumerate()
        .rposition(|(i, &o)| o == 0 && i as u32 != index && i as u32 != held_index)
        .expect("a free slot") as u32;
    let mut releasing = vec![0u8; slot.len()];
    releasing[..8].copy_from_slice(&loopwarden_common::origin::CONN_RELEASING.to_ne_bytes());
    map_update(install, "LW_CONN_SLOTS", &left.to_ne_bytes(), &releasing);
    assert_eq!(owner(left), loopwarden_common::origin::CONN_RELEASING);

    wait_for(
        "the daemon's sweep to give the slots back",
        Duration::from_secs(60),
        || (owner(index) == 0 && owner(left) == 0).then_some(()),
    );
    wait_for("the give-backs said", Duration::from_secs(5), || {
        (daemon.stderr_sum("LW_CONN_SLOTS slots", "given_back") == 2).then_some(())
    });
    assert_eq!(
        hex_bytes(&map_dump(install, "LW_CONN_SLOTS")[held_index as usize]["value"]),
        held_slot,
        "the open connection's slot is kept as it was"
    );
    let origin = who(&ns, None, &run_dir, &held_peer, &held_local).expect("the held connection");
    assert_eq!(origin["pid"], held_client.pid(), "{origin:#}");
}

/// The slot of `LW_CONN_SLOTS` (index, and its value as bpftool shows it)
/// that holds the connection from client port `port`, once its server's
/// handshake bound it (`established_ns` set).
fn bound_slot(install: &Install, port: u16) -> Option<(u32, Vec<u8>)> {
    map_dump(install, "LW_CONN_SLOTS")
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u32, hex_bytes(&e["value"])))
        .find(|(_, slot)| {
            let entry = &slot[SLOT_ENTRY..];
            slot[..8] != [0; 8]
                && entry[ENTRY_KEY][4..6] == port.to_ne_bytes()
                && entry[16..24] != [0; 8]
        })
}

/// A connection [`SERVER_CLOSES_FIRST`] made to `PROTECTED`, open until
/// [`ClosingPair::close`].
struct ClosingPair {
    proc: Proc,
    dir: TempDir,
    /// The client's end and the server's.
    peer: String,
    local: String,
}

impl ClosingPair {
    /// Makes it in `ns`, its files in a directory named after `name`.
    fn open(ns: &Netns, name: &str) -> Self {
        let dir = TempDir::new(name);
        let (proc, open) =
            spawn_until_open(ns, &dir, "server_closes_first.py", SERVER_CLOSES_FIRST);
        let (peer, local) = open.split_once(' ').expect("two addresses");
        let (peer, local) = (peer.to_owned(), local.to_owned());
        Self {
            proc,
            dir,
            peer,
            local,
        }
    }

    /// Closes it, the server's end first, and waits until both are.
    fn close(&self) {
        std::fs::write(self.dir.path().join("close"), "").expect("asking for the close");
        wait_for("the close", Duration::from_secs(10), || {
            self.dir.path().join("closed").exists().then_some(())
        });
    }
}

/// A free slot of `LW_ORIGIN_SLOTS` keeps the entry of the connect that
/// last held it. A connection whose client socket has no cookie (no
/// tagged connect asked for one: here one to the unprotected port, marked
/// by the test) must not take it for its own at its handshake, since a
/// free slot's owner word is 0 too. The slots its cookie would use are
/// written with a pending copy of a tagged connection's entry (recent,
/// not established: what the server's handshake would bind), and every
/// slot of `LW_CONN_SLOTS` is taken, so an entry moved on from them would
/// be kept in `LW_CONNS` (one moved into a free connection slot would
/// leave it free: its owner word, the cookie, is 0). The positive
/// control is the tagged connection itself, named through the same
/// lookups.
#[test]
fn a_free_slot_is_never_an_untagged_connections_origin() {
    const FROM: u16 = 41003;
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let install = daemon.install();
    let holder = Holder::start(&ns, &[PROTECTED, UNPROTECTED], None);
    let (_client, _, _, entry) = tagged_connection(&ns, install, &holder);
    // The slots cookie 0 may use.
    for i in 0..loopwarden_common::ORIGIN_SLOT_PROBES {
        let index = loopwarden_common::origin::OriginSlot::probe(0, i);
        write_slot(install, index, 0, 0, &as_pending(&entry, 0));
    }
    take_conn_slots(install, monotonic_ns());
    mark_port(install, UNPROTECTED);

    let _untagged = holder.hold_client_from(&ns, "127.0.0.1", UNPROTECTED, FROM);
    let untagged = holder.wait_accepted(2);
    assert_eq!(untagged["peer"], format!("127.0.0.1:{FROM}"), "{untagged}");
    assert_eq!(
        (&untagged["status"], &untagged["tgid"]),
        (&json!(0), &json!(0)),
        "{untagged}"
    );
    assert!(
        !conns_entries(install)
            .iter()
            .any(|(key, _)| key[4..6] == FROM.to_ne_bytes()),
        "no entry for the untagged connection"
    );
    let (untagged_peer, untagged_local) = ends(&untagged);
    let said = who(
        &ns,
        None,
        &install.run_dir(),
        &untagged_peer,
        &untagged_local,
    );
    assert!(matches!(said, Err((1, _))), "{said:?}");
}

/// A close removes the entry under its connection's addresses only if the
/// entry names its socket. `LW_CONNS` can hold another socket's there: a
/// new connection's, made between the same addresses and ports while the
/// kernel was closing the old one (it unhashes a socket before its state
/// change reaches the tracepoint), which the old close must leave. That
/// race cannot be made on demand, so the entry of a connection kept in
/// `LW_CONNS` is rewritten as another socket's (other client and server
/// cookies) before the connection closes, and must stay. The positive
/// control: a second connection, kept the same way and left as it is,
/// whose close removes its entry.
#[test]
fn a_close_leaves_another_sockets_entry_under_its_addresses() {
    use loopwarden_common::origin::ConnEntry;
    const SERVER_COOKIE: usize = std::mem::offset_of!(ConnEntry, record.server_cookie);
    const CLIENT_COOKIE: usize = std::mem::offset_of!(ConnEntry, record.origin.socket_cookie);
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    let install = daemon.install();
    let holder = Holder::start(&ns, &[PROTECTED], None);
    // Connections made now are kept in `LW_CONNS`.
    take_conn_slots(install, monotonic_ns());
    let in_map = |port: u16| {
        map_dump(install, "LW_CONNS")
            .iter()
            .map(|e| (hex_bytes(&e["key"]), hex_bytes(&e["value"])))
            .find(|(key, _)| key[4..6] == port.to_ne_bytes())
    };
    let mut held = Vec::new();
    for n in 1..=2 {
        let client = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
        let accepted = holder.wait_accepted(n);
        assert_eq!(accepted["status"], 1, "{accepted}");
        assert_eq!(accepted["tgid"], client.pid(), "{accepted}");
        let port = port_of(&ends(&accepted).0);
        assert!(in_map(port).is_some(), "connection {n} kept in LW_CONNS");
        held.push((client, port));
    }
    let (other, kept) = (held[0].1, held[1].1);
    let (key, mut entry) = in_map(other).expect("the first connection's entry");
    for at in [SERVER_COOKIE, CLIENT_COOKIE] {
        let cookie = u64::from_ne_bytes(entry[at..at + 8].try_into().expect("a cookie"));
        entry[at..at + 8].copy_from_slice(&(cookie + 1_000_000).to_ne_bytes());
    }
    map_update(install, "LW_CONNS", &key, &entry);

    // The clients go; the holding service closes its side after each.
    drop(held);
    wait_for(
        "the kept connection's entry removed at its close",
        Duration::from_secs(10),
        || in_map(kept).is_none().then_some(()),
    );
    wait_for(
        "the holding service's sockets to close",
        Duration::from_secs(10),
        || {
            let filter = format!("( sport = :{PROTECTED} )");
            let states = [
                "state",
                "established",
                "state",
                "close-wait",
                "state",
                "last-ack",
            ];
            let open = run(ns.cmd("ss").arg("-Htn").args(states).arg(&filter));
            (open.status.success() && open.stdout.is_empty()).then_some(())
        },
    );
    let left = in_map(other).expect("another socket's entry left in place by the close");
    assert_eq!(
        left.1, entry,
        "the entry under the closed connection's addresses"
    );
}

/// A connection to the protected port held open by `holder`'s client,
/// tagged and named by getsockopt: the client, its address (the peer's),
/// and its key and entry (from its slot or `LW_CONNS`).
fn tagged_connection(
    ns: &Netns,
    install: &Install,
    holder: &Holder,
) -> (Proc, String, Vec<u8>, Vec<u8>) {
    let client = holder.hold_client(ns, "127.0.0.1", PROTECTED);
    let tagged = holder.wait_accepted(1);
    assert_eq!(tagged["status"], 1, "{tagged}");
    assert_eq!(tagged["tgid"], client.pid(), "{tagged}");
    let (peer, _) = ends(&tagged);
    let (key, entry) = conns_entries(install)
        .into_iter()
        .find(|(key, _)| key[4..6] == port_of(&peer).to_ne_bytes())
        .expect("the tagged connection's entry");
    (client, peer, key, entry)
}

/// `entry` as it waits for its server's handshake: not established, not
/// bound, connected just now, its client's first sequence number `seq`.
fn as_pending(entry: &[u8], seq: u32) -> Vec<u8> {
    let mut pending = entry.to_vec();
    pending[16..32].fill(0); // established_ns, server_cookie
    pending[ENTRY_CONNECT_NS..ENTRY_CONNECT_NS + 8].copy_from_slice(&monotonic_ns().to_ne_bytes());
    pending[ENTRY_FIRST_SEQ..ENTRY_FIRST_SEQ + 4].copy_from_slice(&seq.to_ne_bytes());
    pending
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
    let said = ports_script(&ns, DUAL_STACK);
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

/// Python, arguments PROTECTED UNPROTECTED [ADDRESS]: a fresh socket's
/// connect to `::1` on the protected port and its listener's getsockopt
/// answer (`control`); then a socket whose tagged connect to the protected
/// port fails without the kernel's state change showing it (an IPv4-mapped
/// address on an `IPV6_V6ONLY` socket fails after the connect hook, before
/// a SYN: `failed`, its errno). The script goes on with `s` (that socket),
/// `listener(addr, port)` and `answer(listener)`, and prints `done(next)`.
const FAILED_CONNECT: &str = r#"import json, os, socket, struct, sys
protected, unprotected = int(sys.argv[1]), int(sys.argv[2])
def listener(addr, port):
    l = socket.socket(socket.AF_INET6)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, port))
    l.listen(4)
    return l
def answer(srv):
    a, _ = srv.accept()
    rec = a.getsockopt(0x4c57, 1, 328)
    return {"status": rec[8], "tgid": struct.unpack_from("=I", rec, 152)[0]}
p = listener("::1", protected)
fresh = socket.socket(socket.AF_INET6)
fresh.connect(("::1", protected))
control = answer(p)
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
try:
    s.connect(("::ffff:127.0.0.1", protected))
    failed = 0
except OSError as e:
    failed = e.errno
def done(next):
    print(json.dumps({"pid": os.getpid(), "control": control, "failed": failed, "next": next}))
"#;

/// What [`FAILED_CONNECT`] and `then` said, run in `ns` with `args` after
/// the two ports: the control known, the connect failed unseen, and the
/// next connection's origin unknown (`to` says where it went).
fn assert_the_failed_connect_lends_nothing(ns: &Netns, then: &str, args: &[&str], to: &str) {
    let script = format!("{FAILED_CONNECT}{then}");
    let out = loopwarden_tests::run_ok(
        ns.cmd(SYSTEM_PYTHON)
            .args([
                "-c",
                &script,
                &PROTECTED.to_string(),
                &UNPROTECTED.to_string(),
            ])
            .args(args),
    );
    let said: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    assert_eq!(said["control"]["status"], 1, "{said}");
    assert_eq!(said["control"]["tgid"], said["pid"], "{said}");
    assert_eq!(said["failed"], libc::ENETUNREACH, "{said}");
    assert_eq!(
        (&said["next"]["status"], &said["next"]["tgid"]),
        (&json!(0), &json!(0)),
        "the failed connect's record answered for the connection to {to}: {said}"
    );
}

/// A socket whose tagged connect failed unseen ([`FAILED_CONNECT`]) and
/// that then connects, untagged, to another port whose connections may
/// have origins: the first connect's record is never the second
/// connection's origin. The positive control: a fresh socket's connect to
/// the protected port is known.
#[test]
fn an_earlier_failed_connect_of_a_socket_is_never_its_next_connections_origin() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns));
    // Connections to the unprotected port may have origins (as after a
    // reload that stopped protecting a port tagged connects went to).
    mark_port(daemon.install(), UNPROTECTED);
    let then =
        "u = listener(\"::1\", unprotected)\ns.connect((\"::1\", unprotected))\ndone(answer(u))\n";
    assert_the_failed_connect_lends_nothing(&ns, then, &[], "another port");
}

/// As [`an_earlier_failed_connect_of_a_socket_is_never_its_next_connections_origin`],
/// the socket connecting next to the same port at another address of its
/// namespace, which no hook judges (`host_addresses = false`): the failed
/// connect's record names another destination, and is never that
/// connection's origin. The positive control: a fresh socket's connect to
/// the protected port on `::1` is known.
#[test]
fn an_earlier_failed_connect_to_loopback_is_never_the_origin_of_one_to_another_address() {
    const OTHER: &str = "fd00:77::1";
    let ns = Netns::new();
    let added = format!("{OTHER}/128");
    loopwarden_tests::run_ok(
        ns.cmd("ip")
            .args(["addr", "add", &added, "dev", "lo", "nodad"]),
    );
    let _daemon = Daemon::start(&config(&ns));
    let then = "o = listener(sys.argv[3], protected)\ns.connect((sys.argv[3], protected))\ndone(answer(o))\n";
    assert_the_failed_connect_lends_nothing(&ns, then, &[OTHER], OTHER);
}

/// The JSON that the Python `script` prints, run in `ns` with the
/// protected and the unprotected port as its arguments.
fn ports_script(ns: &Netns, script: &str) -> Value {
    let out = loopwarden_tests::run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        script,
        &PROTECTED.to_string(),
        &UNPROTECTED.to_string(),
    ]));
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}
