//! `[[egress]]` parsing and validation: every bad input names file, line
//! and problem.

use loopwarden_common::{MAX_EGRESS_PREFIXES, MAX_EGRESS_RULES};

use super::{EgressDestination, expect_error, parse};
use crate::policy::{Action, egress::Builtin};

/// An egress table with `body` after its name.
fn egress(name: &str, body: &str) -> String {
    format!("[[egress]]\nname = \"{name}\"\n{body}")
}

const WHO: &str = "action = \"deny\"\nuid = 1000\n";

#[test]
fn a_full_egress_rule() {
    let text = egress(
        "agent-fetch",
        "action = \"audit\"\nexe = \"/usr/bin/python3\"\nuser = \"app\"\ncgroup = \"agent.service\"\n\
         deny = [\"metadata\", \"private\", \"203.0.113.0/24\", \"2001:db8::/32\", \"192.0.2.1\"]\n\
         allow = [\"10.20.0.0/16\", \"169.254.0.0/16\"]\n",
    );
    let config = parse(&text).unwrap();
    let [rule] = config.egress.as_slice() else {
        panic!("{:?}", config.egress);
    };
    assert_eq!(rule.name, "agent-fetch");
    assert_eq!(rule.at.line, 2);
    assert_eq!(rule.action, Action::Audit);
    assert_eq!(rule.criteria.exe.len(), 1);
    assert_eq!(rule.criteria.user[0].value, "app");
    assert_eq!(rule.criteria.cgroup[0].value, "agent.service");
    let deny: Vec<EgressDestination> = rule.deny.iter().map(|d| d.value).collect();
    assert_eq!(
        deny,
        [
            EgressDestination::Set(Builtin::Metadata),
            EgressDestination::Set(Builtin::Private),
            EgressDestination::Cidr("203.0.113.0/24".parse().unwrap()),
            EgressDestination::Cidr("2001:db8::/32".parse().unwrap()),
            EgressDestination::Cidr("192.0.2.1/32".parse().unwrap()),
        ]
    );
    assert_eq!(rule.allow[1].value.to_string(), "169.254.0.0/16");
    assert_eq!(rule.allow[1].at.line, 8);
}

#[test]
fn bad_destinations_name_their_line() {
    expect_error(
        &egress("a", &format!("{WHO}deny = [\"metadata\", \"intranet\"]\n")),
        5,
        "`intranet` is neither a CIDR nor a built-in set",
    );
    expect_error(
        &egress("a", &format!("{WHO}deny = \"10.0.0.0/33\"\n")),
        5,
        "`10.0.0.0/33` is not a CIDR",
    );
    expect_error(
        &egress(
            "a",
            &format!("{WHO}deny = [\"private\"]\nallow = \"10.1.2.3/8\"\n"),
        ),
        6,
        "`10.1.2.3/8` has host bits set: write its network, 10.0.0.0/8",
    );
    expect_error(
        &egress("egress:a", &format!("{WHO}deny = [\"private\"]\n")),
        2,
        "egress rule name `egress:a` carries the prefix lines give it: name it `a`",
    );
    expect_error(
        &egress("a", &format!("{WHO}deny = []\n")),
        5,
        "`deny` is an empty list: an egress rule refuses what it lists, so list at least one CIDR",
    );
    expect_error(
        &egress(
            "a",
            "action = \"deny\"\ncgroup = \"../x\"\ndeny = \"private\"\n",
        ),
        4,
        "cgroup `../x` has a `..` component",
    );
    expect_error(
        &egress(
            "a",
            "action = \"deny\"\ncgroup = \"/\"\ndeny = \"private\"\n",
        ),
        4,
        "cgroup `/` is the root cgroup",
    );
    // A set is no CIDR in `allow`.
    expect_error(
        &egress(
            "a",
            &format!("{WHO}deny = [\"private\"]\nallow = [\"private\"]\n"),
        ),
        6,
        "neither a CIDR",
    );
}

#[test]
fn an_allow_can_never_reopen_metadata() {
    for allow in ["169.254.169.254/32", "169.254.169.254", "fd00:ec2::254/128"] {
        expect_error(
            &egress(
                "a",
                &format!("{WHO}deny = [\"link-local\"]\n\nallow = [\"10.0.0.0/8\", \"{allow}\"]\n"),
            ),
            7,
            "lies inside the cloud metadata address",
        );
    }
    // A wider range is fine: the metadata prefix is longer.
    parse(&egress(
        "a",
        &format!("{WHO}deny = [\"link-local\"]\nallow = [\"169.254.0.0/16\", \"fd00::/8\"]\n"),
    ))
    .unwrap();
}

/// An allow outside every deny entry lets nothing through the rule
/// refuses, and one that is a whole deny entry takes it back: both said,
/// with the allow's line. One inside a deny entry (of a set or a CIDR) is
/// what an allow is for.
#[test]
fn an_allow_that_carves_nothing_out_is_warned_of() {
    let warned = |deny: &str, allow: &str| {
        let text = egress("a", &format!("{WHO}deny = [{deny}]\nallow = [{allow}]\n"));
        parse(&text).unwrap().warnings
    };
    let outside = warned("\"private\"", "\"203.0.113.0/24\"");
    assert!(
        outside
            .iter()
            .any(|w| w.contains(":6: egress rule `a`: allow 203.0.113.0/24 is inside none")),
        "{outside:?}"
    );
    let whole = warned("\"10.0.0.0/8\"", "\"10.0.0.0/8\"");
    assert!(
        whole
            .iter()
            .any(|w| w.contains("allow 10.0.0.0/8 is a whole deny entry")),
        "{whole:?}"
    );
    for (deny, allow) in [
        ("\"private\"", "\"10.20.0.0/16\""),
        ("\"10.0.0.0/8\"", "\"10.1.2.3\""),
        ("\"::/0\"", "\"0.0.0.0/0\""),
    ] {
        let none = warned(deny, allow);
        assert!(none.is_empty(), "{deny} {allow}: {none:?}");
    }
}

