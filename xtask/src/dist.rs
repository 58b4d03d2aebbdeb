//! `cargo xtask dist`: the Debian package, built with what a Debian host
//! already has (`dpkg-deb --build --root-owner-group` on a staging tree,
//! `gzip`, `objdump`), no packaging tool to install and no network.
//!
//! The package holds `/usr/sbin/loopwarden`, the commented audit-mode policy
//! `/etc/loopwarden/loopwarden.toml` (a conffile), the hardened unit
//! `/lib/systemd/system/loopwarden.service`, the man pages and the bash, zsh
//! and fish completions (rendered by the binary itself from its clap
//! definitions: `loopwarden generate`), and the copyright file. Its
//! maintainer scripts reload systemd but neither enable nor start the
//! service (an operator starts it deliberately, in audit mode first); purge
//! ends enforcement and removes the configuration.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    daemon,
    proc::{self, say},
    setup,
};

#[derive(clap::Args)]
pub struct DistArgs {
    /// Package this binary instead of building the release one.
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
}

/// Where the binary goes; the unit's ExecStart and ExecReload name it.
const BIN: &str = "usr/sbin/loopwarden";
const CONFIG: &str = "etc/loopwarden/loopwarden.toml";
const UNIT: &str = "lib/systemd/system/loopwarden.service";
const MAN_DIR: &str = "usr/share/man/man8";
const DOC_DIR: &str = "usr/share/doc/loopwarden";
/// What `loopwarden generate completions` writes, and where Debian's shells
/// look for it.
const COMPLETIONS: [(&str, &str); 3] = [
    (
        "loopwarden.bash",
        "usr/share/bash-completion/completions/loopwarden",
    ),
    (
        "_loopwarden",
        "usr/share/zsh/vendor-completions/_loopwarden",
    ),
    (
        "loopwarden.fish",
        "usr/share/fish/vendor_completions.d/loopwarden.fish",
    ),
];

pub fn run(args: &DistArgs) -> anyhow::Result<()> {
    let bin = match &args.binary {
        Some(bin) => bin.clone(),
        None => {
            setup::toolchain(false)?;
            daemon::build(true)?
        }
    };
    let deb = package(&bin)?;
    say!("built {}", deb.display());
    println!("{}", deb.display());
    Ok(())
}

