//! Cuts admitted connections off the event loop. After every enforce-mode
//! install the daemon hands the policy to this thread, which sweeps the
//! open connections ([`crate::cut::sweep`]) and writes a `cut` line for each
//! one it destroys. A sweep walks `/proc` and can take tens of
//! milliseconds; on its own thread it never delays reports, signals or the
//! next install. Each sweep's outcome goes to `status.json` (what was cut,
//! and what kept it from being complete). Requests coalesce: a sweep always uses the newest policy
//! asked for (the one in force), and one still queued behind it is dropped.

use std::{
    io::{self, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, Sender},
    thread,
};

use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use loopwarden_common::ProcState;
use tracing::{error, info, warn};

use super::status_file;
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
    /// `procs_pin`: the pinned `LW_PROCS`, what the kernel knows of each
    /// process (the relay verdict's evidence, lineage, script).
    pub fn spawn(cgroup_root: PathBuf, procs_pin: PathBuf, format: LogFormat) -> io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        thread::Builder::new()
            .name("lw-sweep".into())
            .spawn(move || work(&queue, cgroup_root, &procs_pin, format))?;
        Ok(Self { jobs })
    }

    /// Asks for a sweep under `policy` (nothing happens in audit mode).
    /// Sent in audit mode too: it replaces an enforce-mode request still
    /// queued, which must not cut under a policy no longer in force.
    pub fn request(&self, policy: &CompiledPolicy, addrs: &[IpAddr]) {
        let job = Job {
            policy: policy.clone(),
            addrs: addrs.to_vec(),
        };
        if self.jobs.send(job).is_err() {
            warn!("the connection sweeper has stopped: admitted connections are not cut");
        }
    }
}

fn work(queue: &Receiver<Job>, cgroup_root: PathBuf, procs_pin: &Path, format: LogFormat) {
    let mut enricher = Enricher::new(cgroup_root.clone());
    while let Ok(mut job) = queue.recv() {
        // Only the newest request matters: it carries the policy in force.
        while let Ok(newer) = queue.try_recv() {
            job = newer;
        }
        if job.policy.mode != Mode::Enforce {
            continue;
        }
        // Opened per sweep: a daemon that replaced incompatible maps moved
        // new ones into place after this thread started.
        let procs = MapData::from_pin(procs_pin)
            .map_err(|e| e.to_string())
            .and_then(|data| {
                AyaHashMap::<MapData, u32, ProcState>::try_from(Map::HashMap(data))
                    .map_err(|e| e.to_string())
            });
        let (procs, unread) = match procs {
            Ok(map) => (Some(map), None),
            Err(e) => {
                let text = format!(
                    "{} cannot be read ({e}): the relay verdict, lineage and script rules \
                     are not applied to admitted connections",
                    procs_pin.display()
                );
                warn!("cut: {text}");
                (None, Some(text))
            }
        };
        let tracked = |pid: u32| procs.as_ref().and_then(|m| m.get(&pid, 0).ok());
        let mut sweep = cut::sweep(&job.policy, &job.addrs, &cgroup_root, &tracked);
        // An incomplete sweep, as status and the metrics say.
        sweep.problems.extend(unread);
        let stdout = io::stdout();
        let mut out = stdout.lock();
        for c in &sweep.cuts {
            if let Err(e) = writeln!(out, "{}", enricher.cut(c).format(format)) {
                error!("writing an audit line failed: {e}");
            }
        }
        if let Err(e) = out.flush() {
            error!("flushing audit lines failed: {e}");
        }
        drop(out);
        info!("cut {} connections", sweep.cuts.len());
        status_file::swept(&sweep);
    }
}
