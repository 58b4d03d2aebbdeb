//! The egress guard (SSRF after DNS), end to end: a Python client that
//! connects by hostname, the names resolved through an `/etc/hosts`
//! bind-mounted in a private mount namespace to a private address, the
//! cloud metadata address and allowed addresses, all inside the test's
//! network namespace. The client an `[[egress]]` rule names (a copy of
//! Python at its own path) is refused at connect() in enforce mode and
//! reported in audit mode; the system Python, which no rule names, reaches
//! the same addresses.

use std::{path::Path, process::Command};

use loopwarden_tests::{
    Daemon, Netns, Policy, Proc, SYSTEM_PYTHON, TempDir, counter, loopwarden_bin, probe_lines,
    python_copy, run_ok, wait_for,
};
use serde_json::Value;

/// The port the servers listen on (not a protected port: the rules'
/// judgement passes it, only the egress guard speaks).
const PORT: u16 = 8090;
/// `EPERM`: the policy's deny_errno (a closed port would say ECONNREFUSED).
const REFUSED: i32 = 1;

/// Names the client resolves, and the addresses `/etc/hosts` gives them.
const HOSTS: &str = "10.79.0.2 internal.lw-test\n\
                     fd79::2 internal6.lw-test\n\
                     169.254.169.254 metadata.lw-test\n\
                     10.20.0.5 allowed.lw-test\n\
                     169.254.7.7 linklocal.lw-test\n";

/// Connects to `HOST PORT` for each host of its arguments (by name: it
/// resolves them with getaddrinfo, and uses a socket of the family it
/// answers) and prints `pid=PID`, then `HOST ERRNO` per connect (0: it
/// connected).
const CLIENT: &str = r#"import os, socket, sys
print(f"pid={os.getpid()}", flush=True)
port = int(sys.argv[1])
for host in sys.argv[2:]:
    info = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    family = info[0][0]
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(info[0][4])
        err = 0
    except OSError as e:
        err = e.errno
    finally:
        s.close()
    print(host, err, flush=True)
"#;

/// The test namespace: the addresses on a veth pair with both ends inside,
/// a server listening on every one of them, and the hosts file.
struct Site {
    ns: Netns,
    dir: TempDir,
    _server: Proc,
}

impl Site {
    fn new() -> Self {
        let ns = Netns::new();
        ns.add_addresses(&[
            "10.79.0.2/24",
            "169.254.169.254/32",
            "10.20.0.5/32",
            "169.254.7.7/32",
            "fd79::2/64",
        ]);
        let server = ns.spawn(
            SYSTEM_PYTHON,
            &[
                "-c",
                &format!(
                    "import socket, time\ns = socket.socket(socket.AF_INET6)\n\
                     s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                     s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
                     s.bind(('::', {PORT}))\ns.listen(128)\n\
                     while True:\n    c, _ = s.accept()\n    c.close()\n"
                ),
            ],
        );
        ns.wait_listening(PORT);
        let dir = TempDir::new("egress");
        std::fs::write(dir.path().join("hosts"), HOSTS).expect("writing the hosts file");
        Self {
            ns,
            dir,
            _server: server,
        }
    }

    /// Runs [`CLIENT`] with `python` in the namespace, its `/etc/hosts`
    /// the test's (bind-mounted in a mount namespace of its own).
    fn connect(&self, python: &Path, hosts: &[&str]) -> Connects {
        let hosts_file = self.dir.path().join("hosts");
        let mut cmd = self.ns.cmd("unshare");
        cmd.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(&hosts_file)
        .arg(python)
        .args(["-c", CLIENT, &PORT.to_string()])
        .args(hosts);
        let (pid, lines) = probe_lines(&run_ok(&mut cmd), hosts.len());
        let results: Vec<(String, i32)> = lines
            .iter()
            .map(|l| {
                let (host, err) = l.split_once(' ').expect("HOST ERRNO");
                (host.to_owned(), err.parse().expect("errno"))
            })
            .collect();
        Connects { pid, results }
    }
}

/// What one run of [`CLIENT`] printed.
struct Connects {
    pid: u32,
    results: Vec<(String, i32)>,
}

