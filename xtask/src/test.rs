//! `cargo xtask test`: everything CI checks, in order: formatting, clippy,
//! unit tests, a short fuzz run, then the root integration tests against the
//! release daemon.
//! Each step runs even when an earlier one failed; a summary ends the run.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    daemon, dist, fuzz,
    proc::{self, say},
    setup, vm,
};

/// Seconds each fuzz target runs in `cargo xtask test`: enough to replay the
/// seeds and mutate them a few thousand times at least (the slowest target,
/// config, does about a thousand inputs a second in this build), so a decoder
/// that panics on easy input fails CI. With five targets that is about 25 s,
/// after a build of about 1.5 minutes on a fresh clone (two cores), half a
/// minute later on. Longer runs: `cargo xtask fuzz --seconds N`.
const FUZZ_SECONDS: u64 = 5;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only unit tests (and lints): no root integration tests.
    #[arg(long)]
    pub unit_only: bool,
    /// Skip the short fuzz run.
    #[arg(long)]
    pub no_fuzz: bool,
    /// Skip booting Debian's 6.1 and 6.12 kernels under QEMU (`cargo xtask vm-test`).
    #[arg(long)]
    pub no_vm: bool,
}

struct Step {
    name: &'static str,
    elapsed: Duration,
    result: anyhow::Result<()>,
}

/// The longest the unit tests may run (they take about a minute).
const UNIT_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The longest the root suite may run (it takes about 17 minutes): a hung
/// test must leave the rest of a 90-minute CI run its time, and the suite's
/// cleanup its turn.
const ROOT_SUITE_LIMIT: Duration = Duration::from_secs(45 * 60);

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    // A ^C or a CI timeout's SIGTERM ends the running tests, and the root
    // suite's leftovers are cleared, before this exits.
    proc::catch_interrupts();
    setup::toolchain(false)?;
    // The packages are the root suite's and the VM test's.
    if !args.unit_only {
        setup::test_prerequisites()?;
    }

    let tally = std::cell::RefCell::new(proc::Tally::default());
    let mut steps = Vec::new();
    let mut step = |name: &'static str, f: &dyn Fn() -> anyhow::Result<()>| {
        if proc::interrupted() {
            say!("=== {name}: not run (interrupted) ===");
            return;
        }
        say!("=== {name} ===");
        let start = Instant::now();
        let result = f();
        if let Err(err) = &result {
            say!("{name} FAILED: {err:#}");
        }
        steps.push(Step {
            name,
            elapsed: start.elapsed(),
            result,
        });
    };

    if !args.no_lint {
        step("fmt", &|| {
            proc::run(proc::cargo().args(["fmt", "--all", "--check"]))
        });
        step("clippy", &|| {
            proc::run(proc::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
    }
    step("unit tests", &|| {
        proc::run_tests(
            proc::cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "loopwarden-tests",
                "--exclude",
                "loopwarden-ebpf",
            ]),
            &mut tally.borrow_mut(),
            UNIT_LIMIT,
        )
    });
    if !args.no_fuzz {
        step("fuzz", &|| fuzz::fuzz(FUZZ_SECONDS, false, &[]));
    }
    if !args.unit_only {
        step("integration tests (root)", &|| {
            integration(&mut tally.borrow_mut())
        });
        if !args.no_vm {
            // The programs must verify and enforce on the kernels users run,
            // not only on this host's: Debian 12's 6.1 and 6.12.
            step("vm-test (Debian 6.1, 6.12)", &|| {
                vm::run(&vm::VmTestArgs::default())
            });
        }
    }

    summarize(&steps, tally.into_inner())
}

/// Held while a root suite runs on this host: another run's start-up
/// cleanup ([`clear_stale_test_state`]) would take this one's namespaces,
/// pins and daemons for a killed run's and remove them (and the suites
/// share the kernel's cgroup root besides).
const SUITE_LOCK: &str = "/run/lwt-suite.lock";

/// The suite's lock on this host, taken (`Err`: another run holds it).
/// The file goes when the guard does.
struct SuiteLock(fs::File);

