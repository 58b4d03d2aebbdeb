//! The compiled policy: what the kernel maps must hold for a validated
//! [`crate::config::Config`]. Compiling resolves names (executable paths,
//! users, cgroups, network namespaces) through a [`Resolver`], so the logic is
//! testable without touching the host.
//!
//! An executable path stands for more than the file it names now: a process
//! started before an upgrade replaced the file (a new inode) still runs the
//! old one, and keeps matching the path's rules while it runs. Each compile
//! records what every path stood for ([`CompiledPolicy::exe_paths`]); the next
//! one keeps those earlier identities that some process still executes. A
//! path the policy knows nothing about yet (start-up, `check-config`, a path
//! new in a reloaded file) takes the files of running processes that were
//! started from it and deleted since.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use loopwarden_common::{AncestorMasks, COMM_LEN, EXE_NAME_LEN, ExeKey, PORT_WORDS, Settings};

mod browsers;
mod compile;
pub mod egress;
mod matcher;
mod summary;
#[cfg(test)]
mod tests;

pub use self::{
    browsers::BrowserPorts,
    compile::capacity::{Capacity, first_over},
    matcher::{Denial, ProcessIdentity, network_facing},
};
use self::{
    compile::{Leniency, compile_with},
    summary::DevName,
};
use crate::config::{Config, Location};

/// Global mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny rules are reported, never enforced.
    Audit,
    /// Deny rules refuse the connect.
    Enforce,
}

/// What a rule does with a matching connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deny,
    Audit,
    Allow,
}

impl Action {
    /// As the config spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Audit => "audit",
            Action::Allow => "allow",
        }
    }
}

/// Protected destination ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    All,
    /// Bitmap: bit `p % 64` of word `p / 64`.
    Some(Box<[u64; PORT_WORDS as usize]>),
}

impl Ports {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::Some(words) => words[usize::from(port >> 6)] >> (port & 63) & 1 == 1,
        }
    }
}

/// A network namespace the policy is scoped to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Netns {
    /// As written in the config (e.g. `/run/netns/blue`).
    pub path: String,
    /// `SO_NETNS_COOKIE` of the namespace.
    pub cookie: u64,
    /// Its inode number, when known (0 if not): what finds a process in it
    /// once its file is gone ([`crate::resolve::in_scoped_netns`]).
    pub inode: u32,
}

/// What userspace keeps about each rule, for reporting.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleInfo {
    /// Unique name; catalog rules are `catalog:<name>`.
    pub name: String,
    pub action: Action,
    /// Human summary of what it matches, e.g. `exe_name in [socat]`.
    pub matches: String,
    /// A browser-class rule: the port's `[browsers]` treatment is the
    /// verdict, `action` only that of ports no list names.
    pub browser: bool,
}

/// A cgroup resolved to its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupId {
    /// cgroup v2 id (the inode number of its directory).
    pub id: u64,
    /// Depth below the root cgroup (root = 0).
    pub level: u32,
}

/// Everything the kernel maps hold for one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub mode: Mode,
    /// Flags, errno, masks, cgroup levels: `LW_SETTINGS[0]` as installed.
    pub settings: Settings,
    pub ports: Ports,
    /// Empty: the policy applies in every network namespace.
    pub netns: Vec<Netns>,
    /// Protect the host's own non-loopback addresses as well.
    pub host_addresses: bool,
    pub exe: BTreeMap<ExeKey, u64>,
    pub exe_name: BTreeMap<[u8; EXE_NAME_LEN], u64>,
    pub comm: BTreeMap<[u8; COMM_LEN], u64>,
    pub uid: BTreeMap<u32, u64>,
    pub cgroup: BTreeMap<u64, u64>,
    pub ancestor: BTreeMap<ExeKey, AncestorMasks>,
    /// Rules by [`loopwarden_common::script_hash`] of a script path.
    pub script: BTreeMap<u64, u64>,
    /// What each executable path of the rules stood for when this policy was
    /// compiled; the next compile of the same config starts from it (see
    /// [`compile_lenient`]).
    pub exe_paths: BTreeMap<PathBuf, ExeIdentities>,
    /// Indexed by rule number (bit position).
    pub rules: Vec<RuleInfo>,
    /// The bind guard (`LW_BIND_*`).
    pub bind: BindGuard,
    /// The verdicts of browser-class rules per port (`LW_BROWSER_PORTS`).
    pub browsers: BrowserPorts,
    /// The egress guard (`LW_EGRESS_*`).
    pub egress: EgressGuard,
    /// Things an operator should know that do not stop the policy from
    /// loading (e.g. a cgroup that does not exist yet).
    pub warnings: Vec<String>,
    /// What each user name of the rules resolved to. A lookup that fails
    /// with an error (NSS, a directory service down; not "no such user")
    /// at the next compile keeps it: a passing outage must not weaken an
    /// `allow`, or have the sweep cut its user's connections.
    pub users: BTreeMap<String, u32>,
}

