//! Audit records and lines from made-up kernel events and cuts.

use std::{fs, path::PathBuf, time::Instant};

use loopwarden_common::{Addr, Evidence, NO_RULE, evidence};

use super::{
    proc::{CMDLINE_MAX, clock_ticks, proc_cmdline, same_process, started_by, starttime_ticks},
    users::{Names, SharedUserNames},
    users::{
        USER_CACHE_MAX, USER_LOOKUP_TIME_PER_SECOND, USER_LOOKUPS_PER_SECOND, USER_MISSING_TTL,
        USER_NAME_TTL, UserNames,
    },
    *,
};
use crate::{
    cut::{Cut, Relayed, procs::Owner},
    kernel::sock_diag::{SockId, TcpSocket},
    policy::{Action, ProcessIdentity, RuleInfo},
};

fn event() -> ConnectEvent {
    let mut comm = [0u8; 16];
    comm[..5].copy_from_slice(b"socat");
    let mut exe_name = [0u8; 32];
    exe_name[..5].copy_from_slice(b"socat");
    ConnectEvent {
        ktime_ns: 1,
        policy_seq: 2,
        socket_cookie: 7,
        netns_cookie: 9,
        start_boottime_ns: 0,
        cgroup_id: 11,
        exe: ExeKey::from_major_minor(254, 1, 4242),
        daddr: Addr::from_ip("127.0.0.2".parse().unwrap()),
        tgid: u32::MAX - 1,
        pid: u32::MAX - 1,
        ppid: 0,
        uid: 0,
        gid: 0,
        dport: 8080,
        family: 2,
        verdict: verdict::DENY,
        rule: 0,
        forked: 0,
        _pad0: 0,
        _pad1: 0,
        comm,
        exe_name,
        via: Default::default(),
        script: [0; loopwarden_common::SCRIPT_LEN],
    }
}

fn enricher() -> Enricher {
    let mut enricher = Enricher::new(PathBuf::from("/nonexistent"));
    enricher.set_rules(
        2,
        vec![RuleInfo {
            name: "catalog:socat".into(),
            action: Action::Deny,
            matches: "exe_name in [socat]".into(),
            browser: false,
        }],
    );
    enricher
}

/// Installs with the same rules (re-resolutions) share a list: a report of
/// a policy hundreds of installs old still names its rule, where the build
/// before kept the lists of 64 installs and said `rule=#0`. Positive
/// control: as many installs of different rules do let it go.
#[test]
fn a_rule_is_named_after_many_installs_of_the_same_rules() {
    let mut enricher = enricher();
    // The list `enricher()` installed as policy 2.
    let same = vec![RuleInfo {
        name: "catalog:socat".into(),
        action: Action::Deny,
        matches: "exe_name in [socat]".into(),
        browser: false,
    }];
    for seq in 3..300 {
        enricher.set_rules(seq, same.clone());
    }
    let ev = event();
    let line = enricher.enrich(&ev).format(LogFormat::Human);
    assert!(line.contains(" rule=catalog:socat "), "{line}");
    for seq in 300..400 {
        let other = RuleInfo {
            matches: format!("exe_name in [socat{seq}]"),
            ..same[0].clone()
        };
        enricher.set_rules(seq, vec![other]);
    }
    let line = enricher.enrich(&ev).format(LogFormat::Human);
    assert!(line.contains(" rule=#0 "), "{line}");
}

#[test]
fn a_rule_of_an_unknown_policy_is_named_by_its_index() {
    let mut ev = event();
    ev.policy_seq = 99;
    let line = enricher().enrich(&ev).format(LogFormat::Human);
    assert!(line.contains(" rule=#0 "), "{line}");
}

#[test]
fn the_guards_reserved_rules_are_named_whatever_the_policy() {
    let mut ev = event();
    ev.rule = loopwarden_common::BIND_RULE;
    ev.daddr = Addr::from_ip("::".parse().unwrap());
    ev.family = 10;
    ev.dport = 11434;
    let line = enricher().enrich(&ev).format(LogFormat::Human);
    assert!(line.contains("rule=bind-guard dst=[::]:11434"), "{line}");
    ev.rule = loopwarden_common::RELAY_RULE;
    let line = enricher().enrich(&ev).format(LogFormat::Human);
    assert!(line.contains("rule=relay "), "{line}");
}

