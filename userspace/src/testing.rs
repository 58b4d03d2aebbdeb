//! Helpers the unit tests of several modules share.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

/// A child process that named itself `\xffrelay` (its comm, which the
/// kernel prints unescaped in `/proc/PID/status` and `stat`: not UTF-8),
/// running for 30 s unless killed; returned once the name is set.
pub fn child_named_in_bytes() -> Child {
    python_child(
        "import ctypes, time\n\
         ctypes.CDLL(None).prctl(15, b'\\xffrelay', 0, 0, 0)\n\
         print(flush=True)\n\
         time.sleep(30)",
    )
    .0
}

/// The system Python running `code`, and the first line it prints (which
/// it has printed when this returns).
fn python_child(code: &str) -> (Child, String) {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", code])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut line)
        .expect("its first line");
    (child, line)
}

/// A child process (the system Python) that runs `body`, lines of Python
/// with `libc`, `os`, `socket` and `time` at hand, in a thread that has
/// first unshared its descriptor table (`unshare(CLONE_FILES)`): what it
/// opens is in that thread's table only. The child and the first line
/// `body` prints (which it has printed when this returns).
pub fn child_in_a_threads_own_table(body: &str) -> (Child, String) {
    let mut code = String::from(
        "import ctypes, os, socket, threading, time\n\
         libc = ctypes.CDLL(None)\n\
         def own():\n    assert libc.unshare(0x400) == 0\n",
    );
    for line in body.lines() {
        code.push_str("    ");
        code.push_str(line);
        code.push('\n');
    }
    code.push_str("threading.Thread(target=own).start()\n");
    python_child(&code)
}

/// A child process whose main thread has exited (`pthread_exit`) while
/// another runs for 30 s unless killed, holding a listening socket; the
/// child and that socket's inode, once the main thread is gone.
pub fn child_without_its_main_thread() -> (Child, u64) {
    let (child, line) = python_child(
        "import ctypes, os, socket, threading, time\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', 0))\n\
         s.listen()\n\
         threading.Thread(target=time.sleep, args=(30,)).start()\n\
         print(os.fstat(s.fileno()).st_ino, flush=True)\n\
         ctypes.CDLL(None).pthread_exit(None)",
    );
    let inode = line.trim().parse().expect("an inode");
    let main = std::path::PathBuf::from(format!("/proc/{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !crate::cut::procs::zombie(&main) {
        assert!(
            std::time::Instant::now() < deadline,
            "the main thread did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (child, inode)
}
