//! Reporting at any rate: a flood of reports from one process becomes a
//! line per interval whose counts add up to the connects made, a new flow
//! inside a flood is reported at once, and no refusal waits longer than the
//! interval.

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, SystemTime},
};

use loopwarden_tests::{
    Daemon, Install, LOCAL_ADDR, Netns, PROTECTED, Policy, Proc, REMOTE_ADDR, SYSTEM_PYTHON,
    TempDir, Topology, connects,
    locked::LockedMemory,
    policy, provenance, rule, run,
    stallfs::{StallFs, Stalled, Unanswered},
    talk::Talker,
    wait_for, wait_for_explained,
};

/// A python client connecting to the protected port for `seconds`, as fast
/// as it can or at most `per_second` (0: no limit); prints `pid ok refused`
/// when done (reset on close: no TIME_WAIT, so ports never run out).
fn flood_script(seconds: f64, per_second: u32) -> String {
    format!(
        r#"
import os, socket, struct, time
ok = refused = 0
start = time.monotonic()
end = start + {seconds}
while time.monotonic() < end:
    if {per_second} and ok + refused >= {per_second} * (time.monotonic() - start):
        time.sleep(0.001)
        continue
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        s.connect(("127.0.0.1", {PROTECTED}))
        ok += 1
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(os.getpid(), ok, refused)
"#
    )
}

fn flood(ns: &Netns, seconds: f64, per_second: u32) -> (u32, u64, u64) {
    let out = run(ns
        .cmd("/usr/bin/python3")
        .args(["-c", &flood_script(seconds, per_second)]));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("a number"));
    let pid = it.next().expect("pid") as u32;
    (pid, it.next().expect("ok"), it.next().expect("refused"))
}

fn of_pid(daemon: &Daemon, pid: u32, verdict: &str) -> Vec<serde_json::Value> {
    daemon
        .events()
        .into_iter()
        .filter(|e| e["pid"] == pid && e["verdict"] == verdict)
        .collect()
}

#[test]
fn a_flood_from_one_relay_is_summarised_and_the_counts_add_up() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let daemon = Daemon::start_with(
        &format!("log_allowed = true\n{}", policy(&ns, "audit", "")),
        &["--repeat-interval", "1s"],
    );
    let (pid, ok, refused) = flood(&ns, 3.0, 0);
    assert_eq!(refused, 0);
    assert!(ok > 3000, "only {ok} connects: not a flood");
    let records = wait_for(
        "summaries adding up to the connects made",
        Duration::from_secs(10),
        || {
            let records = of_pid(&daemon, pid, "allow");
            (records.iter().map(connects).sum::<u64>() >= ok).then_some(records)
        },
    );
    assert_eq!(
        records.iter().map(connects).sum::<u64>(),
        ok,
        "summaries count more connects than were made"
    );
    // One line at once, then a summary per second (a few more if the
    // interval boundaries fall badly).
    assert!(
        records.len() <= 6,
        "{} lines for a 3 s flood",
        records.len()
    );
    let summaries: Vec<_> = records.iter().filter(|e| e["repeat"].is_object()).collect();
    assert!(!summaries.is_empty());
    for s in summaries {
        assert!(s["repeat"]["first"].as_str() <= s["repeat"]["last"].as_str());
        assert_eq!(s["repeat"]["last"], s["time"], "{s}");
    }
    daemon.assert_no_reports_lost();
}

