//! User rules on uid, cgroup, ancestry and executables, judged in the
//! kernel at connect time against real processes: an executable replaced by
//! an upgrade keeps matching while processes run it, and one on a btrfs
//! subvolume matches that file only, not another subvolume's with the same
//! inode number.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use loopwarden_tests::{
    Daemon, Netns, PROTECTED, TempDir, TestCgroup, exe_id, policy, require_root, rule, run, run_ok,
    wait_for,
};

fn curl_url() -> String {
    format!("http://127.0.0.1:{PROTECTED}/")
}

#[test]
fn a_user_rule_refuses_one_uid_only() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let rule = rule("no-nobody", "deny", "user", "nobody");
    let before = ns.curl_as_nobody(&curl_url());
    assert!(before.status.success(), "without the daemon: {before:?}");
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    let as_nobody = ns.curl_as_nobody(&curl_url());
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
    // python3 -> sh -> curl: python is the grandparent.
    let script = format!(
        "import subprocess, sys; sys.exit(subprocess.run(['sh', '-c', 'curl -sS -o /dev/null --max-time 5 {}']).returncode)",
        curl_url()
    );
    let before = run(ns.cmd("/usr/bin/python3").args(["-c", &script]));
    assert!(before.status.success(), "without the daemon: {before:?}");
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
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

#[test]
fn a_cgroup_rule_matches_a_unit_and_its_children() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let cg = TestCgroup::new(&format!("lwt-{}.service", std::process::id()));
    let rule = rule("unit", "deny", "cgroup", &cg.name);
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
    let before = run(std::process::Command::new("sh").args(["-c", &script]));
    assert!(before.status.success(), "without the daemon: {before:?}");
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
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

/// How many policies the daemon installed after its first one (each
/// re-resolution that changed something logs `policy #N installed: ...`).
fn installs(daemon: &Daemon) -> usize {
    daemon.stderr_text().matches(" installed: ").count()
}

/// One `socat` connect from the executable at `path` to the protected port.
fn connect_from(ns: &Netns, path: &Path) -> bool {
    let target = format!("TCP:127.0.0.1:{PROTECTED}");
    ns.socat_connect_from(path.to_str().expect("utf-8 path"), &target)
        .0
}

#[test]
fn an_upgraded_executable_is_picked_up_without_a_reload() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("upgrade");
    let relay = dir.path().join("relay");
    std::fs::copy("/usr/bin/socat", &relay).expect("copy socat");
    // A second name for the file the upgrade replaces, to run it again once
    // no process runs it any more.
    let old_file = dir.path().join("relay-before-upgrade");
    std::fs::hard_link(&relay, &old_file).expect("hard link");
    let old_id = exe_id(&relay);
    let rule = rule("relay-exe", "deny", "exe", &relay.display().to_string());
    let daemon = Daemon::start(&policy(&ns, "enforce", &rule));
    assert!(!connect_from(&ns, &relay), "the relay is refused");

    // A relay started before the upgrade and still running after it: it
    // listens on an unprotected port, and the children it forks for each
    // client (the old binary still) connect to the protected one.
    let relay_port = 9300;
    let old_relay = ns.spawn(
        relay.to_str().expect("utf-8 path"),
        &[
            &format!("TCP-LISTEN:{relay_port},fork,reuseaddr"),
            &format!("TCP:127.0.0.1:{PROTECTED}"),
        ],
    );
    ns.wait_listening(relay_port);

    // A package upgrade: the new binary replaces the old one (a new inode).
    let installed = installs(&daemon);
    let staged = dir.path().join("relay.new");
    std::fs::copy("/usr/bin/socat", &staged).expect("stage");
    std::fs::rename(&staged, &relay).expect("replace");
    let new_id = exe_id(&relay);
    assert_ne!(new_id, old_id);
    // The daemon re-resolves the policy by itself within a few seconds, and
    // says it keeps the old file while the old relay runs it.
    daemon.wait_stderr(
        &format!(
            "was replaced on disk; it still matches while it runs (pid {})",
            old_relay.pid()
        ),
        1,
    );
    wait_for("the upgraded policy", Duration::from_secs(15), || {
        (installs(&daemon) > installed).then_some(())
    });

    assert!(
        !connect_from(&ns, &relay),
        "the upgraded relay is refused too"
    );
    daemon.wait_event("a deny of the new binary", |e| {
        e["rule"] == "relay-exe" && e["exe_id"] == new_id.as_str()
    });
    let through_old = ns.curl(&format!("http://127.0.0.1:{relay_port}/"));
    assert!(
        through_old.is_err(),
        "the relay started before the upgrade got through: {through_old:?}"
    );
    daemon.wait_event("a deny of the old relay's child", |e| {
        e["rule"] == "relay-exe" && e["exe_id"] == old_id.as_str() && e["ppid"] == old_relay.pid()
    });

    // The old relay exits: its file is dropped from the policy at the next
    // re-resolution, and the same file run again is no longer matched.
    let installed = installs(&daemon);
    drop(old_relay);
    wait_for(
        "the policy without the old file",
        Duration::from_secs(15),
        || (installs(&daemon) > installed).then_some(()),
    );
    assert!(
        connect_from(&ns, &old_file),
        "the replaced file still matched after its last process exited"
    );
    assert!(
        !connect_from(&ns, &relay),
        "the current file is still refused"
    );
}

/// A small btrfs filesystem with two subvolumes, on a loop device, under a
/// temporary directory; unmounted and detached on drop.
struct Btrfs {
    dir: TempDir,
    loop_dev: Option<String>,
    mounted: bool,
}

