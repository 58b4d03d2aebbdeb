//! Indexes of the `LW_STATS` per-CPU counters.

/// Connects to a protected destination (after port and netns filters).
pub const CHECKED: u32 = 0;
/// Connects refused (by the rules, the relay verdict or the egress guard;
/// the bind guard's refusals are binds).
pub const DENIED: u32 = 1;
/// Events reported through the ring buffer.
pub const REPORTED: u32 = 2;
/// Events lost because their ring buffer was full (all verdicts).
pub const DROPPED: u32 = 3;
/// Judgements started again because the policy slot being read was
/// rewritten meanwhile (see the sequence lock in the crate docs).
pub const RETRIED: u32 = 4;
/// Connects allowed unjudged because every attempt raced a rewrite (only
/// possible if installs come faster than one program run).
pub const RACED: u32 = 5;
/// `DROPPED_BY_VERDICT + v`: events of [`super::verdict`] `v` lost.
pub const DROPPED_BY_VERDICT: u32 = 6;
/// Processes (or listeners) not tracked because `LW_PROCS` (or
/// `LW_LISTENERS`) was full.
pub const UNTRACKED: u32 = DROPPED_BY_VERDICT + super::verdict::COUNT;
/// Connects judged as relayed (the relay verdict decided).
pub const RELAYED: u32 = UNTRACKED + 1;
/// `DECIDED_BY_VERDICT + v`: judged connects whose verdict was
/// [`super::verdict`] `v` (reported or not).
pub const DECIDED_BY_VERDICT: u32 = RELAYED + 1;
pub const COUNT: u32 = DECIDED_BY_VERDICT + super::verdict::COUNT;
