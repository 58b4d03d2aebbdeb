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
//! connections' origins, and a nearly full one is warned of. Clients on
//! both CPUs at once, hundreds of connections held and thousands made,
//! each get their own origin, and nothing is left behind.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::Duration,
};

use loopwarden_common::{Addr, origin::ConnKey};
use loopwarden_tests::{
    Daemon, Install, LOCAL_ADDR, Netns, PROTECTED, Policy, Proc, REMOTE_ADDR, SYSTEM_PYTHON, Sshd,
    TempDir, Topology, UNPROTECTED, exe_id, exe_name, hex_args, hex_bytes,
    idle::IdleClients,
    loopwarden_bin, map_dump, map_show, map_update, possible_cpus,
    provenance::{
        Holder, conns, loopwarden, netns_inode, raw_query, raw_query_from_host,
        raw_query_from_host_as, who,
    },
    rule, run,
    talk::Talker,
    wait_for, wait_for_explained, write_script,
};
use serde_json::{Value, json};

mod concurrent;
mod direct;
mod lifecycle;
mod query;
mod relayed;
mod stale;

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

/// [`config`] with the ident responder on `127.0.0.1:113` in `ns`.
fn config_with_ident(ns: &Netns) -> String {
    format!(
        "{}[ident]\nlisten = [\"127.0.0.1:{}\"]\nnetns = \"{}\"\n",
        config(ns),
        loopwarden_tests::ident::IDENT_PORT,
        ns.path()
    )
}

/// Fails a test that races two CPUs on a host with fewer.
fn assert_two_cpus() {
    let online = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        online >= 2,
        "this test needs two CPUs, this host has {online}"
    );
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

/// Where `ConnEntry` (common/src/origin.rs) keeps the connect's time
/// (`record.origin.ktime_ns`) and `first_seq`.
const ENTRY_CONNECT_NS: usize = 72;
const ENTRY_FIRST_SEQ: usize = 328;

/// Where `ConnEntry` keeps its connection's key (`record.conn`).
const ENTRY_KEY: std::ops::Range<usize> = 32..72;
/// Bytes of a `ConnSlot` before its entry (the owner word and the claim
/// time).
const SLOT_ENTRY: usize = 16;

/// Every connection `install` keeps, in a taken slot of `LW_CONN_SLOTS` or
/// in `LW_CONNS`, as (key, entry) bytes.
fn conns_entries(install: &Install) -> Vec<(Vec<u8>, Vec<u8>)> {
    let in_slots = map_dump(install, "LW_CONN_SLOTS")
        .iter()
        .map(|e| hex_bytes(&e["value"]))
        .filter(|slot| slot[..8] != [0; 8])
        .map(|slot| {
            let entry = slot[SLOT_ENTRY..].to_vec();
            (entry[ENTRY_KEY].to_vec(), entry)
        })
        .collect::<Vec<_>>();
    let in_map = map_dump(install, "LW_CONNS");
    let in_map = in_map
        .iter()
        .map(|e| (hex_bytes(&e["key"]), hex_bytes(&e["value"])));
    in_slots.into_iter().chain(in_map).collect()
}

/// Where a test writes a connection's entry: where the kernel keeps it.
#[derive(Clone, Copy, Debug)]
enum Home {
    /// `LW_CONNS`, under the connection's key.
    Map,
    /// The first free slot of `LW_CONN_SLOTS` among those the key hashes
    /// to (the one the kernel would claim), taken by a made-up client
    /// cookie.
    Slot,
}

/// Writes the entry of the connection `key` (bytes) where `home` says, as
/// the kernel would (bpftool).
fn write_entry(install: &Install, home: Home, key: &[u8], entry: &[u8]) {
    match home {
        Home::Map => map_update(install, "LW_CONNS", key, entry),
        Home::Slot => {
            let mut entry = entry.to_vec();
            entry[ENTRY_KEY].copy_from_slice(key);
            // Claimed when its client connected.
            let mut value = 0x10c_0ffe_u64.to_ne_bytes().to_vec();
            value.extend_from_slice(&entry[ENTRY_CONNECT_NS..ENTRY_CONNECT_NS + 8]);
            value.extend_from_slice(&entry);
            let (key_at, taken) = (conn_key(key), owners(install, "LW_CONN_SLOTS"));
            let index = (0..loopwarden_common::CONN_SLOT_PROBES)
                .map(|i| key_at.slot(i))
                .find(|&i| taken[i as usize] == 0)
                .expect("a free slot for the entry");
            map_update(install, "LW_CONN_SLOTS", &index.to_ne_bytes(), &value);
        }
    }
}

/// The owner word a test writes into slot `i` of `LW_CONN_SLOTS`: no
/// socket's cookie.
fn fake_conn_owner(i: u32) -> u64 {
    0x5107_0000_0000_0000 | u64::from(i)
}