#[test]
fn egress_rules_are_named_after_the_policys_egress_tables() {
    let mut e = enricher();
    e.set_rules(
        3,
        vec![
            RuleInfo {
                name: "mine".into(),
                action: Action::Deny,
                matches: "uid 0".into(),
                browser: false,
            },
            RuleInfo {
                name: "egress:agent-fetch".into(),
                action: Action::Deny,
                matches: "uid 1000".into(),
                browser: false,
            },
            RuleInfo {
                name: "egress:other".into(),
                action: Action::Audit,
                matches: "uid 1001".into(),
                browser: false,
            },
        ],
    );
    let mut ev = event();
    ev.policy_seq = 3;
    ev.rule = loopwarden_common::EGRESS_RULE_BASE + 1;
    let line = e.enrich(&ev).format(LogFormat::Human);
    assert!(line.contains(" rule=egress:other "), "{line}");
    ev.rule = loopwarden_common::EGRESS_RULE_BASE;
    let line = e.enrich(&ev).format(LogFormat::Human);
    assert!(line.contains(" rule=egress:agent-fetch "), "{line}");
    ev.rule = 0;
    let line = e.enrich(&ev).format(LogFormat::Human);
    assert!(line.contains(" rule=mine "), "{line}");
    // A policy this daemon did not install: named by egress index.
    ev.policy_seq = 99;
    ev.rule = loopwarden_common::EGRESS_RULE_BASE + 2;
    let line = e.enrich(&ev).format(LogFormat::Human);
    assert!(line.contains(" rule=egress:#2 "), "{line}");
}

#[test]
fn human_line_names_verdict_rule_destination_and_identity() {
    let line = enricher().enrich(&event()).format(LogFormat::Human);
    assert!(
        line.contains(" DENY rule=catalog:socat dst=127.0.0.2:8080 "),
        "{line}"
    );
    assert!(line.contains("comm=socat"), "{line}");
    assert!(line.contains("exe_id=254:1:4242"), "{line}");
    // No such process: the path is unknown, not guessed.
    assert!(line.contains("exe=?"), "{line}");
}

#[test]
fn json_line_parses_back() {
    let mut ev = event();
    ev.family = 10;
    ev.daddr = Addr {
        words: Addr::from_ip("::ffff:127.0.0.1".parse().unwrap()).words,
    };
    ev.verdict = verdict::WOULD_DENY;
    ev.rule = NO_RULE;
    let line = enricher().enrich(&ev).format(LogFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["verdict"], "would-deny");
    assert_eq!(v["dst"], "[::ffff:127.0.0.1]:8080");
    assert_eq!(v["rule"], serde_json::Value::Null);
    assert_eq!(v["exe_name"], "socat");
}

