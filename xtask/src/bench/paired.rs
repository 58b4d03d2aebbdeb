//! Protected against unprotected connections, in one client that
//! alternates between the two ports in short windows while one daemon runs
//! throughout: each pair of windows sees the same moment of the host, so
//! the protected path's cost shows through drift that moves whole rounds
//! (the rate table's rounds run tens of seconds apart). Two loads: bare
//! connects, and connections that each carry a request and its response
//! (what a protected service sees). With no daemon the two ports' ratio
//! shows the method's own noise; a configuration is worse than noise when
//! its ratios are lower than those with no daemon by a one-sided rank-sum
//! (Mann-Whitney) test at 5%.

use super::{Bench, Config, Workload, check_interrupted, load, report::median_of_sorted};
use crate::proc::say;

/// The configurations compared: no daemon (the method's noise), the
/// judgement alone, and the judgement with the tag (the default).
const CONFIGS: [Config; 3] = [Config::Absent, Config::Untagged, Config::Audit];
/// The loads, by the rate table's names for their protected side.
const LOADS: [Workload; 2] = [Workload::Protected, Workload::Request];

/// One configuration's pairs under one load: protected rate over
/// unprotected rate, per pair of windows.
pub struct Paired {
    pub config: Config,
    pub load: Workload,
    pub ratios: Vec<f64>,
}

/// How many blocks the paired time is split into: the configurations run
/// in turn within each block, in reverse order every other block (ABC CBA
/// ABC CBA), so none of them always runs first and a host whose noise
/// changes over the minutes of a run moves all three alike.
const BLOCKS: usize = 4;

impl Bench<'_> {
    /// Runs the alternating client under each of [`CONFIGS`], each of
    /// [`LOADS`] for `--paired-seconds` in all, in [`BLOCKS`] blocks, BPF
    /// statistics off. The first pair after each daemon start is left out
    /// (the daemon's own work right after ready: the sweep's request, its
    /// watchers, the status file), and so for every configuration alike.
    pub(super) fn measure_paired(&self) -> anyhow::Result<Vec<Paired>> {
        let args = self.args;
        self.stats.set(false)?;
        let mut results: Vec<Paired> = CONFIGS
            .iter()
            .flat_map(|config| {
                LOADS.iter().map(|load| Paired {
                    config: *config,
                    load: *load,
                    ratios: Vec::new(),
                })
            })
            .collect();
        let seconds = args.paired_seconds / BLOCKS as f64;
        for block in 0..BLOCKS {
            let mut order = CONFIGS.to_vec();
            if block % 2 == 1 {
                order.reverse();
            }
            for config in order {
                check_interrupted()?;
                let warden = self.start_daemon(config, args.rounds)?;
                for load in LOADS {
                    let (ports, request) = match load {
                        Workload::Request => {
                            ([args.request_port, args.request_unprotected_port], true)
                        }
                        _ => ([args.protected_port, args.unprotected_port], false),
                    };
                    let pairs = load::run_alternating(
                        &self.netns,
                        &self.xtask,
                        ports,
                        request,
                        seconds,
                        args.window,
                    )?;
                    // A protected window that made no connection is a
                    // ratio of 0, the worst there is, not a pair to drop.
                    let ratios = pairs
                        .iter()
                        .skip(1)
                        .filter(|[_, u]| u.ops > 0)
                        .map(|[p, u]| p.rate() / u.rate());
                    if let Some(entry) = results
                        .iter_mut()
                        .find(|r| r.config == config && r.load == load)
                    {
                        entry.ratios.extend(ratios);
                    }
                }
                if let Some(warden) = warden {
                    warden.stop()?;
                }
            }
        }
        for r in &results {
            if r.ratios.is_empty() {
                anyhow::bail!(
                    "paired windows: no {} succeeded ({})",
                    r.load.op(),
                    r.config
                );
            }
            say!(
                "paired {:<10} {:<10} {} pairs, protected / unprotected {:.3}",
                r.config,
                r.load,
                r.ratios.len(),
                Interval::of(&r.ratios).median
            );
        }
        Ok(results)
    }
}

/// The median of some values and a distribution-free interval for it
/// (order statistics: the true median lies below `low` or above `high`
/// each with probability at most [`TAIL`]; with fewer than 5 values no
/// order statistic is that sure, and the interval is the whole range).
#[derive(Debug, PartialEq)]
pub struct Interval {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

/// Each tail of [`Interval`]: 5%, a 90% interval.
const TAIL: f64 = 0.05;

impl Interval {
    /// `values` must not be empty.
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = median_of_sorted(&v);
        // The largest k with P(Binomial(n, 1/2) < k) ≤ TAIL: the median is
        // below the k-th smallest value with at most that probability.
        // Summed exactly while 2^-n is a normal f64; past that, the normal
        // approximation (exact enough at such n): TAIL's point is Z_5.
        let mut k = 0;
        if n > 1000 {
            k = ((n as f64 + Z_5 * (n as f64).sqrt()) / 2.0).floor() as usize;
        } else {
            let mut below = 0.0;
            let mut term = 0.5f64.powi(n as i32); // P(X = 0)
            for i in 0..n {
                if below + term > TAIL {
                    break;
                }
                below += term;
                k = i + 1;
                term *= (n - i) as f64 / (i + 1) as f64;
            }
        }
        let (low, high) = if k == 0 {
            (v[0], v[n - 1])
        } else {
            (v[k - 1], v[n - k])
        };
        Self { median, low, high }
    }
}

