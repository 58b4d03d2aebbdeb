//! loopwarden's kernel programs.
//!
//! `cgroup/connect4` and `cgroup/connect6`, attached at the cgroup v2 root, run
//! synchronously inside every connect() on the host, before any packet is
//! sent. For a TCP connect to a protected destination (a loopback address, or
//! the host's own address when the policy asks) on a protected port, they read
//! the calling task's identity, match it against the policy maps and refuse,
//! report or allow the connect ([`connect`]). The tracking programs keep,
//! per process, the evidence that it faces the network, its lineage and
//! its script, for the relay verdict: socket tracepoints ([`sockets`]),
//! the UDP receive hooks ([`recvmsg`]) and process tracepoints
//! ([`process`]). Provenance ([`origin`]) binds each protected
//! connection's origin to the accepted socket and answers the service's
//! `getsockopt` about it. The bind guard ([`bind`]) keeps the ports the
//! policy names on loopback addresses. The egress guard ([`egress`])
//! keeps the services its rules name from connecting to the destinations
//! they list (cloud metadata, private ranges: SSRF after DNS).
//!
//! # Minimum kernel version
//! 5.18 (`bpf_set_retval` in cgroup programs); 5.8 for the ring buffer.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `atomic_cxchg` (see `atomic`): the BPF target has no atomic compare-and-swap in core.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod addr;
mod atomic;
mod baseline;
mod bind;
mod connect;
mod egress;
mod identity;
mod inherited;
mod maps;
mod names;
mod origin;
mod process;
mod procs;
mod recvmsg;
mod sockets;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves panics unreachable; this only satisfies the linker.
    loop {}
}

/// The kernel requires a GPL-compatible license for `bpf_probe_read_kernel`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// Lets `cargo clippy` on the host check this crate; never run.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
