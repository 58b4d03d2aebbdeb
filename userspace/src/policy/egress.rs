//! The egress guard's destinations: the built-in sets, the one form every
//! prefix is kept in (IPv6, IPv4 as `::ffff:0:0/96` + its length, as the
//! kernel looks addresses up), and the rule masks of `LW_EGRESS_DST`.
//!
//! The kernel makes one longest-prefix-match lookup per guarded connect,
//! whose value must say, for every egress rule at once, whether that rule
//! blocks the address. [`blocking_masks`] stores every prefix of the union
//! of all rules' lists; for prefix `P` and rule `r`, bit `r` is set iff
//! `r`'s longest own prefix containing `P` is a deny entry. That is right
//! for every address `a` whose longest union match is `P`: each of `r`'s
//! prefixes that contains `a` is in the union, so it is no longer than `P`
//! and contains `P`; `r`'s longest prefix containing `a` is therefore its
//! longest prefix containing `P`.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv6Net};
use loopwarden_common::{Addr, EgressKey};

/// The built-in destination sets a `deny` list may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Builtin {
    Metadata,
    Loopback,
    LinkLocal,
    Private,
}

/// Cloud instance metadata services, refused by every egress rule whatever
/// its lists say. Sources:
/// - 169.254.169.254, fd00:ec2::254: AWS IMDS (IPv4 and Nitro IPv6), also
///   GCP, Azure, OpenStack, DigitalOcean, Oracle (v1), Hetzner, Linode.
///   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html>
/// - 169.254.170.2: AWS ECS task metadata and credentials endpoint (v2);
///   <https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-metadata-endpoint-v2.html>
/// - 169.254.170.23, fd00:ec2::23: AWS EKS Pod Identity agent;
///   <https://docs.aws.amazon.com/eks/latest/userguide/pod-id-how-it-works.html>
/// - 100.100.100.200: Alibaba Cloud ECS metadata;
///   <https://www.alibabacloud.com/help/en/ecs/user-guide/view-instance-metadata>
/// - 192.0.0.192: Oracle Cloud (OCI) metadata, older instances;
///   <https://docs.oracle.com/en-us/iaas/Content/Compute/Tasks/gettingmetadata.htm>
/// - 168.63.129.16: Azure's WireServer (the VM agent's provisioning and
///   extension channel, outside the link-local and private ranges);
///   <https://learn.microsoft.com/en-us/azure/virtual-network/what-is-ip-address-168-63-129-16>
pub const METADATA: &[&str] = &[
    "169.254.169.254/32",
    "169.254.170.2/32",
    "169.254.170.23/32",
    "100.100.100.200/32",
    "192.0.0.192/32",
    "168.63.129.16/32",
    "fd00:ec2::254/128",
    "fd00:ec2::23/128",
];

impl Builtin {
    pub const ALL: [Builtin; 4] = [
        Builtin::Metadata,
        Builtin::Loopback,
        Builtin::LinkLocal,
        Builtin::Private,
    ];

    /// The name a config writes.
    pub const fn name(self) -> &'static str {
        match self {
            Builtin::Metadata => "metadata",
            Builtin::Loopback => "loopback",
            Builtin::LinkLocal => "link-local",
            Builtin::Private => "private",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Its prefixes as written.
    pub const fn cidrs(self) -> &'static [&'static str] {
        match self {
            Builtin::Metadata => METADATA,
            Builtin::Loopback => &["127.0.0.0/8", "::1/128"],
            Builtin::LinkLocal => &["169.254.0.0/16", "fe80::/10"],
            // RFC 1918, RFC 6598 (carrier-grade NAT), RFC 4193 (ULA).
            Builtin::Private => &[
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "fc00::/7",
            ],
        }
    }

    /// Its prefixes in kernel form.
    pub fn prefixes(self) -> impl Iterator<Item = Ipv6Net> {
        self.cidrs()
            .iter()
            .map(|c| mapped(c.parse().expect("built-in CIDRs parse")))
    }
}

/// The metadata prefixes in kernel form.
pub fn metadata() -> impl Iterator<Item = Ipv6Net> {
    Builtin::Metadata.prefixes()
}

/// `net` as the kernel looks it up: IPv4 as `::ffff:a.b.c.d/(96 + len)`.
pub fn mapped(net: IpNet) -> Ipv6Net {
    match net {
        IpNet::V4(v4) => Ipv6Net::new(v4.network().to_ipv6_mapped(), 96 + v4.prefix_len())
            .expect("96 + an IPv4 prefix length is at most 128"),
        IpNet::V6(v6) => v6,
    }
}

/// Shows a kernel-form prefix as written: mapped ones as IPv4.
pub fn show(net: &Ipv6Net) -> String {
    match net.network().to_ipv4_mapped() {
        Some(v4) if net.prefix_len() >= 96 => format!("{v4}/{}", net.prefix_len() - 96),
        _ => net.to_string(),
    }
}

