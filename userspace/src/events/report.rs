//! From kernel records to stdout: repeats summarised, lines batched.
//!
//! A report whose flow — the same process (pid and start time), executable,
//! uid, cgroup, network namespace, destination, verdict, rule and policy —
//! was not reported in the current interval gets its line at once. Further
//! reports of that flow are only counted, and at the end of the interval
//! ([`Reporter::summarise`], every `--repeat-interval`) one summary line per
//! flow stands for all of them: the last one's record with `repeat` (JSON)
//! or `repeated=N first=.. last=..` (human). So a flood from one process
//! costs a line per interval, and no report (refusals included) waits
//! longer than one interval. A flow with no report in a whole interval is
//! forgotten: its next report again has a line at once.
//!
//! Lines are formatted into one buffer and written with one `write(2)` per
//! batch.

use std::{
    collections::HashMap, fs::File, io::Write as _, mem::ManuallyDrop, os::fd::FromRawFd as _,
    time::Duration,
};

use loopwarden_common::{Addr, ConnectEvent, ExeKey, SCRIPT_LEN};
use tracing::error;

use crate::events::{Enricher, LogFormat, Repeat, Time, event_time, tally::Tally};

/// Flows tracked at once; past it every pending summary is written early and
/// tracking starts over (about 300 bytes per flow).
const MAX_FLOWS: usize = 1024;
/// Buffered output past which a batch is written before it ends.
const FLUSH_AT: usize = 64 * 1024;

/// What makes two reports "the same" for summarising.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    tgid: u32,
    start_boottime_ns: u64,
    exe: ExeKey,
    /// The script an interpreter runs: another after an exec of the same
    /// interpreter is another flow.
    script: [u8; SCRIPT_LEN],
    uid: u32,
    gid: u32,
    ppid: u32,
    cgroup_id: u64,
    netns_cookie: u64,
    daddr: Addr,
    dport: u16,
    family: u16,
    verdict: u8,
    rule: u8,
    policy_seq: u64,
}

impl FlowKey {
    fn of(ev: &ConnectEvent) -> Self {
        Self {
            tgid: ev.tgid,
            start_boottime_ns: ev.start_boottime_ns,
            exe: ev.exe,
            script: ev.script,
            uid: ev.uid,
            gid: ev.gid,
            ppid: ev.ppid,
            cgroup_id: ev.cgroup_id,
            netns_cookie: ev.netns_cookie,
            daddr: ev.daddr,
            dport: ev.dport,
            family: ev.family,
            verdict: ev.verdict,
            rule: ev.rule,
            policy_seq: ev.policy_seq,
        }
    }
}

/// Reports of one flow not yet on a line.
struct Flow {
    /// The latest of them (its record is the summary's).
    last: ConnectEvent,
    /// `ktime_ns` of the first of them.
    first_ktime_ns: u64,
    count: u64,
}

/// Totals since start, for the exit line and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Reports received from the kernel.
    pub reports: u64,
    /// Lines written (summary lines included).
    pub lines: u64,
    /// Summary lines written.
    pub summaries: u64,
    /// Reports that are counted in a summary line instead of a line of their own.
    pub summarised: u64,
}

/// Writes audit lines for kernel reports, summarising repeats.
pub struct Reporter {
    enricher: Enricher,
    format: LogFormat,
    /// `None`: every report gets its own line.
    interval: Option<Duration>,
    flows: HashMap<FlowKey, Flow>,
    buf: Vec<u8>,
    /// Standard output, written without std's line buffering.
    out: Box<dyn std::io::Write>,
    totals: Totals,
    /// A write error already reported (said once until writes work again).
    write_failed: bool,
    /// New flows since the last [`Reporter::take_busy`].
    busy: bool,
    /// The reports by rule, port and verdict, for the metrics.
    tally: Tally,
}

impl Reporter {
    /// `interval` zero turns summaries off.
    pub fn new(enricher: Enricher, format: LogFormat, interval: Duration) -> Self {
        // SAFETY: fd 1 stays open for the process's life; ManuallyDrop
        // keeps this handle from closing it.
        let stdout = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        Self::with_output(enricher, format, interval, Box::new(Stdout(stdout)))
    }

    /// Like [`Reporter::new`], writing to `out`.
    pub fn with_output(
        enricher: Enricher,
        format: LogFormat,
        interval: Duration,
        out: Box<dyn std::io::Write>,
    ) -> Self {
        Self {
            enricher,
            format,
            interval: (!interval.is_zero()).then_some(interval),
            flows: HashMap::new(),
            buf: Vec::with_capacity(FLUSH_AT + 4096),
            out,
            totals: Totals::default(),
            write_failed: false,
            busy: false,
            tally: Tally::default(),
        }
    }

    pub fn enricher(&mut self) -> &mut Enricher {
        &mut self.enricher
    }

    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The per rule, port and verdict counts of the reports so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Hands the counts since the last call to the tally's readers.
    pub fn publish_tally(&mut self) {
        let enricher = &self.enricher;
        self.tally
            .publish(|seq, rule| enricher.rule_name(seq, rule).map(|n| n.into_owned()));
    }

