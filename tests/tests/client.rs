//! The client side of provenance, end to end: services that ask loopwarden
//! who connected (`getsockopt(SOL_LOOPWARDEN, LW_ORIGIN)`) through the
//! client libraries, with real clients and real relays.
//!
//! - The aiohttp gateway example (`contrib/python/examples`) serves a
//!   direct `curl` and refuses what socat (named by the catalog) or a
//!   Python forwarder (named by nothing, refused for facing the network)
//!   relays to it, with an answer that names nothing of the host and a
//!   log line that names the relay; on a port loopwarden does not protect it fails closed
//!   (unknown: 403), and with `--unknown pass` the same relay passes.
//! - A Python server using `contrib/python/loopwarden.py` and a Rust one
//!   using `loopwarden-client` (`lw-origin-server`) report the same origins
//!   for the same clients: who connected, the verdict, the relayed party,
//!   and nothing for an unprotected port. The Python module's unit tests
//!   (`contrib/python/test_loopwarden.py`) run here too.
//! - Their query clients (the module's `who`, `who_cookie`, `conns`, and
//!   `loopwarden-client`'s `Query`) ask the real daemon.
//!
//! - Where loopwarden's getsockopt program does not run (attached only in
//!   another cgroup), the gateway answers 503, or passes with
//!   `--not-answering pass`.

use std::path::Path;

use loopwarden_tests::{
    Daemon, LOCAL_ADDR, Netns, PROTECTED, Policy, Proc, REMOTE_ADDR, SYSTEM_PYTHON, TempDir,
    TestCgroup, Topology, UNPROTECTED,
    client::{
        Fetched, contrib_python, fetch, gateway, gateway_on, py_origin_server, python_unit_tests,
        rs_origin_server,
    },
    exe_id, exe_name,
    provenance::Holder,
    rule, run_ok, spawn_forwarder, wait_for,
};
use serde_json::Value;

/// socat relaying to the protected port.
const SOCAT_PORT: u16 = 9001;
/// socat relaying to the unprotected port.
const SOCAT_OPEN_PORT: u16 = 9002;
/// socat relaying to the protected port over `::1`.
const SOCAT6_PORT: u16 = 9003;
/// The Python forwarder, on the local link address.
const FORWARDER_PORT: u16 = 9006;
/// A gateway with the default (unknown connections refused), on an
/// unprotected port.
const STRICT_PORT: u16 = 8082;

const CHAT: &str = r#"{"model":"echo-1","messages":[{"role":"user","content":"hello"}]}"#;

