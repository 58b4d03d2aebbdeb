//! The network namespaces a sweep visits: which ([`targets`]), entering
//! one for its sock_diag handle ([`enter`]), and listing its sockets
//! within the sweep's budget ([`list`]).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    path::PathBuf,
};

use super::{CLIENT_STATES, SweepError, procs};
use crate::{
    kernel::sock_diag::{Dumped, SockDiag, TcpSocket, state},
    policy::CompiledPolicy,
    resolve,
};

/// A network namespace to sweep: how to name it, and how to enter it.
#[derive(Clone, Debug)]
pub(super) struct Target {
    pub(super) label: String,
    by: Entry,
}

/// How a namespace is entered.
#[derive(Clone, Debug)]
enum Entry {
    /// One of the policy's scope: by its file, or, once that is gone, by a
    /// process in it ([`resolve::in_scoped_netns`]).
    Scoped {
        path: PathBuf,
        cookie: u64,
        inode: u32,
    },
    /// By the first of these namespace files that still is the namespace
    /// with this inode number (one of a process found in it: it may have
    /// exited since), else by a process found in it then
    /// ([`resolve::in_netns_of`]).
    Files { paths: Vec<PathBuf>, inode: u32 },
}

/// A namespace entered: its sock_diag handle.
pub(super) struct Entered {
    pub(super) label: String,
    pub(super) diag: SockDiag,
    pub(super) cookie: u64,
    /// Its inode number (what the kernel keys connections by; 0 if it
    /// could not be read).
    pub(super) inode: u32,
}

/// The namespaces to sweep: the policy's (none, if none of them
/// resolved: the kernel judges nothing then), or every one with processes.
pub(super) fn targets(policy: &CompiledPolicy) -> Result<Vec<Target>, SweepError> {
    if policy.scoped() {
        return Ok(policy
            .netns
            .iter()
            .map(|ns| Target {
                label: ns.path.clone(),
                by: Entry::Scoped {
                    path: PathBuf::from(&ns.path),
                    cookie: ns.cookie,
                    inode: ns.inode,
                },
            })
            .collect());
    }
    let found = procs::network_namespaces().map_err(SweepError::Namespaces)?;
    Ok(found
        .into_iter()
        .map(|ns| Target {
            label: format!("net:[{}]", ns.id.1),
            by: Entry::Files {
                paths: ns.files,
                inode: ns.id.1 as u32,
            },
        })
        .collect())
}

/// Opens a sock_diag socket inside the target namespace.
pub(super) fn enter(target: &Target) -> Result<Entered, SweepError> {
    let open = || {
        let diag = SockDiag::open()?;
        // Only for the audit line: 0 where the kernel lacks it (< 5.14).
        let cookie = resolve::current_netns_cookie().unwrap_or(0);
        let inode = resolve::current_netns_inum().unwrap_or(0);
        Ok((diag, cookie, inode))
    };
    let entered = match &target.by {
        Entry::Scoped {
            path,
            cookie,
            inode,
        } => resolve::in_scoped_netns(path, *cookie, *inode, open),
        Entry::Files { paths, inode } => resolve::in_netns_of(paths.clone(), *inode, open),
    };
    match entered {
        Ok((diag, cookie, inode)) => Ok(Entered {
            label: target.label.clone(),
            diag,
            cookie,
            inode,
        }),
        Err(source) => Err(SweepError::Open {
            netns: target.label.clone(),
            source,
        }),
    }
}

/// Connections one user (a socket's owner uid) may have kept over a whole
/// sweep: a quarter of [`super::MAX_SOCKETS`], so one user's many
/// connections to protected ports leave room for everyone else's.
pub(super) const UID_SHARE: usize = super::MAX_SOCKETS / 4;

/// What the sweep keeps of the sockets it reads: the ports listened on (not
/// the listeners, which cost no budget), and the sockets in client states
/// that its `relevant` takes, given those ports, up to each owner's
/// [`UID_SHARE`] over the whole sweep.
#[derive(Default)]
pub(super) struct Keeper {
    /// Sockets kept so far, by owner.
    kept: HashMap<u32, usize>,
    /// Owners some socket of which was dropped past their share.
    pub(super) over: BTreeSet<u32>,
}

impl Keeper {
    /// Whether to keep `socket`, which `relevant` took: not past its
    /// owner's share.
    fn take(&mut self, socket: &TcpSocket) -> bool {
        let kept = self.kept.entry(socket.uid).or_default();
        if *kept >= UID_SHARE {
            self.over.insert(socket.uid);
            return false;
        }
        *kept += 1;
        true
    }
}

/// The namespace's listening ports, then those of its sockets in client
/// states that `relevant` takes (given the ports), both families, keeping
/// at most `budget` sockets (which is decreased) and each owner's share
/// ([`Keeper`]): sockets nobody asked about (a user's hundred thousand idle
/// connections, or listeners) are read and dropped, and cannot use it up.
/// Listeners come first so that the ports are all known when the
/// connections are judged.
pub(super) fn list(
    diag: &mut SockDiag,
    budget: &mut usize,
    keeper: &mut Keeper,
    relevant: &dyn Fn(&TcpSocket, &HashSet<u16>) -> bool,
) -> io::Result<Listed> {
    let mut listed = Listed {
        sockets: Vec::new(),
        listening: HashSet::new(),
        complete: true,
        read: 0,
    };
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let listening = &mut listed.listening;
        let keep = |s: &TcpSocket| {
            listening.insert(s.src.port());
            false
        };
        let (_, read) =
            diag.dump_kept(family, state::bit(state::LISTEN), 0, keep, &mut Vec::new())?;
        listed.read += read;
    }
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let before = listed.sockets.len();
        let listening = &listed.listening;
        let keep = |s: &TcpSocket| relevant(s, listening) && keeper.take(s);
        let (done, read) =
            diag.dump_kept(family, CLIENT_STATES, *budget, keep, &mut listed.sockets)?;
        *budget -= listed.sockets.len() - before;
        listed.read += read;
        if done == Dumped::Truncated {
            listed.complete = false;
            return Ok(listed);
        }
    }
    Ok(listed)
}

/// What [`list`] found in a namespace.
pub(super) struct Listed {
    /// The sockets in client states the caller asked for.
    pub sockets: Vec<TcpSocket>,
    /// The ports its listeners listen on.
    pub listening: HashSet<u16>,
    /// Whether all of them are there (the budget was not used up).
    pub complete: bool,
    /// How many sockets were read, those not asked for included.
    pub read: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_keeps_a_share_and_others_theirs() {
        let socket = |uid| TcpSocket {
            uid,
            ..crate::cut::tests::sock(state::ESTABLISHED, "127.0.0.1:40000", "127.0.0.1:80", 1)
        };
        let mut keeper = Keeper::default();
        for _ in 0..UID_SHARE {
            assert!(keeper.take(&socket(1000)));
        }
        assert!(!keeper.take(&socket(1000)), "past its share");
        assert!(keeper.take(&socket(0)), "another's");
        assert_eq!(keeper.over, BTreeSet::from([1000]));
    }
}
