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
    fmt,
    path::{Path, PathBuf},
};

use loopwarden_common::{
    AncestorMasks, COMM_LEN, EXE_NAME_LEN, ExeKey, MAX_ANCESTORS, MAX_CGROUP_LEVEL,
    MAX_CGROUP_LEVELS_USED, MAX_RULES, PORT_WORDS, Settings, flags,
};

use crate::{
    catalog::{CATALOG, CatalogEntry},
    config::{Config, DenyErrno, Located, Location, PortSet, Rule},
};

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    /// As written in the config (e.g. `/run/netns/blue`).
    pub path: String,
    /// `SO_NETNS_COOKIE` of the namespace.
    pub cookie: u64,
}

/// What userspace keeps about each rule, for reporting.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RuleInfo {
    /// Unique name; catalog rules are `catalog:<name>`.
    pub name: String,
    pub action: Action,
    /// Human summary of what it matches, e.g. `exe_name in [socat]`.
    pub matches: String,
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
    /// What each executable path of the rules stood for when this policy was
    /// compiled; the next compile of the same config starts from it (see
    /// [`compile_lenient`]).
    pub exe_paths: BTreeMap<PathBuf, ExeIdentities>,
    /// Indexed by rule number (bit position).
    pub rules: Vec<RuleInfo>,
    /// Things an operator should know that do not stop the policy from
    /// loading (e.g. a cgroup that does not exist yet).
    pub warnings: Vec<String>,
}

/// Who a process is, in the terms the kernel programs match on; read from
/// `/proc` by [`crate::cut`] for connections made before a policy applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The executable's device (kernel encoding) and inode.
    pub exe: ExeKey,
    /// The executable's file name (dentry name), raw bytes.
    pub exe_name: Vec<u8>,
    /// comm values that may speak for the caller (the thread's and the
    /// process's); a comm criterion matches when any of them does.
    pub comms: Vec<Vec<u8>>,
    /// Real uid.
    pub uid: u32,
    /// cgroup v2 ids from the root (level 0) down to the process's own.
    pub cgroups: Vec<u64>,
    /// Executables of the parent, the grandparent, ... as the kernel walks
    /// them: the parent always, then one more generation while the last one
    /// has a pid above 1, at most [`MAX_ANCESTORS`] in all.
    pub ancestors: Vec<ExeKey>,
}

impl CompiledPolicy {
    /// The rule the kernel's `match_rules` (ebpf/src/connect.rs) picks for a
    /// caller with this identity: per criterion, the OR of the masks of the
    /// caller's values plus the criterion's wildcard mask; the AND over all
    /// criteria; the lowest set bit. `None` when no rule matches.
    pub fn first_match(&self, id: &ProcessIdentity) -> Option<usize> {
        fn mask<K: Ord>(map: &BTreeMap<K, u64>, k: &K) -> u64 {
            map.get(k).copied().unwrap_or(0)
        }
        let s = &self.settings;
        let mut m = s.active;
        m &= mask(&self.uid, &id.uid) | s.wild_uid;
        let comm = id
            .comms
            .iter()
            .fold(0, |acc, c| acc | mask(&self.comm, &fixed_bytes(c)));
        m &= comm | s.wild_comm;
        m &= mask(&self.exe_name, &fixed_bytes(&id.exe_name)) | s.wild_exe_name;
        m &= mask(&self.exe, &id.exe) | s.wild_exe;
        if m & !s.wild_cgroup != 0 {
            // One ancestor lookup per level some rule names, lowest level
            // first, at most MAX_CGROUP_LEVELS_USED of them; above the
            // process's depth the kernel's helper returns 0, which no rule names.
            let mut cg = 0;
            let mut left = s.cgroup_levels;
            for _ in 0..MAX_CGROUP_LEVELS_USED {
                if left == 0 {
                    break;
                }
                let level = left.trailing_zeros() as usize;
                left &= left - 1;
                let ancestor = id.cgroups.get(level).copied().unwrap_or(0);
                cg |= mask(&self.cgroup, &ancestor);
            }
            m &= cg | s.wild_cgroup;
        }
        if m & !s.wild_ancestor != 0 && s.flags & flags::ANCESTORS != 0 {
            let mut an = 0;
            for (depth, exe) in id.ancestors.iter().take(MAX_ANCESTORS).enumerate() {
                if let Some(v) = self.ancestor.get(exe) {
                    an |= v.ancestor;
                    if depth == 0 {
                        an |= v.parent;
                    }
                }
            }
            m &= an | s.wild_ancestor;
        }
        (m != 0).then(|| m.trailing_zeros() as usize)
    }

    /// The first matching rule for this identity when it is a deny rule.
    pub fn denying_rule(&self, id: &ProcessIdentity) -> Option<usize> {
        self.first_match(id)
            .filter(|&rule| self.settings.deny & 1 << rule != 0)
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
    /// The superblock's `s_dev` in the kernel's encoding: the device the
    /// kernel programs read for a running executable. `stat()` reports
    /// another one on btrfs (every subvolume has an anonymous device of its
    /// own) and on overlayfs over several filesystems.
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
    /// `PATH`; every distinct file found (after following symlinks).
    fn find_executables(&self, name: &str) -> Vec<std::path::PathBuf>;
    /// uid of a user name; `Ok(None)` when there is no such user.
    fn user(&self, name: &str) -> std::io::Result<Option<u32>>;
    /// A cgroup by path below the cgroup v2 root (`system.slice/foo.service`)
    /// or, for a bare unit name (`foo.service`), wherever it is in the tree.
    fn cgroup(&self, path_or_unit: &str) -> std::io::Result<CgroupId>;
    /// Network namespace cookie of a namespace file (`/run/netns/x`,
    /// `/proc/PID/ns/net`).
    fn netns(&self, path: &Path) -> std::io::Result<u64>;
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

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Action::Deny => "deny",
            Action::Audit => "audit",
            Action::Allow => "allow",
        })
    }
}

impl Ports {
    /// The protected ports as inclusive ranges, lowest first; `None` for
    /// [`Ports::All`].
    pub fn ranges(&self) -> Option<Vec<(u16, u16)>> {
        let Ports::Some(_) = self else { return None };
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for port in 0..=u16::MAX {
            if !self.contains(port) {
                continue;
            }
            match ranges.last_mut() {
                Some((_, last)) if u32::from(*last) + 1 == u32::from(port) => *last = port,
                _ => ranges.push((port, port)),
            }
        }
        Some(ranges)
    }
}

impl fmt::Display for Ports {
    /// `all`, or compact ranges: `22, 8080, 9000-9100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(ranges) = self.ranges() else {
            return f.write_str("all");
        };
        if ranges.is_empty() {
            return f.write_str("none");
        }
        for (i, (first, last)) in ranges.into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if first == last {
                write!(f, "{first}")?;
            } else {
                write!(f, "{first}-{last}")?;
            }
        }
        Ok(())
    }
}

/// An [`ExeKey`] the way people read device numbers: `dev 8:1 ino 1234`.
struct ExeId(ExeKey);

impl fmt::Display for ExeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev {} ino {}", DevName(self.0.dev), self.0.ino)
    }
}

/// A device number in the kernel's encoding, shown as `major:minor`.
struct DevName(u64);

impl fmt::Display for DevName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 20, self.0 & 0xf_ffff)
    }
}

/// Symbolic name of the deny errnos the config allows.
fn errno_name(errno: u32) -> Option<&'static str> {
    [DenyErrno::Econnrefused, DenyErrno::Eperm]
        .into_iter()
        .find(|e| e.errno() == errno)
        .map(DenyErrno::name)
}

impl fmt::Display for CompiledPolicy {
    /// The summary `loopwarden check-config` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        let mode_note = match self.mode {
            Mode::Audit => "deny rules are reported, not enforced",
            Mode::Enforce => "deny rules refuse the connect",
        };
        writeln!(f, "mode:        {} ({mode_note})", self.mode)?;
        match errno_name(s.deny_errno) {
            Some(name) => writeln!(f, "deny errno:  {name} ({})", s.deny_errno)?,
            None => writeln!(f, "deny errno:  {}", s.deny_errno)?,
        }
        writeln!(f, "ports:       {}", self.ports)?;
        if self.netns.is_empty() {
            writeln!(f, "netns:       all")?;
        } else {
            let list: Vec<String> = self
                .netns
                .iter()
                .map(|n| format!("{} (cookie {})", n.path, n.cookie))
                .collect();
            writeln!(f, "netns:       {}", list.join(", "))?;
        }
        let addresses = if self.host_addresses {
            "loopback and the host's own addresses"
        } else {
            "loopback"
        };
        writeln!(f, "addresses:   {addresses}")?;
        let log_allowed = if s.flags & flags::LOG_ALLOWED != 0 {
            "yes"
        } else {
            "no"
        };
        writeln!(f, "log allowed: {log_allowed}")?;
        writeln!(f, "rules:       {} (first match wins)", self.rules.len())?;
        let width = self.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for (i, rule) in self.rules.iter().enumerate() {
            writeln!(
                f,
                "  {i:>2}  {:<width$}  {:<5}  {}",
                rule.name, rule.action, rule.matches
            )?;
        }
        if !self.warnings.is_empty() {
            writeln!(f, "warnings:")?;
            for warning in &self.warnings {
                writeln!(f, "  {warning}")?;
            }
        }
        Ok(())
    }
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
    /// number alone does not single the file out there.
    #[error(
        "{file}:{at}: rule `{rule}`: {field} {} is on {} (mounted at {}), where stat() \
         reports device {} but the kernel identifies running executables by the filesystem's \
         device {}, and inode numbers repeat across btrfs subvolumes (and overlayfs layers): \
         matching it by device and inode could also match an unrelated file of another \
         subvolume. Match it by `exe_name`, by `cgroup` (its unit), or move the binary to a \
         filesystem without subvolumes (ext4, xfs)",
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
}

