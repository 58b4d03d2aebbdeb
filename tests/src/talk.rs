//! A helper process the test speaks to in lines: it writes a line to the
//! process's stdin, reads one from its stdout. Killed when dropped.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

/// A running helper with its stdin and stdout piped to the test.
pub struct Talker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
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
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            stdin,
            stdout,
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it writes, without its newline; fails the test if it
    /// exits first.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading from {} failed: {e}", self.what));
        assert!(n > 0, "{} exited without a line", self.what);
        line.trim_end_matches('\n').to_owned()
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
