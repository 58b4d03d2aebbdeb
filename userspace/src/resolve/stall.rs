//! Filesystems whose server can stop answering (network filesystems and
//! FUSE), asked whether they answer before a compile reads a path on them,
//! and the threads that may wait on one for ever.
//!
//! A `$PATH` or `/opt` directory, or a path a rule names, on an NFS server
//! that is down or a FUSE server that hangs would hold whoever reads it:
//! the daemon's start (its first compile runs on the main thread, before
//! anything is enforced), and after that each re-resolution. So before a
//! path on such a filesystem is read, a helper thread looks up a name no
//! one has (a lookup the server must answer) on its mount; if the answer
//! does not come within [`BUDGET`], the path is not read and the compile
//! goes on without it (a search skips the directory, a rule's path counts
//! as not there, with a warning), until the probe that waits returns. At
//! most one probe waits per mount, however long its server stays away.
//! The mounts a path reaches are found by walking it as the kernel does,
//! a component at a time, following its symbolic links (a `/usr/local/bin`
//! that links to an NFS directory), and each is asked before anything on
//! it is read, its mount point's own `lstat` included. A read of a file's
//! contents there ([`read`]: a script's `#!` line) runs on a helper thread
//! too, within the same budget, for a server that answers lookups and not
//! reads. A server can still stop answering between a probe and the other
//! reads that follow it (an answer holds for [`HOLDS`]).

use std::{
    cell::Cell,
    collections::HashMap,
    fs, io,
    path::{Path, PathBuf},
    sync::{
        Arc, LazyLock, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    isolate::{block_signals, private_descriptors},
    walk::{Event, Stop},
};

/// How long a probe may take before its filesystem counts as not
/// answering.
const BUDGET: Duration = Duration::from_millis(500);
/// How long an answer holds before the filesystem is asked again.
const HOLDS: Duration = Duration::from_secs(5);

/// How long the list of mounts that may stall is kept before mountinfo
/// is read again (a compile asks about every directory it searches, for
/// every name, each second; a host may have thousands of mounts).
const MOUNTS_KEPT: Duration = Duration::from_secs(1);

/// Mounts: mount point and type (shared: a compile asks for them at every
/// path).
type Mounts = Arc<[(PathBuf, String)]>;

/// The mounts that may stall, as read then.
type StallProne = (Instant, Mounts);

/// The list of mounts that may stall, read at most every [`MOUNTS_KEPT`].
static MOUNTS: Mutex<Option<StallProne>> = Mutex::new(None);

/// Those of [`MOUNTS`] a user made: FUSE mounts whose superblock's options
/// name a `user_id` other than root's (`fusermount` writes the caller's).
/// Nothing under one is root's alone, and its server is its user's to
/// keep from answering.
static USERS_MOUNTS: Mutex<Option<Mounts>> = Mutex::new(None);

/// How many mounts' answers are known before those of mounts gone are
/// forgotten.
const KNOWN_MOUNTS: usize = 64;

/// What is known of a mount, by its mount point.
static KNOWN: LazyLock<Mutex<HashMap<PathBuf, Known>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

#[derive(Clone, Copy, Debug)]
enum Known {
    /// It answered then.
    Answered(Instant),
    /// A probe waits on it.
    Waiting,
}

/// Whether a filesystem of type `fs_type` (as mountinfo names it) has a
/// server that can stop answering: network filesystems, FUSE (whose
/// server is a process, virtiofs's the host's), and automount points
/// (a lookup under one mounts what it names, and waits for it).
pub fn may_stall(fs_type: &str) -> bool {
    fs_type.starts_with("nfs")
        || fs_type.starts_with("fuse.")
        || matches!(
            fs_type,
            "cifs"
                | "smb3"
                | "smbfs"
                | "ceph"
                | "9p"
                | "afs"
                | "glusterfs"
                | "lustre"
                | "gpfs"
                | "beegfs"
                | "ocfs2"
                | "fuse"
                | "fuseblk"
                | "virtiofs"
                | "autofs"
        )
}

/// Whether `path` may be read without waiting for a server that stopped
/// answering: `Err` (`TimedOut`, saying which filesystem) when a
/// filesystem it reaches, as written or through its symbolic links, may
/// stall and has not answered a probe in time; `Err` (`NotFound`) without
/// asking, and not counted as turned away, when it reaches a FUSE mount a
/// user made ([`USERS_MOUNTS`]): nothing there is root's alone, and its
/// user could keep it from answering, and so keep every refresh from
/// being installed.
pub fn answers(path: &Path) -> io::Result<()> {
    walked(path).map(|_| ())
}

/// Whether `path` answers when it is itself the mount point of a
/// filesystem that may stall (a file bind-mounted from NFS), as
/// [`answers`], without walking it: for a name in a directory that
/// answered, before its own `lstat`.
pub fn answers_as_mount_point(path: &Path) -> io::Result<()> {
    let (_, mounts) = stall_prone();
    let users = users_mounts();
    turn_away(
        mounts
            .iter()
            .filter(|(mount, _)| mount == path)
            .try_for_each(|(mount, fs_type)| {
                refuse_users(&users, mount)?;
                probe(mount, fs_type)
            }),
    )
}

/// Runs `read`, which reads the contents of the file at `path`, where it
/// cannot hold the caller: at once for a file on no filesystem that may
/// stall; else once that filesystem answered a probe ([`answers`]), on a
/// helper thread given [`BUDGET`], past which it counts as not answering
/// until the read returns (a FUSE server that answers lookups and fetches
/// contents on demand from somewhere gone). `Err` as [`answers`].
pub fn read<T: Send + 'static>(
    path: &Path,
    read: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    match walked(path)?.holding {
        None => Ok(read()),
        Some((mount, fs_type)) => turn_away(ask(&mount, &fs_type, read)),
    }
}

