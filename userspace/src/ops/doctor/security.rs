//! The security settings that bear on loopwarden: kernel lockdown (read
//! from securityfs, mounted for the read if it must be), unprivileged BPF,
//! and `route_localnet` (loopback addresses routed from a network).

use std::{
    ffi::CString,
    fs,
    io::{self, ErrorKind},
    path::Path,
};

use super::Check;
use crate::kernel::mountinfo;

const SECURITYFS: &str = "/sys/kernel/security";

pub(super) fn lockdown() -> Check {
    const NAME: &str = "lockdown";
    let file = Path::new(SECURITYFS).join("lockdown");
    let text = match read_lockdown(&file) {
        Ok(Some(text)) => text,
        Ok(None) => return Check::ok(NAME, false, "no lockdown LSM in this kernel"),
        Err(e) => {
            return Check::bad(
                NAME,
                false,
                format!("not read: {e}"),
                "mount -t securityfs securityfs /sys/kernel/security and run doctor again",
            );
        }
    };
    // "none [integrity] confidentiality": the bracketed one is in force.
    let mode = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("?")
        .to_owned();
    match mode.as_str() {
        "confidentiality" => Check::bad(
            NAME,
            false,
            "confidentiality: bpf_probe_read_kernel is refused (see helpers)",
            "boot with lockdown=integrity or without lockdown",
        ),
        _ => Check::ok(NAME, false, format!("{mode}: kernel reads allowed")),
    }
}

/// The lockdown file's text; `None` when the kernel has no lockdown LSM.
/// Mounts securityfs when it is not mounted, and unmounts it afterwards.
pub(super) fn read_lockdown(file: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(file) {
        Ok(text) => return Ok(Some(text)),
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if securityfs_mounted() {
        return Ok(None);
    }
    let c = |s: &str| CString::new(s).expect("no NUL in constants");
    let (source, target) = (c("securityfs"), c(SECURITYFS));
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let text = match fs::read_to_string(file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    // SAFETY: as above.
    unsafe { libc::umount2(target.as_ptr(), 0) };
    text
}

pub(super) fn securityfs_mounted() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        mountinfo::mounts(&info)
            .any(|m| m.mount_point == Path::new(SECURITYFS) && m.fs_type == "securityfs")
    })
}

pub(super) fn unprivileged_bpf() -> Check {
    const NAME: &str = "unprivileged bpf";
    match fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled") {
        Ok(v) if v.trim() == "0" => Check::bad(
            NAME,
            false,
            "kernel.unprivileged_bpf_disabled=0: any user may load BPF programs",
            "sysctl -w kernel.unprivileged_bpf_disabled=2 (loopwarden runs as root and needs no unprivileged BPF)",
        ),
        Ok(v) => Check::ok(
            NAME,
            false,
            format!("kernel.unprivileged_bpf_disabled={}", v.trim()),
        ),
        Err(e) => Check::ok(NAME, false, format!("sysctl not present ({e})")),
    }
}

/// `net.ipv4.conf.<interface>.route_localnet`: where it is set (on an
/// interface, or on `all`), hosts on that network can reach ports bound to
/// 127.0.0.0/8, so loopback is no boundary there (kube-proxy sets it).
/// Read in the caller's network namespace.
pub(super) fn route_localnet() -> Check {
    const NAME: &str = "route_localnet";
    let conf = Path::new("/proc/sys/net/ipv4/conf");
    let entries = match fs::read_dir(conf) {
        Ok(entries) => entries,
        Err(e) => return Check::ok(NAME, false, format!("{} not read ({e})", conf.display())),
    };
    let set = localnet_set(entries.flatten().filter_map(|entry| {
        let value = fs::read_to_string(entry.path().join("route_localnet")).ok()?;
        Some((entry.file_name().to_string_lossy().into_owned(), value))
    }));
    if set.is_empty() {
        return Check::ok(
            NAME,
            false,
            "0 everywhere: loopback addresses are not routed",
        );
    }
    Check::bad(
        NAME,
        false,
        format!(
            "set on {}: hosts on that network can reach ports bound to 127.0.0.1, so a \
             loopback-only port, and the loopback trust loopwarden guards, are exposed there",
            set.join(", ")
        ),
        "sysctl -w net.ipv4.conf.<interface>.route_localnet=0 (and on all); if kube-proxy needs \
         it, drop traffic to 127.0.0.0/8 arriving on those interfaces",
    )
}

/// The interfaces (`all`, `default` and real ones) whose `route_localnet`
/// value is not 0, sorted.
fn localnet_set(values: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut set: Vec<String> = values
        .filter(|(_, value)| value.trim() != "0")
        .map(|(name, _)| name)
        .collect();
    set.sort();
    set
}

#[cfg(test)]
mod tests {
    use super::localnet_set;

    #[test]
    fn route_localnet_is_reported_where_it_is_not_zero() {
        let values = [
            ("lo", "0\n"),
            ("eth0", "1\n"),
            ("all", "1\n"),
            ("default", "0\n"),
        ];
        let set = localnet_set(
            values
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
        );
        assert_eq!(set, ["all", "eth0"]);
        assert!(localnet_set(std::iter::empty()).is_empty());
    }
}
