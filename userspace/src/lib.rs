//! loopwarden: refuses or reports TCP connects from tunnels and relays to
//! protected local ports, attributed in the kernel at connect time.
//!
//! Module map: [`config`] parses and validates the TOML policy file,
//! [`catalog`] holds the built-in tunnel rules, [`policy`] compiles a config
//! into map contents through a [`policy::Resolver`] ([`resolve`] is the real
//! one), [`btf`] reads structure offsets from the kernel's BTF, [`compat`]
//! checks the host has what the programs need, [`maps`] is the only code that
//! touches aya map types, [`loader`] loads and attaches the programs,
//! [`events`] turns ring-buffer records into audit lines, [`cut`] destroys
//! connections a newly enforced policy would have refused, and [`daemon`]
//! ties them together.

pub mod btf;
pub mod catalog;
pub mod compat;
pub mod config;
pub mod cut;
pub mod daemon;
pub mod events;
pub mod loader;
pub mod maps;
pub mod policy;
pub mod resolve;
