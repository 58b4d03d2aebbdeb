//! Cuts admitted connections off the event loop. After every enforce-mode
//! install the daemon hands the policy to this thread, which sweeps the
//! open connections ([`crate::cut::sweep`]) and writes a `cut` line for each
//! one it destroys. What the kernel knows is read from the pinned maps:
//! each process's evidence (`LW_PROCS`) and each connection's origin
//! (`LW_CONN_SLOTS`, `LW_CONNS`). A sweep walks `/proc` and can take tens of
//! milliseconds; on its own thread it never delays reports, signals or the
//! next install. Each sweep's outcome goes to `status.json` (what was cut,
//! and what kept it from being complete). Requests coalesce: a sweep always
//! uses the newest policy asked for (the one in force), one still queued
//! behind it is dropped, and one running when a newer is asked for stops
//! before its next cut, unless the newer differs only in the host
//! addresses ([`Sweeper::request_after`]), which runs after it:
//! re-resolutions every second (an address per pod on a busy node) would
//! otherwise stop every sweep that takes longer than that before it cut.
//! At exit the daemon stops a running sweep the same way and waits for
//! the lines of what it cut ([`Sweeper::finish`]). One request at most
//! waits (a mailbox, not a queue): a sweep held up for long (a cut the
//! kernel makes only once the socket's owner lets its lock go) leaves one
//! policy waiting, not one per re-resolution since.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use loopwarden_common::{ProcState, evidence, maps};
use tracing::{error, info, warn};

use super::status_file;
use crate::{
    cut::{self, Known, Relayed},
    events::{Batch, Enricher, LogFormat, Writer, report::stdout_writer},
    kernel::sock_diag::TcpSocket,
    policy::{CompiledPolicy, Mode},
    provenance::{Conns, conn_key},
    track::notes::{self, Notes},
};

struct Job {
    policy: CompiledPolicy,
    addrs: Vec<IpAddr>,
    /// The number of the latest request that stops the sweeps before it:
    /// a sweep whose number is no longer the latest stops before its next
    /// cut.
    number: u64,
}

/// The request waiting for the sweeping thread, if any: a newer one
/// replaces it.
#[derive(Default)]
struct Mailbox {
    job: Option<Job>,
    /// [`Sweeper::finish`] closed it: the thread ends once it is empty.
    closed: bool,
}

/// The mailbox and the signal that something was put in it.
type Jobs = Arc<(Mutex<Mailbox>, Condvar)>;

/// The handle the daemon asks for sweeps through.
pub struct Sweeper {
    jobs: Jobs,
    /// The latest request's number.
    latest: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts the sweeping thread; it ends when the handle is dropped.
    /// `maps_dir`: where the kernel's maps are pinned.
    pub fn spawn(cgroup_root: PathBuf, maps_dir: PathBuf, format: LogFormat) -> io::Result<Self> {
        let jobs = Jobs::default();
        let queue = jobs.clone();
        let latest = Arc::new(AtomicU64::new(0));
        let seen = latest.clone();
        let thread = thread::Builder::new()
            .name("lw-sweep".into())
            .spawn(move || work(&queue, &seen, cgroup_root, &maps_dir, format))?;
        Ok(Self {
            jobs,
            latest,
            thread: Some(thread),
        })
    }

