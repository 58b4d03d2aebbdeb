//! Programs that do nothing, for `cargo xtask bench`: attached next to the
//! real programs, their run time under `kernel.bpf_stats_enabled` is the
//! cost of the measurement itself (two clock reads and a counter update per
//! run), which the bench subtracts from the real programs' cost. The daemon
//! never loads them.

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock_addr},
    programs::{BtfTracePointContext, SockAddrContext},
};

#[cgroup_sock_addr(connect4)]
pub fn lw_baseline4(_ctx: SockAddrContext) -> i32 {
    1
}

/// The floor of the tracking programs (tp_btf), on the receive path.
#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn lw_baseline_receive(_ctx: BtfTracePointContext) -> i32 {
    0
}
