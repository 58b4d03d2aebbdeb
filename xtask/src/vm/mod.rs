//! `cargo xtask vm-test`: boots Debian's stock kernels under QEMU with a tiny
//! busybox initramfs holding the release `loopwarden` binary, and checks that
//! its programs pass the verifier, attach at the cgroup v2 root and refuse a
//! relay's loopback connects there while other processes still get through.
//!
//! Everything comes from apt: `qemu-system-x86` (installed if missing), and
//! `busybox-static` plus the kernel images fetched with `apt-get download` and
//! unpacked into `target/vm/` (nothing else of them is installed). Downloads
//! are cached; the initramfs is rebuilt on every run from the current binary.
//!
//! QEMU's exit status says nothing about the guest: `/init` prints a
//! `LW-VM-RESULT: PASS|FAIL ...` marker on the serial console, which is what
//! this task reads. The full console of each boot is kept in
//! `target/vm/<kernel package>.log`.
//!
//! `debian` fetches QEMU, busybox and the kernels; `initramfs` builds the
//! guest; `boot` runs one kernel and reads its verdict.

mod boot;
mod debian;
mod initramfs;
mod modules;

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};

use crate::{
    daemon,
    proc::{self, say},
    setup,
};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// Debian 12's own kernel series.
    #[value(name = "6.1")]
    V6_1,
    /// The 6.12 series Debian 12 ships through bookworm-security (Debian 13's kernel).
    #[value(name = "6.12")]
    V6_12,
    /// Both, one after the other.
    All,
}

impl KernelChoice {
    fn series(self) -> &'static [&'static str] {
        match self {
            Self::V6_1 => &["6.1"],
            Self::V6_12 => &["6.12"],
            Self::All => &["6.1", "6.12"],
        }
    }
}

#[derive(clap::Args)]
pub struct VmTestArgs {
    /// Which Debian kernel series to boot.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// Test this binary instead of building `cargo build --release -p loopwarden`.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Seconds to wait for each VM before killing it.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Use KVM (`-accel kvm -cpu host`) instead of TCG emulation. (On the
    /// development VM, Debian's kernels crash under its nested KVM: TCG only.)
    #[arg(long)]
    pub kvm: bool,
    /// Echo the guest's serial console as it comes.
    #[arg(long, short)]
    pub verbose: bool,
}

impl Default for VmTestArgs {
    /// Both kernels, the release build, the default timeout, TCG, quiet.
    fn default() -> Self {
        Self {
            kernel: KernelChoice::All,
            binary: None,
            timeout: 300,
            kvm: false,
            verbose: false,
        }
    }
}

/// One booted kernel's outcome.
pub(super) struct Outcome {
    pub(super) kernel: String,
    pub(super) pass: bool,
    pub(super) detail: String,
    pub(super) seconds: f64,
}

pub fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = proc::target_dir().join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => {
            setup::toolchain(false)?;
            daemon::build(true)?
        }
    };
    if !binary.is_file() {
        bail!("{} does not exist", binary.display());
    }
    let guest_bins = initramfs::build_guest_bins()?;
    let qemu = debian::ensure_qemu()?;
    let busybox = debian::ensure_busybox(&dir)?;
    let mut kernels = Vec::new();
    for series in args.kernel.series() {
        kernels.push(debian::ensure_kernel(&dir, series)?);
    }

    let initrd = dir.join("initramfs.cpio.gz");
    say!(
        "vm-test: building {} from {} and {}",
        initrd.display(),
        binary.display(),
        busybox.display()
    );
    let btrfs = if kernels.iter().any(|k| !k.modules.is_empty()) {
        Some(modules::btrfs_image(&dir)?)
    } else {
        None
    };
    initramfs::build_initramfs(
        &binary,
        &guest_bins,
        &busybox,
        &kernels,
        btrfs.as_deref(),
        &initrd,
    )?;

    let mut outcomes = Vec::new();
    for kernel in &kernels {
        if proc::interrupted() {
            anyhow::bail!(
                "interrupted: the kernels from {} on were not booted",
                kernel.package
            );
        }
        outcomes.push(boot::boot(&qemu, kernel, &initrd, &dir, args)?);
    }

    println!();
    println!("{:<36} {:<6} {:>8}  detail", "kernel", "result", "seconds");
    for o in &outcomes {
        println!(
            "{:<36} {:<6} {:>8.1}  {}",
            o.kernel,
            if o.pass { "PASS" } else { "FAIL" },
            o.seconds,
            o.detail
        );
    }
    say!(
        "vm-test: finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let failed = outcomes.iter().filter(|o| !o.pass).count();
    if failed > 0 {
        bail!("{failed} of {} kernel(s) failed", outcomes.len());
    }
    Ok(())
}