impl SuiteLock {
    fn take() -> anyhow::Result<Self> {
        let file =
            fs::File::create(SUITE_LOCK).with_context(|| format!("creating {SUITE_LOCK}"))?;
        match file.try_lock() {
            Ok(()) => Ok(Self(file)),
            Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another run of the root suite is under way on this host ({SUITE_LOCK} is \
                 locked): run this one once it is done (its clean-up of a killed run's \
                 namespaces and pins would remove that run's)"
            ),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {SUITE_LOCK}"))
            }
        }
    }
}

impl Drop for SuiteLock {
    fn drop(&mut self) {
        // Still held: no other run took it between the two.
        let _ = fs::remove_file(SUITE_LOCK);
        let _ = self.0.unlock();
    }
}

fn integration(tally: &mut proc::Tally) -> anyhow::Result<()> {
    setup::require_root("running the integration tests (they load eBPF programs)")?;
    let _lock = SuiteLock::take()?;
    let bin = daemon::build(true)?;
    let bin = bin
        .canonicalize()
        .with_context(|| format!("{} was not built", bin.display()))?;
    // tests/tests/dist.rs installs and purges this package. A packaging
    // failure fails this step, but not before the rest of the suite ran
    // (the dist tests then build their own package, and say why not).
    let deb = dist::package(&bin);
    if let Err(err) = &deb {
        say!("packaging FAILED: {err:#}");
    }
    clear_stale_test_state();
    let mut suite = proc::cargo();
    suite.args([
        "test",
        "--profile",
        "root-tests",
        "-p",
        "loopwarden-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ]);
    suite.env("LOOPWARDEN_BIN", &bin);
    if let Ok(deb) = &deb {
        suite.env("LOOPWARDEN_DEB", deb);
    }
    let result = proc::run_tests(&mut suite, tally, ROOT_SUITE_LIMIT);
    // Each test removes what it made, also when it fails; a suite killed
    // half-way (a CI timeout, ^C) cannot, and this is its cleanup.
    clear_stale_test_state();
    result.and(deb.map(drop))
}

/// Removes what a killed run of the root suite left behind, all of it named
/// `lwt-*` by the harness (tests/src): network namespaces, bpffs pin
/// directories (their links go with them) and empty cgroups at the root of
/// the cgroup v2 hierarchy. Nothing else is touched, and a failure to
/// remove one is said, not fatal.
fn clear_stale_test_state() {
    clear_stale(
        Path::new("/run/netns"),
        Path::new("/sys/fs/bpf"),
        cgroup2_root().as_deref(),
    );
    clear_stale_temp_dirs(&std::env::temp_dir());
    clear_stale_package();
}

/// The harness's temporary directories (tests/src: `loopwarden-test-*`)
/// a killed run left, with what was mounted in them (a FUSE file system
/// whose server died with the run, a btrfs image on a loop device):
/// unmounted (lazily: a dead FUSE mount answers nothing), the loop devices
/// detached, then removed.
fn clear_stale_temp_dirs(tmp: &Path) {
    let dirs = named_with(tmp, "loopwarden-test-");
    if dirs.is_empty() {
        return;
    }
    let inside = |path: &Path| dirs.iter().any(|dir| path.starts_with(dir));
    // Deepest first, so a mount inside another goes before it.
    let mut mounts: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .filter(|point| inside(point))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for mount in mounts {
        say!("unmounting a stale test mount: {}", mount.display());
        if let Err(err) = proc::run(Command::new("umount").arg("-l").arg(&mount)) {
            say!("warning: {err:#}");
        }
    }
    // `losetup --list` names each device's backing file.
    let listed = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    for line in listed.lines() {
        let mut fields = line.split_whitespace();
        let (Some(dev), Some(file)) = (fields.next(), fields.next()) else {
            continue;
        };
        if inside(Path::new(file)) {
            say!("detaching a stale test loop device: {dev} ({file})");
            if let Err(err) = proc::run(Command::new("losetup").args(["-d", dev])) {
                say!("warning: {err:#}");
            }
        }
    }
    for dir in dirs {
        if let Err(err) = fs::remove_dir_all(&dir) {
            say!("warning: stale test directory {}: {err}", dir.display());
        }
    }
}

/// Written by the package test (tests/tests/dist.rs) before it installs
/// the package and removed once it has purged it: while it exists, the
/// package on this host is the test's.
const DIST_MARKER: &str = "/run/lwt-dist-installed";

/// Purges the package a killed run of the package test left installed
/// (only then: [`DIST_MARKER`] says so), after stopping its daemon, and
/// removes the default pins it left.
fn clear_stale_package() {
    if !Path::new(DIST_MARKER).exists() {
        return;
    }
    say!("purging the loopwarden package a killed test run left installed");
    let packaged = Path::new("/usr/sbin/loopwarden");
    stop_processes("a packaged daemon", |pid| {
        fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == packaged)
    });
    if let Err(err) = proc::run(Command::new("dpkg").args(["--purge", "loopwarden"])) {
        say!("warning: {err:#}");
        return;
    }
    let pins = Path::new("/sys/fs/bpf/loopwarden");
    if pins.exists()
        && let Err(err) = fs::remove_dir_all(pins)
    {
        say!("warning: {}: {err}", pins.display());
    }
    let _ = fs::remove_file(DIST_MARKER);
}

/// The entries of `dir` whose names start with `prefix` (none if it
/// cannot be read).
fn named_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// [`clear_stale_test_state`] in these directories.
fn clear_stale(netns_dir: &Path, bpffs: &Path, cgroup_root: Option<&Path>) {
    let names = |dir: &Path| named_with(dir, "lwt-");
    for ns in names(netns_dir) {
        let name = ns
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        say!("removing a stale test namespace: {name}");
        kill_netns_processes(&name);
        if let Err(err) = proc::run(Command::new("ip").args(["netns", "del", &name])) {
            say!("warning: {err:#}");
        }
    }
    let pin_dirs = names(bpffs);
    stop_stale_daemons(&pin_dirs);
    for pins in pin_dirs {
        say!("removing stale test pins: {}", pins.display());
        if let Err(err) = fs::remove_dir_all(&pins) {
            say!("warning: {}: {err}", pins.display());
        }
    }
    if let Some(root) = cgroup_root {
        for cgroup in names(root) {
            // Children first; a cgroup still holding processes stays.
            let mut dirs: Vec<PathBuf> = walk_dirs(&cgroup);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                if let Err(err) = fs::remove_dir(&dir) {
                    say!("warning: stale test cgroup {}: {err}", dir.display());
                }
            }
        }
    }
}

