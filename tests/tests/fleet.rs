//! loopwarden in a container whose cgroup namespace is not the host's (a
//! Kubernetes DaemonSet, contrib/kubernetes): refused without
//! `--host-cgroup-root`, and with it attached at the host's cgroup v2 root,
//! judging processes outside its namespace, with their host cgroup paths.
//!
//! The "container" is made here the way a runtime makes one: the daemon's
//! shell joins a cgroup the test creates, then `unshare --cgroup --mount`
//! (so the namespace's root is that cgroup, not the host's), binds the
//! host's cgroup2 mount at a directory of the test and mounts a cgroup2 of
//! its own namespace over the usual path (what a container sees as
//! /sys/fs/cgroup). bpffs, /proc (same pid namespace: hostPID) and
//! /run/netns are the host's, as in the DaemonSet.

use std::{path::Path, process::Command, time::Duration};

use loopwarden_tests::{
    Daemon, Install, Netns, PROTECTED, Policy, Proc, TempDir, TestCgroup, loopwarden_bin, rule,
    run, run_failing_start, wait_for,
};
use serde_json::Value;

/// `sh` that moves itself into `cgroup`, enters new cgroup and mount
/// namespaces, binds the host's cgroup2 root at `bind`, mounts its own
/// namespace's cgroup2 over the host's mount point (on a tmpfs: the kernel
/// refuses a cgroup2 mount right on top of another), and runs loopwarden
/// with `args`.
fn in_container(cgroup: &TestCgroup, bind: &Path, args: &[String]) -> Command {
    let inner = "mount --bind \"$1\" \"$2\" && mount -t tmpfs none \"$1\" \\
         && mount -t cgroup2 none \"$1\" && shift 2 && exec \"$@\"";
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "echo $$ > \"$1\" && shift && exec unshare --cgroup --mount --propagation private \"$@\"",
        "container",
    ])
    .arg(cgroup.procs())
    .args(["sh", "-c", inner, "inner"])
    .arg(&cgroup.root)
    .arg(bind)
    .arg(loopwarden_bin())
    .args(args);
    cmd
}

/// Connects to the protected port in `ns` from a python3 that first joins
/// `cgroup` (when given), then stays alive (killed on drop) so that its
/// /proc can be read; returns it and connect()'s errno (0: connected).
fn connect_from(ns: &Netns, cgroup: Option<&TestCgroup>) -> (Proc, i32) {
    let dir = TempDir::new("client");
    let out = dir.path().join("errno");
    let client = "import socket, sys, time\n\
                  r = socket.socket().connect_ex(('127.0.0.1', int(sys.argv[2])))\n\
                  open(sys.argv[1], 'w').write(str(r))\n\
                  time.sleep(600)\n";
    let join = cgroup.map_or(String::new(), |cg| {
        format!("echo $$ > {} && ", cg.procs().display())
    });
    let script = format!(
        "{join}exec ip netns exec {} python3 -c \"$0\" \"$1\" {PROTECTED}",
        ns.name()
    );
    let proc = Proc::spawn(Command::new("sh").args(["-c", &script, client]).arg(&out));
    let errno = wait_for("the client's connect()", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).ok()?.parse().ok()
    });
    (proc, errno)
}