/// z of the rank-sum (Mann-Whitney U) statistic of `a` against `b`, in
/// the normal approximation (fine from about 8 values each): below −1.645,
/// `a` is lower than `b` at 5% one-sided. Ties take their mean rank.
fn rank_sum_z(a: &[f64], b: &[f64]) -> f64 {
    let mut all: Vec<(f64, bool)> = a.iter().map(|&v| (v, true)).collect();
    all.extend(b.iter().map(|&v| (v, false)));
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut rank_sum_a = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1..=j+1 share their mean.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_a += rank * all[i..=j].iter().filter(|(_, in_a)| *in_a).count() as f64;
        i = j + 1;
    }
    let (n, m) = (a.len() as f64, b.len() as f64);
    let u = rank_sum_a - n * (n + 1.0) / 2.0;
    (u - n * m / 2.0) / u_sd(n, m)
}

/// The standard deviation of the rank-sum statistic U of `n` values
/// against `m` when neither side lies above the other (ties aside).
fn u_sd(n: f64, m: f64) -> f64 {
    (n * m * (n + m + 1.0) / 12.0).sqrt()
}

/// The Hodges-Lehmann estimate of how far `a` lies from `b` (the median
/// of every difference `a_i - b_j`) and its distribution-free interval
/// (the rank-sum test's: the differences the test at [`TAIL`] each side
/// cannot tell from the shift, in the normal approximation), as an
/// [`Interval`] whose `median` is the estimate. Both must not be empty.
fn shift(a: &[f64], b: &[f64]) -> Interval {
    let mut d: Vec<f64> = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| x - y))
        .collect();
    d.sort_by(f64::total_cmp);
    let nm = d.len();
    // The k-th smallest and largest differences bound it; `Z_5` is negative.
    let k = (nm as f64 / 2.0 + Z_5 * u_sd(a.len() as f64, b.len() as f64)).floor();
    let k = (k.max(1.0) as usize).min(nm.div_ceil(2));
    Interval {
        median: median_of_sorted(&d),
        low: d[k - 1],
        high: d[nm - k],
    }
}

/// The one-sided 5% point of the normal distribution.
const Z_5: f64 = -1.645;
/// Values per side before the rank-sum test's normal approximation is used.
const MIN_PAIRS: usize = 8;

