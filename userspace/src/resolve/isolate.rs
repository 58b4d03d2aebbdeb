//! Threads that may wait for ever on a filesystem that stopped answering
//! (the probes of [`super::stall`], the policy's resolving thread): no
//! signal of the process is theirs, and their descriptor table is their
//! own, so that such a wait neither loses a signal nor keeps the daemon's
//! locks past its exit.

use std::{io, os::fd::RawFd};

use nix::sys::signal;

/// Blocks every signal but a fault's in this thread. Signals sent to the
/// process are the event loop's: the kernel hands one to any thread that
/// does not block it, and the handler, run in a thread with a descriptor
/// table of its own ([`private_descriptors`]), would write to the
/// runtime's signal pipe through that table, where the descriptor is
/// closed: the signal would be lost. (Not a fault's, which the kernel
/// forces on the thread anyway: blocked, their handlers, the stack
/// overflow's message among them, would not run.)
pub fn block_signals() -> nix::Result<()> {
    let mut blocked = signal::SigSet::all();
    for fault in [
        signal::SIGSEGV,
        signal::SIGBUS,
        signal::SIGILL,
        signal::SIGFPE,
        signal::SIGTRAP,
        signal::SIGSYS,
        signal::SIGABRT,
    ] {
        blocked.remove(fault);
    }
    signal::pthread_sigmask(signal::SigmaskHow::SIG_BLOCK, Some(&blocked), None)
}

/// Gives this thread a descriptor table of its own, holding only the
/// standard streams and `keep`. A thread can hang in a wait no signal ends
/// (a FUSE request its server read and never answers): it then keeps the
/// process from being reaped after it exits, and with the daemon's table
/// it would keep the descriptors open too: the instance and pin directory
/// locks, which no new daemon could then take. (Linux 5.9 for
/// `close_range`.)
pub fn private_descriptors(keep: Option<RawFd>) -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).map_err(io::Error::from)?;
    let close = |from: u32, to: u32| {
        if from > to {
            return Ok(());
        }
        // SAFETY: closes descriptors of this thread's private table alone;
        // none of them is owned by anything this thread uses (`keep` is
        // left).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, from, to, 0_u32) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    match keep {
        Some(keep) => {
            let keep =
                u32::try_from(keep).map_err(|_| io::Error::other("a negative descriptor"))?;
            close(3, keep.saturating_sub(1))?;
            close(keep.saturating_add(1), u32::MAX)
        }
        None => close(3, u32::MAX),
    }
}