/// A remote party opening connection after connection through a forking
/// relay (socat `fork` on the link address, a new child per connection)
/// makes a line and then a summary per interval, the children of one
/// parent being one flow: the relay's connects add up to those made, in a
/// handful of lines, and a summary's record is a later child's (another
/// pid, the same parent). Before, each child's connect had a line of its
/// own: one per connection.
#[test]
fn a_forking_relays_connections_for_one_remote_party_are_summarised() {
    const PORT: u16 = 9031;
    const CONNECTIONS: u64 = 200;
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let config = Policy::new(&topo.local, "audit")
        .catalog(false)
        .relay("audit")
        .text();
    let daemon = Daemon::start_with(&config, &["--repeat-interval", "1s"]);
    let relay = topo.local.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{PORT},bind={LOCAL_ADDR},fork,reuseaddr"),
            &format!("TCP:127.0.0.1:{PROTECTED}"),
        ],
    );
    topo.local.wait_listening(PORT);
    let client = format!(
        "import socket\nfor _ in range({CONNECTIONS}):\n    c = socket.create_connection(('{LOCAL_ADDR}', {PORT}), timeout=5)\n    c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    while c.recv(4096):\n        pass\n    c.close()\n"
    );
    loopwarden_tests::run_ok(topo.remote.cmd(SYSTEM_PYTHON).args(["-c", &client]));
    let of_relay = || -> Vec<serde_json::Value> {
        daemon
            .events()
            .into_iter()
            .filter(|e| e["exe_name"] == "socat" && e["ppid"] == relay.pid())
            .collect()
    };
    let lines = wait_for(
        "the relay's lines adding up to its connections",
        Duration::from_secs(10),
        || {
            let lines = of_relay();
            (lines.iter().map(connects).sum::<u64>() >= CONNECTIONS).then_some(lines)
        },
    );
    assert_eq!(lines.iter().map(connects).sum::<u64>(), CONNECTIONS);
    assert!(
        lines.len() <= 8,
        "{} lines for {CONNECTIONS} relayed connections",
        lines.len()
    );
    for line in &lines {
        assert_eq!(line["via_how"], "accepted", "{line}");
        assert!(
            line["via"]
                .as_str()
                .is_some_and(|v| v.starts_with(REMOTE_ADDR)),
            "{line}"
        );
    }
    let summary = lines
        .iter()
        .find(|l| l["repeat"].is_object())
        .expect("a summary");
    assert_ne!(summary["pid"], lines[0]["pid"], "{summary}");
    daemon.assert_no_reports_lost();
}

/// A reader of the audit lines that stops reading (journald busy, a
/// stalled container log pipe) stalls nothing: the query socket answers
/// during the stall, and once it reads again every connect is on a line
/// or in the warning that says how many lines were not written.
#[test]
fn a_stalled_reader_of_the_lines_stalls_nothing_and_what_it_missed_is_said() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let install = Install::new();
    std::fs::write(
        install.config_path(),
        format!("log_allowed = true\n{}", policy(&ns, "audit", "")),
    )
    .expect("writing the config");
    let dir = TempDir::new("stall");
    let (daemon, cat) = through_a_fifo(&install, 1, &dir);
    daemon.allow_error("audit lines lost");
    let stalled = Stopped::stop(cat);
    // Far more lines than the FIFO, the daemon's queue and what it holds
    // take (some 700 bytes a line; 2 MiB queue). Paced, so the kernel's
    // ring keeps up with it: this is about the output, not the ring.
    let (pid, ok, refused) = flood(&ns, 3.0, 20_000);
    assert_answers(&install, "the lines' reader");
    drop(stalled);
    assert_eq!(refused, 0);
    assert!(ok > 5000, "only {ok} connects: not a flood");
    daemon.wait_stderr("audit lines lost", 1);
    // A line written may be a summary (the default --repeat-interval):
    // it stands for its count of connects, as a lost one does.
    let on_lines = || -> u64 { of_pid(&daemon, pid, "allow").iter().map(connects).sum() };
    // Reports the kernel's ring had no room for are said too (`events
    // lost`): accounted for, as the README says, though the pace above
    // should leave none.
    let ring_lost = || daemon.stderr_sum("events lost", "lost_allow");
    let lost: u64 = wait_for_explained(
        "the flood's connects on lines or said to be lost",
        Duration::from_secs(15),
        || {
            let lost: u64 = unwritten_reports(&daemon);
            (on_lines() + lost + ring_lost() == ok).then_some(lost)
        },
        || {
            format!(
                ": {ok} connects, {} on lines, {} said lost (unwritten), {} lost in the ring",
                on_lines(),
                unwritten_reports(&daemon),
                ring_lost()
            )
        },
    );
    assert!(
        lost > 0,
        "nothing was lost: the test did not stall the output"
    );
    // The event loop went on reading the ring while the output stalled:
    // whatever the ring lost is a small part of the flood.
    assert!(
        ring_lost() < ok / 10,
        "the ring lost {} of {ok}: the loop stalled with the output",
        ring_lost()
    );
}

