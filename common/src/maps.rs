//! Map names, shared so userspace never spells one differently.

/// `Array<u32>`, one entry: the generation in force (0 or 1).
pub const GENERATION: &str = "LW_GENERATION";
/// `Array<Settings>`, one entry per generation.
pub const SETTINGS: &str = "LW_SETTINGS";
/// `Array<u64>` of [`super::PORT_WORDS`] per generation: bit `p % 64` of
/// entry `generation * PORT_WORDS + p / 64` set when port `p` is protected.
pub const PORTS: &str = "LW_PORTS";
/// `HashMap<GenKey<u64>, u8>`: network namespace cookies the policy
/// applies in, consulted when [`super::flags::NETNS_SCOPED`] is set.
pub const NETNS: &str = "LW_NETNS";
/// `HashMap<GenKey<Addr>, u8>`: the host's own non-loopback addresses,
/// consulted when [`super::flags::HOST_ADDRS`] is set.
pub const HOST_ADDRS: &str = "LW_HOST_ADDRS";
/// `HashMap<GenKey<ExeKey>, u64>`: rules by executable identity.
pub const RULES_EXE: &str = "LW_RULES_EXE";
/// `HashMap<GenKey<[u8; EXE_NAME_LEN]>, u64>`: rules by executable file name.
pub const RULES_EXE_NAME: &str = "LW_RULES_EXE_NAME";
/// `HashMap<GenKey<[u8; COMM_LEN]>, u64>`: rules by comm.
pub const RULES_COMM: &str = "LW_RULES_COMM";
/// `HashMap<GenKey<u32>, u64>`: rules by uid.
pub const RULES_UID: &str = "LW_RULES_UID";
/// `HashMap<GenKey<u64>, u64>`: rules by cgroup id (the task's cgroup or an ancestor).
pub const RULES_CGROUP: &str = "LW_RULES_CGROUP";
/// `HashMap<GenKey<ExeKey>, AncestorMasks>`: rules by parent/ancestor executable.
pub const RULES_ANCESTOR: &str = "LW_RULES_ANCESTOR";
/// `RingBuf` of [`super::ConnectEvent`]: every report but refusals and
/// would-be refusals.
pub const EVENTS: &str = "LW_EVENTS";
/// `RingBuf` of [`super::ConnectEvent`]: refusals and audit mode's
/// would-be refusals only, so that a flood of other reports can never
/// crowd one out.
pub const DENIALS: &str = "LW_DENIALS";
/// `Array<u64>`, one entry per [`super::verdict`] value, written by
/// userspace only: the `stats::DROPPED_BY_VERDICT` counts a daemon has
/// already reported, so the next reports only what was lost since.
pub const DROPS_REPORTED: &str = "LW_DROPS_REPORTED";
/// `PerCpuArray<u64>` of [`super::stats::COUNT`] counters.
pub const STATS: &str = "LW_STATS";
/// `Array<Meta>`, one entry, written by userspace only: the layout
/// version of the pinned maps and bookkeeping that must survive restarts.
pub const META: &str = "LW_META";
/// `HashMap<GenKey<u64>, u64>`: rules by interpreted script
/// ([`super::script_hash`] of its path).
pub const RULES_SCRIPT: &str = "LW_RULES_SCRIPT";
/// `HashMap<u32, ProcState>`: per process (tgid), what made it
/// network-facing, its catalogued lineage and its script.
pub const PROCS: &str = "LW_PROCS";
/// `Array<[u8; 64]>` of [`super::TRACKED_ENTRIES`]: byte `tgid % 64` of
/// entry `tgid / 64` is [`TRACKED_MAYBE`] while `LW_PROCS` may hold `tgid`
/// (set before an entry is made, cleared after it goes): a connect by a
/// process without one costs a byte load, not a hash lookup. It is
/// [`TRACKED_LOST`] for a process whose state `LW_PROCS`, full, could not
/// take, until the process exits (or executes a program while the policy
/// has no lineage rules).
pub const TRACKED: &str = "LW_TRACKED";
/// [`TRACKED`]'s note: `LW_PROCS` may hold the process.
pub const TRACKED_MAYBE: u8 = 1;
/// [`TRACKED`]'s note: the process had state to keep (evidence, a
/// lineage, a script) and `LW_PROCS` was full: it is judged network-facing
/// ([`super::evidence::UNTRACKED`]), never as a process with nothing known.
pub const TRACKED_LOST: u8 = 2;
/// `LruHashMap<u64, Pending>`: outbound TCP connects to non-local peers
/// by socket cookie, until their handshake completes or fails.
pub const PENDING: &str = "LW_PENDING";
/// `HashMap<ListenerKey, u32>`: the process (tgid) that put each
/// non-loopback socket into LISTEN.
pub const LISTENERS: &str = "LW_LISTENERS";

