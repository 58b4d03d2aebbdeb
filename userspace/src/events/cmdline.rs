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
//! is told the process is [`Waiting`]; that process is not read again
//! until the read returns and [`COOLDOWN`] has passed (a process whose
//! lock is held again and again costs a caller [`WAIT`] once in that
//! time), and one read of a process runs at a time: a caller that finds
//! one running waits for it (within its own [`WAIT`]), then reads. The processes of one
//! user (the owner of `/proc/PID`) may have [`PER_UID`] reads waiting, all
//! of them [`MAX_WAITING`]: past them that user's (or every) command line
//! goes unread until one returns, and others' are still read. The wait is
//! killable, so a reader still waiting does not hold the daemon's exit.
//!
//! A user whose processes' locks are let go just before (or after) the
//! wait ends could still cost the caller a wait per new process, again and
//! again: so the time callers wait (past its first [`UNCHARGED`]) is
//! charged to the process's user (the owner of its `/proc` entry), and,
//! past [`UID_BUDGET`] waits' worth in a [`BUDGET_WINDOW`] (all users
//! together: [`ALL_BUDGET`]), reads of that user's (or anyone's)
//! processes are waited for [`SPENT_WAIT`] only, until the window ends.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read as _},
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    sync::{
        Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError,
        mpsc::{self, RecvTimeoutError, Sender, SyncSender},
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

/// How long a caller waits for a command line: far more than a read takes
/// (microseconds), even on a busy host.
pub const WAIT: Duration = Duration::from_millis(250);
/// How long a process whose read outlasted [`WAIT`] goes unread after the
/// read returned.
const COOLDOWN: Duration = Duration::from_secs(10);
/// The window a user's waits are charged in.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// How many full waits a user's processes may cost callers in a
/// [`BUDGET_WINDOW`].
const UID_BUDGET: u32 = 2;
/// How many all users' together.
const ALL_BUDGET: u32 = 8;
/// How long a read of a process whose user (or everyone) spent its budget
/// is waited for: far more than a read takes (microseconds), far less than
/// [`WAIT`]. A read given up so is not cooled down: the process is read
/// again at its next line.
const SPENT_WAIT: Duration = Duration::from_millis(25);
/// Waits up to this long are not charged: a read takes microseconds, and
/// a reader thread's start on a busy host some milliseconds.
const UNCHARGED: Duration = Duration::from_millis(10);
/// Reads of one user's processes that may wait at once.
const PER_UID: usize = 2;
/// Reads that may wait at once, all users together.
const MAX_WAITING: usize = 16;
/// Reader threads kept idle; more, started while several callers read at
/// once, end after their read.
const MAX_IDLE: usize = 4;
/// Past this many processes noted, those whose cooldown is over go.
const NOTED_MAX: usize = 1024;

/// The command line was not read: a read of the process (or too many of
/// its user's, or of all) still waits on a memory map lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting;

/// The first `max` bytes of `file`, the `cmdline` of the process whose
/// `/proc` directory (or one of whose threads' directories) is `dir`, read
/// on a reader thread: `Ok(None)` if the read failed.
pub fn read(dir: &Path, file: File, max: usize) -> Result<Option<Vec<u8>>, Waiting> {
    static POOL: LazyLock<Arc<Pool>> = LazyLock::new(|| Pool::new(WAIT, COOLDOWN));
    POOL.read(dir, file, max)
}

/// A process's read, as noted while it runs or waits.
#[derive(Clone, Copy, Debug)]
enum Noted {
    /// Being read, within [`WAIT`].
    Reading,
    /// Its read outlasted its wait: it is waiting, for a process of `uid`
    /// (`cut`: a wait cut short by the user's spent budget).
    Waiting { uid: u32, cut: bool },
    /// Its read returned after the caller gave up: unread until then.
    Cooling { until: Instant },
}

/// A read asked of a reader thread.
struct Job {
    tgid: u32,
    dir: PathBuf,
    file: File,
    max: usize,
    answer: SyncSender<io::Result<Vec<u8>>>,
    asked: Instant,
}

#[derive(Default)]
struct State {
    idle: Vec<Sender<Job>>,
    /// By the process's tgid.
    noted: HashMap<u32, Noted>,
    /// Whether the cap was reached and said so.
    said_full: bool,
    /// The time callers waited on reads, by the user of the process read.
    charged: HashMap<u32, Charge>,
    /// And for all users.
    charged_all: Charge,
}

/// Time callers waited in the current [`BUDGET_WINDOW`].
#[derive(Clone, Copy, Debug, Default)]
struct Charge {
    /// When the window began (`None`: none yet).
    since: Option<Instant>,
    spent: Duration,
    /// Whether the budget's end was said in this window.
    said: bool,
}

impl Charge {
    /// What is left of `budget` at `now` (a new window when this one is
    /// over).
    fn left(&mut self, budget: Duration, now: Instant) -> Duration {
        if self
            .since
            .is_none_or(|since| now.duration_since(since) >= BUDGET_WINDOW)
        {
            *self = Charge {
                since: Some(now),
                ..Charge::default()
            };
        }
        budget.saturating_sub(self.spent)
    }
}

impl State {
    fn waiting(&self, of_uid: Option<u32>) -> usize {
        self.noted
            .values()
            .filter(
                |n| matches!(n, Noted::Waiting { uid, .. } if of_uid.is_none_or(|of| of == *uid)),
            )
            .count()
    }
}

/// The reader threads and what they read.
struct Pool {
    state: Mutex<State>,
    /// Told when a process's note stops being [`Noted::Reading`].
    read: Condvar,
    wait: Duration,
    cooldown: Duration,
}

impl Pool {
    fn new(wait: Duration, cooldown: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            read: Condvar::new(),
            wait,
            cooldown,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(
        self: &Arc<Self>,
        dir: &Path,
        file: File,
        max: usize,
    ) -> Result<Option<Vec<u8>>, Waiting> {
        let tgid = tgid_of(dir);
        // The owner of /proc/PID: the process's user (root's, for one
        // that made itself undumpable: then no one else can trace it).
        let uid = std::fs::metadata(dir).map_or(0, |m| m.uid());
        let reader = {
            let mut state = self.state();
            // Another caller's read of the process (the query socket's and
            // the event loop's about one client) is waited for: it returns
            // within microseconds, or is found waiting by its own deadline,
            // which comes before this one's.
            let until = Instant::now() + self.wait;
            while let Some(Noted::Reading) = state.noted.get(&tgid) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Waiting);
                }
                state = self
                    .read
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            match state.noted.get(&tgid) {
                Some(Noted::Cooling { until }) if *until > Instant::now() => return Err(Waiting),
                Some(Noted::Cooling { .. }) | None => {}
                Some(_) => return Err(Waiting),
            }
            if state.waiting(Some(uid)) >= PER_UID || state.waiting(None) >= MAX_WAITING {
                if !state.said_full {
                    state.said_full = true;
                    warn!(
                        "reads of command lines wait on processes' memory map locks ({} of uid \
                         {uid}'s processes, {} in all): those of uid {uid}'s processes go \
                         unread until one returns",
                        state.waiting(Some(uid)),
                        state.waiting(None)
                    );
                }
                return Err(Waiting);
            }
            state.noted.insert(tgid, Noted::Reading);
            let wait = self.wait_for(&mut state, uid);
            (state.idle.pop(), wait)
        };
        let (reader, wait) = reader;
        let forget = || {
            self.state().noted.remove(&tgid);
            self.read.notify_all();
            Ok(None)
        };
        let Some(reader) = reader.or_else(|| self.start_reader()) else {
            return forget();
        };
        let (answer, answered) = mpsc::sync_channel(1);
        let job_asked = Instant::now();
        let job = Job {
            tgid,
            dir: dir.to_owned(),
            file,
            max,
            answer,
            asked: Instant::now(),
        };
        if reader.send(job).is_err() {
            return forget();
        }
        let answer = answered.recv_timeout(wait);
        self.charge(uid, job_asked.elapsed());
        match answer {
            Ok(read) => Ok(read.ok()),
            // The reader is gone without an answer (it cannot panic on a
            // read, but then its note must not stay).
            Err(RecvTimeoutError::Disconnected) => forget(),
            Err(RecvTimeoutError::Timeout) => {
                let mut state = self.state();
                // Answered between the timeout and the lock: the reader
                // answers under the same lock.
                if let Ok(read) = answered.try_recv() {
                    return Ok(read.ok());
                }
                let cut = wait < self.wait;
                state.noted.insert(tgid, Noted::Waiting { uid, cut });
                self.read.notify_all();
                // (A wait the budget cut short: its end was said once.)
                if cut {
                    return Err(Waiting);
                }
                warn!(
                    "reading the command line of {} waited past {} ms (its memory map lock is \
                     held, or queued for: a process can keep it so): lines and answers about \
                     it go without one until the read returns",
                    dir.display(),
                    wait.as_millis()
                );
                Err(Waiting)
            }
        }
    }

    /// How long a read of a process of `uid` is waited for: [`WAIT`], or
    /// [`SPENT_WAIT`] once that user's (or all users') budget is spent in
    /// this window (said once per window).
    fn wait_for(&self, state: &mut State, uid: u32) -> Duration {
        let now = Instant::now();
        let uid_left = state
            .charged
            .entry(uid)
            .or_default()
            .left(self.wait * UID_BUDGET, now);
        let all_left = state.charged_all.left(self.wait * ALL_BUDGET, now);
        if !uid_left.is_zero() && !all_left.is_zero() {
            return self.wait;
        }
        let charge = if uid_left.is_zero() {
            state.charged.entry(uid).or_default()
        } else {
            &mut state.charged_all
        };
        if !charge.said {
            charge.said = true;
            warn!(
                "reads of command lines made callers wait {} ms in {} s ({}): for the rest of \
                 that time they are waited for {} ms only, and those that take longer go \
                 without",
                charge.spent.as_millis(),
                BUDGET_WINDOW.as_secs(),
                if uid_left.is_zero() {
                    format!("of uid {uid}'s processes")
                } else {
                    "all users' together".to_owned()
                },
                SPENT_WAIT.as_millis()
            );
        }
        SPENT_WAIT.min(self.wait)
    }

    /// Charges `waited`, past [`UNCHARGED`], to the user `uid` and to all.
    fn charge(&self, uid: u32, waited: Duration) {
        let waited = waited.saturating_sub(UNCHARGED);
        if waited.is_zero() {
            return;
        }
        let mut state = self.state();
        state.charged.entry(uid).or_default().spent += waited;
        state.charged_all.spent += waited;
        if state.charged.len() > NOTED_MAX {
            let now = Instant::now();
            state.charged.retain(|_, c| {
                c.since
                    .is_some_and(|since| now.duration_since(since) < BUDGET_WINDOW)
            });
        }
    }

    /// Starts a reader thread; the sender of its jobs.
    fn start_reader(self: &Arc<Self>) -> Option<Sender<Job>> {
        let (jobs, next) = mpsc::channel::<Job>();
        let again = jobs.clone();
        let pool = self.clone();
        let started = std::thread::Builder::new()
            .name("lw-cmdline".into())
            .spawn(move || {
                for job in next {
                    let mut bytes = Vec::new();
                    let read = (&job.file)
                        .take(job.max as u64)
                        .read_to_end(&mut bytes)
                        .map(|_| bytes);
                    let mut state = pool.state();
                    pool.returned(&mut state, &job);
                    // Never blocks: room for one answer, and only one is
                    // sent.
                    let _ = job.answer.send(read);
                    if state.idle.len() >= MAX_IDLE {
                        break;
                    }
                    state.idle.push(again.clone());
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

    /// Notes that `job`'s read returned: a process whose caller gave up
    /// cools down, any other is forgotten.
    fn returned(&self, state: &mut State, job: &Job) {
        if let Some(Noted::Waiting { cut: false, .. }) = state.noted.get(&job.tgid) {
            let until = Instant::now() + self.cooldown;
            state.noted.insert(job.tgid, Noted::Cooling { until });
            state.said_full = false;
            info!(
                "the read of {}'s command line returned after {} s",
                job.dir.display(),
                job.asked.elapsed().as_secs()
            );
        } else {
            state.noted.remove(&job.tgid);
        }
        self.read.notify_all();
        if state.noted.len() > NOTED_MAX {
            let now = Instant::now();
            state
                .noted
                .retain(|_, n| !matches!(n, Noted::Cooling { until } if *until <= now));
        }
    }
}

/// The process `dir` (`/proc/PID` or `/proc/PID/task/TID`) is of: its
/// first numeric component (0 if none: such reads share one note).
fn tgid_of(dir: &Path) -> u32 {
    dir.components()
        .find_map(|c| match c {
            Component::Normal(name) => name.to_str()?.parse().ok(),
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// A pipe's read end, as the `cmdline` a read waits on until the write
    /// end is written to and dropped.
    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().expect("a pipe");
        (File::from(r), File::from(w))
    }

    /// A pipe that answers at once.
    fn ready(text: &[u8]) -> File {
        let (r, mut w) = pipe();
        w.write_all(text).unwrap();
        r
    }

    /// The directory of a process no one has (pids stop at 2^22); its
    /// owner, not found, counts as root.
    fn dir(n: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{}", 5_000_000 + n))
    }

    #[test]
    fn a_read_that_waits_is_given_up_and_its_process_skipped_until_it_cooled_down() {
        let wait = Duration::from_millis(300);
        let cooldown = Duration::from_millis(500);
        let pool = Pool::new(wait, cooldown);
        let (file, mut slow) = pipe();
        let asked = Instant::now();
        assert_eq!(pool.read(&dir(1), file, 64), Err(Waiting));
        assert!(asked.elapsed() >= wait);
        // Skipped at once while it waits, its threads too.
        let asked = Instant::now();
        assert_eq!(pool.read(&dir(1), ready(b"x"), 64), Err(Waiting));
        assert_eq!(
            pool.read(&dir(1).join("task/7"), ready(b"x"), 64),
            Err(Waiting)
        );
        assert!(asked.elapsed() < wait);
        // Another process is read meanwhile.
        assert_eq!(
            pool.read(&dir(2), ready(b"ok\0"), 64),
            Ok(Some(b"ok\0".to_vec()))
        );
        // Once the read returns, the process cools down, then is read.
        slow.write_all(b"late").unwrap();
        drop(slow);
        let back = Instant::now() + Duration::from_secs(10);
        while !matches!(
            pool.state().noted.get(&tgid_of(&dir(1))),
            Some(Noted::Cooling { .. })
        ) {
            assert!(Instant::now() < back, "the read never counted as returned");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.read(&dir(1), ready(b"a\0b\0"), 3), Err(Waiting));
        std::thread::sleep(cooldown);
        assert_eq!(
            pool.read(&dir(1), ready(b"a\0b\0"), 3),
            Ok(Some(b"a\0b".to_vec()))
        );
    }

    #[test]
    fn one_users_waiting_reads_are_capped() {
        let pool = Pool::new(Duration::from_millis(100), Duration::ZERO);
        // Every test directory is root's (not found): PER_UID of them wait.
        let held: Vec<File> = (0..PER_UID as u32)
            .map(|n| {
                let (file, write) = pipe();
                assert_eq!(pool.read(&dir(10 + n), file, 64), Err(Waiting));
                write
            })
            .collect();
        let asked = Instant::now();
        assert_eq!(pool.read(&dir(20), ready(b"ready"), 64), Err(Waiting));
        assert!(asked.elapsed() < Duration::from_millis(100));
        drop(held);
        let back = Instant::now() + Duration::from_secs(10);
        while pool.state().waiting(None) > 0 {
            assert!(Instant::now() < back, "the reads never returned");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            pool.read(&dir(20), ready(b"ready"), 64),
            Ok(Some(b"ready".to_vec()))
        );
    }

    #[test]
    fn a_read_of_the_process_under_way_is_waited_for() {
        let pool = Pool::new(Duration::from_secs(5), Duration::ZERO);
        let (file, mut slow) = pipe();
        let first = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.read(&dir(30), file, 64))
        };
        let back = Instant::now() + Duration::from_secs(10);
        while !matches!(
            pool.state().noted.get(&tgid_of(&dir(30))),
            Some(Noted::Reading)
        ) {
            assert!(Instant::now() < back, "the first read never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            slow.write_all(b"first").unwrap();
        });
        // Not skipped as if it waited: read once the first returned.
        assert_eq!(
            pool.read(&dir(30), ready(b"second"), 64),
            Ok(Some(b"second".to_vec()))
        );
        writer.join().unwrap();
        assert_eq!(first.join().unwrap(), Ok(Some(b"first".to_vec())));
    }

    /// Reads let go just before their wait ends never count as waiting,
    /// but their time is charged: past the user's budget, a read that does
    /// not answer is waited for [`SPENT_WAIT`] only, while one that
    /// answers is still read. Positive control: within the budget the same
    /// read is waited for in full.
    #[test]
    fn a_users_waits_are_capped_in_time() {
        let wait = Duration::from_millis(400);
        let pool = Pool::new(wait, Duration::ZERO);
        let slow_read = |n: u32, answer_after: Option<Duration>| {
            let (file, mut write) = pipe();
            let writer = answer_after.map(|after| {
                std::thread::spawn(move || {
                    std::thread::sleep(after);
                    write.write_all(b"late\0").unwrap();
                })
            });
            let asked = Instant::now();
            let read = pool.read(&dir(n), file, 64);
            let took = asked.elapsed();
            if let Some(writer) = writer {
                writer.join().unwrap();
            }
            (read, took)
        };
        // Each answered within the wait, half-way: past the budget (the
        // last of them still waited for in full, some of it left).
        for n in 0..=2 * UID_BUDGET {
            let (read, took) = slow_read(40 + n, Some(wait / 2));
            assert_eq!(read, Ok(Some(b"late\0".to_vec())));
            assert!(took >= wait / 2, "{took:?}");
        }
        // The next read that does not answer is given up at once.
        let (read, took) = slow_read(50, Some(wait * 2));
        assert_eq!(read, Err(Waiting));
        assert!(took < wait / 2, "waited {took:?} past the budget");
        // One that answers at once is still read (a thread's hand-over may
        // take longer than SPENT_WAIT on a busy host: tried again).
        let back = Instant::now() + Duration::from_secs(10);
        loop {
            match pool.read(&dir(51), ready(b"ok\0"), 64) {
                Ok(read) => {
                    assert_eq!(read, Some(b"ok\0".to_vec()));
                    break;
                }
                Err(Waiting) => assert!(Instant::now() < back, "a ready read was never read"),
            }
        }
        // Another pool, its budget unspent: the same read waited for in
        // full.
        let fresh = Pool::new(wait, Duration::ZERO);
        let (file, _write) = pipe();
        let asked = Instant::now();
        assert_eq!(fresh.read(&dir(60), file, 64), Err(Waiting));
        assert!(asked.elapsed() >= wait);
    }

    #[test]
    fn a_threads_directory_is_its_process() {
        assert_eq!(tgid_of(Path::new("/proc/42")), 42);
        assert_eq!(tgid_of(Path::new("/proc/42/task/43")), 42);
        assert_eq!(tgid_of(Path::new("/proc/self")), 0);
    }
}