/// The fields of a JSON audit line (version and host first): what the
/// README's table documents (format version 1).
#[test]
fn json_lines_carry_the_version_and_host_and_the_documented_fields() {
    let line = enricher().enrich(&event()).format(LogFormat::Json);
    assert!(line.starts_with("{\"v\":1,\"host\":"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["host"], &*super::output::host());
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut documented = [
        "v",
        "host",
        "time",
        "verdict",
        "rule",
        "dst",
        "dst_port",
        "pid",
        "tid",
        "ppid",
        "uid",
        "user",
        "gid",
        "comm",
        "exe",
        "exe_name",
        "exe_id",
        "parent_exe",
        "parent_exe_id",
        "cmdline",
        "cgroup",
        "cgroup_id",
        "netns_cookie",
        "socket_cookie",
    ];
    documented.sort_unstable();
    assert_eq!(keys, documented);
}

fn cut() -> Cut {
    Cut {
        rule: 0,
        rule_name: "catalog:socat".into(),
        socket: TcpSocket {
            family: 2,
            state: 1,
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: "127.0.0.2:8080".parse().unwrap(),
            cookie: 4711,
            inode: 99,
            uid: 0,
            id: SockId::zero(),
        },
        netns_cookie: 9,
        owner: Owner {
            pid: 321,
            ppid: 320,
            gid: 0,
            comm: "socat".into(),
            exe: Some("/usr/bin/socat".into()),
            parent_exe: Some("/usr/bin/socat".into()),
            cmdline: Some("socat TCP-LISTEN:9001,fork TCP:127.0.0.2:8080".into()),
            cgroup: Some("/".into()),
            identity: ProcessIdentity {
                exe: ExeKey::from_major_minor(254, 1, 4242),
                exe_name: b"socat".to_vec(),
                comms: vec![b"socat".to_vec()],
                uid: 0,
                cgroups: vec![1],
                ancestors: vec![ExeKey::from_major_minor(254, 1, 4242)],
                tracked: None,
            },
        },
        relayed: None,
        at: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
    }
}

#[test]
fn cut_records_name_the_socket() {
    let (mut cutter, cut) = (enricher(), cut());
    let record = cutter.cut(&cut);
    let line = record.format(LogFormat::Human);
    assert!(
        line.contains(
            " CUT rule=catalog:socat dst=127.0.0.2:8080 src=127.0.0.1:40000 pid=321 ppid=320 "
        ),
        "{line}"
    );
    assert!(line.contains("exe=/usr/bin/socat"), "{line}");
    assert!(line.contains("exe_id=254:1:4242"), "{line}");
    assert!(line.contains("cmdline=\"socat TCP-LISTEN"), "{line}");
    assert!(line.ends_with(" socket_cookie=4711"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&record.format(LogFormat::Json)).unwrap();
    assert_eq!(v["verdict"], "cut");
    // When it was cut, not when its line was written.
    assert!(
        v["time"]
            .as_str()
            .is_some_and(|t| t.starts_with("2027-01-15T08:00:00")),
        "{v}"
    );
    assert_eq!(v["src"], "127.0.0.1:40000");
    assert_eq!(v["dst_port"], 8080);
    assert_eq!(v["socket_cookie"], 4711);
    assert_eq!(v["parent_exe_id"], "254:1:4242");
    assert_eq!(v["cgroup_id"], 1);
    assert!(v.get("script").is_none(), "{v}");
    // An interpreter's: the script the kernel read at its exec, as the
    // connect's own line names it.
    let mut python = self::cut();
    let mut tracked = loopwarden_common::ProcState::EMPTY;
    tracked.script[..8].copy_from_slice(b"relay.py");
    python.owner.identity.tracked = Some(tracked);
    let line = cutter.cut(&python).format(LogFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["script"], "relay.py", "{line}");
    // Kernel records have no source: the field is left out, not null.
    let kernel = enricher().enrich(&event()).format(LogFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&kernel).unwrap();
    assert!(v.get("src").is_none(), "{kernel}");
    assert!(
        !enricher()
            .enrich(&event())
            .format(LogFormat::Human)
            .contains("socket_cookie")
    );
}

/// A cut whose connection's origin recorded relay evidence names the
/// remote party as the connect's line did, timed before the connect; one
/// without has no `via`.
/// A process's hostile names (a 4 KiB path of DELs, a 4 KiB command line
/// of U+0001, each escaping to six characters a byte) keep its lines under
/// 16 KiB, where container runtimes split lines, and its JSON whole.
#[test]
fn a_process_cannot_make_its_lines_long_enough_to_be_split() {
    let mut cut = cut();
    let path = format!("/tmp/{}", "\u{7f}".repeat(4090));
    cut.owner.exe = Some(path.clone());
    cut.owner.parent_exe = Some(path.clone());
    cut.owner.cgroup = Some(path);
    cut.owner.cmdline = Some("\u{1}".repeat(4096));
    let mut cutter = enricher();
    let record = cutter.cut(&cut);
    for format in [LogFormat::Human, LogFormat::Json] {
        let line = record.format(format);
        assert!(line.len() < 16 * 1024, "{format:?}: {} bytes", line.len());
        assert!(!line.contains('\n'), "{format:?}");
    }
    let v: serde_json::Value = serde_json::from_str(&record.format(LogFormat::Json)).unwrap();
    let exe = v["exe"].as_str().expect("exe");
    assert!(
        exe.starts_with("/tmp/\u{7f}") && exe.ends_with(" …"),
        "{exe}"
    );
    assert!(v["cmdline"].as_str().is_some_and(|c| c.ends_with(" …")));
    assert_eq!(v["pid"], 321, "the line still names the process");
}

/// U+0085, U+2028 and U+2029, which JSON leaves raw and some readers
/// break lines at, are escaped in a JSON line; other text is not touched.
#[test]
fn json_lines_escape_the_unicode_line_breaks() {
    let mut cut = cut();
    cut.owner.cmdline = Some("a\u{85}b\u{2028}c\u{2029}d é…".into());
    let line = enricher().cut(&cut).format(LogFormat::Json);
    assert_eq!(line.lines().count(), 1);
    assert!(!line.contains(['\u{85}', '\u{2028}', '\u{2029}']), "{line}");
    assert!(line.contains(r"a\u0085b\u2028c\u2029d é…"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["cmdline"], "a\u{85}b\u{2028}c\u{2029}d é…");
    // Python's splitlines() sees one line.
    let python = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; print(len(sys.stdin.read().splitlines()))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(line.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), "1");
}

/// DEL, the C1 controls (U+009B, a terminal's CSI), bidirectional
/// overrides and the invisible characters past the BMP, which JSON leaves
/// raw and a human line escapes, are escaped in a JSON line too: the line
/// is printable ASCII and reads back the same.
#[test]
fn json_lines_escape_what_a_terminal_would_act_on() {
    let mut cut = cut();
    let hostile = "x\u{7f}\u{9b}31m\u{202e}gpj.exe\u{e0001}é";
    cut.owner.cmdline = Some(hostile.into());
    let line = enricher().cut(&cut).format(LogFormat::Json);
    assert!(
        line.trim_end()
            .chars()
            .all(|c| c == 'é' || (' '..='~').contains(&c)),
        "{line}"
    );
    assert!(
        line.contains(r"x\u007f\u009b31m\u202egpj.exe\udb40\udc01é"),
        "{line}"
    );
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["cmdline"], hostile);
}

#[test]
fn cut_records_name_the_remote_party_the_origin_recorded() {
    let mut cut = cut();
    let mut via = Evidence::NONE;
    via.addr = Addr::from_ip("10.77.0.2".parse().unwrap());
    via.port = 9021;
    via.kind = evidence::RECEIVED;
    via.ktime_ns = 5_000_000_000;
    cut.relayed = Some(Relayed {
        via,
        connect_ns: 5_007_000_000,
    });
    let line = enricher().cut(&cut).format(LogFormat::Human);
    assert!(
        line.contains(" via=10.77.0.2:9021(received 7ms before) "),
        "{line}"
    );
    let json = enricher().cut(&cut).format(LogFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["via"], "10.77.0.2:9021", "{json}");
    assert_eq!(v["via_how"], "received", "{json}");
    assert_eq!(v["via_ago_ms"], 7, "{json}");
    let plain = enricher().cut(&self::cut()).format(LogFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert!(v.get("via").is_none(), "{plain}");
}

#[test]
fn user_names_come_from_nss() {
    let mut users = UserNames::default();
    let now = Instant::now();
    assert_eq!(users.name(0, now), Some("root"));
    let nobody = crate::resolve::uid_by_name("nobody")
        .unwrap()
        .expect("a user named nobody");
    assert_eq!(users.name(nobody, now), Some("nobody"));
    assert_eq!(users.name(u32::MAX - 1, now), None);
}

/// A lookup that knows uid 1000 only once the test "creates" it.
fn late_user(uid: u32) -> std::io::Result<Option<String>> {
    use std::sync::atomic::Ordering;
    Ok((uid == 1000 && LATE_USER_EXISTS.load(Ordering::SeqCst)).then(|| "late".to_owned()))
}

static LATE_USER_EXISTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[test]
fn a_missing_user_is_asked_for_again_and_names_expire() {
    use std::sync::atomic::Ordering;
    let mut users = UserNames::with_lookup(late_user);
    let t0 = Instant::now();
    assert_eq!(users.name(1000, t0), None);
    LATE_USER_EXISTS.store(true, Ordering::SeqCst);
    // Still cached as missing for a moment...
    assert_eq!(users.name(1000, t0 + Duration::from_secs(1)), None);
    // ...then asked again.
    let t1 = t0 + USER_MISSING_TTL;
    assert_eq!(users.name(1000, t1), Some("late"));
    LATE_USER_EXISTS.store(false, Ordering::SeqCst);
    assert_eq!(users.name(1000, t1 + Duration::from_secs(1)), Some("late"));
    // A name is kept a minute, then asked about again (a dynamic uid
    // may have gone).
    assert_eq!(users.name(1000, t1 + USER_NAME_TTL), None);
}

#[test]
fn the_user_cache_stays_bounded() {
    let mut users = UserNames::with_lookup(|_| Ok(None));
    let t0 = Instant::now();
    for uid in 0..USER_CACHE_MAX as u32 {
        users.cache.insert(uid, (None, t0 + USER_MISSING_TTL));
    }
    // Nothing expired yet: the cache starts over.
    users.name(u32::MAX, t0);
    assert_eq!(users.cache.len(), 1);
}

/// However many uids turn up at once, NSS is asked about at most
/// [`USER_LOOKUPS_PER_SECOND`] of them a second; the rest are asked about
/// in the seconds after, and a name found before still shows meanwhile.
#[test]
fn nss_is_asked_a_bounded_number_of_times_a_second() {
    use std::sync::atomic::{AtomicU32, Ordering};
    static ASKED: AtomicU32 = AtomicU32::new(0);
    let mut users = UserNames::with_lookup(|uid| {
        ASKED.fetch_add(1, Ordering::SeqCst);
        Ok(Some(format!("u{uid}")))
    });
    let t0 = Instant::now();
    for uid in 0..1000 {
        users.name(uid, t0);
    }
    assert_eq!(ASKED.load(Ordering::SeqCst), USER_LOOKUPS_PER_SECOND);
    assert_eq!(users.name(0, t0), Some("u0"));
    assert_eq!(users.name(999, t0), None);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(users.name(999, t1), Some("u999"));
    assert_eq!(ASKED.load(Ordering::SeqCst), USER_LOOKUPS_PER_SECOND + 1);
}

/// A slow directory service is asked less often: lookups stop once 50 ms
/// went by in the second (two of 40 ms each), and after one of 120 ms the
/// next is asked no sooner than ten times that after it began. (A clock
/// of the test's own, which each lookup moves on.)
#[test]
fn a_slow_nss_is_waited_for_a_tenth_of_the_time_at_most() {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    };
    static ASKED: AtomicU32 = AtomicU32::new(0);
    static TAKES_MS: AtomicU64 = AtomicU64::new(40);
    static PASSED_MS: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<Instant> = OnceLock::new();
    fn clock() -> Instant {
        *START.get_or_init(Instant::now) + Duration::from_millis(PASSED_MS.load(Ordering::SeqCst))
    }
    let mut users = UserNames::with_lookup(|uid| {
        ASKED.fetch_add(1, Ordering::SeqCst);
        PASSED_MS.fetch_add(TAKES_MS.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(Some(format!("u{uid}")))
    });
    users.clock = clock;
    let t0 = clock();
    for uid in 0..100 {
        users.name(uid, t0);
    }
    // 40, then 80 ms: past the 50 ms, the third is not asked.
    assert!(USER_LOOKUP_TIME_PER_SECOND < Duration::from_millis(80));
    assert_eq!(ASKED.load(Ordering::SeqCst), 2);
    // The next second, one that takes 120 ms: the window after it opens
    // 1.2 s after this one began, not 1 s.
    TAKES_MS.store(120, Ordering::SeqCst);
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(users.name(100, t1), Some("u100"));
    assert_eq!(ASKED.load(Ordering::SeqCst), 3);
    users.name(101, t1 + Duration::from_millis(1199));
    assert_eq!(ASKED.load(Ordering::SeqCst), 3);
    users.name(101, t1 + Duration::from_millis(1200));
    assert_eq!(ASKED.load(Ordering::SeqCst), 4);
}

/// A lookup that never returns in time (a directory service that does
/// not answer) holds a line for `ANSWER_WAIT` once: the lines after it
/// ask nothing while it runs, and its answer is cached when it comes.
#[test]
fn a_lookup_that_hangs_holds_the_event_loop_briefly_once() {
    fn slow(uid: u32) -> std::io::Result<Option<String>> {
        if uid == 7 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        Ok(Some(format!("u{uid}")))
    }
    let mut users = UserNames::with_lookup(slow);
    let t0 = Instant::now();
    assert_eq!(users.name(7, t0), None);
    assert_eq!(users.name(8, t0), None, "asked while the first runs");
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "waited {:?} for the lookup",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1600));
    let now = Instant::now();
    assert_eq!(users.name(7, now), Some("u7"), "the late answer");
    assert_eq!(users.name(8, now), Some("u8"));
}

