//! Harness for loopwarden's root integration tests.
//!
//! Every test gets its own network namespace ([`Netns`]) with an HTTP server
//! on `[::]` (so 127.0.0.1, 127.0.0.2 and ::1 all reach it), and a real
//! daemon ([`Daemon`]) whose policy is scoped to that namespace, so nothing
//! outside the test is ever judged. Guards clean up on drop — also when an
//! assertion fails: processes in the namespace are killed, the namespace is
//! deleted, and the daemon is stopped (its programs detach when it exits).

pub mod client;
pub mod ident;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod metrics;
pub mod provenance;

/// Port of the protected HTTP service in every test namespace.
pub const PROTECTED: u16 = 8080;
/// Port of a second HTTP service the policy does not protect.
pub const UNPROTECTED: u16 = 8081;

/// The `loopwarden` binary under test: `$LOOPWARDEN_BIN`, or the release build.
pub fn loopwarden_bin() -> PathBuf {
    std::env::var_os("LOOPWARDEN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/loopwarden")
        })
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the integration tests load eBPF programs and create network namespaces: run them as root (cargo xtask test)"
    );
}

/// Runs a command to completion, panicking if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {cmd:?} failed: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Connects an audit record stands for: 1, or its summary's count.
pub fn connects(record: &Value) -> u64 {
    record["repeat"]["count"].as_u64().unwrap_or(1)
}

/// Waits until `f` returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, timeout, f, String::new)
}

/// Like [`wait_for`], the panic also saying what `explain` finds then
/// (the state that was waited on, the daemon's stderr).
pub fn wait_for_explained<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}{}", explain());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} failed: {e}"));
        Self { child, what }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process now (what drop does) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics if the process already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.what);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A network namespace owned by one test, deleted on drop along with every