/// What the bind guard's maps hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindGuard {
    /// Ports a TCP bind() may put on loopback only (always
    /// [`Ports::Some`]); `None`: the guard is off.
    pub ports: Option<Ports>,
    /// Exempt executables, each with how people read it.
    pub exe: BTreeMap<ExeKey, String>,
    /// Exempt uids, each with how people read it.
    pub uid: BTreeMap<u32, String>,
}

/// What the egress guard's maps hold (bit `r`: egress rule `r`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressGuard {
    /// Indexed by egress rule number (bit position).
    pub rules: Vec<EgressRuleInfo>,
    pub uid: BTreeMap<u32, u64>,
    pub exe: BTreeMap<ExeKey, u64>,
    pub cgroup: BTreeMap<u64, u64>,
    /// `LW_EGRESS_DST`: every prefix (kernel form) with the rules blocking
    /// it (see [`egress::blocking_masks`]).
    pub prefixes: BTreeMap<ipnet::Ipv6Net, u64>,
}

/// What userspace keeps about each egress rule, for reporting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRuleInfo {
    pub name: String,
    /// `Deny` or `Audit`.
    pub action: Action,
    /// Who it applies to, e.g. `exe /usr/bin/python3 (...)`.
    pub subjects: String,
    /// Its `deny` and `allow` lists as written.
    pub deny: Vec<String>,
    pub allow: Vec<String>,
    /// Distinct prefixes of its own (with the metadata addresses).
    pub prefixes: usize,
}

impl CompiledPolicy {
    /// Whether `[protect] netns` scopes the policy: to [`Self::netns`],
    /// the namespaces that resolved, which may be none (nothing is judged
    /// then, anywhere).
    pub fn scoped(&self) -> bool {
        self.settings.flags & loopwarden_common::flags::NETNS_SCOPED != 0
    }

    /// Why a reload does not put this policy in force: it is scoped to
    /// network namespaces none of which exists (a typo in `[protect]
    /// netns`, most likely), so it would judge no connect anywhere and
    /// leave an enforcing host open. (At start, with nothing running, it
    /// is put in force with its warnings; the 1 s re-resolution finds a
    /// namespace made since.)
    pub fn reload_refusal(&self) -> Option<String> {
        (self.scoped() && self.netns.is_empty()).then(|| {
            "none of the network namespaces [protect] netns names exists (see the warnings): \
             this policy would judge no connect anywhere; a reload keeps the running policy \
             (make the namespace first, or fix the name)"
                .to_owned()
        })
    }

    /// The rules as events name them: the policy's rules by index, then
    /// the egress rules as `egress:<name>` in their order (see
    /// [`crate::events::Enricher::rule_name`]).
    pub fn named_rules(&self) -> Vec<RuleInfo> {
        let egress = self.egress.rules.iter().map(|r| RuleInfo {
            name: format!("{}{}", crate::events::EGRESS_PREFIX, r.name),
            action: r.action,
            matches: r.subjects.clone(),
            browser: false,
        });
        self.rules.iter().cloned().chain(egress).collect()
    }
}

/// An executable file as `stat()` finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExeFile {
    /// `stat()`'s device, in the kernel's encoding, and inode.
    pub key: ExeKey,
    /// The path with every symlink resolved: how `/proc/PID/exe` names it
    /// for a process running it.
    pub real_path: PathBuf,
    /// The filesystem holding it; `None` when `/proc/self/mountinfo` does
    /// not tell.
    pub mount: Option<MountDev>,
}