#[test]
fn starttime_is_field_22_even_with_odd_comms() {
    let stat =
        "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
    assert_eq!(starttime_ticks(stat), Some(987654));
    assert_eq!(starttime_ticks("garbage"), None);
}

/// A process whose comm is not UTF-8 (in `/proc/PID/stat` unescaped) is
/// still recognised by its start time: read as text whole, its `stat`
/// failed, and its audit lines lost exe, command line and cgroup.
#[test]
fn a_process_named_in_bytes_that_are_not_utf8_is_recognised() {
    let mut child = crate::testing::child_named_in_bytes();
    let stat = fs::read(format!("/proc/{}/stat", child.id())).unwrap();
    let ticks = starttime_ticks(&String::from_utf8_lossy(&stat));
    let recognised =
        ticks.is_some_and(|t| same_process(child.id(), t * (1_000_000_000 / clock_ticks())));
    let _ = child.kill();
    let _ = child.wait();
    assert!(String::from_utf8(stat).is_err(), "the comm was not set");
    assert!(recognised);
}

#[test]
fn this_process_is_recognised_by_its_start_time() {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let ticks = starttime_ticks(&stat).unwrap();
    let ns = ticks * (1_000_000_000 / clock_ticks());
    assert!(same_process(std::process::id(), ns));
    assert!(!same_process(std::process::id(), ns + 10_000_000_000));
    // This process's parent started no later than it did; a process that
    // started after it (as one taking its parent's pid would) did not.
    assert!(started_by(std::os::unix::process::parent_id(), ns));
    assert!(started_by(std::process::id(), ns));
    assert!(!started_by(std::process::id(), ns - 10_000_000_000));
}