/// `answered`, counted as a path turned away if it is an `Err` (but for
/// one on a mount a user made, which is never asked: see [`answers`]).
fn turn_away<T>(answered: io::Result<T>) -> io::Result<T> {
    answered.inspect_err(|e| {
        if !e.get_ref().is_some_and(|inner| inner.is::<UsersMount>()) {
            TURNED_AWAY.set(TURNED_AWAY.get() + 1);
        }
    })
}

/// What a walk of a path found.
#[derive(Clone, Default)]
struct Walked {
    /// The mounts that may stall it entered (mount point and type).
    entered: Vec<(PathBuf, String)>,
    /// The mount holding what the path names, if it is one that may stall.
    holding: Option<(PathBuf, String)>,
}

/// [`answers`], with what the walk found.
fn walked(path: &Path) -> io::Result<Walked> {
    let (read, mounts) = stall_prone();
    if mounts.is_empty() {
        return Ok(Walked::default());
    }
    let users = users_mounts();
    let walked = {
        let mut walks = WALKS.lock().unwrap_or_else(PoisonError::into_inner);
        match walks.as_mut() {
            Some((at, known)) if *at == read => known.get(path).cloned(),
            _ => None,
        }
    };
    let answered = match walked {
        // Its mounts asked again: an answer holds only so long.
        Some(walked) => walked
            .entered
            .iter()
            .try_for_each(|(mount, fs_type)| probe(mount, fs_type))
            .map(|()| walked),
        None => {
            let mut entered = Vec::new();
            let answered = walk(path, &mounts, &mut |mount: &Path, fs_type: &str| {
                refuse_users(&users, mount)?;
                probe(mount, fs_type)?;
                entered.push((mount.to_owned(), fs_type.to_owned()));
                Ok(())
            })
            .map(|end| {
                // The mount holding where the walk ended, among every
                // mount (a local one may be mounted inside a network
                // one), if it may stall; none to look for when the walk
                // entered none that may.
                let holding = end.filter(|_| !entered.is_empty()).and_then(|end| {
                    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
                    let mount = super::mount_of(&info, &end)?;
                    may_stall(&mount.fs_type).then_some((mount.mount_point, mount.fs_type))
                });
                Walked { entered, holding }
            });
            if let Ok(walked) = &answered {
                let mut walks = WALKS.lock().unwrap_or_else(PoisonError::into_inner);
                match walks.as_mut() {
                    Some((at, known)) if *at == read && known.len() < WALKS_KEPT => {
                        known.insert(path.to_owned(), walked.clone());
                    }
                    _ => *walks = Some((read, HashMap::from([(path.to_owned(), walked.clone())]))),
                }
            }
            answered
        }
    };
    turn_away(answered)
}

