//! A helper process the test speaks to in lines: it writes a line to the
//! process's stdin, reads one from its stdout. Killed when dropped.

use std::{
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// How long [`Talker::line`] waits for a line: a helper that stops
/// answering fails its test, not the whole suite at its time limit.
const LINE_WAIT: Duration = Duration::from_secs(60);

/// A running helper with its stdin and stdout piped to the test.
pub struct Talker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// What was read past the last line.
    pending: Vec<u8>,
    what: String,
}

impl Talker {
    /// Starts `cmd`, named `what` in failures.
    pub fn spawn(cmd: &mut Command, what: &str) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} failed: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            child,
            stdin,
            stdout,
            pending: Vec::new(),
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it writes, without its newline; fails the test if it
    /// exits first, or writes none within [`LINE_WAIT`].
    pub fn line(&mut self) -> String {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} wrote no line in {} s",
                self.what,
                LINE_WAIT.as_secs()
            );
            let mut fd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, ours, for the call's length.
            let ready = unsafe { libc::poll(&mut fd, 1, left.as_millis() as i32) };
            if ready <= 0 {
                // Timed out (said above), or interrupted.
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = self
                .stdout
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("reading from {} failed: {e}", self.what));
            assert!(n > 0, "{} exited without a line", self.what);
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Writes `text` and a newline to it.
    pub fn say(&mut self, text: &str) {
        writeln!(self.stdin, "{text}")
            .unwrap_or_else(|e| panic!("writing to {} failed: {e}", self.what));
    }

    /// [`Talker::say`], then [`Talker::line`].
    pub fn ask(&mut self, text: &str) -> String {
        self.say(text);
        self.line()
    }
}

impl Drop for Talker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
