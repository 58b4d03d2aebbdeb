//! Small helpers around `std::process::Command` and the workspace layout, so
//! every task prints the commands it runs and fails with the command in the
//! error message.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Prints `msg` prefixed with `xtask:` so our output stands out from cargo's.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("xtask: {}", format_args!($($arg)*)) };
}
pub(crate) use say;

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// A `cargo` command run from the workspace root. Uses the `cargo` on PATH (the
/// rustup proxy), not `$CARGO`, so `+nightly` keeps working.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `apt-get`, waiting up to 5 minutes for the package manager's lock (held
/// for a while after boot by apt's daily jobs or unattended-upgrades)
/// instead of failing at once.
pub fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.args(["-o", "DPkg::Lock::Timeout=300"]);
    cmd
}

/// Looks `program` up on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// Renders a command line for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let arg = arg.to_string_lossy();
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
    {
        arg.into_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio, failing unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = display(cmd);
    say!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout, failing (with its stderr) unless
/// it exits 0.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Like [`output`], but a missing program or a failure is just `None`: for
/// probing whether something is installed and works.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Tests counted from `cargo test`'s `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    /// Adds the counts of one `test result: ok. 3 passed; 1 failed; ...` line.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

/// Set by SIGINT, SIGTERM or SIGHUP once [`catch_interrupts`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP end the command [`run_tests`]
/// runs (its whole process group) and then make [`interrupted`] true,
/// instead of killing this process before it cleans up.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_interrupt as *const () as libc::sighandler_t) };
    }
}

/// Whether a signal [`catch_interrupts`] caught came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Runs a `cargo test` command, echoing its stdout as it comes and adding
/// its `test result:` lines to `tally`; fails unless it exits 0. The
/// command runs in a process group of its own, ended (SIGTERM, and 5 s
/// later SIGKILL) after `limit` or on an interrupt, so that a hung test
/// cannot use up a CI run's time and the caller can still clean up.
pub fn run_tests(cmd: &mut Command, tally: &mut Tally, limit: Duration) -> anyhow::Result<()> {
    use std::{
        io::{BufRead as _, BufReader},
        os::unix::process::CommandExt as _,
    };
    let line = display(cmd);
    say!("$ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let group = i32::try_from(child.id()).context("a pid beyond i32")?;
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let mut ended: Option<(Instant, &str)> = None;
        loop {
            match watch.recv_timeout(Duration::from_millis(200)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return ended.map(|(_, why)| why),
            }
            let why = match ended {
                Some((at, _)) if at.elapsed() >= Duration::from_secs(5) => {
                    // SAFETY: kill(2) on the group this function made.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                    continue;
                }
                Some(_) => continue,
                None if interrupted() => "interrupted",
                None if Instant::now() >= deadline => "timed out",
                None => continue,
            };
            // SAFETY: as above.
            unsafe { libc::kill(-group, libc::SIGTERM) };
            ended = Some((Instant::now(), why));
        }
    });
    if let Some(stdout) = child.stdout.take() {
        // By bytes: a line that is not UTF-8 must not end the reading
        // (the command would die of a closed pipe at its next line).
        let mut out = BufReader::new(stdout);
        let mut bytes = Vec::new();
        while out.read_until(b'\n', &mut bytes).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim_end_matches('\n');
            println!("{text}");
            tally.add_line(text);
            bytes.clear();
        }
    }
    let status = child.wait();
    let _ = done.send(());
    let ended = watchdog.join().ok().flatten();
    let status = status.with_context(|| format!("waiting for `{line}`"))?;
    match ended {
        Some("timed out") => bail!("`{line}` timed out after {} min", limit.as_secs() / 60),
        Some(why) => bail!("`{line}` {why}"),
        None if !status.success() => bail!("`{line}` failed ({status})"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        process::Command,
        time::{Duration, Instant},
    };

    use super::{Tally, run_tests};

    /// A line that is not UTF-8 is shown (lossily) and read past: the
    /// counts after it are taken.
    #[test]
    fn output_that_is_not_utf8_does_not_end_the_reading() {
        let mut tally = Tally::default();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "printf 'bad \\377 line\\n'; echo 'test result: ok. 2 passed; 0 failed;'",
        ]);
        run_tests(&mut cmd, &mut tally, Duration::from_secs(60)).unwrap();
        assert_eq!(tally.passed, 2);
    }

    /// A command past its limit is ended with everything it started (its
    /// process group), and fails saying so.
    #[test]
    fn a_command_past_its_limit_is_ended_with_its_group() {
        let dir = std::env::temp_dir().join(format!("lwx-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("pid");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & echo $! > \"$0\"; wait"])
            .arg(&pid_file);
        let started = Instant::now();
        let err = run_tests(&mut cmd, &mut Tally::default(), Duration::from_secs(1)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains("timed out"), "{err:#}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // The background sleep went with the group (reaped by init, or a
        // zombie for a moment).
        let deadline = Instant::now() + Duration::from_secs(5);
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(gone(), "the group's sleep {pid} runs on");
    }

    #[test]
    fn tally_reads_cargo_test_result_lines() {
        let mut tally = Tally::default();
        tally.add_line("test result: ok. 63 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.03s");
        tally.add_line(
            "test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        tally.add_line("running 6 tests");
        assert_eq!(
            tally,
            Tally {
                passed: 68,
                failed: 1
            }
        );
    }
}
