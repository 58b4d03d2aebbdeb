//! Enforcement that never lapses: it outlives the daemon (SIGKILL, restart,
//! replacement of the programs), a start that cannot resolve a name still
//! enforces the rest, a bad file keeps the pinned policy, and a policy
//! switched every millisecond never judges a connect by half a policy.

use std::{
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use loopwarden_tests::{
    Daemon, Install, LOCAL_ADDR, Netns, NetnsAlias, PROTECTED, Policy, Proc, TempDir, Topology,
    exe_id, hex_bytes, loopwarden_bin, map_dump, map_update, policy, prog_ids, rule, run,
    run_failing_start, run_ok,
};

/// A python client that connects to the protected port in a loop until
/// `stop` exists, then writes `ok refused` counts to `out`. A connect that
/// times out (a SYN the server's backlog dropped) or is aborted (cut by a
/// newly installed policy that refuses it) passed the hook: it counts as
/// ok. Any other error stops it and is written to `counts.err`, which
/// [`flood_counts`] reports.
fn flood(ns: &Netns, dir: &TempDir, pause: f64) -> (Proc, std::path::PathBuf, std::path::PathBuf) {
    let out = dir.path().join("counts");
    let stop = dir.path().join("stop");
    let script = format!(
        r#"
import os, socket, time, traceback
ok = refused = 0
try:
    while not os.path.exists({stop:?}):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", {PROTECTED}))
            ok += 1
        except ConnectionRefusedError:
            refused += 1
        except socket.timeout:
            ok += 1
        except ConnectionAbortedError:
            # Let in, then cut by a policy that refuses it (see cut).
            ok += 1
        s.close()
        if {pause} > 0:
            time.sleep({pause})
except BaseException:
    open({out:?} + ".err", "w").write(f"after {{ok}} ok, {{refused}} refused:\n" + traceback.format_exc())
    raise
open({out:?} + ".tmp", "w").write(f"{{ok}} {{refused}}")
os.rename({out:?} + ".tmp", {out:?})
"#,
        stop = stop.display().to_string(),
        out = out.display().to_string(),
    );
    let proc = ns.spawn("/usr/bin/python3", &["-c", &script]);
    (proc, out, stop)
}

/// Stops a [`flood`] and returns `(ok, refused)`.
fn flood_counts(out: &std::path::Path, stop: &std::path::Path) -> (u64, u64) {
    std::fs::write(stop, "").expect("stop file");
    let failed = out.with_extension("err");
    let text = loopwarden_tests::wait_for("the flood's counts", Duration::from_secs(20), || {
        if let Ok(error) = std::fs::read_to_string(&failed) {
            panic!("the flood stopped early, {error}");
        }
        std::fs::read_to_string(out).ok()
    });
    let mut it = text.split_whitespace().map(|n| n.parse().expect("a count"));
    (it.next().expect("ok"), it.next().expect("refused"))
}

fn python_deny() -> String {
    rule("py", "deny", "exe", "/usr/bin/python3")
}

#[test]
fn no_relay_connect_gets_through_a_sigkill_a_restart_or_a_program_replacement() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let dir = TempDir::new("flood");
    let config = policy(&ns, "enforce", &python_deny());

    // Positive control: the same flood reaches the service without loopwarden.
    let (_control, out, stop) = flood(&ns, &dir, 0.001);
    thread::sleep(Duration::from_millis(500));
    let (ok, refused) = flood_counts(&out, &stop);
    assert!(
        ok > 50 && refused == 0,
        "control: {ok} ok, {refused} refused"
    );
    std::fs::remove_file(&out).expect("reset");
    std::fs::remove_file(&stop).expect("reset");

    let install = Install::new();
    let mut first = Daemon::start_in(&install, &config, &[]);
    first.allow_error("events lost");
    let programs_before = install.linked_prog_ids();
    let (_flood, out, stop) = flood(&ns, &dir, 0.0);
    // The flood is running (refused) before the first kill.
    first.wait_event("the flood's first refusal", |e| {
        e["verdict"] == "deny" && e["rule"] == "py"
    });
    // An OOM kill: no handler runs.
    first.kill9();
    thread::sleep(Duration::from_millis(500));
    let mut second = Daemon::start_in(&install, &config, &[]);
    // The flood filled the pinned ring buffer while no daemon read it.
    second.allow_error("events lost");
    second.wait_stderr("adopted the pinned maps", 1);
    thread::sleep(Duration::from_millis(300));
    second.kill9();
    thread::sleep(Duration::from_millis(300));
    // A daemon whose programs and maps replace the pinned ones (what an
    // upgrade to a new layout does), through the same links.
    let third = Daemon::start_in(&install, &config, &["--replace"]);
    third.allow_error("events lost");
    third.wait_stderr("replaced the pinned programs in place", 1);
    thread::sleep(Duration::from_millis(300));
    let (ok, refused) = flood_counts(&out, &stop);
    assert_eq!(ok, 0, "{ok} relay connects got through ({refused} refused)");
    assert!(refused > 100, "the flood made only {refused} connects");

    let programs_after = install.linked_prog_ids();
    assert_eq!(programs_after.len(), 2);
    assert!(
        programs_after
            .iter()
            .all(|id| !programs_before.contains(id)),
        "the links still run the first daemon's programs: {programs_before:?} {programs_after:?}"
    );
    let live: Vec<u64> = prog_ids("lw_connect4")
        .into_iter()
        .chain(prog_ids("lw_connect6"))
        .collect();
    assert!(
        programs_before.iter().all(|id| !live.contains(id)),
        "the replaced programs are still loaded: {programs_before:?} in {live:?}"
    );
    // (That reports made while no daemon read are kept in the pinned ring
    // buffer, and reported by the next daemon, is shown by
    // a_report_queued_across_a_restart_names_its_rule.)
    drop(third);
    drop(second);
    drop(first);
    assert_detach_ends_enforcement(&install, &ns);
}

#[test]
fn a_start_with_an_unresolvable_name_still_refuses_the_catalogued_relay() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    assert!(
        ns.socat_connect(&target).0,
        "control: socat reaches the service"
    );
    let rules = format!(
        "{}{}",
        rule("gone", "deny", "exe", "/nonexistent/loopwarden-test-tool"),
        rule("nobody-home", "deny", "user", "loopwarden-no-such-user")
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &rules));
    let stderr = daemon.stderr_text();
    assert!(
        stderr.contains("/nonexistent/loopwarden-test-tool") && stderr.contains("matches nothing"),
        "{stderr}"
    );
    assert!(!ns.socat_connect(&target).0, "the catalog is not enforced");
    daemon.wait_event("deny by the catalog", |e| {
        e["verdict"] == "deny" && e["rule"] == "catalog:socat"
    });
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
}

