//! Operating a host: `loopwarden status` ([`status`]) reads what enforces
//! right now from the pins in bpffs (and, for the daemon's side, its run
//! directory); `loopwarden doctor` ([`doctor`]) probes what the host offers
//! the programs and says what to change; the daemon serves Prometheus
//! [`metrics`]; `loopwarden generate` ([`generate`]) renders the man pages
//! and completions the package installs; `check-config` checks the
//! settings read only at start too ([`check`]).

pub mod check;
pub mod doctor;
pub mod generate;
pub mod metrics;
pub mod status;
