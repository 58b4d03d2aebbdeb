//! `cargo xtask bench --versus OTHER`: two daemon builds compared on the
//! protected connect loads, in rounds that run each build in turn (the
//! order swapped every round) under the tagged and the untagged policy.
//! Each round pairs the two builds' measurements taken moments apart, so
//! drift that moves a whole round cancels out of the per-round ratio of
//! their rates and difference of their programs' ns per run; the medians
//! of those come with the order-statistic 90% interval. This is how a
//! change to the kernel side is judged: on this shared VM one run of each
//! build, minutes apart, differs by more than most changes do.

use std::{collections::BTreeSet, path::Path};

use super::{Bench, Config, Sample, Workload, check_interrupted, paired::Interval};
use crate::proc::say;

/// The policies compared under: the default (tagged) and the judgement
/// alone.
const CONFIGS: [Config; 2] = [Config::Audit, Config::Untagged];
/// The loads: bare connects and connections that carry a request.
const LOADS: [Workload; 2] = [Workload::Protected, Workload::Request];

/// Which build a measurement is of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The bench's daemon (built, or `--daemon`).
    A,
    /// `--versus`.
    B,
}

/// One measurement of one build.
pub struct Measured {
    pub side: Side,
    pub sample: Sample,
}

impl Bench<'_> {
    /// Runs `--rounds` rounds of both builds under each of [`CONFIGS`],
    /// each of [`LOADS`] per daemon start.
    pub(super) fn measure_versus(&self, other: &Path) -> anyhow::Result<Vec<Measured>> {
        let args = self.args;
        self.warm_up(&LOADS)?;
        let mut measured = Vec::new();
        for round in 0..args.rounds {
            let sides = if round % 2 == 0 {
                [Side::A, Side::B]
            } else {
                [Side::B, Side::A]
            };
            for config in CONFIGS {
                for side in sides {
                    check_interrupted()?;
                    let bin = match side {
                        Side::A => self.bin.as_path(),
                        Side::B => other,
                    };
                    let label = format!("-{side:?}").to_lowercase();
                    let warden = self.start_build(bin, &label, config, round)?;
                    let pid = warden.as_ref().and_then(|w| w.pid());
                    for load in LOADS {
                        check_interrupted()?;
                        let sample = self.measure_one(round, config, load, pid)?;
                        say!(
                            "round {}/{} {side:?} {config:<10} {load:<10} {:>10.0} {}",
                            round + 1,
                            args.rounds,
                            load.rate(&sample.run),
                            load.unit()
                        );
                        measured.push(Measured { side, sample });
                    }
                    if let Some(warden) = warden {
                        warden.stop()?;
                    }
                }
            }
        }
        Ok(measured)
    }
}

/// B against A under one policy and load.
#[derive(Debug, PartialEq)]
pub struct Compared {
    pub config: Config,
    pub load: Workload,
    /// B's rate over A's, per round.
    pub rate: Interval,
    /// Per program with runs in both: A's and B's median ns per run, and
    /// B's minus A's per round.
    pub progs: Vec<(String, f64, f64, Interval)>,
}

/// What the measurements say, per policy and load: rounds where either
/// build has no measurement are left out.
pub fn compare(measured: &[Measured]) -> Vec<Compared> {
    let mut out = Vec::new();
    let rounds: BTreeSet<u32> = measured.iter().map(|m| m.sample.round).collect();
    for config in CONFIGS {
        for load in LOADS {
            let of = |side: Side, round: u32| {
                measured
                    .iter()
                    .find(|m| {
                        m.side == side
                            && m.sample.round == round
                            && m.sample.config == config
                            && m.sample.workload == load
                    })
                    .map(|m| &m.sample)
            };
            let pairs: Vec<(&Sample, &Sample)> = rounds
                .iter()
                .filter_map(|&round| Some((of(Side::A, round)?, of(Side::B, round)?)))
                .filter(|(a, b)| a.run.ops > 0 && b.run.ops > 0)
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let ratios: Vec<f64> = pairs
                .iter()
                .map(|(a, b)| load.rate(&b.run) / load.rate(&a.run))
                .collect();
            let names: BTreeSet<&String> = pairs
                .iter()
                .flat_map(|(a, b)| a.progs.keys().chain(b.progs.keys()))
                .collect();
            let mut progs = Vec::new();
            for name in names {
                let per_run = |s: &Sample| {
                    let c = s.progs.get(name).copied()?;
                    // A program the load runs (not one the bench's own
                    // processes happened to run a few times).
                    (c.run_cnt * 10 >= s.counted.ops).then_some(c)?.ns_per_run()
                };
                let both: Vec<(f64, f64)> = pairs
                    .iter()
                    .filter_map(|(a, b)| Some((per_run(a)?, per_run(b)?)))
                    .collect();
                if both.is_empty() {
                    continue;
                }
                let (a, b): (Vec<f64>, Vec<f64>) = both.iter().copied().unzip();
                let diffs: Vec<f64> = both.iter().map(|(a, b)| b - a).collect();
                progs.push((
                    name.clone(),
                    Interval::of(&a).median,
                    Interval::of(&b).median,
                    Interval::of(&diffs),
                ));
            }
            out.push(Compared {
                config,
                load,
                rate: Interval::of(&ratios),
                progs,
            });
        }
    }
    out
}

