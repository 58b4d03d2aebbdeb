//! The network namespaces a sweep visits: which ([`targets`]), entering
//! one for its sock_diag handle ([`enter`]), and listing its sockets
//! within the sweep's budget ([`list`]).

use std::{io, path::PathBuf};

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
    /// By the first of these namespace files that can be entered (one of
    /// a process found in it: it may have exited since).
    Files(Vec<PathBuf>),
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
            by: Entry::Files(ns.files),
        })
        .collect())
}

/// Opens a sock_diag socket inside the target namespace.
pub(super) fn enter(target: &Target) -> Result<Entered, SweepError> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
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
        Entry::Files(paths) => resolve::in_first_netns(paths.iter().cloned(), open, &mut last)
            .map(|(entered, _)| entered)
            .ok_or(last),
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

/// The namespace's listening sockets, then those of its sockets in client
/// states that `relevant` takes, both families, keeping at most `budget`
/// sockets (which is decreased): sockets nobody asked about (a user's
/// hundred thousand idle connections) are read and dropped, and cannot use
/// it up. Listeners come first so that a dump cut short by the budget
/// never judges sockets without them.
pub(super) fn list(
    diag: &mut SockDiag,
    budget: &mut usize,
    relevant: &dyn Fn(&TcpSocket) -> bool,
) -> io::Result<Listed> {
    let mut listed = Listed {
        sockets: Vec::new(),
        complete: true,
        read: 0,
    };
    for (states, keep) in [
        (
            state::bit(state::LISTEN),
            &(|_: &TcpSocket| true) as &dyn Fn(&TcpSocket) -> bool,
        ),
        (CLIENT_STATES, relevant),
    ] {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let before = listed.sockets.len();
            let (done, read) =
                diag.dump_kept(family, states, *budget, keep, &mut listed.sockets)?;
            *budget -= listed.sockets.len() - before;
            listed.read += read;
            if done == Dumped::Truncated {
                listed.complete = false;
                return Ok(listed);
            }
        }
    }
    Ok(listed)
}

/// What [`list`] found in a namespace.
pub(super) struct Listed {
    /// Its listeners, then the sockets in client states the caller asked
    /// for.
    pub sockets: Vec<TcpSocket>,
    /// Whether all of them are there (the budget was not used up).
    pub complete: bool,
    /// How many sockets were read, those not asked for included.
    pub read: usize,
}
