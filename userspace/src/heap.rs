//! The daemon's heap: kept small for a long life.

/// Returns freed heap memory to the kernel. glibc keeps freed small
/// allocations resident; after parsing the kernel BTF, or a burst of new
/// flows, that is megabytes the daemon would otherwise hold for its whole
/// life. Costs microseconds on a heap this size.
pub fn release() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}