/// Paths walked since mountinfo was last read, with the mounts each
/// entered (mount point and type): a compile asks about the same
/// directories for every name it searches, and each walk costs an `lstat`
/// per component.
type Walks = (Instant, HashMap<PathBuf, Walked>);

/// The walks of [`answers`], kept while the list of mounts they were
/// walked against is (at most [`MOUNTS_KEPT`]: a link changed since is
/// followed anew by then).
static WALKS: Mutex<Option<Walks>> = Mutex::new(None);

/// How many walks are kept at most.
const WALKS_KEPT: usize = 4096;

/// Walks `path` ([`super::walk`]) and asks `ask` about each mount of
/// `mounts` (mount point and type) the walk enters, before anything on it
/// is read: the `lstat` of its mount point included, which the mounted
/// filesystem answers. Stops at the first `Err`, or, with `Ok`, at what
/// the path names, or (`None`) where the path cannot be walked further on
/// filesystems that answered (a component not there, a link loop): reading
/// the path then fails at once too.
fn walk(
    path: &Path,
    mounts: &[(PathBuf, String)],
    ask: &mut dyn FnMut(&Path, &str) -> io::Result<()>,
) -> io::Result<Option<PathBuf>> {
    let mut asked: Vec<&Path> = Vec::new();
    let walked = super::walk::walk(path, &mut |event| {
        let Event::Reading(at) = event else {
            return Ok(());
        };
        for (mount, fs_type) in mounts {
            if at.starts_with(mount) && !asked.contains(&mount.as_path()) {
                ask(mount, fs_type)?;
                asked.push(mount);
            }
        }
        Ok(())
    });
    match walked {
        Ok((end, _)) => Ok(Some(end)),
        Err(Stop::Unwalkable(_)) => Ok(None),
        Err(Stop::Refused(e)) => Err(e),
    }
}

thread_local! {
    /// How many paths [`answers`] turned away on this thread.
    static TURNED_AWAY: Cell<u64> = const { Cell::new(0) };
}

/// How many paths [`answers`] has turned away on this thread so far: a
/// compile that turned one away (it ran on one thread) resolved less than
/// its policy names.
// Used by the daemon's resolving thread, which fuzz builds leave out.
#[cfg_attr(fuzzing, allow(dead_code))]
pub fn turned_away() -> u64 {
    TURNED_AWAY.get()
}

/// The mounts that may stall ([`may_stall`]), from `/proc/self/mountinfo`
/// read at most every [`MOUNTS_KEPT`], and when they were read; none if it
/// cannot be read.
fn stall_prone() -> StallProne {
    let mut kept = MOUNTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((read, mounts)) = kept.as_ref()
        && read.elapsed() < MOUNTS_KEPT
    {
        return (*read, Arc::clone(mounts));
    }
    let read = Instant::now();
    let info = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(info) => info,
        // Read again next time; meanwhile the mounts known stay guarded.
        Err(_) => return kept.clone().unwrap_or((read, Arc::new([]))),
    };
    let mounts: Mounts = crate::kernel::mountinfo::mounts(&info)
        .filter(|mount| may_stall(mount.fs_type))
        .map(|mount| (mount.mount_point, mount.fs_type.to_owned()))
        .collect();
    let users: Mounts = crate::kernel::mountinfo::mounts(&info)
        .filter(|mount| mount.fs_type.starts_with("fuse") && users_mount(mount.super_options))
        .map(|mount| (mount.mount_point, mount.fs_type.to_owned()))
        .collect();
    *USERS_MOUNTS.lock().unwrap_or_else(PoisonError::into_inner) = Some(users);
    *kept = Some((read, Arc::clone(&mounts)));
    // What is known of mounts gone is forgotten once many are known (a
    // host that mounts FUSE filesystems without end; a probe still
    // waiting on one writes it again when it returns, once).
    let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    if known.len() > KNOWN_MOUNTS {
        // Not one that a request still waits on: at most one waits per
        // mount.
        known.retain(|known, what| {
            matches!(what, Known::Waiting) || mounts.iter().any(|(mount, _)| mount == known)
        });
    }
    (read, mounts)
}

/// Those of `dirs` that answer ([`answers`]), in order (those on a mount
/// a user made are left out unasked).
pub fn answering(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.retain(|dir| answers(dir).is_ok());
    dirs
}

