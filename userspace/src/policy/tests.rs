//! Unit tests of compiling and matching, against a host made of hash maps.

use std::{cell::Cell, collections::HashMap, io};

use loopwarden_common::{MAX_ANCESTORS, MAX_RULES, flags};

use super::{compile::ports, *};
use crate::{
    catalog::CATALOG,
    config::{PortRange, PortSet},
};

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
}

impl FakeResolver {
    pub(super) fn with_exe(mut self, path: &str, key: ExeKey) -> Self {
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
            .map(|l| format!("[[rule]]\nname = \"r{l}\"\naction = \"deny\"\ncgroup = \"l{l}\"\n"))
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
        flags::ENABLED | flags::ALL_PORTS | flags::ANCESTORS | flags::RELAY | flags::PROVENANCE
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
mode = "enforce"
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
    assert_eq!(policy.denial(&id(&["relay", "main"]), 8080, 0), Some(1));
    // First match wins across the list too: the allow rule comes first.
    assert_eq!(policy.first_match(&id(&["relay", "curl"])), Some(0));
    assert_eq!(policy.denial(&id(&["relay", "curl"]), 8080, 0), None);
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
        "exe_name in [bore*, bore-x86_64*]"
    );
    assert!(policy.warnings.is_empty());

    // A copy whose file name does not begin with the catalog's name is
    // matched by its real name, as the entry matches (here: exactly).
    let mut r = host().with_exe("/opt/tools/secure-shell", key(41));
    r.found.insert(
        "ssh".to_owned(),
        vec![PathBuf::from("/opt/tools/secure-shell")],
    );
    let policy = compile_ok("catalog = true\n", &r);
    let named = |exe_name| TestIdentity {
        exe_name,
        ..TestIdentity::default()
    };
    let rule = simulate(&policy, &named("secure-shell")).unwrap();
    assert_eq!(policy.rules[rule].name, "catalog:ssh");
    assert_eq!(
        policy.rules[rule].matches,
        "exe_name in [ssh, secure-shell]"
    );
    assert_eq!(simulate(&policy, &named("secure-shell-x")), None);
}

/// The catalog rule `name` (its name) matches, as the kernel would.
fn catalog_match(policy: &CompiledPolicy, exe_name: &'static str) -> Option<String> {
    let id = TestIdentity {
        exe_name,
        comm: "x",
        ..TestIdentity::default()
    };
    simulate(policy, &id).map(|rule| policy.rules[rule].name.clone())
}

#[test]
fn catalog_prefixes_match_release_and_wrapper_names() {
    let policy = compile(&Config::embedded_default(), &FakeResolver::default()).unwrap();
    for (exe_name, rule) in [
        ("cloudflared", "cloudflared"),
        ("cloudflared-linux-amd64", "cloudflared"),
        ("chisel_1.10.1_linux_amd64", "chisel"),
        (".tailscaled-wrapped", "tailscaled"),
        ("tailscaled.real", "tailscaled"),
        ("bore-v0.5.2-x86_64-unknown-linux-musl", "bore"),
        ("websocat.x86_64-unknown-linux-musl", "websocat"),
        ("systemd-socket-proxyd", "systemd-socket-proxyd"),
        ("sshd", "sshd"),
        ("sshd-session", "sshd"),
        ("dropbear", "sshd"),
        ("ssh", "ssh"),
        ("socat", "socat"),
        ("socat1", "socat"),
        ("socat-x", "socat"),
        ("nc", "netcat"),
        ("nc.openbsd", "netcat"),
        ("tor", "tor"),
        ("code", "vscode"),
        ("code-insiders", "vscode"),
        ("code-tunnel", "code-tunnel"),
        ("code-tunnel-insiders", "code-tunnel"),
        ("kubectl", "kubectl"),
        ("inlets-pro", "inlets"),
        ("nginx-debug", "nginx"),
    ] {
        assert_eq!(
            catalog_match(&policy, exe_name),
            Some(format!("catalog:{rule}")),
            "{exe_name}"
        );
    }
    for exe_name in [
        // Exact entries: other programs that begin with their names.
        "ssh-keygen",
        "ssh-agent",
        "ssh_x",
        "torsocks",
        "tor-resolve",
        "codex",
        "code-oss",
        "nc6",
        "nc-config",
        "netcat-x",
        "socat1-x",
        // A prefix matches at a separator only.
        "cloudflaredx",
        "borealis",
        "chiseled",
        "sshdx",
        // Only one leading dot is dropped; a separator must follow the prefix.
        "..tailscaled",
        "-bore",
        "x-bore",
        "curl",
        "bash",
    ] {
        assert_eq!(catalog_match(&policy, exe_name), None, "{exe_name}");
    }
}

