//! Audit lines reach stdout from a thread of their own, so a reader that
//! falls behind (journald busy, a stalled container log pipe, `loopwarden
//! run | less`) never blocks the daemon's event loop: the rings keep being
//! drained, and ident, the query socket, the metrics, reloads and the
//! watchdog keep being served.
//!
//! The reporter hands over batches through a bounded queue; while the
//! queue is full it keeps its batch and adds to it, up to a bound. Past
//! that the lines are dropped and counted, as are lines a failed write
//! took, so that every line is written or said to be lost: see
//! [`Writer::take_unwritten`].

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::Duration,
};

/// Batches queued for the writing thread (each up to some 64 KiB, or a
/// batch held while the queue was full: up to 1 MiB).
const QUEUED: usize = 16;
/// Bytes queued for the writing thread at most (beside one batch of any
/// size when none is): with the batch the reporter holds meanwhile, a
/// stalled reader costs about 2 MiB, whatever the batches' sizes.
const QUEUED_BYTES: u64 = 1024 * 1024;

/// Lines formatted and not yet written, with the reports each stands for
/// (one, or a summary's count).
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub reports: Vec<u64>,
}

impl Batch {
    /// An empty batch with room for `bytes` (kept under the allocator's
    /// mmap threshold, a batch's memory comes from the heap and returns
    /// there: no page faults per batch).
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            reports: Vec::new(),
        }
    }

    /// The lines and reports of those of its lines not whole in the first
    /// `written` bytes.
    fn lost_after(&self, written: usize) -> (u64, u64) {
        let whole = self.bytes[..written]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let lost = self.reports.get(whole..).unwrap_or_default();
        (lost.len() as u64, lost.iter().sum())
    }
}

/// Lines that never reached the output, and the reports they stood for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unwritten {
    pub lines: u64,
    pub reports: u64,
    /// How many of them a failed write took (the rest: the output was
    /// too far behind).
    pub failed_lines: u64,
}

impl Unwritten {
    /// Why these lines were not written, given the first write error.
    pub fn why(&self, error: Option<&str>) -> String {
        let behind = "the reader of the daemon's standard output fell too far behind";
        match error {
            Some(e) if self.failed_lines == self.lines => format!("writing them failed: {e}"),
            Some(e) => format!("{behind}, and writing {} failed: {e}", self.failed_lines),
            None => behind.to_owned(),
        }
    }
}

/// Counts the writing thread keeps for the reporter.
#[derive(Default)]
struct Shared {
    failed_lines: AtomicU64,
    failed_reports: AtomicU64,
    /// Lines (and their reports) handed to the thread and not yet written
    /// or failed: at an exit that cannot wait for them, they are lost too.
    queued_lines: AtomicU64,
    queued_reports: AtomicU64,
    /// Their bytes, for [`QUEUED_BYTES`].
    queued_bytes: AtomicU64,
    /// The first write error since the last look, as text.
    error: std::sync::Mutex<Option<String>>,
}

/// Where batches go: a thread of their own, or (for tests) written at
/// once.
enum Sink {
    Thread {
        queue: Option<SyncSender<Batch>>,
        thread: Option<JoinHandle<()>>,
    },
    Inline {
        out: Box<dyn Write>,
        mid_line: bool,
    },
}

/// The writing thread and the queue to it.
pub struct Writer {
    sink: Sink,
    shared: Arc<Shared>,
    /// Lines dropped here because the queue stayed full.
    dropped: Unwritten,
}