/// process still in it.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_root();
        let name = format!(
            "lwt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, as policies name it.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Gives the namespace addresses of its own besides loopback: a veth
    /// pair with both ends inside (this kernel has no dummy links; it goes
    /// with the namespace), `addrs` (CIDRs, IPv6 without duplicate address
    /// detection) on its end `lw-a`.
    pub fn add_addresses(&self, addrs: &[&str]) {
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
        ip(&[
            "link", "add", "lw-a", "type", "veth", "peer", "name", "lw-b",
        ]);
        ip(&["link", "set", "lw-a", "up"]);
        ip(&["link", "set", "lw-b", "up"]);
        for addr in addrs {
            if addr.contains(':') {
                ip(&["addr", "add", addr, "dev", "lw-a", "nodad"]);
            } else {
                ip(&["addr", "add", addr, "dev", "lw-a"]);
            }
        }
    }

    /// A command that runs `program` inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Starts a long-running process inside the namespace.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Proc {
        Proc::spawn(self.cmd(program).args(args))
    }

    /// Waits until something listens on TCP `port` in the namespace (checked
    /// with `ss`, without connecting).
    pub fn wait_listening(&self, port: u16) {
        wait_for(
            &format!("a listener on port {port} in {}", self.name),
            Duration::from_secs(10),
            || {
                let out = run(self.cmd("ss").args(["-Hltn", &format!("sport = :{port}")]));
                (!out.stdout.is_empty()).then_some(())
            },
        );
    }

    /// Waits until something is bound to UDP `port` in the namespace.
    pub fn wait_udp_bound(&self, port: u16) {
        wait_for(
            &format!("a UDP socket on port {port} in {}", self.name),
            Duration::from_secs(10),
            || {
                let out = run(self.cmd("ss").args(["-Hlun", &format!("sport = :{port}")]));
                (!out.stdout.is_empty()).then_some(())
            },
        );
    }

    /// Starts the test HTTP services: `PROTECTED` and `UNPROTECTED` on `[::]`.
    pub fn http_servers(&self) -> (Proc, Proc) {
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap_or("/tmp");
        let start = |port: u16| {
            let p = self.spawn(
                "python3",
                &[
                    "-m",
                    "http.server",
                    "--bind",
                    "::",
                    "--directory",
                    dir,
                    &port.to_string(),
                ],
            );
            self.wait_listening(port);
            p
        };
        (start(PROTECTED), start(UNPROTECTED))
    }

    /// `curl` inside the namespace; `Ok(status)` when an HTTP response came
    /// back, `Err(curl exit code)` otherwise.
    pub fn curl(&self, url: &str) -> Result<u16, i32> {
        let out = run(self.cmd("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code}",
            url,
        ]));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0))
        } else {
            Err(out.status.code().unwrap_or(-1))
        }
    }

    /// Starts `socat` relaying TCP `listen` in the namespace to `target`
    /// (a socat address such as `TCP:127.0.0.1:8080`), optionally as another
    /// user through `setpriv`.
    pub fn socat_relay(&self, listen: u16, target: &str, as_uid: Option<u32>) -> Proc {
        let listen_arg = format!("TCP-LISTEN:{listen},fork,reuseaddr");
        let p = match as_uid {
            None => self.spawn("socat", &[&listen_arg, target]),
            Some(uid) => {
                let uid = uid.to_string();
                self.spawn(
                    "setpriv",
                    &[
                        "--reuid",
                        &uid,
                        "--regid",
                        &uid,
                        "--clear-groups",
                        "socat",
                        &listen_arg,
                        target,
                    ],
                )
            }
        };
        self.wait_listening(listen);
        p
    }

    /// A server on the protected port that accepts and closes at once, with
    /// a backlog deep enough for a connect flood (python's http.server
    /// queues 5).
    pub fn sink_server(&self) -> Proc {
        let script = format!(
            r#"
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {PROTECTED}))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
"#
        );
        let server = self.spawn("/usr/bin/python3", &["-c", &script]);
        self.wait_listening(PROTECTED);
        server
    }

    /// A one-shot `socat` connect to `target`; returns its stderr (socat
    /// reports the connect() error there) and whether it succeeded.
    pub fn socat_connect(&self, target: &str) -> (bool, String) {
        let out = run(self
            .cmd("socat")
            .args(["-T", "3", "-u", "OPEN:/dev/null", target]));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Shared, growing capture of a child's output lines.
type Lines = Arc<Mutex<Vec<String>>>;
/// When each captured line arrived (same indexes as its [`Lines`]).
type Arrivals = Arc<Mutex<Vec<std::time::SystemTime>>>;

fn capture(stream: impl std::io::Read + Send + 'static) -> (Lines, Arrivals) {
    let lines: Lines = Arc::default();
    let arrivals: Arrivals = Arc::default();
    let (sink, times) = (Arc::clone(&lines), Arc::clone(&arrivals));
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let now = std::time::SystemTime::now();
            if let (Ok(mut v), Ok(mut t)) = (sink.lock(), times.lock()) {
                v.push(line);
                t.push(now);
            }
        }
    });
    (lines, arrivals)
}

/// Where one test's daemons live: a directory for the config and the
/// instance lock, and a bpffs pin directory of the test's own. Daemons
/// started in the same `Install` (one after another) adopt each other's
/// pins, as a restarted daemon does. On drop, `loopwarden detach` removes
/// whatever is pinned, and the test fails if anything is left.
pub struct Install {
    dir: TempDir,
    pin_dir: PathBuf,
}