impl Connects {
    fn errno(&self, host: &str) -> i32 {
        self.results
            .iter()
            .find(|(h, _)| h == host)
            .map(|r| r.1)
            .unwrap_or_else(|| panic!("no result for {host}: {:?}", self.results))
    }
}

/// The policy: scoped to the site's namespace; one egress rule naming
/// `client`, denying metadata, private, link-local and loopback ranges but
/// allowing 10.20.0.0/16 and all of 169.254.0.0/16 (which cannot re-open
/// metadata).
fn guard(site: &Site, mode: &str, client: &Path) -> String {
    Policy::new(&site.ns, mode)
        .catalog(false)
        .extra(&format!(
            "[[egress]]\nname = \"agent-fetch\"\naction = \"deny\"\nexe = \"{}\"\n\
             deny = [\"metadata\", \"private\", \"link-local\", \"loopback\"]\n\
             allow = [\"10.20.0.0/16\", \"169.254.0.0/16\"]\n",
            client.display()
        ))
        .text()
        .replacen("mode = ", "deny_errno = \"EPERM\"\nmode = ", 1)
}

/// The egress guard's records about process `pid`.
fn reports(daemon: &Daemon, pid: u32) -> Vec<Value> {
    daemon.reports("egress:agent-fetch", pid)
}

const ALL: [&str; 9] = [
    "internal.lw-test",
    "internal6.lw-test",
    "metadata.lw-test",
    "allowed.lw-test",
    "linklocal.lw-test",
    "::ffff:10.79.0.2",
    "127.0.0.1",
    "0.0.0.0",
    "::",
];

/// What the named client is refused (the others it reaches).
const REFUSED_HOSTS: [&str; 7] = [
    "internal.lw-test",
    "internal6.lw-test",
    "metadata.lw-test",
    "::ffff:10.79.0.2",
    "127.0.0.1",
    // Where the kernel connects them: 127.0.0.1 and ::1.
    "0.0.0.0",
    "::",
];

#[test]
fn enforce_refuses_the_named_service_after_dns_and_not_others() {
    let site = Site::new();
    let client = python_copy(&site.dir, "lw-egress-agent");
    let daemon = Daemon::start(&guard(&site, "enforce", &client));

    let named = site.connect(&client, &ALL);
    for host in REFUSED_HOSTS {
        assert_eq!(named.errno(host), REFUSED, "{host}");
    }
    // Allowed ranges stay reachable; metadata inside one does not (above).
    assert_eq!(named.errno("allowed.lw-test"), 0, "allowed");
    assert_eq!(named.errno("linklocal.lw-test"), 0, "allowed link-local");

    // Positive control: the system Python, which no rule names, reaches
    // every one of them.
    let other = site.connect(Path::new(SYSTEM_PYTHON), &ALL);
    for host in ALL {
        assert_eq!(other.errno(host), 0, "{host}");
    }

    daemon.wait_event("the refusal of the last address", |e| {
        e["rule"] == "egress:agent-fetch" && e["pid"] == named.pid && e["dst"] == "[::]:8090"
    });
    let reported = reports(&daemon, named.pid);
    let mut dsts: Vec<&str> = reported
        .iter()
        .map(|e| e["dst"].as_str().unwrap_or_default())
        .collect();
    dsts.sort();
    // As the process gave them (0.0.0.0 and :: too).
    let mut want = [
        "10.79.0.2:8090",
        "[fd79::2]:8090",
        "169.254.169.254:8090",
        "[::ffff:10.79.0.2]:8090",
        "127.0.0.1:8090",
        "0.0.0.0:8090",
        "[::]:8090",
    ];
    want.sort();
    assert_eq!(dsts, want, "{reported:#?}");
    for e in &reported {
        assert_eq!(e["verdict"], "deny", "{e}");
    }
    assert!(reports(&daemon, other.pid).is_empty());
    // Counted as refused connects, as a rule's refusals are (metrics'
    // `loopwarden_connects_denied_total`): nothing else here refuses.
    let status = daemon.install().status_json();
    assert_eq!(counter(&status, "denied"), want.len() as u64, "{status:#}");
}

