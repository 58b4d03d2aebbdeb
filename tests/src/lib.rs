//! Harness for loopwarden's root integration tests.
//!
//! Every test gets its own network namespace ([`Netns`]) with an HTTP server
//! on `[::]` (so 127.0.0.1, 127.0.0.2 and ::1 all reach it), and a real
//! daemon ([`Daemon`]) whose policy is scoped to that namespace, so nothing
//! outside the test is ever judged. Guards clean up on drop — also when an
//! assertion fails: processes in the namespace are killed, the namespace is
//! deleted, and the daemon is stopped (its programs detach when it exits).

pub mod bpftool;
pub mod client;
pub mod daemon;
pub mod ident;
pub mod idle;
pub mod locked;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod provenance;
pub mod scripts;
pub mod services;
pub mod stallfs;
pub mod talk;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub use bpftool::{
    hex_args, hex_bytes, listener_tgids, map_dump, map_generations, map_show, map_update, prog_ids,
};
pub use daemon::{Daemon, Install, assert_denied_exactly, counter};
pub use netns::{
    LOCAL_ADDR, LOCAL_ADDR6, Netns, NetnsAlias, Proc, REMOTE_ADDR, REMOTE_ADDR6, Topology,
};
pub use policy::{Policy, policy, rule};
pub use scripts::{
    Fields, SYSTEM_PYTHON, TestCgroup, exe_id, exe_name, probe_lines, python_copy, write_script,
};
use serde_json::Value;
pub use services::{
    FAILED_LISTEN, FD3_RELAY, FORWARDER, HAND_DOWN, Sshd, failed_listen_relay, greeter,
    handed_down_relay, handed_down_relay_run_by, nginx_proxy, reuseport_relay, spawn_forwarder,
};

/// Port of the protected HTTP service in every test namespace.
pub const PROTECTED: u16 = 8080;
/// Port of a second HTTP service the policy does not protect.
pub const UNPROTECTED: u16 = 8081;

/// `setpriv` arguments that run the rest as uid/gid 65534 (nobody).
pub const AS_NOBODY: [&str; 6] = [
    "setpriv",
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
];

/// The CPUs this host may ever have (`/sys/devices/system/cpu/possible`,
/// ranges such as `0-3,8`): the kernel's per-CPU lists are this many.
pub fn possible_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .expect("reading /sys/devices/system/cpu/possible");
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((first, last)) => {
                last.parse::<u32>().expect("a CPU number")
                    - first.parse::<u32>().expect("a CPU number")
                    + 1
            }
            None => 1,
        })
        .sum()
}

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

/// A start of the daemon that must fail: run to completion, but killed
/// (and the test failed) if it still runs after a minute, as a start that
/// wrongly succeeded would, so that it never holds CI until its limit.
pub fn run_failing_start(cmd: &mut Command) -> Output {
    use std::{process::Stdio, sync::mpsc};
    const LIMIT: Duration = Duration::from_secs(60);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?} failed: {e}"));
    let pid = child.id() as i32;
    let (done, waited) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {cmd:?} failed: {e}")),
        Err(_) => {
            // SIGTERM first: a daemon that started detaches on it.
            // SAFETY: kill(2) on our own child, not reaped while it runs.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if waited.recv_timeout(Duration::from_secs(2)).is_err() {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("{cmd:?} still ran after {LIMIT:?}: the start should have failed");
        }
    }
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

/// `loopwarden check-config` with `args`: its exit code, and its stdout
/// then its stderr as one text.
pub fn check_config(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = run(Command::new(loopwarden_bin())
        .arg("check-config")
        .args(args));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
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
