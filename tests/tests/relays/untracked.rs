//! A relay whose state the kernel's process table (`LW_PROCS`) cannot take
//! is still judged network-facing: the full map's loss is noted
//! (`LW_TRACKED`), and the relay verdict refuses it with
//! `via_how=untracked`, while a process with nothing to keep passes.
//!
//! No host here can fill the table with processes (its 32,768 entries are
//! this VM's `pid_max`), so the test fills it with entries under keys no
//! pid can take (above `PID_MAX_LIMIT`), as processes on a host with a
//! larger `pid_max` would.

use std::{io::Write as _, mem::size_of, process::Command};

use loopwarden_common::ProcState;
use loopwarden_tests::{Install, counter, hex_args, hex_bytes, map_dump, map_show, map_update};

use super::*;

/// The first key the filler uses: past `PID_MAX_LIMIT` (4,194,304).
const FILLER_BASE: u32 = 1 << 23;

/// A script (an interpreter's, so it has state to keep): `ask` asks the
/// service and prints what `ask` (relays' `ask_py!`) says; `fork` has a
/// forked child ask; `exec` executes curl, which asks (each prints
/// `status N` or `error ERRNO`).
const SCRIPT: &str = concat!(
    ask_py!(),
    r#"
port = int(sys.argv[2])
if sys.argv[1] == "exec":
    os.execv("/usr/bin/curl", ["curl", "-s", "-o", "/dev/null", "-w", "status %{http_code}",
                               "http://127.0.0.1:%d/" % port])
if sys.argv[1] == "fork":
    child = os.fork()
    if child == 0:
        print(ask(port), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
else:
    print(ask(port))
"#
);

/// Fills `install`'s `LW_PROCS` up to its capacity with empty entries under
/// keys no process has (one `bpftool batch`, which stops at the first
/// update the full map refuses); returns how many of its keys are in it.
fn fill_procs(install: &Install) -> u32 {
    let capacity = map_show(install, "LW_PROCS")["max_entries"]
        .as_u64()
        .expect("LW_PROCS' max_entries") as u32;
    let map = install.pin_dir().join("maps").join("LW_PROCS");
    let dir = TempDir::new("procs-filler");
    let batch = dir.path().join("batch");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&batch).unwrap());
    let value = hex_args(&[0u8; size_of::<ProcState>()]).join(" ");
    for i in 0..capacity {
        let key = hex_args(&(FILLER_BASE + i).to_ne_bytes()).join(" ");
        writeln!(
            file,
            "map update pinned {} key hex {key} value hex {value}",
            map.display()
        )
        .unwrap();
    }
    file.flush().unwrap();
    drop(file);
    // Fails at the update the full map refuses, by design.
    let _ = run(Command::new("bpftool").arg("batch").arg("file").arg(&batch));
    let entries = map_dump(install, "LW_PROCS");
    let fillers = entries
        .iter()
        .filter(|e| {
            let key = u32::from_ne_bytes(hex_bytes(&e["key"]).try_into().unwrap());
            key >= FILLER_BASE
        })
        .count() as u32;
    assert_eq!(entries.len() as u32, capacity, "LW_PROCS is not full");
    fillers
}

