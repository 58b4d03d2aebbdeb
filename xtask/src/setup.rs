//! `cargo xtask setup`: makes sure the nightly toolchain has `rust-src`, that a
//! working bpf-linker built against the nightly's own LLVM is on PATH, and (with
//! `--tests`) that the packages the integration tests and bench drive are
//! installed. Does nothing that is already done.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::proc::{self, say};

pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The bore-cli the tunnel tests drive (its flags and its control port,
/// 7835): a later release could change either.
const BORE_VERSION: &str = "0.6.0";

/// Debian packages the root integration tests and the bench use.
const TEST_PACKAGES: &[&str] = &[
    "socat",
    "openssh-server",
    "openssh-client",
    "nginx-light",
    // Two more real reverse proxies (relays/kinds.rs).
    "haproxy",
    "caddy",
    "bpftool",
    "iproute2",
    "curl",
    "wget",
    "python3",
    "python3-aiohttp", // contrib/python/examples/aiohttp_gateway.py (client.rs)
    "util-linux",
    "hyperfine",
    "procps",
    // A btrfs image with subvolumes (rules.rs: exe rules on btrfs are
    // refused); modprobe where btrfs is a module.
    "btrfs-progs",
    "kmod",
    // fleet.rs reads the DaemonSet's YAML; dist.rs reads the man pages and
    // verifies the unit offline.
    "python3-yaml",
    "man-db",
    // `systemd-analyze verify` (dist.rs) and `systemd-socket-activate`
    // (relays/inherited.rs).
    "systemd",
    // A real ident client (ident.rs: PostgreSQL's `ident` authentication).
    "postgresql",
    // A real browser (browsers.rs: a page's no-cors POST to an API port).
    "chromium",
    // libFuzzer is built with a C++ compiler (`cargo xtask fuzz`).
    "g++",
];

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

#[derive(clap::Args)]
pub struct SetupArgs {
    /// Also install what the root integration tests and the bench need.
    #[arg(long)]
    pub tests: bool,
    /// Rebuild bpf-linker even if a working one is on PATH.
    #[arg(long)]
    pub force_linker: bool,
}

pub fn run(args: &SetupArgs) -> anyhow::Result<()> {
    toolchain(args.force_linker)?;
    if args.tests {
        test_prerequisites()?;
    }
    say!("setup: everything is in place");
    Ok(())
}

/// What every build needs: nightly + rust-src and bpf-linker.
pub fn toolchain(force_linker: bool) -> anyhow::Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker(force_linker)
}

/// Toolchain plus the test and bench packages.
pub fn test_prerequisites() -> anyhow::Result<()> {
    ensure_packages()?;
    ensure_bore()
}

pub fn ensure_nightly() -> anyhow::Result<()> {
    let list = proc::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to find the nightly toolchain")?;
    // What `+nightly` names: `nightly-<host>`, not a dated one
    // (`nightly-2025-01-01-<host>`), which `+nightly` would not find.
    let has_nightly = list.lines().any(|line| {
        let name = line.split_whitespace().next().unwrap_or("");
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
    });
    if has_nightly {
        return Ok(());
    }
    // The eBPF crate needs nightly (-Z build-std); try to get it, and say
    // plainly what to do if rustup cannot reach its server.
    say!(
        "setup: no nightly toolchain; installing it with rustup (downloads about 100 MB: 1-3 minutes) ..."
    );
    proc::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context(
        "the eBPF crate needs a `nightly` toolchain with rust-src and rustup could not install \
         one: install it (`rustup toolchain install nightly -c rust-src`) and rerun",
    )
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = proc::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    say!("installing rust-src for the nightly toolchain (a download: under a minute) ...");
    proc::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn ensure_bpf_linker(force: bool) -> anyhow::Result<()> {
    if !force {
        // Running it also proves the dynamic loader still finds libLLVM through
        // the rpath; a nightly update or a deleted prefix makes this fail.
        if let Some(version) = proc::probe(Command::new("bpf-linker").arg("--version")) {
            if version
                .split_whitespace()
                .any(|word| word == BPF_LINKER_VERSION)
            {
                return Ok(());
            }
            say!(
                "bpf-linker on PATH is `{}`, want {BPF_LINKER_VERSION}",
                version.trim()
            );
        } else {
            say!("bpf-linker is missing or does not run");
        }
    }

    let sysroot = PathBuf::from(
        proc::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let major = nightly_llvm_major()?;
    let prefix = cargo_home()?.join(format!("loopwarden-llvm-{major}"));
    link_llvm_prefix(&sysroot.join("lib"), &prefix.join("lib"), major)?;

    say!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} (LLVM_PREFIX={}): \
         compiles it and its dependencies, takes 3-6 minutes ...",
        prefix.display()
    );
    proc::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    let version = proc::output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run (is $CARGO_HOME/bin on PATH?)")?;
    say!("bpf-linker ready: {}", version.trim());
    Ok(())
}