#[test]
fn rules_need_a_subject_an_action_and_a_unique_name() {
    expect_error(
        &egress("a", "action = \"deny\"\ndeny = \"metadata\"\n"),
        2,
        "egress rule `a` names no service",
    );
    expect_error(
        &egress("a", "action = \"allow\"\nuid = 0\ndeny = \"metadata\"\n"),
        3,
        "action must be \"deny\" or \"audit\"",
    );
    expect_error(
        &egress("bad name", &format!("{WHO}deny = \"metadata\"\n")),
        2,
        "may only contain",
    );
    let one = egress("dup", &format!("{WHO}deny = \"metadata\"\n"));
    expect_error(
        &format!("{one}\n{one}"),
        8,
        "egress rule name `dup` is already used by the egress rule at line 2",
    );
    // Egress names are their own: a [[rule]] may share one.
    parse(&format!(
        "{one}\n[[rule]]\nname = \"dup\"\naction = \"deny\"\nuid = 0\n"
    ))
    .unwrap();
    // Only the subject criteria of a process are egress keys.
    expect_error(
        &egress("a", &format!("{WHO}deny = \"metadata\"\ncomm = \"curl\"\n")),
        6,
        "unknown field `comm`",
    );
}

#[test]
fn too_many_rules_or_prefixes() {
    let many: String = (0..=MAX_EGRESS_RULES)
        .map(|i| egress(&format!("r{i}"), &format!("{WHO}deny = \"metadata\"\n")))
        .collect();
    // Each table is 5 lines; the first that does not fit starts at line
    // 5 * MAX_EGRESS_RULES + 1, its name one line below.
    expect_error(
        &many,
        5 * MAX_EGRESS_RULES + 2,
        &format!(
            "too many egress rules: {}, at most {MAX_EGRESS_RULES}",
            MAX_EGRESS_RULES + 1
        ),
    );
    // Two rules whose /32s add up to more than the trie holds.
    let cidrs = |from: u32| -> String {
        (from..from + MAX_EGRESS_PREFIXES / 2 + 1)
            .map(|i| format!("\"{}\"", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "{}\n{}",
        egress("a", &format!("{WHO}deny = [{}]\n", cidrs(0))),
        egress("b", &format!("{WHO}deny = [{}]\n", cidrs(1 << 16)))
    );
    expect_error(&text, 8, "distinct prefixes");
}

/// `::/0` (or any IPv6 prefix holding `::ffff:0:0/96`) denies every IPv4
/// address too: said, unless the rule allows some IPv4 itself (an IPv4
/// deny beside it is inside it, and does not keep it quiet).
#[test]
fn an_ipv6_deny_that_holds_every_ipv4_address_is_warned_of() {
    let config = parse(&egress("v6", &format!("{WHO}deny = [\"::/0\"]\n"))).unwrap();
    let [warning] = config.warnings.as_slice() else {
        panic!("{:?}", config.warnings);
    };
    assert!(
        warning.contains(":5: egress rule `v6` denies ::/0") && warning.contains("0.0.0.0/0"),
        "{warning}"
    );
    let config = parse(&egress(
        "v6",
        &format!("{WHO}deny = [\"::/0\", \"10.0.0.0/8\"]\n"),
    ))
    .unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    for quiet in [
        // IPv4 left out, or allowed in part on purpose.
        "deny = [\"::/0\"]\nallow = [\"0.0.0.0/0\"]\n",
        "deny = [\"::/0\"]\nallow = [\"10.0.0.0/8\"]\n",
        // The same in IPv4-mapped form.
        "deny = [\"::/0\"]\nallow = [\"::ffff:10.0.0.0/104\"]\n",
        // Prefixes that do not hold ::ffff:0:0/96.
        "deny = [\"2001:db8::/32\", \"fc00::/7\"]\n",
    ] {
        let config = parse(&egress("v6", &format!("{WHO}{quiet}"))).unwrap();
        assert!(config.warnings.is_empty(), "{quiet}: {:?}", config.warnings);
    }
}

/// A deny of the unspecified address, and not of the loopback address a
/// connect to it reaches, would refuse nothing: refused with its line.
/// One that holds both (`0.0.0.0/0`, `::/0`) stands, and so does one that
/// holds public addresses besides (`0.0.0.0/2`).
#[test]
fn a_deny_of_the_unspecified_address_alone_is_refused() {
    for (deny, loopback) in [
        ("0.0.0.0", "127.0.0.1"),
        ("0.0.0.0/8", "127.0.0.1"),
        ("::", "::1"),
        // Written in IPv4-mapped form: judged as the IPv4 it maps.
        ("::ffff:0.0.0.0", "::ffff:127.0.0.1"),
        ("::ffff:0.0.0.0/104", "::ffff:127.0.0.1"),
    ] {
        expect_error(
            &egress("a", &format!("{WHO}deny = [\"{deny}\"]\n")),
            5,
            &format!("goes to {loopback} on this host"),
        );
    }
    for deny in [
        "0.0.0.0/0",
        "::/0",
        "127.0.0.0/8",
        "0.0.0.0/2",
        "0.0.0.0/7",
        "::ffff:0.0.0.0/96",
        "::ffff:0.0.0.0/98",
    ] {
        parse(&egress("a", &format!("{WHO}deny = [\"{deny}\"]\n"))).expect(deny);
    }
}
