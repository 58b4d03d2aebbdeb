//! A throwaway network namespace for the bench, deleted on drop together with
//! anything still running inside it.

use std::process::Command;

use crate::proc::{self, say};

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
