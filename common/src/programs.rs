//! Names of the kernel programs.

/// What every program's name, and so every link pinned for one, starts
/// with: pins without it are another tool's.
pub const PREFIX: &str = "lw_";
pub const CONNECT4: &str = "lw_connect4";
pub const CONNECT6: &str = "lw_connect6";
/// No-op connect4 program for benchmarks: the cost of measuring.
pub const BASELINE4: &str = "lw_baseline4";
/// `tp_btf/inet_sock_set_state`: listeners, accepted and completed
/// connections with non-local peers.
pub const SOCK_STATE: &str = "lw_sock_state";
/// `tp_btf/tcp_rcv_space_adjust`: TCP data read (or spliced) from
/// non-local peers.
pub const RECEIVE: &str = "lw_receive";
/// `tp_btf/sched_process_fork`: children inherit their parent's state.
pub const FORK: &str = "lw_fork";
/// `tp_btf/sched_process_exec`: a new program starts with a clean state.
pub const EXEC: &str = "lw_exec";
/// `tp_btf/sched_process_exit`: an exited process's state goes.
pub const EXIT: &str = "lw_exit";
/// `cgroup/recvmsg4` and `recvmsg6`: datagrams unconnected UDP
/// sockets receive from non-local peers.
pub const RECVMSG4: &str = "lw_recvmsg4";
pub const RECVMSG6: &str = "lw_recvmsg6";
/// No-op program on [`RECEIVE`]'s tracepoint, for benchmarks.
pub const BASELINE_RECEIVE: &str = "lw_baseline_receive";
/// `cgroup/getsockopt`: answers `SOL_LOOPWARDEN`/`LW_ORIGIN` on an
/// accepted socket with its [`crate::origin::OriginRecord`].
pub const GETSOCKOPT: &str = "lw_getsockopt";
/// No-op `cgroup/getsockopt` program for benchmarks: what any program
/// on that hook costs every getsockopt.
pub const BASELINE_GETSOCKOPT: &str = "lw_baseline_getsockopt";

/// `cgroup/bind4` and `bind6`: the bind guard (keeps the ports of
/// `[bind] loopback_only` on loopback addresses).
pub const BIND4: &str = "lw_bind4";
pub const BIND6: &str = "lw_bind6";
/// The bind guard's programs and their hooks.
pub const BIND_GUARDS: &[(&str, &str)] = &[(BIND4, "cgroup/bind4"), (BIND6, "cgroup/bind6")];

/// The tracking programs in cgroup hooks (attached and pinned like the
/// connect hooks) and the hooks.
pub const CGROUP_TRACKERS: &[(&str, &str)] =
    &[(RECVMSG4, "cgroup/recvmsg4"), (RECVMSG6, "cgroup/recvmsg6")];

/// [`RECEIVE`]'s tracepoint (and its no-op floor's).
pub const RECEIVE_TRACEPOINT: &str = "tcp_rcv_space_adjust";

/// The tracking programs and the kernel tracepoints they attach to.
pub const TRACKERS: &[(&str, &str)] = &[
    (SOCK_STATE, "inet_sock_set_state"),
    (RECEIVE, RECEIVE_TRACEPOINT),
    (FORK, "sched_process_fork"),
    (EXEC, "sched_process_exec"),
    (EXIT, "sched_process_exit"),
];
