//! The Prometheus metrics, scraped from a real daemon: the kernel's
//! counters move by exactly the connects the test caused, the per-rule
//! tally by exactly its reports, and the capacities are the maps'.

use std::{net::SocketAddr, path::PathBuf};

use loopwarden_common::{MAX_CONNS, MAX_LISTENERS, MAX_PENDING, MAX_TRACKED};
use loopwarden_tests::{
    Daemon, Netns, PROTECTED, UNPROTECTED,
    idle::IdleClients,
    metrics::{Page, scrape_tcp, scrape_unix},
    provenance::Holder,
    wait_for,
};

/// Enforce mode scoped to `ns`, allowed connects reported too, with `extra`.
fn config(ns: &Netns, extra: &str) -> String {
    format!(
        "mode = \"enforce\"\ncatalog = true\nlog_allowed = true\n\n[protect]\nports = \
         [{PROTECTED}]\nnetns = [\"{}\"]\n\n{extra}\n",
        ns.path()
    )
}

fn socket(daemon: &Daemon) -> PathBuf {
    daemon.install().run_dir().join("metrics.sock")
}

/// The first scrape, once the socket is there.
fn first_scrape(daemon: &Daemon) -> Page {
    let path = socket(daemon);
    wait_for(
        "the metrics socket",
        std::time::Duration::from_secs(10),
        || path.exists().then_some(()),
    );
    scrape_unix(&path)
}

const CHECKED: &str = "loopwarden_connects_checked_total";
const DENIED: &str = "loopwarden_connects_denied_total";
const DECISIONS: &str = "loopwarden_decisions_total";
const REPORTED: &str = "loopwarden_reported_connects_total";