/// A reader of the diagnostics that stops reading (journald busy) stalls
/// nothing either: with the daemon's stderr going nowhere, reloads that
/// log far more than a pipe holds leave the query socket answering, and
/// once it reads again the daemon says how many diagnostic lines it
/// dropped. Fails against a build that writes diagnostics from the event
/// loop: its loop blocks in the write, and the query goes unanswered.
#[test]
fn a_stalled_reader_of_the_diagnostics_stalls_nothing() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let install = Install::new();
    std::fs::write(install.config_path(), policy(&ns, "audit", "")).expect("writing the config");
    let dir = TempDir::new("stall-stderr");
    let (daemon, cat) = through_a_fifo(&install, 2, &dir);
    let stalled = Stopped::stop(cat);
    // Each reload logs two lines, some 260 bytes: a few thousand are more
    // than the FIFO's 64 KiB and the daemon's queue of 1,024 lines take
    // (SIGHUPs that come during a reload make one more).
    let started = std::time::Instant::now();
    let mut sent = 0;
    while sent < 3000 || started.elapsed() < Duration::from_secs(8) {
        daemon.signal(libc::SIGHUP);
        sent += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_answers(&install, "the diagnostics' reader");
    drop(stalled);
    // The count is said once the reader reads again, whole: more than the
    // warning itself.
    daemon.wait_stderr("diagnostic lines were dropped", 1);
    let dropped = daemon.stderr_sum("diagnostic lines were dropped", "dropped_lines");
    assert!(dropped > 100, "{dropped} lines said to be dropped");
}

/// An executable on a filesystem whose server stops answering the daemon
/// (a FUSE server a user runs, or an NFS server that is down) stalls
/// nothing: a process running it connects, and its line carries the
/// executable's path while the server never answers the daemon's requests,
/// and the query socket answers meanwhile. The daemon asks for the file's
/// identity from the kernel's cache (`statx` with `AT_STATX_DONT_SYNC`).
/// Fails against a build that `stat()`s `/proc/PID/exe`: its event loop
/// waits for the server for ever.
#[test]
fn an_executable_on_a_filesystem_that_stops_answering_stalls_nothing() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let daemon = Daemon::start(&policy(
        &ns,
        "audit",
        &rule("fuse-tool", "deny", "exe_name", "tool"),
    ));
    let dir = TempDir::new("stallfs");
    let mnt = dir.path().join("mnt");
    let pid = daemon.pid().expect("the daemon's pid");
    let _fs = StallFs::mount(&dir, &mnt, Stalled::Thread(pid));
    let tool = mnt.join("tool");
    let _tool = Proc::spawn(
        ns.cmd(tool.to_str().expect("utf-8"))
            .env("PYTHONHOME", "/usr")
            .args([
                "-c",
                &format!(
                    "import socket, time; s = socket.create_connection(('127.0.0.1', {PROTECTED})); time.sleep(60)"
                ),
            ]),
    );
    let ev = daemon.wait_event("the would-deny of the program on FUSE", |e| {
        e["exe_name"] == "tool" && e["verdict"] == "would-deny"
    });
    assert_eq!(ev["exe"], tool.display().to_string(), "{ev}");
    // One that is gone by the time its line is written (its connect is
    // reported at the next drain tick): its path is the one seen for that
    // file, not looked up on the mount again.
    let out = run(ns.cmd(tool.to_str().expect("utf-8"))
        .env("PYTHONHOME", "/usr")
        .args([
            "-c",
            &format!(
                "import os, socket; socket.create_connection(('127.0.0.1', {PROTECTED})); print(os.getpid())"
            ),
        ]));
    let gone: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    let ev = daemon.wait_event("the would-deny of the process gone", |e| e["pid"] == gone);
    assert_eq!(ev["exe"], tool.display().to_string(), "{ev}");
    assert_answers(
        daemon.install(),
        "a FUSE server that never answers the daemon",
    );
}

