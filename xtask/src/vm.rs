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

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    daemon,
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

const RESULT_MARKER: &str = "LW-VM-RESULT:";

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
struct Outcome {
    kernel: String,
    pass: bool,
    detail: String,
    seconds: f64,
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
    let guest_bins = build_guest_bins()?;
    let qemu = ensure_qemu()?;
    let busybox = ensure_busybox(&dir)?;
    let mut kernels = Vec::new();
    for series in args.kernel.series() {
        kernels.push(ensure_kernel(&dir, series)?);
    }

    let initrd = dir.join("initramfs.cpio.gz");
    say!(
        "vm-test: building {} from {} and {}",
        initrd.display(),
        binary.display(),
        busybox.display()
    );
    build_initramfs(&binary, &guest_bins, &busybox, &initrd)?;

    let mut outcomes = Vec::new();
    for kernel in &kernels {
        outcomes.push(boot(&qemu, kernel, &initrd, &dir, args)?);
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

fn ensure_qemu() -> anyhow::Result<PathBuf> {
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
    let installed = proc::run(Command::new("apt-get").arg("update")).and_then(|()| {
        proc::run(
            Command::new("apt-get")
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
    proc::run(Command::new("apt-get").arg("update")).ok();
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
fn ensure_busybox(dir: &Path) -> anyhow::Result<PathBuf> {
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

struct Kernel {
    /// The Debian package, e.g. `linux-image-6.1.0-56-amd64`.
    package: String,
    vmlinuz: PathBuf,
}

/// The newest `linux-image-<series>...-amd64` apt knows, unpacked (only
/// `/boot`) into `target/vm/kernels/<package>/`.
fn ensure_kernel(dir: &Path, series: &str) -> anyhow::Result<Kernel> {
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
    if find_in(&boot, "vmlinuz-").is_none() {
        say!("vm-test: fetching {package} (only its /boot is unpacked) ...");
        let deb = apt_download(dir, &package)?;
        extract(&deb, &root, &["./boot/"])?;
        fs::remove_file(&deb).ok();
    }
    let vmlinuz =
        find_in(&boot, "vmlinuz-").with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    let config =
        find_in(&boot, "config-").with_context(|| format!("{package} has no /boot/config-*"))?;
    check_config(&config)?;
    Ok(Kernel { package, vmlinuz })
}

fn newest_kernel_package(series: &str) -> anyhow::Result<Option<String>> {
    let list = || {
        proc::output(Command::new("apt-cache").args(["pkgnames", "linux-image-"]))
            .map(|out| kernel_packages(&out, series))
    };
    let mut found = list()?;
    if found.is_empty() && proc::is_root() {
        say!("vm-test: no {series} kernel in the apt lists; running apt-get update");
        proc::run(Command::new("apt-get").arg("update"))?;
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
    proc::run(
        Command::new("apt-get")
            .args(["download", "-q"])
            .arg(package)
            .current_dir(&debs),
    )?;
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

// ---------------------------------------------------------------------------
// Initramfs

/// What `/init` runs inside the guest. Ends with `poweroff -f` in every case.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
ip link set lo up
KREL=$(uname -r)
echo "LW-VM: kernel $KREL, $(nproc) cpu(s), lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"

finish() {
    sync
    poweroff -f
    sleep 5
    reboot -f
}

dump() {
    echo "LW-VM: ---- daemon stderr ----"
    sed 's/^/LW-VM-ERR: /' /tmp/err 2>/dev/null
    echo "LW-VM: ---- daemon stdout (audit) ----"
    sed 's/^/LW-VM-OUT: /' /tmp/audit 2>/dev/null
    echo "LW-VM: ---- end ----"
}

fail() {
    dump
    echo "LW-VM-RESULT: FAIL kernel=$KREL $*"
    finish
}

# fetch URL: prints the page or fails; the error goes to /tmp/fetch.err.
# (busybox 1.35's `wget -T` segfaults: time out with `timeout` instead.)
fetch() { timeout 10 wget -q -O - "$1" 2>/tmp/fetch.err; }
# relay URL: the same through the relay executable (a copy of busybox).
relay() { timeout 10 /relay/wget -q -O - "$1" 2>/tmp/fetch.err; }
socat_fetch() { timeout 10 /socat/wget -q -O - "$1" 2>/tmp/fetch.err; }
egress_fetch() { timeout 10 /egress/wget -q -O - "$1" 2>/tmp/fetch.err; }

V4=http://127.0.0.1:8080/
V6=http://[::1]:8080/
MAPPED=http://[::ffff:127.0.0.1]:8080/

mkdir -p /www
echo lw-ok > /www/index.html
httpd -p 8080 -h /www || fail "httpd did not start"
for url in $V4 $V6 $MAPPED; do
    fetch $url | grep -q lw-ok || fail "before the daemon: $url unreachable: $(cat /tmp/fetch.err)"
    relay $url | grep -q lw-ok || fail "before the daemon: relay to $url failed: $(cat /tmp/fetch.err)"
done
echo "LW-VM: listener up on 8080 (v4, v6, v4-mapped)"

loopwarden run --config /etc/lw.toml --log-format json >/tmp/audit 2>/tmp/err &
LW=$!
i=0
while ! grep -q 'ready:' /tmp/err; do
    kill -0 $LW 2>/dev/null || fail "daemon exited before it was ready"
    i=$((i + 1))
    [ $i -ge 1200 ] && fail "daemon not ready after 120 s"
    sleep 0.1
done
echo "LW-VM: $(grep 'ready:' /tmp/err)"

# Provenance: the accepted socket's getsockopt names its client (8082 is
# protected, 8083 not).
lw-origin-probe 8082 8083 >/tmp/probe 2>&1 || fail "getsockopt origin: $(cat /tmp/probe)"
sed 's/^/LW-VM: origin /' /tmp/probe

for url in $V4 $V6 $MAPPED; do
    if relay $url >/dev/null; then
        fail "relay connect to $url was NOT refused"
    fi
    grep -qi 'refused' /tmp/fetch.err || fail "relay to $url failed, but not with connection refused: $(cat /tmp/fetch.err)"
    echo "LW-VM: relay -> $url refused: $(cat /tmp/fetch.err)"
    fetch $url | grep -q lw-ok || fail "busybox to $url was refused: $(cat /tmp/fetch.err)"
    echo "LW-VM: busybox -> $url allowed"
done
if socat_fetch $V4 >/dev/null; then
    fail "catalog:socat (exe_name socat) connect to $V4 was NOT refused"
fi
echo "LW-VM: socat (catalog exe_name rule) -> $V4 refused"
# Relay detection: lw-relay, named by no rule, listens on a non-loopback
# address (10.0.2.15 on lo: the guest has no other link) and forwards to
# the service; a client of that address is a non-local peer.
ip addr add 10.0.2.15/32 dev lo || fail "adding 10.0.2.15 to lo failed"
lw-relay 10.0.2.15:9100 127.0.0.1:8080 &
RELAYPID=$!
i=0
until netstat -ltn 2>/dev/null | grep -q '10.0.2.15:9100'; do
    i=$((i + 1))
    [ $i -ge 50 ] && fail "lw-relay did not listen"
    sleep 0.1
done
if fetch http://10.0.2.15:9100/ >/dev/null; then
    fail "the relay verdict did not refuse lw-relay (an unnamed forwarder)"
fi
i=0
until grep -q '"rule":"relay".*"exe_name":"lw-relay".*"via":"10.0.2.15:[0-9]*","via_how":"accepted"' /tmp/audit; do
    i=$((i + 1))
    [ $i -ge 50 ] && fail "no relay-verdict deny of lw-relay with accepted evidence"
    sleep 0.1
done
grep '"exe_name":"lw-relay"' /tmp/audit | head -n 1 | sed 's/^/LW-VM: relay verdict: /'
kill $RELAYPID

# The egress guard: lw-egress (a copy of busybox an [[egress]] rule names)
# may not reach a private or the metadata address; busybox itself may.
ip addr add 169.254.169.254/32 dev lo || fail "adding 169.254.169.254 to lo failed"
for url in http://10.0.2.15:8080/ http://169.254.169.254:8080/; do
    if egress_fetch $url >/dev/null; then
        fail "the egress guard let lw-egress reach $url"
    fi
    grep -qi 'refused' /tmp/fetch.err || fail "lw-egress to $url failed, but not with connection refused: $(cat /tmp/fetch.err)"
    fetch $url | grep -q lw-ok || fail "busybox to $url was refused: $(cat /tmp/fetch.err)"
    echo "LW-VM: egress guard: lw-egress -> $url refused, busybox allowed"
done
i=0
until grep -q '"verdict":"deny","rule":"egress:vm-egress","dst":"169.254.169.254:8080"' /tmp/audit; do
    i=$((i + 1))
    [ $i -ge 50 ] && fail "no egress:vm-egress refusal of 169.254.169.254:8080"
    sleep 0.1
done

i=0
while [ "$(grep -c '"verdict":"deny"' /tmp/audit)" -lt 5 ]; do
    i=$((i + 1))
    [ $i -ge 100 ] && fail "expected 5 deny lines in the audit output"
    sleep 0.1
done
grep -q '"rule":"relay-exe"' /tmp/audit || fail "no deny line names the relay-exe rule"
grep -q '"rule":"catalog:socat"' /tmp/audit || fail "no deny line names catalog:socat"
# (`exe` comes from /proc after the fact and is null once wget has exited;
# exe_name is what the kernel read.)
grep -q '"exe_name":"relay"' /tmp/audit || fail "no audit line shows exe_name relay"
grep '"rule":"relay-exe"' /tmp/audit | head -n 1 | sed 's/^/LW-VM: audit: /'
if grep -q '"rule":"netcat"\|"verdict":"deny".*"exe":"/bin/busybox"' /tmp/audit; then
    fail "busybox itself was judged"
fi

# A SIGKILL leaves enforcement pinned; a new daemon adopts it.
kill -9 $LW
wait $LW
relay $V4 >/dev/null && fail "the relay got through after the daemon was killed"
echo "LW-VM: after SIGKILL the pinned programs still refuse the relay"
loopwarden run --config /etc/lw.toml --log-format json >>/tmp/audit 2>>/tmp/err &
LW=$!
i=0
while [ "$(grep -c 'ready:' /tmp/err)" -lt 2 ]; do
    kill -0 $LW 2>/dev/null || fail "the second daemon exited before it was ready"
    i=$((i + 1))
    [ $i -ge 1200 ] && fail "the second daemon was not ready after 120 s"
    sleep 0.1
done
grep -q 'adopted the pinned maps' /tmp/err || fail "the second daemon did not adopt the pinned maps"
relay $V4 >/dev/null && fail "the relay got through after the restart"
echo "LW-VM: a restarted daemon adopted the pinned maps and links"
kill $LW
wait $LW
relay $V4 >/dev/null && fail "the relay got through after SIGTERM"
loopwarden detach || fail "loopwarden detach failed"
i=0
until relay $V4 >/dev/null; do
    i=$((i + 1))
    [ $i -ge 50 ] && fail "relay still refused 5 s after loopwarden detach"
    sleep 0.1
done
echo "LW-VM: after loopwarden detach the relay connects again"
dump
echo "LW-VM-RESULT: PASS kernel=$KREL"
finish
"#;

const CONFIG: &str = r#"mode = "enforce"

[protect]
ports = [8080, 8082]

[relay]
action = "deny"

[[rule]]
name = "relay-exe"
action = "deny"
exe = "/bin/relay"

[[egress]]
name = "vm-egress"
action = "deny"
exe = "/bin/lw-egress"
deny = ["metadata", "private"]
"#;

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The guest's helpers from tests/src/bin: `lw-relay`, the relay that no
/// catalog names, and `lw-origin-probe`, which asks getsockopt.
const GUEST_BINS: [&str; 2] = ["lw-relay", "lw-origin-probe"];

/// Builds [`GUEST_BINS`]; their paths.
fn build_guest_bins() -> anyhow::Result<Vec<PathBuf>> {
    say!("vm-test: building {} ...", GUEST_BINS.join(", "));
    let mut cmd = proc::cargo();
    cmd.args(["build", "--release", "-p", "loopwarden-tests"]);
    for bin in GUEST_BINS {
        cmd.args(["--bin", bin]);
    }
    proc::run(&mut cmd)?;
    Ok(GUEST_BINS
        .iter()
        .map(|bin| proc::target_dir().join("release").join(bin))
        .collect())
}

fn build_initramfs(
    binary: &Path,
    guest_bins: &[PathBuf],
    busybox: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let mut cpio = Cpio::default();
    for dir in [
        "/bin", "/dev", "/etc", "/proc", "/sys", "/run", "/tmp", "/root", "/relay", "/socat",
        "/egress",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for /init before devtmpfs is mounted.
    cpio.char_dev("/dev/console", 0o600, 5, 1);

    let busybox_bytes =
        fs::read(busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    cpio.file("/bin/busybox", 0o755, &busybox_bytes);
    let applets = proc::output(Command::new(busybox).arg("--list"))?;
    for applet in applets.lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" {
            cpio.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    // Separate copies: their own inodes and file names. Applets are picked by
    // argv[0], hence the symlinks named after the applet.
    cpio.file("/bin/relay", 0o755, &busybox_bytes);
    cpio.symlink("/relay/wget", "/bin/relay");
    cpio.file("/bin/socat", 0o755, &busybox_bytes);
    cpio.symlink("/socat/wget", "/bin/socat");
    cpio.file("/bin/lw-egress", 0o755, &busybox_bytes);
    cpio.symlink("/egress/wget", "/bin/lw-egress");

    let bytes = fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    cpio.file("/bin/loopwarden", 0o755, &bytes);
    let mut libs = shared_libraries(binary)?;
    for bin in guest_bins {
        let bytes = fs::read(bin).with_context(|| format!("cannot read {}", bin.display()))?;
        let name = bin.file_name().map(|n| n.to_string_lossy().into_owned());
        cpio.file(&format!("/bin/{}", name.unwrap_or_default()), 0o755, &bytes);
        for lib in shared_libraries(bin)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in libs {
        let bytes = fs::read(&lib).with_context(|| format!("cannot read {}", lib.display()))?;
        let path = lib.to_string_lossy().into_owned();
        cpio.parents(&path);
        cpio.file(&path, 0o755, &bytes);
    }

    cpio.file("/init", 0o755, INIT.as_bytes());
    cpio.file("/etc/lw.toml", 0o644, CONFIG.as_bytes());
    cpio.file("/etc/passwd", 0o644, PASSWD.as_bytes());
    cpio.file("/etc/group", 0o644, GROUP.as_bytes());
    let archive = cpio.finish();

    let file = fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-6", "-n"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("could not start gzip")?;
    gzip.stdin
        .take()
        .context("gzip stdin")?
        .write_all(&archive)
        .context("writing to gzip")?;
    let status = gzip.wait()?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    Ok(())
}

/// The libraries (and dynamic loader) `ldd` says `binary` needs, by the
/// paths it loads them from.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Some(out) = proc::probe(Command::new("ldd").arg(binary)) else {
        // Static binaries make ldd fail: nothing to copy.
        return Ok(Vec::new());
    };
    Ok(ldd_paths(&out))
}

fn ldd_paths(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A newc cpio archive built in memory: no staging directory, no root needed
/// for device nodes or ownership.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    next_ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.next_ino += 1;
        let name = path.trim_start_matches('/');
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(body.len()).expect("initramfs member under 4 GiB"),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn dir(&mut self, path: &str) {
        if self.dirs.insert(path.to_owned()) {
            self.entry(path, 0o040755, (0, 0), &[]);
        }
    }

    /// Creates the missing parent directories of `path`.
    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push('/');
            prefix.push_str(part);
            let dir = prefix.clone();
            self.dir(&dir);
        }
    }

    fn file(&mut self, path: &str, perm: u32, body: &[u8]) {
        self.entry(path, 0o100000 | perm, (0, 0), body);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120777, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, 0o020000 | perm, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

// ---------------------------------------------------------------------------
// Booting

fn boot(
    qemu: &Path,
    kernel: &Kernel,
    initrd: &Path,
    dir: &Path,
    args: &VmTestArgs,
) -> anyhow::Result<Outcome> {
    let log_path = dir.join(format!("{}.log", kernel.package));
    let mut cmd = Command::new(qemu);
    if args.kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
    }
    cmd.args([
        "-m",
        "1024",
        "-smp",
        "1",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    say!("vm-test: booting {} ...", kernel.package);
    say!("$ {}", proc::display(&cmd));

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", qemu.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                if tx
                    .send(line.trim_end_matches(['\r', '\n']).to_owned())
                    .is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);

    let deadline = started + Duration::from_secs(args.timeout);
    let mut log = Vec::new();
    let mut result: Option<String> = None;
    let mut timed_out = false;
    loop {
        // After the marker, give the guest a few seconds to power off.
        let limit = match &result {
            Some(_) => deadline.min(Instant::now() + Duration::from_secs(10)),
            None => deadline,
        };
        let Some(wait) = limit.checked_duration_since(Instant::now()) else {
            timed_out = result.is_none();
            break;
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if args.verbose {
                    eprintln!("  | {line}");
                }
                if let Some(rest) = line.split_once(RESULT_MARKER).map(|(_, rest)| rest) {
                    result.get_or_insert_with(|| rest.trim().to_owned());
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if child.try_wait()?.is_none() {
        child.kill().ok();
    }
    child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    fs::write(&log_path, log.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", log_path.display()))?;

    let guest: Vec<&String> = log.iter().filter(|l| l.contains("LW-VM")).collect();
    let (pass, detail) = match &result {
        Some(rest) => {
            // "PASS kernel=..." or "FAIL kernel=... reason": the word goes to its own column.
            let (word, detail) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
            (word == "PASS", detail.to_owned())
        }
        None if timed_out => (
            false,
            format!("no result marker within {} s (killed)", args.timeout),
        ),
        None => (false, "QEMU exited without a result marker".to_owned()),
    };
    if pass {
        for line in guest.iter().filter(|l| {
            !l.contains("LW-VM-ERR") && !l.contains("LW-VM-OUT") && !l.contains("LW-VM: ----")
        }) {
            say!("  {line}");
        }
        say!(
            "vm-test: {} PASS in {seconds:.1} s (console: {})",
            kernel.package,
            log_path.display()
        );
    } else {
        say!(
            "vm-test: {} FAIL in {seconds:.1} s: {detail}",
            kernel.package
        );
        if guest.is_empty() {
            say!("vm-test: last console lines:");
            for line in log.iter().rev().take(40).rev() {
                eprintln!("  | {line}");
            }
        } else {
            print_guest_lines(&guest);
        }
        say!("vm-test: full console in {}", log_path.display());
    }
    Ok(Outcome {
        kernel: kernel.package.clone(),
        pass,
        detail,
        seconds,
    })
}

/// The guest's report; a long daemon stderr (a verifier log runs to
/// thousands of lines) is cut to its head and tail.
fn print_guest_lines(guest: &[&String]) {
    const HEAD: usize = 30;
    const TAIL: usize = 60;
    let err_total = guest.iter().filter(|l| l.contains("LW-VM-ERR")).count();
    let mut err_seen = 0;
    for line in guest {
        if line.contains("LW-VM-ERR") {
            err_seen += 1;
            if err_total > HEAD + TAIL && err_seen > HEAD && err_seen <= err_total - TAIL {
                if err_seen == HEAD + 1 {
                    eprintln!(
                        "  | ... {} daemon stderr lines left out ...",
                        err_total - HEAD - TAIL
                    );
                }
                continue;
            }
        }
        eprintln!("  | {line}");
    }
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

    #[test]
    fn reads_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007f44c184c000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f44c13e0000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f44c11fe000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f44c184e000)\n";
        assert_eq!(
            ldd_paths(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn cpio_is_newc_with_trailer() {
        let mut cpio = Cpio::default();
        cpio.dir("/bin");
        cpio.file("/bin/x", 0o755, b"abc");
        let data = cpio.finish();
        assert!(data.starts_with(b"070701"));
        assert!(data.len().is_multiple_of(4));
        assert!(data.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