/// Parses a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a
/// host prefix). `Err(Some(network))` when it has host bits set (the
/// network it would mean), `Err(None)` when it is no CIDR at all.
pub fn parse_cidr(text: &str) -> Result<IpNet, Option<IpNet>> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => return text.parse::<IpAddr>().map(IpNet::from).map_err(|_| None),
    };
    if net.trunc() != net {
        return Err(Some(net.trunc()));
    }
    Ok(net)
}

/// One rule's destinations in kernel form (metadata included in `deny`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulePrefixes {
    pub deny: Vec<Ipv6Net>,
    pub allow: Vec<Ipv6Net>,
}

/// The union of the rules' prefixes, each with the mask of the rules that
/// block it (see the module documentation). A prefix in both a rule's
/// lists counts as allowed by it (validation keeps metadata out of allow).
pub fn blocking_masks(rules: &[RulePrefixes]) -> BTreeMap<Ipv6Net, u64> {
    // Per rule: its prefixes, true for deny, and their lengths, longest
    // first: a supernet of another length cannot be one of the rule's, so
    // only those are looked up (a few per rule, not 129: the policy is
    // compiled every second: 4,096 prefixes of 64 rules took 0.57 s of
    // every second in a release build, 4 ms so).
    let own: Vec<(HashMap<Ipv6Net, bool>, Vec<u8>)> = rules
        .iter()
        .map(|r| {
            let mut m: HashMap<Ipv6Net, bool> = r.deny.iter().map(|p| (*p, true)).collect();
            m.extend(r.allow.iter().map(|p| (*p, false)));
            let mut lens: Vec<u8> = m.keys().map(Ipv6Net::prefix_len).collect();
            lens.sort_unstable_by(|a, b| b.cmp(a));
            lens.dedup();
            (m, lens)
        })
        .collect();
    let union: std::collections::BTreeSet<Ipv6Net> =
        own.iter().flat_map(|(m, _)| m.keys().copied()).collect();
    union
        .into_iter()
        .map(|p| {
            let mut mask = 0u64;
            for (r, (prefixes, lens)) in own.iter().enumerate() {
                // r's longest prefix containing p.
                let blocks = lens
                    .iter()
                    .filter(|&&len| len <= p.prefix_len())
                    .find_map(|&len| prefixes.get(&supernet(p.network(), len)));
                if blocks == Some(&true) {
                    mask |= 1 << r;
                }
            }
            (p, mask)
        })
        .collect()
}

/// `addr`'s prefix of `len` bits (at most 128).
fn supernet(addr: Ipv6Addr, len: u8) -> Ipv6Net {
    Ipv6Net::new(addr, len).expect("len <= 128").trunc()
}

/// The `LW_EGRESS_DST` key data of `net` in generation `g`, and its
/// prefix length.
pub fn trie_key(g: u32, net: &Ipv6Net) -> (u32, EgressKey) {
    (
        32 + u32::from(net.prefix_len()),
        EgressKey {
            generation_be: g.to_be(),
            addr: Addr::from_ip(IpAddr::V6(net.network())),
        },
    )
}

/// What `get` holds for the longest of `addr`'s prefixes of at most
/// `max_len` bits (`addr`'s supernets, longest first): the kernel's
/// lookup, for the tests.
#[cfg(test)]
fn longest_match<'a, V>(
    addr: Ipv6Addr,
    max_len: u8,
    get: impl Fn(&Ipv6Net) -> Option<&'a V>,
) -> Option<&'a V> {
    (0..=max_len)
        .rev()
        .find_map(|len| get(&supernet(addr, len)))
}

