//! The egress guard's bench phases: outbound TCP connects (the outbound
//! load, to the peer namespace across the veth pair) under a policy whose
//! `[[egress]]` rule lists [`CIDRS`] deny prefixes. `egress-named`: the rule
//! names the bench client and its destination is allowed, so every connect
//! takes the guard's whole path (the subject lookups and the LPM lookup);
//! `egress-other`: it names another executable, what every process no rule
//! names pays. Each is shown as `lw_connect4`'s cost per run net of the
//! audit phase's (the same policy without the egress rule).

use std::path::Path;

use loopwarden_common::programs;

use super::{Config, Sample, Workload, netns, report::Rates, toml_str};

/// Deny prefixes of the bench's egress rule.
pub const CIDRS: usize = 1000;
/// Added ns per run of `lw_connect4` for a connect the guard judges ...
const NAMED_TARGET_NS: f64 = 300.0;
/// ... and for one by a process no egress rule names.
const OTHER_TARGET_NS: f64 = 50.0;

/// The `[[egress]]` table: `exe` named, [`CIDRS`] public /24s and the
/// built-in private and link-local sets denied, the bench's veth range
/// allowed.
pub fn table(exe: &Path) -> String {
    let mut deny: Vec<String> = (0..CIDRS)
        .map(|i| format!("\"11.{}.{}.0/24\"", i / 250, i % 250))
        .collect();
    deny.truncate(CIDRS - 2);
    deny.extend(["\"private\"".to_owned(), "\"link-local\"".to_owned()]);
    let peer = netns::VETH_PEER.octets();
    format!(
        "[[egress]]\nname = \"bench\"\naction = \"deny\"\nexe = {exe}\ndeny = [{deny}]\n\
         allow = [\"{}.{}.0.0/16\"]\n",
        peer[0],
        peer[1],
        exe = toml_str(&exe.to_string_lossy()),
        deny = deny.join(", "),
    )
}

/// `lw_connect4`'s ns/run in `config`'s outbound runs: the median over rounds.
fn ns_per_run(samples: &[Sample], config: Config) -> Option<f64> {
    Rates::ns_per_run(samples, config, Workload::Outbound, programs::CONNECT4).map(|r| r.median)
}

/// The egress lines: each phase's added cost against its target.
pub fn print(samples: &[Sample], misses: &mut Vec<String>) {
    let Some(without) = ns_per_run(samples, Config::Audit) else {
        return;
    };
    println!();
    println!(
        "egress guard ({CIDRS} deny CIDRs; outbound connects; lw_connect4 ns/run, median over \
         rounds; added = minus the audit phase's {without:.0} ns without the egress rule)"
    );
    for (config, what, limit) in [
        (
            Config::EgressNamed,
            "named, destination allowed",
            NAMED_TARGET_NS,
        ),
        (
            Config::EgressOther,
            "not named by any rule",
            OTHER_TARGET_NS,
        ),
    ] {
        let Some(with) = ns_per_run(samples, config) else {
            continue;
        };
        let added = with - without;
        let verdict = if added <= limit {
            format!("≤ {limit:.0} ns PASS")
        } else {
            misses.push(format!(
                "lw_connect4 ({config}): {added:.0} ns added per run by the egress guard, \
                 target {limit:.0} ns"
            ));
            format!("≤ {limit:.0} ns OVER TARGET")
        };
        println!("  {config:<13} {what:<28} {with:>6.0} ns/run  added {added:>5.0} ns  {verdict}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_lists_the_cidrs() {
        let t = super::table(std::path::Path::new("/x"));
        assert_eq!(t.matches("/24\"").count(), super::CIDRS - 2);
        assert!(t.contains("allow = [\"10.78.0.0/16\"]"), "{t}");
    }
}