impl Writer {
    /// Starts the thread `name` writing to `out`, holding std's stdout
    /// lock for each batch: the sweeper writes its `cut` lines through a
    /// writer of its own, and a batch past `PIPE_BUF`, which a pipe may
    /// take in parts, must not interleave with theirs.
    pub fn spawn(name: &str, mut out: Box<dyn Write + Send>) -> io::Result<Self> {
        let (queue, batches) = mpsc::sync_channel::<Batch>(QUEUED);
        let shared = Arc::new(Shared::default());
        let counts = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut mid_line = false;
                for batch in batches {
                    let _serialised = io::stdout().lock();
                    put(&mut out, &batch, &mut mid_line, &counts, Full::Wait);
                    let (lines, reports) = batch.lost_after(0);
                    counts.queued_lines.fetch_sub(lines, Ordering::Relaxed);
                    counts.queued_reports.fetch_sub(reports, Ordering::Relaxed);
                    let size = batch.bytes.len() as u64;
                    counts.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                }
            })?;
        Ok(Self {
            sink: Sink::Thread {
                queue: Some(queue),
                thread: Some(thread),
            },
            shared,
            dropped: Unwritten::default(),
        })
    }

    /// A writer that writes each batch at once, on the caller's thread.
    pub fn inline(out: Box<dyn Write>) -> Self {
        Self {
            sink: Sink::Inline {
                out,
                mid_line: false,
            },
            shared: Arc::default(),
            dropped: Unwritten::default(),
        }
    }

    /// Hands `batch` to the thread; gives it back when the queue is full.
    pub fn send(&mut self, batch: Batch) -> Result<(), Batch> {
        match &mut self.sink {
            Sink::Thread {
                queue: Some(queue), ..
            } => {
                let size = batch.bytes.len() as u64;
                let queued = self.shared.queued_bytes.load(Ordering::Relaxed);
                if queued > 0 && queued + size > QUEUED_BYTES {
                    return Err(batch);
                }
                self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
                let (lines, reports) = batch.lost_after(0);
                // Counted before the thread can take it off.
                self.shared.queued_lines.fetch_add(lines, Ordering::Relaxed);
                self.shared
                    .queued_reports
                    .fetch_add(reports, Ordering::Relaxed);
                match queue.try_send(batch) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => {
                        self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                        self.shared.queued_lines.fetch_sub(lines, Ordering::Relaxed);
                        self.shared
                            .queued_reports
                            .fetch_sub(reports, Ordering::Relaxed);
                        Err(batch)
                    }
                }
            }
            Sink::Thread { queue: None, .. } => Err(batch),
            Sink::Inline { out, mid_line } => {
                // On the event loop: a full output is a failed write, as
                // ever, never waited for.
                put(out, &batch, mid_line, &self.shared, Full::Fail);
                Ok(())
            }
        }
    }

    /// Counts `batch` as never written: the output stayed too far behind.
    pub fn drop_batch(&mut self, batch: Batch) {
        let (lines, reports) = batch.lost_after(0);
        self.dropped.lines += lines;
        self.dropped.reports += reports;
    }

    /// The lines lost since the last call, and the first write error
    /// among them.
    pub fn take_unwritten(&mut self) -> (Unwritten, Option<String>) {
        let failed_lines = self.shared.failed_lines.swap(0, Ordering::Relaxed);
        let failed_reports = self.shared.failed_reports.swap(0, Ordering::Relaxed);
        let error = self
            .shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let lost = Unwritten {
            lines: std::mem::take(&mut self.dropped.lines) + failed_lines,
            reports: std::mem::take(&mut self.dropped.reports) + failed_reports,
            failed_lines,
        };
        (lost, error)
    }

    /// Closes the queue and waits, up to `limit`, for what it holds to be
    /// written. Whether it was.
    pub fn finish(&mut self, limit: Duration) -> bool {
        let Sink::Thread { queue, thread } = &mut self.sink else {
            return true;
        };
        *queue = None;
        let Some(thread) = thread.take() else {
            return true;
        };
        if crate::join_within(thread, limit) {
            return true;
        }
        // What the thread still holds is not written by the exit: counted
        // as lost, so every line is written or said to be.
        self.dropped.lines += self.shared.queued_lines.swap(0, Ordering::Relaxed);
        self.dropped.reports += self.shared.queued_reports.swap(0, Ordering::Relaxed);
        false
    }
}

/// Writes `batch`, counting in `counts` the lines a failed write took.
/// `mid_line`: a write cut short left part of a line, so the next batch
/// starts on a line of its own.
fn put(out: &mut dyn Write, batch: &Batch, mid_line: &mut bool, counts: &Shared, full: Full) {
    if *mid_line {
        *mid_line = write_batch(out, b"\n", full).is_err();
    }
    if let Err((e, written)) = write_batch(out, &batch.bytes, full) {
        *mid_line = written > 0 && batch.bytes.get(written - 1) != Some(&b'\n');
        let (lines, reports) = batch.lost_after(written);
        counts.failed_lines.fetch_add(lines, Ordering::Relaxed);
        counts.failed_reports.fetch_add(reports, Ordering::Relaxed);
        let mut first = counts.error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| e.to_string());
    }
}

