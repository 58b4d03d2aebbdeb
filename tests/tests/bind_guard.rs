//! The bind guard, end to end: a real Python service binding a
//! loopback-only port in the test's network namespace, judged by the real
//! `cgroup/bind4`/`bind6` programs. Binds on loopback, binds of other
//! ports, binds by exempt processes and binds in a namespace the policy
//! does not name pass; the rest fail with EADDRNOTAVAIL (enforce) or pass
//! and are reported (audit).

use std::path::Path;

use loopwarden_tests::{
    AS_NOBODY, Daemon, Netns, Policy, Proc, SYSTEM_PYTHON, TempDir, exe_name, probe_lines,
    python_copy, run, run_ok,
};
use serde_json::Value;

/// The port the policy keeps on loopback.
const GUARDED: u16 = 11434;
/// A port it does not name.
const FREE: u16 = 11435;
/// The test namespace's own non-loopback addresses (on a veth link).
const HOST_V4: &str = "10.78.0.1";
const HOST_V6: &str = "fd00:78::1";
/// `EADDRNOTAVAIL`.
const REFUSED: i32 = 99;

/// Binds a TCP socket (UDP with a `udp:` prefix) to each `ADDR PORT` pair
/// of its arguments, one at a time (closing each before the next), and
/// prints `pid=PID` then `ADDR PORT ERRNO` per bind (0: bound). Nothing
/// listens: a bind that passes exposes nothing.
const PROBE: &str = r#"import os, socket, sys
print(f"pid={os.getpid()}", flush=True)
args = sys.argv[1:]
for addr, port in zip(args[::2], args[1::2]):
    kind, host = (socket.SOCK_DGRAM, addr[4:]) if addr.startswith("udp:") else (socket.SOCK_STREAM, addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, kind)
    try:
        s.bind((host, int(port)))
        err = 0
    except OSError as e:
        err = e.errno
    finally:
        s.close()
    print(addr, port, err, flush=True)
"#;

/// What one run of [`PROBE`] printed.
struct Binds {
    pid: u32,
    /// `(addr, port) → errno` in argument order.
    results: Vec<(String, u16, i32)>,
}

impl Binds {
    fn errno(&self, addr: &str, port: u16) -> i32 {
        self.results
            .iter()
            .find(|(a, p, _)| a == addr && *p == port)
            .map(|r| r.2)
            .unwrap_or_else(|| panic!("no result for {addr} {port}: {:?}", self.results))
    }
}

/// Runs [`PROBE`] with `python` in `ns` (as `prefix` says, e.g. setpriv).
fn probe(ns: &Netns, prefix: &[&str], python: &Path, binds: &[(&str, u16)]) -> Binds {
    let mut argv: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    argv.push(python.display().to_string());
    argv.extend(["-c".to_owned(), PROBE.to_owned()]);
    for (addr, port) in binds {
        argv.push(addr.to_string());
        argv.push(port.to_string());
    }
    let out = run_ok(ns.cmd(&argv[0]).args(&argv[1..]));
    let (pid, lines) = probe_lines(&out, binds.len());
    let results = lines
        .iter()
        .map(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            let [addr, port, err] = words[..] else {
                panic!("bad probe line {l:?}");
            };
            (addr.to_owned(), port.parse().unwrap(), err.parse().unwrap())
        })
        .collect::<Vec<_>>();
    Binds { pid, results }
}

/// The test namespace with addresses of its own besides loopback.
fn namespace() -> Netns {
    let ns = Netns::new();
    ns.add_addresses(&[&format!("{HOST_V4}/24"), &format!("{HOST_V6}/64")]);
    ns
}

/// The policy: scoped to `ns`, `GUARDED` loopback-only, `bind` more keys
/// of the `[bind]` table.
fn guard(ns: &Netns, mode: &str, bind: &str) -> String {
    Policy::new(ns, mode)
        .catalog(false)
        .extra(&format!("[bind]\nloopback_only = [{GUARDED}]\n{bind}"))
        .text()
}

