//! Browsers on API ports, end to end: a real headless Chromium (Debian's
//! `chromium`) in the test's network namespace loads a page whose script
//! sends the CSRF of the scenario (a `text/plain` no-cors POST, which needs
//! no preflight) to a local API port and to a web UI port. With `[browsers]
//! deny` on the API port the browser's connect is refused (enforce) or
//! reported as would-deny (audit), while curl reaches the same port; the
//! UI port, under `[browsers] allow`, lets the browser in.

use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use loopwarden_tests::{Daemon, Netns, Proc, SYSTEM_PYTHON, TempDir, run, run_ok};
use serde_json::Value;

/// The API port: `[browsers] deny`.
const API: u16 = 18101;
/// The web UI port: `[browsers] allow`.
const UI: u16 = 18102;
/// Serves the page; not protected.
const PAGE: u16 = 18100;
/// How long Chromium may take to load the page and run its script.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP server on 127.0.0.1 that answers every GET and POST with 200 and
/// writes one line per request into its log file: `METHOD PATH UA BODY`.
/// `GET /page` answers with the page file, if one is given.
const RECORDER: &str = r#"import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, log, page = int(sys.argv[1]), sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
class H(BaseHTTPRequestHandler):
    def record(self, body):
        ua = self.headers.get("User-Agent", "-").replace(" ", "_")
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path} {ua} {body}\n")
    def reply(self, body, kind="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.record("-")
        if self.path == "/page" and page:
            self.reply(open(page, "rb").read(), "text/html")
        else:
            self.reply(b"ok\n")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self.record(self.rfile.read(n).decode(errors="replace").replace(" ", "_"))
        self.reply(b"{}\n", "application/json")
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// The attacker's page: a no-cors `text/plain` POST to each port in turn
/// (no preflight: the browser sends it as is), then the outcome of each in
/// the document, which `--dump-dom` prints.
fn page() -> String {
    format!(
        r#"<html><body><div id="result">pending</div><script>
async function post(port) {{
  try {{
    await fetch("http://127.0.0.1:" + port + "/v1/chat/completions", {{
      method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}},
      body: "csrf-from-page"
    }});
    return port + "=sent";
  }} catch (e) {{
    return port + "=failed";
  }}
}}
(async () => {{
  const out = [await post({API}), await post({UI})];
  document.getElementById("result").textContent = "done " + out.join(" ");
}})();
</script></body></html>
"#
    )
}

/// A [`RECORDER`] in `ns` and its log.
struct Recorder {
    _proc: Proc,
    log: std::path::PathBuf,
}

impl Recorder {
    fn start(ns: &Netns, dir: &TempDir, port: u16, page: Option<&Path>) -> Self {
        let log = dir.path().join(format!("{port}.log"));
        std::fs::write(&log, "").expect("creating the request log");
        let mut args = vec![
            "-c".to_owned(),
            RECORDER.to_owned(),
            port.to_string(),
            log.display().to_string(),
        ];
        args.extend(page.map(|p| p.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = ns.spawn("python3", &args);
        ns.wait_listening(port);
        Self { _proc: proc, log }
    }

    /// The requests it got so far.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The POSTs a browser sent (its User-Agent names Chrome).
    fn browser_posts(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with("POST ") && r.contains("Chrome"))
            .collect()
    }
}

/// A headless Chromium in `ns` with a throwaway profile: its whole process
/// group is killed and the profile removed on drop, whatever happened.
struct Chromium {
    child: Option<Child>,
    _profile: TempDir,
}

impl Chromium {
    /// Loads `url` and returns the DOM after the page's script ran (given
    /// `--virtual-time-budget`), with Chromium's stderr on failure.
    fn dump_dom(ns: &Netns, url: &str) -> String {
        let profile = TempDir::new("chromium-profile");
        let mut cmd = ns.cmd("chromium");
        cmd.args([
            "--headless",
            // As root Chromium refuses to start sandboxed.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: drop kills every process it started.
        .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("starting chromium failed: {e} (cargo xtask setup --tests)")
        });
        let mut browser = Chromium {
            child: Some(child),
            _profile: profile,
        };
        browser.wait()
    }

    /// Reads all of `pipe` on a thread of its own: read only after the
    /// exit, a pipe Chromium filled (64 KiB of log) would have kept it
    /// from exiting.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    }

    fn wait(&mut self) -> String {
        let child = self.child.as_mut().expect("running");
        let (out, err) = (
            Self::drain(child.stdout.take()),
            Self::drain(child.stderr.take()),
        );
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => panic!("chromium did not finish within {BROWSER_TIMEOUT:?}"),
            }
        }
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("waiting for chromium");
        // Its helpers too, which hold the pipes' other ends.
        kill_group(child.id());
        let (out, err) = (
            out.join().expect("chromium's stdout"),
            err.join().expect("chromium's stderr"),
        );
        assert!(status.success(), "chromium failed ({status}):\n{err}");
        out
    }
}