/// The mounts a user made ([`USERS_MOUNTS`]) as last read.
fn users_mounts() -> Mounts {
    USERS_MOUNTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| Arc::new([]))
}

/// `Err` ([`UsersMount`], `NotFound`) if `mount` is one of `users`, before
/// anything on it is asked.
fn refuse_users(users: &[(PathBuf, String)], mount: &Path) -> io::Result<()> {
    if users.iter().any(|(user, _)| user == mount) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            UsersMount(mount.to_owned()),
        ));
    }
    Ok(())
}

/// A walk met a FUSE mount a user made (its mount point), which is never
/// asked.
#[derive(Debug)]
struct UsersMount(PathBuf);

impl std::fmt::Display for UsersMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is a FUSE mount a user made, which is not read",
            self.0.display()
        )
    }
}

impl std::error::Error for UsersMount {}

/// Whether a FUSE superblock's options (`rw,user_id=1000,group_id=1000`)
/// name a user other than root as the one who mounted it.
fn users_mount(super_options: &str) -> bool {
    super_options
        .split(',')
        .filter_map(|option| option.strip_prefix("user_id="))
        .any(|uid| uid != "0")
}

/// Whether the filesystem of type `fs_type` mounted on `mount` answers: it
/// answered within [`HOLDS`], or answers a probe within [`BUDGET`].
fn probe(mount: &Path, fs_type: &str) -> io::Result<()> {
    {
        let known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Known::Answered(at)) = known.get(mount)
            && at.elapsed() < HOLDS
        {
            return Ok(());
        }
    }
    let dir = mount.to_owned();
    ask(mount, fs_type, move || {
        let _ = fs::symlink_metadata(dir.join(unheard_of()));
    })
}

/// Runs `work`, a request to the filesystem of type `fs_type` mounted on
/// `mount`, on a helper thread, and waits [`BUDGET`] for it. The mount
/// counts as not answering from then until `work` returns, as it does
/// while another request to it waits: `Err` (`TimedOut`) at once.
fn ask<T: Send + 'static>(
    mount: &Path,
    fs_type: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    // The same words each time: a compile's warnings are part of what it
    // compiled, and a policy that differs is installed again.
    let not_answering = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{fs_type} mounted on {} does not answer (a request to it waited past {} ms: \
                 is its server down or hung?): nothing on it is read until it answers",
                mount.display(),
                BUDGET.as_millis()
            ),
        )
    };
    let now = Instant::now();
    {
        let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Known::Waiting) = known.get(mount) {
            return Err(not_answering());
        }
        known.insert(mount.to_owned(), Known::Waiting);
    }
    let (tell, told) = mpsc::channel();
    let dir = mount.to_owned();
    let spawned = std::thread::Builder::new()
        .name("lw-probe".into())
        .spawn(move || {
            if let Err(e) = block_signals() {
                warn!("a filesystem probe could not block signals ({e})");
            }
            if let Err(e) = private_descriptors(None) {
                warn!(
                    "a filesystem probe shares the daemon's descriptors ({e}): should it wait \
                     for ever, the daemon's locks outlive its exit"
                );
            }
            let done = {
                // The mount has answered once `work` returns, or panics.
                let _answered = Answered(&dir);
                work()
            };
            if tell.send(done).is_err() {
                info!(
                    "{} answers again after {} s: paths on it are read again",
                    dir.display(),
                    now.elapsed().as_secs()
                );
            }
        });
    if let Err(e) = spawned {
        KNOWN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(mount);
        return Err(io::Error::other(format!(
            "{fs_type} mounted on {} could not be probed ({e}): nothing on it is read",
            mount.display()
        )));
    }
    match told.recv_timeout(BUDGET) {
        Ok(done) => Ok(done),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let error = not_answering();
            warn!("{error}");
            Err(error)
        }
        // The probe ended without a word (it panicked): asked again next
        // time.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            KNOWN
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(mount);
            Err(io::Error::other(format!(
                "{fs_type} mounted on {}: its probe failed",
                mount.display()
            )))
        }
    }
}

/// Marks its mount as having answered when dropped.
struct Answered<'a>(&'a Path);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        KNOWN
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.0.to_owned(), Known::Answered(Instant::now()));
    }
}

