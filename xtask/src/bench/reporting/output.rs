//! What the daemon wrote during a flood, counted (lines, summaries and the
//! connects they stand for, losses), and the reporting table.

use std::{fs, path::Path};

use anyhow::Context as _;

use super::{PAUSED, RSS_TARGET_MIB, Results};

/// What a daemon log accounts for ([`count_output`]).
#[derive(Default)]
pub(super) struct Counts {
    pub(super) lines: u64,
    pub(super) summaries: u64,
    pub(super) summarised: u64,
    pub(super) lost: u64,
}

/// Counts a daemon log (stdout and stderr together): audit lines (JSON
/// objects with a verdict, or human lines with ` rule=` and ` dst=`),
/// summaries and their counts, and the `lost_total` of `events lost` lines
/// (human or JSON diagnostics).
pub(super) fn count_output(log: &Path) -> anyhow::Result<Counts> {
    let text = fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut c = Counts::default();
    for line in text.lines() {
        if line.contains("events lost") {
            // A human diagnostic (`lost_total=N`) or a JSON one (`"lost_total":N`).
            c.lost += word_value(line, "lost_total=")
                .or_else(|| json_number(line, "lost_total"))
                .unwrap_or(0);
            continue;
        }
        // JSON diagnostics are objects too: audit lines are those with a verdict.
        let json = line.starts_with('{') && line.contains("\"verdict\":");
        if !(json || (line.contains(" rule=") && line.contains(" dst="))) {
            continue;
        }
        c.lines += 1;
        let count = if json {
            line.split("\"repeat\":{\"count\":")
                .nth(1)
                .and_then(|rest| rest.split([',', '}']).next()?.parse().ok())
        } else {
            word_value(line, "repeated=")
        };
        if let Some(n) = count {
            c.summaries += 1;
            c.summarised += n;
        }
    }
    Ok(c)
}

/// The number after `"key":` in a JSON line.
fn json_number(line: &str, key: &str) -> Option<u64> {
    let rest = line.split(&format!("\"{key}\":")).nth(1)?;
    rest.split([',', '}']).next()?.trim().parse().ok()
}

/// The number after `key` in a line's `key=N` word.
pub(super) fn word_value(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
}

/// Prints the reporting table and adds missed targets to `misses`.
pub fn print(results: &Results, seconds: f64, misses: &mut Vec<String>) {
    let idle = &results.idle;
    println!();
    println!(
        "reporting (log_allowed on one port, audit mode; {seconds} s per flood; counts from the daemon's own output)"
    );
    println!(
        "  idle: in force {} ms after start ({} ms to the ready line as seen from outside); \
         {:.2} ms CPU per second ({:.3}% of a core), of which the 1 s refresh takes {} µs (its own \
         count, wall time); RSS {:.1} MiB",
        idle.ready_ms,
        idle.start_to_ready_ms,
        idle.cpu_ms_per_s,
        idle.cpu_ms_per_s / 10.0,
        idle.refresh_us,
        idle.rss_mib
    );
    if idle.rss_mib > RSS_TARGET_MIB {
        misses.push(format!(
            "idle RSS {:.1} MiB > {RSS_TARGET_MIB} MiB",
            idle.rss_mib
        ));
    }
    println!(
        "  {:<16} {:<6} {:>9} {:>10} {:>9} {:>9} {:>10} {:>8} {:>9} {:>7} {:>8}  verdict",
        "flood",
        "format",
        "offered/s",
        "achieved/s",
        "connects",
        "lines",
        "summarised",
        "lost",
        "accounted",
        "CPU %",
        "RSS MiB"
    );
    for row in &results.rows {
        let mut verdict = Vec::new();
        if row.accounted() != row.attempts {
            verdict.push("NOT EXACT");
            misses.push(format!(
                "{} ({}): {} connects, the output accounts for {}",
                row.flood,
                row.format,
                row.attempts,
                row.accounted()
            ));
        }
        let single = !row.flood.contains("distinct");
        if row.flood == PAUSED && row.lost == 0 {
            verdict.push("NOTHING LOST?");
            misses.push(format!(
                "{} ({}): the reader was stopped, yet nothing was lost",
                row.flood, row.format
            ));
        }
        if single && row.lost > 0 {
            verdict.push("LOST");
            misses.push(format!(
                "{} ({}): {} reports lost",
                row.flood, row.format, row.lost
            ));
        }
        if row.rss_max_mib > RSS_TARGET_MIB {
            verdict.push("RSS OVER");
            misses.push(format!(
                "{} ({}): RSS {:.1} MiB > {RSS_TARGET_MIB} MiB",
                row.flood, row.format, row.rss_max_mib
            ));
        }
        println!(
            "  {:<16} {:<6} {:>9} {:>10.0} {:>9} {:>9} {:>10} {:>8} {:>9} {:>7.1} {:>8.1}  {}",
            row.flood,
            row.format,
            row.offered,
            row.achieved,
            row.attempts,
            row.lines,
            row.summarised,
            row.lost,
            if row.accounted() == row.attempts {
                "exact".to_owned()
            } else {
                row.accounted().to_string()
            },
            row.cpu_percent,
            row.rss_max_mib,
            if verdict.is_empty() {
                "ok".to_owned()
            } else {
                verdict.join(", ")
            },
        );
    }
    println!(
        "  targets: 0 lost for one flow at every rate, every connect accounted for (a line, a summary's count, or lost), RSS ≤ {RSS_TARGET_MIB} MiB"
    );
}
