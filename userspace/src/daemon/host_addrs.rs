//! The host's own addresses a policy with `host_addresses = true`
//! protects: listed at each install (the host's, or those of the
//! namespaces the policy is scoped to), at most what a policy holds, and
//! kept as they are when listing fails for a while only.

use std::{
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
};

use loopwarden_common::MAX_MAP_ENTRIES;
use tracing::{debug, warn};

use crate::{policy::CompiledPolicy, resolve};

/// The host's own non-loopback addresses for `host_addresses = true`: those
/// of the namespaces the policy is scoped to (none if none resolved; one
/// kept in the scope after its name went is entered through a process in
/// it, [`resolve::in_scoped_netns`]), or of the daemon's own; at most the
/// first [`MAX_MAP_ENTRIES`] ([`fitted`]). `None` when listing them failed
/// (warned about): the addresses in force stay, not none.
pub(super) fn host_addresses(policy: &CompiledPolicy) -> Option<Vec<IpAddr>> {
    if !policy.host_addresses {
        return Some(Vec::new());
    }
    listed_addresses(policy).map(fitted)
}

/// The addresses a policy holds of `addrs`: each once, in the order
/// listed (an interface's before those of interfaces listed after it, so
/// the host's own come before the thousands of service addresses
/// kube-proxy's IPVS mode puts on `kube-ipvs0`), up to
/// [`MAX_MAP_ENTRIES`]. Past that the rest are not judged, which a
/// warning says whenever their count changes: before, the whole policy
/// failed to install, and with it every reload and refresh.
fn fitted(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    static SAID: AtomicUsize = AtomicUsize::new(0);
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<IpAddr> = addrs.into_iter().filter(|a| seen.insert(*a)).collect();
    let capacity = MAX_MAP_ENTRIES as usize;
    if kept.len() > capacity {
        if SAID.swap(kept.len(), Ordering::Relaxed) != kept.len() {
            warn!(
                "host_addresses: the host has {} addresses, and a policy holds {capacity}: \
                 connects to the {} listed after {} are not judged (scope the policy with \
                 [protect] netns, or protect these services on loopback)",
                kept.len(),
                kept.len() - capacity,
                kept[capacity - 1]
            );
        }
        kept.truncate(capacity);
    } else {
        SAID.store(0, Ordering::Relaxed);
    }
    kept
}

/// [`host_addresses`]' list, before it is fitted; `None` if listing
/// failed for a while only ([`passing`]). A namespace that cannot be
/// listed for another reason is left out, warned of.
fn listed_addresses(policy: &CompiledPolicy) -> Option<Vec<IpAddr>> {
    if !policy.scoped() {
        return match resolve::interface_addresses() {
            Ok(addrs) => Some(addrs),
            Err(e) => {
                warn!("listing this host's addresses failed: {e}");
                (!passing(&e)).then(Vec::new)
            }
        };
    }
    let mut out = Vec::new();
    for ns in &policy.netns {
        let listed = resolve::in_scoped_netns(
            Path::new(&ns.path),
            ns.cookie,
            ns.inode,
            resolve::interface_addresses,
        );
        match listed {
            Ok(addrs) => out.extend(addrs),
            // Gone with its last process: it has no address to protect.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                debug!("listing the addresses of {} failed: {e}", ns.path);
            }
            Err(e) => {
                warn!("listing the addresses of {} failed: {e}", ns.path);
                if passing(&e) {
                    return None;
                }
            }
        }
    }
    Some(out)
}

/// Whether listing addresses failed for a while only (out of memory,
/// descriptors or buffers, interrupted): the addresses in force stay.
fn passing(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOBUFS | libc::ENOMEM | libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::EINTR
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of buffers or descriptors for a while: the addresses in force
    /// stay. A namespace that cannot be entered is no passing failure.
    #[test]
    fn a_passing_failure_to_list_addresses_keeps_those_in_force() {
        let errno = std::io::Error::from_raw_os_error;
        assert!(passing(&errno(libc::ENOBUFS)));
        assert!(passing(&errno(libc::EMFILE)));
        assert!(!passing(&errno(libc::EINVAL)));
        assert!(!passing(&errno(libc::EPERM)));
    }

    /// Each address once, in the order listed, up to what a policy holds.
    #[test]
    fn host_addresses_past_the_maps_room_are_cut_in_the_order_listed() {
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let few = vec![addr(2), addr(1), addr(2)];
        assert_eq!(fitted(few), [addr(2), addr(1)]);
        let many: Vec<IpAddr> = (0..MAX_MAP_ENTRIES + 10).rev().map(addr).collect();
        let kept = fitted(many.clone());
        assert_eq!(kept.len(), MAX_MAP_ENTRIES as usize);
        assert_eq!(kept[..], many[..MAX_MAP_ENTRIES as usize]);
    }
}
