//! From kernel records to stdout: repeats summarised, lines batched.
//!
//! A report whose flow — the same process (pid and start time; or any
//! child forked by the same parent that executed nothing since), executable,
//! uid, cgroup, network namespace, destination (any address of 127.0.0.0/8
//! counts as one), verdict, rule, policy and remote party (`via`) — was not
//! reported in the current interval gets its line at once. Further
//! reports of that flow are only counted, and at the end of the interval
//! ([`Reporter::summarise`], every `--repeat-interval`) one summary line per
//! flow stands for all of them: the last one's record with `repeat` (JSON)
//! or `repeated=N first=.. last=..` (human). So a flood from one process
//! costs a line per interval, and no report (refusals included) waits
//! longer than one interval. A flow with no report in a whole interval is
//! forgotten: its next report again has a line at once.
//!
//! Lines are formatted into one buffer and handed, a batch at a time, to
//! the thread that writes them ([`super::writer`]): a slow reader of
//! stdout never stalls the daemon, and lines it could not take are
//! counted and said, never silently gone.

use std::{
    collections::HashMap, fs::File, mem::ManuallyDrop, os::fd::FromRawFd as _, time::Duration,
};

use loopwarden_common::{Addr, ConnectEvent, ExeKey, SCRIPT_LEN};
use tracing::warn;

use crate::events::{
    Enricher, LogFormat, Repeat, Time, event_time,
    tally::Tally,
    writer::{Batch, Writer},
};

/// Flows tracked at once; past it every pending summary is written early and
/// tracking starts over (about 300 bytes per flow).
const MAX_FLOWS: usize = 1024;
/// Buffered output past which a batch is written before it ends.
const FLUSH_AT: usize = 64 * 1024;
/// Room a new batch is made with: a full one and a long line.
const BATCH_ROOM: usize = FLUSH_AT + 8 * 1024;
/// Lines held while the writing thread's queue is full (it holds some
/// 1 MiB more); past it they are dropped and counted.
const HOLD_MAX: usize = 1024 * 1024;
/// How long an exiting daemon waits for its lines to be written.
const FINISH_WAIT: Duration = Duration::from_secs(5);
/// The longest `--repeat-interval`: a summary (of refusals too) waits at
/// most this long for its line.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// `--repeat-interval`: a duration (`humantime`'s syntax) of at most
/// [`MAX_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(s).map_err(|e| {
        format!("{s:?} is not a duration ({e}): give a number and a unit, such as 1s or 500ms")
    })?;
    if interval > MAX_INTERVAL {
        return Err(format!(
            "{s} is longer than {}: a flow's repeats are summarised at the end of each \
             interval, so its refusals would go unsaid that long; give 1h or less (0 writes \
             a line per report)",
            humantime::format_duration(MAX_INTERVAL)
        ));
    }
    Ok(interval)
}

/// What makes two reports "the same" for summarising.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    /// The process (0 and 0 for any forked child of `ppid` that executed
    /// nothing since).
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
    /// The remote party a relay's connect was for (its evidence's kind
    /// and address): each peer's connects keep their own line.
    via_kind: u8,
    via_addr: Addr,
}

/// A flow's destination address: 127.0.0.1 for any of 127.0.0.0/8, which
/// are all this host's loopback. A process cycling through its 16 million
/// addresses would otherwise make every connect a flow of its own, and a
/// line each.
fn flow_daddr(daddr: Addr) -> Addr {
    match daddr.to_ip() {
        std::net::IpAddr::V4(v4) if v4.is_loopback() => {
            Addr::from_ip(std::net::Ipv4Addr::LOCALHOST.into())
        }
        _ => daddr,
    }
}