#[test]
fn a_bad_file_keeps_the_pinned_policy_and_a_reload_recovers() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let install = Install::new();
    let mut first = Daemon::start_in(&install, &policy(&ns, "enforce", ""), &[]);
    first.kill9();
    // The next daemons find a file that does not parse, then one that
    // parses but does not compile (more users than a policy holds), an
    // empty one, and the second again asking for another capacity for the
    // connections' map: the pinned policy stays in force, and each keeps
    // reporting.
    let uids: Vec<String> = (1..=1025).map(|u| u.to_string()).collect();
    let too_large = format!(
        "mode = \"audit\"\ncatalog = false\n[protect]\nnetns = [\"{}\"]\n[[rule]]\nname = \"u\"\n\
         action = \"audit\"\nuid = [{}]\n",
        ns.path(),
        uids.join(", ")
    );
    let mut second: Option<Daemon> = None;
    for (case, (bad, why)) in [
        // Each scoped to the test's namespace, so that were the file ever
        // taken, nothing outside the test would be judged by it.
        (
            format!("bogus = 1\n{}", policy(&ns, "enforce", "")),
            "bogus",
        ),
        (too_large.clone(), "at most 1024 fit"),
        // An empty file (truncated) is the defaults, audit mode: not in
        // place of the pinned policy, which enforces.
        (String::new(), "would put the defaults"),
        // The same, asking for another capacity of the pinned connections'
        // map: nothing is resized, the pinned set adopted as it is.
        (
            format!("{too_large}[provenance]\nconnections = 4096\n"),
            "at most 1024 fit",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(mut before) = second.take() {
            before.kill9();
        }
        // The first compiles again the config the first daemon kept; the
        // others, without it, keep the pinned policy as it is.
        if case == 1 {
            std::fs::remove_file(install.run_dir().join("config.json")).expect("the kept config");
        }
        let daemon = Daemon::start_in(&install, &bad, &[]);
        daemon.allow_error(why);
        daemon.wait_stderr(
            if case == 0 {
                "compiled again from its config"
            } else {
                "stays in force as it is"
            },
            1,
        );
        assert!(
            !ns.socat_connect(&target).0,
            "{why}: the pinned policy lapsed"
        );
        daemon.wait_event("a report under the pinned policy", |e| {
            e["verdict"] == "deny"
        });
        second = Some(daemon);
    }
    let second = second.expect("the last daemon");
    // A good file and SIGHUP: installed.
    std::fs::write(install.config_path(), policy(&ns, "audit", "")).expect("rewrite");
    second.signal(libc::SIGHUP);
    second.wait_installed(1);
    let (reached, why) = ns.socat_connect(&target);
    assert!(
        reached,
        "the reloaded audit policy refuses: {why}\n{}",
        second.stderr_text()
    );
}

/// A restart on a file the daemon refuses keeps the pinned policy, and
/// goes on re-resolving it from the config it was compiled from (kept in
/// the run directory): an executable a rule names by path, replaced by an
/// upgrade (a new inode) after the restart, is refused as before it.
#[test]
fn a_restart_on_a_bad_file_goes_on_re_resolving_the_pinned_policy() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let dir = TempDir::new("kept-config");
    let relay = dir.path().join("relay");
    std::fs::copy("/usr/bin/socat", &relay).expect("copy socat");
    let relay = relay.to_str().expect("utf-8 path").to_owned();
    let connects = || ns.socat_connect_from(&relay, &target).0;
    // Positive control: the copy reaches the service when no rule names it.
    assert!(connects(), "control: the relay cannot connect at all");
    // (Without the catalog, which knows socat by its contents: only the
    // rule, by path, refuses the copy.)
    let config = Policy::new(&ns, "enforce")
        .catalog(false)
        .extra(&rule("relay-exe", "deny", "exe", &relay))
        .text();
    let install = Install::new();
    let mut first = Daemon::start_in(&install, &config, &[]);
    assert!(!connects(), "the relay is not refused");
    first.kill9();

    let second = Daemon::start_in(&install, &format!("bogus = 1\n{config}"), &[]);
    second.allow_error("bogus");
    second.wait_stderr("compiled again from its config", 1);
    assert!(!connects(), "the kept policy lapsed at the restart");
    let status = install.status_text();
    assert!(
        status.contains("refused at start") && status.contains("as kept in"),
        "{status}"
    );

    // An upgrade replaces the relay: a new inode at the same path.
    let staged = dir.path().join("relay.new");
    std::fs::copy("/usr/bin/socat", &staged).expect("stage");
    std::fs::rename(&staged, &relay).expect("replace");
    let new_id = exe_id(std::path::Path::new(&relay));
    loopwarden_tests::wait_for(
        "the upgraded relay refused",
        Duration::from_secs(15),
        || (!connects()).then_some(()),
    );
    second.wait_event("a deny of the upgraded relay", |e| {
        e["rule"] == "relay-exe" && e["exe_id"] == new_id.as_str()
    });
    // Another client of the same port still reaches it.
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
}

#[test]
fn a_bad_file_with_nothing_pinned_exits_with_ex_config() {
    let install = Install::new();
    std::fs::write(install.config_path(), "bogus = 1\n").expect("config");
    let out = install.failing_start();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        !install.pin_dir().exists(),
        "a failed start pinned something"
    );
}

/// Connect loops run at once by the policy-flip test.
const FLOODERS: usize = 6;