/// Prints the comparison of `a` (the bench's daemon) and `b`.
pub fn print(compared: &[Compared], a: &Path, b: &Path, rounds: u32) {
    println!();
    println!("A: {}", a.display());
    println!("B: {}", b.display());
    println!(
        "{rounds} rounds, each build in turn (order swapped every round): B's rate over A's \
         and each program's ns per run (statistics on), B minus A, per round: median and 90% \
         interval of the median (an interval that holds 1 or 0 cannot tell the builds apart)"
    );
    for c in compared {
        println!();
        println!(
            "  {:<10} {:<10} rate B/A {:.3} ({:.3}..{:.3})",
            c.config.to_string(),
            c.load.to_string(),
            c.rate.median,
            c.rate.low,
            c.rate.high
        );
        for (name, a, b, diff) in &c.progs {
            println!(
                "    {name:<22} A {a:>7.1} ns  B {b:>7.1} ns  B-A {:>+7.1} ({:+.1}..{:+.1})",
                diff.median, diff.low, diff.high
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        load::Run,
        stats::{Counters, Snapshot},
    };

    fn measured(side: Side, round: u32, config: Config, ops: u64, sock_ns: u64) -> Measured {
        let mut progs = Snapshot::new();
        progs.insert(
            "lw_sock_state".into(),
            Counters {
                run_time_ns: sock_ns * 6000,
                run_cnt: 6000,
            },
        );
        // A program only A runs (an ablated one), and one that ran only
        // a few times in the window (a process of the bench's own): left out.
        if side == Side::A {
            progs.insert(
                "lw_only_a".into(),
                Counters {
                    run_time_ns: 50 * 6000,
                    run_cnt: 6000,
                },
            );
        }
        progs.insert(
            "lw_exec".into(),
            Counters {
                run_time_ns: 3000,
                run_cnt: 2,
            },
        );
        let run = |ops| Run {
            ops,
            bytes: 0,
            errors: 0,
            elapsed: std::time::Duration::from_secs(1),
        };
        Measured {
            side,
            sample: Sample {
                round,
                config,
                workload: Workload::Protected,
                run: run(ops),
                // The counted window: 1,000 connects.
                counted: run(1000),
                progs,
            },
        }
    }

    #[test]
    fn each_round_pairs_the_builds_and_only_programs_the_load_runs_under_both_count() {
        let mut m = Vec::new();
        for round in 0..10 {
            // B 2% faster and 3 ns cheaper in every round, whatever the
            // round's own level.
            let level = 1000 + 50 * u64::from(round % 3);
            m.push(measured(
                Side::A,
                round,
                Config::Audit,
                level * 100,
                100 + u64::from(round),
            ));
            m.push(measured(
                Side::B,
                round,
                Config::Audit,
                level * 102,
                97 + u64::from(round),
            ));
        }
        // Round 10 has A only: no pair.
        m.push(measured(Side::A, 10, Config::Audit, 1, 1000));
        let compared = compare(&m);
        assert_eq!(compared.len(), 1, "only audit × protected was measured");
        let c = &compared[0];
        assert!((c.rate.median - 1.02).abs() < 1e-9, "{c:?}");
        assert!((c.rate.low - 1.02).abs() < 1e-9 && (c.rate.high - 1.02).abs() < 1e-9);
        assert_eq!(c.progs.len(), 1, "{c:?}");
        let (name, a, b, diff) = &c.progs[0];
        assert_eq!(name, "lw_sock_state");
        assert!(
            (a - 104.5).abs() < 1e-9 && (b - 101.5).abs() < 1e-9,
            "{c:?}"
        );
        assert!((diff.median + 3.0).abs() < 1e-9, "{c:?}");
    }
}