/// `loopwarden status --json` in the container, with `env` set: exit code
/// and report.
fn status(
    cgroup: &TestCgroup,
    bind: &Path,
    install: &Install,
    env: Option<&Path>,
) -> (Option<i32>, Value) {
    let mut args: Vec<String> = ["status", "--json"].map(String::from).to_vec();
    args.extend(install.dir_args());
    let mut cmd = in_container(cgroup, bind, &args);
    if let Some(root) = env {
        cmd.env("LOOPWARDEN_HOST_CGROUP_ROOT", root);
    }
    let out = run(&mut cmd);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn all_attached_at_root(report: &Value) -> bool {
    report["links"]
        .as_array()
        .is_some_and(|ls| !ls.is_empty() && ls.iter().all(|l| l["attached_at_root"] == true))
}

#[test]
fn in_a_child_cgroup_namespace_with_the_host_root_given() {
    let ns = Netns::new();
    let _server = ns.sink_server();
    let pid = std::process::id();
    // Declared before the daemon: removed after it stopped.
    let pod = TestCgroup::new(&format!("lwt-fleet-pod-{pid}"));
    let client = TestCgroup::new(&format!("lwt-fleet-client-{pid}"));
    let bind = TempDir::new("hostcg");
    let install = Install::new();
    let config = Policy::new(&ns, "enforce")
        .catalog(false)
        .extra(&rule("fleet-client", "deny", "cgroup", &client.name))
        .text();
    std::fs::write(install.config_path(), &config).expect("writing the config");

    // Without the option: refused, saying what to do.
    let out = run_failing_start(&mut in_container(&pod, bind.path(), &install.run_args()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started in a child cgroup namespace:\n{stderr}"
    );
    assert!(
        stderr.contains("runs in a cgroup namespace") && stderr.contains("--host-cgroup-root"),
        "{stderr}"
    );
    assert!(
        !install.pin_dir().exists(),
        "the refused start pinned something"
    );
    // Nor does the container's own cgroup2 mount pass for the host's.
    let mut own = install.run_args();
    own.extend(["--host-cgroup-root".into(), pod.root.display().to_string()]);
    let out = run_failing_start(&mut in_container(&pod, bind.path(), &own));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(78),
        "the namespace's own root passed, or not as the option's fault:\n{stderr}"
    );
    assert!(
        stderr.contains("a cgroup below the hierarchy's root"),
        "{stderr}"
    );

    // With it: attached at the host's root.
    let mut args = install.run_args();
    args.extend([
        "--host-cgroup-root".into(),
        bind.path().display().to_string(),
    ]);
    let daemon = Daemon::start_cmd(&install, in_container(&pod, bind.path(), &args));
    assert!(
        daemon
            .stderr_text()
            .contains(&format!("cgroup {}", bind.path().display())),
        "{}",
        daemon.stderr_text()
    );

    // A client in a host cgroup outside the daemon's namespace, named by a
    // rule that resolved under the host root: refused, and reported with its
    // host cgroup path (read from its /proc while it waits).
    let (_refused, errno) = connect_from(&ns, Some(&client));
    assert_eq!(errno, libc::ECONNREFUSED, "the client in {}", client.name);
    let ev = daemon.wait_event("deny by cgroup", |e| e["rule"] == "fleet-client");
    assert_eq!(ev["verdict"], "deny", "{ev}");
    assert_eq!(ev["cgroup"], format!("/{}", client.name), "{ev}");
    // Positive control: the same client in the test's own cgroup passes.
    let (_passed, errno) = connect_from(&ns, None);
    assert_eq!(errno, 0, "a client outside the rule's cgroup was refused");

    // status in the container: attached at the root it is given (here via
    // the environment, as the DaemonSet passes it); without it, the
    // namespace's root is not where the programs are.
    let (code, report) = status(&pod, bind.path(), &install, Some(bind.path()));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["state"], "active", "{report:#}");
    assert!(all_attached_at_root(&report), "{report:#}");
    let (code, report) = status(&pod, bind.path(), &install, None);
    assert!(!all_attached_at_root(&report), "{report:#}");
    // ... and it says it cannot tell, naming the way to tell, where it
    // said "not enforcing" (exit 3) of links that run.
    assert_eq!(code, Some(4), "{report:#}");
    assert_eq!(report["state"], "unreadable", "{report:#}");
    let summary = report["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("child cgroup namespace") && summary.contains("--host-cgroup-root"),
        "{report:#}"
    );
}

/// The DaemonSet's liveness probe, as its manifest has it.
const LIVENESS_PROBE: &str = "loopwarden status >/dev/null && { loopwarden who 127.0.0.1:1 127.0.0.1:1 >/dev/null; [ $? -le 1 ]; }";