impl Install {
    pub fn new() -> Arc<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_root();
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/lwt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Arc::new(Self {
            dir: TempDir::new("daemon"),
            pin_dir,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("loopwarden.toml")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// `--run-dir DIR --pin-dir DIR` for a loopwarden command.
    pub fn dir_args(&self) -> Vec<String> {
        vec![
            "--run-dir".into(),
            self.run_dir().display().to_string(),
            "--pin-dir".into(),
            self.pin_dir.display().to_string(),
        ]
    }

    /// Runs `loopwarden detach` for this install.
    pub fn detach(&self) -> Output {
        run(Command::new(loopwarden_bin())
            .arg("detach")
            .args(self.dir_args()))
    }

    /// Ids of the programs the pinned links run (bpftool), this install's only.
    pub fn linked_prog_ids(&self) -> Vec<u64> {
        ["lw_connect4", "lw_connect6"]
            .iter()
            .filter_map(|name| {
                let pin = self.pin_dir.join("links").join(name);
                let out = run(Command::new("bpftool")
                    .args(["-j", "link", "show", "pinned"])
                    .arg(&pin));
                let link: Value = serde_json::from_slice(&out.stdout).ok()?;
                link["prog_id"].as_u64()
            })
            .collect()
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let out = self.detach();
        let left = self.pin_dir.exists();
        if left {
            // Never leave enforcement behind, even when detach failed.
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        if !thread::panicking() {
            assert!(
                out.status.success(),
                "loopwarden detach failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !left,
                "{} still existed after detach",
                self.pin_dir.display()
            );
        }
    }
}

/// A running `loopwarden run`. On drop it is stopped with SIGTERM and the
/// test fails (unless it is already failing) if the daemon exited non-zero
/// or logged an error the test did not declare with [`Daemon::allow_error`].
pub struct Daemon {
    child: Option<Child>,
    stdout: Lines,
    stdout_arrivals: Arrivals,
    stderr: Lines,
    install: Arc<Install>,
    /// Substrings of ERROR lines this test expects.
    allowed_errors: Mutex<Vec<String>>,
    /// Killed on purpose: its exit status says nothing.
    killed: bool,
}

impl Daemon {
    /// Starts the daemon on `config` (TOML text) with JSON audit lines, and
    /// waits until it reports ready.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// Like [`Daemon::start`], with extra `run` arguments.
    pub fn start_with(config: &str, extra: &[&str]) -> Self {
        Self::start_in(&Install::new(), config, extra)
    }

    /// Starts a daemon in an existing install (adopting what an earlier
    /// daemon of that install pinned) and waits until it is ready.
    pub fn start_in(install: &Arc<Install>, config: &str, extra: &[&str]) -> Self {
        let mut daemon = Self::spawn_in(install, config, extra, "info");
        daemon.wait_ready();
        daemon
    }

    /// Like [`Daemon::start`], with debug logging (kernel-side debug records too).
    pub fn start_debug(config: &str) -> Self {
        let mut daemon = Self::spawn_in(&Install::new(), config, &[], "debug");
        daemon.wait_ready();
        daemon
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn(config: &str, extra: &[&str]) -> Self {
        Self::spawn_in(&Install::new(), config, extra, "info")
    }

    /// Starts a daemon in `install` without waiting for it.
    ///
    /// Unless `extra` says otherwise, with `--repeat-interval 0`: a line per
    /// report, which is what tests that count records rely on. Tests of
    /// summaries pass `--repeat-interval` themselves.
    pub fn spawn_in(install: &Arc<Install>, config: &str, extra: &[&str], log: &str) -> Self {
        require_root();
        let config_path = install.config_path();
        std::fs::write(&config_path, config).expect("writing the test config");
        let mut cmd = Command::new(loopwarden_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json"])
            // Tests read diagnostics as `key=value` text.
            .args(["--diagnostics-format", "human"])
            .args(install.dir_args());
        if !extra.contains(&"--repeat-interval") {
            cmd.args(["--repeat-interval", "0"]);
        }
        cmd.args(extra).env("LOOPWARDEN_LOG", log);
        Self::spawn_cmd(install, cmd)
    }

    /// Starts `cmd` (a `loopwarden run` of `install`, perhaps wrapped, e.g.
    /// in `unshare`) and waits until it is ready.
    pub fn start_cmd(install: &Arc<Install>, cmd: Command) -> Self {
        let mut daemon = Self::spawn_cmd(install, cmd);
        daemon.wait_ready();
        daemon
    }

    fn spawn_cmd(install: &Arc<Install>, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("starting {cmd:?} failed: {e} (build it: cargo xtask build)")
        });
        let (stdout, stdout_arrivals) = capture(child.stdout.take().expect("piped stdout"));
        let (stderr, _) = capture(child.stderr.take().expect("piped stderr"));
        Self {
            child: Some(child),
            stdout,
            stdout_arrivals,
            stderr,
            install: Arc::clone(install),
            allowed_errors: Mutex::new(Vec::new()),
            killed: false,
        }
    }

    /// The install (config, run and pin directories) of this daemon.
    pub fn install(&self) -> &Arc<Install> {
        &self.install
    }

    /// Declares that an ERROR line containing `text` is expected.
    pub fn allow_error(&self, text: &str) {
        if let Ok(mut v) = self.allowed_errors.lock() {
            v.push(text.to_owned());
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.stderr_text().contains("ready:") {
            // A daemon that died will never be ready: fail with its output.
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "the daemon exited ({status}) before ready:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the daemon to report ready:\n{}",
                self.stderr_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails unless the daemon's stderr is free of `events lost` lines (no
    /// report the kernel could not queue).
    pub fn assert_no_reports_lost(&self) {
        let stderr = self.stderr_text();
        assert!(!stderr.contains("events lost"), "{stderr}");
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|v| v.join("\n")).unwrap_or_default()
    }

    /// Audit records (JSON lines on stdout) so far.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .map(|v| {
                v.iter()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The audit records of rule `rule` about process `pid` so far.
    pub fn reports(&self, rule: &str, pid: u32) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["rule"] == rule && e["pid"] == pid)
            .collect()
    }

    /// Waits for an audit record matching `pred`.
    pub fn wait_event(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(ev) = self.events().into_iter().find(|e| pred(e)) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "no audit record {what}; records: {:#?}\nstderr:\n{}",
                self.events(),
                self.stderr_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The config file the daemon was started with (tests may rewrite it).
    pub fn config_path(&self) -> PathBuf {
        self.install.config_path()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// SIGKILL, and waits until the process is gone: what an OOM kill does.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.killed = true;
    }

    /// Waits until the daemon's stderr contains `text` (at least `count` times).
    pub fn wait_stderr(&self, text: &str, count: usize) {
        wait_for(
            &format!("{text:?} on the daemon's stderr"),
            Duration::from_secs(15),
            || (self.stderr_text().matches(text).count() >= count).then_some(()),
        );
    }

    /// Raw stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Audit records (JSON lines on stdout) so far, each with the time this
    /// process read it from the daemon's stdout.
    pub fn timed_events(&self) -> Vec<(std::time::SystemTime, Value)> {
        let lines = self.stdout_lines();
        let times = self
            .stdout_arrivals
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        lines
            .iter()
            .zip(times)
            .filter_map(|(l, t)| Some((t, serde_json::from_str(l).ok()?)))
            .collect()
    }

    /// ERROR lines on stderr that no [`Daemon::allow_error`] covers.
    pub fn unexpected_errors(&self) -> Vec<String> {
        let allowed = self
            .allowed_errors
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        self.stderr
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|l| {
                        l.contains(" ERROR ")
                            || l.contains("\"level\":\"error\"")
                            || l.contains("loopwarden: error:")
                    })
                    .filter(|l| !allowed.iter().any(|a| l.contains(a.as_str())))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let running = self.child.is_some();
        let clean = self.stop();
        if thread::panicking() {
            return;
        }
        assert!(
            !running || clean || self.killed,
            "the daemon did not exit 0 on SIGTERM:\n{}",
            self.stderr_text()
        );
        let errors = self.unexpected_errors();
        assert!(
            errors.is_empty(),
            "the daemon logged errors the test did not expect:\n{}",
            errors.join("\n")
        );
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "loopwarden-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A policy scoped to `ns`, protecting `PROTECTED`, with the catalog on.
pub fn policy(ns: &Netns, mode: &str, extra: &str) -> String {
    format!(
        "mode = \"{mode}\"\ncatalog = true\n\n[protect]\nports = [{PROTECTED}]\nnetns = [\"{}\"]\n\n{extra}\n",
        ns.path()
    )
}

/// One `[[rule]]` table: `criterion = "value"`.
pub fn rule(name: &str, action: &str, criterion: &str, value: &str) -> String {
    format!("[[rule]]\nname = \"{name}\"\naction = \"{action}\"\n{criterion} = \"{value}\"\n")
}

/// Ids of loaded programs named `name` (from `bpftool`).
pub fn prog_ids(name: &str) -> Vec<u64> {
    let out = run(Command::new("bpftool").args(["-j", "prog", "show"]));
    let progs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    progs
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["name"] == name)
                .filter_map(|p| p["id"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

/// Every entry of `install`'s pinned map `name`, as bpftool dumps it.
pub fn map_dump(install: &Install, name: &str) -> Vec<Value> {
    let map = install.pin_dir().join("maps").join(name);
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&map));
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("bpftool's JSON")
}

/// What bpftool shows of `install`'s pinned map `name` (`id`,
/// `max_entries`, ...).
pub fn map_show(install: &Install, name: &str) -> Value {
    let map = install.pin_dir().join("maps").join(name);
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&map));
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("bpftool's JSON")
}

/// The bytes of a bpftool JSON byte list (`["0x01", ...]`).
pub fn hex_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .expect("a byte list")
        .iter()
        .map(|b| {
            let hex = b.as_str().expect("a hex byte").trim_start_matches("0x");
            u8::from_str_radix(hex, 16).expect("a hex byte")
        })
        .collect()
}

/// `bytes` as bpftool's `hex` arguments.
pub fn hex_args(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The policy generation (first key word) of every entry in the pinned
/// map at `path` (one of a test install's own maps).
pub fn map_generations(path: &Path) -> Vec<u8> {
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path));
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let entries: Vec<&Value> = match &dump {
        // One map: a list of entries; several: a list of lists.
        Value::Array(items) if items.iter().all(Value::is_array) => {
            items.iter().filter_map(Value::as_array).flatten().collect()
        }
        Value::Array(items) => items.iter().collect(),
        _ => Vec::new(),
    };
    entries
        .iter()
        .filter_map(|e| e["key"].as_array()?.first()?.as_str().map(str::to_owned))
        .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Helpers for the connect-path and kernel-matcher tests (connect_paths.rs,
// matcher.rs). Self-contained: nothing above depends on them.

/// The system Python the tests' connect scripts run under (`python3` on
/// `PATH` may be another one, e.g. pyenv's shim).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The output of a probe script that prints `pid=PID` and then one line
/// per thing it tried: the pid and those lines, `expected` of them.
pub fn probe_lines(out: &Output, expected: usize) -> (u32, Vec<String>) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let pid = lines
        .next()
        .and_then(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid line: {text}"));
    let lines: Vec<String> = lines.map(str::to_owned).collect();
    assert_eq!(lines.len(), expected, "{text}");
    (pid, lines)
}

/// A copy of the system Python's executable at `dir/name`: a distinct
/// executable (its own identity) a policy can name.
pub fn python_copy(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::copy(
        std::fs::canonicalize(SYSTEM_PYTHON).expect("resolving python"),
        &path,
    )
    .expect("copying python");
    path
}

/// `major:minor:inode` of the file at `path` (symlinks followed): the
/// identity audit records show as `exe_id`, read by the kernel.
pub fn exe_id(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {} failed: {e}", path.display()));
    let dev = meta.dev();
    format!("{}:{}:{}", libc::major(dev), libc::minor(dev), meta.ino())
}

/// The file name of `path` once symlinks are resolved: what the kernel
/// reports as `exe_name` for a process running it.
pub fn exe_name(path: &Path) -> String {
    let real = std::fs::canonicalize(path)
        .unwrap_or_else(|e| panic!("resolving {} failed: {e}", path.display()));
    // The kernel reports at most 31 bytes of it.
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(31).collect()
}

/// The `key=value` words of the last line a test script printed; indexing a
/// missing key panics with the script's whole output.
pub struct Fields {
    map: std::collections::HashMap<String, String>,
    output: String,
}

impl Fields {
    pub fn of(out: &Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let map = stdout
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            map,
            output: format!(
                "status: {}\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }
}

impl std::ops::Index<&str> for Fields {
    type Output = str;

    fn index(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("the script printed no {key}=\n{}", self.output))
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.output)
    }
}

/// Writes a script to `dir/name` and returns its path.
pub fn write_script(dir: &TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("writing {name} failed: {e}"));
    path.to_string_lossy().into_owned()
}

/// A cgroup directly below the cgroup v2 root (found in
/// /proc/self/mountinfo), named `name`. On drop every process below it is
/// moved back to the root and the cgroups are removed bottom-up.
pub struct TestCgroup {
    pub root: PathBuf,
    pub name: String,
    /// `root/name`.
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                post.starts_with("cgroup2 ")
                    .then(|| pre.split(' ').nth(4).map(PathBuf::from))
                    .flatten()
            })
            .expect("a cgroup v2 mount");
        let path = root.join(name);
        std::fs::create_dir(&path).expect("creating the test cgroup");
        Self {
            root,
            name: name.to_owned(),
            path,
        }
    }

    /// Its `cgroup.procs` file: write a pid to move that process in.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    fn remove(dir: &Path, root: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove(&entry.path(), root);
                }
            }
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        Self::remove(&self.path, &self.root);
    }
}

