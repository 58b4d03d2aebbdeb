//! Link flags for the BPF object.
//!
//! bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM unless told
//! otherwise, which turns off LLVM's inline expansion of constant-size
//! `memset`/`memcpy`/`memmove`: every struct or array initialisation or
//! copy the optimiser merges becomes a call to the byte-at-a-time loops
//! bpf-linker links in as BPF subprograms (a 256-byte record copy: about
//! 1,300 instructions and a call). Without it they are expanded into word
//! loads and stores where the alignment allows.

fn main() {
    // The host build (`cargo clippy` on the workspace) links with the
    // system linker, which knows no such flag.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo::rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    }
}
