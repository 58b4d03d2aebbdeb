//! How lines reach the operator: under systemd, syslog priority prefixes
//! (`<4>`, sd-daemon(3)) on the streams connected to the journal, so
//! `journalctl -p warning` shows refusals and lost reports; and the version
//! and host name every JSON line carries ([`JSON_VERSION`], [`host`]).
//!
//! A stream is the journal's when `$JOURNAL_STREAM` (`DEV:INODE`, set by
//! systemd for `StandardOutput=journal`) names the file it is: checked for
//! stdout and stderr apart, once, at start. Otherwise nothing is prefixed.

use std::{
    ffi::OsStr,
    io::Write as _,
    os::fd::BorrowedFd,
    sync::{Arc, OnceLock},
    time::Duration,
};

use crate::fresh::Fresh;

/// The `"v"` of every JSON line; see the README's field table.
pub const JSON_VERSION: u32 = 1;

/// Syslog priorities (sd-daemon(3) `SD_ERR` ...).
pub mod priority {
    pub const ERR: u8 = 3;
    pub const WARNING: u8 = 4;
    pub const NOTICE: u8 = 5;
    pub const INFO: u8 = 6;
    pub const DEBUG: u8 = 7;
}

/// Which standard streams the journal reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    pub stdout: bool,
    pub stderr: bool,
}

/// The streams connected to the journal (looked at once).
pub fn journal() -> Journal {
    static JOURNAL: OnceLock<Journal> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let var = std::env::var_os("JOURNAL_STREAM");
        let Some(want) = var.as_deref().and_then(parse_stream) else {
            return Journal::default();
        };
        let is = |fd: i32| {
            // SAFETY: 1 and 2 are open for the process's life (or fstat
            // fails, which is fine).
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            fstat(fd) == Some(want)
        };
        Journal {
            stdout: is(1),
            stderr: is(2),
        }
    })
}

/// `DEV:INODE`, both decimal.
fn parse_stream(value: &OsStr) -> Option<(u64, u64)> {
    let (dev, ino) = value.to_str()?.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The device and inode of an open file.
fn fstat(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd as _;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole stat into the buffer we own when it
    // returns 0; it is read only then.
    let stat = unsafe {
        if libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some((stat.st_dev, stat.st_ino))
}

/// The priority of an audit line of `verdict`: refusals and cuts at
/// warning, audits and would-be refusals at notice, the rest at info.
pub fn verdict_priority(verdict: &str) -> u8 {
    match verdict {
        "deny" | super::CUT => priority::WARNING,
        "would-deny" | "audit" => priority::NOTICE,
        _ => priority::INFO,
    }
}

/// Appends `<N>` to `buf` when `journal` says the stream is the journal's.
pub fn write_priority(buf: &mut Vec<u8>, journal: bool, priority: u8) {
    if journal {
        let _ = write!(buf, "<{priority}>");
    }
}

/// How long a host name read is used before it is read again.
const HOST_FRESH: Duration = Duration::from_secs(1);

/// This host's name (`gethostname(2)`), read again once [`HOST_FRESH`] has
/// passed since the last read: a name set after the daemon started (by
/// DHCP, which comes up after it) reaches the lines that follow.
pub fn host() -> Arc<str> {
    static HOST: Fresh<Arc<str>> = Fresh::new(HOST_FRESH);
    HOST.get(|| read_host().into())
}

fn read_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "?".to_owned();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_values() {
        assert_eq!(parse_stream(OsStr::new("8:12345")), Some((8, 12345)));
        assert_eq!(parse_stream(OsStr::new("8-12345")), None);
        assert_eq!(parse_stream(OsStr::new("x:1")), None);
    }

    #[test]
    fn priorities_by_verdict() {
        assert_eq!(verdict_priority("deny"), priority::WARNING);
        assert_eq!(verdict_priority("cut"), priority::WARNING);
        assert_eq!(verdict_priority("would-deny"), priority::NOTICE);
        assert_eq!(verdict_priority("audit"), priority::NOTICE);
        assert_eq!(verdict_priority("allow"), priority::INFO);
        let mut buf = Vec::new();
        write_priority(&mut buf, false, priority::WARNING);
        assert!(buf.is_empty());
        write_priority(&mut buf, true, priority::WARNING);
        assert_eq!(buf, b"<4>");
    }

    #[test]
    fn the_host_name_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(&*host(), kernel.trim());
    }
}