#[test]
fn a_policy_flipped_every_millisecond_judges_each_connect_by_one_whole_policy() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    // Both policies match the client, differently: A refuses it (deny by
    // exe), B lets it through and reports it (audit by uid). A connect
    // judged by A's settings with B's rule maps, or the reverse, matches no
    // rule at all: allowed and not reported, which neither policy does.
    // Without the catalog, so a reload takes well under a millisecond.
    let without_catalog = |text: String| text.replace("catalog = true", "catalog = false");
    let a = without_catalog(policy(
        &ns,
        "enforce",
        &rule("a", "deny", "exe", "/usr/bin/python3"),
    ));
    let b = without_catalog(policy(&ns, "enforce", &rule("b", "audit", "user", "root")));
    let daemon = Daemon::start(&a);
    let config = daemon.config_path();
    // More flooding processes than CPUs: program runs are preempted midway
    // (this kernel is preemptible), the window a reader can straddle a
    // rewrite of its slot.
    let floods: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let dir = TempDir::new(&format!("flip{i}"));
            // Paced: every connect is reported, and the reader must keep up.
            let (proc, out, stop) = flood(&ns, &dir, 0.001);
            (proc, out, stop, dir)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut flips = 0u32;
    while Instant::now() < deadline {
        let next = if flips.is_multiple_of(2) { &b } else { &a };
        let tmp = config.with_extension("tmp");
        std::fs::write(&tmp, next).expect("write");
        std::fs::rename(&tmp, &config).expect("rename");
        daemon.signal(libc::SIGHUP);
        flips += 1;
        thread::sleep(Duration::from_millis(1));
    }
    let (mut ok, mut refused) = (0, 0);
    for (_proc, out, stop, _dir) in &floods {
        let (o, r) = flood_counts(out, stop);
        ok += o;
        refused += r;
    }
    // " installed: " is the install's line alone ("policy #N installed:
    // ..."), as `wait_installed` counts: every line of the module that
    // logs it starts `...::installed: `, the reloads' included.
    let installs = daemon.stderr_text().matches(" installed: ").count();
    assert!(
        installs > 100,
        "only {installs} policy switches happened:\n{}",
        daemon.stderr_text()
    );
    assert!(ok > 100 && refused > 100, "{ok} ok, {refused} refused");
    let expected = (ok + refused) as usize;
    let events = loopwarden_tests::wait_for("every report", Duration::from_secs(10), || {
        let events = daemon.events();
        (events.len() >= expected).then_some(events)
    });
    let count = |verdict: &str, rule: &str| {
        events
            .iter()
            .filter(|e| e["verdict"] == verdict && e["rule"] == rule)
            .count() as u64
    };
    assert_eq!(count("deny", "a"), refused, "refusals not by policy A");
    assert_eq!(
        count("audit", "b"),
        ok,
        "connects let through that policy B did not report (judged by a mix?)"
    );
    // A connection policy B let in and still open when policy A (which
    // refuses it) was installed is cut, and the cut is reported too (the
    // flood counted that connect as let in).
    let of_a_policy = |e: &&serde_json::Value| {
        let (verdict, rule) = (&e["verdict"], &e["rule"]);
        (verdict == "deny" && rule == "a")
            || (verdict == "audit" && rule == "b")
            || (verdict == "cut" && rule == "a")
    };
    let odd: Vec<_> = events.iter().filter(|e| !of_a_policy(e)).collect();
    assert!(odd.is_empty(), "reports of neither policy: {odd:?}");
    let cuts = count("cut", "a") as usize;
    assert_eq!(
        events.len() - cuts,
        expected,
        "reports besides the connects'"
    );
    // The kernel's own counters: the sequence lock's retries, if any, and
    // no connect let through unjudged.
    let raced: u64 = map_dump(daemon.install(), "LW_STATS")
        .iter()
        .find(|e| e["key"][0] == "0x05")
        .and_then(|e| e["values"].as_array())
        .map(|per_cpu| {
            per_cpu
                .iter()
                .map(|v| {
                    hex_bytes(&v["value"])
                        .iter()
                        .rev()
                        .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
                })
                .sum()
        })
        .expect("LW_STATS[RACED]");
    assert_eq!(raced, 0, "connects allowed unjudged");
    let _keep: Arc<Install> = Arc::clone(daemon.install());
}

#[test]
fn sighup_picks_the_policy_source_again() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let install = Install::new();
    // The daemon runs in a mount namespace of its own whose /etc is an
    // overlay: a /etc/loopwarden/loopwarden.toml written there exists for it
    // alone, and nothing of the host's /etc changes. The host's own
    // /etc/loopwarden, if it has one, is removed from that view (a
    // whiteout in the upper layer): its policy, not scoped to the test's
    // namespace, must never run here.
    let overlay = TempDir::new("etc");
    for d in ["upper", "work"] {
        std::fs::create_dir(overlay.path().join(d)).expect("overlay dirs");
    }
    let script = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={0}/upper,workdir={0}/work /etc \
         && rm -rf /etc/loopwarden && exec \"$0\" \"$@\"",
        overlay.path().display()
    );
    let cmd = || {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(loopwarden_bin())
            .args(["run", "--log-format", "json"])
            .args(install.dir_args());
        cmd
    };
    // No --config and no default file: the embedded default (audit only,
    // nothing is refused anywhere).
    let mut daemon = Daemon::start_cmd(&install, cmd());
    assert!(
        daemon.stderr_text().contains("embedded default policy"),
        "{}",
        daemon.stderr_text()
    );
    assert!(ns.socat_connect(&target).0, "audit mode refused");
    // The file appears after the start, in the daemon's view of /etc.
    let pid = daemon.pid().expect("running").to_string();
    let config = policy(&ns, "enforce", "");
    run_ok(Command::new("nsenter").args(["--mount", "--target", &pid, "sh", "-c"]).arg(format!(
        "mkdir -p /etc/loopwarden && cat > /etc/loopwarden/loopwarden.toml <<'EOF'\n{config}\nEOF"
    )));
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("SIGHUP: reloading /etc/loopwarden/loopwarden.toml", 1);
    daemon.wait_installed(1);
    assert!(!ns.socat_connect(&target).0, "the new file is not enforced");
    // The file truncated to nothing, then removed: each reload fails and
    // the policy in force stays (the defaults, or the embedded default,
    // would have dropped the host to audit mode).
    for (n, (why, shell)) in [
        ("has no settings", ": > /etc/loopwarden/loopwarden.toml"),
        ("is gone", "rm /etc/loopwarden/loopwarden.toml"),
    ]
    .into_iter()
    .enumerate()
    {
        daemon.allow_error(why);
        run_ok(Command::new("nsenter").args(["--mount", "--target", &pid, "sh", "-c", shell]));
        daemon.signal(libc::SIGHUP);
        daemon.wait_stderr("reload failed, keeping the running policy", n + 1);
        daemon.wait_stderr(why, 1);
        assert!(
            !ns.socat_connect(&target).0,
            "{shell}: the policy in force lapsed"
        );
    }
    // A restart with the file still gone (a crash's, or an upgrade's):
    // the embedded default is not put in place of the pinned policy, which
    // enforces, nor is it at a SIGHUP while the file is gone.
    daemon.kill9();
    let daemon = Daemon::start_cmd(&install, cmd());
    daemon.allow_error("would put the defaults");
    daemon.allow_error("is gone");
    daemon.wait_stderr("stays in force", 1);
    assert!(
        !ns.socat_connect(&target).0,
        "a restart without the file lapsed the pinned policy\n{}",
        daemon.stderr_text()
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("reload failed, keeping the running policy", 1);
    assert!(
        !ns.socat_connect(&target).0,
        "a SIGHUP without the file lapsed the pinned policy"
    );
    assert!(
        !std::path::Path::new("/etc/loopwarden/loopwarden.toml").exists(),
        "the host's /etc was written"
    );
}

