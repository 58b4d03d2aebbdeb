//! Helpers the unit tests of several modules share.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

/// A child process that named itself `\xffrelay` (its comm, which the
/// kernel prints unescaped in `/proc/PID/status` and `stat`: not UTF-8),
/// running for 30 s unless killed; returned once the name is set.
pub fn child_named_in_bytes() -> Child {
    let mut child = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import ctypes, time\n\
             ctypes.CDLL(None).prctl(15, b'\\xffrelay', 0, 0, 0)\n\
             print(flush=True)\n\
             time.sleep(30)",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut line)
        .expect("its line once named");
    child
}