/// The filesystem a file lives on, from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountDev {
    /// The device the kernel programs read for a running executable there,
    /// in the kernel's encoding: the superblock's `s_dev`, or on btrfs the
    /// subvolume's device when the programs read it
    /// ([`crate::resolve::HostResolver::with_btrfs_subvolumes`]). Without
    /// that, `stat()` reports another one on btrfs (every subvolume has an
    /// anonymous device of its own); and on overlayfs over several
    /// filesystems.
    pub dev: u64,
    /// `btrfs`, `ext4`, ...
    pub fs_type: String,
    pub mount_point: PathBuf,
}

/// An executable some process runs, found by [`Resolver::live_exes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveExe {
    /// The lowest pid running it.
    pub pid: u32,
    /// For a file deleted since (replaced by an upgrade), the path it was
    /// started from: `/proc/PID/exe` without its ` (deleted)` suffix.
    pub deleted_path: Option<PathBuf>,
}

/// Running executables by identity (`stat()` device in the kernel's
/// encoding, inode).
pub type LiveExes = BTreeMap<ExeKey, LiveExe>;

/// What an executable path of a rule stands for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExeIdentities {
    /// The file at the path now; `None` when it does not resolve (or is
    /// refused, see [`PolicyError::ExeAmbiguous`]).
    pub current: Option<ExeKey>,
    /// Earlier files of the path that processes still run, each with the
    /// pid shown for it (the lowest running it when it was looked up).
    pub kept: BTreeMap<ExeKey, u32>,
}

/// Turns names from the config into the kernel's identifiers. The real one
/// ([`crate::resolve::HostResolver`]) asks the running system.
pub trait Resolver {
    /// The file at `path`, following symlinks.
    fn exe(&self, path: &Path) -> std::io::Result<ExeFile>;
    /// Every executable some process runs now, from one walk of `/proc`.
    /// Compiling calls it at most once, and only when a path has earlier
    /// identities to check or nothing is known about a path yet.
    fn live_exes(&self) -> LiveExes;
    /// The executable process `pid` runs, if it still exists: checks a
    /// kept identity without a walk while the process shown for it lives.
    fn running_exe(&self, pid: u32) -> Option<ExeKey>;
    /// The file name the kernel sees for `path` after following symlinks
    /// (the dentry name), e.g. `/usr/bin/python3` → `python3.11`.
    fn exe_file_name(&self, path: &Path) -> std::io::Result<String>;
    /// Finds an executable by file name in the usual system directories and
    /// `PATH`; every distinct file found (after following symlinks), by
    /// the first path that names it (a link's own).
    fn find_executables(&self, name: &str) -> Vec<std::path::PathBuf>;
    /// uid of a user name; `Ok(None)` when there is no such user.
    fn user(&self, name: &str) -> std::io::Result<Option<u32>>;
    /// A cgroup by path below the cgroup v2 root (`system.slice/foo.service`)
    /// or, for a bare unit name (`foo.service`), wherever it is in the tree.
    fn cgroup(&self, path_or_unit: &str) -> std::io::Result<CgroupId>;
    /// Network namespace cookie of a namespace file (`/run/netns/x`,
    /// `/proc/PID/ns/net`).
    fn netns(&self, path: &Path) -> std::io::Result<u64>;
    /// The inode number of the network namespace file `path` leads to. Not
    /// by default.
    fn netns_inode(&self, _path: &Path) -> Option<u32> {
        None
    }
    /// For an existing file that starts with `#!`: the interpreter that
    /// runs it and whether the kernel reads that interpreter's script
    /// ([`crate::resolve::interpreter_of`]). Not by default.
    fn script_interpreter(&self, _path: &Path) -> Option<(String, bool)> {
        None
    }
    /// Where a file at `path`, which is not there, would be: its directory
    /// with every link resolved, joined with its name (how `/proc/PID/exe`
    /// names a file deleted from there), and the device of that
    /// directory's filesystem in the kernel's encoding. Not by default.
    fn missing_exe(&self, _path: &Path) -> Option<(std::path::PathBuf, u64)> {
        None
    }
    /// Whether a user other than root could put another program where the
    /// existing `path` leads (the file is not root's, others may write it,
    /// or it or a link on the way is in a directory that is not root's
    /// alone). Not by default.
    fn others_may_replace(&self, _path: &Path) -> bool {
        false
    }
}

/// Pads a name into a fixed kernel-side buffer: at most `N - 1` bytes, NUL
/// terminated, zero filled, the way the kernel's string copies leave it.
pub fn fixed_name<const N: usize>(name: &str) -> [u8; N] {
    fixed_bytes(name.as_bytes())
}