/// `LruHashMap<u64, ConnEntry>`: protected connects allowed to proceed,
/// by client socket cookie, until the client's handshake completes and
/// the entry moves to [`CONN_SLOTS`] or [`CONNS`] (see [`super::origin`]).
pub const ORIGIN_PENDING: &str = "LW_ORIGIN_PENDING";
/// `Array<OriginSlot>` of [`super::ORIGIN_SLOTS`]: protected connects
/// allowed to proceed, until the client's handshake completes, in slots
/// claimed by socket cookie (see [`super::origin::OriginSlot`]); a connect
/// that finds none free waits in [`ORIGIN_PENDING`].
pub const ORIGIN_SLOTS: &str = "LW_ORIGIN_SLOTS";
/// `Array<ConnSlot>` of [`super::CONN_SLOTS`]: protected connections from
/// the client's handshake to the accepted socket's close, each in one of
/// the slots its addresses hash to (see [`super::origin::ConnSlot`]); what
/// `getsockopt` and the daemon answer from first. Created
/// [`CONN_SLOTS_FLAGS`]: the daemon maps it to give back, by the same
/// compare-and-swap as the kernel's, a slot whose accepted socket's close
/// the kernel did not run the program for.
pub const CONN_SLOTS: &str = "LW_CONN_SLOTS";
/// [`CONN_SLOTS`]' map flags: `BPF_F_MMAPABLE` (Linux 5.5).
pub const CONN_SLOTS_FLAGS: u32 = 1 << 10;
/// `LruHashMap<ConnKey, ConnEntry>`: protected connections by their
/// addresses, from the client's handshake to the accepted socket's close,
/// that found their slots in [`CONN_SLOTS`] taken.
pub const CONNS: &str = "LW_CONNS";
/// `Array<[u8; 64]>` of [`super::CONN_PORT_ENTRIES`]: byte `port % 64` of
/// entry `port / 64` is 1 once a tagged connect went to port `port`
/// (never cleared): a connection to an unmarked port has no origin, which
/// spares every other TCP connection's handshakes and closes a hash
/// lookup each.
pub const CONN_PORTS: &str = "LW_CONN_PORTS";
/// `Array<u64>` of [`super::PORT_WORDS`] per generation, like
/// [`PORTS`]: the ports the bind guard keeps on loopback, consulted
/// when [`super::flags::BIND_GUARD`] is set.
pub const BIND_PORTS: &str = "LW_BIND_PORTS";
/// `HashMap<GenKey<ExeKey>, u8>`: executables the bind guard exempts.
pub const BIND_EXE: &str = "LW_BIND_EXE";
/// `HashMap<GenKey<u32>, u8>`: uids the bind guard exempts.
pub const BIND_UID: &str = "LW_BIND_UID";
/// `Array<u64>` of [`super::BROWSER_PORT_WORDS`] per generation: the
/// [`super::verdict`] a browser-class rule ([`super::Settings::browser`])
/// gets at each port, two bits per port (see [`super::browser_verdict`]).
pub const BROWSER_PORTS: &str = "LW_BROWSER_PORTS";
/// `LpmTrie<EgressKey, u64>`: per generation, each destination prefix
/// of the egress guard with the mask of the egress rules that block it
/// (see [`super::EgressKey`]), consulted when
/// [`super::flags::EGRESS`] is set.
pub const EGRESS_DST: &str = "LW_EGRESS_DST";
/// `HashMap<GenKey<u32>, u64>`: egress rules by uid.
pub const EGRESS_UID: &str = "LW_EGRESS_UID";
/// `HashMap<GenKey<ExeKey>, u64>`: egress rules by executable identity.
pub const EGRESS_EXE: &str = "LW_EGRESS_EXE";
/// `HashMap<GenKey<u64>, u64>`: egress rules by cgroup id (the task's
/// cgroup or an ancestor at [`super::Settings::egress_cgroup_levels`]).
pub const EGRESS_CGROUP: &str = "LW_EGRESS_CGROUP";

/// Every map that is pinned and adopted across daemon restarts.
pub const PINNED: &[&str] = &[
    GENERATION,
    SETTINGS,
    PORTS,
    NETNS,
    HOST_ADDRS,
    RULES_EXE,
    RULES_EXE_NAME,
    RULES_COMM,
    RULES_UID,
    RULES_CGROUP,
    RULES_ANCESTOR,
    EVENTS,
    DENIALS,
    STATS,
    META,
    DROPS_REPORTED,
    RULES_SCRIPT,
    PROCS,
    TRACKED,
    PENDING,
    LISTENERS,
    ORIGIN_PENDING,
    ORIGIN_SLOTS,
    CONN_SLOTS,
    CONNS,
    CONN_PORTS,
    BIND_PORTS,
    BIND_EXE,
    BIND_UID,
    BROWSER_PORTS,
    EGRESS_DST,
    EGRESS_UID,
    EGRESS_EXE,
    EGRESS_CGROUP,
];