/// A process's 100 KiB of arguments are cut to their first 4 KiB, marked.
#[test]
fn a_long_command_line_is_cut_and_marked() {
    let long = "x".repeat(100 << 10);
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 5"])
        .arg(&long)
        .spawn()
        .unwrap();
    // Once the child has executed `sh` (until then /proc shows the test's
    // own command line, or none).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        match proc_cmdline(child.id()) {
            Ok(Some(text)) if text.starts_with("sh ") => break Some(text),
            _ if std::time::Instant::now() > deadline => break None,
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let text = text.expect("the child's command line");
    assert!(text.starts_with("sh -c sleep 5 xxx"), "{}", &text[..40]);
    assert!(text.ends_with("x …"), "{}", &text[text.len() - 10..]);
    assert_eq!(text.len(), CMDLINE_MAX + " …".len());
    // A short one is whole.
    let text = proc_cmdline(std::process::id()).unwrap().unwrap();
    assert!(!text.ends_with(" …"), "{text}");
}

#[test]
fn short_records_are_rejected() {
    assert!(parse_event(&[0u8; 10]).is_none());
}

#[test]
fn a_browser_rule_says_which_treatment_of_the_port_decided() {
    let mut enricher = enricher();
    enricher.set_rules(
        3,
        vec![RuleInfo {
            name: "catalog:chromium".into(),
            action: Action::Audit,
            matches: "exe_name chromium".into(),
            browser: true,
        }],
    );
    let mut ev = event();
    ev.policy_seq = 3;
    ev.dport = 11434;
    let record = enricher.enrich(&ev);
    assert_eq!(record.browser, Some("deny"));
    let line = record.format(LogFormat::Human);
    assert!(
        line.contains(" DENY rule=catalog:chromium dst=127.0.0.2:11434 browser=deny "),
        "{line}"
    );
    let json = enricher.enrich(&ev).format(LogFormat::Json);
    assert!(
        json.contains(r#""rule":"catalog:chromium","browser":"deny""#),
        "{json}"
    );
    for (verdict, treatment) in [
        (verdict::WOULD_DENY, "deny"),
        (verdict::AUDIT, "audit"),
        (verdict::ALLOW, "allow"),
    ] {
        ev.verdict = verdict;
        assert_eq!(enricher.enrich(&ev).browser, Some(treatment));
    }
    // Other rules' records carry no browser field.
    let line = enricher.enrich(&event()).format(LogFormat::Json);
    assert!(!line.contains("browser"), "{line}");
}

/// A value that would break a human line, or change how it displays, is
/// quoted and escaped; a plain one is not.
#[test]
fn human_values_are_quoted_when_they_could_mislead() {
    use super::Quoted;
    assert_eq!(Quoted("socat").to_string(), "socat");
    assert_eq!(Quoted("domain user").to_string(), "\"domain user\"");
    for sneaky in ["a\u{202e}b", "a\u{200b}b", "a\u{2066}b", "a\nverdict=allow"] {
        let shown = Quoted(sneaky).to_string();
        assert!(shown.starts_with('"'), "{shown}");
        assert!(
            !shown.contains(['\u{202e}', '\u{200b}', '\u{2066}', '\n']),
            "{shown:?}"
        );
    }
}

/// A verdict or evidence kind this build does not know (a program of
/// another version wrote it) is named `unknown`: never `allow`, never no
/// evidence, which together read as a direct client.
#[test]
fn values_of_another_version_are_unknown_never_direct() {
    use loopwarden_common::{evidence, verdict};
    assert_eq!(super::verdict_name(verdict::ALLOW), "allow");
    assert_eq!(super::verdict_name(verdict::DENY), "deny");
    assert_eq!(super::verdict_name(verdict::COUNT as u8), "unknown");
    assert_eq!(super::evidence_name(evidence::NONE), None);
    assert_eq!(super::evidence_name(evidence::STDIO), Some("stdio"));
    assert_eq!(super::evidence_name(evidence::UNTRACKED), Some("untracked"));
    assert_eq!(super::evidence_name(200), Some("unknown"));
}

/// Requests of the query socket, each with an enricher of its own, share
/// their user names: with NSS hung, the first request's lookup is the only
/// one (not one blocked thread per request), and once it returns, the
/// requests after it have the name. Against enrichers with caches of
/// their own, each of the 20 asked.
#[test]
fn short_lived_enrichers_share_one_lookup() {
    use std::sync::atomic::{AtomicU32, Ordering};
    static ASKED: AtomicU32 = AtomicU32::new(0);
    let shared = SharedUserNames::with_lookup(|_| {
        ASKED.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        Ok(Some("slow".to_owned()))
    });
    let request = || Names::Shared {
        names: shared.clone(),
        last: None,
    };
    for _ in 0..20 {
        let mut names = request();
        names.refresh(4242, Instant::now());
        assert_eq!(names.cached(4242), None);
    }
    assert_eq!(ASKED.load(Ordering::SeqCst), 1);
    std::thread::sleep(Duration::from_millis(400));
    let mut names = request();
    names.refresh(4242, Instant::now());
    assert_eq!(names.cached(4242), Some("slow"));
    assert_eq!(names.cached(4243), None, "another uid's name");
    assert_eq!(ASKED.load(Ordering::SeqCst), 1);
}