#[test]
fn catalog_prefix_keys_are_marked_and_user_names_are_not() {
    let policy = compile_ok(
        "[[rule]]\nname = \"mine\"\naction = \"allow\"\nexe_name = \"bore\"\n",
        &FakeResolver::default(),
    );
    let mark = loopwarden_common::EXE_NAME_PREFIX_MARK;
    let plain: [u8; loopwarden_common::EXE_NAME_LEN] = fixed_name("bore");
    assert_eq!(policy.exe_name.get(&plain), Some(&1));
    let mut prefix = plain;
    *prefix.last_mut().unwrap() = mark;
    assert_eq!(
        policy.exe_name.get(&prefix),
        Some(&(1 << 5)),
        "{:?}",
        policy.rules[5]
    );
    // The user's exact name comes first; a continuation reaches the catalog.
    assert_eq!(catalog_match(&policy, "bore"), Some("mine".to_owned()));
    assert_eq!(
        catalog_match(&policy, "bore-x86_64"),
        Some("catalog:bore".to_owned())
    );
    // Exact entries insert plain keys only.
    let ssh: [u8; loopwarden_common::EXE_NAME_LEN] = fixed_name("ssh");
    assert!(policy.exe_name.contains_key(&ssh));
    let mut ssh_prefix = ssh;
    *ssh_prefix.last_mut().unwrap() = mark;
    assert!(!policy.exe_name.contains_key(&ssh_prefix));
    // Every key's last byte is 0 (plain) or the mark (prefix form).
    assert!(
        policy
            .exe_name
            .keys()
            .all(|k| matches!(k.last(), Some(0 | 1)))
    );
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
    assert_eq!(
        s.flags,
        flags::ENABLED | flags::ALL_PORTS | flags::RELAY | flags::PROVENANCE
    );
    assert_eq!(s.relay_window_ns, 2_000_000_000);
    assert_eq!(s.active.count_ones() as usize, CATALOG.len());
    assert_eq!(s.wild_exe_name, 0);
    assert_eq!(s.wild_exe, s.active);
    // Browsers are judged by port, not by an action of their own.
    assert_eq!(s.deny | s.audit | s.browser, s.active);
    assert_eq!(s.browser.count_ones(), 3);
    assert_eq!(s.browser & (s.deny | s.audit), 0);
    let audit = policy.browsers.verdict(11434);
    assert_eq!(audit, loopwarden_common::verdict::AUDIT);
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
            | flags::RELAY
            | flags::PROVENANCE
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
        "exe_name in [sshd*, sshd-session*, dropbear*]",
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

const RELAY: &str = "catalog = false\n[[rule]]\nname = \"relay-exe\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\n";

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
            "rule `relay-exe`: exe /usr/bin/socat (dev 0:27 ino 10) was replaced on disk"
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
    let text = "catalog = false\n[[rule]]\nname = \"relay-exe\"\naction = \"deny\"\nexe = [\"/usr/bin/socat\", \"/home/u/bin/relay\"]\n";
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
        "rule `relay-exe`: exe /home/u/bin/relay is on btrfs (mounted at /home)",
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

#[test]
fn relay_settings_exemptions_scripts_and_inherited_catalog_rules() {
    let policy = compile_ok(
        r#"
[relay]
action = "deny"
window_ms = 250
[[rule]]
name = "bridge"
action = "allow"
script = "/opt/bridge/bridge.py"
[[rule]]
name = "watched"
action = "audit"
script = ["relay.py", "/srv/relay.js"]
"#,
        &host(),
    );
    let s = &policy.settings;
    assert_eq!(
        s.flags & (flags::RELAY | flags::RELAY_DENY),
        flags::RELAY | flags::RELAY_DENY
    );
    assert_ne!(s.flags & flags::SCRIPTS, 0);
    assert_eq!(s.relay_window_ns, 250_000_000);
    // The user's allow rule exempts, and the catalog's browser-class rules
    // (judged by the port's browser treatment); tunnel entries never do.
    assert_eq!(s.exempt, 0b01 | s.browser);
    assert_ne!(s.browser, 0);
    assert_eq!(s.wild_script & 0b11, 0);
    assert_eq!(s.wild_script >> 2, s.active >> 2);
    assert_eq!(
        policy
            .script
            .get(&loopwarden_common::script_hash(b"/opt/bridge/bridge.py")),
        Some(&0b01)
    );
    assert_eq!(
        policy
            .script
            .get(&loopwarden_common::script_hash(b"relay.py")),
        Some(&0b10)
    );
    // Catalog entries marked `children` extend to descendants.
    for (i, entry) in CATALOG.iter().enumerate() {
        let bit = 1u64 << (i + 2);
        assert_eq!(s.inherited & bit != 0, entry.children, "{}", entry.name);
    }

    let off = compile_ok("[relay]\naction = \"allow\"\n", &host());
    assert_eq!(off.settings.flags & (flags::RELAY | flags::RELAY_DENY), 0);
}

#[test]
fn the_userspace_judgement_follows_the_kernels_relay_lineage_and_script_rules() {
    use loopwarden_common::{Evidence, ProcState, RELAY_RULE, evidence};
    let policy = compile_ok(
        r#"
mode = "enforce"
[relay]
action = "deny"
window_ms = 1000
[[rule]]
name = "bridge"
action = "allow"
script = "bridge.py"
"#,
        &host(),
    );
    let mut state = ProcState::EMPTY;
    let id = |state: ProcState, name: &str| ProcessIdentity {
        exe_name: name.as_bytes().to_vec(),
        tracked: Some(state),
        ..ProcessIdentity::default()
    };
    // Nothing known: allowed.
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 5_000_000_000),
        None
    );
    // Received 0.5 s ago, window 1 s: a relay; 1.5 s ago: not any more.
    state.recent = Evidence {
        kind: evidence::RECEIVED,
        ktime_ns: 4_500_000_000,
        ..Evidence::default()
    };
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 5_000_000_000),
        Some(RELAY_RULE)
    );
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 5_500_000_001),
        None
    );
    // Standing evidence has no window.
    state.standing.kind = evidence::ACCEPTED;
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 99_000_000_000),
        Some(RELAY_RULE)
    );
    // The user's allow rule on its script exempts it.
    state.script_hash = loopwarden_common::script_hash(b"bridge.py");
    assert_eq!(
        policy.denial(&id(state, "python3.11"), 8080, 99_000_000_000),
        None
    );
    state.script_hash = 0;
    // A descendant of VS Code's tunnel matches catalog:code-tunnel through
    // its lineage, whatever it is called.
    state.standing.kind = evidence::NONE;
    state.lineage = loopwarden_common::exe_name_prefix_key(b"code-tunnel");
    let rule = policy.denial(&id(state, "node"), 8080, 0).map(usize::from);
    assert_eq!(
        rule.and_then(|r| policy.rules.get(r))
            .map(|r| r.name.as_str()),
        Some("catalog:code-tunnel")
    );
    state.lineage = [0; 32];
    assert_eq!(policy.denial(&id(state, "node"), 8080, 0), None);
    // The lineage the seeding gives a running tunnel is the key the
    // exec handler would have: its prefix form for a release name too.
    let key = loopwarden_common::exe_name_prefix_key(b"code-tunnel");
    assert_eq!(policy.lineage_key(b"code-tunnel"), Some(key));
    assert_eq!(policy.lineage_key(b"code-tunnel-insiders"), Some(key));
    // Catalogued without `children`, or not at all: none.
    assert_eq!(policy.lineage_key(b"cloudflared"), None);
    assert_eq!(policy.lineage_key(b"bash"), None);
}