/// Writes every slot of `LW_CONN_SLOTS` of `install` as taken by a
/// connection whose server has not accepted it yet, connected (and its
/// slot claimed) at `connected_ns` (CLOCK_MONOTONIC) and named nowhere
/// (client port 0);
/// the owner words are [`fake_conn_owner`]'s. Made recent, a connection
/// made next is kept in `LW_CONNS`.
fn take_conn_slots(install: &Install, connected_ns: u64) {
    let mut entry = [0; std::mem::size_of::<loopwarden_common::origin::ConnEntry>()];
    entry[ENTRY_CONNECT_NS..ENTRY_CONNECT_NS + 8].copy_from_slice(&connected_ns.to_ne_bytes());
    for i in 0..loopwarden_common::CONN_SLOTS {
        let mut value = fake_conn_owner(i).to_ne_bytes().to_vec();
        value.extend_from_slice(&connected_ns.to_ne_bytes());
        value.extend_from_slice(&entry);
        map_update(install, "LW_CONN_SLOTS", &i.to_ne_bytes(), &value);
    }
}

/// The `ConnKey` whose bytes are `key`.
fn conn_key(key: &[u8]) -> ConnKey {
    let word = |at: usize| u32::from_ne_bytes(key[at..at + 4].try_into().expect("a word"));
    let port = |at: usize| u16::from_ne_bytes(key[at..at + 2].try_into().expect("a port"));
    let addr = |at: usize| Addr {
        words: [word(at), word(at + 4), word(at + 8), word(at + 12)],
    };
    ConnKey {
        netns: word(0),
        client_port: port(4),
        server_port: port(6),
        client: addr(8),
        server: addr(24),
    }
}

/// Marks `port` in `LW_CONN_PORTS` of `install` (bpftool), keeping the
/// other ports' marks in its entry: 64 bytes, one per port.
fn mark_port(install: &Install, port: u16) {
    let key = (u32::from(port) / 64).to_ne_bytes();
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned"])
        .arg(install.pin_dir().join("maps/LW_CONN_PORTS"))
        .args(["key", "hex"])
        .args(hex_args(&key)));
    assert!(out.status.success(), "{out:?}");
    let found: Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    let mut bytes = hex_bytes(&found["value"]);
    assert_eq!(bytes.len(), 64, "{found}");
    bytes[usize::from(port % 64)] = 1;
    map_update(install, "LW_CONN_PORTS", &key, &bytes);
}

/// The owner word (a socket cookie, 0 when free) of each slot of
/// `LW_ORIGIN_SLOTS` of `install`.
fn slot_owners(install: &Install) -> Vec<u64> {
    owners(install, "LW_ORIGIN_SLOTS")
}

/// The owner word (a socket cookie, 0 when free) of each slot of the
/// array `map` (`LW_ORIGIN_SLOTS`, `LW_CONN_SLOTS`) of `install`.
fn owners(install: &Install, map: &str) -> Vec<u64> {
    map_dump(install, map)
        .iter()
        .map(|e| {
            let value = hex_bytes(&e["value"]);
            u64::from_ne_bytes(value[..8].try_into().expect("an owner word"))
        })
        .collect()
}

/// Writes every slot of `LW_ORIGIN_SLOTS` of `install` as claimed by a
/// connect that is not there: owner `owner(i)` for slot `i`, claimed at
/// `claimed_ns` (CLOCK_MONOTONIC), the entry zeroed.
fn take_slots(install: &Install, owner: impl Fn(u32) -> u64, claimed_ns: u64) {
    let entry = [0; std::mem::size_of::<loopwarden_common::origin::ConnEntry>()];
    for i in 0..loopwarden_common::ORIGIN_SLOTS {
        write_slot(install, i, owner(i), claimed_ns, &entry);
    }
}

/// Writes slot `index` of `LW_ORIGIN_SLOTS` of `install` (bpftool): its
/// owner word, claim time and entry.
fn write_slot(install: &Install, index: u32, owner: u64, claimed_ns: u64, entry: &[u8]) {
    let mut value = owner.to_ne_bytes().to_vec();
    value.extend_from_slice(&claimed_ns.to_ne_bytes());
    value.extend_from_slice(entry);
    assert_eq!(
        value.len(),
        std::mem::size_of::<loopwarden_common::origin::OriginSlot>()
    );
    map_update(install, "LW_ORIGIN_SLOTS", &index.to_ne_bytes(), &value);
}

/// Runs `script` (named `name` in `dir`) in `ns` with `dir` and
/// `PROTECTED` as its arguments, and waits for what it writes to
/// `dir/open` once its connection is made.
fn spawn_until_open(ns: &Netns, dir: &TempDir, name: &str, script: &str) -> (Proc, String) {
    let script = write_script(dir, name, script);
    let proc = ns.spawn(
        SYSTEM_PYTHON,
        &[
            &script,
            &dir.path().display().to_string(),
            &PROTECTED.to_string(),
        ],
    );
    let open = wait_for("the connection", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("open")).ok()
    });
    (proc, open)
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
