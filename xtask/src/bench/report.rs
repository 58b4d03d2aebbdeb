//! Turns the bench samples into two tables: rates (connects, receive
//! throughput, spawns) as ratios against the daemon-absent runs, paired by
//! round (a phase is worse than noise when it was slower than its reference
//! in every round), and each BPF program's cost per run, per operation of
//! the load and as a share of its cycle, checked against the targets.
//! Costs are reported raw and net of the measurement floor: what a no-op
//! program costs when measured the same way (the BPF statistics' own clock
//! reads and counter updates) — `lw_baseline4` for the connect programs,
//! `lw_baseline_receive` for the tracing ones.

use std::collections::BTreeMap;

use anyhow::bail;
use loopwarden_common::programs;

use super::{BenchArgs, Config, Sample, Workload, stats::Counters};
use crate::proc::say;

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

pub(super) struct Rates {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values (rounds) these are of.
    pub n: usize,
}

impl Rates {
    /// `prog`'s ns per run in each round of `config` × `workload`: the
    /// median and range over rounds (a round disturbed by the host moves
    /// the range, not the figure).
    pub(super) fn ns_per_run(
        samples: &[Sample],
        config: Config,
        workload: Workload,
        prog: &str,
    ) -> Option<Self> {
        Self::from_values(
            samples
                .iter()
                .filter(|sample| sample.config == config && sample.workload == workload)
                .filter_map(|sample| sample.progs.get(prog))
                .filter(|c| c.run_cnt > 0)
                .map(|c| c.run_time_ns as f64 / c.run_cnt as f64)
                .collect(),
        )
    }

    fn of(samples: &[Sample], config: Config, workload: Workload) -> Option<Self> {
        Self::from_values(
            samples
                .iter()
                .filter(|sample| sample.config == config && sample.workload == workload)
                .map(|sample| workload.rate(&sample.run))
                .collect(),
        )
    }

    /// Median, min and max of `values` (None when empty).
    fn from_values(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        };
        Some(Self {
            median,
            min: values[0],
            max: values[values.len() - 1],
            n: values.len(),
        })
    }

    /// Relative spread (max − min) / median.
    fn spread(&self) -> f64 {
        (self.max - self.min) / self.median
    }

    /// `config`'s rate as a ratio to `reference`'s in each round where both
    /// ran `workload`: median and range over rounds. A round's two phases
    /// ran minutes apart at most, under the same load from the host's
    /// neighbours, so the ratio cancels what moves a whole round.
    fn paired(
        samples: &[Sample],
        config: Config,
        reference: Config,
        workload: Workload,
    ) -> Option<Self> {
        let per_round = |config: Config| -> BTreeMap<u32, f64> {
            samples
                .iter()
                .filter(|sample| sample.config == config && sample.workload == workload)
                .map(|sample| (sample.round, workload.rate(&sample.run)))
                .collect()
        };
        let reference = per_round(reference);
        Self::from_values(
            per_round(config)
                .into_iter()
                .filter_map(|(round, rate)| Some(rate / reference.get(&round)?))
                .collect(),
        )
    }
}

/// Rounds needed before a phase slower than its reference in every round
/// counts as worse than noise: with no real difference, each round is as
/// likely to come out slower as faster, so all of 5 do so by chance once in
/// 32 runs (a sign test).
const VERDICT_ROUNDS: usize = 5;

/// How `ratios` (a phase's rate over its reference's, one per paired
/// round) compares with noise: `Err` when the phase was slower in every
/// round of enough of them.
fn verdict(ratios: &Rates) -> Result<&'static str, &'static str> {
    if ratios.max >= 1.0 {
        Ok("within noise")
    } else if ratios.n < VERDICT_ROUNDS {
        Ok("slower, too few rounds to judge")
    } else {
        Err("WORSE than noise")
    }
}

pub fn print(
    args: &BenchArgs,
    samples: &[Sample],
    reporting: Option<&super::reporting::Results>,
) -> anyhow::Result<()> {
    let mut misses = Vec::new();
    println!();
    println!(
        "loopwarden bench on {}: {} rounds × {} s per rate measurement (+ {} s counting program \
         runs), in private netns (loopback, veth pair)",
        host_description(),
        args.rounds,
        args.seconds,
        args.stats_seconds
    );
    if !samples.is_empty() {
        print_rates(samples, &mut misses);
        print_costs(samples, &mut misses);
        super::egress::print(samples, &mut misses);
    }
    if let Some(reporting) = reporting {
        super::reporting::print(reporting, args.report_seconds, &mut misses);
    }

    println!();
    if misses.is_empty() {
        println!("verdict: all targets met, no rate ratio worse than noise");
        return Ok(());
    }
    println!("verdict: {} finding(s):", misses.len());
    for miss in &misses {
        println!("  - {miss}");
    }
    if args.strict {
        bail!("{} finding(s) with --strict", misses.len());
    }
    say!("not failing for it (use --strict to)");
    Ok(())
}

