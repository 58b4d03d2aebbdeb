//! Userspace's share of the kernel's relay tracking (`LW_PROCS`,
//! `LW_LISTENERS`): what the tracepoints cannot have seen because it
//! happened before they ran, read from `/proc` at start ([`seed`]);
//! `LW_TRACKED`'s notes ([`notes`]); the entries of processes that are
//! gone ([`reap`]); and listeners whose credited process is gone, credited
//! to the one holding them now ([`Recrediting`]).

pub mod notes;
mod reap;
mod recredit;
mod seed;

pub use self::{
    reap::reap,
    recredit::{Recredit, Recrediting},
    seed::{Seeded, seed},
};
