//! The compiled policy: what the kernel maps must hold for a validated
//! [`crate::config::Config`]. Compiling resolves names (executable paths,
//! users, cgroups, network namespaces) through a [`Resolver`], so the logic is
//! testable without touching the host.

use std::{collections::BTreeMap, path::Path};

use loopwarden_common::{AncestorMasks, COMM_LEN, EXE_NAME_LEN, ExeKey, PORT_WORDS, Settings};

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
    /// Indexed by rule number (bit position).
    pub rules: Vec<RuleInfo>,
    /// Things an operator should know that do not stop the policy from
    /// loading (e.g. a cgroup that does not exist yet).
    pub warnings: Vec<String>,
}

/// Turns names from the config into the kernel's identifiers. The real one
/// ([`crate::resolve::HostResolver`]) asks the running system.
pub trait Resolver {
    /// Device and inode of the file at `path`, following symlinks.
    fn exe(&self, path: &Path) -> std::io::Result<ExeKey>;
    /// The file name the kernel sees for `path` after following symlinks
    /// (the dentry name), e.g. `/usr/bin/python3` → `python3.11`.
    fn exe_file_name(&self, path: &Path) -> std::io::Result<String>;
    /// Finds an executable by file name in the usual system directories and
    /// `PATH`; every distinct file found (after following symlinks).
    fn find_executables(&self, name: &str) -> Vec<std::path::PathBuf>;
    /// uid of a user name.
    fn user(&self, name: &str) -> Option<u32>;
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
    let mut out = [0u8; N];
    let bytes = name.as_bytes();
    let len = bytes.len().min(N - 1);
    out[..len].copy_from_slice(&bytes[..len]);
    out
}

/// Reads a NUL-terminated kernel buffer back into a string (lossy).
pub fn name_from_fixed(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
