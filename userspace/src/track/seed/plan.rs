//! What the seeding writes, decided from the scan before anything is
//! written: listeners and standing evidence from the TCP sockets, lineage
//! from the process tree.

use std::{
    collections::{BTreeMap, HashMap, HashSet, btree_map::Entry},
    net::{IpAddr, SocketAddr},
};

use loopwarden_common::{Addr, EXE_NAME_LEN, Evidence, evidence};
use procfs::net::{TcpNetEntry, TcpState};

use super::scan::Image;

/// What a TCP socket's state means here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Listen,
    Established,
    Other,
}

/// A TCP socket as `/proc/PID/net/tcp` (or `tcp6`) lists it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sock {
    local: SocketAddr,
    remote: SocketAddr,
    state: State,
    inode: u64,
}

impl Sock {
    /// Its inode, if it is a socket [`Plan::add_namespace`] may credit its
    /// holders with and some descriptor holds it.
    pub(super) fn creditable_inode(&self) -> Option<u64> {
        ((self.is_public_listener() || self.is_remote_connection()) && self.inode != 0)
            .then_some(self.inode)
    }

    /// A listener on an address other than loopback: `listening` evidence.
    fn is_public_listener(&self) -> bool {
        self.state == State::Listen && !is_loopback(self.local.ip())
    }

    /// A connection from elsewhere: not from loopback, nor from one of the
    /// host's own addresses (both ends on one address: the kernel routes it
    /// over loopback), as the kernel's `same_host` decides. `accepted`
    /// evidence on a listening port.
    fn is_remote_connection(&self) -> bool {
        self.state == State::Established
            && !is_loopback(self.remote.ip())
            && self.local.ip() != self.remote.ip()
    }
}

impl From<&TcpNetEntry> for Sock {
    fn from(e: &TcpNetEntry) -> Self {
        Sock {
            local: e.local_address,
            remote: e.remote_address,
            state: State::of(&e.state),
            inode: e.inode,
        }
    }
}

impl State {
    /// A connection whose peer has closed its side (`CLOSE_WAIT`) is still
    /// open for its holder, as for the kernel's descriptor scan at exec:
    /// established here.
    fn of(state: &TcpState) -> Self {
        match state {
            TcpState::Listen => State::Listen,
            TcpState::Established | TcpState::CloseWait => State::Established,
            _ => State::Other,
        }
    }
}

/// 127.0.0.0/8, `::1` and `::ffff:127.0.0.0/104`: what the kernel's
/// `is_loopback` (`ebpf/src/addr.rs`) calls loopback.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Evidence of `kind` about `at`, stamped `now`.
fn evidence_at(kind: u8, at: SocketAddr, now: u64) -> Evidence {
    Evidence {
        addr: Addr::from_ip(at.ip()),
        ktime_ns: now,
        port: at.port(),
        kind,
        _pad: [0; 5],
    }
}

/// What the seeding writes, decided before anything is written.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// `(netns, port)` → whom its accepts are credited to, and by which
    /// listener.
    pub(super) listeners: BTreeMap<(u32, u16), Credit>,
    /// Standing evidence by tgid.
    pub(super) standing: BTreeMap<u32, Evidence>,
    /// Lineage by tgid.
    pub(super) lineage: BTreeMap<u32, [u8; EXE_NAME_LEN]>,
}

/// A port's listener credited to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Credit {
    pub(super) tgid: u32,
    /// The listener's socket inode (its cookie is the entry's: only its
    /// own close removes it).
    pub(super) inode: u64,
}

/// Generations walked up from a process looking for its tunnel: far more
/// than real process trees have, and an end to a cycle (pid reuse while
/// the walk ran).
const MAX_GENERATIONS: usize = 64;

impl Plan {
    /// Adds what one network namespace's TCP sockets show; `owners` maps
    /// socket inodes to the pids holding them, ascending, and `image`
    /// tells what a process runs (asked only of a listener's holders when
    /// there are several).
    pub(super) fn add_namespace(
        &mut self,
        netns: u32,
        socks: &[Sock],
        owners: &HashMap<u64, Vec<u32>>,
        image: impl Fn(u32) -> Option<Image>,
        now: u64,
    ) {
        let holders = |inode: u64| owners.get(&inode).map(Vec::as_slice).unwrap_or_default();
        let mut ports = HashSet::new();
        for sock in socks.iter().filter(|s| s.is_public_listener()) {
            let port = sock.local.port();
            ports.insert(port);
            let pids = holders(sock.inode);
            // The first listener listed on a port is credited (the
            // holders' images are read only for it).
            if let Entry::Vacant(slot) = self.listeners.entry((netns, port))
                && let Some(tgid) = credited(pids, &image)
            {
                slot.insert(Credit {
                    tgid,
                    inode: sock.inode,
                });
            }
            for &pid in pids {
                // A listen never replaces an accept (as in the kernel).
                self.standing
                    .entry(pid)
                    .or_insert_with(|| evidence_at(evidence::LISTENING, sock.local, now));
            }
        }
        for sock in socks
            .iter()
            .filter(|s| s.is_remote_connection() && ports.contains(&s.local.port()))
        {
            for &pid in holders(sock.inode) {
                self.standing
                    .insert(pid, evidence_at(evidence::ACCEPTED, sock.remote, now));
            }
        }
    }