/// Compiles a validated config into map contents: the user's rules in file
/// order get bits `0..`, then the catalog's (if enabled). Names are resolved
/// through `resolver`; a user rule naming something that does not exist is an
/// error, except a cgroup, which only warns (units are often not running
/// yet). Catalog programs that are not installed are simply matched by name.
/// An executable path also matches the deleted files that processes started
/// from it still run (see the module documentation).
pub fn compile(config: &Config, resolver: &dyn Resolver) -> Result<CompiledPolicy, PolicyError> {
    compile_with(config, resolver, false, None)
}

/// Like [`compile`], for re-resolving a config that already loaded: a value
/// that no longer resolves (an executable removed, a user deleted, a network
/// namespace gone) becomes a warning and matches nothing, instead of failing
/// the whole policy, so the rest keeps following the system. A rule keeps
/// constraining that attribute, so it never widens to match everything.
///
/// `previous` is the policy this one replaces: every identity an executable
/// path stood for there is kept as long as some process still runs it, so a
/// process started before an upgrade replaced its binary keeps matching.
pub fn compile_lenient(
    config: &Config,
    resolver: &dyn Resolver,
    previous: Option<&CompiledPolicy>,
) -> Result<CompiledPolicy, PolicyError> {
    compile_with(config, resolver, true, previous.map(|p| &p.exe_paths))
}

fn compile_with(
    config: &Config,
    resolver: &dyn Resolver,
    lenient: bool,
    previous: Option<&BTreeMap<PathBuf, ExeIdentities>>,
) -> Result<CompiledPolicy, PolicyError> {
    let catalog: &[CatalogEntry] = if config.catalog { CATALOG } else { &[] };
    if config.rules.len() + catalog.len() > MAX_RULES {
        return Err(PolicyError::TooManyRules {
            file: config.source.clone(),
            user: config.rules.len(),
            catalog: catalog.len(),
            max: MAX_RULES,
        });
    }

    let mut compiler = Compiler {
        file: &config.source,
        resolver,
        lenient,
        previous,
        live: None,
        policy: CompiledPolicy {
            mode: config.mode,
            settings: settings(config),
            ports: ports(&config.protect.ports),
            netns: Vec::with_capacity(config.protect.netns.len()),
            host_addresses: config.protect.host_addresses,
            exe: BTreeMap::new(),
            exe_name: BTreeMap::new(),
            comm: BTreeMap::new(),
            uid: BTreeMap::new(),
            cgroup: BTreeMap::new(),
            ancestor: BTreeMap::new(),
            exe_paths: BTreeMap::new(),
            rules: Vec::with_capacity(config.rules.len() + catalog.len()),
            warnings: config.warnings.clone(),
        },
    };
    compiler.netns(&config.protect.netns)?;
    for rule in &config.rules {
        compiler.user_rule(rule)?;
    }
    for entry in catalog {
        compiler.catalog_rule(entry);
    }
    Ok(compiler.policy)
}

/// The settings that follow from the config alone; rule masks come later.
fn settings(config: &Config) -> Settings {
    let mut flags = flags::ENABLED;
    let set = |on: bool, flag: u32| if on { flag } else { 0 };
    flags |= set(config.mode == Mode::Enforce, flags::ENFORCE);
    flags |= set(config.protect.ports == PortSet::All, flags::ALL_PORTS);
    flags |= set(!config.protect.netns.is_empty(), flags::NETNS_SCOPED);
    flags |= set(config.protect.host_addresses, flags::HOST_ADDRS);
    flags |= set(config.log_allowed, flags::LOG_ALLOWED);
    Settings {
        flags,
        deny_errno: config.deny_errno.errno(),
        ..Settings::default()
    }
}

fn ports(set: &PortSet) -> Ports {
    let PortSet::Ranges(ranges) = set else {
        return Ports::All;
    };
    // In order, skipping ports already set, each port is set at most once
    // however often the file repeats it: thousands of "1-65535" cost what
    // one does.
    let mut ranges: Vec<(u16, u16)> = ranges.iter().map(|r| (r.first, r.last)).collect();
    ranges.sort_unstable();
    let mut words = Box::new([0u64; PORT_WORDS as usize]);
    let mut unset = 0u32;
    for (first, last) in ranges {
        for port in u32::from(first).max(unset)..=u32::from(last) {
            words[(port >> 6) as usize] |= 1 << (port & 63);
        }
        unset = unset.max(u32::from(last) + 1);
    }
    Ports::Some(words)
}

/// Which attributes a rule constrains; the others get its wildcard bit.
#[derive(Default)]
struct Constrains {
    exe: bool,
    exe_name: bool,
    comm: bool,
    uid: bool,
    cgroup: bool,
    ancestor: bool,
}

/// Builds a [`CompiledPolicy`] one rule at a time.
struct Compiler<'a> {
    file: &'a str,
    resolver: &'a dyn Resolver,
    /// Unresolvable values warn instead of failing (see [`compile_lenient`]).
    lenient: bool,
    /// What the executable paths stood for in the policy this one replaces.
    previous: Option<&'a BTreeMap<PathBuf, ExeIdentities>>,
    /// The running executables, looked up at most once per compile.
    live: Option<LiveExes>,
    policy: CompiledPolicy,
}

