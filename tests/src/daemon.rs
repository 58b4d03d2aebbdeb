//! The daemon under test: where its pins and config live ([`Install`]),
//! the running `loopwarden run` with its captured output ([`Daemon`]), and
//! the checks made on what it reported.

use std::{
    io::{BufRead as _, BufReader},
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TempDir, loopwarden_bin, require_root, run, run_ok, wait_for_explained};

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

/// Mounts bpffs on /sys/fs/bpf where nothing is mounted there yet (as the
/// packaged unit does before it starts the daemon), once: a daemon some
/// test starts in a mount namespace of its own (a container) refuses to
/// mount one of that namespace's alone.
fn host_bpffs() {
    static MOUNTED: std::sync::Once = std::sync::Once::new();
    MOUNTED.call_once(|| {
        crate::run_ok(Command::new("sh").args([
            "-c",
            "mountpoint -q /sys/fs/bpf || mount -t bpf -o mode=0700 bpf /sys/fs/bpf",
        ]));
    });
}

impl Install {
    pub fn new() -> Arc<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_root();
        host_bpffs();
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

    /// `loopwarden run` on this install's config file and directories,
    /// which must fail (bounded: see [`crate::run_failing_start`]).
    pub fn failing_start(&self) -> Output {
        crate::run_failing_start(
            Command::new(loopwarden_bin())
                .arg("run")
                .arg("--config")
                .arg(self.config_path())
                .args(self.dir_args()),
        )
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

    /// `loopwarden status` of this install, which must succeed (exit 0: a
    /// policy in force): its text.
    pub fn status_text(&self) -> String {
        let out = run_ok(
            Command::new(loopwarden_bin())
                .arg("status")
                .args(self.dir_args()),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `loopwarden status --json` of this install, which must succeed.
    pub fn status_json(&self) -> Value {
        let out = run_ok(
            Command::new(loopwarden_bin())
                .args(["status", "--json"])
                .args(self.dir_args()),
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out:?}"))
    }

    /// What the daemon reported as `key` in `status --json`
    /// (`daemon.reported.KEY`), once it holds one, within `timeout`.
    pub fn wait_reported(&self, key: &str, timeout: Duration) -> Value {
        crate::wait_for(&format!("status to report {key}"), timeout, || {
            let reported = self.status_json()["daemon"]["reported"][key].clone();
            (!reported.is_null()).then_some(reported)
        })
    }

    /// `run` with this install's config, JSON lines, human diagnostics,
    /// a line per report and its directories: the arguments a test that
    /// wraps the daemon in another command (`sh -c ... "$@"`) passes
    /// after the binary, with `LOOPWARDEN_LOG=info` to set.
    pub fn run_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--config",
            &self.config_path().display().to_string(),
            "--log-format",
            "json",
            "--diagnostics-format",
            "human",
            "--repeat-interval",
            "0",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.dir_args());
        args
    }

    /// Runs `loopwarden detach` for this install.
    pub fn detach(&self) -> Output {
        run(Command::new(loopwarden_bin())
            .arg("detach")
            .args(self.dir_args()))
    }

    /// A reference to the link pinned as `links/NAME`, held until the fd is
    /// dropped (`BPF_OBJ_GET`): what a second process holding the link
    /// (bpftool, a leaked descriptor) keeps alive after its pin is gone.
    /// By hand: the descriptor must be this process's, which bpftool
    /// cannot give, and this crate tests the daemon from outside, through
    /// its binary, without linking aya or the daemon's own `kernel::sys`.
    pub fn hold_link(&self, name: &str) -> OwnedFd {
        let path = self.link_pin(name);
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a pin path");
        // union bpf_attr for BPF_OBJ_GET (7): { __aligned_u64 pathname;
        // __u32 bpf_fd; __u32 file_flags; }
        let mut attr = [c_path.as_ptr() as u64, 0u64];
        // SAFETY: `attr` is the command's 16-byte attribute; the kernel
        // only reads the path it points at.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, attr.as_mut_ptr(), 16) };
        assert!(
            fd >= 0,
            "opening {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor the kernel returned, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// Detaches the link pinned as `links/NAME` from its hook and leaves
    /// the pin (`bpftool link detach`, `BPF_LINK_DETACH`): what a `detach`
    /// killed between the two steps leaves behind.
    pub fn detach_link_in_place(&self, name: &str) {
        let out = run(Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(self.link_pin(name)));
        assert!(out.status.success(), "detaching {name}: {out:?}");
    }

    /// The pin of the link `name`.
    fn link_pin(&self, name: &str) -> PathBuf {
        self.pin_dir.join("links").join(name)
    }

    /// Ids of the programs the pinned links run (bpftool), this install's only.
    pub fn linked_prog_ids(&self) -> Vec<u64> {
        ["lw_connect4", "lw_connect6"]
            .iter()
            .filter_map(|name| self.linked_prog_id(name))
            .collect()
    }

    /// The id of the program the link pinned as `links/NAME` runs (bpftool).
    fn linked_prog_id(&self, name: &str) -> Option<u64> {
        let out = run(Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(self.link_pin(name)));
        let link: Value = serde_json::from_slice(&out.stdout).ok()?;
        link["prog_id"].as_u64()
    }

    /// The runs of the program the link `links/NAME` runs that the kernel
    /// skipped, as bpftool reads them (`recursion_misses`, which it leaves
    /// out when 0).
    pub fn skipped_runs(&self, name: &str) -> u64 {
        let id = self
            .linked_prog_id(name)
            .unwrap_or_else(|| panic!("no program behind links/{name}"));
        let out = run(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]));
        let prog: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("bpftool prog show id {id}: {e}: {out:?}"));
        prog["recursion_misses"].as_u64().unwrap_or(0)
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
    /// Sent a signal that ends it (SIGINT, SIGTERM): an exit before
    /// [`Daemon::stop`] is then expected.
    told_to_exit: AtomicBool,
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
        Self::spawn_cmd(install, Self::command(install, config, extra, log))
    }