/// The liveness probe, run by `sh` with a `loopwarden` on its PATH that is
/// this build pointed at `daemon`'s pins and run directory: its exit code.
fn run_liveness_probe(daemon: &Daemon, dir: &TempDir) -> Option<i32> {
    let install = daemon.install();
    let shim = dir.path().join("loopwarden");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n\
             status) exec {bin} status --pin-dir {pins} ;;\n\
             who) shift; exec {bin} who --run-dir {run} \"$@\" ;;\n\
             esac\nexit 64\n",
            bin = loopwarden_bin().display(),
            pins = install.pin_dir().display(),
            run = install.run_dir().display(),
        ),
    )
    .expect("writing the shim");
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(Command::new("sh")
        .args(["-c", LIVENESS_PROBE])
        .env("PATH", path));
    out.status.code()
}

/// The liveness probe passes a daemon that answers although the
/// connection it asks about is not open (`who` exits 1: an answer), and
/// fails once the daemon is gone while its enforcement stays pinned
/// (`status` still 0, `who` 2). A probe that took exit 1 for a failure restarted every
/// idle node's pod.
#[test]
fn the_daemonsets_liveness_probe_passes_an_idle_daemon_and_fails_a_gone_one() {
    let ns = Netns::new();
    let mut daemon = Daemon::start(&Policy::new(&ns, "audit").text());
    let dir = TempDir::new("liveness");
    assert_eq!(run_liveness_probe(&daemon, &dir), Some(0));
    assert!(daemon.stop(), "the daemon did not exit 0");
    assert_eq!(run_liveness_probe(&daemon, &dir), Some(1));
}

/// contrib/kubernetes/daemonset.yaml parses (PyYAML) and holds what the
/// daemon relies on: hostPID, the host root passed through the variable
/// loopwarden reads, the host's cgroup and bpffs mounted, the ConfigMap's
/// policy where `--config` looks and accepted by `check-config`, JSON lines,
/// a `status` and `who` liveness probe, tolerations for every node, and the
/// capabilities the systemd unit bounds it to.
#[test]
fn the_daemonset_manifest_holds_what_the_daemon_needs() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib");
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(contrib.join("kubernetes/daemonset.yaml")));
    assert!(
        out.status.success(),
        "the manifest does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from python");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in the manifest"))
    };
    let policy = kind("ConfigMap")["data"]["loopwarden.toml"]
        .as_str()
        .expect("the ConfigMap's loopwarden.toml");
    let spec = &kind("DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    let container = &spec["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--log-format=json"), "{args:?}");
    assert_eq!(
        container["livenessProbe"]["exec"]["command"],
        serde_json::json!(["sh", "-c", LIVENESS_PROBE])
    );
    // Where each volume is mounted, and from which host path.
    let host_path = |mount: &str| {
        let name = container["volumeMounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["mountPath"] == mount))
            .unwrap_or_else(|| panic!("nothing mounted at {mount}"))["name"]
            .clone();
        spec["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let env = container["env"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|v| v["name"] == "LOOPWARDEN_HOST_CGROUP_ROOT")
        })
        .expect("LOOPWARDEN_HOST_CGROUP_ROOT set");
    let root = env["value"].as_str().expect("its value");
    assert_eq!(host_path(root)["hostPath"]["path"], "/sys/fs/cgroup");
    assert_eq!(host_path("/sys/fs/bpf")["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(
        host_path("/sys/kernel/btf")["hostPath"]["path"],
        "/sys/kernel/btf"
    );
    let config = args
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("--config=");
    let (dir, file) = config.rsplit_once('/').expect("a path");
    assert_eq!(
        host_path(dir)["configMap"]["name"],
        kind("ConfigMap")["metadata"]["name"]
    );
    assert_eq!(file, "loopwarden.toml");
    // The ConfigMap's policy is one loopwarden accepts, in audit mode.
    let dir = TempDir::new("k8s");
    let file = dir.path().join("loopwarden.toml");
    std::fs::write(&file, policy).expect("writing the policy");
    let out = run(Command::new(loopwarden_bin())
        .arg("check-config")
        .arg(&file));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("mode:") && l.contains("audit")),
        "{text}"
    );
    // The unit's capabilities, no more and no less.
    let unit = std::fs::read_to_string(contrib.join("loopwarden.service")).expect("the unit");
    let mut bounded: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let caps = &container["securityContext"]["capabilities"];
    let mut added: Vec<String> = caps["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    bounded.sort();
    added.sort();
    assert_eq!(added, bounded);
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
}
