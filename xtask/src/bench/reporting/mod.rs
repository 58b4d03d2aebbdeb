//! The reporting phase of `cargo xtask bench`: how the daemon's audit trail
//! holds up when reports come faster than anyone reads them.
//!
//! A policy with `log_allowed = true` on one port that nothing listens on,
//! so every connect is judged, reported (verdict `allow`) and then refused
//! by TCP itself (a reset: cheap, no server, no TIME_WAIT). `bench-flood`
//! offers a fixed rate of such connects from one process (one flow), or
//! each to another `127.1.x.y` address (every connect a new flow). After the
//! daemon stops, its output is counted: lines, summary lines and the
//! connects they stand for, and the `events lost` lines' counts. Every
//! connect must be accounted for — on a line, in a summary's count, or
//! lost. Daemon CPU under a flood comes from `/proc/PID/task/*/schedstat`
//! (ns on CPU of the live threads), idle from `/proc/PID/stat` (ticks, over
//! 10 s, threads that exited included); its resident size is sampled from
//! `/proc/PID/status` every 100 ms.

use std::{
    fs,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Bench, toml_str, warden::Warden};
use crate::proc::{self, say};

mod flood;
mod output;

pub use flood::{FloodArgs, flood};
pub use output::print;
use output::{count_output, word_value};

/// Reports per second the targets name.
const RATES: [u64; 3] = [10_000, 50_000, 100_000];
/// Offered rate of the distinct-flow flood (as fast as the client can,
/// capped here).
const DISTINCT_RATE: u64 = 100_000;
/// Resident size target (MiB), idle and under every flood.
const RSS_TARGET_MIB: f64 = 15.0;
/// The flood during which the daemon is stopped (SIGSTOP) for 40% of the
/// time: reports must be lost, and counted exactly.
const PAUSED: &str = "distinct, paused";
/// How long the idle daemon is watched.
const IDLE: Duration = Duration::from_secs(10);

/// One reporting measurement.
pub struct Row {
    pub flood: String,
    pub format: &'static str,
    pub offered: u64,
    pub achieved: f64,
    pub attempts: u64,
    pub lines: u64,
    pub summaries: u64,
    /// Connects counted in summary lines.
    pub summarised: u64,
    pub lost: u64,
    pub cpu_percent: f64,
    pub rss_max_mib: f64,
}

impl Row {
    /// Connects the output accounts for.
    fn accounted(&self) -> u64 {
        self.lines - self.summaries + self.summarised + self.lost
    }
}

/// The idle daemon.
pub struct Idle {
    pub ready_ms: u64,
    /// Mean wall time of the daemon's 1 s refresh, its own count.
    pub refresh_us: u64,
    pub start_to_ready_ms: u64,
    pub cpu_ms_per_s: f64,
    pub rss_mib: f64,
}

pub struct Results {
    pub idle: Idle,
    pub rows: Vec<Row>,
}

/// Time on CPU of every thread of `pid`, in ns.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// User and system time of `pid` in ns, threads that exited included
/// (`/proc/PID/stat`, clock ticks: 10 ms resolution).
fn cpu_ns_with_exited(pid: u32) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        hz if hz > 0 => hz as u64,
        _ => 100,
    };
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime: fields 14 and 15, 11 and 12 after the comm.
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 1_000_000_000 / hz)
        })
        .unwrap_or(0)
}

/// `VmRSS` of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