    /// Whether new flows were seen since the last call: the heap a burst
    /// grew is worth returning afterwards.
    pub fn take_busy(&mut self) -> bool {
        std::mem::take(&mut self.busy)
    }

    /// One report: a line now if its flow is new, else counted for the
    /// flow's summary.
    pub fn event(&mut self, ev: &ConnectEvent) {
        self.totals.reports += 1;
        self.tally.add(ev);
        if self.interval.is_some() {
            let key = FlowKey::of(ev);
            if let Some(flow) = self.flows.get_mut(&key) {
                // Refusals that spilled into the other ring (see
                // `ebpf/src/connect/record.rs`) are read after newer ones:
                // the summary spans the earliest and the latest.
                if flow.count == 0 || ev.ktime_ns < flow.first_ktime_ns {
                    flow.first_ktime_ns = ev.ktime_ns;
                }
                if flow.count == 0 || ev.ktime_ns >= flow.last.ktime_ns {
                    flow.last = *ev;
                }
                flow.count += 1;
                return;
            }
            if self.flows.len() >= MAX_FLOWS {
                self.summarise();
                self.flows.clear();
            }
            self.busy = true;
            self.flows.insert(
                key,
                Flow {
                    last: *ev,
                    first_ktime_ns: ev.ktime_ns,
                    count: 0,
                },
            );
        }
        self.line(ev, None);
    }

    fn line(&mut self, ev: &ConnectEvent, repeat: Option<Repeat>) {
        let mut record = self.enricher.enrich(ev);
        record.repeat = repeat;
        record.write_line(self.format, &mut self.buf);
        self.totals.lines += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// End of an interval: a summary line for every flow with reports
    /// pending; flows without any are forgotten.
    pub fn summarise(&mut self) {
        let mut pending = Vec::new();
        // What a burst of flows needed is returned once they are quiet.
        if self.flows.is_empty() && self.flows.capacity() > 0 {
            self.flows = HashMap::new();
        }
        self.flows.retain(|_, flow| {
            if flow.count == 0 {
                return false;
            }
            pending.push((flow.last, flow.first_ktime_ns, flow.count));
            flow.count = 0;
            true
        });
        for (last, first_ktime_ns, count) in pending {
            self.totals.summaries += 1;
            self.totals.summarised += count;
            let repeat = Repeat {
                count,
                first: Time(event_time(first_ktime_ns)),
                last: Time(event_time(last.ktime_ns)),
            };
            self.line(&last, Some(repeat));
        }
        self.flush();
    }

    /// Writes what is buffered with one `write(2)` (more only if the pipe
    /// takes it in parts).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // The sweeper writes its cut lines through std's stdout on a thread
        // of its own, holding its lock: holding it here too keeps a batch
        // past `PIPE_BUF`, which a pipe may take in parts, from
        // interleaving with them.
        let _serialised = std::io::stdout().lock();
        match self.out.write_all(&self.buf) {
            Ok(()) => self.write_failed = false,
            Err(e) if !self.write_failed => {
                self.write_failed = true;
                error!("writing audit lines failed: {e}");
            }
            Err(_) => {}
        }
        self.buf.clear();
        // A long line's growth is not kept for the daemon's whole life.
        if self.buf.capacity() > 2 * FLUSH_AT {
            self.buf.shrink_to(FLUSH_AT + 4096);
        }
    }
}