/// Fails unless the daemon's deny records are exactly those of `pids`.
/// Records arrive in the order the kernel wrote them: once the last expected
/// one is in, an earlier control's refusal would be too.
pub fn assert_denied_exactly(daemon: &Daemon, pids: &[&str]) {
    let mut denied: Vec<String> = daemon
        .events()
        .iter()
        .filter(|e| e["verdict"] == "deny")
        .map(|e| e["pid"].to_string())
        .collect();
    denied.sort();
    let mut expected: Vec<String> = pids.iter().map(|p| (*p).to_owned()).collect();
    expected.sort();
    assert_eq!(denied, expected, "deny records: {:#?}", daemon.events());
}

// ---------------------------------------------------------------------------
// Two namespaces joined by a veth pair (relays.rs), an sshd (enforce.rs,
// relays.rs) and policies with the catalog and relay settings spelled out.

/// The local namespace's address on the link to the remote one.
pub const LOCAL_ADDR: &str = "10.77.0.1";
/// The remote namespace's address on the link to the local one.
pub const REMOTE_ADDR: &str = "10.77.0.2";
/// The local namespace's IPv6 address on that link.
pub const LOCAL_ADDR6: &str = "fd77::1";
/// The remote namespace's IPv6 address on that link.
pub const REMOTE_ADDR6: &str = "fd77::2";

