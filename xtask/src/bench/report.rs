//! Turns the bench samples into two tables: connect rates as ratios against
//! the daemon-absent runs (whose spread is the noise estimate), and each BPF
//! program's cost per run, per connect and as a share of the connect cycle,
//! checked against the targets.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;

use super::{BenchArgs, Config, Sample, Target, stats::Counters};
use crate::proc::say;

/// ns per run of a connect hook on the protected path, with full identity.
const PROTECTED_TARGET_NS: f64 = 300.0;
/// ns per run of a connect hook on the unprotected path.
const UNPROTECTED_TARGET_NS: f64 = 50.0;
const TARGETS: [Target; 2] = [Target::Protected, Target::Unprotected];

struct Rates {
    median: f64,
    min: f64,
    max: f64,
}

impl Rates {
    fn of(samples: &[Sample], config: Config, target: Target) -> Option<Self> {
        let mut rates: Vec<f64> = samples
            .iter()
            .filter(|sample| sample.config == config && sample.target == target)
            .map(|sample| sample.run.rate())
            .collect();
        if rates.is_empty() {
            return None;
        }
        rates.sort_by(f64::total_cmp);
        let mid = rates.len() / 2;
        let median = if rates.len() % 2 == 1 {
            rates[mid]
        } else {
            (rates[mid - 1] + rates[mid]) / 2.0
        };
        Some(Self {
            median,
            min: rates[0],
            max: rates[rates.len() - 1],
        })
    }

    /// Relative spread (max − min) / median: the noise estimate.
    fn spread(&self) -> f64 {
        (self.max - self.min) / self.median
    }
}

pub fn print(args: &BenchArgs, samples: &[Sample]) -> anyhow::Result<()> {
    let mut misses = Vec::new();
    println!();
    println!(
        "loopwarden bench: {} rounds × {} s per measurement, IPv4 loopback in a private netns",
        args.rounds, args.seconds
    );
    print_rates(samples, &mut misses);
    print_costs(samples, &mut misses);

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
    println!("connect rate (connect+close per second; median, min..max over rounds)");
    println!(
        "  {:<8} {:<12} {:>10} {:>21} {:>9}  verdict",
        "daemon", "port", "median/s", "min..max", "vs absent"
    );
    for target in TARGETS {
        let Some(absent) = Rates::of(samples, Config::Absent, target) else {
            continue;
        };
        let noise = absent.spread();
        for config in Config::ALL {
            let Some(rates) = Rates::of(samples, config, target) else {
                continue;
            };
            let ratio = rates.median / absent.median;
            let verdict = if config == Config::Absent {
                format!("noise ±{:.1}%", noise * 100.0)
            } else if 1.0 - ratio > noise {
                misses.push(format!(
                    "{config} on the {target} port: rate ratio {ratio:.3} is worse than noise (±{:.1}%)",
                    noise * 100.0
                ));
                "WORSE than noise".to_owned()
            } else {
                "within noise".to_owned()
            };
            println!(
                "  {:<8} {:<12} {:>10.0} {:>21} {:>9.3}  {verdict}",
                config,
                target,
                rates.median,
                format!("{:.0}..{:.0}", rates.min, rates.max),
                ratio,
            );
        }
    }
}

fn print_costs(samples: &[Sample], misses: &mut Vec<String>) {
    println!();
    println!(
        "BPF program cost (kernel.bpf_stats_enabled: run_time_ns / run_cnt, summed over rounds)"
    );
    println!(
        "  {:<8} {:<12} {:<16} {:>8} {:>12} {:>10} {:>8}  target",
        "daemon", "port", "program", "ns/run", "runs/connect", "ns/connect", "of cycle"
    );
    let mut seen_any = false;
    let mut idle = BTreeSet::new();
    for config in [Config::Audit, Config::Enforce] {
        for target in TARGETS {
            let Some(rates) = Rates::of(samples, config, target) else {
                continue;
            };
            let cycle_ns = 1e9 / rates.median;
            let mut connects = 0;
            let mut progs: BTreeMap<&str, Counters> = BTreeMap::new();
            for sample in samples
                .iter()
                .filter(|sample| sample.config == config && sample.target == target)
            {
                connects += sample.run.connects;
                for (name, counters) in &sample.progs {
                    progs.entry(name).or_default().add(*counters);
                }
            }
            for (name, counters) in progs {
                seen_any = true;
                if counters.run_cnt == 0 {
                    idle.insert(name);
                    continue;
                }
                let per_run = counters.run_time_ns as f64 / counters.run_cnt as f64;
                let per_connect = counters.run_time_ns as f64 / connects as f64;
                let limit = name.starts_with("lw_connect").then_some(match target {
                    Target::Protected => PROTECTED_TARGET_NS,
                    Target::Unprotected => UNPROTECTED_TARGET_NS,
                });
                let verdict = match limit {
                    None => "-".to_owned(),
                    Some(limit) if per_run <= limit => format!("≤ {limit:.0} ns PASS"),
                    Some(limit) => {
                        misses.push(format!(
                            "{name} ({config}, {target} port): {per_run:.0} ns per run, target {limit:.0} ns"
                        ));
                        format!("≤ {limit:.0} ns OVER TARGET")
                    }
                };
                println!(
                    "  {:<8} {:<12} {:<16} {:>8.0} {:>12.2} {:>10.0} {:>7.2}%  {verdict}",
                    config,
                    target,
                    name,
                    per_run,
                    counters.run_cnt as f64 / connects as f64,
                    per_connect,
                    per_connect / cycle_ns * 100.0,
                );
            }
        }
    }
    if !seen_any {
        println!("  (no loopwarden programs found: are they loaded under lw_* names?)");
        return;
    }
    // Programs that never ran during any measurement (e.g. lw_connect6: the
    // bench client connects over IPv4 only).
    let idle: Vec<&str> = idle
        .into_iter()
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
