//! The `loopwarden` binary's command line: its commands and options
//! (clap), which `main.rs` dispatches; `generate` writes the man pages and
//! completions from these definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use loopwarden::{
    daemon::DEFAULT_RUN_DIR, events::LogFormat, kernel::pins::DEFAULT_PIN_DIR,
    ops::generate::Artifact, policy::Mode, provenance,
};

/// Refuses or reports TCP connections that tunnels and relays (cloudflared,
/// tailscaled, ngrok, frpc, bore, socat, sshd forwarding, ...) make to
/// protected local ports, attributed in the kernel to the process that called
/// connect().
///
/// Local services often trust any peer on 127.0.0.1/::1; a tunnel on the same
/// host turns that trust into a remote bypass. loopwarden decides inside
/// connect(), from the caller's executable, uid, cgroup and ancestry.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true, args_override_self = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: load the policy, attach the kernel programs, and write
    /// one audit line per reported connect to stdout until SIGINT/SIGTERM.
    ///
    /// Without --config, reads /etc/loopwarden/loopwarden.toml, or runs the
    /// embedded default policy (audit mode, every loopback port, built-in
    /// tunnel catalog) when that file does not exist. SIGHUP reloads the file.
    Run {
        /// Policy file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Override the policy's mode: `audit` reports, `enforce` refuses.
        #[arg(long, value_enum)]
        mode: Option<CliMode>,
        /// Audit line format on stdout (and of diagnostics on stderr,
        /// unless --diagnostics-format says otherwise). `json` lines carry
        /// `"v":1` and `"host"`.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
        /// Diagnostics format on stderr; default: as --log-format.
        #[arg(long, value_enum, value_name = "FORMAT")]
        diagnostics_format: Option<LogFormat>,
        /// Reports of one flow (same process, destination, verdict and
        /// rule) within this interval: the first gets its line at once, the
        /// rest one summary line at the end of the interval. `0` writes a
        /// line per report; at most 1h.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = loopwarden::events::report::parse_interval)]
        repeat_interval: std::time::Duration,
        /// Directory for the instance lock (one daemon per directory).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// bpffs directory where the links and maps are pinned (mounted
        /// when bpffs is not).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Replace the pinned programs and maps even if they are compatible.
        #[arg(long, hide = true)]
        replace: bool,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// Stop enforcing: remove the pinned links and maps. The daemon leaves
    /// enforcement in place when it exits (so a restart or upgrade never
    /// opens a gap); this is how to end it. Refuses while a daemon runs.
    Detach {
        /// The run directory of the daemon (its lock must be free).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// The pin directory to empty.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Say whether enforcement is attached and pinned, the policy in force
    /// (mode, sequence number, rules), the kernel's counters, and which
    /// daemon (if any) reports for it. Read from the pins in bpffs, not from
    /// the daemon.
    #[command(
        after_help = "Exit codes: 0 active (attached, pinned, a policy in force: enforce or \
                      audit mode, also when no daemon runs), 3 not enforcing (nothing pinned, \
                      detached, links not attached, or the policy disabled), 4 pins unreadable \
                      or of an incompatible layout."
    )]
    Status {
        /// The pin directory to read.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// The run directory of the daemon (its lock and status.json).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// Check this host: probe the program type, helpers, maps and link
    /// updates the programs need, BTF, the cgroup v2 mount and namespace,
    /// bpffs, capabilities, lockdown, unprivileged BPF and SOCK_DESTROY.
    /// One line per check with what to change; exits 0 when every required
    /// check passes, 1 otherwise.
    Doctor {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// Validate a policy file and print the compiled policy; exits non-zero
    /// on any error (file, line and what is wrong).
    CheckConfig {
        /// Policy file; the default path when omitted.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Check the embedded default policy instead of a file.
        #[arg(long, conflicts_with = "file")]
        default: bool,
        /// Check the file as a running daemon's reload reads it (what the
        /// unit's `ExecReload` runs): a value that does not resolve here
        /// yet (an executable not installed, a user or network namespace
        /// not created) is a warning and matches nothing until it does,
        /// and a file with no settings is an error. Without it, any value
        /// that does not resolve is an error.
        #[arg(long, conflicts_with = "default")]
        as_daemon: bool,
        /// With `--as-daemon`: the run directory of the daemon whose reload
        /// is checked (the namespaces its policy keeps in the scope after
        /// their names went are kept here too, as its reload keeps them;
        /// reading them takes root, without which none is kept).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR, requires = "as_daemon")]
        run_dir: PathBuf,
        /// With `--as-daemon`: that daemon's pin directory.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR, requires = "as_daemon")]
        pin_dir: PathBuf,
        #[command(flatten)]
        host_cgroup: HostCgroup,
    },
    /// List the built-in catalog of tunnels and relays.
    Catalog,
    /// Who is on the other end of a protected connection: the process that
    /// called connect() (pid, user, executable, command line), the verdict
    /// and rule that judged it, and the relay evidence, asked from the
    /// daemon through its query socket.
    ///
    /// PEER is the client's end as the service sees it (getpeername), LOCAL
    /// the service's (getsockname). Without LOCAL, every connection from
    /// PEER (which may then be an address without a port). Connections are
    /// looked up in the caller's network namespace; a user sees only those
    /// whose accepted socket it owns, root in the host's network namespace
    /// all (root in another, its own namespace's).
    #[command(
        after_help = "Exit codes: 0 found, 1 unknown (or none), 2 usage, connection or permission errors."
    )]
    Who {
        /// The client's end: ADDR:PORT, or ADDR without LOCAL.
        #[arg(value_name = "PEER", value_parser = clap::value_parser!(provenance::client::Peer))]
        peer: provenance::client::Peer,
        /// The service's end: ADDR:PORT.
        #[arg(value_name = "LOCAL", value_parser = provenance::client::parse_local)]
        local: Option<std::net::SocketAddr>,
        /// Print JSON: an origin object (`null` when unknown); an array without
        /// LOCAL (`[]` when none).
        #[arg(long)]
        json: bool,
        /// The run directory of the daemon (where query.sock is).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Look in this network namespace (root in the host's network
        /// namespace only, for another than its own): a file such as
        /// /run/netns/NAME or /proc/PID/ns/net, or an inode number.
        #[arg(long, value_name = "PATH_OR_INODE", value_parser = provenance::client::parse_netns)]
        netns: Option<u32>,
    },
    /// List the open protected connections and their origins (for a user,
    /// those whose accepted socket it owns, in its network namespace; for
    /// root in the host's network namespace, all; for root in another, its
    /// own namespace's), asked from the daemon through its query socket.
    #[command(
        after_help = "Exit codes: 0 some listed, 1 none, 2 usage, connection or permission errors."
    )]
    Conns {
        /// Print a JSON array of origins instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this network namespace's (another than the caller's: root
        /// in the host's only): a file such as /run/netns/NAME or
        /// /proc/PID/ns/net, or an inode number.
        #[arg(long, value_name = "PATH_OR_INODE", value_parser = provenance::client::parse_netns)]
        netns: Option<u32>,
        /// The run directory of the daemon (where query.sock is).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// For benchmarks: attach a no-op connect4 program and a no-op tracing
    /// program on lw_receive's tracepoint until SIGINT/SIGTERM, so
    /// `kernel.bpf_stats_enabled` can measure the cost of measuring.
    #[command(hide = true)]
    Baseline,
    /// For packaging (`cargo xtask dist`): write the man pages or the bash,
    /// zsh and fish completions, generated from these definitions, into DIR.
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Artifact,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `--host-cgroup-root`, for the commands that attach to, inspect or
/// resolve names in the cgroup v2 hierarchy.
#[derive(Debug, clap::Args)]
pub(crate) struct HostCgroup {
    /// Where the host's cgroup v2 hierarchy root is mounted, for a
    /// loopwarden in a container whose cgroup namespace is not the host's
    /// (e.g. the host's /sys/fs/cgroup as a hostPath volume at
    /// /host/sys/fs/cgroup). It must be a cgroup2 mount of the hierarchy's
    /// root; without it, a child cgroup namespace is refused.
    #[arg(long, value_name = "PATH", env = "LOOPWARDEN_HOST_CGROUP_ROOT")]
    pub(crate) host_cgroup_root: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum CliMode {
    Audit,
    Enforce,
}

impl From<CliMode> for Mode {
    fn from(m: CliMode) -> Self {
        match m {
            CliMode::Audit => Mode::Audit,
            CliMode::Enforce => Mode::Enforce,
        }
    }
}
