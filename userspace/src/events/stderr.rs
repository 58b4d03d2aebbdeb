//! The daemon's diagnostics reach stderr from a thread of their own, as the
//! audit lines reach stdout ([`super::writer`]): under systemd both go to
//! the journal, and while it is busy a `write(2)` to stderr blocks. Written
//! from the event loop (a warning each refresh), that would stop the rings'
//! draining, the query socket, ident and the watchdog. Lines queue here
//! instead, up to [`QUEUED`]; past that they are dropped and counted, and
//! the count is said at the next refresh ([`say_dropped`]: a warning
//! queued like any line, so written once the reader reads again) and in
//! all at exit ([`finish`]).

use std::{
    fs::File,
    io::{self, Write},
    mem::ManuallyDrop,
    os::fd::FromRawFd as _,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing_subscriber::fmt::MakeWriter;

use super::writer::{Full, write_batch};

/// Lines queued for the writing thread.
const QUEUED: usize = 1024;

/// The queue and its thread, once [`Queued::spawn`] started them.
struct Shared {
    queue: Mutex<Option<SyncSender<Vec<u8>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Lines dropped (queue full), and how many of them were said.
    dropped: AtomicU64,
    said: AtomicU64,
    /// Lines queued and not yet written.
    pending: AtomicU64,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The `tracing` writer: one line (one event) a message to the thread.
#[derive(Clone, Copy)]
pub struct Queued;

impl Queued {
    /// Starts the writing thread; `None` if it cannot start (write to
    /// stderr directly then).
    pub fn spawn() -> Option<Self> {
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(QUEUED);
        let shared = Shared {
            queue: Mutex::new(Some(queue)),
            thread: Mutex::new(None),
            dropped: AtomicU64::new(0),
            said: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        };
        SHARED.set(shared).ok()?;
        let thread = std::thread::Builder::new()
            .name("diagnostics".into())
            .spawn(move || {
                // fd 2 itself, not std's handle: a write blocked on a
                // stalled reader holds no lock a last word would wait for.
                // SAFETY: fd 2 stays open for the process's life;
                // ManuallyDrop keeps this handle from closing it.
                let mut err = ManuallyDrop::new(unsafe { File::from_raw_fd(2) });
                for line in lines {
                    // A full non-blocking stderr is waited for; a failed
                    // write (its reader gone) has no one to be said to.
                    let _ = write_batch(&mut *err, &line, Full::Wait);
                    if let Some(shared) = SHARED.get() {
                        shared.pending.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            })
            .ok()?;
        *SHARED
            .get()?
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Some(Self)
    }
}

/// One event's text, sent whole when the formatter is done with it.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        if line.is_empty() {
            return;
        }
        let unsent = match SHARED.get() {
            Some(shared) => shared.send(line),
            None => Some(line),
        };
        // No thread, or one closed at exit ([`finish`]): written here,
        // after what it had queued.
        if let Some(line) = unsent {
            let _ = io::stderr().write_all(&line);
        }
    }
}

impl Shared {
    /// Queues `line`, or counts it dropped when the queue is full; gives it
    /// back when the queue is closed.
    fn send(&self, line: Vec<u8>) -> Option<Vec<u8>> {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queue.as_ref() else {
            return Some(line);
        };
        // Counted first: the thread may write it before `try_send` returns.
        self.pending.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(line) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(TrySendError::Disconnected(line)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                Some(line)
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Queued {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

/// Says how many lines were dropped since it was last said (called each
/// refresh; the warning itself is queued, so it is written once the
/// reader reads again).
pub fn say_dropped() {
    let Some(shared) = SHARED.get() else {
        return;
    };
    let dropped = shared.dropped.load(Ordering::Relaxed);
    let said = shared.said.load(Ordering::Relaxed);
    if dropped > said {
        tracing::warn!(
            dropped_lines = dropped - said,
            "{} diagnostic lines were dropped: the reader of the daemon's standard error fell \
             too far behind",
            dropped - said
        );
        // Said only if this warning was queued (nothing was dropped since,
        // itself included); else the next refresh says it all again.
        if shared.dropped.load(Ordering::Relaxed) == dropped {
            shared.said.store(dropped, Ordering::Relaxed);
        }
    }
}

/// Waits, up to `limit`, until what is queued is written (a panic's hook:
/// the lines before it explain it).
pub fn flush(limit: Duration) {
    let Some(shared) = SHARED.get() else {
        return;
    };
    let deadline = Instant::now() + limit;
    while shared.pending.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// At exit: closes the queue and waits, up to `limit`, for what it holds to
/// be written, then says how many lines were dropped in all, if any
/// (straight to stderr: the queue is closed).
pub fn finish(limit: Duration) {
    let Some(shared) = SHARED.get() else {
        return;
    };
    shared
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let thread = shared
        .thread
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let ended = thread.is_none_or(|thread| crate::join_within(thread, limit));
    let dropped = shared.dropped.load(Ordering::Relaxed);
    // Not while the thread is still blocked on a stalled reader: this
    // write would block as long.
    if dropped > 0 && ended {
        let _ = writeln!(
            io::stderr(),
            "loopwarden: {dropped} diagnostic lines in all were dropped: the reader of standard \
             error fell too far behind"
        );
    }
}
