//! Cuts admitted connections off the event loop. After every enforce-mode
//! install the daemon hands the policy to this thread, which sweeps the
//! open connections ([`crate::cut::sweep`]) and writes a `cut` line for each
//! one it destroys. A sweep walks `/proc` and can take tens of
//! milliseconds; on its own thread it never delays reports, signals or the
//! next install. Requests coalesce: a sweep always uses the newest policy
//! asked for (the one in force), and one still queued behind it is dropped.

use std::{
    io::{self, Write as _},
    net::IpAddr,
    path::PathBuf,
    sync::mpsc::{self, Receiver, Sender},
    thread,
};

use tracing::{error, info, warn};

use crate::{
    cut,
    events::{Enricher, LogFormat},
    policy::{CompiledPolicy, Mode},
};

struct Job {
    policy: CompiledPolicy,
    addrs: Vec<IpAddr>,
}

/// The handle the daemon asks for sweeps through.
pub struct Sweeper {
    jobs: Sender<Job>,
}

impl Sweeper {
    /// Starts the sweeping thread; it ends when the handle is dropped.
    pub fn spawn(cgroup_root: PathBuf, format: LogFormat) -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        thread::Builder::new()
            .name("lw-sweep".into())
            .spawn(move || work(&queue, cgroup_root, format))?;
        Ok(Self { jobs })
    }

    /// Asks for a sweep under `policy` (nothing happens in audit mode).
    pub fn request(&self, policy: &CompiledPolicy, addrs: &[IpAddr]) {
        if policy.mode != Mode::Enforce {
            return;
        }
        let job = Job {
            policy: policy.clone(),
            addrs: addrs.to_vec(),
        };
        if self.jobs.send(job).is_err() {
            warn!("the connection sweeper has stopped: admitted connections are not cut");
        }
    }
}

fn work(queue: &Receiver<Job>, cgroup_root: PathBuf, format: LogFormat) {
    let mut enricher = Enricher::new(cgroup_root.clone());
    while let Ok(mut job) = queue.recv() {
        // Only the newest request matters: it carries the policy in force.
        while let Ok(newer) = queue.try_recv() {
            job = newer;
        }
        let cuts = cut::sweep(&job.policy, &job.addrs, &cgroup_root);
        let stdout = io::stdout();
        let mut out = stdout.lock();
        for c in &cuts {
            if let Err(e) = writeln!(out, "{}", enricher.cut(c).format(format)) {
                error!("writing an audit line failed: {e}");
            }
        }
        if let Err(e) = out.flush() {
            error!("flushing audit lines failed: {e}");
        }
        drop(out);
        info!("cut {} connections", cuts.len());
    }
}
