//! A throwaway network namespace for the bench, deleted on drop together with
//! anything still running inside it.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::proc::{self, say};

/// The bench namespace's end of the veth pair (`lwb0`) ...
pub const VETH_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// ... and the peer namespace's (`lwb1`); a /24 only the pair uses.
pub const VETH_PEER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` with loopback up and TIME_WAIT reuse on (the sysctl is
    /// per namespace: the host is untouched).
    pub fn create(name: String) -> anyhow::Result<Self> {
        say!("creating network namespace {name}");
        proc::output(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        proc::output(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]))?;
        proc::output(
            netns
                .exec("sysctl")
                .args(["-q", "-w", "net.ipv4.tcp_tw_reuse=1"]),
        )?;
        Ok(netns)
    }

    /// Joins this namespace to `peer` with a veth pair, `lwb0` here with
    /// [`VETH_LOCAL`], `lwb1` there with [`VETH_PEER`], and waits until both
    /// ends are up. Deleting either namespace deletes the pair.
    pub fn link_veth(&self, peer: &Self) -> anyhow::Result<()> {
        say!("joining {} and {} with a veth pair", self.name, peer.name);
        proc::output(Command::new("ip").args([
            "-n", &self.name, "link", "add", "lwb0", "type", "veth", "peer", "name", "lwb1",
            "netns", &peer.name,
        ]))?;
        for (ns, dev, addr) in [(self, "lwb0", VETH_LOCAL), (peer, "lwb1", VETH_PEER)] {
            let ip =
                |args: &[&str]| proc::output(Command::new("ip").args(["-n", &ns.name]).args(args));
            ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["link", "set", dev, "up"])?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, dev) in [(self, "lwb0"), (peer, "lwb1")] {
            while !proc::output(Command::new("ip").args(["-n", &ns.name, "link", "show", dev]))?
                .contains("LOWER_UP")
            {
                if Instant::now() > deadline {
                    bail!("{dev} in {} did not come up within 10 s", ns.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, as the daemon's config names it.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only our bench processes run in this namespace; don't leave any behind.
        if let Some(pids) = proc::probe(Command::new("ip").args(["netns", "pids", &self.name])) {
            for pid in pids
                .split_whitespace()
                .filter_map(|pid| pid.parse::<i32>().ok())
            {
                // SAFETY: plain kill(2) on a pid `ip netns pids` just listed.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        say!("deleting network namespace {}", self.name);
        if let Err(err) = proc::output(Command::new("ip").args(["netns", "delete", &self.name])) {
            say!("warning: {err:#}");
        }
    }
}