/// The bind-guard records about process `pid`.
fn reports(daemon: &Daemon, pid: u32) -> Vec<Value> {
    daemon.reports("bind-guard", pid)
}

/// Everything a service could bind that is not loopback, in both families
/// and the IPv4-mapped forms.
const NOT_LOOPBACK: [&str; 6] = [
    "0.0.0.0",
    "::",
    HOST_V4,
    HOST_V6,
    "::ffff:0.0.0.0",
    "::ffff:10.78.0.1",
];

#[test]
fn enforce_refuses_non_loopback_binds_of_a_guarded_port() {
    let ns = namespace();
    let daemon = Daemon::start(&guard(&ns, "enforce", ""));
    let python = Path::new(SYSTEM_PYTHON);

    let mut binds: Vec<(&str, u16)> = NOT_LOOPBACK.iter().map(|a| (*a, GUARDED)).collect();
    // Positive controls: loopback in every form, another port anywhere,
    // and UDP (not judged).
    binds.extend([
        ("127.0.0.1", GUARDED),
        ("127.0.0.2", GUARDED),
        ("::1", GUARDED),
        ("::ffff:127.0.0.1", GUARDED),
        ("0.0.0.0", FREE),
        ("::", FREE),
        (HOST_V4, FREE),
        ("udp:0.0.0.0", GUARDED),
    ]);
    let got = probe(&ns, &[], python, &binds);
    for addr in NOT_LOOPBACK {
        assert_eq!(got.errno(addr, GUARDED), REFUSED, "{addr}");
    }
    for (addr, port) in &binds[NOT_LOOPBACK.len()..] {
        assert_eq!(got.errno(addr, *port), 0, "{addr} {port}");
    }

    // One refusal reported per refused bind, naming the process and what
    // it tried to bind.
    daemon.wait_event("a bind-guard refusal of the last address", |e| {
        e["rule"] == "bind-guard" && e["pid"] == got.pid && e["dst"] == "[::ffff:10.78.0.1]:11434"
    });
    let reported = reports(&daemon, got.pid);
    let mut dsts: Vec<String> = reported
        .iter()
        .map(|e| e["dst"].as_str().unwrap_or_default().to_owned())
        .collect();
    dsts.sort();
    let mut want = vec![
        format!("0.0.0.0:{GUARDED}"),
        format!("[::]:{GUARDED}"),
        format!("{HOST_V4}:{GUARDED}"),
        format!("[{HOST_V6}]:{GUARDED}"),
        format!("[::ffff:0.0.0.0]:{GUARDED}"),
        format!("[::ffff:10.78.0.1]:{GUARDED}"),
    ];
    want.sort();
    assert_eq!(dsts, want, "{reported:#?}");
    for e in &reported {
        assert_eq!(e["verdict"], "deny", "{e}");
        assert_eq!(e["comm"], "python3", "{e}");
        assert_eq!(e["exe_name"], exe_name(python), "{e}");
        assert_eq!(e["uid"], 0, "{e}");
    }
}

