//! `<run_dir>/status.json`: what a running daemon says about itself for
//! `loopwarden status` (pid, version, start time, policy source, the policy
//! in force, the last reload's outcome and the last sweep's, a failing
//! re-resolution). Written at start, after each install or failed reload,
//! after each sweep, and when the re-resolution starts or stops failing,
//! atomically (a temporary file renamed over it),
//! so a reader sees a whole file or the previous one.
//!
//! The file is a report, not a proof of life: it stays behind when the
//! daemon dies. `loopwarden status` believes it only while the run
//! directory's lock is held by the pid it names; the kernel state (links,
//! policy, counters) is always read from the pins, never from here.
//!
//! One daemon runs per process, so the parts that never change (run
//! directory, start time), the last reload's outcome and the last status
//! written live in a process-wide cell set once at start. The last sweep's
//! outcome has a cell of its own: the sweeper thread may finish the start's
//! sweep before the daemon is ready to write the file.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::SystemTime,
};

use loopwarden_common::flags;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::installed::Installed;
use crate::cut::Sweep;

/// Its name in the run directory.
pub const STATUS_FILE: &str = "status.json";

/// The file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// The daemon's `CARGO_PKG_VERSION`.
    pub version: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// When this file was last written.
    pub updated_at: String,
    /// The policy file, or "embedded default policy".
    pub policy_source: String,
    /// Whether the policy in force is one this daemon installed (`false`:
    /// it keeps a predecessor's pinned policy as it is, its own file did
    /// not parse; `true` also when it compiled that policy again from the
    /// config kept for it, see `kept_config`).
    pub own_policy: bool,
    /// The config the policy in force is compiled (and re-resolved) from
    /// when it is not `policy_source` (refused at start): the one the
    /// previous daemon kept for its pinned policy. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_config: Option<String>,
    /// `enforce`, `audit` or `disabled`, as the pinned settings say.
    pub mode: Option<String>,
    /// The in-force policy's sequence number.
    pub policy_seq: Option<u64>,
    /// Rules of the policy in force.
    pub rules: Option<u32>,
    /// The last SIGHUP reload, if any since start; a start whose file did
    /// not compile counts as a failed one.
    pub last_reload: Option<Reload>,
    /// The last sweep of admitted connections (enforce mode only), if any
    /// since start. Absent in the files of earlier versions.
    #[serde(default)]
    pub last_sweep: Option<SweepOutcome>,
    /// A compile of the policy (a re-resolution or a reload) that has
    /// waited for the system for long (see `daemon::resolving`); absent
    /// while none has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// The 1 s re-resolution of the policy, failing (to compile or to
    /// install) since `at` with `error`, the policy in force staying as it
    /// was; absent while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_failing: Option<Reload>,
    /// The pin directory the daemon enforces through (its `--pin-dir`):
    /// `status` given another says so. Absent in the files of earlier
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<PathBuf>,
}

/// A compile of the policy that waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// What waits: the 1 s re-resolution, or a reload.
    pub what: String,
    /// Since when (RFC 3339, UTC).
    pub since: String,
}

/// Outcome of a reload or install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    pub at: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// Outcome of a sweep of admitted connections ([`crate::cut::sweep`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepOutcome {
    pub at: String,
    /// Connections destroyed.
    pub cut: usize,
    /// Network namespaces listed, and sockets examined in them.
    pub namespaces: usize,
    pub sockets: usize,
    /// Whether it checked every connection it should have and cut each one
    /// it judged (no problem).
    pub complete: bool,
    /// The first [`MAX_PROBLEMS`] problems, in the order met.
    pub problems: Vec<String>,
    /// How many more there were.
    pub more_problems: usize,
}

/// Problems a sweep outcome keeps (a kernel without `SOCK_DESTROY` gives
/// one per socket it would cut).
pub const MAX_PROBLEMS: usize = 4;

impl SweepOutcome {
    pub fn new(sweep: &Sweep) -> Self {
        Self {
            at: now(),
            cut: sweep.cuts.len(),
            namespaces: sweep.namespaces,
            sockets: sweep.examined,
            complete: sweep.problems.is_empty(),
            problems: sweep.problems.iter().take(MAX_PROBLEMS).cloned().collect(),
            more_problems: sweep.problems.len().saturating_sub(MAX_PROBLEMS),
        }
    }
}

struct Cell {
    path: PathBuf,
    pin_dir: PathBuf,
    started_at: String,
    last_reload: Option<Reload>,
    waiting: Option<Waiting>,
    refresh_failing: Option<Reload>,
    /// What the file holds now (`None`: not yet written).
    written: Option<DaemonStatus>,
}

