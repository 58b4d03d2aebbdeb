//! One bench run's fixture: the network namespaces (a veth pair between
//! them), the loopback and peer servers, the scratch directory and the BPF
//! statistics switch, all torn down on drop; and what it runs there: the
//! loads, the daemons under each configuration and the cost rounds.

use std::{
    cell::Cell,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use super::{
    BenchArgs, Config, Sample, Workload, check_interrupted, egress,
    load::{self, Proto, Run, Server, Target},
    netns::{self, Netns},
    stats::{self, StatsEnabled},
    warden::Warden,
};
use crate::proc::say;

/// Everything a bench run sets up, torn down on drop.
pub(super) struct Bench<'a> {
    pub(super) args: &'a BenchArgs,
    pub(super) bin: PathBuf,
    pub(super) xtask: PathBuf,
    // Fields drop in declaration order: scratch dir, listeners, namespaces
    // (with the veth pair), sysctl.
    pub(super) dir: TempDir,
    /// The loopback listeners (the request load's apart), and the outbound
    /// load's in the peer namespace.
    _servers: [Server; 3],
    pub(super) netns: Netns,
    /// The receive loads' senders run here, across the veth pair.
    pub(super) peer: Netns,
    pub(super) stats: StatsEnabled,
}

impl<'a> Bench<'a> {
    pub(super) fn new(args: &'a BenchArgs, bin: PathBuf, xtask: PathBuf) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let stats = StatsEnabled::enable()?;
        let netns = Netns::create(format!("lwbench-{pid}"))?;
        let peer = Netns::create(format!("lwbench-{pid}-peer"))?;
        netns.link_veth(&peer)?;
        let server = Server::start(
            &netns,
            &xtask,
            &[args.protected_port, args.unprotected_port],
            None,
            false,
        )?;
        let responder = Server::start(
            &netns,
            &xtask,
            &[args.request_port, args.request_unprotected_port],
            None,
            true,
        )?;
        // The outbound load's server, across the veth pair.
        let peer_server = Server::start(
            &peer,
            &xtask,
            &[args.unprotected_port],
            Some(netns::VETH_PEER.into()),
            false,
        )?;
        let dir = TempDir::create(std::env::temp_dir().join(format!("lwbench-{pid}")))?;
        Ok(Self {
            args,
            bin,
            xtask,
            dir,
            _servers: [server, responder, peer_server],
            netns,
            peer,
            stats,
        })
    }