/// A "local" namespace (where the protected service, the policy and the
/// relays are) and a "remote" one standing for the rest of the network,
/// joined by a veth pair that exists only inside them: `lw0` in local with
/// [`LOCAL_ADDR`]/24 and [`LOCAL_ADDR6`]/64, `lw1` in remote with
/// [`REMOTE_ADDR`]/24 and [`REMOTE_ADDR6`]/64. Deleting the namespaces (on
/// drop) deletes the pair.
pub struct Topology {
    pub local: Netns,
    pub remote: Netns,
}

impl Topology {
    pub fn new() -> Self {
        let local = Netns::new();
        let remote = Netns::new();
        let ip = |ns: &Netns, args: &[&str]| {
            run_ok(Command::new("ip").args(["-n", ns.name()]).args(args));
        };
        ip(
            &local,
            &[
                "link",
                "add",
                "lw0",
                "type",
                "veth",
                "peer",
                "name",
                "lw1",
                "netns",
                remote.name(),
            ],
        );
        for (ns, dev, v4, v6) in [
            (&local, "lw0", LOCAL_ADDR, LOCAL_ADDR6),
            (&remote, "lw1", REMOTE_ADDR, REMOTE_ADDR6),
        ] {
            ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            // nodad: usable at once, no tentative period.
            ip(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            ip(ns, &["link", "set", dev, "up"]);
        }
        for (ns, dev) in [(&local, "lw0"), (&remote, "lw1")] {
            wait_for(
                &format!("{dev} up in {}", ns.name()),
                Duration::from_secs(10),
                || {
                    let out = run(Command::new("ip").args(["-n", ns.name(), "link", "show", dev]));
                    String::from_utf8_lossy(&out.stdout)
                        .contains("LOWER_UP")
                        .then_some(())
                },
            );
        }
        Self { local, remote }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// How many [`Sshd`]s are running, and whether one of them created
/// `/run/sshd` (removed again when the last one stops).
static SSHD_PRIVSEP: Mutex<(usize, bool)> = Mutex::new((0, false));

/// An sshd in a namespace listening on `addr:port`, with a throwaway host
/// key and a client key (`key`) authorized for root.
pub struct Sshd {
    proc: Proc,
    /// The client's private key (`ssh -i`).
    pub key: String,
    port: u16,
    _dir: TempDir,
}

impl Sshd {
    pub fn start(ns: &Netns, addr: &str, port: u16) -> Self {
        let dir = TempDir::new("sshd");
        let d = dir.path().to_str().expect("utf-8 temp dir").to_owned();
        for key in ["host", "client"] {
            run_ok(Command::new("ssh-keygen").args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &format!("{d}/{key}"),
            ]));
        }
        std::fs::copy(format!("{d}/client.pub"), format!("{d}/authorized_keys"))
            .expect("authorized_keys");
        // sshd insists on its privilege-separation directory.
        {
            let mut privsep = SSHD_PRIVSEP.lock().unwrap_or_else(|e| e.into_inner());
            let dir = Path::new("/run/sshd");
            if privsep.0 == 0 && !dir.exists() {
                std::fs::create_dir_all(dir).expect("creating /run/sshd");
                privsep.1 = true;
            }
            privsep.0 += 1;
        }
        let proc = ns.spawn(
            "/usr/sbin/sshd",
            &[
                "-D",
                "-e",
                "-f",
                "/dev/null",
                "-p",
                &port.to_string(),
                "-h",
                &format!("{d}/host"),
                "-o",
                &format!("ListenAddress={addr}"),
                "-o",
                &format!("AuthorizedKeysFile={d}/authorized_keys"),
                "-o",
                "StrictModes=no",
                "-o",
                "PidFile=none",
                "-o",
                "UsePAM=no",
                "-o",
                "PermitRootLogin=prohibit-password",
                "-o",
                "AllowTcpForwarding=yes",
            ],
        );
        // Constructed before waiting, so a timeout still stops it.
        let sshd = Self {
            proc,
            key: format!("{d}/client"),
            port,
            _dir: dir,
        };
        ns.wait_listening(port);
        sshd
    }

    /// Options for an `ssh` client of this server (key, no host key checks,
    /// no prompts, fail if a forward cannot be set up, the port), to be
    /// followed by the client's own options and `root@ADDR`.
    pub fn client_args(&self) -> Vec<String> {
        [
            "-i",
            &self.key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &self.port.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.proc.kill();
        let mut privsep = SSHD_PRIVSEP.lock().unwrap_or_else(|e| e.into_inner());
        privsep.0 = privsep.0.saturating_sub(1);
        if privsep.0 == 0 && privsep.1 {
            let _ = std::fs::remove_dir("/run/sshd");
            privsep.1 = false;
        }
    }
}

/// A policy scoped to one namespace, with every setting the relay tests
/// vary spelled out: `Policy::new(&ns, "enforce").catalog(false).relay("deny").text()`.
/// Defaults: the catalog on, `PROTECTED` only, no `[relay]` table.
pub struct Policy {
    mode: String,
    catalog: bool,
    ports: Vec<u16>,
    netns: String,
    relay_action: Option<String>,
    window_ms: Option<u64>,
    extra: String,
}

impl Policy {
    pub fn new(ns: &Netns, mode: &str) -> Self {
        Self {
            mode: mode.to_owned(),
            catalog: true,
            ports: vec![PROTECTED],
            netns: ns.path(),
            relay_action: None,
            window_ms: None,
            extra: String::new(),
        }
    }

    /// `catalog = true|false`.
    pub fn catalog(mut self, on: bool) -> Self {
        self.catalog = on;
        self
    }

    /// The protected ports (replacing `PROTECTED`).
    pub fn ports(mut self, ports: &[u16]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    /// `[relay] action = "..."`.
    pub fn relay(mut self, action: &str) -> Self {
        self.relay_action = Some(action.to_owned());
        self
    }

    /// `[relay] window_ms = ...`.
    pub fn window_ms(mut self, ms: u64) -> Self {
        self.window_ms = Some(ms);
        self
    }

    /// More tables (e.g. `[[rule]]`s from [`rule`]) at the end.
    pub fn extra(mut self, tables: &str) -> Self {
        self.extra.push_str(tables);
        self.extra.push('\n');
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut text = format!(
            "mode = \"{}\"\ncatalog = {}\n\n[protect]\nports = [{}]\nnetns = [\"{}\"]\n\n",
            self.mode,
            self.catalog,
            ports.join(", "),
            self.netns
        );
        if self.relay_action.is_some() || self.window_ms.is_some() {
            text.push_str("[relay]\n");
            if let Some(action) = &self.relay_action {
                text.push_str(&format!("action = \"{action}\"\n"));
            }
            if let Some(ms) = self.window_ms {
                text.push_str(&format!("window_ms = {ms}\n"));
            }
            text.push('\n');
        }
        text.push_str(&self.extra);
        text
    }
}

/// A threaded TCP forwarder no catalog names, in Python: `FORWARDER
/// LISTEN_ADDR LISTEN_PORT TARGET_PORT` accepts on the listen address and,
/// per connection, connects to 127.0.0.1:TARGET_PORT before reading, then
/// pumps both ways.
pub const FORWARDER: &str = r#"import socket, sys, threading
def pump(a, b):
    try:
        while d := a.recv(65536): b.sendall(d)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(c):
    try: u = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    except OSError: return c.close()
    threading.Thread(target=pump, args=(c, u), daemon=True).start(); pump(u, c)
l = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True: threading.Thread(target=serve, args=(l.accept()[0],), daemon=True).start()
"#;

/// Starts [`FORWARDER`] in `ns` as `python3 DIR/forwarder.py` (a script
/// file, as interpreters' scripts are matched), listening on
/// `addr`:`port`, relaying to the protected service; returns the process
/// and the script's path.
pub fn spawn_forwarder(ns: &Netns, dir: &TempDir, addr: &str, port: u16) -> (Proc, String) {
    let script = write_script(dir, "forwarder.py", FORWARDER);
    let proc = ns.spawn(
        SYSTEM_PYTHON,
        &[&script, addr, &port.to_string(), &PROTECTED.to_string()],
    );
    ns.wait_listening(port);
    (proc, script)
}

/// nginx (`/usr/sbin/nginx`, in the foreground, everything it writes in
/// `dir`) in `ns` as a reverse proxy: listening on `listen` (`ADDR:PORT`),
/// passing every request to the protected service on 127.0.0.1.
pub fn nginx_proxy(ns: &Netns, dir: &TempDir, listen: &str, port: u16) -> Proc {
    let d = dir.path().display();
    let conf = format!(
        r#"
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {listen}:{port};
        location / {{ proxy_pass http://127.0.0.1:{PROTECTED}; }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let proc = ns.spawn(
        "/usr/sbin/nginx",
        &[
            "-p",
            &d.to_string(),
            "-e",
            &format!("{d}/error.log"),
            "-c",
            &conf_path.display().to_string(),
            "-g",
            "daemon off;",
        ],
    );
    ns.wait_listening(port);
    proc
}
