//! The security settings that bear on loopwarden: kernel lockdown (read
//! from securityfs, mounted for the read if it must be), unprivileged BPF,
//! `route_localnet` (loopback addresses routed from a network), and other
//! programs on the cgroup v2 root's connect hooks.

use std::{
    ffi::CString,
    fs,
    io::{self, ErrorKind},
    path::Path,
};

use super::Check;
use crate::kernel::{mountinfo, sys};

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

/// Other programs on the cgroup v2 root's connect hooks. One that runs
/// after loopwarden's and rewrites the destination (a service mesh's
/// redirect to a local port) takes a connect to a port loopwarden did not
/// judge: it judged the address the caller gave. (Programs in descendant
/// cgroups run before the root's, and loopwarden judges what they leave.
/// The kernel lists the root's in attach order, which is their run order
/// but for one attached with `BPF_F_PREORDER`, Linux 6.15, which runs
/// first wherever it is listed: such a one is named here all the same.)
pub(super) fn other_connect_programs(cgroup_root: Option<&Path>) -> Check {
    const NAME: &str = "other connect programs";
    let not_checked = |why: String| Check::ok(NAME, false, format!("not checked: {why}"));
    let Some(root) = cgroup_root else {
        return not_checked("no cgroup v2 root".to_owned());
    };
    let dir = match fs::File::open(root) {
        Ok(dir) => dir,
        Err(e) => return not_checked(format!("{}: {e}", root.display())),
    };
    let mut after = Vec::new();
    let mut attached = false;
    for (hook, attach) in [
        ("connect4", sys::ATTACH_INET4_CONNECT),
        ("connect6", sys::ATTACH_INET6_CONNECT),
    ] {
        let ids = match sys::prog_query(&dir, attach) {
            Ok(ids) => ids,
            Err(e) => return not_checked(format!("querying {hook} at the root: {e}")),
        };
        let names: Vec<(u32, String)> = ids
            .iter()
            .map(|&id| {
                let name = sys::prog_by_id(id).and_then(sys::prog_info);
                (id, name.map_or_else(|_| "?".to_owned(), |info| info.name))
            })
            .collect();
        attached |= names.iter().any(|(_, name)| ours(name));
        let names = names.into_iter();
        after.extend(after_ours(names).map(|(id, name)| format!("{name} (id {id}, {hook})")));
    }
    if !attached {
        return not_checked("loopwarden's connect programs are not attached at the root".into());
    }
    if after.is_empty() {
        return Check::ok(
            NAME,
            false,
            "none runs after loopwarden's at the cgroup v2 root",
        );
    }
    Check::bad(
        NAME,
        false,
        format!(
            "{} run after loopwarden's at the cgroup v2 root: one that rewrites a connect's \
             destination takes it to a port loopwarden judged by the address the caller gave",
            after.join(", ")
        ),
        "check that none of them redirects connects to protected ports (`bpftool cgroup show \
         <root>`), or protect the ports the clients name too",
    )
}

/// Whether `name` is one of loopwarden's connect programs (not the
/// benchmark's baseline, which attaches there too).
fn ours(name: &str) -> bool {
    [
        loopwarden_common::programs::CONNECT4,
        loopwarden_common::programs::CONNECT6,
    ]
    .contains(&name)
}

/// The programs of `run_order` (a hook's, as the root runs them) that run
/// after the first of loopwarden's; none if it has none. (Between two of
/// loopwarden's, a second daemon's with pins of its own, a program runs
/// after the first's judgement.)
fn after_ours(
    run_order: impl Iterator<Item = (u32, String)>,
) -> impl Iterator<Item = (u32, String)> {
    run_order
        .skip_while(|(_, name)| !ours(name))
        .filter(|(_, name)| !ours(name))
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
    use super::{after_ours, localnet_set};

    #[test]
    fn only_programs_after_loopwardens_are_named() {
        let order = |names: &[&str]| {
            let listed = names
                .iter()
                .enumerate()
                .map(|(i, n)| (i as u32, n.to_string()));
            after_ours(listed).map(|(_, n)| n).collect::<Vec<_>>()
        };
        assert_eq!(order(&["mesh", "lw_connect4", "redirect"]), ["redirect"]);
        assert_eq!(order(&["lw_connect6", "x", "lw_connect6", "y"]), ["x", "y"]);
        assert!(order(&["lw_baseline4", "redirect"]).is_empty());
        assert!(order(&["mesh", "lw_connect4"]).is_empty());
        assert!(order(&["mesh", "redirect"]).is_empty());
        assert!(order(&[]).is_empty());
    }

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