/// [`fixed_name`] for raw bytes (a comm or file name need not be UTF-8).
pub fn fixed_bytes<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let len = bytes.len().min(N - 1);
    out[..len].copy_from_slice(&bytes[..len]);
    out
}

/// Reads a NUL-terminated kernel buffer back into a string (lossy).
pub fn name_from_fixed(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Why a config could not be turned into map contents. Every variant that
/// comes from a value in the file says where it was written.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{file}: {} rules ({user} in the file, {catalog} from the catalog) but at most {max} fit",
        user + catalog
    )]
    TooManyRules {
        file: String,
        user: usize,
        catalog: usize,
        max: usize,
    },
    #[error(
        "{}: {part}: the policy would name {needed} different {what}, all its rules \
         together, but at most {max} fit",
        match at { Some(at) => format!("{file}:{at}"), None => file.clone() }
    )]
    TooManyValues {
        file: String,
        at: Option<Location>,
        /// What was compiled last: the rule that filled the map.
        part: String,
        what: &'static str,
        needed: usize,
        max: u32,
    },
    #[error("{file}:{at}: rule `{rule}`: {field} {} cannot be resolved", path.display())]
    Exe {
        file: String,
        at: Location,
        rule: String,
        /// `exe`, `parent_exe` or `ancestor_exe`.
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel identifies a running executable by its superblock's
    /// device, which differs from what `stat()` reports here; the inode
    /// number alone does not single the file out there. (On btrfs only
    /// when the programs cannot read subvolumes: btrfs's BTF was missing
    /// when they loaded.)
    #[error(
        "{file}:{at}: rule `{rule}`: {field} {} is on {} (mounted at {}), where stat() \
         reports device {} but the kernel identifies running executables by the filesystem's \
         device {}, and inode numbers repeat across btrfs subvolumes (and overlayfs layers): \
         matching it by device and inode could also match an unrelated file of another \
         subvolume. Match it by `exe_name`, by `cgroup` (its unit), or move the binary to a \
         filesystem without subvolumes (ext4, xfs). (On btrfs, loopwarden tells subvolumes \
         apart when the kernel's BTF describes btrfs as it starts: built in, or the btrfs \
         module loaded with CONFIG_DEBUG_INFO_BTF_MODULES; restart it once btrfs is loaded.)",
        path.display(), mount.fs_type, mount.mount_point.display(), DevName(*stat_dev),
        DevName(mount.dev)
    )]
    ExeAmbiguous {
        file: String,
        at: Location,
        rule: String,
        /// `exe`, `parent_exe` or `ancestor_exe`.
        field: &'static str,
        path: PathBuf,
        /// `stat()`'s device, in the kernel's encoding.
        stat_dev: u64,
        /// The filesystem, with the device the kernel reads.
        mount: Box<MountDev>,
    },
    #[error("{file}:{at}: rule `{rule}`: no user named `{user}`")]
    UnknownUser {
        file: String,
        at: Location,
        rule: String,
        user: String,
    },
    #[error("{file}:{at}: rule `{rule}`: looking up user `{user}` failed")]
    UserLookup {
        file: String,
        at: Location,
        rule: String,
        user: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{at}: network namespace {} cannot be resolved", path.display())]
    Netns {
        file: String,
        at: Location,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{file}:{at}: rule `{rule}`: cgroup `{cgroup}` is at level {level}; rules can name \
         cgroups down to level {max}"
    )]
    CgroupTooDeep {
        file: String,
        at: Location,
        rule: String,
        cgroup: String,
        level: u32,
        max: usize,
    },
    #[error(
        "{file}:{at}: rule `{rule}`: cgroup `{cgroup}` is at level {level}, but the policy's cgroup \
         rules may name cgroups at no more than {max} different levels (the kernel looks one up per \
         level for every judged connect)"
    )]
    CgroupLevels {
        file: String,
        at: Location,
        rule: String,
        cgroup: String,
        level: u32,
        max: usize,
    },
    /// Several rules (or tables) whose values do not resolve, in the
    /// file's order (past a map's room, that last): said on one line, ten
    /// and the count of the rest.
    #[error(
        "{} problems: {}",
        problems.len(),
        crate::Several(problems, crate::SHOWN_PROBLEMS)
    )]
    Several { problems: Vec<PolicyError> },
}

