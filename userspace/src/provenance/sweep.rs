//! Gives back the slots of `LW_CONN_SLOTS` still held for connections
//! whose accepted socket is gone. The kernel skips `lw_sock_state`'s run
//! at a close when it nests in another run of it on the same CPU (README,
//! "Limits"); no connection but one between the same ends would take such
//! a slot over, so over a long uptime they would fill the slots and send
//! every connection to the slower `LW_CONNS`. The map is mappable
//! (`BPF_F_MMAPABLE`), so a slot is given back exactly as the kernel's
//! close gives it back: its owner word swapped to `CONN_RELEASING` by
//! compare-and-swap, its key unnamed, then freed. A slot left marked
//! releasing at two sweeps in a row (a give-back of a daemon killed half
//! way) is freed too.

use std::{
    collections::HashSet,
    ffi::c_void,
    io,
    num::NonZeroUsize,
    path::Path,
    ptr::{self, NonNull},
    sync::atomic::{AtomicU16, AtomicU64, Ordering},
};

use aya::maps::MapData;
use loopwarden_common::{
    maps,
    origin::{CONN_RELEASING, ConnSlot, OriginRecord},
};
use nix::sys::mman::{self, MapFlags, ProtFlags};

use super::live::Liveness;

/// A bound slot as a sweep saw it: its index and owner word (the accepted
/// socket's cookie, which no other socket ever has).
type Sighting = (u32, u64);

/// What the sweeps of `LW_CONN_SLOTS` keep between them.
#[derive(Default)]
pub struct SlotSweep {
    live: Liveness,
    /// The slots the last sweep saw bound: only a slot bound for a whole
    /// sweep period is checked (a short connection's never is).
    bound_before: HashSet<Sighting>,
    /// Those of them it found gone: a slot is given back only when two
    /// sweeps in a row found it so.
    gone_before: HashSet<Sighting>,
    /// The slots the last sweep saw marked `CONN_RELEASING`. A give-back
    /// holds that mark for a few stores; one seen at two sweeps in a row
    /// was left so by a give-back that never finished (a daemon killed in
    /// the middle of its own), and no claim would ever take it again.
    releasing_before: HashSet<u32>,
}

