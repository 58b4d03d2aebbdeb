//! loopwarden: refuses or reports TCP connects from tunnels and relays to
//! protected local ports, attributed in the kernel at connect time.
//!
//! Module map: [`config`] parses and validates the TOML policy file,
//! [`catalog`] holds the built-in tunnel rules, [`policy`] compiles a config
//! into map contents through a [`policy::Resolver`] ([`resolve`] is the real
//! one), [`btf`] reads structure offsets from the kernel's BTF, [`compat`]
//! checks the host has what the programs need, [`maps`] is the only code that
//! touches aya map types, [`loader`] loads and attaches the programs,
//! [`events`] turns ring-buffer records into audit lines, and [`daemon`] ties
//! them together.
//!
//! Fuzz builds (`cargo xtask fuzz`, `cfg(fuzzing)`) have no eBPF object
//! (see build.rs) and therefore leave out [`loader`] and [`daemon`].

pub mod btf;
pub mod catalog;
pub mod compat;
pub mod config;
#[cfg(not(fuzzing))]
pub mod daemon;
pub mod events;
#[cfg(not(fuzzing))]
pub mod loader;
pub mod maps;
pub mod policy;
pub mod resolve;
