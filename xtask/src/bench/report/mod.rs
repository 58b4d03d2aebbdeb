//! Turns the bench samples into two tables: rates (connects, receive
//! throughput, spawns) as ratios against the daemon-absent runs, paired by
//! round (a phase is worse than noise when it was slower than its reference
//! in every round), and each BPF program's cost per run, per operation of
//! the load and as a share of its cycle, checked against the targets.
//! Costs ([`costs`]) are reported raw and net of the measurement floor:
//! what a no-op program costs when measured the same way (the BPF
//! statistics' own clock reads and counter updates) — `lw_baseline4` for
//! the connect programs, `lw_baseline_receive` for the tracing ones.

use std::collections::BTreeMap;

use anyhow::bail;

use super::{BenchArgs, Config, Sample, Workload};
use crate::proc::say;

mod costs;

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
                .filter_map(|sample| sample.progs.get(prog)?.ns_per_run())
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
        Some(Self {
            median: median_of_sorted(&values),
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

/// The median of `sorted` (ascending, not empty): the middle value, or
/// the mean of the middle two.
pub(super) fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
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
    paired: &[super::paired::Paired],
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
        costs::print(samples, &mut misses);
        super::egress::print(samples, &mut misses);
    }
    super::paired::print(paired, args.window, &mut misses);
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

/// The host, as docs/performance.md names it: CPU model, CPUs, kernel.
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
