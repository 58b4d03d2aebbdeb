//! What the VM test fetches from apt: QEMU (installed if missing, from
//! backports when the suite's own is too old), busybox and Debian's kernel
//! images (downloaded and unpacked under `target/vm/`, never installed).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::modules::{self, Module};
use crate::{
    proc::{self, say},
    setup,
};

/// Kernel options the test needs built in (`=y`): the initramfs carries no
/// modules, so a `=m` here would need one and is reported instead.
const REQUIRED_CONFIG: &[&str] = &[
    "CONFIG_BPF_SYSCALL",
    "CONFIG_CGROUP_BPF",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_CGROUPS",
    "CONFIG_INET",
    "CONFIG_IPV6",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_DEVTMPFS",
    "CONFIG_SERIAL_8250_CONSOLE",
];

pub(super) fn ensure_qemu() -> anyhow::Result<PathBuf> {
    if let Some(path) = proc::which("qemu-system-x86_64") {
        return Ok(path);
    }
    setup::require_root("installing qemu-system-x86")?;
    say!("vm-test: installing qemu-system-x86 (about a minute) ...");
    if let Err(err) = setup::apt_install(&["qemu-system-x86"]) {
        // apt refuses when the install would remove something: typically a
        // qemu-utils from backports that the distribution's qemu-system-x86
        // does not match. The same backports suite has the matching one.
        let Some(suite) = backports_suite("qemu-utils") else {
            return Err(err.context(
                "installing qemu-system-x86 failed and it would not be solved from backports: \
                 install a qemu-system-x86 matching the installed qemu packages",
            ));
        };
        say!(
            "vm-test: apt would remove packages; installing the matching qemu-system-x86 from {suite}"
        );
        install_from_suite(&suite, "qemu-system-x86")?;
    }
    proc::which("qemu-system-x86_64")
        .context("qemu-system-x86 is installed but qemu-system-x86_64 is not on PATH")
}

/// The backports suite an installed package came from, read from its
/// version (`…~bpo12+1` is bookworm-backports), when that is where it came
/// from.
fn backports_suite(package: &str) -> Option<String> {
    let version = proc::probe(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))?;
    let bpo = version.split("~bpo").nth(1)?;
    let release: u32 = bpo
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let codename = match release {
        11 => "bullseye",
        12 => "bookworm",
        13 => "trixie",
        _ => return None,
    };
    Some(format!("{codename}-backports"))
}

/// Installs `package` from `suite` (never removing anything) through a
/// source list that exists only for the install: the mirror is the one the
/// machine's own Debian sources name.
fn install_from_suite(suite: &str, package: &str) -> anyhow::Result<()> {
    let mirror = debian_mirror().context(
        "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list",
    )?;
    let list = Path::new("/etc/apt/sources.list.d/loopwarden-vm-test.list");
    fs::write(list, format!("deb {mirror} {suite} main\n"))
        .with_context(|| format!("cannot write {}", list.display()))?;
    let installed = proc::run(proc::apt_get().arg("update")).and_then(|()| {
        proc::run(
            proc::apt_get()
                .args([
                    "install",
                    "-y",
                    "--no-remove",
                    "--no-install-recommends",
                    "-t",
                ])
                .arg(suite)
                .arg(package)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    fs::remove_file(list).ok();
    proc::run(proc::apt_get().arg("update")).ok();
    installed.with_context(|| format!("installing {package} from {suite} failed"))
}

/// The first Debian archive URI of the machine's apt sources (deb822
/// `URIs:` or one-line `deb URI suite ...`), not the security archive.
fn debian_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            if entry.path().extension().is_some_and(|e| e == "sources") {
                texts.extend(fs::read_to_string(entry.path()).ok());
            }
        }
    }
    texts.extend(fs::read_to_string("/etc/apt/sources.list").ok());
    texts.iter().flat_map(|t| t.lines()).find_map(|line| {
        let line = line.trim();
        let uri = line
            .strip_prefix("URIs:")
            .and_then(|rest| rest.split_whitespace().next())
            .or_else(|| {
                let mut words = line.strip_prefix("deb ")?.split_whitespace();
                words.find(|w| !w.starts_with('['))
            })?;
        (uri.ends_with("/debian") || uri.ends_with("/debian/")).then(|| uri.to_owned())
    })
}