impl PolicyError {
    /// Each problem this error stands for: its own, or
    /// [`PolicyError::Several`]'s.
    pub fn problems(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Several { problems } => problems.iter().collect(),
            one => vec![one],
        }
    }

    /// Each problem this error stands for, owned.
    pub(crate) fn into_problems(self) -> Vec<PolicyError> {
        match self {
            PolicyError::Several { problems } => problems,
            one => vec![one],
        }
    }

    /// Where in the file the problem is, if it says.
    pub(crate) fn at(&self) -> Option<Location> {
        match self {
            PolicyError::Exe { at, .. }
            | PolicyError::ExeAmbiguous { at, .. }
            | PolicyError::UnknownUser { at, .. }
            | PolicyError::UserLookup { at, .. }
            | PolicyError::Netns { at, .. }
            | PolicyError::CgroupTooDeep { at, .. }
            | PolicyError::CgroupLevels { at, .. } => Some(*at),
            PolicyError::TooManyValues { at, .. } => *at,
            _ => None,
        }
    }

    /// `problems` as one error: none is `Ok`, one is itself, more are
    /// [`PolicyError::Several`].
    pub(crate) fn all(mut problems: Vec<PolicyError>) -> Result<(), PolicyError> {
        match problems.pop() {
            None => Ok(()),
            Some(last) => Err(PolicyError::after(problems, last)),
        }
    }

    /// `last`, after the problems `before` it, as one error.
    pub(crate) fn after(mut before: Vec<PolicyError>, last: PolicyError) -> PolicyError {
        if before.is_empty() {
            return last;
        }
        before.push(last);
        PolicyError::Several { problems: before }
    }
}

/// Compiles a validated config into map contents: the user's rules in file
/// order get bits `0..`, then the catalog's (if enabled). Names are resolved
/// through `resolver`; a user rule naming something that does not exist is an
/// error, except a cgroup, which only warns (units are often not running
/// yet). Catalog programs that are not installed are simply matched by name.
/// An executable path also matches the deleted files that processes started
/// from it still run (see the module documentation).
pub fn compile(config: &Config, resolver: &dyn Resolver) -> Result<CompiledPolicy, PolicyError> {
    compile_with(config, resolver, Leniency::Strict, None)
}

/// Like [`compile`], for re-resolving a config that already loaded: a value
/// that no longer resolves (an executable removed, a user deleted, a network
/// namespace gone) becomes a warning and matches nothing, instead of failing
/// the whole policy, so the rest keeps following the system. A rule keeps
/// constraining that attribute, so it never widens to match everything.
///
/// `previous` is the policy this one replaces: every identity an executable
/// path stood for there is kept as long as some process still runs it, so a
/// process started before an upgrade replaced its binary keeps matching;
/// and a `[protect] netns` path that named a namespace there but resolves
/// no more (`ip netns del` removes the name, while processes in it keep
/// the namespace alive) keeps naming that namespace, so an enforcing
/// policy's scope never drops a namespace by itself.
pub fn compile_lenient(
    config: &Config,
    resolver: &dyn Resolver,
    previous: Option<&CompiledPolicy>,
) -> Result<CompiledPolicy, PolicyError> {
    compile_with(config, resolver, Leniency::Load, previous)
}

/// Like [`compile_lenient`], for the re-resolution each second: a value the
/// policy cannot hold (a cgroup made since at a depth past those it
/// compares) warns and matches nothing too, instead of failing the whole
/// re-resolution, which would leave every other value as it was resolved
/// before.
pub fn compile_refresh(
    config: &Config,
    resolver: &dyn Resolver,
    previous: Option<&CompiledPolicy>,
) -> Result<CompiledPolicy, PolicyError> {
    compile_with(config, resolver, Leniency::Refresh, previous)
}

/// A stand-in for the policy a predecessor put in force, of which a start
/// knows only the namespaces it was scoped to (`scope.json`): given to
/// [`compile_lenient`] as `previous`, it keeps in the scope those whose
/// names went since, and carries nothing else (no executable identity).
pub fn predecessor_scope(config: &Config, netns: Vec<Netns>) -> CompiledPolicy {
    CompiledPolicy {
        netns,
        ..compile::blank(config, 0)
    }
}
