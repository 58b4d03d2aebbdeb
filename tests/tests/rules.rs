//! User rules on uid, cgroup and ancestry, judged in the kernel at connect
//! time against real processes.

use loopwarden_tests::{Daemon, Netns, PROTECTED, policy, rule, run};

fn curl_url() -> String {
    format!("http://127.0.0.1:{PROTECTED}/")
}

#[test]
fn a_user_rule_refuses_one_uid_only() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let rule = rule("no-nobody", "deny", "user", "nobody");
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let as_nobody = run(ns.cmd("setpriv").args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        "5",
        &curl_url(),
    ]));
    assert!(!as_nobody.status.success(), "curl as nobody got through");
    // curl's "couldn't connect": the connect() itself failed.
    assert_eq!(as_nobody.status.code(), Some(7));
    let ev = daemon.wait_event("deny of nobody", |e| e["rule"] == "no-nobody");
    assert_eq!(ev["uid"], 65534);
    assert_eq!(ev["comm"], "curl");
    assert_eq!(ns.curl(&curl_url()), Ok(200), "root's curl is not affected");
}

#[test]
fn an_ancestor_rule_catches_children_of_a_relay() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let rule = rule(
        "spawned-by-python",
        "deny",
        "ancestor_exe",
        "/usr/bin/python3",
    );
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    // python3 -> sh -> curl: python is the grandparent.
    let script = format!(
        "import subprocess, sys; sys.exit(subprocess.run(['sh', '-c', 'curl -sS -o /dev/null --max-time 5 {}']).returncode)",
        curl_url()
    );
    let out = run(ns.cmd("/usr/bin/python3").args(["-c", &script]));
    assert!(!out.status.success(), "curl under python got through");
    let ev = daemon.wait_event("deny by ancestry", |e| e["rule"] == "spawned-by-python");
    assert_eq!(ev["comm"], "curl");
    assert_eq!(
        ns.curl(&curl_url()),
        Ok(200),
        "curl from the test is not affected"
    );
}

/// A cgroup created for the test below the cgroup v2 root, removed on drop.
struct TestCgroup {
    path: std::path::PathBuf,
    name: String,
}

impl TestCgroup {
    fn new() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                post.starts_with("cgroup2 ")
                    .then(|| pre.split(' ').nth(4).map(str::to_owned))
                    .flatten()
            })
            .expect("a cgroup v2 mount");
        let name = format!("lwt-{}.service", std::process::id());
        let path = std::path::Path::new(&root).join(&name);
        std::fs::create_dir(&path).expect("creating the test cgroup");
        Self { path, name }
    }
}

impl TestCgroup {
    /// Moves every process below `dir` to `root`, then removes the (now
    /// empty) cgroups bottom-up.
    fn remove(dir: &std::path::Path, root: &std::path::Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    Self::remove(&entry.path(), root);
                }
            }
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Some(root) = self.path.parent() {
            Self::remove(&self.path, root);
        }
    }
}

#[test]
fn a_cgroup_rule_matches_a_unit_and_its_children() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let cg = TestCgroup::new();
    let rule = rule("unit", "deny", "cgroup", &cg.name);
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    // A child cgroup below the unit, as services often create.
    let child = cg.path.join("worker");
    std::fs::create_dir(&child).expect("child cgroup");
    let procs = child.join("cgroup.procs");
    // Join the cgroup first: inside `ip netns exec` /sys is remounted and the
    // cgroup tree is not visible.
    let script = format!(
        "echo $$ > {} && exec ip netns exec {} curl -sS -o /dev/null --max-time 5 {}",
        procs.display(),
        ns.name(),
        curl_url()
    );
    let out = run(std::process::Command::new("sh").args(["-c", &script]));
    assert!(
        !out.status.success(),
        "curl in the unit's cgroup got through"
    );
    let ev = daemon.wait_event("deny by cgroup", |e| e["rule"] == "unit");
    assert!(
        ev["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!("{}/worker", cg.name))),
        "{ev}"
    );
    assert_eq!(
        ns.curl(&curl_url()),
        Ok(200),
        "other cgroups are not affected"
    );
    let _ = std::fs::remove_dir(&child);
}

#[test]
fn an_upgraded_executable_is_picked_up_without_a_reload() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = loopwarden_tests::TempDir::new("upgrade");
    let relay = dir.path().join("relay");
    std::fs::copy("/usr/bin/socat", &relay).expect("copy socat");
    let rule = rule("relay", "deny", "exe", &relay.display().to_string());
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let connect = || {
        let out = run(ns.cmd(relay.to_str().expect("utf-8 path")).args([
            "-T",
            "3",
            "-u",
            "OPEN:/dev/null",
            &format!("TCP:127.0.0.1:{PROTECTED}"),
        ]));
        out.status.success()
    };
    assert!(!connect(), "the relay is refused");
    // A package upgrade: the new binary replaces the old one (a new inode).
    let staged = dir.path().join("relay.new");
    std::fs::copy("/usr/bin/socat", &staged).expect("stage");
    std::fs::rename(&staged, &relay).expect("replace");
    // The daemon re-resolves the policy by itself within a few seconds.
    daemon.wait_stderr("installed: ", 1);
    assert!(!connect(), "the upgraded relay is refused too");
}
