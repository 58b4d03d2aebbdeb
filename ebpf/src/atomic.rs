//! Atomics on map memory: compare-and-swap (`BPF_ATOMIC | BPF_CMPXCHG`,
//! Linux 5.12+), which the BPF target's `core::sync::atomic` does not
//! offer, an add (`BPF_ATOMIC | BPF_ADD`, the old `BPF_XADD`), and a
//! compiler barrier.

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

/// Adds `n` to the `u64` at `p` in one instruction: nothing that runs
/// between a load and a store (a softirq's program on this CPU, or a
/// program that preempted this one) can lose its own add.
///
/// # Safety
/// `p` is valid and 8-byte aligned (a field of a map value).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn add(p: *mut u64, n: u64) {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
    // SAFETY: as the caller promises. The result is unused, so LLVM emits
    // the add without fetch.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(p, n) };
}

/// The host build (`cargo clippy`) of the same.
///
/// # Safety
/// As above.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn add(p: *mut u64, n: u64) {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
    // SAFETY: as the caller promises.
    unsafe { AtomicU64::from_ptr(p) }.fetch_add(n, Relaxed);
}

/// Keeps the compiler from moving memory accesses across it, so a store
/// written after it as the last of a record is the last: no instruction
/// (the BPF backend selects no fence, `compiler_fence` included, and the
/// readers it guards against check the last store's value).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn barrier() {
    // SAFETY: an empty template; without `nomem` the compiler takes it for
    // any memory access.
    unsafe { core::arch::asm!("", options(nostack, preserves_flags)) };
}

/// The host build (`cargo clippy`) of the same.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub fn barrier() {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}