/// Standard output as a file: `write(2)` with nothing buffered in between.
struct Stdout(ManuallyDrop<File>);

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, path::PathBuf, rc::Rc};

    use loopwarden_common::verdict;

    use super::*;
    use loopwarden_common::Addr;

    /// Output shared with the test.
    #[derive(Clone, Default)]
    struct Shared(Rc<RefCell<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.borrow().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn event(tgid: u32, port: u16, ktime_ns: u64, v: u8) -> ConnectEvent {
        ConnectEvent {
            ktime_ns,
            policy_seq: 2,
            socket_cookie: ktime_ns,
            netns_cookie: 9,
            start_boottime_ns: 5,
            cgroup_id: 1,
            exe: ExeKey::default(),
            daddr: Addr::from_ip("127.0.0.1".parse().unwrap()),
            tgid,
            pid: tgid,
            ppid: 0,
            uid: u32::MAX - 1,
            gid: 0,
            dport: port,
            family: 2,
            verdict: v,
            rule: loopwarden_common::NO_RULE,
            forked: 0,
            _pad0: 0,
            _pad1: 0,
            comm: [0; 16],
            exe_name: [0; 32],
            via: Default::default(),
            script: [0; loopwarden_common::SCRIPT_LEN],
        }
    }

    fn reporter(interval: Duration) -> (Reporter, Shared) {
        let out = Shared::default();
        let enricher = Enricher::new(PathBuf::from("/nonexistent"));
        let r = Reporter::with_output(enricher, LogFormat::Json, interval, Box::new(out.clone()));
        (r, out)
    }

    fn count(line: &serde_json::Value) -> u64 {
        line.get("repeat")
            .map_or(1, |r| r["count"].as_u64().unwrap())
    }

    #[test]
    fn repeats_become_one_summary_whose_counts_add_up() {
        let (mut r, out) = reporter(Duration::from_secs(1));
        for i in 0..1000 {
            r.event(&event(u32::MAX - 3, 8080, 1_000 + i, verdict::ALLOW));
        }
        r.flush();
        // The first at once, the rest held for the summary.
        assert_eq!(out.lines().len(), 1);
        r.summarise();
        let lines = out.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["repeat"]["count"], 999);
        assert_eq!(lines[1]["socket_cookie"], 1_999, "the last report's fields");
        assert_eq!(lines.iter().map(count).sum::<u64>(), 1000);
        // A quiet interval forgets the flow: its next report has a line at once.
        r.summarise();
        r.event(&event(u32::MAX - 3, 8080, 5_000, verdict::ALLOW));
        r.flush();
        assert_eq!(out.lines().len(), 3);
        assert!(out.lines()[2].get("repeat").is_none());
        assert_eq!(
            r.totals(),
            Totals {
                reports: 1001,
                lines: 3,
                summaries: 1,
                summarised: 999
            }
        );
    }

    #[test]
    fn a_summary_spans_reports_read_out_of_order() {
        // Refusals read from the refusals' ring, then older ones that
        // spilled into the other ring (times in seconds since boot).
        let (mut r, out) = reporter(Duration::from_secs(1));
        for second in [1, 5, 6, 2, 3] {
            let ktime = second * 1_000_000_000;
            r.event(&event(u32::MAX - 3, 8080, ktime, verdict::DENY));
        }
        r.summarise();
        let lines = out.lines();
        let repeat = &lines[1]["repeat"];
        assert_eq!(repeat["count"], 4);
        assert_eq!(
            lines[1]["socket_cookie"], 6_000_000_000u64,
            "the latest report's fields"
        );
        assert_eq!(repeat["last"], lines[1]["time"]);
        let at = |field: &str| humantime::parse_rfc3339(repeat[field].as_str().unwrap()).unwrap();
        // From the earliest of the four (2 s) to the latest (6 s).
        let span = at("last").duration_since(at("first")).unwrap();
        assert!(
            span.abs_diff(Duration::from_secs(4)) < Duration::from_millis(5),
            "{repeat}"
        );
    }

    #[test]
    fn a_new_flow_is_reported_at_once_inside_a_flood() {
        let (mut r, out) = reporter(Duration::from_secs(1));
        for i in 0..100 {
            r.event(&event(u32::MAX - 3, 8080, i, verdict::ALLOW));
        }
        // Another destination, another verdict, another process.
        r.event(&event(u32::MAX - 3, 8081, 200, verdict::ALLOW));
        r.event(&event(u32::MAX - 3, 8080, 201, verdict::DENY));
        r.event(&event(u32::MAX - 4, 8080, 202, verdict::ALLOW));
        // The same process after a setgid, and after an exec of the same
        // interpreter with another script.
        let mut setgid = event(u32::MAX - 3, 8080, 203, verdict::ALLOW);
        setgid.gid = 7;
        r.event(&setgid);
        let mut rescript = event(u32::MAX - 3, 8080, 204, verdict::ALLOW);
        rescript.script[0] = b'b';
        r.event(&rescript);
        r.flush();
        assert_eq!(out.lines().len(), 6);
    }

    #[test]
    fn zero_interval_writes_every_report() {
        let (mut r, out) = reporter(Duration::ZERO);
        for i in 0..10 {
            r.event(&event(u32::MAX - 3, 8080, i, verdict::ALLOW));
        }
        r.summarise();
        assert_eq!(out.lines().len(), 10);
    }

    #[test]
    fn a_full_flow_table_writes_its_summaries_early() {
        let (mut r, out) = reporter(Duration::from_secs(1));
        for port in 0..MAX_FLOWS as u16 {
            r.event(&event(u32::MAX - 3, port, 1, verdict::ALLOW));
            r.event(&event(u32::MAX - 3, port, 2, verdict::ALLOW));
        }
        r.event(&event(u32::MAX - 3, u16::MAX, 3, verdict::ALLOW));
        r.summarise();
        let lines = out.lines();
        assert_eq!(
            lines.iter().map(count).sum::<u64>(),
            2 * MAX_FLOWS as u64 + 1
        );
    }

    #[test]
    fn human_summaries_say_how_many() {
        let out = Shared::default();
        let enricher = Enricher::new(PathBuf::from("/nonexistent"));
        let mut r = Reporter::with_output(
            enricher,
            LogFormat::Human,
            Duration::from_secs(1),
            Box::new(out.clone()),
        );
        for i in 0..3 {
            r.event(&event(u32::MAX - 3, 8080, i, verdict::ALLOW));
        }
        r.summarise();
        let text = String::from_utf8(out.0.borrow().clone()).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.contains(" repeated=2 first="), "{last}");
        assert!(last.contains(" ALLOW rule=- dst=127.0.0.1:8080 "), "{last}");
    }
}