#[test]
fn a_service_configured_for_the_wildcard_fails_at_start() {
    let ns = namespace();
    let _daemon = Daemon::start(&guard(&ns, "enforce", ""));
    let port = GUARDED.to_string();
    let serve = |addr: &str| {
        let mut cmd = ns.cmd(SYSTEM_PYTHON);
        cmd.args(["-m", "http.server", "--bind", addr, &port]);
        cmd
    };
    // It exits at once, saying why, instead of listening on the network.
    let out = run(&mut serve("0.0.0.0"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[Errno 99] Cannot assign requested address"),
        "{stderr}"
    );
    // Control: configured for loopback, the same service comes up.
    let _service = Proc::spawn(&mut serve("127.0.0.1"));
    ns.wait_listening(GUARDED);
}

#[test]
fn the_guard_applies_only_in_the_policys_network_namespaces() {
    let ns = namespace();
    let other = namespace();
    let daemon = Daemon::start(&guard(&ns, "enforce", ""));
    let python = Path::new(SYSTEM_PYTHON);

    let outside = probe(
        &other,
        &[],
        python,
        &[("0.0.0.0", GUARDED), ("::", GUARDED)],
    );
    assert_eq!(outside.errno("0.0.0.0", GUARDED), 0);
    assert_eq!(outside.errno("::", GUARDED), 0);
    // Control: the same binds in the scoped namespace are refused.
    let inside = probe(&ns, &[], python, &[("0.0.0.0", GUARDED), ("::", GUARDED)]);
    assert_eq!(inside.errno("0.0.0.0", GUARDED), REFUSED);
    assert_eq!(inside.errno("::", GUARDED), REFUSED);
    daemon.wait_event("the refusal inside", |e| {
        e["rule"] == "bind-guard" && e["pid"] == inside.pid
    });
    assert!(reports(&daemon, outside.pid).is_empty());
}

#[test]
fn exempt_executables_and_users_may_bind_anywhere() {
    let ns = namespace();
    let dir = TempDir::new("bind");
    let allowed = python_copy(&dir, "lw-bind-allowed");
    let daemon = Daemon::start(&guard(
        &ns,
        "enforce",
        &format!(
            "allow_exe = \"{}\"\nallow_uid = [65534]\n",
            allowed.display()
        ),
    ));
    let python = Path::new(SYSTEM_PYTHON);
    let wildcard = [("0.0.0.0", GUARDED), ("::", GUARDED), (HOST_V4, GUARDED)];

    let exempt = probe(&ns, &[], &allowed, &wildcard);
    let nobody = probe(&ns, &AS_NOBODY, python, &wildcard);
    // Control: the system Python as root is no exempt process.
    let refused = probe(&ns, &[], python, &wildcard);
    for (addr, port) in wildcard {
        assert_eq!(exempt.errno(addr, port), 0, "allow_exe {addr}");
        assert_eq!(nobody.errno(addr, port), 0, "allow_uid {addr}");
        assert_eq!(refused.errno(addr, port), REFUSED, "{addr}");
    }
    daemon.wait_event("the refusals of the unexempt python", |e| {
        e["rule"] == "bind-guard" && e["pid"] == refused.pid && e["dst"] == "10.78.0.1:11434"
    });
    assert_eq!(reports(&daemon, refused.pid).len(), wildcard.len());
    assert!(reports(&daemon, exempt.pid).is_empty());
    assert!(reports(&daemon, nobody.pid).is_empty());
}

#[test]
fn audit_reports_the_bind_and_lets_it_happen() {
    let ns = namespace();
    let daemon = Daemon::start(&guard(&ns, "audit", ""));
    let python = Path::new(SYSTEM_PYTHON);

    let got = probe(
        &ns,
        &[],
        python,
        // The loopback bind first: had it been reported, its line would
        // come before the last bind's, which is waited for below.
        &[
            ("127.0.0.1", GUARDED),
            ("0.0.0.0", GUARDED),
            ("::", GUARDED),
        ],
    );
    assert_eq!(got.errno("0.0.0.0", GUARDED), 0);
    assert_eq!(got.errno("::", GUARDED), 0);
    assert_eq!(got.errno("127.0.0.1", GUARDED), 0);
    let ev = daemon.wait_event("a would-deny of [::]", |e| {
        e["rule"] == "bind-guard" && e["pid"] == got.pid && e["dst"] == "[::]:11434"
    });
    assert_eq!(ev["verdict"], "would-deny", "{ev}");
    assert_eq!(ev["comm"], "python3", "{ev}");
    let reported = reports(&daemon, got.pid);
    // The wildcard binds, not the loopback one.
    assert_eq!(reported.len(), 2, "{reported:#?}");
    assert!(reported.iter().all(|e| e["verdict"] == "would-deny"));

    // `status` shows the guard and its links.
    let text = daemon.install().status_text();
    assert!(
        text.contains("guard on ([bind] loopback_only); lw_bind4 attached, lw_bind6 attached"),
        "{text}"
    );
}