/// A path the policy names on a filesystem whose server stops answering
/// the daemon right after the daemon's probe of the mount (which it
/// answers: see
/// `a_search_directory_on_a_filesystem_that_stops_answering_holds_no_start`
/// for a server that answers no probe) holds up the policy's
/// re-resolution, which runs on a thread of its own, and nothing else: a
/// relay is refused and
/// its line written, the query socket answers, the wait is said (and
/// shown by `status`), a SIGHUP waits its turn, and a SIGKILL releases
/// the daemon's locks although the stuck thread outlives it. Fails against the build before, whose event
/// loop re-resolved the policy itself each second: it waited for the
/// server for ever, and the relay's refusal was never reported.
#[test]
fn a_policy_path_on_a_filesystem_that_stops_answering_stalls_nothing() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("stallfs-policy");
    let mnt = dir.path().join("mnt");
    let tool = mnt.join("tool");
    // Not there at start: a warning, and the value matches nothing until
    // a re-resolution finds it.
    let daemon = Daemon::start(&policy(
        &ns,
        "enforce",
        &rule("fuse-tool", "deny", "exe", tool.to_str().expect("utf-8")),
    ));
    let pid = daemon.pid().expect("the daemon's pid");
    let fs =
        StallFs::mount_unanswering(&dir, &mnt, Stalled::Process(pid), Unanswered::AllButProbes);
    // The next 1 s re-resolution probes the mount, looks the path up on
    // it, and waits.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(!ok, "the relay was not refused");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    daemon.wait_event("the relay's refusal while the re-resolution waits", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "socat"
    });
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
    assert_answers(daemon.install(), "the policy's re-resolution");
    daemon.wait_stderr("has waited", 1);
    // `status` says so.
    let waiting = daemon
        .install()
        .wait_reported("waiting", Duration::from_secs(10));
    assert_eq!(
        waiting["what"], "the 1 s re-resolution of the policy",
        "{waiting}"
    );
    let text = daemon.install().status_text();
    assert!(
        text.contains("the 1 s re-resolution of the policy has waited for the system since"),
        "{text}"
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("the reload starts once", 1);
    // SIGKILL (an OOM kill, or a stop that timed out) with the compile
    // still stuck in a FUSE request its server read and never answers,
    // which no signal ends: the stuck thread keeps the process from being
    // reaped, but not the daemon's descriptors, which it does not share:
    // the locks go, and a new daemon could start.
    daemon.signal(libc::SIGKILL);
    let lock = daemon.install().run_dir().join("loopwarden.lock");
    wait_for(
        "the run directory's lock to be released",
        Duration::from_secs(10),
        || {
            // Taken for a moment, and let go with the file.
            let file = std::fs::File::open(&lock).ok()?;
            file.try_lock().ok()
        },
    );
    // The server goes: the stuck request fails, the thread ends, and the
    // process is reaped.
    drop(fs);
    let mut daemon = daemon;
    daemon.kill9();
}

/// A client whose command line lies on a filesystem that stops answering
/// the daemon (its argument pages mapped from a FUSE file with
/// `PR_SET_MM_MAP`, which needs no privilege) stalls no answer: the kernel
/// reads `/proc/PID/cmdline` only from anonymous memory (`FOLL_ANON`), so
/// `who` about it answers at once, without the command line, as it does
/// about a direct client before and after. What the README's "the
/// kernel reads arguments only from anonymous memory" rests on; a build
/// that read a process's memory otherwise would wait here (and, past the
/// query socket's 5 s deadline, answer `unavailable`).
#[test]
fn a_command_line_mapped_from_a_file_that_stops_answering_stalls_no_answer() {
    let ns = Netns::new();
    // A server that keeps what it accepts open.
    let _server = ns.spawn(
        "/usr/bin/python3",
        &[
            "-c",
            &format!(
                "import socket\ns = socket.create_server(('127.0.0.1', {PROTECTED}))\nheld = []\n\
                 while True:\n    held.append(s.accept())\n"
            ),
        ],
    );
    ns.wait_listening(PROTECTED);
    let mut daemon = Daemon::start(&policy(&ns, "audit", ""));
    let dir = TempDir::new("stallfs-cmdline");
    let mnt = dir.path().join("mnt");
    let fs = StallFs::mount(
        &dir,
        &mnt,
        Stalled::Process(daemon.pid().expect("the daemon's pid")),
    );
    // A page of `tool` no one has read (1 MiB in), mapped and never
    // touched, made the process's command line (`PR_SET_MM_MAP`, which
    // needs no privilege), then a connect.
    let script = format!(
        r#"
import ctypes, mmap, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
page = mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=1 << 20)
addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
stat = open("/proc/self/stat").read()
fields = stat[stat.rindex(")") + 2:].split()
field = lambda n: int(fields[n - 3])
libc.sbrk.restype = ctypes.c_void_p
names = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv")
class MmMap(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in names] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]
mm = MmMap(field(26), field(27), field(45), field(46), field(47), libc.sbrk(0), field(28), addr, addr + 4096, field(50), field(51), 0, 0, 0xFFFFFFFF)
if libc.prctl(35, 14, ctypes.byref(mm), ctypes.sizeof(mm), 0):
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_MM, PR_SET_MM_MAP)")
s = socket.create_connection(("127.0.0.1", {PROTECTED}))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
"#
    );
    let stalled_client = |what: &str| {
        let mut cmd = ns.cmd("/usr/bin/python3");
        cmd.args(["-c", &script]).arg(mnt.join("tool"));
        Talker::spawn(&mut cmd, what)
    };
    let direct = |what: &str| {
        let mut cmd = ns.cmd("/usr/bin/python3");
        cmd.args([
            "-c",
            &format!(
                "import socket, sys; s = socket.create_connection(('127.0.0.1', {PROTECTED})); \
                 print(s.getsockname()[1], flush=True); sys.stdin.readline()"
            ),
        ]);
        Talker::spawn(&mut cmd, what)
    };
    let local = format!("127.0.0.1:{PROTECTED}");
    let run_dir = daemon.install().run_dir();
    let who = |port: &str| {
        let begun = std::time::Instant::now();
        let out = provenance::who(&ns, None, &run_dir, &format!("127.0.0.1:{port}"), &local);
        (out, begun.elapsed())
    };
    // The control: a direct client is answered.
    let mut plain = direct("a direct client");
    let port = plain.line();
    let (answer, _) = who(&port);
    assert_eq!(
        answer.expect("who about a direct client")["pid"],
        plain.pid(),
        "{port}"
    );
    let mut stalled = stalled_client("a client whose command line is on the stalled file");
    let stalled_port = stalled.line();
    let (answer, took) = who(&stalled_port);
    let origin = answer.expect("who about the client whose arguments are on the stalled file");
    assert_eq!(origin["pid"], stalled.pid(), "{origin}");
    assert!(origin["cmdline"].is_null(), "{origin}");
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    // Others are answered after it.
    let mut after = direct("a direct client after");
    let port = after.line();
    let (answer, _) = who(&port);
    assert_eq!(
        answer.expect("who after the stuck lookup")["pid"],
        after.pid()
    );
    drop((stalled, fs));
    assert!(daemon.stop(), "the daemon did not exit cleanly");
    drop((plain, after));
}