impl Compiler<'_> {
    /// In lenient mode, records `err` as a warning and returns `None`;
    /// otherwise returns it.
    fn tolerate<T>(&mut self, result: Result<T, PolicyError>) -> Result<Option<T>, PolicyError> {
        self.tolerate_as(result, "this value matches nothing until it resolves again")
    }

    /// [`Compiler::tolerate`], saying `meanwhile` about the value.
    fn tolerate_as<T>(
        &mut self,
        result: Result<T, PolicyError>,
        meanwhile: &str,
    ) -> Result<Option<T>, PolicyError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.lenient => {
                self.policy
                    .warnings
                    .push(format!("{}; {meanwhile}", with_causes(&e)));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The running executables: one walk of `/proc`, the first time only.
    fn live(&mut self) -> &LiveExes {
        let resolver = self.resolver;
        self.live.get_or_insert_with(|| resolver.live_exes())
    }

    fn netns(&mut self, paths: &[Located<PathBuf>]) -> Result<(), PolicyError> {
        for path in paths {
            let cookie = self
                .resolver
                .netns(&path.value)
                .map_err(|source| PolicyError::Netns {
                    file: self.file.to_owned(),
                    at: path.at,
                    path: path.value.clone(),
                    source,
                });
            let Some(cookie) = self.tolerate(cookie)? else {
                continue;
            };
            self.policy.netns.push(Netns {
                path: path.value.display().to_string(),
                cookie,
            });
        }
        Ok(())
    }

    /// Registers the next rule and returns its bit.
    fn add_rule(&mut self, info: RuleInfo, constrains: &Constrains) -> u64 {
        let bit = 1u64 << self.policy.rules.len();
        let s = &mut self.policy.settings;
        s.active |= bit;
        match info.action {
            Action::Deny => s.deny |= bit,
            Action::Audit => s.audit |= bit,
            Action::Allow => {}
        }
        let wild = |constrained: bool| if constrained { 0 } else { bit };
        s.wild_exe |= wild(constrains.exe);
        s.wild_exe_name |= wild(constrains.exe_name);
        s.wild_comm |= wild(constrains.comm);
        s.wild_uid |= wild(constrains.uid);
        s.wild_cgroup |= wild(constrains.cgroup);
        s.wild_ancestor |= wild(constrains.ancestor);
        if constrains.ancestor {
            s.flags |= flags::ANCESTORS;
        }
        self.policy.rules.push(info);
        bit
    }

    fn user_rule(&mut self, rule: &Rule) -> Result<(), PolicyError> {
        let c = &rule.criteria;
        let constrains = Constrains {
            exe: !c.exe.is_empty(),
            exe_name: !c.exe_name.is_empty(),
            comm: !c.comm.is_empty(),
            uid: !c.uid.is_empty() || !c.user.is_empty(),
            cgroup: !c.cgroup.is_empty(),
            ancestor: !c.parent_exe.is_empty() || !c.ancestor_exe.is_empty(),
        };

        // Resolve everything first, so a failure leaves no half-added rule.
        let exe = self.exes(rule, "exe", &c.exe)?;
        let parent = self.exes(rule, "parent_exe", &c.parent_exe)?;
        let ancestor = self.exes(rule, "ancestor_exe", &c.ancestor_exe)?;
        let mut uids: Vec<(u32, String)> = c
            .uid
            .iter()
            .map(|uid| (uid.value, uid.value.to_string()))
            .collect();
        for user in &c.user {
            let uid = match self.resolver.user(&user.value) {
                Ok(Some(uid)) => Ok(uid),
                Ok(None) => Err(PolicyError::UnknownUser {
                    file: self.file.to_owned(),
                    at: user.at,
                    rule: rule.name.clone(),
                    user: user.value.clone(),
                }),
                Err(source) => Err(PolicyError::UserLookup {
                    file: self.file.to_owned(),
                    at: user.at,
                    rule: rule.name.clone(),
                    user: user.value.clone(),
                    source,
                }),
            };
            let Some(uid) = self.tolerate(uid)? else {
                continue;
            };
            uids.push((uid, format!("{uid} (user {})", user.value)));
        }
        let mut cgroups = Vec::with_capacity(c.cgroup.len());
        let mut levels = self.policy.settings.cgroup_levels;
        for cgroup in &c.cgroup {
            match self.resolver.cgroup(&cgroup.value) {
                Ok(id)
                    if id.level as usize <= MAX_CGROUP_LEVEL
                        && (levels | 1 << id.level).count_ones() as usize
                            > MAX_CGROUP_LEVELS_USED =>
                {
                    let err = Err(PolicyError::CgroupLevels {
                        file: self.file.to_owned(),
                        at: cgroup.at,
                        rule: rule.name.clone(),
                        cgroup: cgroup.value.clone(),
                        level: id.level,
                        max: MAX_CGROUP_LEVELS_USED,
                    });
                    self.tolerate::<()>(err)?;
                    cgroups.push((
                        None,
                        format!("{} (level {} over the limit)", cgroup.value, id.level),
                    ));
                }
                Ok(id) if id.level as usize > MAX_CGROUP_LEVEL => {
                    return Err(PolicyError::CgroupTooDeep {
                        file: self.file.to_owned(),
                        at: cgroup.at,
                        rule: rule.name.clone(),
                        cgroup: cgroup.value.clone(),
                        level: id.level,
                        max: MAX_CGROUP_LEVEL,
                    });
                }
                Ok(id) => {
                    levels |= 1 << id.level;
                    cgroups.push((
                        Some(id),
                        format!("{} (id {}, level {})", cgroup.value, id.id, id.level),
                    ));
                }
                Err(e) => {
                    self.policy.warnings.push(format!(
                        "{}:{}: rule `{}`: cgroup `{}` not found ({e}); the rule is loaded, but \
                         this value matches nothing until the cgroup exists (the daemon looks again every second)",
                        self.file, cgroup.at, rule.name, cgroup.value
                    ));
                    cgroups.push((None, format!("{} (not found)", cgroup.value)));
                }
            }
        }

        let mut parts = Vec::new();
        describe(&mut parts, "exe", exe.iter().map(|(_, d)| d.clone()));
        describe(
            &mut parts,
            "exe_name",
            c.exe_name.iter().map(|n| n.value.clone()),
        );
        describe(&mut parts, "comm", c.comm.iter().map(|n| n.value.clone()));
        describe(&mut parts, "uid", uids.iter().map(|(_, d)| d.clone()));
        describe(&mut parts, "cgroup", cgroups.iter().map(|(_, d)| d.clone()));
        let mut lineage = Vec::new();
        describe(
            &mut lineage,
            "parent_exe",
            parent.iter().map(|(_, d)| d.clone()),
        );
        describe(
            &mut lineage,
            "ancestor_exe",
            ancestor.iter().map(|(_, d)| d.clone()),
        );
        match lineage.len() {
            0 => {}
            1 => parts.append(&mut lineage),
            _ => parts.push(format!("({})", lineage.join(" or "))),
        }

        let bit = self.add_rule(
            RuleInfo {
                name: rule.name.clone(),
                action: rule.action,
                matches: parts.join(" and "),
            },
            &constrains,
        );
        let p = &mut self.policy;
        for (key, _) in exe {
            *p.exe.entry(key).or_default() |= bit;
        }
        for name in &c.exe_name {
            *p.exe_name.entry(fixed_name(&name.value)).or_default() |= bit;
        }
        for comm in &c.comm {
            *p.comm.entry(fixed_name(&comm.value)).or_default() |= bit;
        }
        for (uid, _) in uids {
            *p.uid.entry(uid).or_default() |= bit;
        }
        for id in cgroups.into_iter().filter_map(|(id, _)| id) {
            *p.cgroup.entry(id.id).or_default() |= bit;
            p.settings.cgroup_levels |= 1 << id.level;
        }
        for (key, _) in parent {
            p.ancestor.entry(key).or_default().parent |= bit;
        }
        for (key, _) in ancestor {
            p.ancestor.entry(key).or_default().ancestor |= bit;
        }
        Ok(())
    }

    /// Resolves executable paths to keys, with a description of each: the
    /// file at each path now, and earlier ones that processes still run.
    fn exes(
        &mut self,
        rule: &Rule,
        field: &'static str,
        paths: &[Located<PathBuf>],
    ) -> Result<Vec<(ExeKey, String)>, PolicyError> {
        let mut resolved = Vec::with_capacity(paths.len());
        for path in paths {
            let file = self
                .resolver
                .exe(&path.value)
                .map_err(|source| PolicyError::Exe {
                    file: self.file.to_owned(),
                    at: path.at,
                    rule: rule.name.clone(),
                    field,
                    path: path.value.clone(),
                    source,
                })
                .and_then(|file| self.unambiguous(rule, field, path, file));
            let kept = self.kept(&path.value, file.as_ref().ok());
            let meanwhile = match (kept.first_key_value(), &file) {
                (Some((_, pid)), _) => format!(
                    "until it resolves again, this value matches only the earlier file still \
                     running (pid {pid})"
                ),
                (None, Err(PolicyError::ExeAmbiguous { .. })) => {
                    "this value is skipped (it matches nothing)".to_owned()
                }
                (None, _) => "this value matches nothing until it resolves again".to_owned(),
            };
            let current = self.tolerate_as(file, &meanwhile)?.map(|file| file.key);
            let shown = path.value.display();
            if let Some(key) = current {
                resolved.push((key, format!("{shown} ({})", ExeId(key))));
            }
            for (&key, pid) in &kept {
                self.policy.warnings.push(format!(
                    "{}:{}: rule `{}`: {field} {shown} ({}) was replaced on disk; it still \
                     matches while it runs (pid {pid}), and stops matching when no process \
                     runs it any more",
                    self.file,
                    path.at,
                    rule.name,
                    ExeId(key)
                ));
                resolved.push((
                    key,
                    format!(
                        "{shown} ({}; replaced on disk, still running as pid {pid})",
                        ExeId(key)
                    ),
                ));
            }
            self.policy
                .exe_paths
                .insert(path.value.clone(), ExeIdentities { current, kept });
        }
        Ok(resolved)
    }

    /// Refuses a file whose `stat()` device is not the one the kernel reads
    /// (btrfs, overlayfs over several filesystems): the kernel's key, the
    /// superblock's device and the inode, may name another file too.
    fn unambiguous(
        &self,
        rule: &Rule,
        field: &'static str,
        path: &Located<PathBuf>,
        file: ExeFile,
    ) -> Result<ExeFile, PolicyError> {
        match &file.mount {
            Some(mount) if mount.dev != file.key.dev => Err(PolicyError::ExeAmbiguous {
                file: self.file.to_owned(),
                at: path.at,
                rule: rule.name.clone(),
                field,
                path: path.value.clone(),
                stat_dev: file.key.dev,
                mount: Box::new(mount.clone()),
            }),
            _ => Ok(file),
        }
    }

    /// Earlier files of `path` that processes still run, with a pid running
    /// each: those it stood for in the previous policy, or, when that one
    /// did not have it, deleted files that processes were started from at
    /// this very path.
    fn kept(&mut self, path: &Path, current: Option<&ExeFile>) -> BTreeMap<ExeKey, u32> {
        let now = current.map(|file| file.key);
        let mut kept = BTreeMap::new();
        let previous = self.previous;
        match previous.and_then(|p| p.get(path)) {
            Some(before) => {
                for &key in before.current.iter().chain(before.kept.keys()) {
                    if Some(key) == now || kept.contains_key(&key) {
                        continue;
                    }
                    // While the process shown last time still runs the file,
                    // no walk of /proc is needed.
                    if let Some(&pid) = before.kept.get(&key)
                        && self.resolver.running_exe(pid) == Some(key)
                    {
                        kept.insert(key, pid);
                    } else if let Some(live) = self.live().get(&key) {
                        kept.insert(key, live.pid);
                    }
                }
            }
            None => {
                // Nothing known yet (start-up, check-config, a path new in a
                // reloaded file). rename() cannot cross filesystems, so an
                // upgrade leaves the old file on the device of the new one;
                // that also keeps out a file of another mount namespace that
                // happened to be deleted under the same name.
                let Some(file) = current else {
                    return kept;
                };
                for (&key, live) in self.live() {
                    if key != file.key
                        && key.dev == file.key.dev
                        && live.deleted_path.as_deref() == Some(file.real_path.as_path())
                    {
                        kept.insert(key, live.pid);
                    }
                }
            }
        }
        kept
    }

    fn catalog_rule(&mut self, entry: &CatalogEntry) {
        let mut names: Vec<String> = entry.exe_names.iter().map(|n| (*n).to_owned()).collect();
        for exe_name in entry.exe_names {
            for path in self.resolver.find_executables(exe_name) {
                // Not installed or unreadable: the plain name still matches.
                if let Ok(real) = self.resolver.exe_file_name(&path)
                    && !names.contains(&real)
                {
                    names.push(real);
                }
            }
        }
        let mut parts = Vec::new();
        describe(&mut parts, "exe_name", names.iter().cloned());
        let bit = self.add_rule(
            RuleInfo {
                name: entry.rule_name(),
                action: entry.action,
                matches: parts.join(" and "),
            },
            &Constrains {
                exe_name: true,
                ..Constrains::default()
            },
        );
        for name in &names {
            *self.policy.exe_name.entry(fixed_name(name)).or_default() |= bit;
        }
    }
}

