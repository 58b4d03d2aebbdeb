//! Origins across daemon restarts and a resized table, getsockopt scoped to
//! the policy's cgroups, and the nearly-full table warning.

use super::*;

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
    // The connection is kept in `LW_CONNS`, the map a resize replaces (the
    // slots, fixed in size, are adopted like every other map).
    take_conn_slots(&install, monotonic_ns());
    let dir = TempDir::new("reask");
    let script = write_script(&dir, "reask.py", REASK);
    let out = dir.path().join("asked.jsonl");
    let port = PROTECTED.to_string();
    let _service = ns.spawn(SYSTEM_PYTHON, &[&script, &out.display().to_string(), &port]);
    ns.wait_listening(PROTECTED);
    let dir2 = TempDir::new("reask-client");
    let hold = write_script(&dir2, "hold.py", HOLD);
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
    let (procs, slots, before) = (shown("LW_PROCS"), shown("LW_CONN_SLOTS"), shown("LW_CONNS"));
    // Each LRU map is made 128 entries per possible CPU larger than what it
    // must hold: the kernel's per-CPU batches of free entries.
    let batches = 128 * possible_cpus();
    assert_eq!(
        before["max_entries"],
        loopwarden_common::MAX_CONNS + batches
    );
    let config = format!("{config}\n[provenance]\nconnections = 2048\n");
    let mut daemon = Daemon::start_in(&install, &config, &[]);
    daemon.wait_stderr(
        "LW_CONNS holds 16384 entries and [provenance] connections asks for 2048",
        1,
    );
    daemon.wait_stderr("LW_CONNS resized: 1 entries copied over", 1);
    let after = shown("LW_CONNS");
    assert_eq!(after["max_entries"], 2048 + batches, "{after}");
    assert_ne!(after["id"], before["id"], "LW_CONNS was not replaced");
    for (name, was) in [("LW_PROCS", procs), ("LW_CONN_SLOTS", slots)] {
        assert_eq!(shown(name)["id"], was["id"], "{name} was replaced");
    }
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

    // `[provenance] getsockopt = false`: nothing answers any more (the
    // call fails as without loopwarden: no other loopwarden runs on a test
    // host), which a client tells from "unknown"; the query socket still
    // names the connection.
    let off = config.replace("[provenance]\n", "[provenance]\ngetsockopt = false\n");
    let mut daemon = Daemon::start_in(&install, &off, &[]);
    daemon.wait_stderr("adopted the pinned maps;", 1);
    let n = asked(&out).len();
    let after = wait_ask(&out, n, "getsockopt no longer answered", |a| {
        a.get("errno").is_some() || a["status"] == 0
    });
    let errno = after.get("errno").unwrap_or_else(|| {
        panic!(
            "still answered (status {}), the program is attached: {after}",
            after["status"]
        )
    });
    assert!(
        *errno == libc::ENOPROTOOPT || *errno == libc::EOPNOTSUPP,
        "{after}"
    );
    let listed = conns(&ns, None, &install.run_dir());
    assert!(
        listed.iter().any(|o| o["pid"] == me),
        "conns with getsockopt off: {listed:#?}"
    );
    assert!(daemon.stop(), "the daemon did not exit cleanly");
    drop(client);
}

/// Holds one connection to 127.0.0.1:PORT until killed.
const HOLD: &str = "import socket, sys, time\ns = socket.create_connection(('127.0.0.1', \
                    int(sys.argv[1])))\nwhile True: time.sleep(3600)\n";

/// Starts [`REASK`] (written at `script`) on `PROTECTED`, asking into
/// `out`, as a service of `cgroup`. It is moved in from here (`ip netns
/// exec` gives it a /sys without the cgroup mount) and waits for the move
/// before it listens, so its listener, and the sockets it accepts, belong
/// to the cgroup.
fn reask_in_cgroup(
    ns: &Netns,
    script: &str,
    cgroup: &loopwarden_tests::TestCgroup,
    out: &Path,
) -> Proc {
    let go = out.with_extension("go");
    let in_cgroup = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; exec {SYSTEM_PYTHON} {script} {} {PROTECTED}",
        out.display(),
        go = go.display()
    );
    let service = Proc::spawn(ns.cmd("sh").args(["-c", &in_cgroup]));
    std::fs::write(cgroup.procs(), service.pid().to_string()).expect("moving the service");
    std::fs::write(&go, "").expect("starting the service");
    service
}