    pub(super) fn measure(&self) -> anyhow::Result<Vec<Sample>> {
        let args = self.args;
        let lingering = stats::snapshot(None)?;
        if !lingering.is_empty() {
            say!(
                "warning: lw_* programs are already loaded ({}): `absent` is not really absent",
                lingering.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        self.warm_up(&Workload::ALL)?;

        let per_round: usize = Config::PHASES.iter().map(|c| c.workloads().len()).sum();
        let total = args.rounds as usize * per_round;
        let mut samples = Vec::with_capacity(total);
        for round in 0..args.rounds {
            // Odd rounds run the phases backwards: a host that slows down
            // over a round does not always favour the phases that run first
            // (absent among them).
            let mut phases = Config::PHASES.to_vec();
            if round % 2 == 1 {
                phases.reverse();
            }
            for config in phases {
                check_interrupted()?;
                let warden = self.start_daemon(config, round)?;
                let pid = warden.as_ref().and_then(Warden::pid);
                // Alternate the order so no load always goes first.
                let mut workloads = config.workloads().to_vec();
                if round % 2 == 1 {
                    workloads.reverse();
                }
                for workload in workloads {
                    check_interrupted()?;
                    let sample = self.measure_one(round, config, workload, pid)?;
                    say!(
                        "[{}/{total}] round {} {config:<10} {workload:<11} {:>10.0} {}{}",
                        samples.len() + 1,
                        round + 1,
                        workload.rate(&sample.run),
                        workload.unit(),
                        if sample.run.errors > 0 {
                            format!(" ({} errors)", sample.run.errors)
                        } else {
                            String::new()
                        }
                    );
                    samples.push(sample);
                }
                if let Some(warden) = warden {
                    warden.stop()?;
                }
            }
        }
        Ok(samples)
    }

    /// Runs each of `loads` briefly, unmeasured, before the first window.
    pub(super) fn warm_up(&self, loads: &[Workload]) -> anyhow::Result<()> {
        say!("warming up ...");
        for &load in loads {
            self.run_load(load, self.args.seconds.min(0.5))?;
        }
        Ok(())
    }

    pub(super) fn measure_one(
        &self,
        round: u32,
        config: Config,
        workload: Workload,
        pid: Option<u32>,
    ) -> anyhow::Result<Sample> {
        // The rate without the statistics' clock reads, then the programs'
        // runs counted in a window of their own.
        self.stats.set(false)?;
        let run = self.run_load(workload, self.args.seconds)?;
        self.stats.set(true)?;
        let before = stats::snapshot(pid)?;
        let counted = self.run_load(workload, self.args.stats_seconds)?;
        let after = stats::snapshot(pid)?;
        if run.ops == 0 || counted.ops == 0 {
            bail!("{workload}: no {} succeeded ({config})", workload.op());
        }
        Ok(Sample {
            round,
            config,
            workload,
            run,
            counted,
            progs: stats::delta(&before, &after),
        })
    }

    /// Runs `workload` for `seconds`.
    pub(super) fn run_load(&self, workload: Workload, seconds: f64) -> anyhow::Result<Run> {
        let args = self.args;
        let (netns, xtask) = (&self.netns, self.xtask.as_path());
        let receive = |sender: &Netns, proto: Proto, addr: Ipv4Addr| {
            let listen = SocketAddr::from((addr, args.receive_port));
            load::run_receive(netns, sender, xtask, proto, listen, seconds)
        };
        // The connect loads: port, where, and whether each connection
        // carries a request.
        let client = |port: u16, to: Target, request: bool| {
            load::run_client(netns, xtask, port, to, seconds, request)
        };
        match workload {
            Workload::Protected => client(args.protected_port, Target::Loopback4, false),
            Workload::Unprotected => client(args.unprotected_port, Target::Loopback4, false),
            Workload::Protected6 => client(args.protected_port, Target::Loopback6, false),
            Workload::Request => client(args.request_port, Target::Loopback4, true),
            Workload::Outbound => {
                let to = Target::Addr(netns::VETH_PEER.into());
                client(args.unprotected_port, to, false)
            }
            Workload::ReceiveTcp => receive(&self.peer, Proto::Tcp, netns::VETH_LOCAL),
            Workload::ReceiveUdp => receive(&self.peer, Proto::Udp, netns::VETH_LOCAL),
            Workload::ReceiveLoopback => receive(netns, Proto::Tcp, Ipv4Addr::LOCALHOST),
            Workload::Spawn => load::run_timed(netns, xtask, "bench-spawn", seconds, &[]),
            Workload::SpawnListening => {
                let listen = SocketAddr::from((netns::VETH_LOCAL, 0)).to_string();
                load::run_timed(netns, xtask, "bench-spawn", seconds, &["--listen", &listen])
            }
            Workload::Getsockopt => load::run_timed(netns, xtask, "bench-getsockopt", seconds, &[]),
            Workload::Bind => load::run_timed(netns, xtask, "bench-bind", seconds, &[]),
        }
    }

    pub(super) fn start_daemon(
        &self,
        config: Config,
        round: u32,
    ) -> anyhow::Result<Option<Warden>> {
        self.start_build(&self.bin, "", config, round)
    }

    /// [`Bench::start_daemon`] with the daemon binary `bin`, its files'
    /// names marked with `label` (two builds in one round).
    pub(super) fn start_build(
        &self,
        bin: &Path,
        label: &str,
        config: Config,
        round: u32,
    ) -> anyhow::Result<Option<Warden>> {
        let mode = match config {
            Config::Absent => return Ok(None),
            Config::Baseline => {
                let log = self
                    .dir
                    .path()
                    .join(format!("baseline{label}-{}.log", round + 1));
                return Warden::start_baseline(bin, &log).map(Some);
            }
            Config::Audit
            | Config::Enforce
            | Config::Untagged
            | Config::ReportAll
            | Config::EgressNamed
            | Config::EgressOther => config.to_string(),
        };
        let file = self.dir.path().join(format!("{mode}.toml"));
        fs::write(&file, self.daemon_config(config))
            .with_context(|| format!("cannot write {}", file.display()))?;
        let log = self
            .dir
            .path()
            .join(format!("{mode}{label}-{}.log", round + 1));
        let run_dir = self
            .dir
            .path()
            .join(format!("run-{mode}{label}-{}", round + 1));
        Warden::start(bin, &file, &run_dir, &log).map(Some)
    }

    /// The policy under test, with the catalog on, protecting the connect
    /// loads' protected port and the request load's. Audit and enforce: a
    /// deny rule for another executable, so connects succeed but take the
    /// full identity and matching path, as an ordinary client does under a
    /// real policy. Report-all: an audit rule matching the bench client, so
    /// every protected connect is also reported. The bind guard is on for
    /// the protected port (the bind load binds others). The egress phases
    /// add an `[[egress]]` rule (see [`egress`]).
    pub(super) fn daemon_config(&self, config: Config) -> String {
        let (name, action, exe) = match config {
            Config::ReportAll => ("bench-audit", "audit", self.xtask.as_path()),
            _ => ("bench-deny-other", "deny", Path::new("/usr/bin/socat")),
        };
        let egress = match config {
            Config::EgressNamed => egress::table(&self.xtask),
            Config::EgressOther => egress::table(Path::new("/usr/bin/socat")),
            _ => String::new(),
        };
        let policy = format!(
            "mode = {mode}\n\n[protect]\nports = [{port}, {request_port}]\nnetns = [{netns}]\n\n\
             [provenance]\ntag = {tag}\n\n\
             [bind]\nloopback_only = [{port}]\n\n\
             [[rule]]\nname = {name}\naction = {action}\nexe = {exe}\n",
            mode = toml_str(config.mode()),
            tag = config != Config::Untagged,
            port = self.args.protected_port,
            request_port = self.args.request_port,
            netns = toml_str(&self.netns.path()),
            name = toml_str(name),
            action = toml_str(action),
            exe = toml_str(&exe.to_string_lossy()),
        );
        format!("{policy}\n{egress}")
    }
}

/// A TOML basic string.
pub(super) fn toml_str(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A scratch directory for configs, run dirs and daemon logs; removed on drop
/// unless [`TempDir::keep`] was called (the logs explain failures).
pub(super) struct TempDir {
    path: PathBuf,
    keep: Cell<bool>,
}

impl TempDir {
    pub(super) fn create(path: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            path,
            keep: Cell::new(false),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn keep(&self) {
        self.keep.set(true);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep.get() {
            say!("daemon configs and logs kept in {}", self.path.display());
        } else if let Err(err) = fs::remove_dir_all(&self.path) {
            say!("warning: cannot remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::toml_str;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(toml_str("/run/netns/x"), "\"/run/netns/x\"");
    }
}