/// A link of a program this version does not have (what a downgrade past
/// a version that added one leaves) goes with the maps it ran by; a
/// compatible start leaves the pins alone.
#[test]
fn a_replacement_removes_the_links_of_programs_it_does_not_have() {
    let ns = Netns::new();
    let install = Install::new();
    let config = policy(&ns, "enforce", "");
    let mut first = Daemon::start_in(&install, &config, &[]);
    first.kill9();
    // Another pin of the old fork tracker's link, under a name no program
    // of this version has.
    let links = install.pin_dir().join("links");
    let foreign = links.join("lw_from_a_later_version");
    run_ok(
        Command::new("bpftool")
            .args(["link", "pin", "pinned"])
            .arg(links.join("lw_fork"))
            .arg(&foreign),
    );
    let ours = ["lw_connect4", "lw_connect6", "lw_fork", "lw_sock_state"].map(|p| links.join(p));
    only_a_replacement_removes(
        &install,
        &config,
        &foreign,
        "a program this version does not have",
        &ours,
    );
}

/// Starts a daemon on `install`'s pins (a compatible start), which must
/// leave `foreign` pinned, then one with `--replace`, which must say
/// `said`, remove `foreign` and keep `ours`.
fn only_a_replacement_removes(
    install: &std::sync::Arc<Install>,
    config: &str,
    foreign: &std::path::Path,
    said: &str,
    ours: &[std::path::PathBuf],
) {
    let mut second = Daemon::start_in(install, config, &[]);
    assert!(foreign.exists(), "a compatible start removed {foreign:?}");
    second.kill9();
    let third = Daemon::start_in(install, config, &["--replace"]);
    third.wait_stderr(said, 1);
    assert!(!foreign.exists(), "{foreign:?} is still pinned");
    for pin in ours {
        assert!(pin.exists(), "{pin:?} is gone");
    }
}

/// Pins a one-entry array map named `name` at `path` (bpftool).
fn pin_array_map(path: &std::path::Path, name: &str) {
    run_ok(
        Command::new("bpftool")
            .args(["map", "create"])
            .arg(path)
            .args(["type", "array", "key", "4", "value", "8", "entries", "1"])
            .args(["name", name]),
    );
}

/// A replacement that fails part-way (here: the pinned getsockopt link
/// cannot be updated, before any enforcing link is switched) leaves the
/// old programs judging with the maps they were given, and the old
/// tracking programs still feeding those maps: a relay that starts
/// listening after the failed start is refused.
#[test]
fn a_replacement_that_fails_midway_leaves_the_old_maps_fed() {
    replacement_failing_at("lw_getsockopt", 9011);
}

/// The same when it fails after switching some enforcing links (the
/// connect and recvmsg links, then the bind link's update fails): those
/// are switched back to the programs they ran, which judge with the maps
/// the old trackers feed.
#[test]
fn a_replacement_that_fails_after_switching_links_switches_them_back() {
    replacement_failing_at("lw_bind4", 9013);
}

/// A local namespace serving the protected port and a remote one, and an
/// enforce-mode policy that refuses relays (the catalog off: known by what
/// they do alone).
fn relay_deny() -> (Topology, (Proc, Proc), String) {
    let topo = Topology::new();
    let servers = topo.local.http_servers();
    let config = Policy::new(&topo.local, "enforce")
        .catalog(false)
        .relay("deny")
        .text();
    (topo, servers, config)
}