/// `status --json`'s `provenance` object.
fn status_provenance(daemon: &Daemon) -> Value {
    daemon.install().status_json()["provenance"].clone()
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
    let hold = write_script(&dir, "hold.py", HOLD);
    // One service started in the named cgroup, one in the test's own.
    let inside = dir.path().join("inside.jsonl");
    let outside = dir.path().join("outside.jsonl");
    let inside_service = reask_in_cgroup(&ns, &script, &cgroup, &inside);
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
    // Outside: nothing answers (the call fails as without loopwarden: no
    // other loopwarden runs on a test host) ...
    let asked = wait_ask(&outside, 0, "an ask outside the named cgroup", |_| true);
    let errno = asked
        .get("errno")
        .unwrap_or_else(|| panic!("answered outside the named cgroup: {asked}"));
    assert!(
        *errno == libc::ENOPROTOOPT || *errno == libc::EOPNOTSUPP,
        "{asked}"
    );
    // ... though the connection is tagged: the daemon names it.
    let listed = conns(&ns, None, &daemon.install().run_dir());
    assert!(listed.iter().any(|o| o["pid"] == b_pid), "{listed:#?}");
    assert!(listed.iter().any(|o| o["pid"] == a_pid), "{listed:#?}");

    // `status` shows the scoped link and no root one.
    let provenance = &status_provenance(&daemon);
    assert_eq!(provenance["getsockopt"]["pinned"], false, "{provenance:#}");
    let scoped = provenance["getsockopt_scoped"]
        .as_array()
        .expect("scoped links");
    assert_eq!(scoped.len(), 1, "{provenance:#}");
    assert_eq!(scoped[0]["prog_name"], "lw_getsockopt", "{provenance:#}");
    drop((a, b, inside_service));
}

/// The scoped getsockopt links `status --json` lists, by pin name.
fn scoped_links(daemon: &Daemon) -> Vec<String> {
    status_provenance(daemon)["getsockopt_scoped"]
        .as_array()
        .expect("scoped links")
        .iter()
        .map(|l| l["program"].as_str().expect("a pin name").to_owned())
        .collect()
}

