//! A connect4 program that does nothing, for `cargo xtask bench`: attached
//! next to the real programs, its run time under `kernel.bpf_stats_enabled`
//! is the cost of the measurement itself (two clock reads and a counter
//! update per run), which the bench subtracts from the real programs' cost.
//! The daemon never loads it.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

#[cgroup_sock_addr(connect4)]
pub fn lw_baseline4(_ctx: SockAddrContext) -> i32 {
    1
}
