//! Userspace's share of the kernel's relay tracking (`LW_PROCS`,
//! `LW_LISTENERS`): what the tracepoints cannot have seen because it
//! happened before they ran, read from `/proc` once at start ([`seed`]);
//! `LW_TRACKED`'s notes ([`notes`]); and the entries of processes that are
//! gone ([`reap`]).

pub mod notes;
mod reap;
mod seed;

pub use self::{
    reap::reap,
    seed::{Seeded, seed},
};
