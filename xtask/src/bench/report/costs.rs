//! The cost table: each BPF program's ns per run, raw and net of the
//! measurement floor (a no-op program measured the same way), per operation
//! of its load and as a share of the load's cycle, checked against the
//! targets.

use std::collections::BTreeMap;

use loopwarden_common::programs;

use super::Rates;
use crate::bench::{Config, Sample, Workload, stats::Counters};

/// ns per run of a connect hook on the protected path, with full identity.
const PROTECTED_TARGET_NS: f64 = 300.0;
/// ns per run of a connect hook on the unprotected path.
const UNPROTECTED_TARGET_NS: f64 = 50.0;
/// ns per run of `lw_receive`.
const RECEIVE_TARGET_NS: f64 = 50.0;
/// ns per run of `lw_bind4` on a bind the guard does not name.
const BIND_TARGET_NS: f64 = 50.0;
/// The no-op programs `loopwarden baseline` attaches: the floor of the
/// connect programs ...
const CONNECT_FLOOR_PROG: &str = "lw_baseline4";
/// ... and of the tracing programs.
const TRACING_FLOOR_PROG: &str = "lw_baseline_receive";

/// The measurement floor: the no-op `prog`'s ns/run in each round of the
/// baseline phase (in `workload`, or all loads pooled); median, min and max
/// over rounds.
fn measurement_floor(samples: &[Sample], prog: &str, workload: Option<Workload>) -> Option<Floor> {
    let mut rounds: BTreeMap<u32, Counters> = BTreeMap::new();
    for sample in samples.iter().filter(|sample| {
        sample.config == Config::Baseline && workload.is_none_or(|w| sample.workload == w)
    }) {
        if let Some(counters) = sample.progs.get(prog) {
            rounds.entry(sample.round).or_default().add(*counters);
        }
    }
    let per_round: Vec<f64> = rounds
        .values()
        .filter_map(|counters| counters.ns_per_run())
        .collect();
    Rates::from_values(per_round)
}

/// The no-op program whose cost is `prog`'s floor.
fn floor_prog(prog: &str) -> &'static str {
    // The cgroup hooks' floor is the no-op connect4 program's (getsockopt's
    // too: a cgroup hook, called the same way).
    if prog.starts_with("lw_connect")
        || prog.starts_with("lw_recvmsg")
        || prog.starts_with("lw_bind")
        || prog.starts_with("lw_getsockopt")
    {
        CONNECT_FLOOR_PROG
    } else {
        TRACING_FLOOR_PROG
    }
}

