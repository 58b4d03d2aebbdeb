//! Typed access to the kernel maps. This is the only module that touches aya
//! map types: the rest of userspace speaks [`CompiledPolicy`] and plain
//! numbers.
//!
//! Installing a policy writes a whole new generation beside the running one
//! and switches to it with one write (see [`PolicyMaps::install`]), so a
//! connect is never judged by a mix of two policies ([`generation`] writes
//! one generation). The counters and ring buffers are in [`counters`].

mod counters;
mod generation;

use std::{collections::BTreeMap, net::IpAddr};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use loopwarden_common::{
    Addr, AncestorMasks, BROWSER_PORT_WORDS, COMM_LEN, EXE_NAME_LEN, EgressKey, ExeKey,
    FILTER_WORDS, GenKey, MAX_MAP_ENTRIES, PORT_WORDS, Settings, exe_filter_value, filter_bit,
    maps, name_prefix,
};

pub use self::counters::{Counters, StatsMap, take_denials, take_events};
use self::generation::{PortBitmap, clear_generation, port_words, write_generation};
use crate::policy::{self, CompiledPolicy, Ports, egress};

/// Errors touching the kernel maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the eBPF object has no map named {name}")]
    Missing { name: &'static str },
    #[error("map {name} has an unexpected type or layout")]
    Type {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "the policy needs {needed} entries in map {name}, which holds {capacity}: use fewer values \
         (nothing was changed)"
    )]
    TooLarge {
        name: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("updating map {name} failed")]
    Update {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapsError::Missing { name })?;
    T::try_from(map).map_err(|source| MapsError::Type { name, source })
}

/// The policy maps: everything the programs read to decide.
pub struct PolicyMaps {
    generation: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    ports: PortBitmap,
    netns: HashMap<MapData, GenKey<u64>, u8>,
    host_addrs: HashMap<MapData, GenKey<Addr>, u8>,
    exe: HashMap<MapData, GenKey<ExeKey>, u64>,
    exe_name: HashMap<MapData, GenKey<[u8; EXE_NAME_LEN]>, u64>,
    comm: HashMap<MapData, GenKey<[u8; COMM_LEN]>, u64>,
    uid: HashMap<MapData, GenKey<u32>, u64>,
    cgroup: HashMap<MapData, GenKey<u64>, u64>,
    ancestor: HashMap<MapData, GenKey<ExeKey>, AncestorMasks>,
    script: HashMap<MapData, GenKey<u64>, u64>,
    bind_ports: PortBitmap,
    bind_exe: HashMap<MapData, GenKey<ExeKey>, u8>,
    bind_uid: HashMap<MapData, GenKey<u32>, u8>,
    browser_ports: PortBitmap<{ BROWSER_PORT_WORDS as usize }>,
    egress_dst: LpmTrie<MapData, EgressKey, u64>,
    egress_uid: HashMap<MapData, GenKey<u32>, u64>,
    egress_exe: HashMap<MapData, GenKey<ExeKey>, u64>,
    egress_cgroup: HashMap<MapData, GenKey<u64>, u64>,
}

