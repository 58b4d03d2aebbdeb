//! What the kernel did with a connect, in [`crate::ConnectEvent::verdict`].

/// Allowed; reported only with `LOG_ALLOWED`.
pub const ALLOW: u8 = 0;
/// Allowed and reported by an `audit` rule.
pub const AUDIT: u8 = 1;
/// A `deny` rule matched in audit mode: allowed, reported.
pub const WOULD_DENY: u8 = 2;
/// Refused.
pub const DENY: u8 = 3;
/// How many verdicts there are (they are `0..COUNT`).
pub const COUNT: u32 = 4;