fn print_rates(samples: &[Sample], misses: &mut Vec<String>) {
    println!();
    println!(
        "rates (per second; median, min..max over rounds; ratios paired by round: median, and \
         min..max against the reference)"
    );
    println!(
        "  {:<10} {:<12} {:>10} {:<12} {:>21} {:>9} {:>9} {:>13}  verdict",
        "daemon", "load", "median", "unit", "min..max", "vs absent", "vs no-op", "per round"
    );
    for workload in Workload::ALL {
        let Some(absent) = Rates::of(samples, Config::Absent, workload) else {
            continue;
        };
        // Any cgroup connect program, even one that does nothing, makes the
        // kernel lock the socket and copy the address around it; any program
        // on a tracepoint enables it: the no-op program's rate is the floor
        // loopwarden is judged against, where the baseline has one.
        let reference = if workload.has_noop_hook()
            && Rates::of(samples, Config::Baseline, workload).is_some()
        {
            Config::Baseline
        } else {
            Config::Absent
        };
        for config in Config::PHASES {
            if config == Config::Baseline && reference != Config::Baseline {
                continue;
            }
            let Some(rates) = Rates::of(samples, config, workload) else {
                continue;
            };
            let vs_absent = Rates::paired(samples, config, Config::Absent, workload);
            let vs_hook = (reference == Config::Baseline)
                .then(|| Rates::paired(samples, config, Config::Baseline, workload))
                .flatten();
            let judged = Rates::paired(samples, config, reference, workload);
            let verdict = match (config, &judged) {
                (Config::Absent, _) => format!("spread ±{:.1}%", absent.spread() * 100.0),
                (Config::Baseline, _) => "no-op program (the hook's own cost)".to_owned(),
                (_, None) => "-".to_owned(),
                (_, Some(ratios)) => match verdict(ratios) {
                    Ok(verdict) => verdict.to_owned(),
                    Err(verdict) => {
                        misses.push(format!(
                            "{config}, {workload}: rate {:.3}× {}'s, slower in every one of \
                             {} rounds ({:.3}..{:.3})",
                            ratios.median,
                            if reference == Config::Baseline {
                                "the no-op program"
                            } else {
                                "no daemon"
                            },
                            ratios.n,
                            ratios.min,
                            ratios.max,
                        ));
                        verdict.to_owned()
                    }
                },
            };
            let median = |r: &Option<Rates>| {
                r.as_ref()
                    .map_or("-".to_owned(), |r| format!("{:.3}", r.median))
            };
            println!(
                "  {:<10} {:<12} {:>10.0} {:<12} {:>21} {:>9} {:>9} {:>13}  {verdict}",
                config,
                workload,
                rates.median,
                workload.unit(),
                format!("{:.0}..{:.0}", rates.min, rates.max),
                median(&vs_absent),
                median(&vs_hook),
                match (config, &judged, &vs_absent) {
                    (Config::Absent, ..) => "-".to_owned(),
                    // The no-op program's own rounds, against no daemon.
                    (Config::Baseline, _, Some(r)) | (_, Some(r), _) => {
                        format!("{:.3}..{:.3}", r.min, r.max)
                    }
                    _ => "-".to_owned(),
                },
            );
        }
    }
}

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
        .filter(|counters| counters.run_cnt > 0)
        .map(|counters| counters.run_time_ns as f64 / counters.run_cnt as f64)
        .collect();
    Rates::from_values(per_round)
}

/// The no-op program whose cost is `prog`'s floor.
fn floor_prog(prog: &str) -> &'static str {
    // The cgroup hooks' floor is the no-op connect4 program's.
    if prog.starts_with("lw_connect")
        || prog.starts_with("lw_recvmsg")
        || prog.starts_with("lw_bind")
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

fn print_costs(samples: &[Sample], misses: &mut Vec<String>) {
    println!();
    println!(
        "BPF program cost (BPF statistics, BPF_ENABLE_STATS: run_time_ns / run_cnt of each \
         round, the median over rounds and its range; targets apply to net ns/run; op: a \
         connect, a request, a read of a stream, a datagram, a spawn, a bind)"
    );
    let floors = Floors::measure(samples);
    println!(
        "  {:<10} {:<12} {:<16} {:>10} {:>11} {:>10} {:>9} {:>10} {:>8}  target (net)",
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
                        "  {:<10} {:<12} {:<16} {:>10} {:>11} {:>10} {:>9.2} {:>10} {:>8}  - (never ran)",
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
                    "  {:<10} {:<12} {:<16} {:>10.0} {:>11} {:>10.0} {:>9.2} {:>10.0} {:>7.2}%  {verdict}",
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

/// The host, as the README names it: CPU model, CPUs, kernel.
fn host_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cpus} CPUs, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::load::Run;

    fn sample(round: u32, config: Config, ops: u64) -> Sample {
        let run = Run {
            ops,
            bytes: 0,
            errors: 0,
            elapsed: Duration::from_secs(1),
        };
        Sample {
            round,
            config,
            workload: Workload::Protected,
            run,
            counted: run,
            progs: Default::default(),
        }
    }

    #[test]
    fn ratios_pair_each_round_with_its_own_reference() {
        // The host halves every rate in round 1: unpaired medians would
        // mix the rounds; paired, each round's ratio is 0.9.
        let samples = [
            sample(0, Config::Absent, 1000),
            sample(0, Config::Audit, 900),
            sample(1, Config::Absent, 500),
            sample(1, Config::Audit, 450),
            // A round the reference did not run is left out.
            sample(2, Config::Audit, 10),
        ];
        let r =
            Rates::paired(&samples, Config::Audit, Config::Absent, Workload::Protected).unwrap();
        assert_eq!((r.min, r.median, r.max), (0.9, 0.9, 0.9));
        assert!(
            Rates::paired(
                &samples,
                Config::Enforce,
                Config::Absent,
                Workload::Protected
            )
            .is_none()
        );
    }

    #[test]
    fn only_a_phase_slower_in_every_round_of_enough_is_worse_than_noise() {
        let ratios = |min: f64, max: f64, n: usize| Rates {
            median: (min + max) / 2.0,
            min,
            max,
            n,
        };
        assert_eq!(verdict(&ratios(0.85, 0.95, 5)), Err("WORSE than noise"));
        // One round as fast as the reference: not shown to cost.
        assert_eq!(verdict(&ratios(0.80, 1.0, 5)), Ok("within noise"));
        assert_eq!(
            verdict(&ratios(0.85, 0.95, 4)),
            Ok("slower, too few rounds to judge")
        );
    }
}