#[test]
fn a_scrape_counts_exactly_the_refusals_and_connects_the_test_caused() {
    const REFUSALS: u64 = 7;
    const ALLOWED: u64 = 4;
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let daemon = Daemon::start(&config(&ns, ""));
    let before = first_scrape(&daemon);
    assert_eq!(before.must("loopwarden_up", &[]), 1);
    // The harness reads every line: none went unwritten.
    assert_eq!(
        before.must("loopwarden_audit_lines_unwritten_total", &[]),
        0
    );
    assert_eq!(
        before.must("loopwarden_audit_reports_unwritten_total", &[]),
        0
    );
    assert_eq!(
        before.must(
            "loopwarden_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1
    );
    assert_eq!(before.must("loopwarden_kernel_counters_readable", &[]), 1);
    assert_eq!(
        before.must("loopwarden_policy_mode", &[("mode", "enforce")]),
        1
    );
    assert!(before.must("loopwarden_policy_sequence", &[]) > 0);
    for (map, capacity) in [
        ("LW_PROCS", MAX_TRACKED),
        ("LW_LISTENERS", MAX_LISTENERS),
        ("LW_PENDING", MAX_PENDING),
        ("LW_CONNS", MAX_CONNS),
    ] {
        assert_eq!(
            before.must("loopwarden_map_capacity", &[("map", map)]),
            u64::from(capacity),
            "{map}"
        );
        assert!(
            before.must("loopwarden_map_entries", &[("map", map)]) <= u64::from(capacity),
            "{map}"
        );
    }

    let deny = [
        ("verdict", "deny"),
        ("rule", "catalog:socat"),
        ("port", "8080"),
    ];
    let allow = [("verdict", "allow"), ("rule", "-"), ("port", "8080")];
    for _ in 0..REFUSALS {
        let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}"));
        assert!(!ok && stderr.contains("Connection refused"), "{stderr}");
    }
    for _ in 0..ALLOWED {
        assert_eq!(ns.curl(&format!("http://127.0.0.1:{PROTECTED}/")), Ok(200));
    }
    // The kernel counted at connect(); the daemon's tally is published
    // once a second, so wait for it (not for the kernel).
    let after = wait_for(
        "the reports in the tally",
        std::time::Duration::from_secs(10),
        || {
            let page = scrape_unix(&socket(&daemon));
            (page.count(REPORTED, &deny) >= before.count(REPORTED, &deny) + REFUSALS
                && page.count(REPORTED, &allow) >= before.count(REPORTED, &allow) + ALLOWED)
                .then_some(page)
        },
    );
    assert_eq!(
        after.must(DENIED, &[]) - before.must(DENIED, &[]),
        REFUSALS,
        "the kernel's refusals"
    );
    assert_eq!(
        after.must(CHECKED, &[]) - before.must(CHECKED, &[]),
        REFUSALS + ALLOWED,
        "the kernel's checked connects"
    );
    // The kernel's own decisions by verdict: the same, reported or not.
    let decided = |page: &Page, v| page.must(DECISIONS, &[("verdict", v)]);
    assert_eq!(decided(&after, "deny") - decided(&before, "deny"), REFUSALS);
    assert_eq!(
        decided(&after, "allow") - decided(&before, "allow"),
        ALLOWED
    );
    for v in ["audit", "would-deny"] {
        assert_eq!(decided(&after, v), decided(&before, v), "{v}");
    }
    assert_eq!(
        after.count(REPORTED, &deny) - before.count(REPORTED, &deny),
        REFUSALS
    );
    assert_eq!(
        after.count(REPORTED, &allow) - before.count(REPORTED, &allow),
        ALLOWED
    );
    // The lines on stdout say the same.
    let lines = daemon.events();
    let denials = lines
        .iter()
        .filter(|e| e["verdict"] == "deny" && e["rule"] == "catalog:socat")
        .count() as u64;
    assert_eq!(denials, REFUSALS, "refusal lines");
    for v in ["allow", "audit", "would-deny", "deny"] {
        assert_eq!(
            after.must("loopwarden_reports_lost_total", &[("verdict", v)]),
            0,
            "{v}"
        );
    }
    assert_eq!(
        after.must("loopwarden_kernel_reports_total", &[])
            - before.must("loopwarden_kernel_reports_total", &[]),
        REFUSALS + ALLOWED
    );

    // A connect to a port the policy does not protect moves nothing.
    assert_eq!(
        ns.curl(&format!("http://127.0.0.1:{UNPROTECTED}/")),
        Ok(200)
    );
    let unprotected = scrape_unix(&socket(&daemon));
    for name in [CHECKED, DENIED, "loopwarden_kernel_reports_total"] {
        assert_eq!(unprotected.must(name, &[]), after.must(name, &[]), "{name}");
    }
    let reported_8081 = unprotected
        .samples
        .iter()
        .filter(|s| s.name == REPORTED && s.labels["port"] == UNPROTECTED.to_string())
        .count();
    assert_eq!(reported_8081, 0);

    // Reloads: none yet, then a good one (with a rule more: a new
    // policy), then a bad one (the running policy stays, and the gauge
    // says the reload failed).
    assert_eq!(after.get("loopwarden_last_reload_success", &[]), None);
    assert_eq!(after.get("loopwarden_refresh_failing", &[]), Some(0.0));
    let more = format!(
        "{}{}",
        config(&ns, ""),
        loopwarden_tests::rule("nothing", "audit", "exe_name", "lw-no-such-program")
    );
    std::fs::write(daemon.config_path(), more).expect("writing the config");
    daemon.signal(libc::SIGHUP);
    let reloaded = wait_for(
        "a successful reload in the metrics",
        std::time::Duration::from_secs(10),
        || {
            let page = scrape_unix(&socket(&daemon));
            (page.get("loopwarden_last_reload_success", &[]) == Some(1.0)).then_some(page)
        },
    );
    assert!(reloaded.must("loopwarden_last_reload_timestamp_seconds", &[]) > 0);
    assert!(
        reloaded.must("loopwarden_policy_sequence", &[])
            > before.must("loopwarden_policy_sequence", &[])
    );
    daemon.allow_error("reload failed, keeping the running policy");
    std::fs::write(daemon.config_path(), "mode = \"sideways\"\n").expect("writing a bad config");
    daemon.signal(libc::SIGHUP);
    let failed = wait_for(
        "a failed reload in the metrics",
        std::time::Duration::from_secs(10),
        || {
            let page = scrape_unix(&socket(&daemon));
            (page.get("loopwarden_last_reload_success", &[]) == Some(0.0)).then_some(page)
        },
    );
    assert_eq!(
        failed.must("loopwarden_policy_sequence", &[]),
        reloaded.must("loopwarden_policy_sequence", &[]),
        "a failed reload installed something"
    );
}

const TAGGED: &str = "loopwarden_tagged_connections";

#[test]
fn tagged_connections_are_counted_while_open() {
    let ns = Netns::new();
    let holder = Holder::start(&ns, &[PROTECTED, UNPROTECTED], None);
    let daemon = Daemon::start(&config(&ns, ""));
    let first = first_scrape(&daemon);
    let before = first.must(TAGGED, &[]);
    // The tag's tracking program's skipped runs, as bpftool reads them.
    let skipped = first.must(
        "loopwarden_program_skipped_runs_total",
        &[("program", "lw_sock_state")],
    );
    assert_eq!(skipped, daemon.install().skipped_runs("lw_sock_state"));
    // The start's sweep (enforce mode), complete, nothing to cut.
    let sweep = wait_for(
        "the start's sweep in the metrics",
        std::time::Duration::from_secs(10),
        || {
            let page = scrape_unix(&socket(&daemon));
            let complete = page.get("loopwarden_last_sweep_complete", &[])?;
            Some((
                complete,
                page.must("loopwarden_last_sweep_cut_connections", &[]),
            ))
        },
    );
    assert_eq!(sweep, (1.0, 0));
    let tagged_reads = |want: u64| {
        wait_for(
            &format!("{TAGGED} to read {want}"),
            std::time::Duration::from_secs(10),
            || (scrape_unix(&socket(&daemon)).must(TAGGED, &[]) == want).then_some(()),
        );
    };
    let mut held = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
    holder.wait_accepted(1);
    tagged_reads(before + 1);
    // A connection to a port the policy does not protect carries no origin.
    let unprotected = holder.hold_client(&ns, "127.0.0.1", UNPROTECTED);
    holder.wait_accepted(2);
    // Past the count's cache, so the scrape below counts afresh.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        scrape_unix(&socket(&daemon)).must(TAGGED, &[]),
        before + 1,
        "an unprotected connection was counted"
    );
    drop(unprotected);
    // Closed (the client exits, the holder closes its side): gone.
    held.kill();
    tagged_reads(before);
}

