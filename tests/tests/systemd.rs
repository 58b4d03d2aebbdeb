//! What `contrib/loopwarden.service` relies on from the daemon, shown without
//! systemd as init: `READY=1` and then `WATCHDOG=1` every refresh tick on
//! `$NOTIFY_SOCKET` (`Type=notify`, `WatchdogSec=`), and a capability the
//! unit's bounding set lacks refused at start with exit 77 naming it
//! (`RestartPreventExitStatus=`), while the full set starts, and a
//! read-only bpffs (a sandbox's) refused with exit 78.

use std::{os::unix::net::UnixDatagram, process::Command, time::Duration};

use loopwarden_tests::{
    Daemon, Install, Netns, TempDir, loopwarden_bin, policy, require_root, run_failing_start,
};

/// `loopwarden run` of `install` on `config`, as the harness starts it,
/// through `wrapper` (a program and its options) if given.
fn run_cmd(wrapper: &[&str], install: &Install, config: &str) -> Command {
    std::fs::write(install.config_path(), config).expect("writing the test config");
    let mut cmd = match wrapper {
        [] => Command::new(loopwarden_bin()),
        [program, args @ ..] => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(loopwarden_bin());
            cmd
        }
    };
    cmd.arg("run")
        .arg("--config")
        .arg(install.config_path())
        .args(["--log-format", "json"])
        .args(install.dir_args());
    cmd
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_then_feeds_the_watchdog() {
    require_root();
    let ns = Netns::new();
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let install = Install::new();
    let mut cmd = run_cmd(&[], &install, &policy(&ns, "audit", ""));
    cmd.env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "30000000");
    let daemon = Daemon::start_cmd(&install, cmd);

    let mut buf = [0u8; 256];
    let mut receive = || {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification: {e}\n{}", daemon.stderr_text()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(receive(), "READY=1");
    for _ in 0..3 {
        assert_eq!(receive(), "WATCHDOG=1");
    }
}

#[test]
fn a_missing_capability_is_refused_with_exit_77_naming_it() {
    require_root();
    let ns = Netns::new();
    let config = policy(&ns, "audit", "");

    // Root without CAP_SYS_PTRACE in its bounding set (hence not effective
    // after exec): what a unit that bounded it away would give.
    let install = Install::new();
    let out = run_failing_start(&mut run_cmd(
        &["setpriv", "--bounding-set=-sys_ptrace", "--"],
        &install,
        &config,
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("loopwarden lacks CAP_SYS_PTRACE"),
        "{stderr}"
    );
    assert!(
        !install.pin_dir().exists(),
        "a refused start pinned something"
    );

    // Positive control: the same start with the full set gets ready.
    let install = Install::new();
    let _daemon = Daemon::start_cmd(&install, run_cmd(&["setpriv", "--"], &install, &config));
}

/// A bpffs the sandbox made read-only (what a unit's
/// `ProtectKernelTunables=yes` does to `/sys/fs/bpf`, whatever its
/// `ReadWritePaths=` says) is refused at start with exit 78, which the
/// unit's `RestartPreventExitStatus=` keeps from a restart every second,
/// and a message that names the cause; nothing is pinned. The same start
/// in a mount namespace of its own with bpffs writable (the unit's
/// `PrivateMounts=`) gets ready. Before, it exited 1 ("creating ...
/// failed"), which the unit restarted for ever.
#[test]
fn a_read_only_bpffs_is_refused_with_exit_78_naming_the_sandbox() {
    require_root();
    let ns = Netns::new();
    let config = policy(&ns, "audit", "");
    let private = |remount: &str| {
        vec![
            "unshare".to_owned(),
            "--mount".to_owned(),
            "--propagation".to_owned(),
            "private".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            format!("{remount}exec \"$@\""),
            "sh".to_owned(),
        ]
    };
    let read_only = private("mount -o remount,bind,ro /sys/fs/bpf && ");
    let wrapper: Vec<&str> = read_only.iter().map(String::as_str).collect();
    let install = Install::new();
    let out = run_failing_start(&mut run_cmd(&wrapper, &install, &config));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("bpffs is mounted read-only") && stderr.contains("ProtectKernelTunables"),
        "{stderr}"
    );
    assert!(
        !install.pin_dir().exists(),
        "a refused start pinned something"
    );

    // Positive control: a mount namespace of its own, bpffs writable.
    let writable = private("");
    let wrapper: Vec<&str> = writable.iter().map(String::as_str).collect();
    let install = Install::new();
    let _daemon = Daemon::start_cmd(&install, run_cmd(&wrapper, &install, &config));
}

/// The unit keeps `/sys/fs/bpf` writable: it names it in `ReadWritePaths=`
/// and sets nothing that mounts it read-only whatever that says
/// (`ProtectKernelTunables=yes`, or a read-only entry for the path itself),
/// which the test above shows the daemon refusing.
#[test]
fn the_unit_leaves_bpffs_writable() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/loopwarden.service"),
    )
    .expect("the unit");
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    assert!(
        values("ReadWritePaths").contains(&"/sys/fs/bpf".to_owned()),
        "{unit}"
    );
    assert_eq!(values("ProtectKernelTunables"), Vec::<String>::new());
    for key in ["ReadOnlyPaths", "InaccessiblePaths"] {
        assert!(
            !values(key)
                .iter()
                .any(|p| p.trim_start_matches(['-', '+']).starts_with("/sys/fs/bpf")),
            "{key}"
        );
    }
    // The paths ProtectKernelTunables= would protect, made read-only by hand.
    let read_only = values("ReadOnlyPaths");
    for path in ["/sys", "/proc/sys"] {
        assert!(read_only.contains(&path.to_owned()), "{path}");
    }
}

/// The unit leaves the host name shared (no `ProtectHostname=`), and the
/// daemon reads it again as it changes: a JSON line names the host as it is
/// called when the line is written (DHCP names a host after the unit
/// started), not as it was at start. Shown in a UTS namespace of the
/// test's own, renamed under the running daemon; before, every line kept
/// the start's name.
#[test]
fn json_lines_name_the_host_as_it_is_called_now() {
    require_root();
    let ns = Netns::new();
    let install = Install::new();
    let cmd = run_cmd(
        &[
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            "hostname lw-named-at-start && exec \"$0\" \"$@\"",
        ],
        &install,
        &policy(&ns, "audit", ""),
    );
    let daemon = Daemon::start_cmd(&install, cmd);
    let hosts = |message: &str| -> Vec<String> {
        daemon
            .stderr_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(message)))
            .map(|v| v["host"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    // The control: what the start wrote names the host as it was then.
    assert_eq!(hosts("ready:"), ["lw-named-at-start"]);
    let pid = daemon.pid().expect("the daemon's pid").to_string();
    let renamed = Command::new("nsenter")
        .args(["--uts", "-t", &pid, "hostname", "lw-named-later"])
        .status()
        .expect("running nsenter");
    assert!(renamed.success(), "renaming the daemon's UTS namespace");
    // Past the second a name read is used for.
    std::thread::sleep(Duration::from_millis(1200));
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("policy unchanged", 1);
    assert_eq!(hosts("policy unchanged"), ["lw-named-later"]);
}