#[test]
fn the_bind_guard_compiles_to_ports_and_exemptions() {
    let off = compile_ok("catalog = false\n", &host());
    assert_eq!(off.bind, BindGuard::default());
    assert_eq!(off.settings.flags & flags::BIND_GUARD, 0);
    assert!(off.to_string().contains("bind guard:  off"));

    let text = "catalog = false\nmode = \"enforce\"\n[bind]\nloopback_only = [11434, \"9000-9002\"]\n\
                allow_exe = \"/usr/bin/socat\"\nallow_user = \"nobody\"\nallow_uid = 33\n";
    let p = compile_ok(text, &host());
    assert_ne!(p.settings.flags & flags::BIND_GUARD, 0);
    let ports = p.bind.ports.as_ref().expect("guard on");
    for port in [11434, 9000, 9001, 9002] {
        assert!(ports.contains(port), "{port}");
    }
    for port in [11433, 11435, 8999, 9003, 0] {
        assert!(!ports.contains(port), "{port}");
    }
    assert_eq!(p.bind.exe.keys().copied().collect::<Vec<_>>(), [key(10)]);
    assert_eq!(p.bind.uid.keys().copied().collect::<Vec<_>>(), [33, 65534]);
    let shown = p.to_string();
    assert!(
        shown.contains("bind guard:  ports 9000-9002, 11434 on loopback only"),
        "{shown}"
    );
    assert!(shown.contains("refused with EADDRNOTAVAIL"), "{shown}");
    assert!(shown.contains("/usr/bin/socat"), "{shown}");
    assert!(shown.contains("65534 (user nobody)"), "{shown}");

    // Exemptions that do not resolve fail like a rule's, naming the guard.
    let err = compile(
        &config("[bind]\nloopback_only = 80\nallow_user = \"ghost\"\n"),
        &host(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("test.toml:3:"), "{err}");
    assert!(err.contains("bind-guard") && err.contains("ghost"), "{err}");
    let err = compile(
        &config("[bind]\nloopback_only = 80\nallow_exe = \"/nope\"\n"),
        &host(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("allow_exe /nope cannot be resolved"), "{err}");
}

#[test]
fn egress_rules_compile_to_their_own_masks_and_prefixes() {
    let p = compile_ok(
        "catalog = false\n\
         [[egress]]\nname = \"fetch\"\naction = \"deny\"\nexe = \"/usr/bin/socat\"\nuser = \"nobody\"\n\
         deny = [\"private\"]\nallow = [\"10.20.0.0/16\"]\n\
         [[egress]]\nname = \"watch\"\naction = \"audit\"\ncgroup = \"cloudflared.service\"\n\
         deny = [\"loopback\", \"2001:db8::/32\"]\n",
        &host(),
    );
    let s = &p.settings;
    assert_ne!(s.flags & flags::EGRESS, 0);
    assert_eq!(s.egress_active, 0b11);
    assert_eq!(s.egress_deny, 0b01);
    assert_eq!(s.egress_wild_uid, 0b10);
    assert_eq!(s.egress_wild_exe, 0b10);
    assert_eq!(s.egress_wild_cgroup, 0b01);
    assert_eq!(s.egress_cgroup_levels, 1 << 2);
    // The rules' own maps, not the [[rule]] ones.
    assert!(p.uid.is_empty() && p.exe.is_empty() && p.cgroup.is_empty());
    assert_eq!(p.egress.uid.get(&65534), Some(&0b01));
    assert_eq!(p.egress.exe.get(&key(10)), Some(&0b01));
    assert_eq!(p.egress.cgroup.get(&21), Some(&0b10));
    let blocks = |ip: &str| egress::lookup(&p.egress.prefixes, ip.parse().unwrap());
    assert_eq!(blocks("10.1.1.1"), 0b01);
    assert_eq!(blocks("10.20.1.1"), 0b00);
    assert_eq!(blocks("127.0.0.1"), 0b10);
    assert_eq!(blocks("2001:db8::1"), 0b10);
    // Metadata is every rule's, listed or not.
    assert_eq!(blocks("169.254.169.254"), 0b11);
    assert_eq!(blocks("8.8.8.8"), 0);
    assert_eq!(p.egress.rules[0].prefixes, 7 + 5 + 1);
    // Events name them after the rules.
    let named: Vec<String> = p.named_rules().into_iter().map(|r| r.name).collect();
    assert_eq!(named, ["egress:fetch", "egress:watch"]);
    let text = p.to_string();
    assert!(text.contains("egress:      2 rule(s)"), "{text}");
    assert!(
        text.contains("egress:fetch  deny   exe /usr/bin/socat"),
        "{text}"
    );
    assert!(text.contains("deny:  loopback, 2001:db8::/32"), "{text}");
    // No egress table: the guard is off.
    let off = compile_ok("catalog = false\n", &host());
    assert_eq!(off.settings.flags & flags::EGRESS, 0);
    assert!(off.to_string().contains("egress:      off"));
}