impl FlowKey {
    fn of(ev: &ConnectEvent) -> Self {
        // A process forked without executing anything runs its parent's
        // program: its connects and its siblings' are one flow, that of the
        // parent's forked children (`ppid` below). A forking relay (socat's
        // per-connection child) would otherwise make a new flow, and a line,
        // for every connection its remote party opens.
        let (tgid, start_boottime_ns) = if ev.forked != 0 {
            (0, 0)
        } else {
            (ev.tgid, ev.start_boottime_ns)
        };
        Self {
            tgid,
            start_boottime_ns,
            exe: ev.exe,
            script: ev.script,
            uid: ev.uid,
            gid: ev.gid,
            ppid: ev.ppid,
            cgroup_id: ev.cgroup_id,
            netns_cookie: ev.netns_cookie,
            daddr: flow_daddr(ev.daddr),
            dport: ev.dport,
            family: ev.family,
            verdict: ev.verdict,
            rule: ev.rule,
            policy_seq: ev.policy_seq,
            via_kind: ev.via.kind,
            via_addr: ev.via.addr,
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
    /// Lines made (summary lines included).
    pub lines: u64,
    /// Of them, lines the output never took (too far behind, or a failed
    /// write), each said in a warning.
    pub unwritten: u64,
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
    /// Lines not yet handed to the writer.
    batch: Batch,
    writer: Writer,
    totals: Totals,
    /// New flows since the last [`Reporter::take_busy`].
    busy: bool,
    /// The reports by rule, port and verdict, for the metrics.
    tally: Tally,
}

impl Reporter {
    /// `interval` zero turns summaries off.
    pub fn new(enricher: Enricher, format: LogFormat, interval: Duration) -> Self {
        Self::with_writer(enricher, format, interval, stdout_writer("audit-lines"))
    }

    /// Like [`Reporter::new`], writing to `out` at once, on this thread.
    pub fn with_output(
        enricher: Enricher,
        format: LogFormat,
        interval: Duration,
        out: Box<dyn std::io::Write>,
    ) -> Self {
        Self::with_writer(enricher, format, interval, Writer::inline(out))
    }

    fn with_writer(
        enricher: Enricher,
        format: LogFormat,
        interval: Duration,
        writer: Writer,
    ) -> Self {
        Self {
            enricher,
            format,
            interval: (!interval.is_zero()).then_some(interval),
            flows: HashMap::new(),
            batch: Batch::with_capacity(BATCH_ROOM),
            writer,
            totals: Totals::default(),
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
        record.write_line(self.format, &mut self.batch.bytes);
        self.batch.reports.push(repeat.map_or(1, |r| r.count));
        self.totals.lines += 1;
        if self.batch.bytes.len() >= FLUSH_AT {
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

    /// Hands what is buffered to the writer. While its queue is full the
    /// lines stay here, to go with the next batch, up to [`HOLD_MAX`]
    /// bytes; past that they are dropped, counted and said (see
    /// [`Reporter::say_unwritten`]).
    pub fn flush(&mut self) {
        if self.batch.bytes.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Batch::with_capacity(BATCH_ROOM));
        if let Err(batch) = self.writer.send(batch) {
            if batch.bytes.len() >= HOLD_MAX {
                self.writer.drop_batch(batch);
            } else {
                self.batch = batch;
            }
        }
    }

    /// Says, once a refresh, the lines lost since the last time: the
    /// output too far behind for what was buffered, or a failed write.
    pub fn say_unwritten(&mut self) {
        let (lost, error) = self.writer.take_unwritten();
        if lost.lines == 0 {
            return;
        }
        self.totals.unwritten += lost.lines;
        self.tally.unwritten(lost.lines, lost.reports);
        let why = lost.why(error.as_deref());
        warn!(
            unwritten_lines = lost.lines,
            unwritten_reports = lost.reports,
            "audit lines lost: {} lines standing for {} reports were not written ({why}); the \
             connects were judged all the same",
            lost.lines,
            lost.reports
        );
    }

    /// At exit: hands over what is buffered and waits a while for it all
    /// to be written, then says what was not.
    pub fn finish(&mut self) {
        let deadline = std::time::Instant::now() + FINISH_WAIT;
        self.flush();
        // A batch held for a full queue goes once the queue has room.
        while !self.batch.bytes.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            self.flush();
        }
        if !self.batch.bytes.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.writer.drop_batch(batch);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !self.writer.finish(left) {
            warn!(
                "the audit lines still queued were not all written within {FINISH_WAIT:?}: the \
                 reader of standard output is stalled"
            );
        }
        self.say_unwritten();
    }
}

/// A [`Writer`] of standard output, on a thread of its own named `name`
/// (inline if it cannot start, said).
pub fn stdout_writer(name: &str) -> Writer {
    // SAFETY: fd 1 stays open for the process's life; ManuallyDrop keeps
    // this handle from closing it.
    let stdout = || Stdout(ManuallyDrop::new(unsafe { File::from_raw_fd(1) }));
    Writer::spawn(name, Box::new(stdout())).unwrap_or_else(|e| {
        warn!("starting the thread {name} failed ({e}): writing its lines inline");
        Writer::inline(Box::new(stdout()))
    })
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
                unwritten: 0,
                summaries: 1,
                summarised: 999
            }
        );
    }