    /// The `loopwarden run` of `install` with `config` (written to its
    /// config file) that [`Daemon::spawn_in`] starts, for a test to add to
    /// (its environment, say) and start with [`Daemon::start_cmd`].
    pub fn command(install: &Arc<Install>, config: &str, extra: &[&str], log: &str) -> Command {
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
        cmd
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
            told_to_exit: AtomicBool::new(false),
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

    /// The sum of the numeric field `field` (`field=N`) over the daemon's
    /// stderr lines holding `what` (its `events lost` or `audit lines
    /// lost` warnings).
    pub fn stderr_sum(&self, what: &str, field: &str) -> u64 {
        self.stderr_text()
            .lines()
            .filter(|l| l.contains(what))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(field)?.strip_prefix('='))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
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
        if matches!(signal, libc::SIGINT | libc::SIGTERM) {
            self.told_to_exit.store(true, Ordering::Relaxed);
        }
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

    /// Waits until the daemon has installed `count` policies since its
    /// start (each reload's "policy #N installed: K rules"). The space
    /// before "installed" matters: every line the daemon's `installed`
    /// module logs (a reload's "policy unchanged", say) carries its
    /// target `loopwarden::daemon::installed: `, which a bare "installed: "
    /// would take for the policy in force.
    pub fn wait_installed(&self, count: usize) {
        self.wait_stderr(" installed: ", count);
    }

    /// Waits until the daemon's stderr contains `text` (at least `count` times).
    pub fn wait_stderr(&self, text: &str, count: usize) {
        wait_for_explained(
            &format!("{text:?} on the daemon's stderr"),
            Duration::from_secs(15),
            || (self.stderr_text().matches(text).count() >= count).then_some(()),
            || format!("; the daemon's stderr:\n{}", self.stderr_text()),
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
                            // A worker thread's panic: the daemon may run
                            // on and exit 0, one part of it gone.
                            || l.contains("panicked at")
                    })
                    .filter(|l| !allowed.iter().any(|a| l.contains(a.as_str())))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0
    /// then. A daemon that had already exited without being told to (by
    /// [`Daemon::signal`]) did not: it quit on its own.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        if !self.told_to_exit.load(Ordering::Relaxed)
            && let Ok(Some(status)) = child.try_wait()
        {
            eprintln!("the daemon exited ({status}) before the test stopped it");
            return false;
        }
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    reap(child);
                    return false;
                }
            }
        }
    }
}

/// Waits for `child`, killed, to exit: for at most 10 s, as a process
/// waiting for a FUSE server that read its request dies only once that
/// server answers or goes (a test's filesystem that stops answering the
/// daemon, dropped after it when a panic unwinds the test); such a
/// process is left to die then.
fn reap(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "the daemon (pid {}) has not died 10 s after SIGKILL: left to die when what holds it \
         in the kernel lets it go",
        child.id()
    );
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

/// The kernel counter `name` (`checked`, `denied`, ...) in a `status --json`
/// report.
pub fn counter(report: &Value, name: &str) -> u64 {
    report["counters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .and_then(|c| c["value"].as_u64())
        .unwrap_or_else(|| panic!("no counter {name}: {report:#}"))
}