impl PolicyMaps {
    /// Takes the policy maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            generation: take(ebpf, maps::GENERATION)?,
            settings: take(ebpf, maps::SETTINGS)?,
            ports: PortBitmap::take(ebpf, maps::PORTS)?,
            netns: take(ebpf, maps::NETNS)?,
            host_addrs: take(ebpf, maps::HOST_ADDRS)?,
            exe: take(ebpf, maps::RULES_EXE)?,
            exe_name: take(ebpf, maps::RULES_EXE_NAME)?,
            comm: take(ebpf, maps::RULES_COMM)?,
            uid: take(ebpf, maps::RULES_UID)?,
            cgroup: take(ebpf, maps::RULES_CGROUP)?,
            ancestor: take(ebpf, maps::RULES_ANCESTOR)?,
            script: take(ebpf, maps::RULES_SCRIPT)?,
            bind_ports: PortBitmap::take(ebpf, maps::BIND_PORTS)?,
            bind_exe: take(ebpf, maps::BIND_EXE)?,
            bind_uid: take(ebpf, maps::BIND_UID)?,
            browser_ports: PortBitmap::take(ebpf, maps::BROWSER_PORTS)?,
            egress_dst: take(ebpf, maps::EGRESS_DST)?,
            egress_uid: take(ebpf, maps::EGRESS_UID)?,
            egress_exe: take(ebpf, maps::EGRESS_EXE)?,
            egress_cgroup: take(ebpf, maps::EGRESS_CGROUP)?,
        })
    }

    /// The kernel's id of this set's `LW_GENERATION` map: ids are never
    /// reused while the system runs, so it names this set of maps (one
    /// made afresh, after a detach or a replacement, has another).
    pub fn id(&self) -> Option<u32> {
        use aya::maps::IterableMap as _;
        self.generation.map().info().ok().map(|info| info.id())
    }

    fn read_u32(&self) -> Result<u32, MapsError> {
        self.generation
            .get(&0, 0)
            .map_err(|source| MapsError::Update {
                name: maps::GENERATION,
                source,
            })
    }

    fn read_settings(&self, g: u32) -> Result<Settings, MapsError> {
        self.settings
            .get(&g, 0)
            .map_err(|source| MapsError::Update {
                name: maps::SETTINGS,
                source,
            })
    }

    /// The generation in force: its slot and settings (`seq` names it).
    pub fn in_force(&self) -> Result<(u32, Settings), MapsError> {
        let g = self.read_u32()? & 1;
        Ok((g, self.read_settings(g)?))
    }

    /// Installs `policy` as a whole and returns its sequence number (the
    /// `policy_seq` its reports carry). It is written into the slot not in
    /// force, under that slot's sequence lock: first `seq` goes odd (a
    /// program that still reads this slot, having picked it before the
    /// previous switch, will see the change and judge again), then the
    /// entries are replaced, then the settings are written with a new even
    /// `seq` (whole with `seq` still odd, then again with it even);
    /// finally one 4-byte write of `LW_GENERATION` switches every
    /// later connect to it. The slot in force is never written, so a
    /// failure at any point leaves the running policy untouched, and the
    /// replaced generation stays intact until the next install reuses its
    /// slot (why that is safe: see the sequence lock in loopwarden_common).
    ///
    /// `host_addrs` is the host-address set of this generation.
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        host_addrs: &[IpAddr],
    ) -> Result<u64, MapsError> {
        check_fits(policy)?;
        let addrs: BTreeMap<Addr, u8> = host_addrs.iter().map(|a| (Addr::from_ip(*a), 1)).collect();
        if addrs.len() > MAX_MAP_ENTRIES as usize {
            return Err(MapsError::TooLarge {
                name: maps::HOST_ADDRS,
                needed: addrs.len(),
                capacity: MAX_MAP_ENTRIES,
            });
        }
        let current = self.read_u32()? & 1;
        let next = current ^ 1;
        let newest = self.read_settings(0)?.seq.max(self.read_settings(1)?.seq);
        // The next even number above every sequence either slot has had.
        let done = (newest | 1) + 1;
        // The slot's settings as they are, with only `seq` made odd: the
        // kernel copies a map value with `memcpy`, whose stores need not
        // become visible in order, so a program still reading this slot
        // could see any other field of this write before `seq`. Unchanged
        // fields read the same either way; zeroed ones (the flags, without
        // `ENABLED`) would let its connect pass unjudged.
        let opening = Settings {
            seq: done - 1,
            ..self.read_settings(next)?
        };
        self.write_settings(next, &opening)?;
        self.clear(next)?;
        self.ports.write(next, &port_words(&policy.ports))?;
        let netns: BTreeMap<u64, u8> = policy.netns.iter().map(|n| (n.cookie, 1)).collect();
        write_generation(&mut self.netns, maps::NETNS, next, &netns)?;
        write_generation(&mut self.host_addrs, maps::HOST_ADDRS, next, &addrs)?;
        write_generation(&mut self.exe, maps::RULES_EXE, next, &policy.exe)?;
        write_generation(
            &mut self.exe_name,
            maps::RULES_EXE_NAME,
            next,
            &policy.exe_name,
        )?;
        write_generation(&mut self.comm, maps::RULES_COMM, next, &policy.comm)?;
        write_generation(&mut self.uid, maps::RULES_UID, next, &policy.uid)?;
        write_generation(&mut self.cgroup, maps::RULES_CGROUP, next, &policy.cgroup)?;
        write_generation(
            &mut self.ancestor,
            maps::RULES_ANCESTOR,
            next,
            &policy.ancestor,
        )?;
        write_generation(&mut self.script, maps::RULES_SCRIPT, next, &policy.script)?;
        let bind = &policy.bind;
        let no_ports = Ports::Some(Box::new([0; PORT_WORDS as usize]));
        self.bind_ports
            .write(next, &port_words(bind.ports.as_ref().unwrap_or(&no_ports)))?;
        let exe: BTreeMap<ExeKey, u8> = bind.exe.keys().map(|&k| (k, 1)).collect();
        write_generation(&mut self.bind_exe, maps::BIND_EXE, next, &exe)?;
        let uid: BTreeMap<u32, u8> = bind.uid.keys().map(|&u| (u, 1)).collect();
        write_generation(&mut self.bind_uid, maps::BIND_UID, next, &uid)?;
        // The browsers' verdicts (compiled for slot 0: every slot's entries
        // are laid out alike).
        self.browser_ports.write(next, &policy.browsers.words)?;
        self.write_egress(next, policy)?;
        // The new settings are written whole with `seq` still odd, then
        // again with it even: were they written once, with `seq` even, a
        // program could see that `seq` before fields written by the same
        // `memcpy` (those after it, or any of them: its stores need not
        // become visible in order), and take a mix of two policies as
        // whole. The second write changes `seq` alone.
        let settings = Settings {
            seq: done - 1,
            exe_filter: filter(policy.exe.keys().map(exe_filter_value)),
            exe_name_filter: filter(policy.exe_name.keys().map(|n| name_prefix(n))),
            egress_exe_filter: filter(policy.egress.exe.keys().map(|k| k.ino)),
            ..policy.settings
        };
        self.write_settings(next, &settings)?;
        self.write_settings(
            next,
            &Settings {
                seq: done,
                ..settings
            },
        )?;
        self.generation
            .set(0, next, 0)
            .map_err(|source| MapsError::Update {
                name: maps::GENERATION,
                source,
            })?;
        Ok(done)
    }

    /// Empties generation `g`'s entries.
    fn clear(&mut self, g: u32) -> Result<(), MapsError> {
        clear_generation(&mut self.netns, maps::NETNS, g)?;
        clear_generation(&mut self.host_addrs, maps::HOST_ADDRS, g)?;
        clear_generation(&mut self.exe, maps::RULES_EXE, g)?;
        clear_generation(&mut self.exe_name, maps::RULES_EXE_NAME, g)?;
        clear_generation(&mut self.comm, maps::RULES_COMM, g)?;
        clear_generation(&mut self.uid, maps::RULES_UID, g)?;
        clear_generation(&mut self.cgroup, maps::RULES_CGROUP, g)?;
        clear_generation(&mut self.ancestor, maps::RULES_ANCESTOR, g)?;
        clear_generation(&mut self.script, maps::RULES_SCRIPT, g)?;
        clear_generation(&mut self.bind_exe, maps::BIND_EXE, g)?;
        clear_generation(&mut self.bind_uid, maps::BIND_UID, g)?;
        clear_generation(&mut self.egress_uid, maps::EGRESS_UID, g)?;
        clear_generation(&mut self.egress_exe, maps::EGRESS_EXE, g)?;
        clear_generation(&mut self.egress_cgroup, maps::EGRESS_CGROUP, g)?;
        self.clear_egress_dst(g)
    }

    /// Writes the egress guard's maps of generation `g`.
    fn write_egress(&mut self, g: u32, policy: &CompiledPolicy) -> Result<(), MapsError> {
        let guard = &policy.egress;
        write_generation(&mut self.egress_uid, maps::EGRESS_UID, g, &guard.uid)?;
        write_generation(&mut self.egress_exe, maps::EGRESS_EXE, g, &guard.exe)?;
        write_generation(
            &mut self.egress_cgroup,
            maps::EGRESS_CGROUP,
            g,
            &guard.cgroup,
        )?;
        for (net, mask) in &guard.prefixes {
            let (len, data) = egress::trie_key(g, net);
            self.egress_dst
                .insert(&Key::new(len, data), mask, 0)
                .map_err(|source| MapsError::Update {
                    name: maps::EGRESS_DST,
                    source,
                })?;
        }
        Ok(())
    }

    /// Removes generation `g`'s prefixes from `LW_EGRESS_DST`.
    fn clear_egress_dst(&mut self, g: u32) -> Result<(), MapsError> {
        let stale: Vec<Key<EgressKey>> = self
            .egress_dst
            .keys()
            .filter_map(Result::ok)
            .filter(|key| u32::from_be(key.data().generation_be) == g)
            .collect();
        for key in stale {
            match self.egress_dst.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(MapsError::Update {
                        name: maps::EGRESS_DST,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn write_settings(&mut self, g: u32, settings: &Settings) -> Result<(), MapsError> {
        self.settings
            .set(g, settings, 0)
            .map_err(|source| MapsError::Update {
                name: maps::SETTINGS,
                source,
            })
    }
}

/// A settings filter with the bit of every value set.
pub fn filter(values: impl Iterator<Item = u64>) -> [u64; FILTER_WORDS] {
    let mut words = [0u64; FILTER_WORDS];
    for v in values {
        let bit = filter_bit(v);
        words[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    words
}

/// Fails, before anything is written, if a map could not hold its share of
/// the policy: an install never stops half-way for lack of room. (The
/// compiler refuses such a policy first, naming the rule; this keeps the
/// maps safe from any other.)
pub fn check_fits(policy: &CompiledPolicy) -> Result<(), MapsError> {
    match policy::first_over(policy) {
        None => Ok(()),
        Some(over) => Err(MapsError::TooLarge {
            name: over.map,
            needed: over.needed,
            capacity: over.max,
        }),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn filters_have_every_value_and_reject_most_others() {
        use loopwarden_common::filter_has;
        let names: Vec<[u8; EXE_NAME_LEN]> = ["cloudflared", "ngrok", "socat", "nc"]
            .iter()
            .map(|n| {
                let mut key = [0u8; EXE_NAME_LEN];
                key[..n.len()].copy_from_slice(n.as_bytes());
                key
            })
            .collect();
        let f = filter(names.iter().map(|n| name_prefix(n)));
        for n in &names {
            assert!(filter_has(&f, filter_bit(name_prefix(n))));
        }
        // What the kernel reads: at most 7 bytes, zero-padded.
        assert_eq!(name_prefix(b"cloudflared"), name_prefix(b"cloudfl\0\0"));
        assert_eq!(
            name_prefix(b"nc\0junk"),
            u64::from_ne_bytes(*b"nc\0\0\0\0\0\0")
        );
        let others = (0..1000u64)
            .filter(|i| filter_has(&f, filter_bit(name_prefix(format!("x{i}").as_bytes()))))
            .count();
        assert!(others < 100, "{others} of 1000 other names pass the filter");
    }

    /// With as many values as the catalog puts in the name filter, few
    /// other names pass it: the name lookups are for the names rules have.
    #[test]
    fn a_catalog_sized_filter_passes_few_other_names() {
        use loopwarden_common::filter_has;
        let f = filter((0..80u64).map(|i| name_prefix(format!("tool{i}").as_bytes())));
        let others = (0..10_000u64)
            .filter(|i| filter_has(&f, filter_bit(name_prefix(format!("c{i}").as_bytes()))))
            .count();
        assert!(
            others < 400,
            "{others} of 10,000 other names pass the filter"
        );
    }
}
