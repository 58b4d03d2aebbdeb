//! Compare-and-swap on map memory (`BPF_ATOMIC | BPF_CMPXCHG`, Linux
//! 5.12+), which the BPF target's `core::sync::atomic` does not offer.

/// Replaces the `u64` at `p` with `new` if it holds `old`; whether it did.
/// Fully ordered, as every BPF atomic that returns a value.
///
/// # Safety
/// `p` is valid and 8-byte aligned (a field of a map value).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    use core::intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg};
    // SAFETY: as the caller promises.
    unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1 }
}

/// The host build (`cargo clippy`) of the same.
///
/// # Safety
/// As above.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn cas(p: *mut u64, old: u64, new: u64) -> bool {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    // SAFETY: as the caller promises.
    unsafe { AtomicU64::from_ptr(p) }
        .compare_exchange(old, new, SeqCst, SeqCst)
        .is_ok()
}