impl Bench<'_> {
    pub fn measure_reporting(&self) -> anyhow::Result<Results> {
        // Nothing here reads program counters: no clock reads around runs.
        self.stats.set(false)?;
        let seconds = self.args.report_seconds;
        let idle = self.measure_idle()?;
        say!(
            "idle daemon: ready {} ms after start (its own count: {} ms), {:.2} ms CPU per second, RSS {:.1} MiB",
            idle.start_to_ready_ms,
            idle.ready_ms,
            idle.cpu_ms_per_s,
            idle.rss_mib
        );
        let mut floods: Vec<(String, u64, bool)> = RATES
            .iter()
            .map(|&r| (format!("{}k/s one flow", r / 1000), r, false))
            .collect();
        floods.push(("distinct flows".to_owned(), DISTINCT_RATE, true));
        // Loss forced: the reader is stopped for a while mid-flood.
        floods.push((PAUSED.to_owned(), DISTINCT_RATE, true));
        if let Some(only) = &self.args.report_only {
            floods.retain(|(name, _, _)| name.contains(only.as_str()));
        }
        let mut rows = Vec::new();
        for (name, rate, distinct) in floods {
            for format in ["human", "json"] {
                super::check_interrupted()?;
                let row = self.measure_flood(&name, rate, distinct, format, seconds)?;
                say!(
                    "reporting {name:<16} {format:<5} {:>8.0}/s offered {rate}: {} lines, {} summarised, {} lost, accounted {}/{}, CPU {:.1}%, RSS ≤ {:.1} MiB",
                    row.achieved,
                    row.lines,
                    row.summarised,
                    row.lost,
                    row.accounted(),
                    row.attempts,
                    row.cpu_percent,
                    row.rss_max_mib
                );
                rows.push(row);
            }
        }
        Ok(Results { idle, rows })
    }

    fn reporting_config(&self) -> String {
        format!(
            "mode = \"audit\"\nlog_allowed = true\n\n[protect]\nports = [{port}]\nnetns = [{netns}]\n\n\
             [[rule]]\nname = \"bench-deny-other\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\n",
            port = self.args.report_port,
            netns = toml_str(&self.netns.path()),
        )
    }

    fn start_reporting_daemon(
        &self,
        tag: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Warden, std::path::PathBuf, Duration)> {
        let file = self.dir.path().join("reporting.toml");
        fs::write(&file, self.reporting_config())
            .with_context(|| format!("cannot write {}", file.display()))?;
        let log = self.dir.path().join(format!("reporting-{tag}.log"));
        let run_dir = self.dir.path().join(format!("run-reporting-{tag}"));
        let started = Instant::now();
        let warden = Warden::start_with(&self.bin, &file, &run_dir, &log, extra)?;
        Ok((warden, log, started.elapsed()))
    }

    fn measure_idle(&self) -> anyhow::Result<Idle> {
        let (warden, log, to_ready) = self.start_reporting_daemon("idle", &[])?;
        let pid = warden.pid().context("the daemon has no pid")?;
        // Past start-up, then a quiet stretch.
        std::thread::sleep(Duration::from_secs(2));
        // The refresh runs a short-lived thread in a scoped namespace: count
        // exited threads too.
        let before = cpu_ns_with_exited(pid);
        std::thread::sleep(IDLE);
        let cpu = cpu_ns_with_exited(pid).saturating_sub(before);
        let rss = rss_mib(pid);
        warden.stop()?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let ready_ms = text
            .lines()
            .find_map(|l| {
                l.split("in force ")
                    .nth(1)?
                    .split(" ms")
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let refresh_us = text
            .lines()
            .find(|l| l.contains("the 1 s refresh"))
            .and_then(|l| word_value(l, "mean_us="))
            .unwrap_or(0);
        Ok(Idle {
            ready_ms,
            refresh_us,
            start_to_ready_ms: to_ready.as_millis() as u64,
            cpu_ms_per_s: cpu as f64 / 1e6 / IDLE.as_secs_f64(),
            rss_mib: rss,
        })
    }

    fn measure_flood(
        &self,
        name: &str,
        rate: u64,
        distinct: bool,
        format: &'static str,
        seconds: f64,
    ) -> anyhow::Result<Row> {
        let tag = format!("{}-{format}", name.replace([' ', '/'], "-"));
        let (warden, log, _) = self.start_reporting_daemon(&tag, &["--log-format", format])?;
        let pid = warden.pid().context("the daemon has no pid")?;
        let mut cmd = self.netns.exec(&self.xtask);
        cmd.args(["bench-flood", "--port", &self.args.report_port.to_string()])
            .args([
                "--seconds",
                &seconds.to_string(),
                "--rate",
                &rate.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if distinct {
            cmd.arg("--distinct");
        }
        let cpu_before = cpu_ns(pid);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", proc::display(&cmd)))?;
        let mut rss_max = rss_mib(pid);
        let paused = name == PAUSED;
        let mut stopped = false;
        while child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(100));
            rss_max = rss_max.max(rss_mib(pid));
            let t = started.elapsed().as_secs_f64();
            let signal = if paused && !stopped && t > seconds * 0.2 && t < seconds * 0.6 {
                stopped = true;
                Some(libc::SIGSTOP)
            } else if stopped && t >= seconds * 0.6 {
                stopped = false;
                Some(libc::SIGCONT)
            } else {
                None
            };
            if let Some(signal) = signal {
                // SAFETY: kill(2) on the daemon we started.
                unsafe { libc::kill(pid as libc::pid_t, signal) };
            }
        }
        if stopped {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
        // The last reports are drained and summarised within an interval.
        std::thread::sleep(Duration::from_millis(1200));
        rss_max = rss_max.max(rss_mib(pid));
        let cpu = cpu_ns(pid).saturating_sub(cpu_before);
        let out = child.wait_with_output()?;
        warden.stop()?;
        let out = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| -> anyhow::Result<u64> {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bench-flood printed no {key}: {out:?}"))
        };
        let attempts = field("attempts")?;
        let elapsed = Duration::from_nanos(field("elapsed_ns")?);
        let counts = count_output(&log)?;
        Ok(Row {
            flood: name.to_owned(),
            format,
            offered: rate,
            achieved: attempts as f64 / elapsed.as_secs_f64(),
            attempts,
            lines: counts.lines,
            summaries: counts.summaries,
            summarised: counts.summarised,
            lost: counts.lost,
            // Over the flood's own time: the daemon's work for it, the
            // drain after it included, per second of flood (the wall time
            // to the end of the drain would count the idle tail too).
            cpu_percent: cpu as f64 / elapsed.as_nanos().max(1) as f64 * 100.0,
            rss_max_mib: rss_max,
        })
    }
}