/// The LLVM major version the nightly compiler was built with ("LLVM version: 22.1.4" → 22).
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let verbose = proc::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")?;
    let major = version.trim().split('.').next().unwrap_or("");
    major
        .parse()
        .with_context(|| format!("cannot parse LLVM version `{}`", version.trim()))
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// Fills `lib` with symlinks to the nightly's `libLLVM*` files plus the
/// `libLLVM.so` that `-lLLVM` needs. The directory must outlive the install:
/// bpf-linker gets an rpath to it.
fn link_llvm_prefix(sysroot_lib: &Path, lib: &Path, major: u32) -> anyhow::Result<()> {
    say!(
        "linking {} -> the nightly's libLLVM in {}",
        lib.display(),
        sysroot_lib.display()
    );
    fs::create_dir_all(lib).with_context(|| format!("cannot create {}", lib.display()))?;

    // Drop links left by an older nightly, then link the current files.
    for entry in fs::read_dir(lib).with_context(|| format!("cannot read {}", lib.display()))? {
        let path = entry?.path();
        if is_llvm_lib(&path) && path.is_symlink() {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let mut dylib = None;
    let versioned = format!("libLLVM-{major}-");
    for entry in fs::read_dir(sysroot_lib)
        .with_context(|| format!("cannot read {}", sysroot_lib.display()))?
    {
        let target = entry?.path();
        if !is_llvm_lib(&target) {
            continue;
        }
        let name = target.file_name().expect("read_dir entries have names");
        symlink(&target, &lib.join(name))?;
        let name = name.to_string_lossy();
        if name.starts_with(&versioned) && name.ends_with(".so") {
            dylib = Some(target.clone());
        }
    }
    let dylib = dylib.with_context(|| {
        format!(
            "no {versioned}*.so in {}: is this nightly built with a shared LLVM?",
            sysroot_lib.display()
        )
    })?;
    symlink(&dylib, &lib.join("libLLVM.so"))
}

fn is_llvm_lib(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("libLLVM"))
}

fn symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

fn ensure_packages() -> anyhow::Result<()> {
    if proc::which("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: on a non-Debian system install these yourself: {}",
            TEST_PACKAGES.join(" ")
        );
    }
    // One of ours an interrupted run left (its marker line) would stop
    // every later package from starting its service, taken for the host's.
    if PolicyRcD::is_ours() {
        PolicyRcD::remove();
    }
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .copied()
        .filter(|package| !package_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    require_root(&format!("installing {}", missing.join(" ")))?;

    say!(
        "installing test packages with apt-get (1-3 minutes): {} ...",
        missing.join(" ")
    );
    proc::run(proc::apt_get().arg("update"))?;
    // The tests start the servers they drive themselves, in their own
    // namespaces: no package's service (sshd, nginx, postgresql) is started
    // on the host, and without an init system its postinst cannot fail
    // trying. An existing policy-rc.d is the host's own and is left alone.
    let _guard = if Path::new(POLICY_RC_D).exists() {
        None
    } else {
        Some(PolicyRcD::install()?)
    };
    apt_install(&missing)?;
    Ok(())
}

fn package_installed(package: &str) -> bool {
    proc::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

/// Installs Debian packages; never removes any (`--no-remove`): an install
/// that would trade away something already on the machine fails instead.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    with_fresh_lists(|| {
        proc::run(
            proc::apt_get()
                .args(["install", "-y", "--no-remove", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })
}

/// `apt`, and if it fails, once `apt-get update` has run (once per run of
/// xtask), again: an image whose lists were cleaned (`rm -rf
/// /var/lib/apt/lists/*`, as Dockerfiles do) knows no package.
pub fn with_fresh_lists(apt: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    static UPDATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Err(err) = apt() else {
        return Ok(());
    };
    if UPDATED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return Err(err);
    }
    say!("apt failed ({err:#}); running apt-get update and trying again");
    proc::run(proc::apt_get().arg("update"))?;
    apt()
}

/// A temporary `/usr/sbin/policy-rc.d` that denies service starts; removed on drop.
struct PolicyRcD;

/// The line that marks a policy-rc.d as this task's.
const POLICY_RC_D_MARK: &str = "# loopwarden xtask setup: temporary, removed after apt-get";

impl PolicyRcD {
    /// Whether the policy-rc.d there is one this task wrote (an earlier run,
    /// interrupted during apt-get, left it).
    fn is_ours() -> bool {
        fs::read_to_string(POLICY_RC_D).is_ok_and(|text| text.contains(POLICY_RC_D_MARK))
    }

    fn remove() {
        if let Err(err) = fs::remove_file(POLICY_RC_D) {
            say!("warning: could not remove {POLICY_RC_D}: {err}");
        }
    }

    fn install() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        fs::write(
            POLICY_RC_D,
            format!("#!/bin/sh\n{POLICY_RC_D_MARK}\nexit 101\n"),
        )
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod {POLICY_RC_D}"))?;
        Ok(Self)
    }
}

impl Drop for PolicyRcD {
    fn drop(&mut self) {
        Self::remove();
    }
}

fn ensure_bore() -> anyhow::Result<()> {
    // `bore-cli 0.6.0`: another version (one on PATH of its own) is
    // replaced, since the tunnel tests use this one's flags.
    let found = proc::probe(Command::new("bore").arg("--version"));
    if found
        .as_deref()
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(BORE_VERSION))
    {
        return Ok(());
    }
    say!("building bore (crates.io bore-cli {BORE_VERSION}; takes about a minute) ...");
    proc::run(Command::new("cargo").args([
        "install",
        "bore-cli",
        "--locked",
        "--force",
        "--version",
        BORE_VERSION,
    ]))
}

/// Fails with a hint to use sudo unless we are root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if proc::is_root() {
        Ok(())
    } else {
        bail!("{what} needs root: rerun with sudo (e.g. `sudo -E cargo xtask ...`)")
    }
}