/// A process whose memory map lock is held (its tracer peeks at a page of
/// a file whose FUSE server never answers the tracer, and a `mmap()` of
/// the process waits behind it: every reader of its memory, `ps` reading
/// its command line among them, then waits) holds neither the daemon's
/// start nor its lines: the start reads its command line (an
/// interpreter's, for its script) and comes up ready, and its connect's
/// line comes without the command line, saying why, while a client's
/// after it comes with its own and the query socket answers. The hazard is
/// shown first: a `cat` of its `/proc/PID/cmdline` is still waiting when
/// killed. Fails against the build that read command lines on the
/// caller's thread: its start never became ready.
#[test]
fn a_process_whose_memory_cannot_be_read_holds_neither_the_start_nor_the_lines() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let dir = TempDir::new("locked-memory");
    let go = dir.path().join("go");
    let mut held = LockedMemory::start(&dir, ns.cmd("/usr/bin/python3"), PROTECTED, &go);
    let victim_pid = held.pid();

    let daemon = Daemon::start(&policy(
        &ns,
        "audit",
        &rule("python", "deny", "exe", "/usr/bin/python3"),
    ));
    std::fs::write(&go, "").expect("the go file");
    let ev = daemon.wait_event("the locked process's line", |e| e["pid"] == victim_pid);
    assert_eq!(ev["verdict"], "would-deny", "{ev}");
    assert!(ev["cmdline"].is_null(), "{ev}");
    assert_eq!(held.victim().line(), "connected");
    daemon.wait_stderr(
        &format!("reading the command line of /proc/{victim_pid}"),
        1,
    );
    // (It lives until its line is seen: a process gone lends no command
    // line.)
    let mut next = Talker::spawn(
        ns.cmd("/usr/bin/python3").args([
            "-c",
            &format!(
                "import socket, sys; socket.create_connection(('127.0.0.1', {PROTECTED})); \
                 print('connected', flush=True); sys.stdin.readline()"
            ),
        ]),
        "the next client",
    );
    assert_eq!(next.line(), "connected");
    let after = next.pid();
    let ev = daemon.wait_event("the next client's line", |e| e["pid"] == after);
    assert!(
        ev["cmdline"]
            .as_str()
            .is_some_and(|c| c.contains("create_connection")),
        "{ev}"
    );
    assert_answers(daemon.install(), "a process's memory map lock");
}