/// A static busybox unpacked from Debian's `busybox-static` into the cache
/// (the host's own busybox, if any, is left alone).
pub(super) fn ensure_busybox(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("busybox-static");
    let busybox = root.join("bin/busybox");
    if busybox.is_file() {
        return Ok(busybox);
    }
    say!("vm-test: fetching busybox-static ...");
    let deb = apt_download(dir, "busybox-static")?;
    extract(&deb, &root, &["./bin/busybox"])?;
    fs::remove_file(&deb).ok();
    if !busybox.is_file() {
        bail!("{} has no bin/busybox", deb.display());
    }
    Ok(busybox)
}

pub(super) struct Kernel {
    /// The Debian package, e.g. `linux-image-6.1.0-56-amd64`.
    pub(super) package: String,
    pub(super) vmlinuz: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub(super) release: String,
    /// btrfs, what it needs, `loop` and the socket diagnostics, in load
    /// order, when btrfs is a module (see [`super::modules`]); empty when
    /// it is built in or absent.
    pub(super) modules: Vec<Module>,
}

/// The newest `linux-image-<series>...-amd64` apt knows, unpacked (its
/// `/boot`, and btrfs's modules) into `target/vm/kernels/<package>/`.
pub(super) fn ensure_kernel(dir: &Path, series: &str) -> anyhow::Result<Kernel> {
    let kernels = dir.join("kernels");
    let package = match newest_kernel_package(series)? {
        Some(package) => package,
        None => {
            if let Some(cached) = cached_kernel(&kernels, series) {
                say!("vm-test: apt knows no {series} kernel; using the cached {cached}");
                cached
            } else {
                bail!(
                    "apt knows no linux-image-{series}*-amd64 package: run `apt-get update` \
                     (6.12 comes from bookworm-security on Debian 12)"
                );
            }
        }
    };
    let root = kernels.join(&package);
    let boot = root.join("boot");
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let modules_dir = root.join("lib/modules").join(&release).join("kernel");
    // Unpacked by an earlier version of this test, which loaded no
    // modules: only /boot is there (or not the socket diagnostics).
    let stale = find_in(&boot, "config-")
        .is_some_and(|config| config_value(&config, "CONFIG_BTRFS_FS") == "m")
        && !modules_dir.join("net/ipv4").is_dir();
    if find_in(&boot, "vmlinuz-").is_none() || stale {
        say!("vm-test: fetching {package} (its /boot and the guest's modules are unpacked) ...");
        let deb = apt_download(dir, &package)?;
        extract(&deb, &root, &["./boot/"])?;
        let config = find_in(&boot, "config-")
            .with_context(|| format!("{package} has no /boot/config-*"))?;
        if config_value(&config, "CONFIG_BTRFS_FS") == "m" {
            let members = modules::members(&release);
            extract(
                &deb,
                &root,
                &members.iter().map(String::as_str).collect::<Vec<_>>(),
            )?;
        }
        fs::remove_file(&deb).ok();
    }
    let vmlinuz =
        find_in(&boot, "vmlinuz-").with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    let config =
        find_in(&boot, "config-").with_context(|| format!("{package} has no /boot/config-*"))?;
    check_config(&config)?;
    let modules = if config_value(&config, "CONFIG_BTRFS_FS") == "m" {
        modules::for_guest(&modules_dir)?
    } else {
        Vec::new()
    };
    Ok(Kernel {
        package,
        vmlinuz,
        release,
        modules,
    })
}

