//! Userspace's share of the kernel's relay tracking (`LW_PROCS`,
//! `LW_LISTENERS`): what the tracepoints cannot have seen because it
//! happened before they ran, read from `/proc` once at start ([`seed`]);
//! and `LW_TRACKED`'s notes ([`notes`]).

pub mod notes;
mod seed;

pub use self::seed::{Seeded, seed};