    /// A relay's connects for different remote parties are apart (each
    /// peer has its line); connects to different addresses of
    /// 127.0.0.0/8 are one flow (a process cycling through them is
    /// summarised like one that does not).
    #[test]
    fn remote_parties_keep_their_lines_and_loopback_addresses_are_one() {
        let (mut r, out) = reporter(Duration::from_secs(1));
        let peer = |last: u8, ktime| {
            let mut ev = event(u32::MAX - 3, 8080, ktime, verdict::DENY);
            ev.via.kind = loopwarden_common::evidence::RECEIVED;
            ev.via.addr = Addr::from_ip(std::net::Ipv4Addr::new(10, 0, 0, last).into());
            ev
        };
        r.event(&peer(1, 1));
        r.event(&peer(2, 2));
        r.event(&peer(1, 3));
        for i in 0..1000u32 {
            let mut ev = event(u32::MAX - 4, 8080, 10 + u64::from(i), verdict::DENY);
            let [_, _, b, c] = i.to_be_bytes();
            ev.daddr = Addr::from_ip(std::net::Ipv4Addr::new(127, 9, b, c).into());
            r.event(&ev);
        }
        r.flush();
        // Two peers, one line each; the loopback addresses' first.
        assert_eq!(out.lines().len(), 3);
        r.summarise();
        let lines = out.lines();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines.iter().map(count).sum::<u64>(), 1003);
    }

    /// The forked children of one parent that executed nothing (a forking
    /// relay's per-connection children) are one flow: their reports for a
    /// peer make one line and one summary. A child that executed a program
    /// of its own, or one of another parent, has its own.
    #[test]
    fn a_parents_forked_children_are_one_flow() {
        let (mut r, out) = reporter(Duration::from_secs(1));
        let child = |tgid: u32, ppid: u32, forked: u8| {
            let mut ev = event(tgid, 8080, u64::from(tgid), verdict::DENY);
            ev.ppid = ppid;
            ev.forked = forked;
            ev.start_boottime_ns = u64::from(tgid) * 7;
            ev
        };
        for tgid in 100..600 {
            r.event(&child(tgid, 50, 1));
        }
        r.event(&child(700, 50, 0));
        r.event(&child(701, 51, 1));
        r.flush();
        let pids: Vec<_> = out.lines().iter().map(|l| l["pid"].clone()).collect();
        assert_eq!(pids, [100, 700, 701]);
        r.summarise();
        let lines = out.lines();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[3]["repeat"]["count"], 499);
        assert_eq!(lines[3]["pid"], 599, "the last child's record");
        assert_eq!(lines.iter().map(count).sum::<u64>(), 502);
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
    fn the_interval_is_a_duration_of_an_hour_at_most() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("1h"), Ok(MAX_INTERVAL));
        let long = parse_interval("61min").unwrap_err();
        assert!(
            long.contains("longer than 1h") && long.contains("give 1h or less"),
            "{long}"
        );
        let bad = parse_interval("2x").unwrap_err();
        assert!(
            bad.contains("not a duration") && bad.contains("such as 1s"),
            "{bad}"
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

    /// An output that takes nothing until told to.
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A reporter writing to a [`Stalled`] output, and `reports` new flows
    /// reported to it; the output moves once the sender is dropped.
    fn reported_to_a_stalled_output(reports: u32) -> (Reporter, std::sync::mpsc::Sender<()>) {
        let (release, stalled) = std::sync::mpsc::channel();
        let writer = Writer::spawn("test-lines", Box::new(Stalled(stalled))).unwrap();
        let enricher = Enricher::new(PathBuf::from("/nonexistent"));
        let mut r = Reporter::with_writer(enricher, LogFormat::Json, Duration::ZERO, writer);
        for i in 0..reports {
            r.event(&event(
                u32::MAX - 3,
                8080,
                1_000 + u64::from(i),
                verdict::ALLOW,
            ));
            r.flush();
        }
        (r, release)
    }

    /// A stalled reader of stdout never blocks the reporter: what the queue
    /// and the held batch cannot take is dropped and counted exactly, and
    /// once the output moves again, the rest is written.
    #[test]
    fn a_stalled_output_never_blocks_and_what_it_could_not_take_is_counted() {
        let started = std::time::Instant::now();
        let reports = 20_000u32;
        let (mut r, release) = reported_to_a_stalled_output(reports);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reporter waited for the output"
        );
        drop(release);
        r.finish();
        let totals = r.totals();
        assert_eq!(totals.lines, u64::from(reports));
        assert!(totals.unwritten > 0, "{totals:?}: nothing was dropped");
        assert!(totals.unwritten < totals.lines, "{totals:?}");
    }

    /// An output that never moves again: the exit waits its while, then
    /// counts every line as not written, the queued ones too.
    #[test]
    fn lines_still_queued_when_the_exit_gives_up_are_counted() {
        let (mut r, release) = reported_to_a_stalled_output(2_000);
        r.finish();
        let totals = r.totals();
        // Nothing reached the output: every line is said to be lost.
        assert_eq!(totals.unwritten, totals.lines, "{totals:?}");
        drop(release);
    }
}
