//! What was let in is cut: when a policy in enforce mode is installed (at
//! start, on a switch from audit to enforce, or when a change makes a rule
//! deny), TCP connections to protected destinations that are already open
//! and whose client process now matches a deny rule are destroyed, each one
//! reported as a `cut`. Connections of clients the policy allows are never
//! touched.
//!
//! This module owns that sweep: [`crate::kernel::sock_diag`] lists the
//! TCP sockets of a network namespace and destroys one by its exact id
//! (cookie included); [`procs`] finds which processes hold a socket and
//! reads who they are from `/proc`, and what the kernel's tracking
//! programs know of them from `LW_PROCS` (their evidence of facing the
//! network, lineage and script); [`sweep`] ties them to the policy
//! through [`CompiledPolicy::denial`], the userspace copy of the kernel's
//! judgement (rules and relay verdict), over the network namespaces
//! [`namespaces`] finds and enters; [`outcome`] holds what it did.
//!
//! Which socket is cut: the client side, the one whose remote end is the
//! protected destination (loopback, or one of the host's addresses with
//! `host_addresses`, on a protected port), in a state that can still carry
//! data (`SYN_SENT`, `ESTABLISHED`, `FIN_WAIT1/2`, `CLOSE_WAIT`), and whose
//! origin (the tag) does not name it as the accepted socket. The origin
//! tells the two sides of a tagged connection apart by their cookies: a
//! client's socket it names is a candidate whatever its local port (one
//! that bound its source port to a port something listens on, even on
//! another address, included), and the accepted socket it names is left
//! alone (that of a server without `fork` whose listener has closed, which
//! has a client's look). Without an origin (untagged), a socket whose
//! local port is a listening port of its namespace is taken for the
//! accepted, server side of a connection (with every port protected, its
//! remote end, the client's ephemeral port, is "protected" too; the
//! kernel never hands a port with a listener out as an ephemeral one), and
//! any other for a client's.
//!
//! Who the client is: the processes whose descriptor tables hold the socket
//! (a socket inherited or passed along may have several; it is cut if any
//! of them matches a deny rule; a thread's own table counts for its
//! process), as `/proc` describes them now. The kernel
//! judges the thread that calls connect(); after the fact the thread is
//! unknown, so a comm criterion is matched against the process's comm and
//! every thread's (first match wins over all of them). A process that
//! changed its uid, comm or cgroup since connect() is judged as it is now.
//!
//! Whether it faces the network (the relay verdict): its evidence now, or
//! the evidence the connection's origin recorded at its connect (the tag,
//! found by the connection's addresses and the client socket's cookie). A
//! tunnel client known only by recent evidence, whose relayed connection
//! has been idle past the window, is still known for what it did then.

mod namespaces;
mod outcome;
pub mod procs;

use std::{collections::HashSet, net::IpAddr, path::Path, time::Instant};

use loopwarden_common::{ProcState, RELAY_RULE};
use tracing::debug;

pub use self::outcome::{Cut, Relayed, Sweep, SweepError};
use self::{
    namespaces::{Entered, Keeper, UID_SHARE, enter, list, targets},
    procs::ProcReader,
};
use crate::{
    error_chain,
    events::RELAY_RULE_NAME,
    kernel::sock_diag::{self, TcpSocket, state},
    policy::{CompiledPolicy, Mode},
};

/// Most sockets one sweep keeps to judge over all namespaces: connections
/// to protected ports that may be a client's (each a few dozen bytes), at
/// most a quarter of them one user's ([`namespaces::UID_SHARE`]); past it
/// the sweep stops and says so. Other sockets (listeners, the accepted
/// sides of connections, connections elsewhere) are read and dropped, and
/// do not count: a user's many idle connections or listeners cannot use it
/// up.
pub const MAX_SOCKETS: usize = 100_000;

/// States in which a client socket can still send or receive.
pub(super) const CLIENT_STATES: u32 = state::bit(state::SYN_SENT)
    | state::bit(state::ESTABLISHED)
    | state::bit(state::FIN_WAIT1)
    | state::bit(state::FIN_WAIT2)
    | state::bit(state::CLOSE_WAIT);

/// What the kernel's pinned maps know, as the sweep asks it.
pub trait Known {
    /// `LW_PROCS`' entry of process `pid`: its evidence, lineage, script.
    fn tracked(&self, pid: u32) -> Option<ProcState>;