/// The floors: `lw_baseline4` pooled over the baseline phase, and
/// `lw_baseline_receive` per receive load (`lw_receive`'s matching floor:
/// same tracepoint, same load).
struct Floors(BTreeMap<(&'static str, Option<Workload>), Option<Floor>>);

/// A floor over rounds (`n`: how many rounds measured it).
type Floor = Rates;

impl Floors {
    fn measure(samples: &[Sample]) -> Self {
        let mut floors = BTreeMap::new();
        floors.insert(
            (CONNECT_FLOOR_PROG, None),
            measurement_floor(samples, CONNECT_FLOOR_PROG, None),
        );
        // The UDP load does not reach the tracepoint (see `Workload::ReceiveUdp`).
        for workload in Workload::ALL
            .into_iter()
            .filter(|w| w.is_receive() && *w != Workload::ReceiveUdp)
        {
            floors.insert(
                (TRACING_FLOOR_PROG, Some(workload)),
                measurement_floor(samples, TRACING_FLOOR_PROG, Some(workload)),
            );
        }
        Self(floors)
    }

    fn get(&self, prog: &'static str, workload: Option<Workload>) -> Option<&Rates> {
        self.0.get(&(prog, workload)).and_then(Option::as_ref)
    }

    /// The floor subtracted from `prog`'s runs under `workload`, in ns: the
    /// connect programs' is `lw_baseline4`'s; `lw_receive`'s that of
    /// `lw_baseline_receive` in the same load; the other tracing programs
    /// run where no no-op tracing program does, and take the smallest
    /// receive-load floor (subtracting less never flatters them).
    fn ns(&self, prog: &str, workload: Workload) -> f64 {
        let floor = floor_prog(prog);
        if floor == CONNECT_FLOOR_PROG {
            return self.get(floor, None).map_or(0.0, |f| f.median);
        }
        let matching = (prog == programs::RECEIVE)
            .then(|| self.get(floor, Some(workload)))
            .flatten();
        matching.map_or_else(
            || {
                self.0
                    .iter()
                    .filter(|((p, _), _)| *p == floor)
                    .filter_map(|(_, f)| f.as_ref())
                    .map(|f| f.median)
                    .reduce(f64::min)
                    .unwrap_or(0.0)
            },
            |f| f.median,
        )
    }
}

/// The target for `prog`'s net ns/run under `workload`, if any. Report-all
/// shows what reporting every connect costs: no target.
fn target_ns(prog: &str, config: Config, workload: Workload) -> Option<f64> {
    match workload {
        _ if config == Config::ReportAll => None,
        // The target is the judgement's: the origin tag (on in the other
        // phases) comes on top, with no target of its own.
        Workload::Protected | Workload::Protected6
            if prog.starts_with("lw_connect") && config == Config::Untagged =>
        {
            Some(PROTECTED_TARGET_NS)
        }
        Workload::Unprotected if prog.starts_with("lw_connect") => Some(UNPROTECTED_TARGET_NS),
        Workload::Bind if prog == programs::BIND4 => Some(BIND_TARGET_NS),
        _ if workload.is_receive()
            && (prog == programs::RECEIVE || prog.starts_with("lw_recvmsg")) =>
        {
            Some(RECEIVE_TARGET_NS)
        }
        _ => None,
    }
}

pub(super) fn print(samples: &[Sample], misses: &mut Vec<String>) {
    println!();
    println!(
        "BPF program cost (BPF statistics, BPF_ENABLE_STATS: run_time_ns / run_cnt of each \
         round, the median over rounds and its range; targets apply to net ns/run; op: a \
         connect, a request, a read of a stream, a datagram, a spawn, a bind)"
    );
    let floors = Floors::measure(samples);
    println!(
        "  {:<10} {:<15} {:<16} {:>10} {:>11} {:>10} {:>9} {:>10} {:>8}  target (net)",
        "daemon",
        "load",
        "program",
        "raw ns/run",
        "raw range",
        "net ns/run",
        "runs/op",
        "net ns/op",
        "of op"
    );
    let mut seen_any = false;
    for config in [
        Config::Audit,
        Config::Enforce,
        Config::Untagged,
        Config::ReportAll,
        Config::EgressNamed,
        Config::EgressOther,
    ] {
        for &workload in config.workloads() {
            let Some(rates) = Rates::of(samples, config, workload) else {
                continue;
            };
            let mut ops = 0;
            let mut elapsed = 0.0;
            let mut progs: BTreeMap<&str, Counters> = BTreeMap::new();
            for sample in samples
                .iter()
                .filter(|sample| sample.config == config && sample.workload == workload)
            {
                ops += sample.counted.ops;
                elapsed += sample.counted.elapsed.as_secs_f64();
                for (name, counters) in &sample.progs {
                    progs.entry(name).or_default().add(*counters);
                }
            }
            // One op's share of the wall time (pooled over rounds; the
            // median rate of the stream is in MB/s, not ops).
            let cycle_ns = if workload.is_stream() {
                elapsed * 1e9 / ops as f64
            } else {
                1e9 / rates.median
            };
            for &name in workload.programs() {
                let Some(counters) = progs.get(name) else {
                    continue;
                };
                seen_any = true;
                let Some(per_round) = Rates::ns_per_run(samples, config, workload, name) else {
                    println!(
                        "  {:<10} {:<15} {:<16} {:>10} {:>11} {:>10} {:>9.2} {:>10} {:>8}  - (never ran)",
                        config, workload, name, "-", "-", "-", 0.0, "-", "-"
                    );
                    continue;
                };
                let raw = per_round.median;
                let range = format!("{:.0}..{:.0}", per_round.min, per_round.max);
                let floor = floors.ns(name, workload);
                let net = raw - floor;
                let runs_per_op = counters.run_cnt as f64 / ops as f64;
                let per_op = net * runs_per_op;
                let verdict = match target_ns(name, config, workload) {
                    None => "-".to_owned(),
                    Some(limit) if net <= limit => format!("≤ {limit:.0} ns PASS"),
                    Some(limit) => {
                        misses.push(format!(
                            "{name} ({config}, {workload}): {net:.0} ns net per run \
                             ({raw:.0} raw − {floor:.0} floor), target {limit:.0} ns"
                        ));
                        format!("≤ {limit:.0} ns OVER TARGET")
                    }
                };
                println!(
                    "  {:<10} {:<15} {:<16} {:>10.0} {:>11} {:>10.0} {:>9.2} {:>10.0} {:>7.2}%  {verdict}",
                    config,
                    workload,
                    name,
                    raw,
                    range,
                    net,
                    runs_per_op,
                    per_op,
                    per_op / cycle_ns * 100.0,
                );
            }
        }
    }
    if !seen_any {
        println!("  (no loopwarden programs found: are they loaded under lw_* names?)");
        return;
    }
    for ((prog, workload), floor) in &floors.0 {
        let of = match workload {
            None => "the connect programs".to_owned(),
            Some(workload) => format!("the tracing programs on {workload}"),
        };
        match floor {
            Some(floor) => println!(
                "  floor of {of}: the no-op {prog} measured the same way costs {:.0} ns/run \
                 (median of {} round(s), {:.0}..{:.0})",
                floor.median, floor.n, floor.min, floor.max
            ),
            None => {
                println!("  floor of {of}: {prog} never ran in the baseline phase");
                misses.push(format!(
                    "no measurement floor for {of}: {prog} did not run in the baseline phase"
                ));
            }
        }
    }
    println!(
        "  net = raw − floor: the connect programs' floor is {CONNECT_FLOOR_PROG}'s; \
         lw_receive's is {TRACING_FLOOR_PROG}'s in the same load; the other tracing programs \
         (no no-op runs on their tracepoints) take the smallest {TRACING_FLOOR_PROG} floor, \
         a net figure near or below 0 being within the floors' noise"
    );
    // Programs that never ran during any measurement.
    let idle: Vec<&str> = programs::TRACKERS
        .iter()
        .map(|(name, _)| *name)
        .chain([
            programs::CONNECT4,
            programs::CONNECT6,
            programs::RECVMSG4,
            programs::BIND4,
        ])
        .filter(|name| !ran_anywhere(samples, name))
        .collect();
    if !idle.is_empty() {
        println!("  not exercised by this bench: {}", idle.join(", "));
    }
}

fn ran_anywhere(samples: &[Sample], name: &str) -> bool {
    samples
        .iter()
        .any(|sample| sample.progs.get(name).is_some_and(|c| c.run_cnt > 0))
}