    /// Adds `stdio` evidence for each process whose standard input or
    /// output (`stdio`: socket inode → pids) is one of `socks` connected
    /// to elsewhere, as its exec would have recorded it (an inetd-style
    /// service, `ncat -e`, socat's `EXEC:`), over any other standing
    /// evidence, as the exec puts it first.
    pub(super) fn add_stdio(&mut self, socks: &[Sock], stdio: &HashMap<u64, Vec<u32>>, now: u64) {
        for sock in socks.iter().filter(|s| s.is_remote_connection()) {
            for &pid in stdio
                .get(&sock.inode)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                self.standing
                    .insert(pid, evidence_at(evidence::STDIO, sock.remote, now));
            }
        }
    }

    /// Keeps only what crediting the listeners of the ports `keep` says
    /// anew needs: their credits, and the credited processes' standing
    /// evidence.
    pub(super) fn only_listeners(&mut self, keep: impl Fn(&(u32, u16)) -> bool) {
        self.listeners.retain(|key, _| keep(key));
        let credited: HashSet<u32> = self.listeners.values().map(|c| c.tgid).collect();
        self.standing.retain(|tgid, _| credited.contains(tgid));
        self.lineage.clear();
    }
}

/// Which of the processes holding one listener (`pids`, ascending) its
/// accepts are credited to, as the kernel would have credited them: the
/// process that put it into LISTEN, then each that executed a program
/// holding it (the exec's descriptor scan, `ebpf/src/inherited.rs`).
///
/// Handed down across an exec: a holder whose parent holds it too and
/// runs another image (pid 1's socket-activated service, an executor's
/// service, a relay a supervisor started with the listener); of those,
/// the one that started last, whose exec came last. None such: the lowest
/// pid, most likely the one that called listen() and the one that
/// outlives its forked copies (nginx's workers, a forking server's
/// children run the image of a parent that holds it: they executed
/// nothing). Forked copies inherit what the credited process accepts, as
/// they would have from the kernel.
///
/// Where this differs from the kernel: a holder that executed its parent's
/// own image again (a server re-executing itself from an unchanged file)
/// is taken for a forked copy, and one handed the listener by a parent
/// that has exited since, or through a process that does not hold it, is
/// not seen as handed down; a holder of another image that its parent
/// handed the listener over a socket (a `multiprocessing` worker) is
/// taken for handed down, and so are workers left running the old image
/// by a parent that re-executed itself from an upgraded file (the latest
/// of them, draining, is credited).
fn credited(pids: &[u32], image: impl Fn(u32) -> Option<Image>) -> Option<u32> {
    if pids.len() > 1 {
        let images: HashMap<u32, Image> = pids
            .iter()
            .filter_map(|&pid| Some((pid, image(pid)?)))
            .collect();
        let handed_down = images
            .iter()
            .filter(|(_, own)| {
                images
                    .get(&own.ppid)
                    .is_some_and(|parent| (parent.exe, parent.script) != (own.exe, own.script))
            })
            .max_by_key(|(pid, own)| (own.started, **pid));
        if let Some((&pid, _)) = handed_down {
            return Some(pid);
        }
    }
    pids.first().copied()
}

