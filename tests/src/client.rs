//! Harness for the client tests (`tests/tests/client.rs`): the services
//! that ask loopwarden who connected (the aiohttp gateway example, a
//! Python and a Rust origin server) and a `curl` that reports its own pid
//! and the answer's body.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

use crate::{Netns, Proc, SYSTEM_PYTHON, run};

/// `contrib/python`: `loopwarden.py` and its examples.
pub fn contrib_python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/python")
}

/// Starts `contrib/python/examples/aiohttp_gateway.py` in `ns` on
/// 127.0.0.1:`port` (system python: `python3-aiohttp` is a Debian package),
/// with more gateway arguments in `args`.
pub fn gateway(ns: &Netns, port: u16, args: &[&str]) -> Proc {
    gateway_on(ns, "127.0.0.1", port, args)
}

/// [`gateway`] listening on `host` (`127.0.0.1`, `::1`); ready once
/// `host`:`port` has a listener (whatever else listens on the port).
pub fn gateway_on(ns: &Netns, host: &str, port: u16, args: &[&str]) -> Proc {
    let script = contrib_python().join("examples/aiohttp_gateway.py");
    let port_arg = port.to_string();
    // -B: no __pycache__ in the source tree.
    let mut all = vec![
        "-B",
        script.to_str().expect("utf-8 path"),
        "--host",
        host,
        "--port",
        &port_arg,
    ];
    all.extend_from_slice(args);
    let proc = ns.spawn(SYSTEM_PYTHON, &all);
    let ip: std::net::IpAddr = host.parse().expect("an IP address");
    ns.wait_listening_at(std::net::SocketAddr::new(ip, port));
    proc
}

/// An HTTP server in Python that answers every request with what
/// `loopwarden.origin()` says of its connection, as JSON shaped like
/// `lw-origin-server`'s: `PY_ORIGIN_SERVER MODULE_DIR ADDR PORT`.
pub const PY_ORIGIN_SERVER: &str = r#"import json, socket, sys, threading
sys.path.insert(0, sys.argv[1])
import loopwarden
def describe(o):
    return {"pid": o.pid, "tid": o.tid, "ppid": o.ppid, "forked": o.forked, "uid": o.uid, "gid": o.gid,
            "comm": o.comm, "exe_name": o.exe_name, "script": o.script,
            "exe": "%d:%d:%d" % o.exe, "start_boottime_ns": o.start_boottime_ns,
            "verdict": o.verdict, "rule": o.rule,
            "via": str(o.via) if o.via else None, "via_how": o.via.how if o.via else None,
            "client": "%s:%d" % o.client, "server": "%s:%d" % o.server,
            "direct": o.is_direct}
def serve(c):
    try:
        o = loopwarden.origin(c)
        line = json.dumps({"origin": describe(o) if o else None})
    except Exception as e:
        line = json.dumps({"error": "%s: %s" % (type(e).__name__, e)})
    print(line, flush=True)
    c.settimeout(5)
    f = c.makefile("rb")
    while f.readline() not in (b"\r\n", b""): pass
    body = (line + "\n").encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    c.close()
l = socket.create_server((sys.argv[2], int(sys.argv[3])))
while True: threading.Thread(target=serve, args=(l.accept()[0],), daemon=True).start()
"#;

/// Starts [`PY_ORIGIN_SERVER`] in `ns` on 127.0.0.1:`port`.
pub fn py_origin_server(ns: &Netns, port: u16) -> Proc {
    let module_dir = contrib_python();
    let proc = ns.spawn(
        SYSTEM_PYTHON,
        &[
            "-B",
            "-c",
            PY_ORIGIN_SERVER,
            module_dir.to_str().expect("utf-8 path"),
            "127.0.0.1",
            &port.to_string(),
        ],
    );
    ns.wait_listening(port);
    proc
}

/// Runs `contrib/python/test_loopwarden.py` (the module's unit tests: no
/// kernel, no daemon); panics with its report if one fails.
pub fn python_unit_tests() {
    let out = run(Command::new(SYSTEM_PYTHON)
        .args(["-B", "-m", "unittest", "-v", "test_loopwarden"])
        .current_dir(contrib_python()));
    assert!(
        out.status.success(),
        "test_loopwarden.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `lw-origin-server` (the binary at `bin`) in `ns` on
/// 127.0.0.1:`port`.
pub fn rs_origin_server(ns: &Netns, bin: &str, port: u16) -> Proc {
    let proc = ns.spawn(bin, &[&format!("127.0.0.1:{port}")]);
    ns.wait_listening(port);
    proc
}

/// What one `curl` run saw.
#[derive(Debug)]
pub struct Fetched {
    /// curl's own pid (the shell's, which execs curl).
    pub pid: u32,
    pub status: u16,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: Value,
}

/// `curl` in `ns` fetching `url`, with `data` as a JSON POST body if given.
/// Panics when no HTTP answer came back.
pub fn fetch(ns: &Netns, url: &str, data: Option<&str>) -> Fetched {
    let mut script = String::from(
        "echo $$; exec curl -sS --max-time 10 -w '\\n%{http_code}' -H 'Content-Type: application/json'",
    );
    if data.is_some() {
        script.push_str(" --data-binary \"$2\"");
    }
    script.push_str(" \"$1\"");
    let out = run(ns
        .cmd("sh")
        .args(["-c", &script, "sh", url, data.unwrap_or_default()]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl {url} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (pid, rest) = stdout.split_once('\n').expect("the shell's pid");
    let (body, status) = rest.rsplit_once('\n').expect("curl's status line");
    Fetched {
        pid: pid.trim().parse().expect("a pid"),
        status: status.trim().parse().expect("an HTTP status"),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}