    /// Whether the origin of `socket`'s connection (in the network
    /// namespace with inode number `netns`) names it as the client's
    /// socket, by its cookie: with the relay evidence recorded at its
    /// connect, if any. `None`: untagged, or it names another socket.
    fn client(&self, netns: u32, socket: &TcpSocket) -> Option<Option<Relayed>>;

    /// Whether the origin of `socket`'s connection names it as the
    /// accepted socket, by its cookie: a server's, never cut as a client.
    fn accepted(&self, netns: u32, socket: &TcpSocket) -> bool;
}

/// Destroys the established TCP connections to protected destinations
/// whose client process matches a deny rule of `policy`, and returns one
/// [`Cut`] per connection destroyed, with what kept it from being complete.
/// Does nothing unless the policy is in enforce mode.
///
/// `host_addresses`: the addresses the kernel protects besides loopback
/// (what the daemon installed with the policy; used only when
/// `policy.host_addresses`). `cgroup_root`: the cgroup v2 mount. `known`:
/// what the kernel's maps say of processes and connections.
///
/// Namespaces: those the policy is scoped to, or, unscoped, every network
/// namespace some process is in. Needs root (entering namespaces,
/// `SOCK_DESTROY`). Cost: one sock_diag dump per namespace and family, a
/// look-up of the origin of each socket to a protected destination (a few
/// map reads; with every port protected, the accepted side of every local
/// connection is one), and, only when some connection is a candidate, one
/// walk over every process's descriptor table in `/proc`.
///
/// `superseded` says whether a newer policy has been asked for since: the
/// sweep then stops before its next cut (what is left is judged by the
/// sweep for that policy), with [`Sweep::superseded`] set.
pub fn sweep(
    policy: &CompiledPolicy,
    host_addresses: &[IpAddr],
    cgroup_root: &Path,
    known: &dyn Known,
    superseded: &dyn Fn() -> bool,
) -> Sweep {
    let mut sweep = Sweep::default();
    if policy.mode != Mode::Enforce {
        return sweep;
    }
    let started = Instant::now();
    let targets = match targets(policy) {
        Ok(targets) => targets,
        Err(e) => {
            sweep.error(&e);
            return sweep;
        }
    };
    let host: Vec<IpAddr> = if policy.host_addresses {
        host_addresses.iter().map(IpAddr::to_canonical).collect()
    } else {
        Vec::new()
    };

    let mut entered = Vec::new();
    // With whether each is on a port its namespace listens on.
    let mut candidates: Vec<(usize, TcpSocket, bool)> = Vec::new();
    let mut examined = 0usize;
    let mut budget = MAX_SOCKETS;
    let mut keeper = Keeper::default();
    let mut truncated = false;
    for target in &targets {
        if truncated {
            break;
        }
        // A newer policy's sweep judges what this one has not listed yet.
        if superseded() {
            sweep.superseded = true;
            return sweep;
        }
        let mut ns = match enter(target) {
            Ok(ns) => ns,
            Err(e) if e.namespace_gone() => {
                debug!("cut: {}", error_chain(&e));
                continue;
            }
            Err(e) => {
                sweep.error(&e);
                continue;
            }
        };
        // An accepted side, which the origin does not name as a client's
        // (see `cut`), is not kept: with every port protected, each local
        // connection has one.
        let inode = ns.inode;
        let relevant = |s: &TcpSocket, listening: &HashSet<u16>| {
            relevant(policy, &host, s)
                && (known.client(inode, s).is_some()
                    || !(listening.contains(&s.src.port()) || known.accepted(inode, s)))
        };
        match list(&mut ns.diag, &mut budget, &mut keeper, &relevant) {
            Ok(listed) => {
                examined += listed.read;
                truncated = !listed.complete;
                let index = entered.len();
                candidates.extend(
                    client_sockets(policy, &host, &listed.sockets)
                        .into_iter()
                        .map(|s| (index, *s, listed.listening.contains(&s.src.port()))),
                );
            }
            Err(source) => {
                sweep.error(&SweepError::Dump {
                    netns: ns.label.clone(),
                    source,
                });
                continue;
            }
        }
        entered.push(ns);
    }
    if truncated {
        sweep.problem(format!(
            "stopped after keeping {MAX_SOCKETS} sockets to judge (connections to protected ports); connections beyond them were not checked"
        ));
    }
    if !keeper.over.is_empty() {
        let uids: Vec<String> = keeper.over.iter().map(u32::to_string).collect();
        sweep.problem(format!(
            "the connections to protected ports of uid {} past {UID_SHARE} each (a user's share of the sweep) were not checked",
            uids.join(", ")
        ));
    }
    sweep.namespaces = entered.len();
    sweep.examined = examined;
    if !candidates.is_empty() {
        cut(
            policy,
            cgroup_root,
            &mut entered,
            &candidates,
            known,
            superseded,
            &mut sweep,
        );
    }
    debug!(
        "cut: {} namespaces, {examined} sockets examined, {} candidates, {} cut in {:?}",
        sweep.namespaces,
        candidates.len(),
        sweep.cuts.len(),
        started.elapsed()
    );
    sweep
}