fn kill_group(pid: u32) {
    // SAFETY: plain kill(2) of the process group chromium leads.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the page's script wrote: `port=sent` or `port=failed` for each.
fn outcome(dom: &str) -> String {
    let start = dom
        .find("done ")
        .unwrap_or_else(|| panic!("the page did not finish:\n{dom}"));
    dom[start..]
        .split('<')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The policy: API and UI protected in `ns`, browsers denied on API and
/// allowed on UI, other protected ports audited; `extra` goes into
/// `[browsers]`.
fn browsers_policy(ns: &Netns, mode: &str, extra: &str) -> String {
    format!(
        "mode = \"{mode}\"\ncatalog = true\n\n[protect]\nports = [{API}, {UI}]\nnetns = [\"{}\"]\n\n\
         [browsers]\naction = \"audit\"\ndeny = [{API}]\nallow = [{UI}]\n{extra}",
        ns.path()
    )
}

/// The namespace, its three servers and the page file.
struct Scene {
    api: Recorder,
    ui: Recorder,
    _page: Recorder,
    ns: Netns,
    _dir: TempDir,
}

impl Scene {
    fn new() -> Self {
        let ns = Netns::new();
        let dir = TempDir::new("browsers");
        let page_file = dir.path().join("page.html");
        std::fs::write(&page_file, page()).expect("writing the page");
        Scene {
            api: Recorder::start(&ns, &dir, API, None),
            ui: Recorder::start(&ns, &dir, UI, None),
            _page: Recorder::start(&ns, &dir, PAGE, Some(&page_file)),
            ns,
            _dir: dir,
        }
    }

    fn browse(&self) -> String {
        outcome(&Chromium::dump_dom(
            &self.ns,
            &format!("http://127.0.0.1:{PAGE}/page"),
        ))
    }

    /// curl's POST to the API port, as an SDK would send it.
    fn curl_post(&self) -> String {
        let out = run(self.ns.cmd("curl").args([
            "-sS",
            "--max-time",
            "5",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"model\":\"m\"}",
            &format!("http://127.0.0.1:{API}/v1/chat/completions"),
        ]));
        assert!(
            out.status.success(),
            "curl to the API port failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn browser_event(daemon: &Daemon, verdict: &str, port: u16) -> Value {
    daemon.wait_event(&format!("{verdict} of chromium to {port}"), |e| {
        e["verdict"] == verdict
            && e["rule"] == "catalog:chromium"
            && e["browser"] == "deny"
            && e["dst_port"] == port
    })
}

#[test]
fn enforce_refuses_a_browser_on_an_api_port_and_lets_it_into_a_ui_port() {
    let scene = Scene::new();
    let daemon = Daemon::start(&browsers_policy(&scene.ns, "enforce", ""));

    let result = scene.browse();
    assert!(result.contains(&format!("{API}=failed")), "{result}");
    assert!(result.contains(&format!("{UI}=sent")), "{result}");
    // The API server never heard of the page; the UI server got its POST.
    assert_eq!(scene.api.browser_posts(), Vec::<String>::new());
    let ui = scene.ui.browser_posts();
    assert!(
        ui.iter().any(|r| r.contains("csrf-from-page")),
        "{:?}",
        scene.ui.requests()
    );
    // Refused at connect() by the browser rule, through the port's
    // browser treatment; the executable is Chromium's real binary.
    let ev = browser_event(&daemon, "deny", API);
    assert_eq!(ev["exe_name"], "chromium", "{ev}");
    // The allowed port is not reported (log_allowed is off).
    assert!(
        !daemon.events().iter().any(|e| e["dst_port"] == UI),
        "{:#?}",
        daemon.events()
    );

    // Positive control: an SDK-like client reaches the same API port.
    assert_eq!(scene.curl_post().trim(), "{}");
    assert!(
        scene
            .api
            .requests()
            .iter()
            .any(|r| r.starts_with("POST ") && r.contains("curl")),
        "{:?}",
        scene.api.requests()
    );
}

#[test]
fn audit_mode_reports_a_browser_on_an_api_port_as_would_deny() {
    let scene = Scene::new();
    let daemon = Daemon::start(&browsers_policy(&scene.ns, "audit", ""));

    let result = scene.browse();
    assert!(result.contains(&format!("{API}=sent")), "{result}");
    assert!(result.contains(&format!("{UI}=sent")), "{result}");
    assert!(
        scene
            .api
            .browser_posts()
            .iter()
            .any(|r| r.contains("csrf-from-page")),
        "{:?}",
        scene.api.requests()
    );
    browser_event(&daemon, "would-deny", API);
    assert_eq!(scene.curl_post().trim(), "{}");
}

/// Renames itself (comm `argv[1]`, as a tab process might), then connects
/// to each port of its other arguments and prints `PORT ERRNO` (0: connected).
/// With `LW_LISTEN` set it first listens on the wildcard address, which
/// makes it network-facing (`listening` evidence), as a browser that just
/// loaded a page is (`received`, `connected`).
const CONNECTOR: &str = r#"import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
if os.environ.get("LW_LISTEN"):
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
for port in sys.argv[2:]:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(port)))
        err = 0
    except OSError as e:
        err = e.errno
    s.close()
    print(port, err, flush=True)
"#;

/// Runs [`CONNECTOR`] with `python` in `ns`, named `comm`: each port's errno.
fn connect_as(ns: &Netns, python: &Path, comm: &str) -> Vec<(u16, i32)> {
    connect_with(ns.cmd(&python.display().to_string()), comm)
}

/// [`connect_as`], network-facing first (`LW_LISTEN`).
fn connect_facing(ns: &Netns, python: &Path, comm: &str) -> Vec<(u16, i32)> {
    let mut cmd = ns.cmd(&python.display().to_string());
    cmd.env("LW_LISTEN", "1");
    connect_with(cmd, comm)
}

fn connect_with(mut cmd: std::process::Command, comm: &str) -> Vec<(u16, i32)> {
    let out = run_ok(cmd.args(["-c", CONNECTOR, comm, &API.to_string(), &UI.to_string()]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (port, err) = l.split_once(' ')?;
            Some((port.parse().ok()?, err.parse().ok()?))
        })
        .collect()
}

#[test]
fn identity_is_the_executable_and_exe_name_adds_browsers() {
    let scene = Scene::new();
    let dir = TempDir::new("browsers-exe");
    // Python under a browser's file name, and under an app's name that
    // only `[browsers] exe_name` makes a browser.
    let copy = |name: &str| {
        let path = dir.path().join(name);
        let real = std::fs::canonicalize(SYSTEM_PYTHON).expect("resolving python");
        std::fs::copy(real, &path).expect("copying python");
        path
    };
    let chromium = copy("chromium");
    let app = copy("lw-electron-app");
    let daemon = Daemon::start(&browsers_policy(
        &scene.ns,
        "enforce",
        "exe_name = [\"lw-electron-app\"]\n",
    ));
    let refused = vec![(API, libc::ECONNREFUSED), (UI, 0)];
    // A "tab" that renamed itself curl is still the browser's executable.
    assert_eq!(connect_as(&scene.ns, &chromium, "curl"), refused);
    assert_eq!(connect_as(&scene.ns, &app, "lw-app"), refused);
    // Control: the system Python under the same names reaches both.
    let python = Path::new(SYSTEM_PYTHON);
    assert_eq!(
        connect_as(&scene.ns, python, "chromium"),
        vec![(API, 0), (UI, 0)]
    );
    let by_chromium = daemon.wait_event("the renamed chromium's refusal", |e| {
        e["rule"] == "catalog:chromium" && e["verdict"] == "deny" && e["comm"] == "curl"
    });
    assert_eq!(by_chromium["browser"], "deny");
    assert_eq!(by_chromium["dst_port"], API);
    let by_app = daemon.wait_event("the app's refusal", |e| {
        e["rule"] == "browsers" && e["verdict"] == "deny"
    });
    assert_eq!(by_app["exe_name"], "lw-electron-app");
    assert_eq!(by_app["browser"], "deny");
}

/// A browser is network-facing by nature (every page it loads is data from
/// the network), so the relay verdict does not judge it: the port's
/// browser treatment does. With `[relay] action = "deny"`, a network-facing
/// "chromium" is refused on the API port by the browser treatment and let
/// into the UI port, while the same program under another name, just as
/// network-facing, is refused on both by the relay verdict.
#[test]
fn a_network_facing_browser_is_judged_by_its_ports_treatment_not_the_relay_verdict() {
    let scene = Scene::new();
    let dir = TempDir::new("browsers-facing");
    let real = std::fs::canonicalize(SYSTEM_PYTHON).expect("resolving python");
    let chromium = dir.path().join("chromium");
    std::fs::copy(&real, &chromium).expect("copying python");
    let policy = browsers_policy(&scene.ns, "enforce", "")
        .replace("\n[browsers]", "\n[relay]\naction = \"deny\"\n\n[browsers]");
    assert!(policy.contains("[relay]"), "{policy}");
    let daemon = Daemon::start(&policy);
    // Not network-facing, the control reaches both ports.
    let python = Path::new(SYSTEM_PYTHON);
    assert_eq!(connect_as(&scene.ns, python, "py"), vec![(API, 0), (UI, 0)]);
    assert_eq!(
        connect_facing(&scene.ns, &chromium, "chromium"),
        vec![(API, libc::ECONNREFUSED), (UI, 0)]
    );
    assert_eq!(
        connect_facing(&scene.ns, python, "py"),
        vec![(API, libc::ECONNREFUSED), (UI, libc::ECONNREFUSED)]
    );
    let browser = daemon.wait_event("the browser's refusal", |e| {
        e["rule"] == "catalog:chromium" && e["verdict"] == "deny"
    });
    assert_eq!(browser["dst_port"], API, "{browser:#}");
    let relayed = daemon.wait_event("the relay verdict on the UI port", |e| {
        e["rule"] == "relay" && e["verdict"] == "deny" && e["dst_port"] == UI
    });
    assert_eq!(relayed["via_how"], "listening", "{relayed:#}");
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| e["rule"] == "relay" && e["exe_name"] == "chromium"),
        "the relay verdict judged the browser"
    );
}