/// An error and its causes, `: `-separated, for a one-line warning.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Appends `field v` or `field in [a, b]` to `parts`; nothing for no values.
fn describe(parts: &mut Vec<String>, field: &str, values: impl Iterator<Item = String>) {
    let values: Vec<String> = values.collect();
    match values.as_slice() {
        [] => {}
        [one] => parts.push(format!("{field} {one}")),
        many => parts.push(format!("{field} in [{}]", many.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, collections::HashMap, io};

    use super::*;
    use crate::config::PortRange;

    fn not_found() -> io::Error {
        io::Error::from(io::ErrorKind::NotFound)
    }

    /// A host made of hash maps.
    #[derive(Default)]
    struct FakeResolver {
        /// Path → (file, kernel-visible file name).
        exes: HashMap<PathBuf, (ExeFile, String)>,
        found: HashMap<String, Vec<PathBuf>>,
        users: HashMap<String, u32>,
        /// User names whose lookup fails (a directory service down).
        broken_users: Vec<String>,
        cgroups: HashMap<String, CgroupId>,
        netns: HashMap<PathBuf, u64>,
        /// Running processes: pid → executable.
        processes: BTreeMap<u32, ExeKey>,
        /// Executables deleted since they were started, with their path.
        deleted: HashMap<ExeKey, PathBuf>,
        /// How many times `live_exes` walked the processes.
        walks: Cell<usize>,
    }

    impl FakeResolver {
        fn with_exe(mut self, path: &str, key: ExeKey) -> Self {
            self.put_exe(path, key);
            self
        }

        /// Puts a file at `path` (on a plain filesystem), replacing any.
        fn put_exe(&mut self, path: &str, key: ExeKey) {
            let name = path.rsplit('/').next().unwrap_or(path).to_owned();
            let file = ExeFile {
                key,
                real_path: PathBuf::from(path),
                mount: Some(MountDev {
                    dev: key.dev,
                    fs_type: "ext4".to_owned(),
                    mount_point: PathBuf::from("/"),
                }),
            };
            self.exes.insert(PathBuf::from(path), (file, name));
        }
    }

    impl Resolver for FakeResolver {
        fn exe(&self, path: &Path) -> io::Result<ExeFile> {
            self.exes
                .get(path)
                .map(|(file, _)| file.clone())
                .ok_or_else(not_found)
        }

        fn live_exes(&self) -> LiveExes {
            self.walks.set(self.walks.get() + 1);
            let mut live = LiveExes::new();
            for (&pid, &key) in &self.processes {
                live.entry(key).or_insert_with(|| LiveExe {
                    pid,
                    deleted_path: self.deleted.get(&key).cloned(),
                });
            }
            live
        }

        fn running_exe(&self, pid: u32) -> Option<ExeKey> {
            self.processes.get(&pid).copied()
        }

        fn exe_file_name(&self, path: &Path) -> io::Result<String> {
            self.exes
                .get(path)
                .map(|(_, name)| name.clone())
                .ok_or_else(not_found)
        }

        fn find_executables(&self, name: &str) -> Vec<PathBuf> {
            self.found.get(name).cloned().unwrap_or_default()
        }

        fn user(&self, name: &str) -> io::Result<Option<u32>> {
            if self.broken_users.iter().any(|u| u == name) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the directory did not answer",
                ));
            }
            Ok(self.users.get(name).copied())
        }

        fn cgroup(&self, path_or_unit: &str) -> io::Result<CgroupId> {
            self.cgroups
                .get(path_or_unit)
                .copied()
                .ok_or_else(not_found)
        }

        fn netns(&self, path: &Path) -> io::Result<u64> {
            self.netns.get(path).copied().ok_or_else(not_found)
        }
    }

    /// Who is connecting, as the kernel would see it.
    #[derive(Clone)]
    struct TestIdentity {
        exe: ExeKey,
        exe_name: &'static str,
        comm: &'static str,
        uid: u32,
        /// cgroup ids from the root (level 0) down to the task's own.
        cgroups: Vec<u64>,
        /// Executables of the parent, the grandparent, ...
        ancestors: Vec<ExeKey>,
    }

    impl Default for TestIdentity {
        fn default() -> Self {
            TestIdentity {
                exe: key(99),
                exe_name: "bash",
                comm: "bash",
                uid: 1000,
                cgroups: vec![ROOT_CGROUP],
                ancestors: vec![key(1)],
            }
        }
    }

    const ROOT_CGROUP: u64 = 1;

    fn key(ino: u64) -> ExeKey {
        ExeKey::from_major_minor(0, 27, ino)
    }

    /// The production matcher on a test identity.
    fn simulate(policy: &CompiledPolicy, id: &TestIdentity) -> Option<usize> {
        policy.first_match(&ProcessIdentity {
            exe: id.exe,
            exe_name: id.exe_name.as_bytes().to_vec(),
            comms: vec![id.comm.as_bytes().to_vec()],
            uid: id.uid,
            cgroups: id.cgroups.clone(),
            ancestors: id.ancestors.clone(),
        })
    }

    fn config(text: &str) -> Config {
        match Config::from_str_named(text, "test.toml") {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        }
    }

    fn compile_ok(text: &str, resolver: &FakeResolver) -> CompiledPolicy {
        match compile(&config(text), resolver) {
            Ok(policy) => policy,
            Err(e) => panic!("{e}"),
        }
    }

    fn host() -> FakeResolver {
        let mut r = FakeResolver::default()
            .with_exe("/usr/bin/socat", key(10))
            .with_exe("/usr/sbin/sshd", key(20))
            .with_exe("/usr/bin/tmux", key(30))
            .with_exe("/opt/bore/bore-x86_64", key(40));
        r.found.insert(
            "bore".to_owned(),
            vec![PathBuf::from("/opt/bore/bore-x86_64")],
        );
        r.users.insert("nobody".to_owned(), 65534);
        r.cgroups
            .insert("system.slice".to_owned(), CgroupId { id: 10, level: 1 });
        r.cgroups.insert(
            "cloudflared.service".to_owned(),
            CgroupId { id: 21, level: 2 },
        );
        r.netns.insert(PathBuf::from("/run/netns/blue"), 4096);
        r
    }

    #[test]
    fn cgroup_rules_may_name_at_most_four_levels() {
        let mut r = host();
        for level in 1..=5u32 {
            r.cgroups.insert(
                format!("l{level}"),
                CgroupId {
                    id: 100 + u64::from(level),
                    level,
                },
            );
        }
        let rules = |n: u32| {
            (1..=n)
                .map(|l| {
                    format!("[[rule]]\nname = \"r{l}\"\naction = \"deny\"\ncgroup = \"l{l}\"\n")
                })
                .collect::<String>()
        };
        let policy = compile(&config(&format!("catalog = false\n{}", rules(4))), &r).unwrap();
        assert_eq!(policy.settings.cgroup_levels, 0b11110);
        let err = compile(&config(&format!("catalog = false\n{}", rules(5))), &r)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rule `r5`"), "{err}");
        assert!(err.contains("no more than 4 different levels"), "{err}");
        // Re-resolution keeps going, with that value matching nothing.
        let policy =
            compile_lenient(&config(&format!("catalog = false\n{}", rules(5))), &r, None).unwrap();
        assert_eq!(policy.settings.cgroup_levels.count_ones(), 4);
        assert_eq!(policy.settings.wild_cgroup, 0);
    }

    #[test]
    fn multi_criteria_rule_masks_and_wildcards() {
        let policy = compile_ok(
            r#"
catalog = false
[[rule]]
name = "multi"
action = "deny"
exe = "/usr/bin/socat"
comm = "socat"
user = "nobody"
cgroup = "cloudflared.service"

[[rule]]
name = "by-name"
action = "audit"
exe_name = "socat"

[[rule]]
name = "lineage"
action = "allow"
parent_exe = "/usr/sbin/sshd"
ancestor_exe = "/usr/bin/tmux"
"#,
            &host(),
        );
        let s = &policy.settings;
        assert_eq!(s.active, 0b111);
        assert_eq!(s.deny, 0b001);
        assert_eq!(s.audit, 0b010);
        assert_eq!(s.wild_exe, 0b110);
        assert_eq!(s.wild_exe_name, 0b101);
        assert_eq!(s.wild_comm, 0b110);
        assert_eq!(s.wild_uid, 0b110);
        assert_eq!(s.wild_cgroup, 0b110);
        assert_eq!(s.wild_ancestor, 0b011);
        assert_eq!(s.cgroup_levels, 1 << 2);
        assert_eq!(
            s.flags,
            flags::ENABLED | flags::ALL_PORTS | flags::ANCESTORS
        );
        assert_eq!(s.deny_errno, 111);

        assert_eq!(policy.exe, BTreeMap::from([(key(10), 0b001)]));
        assert_eq!(policy.comm, BTreeMap::from([(fixed_name("socat"), 0b001)]));
        assert_eq!(policy.uid, BTreeMap::from([(65534, 0b001)]));
        assert_eq!(policy.cgroup, BTreeMap::from([(21, 0b001)]));
        assert_eq!(
            policy.exe_name,
            BTreeMap::from([(fixed_name("socat"), 0b010)])
        );
        assert_eq!(
            policy.ancestor,
            BTreeMap::from([
                (
                    key(20),
                    AncestorMasks {
                        parent: 0b100,
                        ancestor: 0
                    }
                ),
                (
                    key(30),
                    AncestorMasks {
                        parent: 0,
                        ancestor: 0b100
                    }
                ),
            ])
        );
        assert_eq!(
            policy.rules[0].matches,
            "exe /usr/bin/socat (dev 0:27 ino 10) and comm socat and uid 65534 (user nobody) \
             and cgroup cloudflared.service (id 21, level 2)"
        );
        assert_eq!(
            policy.rules[2].matches,
            "(parent_exe /usr/sbin/sshd (dev 0:27 ino 20) or ancestor_exe /usr/bin/tmux (dev 0:27 ino 30))"
        );
        assert!(policy.warnings.is_empty());

        // All criteria of rule 0 hold: it wins over rule 1 (same exe name).
        let socat = TestIdentity {
            exe: key(10),
            exe_name: "socat",
            comm: "socat",
            uid: 65534,
            cgroups: vec![ROOT_CGROUP, 10, 21],
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&policy, &socat), Some(0));
        // One criterion fails (uid): rule 0 is out, rule 1 still matches.
        let other_uid = TestIdentity {
            uid: 0,
            ..socat.clone()
        };
        assert_eq!(simulate(&policy, &other_uid), Some(1));
        // Below the unit's cgroup still counts as inside it.
        let child_cgroup = TestIdentity {
            cgroups: vec![ROOT_CGROUP, 10, 21, 22],
            ..socat.clone()
        };
        assert_eq!(simulate(&policy, &child_cgroup), Some(0));
        let sibling_cgroup = TestIdentity {
            cgroups: vec![ROOT_CGROUP, 10, 23],
            ..socat.clone()
        };
        assert_eq!(simulate(&policy, &sibling_cgroup), Some(1));
        // Neither.
        assert_eq!(simulate(&policy, &TestIdentity::default()), None);
    }

    #[test]
    fn renamed_comm_still_matched_by_exe() {
        let policy = compile_ok(
            "catalog = false\n[[rule]]\nname = \"socat\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\n",
            &host(),
        );
        let disguised = TestIdentity {
            exe: key(10),
            exe_name: "socat",
            comm: "kworker/0:1",
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&policy, &disguised), Some(0));
        let other = TestIdentity {
            comm: "socat",
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&policy, &other), None);
    }

    #[test]
    fn or_within_a_field_and_across_fields() {
        let policy = compile_ok(
            r#"
catalog = false
[[rule]]
name = "r"
action = "audit"
comm = ["a", "b"]
uid = [0, 1000]
"#,
            &host(),
        );
        let id = |comm, uid| TestIdentity {
            comm,
            uid,
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&policy, &id("a", 0)), Some(0));
        assert_eq!(simulate(&policy, &id("b", 1000)), Some(0));
        assert_eq!(simulate(&policy, &id("b", 0)), Some(0));
        assert_eq!(simulate(&policy, &id("a", 5)), None);
        assert_eq!(simulate(&policy, &id("c", 0)), None);
        assert_eq!(
            policy.rules[0].matches,
            "comm in [a, b] and uid in [0, 1000]"
        );
    }

    #[test]
    fn comm_matches_any_of_the_callers_comms() {
        let policy = compile_ok(
            r#"
catalog = false
[[rule]]
name = "local-curl"
action = "allow"
comm = "curl"
[[rule]]
name = "relay-thread"
action = "deny"
comm = "relay"
"#,
            &host(),
        );
        let id = |comms: &[&str]| ProcessIdentity {
            comms: comms.iter().map(|c| c.as_bytes().to_vec()).collect(),
            ..ProcessIdentity::default()
        };
        // The thread's comm or the process's: either one decides.
        assert_eq!(policy.first_match(&id(&["main", "relay"])), Some(1));
        assert_eq!(policy.denying_rule(&id(&["relay", "main"])), Some(1));
        // First match wins across the list too: the allow rule comes first.
        assert_eq!(policy.first_match(&id(&["relay", "curl"])), Some(0));
        assert_eq!(policy.denying_rule(&id(&["relay", "curl"])), None);
        assert_eq!(policy.first_match(&id(&["main"])), None);
        assert_eq!(policy.first_match(&id(&[])), None);
    }

    #[test]
    fn uid_and_user_rules() {
        let policy = compile_ok(
            r#"
catalog = false
[[rule]]
name = "root"
action = "allow"
uid = 0
[[rule]]
name = "nobody"
action = "deny"
user = "nobody"
"#,
            &host(),
        );
        let id = |uid| TestIdentity {
            uid,
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&policy, &id(0)), Some(0));
        assert_eq!(simulate(&policy, &id(65534)), Some(1));
        assert_eq!(simulate(&policy, &id(1000)), None);
    }

    #[test]
    fn cgroup_matches_at_its_level() {
        let policy = compile_ok(
            "catalog = false\n[[rule]]\nname = \"sys\"\naction = \"audit\"\ncgroup = \"system.slice\"\n",
            &host(),
        );
        assert_eq!(policy.settings.cgroup_levels, 1 << 1);
        let id = |cgroups: Vec<u64>| TestIdentity {
            cgroups,
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&policy, &id(vec![ROOT_CGROUP, 10])), Some(0));
        assert_eq!(
            simulate(&policy, &id(vec![ROOT_CGROUP, 10, 55, 56])),
            Some(0)
        );
        assert_eq!(simulate(&policy, &id(vec![ROOT_CGROUP, 11, 12])), None);
        assert_eq!(simulate(&policy, &id(vec![ROOT_CGROUP])), None);
    }

    #[test]
    fn parent_versus_ancestor() {
        let policy = compile_ok(
            r#"
catalog = false
[[rule]]
name = "forwarded"
action = "deny"
parent_exe = "/usr/sbin/sshd"
[[rule]]
name = "under-sshd"
action = "audit"
ancestor_exe = "/usr/sbin/sshd"
"#,
            &host(),
        );
        assert_ne!(policy.settings.flags & flags::ANCESTORS, 0);
        let id = |ancestors: Vec<ExeKey>| TestIdentity {
            ancestors,
            ..TestIdentity::default()
        };
        let (sshd, bash, init) = (key(20), key(2), key(1));
        assert_eq!(simulate(&policy, &id(vec![sshd, init])), Some(0));
        assert_eq!(simulate(&policy, &id(vec![bash, sshd, init])), Some(1));
        assert_eq!(simulate(&policy, &id(vec![bash, init])), None);
        let mut deep = vec![bash; MAX_ANCESTORS];
        deep.push(sshd);
        assert_eq!(simulate(&policy, &id(deep)), None);
    }

    #[test]
    fn user_rules_come_before_the_catalog() {
        let policy = compile_ok(
            "[[rule]]\nname = \"my-socat\"\naction = \"allow\"\nexe_name = \"socat\"\n",
            &host(),
        );
        assert_eq!(policy.rules.len(), 1 + CATALOG.len());
        assert_eq!(policy.rules[0].name, "my-socat");
        let socat = TestIdentity {
            exe_name: "socat",
            comm: "socat",
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&policy, &socat), Some(0));

        let cloudflared = TestIdentity {
            exe_name: "cloudflared",
            ..TestIdentity::default()
        };
        let rule = simulate(&policy, &cloudflared).unwrap();
        assert_eq!(policy.rules[rule].name, "catalog:cloudflared");
        assert_eq!(policy.rules[rule].action, Action::Deny);
        assert_ne!(policy.settings.deny & 1 << rule, 0);

        let nginx = TestIdentity {
            exe_name: "nginx",
            ..TestIdentity::default()
        };
        let rule = simulate(&policy, &nginx).unwrap();
        assert_eq!(policy.rules[rule].name, "catalog:nginx");
        assert_ne!(policy.settings.audit & 1 << rule, 0);

        // A renamed comm does not escape the catalog: it matches the file.
        let sneaky = TestIdentity {
            exe_name: "ngrok",
            comm: "python3",
            ..TestIdentity::default()
        };
        let rule = simulate(&policy, &sneaky).unwrap();
        assert_eq!(policy.rules[rule].name, "catalog:ngrok");
    }

    #[test]
    fn catalog_follows_symlinked_binaries() {
        let policy = compile_ok("catalog = true\n", &host());
        let bore = TestIdentity {
            exe_name: "bore-x86_64",
            ..TestIdentity::default()
        };
        let rule = simulate(&policy, &bore).unwrap();
        assert_eq!(policy.rules[rule].name, "catalog:bore");
        assert_eq!(
            policy.rules[rule].matches,
            "exe_name in [bore, bore-x86_64]"
        );
        assert!(policy.warnings.is_empty());
    }

    #[test]
    fn embedded_default_compiles_on_a_bare_host() {
        let policy = compile(&Config::embedded_default(), &FakeResolver::default()).unwrap();
        assert_eq!(policy.mode, Mode::Audit);
        assert_eq!(policy.rules.len(), CATALOG.len());
        assert_eq!(policy.ports, Ports::All);
        assert!(policy.netns.is_empty());
        assert!(policy.warnings.is_empty());
        let s = &policy.settings;
        assert_eq!(s.flags, flags::ENABLED | flags::ALL_PORTS);
        assert_eq!(s.active.count_ones() as usize, CATALOG.len());
        assert_eq!(s.wild_exe_name, 0);
        assert_eq!(s.wild_exe, s.active);
        assert_eq!(s.deny | s.audit, s.active);
    }

    #[test]
    fn settings_flags_ports_and_netns() {
        let policy = compile_ok(
            r#"
mode = "enforce"
deny_errno = "EPERM"
catalog = false
log_allowed = true
[protect]
ports = [22, "8080", "9000-9100", 9101]
netns = "/run/netns/blue"
host_addresses = true
[[rule]]
name = "r"
action = "deny"
comm = "x"
"#,
            &host(),
        );
        let s = &policy.settings;
        assert_eq!(
            s.flags,
            flags::ENABLED
                | flags::ENFORCE
                | flags::NETNS_SCOPED
                | flags::HOST_ADDRS
                | flags::LOG_ALLOWED
        );
        assert_eq!(s.deny_errno, 1);
        assert!(policy.host_addresses);
        assert_eq!(
            policy.netns,
            [Netns {
                path: "/run/netns/blue".to_owned(),
                cookie: 4096
            }]
        );
        for port in [22, 8080, 9000, 9050, 9100, 9101] {
            assert!(policy.ports.contains(port), "{port}");
        }
        for port in [0, 21, 23, 8081, 8999, 9102, 65535] {
            assert!(!policy.ports.contains(port), "{port}");
        }
        let Ports::Some(words) = &policy.ports else {
            panic!("expected a bitmap");
        };
        assert_eq!(words[0], 1 << 22);
        assert_eq!(policy.ports.to_string(), "22, 8080, 9000-9101");
    }

    #[test]
    fn unresolvable_names_in_user_rules_are_errors() {
        let text = "catalog = false\n[[rule]]\nname = \"gone\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/usr/bin/gone\"]\n";
        let err = compile(&config(text), &host()).unwrap_err();
        assert!(matches!(err, PolicyError::Exe { field: "exe", .. }));
        let message = err.to_string();
        assert!(message.starts_with("test.toml:5:"), "{message}");
        assert!(message.contains("rule `gone`"), "{message}");
        assert!(message.contains("/usr/bin/gone"), "{message}");

        let text = "[[rule]]\nname = \"u\"\naction = \"deny\"\nancestor_exe = \"/usr/bin/gone\"\n";
        let err = compile(&config(text), &host()).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:4:"), "{err}");
        assert!(err.contains("ancestor_exe /usr/bin/gone"), "{err}");

        let text = "[[rule]]\nname = \"u\"\naction = \"deny\"\nuser = \"mallory\"\n";
        let err = compile(&config(text), &host()).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:4:"), "{err}");
        assert!(err.contains("rule `u`: no user named `mallory`"), "{err}");

        let text = "[protect]\nnetns = [\"/run/netns/blue\", \"/run/netns/red\"]\n";
        let err = compile(&config(text), &host()).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:2:29:"), "{err}");
        assert!(err.contains("/run/netns/red"), "{err}");
    }

    #[test]
    fn lenient_recompile_drops_vanished_values_without_widening_the_rule() {
        let text = "catalog = false\n[protect]\nnetns = [\"/run/netns/blue\", \"/run/netns/red\"]\n\n[[rule]]\nname = \"gone\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/usr/bin/gone\"]\n\n[[rule]]\nname = \"nobody\"\naction = \"deny\"\nuser = \"mallory\"\n";
        assert!(compile(&config(text), &host()).is_err());
        let policy = compile_lenient(&config(text), &host(), None).unwrap();
        assert_eq!(policy.warnings.len(), 3, "{:?}", policy.warnings);
        assert!(policy.warnings.iter().any(|w| w.contains("/usr/bin/gone")));
        // Still scoped (to the namespace that exists), still two rules.
        assert_ne!(policy.settings.flags & flags::NETNS_SCOPED, 0);
        assert_eq!(policy.netns.len(), 1);
        assert_eq!(policy.settings.active, 0b11);
        // Rule 0 keeps its resolvable exe; rule 1 constrains uid with no
        // value left, so it matches nobody instead of everybody.
        assert_eq!(policy.exe.len(), 1);
        assert_eq!(policy.settings.wild_exe & 0b01, 0);
        assert_eq!(policy.settings.wild_uid & 0b10, 0);
        assert!(policy.uid.is_empty());
    }

    #[test]
    fn missing_cgroup_is_a_warning() {
        let policy = compile_ok(
            "catalog = false\n[[rule]]\nname = \"tunnel\"\naction = \"deny\"\ncgroup = [\"later.service\", \"system.slice\"]\n",
            &host(),
        );
        assert_eq!(policy.warnings.len(), 1);
        let warning = &policy.warnings[0];
        assert!(warning.starts_with("test.toml:5:"), "{warning}");
        assert!(warning.contains("rule `tunnel`"), "{warning}");
        assert!(warning.contains("later.service"), "{warning}");
        // The rule is loaded, constrained to the cgroup that exists.
        assert_eq!(policy.settings.active, 1);
        assert_eq!(policy.settings.wild_cgroup, 0);
        assert_eq!(policy.cgroup, BTreeMap::from([(10, 1)]));
        assert!(
            policy.rules[0]
                .matches
                .contains("later.service (not found)")
        );
    }

    #[test]
    fn every_port_compiles_quickly() {
        let all_but_zero = |policy: &CompiledPolicy| {
            assert!(!policy.ports.contains(0));
            assert!((1..=u16::MAX).all(|port| policy.ports.contains(port)));
            assert_eq!(policy.ports.to_string(), "1-65535");
            // Not the "all" fast path: port 0 stays unprotected.
            assert_eq!(policy.settings.flags & flags::ALL_PORTS, 0);
        };
        all_but_zero(&compile_ok("[protect]\nports = \"1-65535\"\n", &host()));

        let list: Vec<String> = (1..=u16::MAX).map(|p| p.to_string()).collect();
        let text = format!("[protect]\nports = [{}]\n", list.join(", "));
        let start = std::time::Instant::now();
        let policy = compile_ok(&text, &host());
        let elapsed = start.elapsed();
        println!("65535 listed ports parsed and compiled in {elapsed:?}");
        all_but_zero(&policy);
        assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
    }

    /// Setting every port of every range one by one took time proportional
    /// to the ranges' total length: a 4 MiB file of "1-65535" entries made
    /// tens of billions of steps.
    #[test]
    fn overlapping_port_ranges_cost_what_their_union_does() {
        let every = PortRange {
            first: 1,
            last: u16::MAX,
        };
        let mut ranges = vec![every; 1_000_000];
        ranges.push(PortRange { first: 0, last: 0 });
        let start = std::time::Instant::now();
        let merged = ports(&PortSet::Ranges(ranges));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(merged.ranges(), Some(vec![(0, u16::MAX)]));
        // Nested and adjacent ranges, in any order.
        let ranges = [
            (9000, 9100),
            (22, 22),
            (9050, 9060),
            (9101, 9101),
            (80, 90),
            (85, 95),
        ];
        let merged = ports(&PortSet::Ranges(
            ranges
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
        ));
        assert_eq!(merged.to_string(), "22, 80-95, 9000-9101");
    }

    #[test]
    fn long_paths_fail_to_resolve_clearly() {
        // The longest path Linux takes passes validation; resolving it on
        // the real host fails with the file, line, rule and reason.
        let path = format!("/{}", "a".repeat(199)).repeat(21)[..4095].to_owned();
        let text = format!("[[rule]]\nname = \"long\"\naction = \"deny\"\nexe = \"{path}\"\n");
        let resolver = crate::resolve::HostResolver::new(PathBuf::from("/nonexistent-cgroup"));
        let err = compile(&config(&text), &resolver).unwrap_err();
        assert!(matches!(err, PolicyError::Exe { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("test.toml:4:7: rule `long`: exe /aaa"),
            "{message}"
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("No such file or directory"), "{source}");
    }

    #[test]
    fn config_warnings_reach_the_policy() {
        let policy = compile_ok("# all defaults\n", &host());
        assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
        assert!(policy.warnings[0].contains("no settings"));
        assert!(policy.to_string().contains("no settings"));
    }

    #[test]
    fn too_deep_cgroup_and_too_many_rules() {
        let mut resolver = host();
        resolver
            .cgroups
            .insert("deep".to_owned(), CgroupId { id: 5, level: 32 });
        let text = "[[rule]]\nname = \"d\"\naction = \"deny\"\ncgroup = \"deep\"\n";
        let err = compile(&config(text), &resolver).unwrap_err();
        assert!(matches!(err, PolicyError::CgroupTooDeep { level: 32, .. }));

        // A hand-built config past the limit is refused, not truncated.
        let mut config = config("[[rule]]\nname = \"r\"\naction = \"deny\"\nuid = 1\n");
        let rule = config.rules[0].clone();
        config.rules = vec![rule; MAX_RULES];
        let err = compile(&config, &resolver).unwrap_err();
        assert!(matches!(err, PolicyError::TooManyRules { .. }), "{err}");
    }

    #[test]
    fn summary() {
        let policy = compile_ok(
            r#"
mode = "enforce"
[protect]
ports = [22, "8000-8100"]
netns = "/run/netns/blue"
[[rule]]
name = "relay-socat"
action = "deny"
exe = "/usr/bin/socat"
"#,
            &host(),
        );
        let text = policy.to_string();
        for expected in [
            "mode:        enforce",
            "deny errno:  ECONNREFUSED (111)",
            "ports:       22, 8000-8100",
            "netns:       /run/netns/blue (cookie 4096)",
            "relay-socat",
            "exe /usr/bin/socat (dev 0:27 ino 10)",
            "catalog:cloudflared",
            "exe_name in [sshd, sshd-session, dropbear]",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert!(
            text.lines().any(|l| l.starts_with("   0  relay-socat")),
            "{text}"
        );
    }

    const RELAY: &str = "catalog = false\n[[rule]]\nname = \"relay\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\n";

    fn running(exe: ExeKey) -> TestIdentity {
        TestIdentity {
            exe,
            ..TestIdentity::default()
        }
    }

    #[test]
    fn an_upgraded_exe_keeps_matching_while_the_old_file_runs() {
        let mut host = host();
        host.processes.insert(500, key(10));
        let first = compile_lenient(&config(RELAY), &host, None).unwrap();
        assert_eq!(first.exe, BTreeMap::from([(key(10), 1)]));
        assert_eq!(
            first.exe_paths[Path::new("/usr/bin/socat")],
            ExeIdentities {
                current: Some(key(10)),
                kept: BTreeMap::new(),
            }
        );
        assert!(first.warnings.is_empty(), "{:?}", first.warnings);
        // Nothing known about the path yet: one walk, to look for deleted
        // files started from it.
        assert_eq!(host.walks.get(), 1);

        // The upgrade: a new file (inode 11) at the path; pid 500 still
        // runs inode 10.
        host.put_exe("/usr/bin/socat", key(11));
        let upgraded = compile_lenient(&config(RELAY), &host, Some(&first)).unwrap();
        assert_eq!(upgraded.exe, BTreeMap::from([(key(10), 1), (key(11), 1)]));
        assert_eq!(simulate(&upgraded, &running(key(10))), Some(0));
        assert_eq!(simulate(&upgraded, &running(key(11))), Some(0));
        assert_eq!(simulate(&upgraded, &running(key(12))), None);
        assert_eq!(
            upgraded.exe_paths[Path::new("/usr/bin/socat")],
            ExeIdentities {
                current: Some(key(11)),
                kept: BTreeMap::from([(key(10), 500)]),
            }
        );
        assert_eq!(
            upgraded.rules[0].matches,
            "exe in [/usr/bin/socat (dev 0:27 ino 11), /usr/bin/socat (dev 0:27 ino 10; \
             replaced on disk, still running as pid 500)]"
        );
        assert_eq!(upgraded.warnings.len(), 1, "{:?}", upgraded.warnings);
        let warning = &upgraded.warnings[0];
        assert!(warning.starts_with("test.toml:5:"), "{warning}");
        assert!(
            warning.contains(
                "rule `relay`: exe /usr/bin/socat (dev 0:27 ino 10) was replaced on disk"
            ),
            "{warning}"
        );
        assert!(warning.contains("pid 500"), "{warning}");
        assert!(
            upgraded
                .to_string()
                .contains("replaced on disk, still running as pid 500")
        );
        assert_eq!(host.walks.get(), 2);

        // While pid 500 runs it, no walk is needed, and nothing changes.
        let steady = compile_lenient(&config(RELAY), &host, Some(&upgraded)).unwrap();
        assert_eq!(steady, upgraded);
        assert_eq!(host.walks.get(), 2);

        // pid 500 exits, but a fork of it (pid 501) still runs the old file.
        host.processes.remove(&500);
        host.processes.insert(501, key(10));
        let forked = compile_lenient(&config(RELAY), &host, Some(&steady)).unwrap();
        assert_eq!(
            forked.exe_paths[Path::new("/usr/bin/socat")].kept,
            BTreeMap::from([(key(10), 501)])
        );
        assert_eq!(host.walks.get(), 3);

        // The last process of the old file exits: its identity is dropped.
        host.processes.remove(&501);
        let gone = compile_lenient(&config(RELAY), &host, Some(&forked)).unwrap();
        assert_eq!(gone.exe, BTreeMap::from([(key(11), 1)]));
        assert_eq!(simulate(&gone, &running(key(10))), None);
        assert!(gone.warnings.is_empty(), "{:?}", gone.warnings);
        assert_eq!(host.walks.get(), 4);
        // And nothing is left to check.
        let quiet = compile_lenient(&config(RELAY), &host, Some(&gone)).unwrap();
        assert_eq!(quiet, gone);
        assert_eq!(host.walks.get(), 4);
    }

    #[test]
    fn lineage_rules_keep_an_upgraded_parent_too() {
        let text = "catalog = false\n[[rule]]\nname = \"fwd\"\naction = \"deny\"\nparent_exe = \"/usr/sbin/sshd\"\n[[rule]]\nname = \"under\"\naction = \"audit\"\nancestor_exe = \"/usr/sbin/sshd\"\n";
        let mut host = host();
        host.processes.insert(1, key(1));
        host.processes.insert(700, key(20));
        let first = compile_lenient(&config(text), &host, None).unwrap();
        host.put_exe("/usr/sbin/sshd", key(21));
        let upgraded = compile_lenient(&config(text), &host, Some(&first)).unwrap();
        for sshd in [key(20), key(21)] {
            assert_eq!(
                upgraded.ancestor[&sshd],
                AncestorMasks {
                    parent: 0b01,
                    ancestor: 0b10
                }
            );
        }
        let child_of = |parent| TestIdentity {
            ancestors: vec![parent, key(1)],
            ..TestIdentity::default()
        };
        assert_eq!(simulate(&upgraded, &child_of(key(20))), Some(0));
        assert_eq!(simulate(&upgraded, &child_of(key(21))), Some(0));
        // One walk served both rules.
        assert_eq!(host.walks.get(), 2);
        assert_eq!(upgraded.warnings.len(), 2, "{:?}", upgraded.warnings);
    }

    #[test]
    fn a_removed_exe_still_matches_its_running_processes() {
        let mut host = host();
        host.processes.insert(500, key(10));
        let first = compile_lenient(&config(RELAY), &host, None).unwrap();
        // Uninstalled, or between an upgrade's removal and its new file.
        host.exes.remove(Path::new("/usr/bin/socat"));
        let removed = compile_lenient(&config(RELAY), &host, Some(&first)).unwrap();
        assert_eq!(removed.exe, BTreeMap::from([(key(10), 1)]));
        assert_eq!(
            removed.exe_paths[Path::new("/usr/bin/socat")],
            ExeIdentities {
                current: None,
                kept: BTreeMap::from([(key(10), 500)]),
            }
        );
        assert!(
            removed.warnings.iter().any(|w| w.contains(
                "until it resolves again, this value matches only the earlier file still running (pid 500)"
            )),
            "{:?}",
            removed.warnings
        );
        // Once it exits, the rule matches nothing, but still constrains exe.
        host.processes.clear();
        let gone = compile_lenient(&config(RELAY), &host, Some(&removed)).unwrap();
        assert!(gone.exe.is_empty());
        assert_eq!(gone.settings.wild_exe, 0);
        assert_eq!(simulate(&gone, &running(key(10))), None);
    }

    #[test]
    fn without_history_deleted_files_started_from_the_path_are_kept() {
        let mut host = host().with_exe("/usr/bin/other", key(50));
        // Started from /usr/bin/socat before it was replaced: kept.
        host.processes.insert(300, key(9));
        host.deleted.insert(key(9), PathBuf::from("/usr/bin/socat"));
        // Same name, other filesystem (another mount namespace): not kept.
        let elsewhere = ExeKey::from_major_minor(0, 99, 9);
        host.processes.insert(301, elsewhere);
        host.deleted
            .insert(elsewhere, PathBuf::from("/usr/bin/socat"));
        // Deleted, but started from another path: not kept.
        host.processes.insert(302, key(8));
        host.deleted
            .insert(key(8), PathBuf::from("/usr/bin/socat.old"));
        // Running the current file: it is the current identity anyway.
        host.processes.insert(303, key(10));

        // check-config (strict) shows it as well as the daemon.
        let policy = compile_ok(RELAY, &host);
        assert_eq!(policy.exe, BTreeMap::from([(key(9), 1), (key(10), 1)]));
        assert!(
            policy.to_string().contains(
                "/usr/bin/socat (dev 0:27 ino 9; replaced on disk, still running as pid 300)"
            ),
            "{policy}"
        );
        assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
        assert_eq!(host.walks.get(), 1);

        // From then on, history decides: the kept file stays while pid 300
        // runs it, without a walk.
        let next = compile_lenient(&config(RELAY), &host, Some(&policy)).unwrap();
        assert_eq!(next, policy);
        assert_eq!(host.walks.get(), 1);
    }

    #[test]
    fn one_walk_per_compile_at_most() {
        let text = "catalog = false\n[[rule]]\nname = \"a\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/usr/bin/tmux\"]\nancestor_exe = \"/usr/sbin/sshd\"\n";
        let mut host = host();
        host.processes.insert(10, key(10));
        host.processes.insert(30, key(30));
        let first = compile_lenient(&config(text), &host, None).unwrap();
        assert_eq!(host.walks.get(), 1);
        host.put_exe("/usr/bin/socat", key(11));
        host.put_exe("/usr/bin/tmux", key(31));
        host.put_exe("/usr/sbin/sshd", key(21));
        let next = compile_lenient(&config(text), &host, Some(&first)).unwrap();
        assert_eq!(host.walks.get(), 2);
        assert_eq!(
            next.exe.keys().copied().collect::<Vec<_>>(),
            [key(10), key(11), key(30), key(31)]
        );
        // sshd's old file runs nowhere: dropped at once.
        assert_eq!(next.ancestor.keys().copied().collect::<Vec<_>>(), [key(21)]);
    }

    /// `host()` with `path` on a btrfs subvolume: `stat()` reports the
    /// subvolume's anonymous device 0:46, the kernel the filesystem's 0:45.
    fn on_btrfs(mut host: FakeResolver, path: &str, ino: u64) -> FakeResolver {
        host.put_exe(path, ExeKey::from_major_minor(0, 46, ino));
        if let Some((file, _)) = host.exes.get_mut(Path::new(path)) {
            file.mount = Some(MountDev {
                dev: ExeKey::from_major_minor(0, 45, 0).dev,
                fs_type: "btrfs".to_owned(),
                mount_point: PathBuf::from("/home"),
            });
        }
        host
    }

    #[test]
    fn an_exe_on_a_btrfs_subvolume_is_refused_with_what_to_use_instead() {
        let host = on_btrfs(host(), "/home/u/bin/relay", 257);
        let text = "catalog = false\n[[rule]]\nname = \"relay\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/home/u/bin/relay\"]\n";
        let err = compile(&config(text), &host).unwrap_err();
        assert!(
            matches!(
                &err,
                PolicyError::ExeAmbiguous {
                    field: "exe",
                    stat_dev: 46,
                    mount,
                    ..
                } if mount.dev == 45
            ),
            "{err:?}"
        );
        let message = err.to_string();
        for expected in [
            "test.toml:5:",
            "rule `relay`: exe /home/u/bin/relay is on btrfs (mounted at /home)",
            "stat() reports device 0:46",
            "the filesystem's device 0:45",
            "inode numbers repeat across btrfs subvolumes",
            "`exe_name`",
            "`cgroup`",
            "move the binary to a filesystem without subvolumes",
        ] {
            assert!(
                message.contains(expected),
                "{expected:?} missing: {message}"
            );
        }

        // Re-resolution skips that value with the same explanation; the
        // rule keeps its other value and never widens.
        let policy = compile_lenient(&config(text), &host, None).unwrap();
        assert_eq!(policy.exe, BTreeMap::from([(key(10), 1)]));
        assert_eq!(policy.settings.wild_exe, 0);
        assert_eq!(policy.warnings.len(), 1, "{:?}", policy.warnings);
        assert!(policy.warnings[0].contains("is on btrfs"));
        assert!(policy.warnings[0].ends_with("this value is skipped (it matches nothing)"));
        // No alias key: another subvolume's inode 257 on 0:45 matches nothing.
        let other_subvolume = ExeKey::from_major_minor(0, 45, 257);
        assert_eq!(simulate(&policy, &running(other_subvolume)), None);
        assert_eq!(
            policy.exe_paths[Path::new("/home/u/bin/relay")],
            ExeIdentities::default()
        );
    }

    #[test]
    fn lineage_paths_on_btrfs_are_refused_too() {
        let host = on_btrfs(host(), "/home/u/bin/agent", 300);
        for field in ["parent_exe", "ancestor_exe"] {
            let text = format!(
                "catalog = false\n[[rule]]\nname = \"l\"\naction = \"audit\"\n{field} = \"/home/u/bin/agent\"\n"
            );
            let err = compile(&config(&text), &host).unwrap_err().to_string();
            assert!(
                err.contains(&format!("rule `l`: {field} /home/u/bin/agent is on btrfs")),
                "{err}"
            );
            let policy = compile_lenient(&config(&text), &host, None).unwrap();
            assert!(policy.ancestor.is_empty());
            assert_eq!(policy.settings.wild_ancestor, 0);
        }
        // Where stat() and the superblock agree (or mountinfo says nothing),
        // nothing is refused.
        let mut host = host;
        if let Some((file, _)) = host.exes.get_mut(Path::new("/home/u/bin/agent")) {
            file.mount = None;
        }
        compile_ok(
            "catalog = false\n[[rule]]\nname = \"l\"\naction = \"audit\"\nparent_exe = \"/home/u/bin/agent\"\n",
            &host,
        );
    }

    #[test]
    fn a_failed_user_lookup_is_not_an_unknown_user() {
        let mut host = host();
        host.broken_users.push("ldapuser".to_owned());
        let text = "catalog = false\n[[rule]]\nname = \"u\"\naction = \"deny\"\nuser = [\"nobody\", \"ldapuser\"]\n";
        let err = compile(&config(text), &host).unwrap_err();
        assert!(matches!(err, PolicyError::UserLookup { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("rule `u`: looking up user `ldapuser` failed"),
            "{err}"
        );
        // Re-resolution keeps the users that resolve, says why the other
        // does not, and asks again next time.
        let policy = compile_lenient(&config(text), &host, None).unwrap();
        assert_eq!(policy.uid, BTreeMap::from([(65534, 1)]));
        assert!(
            policy.warnings[0].contains("failed: the directory did not answer; this value matches nothing until it resolves again"),
            "{:?}",
            policy.warnings
        );
        host.broken_users.clear();
        host.users.insert("ldapuser".to_owned(), 70000);
        let policy = compile_lenient(&config(text), &host, Some(&policy)).unwrap();
        assert_eq!(policy.uid, BTreeMap::from([(65534, 1), (70000, 1)]));
        assert!(policy.warnings.is_empty());
    }
}