/// Runs a `--replace` start of `install` that fails at the link pinned as
/// `link`, where a map is pinned in its place (left there); its stderr.
fn fail_a_replacement_at(install: &Install, link: &str) -> String {
    let pin = install.pin_dir().join("links").join(link);
    std::fs::remove_file(&pin).expect("the link's pin");
    pin_array_map(&pin, "lwt_no_link");
    let out = run_failing_start(
        Command::new(loopwarden_bin())
            .args(["run", "--replace", "--config"])
            .arg(install.config_path())
            .args(install.dir_args()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the replacement started: {stderr}");
    stderr
}

/// A `--replace` start that fails at the link pinned as `link` (a map
/// pinned in its place), then a relay started on `port` afterwards: only
/// the old programs and trackers can refuse it.
fn replacement_failing_at(link: &str, port: u16) {
    let (topo, _servers, config) = relay_deny();
    let install = Install::new();
    let mut first = Daemon::start_in(&install, &config, &[]);
    assert!(first.stop(), "the first daemon exits 0 on SIGTERM");
    let connect_programs = prog_ids("lw_connect4");
    assert!(
        install
            .linked_prog_ids()
            .iter()
            .any(|id| connect_programs.contains(id)),
        "the pinned connect link's program is not among the loaded: {connect_programs:?}"
    );
    let stderr = fail_a_replacement_at(&install, link);
    assert!(stderr.contains(link), "{stderr}");
    assert_eq!(
        prog_ids("lw_connect4"),
        connect_programs,
        "the connect link runs another program after the failed start: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(install.pin_dir().join("links"))
        .expect("the links' directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("_new"))
        .collect();
    assert!(
        left.is_empty(),
        "the failed start left its tracking links pinned: {left:?}"
    );
    let staged: Vec<_> = std::fs::read_dir(install.pin_dir())
        .expect("the pin directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("staging-"))
        .map(|e| e.path())
        .collect();
    assert!(staged.is_empty(), "the failed start left {staged:?}");

    // A relay started now: only the old trackers can give it evidence.
    let _socat = topo.local.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{port},bind={LOCAL_ADDR},fork,reuseaddr"),
            &format!("TCP:127.0.0.1:{PROTECTED}"),
        ],
    );
    topo.local.wait_listening(port);
    assert!(
        topo.remote
            .curl(&format!("http://{LOCAL_ADDR}:{port}/"))
            .is_err(),
        "the relay got through after the failed replacement"
    );
    // Positive controls: a direct local client is let through, and once
    // detached, so is the relay.
    assert_eq!(
        topo.local.curl(&format!("http://127.0.0.1:{PROTECTED}/")),
        Ok(200)
    );
    let out = install.detach();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        topo.remote.curl(&format!("http://{LOCAL_ADDR}:{port}/")),
        Ok(200),
        "the relay does not work even without loopwarden"
    );
}

/// A tracking link that a start pinned beside the pinned ones and left
/// (one killed part-way, before its trackers took their pins; made here
/// by moving the pinned `lw_sock_state` link aside under such a name) is
/// removed by the next start once that start has taken over: it would
/// otherwise go on running beside the new one until a `detach`. Positive
/// control: the moved pin holds an attached link before that start.
#[test]
fn a_tracking_link_a_killed_start_left_is_removed_by_the_next() {
    let ns = Netns::new();
    let install = Install::new();
    let config = policy(&ns, "audit", "");
    let mut first = Daemon::start_in(&install, &config, &[]);
    assert!(first.stop(), "the first daemon exits 0 on SIGTERM");
    let links = install.pin_dir().join("links");
    let left = links.join("lw_sock_state_new_1");
    std::fs::rename(links.join("lw_sock_state"), &left).expect("moving the tracker's pin");
    run_ok(
        Command::new("bpftool")
            .args(["link", "show", "pinned"])
            .arg(&left),
    );
    // Removed before the start is ready.
    let second = Daemon::start_in(&install, &config, &[]);
    assert!(!left.exists(), "the left tracking link is still pinned");
    assert!(links.join("lw_sock_state").exists());
    second.wait_stderr("left by a start that did not finish", 1);
    drop(second);
    let out = install.detach();
    assert!(out.status.success(), "{out:?}");
}

/// A start that fails after attaching getsockopt for the cgroups its
/// policy names (here the bind link's update fails) leaves the root's
/// getsockopt link of the policy before, which a start that takes over
/// removes: services there keep their answers.
#[test]
fn a_failed_start_keeps_the_getsockopt_link_of_the_policy_before() {
    let ns = Netns::new();
    let cgroup = loopwarden_tests::TestCgroup::new(&format!("lwt-pinned-{}", std::process::id()));
    let install = Install::new();
    let before = policy(&ns, "enforce", "");
    let mut first = Daemon::start_in(&install, &before, &[]);
    assert!(first.stop(), "the first daemon exits 0 on SIGTERM");
    let links = install.pin_dir().join("links");
    let root_link = links.join("lw_getsockopt");
    assert!(root_link.exists(), "the first daemon answers at the root");
    let named = format!(
        "{before}\n[provenance]\ngetsockopt_cgroups = [\"{}\"]\n",
        cgroup.name
    );
    std::fs::write(install.config_path(), &named).expect("the config");
    let bind = links.join("lw_bind4");
    std::fs::remove_file(&bind).expect("the bind link's pin");
    pin_array_map(&bind, "lwt_no_link");
    let out = install.failing_start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start succeeded: {stderr}");
    assert!(stderr.contains("lw_bind4"), "{stderr}");
    assert!(
        root_link.exists(),
        "the failed start removed the root's getsockopt link: {stderr}"
    );
    // Positive control: a start that takes over removes it.
    std::fs::remove_file(&bind).expect("the map pinned in its place");
    let _daemon = Daemon::start_in(&install, &named, &[]);
    assert!(
        !root_link.exists(),
        "a start naming other cgroups left the root's getsockopt link"
    );
}

/// A start on adopted maps that fails part-way (here the bind link's
/// update), after it installed its policy into the maps the running
/// programs read, puts the policy before it back: the enforcing policy
/// stays in force, and LW_META still says enforcing, though the failed
/// start's file was audit mode; the scope file names the namespaces of
/// the policy before, not the failed start's second one, and the kept
/// config file that policy's config. Positive control: the same start,
/// once it can take over, puts the audit policy in force (socat gets
/// through) and its scope and config in the files.
#[test]
fn a_failed_start_puts_the_policy_before_it_back() {
    let ns = Netns::new();
    let other = Netns::new();
    let scope = |install: &Install| {
        std::fs::read_to_string(install.run_dir().join("scope.json")).expect("scope.json")
    };
    // The kept config: whether it is the enforcing one that names only `ns`.
    let kept_config_is_first = |install: &Install| {
        let text =
            std::fs::read_to_string(install.run_dir().join("config.json")).expect("config.json");
        let first = text.contains(r#""mode":"enforce""#) && !text.contains(&other.path());
        let second = text.contains(r#""mode":"audit""#) && text.contains(&other.path());
        assert!(first != second, "neither config: {text}");
        first
    };
    let _server = ns.sink_server();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    assert!(ns.socat_connect(&target).0, "refused without loopwarden");
    let install = Install::new();
    let mut first = Daemon::start_in(&install, &policy(&ns, "enforce", ""), &[]);
    assert!(first.stop(), "the first daemon exits 0 on SIGTERM");
    assert!(!ns.socat_connect(&target).0, "not enforcing");
    let generation = || map_dump(&install, "LW_GENERATION")[0]["value"].clone();
    let before = generation();
    assert!(!scope(&install).contains(&other.path()));
    assert!(kept_config_is_first(&install));
    let audit = policy(&ns, "audit", "").replace(
        &format!("\"{}\"", ns.path()),
        &format!("\"{}\", \"{}\"", ns.path(), other.path()),
    );
    assert!(audit.contains(&other.path()), "{audit}");
    std::fs::write(install.config_path(), &audit).expect("the config");
    let bind = install.pin_dir().join("links").join("lw_bind4");
    std::fs::remove_file(&bind).expect("the bind link's pin");
    pin_array_map(&bind, "lwt_no_link");
    let out = install.failing_start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start succeeded: {stderr}");
    assert!(
        !ns.socat_connect(&target).0,
        "the failed start's audit policy is in force: {stderr}"
    );
    assert_eq!(generation(), before, "{stderr}");
    assert_eq!(meta_mode(&install), 2, "LW_META does not say enforcing");
    assert!(
        stderr.contains("the policy in force before it is put back"),
        "{stderr}"
    );
    let kept = scope(&install);
    assert!(
        kept.contains(&ns.path()) && !kept.contains(&other.path()),
        "the failed start's scope stayed in the file: {kept}"
    );
    assert!(
        kept_config_is_first(&install),
        "the failed start's config stayed in the file"
    );
    std::fs::remove_file(&bind).expect("the map pinned in its place");
    // The kept config is the policy in force's: a start on a bad file
    // compiles it again (enforcing).
    let mut refused_start = Daemon::start_in(&install, &format!("bogus = 1\n{audit}"), &[]);
    refused_start.allow_error("bogus");
    refused_start.wait_stderr("compiled again from its config", 1);
    assert!(!ns.socat_connect(&target).0, "the kept policy lapsed");
    refused_start.kill9();
    // (It installed the kept policy: the generation flipped.)
    let before = generation();
    // Positive control: taking over, it puts its policy in force.
    let second = Daemon::start_in(&install, &audit, &[]);
    assert!(ns.socat_connect(&target).0, "audit mode refused");
    assert_ne!(generation(), before);
    assert!(scope(&install).contains(&other.path()));
    assert!(!kept_config_is_first(&install));
    drop(second);
    assert_detach_ends_enforcement(&install, &ns);
}

/// A first start (nothing pinned before it) that fails part-way (here: a
/// map pinned where the bind hook's link goes, so the links before it are
/// attached and pinned when it fails) removes what it pinned: no program
/// goes on enforcing without a daemon. Positive control: a daemon started
/// on the same directories refuses the same relay.
#[test]
fn a_first_start_that_fails_midway_leaves_nothing_enforcing() {
    let (topo, _servers, config) = relay_deny();
    let port = 9012;
    let _socat = topo.local.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{port},bind={LOCAL_ADDR},fork,reuseaddr"),
            &format!("TCP:127.0.0.1:{PROTECTED}"),
        ],
    );
    topo.local.wait_listening(port);
    let relayed = || topo.remote.curl(&format!("http://{LOCAL_ADDR}:{port}/"));
    let install = Install::new();
    let mut daemon = Daemon::start_in(&install, &config, &[]);
    assert!(relayed().is_err(), "the relay got through a running daemon");
    assert!(daemon.stop(), "the daemon exits 0 on SIGTERM");
    let out = install.detach();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(relayed(), Ok(200), "the relay fails without loopwarden");

    let links = install.pin_dir().join("links");
    std::fs::create_dir_all(&links).expect("creating the links directory");
    pin_array_map(&links.join("lw_bind4"), "lwt_no_link");
    let out = install.failing_start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start succeeded: {stderr}");
    assert!(stderr.contains("lw_bind4"), "{stderr}");
    assert_eq!(relayed(), Ok(200), "a program of the failed start judges");
    let left: Vec<_> = std::fs::read_dir(install.pin_dir())
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the failed start left {left:?}");
    assert!(
        stderr.contains("pins of loopwarden's are removed"),
        "{stderr}"
    );
}

/// A map pinned by another version (one this version does not have) goes
/// with a replacement of the whole set, instead of holding its memory
/// until a detach; a compatible start leaves it.
#[test]
fn a_replacement_removes_the_maps_this_version_does_not_have() {
    let ns = Netns::new();
    let install = Install::new();
    let config = policy(&ns, "enforce", "");
    let mut first = Daemon::start_in(&install, &config, &[]);
    first.kill9();
    let maps = install.pin_dir().join("maps");
    let retired = maps.join("LW_RETIRED");
    pin_array_map(&retired, "LW_RETIRED");
    let ours = ["LW_META", "LW_SETTINGS", "LW_EVENTS"].map(|m| maps.join(m));
    only_a_replacement_removes(
        &install,
        &config,
        &retired,
        "a map this version does not have",
        &ours,
    );
}

#[test]
fn pinned_maps_of_another_layout_or_shape_are_replaced_never_misread() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let install = Install::new();
    let config = policy(&ns, "enforce", "");
    let maps = install.pin_dir().join("maps");
    let mut first = Daemon::start_in(&install, &config, &[]);
    first.kill9();
    assert!(!ns.socat_connect(&target).0, "not enforcing after the kill");

    // An older layout: LW_META says version 1.
    let mut meta = b"loopward".to_vec();
    meta.extend(1u32.to_le_bytes());
    meta.extend([0u8; 12]);
    map_update(&install, "LW_META", &0u32.to_ne_bytes(), &meta);
    let second = Daemon::start_in(&install, &config, &[]);
    second.wait_stderr("layout version 1, this daemon uses", 1);
    second.wait_stderr("replaced the pinned programs in place", 1);
    assert!(
        !ns.socat_connect(&target).0,
        "not enforcing after the replacement"
    );
    drop(second);

    // A map of another shape under a known name (as a future or broken
    // version might leave): LW_STATS with too few counters.
    std::fs::remove_file(maps.join("LW_STATS")).expect("unpin LW_STATS");
    run_ok(
        Command::new("bpftool")
            .args(["map", "create"])
            .arg(maps.join("LW_STATS"))
            .args([
                "type",
                "percpu_array",
                "key",
                "4",
                "value",
                "8",
                "entries",
                "2",
                "name",
                "LW_STATS",
            ]),
    );
    let third = Daemon::start_in(&install, &config, &[]);
    third.wait_stderr("pinned map LW_STATS is", 1);
    third.wait_stderr("replaced the pinned programs in place", 1);
    assert!(
        !ns.socat_connect(&target).0,
        "not enforcing after the replacement"
    );
    third.wait_event("a refusal reported by the new daemon", |e| {
        e["verdict"] == "deny" && e["rule"] == "catalog:socat"
    });
    // Whatever is pinned now is this layout, and a restart adopts it.
    drop(third);
    let fourth = Daemon::start_in(&install, &config, &[]);
    fourth.wait_stderr("adopted the pinned maps", 1);
    drop(fourth);
    assert_detach_ends_enforcement(&install, &ns);
}

/// `LW_META`'s mode word (after the magic and the layout version).
fn meta_mode(install: &Install) -> u32 {
    let meta = hex_bytes(&map_dump(install, "LW_META")[0]["value"]);
    u32::from_ne_bytes(meta[12..16].try_into().expect("four bytes"))
}

/// An upgrade cannot read the pinned settings of another layout: what
/// `LW_META` says of their mode decides. Pinned enforcing, a start on an
/// empty file exits 78 instead of putting the audit-mode defaults in place,
/// the old programs refusing meanwhile; the same start on a good file
/// replaces them (the control). `LW_META` follows the mode in force
/// across reloads.
#[test]
fn an_upgrade_on_an_empty_file_keeps_the_enforcing_pinned_policy() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let install = Install::new();
    let enforce = policy(&ns, "enforce", "");
    let mut first = Daemon::start_in(&install, &policy(&ns, "audit", ""), &[]);
    assert_eq!(meta_mode(&install), 1, "LW_META does not say reporting");
    assert!(ns.socat_connect(&target).0, "refused in audit mode");
    std::fs::write(install.config_path(), &enforce).expect("rewrite");
    first.signal(libc::SIGHUP);
    first.wait_installed(1);
    assert_eq!(meta_mode(&install), 2, "LW_META does not say enforcing");
    first.kill9();

    // Another layout, as the version before an upgrade leaves it; its
    // mode word as written.
    let mut meta = hex_bytes(&map_dump(&install, "LW_META")[0]["value"]);
    meta[8..12].copy_from_slice(&1u32.to_ne_bytes());
    map_update(&install, "LW_META", &0u32.to_ne_bytes(), &meta);
    std::fs::write(install.config_path(), "").expect("truncate");
    let out = install.failing_start();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("in place of the pinned policy, which enforces"),
        "{stderr}"
    );
    assert!(
        !ns.socat_connect(&target).0,
        "the pinned policy lapsed after the refused start"
    );

    // The control: the same pins and a good file.
    std::fs::write(install.config_path(), &enforce).expect("rewrite");
    let second = Daemon::start_in(&install, &enforce, &[]);
    second.wait_stderr("replaced the pinned programs in place", 1);
    assert!(
        !ns.socat_connect(&target).0,
        "not enforcing after the replacement"
    );
    assert_eq!(
        meta_mode(&install),
        2,
        "the replacement does not say enforcing"
    );
    drop(second);
    assert_detach_ends_enforcement(&install, &ns);
}