impl Plan {
    /// Adds the lineage of every process of `family` (pid → parent and file
    /// name): the key `lineage_key` gives its own file name, else its
    /// parent's lineage, as fork and exec pass it on in the kernel.
    pub(super) fn add_lineage(
        &mut self,
        family: &HashMap<u32, (u32, Vec<u8>)>,
        lineage_key: impl Fn(&[u8]) -> Option<[u8; EXE_NAME_LEN]>,
    ) {
        let keys: HashMap<u32, [u8; EXE_NAME_LEN]> = family
            .iter()
            .filter_map(|(&pid, (_, name))| Some((pid, lineage_key(name)?)))
            .collect();
        if keys.is_empty() {
            return;
        }
        for &pid in family.keys() {
            let mut at = pid;
            for _ in 0..MAX_GENERATIONS {
                if let Some(key) = keys.get(&at) {
                    self.lineage.insert(pid, *key);
                    break;
                }
                match family.get(&at) {
                    Some(&(parent, _)) if parent > 1 => at = parent,
                    _ => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use loopwarden_common::exe_name_prefix_key;

    use super::*;

    #[test]
    fn lineage_passes_from_a_tunnel_to_every_process_below_it() {
        let key = exe_name_prefix_key(b"code-tunnel");
        let family: HashMap<u32, (u32, Vec<u8>)> = [
            (10, (1, "code-tunnel")),
            (11, (10, "bash")),
            (12, (11, "curl")),
            // A nested tunnel gives its own key (here the same one).
            (13, (12, "code-tunnel-insiders")),
            (20, (1, "bash")),
            (21, (20, "curl")),
            // Its parent is gone: nothing to inherit.
            (30, (29, "curl")),
            // A cycle (pids reused during the walk) ends.
            (40, (41, "sh")),
            (41, (40, "sh")),
        ]
        .into_iter()
        .map(|(pid, (ppid, name))| (pid, (ppid, name.as_bytes().to_vec())))
        .collect();
        let mut plan = Plan::default();
        plan.add_lineage(&family, |name| {
            name.starts_with(b"code-tunnel").then_some(key)
        });
        assert_eq!(
            plan.lineage.keys().copied().collect::<Vec<_>>(),
            [10, 11, 12, 13]
        );
        assert!(plan.lineage.values().all(|k| *k == key));
        // No tunnel: nothing is written.
        let mut plan = Plan::default();
        plan.add_lineage(&family, |_| None);
        assert!(plan.lineage.is_empty());
    }

    #[test]
    fn a_remote_connection_as_stdio_is_stdio_evidence() {
        const NOW: u64 = 9;
        let socks = [
            sock("10.77.0.1:40000", "10.77.0.2:4444", State::Established, 1),
            sock("127.0.0.1:40001", "127.0.0.1:4444", State::Established, 2),
            sock("10.77.0.1:9000", "0.0.0.0:0", State::Listen, 3),
        ];
        let mut plan = Plan::default();
        plan.standing.insert(
            10,
            evidence_at(evidence::LISTENING, "10.77.0.1:9000".parse().unwrap(), NOW),
        );
        let stdio: HashMap<u64, Vec<u32>> =
            [(1, vec![10, 11]), (2, vec![12]), (3, vec![13])].into();
        plan.add_stdio(&socks, &stdio, NOW);
        let peer = evidence_at(evidence::STDIO, "10.77.0.2:4444".parse().unwrap(), NOW);
        assert_eq!(plan.standing.get(&10), Some(&peer), "over listening");
        assert_eq!(plan.standing.get(&11), Some(&peer));
        // A loopback peer, a listener: nothing.
        assert_eq!(plan.standing.get(&12), None);
        assert_eq!(plan.standing.get(&13), None);
    }

    #[test]
    fn a_connection_its_peer_closed_is_still_accepted_evidence() {
        assert_eq!(State::of(&TcpState::CloseWait), State::Established);
        assert_eq!(State::of(&TcpState::Established), State::Established);
        assert_eq!(State::of(&TcpState::Listen), State::Listen);
        for other in [TcpState::TimeWait, TcpState::FinWait1, TcpState::SynRecv] {
            assert_eq!(State::of(&other), State::Other);
        }
    }

    #[test]
    fn loopback_is_the_kernels_loopback() {
        for ip in [
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(127, 5, 0, 9)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()),
        ] {
            assert!(is_loopback(ip), "{ip}");
        }
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)),
            IpAddr::V6(Ipv4Addr::new(10, 77, 0, 1).to_ipv6_mapped()),
            IpAddr::V6("fd77::1".parse().unwrap()),
        ] {
            assert!(!is_loopback(ip), "{ip}");
        }
    }

    /// No process can be read.
    fn no_image(_: u32) -> Option<Image> {
        None
    }

    /// A process image: child of `ppid`, started at `started`, running
    /// executable inode `exe` (and `script`, if any).
    fn image(ppid: u32, started: u64, exe: u64, script: Option<&str>) -> Image {
        Image {
            ppid,
            started,
            exe: loopwarden_common::ExeKey { dev: 8, ino: exe },
            script: script.map(|s| {
                let mut bytes = [0; loopwarden_common::SCRIPT_LEN];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                bytes
            }),
        }
    }

