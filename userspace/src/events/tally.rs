//! Connects the daemon was reported, by verdict, rule and destination
//! port: the kernel keeps no counter per rule or port, so these are counted
//! from the reports the daemon reads (each connect once, whether it got a
//! line of its own or a place in a summary's count). Reports lost in the
//! kernel are not among them (`loopwarden_reports_lost_total` counts those).
//!
//! The event loop counts with [`Tally::add`] (a hash map it owns: no lock)
//! and, once a second, [`Tally::publish`]es cumulative totals by rule name
//! to the metrics server through a `watch` channel, with the audit lines
//! the output never took ([`Tally::unwritten`]): a count said in a warning
//! that a stalled stderr may drop as well.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use loopwarden_common::ConnectEvent;
use tokio::sync::watch;

/// Distinct (rule, port, verdict) series kept; reports of further ones are
/// counted with the port label `other`.
pub const MAX_SERIES: usize = 2048;

/// One series' labels: the rule's name (`-` when none matched), the
/// destination port (`None`: past [`MAX_SERIES`]) and the verdict.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub rule: String,
    pub port: Option<u16>,
    pub verdict: u8,
}

/// Cumulative counts since the daemon started.
pub type Totals = BTreeMap<Series, u64>;

/// What the metrics server reads: the totals, and the audit lines (with
/// the reports they stood for) the output never took since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub totals: Totals,
    pub unwritten_lines: u64,
    pub unwritten_reports: u64,
}

/// What one report adds to before it is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Raw {
    policy_seq: u64,
    rule: u8,
    port: Option<u16>,
    verdict: u8,
}

/// The counting side, owned by the event loop.
pub struct Tally {
    pending: HashMap<Raw, u64>,
    reported: Reported,
    /// Unwritten lines counted since the last publish.
    unwritten_pending: bool,
    tx: watch::Sender<Arc<Reported>>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            reported: Reported::default(),
            unwritten_pending: false,
            tx: watch::Sender::new(Arc::default()),
        }
    }
}

impl Tally {
    /// One report.
    pub fn add(&mut self, ev: &ConnectEvent) {
        let mut raw = Raw {
            policy_seq: ev.policy_seq,
            rule: ev.rule,
            port: Some(ev.dport),
            verdict: ev.verdict,
        };
        // A second's distinct reports are bounded here; which series a
        // total may start is [`Tally::publish`]'s to say (one that exists
        // already goes on counting whatever the number of series).
        if self.pending.len() >= MAX_SERIES && !self.pending.contains_key(&raw) {
            raw.port = None;
        }
        *self.pending.entry(raw).or_default() += 1;
    }

    /// Adds what was counted since the last call to the totals, rules
    /// named by `name(policy_seq, rule_index)`, and hands the totals to
    /// the readers.
    pub fn publish(&mut self, name: impl Fn(u64, u8) -> Option<String>) {
        if self.pending.is_empty() && !std::mem::take(&mut self.unwritten_pending) {
            return;
        }
        let totals = &mut self.reported.totals;
        for (raw, count) in self.pending.drain() {
            let mut series = Series {
                rule: name(raw.policy_seq, raw.rule).unwrap_or_else(|| "-".to_owned()),
                port: raw.port,
                verdict: raw.verdict,
            };
            if totals.len() >= MAX_SERIES && !totals.contains_key(&series) {
                series.port = None;
            }
            *totals.entry(series).or_default() += count;
        }
        self.tx.send_replace(Arc::new(self.reported.clone()));
    }

    /// Audit lines the output never took, and the reports they stood for:
    /// published with the next totals.
    pub fn unwritten(&mut self, lines: u64, reports: u64) {
        self.reported.unwritten_lines += lines;
        self.reported.unwritten_reports += reports;
        self.unwritten_pending = true;
    }

    /// The totals as last published, for the metrics server.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Reported>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use loopwarden_common::verdict;

    use super::*;

    fn event(rule: u8, port: u16, v: u8) -> ConnectEvent {
        let zeroes = [0u8; std::mem::size_of::<ConnectEvent>()];
        let mut ev = crate::events::parse_event(&zeroes).unwrap();
        ev.policy_seq = 2;
        ev.rule = rule;
        ev.dport = port;
        ev.verdict = v;
        ev
    }

    #[test]
    fn counted_by_name_port_and_verdict_and_bounded() {
        let mut tally = Tally::default();
        let seen = tally.subscribe();
        let name = |seq: u64, rule: u8| (rule != 9).then(|| format!("r{seq}.{rule}"));
        for _ in 0..3 {
            tally.add(&event(1, 80, verdict::DENY));
        }
        tally.add(&event(9, 80, verdict::ALLOW));
        tally.publish(name);
        tally.add(&event(1, 80, verdict::DENY));
        tally.publish(name);
        let totals = seen.borrow().totals.clone();
        let deny = Series {
            rule: "r2.1".into(),
            port: Some(80),
            verdict: verdict::DENY,
        };
        let allow = Series {
            rule: "-".into(),
            port: Some(80),
            verdict: verdict::ALLOW,
        };
        assert_eq!(totals.get(&deny), Some(&4));
        assert_eq!(totals.get(&allow), Some(&1));
        assert_eq!(totals.len(), 2);

        for port in 0..(MAX_SERIES as u16 + 10) {
            tally.add(&event(1, 1000 + port, verdict::AUDIT));
        }
        tally.publish(name);
        let totals = seen.borrow().totals.clone();
        assert!(totals.len() <= MAX_SERIES + 1, "{} series", totals.len());
        let counted: u64 = totals
            .iter()
            .filter(|(s, _)| s.verdict == verdict::AUDIT)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(counted, MAX_SERIES as u64 + 10, "a report went uncounted");

        // With every series taken, one that exists goes on counting, and
        // only a new one is counted as `other`.
        tally.add(&event(1, 80, verdict::DENY));
        tally.add(&event(1, 7, verdict::DENY));
        tally.publish(name);
        let totals = seen.borrow().totals.clone();
        assert_eq!(
            totals.get(&deny),
            Some(&5),
            "an existing series stopped counting"
        );
        let other = Series { port: None, ..deny };
        assert_eq!(totals.get(&other), Some(&1));
    }

    /// Unwritten lines reach the metrics at the next publish, with or
    /// without new reports, and add up.
    #[test]
    fn unwritten_lines_are_published_and_add_up() {
        let mut tally = Tally::default();
        let seen = tally.subscribe();
        tally.unwritten(3, 40);
        tally.publish(|_, _| None);
        assert_eq!(
            (
                seen.borrow().unwritten_lines,
                seen.borrow().unwritten_reports
            ),
            (3, 40)
        );
        tally.unwritten(1, 1);
        tally.add(&event(1, 80, verdict::DENY));
        tally.publish(|_, _| None);
        assert_eq!(
            (
                seen.borrow().unwritten_lines,
                seen.borrow().unwritten_reports
            ),
            (4, 41)
        );
        assert_eq!(seen.borrow().totals.len(), 1);
    }
}
