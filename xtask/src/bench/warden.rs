//! The daemon under test: started with a generated config (or as
//! `loopwarden baseline`, the calibration's no-op program), considered up once
//! it prints `ready` on stderr, stopped with SIGTERM (also on drop). The
//! daemon pins its programs in a pin directory of the bench's own, which
//! `loopwarden detach` empties after it stops.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::proc::{self, say};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Warden {
    child: Option<Child>,
    log: PathBuf,
    /// "the daemon" or "the baseline", for messages.
    what: &'static str,
    /// `loopwarden detach` for the daemon's pins, run after it stops.
    detach: Option<Command>,
    /// The thread copying stderr to the log: joined once the process is
    /// gone, so the log is whole (its last lines, the losses and the
    /// refresh summary, come at exit) before anyone reads it.
    copier: Option<std::thread::JoinHandle<()>>,
}

/// The daemon's `ready: ...` line, or the baseline's `baseline ready: ...`;
/// not a line that merely says "ready" ("already running", "was detached
/// already").
fn is_ready_line(line: &str) -> bool {
    line.starts_with("ready: ")
        || line.starts_with("baseline ready: ")
        || line.contains(" ready: ")
        || line.contains("\"ready: ")
}

impl Warden {
    /// Starts `bin run --config config --run-dir run_dir`, its stdout and
    /// stderr going to `log`, and waits until it reports ready.
    pub fn start(bin: &Path, config: &Path, run_dir: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin, config, run_dir, log, &[])
    }

    /// Like [`Warden::start`], with more `run` arguments.
    pub fn start_with(
        bin: &Path,
        config: &Path,
        run_dir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/loopwarden-bench-{}",
            std::process::id()
        ));
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .args(extra);
        let mut detach = Command::new(bin);
        detach
            .arg("detach")
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .stdout(Stdio::null());
        Self::spawn(cmd, log, "the daemon", Some(detach))
    }

    /// Starts `bin baseline` (a no-op `lw_baseline4` connect4 program at the
    /// cgroup root), its output going to `log`, and waits until it reports
    /// `baseline ready`.
    pub fn start_baseline(bin: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("baseline");
        Self::spawn(cmd, log, "the baseline", None)
    }

    /// Starts `cmd` and waits for its ready line. `detach` is in place
    /// before the wait: a daemon that fails or is interrupted before it is
    /// ready has its pins removed all the same when the warden drops (its
    /// links outlive it, host-wide).
    fn spawn(
        mut cmd: Command,
        log: &Path,
        what: &'static str,
        detach: Option<Command>,
    ) -> anyhow::Result<Self> {
        let mut log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", proc::display(&cmd)))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut warden = Self {
            child: Some(child),
            log: log.to_owned(),
            what,
            detach,
            copier: None,
        };

        // Copy stderr to the log for the daemon's whole life (a full pipe would
        // block it) and report the first `ready` line.
        let (ready_tx, ready_rx) = mpsc::channel();
        warden.copier = Some(std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if is_ready_line(&line)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        }));
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => Ok(warden),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{what} exited before it was ready:\n{}", warden.log_tail())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "{what} did not print `ready` within {} s:\n{}",
                READY_TIMEOUT.as_secs(),
                warden.log_tail()
            ),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!(
                "{} exited with {status} after SIGTERM:\n{}",
                self.what,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Stops the process, then removes its pins (enforcement outlives the
    /// daemon until detached).
    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = self.kill_child();
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
        if let Some(mut detach) = self.detach.take() {
            proc::run(&mut detach).context("detaching the bench daemon's pinned programs")?;
        }
        status
    }

    fn kill_child(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} was already stopped", self.what))?;
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say!(
            "{} ignored SIGTERM for {} s: killing it",
            self.what,
            STOP_TIMEOUT.as_secs()
        );
        child.kill()?;
        child.wait()?;
        bail!(
            "{} did not exit within {} s of SIGTERM",
            self.what,
            STOP_TIMEOUT.as_secs()
        )
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        if (self.child.is_some() || self.detach.is_some())
            && let Err(err) = self.terminate()
        {
            say!("warning: {err:#}");
        }
    }
}
