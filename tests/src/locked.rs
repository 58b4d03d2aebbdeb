//! A process whose memory map lock is held: its tracer peeks at a page of
//! a file whose FUSE server never answers the tracer, and a `mmap()` of the
//! process then waits behind that read, so every reader of its memory (a
//! read of its `/proc/PID/cmdline` among them) waits too, until the server
//! goes.

use std::{os::unix::process::ExitStatusExt as _, path::Path, process::Command, time::Duration};

use crate::{
    TempDir, run,
    stallfs::{StallFs, Stalled, Unanswered},
    talk::Talker,
    wait_for,
};

/// Python, arguments TOOL PORT GO: maps a page of TOOL (a file on a FUSE
/// mount) and never touches it, starts a thread for a tracer to stop and
/// one that connects to 127.0.0.1:PORT once the file GO exists (saying
/// `connected` or `error ERRNO`), says `ADDR TID` (the page, the thread to
/// stop), and at a line maps anonymous memory: a `mmap()` that waits to
/// take the memory map lock for writing behind the tracer's read, and
/// makes every later reader of the process's memory wait behind it.
const LOCKED_VICTIM: &str = r#"
import ctypes, os, socket, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
tool, port, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
page = libc.mmap(None, 4096, 1, 2, os.open(tool, os.O_RDONLY), 1 << 20)
stopped = []
def idle():
    stopped.append(threading.get_native_id())
    while True:
        time.sleep(1)
def connect():
    s = socket.socket()
    while not os.path.exists(go):
        time.sleep(0.05)
    try:
        s.connect(("127.0.0.1", port))
        print("connected", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)
    time.sleep(600)
threading.Thread(target=idle, daemon=True).start()
threading.Thread(target=connect, daemon=True).start()
while not stopped:
    time.sleep(0.01)
print(hex(page), stopped[0], flush=True)
sys.stdin.readline()
libc.mmap(None, 4096, 3, 0x22, -1, 0)
time.sleep(600)
"#;

/// Python: says `tracer PID`, reads `ADDR TID`, stops thread TID
/// (`PTRACE_ATTACH`), says `peeking` and reads its process's memory at
/// ADDR (`PTRACE_PEEKDATA`): a read of a file page that holds the
/// process's memory map lock for as long as the file's server does not
/// answer.
const PEEKING_TRACER: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
print("tracer", os.getpid(), flush=True)
addr, tid = sys.stdin.readline().split()
addr, tid = int(addr, 16), int(tid)
if libc.ptrace(16, tid, None, None) != 0:
    raise OSError(ctypes.get_errno(), "PTRACE_ATTACH")
os.waitpid(tid, 0x40000000)
print("peeking", flush=True)
libc.ptrace(2, tid, ctypes.c_void_p(addr), None)
"#;

/// The FUSE server, the process whose memory map lock its stalled read
/// holds, and the tracer: dropped in that order (the server's end fails
/// the read, which frees the process).
pub struct LockedMemory {
    _fs: StallFs,
    victim: Talker,
    _tracer: Talker,
}

impl LockedMemory {
    /// Starts the victim (Python) by `python`, which connects to
    /// 127.0.0.1:`port` once `go` exists, and holds its memory map lock;
    /// returns once a read of its command line is seen to wait. The FUSE
    /// mount is made in `dir`.
    pub fn start(dir: &TempDir, mut python: Command, port: u16, go: &Path) -> Self {
        let mnt = dir.path().join("mnt");
        let mut tracer = Talker::spawn(
            Command::new("/usr/bin/python3").args(["-c", PEEKING_TRACER]),
            "the tracer",
        );
        assert_eq!(tracer.line(), format!("tracer {}", tracer.pid()));
        let fs = StallFs::mount_unanswering(
            dir,
            &mnt,
            Stalled::Process(tracer.pid()),
            Unanswered::Reads,
        );
        let victim = Talker::spawn(
            python
                .args(["-c", LOCKED_VICTIM])
                .arg(mnt.join("tool"))
                .arg(port.to_string())
                .arg(go),
            "the process whose memory is locked",
        );
        // The server goes first, whatever ends the test: until then the
        // victim cannot be reaped (its stopped thread stays frozen for the
        // tracer's read).
        let mut held = Self {
            _fs: fs,
            victim,
            _tracer: tracer,
        };
        let page_and_thread = held.victim.line();
        assert_eq!(held._tracer.ask(&page_and_thread), "peeking");
        let tracer_wchan = format!("/proc/{}/wchan", held._tracer.pid());
        wait_for(
            "the tracer's read to wait for the FUSE server",
            Duration::from_secs(10),
            || {
                (std::fs::read_to_string(&tracer_wchan).ok()? == "request_wait_answer")
                    .then_some(())
            },
        );
        held.victim.say("lock");
        let cmdline = format!("/proc/{}/cmdline", held.pid());
        wait_for(
            "a read of its command line to wait",
            Duration::from_secs(10),
            || {
                // (`timeout` sends the signal to its process group: itself too.)
                let read = run(Command::new("timeout")
                    .args(["-s", "KILL", "1", "cat"])
                    .arg(&cmdline));
                (read.status.signal() == Some(libc::SIGKILL)).then_some(())
            },
        );
        held
    }

    /// The victim's pid.
    pub fn pid(&self) -> u32 {
        self.victim.pid()
    }

    /// The victim, which says `connected` or `error ERRNO` once it tried.
    pub fn victim(&mut self) -> &mut Talker {
        &mut self.victim
    }
}