/// Asks the connections' origins about the candidates (leaving out those
/// they name as accepted sockets), finds the owners of the rest, judges
/// them, destroys the sockets of those a deny rule matches, adding each to
/// `sweep`.
fn cut(
    policy: &CompiledPolicy,
    cgroup_root: &Path,
    entered: &mut [Entered],
    candidates: &[(usize, TcpSocket, bool)],
    known: &dyn Known,
    superseded: &dyn Fn() -> bool,
    sweep: &mut Sweep,
) {
    let now = u64::try_from(crate::monotonic().as_nanos()).unwrap_or(u64::MAX);
    let candidates: Vec<(usize, TcpSocket, Option<Relayed>)> = candidates
        .iter()
        .filter_map(|&(index, sock, on_listening_port)| {
            let netns = entered[index].inode;
            // The origin, where there is one, says which side a socket is;
            // without one, a socket on a listening port is taken for the
            // accepted side (see the module documentation).
            match known.client(netns, &sock) {
                Some(relayed) => Some((index, sock, relayed)),
                None if on_listening_port || known.accepted(netns, &sock) => None,
                None => Some((index, sock, None)),
            }
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    // Before the walk of every process's descriptors, the longest part.
    if superseded() {
        sweep.superseded = true;
        return;
    }
    let inodes: HashSet<u64> = candidates.iter().map(|(_, s, _)| s.inode).collect();
    let (owners, started) = match procs::socket_owners(&inodes) {
        Ok(found) => found,
        Err(source) => {
            sweep.error(&SweepError::Owners {
                sockets: inodes.len(),
                source,
            });
            return;
        }
    };
    let mut reader = ProcReader::new(cgroup_root.to_owned());
    for (position, (index, sock, relayed)) in candidates.iter().enumerate() {
        // Reading owners takes time (their command lines may wait): a
        // sweep a newer policy superseded stops here, not at its next cut.
        if superseded() {
            sweep.superseded = true;
            return;
        }
        // No owner: closed meanwhile, or held only by a process that is gone.
        let Some(pids) = owners.get(&sock.inode) else {
            continue;
        };
        // A holder whose start time could not be read is not judged: its
        // pid may be another process's by the time it is read.
        let hit = pids.iter().find_map(|&pid| {
            let started = started.get(&pid).copied()?;
            let mut owner = reader.owner(pid, Some(started))?.clone();
            owner.identity.tracked = known.tracked(pid);
            let rule =
                policy.denial_of(&owner.identity, sock.dst.port(), now, relayed.is_some())?;
            Some((usize::from(rule), owner))
        });
        let Some((rule, owner)) = hit else { continue };
        // A cut cannot be undone: none under a policy no longer asked for
        // (a switch back to audit, a rule that now allows).
        if superseded() {
            sweep.superseded = true;
            return;
        }
        let ns = &mut entered[*index];
        match ns.diag.destroy(sock) {
            Ok(()) => sweep.cuts.push(Cut {
                rule,
                rule_name: if rule == usize::from(RELAY_RULE) {
                    RELAY_RULE_NAME.to_owned()
                } else {
                    policy
                        .rules
                        .get(rule)
                        .map(|r| r.name.clone())
                        .unwrap_or_default()
                },
                socket: *sock,
                netns_cookie: ns.cookie,
                owner,
                relayed: *relayed,
                at: std::time::SystemTime::now(),
            }),
            // Closed since the dump (ENOENT), or its address pair now
            // belongs to another socket (ESTALE: the cookie differs).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESTALE)) => {
                debug!("cut: {} -> {} is already gone", sock.src, sock.dst);
            }
            Err(source) => {
                // No other socket can be cut either: said once, not once
                // per connection at every sweep.
                let none_can = source.raw_os_error() == Some(libc::EPERM)
                    || sock_diag::missing_feature_fix(&source).is_some();
                sweep.error(&SweepError::Destroy {
                    src: sock.src,
                    dst: sock.dst,
                    cookie: sock.cookie,
                    pid: owner.pid,
                    netns: ns.label.clone(),
                    source,
                });
                let left = candidates.len() - position - 1;
                if none_can && left > 0 {
                    sweep.problem(format!(
                        "the {left} connections left to judge were not tried: no cut can be made"
                    ));
                    return;
                }
            }
        }
    }
}

/// The client-side sockets to protected destinations among one namespace's
/// `sockets` (see the module documentation). `host` holds canonical
/// addresses.
fn client_sockets<'a>(
    policy: &CompiledPolicy,
    host: &[IpAddr],
    sockets: &'a [TcpSocket],
) -> Vec<&'a TcpSocket> {
    sockets
        .iter()
        .filter(|s| CLIENT_STATES & state::bit(s.state) != 0 && relevant(policy, host, s))
        .collect()
}