/// Directories searched for executables (on the daemon's `$PATH`) and
/// paths rules name, on a filesystem whose server never answers the
/// daemon, hold no start, whether named on the mount or reached through a
/// symbolic link (relative, from another filesystem), as a directory or as
/// a catalogued command's file in a directory searched; nor do rules'
/// files on one that answers lookups and never reads: a probe finds that
/// the mount does not answer within its budget, the daemon says so,
/// leaves the directories out of its searches and counts the rules' paths
/// as not there, and comes up enforcing: socat (catalogued) is refused and
/// curl passes, both having passed before the start, and the query socket
/// answers. The re-resolutions keep that policy, saying so once. Fails
/// against the build whose start searched the mount for every catalogued
/// name, against the one that found a path's mount by the path as
/// written, against one that followed the command's link unprobed, and
/// against one that read a rule's file on the start's thread: none became
/// ready. (A read that waits counts the filesystem as not answering until
/// it returns.)
#[test]
fn a_search_directory_on_a_filesystem_that_stops_answering_holds_no_start() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("stallfs-start");
    let mnt = dir.path().join("mnt");
    let fs = StallFs::mount(
        &dir,
        &mnt,
        Stalled::Exe(&loopwarden_tests::loopwarden_bin()),
    );
    let service = format!("TCP:127.0.0.1:{PROTECTED}");
    let url = format!("http://127.0.0.1:{PROTECTED}/");
    let (ok, stderr) = ns.socat_connect(&service);
    assert!(ok, "socat cannot connect even without loopwarden: {stderr}");
    assert_eq!(ns.curl(&url), Ok(200));

    // A link on the test's own filesystem, as `/usr/local/bin` may link
    // to an NFS directory.
    let via = dir.path().join("via");
    std::os::unix::fs::symlink("mnt", &via).expect("the link to the mount");
    // And a catalogued command's link into it, in a directory of its own.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    std::os::unix::fs::symlink("../mnt/tool", bin.join("ngrok")).expect("the command's link");
    let rules = [
        ("fuse-tool", mnt.join("tool")),
        ("linked-tool", via.join("tool")),
    ]
    .map(|(name, tool)| rule(name, "deny", "exe", tool.to_str().expect("utf-8")))
    .join("\n");
    // Two more answer the daemon's lookups but never its reads (FUSE
    // filesystems fetching contents on demand from somewhere gone): the
    // start reads the first line of each file a rule names, an `exe`'s
    // and a `script`'s (one mount each, since the first read that waits
    // puts its whole mount out of reach).
    let lazy: Vec<(std::path::PathBuf, StallFs)> = ["lazy-exe", "lazy-script"]
        .iter()
        .map(|name| {
            let mnt = dir.path().join(name);
            let fs = StallFs::mount_unanswering(
                &dir,
                &mnt,
                Stalled::Exe(&loopwarden_tests::loopwarden_bin()),
                Unanswered::Reads,
            );
            (mnt, fs)
        })
        .collect();
    // And one a user made, never asked: looking for it must not read the
    // others unasked.
    let users = dir.path().join("users");
    let users_fs = StallFs::mount_by(
        &dir,
        &users,
        Stalled::Exe(&loopwarden_tests::loopwarden_bin()),
        Unanswered::All,
        65534,
    );
    let tool = |at: usize| lazy[at].0.join("tool").to_str().expect("utf-8").to_owned();
    let rules = rules
        + &rule("lazy-tool", "deny", "exe", &tool(0))
        + &rule("lazy-script", "deny", "script", &tool(1));
    let config = policy(&ns, "enforce", &rules);
    let mut daemon = start_searching(&config, &[&users, &bin, &via, &mnt]);
    let stderr = daemon.stderr_text();
    for mount in [&mnt, &lazy[0].0, &lazy[1].0] {
        let said = format!("fuse mounted on {} does not answer", mount.display());
        assert!(stderr.contains(&said), "{stderr}");
    }

    let (ok, stderr) = ns.socat_connect(&service);
    assert!(!ok, "socat was not refused");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    daemon.wait_event("socat's refusal", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "socat"
    });
    assert_eq!(ns.curl(&url), Ok(200));
    assert_answers(daemon.install(), "a search directory");
    // The re-resolutions keep the policy in force (one that read nothing
    // on the mount would resolve less than it names) and say so once: no
    // policy is installed anew each second for it, and nothing more is
    // said of the mount.
    daemon.wait_stderr("read nothing on a filesystem that does not answer", 1);
    let said = |stderr: &str| stderr.matches("does not answer").count();
    let before = said(&daemon.stderr_text());
    std::thread::sleep(Duration::from_secs(3));
    let stderr = daemon.stderr_text();
    assert_eq!(said(&stderr), before, "{stderr}");
    // (`policy #N installed: ...`)
    assert!(!stderr.contains(" installed: "), "{stderr}");
    // The probe and the read that wait return once the servers go; the
    // daemon then exits cleanly.
    drop((fs, lazy, users_fs));
    assert!(daemon.stop(), "the daemon did not exit cleanly");
}