#[test]
fn audit_reports_would_deny_and_lets_the_connect_through() {
    let site = Site::new();
    let client = python_copy(&site.dir, "lw-egress-agent");
    let config = guard(&site, "audit", &client);
    let daemon = Daemon::start(&config);

    let named = site.connect(&client, &ALL);
    for host in ALL {
        assert_eq!(named.errno(host), 0, "{host}");
    }
    let ev = daemon.wait_event("a would-deny of the metadata address", |e| {
        e["rule"] == "egress:agent-fetch"
            && e["pid"] == named.pid
            && e["dst"] == "169.254.169.254:8090"
    });
    assert_eq!(ev["verdict"], "would-deny", "{ev}");
    assert_eq!(ev["comm"], "lw-egress-agent", "{ev}");
    // The metadata address is the third of them: the rest may come a drain
    // tick (100 ms) later.
    let reported = wait_for(
        "a would-deny of each refused host",
        std::time::Duration::from_secs(5),
        || {
            let reported = reports(&daemon, named.pid);
            (reported.len() >= REFUSED_HOSTS.len()).then_some(reported)
        },
    );
    assert_eq!(reported.len(), REFUSED_HOSTS.len(), "{reported:#?}");
    assert!(reported.iter().all(|e| e["verdict"] == "would-deny"));

    // check-config lists the rule, whom it names, its lists and prefixes.
    let out = run_ok(
        Command::new(loopwarden_bin())
            .arg("check-config")
            .arg(daemon.config_path()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("egress:agent-fetch  deny"), "{text}");
    assert!(
        text.contains("deny:  metadata, private, link-local"),
        "{text}"
    );
    assert!(
        text.contains("allow: 10.20.0.0/16, 169.254.0.0/16"),
        "{text}"
    );

    // `status` shows the guard of the policy in force.
    let text = daemon.install().status_text();
    assert!(text.contains("guard on: 1 [[egress]] rule(s)"), "{text}");
}

#[test]
fn the_guard_applies_only_in_the_policys_network_namespaces() {
    let site = Site::new();
    let outside = Site::new();
    let client = python_copy(&site.dir, "lw-egress-agent");
    let daemon = Daemon::start(&guard(&site, "enforce", &client));

    let there = outside.connect(&client, &["internal.lw-test", "metadata.lw-test"]);
    assert_eq!(there.errno("internal.lw-test"), 0);
    assert_eq!(there.errno("metadata.lw-test"), 0);
    // Control: inside the policy's namespace, the same client is refused.
    let here = site.connect(&client, &["internal.lw-test"]);
    assert_eq!(here.errno("internal.lw-test"), REFUSED);
    daemon.wait_event("the refusal inside", |e| {
        e["rule"] == "egress:agent-fetch" && e["pid"] == here.pid
    });
    assert!(reports(&daemon, there.pid).is_empty());
}

#[test]
fn an_audit_rule_reports_in_enforce_mode_and_a_deny_rule_still_refuses() {
    let site = Site::new();
    let client = python_copy(&site.dir, "lw-egress-agent");
    let watched = python_copy(&site.dir, "lw-egress-watch");
    let config = format!(
        "{}\n[[egress]]\nname = \"watch\"\naction = \"audit\"\nexe = \"{}\"\ndeny = \"private\"\n",
        guard(&site, "enforce", &client),
        watched.display()
    );
    let daemon = Daemon::start(&config);

    // The audit rule's client connects, reported as audited; metadata,
    // which every egress rule blocks, is audited too, not refused.
    let audited = site.connect(
        &watched,
        &["internal.lw-test", "metadata.lw-test", "allowed.lw-test"],
    );
    assert_eq!(audited.errno("internal.lw-test"), 0);
    assert_eq!(audited.errno("metadata.lw-test"), 0);
    assert_eq!(audited.errno("allowed.lw-test"), 0);
    daemon.wait_event("the audit of the metadata address", |e| {
        e["rule"] == "egress:watch" && e["pid"] == audited.pid && e["dst"] == "169.254.169.254:8090"
    });
    let reported = daemon.reports("egress:watch", audited.pid);
    // 10.20.0.5 is private and this rule allows nothing.
    assert_eq!(reported.len(), 3, "{reported:#?}");
    assert!(
        reported.iter().all(|e| e["verdict"] == "audit"),
        "{reported:#?}"
    );

    // Control: the deny rule's client is refused in the same policy.
    let denied = site.connect(&client, &["internal.lw-test"]);
    assert_eq!(denied.errno("internal.lw-test"), REFUSED);
}