/// Whether a socket in a client state may be a connection `policy` judges:
/// to a port it protects, at a loopback or host address (the others are
/// not listed, so they cannot use up the sweep's budget).
fn relevant(policy: &CompiledPolicy, host: &[IpAddr], s: &TcpSocket) -> bool {
    s.inode != 0
        && policy.ports.contains(s.dst.port())
        && (is_local(s.dst.ip()) || host.contains(&s.dst.ip().to_canonical()))
}

/// The destinations the kernel programs treat as loopback
/// (`ebpf/src/connect/mod.rs`): 127.0.0.0/8 and 0.0.0.0, `::1` and `::`, and
/// the IPv4-mapped forms of the IPv4 ones.
fn is_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[0] == 127 || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{net::SocketAddr, path::PathBuf};

    use super::*;
    use crate::kernel::sock_diag::SockId;
    use crate::{config::Config, policy, resolve::HostResolver};

    pub(super) fn sock(state: u8, src: &str, dst: &str, inode: u64) -> TcpSocket {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        let family = if src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        TcpSocket {
            family,
            state,
            src,
            dst,
            cookie: inode,
            inode,
            uid: 0,
            id: SockId::zero(),
        }
    }

    /// The ports of `sockets`' listeners, as `list` collects them.
    fn listening_of(sockets: &[TcpSocket]) -> HashSet<u16> {
        sockets
            .iter()
            .filter(|s| s.state == state::LISTEN)
            .map(|s| s.src.port())
            .collect()
    }

    fn policy(text: &str) -> CompiledPolicy {
        let config = Config::from_str_named(text, "test.toml").unwrap();
        policy::compile(&config, &HostResolver::new(PathBuf::from("/nonexistent"))).unwrap()
    }

    /// A policy scoped to namespaces none of which resolved sweeps none
    /// (the kernel judges nothing then); an unscoped one sweeps them all.
    /// Maps that know nothing.
    struct Nothing;

    impl Known for Nothing {
        fn tracked(&self, _: u32) -> Option<ProcState> {
            None
        }

        fn client(&self, _: u32, _: &TcpSocket) -> Option<Option<Relayed>> {
            None
        }

        fn accepted(&self, _: u32, _: &TcpSocket) -> bool {
            false
        }
    }

    #[test]
    fn a_policy_scoped_to_no_resolved_namespace_sweeps_nothing() {
        let text = "mode = \"enforce\"\n[protect]\nnetns = \"/nonexistent/netns\"\n";
        let config = Config::from_str_named(text, "test.toml").unwrap();
        let resolver = HostResolver::new(PathBuf::from("/nonexistent"));
        let scoped = policy::compile_lenient(&config, &resolver, None).unwrap();
        assert!(scoped.scoped() && scoped.netns.is_empty());
        assert!(targets(&scoped).unwrap().is_empty());
        let all = targets(&policy("mode = \"enforce\"\n")).unwrap();
        assert!(!all.is_empty(), "not even this process's namespace");
    }

    #[test]
    fn loopback_forms_are_local() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(is_local(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::2", "::ffff:10.0.0.1", "fe80::1", "128.0.0.1"] {
            assert!(!is_local(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_client_sides_to_protected_destinations_are_candidates() {
        let p = policy("mode = \"enforce\"\n[protect]\nports = [8080]\n");
        let sockets = [
            sock(state::LISTEN, "0.0.0.0:8080", "0.0.0.0:0", 1),
            sock(state::LISTEN, "[::]:9001", "[::]:0", 2),
            // A relay's upstream connection and its accepted side.
            sock(state::ESTABLISHED, "127.0.0.1:40000", "127.0.0.1:8080", 10),
            sock(state::ESTABLISHED, "127.0.0.1:8080", "127.0.0.1:40000", 11),
            // IPv6 and v4-mapped forms, a connect in progress, a half-closed one.
            sock(state::ESTABLISHED, "[::1]:40001", "[::1]:8080", 12),
            sock(
                state::SYN_SENT,
                "[::ffff:127.0.0.1]:40002",
                "[::ffff:127.0.0.1]:8080",
                13,
            ),
            sock(state::CLOSE_WAIT, "127.0.0.1:40003", "127.0.0.9:8080", 14),
            // Not protected: another port, another address, no owner left,
            // or a state that carries nothing any more.
            sock(state::ESTABLISHED, "127.0.0.1:40004", "127.0.0.1:8081", 20),
            sock(state::ESTABLISHED, "10.0.0.2:40005", "10.0.0.1:8080", 21),
            sock(state::FIN_WAIT2, "127.0.0.1:40006", "127.0.0.1:8080", 0),
            sock(state::LAST_ACK, "127.0.0.1:40007", "127.0.0.1:8080", 22),
            // Accepted by the relay's listener on 9001.
            sock(
                state::ESTABLISHED,
                "[::ffff:127.0.0.1]:9001",
                "[::ffff:127.0.0.1]:8080",
                23,
            ),
        ];
        let inodes = |host: &[IpAddr]| -> Vec<(u64, bool)> {
            let listening = listening_of(&sockets);
            client_sockets(&p, host, &sockets)
                .iter()
                .map(|s| (s.inode, listening.contains(&s.src.port())))
                .collect()
        };
        // The socket on the relay's listening port is one only if its
        // origin names it as the client's (see `cut`).
        let found = [
            (10, false),
            (12, false),
            (13, false),
            (14, false),
            (23, true),
        ];
        assert_eq!(inodes(&[]), found);
        // The host's own addresses count when the policy protects them.
        let with_host = [
            (10, false),
            (12, false),
            (13, false),
            (14, false),
            (21, false),
            (23, true),
        ];
        assert_eq!(inodes(&["10.0.0.1".parse().unwrap()]), with_host);
    }

    #[test]
    fn with_every_port_protected_accepted_sockets_are_still_not_clients() {
        let p = policy("mode = \"enforce\"\n");
        let sockets = [
            sock(state::LISTEN, "127.0.0.1:8080", "0.0.0.0:0", 1),
            sock(state::ESTABLISHED, "127.0.0.1:40000", "127.0.0.1:8080", 10),
            sock(state::ESTABLISHED, "127.0.0.1:8080", "127.0.0.1:40000", 11),
        ];
        let listening = listening_of(&sockets);
        let found: Vec<(u64, bool)> = client_sockets(&p, &[], &sockets)
            .iter()
            .map(|s| (s.inode, listening.contains(&s.src.port())))
            .collect();
        // The accepted one is on the listening port: without an origin
        // that names it as a client's, it is never cut.
        assert_eq!(found, [(10, false), (11, true)]);
    }

    #[test]
    fn audit_mode_sweeps_nothing() {
        let p = policy("mode = \"audit\"\n");
        let swept = sweep(&p, &[], Path::new("/nonexistent"), &Nothing, &|| false);
        assert!(swept.cuts.is_empty() && swept.problems.is_empty());
        assert_eq!(swept.namespaces, 0);
    }
}