static CELL: OnceLock<Mutex<Cell>> = OnceLock::new();
static LAST_SWEEP: Mutex<Option<SweepOutcome>> = Mutex::new(None);

/// The last sweep's outcome since start, if any.
pub fn last_sweep() -> Option<SweepOutcome> {
    LAST_SWEEP.lock().ok()?.clone()
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// At start, once the daemon is ready: remembers where to write, and writes;
/// `unread` says why the start's policy file is not in force (it keeps a
/// predecessor's pinned policy), recorded as a failed reload is.
pub(super) fn started(
    run_dir: &Path,
    pin_dir: &Path,
    installed: &Installed,
    unread: Option<String>,
) {
    let cell = Cell {
        path: run_dir.join(STATUS_FILE),
        pin_dir: pin_dir.to_owned(),
        started_at: now(),
        last_reload: None,
        waiting: None,
        refresh_failing: None,
        written: None,
    };
    if CELL.set(Mutex::new(cell)).is_err() {
        warn!("status file: started twice");
    }
    record(installed, unread.map(Err));
}

/// After an install (`None`), or a reload or install that ended with
/// `outcome`: rewrites the file. Does nothing before [`started`].
pub(super) fn record(installed: &Installed, outcome: Option<Result<(), String>>) {
    let Some(cell) = CELL.get() else {
        return;
    };
    let Ok(mut cell) = cell.lock() else {
        return;
    };
    if let Some(outcome) = outcome {
        cell.last_reload = Some(Reload {
            at: now(),
            ok: outcome.is_ok(),
            error: outcome.err(),
        });
    }
    let in_force = installed.maps.in_force().ok().map(|(_, s)| s);
    let status = DaemonStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: cell.started_at.clone(),
        updated_at: now(),
        policy_source: installed.source.describe(),
        own_policy: installed.policy.is_some(),
        kept_config: installed
            .config
            .as_ref()
            .filter(|_| installed.kept)
            .map(|c| c.source.clone()),
        mode: in_force.map(|s| mode_name(s.flags).to_owned()),
        policy_seq: in_force.map(|s| s.seq),
        rules: in_force.map(|s| s.active.count_ones()),
        last_reload: cell.last_reload.clone(),
        last_sweep: last_sweep(),
        waiting: cell.waiting.clone(),
        refresh_failing: cell.refresh_failing.clone(),
        pin_dir: Some(cell.pin_dir.clone()),
    };
    rewrite(&mut cell, status);
}

/// A compile of the policy began waiting (`Some`: what, and since when),
/// or is done (`None`): rewrites the file once the daemon has written one.
pub(super) fn waiting(waiting: Option<Waiting>) {
    let Some(Ok(mut cell)) = CELL.get().map(Mutex::lock) else {
        return;
    };
    if cell.waiting == waiting {
        return;
    }
    cell.waiting = waiting.clone();
    if let Some(mut status) = cell.written.clone() {
        status.updated_at = now();
        status.waiting = waiting;
        rewrite(&mut cell, status);
    }
}

/// The 1 s re-resolution failed with `error` (`Some`; the time kept is
/// that of its first failure since it last worked), or works (`None`):
/// rewrites the file when that changes, once the daemon has written one.
pub(super) fn refresh(error: Option<String>) {
    let Some(Ok(mut cell)) = CELL.get().map(Mutex::lock) else {
        return;
    };
    if cell.refresh_failing.as_ref().and_then(|f| f.error.as_ref()) == error.as_ref() {
        return;
    }
    // Failing already: since then, whatever the error says now.
    let since = cell.refresh_failing.as_ref().map(|f| f.at.clone());
    let failing = error.map(|error| Reload {
        at: since.unwrap_or_else(now),
        ok: false,
        error: Some(error),
    });
    cell.refresh_failing = failing.clone();
    if let Some(mut status) = cell.written.clone() {
        status.updated_at = now();
        status.refresh_failing = failing;
        rewrite(&mut cell, status);
    }
}

/// The re-resolution's failure, while it fails.
pub fn refresh_failing() -> Option<Reload> {
    CELL.get()?.lock().ok()?.refresh_failing.clone()
}

/// `at` as the file writes times.
pub(super) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// After a sweep: keeps its outcome, and rewrites the file with it once
/// the daemon has written one.
pub(super) fn swept(sweep: &Sweep) {
    let outcome = SweepOutcome::new(sweep);
    if let Ok(mut last) = LAST_SWEEP.lock() {
        *last = Some(outcome.clone());
    }
    let Some(Ok(mut cell)) = CELL.get().map(Mutex::lock) else {
        return;
    };
    if let Some(mut status) = cell.written.clone() {
        status.updated_at = now();
        status.last_sweep = Some(outcome);
        rewrite(&mut cell, status);
    }
}