/// A directory on the daemon's `$PATH` on a FUSE mount a user made
/// (`user_id=65534`), whose server never answers the daemon, is left out of
/// the searches unasked (no copy there could count: nothing under a user's
/// mount is root's alone), and a rule's file on it is not read (said so):
/// the daemon never says the mount does not answer, and its re-resolutions
/// are installed: a rule's executable copied into
/// place after the start is refused (`socat` run from it), where the same
/// copy connected before the start. Fails against a build that probed the
/// mount: every re-resolution read nothing there and kept the policy of the
/// start, where the copy matched nothing.
#[test]
fn a_search_directory_on_a_users_mount_that_stops_answering_holds_no_refresh() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("stallfs-users");
    let mnt = dir.path().join("mnt");
    let _fs = StallFs::mount_by(
        &dir,
        &mnt,
        Stalled::Exe(&loopwarden_tests::loopwarden_bin()),
        Unanswered::All,
        65534,
    );
    let later = dir.path().join("later-socat");
    let connect = || {
        run(ns
            .cmd(later.to_str().expect("utf-8"))
            .args(["-T", "3", "-u", "OPEN:/dev/null"])
            .arg(format!("TCP:127.0.0.1:{PROTECTED}")))
    };
    std::fs::copy("/usr/bin/socat", &later).expect("a copy of socat");
    assert!(
        connect().status.success(),
        "the copy cannot connect even without loopwarden"
    );
    std::fs::remove_file(&later).expect("removing the copy");

    // A rule's file on the mount too: not read either.
    let on_mount = rule(
        "on-mount",
        "deny",
        "exe",
        mnt.join("tool").to_str().expect("utf-8"),
    );
    let config = policy(
        &ns,
        "enforce",
        &(on_mount + &rule("later", "deny", "exe", later.to_str().expect("utf-8"))),
    );
    let mut daemon = start_searching(&config, &[&mnt]);
    std::fs::copy("/usr/bin/socat", &later).expect("a copy of socat");
    // (`policy #N installed: ...`)
    daemon.wait_stderr(" installed: ", 1);
    let out = connect();
    assert!(!out.status.success(), "the copy was not refused");
    let stderr = daemon.stderr_text();
    assert!(!stderr.contains("does not answer"), "{stderr}");
    assert!(
        stderr.contains("is a FUSE mount a user made, which is not read"),
        "{stderr}"
    );
    assert!(daemon.stop(), "the daemon did not exit cleanly");
}

/// Starts a daemon on `config` whose `$PATH` searches `first` before the
/// test's own, and waits until it is ready.
fn start_searching(config: &str, first: &[&Path]) -> Daemon {
    let install = Install::new();
    let mut cmd = Daemon::command(&install, config, &[], "info");
    let ours = std::env::var_os("PATH").unwrap_or_default();
    let dirs = first
        .iter()
        .map(|dir| dir.to_path_buf())
        .chain(std::env::split_paths(&ours));
    cmd.env("PATH", std::env::join_paths(dirs).expect("a $PATH"));
    Daemon::start_cmd(&install, cmd)
}

/// Asserts that the daemon's query socket answers (within 10 s) while
/// `stalled` is stalled. Exit 1 (no protected connection open) is an
/// answer too; 2 (no daemon answers) and `timeout`'s 124 are not.
fn assert_answers(install: &Install, stalled: &str) {
    let conns = run(Command::new("timeout")
        .arg("10")
        .arg(loopwarden_tests::loopwarden_bin())
        .args(["conns", "--json", "--run-dir"])
        .arg(install.run_dir()));
    assert!(
        matches!(conns.status.code(), Some(0 | 1)),
        "the query socket did not answer while {stalled} was stalled: {conns:?}"
    );
}

/// A daemon whose stdout (`fd` 1) or stderr (2) goes through a FIFO in
/// `dir` that a `cat` copies on to the harness, and the `cat`'s pid:
/// stopping it stalls the daemon's reader of that stream.
fn through_a_fifo(install: &Arc<Install>, fd: u8, dir: &TempDir) -> (Daemon, i32) {
    let fifo = dir.path().join("fifo");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            r#"mkfifo "$0" && {{ cat "$0" >&{fd} & echo $! > "$0.pid"; exec "$@" {fd}> "$0"; }}"#
        ))
        .arg(&fifo)
        .arg(loopwarden_tests::loopwarden_bin())
        .args(install.run_args())
        .env("LOOPWARDEN_LOG", "info");
    let daemon = Daemon::start_cmd(install, cmd);
    let cat = std::fs::read_to_string(fifo.with_extension("pid"))
        .expect("the reader's pid")
        .trim()
        .parse()
        .expect("a pid");
    (daemon, cat)
}