#[test]
fn a_named_cgroup_made_after_start_or_made_again_is_followed() {
    let ns = Netns::new();
    let cgroup =
        loopwarden_tests::TestCgroup::new(&format!("lwt-getsockopt-again-{}", std::process::id()));
    // Named, and not there when the daemon starts.
    cgroup.remove_now();
    let policy = Policy::new(&ns, "audit").catalog(false).relay("audit");
    let config = format!(
        "{}\n[provenance]\ngetsockopt_cgroups = [\"{}\"]\n",
        policy.text(),
        cgroup.name
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_stderr("services there cannot ask with getsockopt until", 1);
    assert_eq!(scoped_links(&daemon), Vec::<String>::new());
    let dir = TempDir::new("again");
    let script = write_script(&dir, "reask.py", REASK);
    let hold = write_script(&dir, "hold.py", HOLD);
    let mut previous = None;
    for (i, round) in ["made after the start", "made again (a unit's restart)"]
        .into_iter()
        .enumerate()
    {
        cgroup.make();
        let pin = format!("lw_getsockopt_{:x}", cgroup.id());
        let out = dir.path().join(format!("asked-{pin}.jsonl"));
        let service = reask_in_cgroup(&ns, &script, &cgroup, &out);
        ns.wait_listening(PROTECTED);
        let client = ns.spawn(SYSTEM_PYTHON, &[&hold, &PROTECTED.to_string()]);
        let me = u64::from(client.pid());
        // The service's own asks get the origin once the daemon has
        // attached in the new cgroup (within its 1 s refresh).
        wait_ask(&out, 0, &format!("the origin in the cgroup {round}"), |x| {
            x["status"] == 1 && x["tgid"] == me
        });
        // One link, this cgroup's: the removed one's went with it.
        assert_eq!(scoped_links(&daemon), [pin.as_str()], "{round}");
        assert_ne!(
            previous.as_ref(),
            Some(&pin),
            "the cgroup was not made anew"
        );
        let said = format!("now answers services in {}", cgroup.path.display());
        daemon.wait_stderr(&said, i + 1);
        drop((client, service));
        cgroup.remove_now();
        wait_for(
            &format!("the link of the cgroup {round} removed with it"),
            Duration::from_secs(10),
            || scoped_links(&daemon).is_empty().then_some(()),
        );
        previous = Some(pin);
    }
    // A reload that names no cgroup moves the program to the root, and one
    // that turns it off removes it, without a restart.
    let root_pinned = |daemon: &Daemon| status_provenance(daemon)["getsockopt"]["pinned"] == true;
    assert!(!root_pinned(&daemon));
    for (text, pinned) in [
        (format!("{}\n", policy.text()), true),
        (
            format!("{}\n[provenance]\ngetsockopt = false\n", policy.text()),
            false,
        ),
    ] {
        std::fs::write(daemon.config_path(), text).expect("writing the config");
        daemon.signal(libc::SIGHUP);
        wait_for(
            &format!("the root's link pinned: {pinned}, after a reload"),
            Duration::from_secs(10),
            || (root_pinned(&daemon) == pinned).then_some(()),
        );
    }
    assert!(daemon.stop(), "the daemon did not exit cleanly");
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
    // Every connection is kept in `LW_CONNS`, whose fullness is warned of.
    take_conn_slots(daemon.install(), monotonic_ns());
    let port = PROTECTED.to_string();
    let server = write_script(&dir, "hold_all.py", HOLD_ALL);
    let mut server = ns.spawn(SYSTEM_PYTHON, &[&server, &port]);
    ns.wait_listening(PROTECTED);
    let hold = |n: usize, tag: &str| hold_open(&ns, &dir, n, tag, None);
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
    // 950 (93%): one warning, with the numbers and what to do. A count
    // taken while the second batch was still opening warns with fewer
    // (90% is 922).
    let mut second = hold(350, "second");
    let held = counted(&daemon, "LW_CONNS holds ", " of 1024 entries");
    assert!((922..=950).contains(&held), "{}", daemon.stderr_text());
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
    // (A count taken while they were closing eases with more than 0.)
    let left = counted(&daemon, "LW_CONNS is below 75% full again (", " of 1024)");
    assert!(left < 768, "{}", daemon.stderr_text());
    assert_eq!(daemon.stderr_text().matches(warning).count(), 1);
}

/// Opens `n` connections to [`PROTECTED`] in `ns` from one process (on
/// CPU `cpu` only, if given) and holds them; returns once they are open.
fn hold_open(ns: &Netns, dir: &TempDir, n: usize, tag: &str, cpu: Option<u32>) -> Proc {
    let open = write_script(dir, "open_n.py", OPEN_N);
    let done = dir.path().join(tag);
    let (n_text, port, done_text) = (
        n.to_string(),
        PROTECTED.to_string(),
        done.display().to_string(),
    );
    let client_args = [open.as_str(), &n_text, &port, &done_text];
    let client = match cpu {
        None => ns.spawn(SYSTEM_PYTHON, &client_args),
        Some(cpu) => {
            let cpu = cpu.to_string();
            let mut args = vec!["-c", &cpu, SYSTEM_PYTHON];
            args.extend(client_args);
            ns.spawn("taskset", &args)
        }
    };
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
}

#[test]
fn a_connection_table_holds_its_capacity_whichever_cpus_filled_it() {
    // The kernel's LRU map keeps batches of free entries per CPU: entries
    // another CPU took a batch for are not there for this one, and a map
    // of exactly the named capacity evicted live origins (128 of these
    // 1,005: the batch CPU 1 kept).
    assert_two_cpus();
    let ns = Netns::new();
    let dir = TempDir::new("cpus");
    let config = format!("{}\n[provenance]\nconnections = 1024\n", config(&ns));
    let daemon = Daemon::start(&config);
    // Every connection is kept in `LW_CONNS`, the LRU map.
    take_conn_slots(daemon.install(), monotonic_ns());
    let server = write_script(&dir, "hold_all.py", HOLD_ALL);
    let mut server = ns.spawn(SYSTEM_PYTHON, &[&server, &PROTECTED.to_string()]);
    ns.wait_listening(PROTECTED);
    // Five connections from CPU 1; their client exits, the server holds
    // its ends (their origins stay). Then 1,000 from CPU 0.
    let mut early = hold_open(&ns, &dir, 5, "cpu1", Some(1));
    early.kill();
    let mut rest = hold_open(&ns, &dir, 1000, "cpu0", Some(0));
    let entries = map_dump(daemon.install(), "LW_CONNS").len();
    assert_eq!(entries, 1005, "origins lost below the named capacity");
    let listed = conns(&ns, None, &daemon.install().run_dir());
    assert_eq!(listed.len(), 1005);
    rest.kill();
    server.kill();
}

/// The count in the daemon's first stderr line with `before` COUNT
/// `after`, waited for.
fn counted(daemon: &Daemon, before: &str, after: &str) -> u32 {
    wait_for_explained(
        &format!("{before:?}N{after:?} on the daemon's stderr"),
        Duration::from_secs(15),
        || {
            let text = daemon.stderr_text();
            let (_, rest) = text.split_once(before)?;
            rest.split_once(after)?.0.parse().ok()
        },
        || format!("; the daemon's stderr:\n{}", daemon.stderr_text()),
    )
}