/// SIGKILLs the processes still in the test namespace `name` (servers,
/// relays, holders a killed test left): deleting a namespace's name does
/// not end them, and they would run on in a namespace nothing names.
fn kill_netns_processes(name: &str) {
    let pids = match Command::new("ip").args(["netns", "pids", name]).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            say!(
                "warning: ip netns pids {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        Err(err) => {
            say!("warning: ip netns pids {name}: {err}");
            return;
        }
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        say!("stopping a process a killed test run left in {name}: pid {pid}");
        // SAFETY: kill(2) on a pid `ip` just found in the test's namespace.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Stops the daemons a killed run left running on `pin_dirs` (its test
/// process gone, a daemon child runs on, its links held by its own
/// descriptors): each process whose arguments name one of them, SIGTERM
/// then, a second later, SIGKILL.
fn stop_stale_daemons(pin_dirs: &[PathBuf]) {
    if pin_dirs.is_empty() {
        return;
    }
    stop_processes("a daemon", |pid| {
        let args = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        args.split(|b| *b == 0).any(|arg| {
            pin_dirs
                .iter()
                .any(|d| arg == d.as_os_str().as_encoded_bytes())
        })
    });
}

/// Stops each process `is_one` says a killed test run left (`what`, for
/// the message): SIGTERM then, a second later, SIGKILL to those it still
/// says so of (not a pid taken again since).
fn stop_processes(what: &str, is_one: impl Fn(i32) -> bool) {
    let found: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_one(*pid))
        .collect();
    for pid in &found {
        say!("stopping {what} a killed test run left: pid {pid}");
        // SAFETY: kill(2) on a pid just found to be one.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    if found.is_empty() {
        return;
    }
    std::thread::sleep(Duration::from_secs(1));
    for pid in found.into_iter().filter(|pid| is_one(*pid)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// `dir` and every directory below it.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.extend(walk_dirs(&entry.path()));
            }
        }
    }
    found
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ")
            .then(|| pre.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

fn summarize(steps: &[Step], tally: proc::Tally) -> anyhow::Result<()> {
    say!("=== summary ===");
    for step in steps {
        let verdict = if step.result.is_ok() { "ok" } else { "FAILED" };
        say!(
            "  {:<26} {:<6} {:>6.1} s",
            step.name,
            verdict,
            step.elapsed.as_secs_f64()
        );
    }
    let failed: Vec<&str> = steps
        .iter()
        .filter(|step| step.result.is_err())
        .map(|step| step.name)
        .collect();
    // The plain tally, alone on the last line, for whoever reads the log's end:
    // tests and steps apart, so a failed lint or VM step is not hidden behind
    // a failed test's count.
    if failed.is_empty() && !proc::interrupted() {
        say!("all {} steps passed", steps.len());
        println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
        Ok(())
    } else {
        println!(
            "xtask: {} passed, {} failed; {} of {} steps failed{}",
            tally.passed,
            tally.failed,
            failed.len(),
            steps.len(),
            if proc::interrupted() {
                ", interrupted"
            } else {
                ""
            }
        );
        if failed.is_empty() {
            anyhow::bail!("interrupted")
        }
        anyhow::bail!("failed: {}", failed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::symlink, process::Stdio};

    use super::*;

    /// What a killed run leaves, made in a scratch directory: a pin
    /// directory a daemon still names (here a shell whose `$0` is that
    /// path), cgroups with a child, and things not the harness's.
    #[test]
    fn a_killed_runs_leftovers_and_nothing_else_are_removed() {
        let root = std::env::temp_dir().join(format!("lwx-stale-{}", std::process::id()));
        let (netns, bpffs, cgroups) = (root.join("netns"), root.join("bpf"), root.join("cg"));
        for d in [&netns, &bpffs, &cgroups] {
            fs::create_dir_all(d).unwrap();
        }
        let pins = bpffs.join("lwt-1-0");
        fs::create_dir_all(pins.join("maps")).unwrap();
        fs::write(pins.join("maps/LW_META"), "").unwrap();
        fs::create_dir_all(bpffs.join("loopwarden")).unwrap();
        fs::create_dir_all(cgroups.join("lwt-1.service/worker")).unwrap();
        fs::create_dir_all(cgroups.join("system.slice")).unwrap();
        symlink("/nonexistent", netns.join("other")).unwrap();
        // One process (no child left behind) whose arguments name the pins.
        // The system's python by its path: `python3` on PATH may be a
        // shim (pyenv) that executes its way through `env`, `bash` and
        // `pyenv` first, its arguments reading empty at each exec.
        let mut daemon = Command::new("/usr/bin/python3")
            .args(["-c", "import time; time.sleep(60)"])
            .arg(&pins)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut unrelated = Command::new("sleep").arg("60").spawn().unwrap();
        // `spawn` returns once the exec has begun, before the new program's
        // arguments are set up: until then `/proc/PID/cmdline` reads empty
        // (or another program's), and the daemon would not be known by its
        // arguments. Waited for until they name the pins.
        let cmdline = format!("/proc/{}/cmdline", daemon.id());
        let names_pins = || {
            let args = fs::read(&cmdline).unwrap_or_default();
            args.split(|b| *b == 0)
                .any(|arg| arg == pins.as_os_str().as_encoded_bytes())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !names_pins() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(names_pins(), "the stand-in daemon's arguments never showed");

        clear_stale(&netns, &bpffs, Some(&cgroups));

        assert!(!pins.exists(), "the stale pins stay");
        assert!(
            !cgroups.join("lwt-1.service").exists(),
            "the stale cgroup stays"
        );
        assert!(
            bpffs.join("loopwarden").exists(),
            "another pin directory went"
        );
        assert!(cgroups.join("system.slice").exists(), "another cgroup went");
        assert!(netns.join("other").symlink_metadata().is_ok());
        // The daemon that named the pins is stopped; the other process not.
        let status = daemon.wait().unwrap();
        assert!(!status.success(), "{status}");
        assert!(
            unrelated.try_wait().unwrap().is_none(),
            "an unrelated process was stopped"
        );
        let _ = unrelated.kill();
        let _ = unrelated.wait();
        fs::remove_dir_all(&root).unwrap();
    }
}