fn rewrite(cell: &mut Cell, status: DaemonStatus) {
    if let Err(e) = write(&cell.path, &status) {
        warn!("writing {} failed: {e}", cell.path.display());
    }
    cell.written = Some(status);
}

/// The last reload's or install's outcome since start, if any.
pub fn last_reload() -> Option<Reload> {
    CELL.get()?.lock().ok()?.last_reload.clone()
}

/// The mode the settings flags say.
pub fn mode_name(settings_flags: u32) -> &'static str {
    if settings_flags & flags::ENABLED == 0 {
        "disabled"
    } else if settings_flags & flags::ENFORCE != 0 {
        "enforce"
    } else {
        "audit"
    }
}

/// Writes `status` to `path` through a temporary file in the same directory.
pub fn write(path: &Path, status: &DaemonStatus) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(status).map_err(io::Error::other)?;
    text.push('\n');
    crate::run_file::replace(path, text.as_bytes(), true)
}

/// Reads `<run_dir>/status.json`; `None` when there is none or it does not parse.
pub fn read(run_dir: &Path) -> Option<DaemonStatus> {
    read_or_why(run_dir).ok().flatten()
}

/// [`read`], and why a file that is there could not be read (not
/// readable by this user: the unit's `UMask=0077` makes it root's alone)
/// or does not parse.
pub fn read_or_why(run_dir: &Path) -> Result<Option<DaemonStatus>, String> {
    let path = run_dir.join(STATUS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(format!(
                "{} is not readable by this user ({e}): as root, `status` shows what it says",
                path.display()
            ));
        }
        Err(e) => return Err(format!("reading {} failed: {e}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{} does not parse: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_and_read_back() {
        let dir = std::env::temp_dir().join(format!("lw-status-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let status = DaemonStatus {
            pid: 42,
            version: "0.1.0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:01Z".into(),
            policy_source: "embedded default policy".into(),
            own_policy: true,
            kept_config: Some("/etc/loopwarden.toml as kept in /run/loopwarden/config.json".into()),
            mode: Some("audit".into()),
            policy_seq: Some(2),
            rules: Some(20),
            last_reload: Some(Reload {
                at: "2026-01-01T00:00:01Z".into(),
                ok: false,
                error: Some("bad file".into()),
            }),
            last_sweep: Some(SweepOutcome {
                at: "2026-01-01T00:00:02Z".into(),
                cut: 1,
                namespaces: 2,
                sockets: 40,
                complete: false,
                problems: vec!["listing the TCP sockets of network namespace x failed".into()],
                more_problems: 0,
            }),
            waiting: None,
            refresh_failing: Some(Reload {
                at: "2026-01-01T00:00:03Z".into(),
                ok: false,
                error: Some("installing the re-resolved policy failed".into()),
            }),
            pin_dir: Some("/sys/fs/bpf/loopwarden".into()),
        };
        write(&dir.join(STATUS_FILE), &status).unwrap();
        assert_eq!(read(&dir), Some(status));
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "the temporary file was left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_an_earlier_version_without_a_sweep_still_reads() {
        let text = r#"{"pid":7,"version":"0.1.0","started_at":"a","updated_at":"b",
            "policy_source":"embedded default policy","own_policy":true,"mode":"audit",
            "policy_seq":2,"rules":20,"last_reload":null}"#;
        let status: DaemonStatus = serde_json::from_str(text).unwrap();
        assert_eq!(status.last_sweep, None);
    }

    #[test]
    fn a_sweep_keeps_its_first_problems_and_counts_the_rest() {
        let sweep = Sweep {
            namespaces: 1,
            examined: 9,
            problems: (0..MAX_PROBLEMS + 3).map(|i| format!("p{i}")).collect(),
            ..Sweep::default()
        };
        let outcome = SweepOutcome::new(&sweep);
        assert!(!outcome.complete);
        assert_eq!(outcome.cut, 0);
        assert_eq!((outcome.namespaces, outcome.sockets), (1, 9));
        assert_eq!(outcome.problems, ["p0", "p1", "p2", "p3"]);
        assert_eq!(outcome.more_problems, 3);
        assert!(SweepOutcome::new(&Sweep::default()).complete);
    }

    #[test]
    fn mode_follows_the_flags() {
        assert_eq!(mode_name(0), "disabled");
        assert_eq!(mode_name(flags::ENFORCE), "disabled");
        assert_eq!(mode_name(flags::ENABLED), "audit");
        assert_eq!(mode_name(flags::ENABLED | flags::ENFORCE), "enforce");
    }
}