/// A file name no one has: its lookup is the server's to answer.
fn unheard_of() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        ".loopwarden-probe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fuse_mount_a_user_made_says_so_in_its_options() {
        assert!(users_mount("rw,user_id=1000,group_id=1000,allow_other"));
        assert!(!users_mount("rw,user_id=0,group_id=0,default_permissions"));
        assert!(!users_mount("rw,relatime"));
    }

    #[test]
    fn network_and_fuse_filesystems_may_stall() {
        for fs_type in ["nfs4", "cifs", "fuse", "fuse.sshfs", "fuseblk", "virtiofs"] {
            assert!(may_stall(fs_type), "{fs_type}");
        }
        for fs_type in [
            "ext4", "xfs", "btrfs", "tmpfs", "overlay", "proc", "fusectl",
        ] {
            assert!(!may_stall(fs_type), "{fs_type}");
        }
    }

    /// A path on no filesystem that may stall is read without a probe; a
    /// mount that answered is not asked again while its answer holds.
    #[test]
    fn local_paths_and_recent_answers_need_no_probe() {
        answers(Path::new("/proc/self")).unwrap();
        let caller = std::thread::current().id();
        let here = read(Path::new("/proc/self/comm"), move || {
            std::thread::current().id() == caller
        });
        assert!(here.unwrap(), "a local read ran on another thread");
        let mount = PathBuf::from("/nonexistent-loopwarden-mount");
        KNOWN
            .lock()
            .unwrap()
            .insert(mount.clone(), Known::Answered(Instant::now()));
        probe(&mount, "nfs4").unwrap();
        KNOWN.lock().unwrap().insert(mount.clone(), Known::Waiting);
        let e = probe(&mount, "nfs4").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("nfs4 mounted on"), "{e}");
        assert_eq!(
            e.to_string(),
            probe(&mount, "nfs4").unwrap_err().to_string()
        );
        // A mount that answers a probe (this one's lookup fails at once).
        KNOWN.lock().unwrap().remove(&mount);
        probe(&mount, "nfs4").unwrap();
    }

    /// A walk asks about the mount a path reaches through its links
    /// (absolute, relative, chained, through `..`), and about none for a
    /// path that stays off it or cannot be walked; a mount that does not
    /// answer ends the walk with its error.
    #[test]
    fn a_walk_follows_links_into_a_mount() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let mount = t.join("m");
        fs::create_dir_all(mount.join("bin")).unwrap();
        fs::write(mount.join("bin/tool"), "").unwrap();
        fs::create_dir(t.join("local")).unwrap();
        fs::write(t.join("local/x"), "").unwrap();
        symlink(mount.join("bin"), t.join("abs")).unwrap();
        symlink("m", t.join("rel")).unwrap();
        symlink("rel", t.join("chain")).unwrap();
        let base = t.file_name().unwrap().to_str().unwrap();
        symlink(format!("../../{base}/m/bin"), t.join("local/up")).unwrap();
        symlink("loop", t.join("loop")).unwrap();
        let mounts = [(mount.clone(), "nfs4".to_owned())];
        let asked = |path: &Path| {
            let mut asked = Vec::new();
            walk(path, &mounts, &mut |m: &Path, _: &str| {
                asked.push(m.to_owned());
                Ok(())
            })
            .unwrap();
            asked
        };
        for reaches in [
            "m",
            "m/bin/tool",
            "abs/tool",
            "rel/bin/tool",
            "chain/bin",
            "local/up/tool",
            "local/../rel/bin",
            "./local/./up",
        ] {
            assert_eq!(
                asked(&t.join(reaches)),
                std::slice::from_ref(&mount),
                "{reaches}"
            );
        }
        for stays_off in ["local/x", "local", "loop/x", "missing/../rel", "abs-not"] {
            assert!(asked(&t.join(stays_off)).is_empty(), "{stays_off}");
        }
        // It ends at what the path names, past its links.
        let end = walk(
            &t.join("chain/bin/tool"),
            &mounts,
            &mut |_: &Path, _: &str| Ok(()),
        );
        assert_eq!(end.unwrap(), Some(mount.join("bin/tool")));
        let end = walk(&t.join("loop/x"), &mounts, &mut |_: &Path, _: &str| Ok(()));
        assert_eq!(end.unwrap(), None);
        let e = walk(&t.join("rel/bin"), &mounts, &mut |_: &Path, _: &str| {
            Err(io::Error::from(io::ErrorKind::TimedOut))
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