#[test]
fn a_relay_the_full_process_table_cannot_take_is_refused_as_untracked() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    assert_relays(&topo, Kind::Forwarder);
    let daemon = Daemon::start(&relay_deny(&topo.local).text());
    let url = format!("http://127.0.0.1:{PROTECTED}/");

    // Positive control: with room in the table, the relay is refused for
    // what the kernel saw it do (its accepted remote party), and a direct
    // client passes.
    {
        let relay = Kind::Forwarder.start(&topo);
        assert_ne!(relay.fetch(&topo), Ok(200), "the forwarder was not refused");
        let ev = relay_refusal(&daemon, "the tracked forwarder's refusal");
        assert_eq!(ev["via_how"], "accepted", "{ev:#}");
    }
    assert_eq!(topo.local.curl(&url), Ok(200), "a direct client");
    let dir = TempDir::new("untracked-script");
    let script = write_script(&dir, "ask.py", SCRIPT);
    let port = PROTECTED.to_string();
    let says = |mode: &str| {
        let lines = printed(topo.local.cmd(SYSTEM_PYTHON).args([&script, mode, &port]));
        lines.join("\n")
    };
    assert_eq!(says("ask"), "status 200", "the script, tracked");

    let fillers = fill_procs(daemon.install());
    assert!(fillers > 0, "no filler entry went in");
    // The forwarder (an interpreter's script, then its listener and the
    // connection it accepts) has state to keep and no room for it.
    let relay = Kind::Forwarder.start(&topo);
    assert_ne!(
        relay.fetch(&topo),
        Ok(200),
        "the forwarder the full table could not take was not refused"
    );
    let ev = daemon.wait_event("the untracked forwarder's refusal", |e| {
        e["verdict"] == "deny" && e["via_how"] == "untracked"
    });
    assert!(relay.is_its(&ev), "{ev:#}");
    assert_eq!(ev["rule"], "relay", "{ev:#}");
    assert_eq!(ev["via"], "[::]:0", "no party is named: {ev:#}");
    assert!(ev.get("via_ago_ms").is_none(), "{ev:#}");
    // A process with nothing to keep is judged as before.
    assert_eq!(
        topo.local.curl(&url),
        Ok(200),
        "a direct client, with the table full"
    );
    // The price: a process that is no relay but had state to keep is
    // refused too (a script), and so is its forked child; a program it
    // executes starts over (this policy has no lineage to lose), and passes.
    let econnrefused = format!("error {}", libc::ECONNREFUSED);
    assert_eq!(says("ask"), econnrefused, "the lost script asking");
    assert_eq!(says("fork"), econnrefused, "the lost script's forked child");
    assert_eq!(
        says("exec"),
        "status 200",
        "curl, executed by the lost script"
    );
    let status = daemon.install().status_json();
    assert!(
        counter(&status, "untracked") > 0,
        "the loss is counted: {status:#}"
    );
}

/// An `LW_PROCS` entry whose process is gone (what a process that exits
/// before its outbound connect's handshake completes leaves: the
/// handshake writes its `connected` evidence after the exit) is removed by
/// the daemon within its 10 s round, while a live process's entry, and one
/// under a key no pid can take, stay. Before, nothing removed such entries,
/// and enough of them filled the table (every new process with state to
/// keep then judged network-facing).
#[test]
fn the_entries_of_processes_that_are_gone_are_removed() {
    let ns = Netns::new();
    let daemon = Daemon::start(&Policy::new(&ns, "audit").text());
    let install = daemon.install();
    // A pid no process has now: a child that ran and was reaped.
    let mut gone = Command::new("true").spawn().expect("running true");
    let dead = gone.id();
    gone.wait().expect("reaping true");
    // Killed on drop, also when an assertion below fails.
    let live = Proc::spawn(Command::new("sleep").arg("60"));
    let empty = [0u8; size_of::<ProcState>()];
    for key in [dead, live.pid(), FILLER_BASE] {
        map_update(install, "LW_PROCS", &key.to_ne_bytes(), &empty);
    }
    let keys = || -> Vec<u32> {
        map_dump(install, "LW_PROCS")
            .iter()
            .map(|e| u32::from_ne_bytes(hex_bytes(&e["key"]).try_into().unwrap()))
            .collect()
    };
    assert!(
        keys().contains(&dead),
        "the dead pid's entry was not written"
    );
    daemon.wait_stderr("LW_PROCS entries of processes that are gone", 1);
    let left = keys();
    assert!(!left.contains(&dead), "the dead pid {dead}'s entry stayed");
    assert!(left.contains(&live.pid()), "a live process's entry went");
    assert!(left.contains(&FILLER_BASE), "a key no pid can take went");
}