    /// Stops a sweep under way before its next cut (and one still queued
    /// before it starts).
    fn supersede(&self) {
        self.latest.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the sweeping thread still runs (it ends only at
    /// [`Sweeper::finish`], or by a panic, after which nothing is cut).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// At exit: stops a sweep under way before its next cut and waits, up
    /// to `limit`, for the thread to write the lines of what it cut. Whether
    /// it ended in time.
    pub fn finish(&mut self, limit: Duration) -> bool {
        self.supersede();
        self.mailbox().closed = true;
        self.jobs.1.notify_one();
        self.thread
            .take()
            .is_none_or(|thread| crate::join_within(thread, limit))
    }

    /// Asks for a sweep under `policy` (nothing happens in audit mode).
    /// Sent in audit mode too: it replaces an enforce-mode request still
    /// queued, and stops one running before its next cut, neither of which
    /// may cut under a policy no longer in force.
    pub fn request(&self, policy: &CompiledPolicy, addrs: &[IpAddr]) {
        self.send(
            policy,
            addrs,
            self.latest.fetch_add(1, Ordering::SeqCst) + 1,
        );
    }

    /// Asks for a sweep under `policy`, the policy of the sweep running
    /// with other host addresses, after that one, which it does not stop.
    /// It replaces a request still queued.
    pub fn request_after(&self, policy: &CompiledPolicy, addrs: &[IpAddr]) {
        self.send(policy, addrs, self.latest.load(Ordering::SeqCst));
    }

    fn send(&self, policy: &CompiledPolicy, addrs: &[IpAddr], number: u64) {
        let job = Job {
            policy: policy.clone(),
            addrs: addrs.to_vec(),
            number,
        };
        let mut mailbox = self.mailbox();
        if mailbox.closed || !self.running() {
            warn!("the connection sweeper has stopped: admitted connections are not cut");
            return;
        }
        // Only the newest request matters: it carries the policy in force.
        mailbox.job = Some(job);
        drop(mailbox);
        self.jobs.1.notify_one();
    }

    fn mailbox(&self) -> std::sync::MutexGuard<'_, Mailbox> {
        self.jobs.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Sweeper {
    /// Closes the mailbox: the thread ends once its sweep under way is done.
    fn drop(&mut self) {
        self.mailbox().closed = true;
        self.jobs.1.notify_one();
    }
}

/// The pinned maps a sweep reads, those that could be opened.
struct Pinned {
    procs: Option<AyaHashMap<MapData, u32, ProcState>>,
    /// `LW_TRACKED`: which processes' state a full `LW_PROCS` lost.
    notes: Option<Notes>,
    conns: Option<Conns>,
}

impl Known for Pinned {
    fn tracked(&self, pid: u32) -> Option<ProcState> {
        let entry = self.procs.as_ref().and_then(|m| m.get(&pid, 0).ok());
        let note = self.notes.as_ref().and_then(|n| notes::note(n, pid).ok());
        notes::judged_state(entry, note)
    }

    fn client(&self, netns: u32, socket: &TcpSocket) -> Option<Option<Relayed>> {
        let conns = self.conns.as_ref()?;
        // As the client's socket: the connect's own cookie.
        let record = conns
            .find(&conn_key(netns, socket.src, socket.dst))
            .filter(|r| socket.cookie != 0 && r.origin.socket_cookie == socket.cookie)?;
        let via = record.origin.via;
        Some((via.kind != evidence::NONE).then_some(Relayed {
            via,
            connect_ns: record.origin.ktime_ns,
        }))
    }

    fn accepted(&self, netns: u32, socket: &TcpSocket) -> bool {
        let Some(conns) = self.conns.as_ref() else {
            return false;
        };
        // As the accepted socket, its ends the other way round.
        conns
            .find(&conn_key(netns, socket.dst, socket.src))
            .is_some_and(|r| socket.cookie != 0 && r.server_cookie == socket.cookie)
    }
}

impl Pinned {
    /// Opens the maps pinned in `maps_dir` (per sweep: a daemon that
    /// replaced incompatible maps moved new ones into place after this
    /// thread started). What cannot be opened is left out, with a line
    /// saying what the sweep then does not apply.
    fn open(maps_dir: &Path) -> (Self, Vec<String>) {
        let mut unread = Vec::new();
        let procs_pin = maps_dir.join(maps::PROCS);
        let procs = MapData::from_pin(&procs_pin)
            .map_err(|e| e.to_string())
            .and_then(|data| {
                AyaHashMap::<MapData, u32, ProcState>::try_from(Map::HashMap(data))
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| {
                unread.push(format!(
                    "{} cannot be read ({e}): the relay verdict, lineage and script rules \
                     are not applied to admitted connections",
                    procs_pin.display()
                ));
            })
            .ok();
        let notes_pin = maps_dir.join(maps::TRACKED);
        let notes = MapData::from_pin(&notes_pin)
            .map_err(|e| e.to_string())
            .and_then(|data| Notes::try_from(Map::Array(data)).map_err(|e| e.to_string()))
            .map_err(|e| {
                unread.push(format!(
                    "{} cannot be read ({e}): processes whose state a full {} lost are not \
                     judged network-facing",
                    notes_pin.display(),
                    maps::PROCS
                ));
            })
            .ok();
        let conns = Conns::open(maps_dir)
            .map_err(|e| {
                unread.push(format!(
                    "{}: the relay evidence each connection's origin recorded at its \
                     connect is not applied, nor are accepted sockets told apart by it",
                    crate::error_chain(&e)
                ));
            })
            .ok();
        for text in &unread {
            warn!("cut: {text}");
        }
        (
            Self {
                procs,
                notes,
                conns,
            },
            unread,
        )
    }
}

/// `n connection(s)`.
fn connections(n: usize) -> String {
    match n {
        1 => "1 connection".to_owned(),
        n => format!("{n} connections"),
    }
}

/// The next request, waited for; `None` once the mailbox is closed and
/// empty.
fn next_job(jobs: &Jobs) -> Option<Job> {
    let (mailbox, put) = &**jobs;
    let mut mailbox = mailbox.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if let Some(job) = mailbox.job.take() {
            return Some(job);
        }
        if mailbox.closed {
            return None;
        }
        mailbox = put.wait(mailbox).unwrap_or_else(PoisonError::into_inner);
    }
}

fn work(
    queue: &Jobs,
    latest: &AtomicU64,
    cgroup_root: PathBuf,
    maps_dir: &Path,
    format: LogFormat,
) {
    let mut enricher = Enricher::new(cgroup_root.clone());
    // Cut lines go through a queue of their own to stdout, as audit lines
    // do: a stalled reader holds no sweep (nor the status it writes), and
    // what it could not take is said.
    let mut out = stdout_writer("lw-cut-lines");
    while let Some(job) = next_job(queue) {
        // Superseded while queued (the exit's [`Sweeper::finish`] too).
        if job.policy.mode != Mode::Enforce || latest.load(Ordering::SeqCst) != job.number {
            continue;
        }
        let (known, unread) = Pinned::open(maps_dir);
        let superseded = || latest.load(Ordering::SeqCst) != job.number;
        let mut sweep = cut::sweep(&job.policy, &job.addrs, &cgroup_root, &known, &superseded);
        // An incomplete sweep, as status and the metrics say.
        sweep.problems.extend(unread);
        let mut lines = Batch::default();
        for c in &sweep.cuts {
            lines
                .bytes
                .extend_from_slice(enricher.cut(c).format(format).as_bytes());
            lines.bytes.push(b'\n');
            lines.reports.push(1);
        }
        // A reader merely slow takes them within a while: this thread can
        // wait that long, the event loop's queue cannot.
        let give_up = std::time::Instant::now() + Duration::from_secs(1);
        let mut lines = Some(lines).filter(|l| !l.bytes.is_empty());
        while let Some(batch) = lines.take() {
            match out.send(batch) {
                Ok(()) => {}
                Err(batch) if std::time::Instant::now() < give_up => {
                    lines = Some(batch);
                    thread::sleep(Duration::from_millis(10));
                }
                Err(batch) => out.drop_batch(batch),
            }
        }
        say_unwritten(&mut out);
        if sweep.superseded {
            // The next sweep, for the policy asked for since, is the one
            // status reports.
            info!(
                "cut {}, then stopped: a newer policy was installed",
                connections(sweep.cuts.len())
            );
            continue;
        }
        info!("cut {}", connections(sweep.cuts.len()));
        status_file::swept(&sweep);
    }
    // Within the daemon's wait for this thread at exit (`SWEEP_WAIT`).
    out.finish(Duration::from_secs(1));
    say_unwritten(&mut out);
}

/// Says the cut lines the output did not take since the last time (the
/// connections were cut all the same).
fn say_unwritten(out: &mut Writer) {
    let (lost, error) = out.take_unwritten();
    if lost.lines > 0 {
        error!(
            unwritten_lines = lost.lines,
            "cut lines lost: {} were not written ({}); the connections were cut all the same",
            lost.lines,
            lost.why(error.as_deref())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supersede_moves_the_number_on_and_finish_ends_the_thread() {
        let mut sweeper = Sweeper::spawn(
            PathBuf::from("/nonexistent"),
            PathBuf::from("/nonexistent"),
            LogFormat::Human,
        )
        .unwrap();
        assert!(sweeper.running());
        let before = sweeper.latest.load(Ordering::SeqCst);
        sweeper.supersede();
        assert_eq!(sweeper.latest.load(Ordering::SeqCst), before + 1);
        // A re-resolution's request runs after a sweep under way: it does
        // not move the number on; a reload's does.
        let policy = crate::policy::predecessor_scope(
            &crate::config::Config::embedded_default(),
            Vec::new(),
        );
        sweeper.request_after(&policy, &[]);
        assert_eq!(sweeper.latest.load(Ordering::SeqCst), before + 1);
        sweeper.request(&policy, &[]);
        assert_eq!(sweeper.latest.load(Ordering::SeqCst), before + 2);
        assert!(sweeper.finish(Duration::from_secs(5)));
        assert!(!sweeper.running());
        // A second finish has nothing to wait for.
        assert!(sweeper.finish(Duration::ZERO));
    }

    /// Requests made while the thread is busy (here: a thread that never
    /// reads the mailbox) leave one waiting, the newest: not one policy
    /// per request, as a queue did.
    #[test]
    fn requests_made_while_a_sweep_runs_leave_one_waiting() {
        let (stop, parked) = std::sync::mpsc::channel::<()>();
        let sweeper = Sweeper {
            jobs: Jobs::default(),
            latest: Arc::new(AtomicU64::new(0)),
            thread: Some(thread::spawn(move || {
                let _ = parked.recv();
            })),
        };
        let policy = crate::policy::predecessor_scope(
            &crate::config::Config::embedded_default(),
            Vec::new(),
        );
        for _ in 0..100 {
            sweeper.request(&policy, &[]);
        }
        let job = next_job(&sweeper.jobs).expect("one waits");
        assert_eq!(job.number, 100);
        assert!(sweeper.mailbox().job.is_none());
        let jobs = sweeper.jobs.clone();
        drop(sweeper);
        // Closed, and empty: the thread ends.
        assert!(next_job(&jobs).is_none());
        drop(stop);
    }
}
