//! Unit tests of compiling and matching, against a host made of hash maps.

use std::{cell::Cell, collections::HashMap, io};

use loopwarden_common::{MAX_ANCESTORS, MAX_RULES, flags};

use super::{compile::ports, *};
use crate::{
    catalog::CATALOG,
    config::{PortRange, PortSet},
};

mod catalog;
mod compile;
mod exe_files;
mod guards;
mod matching;

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

/// A host made of hash maps.
#[derive(Default)]
pub(super) struct FakeResolver {
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
    /// Paths another user could put another file at.
    replaceable: Vec<PathBuf>,
    /// `#!` files: their interpreter, and whether its script is read.
    scripts: HashMap<PathBuf, (String, bool)>,
}

impl FakeResolver {
    pub(super) fn with_exe(mut self, path: &str, key: ExeKey) -> Self {
        self.put_exe(path, key);
        self
    }

    /// A link at `path` to the file `target`, with `key`.
    pub(super) fn with_link(mut self, path: &str, target: &str, key: ExeKey) -> Self {
        self.put_exe(path, key);
        if let Some((file, name)) = self.exes.get_mut(Path::new(path)) {
            file.real_path = PathBuf::from(target);
            *name = target.rsplit('/').next().unwrap_or(target).to_owned();
        }
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

    /// Every directory is on the test keys' device, links resolved.
    fn missing_exe(&self, path: &Path) -> Option<(PathBuf, u64)> {
        (!self.exes.contains_key(path)).then(|| (path.to_owned(), key(0).dev))
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

    fn others_may_replace(&self, path: &Path) -> bool {
        self.replaceable.iter().any(|p| p == path)
    }

    fn script_interpreter(&self, path: &Path) -> Option<(String, bool)> {
        self.scripts.get(path).cloned()
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

pub(super) fn key(ino: u64) -> ExeKey {
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
        tracked: None,
    })
}

fn config(text: &str) -> Config {
    match Config::from_str_named(text, "test.toml") {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

pub(super) fn compile_ok(text: &str, resolver: &FakeResolver) -> CompiledPolicy {
    match compile(&config(text), resolver) {
        Ok(policy) => policy,
        Err(e) => panic!("{e}"),
    }
}

pub(super) fn host() -> FakeResolver {
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