/// A daemon started into a mount namespace of its own (a container's,
/// a unit's `PrivateMounts=`, here `unshare -m`) whose /sys/fs/bpf is not
/// bpffs refuses to mount one there: its pins, enforcement with them,
/// would go with that namespace. The control: the same start where the
/// namespace has the host's bpffs.
#[test]
fn a_start_in_a_private_mount_namespace_without_bpffs_mounts_none() {
    let ns = Netns::new();
    let install = Install::new();
    std::fs::write(install.config_path(), policy(&ns, "audit", "")).expect("config");
    let cmd = |unmount: bool| {
        let script = if unmount {
            "umount /sys/fs/bpf && exec \"$0\" \"$@\""
        } else {
            "exec \"$0\" \"$@\""
        };
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(loopwarden_bin())
            .args(["run", "--log-format", "json", "--config"])
            .arg(install.config_path())
            .args(install.dir_args());
        cmd
    };
    let out = run_failing_start(&mut cmd(true));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("mount namespace of its own"), "{stderr}");
    let daemon = Daemon::start_cmd(&install, cmd(false));
    assert!(install.pin_dir().exists(), "the control pinned nothing");
    drop(daemon);
}

#[test]
fn a_second_daemon_on_the_same_pins_is_refused_whatever_its_run_dir() {
    let ns = Netns::new();
    let install = Install::new();
    let first = Daemon::start_in(&install, &policy(&ns, "audit", ""), &[]);
    let holder = format!(
        "pid {}, --run-dir {}",
        first.pid().expect("running"),
        install.run_dir().display()
    );
    let other_run = TempDir::new("other-run");
    let out = run_failing_start(
        Command::new(loopwarden_bin())
            .arg("run")
            .arg("--config")
            .arg(install.config_path())
            .arg("--run-dir")
            .arg(other_run.path())
            .arg("--pin-dir")
            .arg(install.pin_dir()),
    );
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("uses the pin directory"), "{stderr}");
    // Who holds it is named.
    assert!(
        stderr.contains(&format!("(its lock is held by {holder})")),
        "{stderr}"
    );
    // Nor can a detach pull the pins from under the running daemon, with
    // a run directory of its own or one that is not there (none is made
    // for it); it says which daemon to stop.
    let missing = other_run.path().join("missing");
    for run_dir in [other_run.path(), missing.as_path()] {
        let detach = run(Command::new(loopwarden_bin())
            .arg("detach")
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--pin-dir")
            .arg(install.pin_dir()));
        assert_eq!(detach.status.code(), Some(75), "{detach:?}");
        let said = String::from_utf8_lossy(&detach.stderr);
        assert!(
            said.contains(&format!("a daemon ({holder}) enforces through")),
            "{said}"
        );
        assert!(install.pin_dir().join("links/lw_connect4").exists());
    }
    assert!(!missing.exists(), "detach made {}", missing.display());
}

