//! One generation's share of the policy maps: the port bitmaps (written
//! word by word, only where they change) and the keyed maps (written and
//! cleared by generation).

use std::collections::BTreeMap;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData, MapError},
};
use loopwarden_common::{GenKey, PORT_WORDS};

use super::{MapsError, take};
use crate::policy::Ports;

/// A per-generation array of `N` words (`LW_PORTS`, `LW_BIND_PORTS`:
/// bitmaps of [`PORT_WORDS`]; `LW_BROWSER_PORTS`).
pub(super) struct PortBitmap<const N: usize = { PORT_WORDS as usize }> {
    map: Array<MapData, u64>,
    name: &'static str,
    /// What each slot's words hold, once known: an install writes only
    /// the words that change (each is a syscall).
    words: [Option<Box<[u64; N]>>; 2],
}

impl<const N: usize> PortBitmap<N> {
    pub(super) fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, MapsError> {
        Ok(Self {
            map: take(ebpf, name)?,
            name,
            words: [None, None],
        })
    }

    /// Writes slot `g`'s bitmap, only the words that differ from what it
    /// holds (read once, then remembered).
    pub(super) fn write(&mut self, g: u32, want: &[u64; N]) -> Result<(), MapsError> {
        let name = self.name;
        let update = |source| MapsError::Update { name, source };
        let slot = g as usize;
        let base = g * N as u32;
        if self.words[slot].is_none() {
            let mut have = Box::new([0u64; N]);
            for (i, word) in have.iter_mut().enumerate() {
                *word = self.map.get(&(base + i as u32), 0).map_err(update)?;
            }
            self.words[slot] = Some(have);
        }
        let have = self.words[slot].as_mut().expect("filled above");
        for (i, (old, new)) in have.iter_mut().zip(want.iter()).enumerate() {
            if old != new {
                self.map.set(base + i as u32, *new, 0).map_err(update)?;
                *old = *new;
            }
        }
        Ok(())
    }
}

/// The words of a port set: every bit for [`Ports::All`].
pub(super) fn port_words(ports: &Ports) -> Box<[u64; PORT_WORDS as usize]> {
    match ports {
        Ports::All => Box::new([u64::MAX; PORT_WORDS as usize]),
        Ports::Some(words) => words.clone(),
    }
}

/// Writes `want` into `map` under generation `g`.
pub(super) fn write_generation<K, V>(
    map: &mut HashMap<MapData, GenKey<K>, V>,
    name: &'static str,
    g: u32,
    want: &BTreeMap<K, V>,
) -> Result<(), MapsError>
where
    K: Copy,
    GenKey<K>: Pod,
    V: Pod,
{
    for (key, value) in want {
        map.insert(GenKey::new(g, *key), value, 0)
            .map_err(|source| MapsError::Update { name, source })?;
    }
    Ok(())
}

/// Removes every entry of generation `g` from `map`.
pub(super) fn clear_generation<K, V>(
    map: &mut HashMap<MapData, GenKey<K>, V>,
    name: &'static str,
    g: u32,
) -> Result<(), MapsError>
where
    GenKey<K>: Pod,
    V: Pod,
{
    let stale: Vec<GenKey<K>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| key.generation == g)
        .collect();
    for key in stale {
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(MapsError::Update { name, source }),
        }
    }
    Ok(())
}
