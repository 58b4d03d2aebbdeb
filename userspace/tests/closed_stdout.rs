//! A one-shot command whose reader has gone away (`loopwarden catalog |
//! head -1`) ends the way other Unix tools do, by SIGPIPE, not with a
//! panic.

use std::{
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
};

#[test]
fn catalog_into_a_closed_pipe_ends_by_sigpipe_without_a_panic() {
    // The reading end is closed before the command starts: its first
    // write meets a pipe with no reader, whatever the timing.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_loopwarden"))
        .arg("catalog")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}
