//! systemd's notification protocol: `READY=1` once attached, `WATCHDOG=1`
//! when `WatchdogSec=` asks this process for it, and the other states, sent
//! to `$NOTIFY_SOCKET` (nothing happens without one).

use std::io;

use tracing::warn;

pub(super) fn notify_systemd_ready() {
    if let Err((path, e)) = notify_systemd(b"READY=1") {
        warn!("notifying systemd at {path} failed: {e}");
    }
}

/// Whether systemd's watchdog expects `WATCHDOG=1` from this process
/// (`WatchdogSec=` sets `WATCHDOG_USEC`, and `WATCHDOG_PID` when it names
/// one process), as `sd_watchdog_enabled` decides.
pub(super) fn systemd_watchdog() -> bool {
    watchdog_enabled(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`systemd_watchdog`] on the variables' values and our pid.
fn watchdog_enabled(usec: Option<&str>, pid: Option<&str>, own: u32) -> bool {
    usec.and_then(|u| u.parse::<u64>().ok())
        .is_some_and(|u| u > 0)
        && pid.is_none_or(|p| p.parse() == Ok(own))
}

/// Sends `state` to systemd's `$NOTIFY_SOCKET`, if set; the error names the
/// socket.
pub(super) fn notify_systemd(state: &[u8]) -> Result<(), (String, io::Error)> {
    use std::os::{linux::net::SocketAddrExt as _, unix::net::UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(&path),
    };
    UnixDatagram::unbound()
        .and_then(|sock| addr.and_then(|addr| sock.send_to_addr(state, &addr)))
        .map(drop)
        .map_err(|e| (path, e))
}

#[cfg(test)]
mod tests {
    use super::watchdog_enabled;

    #[test]
    fn the_watchdog_is_fed_only_when_systemd_asks_this_process() {
        assert!(watchdog_enabled(Some("30000000"), None, 42));
        assert!(watchdog_enabled(Some("30000000"), Some("42"), 42));
        assert!(!watchdog_enabled(Some("30000000"), Some("41"), 42));
        assert!(!watchdog_enabled(Some("0"), None, 42));
        assert!(!watchdog_enabled(Some("soon"), None, 42));
        assert!(!watchdog_enabled(None, None, 42));
    }
}