    #[test]
    fn a_listener_handed_down_across_an_exec_is_credited_to_its_latest_holder() {
        let images = |list: &[(u32, Image)]| {
            let map: HashMap<u32, Image> = list.iter().copied().collect();
            move |pid: u32| map.get(&pid).copied()
        };
        // pid 1 and the socket-activated service it executed.
        let systemd = images(&[(1, image(0, 1, 10, None)), (900, image(1, 50, 20, None))]);
        assert_eq!(credited(&[1, 900], systemd), Some(900));
        // nginx's master and its workers: forked copies, the master's.
        let nginx = images(&[
            (100, image(1, 5, 30, None)),
            (101, image(100, 6, 30, None)),
            (102, image(100, 6, 30, None)),
        ]);
        assert_eq!(credited(&[100, 101, 102], nginx), Some(100));
        // A Python supervisor that handed its listener to a Python relay
        // (one interpreter, another script), which forked workers, and
        // an older handed-down process: the latest exec is credited.
        let python = images(&[
            (200, image(1, 5, 40, None)),
            (201, image(200, 9, 40, Some("relay.py"))),
            (202, image(201, 10, 40, Some("relay.py"))),
            (203, image(200, 7, 50, None)),
        ]);
        assert_eq!(credited(&[200, 201, 202, 203], python), Some(201));
        // Unrelated holders (one handed it over a socket), gone or
        // unreadable ones, a lone holder: the lowest pid, as before.
        let unrelated = images(&[(300, image(1, 5, 60, None)), (301, image(1, 9, 70, None))]);
        assert_eq!(credited(&[300, 301], unrelated), Some(300));
        assert_eq!(credited(&[400, 401], no_image), Some(400));
        let gone_parent = images(&[(501, image(500, 9, 70, None))]);
        assert_eq!(credited(&[500, 501], gone_parent), Some(500));
        assert_eq!(credited(&[600], no_image), Some(600));
        assert_eq!(credited(&[], no_image), None);
    }

    fn sock(local: &str, remote: &str, state: State, inode: u64) -> Sock {
        Sock {
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state,
            inode,
        }
    }

    #[test]
    fn listeners_and_accepted_connections_are_planned() {
        const NS: u32 = 4026531840;
        const NOW: u64 = 77;
        let socks = [
            // socat's listener (parent 100) and a forked child's accepted
            // connection (101).
            sock("10.77.0.1:9001", "0.0.0.0:0", State::Listen, 1),
            sock("10.77.0.1:9001", "10.77.0.2:40000", State::Established, 2),
            // Its outbound half: not accepted (local port not a listener's).
            sock("127.0.0.1:50000", "127.0.0.1:8080", State::Established, 3),
            // nginx master and workers share one wildcard listener.
            sock("[::]:80", "[::]:0", State::Listen, 4),
            // A loopback-only listener and a connection to it from loopback.
            sock("127.0.0.1:8080", "0.0.0.0:0", State::Listen, 5),
            sock("127.0.0.1:8080", "127.0.0.1:50000", State::Established, 6),
            // A connection on the wildcard listener from loopback.
            sock(
                "[::ffff:127.0.0.1]:80",
                "[::ffff:127.0.0.1]:41000",
                State::Established,
                7,
            ),
            // A listener nobody holds (closing): its port still counts.
            sock("0.0.0.0:7000", "0.0.0.0:0", State::Listen, 8),
            sock("10.77.0.1:7000", "10.77.0.2:41000", State::Other, 9),
            // A connection on the wildcard listener from the host's own
            // address (both ends one address): not the network.
            sock("10.77.0.1:80", "10.77.0.1:42000", State::Established, 11),
        ];
        let owners = HashMap::from([
            (1, vec![100]),
            (2, vec![101]),
            (3, vec![101]),
            (4, vec![200, 201, 202]),
            (5, vec![300]),
            (6, vec![300]),
            (7, vec![201]),
            (11, vec![400]),
        ]);
        let mut plan = Plan::default();
        plan.add_namespace(NS, &socks, &owners, no_image, NOW);
        assert_eq!(
            plan.listeners,
            BTreeMap::from([
                (
                    (NS, 9001),
                    Credit {
                        tgid: 100,
                        inode: 1
                    }
                ),
                (
                    (NS, 80),
                    Credit {
                        tgid: 200,
                        inode: 4
                    }
                )
            ])
        );
        let kinds: Vec<(u32, u8)> = plan.standing.iter().map(|(&p, e)| (p, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (100, evidence::LISTENING),
                (101, evidence::ACCEPTED),
                (200, evidence::LISTENING),
                (201, evidence::LISTENING),
                (202, evidence::LISTENING),
            ]
        );
        let accepted = plan.standing[&101];
        assert_eq!(
            accepted.addr,
            Addr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)))
        );
        assert_eq!((accepted.port, accepted.ktime_ns), (40000, NOW));
        let listening = plan.standing[&100];
        assert_eq!(
            listening.addr,
            Addr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)))
        );
        assert_eq!(listening.port, 9001);

        // The same pid listening in another namespace keeps its accept, and
        // the other namespace's listener is its own key.
        let other = [sock("0.0.0.0:9001", "0.0.0.0:0", State::Listen, 10)];
        let owners = HashMap::from([(10, vec![101])]);
        plan.add_namespace(NS + 1, &other, &owners, no_image, NOW);
        assert_eq!(plan.standing[&101].kind, evidence::ACCEPTED);
        assert_eq!(plan.listeners[&(NS + 1, 9001)].tgid, 101);
    }
}