/// Writes all of `bytes` (more than one `write(2)` only if the output takes
/// them in parts); on an error, how many were written.
///
/// An output left non-blocking (`O_NONBLOCK` on a descriptor the daemon
/// was given, shared with whoever set it) that is full is waited for, as a
/// blocking one would be, by a writer on a thread of its own
/// ([`Full::Wait`]: what queues behind it meanwhile is dropped and counted
/// as for a slow reader); one on the event loop fails ([`Full::Fail`]).
pub(super) fn write_batch(
    out: &mut dyn Write,
    bytes: &[u8],
    full: Full,
) -> Result<(), (io::Error, usize)> {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written)),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && full == Full::Wait => {
                std::thread::sleep(FULL_RETRY);
            }
            Err(e) => return Err((e, written)),
        }
    }
    Ok(())
}

/// What [`write_batch`] does with a full non-blocking output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Full {
    /// Waits for it (on a writer's own thread).
    Wait,
    /// Fails, as for any other error (on the event loop).
    Fail,
}

/// How long a full non-blocking output is left before it is written again.
const FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    /// An output whose writes fail after `ok` bytes.
    struct Failing {
        ok: usize,
        got: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.ok);
            self.ok -= n;
            self.got.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A non-blocking output that is full for its first `full` writes.
    struct FullOutput {
        full: usize,
        got: Vec<u8>,
    }

    impl Write for FullOutput {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full > 0 {
                self.full -= 1;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(3);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A full non-blocking output is waited for, not taken for a failed
    /// write (which loses the rest of the batch).
    #[test]
    fn a_full_non_blocking_output_is_waited_for() {
        let mut out = FullOutput {
            full: 5,
            got: Vec::new(),
        };
        assert!(write_batch(&mut out, b"one line\n", Full::Wait).is_ok());
        assert_eq!(out.got, b"one line\n");
        // On the event loop it fails, as it did.
        let mut out = FullOutput {
            full: 1,
            got: Vec::new(),
        };
        assert!(write_batch(&mut out, b"x\n", Full::Fail).is_err());
    }

    fn batch(text: &str, reports: &[u64]) -> Batch {
        assert_eq!(text.matches('\n').count(), reports.len());
        Batch {
            bytes: text.as_bytes().to_vec(),
            reports: reports.to_vec(),
        }
    }

    #[test]
    fn lines_a_failed_write_took_are_counted_with_the_error() {
        let got = Arc::default();
        let out = Failing {
            ok: 6,
            got: Arc::clone(&got),
        };
        let mut writer = Writer::spawn("test-lines", Box::new(out)).unwrap();
        writer.send(batch("one\ntwo\n", &[1, 2])).unwrap();
        writer.send(batch("three\n", &[5])).unwrap();
        assert!(writer.finish(Duration::from_secs(5)));
        // "one" was written whole; "two" in part, "three" not at all.
        let (lost, error) = writer.take_unwritten();
        assert_eq!((lost.lines, lost.reports, lost.failed_lines), (2, 7, 2));
        assert!(error.is_some_and(|e| e.contains("pipe")));
        assert_eq!(&*got.lock().unwrap(), b"one\ntw");
    }

    /// An output that takes nothing until its sender is dropped.
    struct Stalled(mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// However large the batches (a batch held while the queue was full
    /// grows to 1 MiB), a stalled output has at most 1 MiB queued for it,
    /// not [`QUEUED`] batches of any size.
    #[test]
    fn a_stalled_output_holds_a_bounded_number_of_bytes() {
        let (release, stalled) = mpsc::channel();
        let mut writer = Writer::spawn("test-lines", Box::new(Stalled(stalled))).unwrap();
        let line = format!("{}\n", "x".repeat(512 * 1024 - 1));
        let mut taken = 0;
        while taken < 64 && writer.send(batch(&line, &[1])).is_ok() {
            taken += 1;
        }
        assert!(taken >= 1, "the first batch is always taken");
        // About 1 MiB, as the README says (with the batch held: 2 MiB).
        assert!(
            taken * line.len() <= 1024 * 1024,
            "{taken} batches of 512 KiB queued"
        );
        drop(release);
        assert!(writer.finish(Duration::from_secs(5)));
        assert_eq!(writer.take_unwritten().0, Unwritten::default());
    }

    #[test]
    fn batches_dropped_for_a_full_queue_are_counted() {
        let mut writer = Writer::spawn("test-lines", Box::new(io::sink())).unwrap();
        writer.drop_batch(batch("a\nb\n", &[1, 8]));
        let (lost, error) = writer.take_unwritten();
        assert_eq!((lost.lines, lost.reports, lost.failed_lines), (2, 9, 0));
        assert!(error.is_none());
        assert_eq!(writer.take_unwritten().0, Unwritten::default());
        assert!(writer.finish(Duration::from_secs(5)));
    }
}
