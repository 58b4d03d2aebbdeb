//! `cargo xtask build` and `cargo xtask run`: the daemon binary, built with
//! its embedded eBPF object, and started as root.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::bail;

use crate::{
    proc::{self, say},
    setup,
};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Build the debug profile instead of release.
    #[arg(long)]
    pub debug: bool,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Build and run the debug profile instead of release.
    #[arg(long)]
    pub debug: bool,
    /// Arguments for `loopwarden run`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn build_cmd(args: &BuildArgs) -> anyhow::Result<()> {
    setup::toolchain(false)?;
    let bin = build(!args.debug)?;
    say!("built {}", bin.display());
    println!("{}", bin.display());
    Ok(())
}

/// Builds `loopwarden` and returns the binary's absolute path.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    if proc::target_dir().join(profile).join("loopwarden").exists() {
        say!("building loopwarden ({profile}) ...");
    } else {
        say!(
            "building loopwarden ({profile}) for the first time: the eBPF object (with -Z build-std) \
             and about 120 crates, takes 3-6 minutes ..."
        );
    }
    let mut cmd = proc::cargo();
    cmd.args(["build", "-p", "loopwarden"]);
    if release {
        cmd.arg("--release");
    }
    proc::run(&mut cmd)?;
    Ok(proc::target_dir().join(profile).join("loopwarden"))
}

pub fn run_cmd(args: &RunArgs) -> anyhow::Result<()> {
    setup::toolchain(false)?;
    let bin = build(!args.debug)?;

    let mut cmd = if proc::is_root() {
        Command::new(&bin)
    } else if proc::which("sudo").is_some() {
        say!("not root: running the daemon through `sudo -E`");
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(&bin);
        cmd
    } else {
        bail!(
            "the daemon loads eBPF programs and needs root, and sudo is not installed: rerun as root"
        );
    };
    cmd.arg("run").args(&args.args);
    say!("$ {}", proc::display(&cmd));
    let err = cmd.exec();
    bail!("could not exec {}: {err}", bin.display())
}