/// Stages the package tree for `bin` under `target/dist/` and builds the
/// `.deb`; returns its path.
pub fn package(bin: &Path) -> anyhow::Result<PathBuf> {
    let version = proc::output(Command::new(bin).arg("--version"))?;
    let version = version
        .trim()
        .strip_prefix("loopwarden ")
        .with_context(|| format!("{} --version printed {version:?}", bin.display()))?
        .to_owned();
    let arch = proc::output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let name = format!("loopwarden_{version}_{arch}");
    let dist = proc::target_dir().join("dist");
    let root = dist.join(&name);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    say!("staging {} ...", root.display());
    let contrib = proc::workspace_root().join("contrib");

    install(&root, BIN, &fs::read(bin)?, 0o755)?;
    proc::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg(root.join(BIN)),
    )?;
    install(
        &root,
        CONFIG,
        &fs::read(contrib.join("loopwarden.toml"))?,
        0o644,
    )?;
    install(
        &root,
        UNIT,
        &fs::read(contrib.join("loopwarden.service"))?,
        0o644,
    )?;
    generated(bin, "man", &root, |file| Ok(format!("{MAN_DIR}/{file}.gz")))?;
    generated(bin, "completions", &root, |file| {
        COMPLETIONS
            .iter()
            .find(|(name, _)| *name == file)
            .map(|(_, dest)| (*dest).to_owned())
            .with_context(|| format!("loopwarden generate completions wrote an unknown {file}"))
    })?;
    install(
        &root,
        &format!("{DOC_DIR}/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;

    let depends = libc_dependency(&root.join(BIN))?;
    let installed_kib = du_kib(&root)?;
    install(
        &root,
        "DEBIAN/control",
        control(&version, &arch, &depends, installed_kib).as_bytes(),
        0o644,
    )?;
    install(
        &root,
        "DEBIAN/conffiles",
        format!("/{CONFIG}\n").as_bytes(),
        0o644,
    )?;
    install(&root, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    install(&root, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    install(&root, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;

    let deb = dist.join(format!("{name}.deb"));
    proc::run(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// Writes `contents` to `root/path` with `mode`, creating directories.
fn install(root: &Path, path: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dest = root.join(path);
    let dir = dest.parent().expect("a path inside the tree");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(&dest, contents).with_context(|| format!("writing {}", dest.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dest.display()))
}

/// Runs `loopwarden generate WHAT` into a scratch directory and installs
/// each file it wrote where `dest` says (a `.gz` destination is compressed,
/// reproducibly: `gzip -9n`).
fn generated(
    bin: &Path,
    what: &str,
    root: &Path,
    dest: impl Fn(&str) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let scratch = root.with_extension(format!("{what}.tmp"));
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    let listed = proc::output(Command::new(bin).arg("generate").arg(what).arg(&scratch))?;
    if listed.trim().is_empty() {
        bail!("loopwarden generate {what} wrote nothing");
    }
    for path in listed.lines().map(Path::new) {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .with_context(|| format!("loopwarden generate {what} printed {}", path.display()))?;
        let dest = dest(file)?;
        let contents = if dest.ends_with(".gz") {
            let mut gzip = Command::new("gzip");
            gzip.args(["-9n", "--stdout"]).arg(path);
            let line = proc::display(&gzip);
            let out = gzip.output().with_context(|| format!("running {line}"))?;
            if !out.status.success() {
                bail!("`{line}` failed ({})", out.status);
            }
            out.stdout
        } else {
            fs::read(path)?
        };
        install(root, &dest, &contents, 0o644)?;
    }
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// `libc6 (>= 2.N)` for the newest `GLIBC_2.N` symbol version `bin` needs
/// (`objdump -T`), what `dpkg-shlibdeps` would derive without a debian/
/// directory to run in.
fn libc_dependency(bin: &Path) -> anyhow::Result<String> {
    let symbols = proc::output(Command::new("objdump").arg("-T").arg(bin))?;
    let newest = glibc_versions(&symbols)
        .max()
        .with_context(|| format!("objdump -T {} names no GLIBC_ version", bin.display()))?;
    Ok(format!("libc6 (>= {}.{})", newest.0, newest.1))
}

/// The `GLIBC_X.Y[.Z]` versions in `objdump -T` output, as (X, Y, Z).
fn glibc_versions(symbols: &str) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
    symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(str::parse::<u32>);
            let (Some(Ok(x)), Some(Ok(y))) = (parts.next(), parts.next()) else {
                return None;
            };
            Some((x, y, parts.next().and_then(Result::ok).unwrap_or(0)))
        })
}

/// The tree's size in KiB, for `Installed-Size`.
fn du_kib(root: &Path) -> anyhow::Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, &mut total).with_context(|| format!("sizing {}", root.display()))?;
    Ok(total)
}

fn control(version: &str, arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: loopwarden
Version: {version}
Architecture: {arch}
Maintainer: loopwarden developers <loopwarden@localhost>
Installed-Size: {installed_kib}
Depends: {depends}
Section: admin
Priority: optional
Description: refuse or report tunnels and relays connecting to local ports
 Many local services trust any TCP peer on 127.0.0.1/::1. Tunnels and
 relays on the same host (cloudflared, tailscale serve, ngrok, frpc, bore,
 socat, sshd port forwarding, ...) connect to them on behalf of remote
 users. loopwarden attributes every TCP connect() to a protected local port
 to the calling process inside the kernel (eBPF, cgroup connect hooks) and
 refuses it (enforce mode) or reports it (audit mode).
 .
 The service is installed but not enabled or started; the shipped policy
 is audit mode. Needs Linux >= 5.18 with BTF and cgroup v2.
"
    )
}

/// Makes systemd see the unit; an upgrade restarts a running daemon (the
/// pinned programs keep enforcing across it). Nothing is enabled or
/// started on a first install.
const POSTINST: &str = r#"#!/bin/sh
# loopwarden postinst: systemd learns of the unit; the service is neither
# enabled nor started here. Start it deliberately, in audit mode first:
#   systemctl enable --now loopwarden && journalctl -u loopwarden -f
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade: the running daemon takes the new binary (enforcement stays
    # pinned while it restarts).
    if [ -n "$2" ]; then
        systemctl try-restart loopwarden.service || true
    fi
fi
exit 0
"#;

/// Stops (and disables) the service when the package is removed; an
/// upgrade leaves it to postinst's restart.
const PRERM: &str = r#"#!/bin/sh
# loopwarden prerm: stopping the daemon stops the reporting; the pinned
# programs keep enforcing until purge (or `loopwarden detach`).
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop loopwarden.service || true
    fi
    if command -v systemctl >/dev/null; then
        systemctl disable loopwarden.service >/dev/null 2>&1 || true
    fi
fi
exit 0
"#;

/// Purge ends enforcement (the pins) and removes the configuration and the
/// run directory.
const POSTRM: &str = r#"#!/bin/sh
# loopwarden postrm: purge ends enforcement and removes /etc/loopwarden.
set -e
PIN_DIR=/sys/fs/bpf/loopwarden
RUN_DIR=/run/loopwarden
case "$1" in
remove)
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    # Removal keeps enforcing (the pins outlive the binary): said, with the
    # way out, since no loopwarden is left to ask.
    if [ -d "$PIN_DIR" ]; then
        echo "loopwarden: removed, but its pinned programs in $PIN_DIR keep enforcing: dpkg --purge loopwarden (or rm -rf $PIN_DIR) ends that" >&2
    fi
    ;;
purge)
    if command -v loopwarden >/dev/null; then
        # Another loopwarden binary (e.g. one built from source) detaches,
        # refusing while a daemon runs.
        loopwarden detach --pin-dir "$PIN_DIR" --run-dir "$RUN_DIR" ||
            echo "loopwarden: purge: detach failed; enforcement stays pinned in $PIN_DIR" >&2
    elif [ -d "$PIN_DIR" ]; then
        # The binary is gone with the package: unpinning the links detaches
        # the programs, unpinning the maps frees them. Not while a daemon
        # started by hand holds the pin directory's lock.
        if flock -n "$PIN_DIR" rm -rf "$PIN_DIR"; then
            echo "loopwarden: purge: removed the pins in $PIN_DIR: loopwarden no longer enforces"
        else
            echo "loopwarden: purge: a daemon holds $PIN_DIR; enforcement stays pinned (stop it, then rm -rf $PIN_DIR)" >&2
        fi
    fi
    rm -rf "$RUN_DIR" /etc/loopwarden
    ;;
esac
exit 0
"#;

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: loopwarden

Files: *
Copyright: the loopwarden authors
License: MIT or Apache-2.0

License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a
 copy of this software and associated documentation files (the \"Software\"),
 to deal in the Software without restriction, including without limitation
 the rights to use, copy, modify, merge, publish, distribute, sublicense,
 and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included
 in all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS
 OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN
 NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
 OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
 USE OR OTHER DEALINGS IN THE SOFTWARE.
";

#[cfg(test)]
mod tests {
    use super::glibc_versions;

    #[test]
    fn glibc_versions_are_read_from_objdump() {
        let symbols =
            "0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main
0000000000000000      DF *UND*  0000000000000000  GLIBC_2.2.5 free
0000000000000000      DF *UND*  0000000000000000 (GLIBC_PRIVATE) x
";
        let found: Vec<_> = glibc_versions(symbols).collect();
        assert_eq!(found, [(2, 34, 0), (2, 2, 5)]);
        assert_eq!(found.into_iter().max(), Some((2, 34, 0)));
    }
}
