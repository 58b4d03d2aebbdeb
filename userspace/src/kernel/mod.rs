//! Everything that talks to the kernel's BPF side: the host checks
//! ([`compat`]), structure offsets from BTF ([`btf`]), loading, attaching and
//! pinning the programs ([`loader`], [`pins`]), and the typed maps ([`maps`]).

pub mod btf;
pub mod compat;
#[cfg(not(fuzzing))]
pub mod loader;
pub mod maps;
pub mod pins;
pub mod sys;