fn local_url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// The gateway's error of a refused request: (type, message).
fn refusal(f: &Fetched) -> (&str, &str) {
    let err = &f.body["error"];
    (
        err["type"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {f:?}")),
        err["message"].as_str().unwrap_or_default(),
    )
}

#[test]
fn the_aiohttp_gateway_refuses_relayed_requests() {
    let topo = Topology::new();
    let _daemon = Daemon::start(
        &Policy::new(&topo.local, "audit")
            .extra(&rule("flagged", "audit", "comm", FLAGGED_COMM))
            .text(),
    );
    let logs = TempDir::new("client-gateway-log");
    let log = logs.path().join("gateway.log");
    let log_arg = log.to_str().expect("utf-8");
    let _gateway = gateway(&topo.local, PROTECTED, &["--log", log_arg]);
    let _open_gateway = gateway(&topo.local, UNPROTECTED, &["--unknown", "pass"]);
    let strict_log = logs.path().join("strict.log");
    let strict_log_arg = strict_log.to_str().expect("utf-8");
    let _strict_gateway = gateway(&topo.local, STRICT_PORT, &["--log", strict_log_arg]);

    // A local client connecting by itself gets its completion.
    let direct = fetch(
        &topo.local,
        &local_url(PROTECTED, "/v1/chat/completions"),
        Some(CHAT),
    );
    assert_eq!(direct.status, 200, "{direct:?}");
    assert_eq!(
        direct.body["choices"][0]["message"]["content"], "echo: hello",
        "{direct:?}"
    );

    // socat (the catalog's) relaying to it: refused, with an answer that
    // names nothing of this host (the client may be the remote party),
    // and a log line that names socat.
    let _socat = topo
        .local
        .socat_relay(SOCAT_PORT, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    let relayed = fetch(
        &topo.local,
        &local_url(SOCAT_PORT, "/v1/chat/completions"),
        Some(CHAT),
    );
    assert_eq!(relayed.status, 403, "{relayed:?}");
    let (kind, message) = refusal(&relayed);
    assert_eq!(kind, "loopwarden_relayed");
    assert_names_nothing(message);
    let logged = gateway_log_line(&log, "refused a request relayed to");
    assert!(
        logged.contains(&format!(
            "refused a request relayed to 127.0.0.1:{PROTECTED} by 'socat' (pid "
        )),
        "{logged}"
    );
    assert!(logged.contains("would-deny"), "{logged}");
    // And which rule judged it (the catalog's socat, or the relay verdict).
    assert!(
        logged.contains(", rule #") || logged.contains(", the relay verdict)"),
        "{logged}"
    );

    // The same over IPv6: a gateway on [::1] serves a direct client there
    // and refuses socat relaying to it, naming its [::1] address.
    let log6 = logs.path().join("gateway6.log");
    let log6_arg = log6.to_str().expect("utf-8");
    let _gateway6 = gateway_on(&topo.local, "::1", PROTECTED, &["--log", log6_arg]);
    let direct6 = fetch(
        &topo.local,
        &format!("http://[::1]:{PROTECTED}/v1/models"),
        None,
    );
    assert_eq!(direct6.status, 200, "{direct6:?}");
    let _socat6 = topo
        .local
        .socat_relay(SOCAT6_PORT, &format!("TCP6:[::1]:{PROTECTED}"), None);
    let relayed6 = fetch(&topo.local, &local_url(SOCAT6_PORT, "/v1/models"), None);
    assert_eq!(relayed6.status, 403, "{relayed6:?}");
    let (kind, message) = refusal(&relayed6);
    assert_eq!(kind, "loopwarden_relayed");
    assert_names_nothing(message);
    let logged = gateway_log_line(&log6, "refused a request relayed to");
    assert!(
        logged.contains(&format!(
            "refused a request relayed to [::1]:{PROTECTED} by 'socat' (pid "
        )),
        "{logged}"
    );

    // A forwarder no catalog names, carrying a remote client's request:
    // refused, naming the forwarder and the remote party.
    let dir = TempDir::new("client-forwarder");
    let (forwarder, _) = spawn_forwarder(&topo.local, &dir, LOCAL_ADDR, FORWARDER_PORT);
    let remote = fetch(
        &topo.remote,
        &format!("http://{LOCAL_ADDR}:{FORWARDER_PORT}/v1/models"),
        None,
    );
    assert_eq!(remote.status, 403, "{remote:?}");
    let (kind, message) = refusal(&remote);
    assert_eq!(kind, "loopwarden_relayed");
    assert_names_nothing(message);
    assert!(!message.contains(REMOTE_ADDR), "{message}");
    let python = exe_name(Path::new(SYSTEM_PYTHON));
    let logged = gateway_log_line(&log, &format!("by '{python}' (pid {})", forwarder.pid()));
    assert!(
        logged.contains(&format!(
            "by '{python}' (pid {}) for {REMOTE_ADDR}:",
            forwarder.pid()
        )),
        "{logged}"
    );
    assert!(logged.contains("(accepted)"), "{logged}");

    // A local client no relay evidence names, but a rule of the operator's
    // flags (an audit rule on its comm): refused as flagged, naming the
    // client, the verdict and the rule. The same client under another comm
    // is served.
    let (status, _) = py_fetch(&topo.local, "lw-other", PROTECTED);
    assert_eq!(status, 200);
    let (status, body) = py_fetch(&topo.local, FLAGGED_COMM, PROTECTED);
    assert_eq!(status, 403, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(body["error"]["type"], "loopwarden_flagged", "{body}");
    assert_names_nothing(message);
    let python = exe_name(Path::new(SYSTEM_PYTHON));
    let logged = gateway_log_line(&log, "flagged that connect");
    assert!(
        logged.contains(&format!(
            "refused a request on the connection to 127.0.0.1:{PROTECTED} made by '{python}' (pid "
        )),
        "{logged}"
    );
    assert!(logged.contains("(verdict audit, rule #"), "{logged}");

    // The same kind of relay to the same gateway on a port loopwarden does
    // not protect, run with `--unknown pass`: unknown, passed.
    let _open_socat = topo.local.socat_relay(
        SOCAT_OPEN_PORT,
        &format!("TCP:127.0.0.1:{UNPROTECTED}"),
        None,
    );
    let open = fetch(&topo.local, &local_url(SOCAT_OPEN_PORT, "/v1/models"), None);
    assert_eq!(open.status, 200, "{open:?}");
    assert_eq!(open.body["data"][0]["id"], "echo-1", "{open:?}");

    // The default gateway fails closed there, even for a direct client
    // (which the `--unknown pass` gateway on that port served), and tells
    // the operator (its log), not the client, what to check.
    let direct_open = fetch(&topo.local, &local_url(UNPROTECTED, "/v1/models"), None);
    assert_eq!(direct_open.status, 200, "{direct_open:?}");
    let strict = fetch(&topo.local, &local_url(STRICT_PORT, "/v1/models"), None);
    assert_eq!(strict.status, 403, "{strict:?}");
    let (kind, message) = refusal(&strict);
    assert_eq!(kind, "loopwarden_unknown");
    assert_names_nothing(message);
    for setup in ["--unknown pass", "[provenance]", "[protect]"] {
        assert!(!message.contains(setup), "{message}");
    }
    let logged = gateway_log_line(&strict_log, "knows nothing of this connection");
    assert!(logged.contains("--unknown pass"), "{logged}");
}

/// Asserts that a refusal's message names nothing of the host: no
/// process, pid, address or port (it goes to the client, who may be the
/// remote party behind a relay).
fn assert_names_nothing(message: &str) {
    assert!(message.starts_with("refused: "), "{message}");
    for leak in [
        "pid",
        "socat",
        "python",
        "127.0.0.1",
        "::1",
        "verdict",
        "rule #",
    ] {
        assert!(
            !message.contains(leak),
            "the answer names {leak:?}: {message}"
        );
    }
    assert!(
        !message.chars().any(|c| c.is_ascii_digit()),
        "the answer names a number: {message}"
    );
}

/// The gateway log's line that contains `what` (waited for: the log is
/// written as the request is refused).
fn gateway_log_line(log: &Path, what: &str) -> String {
    wait_for(
        &format!("the gateway's log line with {what:?}"),
        std::time::Duration::from_secs(10),
        || {
            std::fs::read_to_string(log)
                .ok()?
                .lines()
                .find(|l| l.contains(what))
                .map(str::to_owned)
        },
    )
}

/// The comm an audit rule of the gateway test flags.
const FLAGGED_COMM: &str = "lw-flagged";

/// `GET /v1/models` on 127.0.0.1:`port` from a Python client whose comm is
/// `comm`: the HTTP status and the JSON body.
fn py_fetch(ns: &Netns, comm: &str, port: u16) -> (u16, Value) {
    const SCRIPT: &str = r#"import json, sys, urllib.error, urllib.request
open("/proc/self/comm", "w").write(sys.argv[1])
try:
    r = urllib.request.urlopen("http://127.0.0.1:%s/v1/models" % sys.argv[2], timeout=10)
    status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(json.dumps({"status": status, "body": json.loads(body)}))
"#;
    let out = run_ok(
        ns.cmd(SYSTEM_PYTHON)
            .args(["-c", SCRIPT, comm, &port.to_string()]),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("the client's JSON");
    let status = v["status"].as_u64().and_then(|s| u16::try_from(s).ok());
    (status.expect("an HTTP status"), v["body"].clone())
}

/// The origin a server reported for `f`'s request.
fn origin(f: &Fetched) -> &Value {
    assert_eq!(f.status, 200, "{f:?}");
    f.body
        .get("origin")
        .unwrap_or_else(|| panic!("the server could not tell: {f:?}"))
}

/// A server started by `start(ns, port)` reports, for its connections, what
/// loopwarden bound to them: a direct curl, socat (the catalog's), a
/// Python forwarder carrying a remote client (the relay verdict), and
/// nothing on a port loopwarden does not protect.
fn origins_are_reported(start: impl Fn(&Netns, u16) -> Proc) {
    let topo = Topology::new();
    let daemon = Daemon::start(&Policy::new(&topo.local, "audit").text());
    let _protected = start(&topo.local, PROTECTED);
    let _unprotected = start(&topo.local, UNPROTECTED);

    let direct = fetch(&topo.local, &local_url(PROTECTED, "/"), None);
    let o = origin(&direct);
    assert_eq!(o["pid"], direct.pid, "{o:#}");
    assert_eq!(o["comm"], "curl", "{o:#}");
    assert_eq!(o["exe_name"], "curl", "{o:#}");
    assert_eq!(o["uid"], 0, "{o:#}");
    // curl executed its own program.
    assert_eq!(o["forked"], false, "{o:#}");
    assert_eq!(o["verdict"], "allow", "{o:#}");
    assert_eq!(o["rule"], Value::Null, "{o:#}");
    assert_eq!(o["via"], Value::Null, "{o:#}");
    assert_eq!(o["server"], format!("127.0.0.1:{PROTECTED}"), "{o:#}");
    assert!(
        o["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{o:#}"
    );
    assert_eq!(o["direct"], true, "{o:#}");
    // The file it ran, as stat() names it.
    assert_eq!(o["exe"], exe_id(Path::new("/usr/bin/curl")), "{o:#}");

    // socat forks per connection: its child connects.
    let socat = topo
        .local
        .socat_relay(SOCAT_PORT, &format!("TCP:127.0.0.1:{PROTECTED}"), None);
    let relayed = fetch(&topo.local, &local_url(SOCAT_PORT, "/"), None);
    let o = origin(&relayed);
    assert_eq!(o["comm"], "socat", "{o:#}");
    assert_eq!(o["exe_name"], "socat", "{o:#}");
    assert_eq!(o["ppid"], socat.pid(), "{o:#}");
    // The child runs its parent's program: the parent's command line
    // speaks for it.
    assert_eq!(o["forked"], true, "{o:#}");
    assert_eq!(o["verdict"], "would-deny", "{o:#}");
    assert!(o["rule"].is_u64(), "{o:#}");
    assert_eq!(o["direct"], false, "{o:#}");
    // The daemon's audit record of that connect names the same process.
    let ev = daemon.wait_event("would-deny by socat", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat"
    });
    assert_eq!(ev["pid"], o["pid"], "{ev:#}");
    assert_eq!(ev["rule"], "catalog:socat", "{ev:#}");
    assert_eq!(ev["exe_id"], o["exe"], "{ev:#}");

    // The forwarder is threaded: the process is the one started.
    let dir = TempDir::new("client-forwarder");
    let (forwarder, _) = spawn_forwarder(&topo.local, &dir, LOCAL_ADDR, FORWARDER_PORT);
    let remote = fetch(
        &topo.remote,
        &format!("http://{LOCAL_ADDR}:{FORWARDER_PORT}/"),
        None,
    );
    let o = origin(&remote);
    assert_eq!(o["pid"], forwarder.pid(), "{o:#}");
    // Its start, which tells it from a later process with its pid: the
    // start /proc gives, in clock ticks.
    let start_ns = o["start_boottime_ns"].as_u64().expect("start_boottime_ns");
    assert_eq!(
        start_ns / (1_000_000_000 / clock_ticks()),
        start_ticks(forwarder.pid()),
        "{o:#}"
    );
    assert_eq!(
        o["exe_name"],
        exe_name(Path::new(SYSTEM_PYTHON)).as_str(),
        "{o:#}"
    );
    assert_eq!(o["verdict"], "audit", "{o:#}");
    assert_eq!(o["rule"], "relay", "{o:#}");
    assert!(
        o["via"]
            .as_str()
            .is_some_and(|v| v.starts_with(&format!("{REMOTE_ADDR}:"))),
        "{o:#}"
    );
    assert_eq!(o["via_how"], "accepted", "{o:#}");
    assert_eq!(o["direct"], false, "{o:#}");

    // A port loopwarden does not protect: known to the server, unknown to
    // loopwarden.
    let open = fetch(&topo.local, &local_url(UNPROTECTED, "/"), None);
    assert_eq!(origin(&open), &Value::Null, "{open:?}");
}

/// `sysconf(_SC_CLK_TCK)`.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("a clock tick rate")
}

/// Process `pid`'s start, in clock ticks since boot (`/proc/PID/stat`'s
/// 22nd field).
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at the 3rd.
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    after
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|t| t.parse().ok())
        .expect("the start time")
}

#[test]
fn the_python_module_reports_origins() {
    origins_are_reported(py_origin_server);
}

/// The module's own tests: hand-built records and a fake query socket.
#[test]
fn the_python_module_passes_its_unit_tests() {
    python_unit_tests();
}

#[test]
fn the_rust_client_reports_origins() {
    let bin = env!("CARGO_BIN_EXE_lw-origin-server");
    origins_are_reported(|ns, port| rs_origin_server(ns, bin, port));
}

/// The Python module's query calls against the daemon: `PY_QUERY MODULE_DIR
/// SOCKET PEER LOCAL COOKIE UNKNOWN_PEER UNKNOWN_LOCAL` prints what `who`,
/// `who_cookie`, `conns` and `who` of an unknown connection answered, as
/// `lw-query` does with the Rust client.
const PY_QUERY: &str = r#"import json, sys
sys.path.insert(0, sys.argv[1])
import loopwarden
path, peer, local, cookie, unknown_peer, unknown_local = sys.argv[2:8]
print(json.dumps({
    "who": loopwarden.who(peer, local, path=path),
    "who_cookie": loopwarden.who_cookie(int(cookie), path=path),
    "conns": loopwarden.conns(path=path),
    "unknown": loopwarden.who(unknown_peer, unknown_local, path=path),
}))
"#;

/// The query clients, the Python module's and `loopwarden-client`'s
/// `Query`, asking the real daemon from the service's namespace: a tagged
/// connection by its two ends and by cookie, `conns`, and a connection to
/// an unprotected port, unknown.
#[test]
fn the_query_clients_ask_the_real_daemon() {
    let ns = Netns::new();
    let daemon = Daemon::start(&Policy::new(&ns, "audit").text());
    let socket = daemon.install().run_dir().join("query.sock");
    let holder = Holder::start(&ns, &[PROTECTED, UNPROTECTED], None);
    let client = holder.hold_client(&ns, "127.0.0.1", PROTECTED);
    let tagged = holder.wait_accepted(1);
    let _plain_client = holder.hold_client(&ns, "127.0.0.1", UNPROTECTED);
    let plain = holder.wait_accepted(2);
    assert_eq!(tagged["status"], 1, "{tagged}");

    let text = |v: &Value| v.as_str().expect("an address").to_owned();
    let args = [
        socket.display().to_string(),
        text(&tagged["peer"]),
        text(&tagged["local"]),
        tagged["cookie"].to_string(),
        text(&plain["peer"]),
        text(&plain["local"]),
    ];
    let module_dir = contrib_python().display().to_string();
    let python = run_ok(
        ns.cmd(SYSTEM_PYTHON)
            .args(["-c", PY_QUERY, &module_dir])
            .args(&args),
    );
    let rust = run_ok(ns.cmd(env!("CARGO_BIN_EXE_lw-query")).args(&args));
    for (name, out) in [("python", python), ("rust", rust)] {
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {out:?}"));
        for key in ["who", "who_cookie"] {
            assert_eq!(v[key]["pid"], client.pid(), "{name} {key}: {v:#}");
            assert_eq!(v[key]["client"], tagged["peer"], "{name} {key}: {v:#}");
            assert_eq!(v[key]["verdict"], "allow", "{name} {key}: {v:#}");
        }
        let conns = v["conns"].as_array().expect("a list");
        assert_eq!(conns.len(), 1, "{name}: {v:#}");
        assert_eq!(conns[0]["pid"], client.pid(), "{name}: {v:#}");
        assert_eq!(v["unknown"], Value::Null, "{name}: {v:#}");
    }
}

/// Where loopwarden's getsockopt program does not run (here: the policy
/// attaches it only in a cgroup the gateway is not in), the gateway cannot
/// tell who connected: it answers 503 by default, and passes the request
/// with `--not-answering pass`. (Under a daemon that answers everywhere
/// the same gateway serves a direct client: the first test.)
#[test]
fn the_gateway_answers_503_where_loopwarden_does_not_answer() {
    let ns = Netns::new();
    let cgroup = TestCgroup::new(&format!("lwt-gateway-{}", std::process::id()));
    let _daemon = Daemon::start(&format!(
        "{}\n[provenance]\ngetsockopt_cgroups = [\"{}\"]\n",
        Policy::new(&ns, "audit")
            .ports(&[PROTECTED, UNPROTECTED])
            .text(),
        cgroup.name
    ));
    let logs = TempDir::new("client-gateway-503");
    let log = logs.path().join("gateway.log");
    let _strict = gateway(&ns, PROTECTED, &["--log", log.to_str().expect("utf-8")]);
    let _lenient = gateway(&ns, UNPROTECTED, &["--not-answering", "pass"]);
    let strict = fetch(&ns, &local_url(PROTECTED, "/v1/models"), None);
    assert_eq!(strict.status, 503, "{strict:?}");
    let (kind, message) = refusal(&strict);
    assert_eq!(kind, "loopwarden_not_answering");
    // What to set up is the operator's to read (the log), not the client's.
    assert!(!message.contains("getsockopt"), "{message}");
    let logged = gateway_log_line(&log, "is not answering");
    assert!(logged.contains("getsockopt_cgroups"), "{logged}");
    let lenient = fetch(&ns, &local_url(UNPROTECTED, "/v1/models"), None);
    assert_eq!(lenient.status, 200, "{lenient:?}");
    assert_eq!(lenient.body["data"][0]["id"], "echo-1", "{lenient:?}");
}
