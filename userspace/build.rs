//! Builds the kernel programs (`ebpf/`) for the BPF target with the nightly
//! toolchain and bpf-linker; `cargo xtask setup` installs both.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // cargo-fuzz (`cargo xtask fuzz`) builds this library with `--cfg fuzzing`
    // and sanitizer RUSTFLAGS to fuzz its decoders of outside bytes; the
    // kernel programs are input to none of them. Such builds skip the eBPF
    // object, and lib.rs leaves out `loader` and `daemon` under the same cfg,
    // so a fuzz build has no loader that could run without its object.
    // (Building the object there would work: aya-build gives the nested
    // cargo its own CARGO_ENCODED_RUSTFLAGS, which take precedence over the
    // sanitizer flags; but it adds half a minute to every fresh fuzz build,
    // which `cargo xtask test` runs.)
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        return Ok(());
    }
    let ebpf = Package {
        name: "loopwarden-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM)"
        ));
    }
    // The workspace's release profile links the daemon whole-program
    // (`lto`, see Cargo.toml). The kernel object keeps the build it was
    // verified and measured with: bpf-linker links its crates' bitcode
    // itself, and rustc's LTO before it only reshuffles the subprograms.
    // A profile cannot set `lto` per package, so the nested cargo is told.
    // SAFETY: build scripts run single-threaded; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "false") };
    aya_build::build_ebpf([ebpf], Toolchain::Nightly)
        .context("building the eBPF programs failed; `cargo xtask setup` installs the nightly toolchain, rust-src and bpf-linker")
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}