impl Btrfs {
    /// Fails the test when the kernel has no btrfs: the README's guarantees
    /// name this test, so it never passes without running.
    fn new() -> Self {
        let known = std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|f| f.lines().any(|l| l.trim_end().ends_with("btrfs")));
        assert!(
            known || run(Command::new("modprobe").arg("btrfs")).status.success(),
            "this kernel has no btrfs (not built in, and `modprobe btrfs` failed)"
        );
        let mut fs = Self {
            dir: TempDir::new("btrfs"),
            loop_dev: None,
            mounted: false,
        };
        let image = fs.dir.path().join("image");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(128 << 20))
            .expect("creating the image file");
        let out = run(Command::new("mkfs.btrfs").arg("-q").arg(&image));
        assert!(
            out.status.success(),
            "mkfs.btrfs failed (install btrfs-progs: cargo xtask setup --tests): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&image),
        );
        fs.loop_dev = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        std::fs::create_dir(fs.mnt()).expect("mount point");
        run_ok(
            Command::new("mount")
                .arg(fs.loop_dev.as_deref().unwrap_or_default())
                .arg(fs.mnt()),
        );
        fs.mounted = true;
        for subvolume in ["a", "b"] {
            run_ok(
                Command::new("btrfs")
                    .args(["-q", "subvolume", "create"])
                    .arg(fs.mnt().join(subvolume)),
            );
        }
        fs
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        if self.mounted {
            let unmounted = Command::new("umount").arg(self.mnt()).status();
            if !unmounted.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
            }
        }
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

#[test]
fn an_exe_rule_on_a_btrfs_subvolume_matches_that_subvolumes_file_only() {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let btrfs = Btrfs::new();
    // The same program in two subvolumes: the first file of a fresh
    // subvolume gets the same inode number in both, and only the
    // subvolume's device tells them apart.
    let ours = btrfs.mnt().join("a/relay");
    let theirs = btrfs.mnt().join("b/relay");
    for path in [&ours, &theirs] {
        std::fs::copy("/usr/bin/socat", path).expect("copy socat");
    }
    let ino = |p: &Path| std::fs::metadata(p).expect("stat").ino();
    assert_eq!(
        ino(&ours),
        ino(&theirs),
        "inode numbers differ: no alias to show"
    );
    assert_ne!(exe_id(&ours), exe_id(&theirs));

    let ns = Netns::new();
    let _servers = ns.http_servers();
    // The positive control: nothing refuses it without the daemon.
    assert!(connect_from(&ns, &ours), "the relay cannot connect at all");
    let rules = format!(
        "{}{}",
        rule("ours", "deny", "exe", &ours.display().to_string()),
        rule("by-name", "audit", "exe_name", "relay")
    );
    let config = policy(&ns, "enforce", &rules);

    // check-config takes the path, by its subvolume's device.
    let file = btrfs.dir.path().join("policy.toml");
    std::fs::write(&file, &config).expect("writing the policy");
    let out = run(Command::new(loopwarden_tests::loopwarden_bin())
        .arg("check-config")
        .arg(&file));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config refused it:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = exe_id(&ours);
    let (dev, ino) = id.rsplit_once(':').expect("major:minor:ino");
    let listed = format!("{} (dev {dev} ino {ino})", ours.display());
    assert!(stdout.contains(&listed), "{listed:?} missing:\n{stdout}");

    let daemon = Daemon::start(&config);
    assert!(!connect_from(&ns, &ours), "the rule's file got through");
    let denied = daemon.wait_event("the deny", |e| e["rule"] == "ours");
    assert_eq!(denied["exe_id"], exe_id(&ours).as_str());
    // The other subvolume's file, same inode number, is another program.
    assert!(
        connect_from(&ns, &theirs),
        "another subvolume's file was refused"
    );
    let audited = daemon.wait_event("the other file's report", |e| e["rule"] == "by-name");
    assert_eq!(audited["exe_id"], exe_id(&theirs).as_str());
    assert!(
        !daemon.stderr_text().contains("is on btrfs"),
        "{}",
        daemon.stderr_text()
    );
}

/// A process gone before the daemon reads its report still has its cgroup
/// named: the path comes from the kernel's cgroup id (a cgroupfs file
/// handle), not from `/proc`, which no longer has the process.
#[test]
fn a_gone_processs_cgroup_is_named_from_its_id() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let cg = TestCgroup::new(&format!("lwt-gone-{}.service", std::process::id()));
    let script = format!(
        "echo $$ > {} && exec ip netns exec {} socat -u /dev/null TCP:127.0.0.1:{PROTECTED}",
        cg.path.join("cgroup.procs").display(),
        ns.name(),
    );
    let daemon = Daemon::start(&policy(&ns, "audit", ""));
    // The daemon reads nothing while stopped: socat connects (audit mode
    // lets it), and is gone, before its report is read.
    daemon.signal(libc::SIGSTOP);
    let out = run(Command::new("sh").args(["-c", &script]));
    daemon.signal(libc::SIGCONT);
    assert!(out.status.success(), "socat: {out:?}");
    let ev = daemon.wait_event("socat's would-deny", |e| {
        e["verdict"] == "would-deny" && e["exe_name"] == "socat"
    });
    assert_eq!(
        ev["cmdline"],
        serde_json::Value::Null,
        "read while it ran: {ev}"
    );
    assert_eq!(ev["cgroup"], format!("/{}", cg.name), "{ev}");
}