/// A process stopped (SIGSTOP) until this is dropped, also when the test
/// fails.
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Self {
        // SAFETY: kill(2) on the test's own child process.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The reports the daemon's `audit lines lost` warnings say were not
/// written.
fn unwritten_reports(daemon: &Daemon) -> u64 {
    daemon.stderr_sum("audit lines lost", "unwritten_reports")
}

#[test]
fn a_new_flow_inside_a_flood_is_reported_at_once() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    // A long interval: a line held for the summary would show.
    let daemon = Daemon::start_with(
        &format!("log_allowed = true\n{}", policy(&ns, "audit", "")),
        &["--repeat-interval", "10s"],
    );
    let dir = TempDir::new("newflow");
    let script = dir.path().join("flood.py");
    std::fs::write(&script, flood_script(4.0, 0)).expect("script");
    let mut flood = ns.spawn("/usr/bin/python3", &[script.to_str().expect("utf-8")]);
    std::thread::sleep(Duration::from_millis(1000));
    flood.assert_running();
    // Another process, mid-flood.
    let sent = SystemTime::now();
    let out = run(ns.cmd("/usr/bin/python3").args([
        "-c",
        &format!(
            "import os, socket; s = socket.create_connection(('127.0.0.1', {PROTECTED})); print(os.getpid())"
        ),
    ]));
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    let (arrived, _) = wait_for("the new flow's line", Duration::from_secs(5), || {
        daemon
            .timed_events()
            .into_iter()
            .find(|(_, e)| e["pid"] == pid)
    });
    let delay = arrived.duration_since(sent).unwrap_or_default();
    // Held for the summary, it would come 10 s after; half of that is
    // room enough for a busy host's scheduling.
    assert!(
        delay < Duration::from_secs(5),
        "the new flow's line took {delay:?} (the interval is 10 s)"
    );
    drop(flood);
}

#[test]
fn a_refusal_line_is_never_later_than_the_interval() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let interval = Duration::from_secs(2);
    let daemon = Daemon::start_with(
        &policy(
            &ns,
            "enforce",
            &rule("py", "deny", "exe", "/usr/bin/python3"),
        ),
        &["--repeat-interval", "2s"],
    );
    // Paced: unpaced, python offers some 28,000 refusals a second, which
    // the rings (about 990 records in `LW_DENIALS`, then room in
    // `LW_EVENTS`) carry over only ~175 ms of the daemon off the CPU, and a
    // busy host can take that from it. What this test is about is when the
    // lines come, not the rings' size (`audit_and_lifecycle` fills them).
    let (pid, ok, refused) = flood(&ns, 3.0, 5000);
    assert_eq!(ok, 0);
    assert!(refused > 3000, "only {refused} refusals");
    let refusals = || -> Vec<_> {
        daemon
            .timed_events()
            .into_iter()
            .filter(|(_, e)| e["pid"] == pid && e["verdict"] == "deny")
            .collect()
    };
    let records = wait_for_explained(
        "every refusal reported",
        Duration::from_secs(10),
        || {
            let records = refusals();
            (records.iter().map(|(_, e)| connects(e)).sum::<u64>() >= refused).then_some(records)
        },
        || {
            let reported: u64 = refusals().iter().map(|(_, e)| connects(e)).sum();
            format!(
                ": {reported} of {refused} reported; the daemon's stderr:\n{}",
                daemon.stderr_text()
            )
        },
    );
    assert_eq!(
        records.iter().map(|(_, e)| connects(e)).sum::<u64>(),
        refused
    );
    // A line's oldest refusal (a summary's first, else the line's own) is
    // on stdout within the interval, plus scheduling slack (half of it: a
    // line held over to the next interval would come a whole one late).
    let slack = interval / 2;
    for (arrived, e) in &records {
        let oldest = e["repeat"]["first"]
            .as_str()
            .or(e["time"].as_str())
            .expect("a time");
        let oldest = humantime::parse_rfc3339(oldest).expect("RFC 3339");
        let delay = arrived.duration_since(oldest).unwrap_or_default();
        assert!(
            delay <= interval + slack,
            "a refusal reported {delay:?} after it happened: {e}"
        );
    }
}

#[test]
fn human_summaries_carry_the_count() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let daemon = Daemon::start_with(
        &format!("log_allowed = true\n{}", policy(&ns, "audit", "")),
        &["--repeat-interval", "1s", "--log-format", "human"],
    );
    let (pid, ok, _) = flood(&ns, 1.5, 0);
    let pid_field = format!(" pid={pid} ");
    let total = wait_for("human lines adding up", Duration::from_secs(10), || {
        let total: u64 = daemon
            .stdout_lines()
            .iter()
            .filter(|l| l.contains(&pid_field))
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("repeated="))
                    .map_or(1, |n| n.parse().expect("a count"))
            })
            .sum();
        (total >= ok).then_some(total)
    });
    assert_eq!(total, ok);
}
