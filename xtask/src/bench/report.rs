//! Turns the bench samples into two tables: connect rates as ratios against
//! the daemon-absent runs (whose spread is the noise estimate), and each BPF
//! program's cost per run, per connect and as a share of the connect cycle,
//! checked against the targets. Costs are reported raw and net of the
//! measurement floor: what the no-op `lw_baseline4` costs when measured the
//! same way (the BPF statistics' own clock reads and counter updates).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;

use super::{BenchArgs, Config, Sample, Target, stats::Counters};
use crate::proc::say;

/// ns per run of a connect hook on the protected path, with full identity.
const PROTECTED_TARGET_NS: f64 = 250.0;
/// ns per run of a connect hook on the unprotected path.
const UNPROTECTED_TARGET_NS: f64 = 50.0;
const TARGETS: [Target; 2] = [Target::Protected, Target::Unprotected];
/// The no-op program `loopwarden baseline` attaches.
const BASELINE_PROG: &str = "lw_baseline4";

struct Rates {
    median: f64,
    min: f64,
    max: f64,
}

impl Rates {
    fn of(samples: &[Sample], config: Config, target: Target) -> Option<Self> {
        Self::from_values(
            samples
                .iter()
                .filter(|sample| sample.config == config && sample.target == target)
                .map(|sample| sample.run.rate())
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
        })
    }

    /// Relative spread (max − min) / median: the noise estimate.
    fn spread(&self) -> f64 {
        (self.max - self.min) / self.median
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
        "loopwarden bench on {}: {} rounds × {} s per measurement, IPv4 loopback in a private netns",
        host_description(),
        args.rounds,
        args.seconds
    );
    if !samples.is_empty() {
        print_rates(samples, &mut misses);
        print_costs(samples, &mut misses);
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
    println!("connect rate (connect+close per second; median, min..max over rounds)");
    println!(
        "  {:<10} {:<12} {:>10} {:>21} {:>9} {:>9}  verdict",
        "daemon", "port", "median/s", "min..max", "vs absent", "vs hook"
    );
    for target in TARGETS {
        let Some(absent) = Rates::of(samples, Config::Absent, target) else {
            continue;
        };
        // Any cgroup connect program, even one that does nothing, makes the
        // kernel lock the socket and copy the address around it: the no-op
        // program's rate is the floor loopwarden is judged against.
        let hook = Rates::of(samples, Config::Baseline, target);
        let noise = absent.spread();
        for config in [Config::Absent, Config::Baseline]
            .into_iter()
            .chain(Config::ALL.into_iter().filter(|c| *c != Config::Absent))
        {
            let Some(rates) = Rates::of(samples, config, target) else {
                continue;
            };
            let ratio = rates.median / absent.median;
            let vs_hook = hook.as_ref().map(|hook| rates.median / hook.median);
            let verdict = match (config, vs_hook) {
                (Config::Absent, _) => format!("noise ±{:.1}%", noise * 100.0),
                (Config::Baseline, _) => "no-op program (the hook's own cost)".to_owned(),
                (_, Some(vs_hook)) if 1.0 - vs_hook > noise => {
                    misses.push(format!(
                        "{config} on the {target} port: rate {vs_hook:.3}× the no-op hook's, \
                         worse than noise (±{:.1}%)",
                        noise * 100.0
                    ));
                    "WORSE than noise".to_owned()
                }
                (_, None) if 1.0 - ratio > noise => {
                    misses.push(format!(
                        "{config} on the {target} port: rate ratio {ratio:.3} is worse than noise (±{:.1}%)",
                        noise * 100.0
                    ));
                    "WORSE than noise".to_owned()
                }
                _ => "within noise".to_owned(),
            };
            println!(
                "  {:<10} {:<12} {:>10.0} {:>21} {:>9.3} {:>9}  {verdict}",
                config,
                target,
                rates.median,
                format!("{:.0}..{:.0}", rates.min, rates.max),
                ratio,
                vs_hook.map_or("-".to_owned(), |r| format!("{r:.3}")),
            );
        }
    }
}

/// The measurement floor: `lw_baseline4`'s ns/run in each round of the
/// baseline phase (both ports pooled); median, min and max over rounds.
fn measurement_floor(samples: &[Sample]) -> Option<(Rates, usize)> {
    let mut rounds: BTreeMap<u32, Counters> = BTreeMap::new();
    for sample in samples
        .iter()
        .filter(|sample| sample.config == Config::Baseline)
    {
        if let Some(counters) = sample.progs.get(BASELINE_PROG) {
            rounds.entry(sample.round).or_default().add(*counters);
        }
    }
    let per_round: Vec<f64> = rounds
        .values()
        .filter(|counters| counters.run_cnt > 0)
        .map(|counters| counters.run_time_ns as f64 / counters.run_cnt as f64)
        .collect();
    let n = per_round.len();
    Rates::from_values(per_round).map(|floor| (floor, n))
}

fn print_costs(samples: &[Sample], misses: &mut Vec<String>) {
    println!();
    println!(
        "BPF program cost (kernel.bpf_stats_enabled: run_time_ns / run_cnt, summed over rounds; \
         targets apply to net ns/run)"
    );
    let floor = measurement_floor(samples);
    let floor_ns = floor.as_ref().map_or(0.0, |(floor, _)| floor.median);
    println!(
        "  {:<10} {:<12} {:<16} {:>10} {:>10} {:>12} {:>11} {:>8}  target (net)",
        "daemon",
        "port",
        "program",
        "raw ns/run",
        "net ns/run",
        "runs/connect",
        "net ns/conn",
        "of cycle"
    );
    let mut seen_any = false;
    let mut idle = BTreeSet::new();
    for config in [Config::Audit, Config::Enforce, Config::ReportAll] {
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
                let raw = counters.run_time_ns as f64 / counters.run_cnt as f64;
                let net = raw - floor_ns;
                let runs_per_connect = counters.run_cnt as f64 / connects as f64;
                let per_connect = net * runs_per_connect;
                // Report-all shows what reporting every connect costs: no target.
                let judged = name.starts_with("lw_connect") && config != Config::ReportAll;
                let limit = judged.then_some(match target {
                    Target::Protected => PROTECTED_TARGET_NS,
                    Target::Unprotected => UNPROTECTED_TARGET_NS,
                });
                let verdict = match limit {
                    None => "-".to_owned(),
                    Some(limit) if net <= limit => format!("≤ {limit:.0} ns PASS"),
                    Some(limit) => {
                        misses.push(format!(
                            "{name} ({config}, {target} port): {net:.0} ns net per run \
                             ({raw:.0} raw − {floor_ns:.0} floor), target {limit:.0} ns"
                        ));
                        format!("≤ {limit:.0} ns OVER TARGET")
                    }
                };
                println!(
                    "  {:<10} {:<12} {:<16} {:>10.0} {:>10.0} {:>12.2} {:>11.0} {:>7.2}%  {verdict}",
                    config,
                    target,
                    name,
                    raw,
                    net,
                    runs_per_connect,
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
    match floor {
        Some((floor, rounds)) => println!(
            "  floor: a no-op program measured the same way costs {:.0} ns/run; net = raw − floor \
             (median of {rounds} round(s), {:.0}..{:.0})",
            floor.median, floor.min, floor.max
        ),
        None => {
            println!(
                "  floor: {BASELINE_PROG} never ran in the baseline phase; net = raw (floor 0)"
            );
            misses.push(format!(
                "no measurement floor: {BASELINE_PROG} did not run, net figures are raw"
            ));
        }
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