impl SlotSweep {
    /// One sweep of `LW_CONN_SLOTS` pinned in `maps_dir`
    /// (`PinDir::maps_dir`; mapped anew each time, so a map pinned in its
    /// place is the one swept). Each slot that was bound to the same
    /// accepted socket at the sweep before is checked ([`Liveness::gone`]:
    /// sock_diag, in the connection's namespace); one whose socket was
    /// gone then and is now is given back; a slot left marked releasing at
    /// this sweep and the one before is freed.
    pub fn sweep(&mut self, maps_dir: &Path) -> io::Result<Swept> {
        let slots = Mapped::open(&maps_dir.join(maps::CONN_SLOTS))?;
        let bound: Vec<(Sighting, OriginRecord)> = (0..slots.len)
            .map(|i| (i, slots.read(i)))
            .filter(|(_, slot)| slot.is_taken() && slot.entry.record.established_ns != 0)
            // Checked by the owner word, the cookie a give-back compares
            // (the same as the record's for a bound slot, unless the read
            // mixed two writes).
            .map(|(i, slot)| {
                let record = OriginRecord {
                    server_cookie: slot.owner,
                    ..slot.entry.record
                };
                ((i, slot.owner), record)
            })
            .collect();
        let (checked, records): (Vec<Sighting>, Vec<OriginRecord>) = bound
            .iter()
            .filter(|(seen, _)| self.bound_before.contains(seen))
            .copied()
            .unzip();
        let gone: HashSet<Sighting> = checked
            .into_iter()
            .zip(self.live.gone(&records))
            .filter_map(|(seen, gone)| gone.then_some(seen))
            .collect();
        let given_back = gone
            .intersection(&self.gone_before)
            .filter(|&&(i, owner)| slots.give_back(i, owner))
            .count();
        self.bound_before = bound.into_iter().map(|(seen, _)| seen).collect();
        self.gone_before = gone;
        let releasing: HashSet<u32> = (0..slots.len)
            .filter(|&i| slots.owner(i).load(Ordering::Acquire) == CONN_RELEASING)
            .collect();
        // Freed by its owner word alone: a free slot's key is no one's.
        let unstuck = releasing
            .intersection(&self.releasing_before)
            .filter(|&&i| {
                slots
                    .owner(i)
                    .compare_exchange(CONN_RELEASING, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .count();
        self.releasing_before = releasing;
        Ok(Swept {
            given_back,
            unstuck,
        })
    }
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Slots given back, their accepted socket gone.
    pub given_back: usize,
    /// Slots freed that a give-back had left marked releasing.
    pub unstuck: usize,
}

/// A mapping of the whole of a pinned `Array<ConnSlot>` made
/// `BPF_F_MMAPABLE`.
struct Mapped {
    base: NonNull<ConnSlot>,
    /// Its slots.
    len: u32,
    /// Bytes mapped.
    bytes: NonZeroUsize,
}

impl Mapped {
    fn open(path: &Path) -> io::Result<Self> {
        let failed =
            |why: String| io::Error::other(format!("mapping {} failed: {why}", path.display()));
        let map = MapData::from_pin(path).map_err(|e| failed(e.to_string()))?;
        let info = map.info().map_err(|e| failed(e.to_string()))?;
        if info.value_size() as usize != size_of::<ConnSlot>()
            || info.map_flags() & maps::CONN_SLOTS_FLAGS == 0
        {
            return Err(failed(format!(
                "its value is {} bytes (flags {:#x}), this daemon expects {} (flags {:#x})",
                info.value_size(),
                info.map_flags(),
                size_of::<ConnSlot>(),
                maps::CONN_SLOTS_FLAGS
            )));
        }
        let len = info.max_entries();
        // An array's values lie one after the other from the mapping's
        // start (each rounded up to 8 bytes, as a `ConnSlot` is already).
        let bytes =
            (len as usize * size_of::<ConnSlot>()).next_multiple_of(procfs::page_size() as usize);
        let bytes = NonZeroUsize::new(bytes).ok_or_else(|| failed("it has no slots".into()))?;
        // SAFETY: a fresh shared mapping of the map's values, which the
        // kernel keeps alive as long as the mapping is.
        let base = unsafe {
            mman::mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                map.fd(),
                0,
            )
        }
        .map_err(|e| failed(format!("mmap: {e}")))?;
        Ok(Self {
            base: base.cast(),
            len,
            bytes,
        })
    }

    /// Slot `i` (< `len`).
    fn slot(&self, i: u32) -> *mut ConnSlot {
        assert!(i < self.len);
        // SAFETY: within the mapping.
        unsafe { self.base.as_ptr().add(i as usize) }
    }

    /// Slot `i` as it is now (the kernel may be writing it: a copy that
    /// mixes two writes is possible; [`Mapped::give_back`] acts only on the
    /// owner word it was given, by compare-and-swap).
    fn read(&self, i: u32) -> ConnSlot {
        // SAFETY: a mapped slot; any bytes make a `ConnSlot` (integers).
        unsafe { ptr::read_volatile(self.slot(i)) }
    }

    /// Slot `i`'s owner word.
    fn owner(&self, i: u32) -> &AtomicU64 {
        // SAFETY: the owner word is 8-byte aligned (the mapping is
        // page-aligned and a `ConnSlot` a multiple of 8 bytes), lives as
        // long as the mapping, and changes only by atomic operations of
        // the kernel's and these.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(i)).owner) }
    }

    /// Gives slot `i` back if `owner` (an accepted socket's cookie) still
    /// holds it, as the kernel's close does: swapped to `CONN_RELEASING`
    /// (no lookup matches it and no claim takes it meanwhile), its key's
    /// client port made 0 (no connection's), then freed. Whether it was.
    fn give_back(&self, i: u32, owner: u64) -> bool {
        let owner_word = self.owner(i);
        if owner_word
            .compare_exchange(owner, CONN_RELEASING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // SAFETY: the client port is 2-byte aligned within the mapping,
        // and written only by whoever marked the slot releasing.
        let client_port =
            unsafe { AtomicU16::from_ptr(&raw mut (*self.slot(i)).entry.record.conn.client_port) };
        client_port.store(0, Ordering::Relaxed);
        owner_word.store(0, Ordering::Release);
        true
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        let _ = unsafe { mman::munmap(self.base.cast::<c_void>(), self.bytes.get()) };
    }
}
