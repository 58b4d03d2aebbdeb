//! One reported connect (`LW_EVENTS`).

use crate::{Addr, COMM_LEN, EXE_NAME_LEN, Evidence, ExeKey, SCRIPT_LEN};

impl ConnectEvent {
    /// All zero (no caller, no evidence).
    pub const fn zeroed() -> Self {
        ConnectEvent {
            ktime_ns: 0,
            policy_seq: 0,
            socket_cookie: 0,
            netns_cookie: 0,
            start_boottime_ns: 0,
            cgroup_id: 0,
            exe: ExeKey { dev: 0, ino: 0 },
            daddr: Addr { words: [0; 4] },
            tgid: 0,
            pid: 0,
            ppid: 0,
            uid: 0,
            gid: 0,
            dport: 0,
            family: 0,
            verdict: 0,
            rule: 0,
            forked: 0,
            _pad0: 0,
            _pad1: 0,
            comm: [0; COMM_LEN],
            exe_name: [0; EXE_NAME_LEN],
            via: Evidence::NONE,
            script: [0; SCRIPT_LEN],
        }
    }
}

/// One reported connect, written by the kernel into `LW_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the connect.
    pub ktime_ns: u64,
    /// [`Settings::seq`](crate::Settings::seq) of the policy that judged it: names the rule list
    /// that [`ConnectEvent::rule`] indexes.
    pub policy_seq: u64,
    pub socket_cookie: u64,
    pub netns_cookie: u64,
    /// Start time of the process (thread-group leader), ns since boot
    /// (CLOCK_BOOTTIME): with the pid, it names the process uniquely, so
    /// userspace can tell a recycled pid from the caller.
    pub start_boottime_ns: u64,
    pub cgroup_id: u64,
    pub exe: ExeKey,
    pub daddr: Addr,
    /// Thread-group id (the process id userspace sees).
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// Thread-group id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Destination port, host order.
    pub dport: u16,
    /// AF_INET or AF_INET6: the socket's family (a v6 socket can reach an
    /// IPv4-mapped address).
    pub family: u16,
    /// [`verdict`](crate::verdict) value.
    pub verdict: u8,
    /// Index of the matched rule, or [`NO_RULE`](crate::NO_RULE).
    pub rule: u8,
    /// 1 when the caller's process runs the program its parent ran at the
    /// fork that made it (it has executed nothing since: `PF_FORKNOEXEC` on
    /// its main thread), so its parent's command line and executable speak
    /// for it once it is gone; 0 when it executed a program of its own (or
    /// a program of an earlier build, which wrote no such byte, made the
    /// record).
    pub forked: u8,
    pub _pad0: u8,
    pub _pad1: u32,
    pub comm: [u8; COMM_LEN],
    pub exe_name: [u8; EXE_NAME_LEN],
    /// What made the caller network-facing; kind [`evidence::NONE`](crate::evidence::NONE) if
    /// nothing (or only evidence older than the window).
    pub via: Evidence,
    /// The script an interpreter caller runs (zero: none or unknown).
    pub script: [u8; SCRIPT_LEN],
}
