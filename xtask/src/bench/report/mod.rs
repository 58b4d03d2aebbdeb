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
        Self::from_values(paired_ratios(samples, config, reference, workload))
    }
}

/// `config`'s rate over `reference`'s under `workload`, one per round both
/// measured.
fn paired_ratios(
    samples: &[Sample],
    config: Config,
    reference: Config,
    workload: Workload,
) -> Vec<f64> {
    let per_round = |config: Config| -> BTreeMap<u32, f64> {
        samples
            .iter()
            .filter(|sample| sample.config == config && sample.workload == workload)
            .map(|sample| (sample.round, workload.rate(&sample.run)))
            .collect()
    };
    let reference = per_round(reference);
    per_round(config)
        .into_iter()
        .filter_map(|(round, rate)| Some(rate / reference.get(&round)?))
        .collect()
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

/// The false-finding rate the rate table allows over all its judged rows
/// together (Bonferroni: each row's test runs at this over their number).
const FAMILY_ALPHA: f64 = 0.05;

/// One-sided sign test of `slower` rounds out of `n` in which a phase was
/// slower than its reference: with no real difference each round is as
/// likely to come out slower as faster, so this is P(X >= slower) for X
/// binomial(n, 1/2).
fn sign_test_p(slower: usize, n: usize) -> f64 {
    // Exact: sum of C(n, k) / 2^n for k >= slower (n is a few dozen at most).
    let mut total = 0.0;
    let mut c = 1.0_f64; // C(n, 0)
    for k in 0..=n {
        if k >= slower {
            total += c;
        }
        c = c * (n - k) as f64 / (k + 1) as f64;
    }
    total / 2f64.powi(i32::try_from(n).unwrap_or(i32::MAX))
}

/// The verdict of a row slower than its reference in more rounds than
/// not, but in too few rounds in all to tell that from chance.
const TOO_FEW_ROUNDS: &str = "slower, too few rounds to judge";

/// How `ratios` (a phase's rate over its reference's, one per paired
/// round) compares with noise, when the table judges `rows` of them: `Err`
/// when the rounds in which the phase was slower are too many for chance
/// at [`FAMILY_ALPHA`] over all the rows (a phase slower in every one of 5
/// rounds is once in 32 by chance, too often among 30 rows: it takes 10
/// rounds all slower, or 20 with 17 slower, for a table of that size).
fn verdict(ratios: &[f64], rows: usize) -> Result<&'static str, &'static str> {
    let slower = ratios.iter().filter(|r| **r < 1.0).count();
    if slower * 2 <= ratios.len() {
        return Ok("within noise");
    }
    let alpha = FAMILY_ALPHA / rows.max(1) as f64;
    if sign_test_p(ratios.len(), ratios.len()) > alpha {
        Ok(TOO_FEW_ROUNDS)
    } else if sign_test_p(slower, ratios.len()) <= alpha {
        Err("WORSE than noise")
    } else {
        Ok("within noise")
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
    let mut unjudged = 0;
    if !samples.is_empty() {
        unjudged = print_rates(samples, &mut misses);
        costs::print(samples, &mut misses);
        super::egress::print(samples, &mut misses);
    }
    super::paired::print(paired, args.window, &mut misses);
    if let Some(reporting) = reporting {
        super::reporting::print(reporting, args.report_seconds, &mut misses);
    }

    println!();
    if misses.is_empty() {
        let caveat = if unjudged > 0 {
            format!("; {unjudged} slower row(s) had too few rounds to judge (more --rounds tell)")
        } else {
            String::new()
        };
        println!("verdict: all targets met, no rate ratio worse than noise{caveat}");
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

/// Prints the rate table, adding to `misses` the rows worse than noise;
/// how many rows were slower than their reference in too few rounds to
/// judge.
fn print_rates(samples: &[Sample], misses: &mut Vec<String>) -> usize {
    let mut unjudged = 0;
    println!();
    println!(
        "rates (per second; median, min..max over rounds; ratios paired by round: median, and \
         min..max against the reference)"
    );
    println!(
        "  {:<10} {:<15} {:>10} {:<12} {:>21} {:>9} {:>9} {:>13}  verdict",
        "daemon", "load", "median", "unit", "min..max", "vs absent", "vs no-op", "per round"
    );
    // Any cgroup connect program, even one that does nothing, makes the
    // kernel lock the socket and copy the address around it; any program
    // on a tracepoint enables it: the no-op program's rate is the floor
    // loopwarden is judged against, where the baseline has one.
    let reference_of = |workload: Workload| {
        if workload.has_noop_hook() && Rates::of(samples, Config::Baseline, workload).is_some() {
            Config::Baseline
        } else {
            Config::Absent
        }
    };
    // The rows judged, for the correction over all of them.
    let rows = Workload::ALL
        .into_iter()
        .filter(|w| Rates::of(samples, Config::Absent, *w).is_some())
        .flat_map(|w| Config::PHASES.into_iter().map(move |c| (c, w)))
        .filter(|(c, w)| {
            !matches!(c, Config::Absent | Config::Baseline)
                && Rates::paired(samples, *c, reference_of(*w), *w).is_some()
        })
        .count();
    for workload in Workload::ALL {
        let Some(absent) = Rates::of(samples, Config::Absent, workload) else {
            continue;
        };
        let reference = reference_of(workload);
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
            let each = paired_ratios(samples, config, reference, workload);
            let judged = Rates::from_values(each.clone());
            let verdict = match (config, &judged) {
                (Config::Absent, _) => format!("spread ±{:.1}%", absent.spread() * 100.0),
                (Config::Baseline, _) => "no-op program (the hook's own cost)".to_owned(),
                (_, None) => "-".to_owned(),
                (_, Some(ratios)) => match verdict(&each, rows) {
                    Ok(verdict) => {
                        unjudged += usize::from(verdict == TOO_FEW_ROUNDS);
                        verdict.to_owned()
                    }
                    Err(verdict) => {
                        misses.push(format!(
                            "{config}, {workload}: rate {:.3}× {}'s, slower in {} of {} rounds \
                             ({:.3}..{:.3}; sign test over {rows} rows)",
                            ratios.median,
                            if reference == Config::Baseline {
                                "the no-op program"
                            } else {
                                "no daemon"
                            },
                            each.iter().filter(|r| **r < 1.0).count(),
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
                "  {:<10} {:<15} {:>10.0} {:<12} {:>21} {:>9} {:>9} {:>13}  {verdict}",
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
    unjudged
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
    fn the_sign_test_is_exact_and_corrected_for_the_rows() {
        assert!((sign_test_p(5, 5) - 1.0 / 32.0).abs() < 1e-12);
        assert!((sign_test_p(0, 7) - 1.0).abs() < 1e-12);
        // P(X >= 9) for n = 10: (10 + 1) / 1024.
        assert!((sign_test_p(9, 10) - 11.0 / 1024.0).abs() < 1e-12);
        let slower = |n: usize, faster: usize| {
            let mut v = vec![0.9; n - faster];
            v.extend(std::iter::repeat_n(1.1, faster));
            v
        };
        // Alone, every one of 5 rounds slower is a finding.
        assert_eq!(verdict(&slower(5, 0), 1), Err("WORSE than noise"));
        // Among 30 rows, 5 rounds cannot show one; 10 all slower can.
        assert_eq!(verdict(&slower(5, 0), 30), Ok(TOO_FEW_ROUNDS));
        assert_eq!(verdict(&slower(10, 0), 30), Err("WORSE than noise"));
        // Enough rounds tolerate some faster ones, not many.
        assert_eq!(verdict(&slower(20, 3), 30), Err("WORSE than noise"));
        assert_eq!(verdict(&slower(20, 6), 30), Ok("within noise"));
        // Mostly faster: within noise however many rounds.
        assert_eq!(verdict(&slower(20, 15), 30), Ok("within noise"));
    }
}