/// Which of `masks`'s rules block `ip`: what the kernel's lookup answers
/// (for the tests).
#[cfg(test)]
pub fn lookup(masks: &BTreeMap<Ipv6Net, u64>, ip: IpAddr) -> u64 {
    let host = mapped(IpNet::from(ip));
    longest_match(host.network(), host.prefix_len(), |net| masks.get(net))
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv6Net {
        mapped(text.parse().unwrap())
    }

    fn rule(deny: &[&str], allow: &[&str]) -> RulePrefixes {
        RulePrefixes {
            deny: deny.iter().map(|t| net(t)).chain(metadata()).collect(),
            allow: allow.iter().map(|t| net(t)).collect(),
        }
    }

    fn blocks(masks: &BTreeMap<Ipv6Net, u64>, ip: &str) -> u64 {
        lookup(masks, ip.parse().unwrap())
    }

    #[test]
    fn nested_deny_allow_deny() {
        let masks = blocking_masks(&[rule(&["10.0.0.0/8", "10.20.30.0/24"], &["10.20.0.0/16"])]);
        assert_eq!(blocks(&masks, "10.1.2.3"), 1);
        assert_eq!(blocks(&masks, "10.20.1.1"), 0);
        assert_eq!(blocks(&masks, "10.20.30.40"), 1);
        assert_eq!(blocks(&masks, "11.0.0.1"), 0);
    }

    #[test]
    fn two_rules_with_overlapping_sets() {
        // Rule 0 denies 10/8 but allows 10.20/16; rule 1 denies 10.20.5/24.
        let masks = blocking_masks(&[
            rule(&["10.0.0.0/8"], &["10.20.0.0/16"]),
            rule(&["10.20.5.0/24"], &[]),
        ]);
        assert_eq!(blocks(&masks, "10.1.1.1"), 0b01);
        assert_eq!(blocks(&masks, "10.20.1.1"), 0b00);
        // The /24 is the longest match: rule 0's answer there is its /16 allow.
        assert_eq!(blocks(&masks, "10.20.5.1"), 0b10);
        assert_eq!(blocks(&masks, "169.254.169.254"), 0b11);
    }

    #[test]
    fn v4_and_v6_are_apart_and_mapped_v4_is_v4() {
        let masks = blocking_masks(&[rule(&["10.0.0.0/8", "2001:db8::/32"], &[])]);
        assert_eq!(blocks(&masks, "10.79.0.2"), 1);
        assert_eq!(blocks(&masks, "::ffff:10.79.0.2"), 1);
        assert_eq!(blocks(&masks, "2001:db8::1"), 1);
        assert_eq!(blocks(&masks, "2001:db9::1"), 0);
        // An IPv6 address whose low bits look like 10/8 is not IPv4.
        assert_eq!(blocks(&masks, "::a4f:2"), 0);
        assert_eq!(net("10.0.0.0/8").to_string(), "::ffff:10.0.0.0/104");
        assert_eq!(show(&net("10.0.0.0/8")), "10.0.0.0/8");
        assert_eq!(show(&net("fd00:ec2::254/128")), "fd00:ec2::254/128");
    }

    #[test]
    fn metadata_stays_refused_inside_an_allowed_range() {
        let masks = blocking_masks(&[rule(&["private"; 0], &["169.254.0.0/16", "fd00::/8"])]);
        assert_eq!(blocks(&masks, "169.254.1.1"), 0);
        assert_eq!(blocks(&masks, "169.254.169.254"), 1);
        assert_eq!(blocks(&masks, "169.254.170.2"), 1);
        assert_eq!(blocks(&masks, "fd00:ec2::254"), 1);
        assert_eq!(blocks(&masks, "fd00:ec2::255"), 0);
        assert_eq!(blocks(&masks, "100.100.100.200"), 1);
    }

    /// The masks as every length's lookup gives them, as before the
    /// lengths were kept.
    fn every_length(rules: &[RulePrefixes]) -> BTreeMap<Ipv6Net, u64> {
        let own: Vec<HashMap<Ipv6Net, bool>> = rules
            .iter()
            .map(|r| {
                let mut m: HashMap<Ipv6Net, bool> = r.deny.iter().map(|p| (*p, true)).collect();
                m.extend(r.allow.iter().map(|p| (*p, false)));
                m
            })
            .collect();
        own.iter()
            .flat_map(|m| m.keys().copied())
            .map(|p| {
                let mask = own.iter().enumerate().fold(0u64, |mask, (r, prefixes)| {
                    let hit = longest_match(p.network(), p.prefix_len(), |n| prefixes.get(n));
                    mask | (u64::from(hit == Some(&true)) << r)
                });
                (p, mask)
            })
            .collect()
    }

    #[test]
    fn only_the_rules_own_lengths_are_looked_up_with_the_same_masks() {
        // Nested IPv4 and IPv6 prefixes of many lengths over few networks,
        // so rules' entries hold each other.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        let mut pick = || {
            let text = if next(2) == 0 {
                format!("10.{}.{}.{}/{}", next(3), next(3), next(4), 8 + next(25))
            } else {
                format!("2001:db8:{:x}::{:x}/{}", next(3), next(4), 32 + next(97))
            };
            mapped(text.parse::<IpNet>().unwrap().trunc())
        };
        let rules: Vec<RulePrefixes> = (0..12)
            .map(|_| RulePrefixes {
                deny: (0..40).map(|_| pick()).chain(metadata()).collect(),
                allow: (0..15).map(|_| pick()).collect(),
            })
            .collect();
        assert_eq!(blocking_masks(&rules), every_length(&rules));
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_cidr("10.0.0.1"), Ok("10.0.0.1/32".parse().unwrap()));
        assert_eq!(parse_cidr("::1"), Ok("::1/128".parse().unwrap()));
        assert_eq!(
            parse_cidr("10.0.0.1/8"),
            Err(Some("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), Err(None));
        assert_eq!(parse_cidr("private"), Err(None));
        for set in Builtin::ALL {
            assert_eq!(Builtin::from_name(set.name()), Some(set));
            assert!(set.prefixes().count() > 0);
        }
    }
}