/// A report made while no daemon read (enforcement pinned, its daemon
/// stopped) is named by its rule when a later daemon reports it: the rule
/// lists of the policies a predecessor installed are kept in the run
/// directory (`rules.json`), not lost with it (`rule=#N`).
#[test]
fn a_report_queued_across_a_restart_names_its_rule() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    let install = Install::new();
    let config = policy(&ns, "enforce", "");
    let is_socat_deny = |e: &serde_json::Value| e["verdict"] == "deny" && e["exe_name"] == "socat";
    let first = Daemon::start_in(&install, &config, &[]);
    assert!(!ns.socat_connect(&target).0, "the relay was not refused");
    let seen = first.wait_event("the relay's refusal", is_socat_deny);
    assert_eq!(seen["rule"], "catalog:socat", "{seen}");
    drop(first);

    // No daemon: the pinned policy refuses, its report waits in the ring.
    assert!(!ns.socat_connect(&target).0, "the relay was not refused");
    let second = Daemon::start_in(&install, &config, &[]);
    let queued = second.wait_event("the queued refusal", is_socat_deny);
    assert_eq!(queued["rule"], "catalog:socat", "{queued}");
    assert!(
        second
            .events()
            .iter()
            .all(|e| !e["rule"].as_str().is_some_and(|r| r.starts_with('#'))),
        "{:#?}",
        second.events()
    );
    drop(second);
    assert_detach_ends_enforcement(&install, &ns);
}