/// Prints the comparison; a configuration worse than the no-daemon noise
/// is a finding.
pub fn print(results: &[Paired], window: f64, misses: &mut Vec<String>) {
    if results.is_empty() {
        return;
    }
    println!();
    println!(
        "protected / unprotected, one client alternating {window} s windows while one daemon \
         runs (statistics off): median ratio over pairs, 90% interval of the median, pairs \
         slower, rank-sum z against no daemon (below {Z_5}: worse at 5%)"
    );
    println!(
        "  {:<10} {:<10} {:>6} {:>8} {:>16} {:>7} {:>7} {:>26}  verdict",
        "daemon", "load", "pairs", "median", "interval", "slower", "z", "shift from no daemon"
    );
    for load in LOADS {
        let Some(noise) = results
            .iter()
            .find(|r| r.config == Config::Absent && r.load == load)
        else {
            continue;
        };
        let at_noise = Interval::of(&noise.ratios);
        for result in results.iter().filter(|r| r.load == load) {
            let at = Interval::of(&result.ratios);
            let slower = result.ratios.iter().filter(|&&r| r < 1.0).count();
            let z = rank_sum_z(&result.ratios, &noise.ratios);
            let by = shift(&result.ratios, &noise.ratios);
            let verdict = if result.config == Config::Absent {
                "the method's noise"
            } else if result.ratios.len().min(noise.ratios.len()) < MIN_PAIRS {
                "too few pairs to judge"
            } else if z < Z_5 {
                misses.push(format!(
                    "{load} worse than noise ({}): {:.3} of the unprotected rate (interval \
                     {:.3}..{:.3}) against {:.3} ({:.3}..{:.3}) with no daemon, z {z:.2}, \
                     shifted by {:+.3} ({:+.3}..{:+.3})",
                    result.config,
                    at.median,
                    at.low,
                    at.high,
                    at_noise.median,
                    at_noise.low,
                    at_noise.high,
                    by.median,
                    by.low,
                    by.high
                ));
                "WORSE than noise"
            } else {
                "within noise"
            };
            println!(
                "  {:<10} {:<10} {:>6} {:>8.3} {:>7.3}..{:<7.3} {:>7} {:>7.2} {:>+8.3} ({:+.3}..{:+.3})  \
                 {verdict}",
                result.config.to_string(),
                load.to_string(),
                result.ratios.len(),
                at.median,
                at.low,
                at.high,
                slower,
                z,
                by.median,
                by.low,
                by.high
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Interval, rank_sum_z, shift};

    #[test]
    fn the_rank_sum_test_sees_a_shift_and_not_a_shuffle() {
        let b: Vec<f64> = (0..20).map(|i| 1.0 + f64::from(i % 5) * 0.01).collect();
        // The same values: z 0.
        assert!(rank_sum_z(&b, &b).abs() < 1e-9);
        // Every value of `a` below every one of `b`: U = 0, z = −5.41.
        let a: Vec<f64> = b.iter().map(|v| v - 0.1).collect();
        let z = rank_sum_z(&a, &b);
        assert!((z - -5.41).abs() < 0.01, "{z}");
        assert!((rank_sum_z(&b, &a) - 5.41).abs() < 0.01);
        // Interleaved halves: U 210 of 400, z 0.27.
        let (odd, even): (Vec<f64>, Vec<f64>) =
            (0..40).map(f64::from).partition(|v| v % 2.0 == 1.0);
        assert!(rank_sum_z(&odd, &even).abs() < 0.3);
    }

    #[test]
    fn the_interval_is_the_order_statistics_a_binomial_tail_allows() {
        let interval = |values: &[f64]| {
            let at = Interval::of(values);
            (at.median, at.low, at.high)
        };
        // n = 20: P(X ≤ 5) = 0.0207, P(X ≤ 6) = 0.0577: the 6th and 15th.
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(interval(&values), (10.5, 6.0, 15.0));
        // n = 5: P(X = 0) = 0.031 allows the extremes; n = 4 allows no
        // order statistic: the whole range.
        assert_eq!(interval(&[5.0, 1.0, 3.0, 2.0, 4.0]), (3.0, 1.0, 5.0));
        assert_eq!(interval(&[4.0, 1.0, 3.0, 2.0]), (2.5, 1.0, 4.0));
        assert_eq!(interval(&[2.0]), (2.0, 2.0, 2.0));
        // Past 1,000 values the normal approximation: n = 2,000 gives
        // k = 963, as the exact sum gives: the 963rd and 1,038th values.
        let values: Vec<f64> = (1..=2000).map(f64::from).collect();
        assert_eq!(interval(&values), (1000.5, 963.0, 1038.0));
    }

    #[test]
    fn the_shift_is_the_median_difference_within_the_rank_sum_interval() {
        let b: Vec<f64> = (0..40).map(|i| 1.0 + f64::from(i) * 0.001).collect();
        // The same values: no shift, an interval around 0.
        let same = shift(&b, &b);
        assert!(same.median.abs() < 1e-12, "{same:?}");
        assert!(same.low < 0.0 && same.high > 0.0, "{same:?}");
        // Moved down by 0.05: exactly that, and an interval that holds it
        // and leaves out 0.
        let a: Vec<f64> = b.iter().map(|v| v - 0.05).collect();
        let moved = shift(&a, &b);
        assert!((moved.median + 0.05).abs() < 1e-9, "{moved:?}");
        assert!(
            moved.low < -0.05 && moved.high > -0.05 && moved.high < 0.0,
            "{moved:?}"
        );
        // n = m = 40: k = floor(800 - 1.645 * sqrt(40 * 40 * 81 / 12)) = 629,
        // the 629th smallest and largest of the 1,600 differences. They
        // are 0.001 apart from -0.039 up, the t-th value t times: the
        // first 35 values take 630 places, so the 629th is the 35th,
        // -0.005.
        assert!((same.low - -0.005).abs() < 1e-9, "{same:?}");
        assert!((same.high - 0.005).abs() < 1e-9, "{same:?}");
        // Without ties (every difference a_i - b_j distinct), the bounds
        // are exactly the 629th smallest and largest: 628 differences lie
        // below the one, 628 above the other.
        let a: Vec<f64> = (0..40).map(f64::from).collect();
        let pairs = |keep: &dyn Fn(f64) -> bool| {
            a.iter()
                .flat_map(|x| b.iter().map(move |y| x - y))
                .filter(|&d| keep(d))
                .count()
        };
        let spread = shift(&a, &b);
        assert_eq!(pairs(&|d| d < spread.low), 628, "{spread:?}");
        assert_eq!(pairs(&|d| d > spread.high), 628, "{spread:?}");
    }
}
