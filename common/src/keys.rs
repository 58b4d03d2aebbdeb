//! Map keys: executables by file identity, generational keys, addresses
//! as the kernel sees them, egress prefixes.

/// `LW_EGRESS_DST` key data: the generation, big-endian so that it is the
/// first 32 bits of the prefix, then the destination as the kernel sees it
/// (IPv4 as `::ffff:a.b.c.d`, words in network order). A prefix of `n`
/// address bits has `prefix_len = 32 + n`; a lookup uses 160.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EgressKey {
    /// The generation slot, `to_be()`.
    pub generation_be: u32,
    pub addr: Addr,
}

impl EgressKey {
    /// Prefix bits a lookup of a whole address uses.
    pub const FULL_PREFIX: u32 = 32 + 128;
}

/// Identity of an executable file: the kernel's `sb->s_dev`
/// (`major << 20 | minor`, not userspace's `st_dev` encoding) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExeKey {
    pub dev: u64,
    pub ino: u64,
}

impl ExeKey {
    /// Builds a key from userspace `major`/`minor` device numbers.
    pub const fn from_major_minor(major: u64, minor: u64, ino: u64) -> Self {
        Self {
            dev: (major << 20) | minor,
            ino,
        }
    }
}

/// Key of a generational map: the policy generation, then the value. With
/// the value's alignment at most 8 and the header 8 bytes, there is no
/// implicit padding for the value types used here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GenKey<T> {
    pub generation: u32,
    pub _pad: u32,
    pub value: T,
}

impl<T> GenKey<T> {
    #[inline(always)]
    pub const fn new(generation: u32, value: T) -> Self {
        Self {
            generation,
            _pad: 0,
            value,
        }
    }
}

/// Value of `LW_RULES_ANCESTOR`: rules matching this executable as the direct
/// parent, and rules matching it anywhere among the ancestors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AncestorMasks {
    pub parent: u64,
    pub ancestor: u64,
}

/// An address as the kernel sees it in `bpf_sock_addr`: IPv6 words in network
/// order; IPv4 as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub words: [u32; 4],
}

impl Addr {
    /// The kernel's form of `ip`: IPv4 as `::ffff:a.b.c.d`, the words as
    /// they sit in memory (network order).
    pub fn from_ip(ip: core::net::IpAddr) -> Self {
        let octets = match ip {
            core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            core::net::IpAddr::V6(v6) => v6.octets(),
        };
        let word =
            |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
        Addr {
            words: [word(0), word(4), word(8), word(12)],
        }
    }

    /// The address as IPv6, IPv4-mapped ones as they are.
    pub fn to_ipv6(&self) -> core::net::Ipv6Addr {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(self.words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        core::net::Ipv6Addr::from(octets)
    }

    /// The address, IPv4-mapped ones shown as IPv4.
    pub fn to_ip(&self) -> core::net::IpAddr {
        let v6 = self.to_ipv6();
        match v6.to_ipv4_mapped() {
            Some(v4) => core::net::IpAddr::V4(v4),
            None => core::net::IpAddr::V6(v6),
        }
    }
}