/// A namespace kept in the scope after its name went (see
/// `enforce::a_namespace_whose_name_goes_stays_protected`) stays in it
/// across a restart: the next start finds its name gone too, and takes
/// the namespace from the scope the pinned policy had
/// (`<run_dir>/scope.json`) instead of dropping it and letting the relay
/// there through. So does the first good reload of a daemon that started
/// on a file that does not compile (it kept the pinned policy meanwhile).
/// The scope names a second namespace that stays, so that the reload is
/// not refused for a scope of none. A `--replace` start that fails in
/// between (a map pinned where its getsockopt link is) leaves the file to
/// the maps still in force: it wrote the scope for maps it never
/// pinned, and the next start dropped the namespace.
#[test]
fn a_namespace_kept_after_its_name_went_stays_protected_across_a_restart() {
    let ns = Netns::new();
    let other = Netns::new();
    let _servers = ns.http_servers();
    let alias = NetnsAlias::new(&ns);
    let install = Install::new();
    let text = policy(&ns, "enforce", "").replace(
        &format!("\"{}\"", ns.path()),
        &format!("\"{}\", \"{}\"", alias.0, other.path()),
    );
    assert!(text.contains(&alias.0), "{text}");
    let refused_in_ns = |daemon: &Daemon, when: &str| assert_socat_refused(daemon, &ns, when);
    let first = Daemon::start_in(&install, &text, &[]);
    refused_in_ns(&first, "while named");
    let gone = format!("network namespace {} cannot be resolved", alias.0);
    drop(alias);
    first.wait_stderr(&gone, 1);
    first.wait_stderr("stays in the scope", 1);
    drop(first);

    let stderr = fail_a_replacement_at(&install, "lw_getsockopt");
    assert!(stderr.contains("stays in the scope"), "{stderr}");
    std::fs::remove_file(install.pin_dir().join("links").join("lw_getsockopt"))
        .expect("the map pinned as the link");

    let second = Daemon::start_in(&install, &text, &[]);
    assert!(
        second.stderr_text().contains("stays in the scope"),
        "the restart dropped the namespace from the scope:\n{}",
        second.stderr_text()
    );
    refused_in_ns(&second, "after the restart");
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
    drop(second);

    // A start on a file that does not parse keeps the pinned policy (as it
    // is: without the config the daemon before kept, whose compile would
    // keep the namespace at the start); the good file's reload then keeps
    // the namespace too.
    std::fs::remove_file(install.run_dir().join("config.json")).expect("the kept config");
    let third = Daemon::start_in(&install, &format!("bogus = 1\n{text}"), &[]);
    third.allow_error("bogus");
    third.wait_stderr("stays in force as it is", 1);
    assert!(
        !third.stderr_text().contains("stays in the scope"),
        "{}",
        third.stderr_text()
    );
    std::fs::write(install.config_path(), &text).expect("rewrite");
    third.signal(libc::SIGHUP);
    third.wait_installed(1);
    assert!(
        third.stderr_text().contains("stays in the scope"),
        "the reload dropped the namespace from the scope:\n{}",
        third.stderr_text()
    );
    refused_in_ns(&third, "after the reload");
    drop(third);
    assert_detach_ends_enforcement(&install, &ns);
}

/// A start whose `[protect] netns` names no namespace that exists (a name
/// mistyped since the pinned policy was installed, which a reload
/// refuses) keeps the pinned policy, which judges the test's namespace:
/// the catalogued relay stays refused, and a reload of the mended file
/// installs it. A build that installed the start's policy let the relay
/// through (a policy scoped to no namespace judges nothing). Positive
/// control: the relay connects once detached.
#[test]
fn a_start_scoped_to_no_namespace_keeps_the_pinned_policy() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let install = Install::new();
    let text = policy(&ns, "enforce", "");
    let refused = |daemon: &Daemon, when: &str| assert_socat_refused(daemon, &ns, when);
    let first = Daemon::start_in(&install, &text, &[]);
    refused(&first, "the first daemon");
    drop(first);

    let typo = text.replace(
        &format!("\"{}\"", ns.path()),
        &format!("\"{}-typo\"", ns.path()),
    );
    assert_ne!(typo, text);
    // Without the config the first daemon kept: the pinned policy as it is
    // (with it, the start compiles that config again: see
    // a_restart_on_a_bad_file_goes_on_re_resolving_the_pinned_policy).
    std::fs::remove_file(install.run_dir().join("config.json")).expect("the kept config");
    let second = Daemon::start_in(&install, &typo, &[]);
    second.allow_error("none of the network namespaces");
    second.wait_stderr("stays in force as it is", 1);
    refused(&second, "after a start on a scope of none");
    assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));

    std::fs::write(install.config_path(), &text).expect("rewrite");
    second.signal(libc::SIGHUP);
    second.wait_installed(1);
    refused(&second, "after the mended file's reload");
    drop(second);
    assert_detach_ends_enforcement(&install, &ns);
}

/// Asserts that a socat relay in `ns` to the protected port is refused
/// `when`, and that `daemon` reports the refusal.
fn assert_socat_refused(daemon: &Daemon, ns: &Netns, when: &str) {
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(
        !ok,
        "the relay got through {when}:\n{}",
        daemon.stderr_text()
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    daemon.wait_event(&format!("the relay's refusal {when}"), |e| {
        e["verdict"] == "deny" && e["exe_name"] == "socat"
    });
}

/// Detaches `install` and asserts that a relay in `ns` to the protected
/// port goes through again: the positive control of a test whose daemons
/// (and the pins they left) refused it.
fn assert_detach_ends_enforcement(install: &Install, ns: &Netns) {
    let detach = install.detach();
    assert!(detach.status.success(), "{detach:?}");
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
    assert!(ok, "detach did not end enforcement: {stderr}");
}

/// A start removes only loopwarden's own staging directories
/// (`staging-<pid>`, left by an interrupted start), as `detach` takes
/// them: a directory or a pin of another name that starts so is left, and
/// the start does not fail on it (it removed any `staging-*` whole, and a
/// pinned object of such a name made every start fail). Positive
/// control: a `staging-<pid>` directory is removed.
#[test]
fn a_start_removes_only_its_own_kind_of_staging_directory() {
    let ns = Netns::new();
    let install = Install::new();
    let pins = install.pin_dir();
    std::fs::create_dir_all(pins).expect("the pin directory");
    let left = pins.join("staging-999999");
    let foreign_dir = pins.join("staging-old");
    let foreign_pin = pins.join("staging-x");
    for dir in [&left, &foreign_dir] {
        std::fs::create_dir(dir).expect("a staging-like directory");
        pin_array_map(&dir.join("LW_META"), "lwt_staged");
    }
    pin_array_map(&foreign_pin, "lwt_foreign");
    let daemon = Daemon::start_in(&install, &policy(&ns, "audit", ""), &[]);
    assert!(
        !left.exists(),
        "an interrupted start's staging directory stayed"
    );
    assert!(
        foreign_dir.join("LW_META").exists() && foreign_pin.exists(),
        "the start removed what is not loopwarden's: {}",
        daemon.stderr_text()
    );
    drop(daemon);
    std::fs::remove_file(foreign_dir.join("LW_META")).expect("unpinning");
    std::fs::remove_dir(&foreign_dir).expect("removing the directory");
    std::fs::remove_file(&foreign_pin).expect("unpinning");
}
