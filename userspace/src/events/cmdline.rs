//! Reading a process's command line, which reads that process's memory:
//! the kernel takes its memory map lock (`mmap_read_lock_killable`) to copy
//! the arguments out. Any process can keep that lock from being given for
//! as long as it likes: a tracer of it (its own parent may be one) that
//! peeks at a page of a file on a FUSE mount whose server never answers
//! holds the lock for reading while it waits, and a `mmap()` of the
//! process then queued for writing makes every later reader wait behind
//! it. (The pages themselves cannot be made to wait: since Linux 4.17 the
//! kernel reads arguments only from anonymous memory, CVE-2018-1120.)
//! `ps` and `pgrep` hang on such a process; the daemon must not, whether
//! in its event loop (an audit line, a query's answer), its start (the
//! seeding's scripts), its sweep or its upkeep.
//!
//! So each read runs on a reader thread and is waited for [`WAIT`] at
//! most. One still running past it goes on on its thread and the caller
//! goes without the command line; no other read of that process is asked
//! until it returns (each such process costs a caller [`WAIT`] once), and
//! while [`MAX_WAITING`] reads wait none is made. The wait is killable, so
//! a reader still waiting does not hold the daemon's exit.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::{
        Arc, LazyLock, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError, Sender, SyncSender},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

/// How long a caller waits for a command line: far more than a read takes
/// (microseconds), even on a busy host.
pub const WAIT: Duration = Duration::from_millis(100);
/// Reads that may wait at once; past them no command line is read until
/// one returns.
const MAX_WAITING: usize = 4;
/// Reader threads kept idle; more, started while several callers read at
/// once, end after their read.
const MAX_IDLE: usize = 4;

/// A read asked of a reader thread.
struct Job {
    /// The process's `/proc` directory: whose reads wait.
    dir: PathBuf,
    file: File,
    max: usize,
    answer: SyncSender<io::Result<Vec<u8>>>,
    /// Set (under [`READERS`]' lock) once the caller stopped waiting.
    abandoned: Arc<AtomicBool>,
    asked: Instant,
}

#[derive(Default)]
struct Readers {
    idle: Vec<Sender<Job>>,
    /// The processes whose read outlasted [`WAIT`] and has not returned.
    waiting: HashSet<PathBuf>,
    /// Whether the reads waiting reached [`MAX_WAITING`] and were said to.
    full: bool,
}

static READERS: LazyLock<Mutex<Readers>> = LazyLock::new(Mutex::default);

fn readers() -> std::sync::MutexGuard<'static, Readers> {
    READERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first `max` bytes of `file`, the `cmdline` of the process whose
/// `/proc` directory is `dir`, read on a reader thread: `None` if the read
/// failed or outlasted [`WAIT`], or while an earlier read of that process,
/// or [`MAX_WAITING`] reads of any, still wait.
pub fn read(dir: &Path, file: File, max: usize) -> Option<Vec<u8>> {
    let reader = {
        let mut readers = readers();
        if readers.waiting.contains(dir) {
            return None;
        }
        if readers.waiting.len() >= MAX_WAITING {
            if !readers.full {
                readers.full = true;
                warn!(
                    "{MAX_WAITING} reads of processes' command lines wait on their memory map \
                     locks: no command line is read until one returns (lines and answers go \
                     without)"
                );
            }
            return None;
        }
        readers.idle.pop()
    };
    let reader = match reader {
        Some(reader) => reader,
        None => start_reader()?,
    };
    let (answer, answered) = mpsc::sync_channel(1);
    let abandoned = Arc::new(AtomicBool::new(false));
    let job = Job {
        dir: dir.to_owned(),
        file,
        max,
        answer,
        abandoned: abandoned.clone(),
        asked: Instant::now(),
    };
    reader.send(job).ok()?;
    match answered.recv_timeout(WAIT) {
        Ok(read) => read.ok(),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => {
            let mut readers = readers();
            // Answered between the timeout and the lock: the reader checks
            // `abandoned` under the same lock before it answers.
            if let Ok(read) = answered.try_recv() {
                return read.ok();
            }
            abandoned.store(true, Ordering::Relaxed);
            readers.waiting.insert(dir.to_owned());
            warn!(
                "reading the command line of {} waited past {} ms (its memory map lock is \
                 held, or queued for: a process can keep it so): lines and answers about it go \
                 without one until the read returns",
                dir.display(),
                WAIT.as_millis()
            );
            None
        }
    }
}

/// Starts a reader thread; the sender of its jobs.
fn start_reader() -> Option<Sender<Job>> {
    let (jobs, next) = mpsc::channel::<Job>();
    let again = jobs.clone();
    let started = std::thread::Builder::new()
        .name("lw-cmdline".into())
        .spawn(move || {
            for job in next {
                let mut bytes = Vec::new();
                let read = (&job.file)
                    .take(job.max as u64)
                    .read_to_end(&mut bytes)
                    .map(|_| bytes);
                let mut readers = readers();
                if job.abandoned.load(Ordering::Relaxed) {
                    readers.waiting.remove(&job.dir);
                    readers.full = false;
                    info!(
                        "the read of {}'s command line returned after {} s",
                        job.dir.display(),
                        job.asked.elapsed().as_secs()
                    );
                }
                // Never blocks: room for one answer, and only one is sent.
                let _ = job.answer.send(read);
                if readers.idle.len() >= MAX_IDLE {
                    break;
                }
                readers.idle.push(again.clone());
            }
        });
    match started {
        Ok(_) => Some(jobs),
        Err(e) => {
            warn!("starting a thread to read a command line failed ({e}): it goes without");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe's read end, as the `cmdline` a read waits on until the write
    /// end is written to and dropped.
    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().expect("a pipe");
        (File::from(r), File::from(w))
    }

    #[test]
    fn a_read_that_waits_is_given_up_and_its_process_skipped_until_it_returns() {
        use std::io::Write as _;
        let slow = Path::new("/proc/test-slow");
        let (file, mut write) = pipe();
        let asked = Instant::now();
        assert_eq!(read(slow, file, 64), None);
        assert!(asked.elapsed() >= WAIT);
        // Skipped at once while it waits, whatever the file.
        let (file, _w) = pipe();
        let asked = Instant::now();
        assert_eq!(read(slow, file, 64), None);
        assert!(asked.elapsed() < WAIT);
        // Another process is read meanwhile.
        let (file, mut other) = pipe();
        other.write_all(b"ok\0").unwrap();
        drop(other);
        assert_eq!(
            read(Path::new("/proc/test-other"), file, 64),
            Some(b"ok\0".to_vec())
        );
        // With MAX_WAITING reads waiting, none is made.
        let held: Vec<File> = (1..MAX_WAITING)
            .map(|n| {
                let (file, write) = pipe();
                assert_eq!(read(&slow.with_extension(n.to_string()), file, 64), None);
                write
            })
            .collect();
        let (file, mut ready) = pipe();
        ready.write_all(b"ready").unwrap();
        drop(ready);
        let asked = Instant::now();
        assert_eq!(read(Path::new("/proc/test-other"), file, 64), None);
        assert!(asked.elapsed() < WAIT);
        drop(held);
        // Once the read returns, the process is read again.
        write.write_all(b"late").unwrap();
        drop(write);
        let back = Instant::now() + Duration::from_secs(10);
        while readers().waiting.contains(slow) {
            assert!(Instant::now() < back, "the read never counted as returned");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (file, mut w) = pipe();
        w.write_all(b"a\0b\0").unwrap();
        drop(w);
        assert_eq!(read(slow, file, 3), Some(b"a\0b".to_vec()));
    }
}
