//! The guest: its `/init` script, its policy, and the newc cpio archive
//! holding them with the loopwarden binary, the test helpers and busybox
//! (the script is `init.sh` and the policy `guest.toml`, beside this file).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::debian::Kernel;
use crate::proc::{self, say};

/// What `/init` runs inside the guest. Ends with `poweroff -f` in every case.
const INIT: &str = include_str!("init.sh");

/// The guest's policy (`/etc/lw.toml`).
const CONFIG: &str = include_str!("guest.toml");

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// The guest's helpers from tests/src/bin: `lw-relay`, the relay that no
/// catalog names, `lw-origin-probe`, which asks getsockopt, and
/// `lw-subvol`, which makes btrfs subvolumes.
const GUEST_BINS: [&str; 3] = ["lw-relay", "lw-origin-probe", "lw-subvol"];

/// Builds [`GUEST_BINS`]; their paths.
pub(super) fn build_guest_bins() -> anyhow::Result<Vec<PathBuf>> {
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

pub(super) fn build_initramfs(
    binary: &Path,
    guest_bins: &[PathBuf],
    busybox: &Path,
    kernels: &[Kernel],
    btrfs_image: Option<&Path>,
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
    cpio.symlink("/relay/nc", "/bin/relay");
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

    // Each kernel's btrfs and loop modules, the order /init loads them in,
    // and the empty btrfs image it mounts.
    for kernel in kernels.iter().filter(|k| !k.modules.is_empty()) {
        let dir = format!("/lib/modules/{}", kernel.release);
        cpio.parents(&format!("{dir}/guest.order"));
        let mut order = String::new();
        for module in &kernel.modules {
            cpio.file(&format!("{dir}/{}.ko", module.name), 0o644, &module.object);
            order.push_str(&module.name);
            order.push('\n');
        }
        cpio.file(&format!("{dir}/guest.order"), 0o644, order.as_bytes());
    }
    if let Some(image) = btrfs_image {
        let bytes = fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
        cpio.file("/btrfs.img", 0o644, &bytes);
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

#[cfg(test)]
mod tests {
    use super::*;

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