fn newest_kernel_package(series: &str) -> anyhow::Result<Option<String>> {
    let list = || {
        proc::output(Command::new("apt-cache").args(["pkgnames", "linux-image-"]))
            .map(|out| kernel_packages(&out, series))
    };
    let mut found = list()?;
    if found.is_empty() && proc::is_root() {
        say!("vm-test: no {series} kernel in the apt lists; running apt-get update");
        proc::run(proc::apt_get().arg("update"))?;
        found = list()?;
    }
    // Newest first; skip names apt lists but cannot fetch (virtual or stale).
    for package in found.into_iter().rev() {
        let shown = proc::probe(
            Command::new("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(&package),
        );
        if shown.is_some_and(|text| text.contains("Filename:")) {
            return Ok(Some(package));
        }
    }
    Ok(None)
}

/// The flavourless amd64 image packages of one series from `apt-cache
/// pkgnames` output, oldest first: `linux-image-6.1.0-56-amd64`,
/// `linux-image-6.12.117+deb12-amd64`; not the meta, cloud, rt, dbg or
/// unsigned packages.
fn kernel_packages(pkgnames: &str, series: &str) -> Vec<String> {
    let mut found: Vec<(Vec<u64>, String)> = pkgnames
        .lines()
        .map(str::trim)
        .filter_map(|name| {
            let abi = name.strip_prefix("linux-image-")?.strip_suffix("-amd64")?;
            let rest = abi.strip_prefix(series)?.strip_prefix('.')?;
            // "0-56" (6.1) or "117+deb12" (6.12): digits, then an ABI or a +debNN tag.
            let ok = rest.starts_with(|c: char| c.is_ascii_digit())
                && rest.chars().all(|c| {
                    c.is_ascii_digit() || c == '-' || c == '+' || c == 'd' || c == 'e' || c == 'b'
                })
                && !rest.contains("--");
            ok.then(|| (version_key(abi), name.to_owned()))
        })
        .collect();
    found.sort();
    found.dedup();
    found.into_iter().map(|(_, name)| name).collect()
}

fn version_key(abi: &str) -> Vec<u64> {
    abi.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

/// The newest already unpacked kernel of `series`, for when apt has no lists.
fn cached_kernel(kernels: &Path, series: &str) -> Option<String> {
    let names: Vec<String> = fs::read_dir(kernels)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| find_in(&kernels.join(name).join("boot"), "vmlinuz-").is_some())
        .collect();
    kernel_packages(&names.join("\n"), series).pop()
}

fn find_in(dir: &Path, prefix: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(prefix))
        })
}

/// `apt-get download PACKAGE` into `dir`; returns the .deb.
fn apt_download(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let debs = dir.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    setup::with_fresh_lists(|| {
        proc::run(
            proc::apt_get()
                .args(["download", "-q"])
                .arg(package)
                .current_dir(&debs),
        )
    })?;
    let prefix = format!("{package}_");
    fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                debs.display()
            )
        })
}

/// Unpacks `members` (tar paths, `./boot/` for a directory) of a .deb's data into `root`.
fn extract(deb: &Path, root: &Path, members: &[&str]) -> anyhow::Result<()> {
    fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let line = format!("dpkg-deb --fsys-tarfile {} | tar -x", deb.display());
    say!("$ {line} -C {} {}", root.display(), members.join(" "));
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("could not start dpkg-deb")?;
    let stdout = dpkg.stdout.take().context("dpkg-deb stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(root)
        .args(members)
        .stdin(stdout)
        .status()
        .context("could not start tar")?;
    let dpkg = dpkg.wait()?;
    if !dpkg.success() || !tar.success() {
        bail!("`{line}` failed (dpkg-deb {dpkg}, tar {tar})");
    }
    Ok(())
}

/// `option`'s value in a kernel's `/boot/config-*` (`n` when unset or
/// unreadable).
fn config_value(config: &Path, option: &str) -> String {
    fs::read_to_string(config)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix(option)?.strip_prefix('='))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "n".to_owned())
}

fn check_config(config: &Path) -> anyhow::Result<()> {
    let text =
        fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let value = |option: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(option)?.strip_prefix('='))
            .unwrap_or("n")
    };
    let bad: Vec<String> = REQUIRED_CONFIG
        .iter()
        .filter(|option| value(option) != "y")
        .map(|option| format!("{option}={}", value(option)))
        .collect();
    if !bad.is_empty() {
        bail!(
            "{}: the test needs these built in (the initramfs carries no modules): {}",
            config.display(),
            bad.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_flavourless_amd64_images_of_one_series() {
        let names = "linux-image-6.1.0-47-amd64\nlinux-image-6.1.0-56-amd64\nlinux-image-6.1.0-9-amd64\n\
                     linux-image-6.1.0-56-cloud-amd64\nlinux-image-6.1.0-56-amd64-unsigned\n\
                     linux-image-6.12-amd64\nlinux-image-6.12.117+deb12-amd64\nlinux-image-6.12.9+deb12-amd64\n\
                     linux-image-6.12.117+deb12-rt-amd64\nlinux-image-amd64\nlinux-image-6.12-amd64-dbg\n";
        assert_eq!(
            kernel_packages(names, "6.1"),
            [
                "linux-image-6.1.0-9-amd64",
                "linux-image-6.1.0-47-amd64",
                "linux-image-6.1.0-56-amd64"
            ]
        );
        assert_eq!(
            kernel_packages(names, "6.12"),
            [
                "linux-image-6.12.9+deb12-amd64",
                "linux-image-6.12.117+deb12-amd64"
            ]
        );
    }
}
