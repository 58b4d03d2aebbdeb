//! btrfs as a module, for the guest: Debian builds btrfs as a module, so on
//! a Debian host the daemon reads btrfs's structure offsets from the
//! module's split BTF (`/sys/kernel/btf/btrfs`, there while it is loaded).
//! The guest loads it, what it depends on and `loop` (for a btrfs image)
//! before the daemon starts, so the test boots the kernels with the
//! programs' btrfs path in place and a btrfs filesystem to run it on; and
//! `inet_diag`/`tcp_diag`, which a Debian host loads on demand (the guest
//! has no modprobe), so the daemon can list and cut connections.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    proc::{self, say},
    setup,
};

/// Size of the guest's btrfs image: mixed block groups let btrfs fit in
/// this little (the default layout needs 114 MiB), and it holds two copies
/// of busybox.
const IMAGE_BYTES: u64 = 32 << 20;

/// An empty btrfs image for the guest (made here: the guest has no
/// btrfs-progs), at `dir/btrfs.img`; installs btrfs-progs if it is missing.
pub(super) fn btrfs_image(dir: &Path) -> anyhow::Result<PathBuf> {
    if proc::which("mkfs.btrfs").is_none() {
        setup::require_root("installing btrfs-progs")?;
        say!("vm-test: installing btrfs-progs (mkfs.btrfs) ...");
        setup::apt_install(&["btrfs-progs"])?;
    }
    let image = dir.join("btrfs.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .with_context(|| format!("cannot create {}", image.display()))?;
    proc::run(
        Command::new("mkfs.btrfs")
            .args(["-q", "--mixed"])
            .arg(&image),
    )?;
    Ok(image)
}

/// Loaded first whatever `depends=` says: libcrc32c's init asks the crypto
/// API for crc32c (a `softdep`), and the guest has no modprobe to load it
/// on demand.
const PRE: &[&str] = &["crc32c_generic"];

/// A module to load: its name and its (uncompressed) object.
pub(super) struct Module {
    pub(super) name: String,
    pub(super) object: Vec<u8>,
}

/// The directories of a kernel package's `lib/modules/<release>/kernel`
/// (tar members) that hold btrfs, what it needs, `loop` and the socket
/// diagnostics.
pub(super) fn members(release: &str) -> Vec<String> {
    [
        "fs/btrfs/",
        "lib/",
        "crypto/",
        "drivers/block/",
        "net/ipv4/",
    ]
    .iter()
    .map(|dir| format!("./lib/modules/{release}/kernel/{dir}"))
    .collect()
}

/// Loaded after btrfs when the package has them as modules (a kernel that
/// builds one in has no file for it).
const OPTIONAL: &[&str] = &["loop", "inet_diag", "tcp_diag"];

/// btrfs, the modules it depends on, and [`OPTIONAL`]'s, from `kernel` (an
/// unpacked `lib/modules/<release>/kernel`), in the order to load them.
pub(super) fn for_guest(kernel: &Path) -> anyhow::Result<Vec<Module>> {
    let files = index(kernel)?;
    let mut order = Vec::new();
    for pre in PRE {
        if files.contains_key(*pre) {
            visit(pre, &files, &mut order, 0)?;
        }
    }
    visit("btrfs", &files, &mut order, 0)?;
    for name in OPTIONAL {
        if files.contains_key(*name) {
            visit(name, &files, &mut order, 0)?;
        }
    }
    Ok(order)
}

/// Adds `name` after what it depends on.
fn visit(
    name: &str,
    files: &HashMap<String, PathBuf>,
    order: &mut Vec<Module>,
    depth: usize,
) -> anyhow::Result<()> {
    if order.iter().any(|m| m.name == name) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies deeper than 16 at {name}: a cycle?");
    }
    let path = files
        .get(name)
        .with_context(|| format!("no module {name} in the kernel package"))?;
    let object = read(path)?;
    for dep in depends(&object) {
        visit(&dep, files, order, depth + 1)?;
    }
    order.push(Module {
        name: name.to_owned(),
        object,
    });
    Ok(())
}

/// The module's `depends=` (its `.modinfo` entry), names normalised.
fn depends(object: &[u8]) -> Vec<String> {
    object
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|name| !name.is_empty())
                .map(normalise)
                .collect()
        })
        .unwrap_or_default()
}

/// Module names use `_` and `-` interchangeably.
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module file under `dir`, by name.
fn index(dir: &Path) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut files = HashMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let stem = [".ko", ".ko.xz", ".ko.zst"]
                .iter()
                .find_map(|ext| file.strip_suffix(ext));
            if let Some(stem) = stem {
                files.insert(normalise(stem), path);
            }
        }
    }
    Ok(files)
}

/// A module's object, decompressed (Debian compresses them with xz since
/// its 6.x kernels).
fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return fs::read(path).with_context(|| format!("cannot read {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("could not start {tool}"))?;
    if !out.status.success() {
        bail!(
            "`{tool} -dc {}` failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let object = b"\x7fELF...\0license=GPL\0softdep=pre: crc32c\0depends=xor,raid6_pq,libcrc32c\0vermagic=6.1\0";
        assert_eq!(depends(object), ["xor", "raid6_pq", "libcrc32c"]);
        assert!(depends(b"\0depends=\0name=xor\0").is_empty());
        assert_eq!(depends(b"\0depends=crc32c-generic\0"), ["crc32c_generic"]);
    }
}