/// A free port on 127.0.0.1 in this (the daemon's) network namespace.
fn free_loopback_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a probe");
    probe.local_addr().expect("its address").port()
}

#[test]
fn the_opt_in_loopback_port_serves_the_metrics_and_is_protected() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let port = free_loopback_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // The same port listens in the test's namespace too, and socat reaches
    // it before the daemon starts: the refusal below is the policy's.
    let _same_port = ns.spawn(
        "python3",
        &[
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ],
    );
    ns.wait_listening(port);
    assert!(ns.socat_connect(&format!("TCP:127.0.0.1:{port}")).0);
    let daemon = Daemon::start(&config(
        &ns,
        &format!("[metrics]\nsocket = false\nlisten = \"{addr}\"\n"),
    ));
    daemon.wait_stderr(&format!("http://{addr}/metrics"), 1);
    let page = scrape_tcp(addr);
    assert_eq!(page.must("loopwarden_up", &[]), 1);
    assert_eq!(
        page.must("loopwarden_policy_mode", &[("mode", "enforce")]),
        1
    );
    // `socket = false`: no Unix socket.
    assert!(!socket(&daemon).exists());

    // The metrics port joined the protected ports: a relay's connect to
    // it (in the test's namespace, where the policy applies) is refused
    // and reported; the same relay to a port that is not protected is not.
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{port}"));
    assert!(!ok && stderr.contains("Connection refused"), "{stderr}");
    let ev = daemon.wait_event("the refusal on the metrics port", |e| {
        e["verdict"] == "deny" && e["dst_port"] == port
    });
    assert_eq!(ev["rule"], "catalog:socat");
    let (ok, stderr) = ns.socat_connect(&format!("TCP:127.0.0.1:{UNPROTECTED}"));
    assert!(ok, "{stderr}");
    // The tally is published once a second.
    let port_label = port.to_string();
    let series = [
        ("verdict", "deny"),
        ("rule", "catalog:socat"),
        ("port", port_label.as_str()),
    ];
    wait_for(
        "the refusal in the tally",
        std::time::Duration::from_secs(10),
        || (scrape_tcp(addr).count(REPORTED, &series) == 1).then_some(()),
    );
    assert!(
        daemon.events().iter().all(|e| e["dst_port"] != UNPROTECTED),
        "a connect to the unprotected port was reported"
    );
}

/// A TCP port someone else holds turns off the TCP listener alone: the
/// daemon says so and serves on its socket all the same.
#[test]
fn a_taken_metrics_port_leaves_the_socket_serving() {
    let ns = Netns::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the holder");
    let addr = holder.local_addr().expect("its address");
    let daemon = Daemon::start(&config(&ns, &format!("[metrics]\nlisten = \"{addr}\"\n")));
    daemon.allow_error("the metrics' TCP listener is off");
    daemon.wait_stderr("the metrics' TCP listener is off", 1);
    assert!(
        daemon.stderr_text().contains("Address already in use"),
        "{}",
        daemon.stderr_text()
    );
    assert_eq!(first_scrape(&daemon).must("loopwarden_up", &[]), 1);
    drop(holder);
}

/// The metrics server's places (`ops::metrics::MAX_CLIENTS`).
const MAX_CLIENTS: usize = 16;

#[test]
fn clients_that_hold_connections_without_asking_keep_no_scrape_out() {
    let ns = Netns::new();
    let daemon = Daemon::start(&config(&ns, ""));
    let before = first_scrape(&daemon);
    assert!(before.get(CHECKED, &[]).is_some(), "{before:?}");
    // Every place taken by a client that sends nothing (each would be
    // closed only after 5 s of silence).
    let mut idle = IdleClients::unix(&socket(&daemon), &[0; MAX_CLIENTS]);
    let states = idle.states();
    assert!(states.iter().all(|s| s == "open"), "{states:?}");
    // One more is answered ...
    let page = scrape_unix(&socket(&daemon));
    assert!(page.get(CHECKED, &[]).is_some(), "{page:?}");
    // ... and the client that connected first, waiting longest, made room.
    idle.assert_only_the_first_closed("the metrics server");
}
