//! The Debian package (`cargo xtask dist`), installed with dpkg on this
//! machine: its contents, the binary, man page, completions and unit as
//! installed, the shipped policy, and a purge that ends the enforcement a
//! daemon of the package pinned at the default pin directory.
//!
//! The package owns `/usr/sbin/loopwarden`, `/etc/loopwarden`,
//! `/sys/fs/bpf/loopwarden` and `/run/loopwarden` on this host. The test
//! refuses (fails, naming the path) rather than skip when one of them is in
//! use by something else: it would otherwise overwrite or purge state it
//! did not create, and a skipped test would prove nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use loopwarden_tests::{
    Daemon, Install, Netns, PROTECTED, loopwarden_bin, policy, prog_ids, require_root, run, run_ok,
};
use serde_json::Value;

const PACKAGE: &str = "loopwarden";
const BIN: &str = "/usr/sbin/loopwarden";
const CONFIG_DIR: &str = "/etc/loopwarden";
const UNIT: &str = "/lib/systemd/system/loopwarden.service";
const MAN: &str = "/usr/share/man/man8/loopwarden.8.gz";
const PIN_DIR: &str = "/sys/fs/bpf/loopwarden";
const RUN_DIR: &str = "/run/loopwarden";
/// Says the package is this test's while it is installed, for the cleanup
/// of a killed run (`cargo xtask test` purges it then).
const MARKER: &str = "/run/lwt-dist-installed";

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `$LOOPWARDEN_DEB`, or a package of the binary under test built by
/// `cargo xtask dist --binary` (in a target directory of its own: the
/// running `cargo test` holds the lock of the workspace's).
fn deb() -> PathBuf {
    if let Some(deb) = std::env::var_os("LOOPWARDEN_DEB") {
        return PathBuf::from(deb);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = workspace.join("target/dist-test");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = run_ok(
        Command::new(cargo)
            .current_dir(&workspace)
            .args([
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--",
                "dist",
                "--binary",
            ])
            .arg(loopwarden_bin())
            .env("CARGO_TARGET_DIR", &target),
    );
    PathBuf::from(
        text(&out)
            .lines()
            .last()
            .expect("xtask dist prints the .deb")
            .trim(),
    )
}

/// Whether dpkg knows the package in any state (installed, or config-files
/// left by a removal).
fn dpkg_knows() -> bool {
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]))
        .status
        .success()
}

/// Fails with the reason unless nothing of the package's is on the host.
fn require_clean_host() {
    assert!(
        !dpkg_knows(),
        "the {PACKAGE} package is already known to dpkg; this test installs and purges it: \
         `dpkg --purge {PACKAGE}` first (if you mean to)"
    );
    for path in [BIN, CONFIG_DIR, PIN_DIR] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists and is not the package's: this test would overwrite or purge it; \
             move it away (or `loopwarden detach` for {PIN_DIR}) and rerun"
        );
    }
    // A stale run directory is the package's to remove; a live daemon's is not.
    let lock = Path::new(RUN_DIR).join("loopwarden.lock");
    if lock.exists() {
        assert!(
            run(Command::new("flock").args(["-n"]).arg(&lock).arg("true"))
                .status
                .success(),
            "a loopwarden daemon holds {} (the default run directory): stop it and rerun",
            lock.display()
        );
    }
}

/// The package installed by this test: purged on drop, also when the test
/// fails, and the default pins removed if the purge left them.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Self {
        std::fs::write(
            MARKER,
            "the loopwarden package is the root suite's (tests/tests/dist.rs)\n",
        )
        .expect("the marker is written");
        let guard = Installed;
        run_ok(Command::new("dpkg").arg("-i").arg(deb));
        guard
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if dpkg_knows() {
            let _ = run(Command::new("dpkg").args(["--purge", PACKAGE]));
        }
        if Path::new(PIN_DIR).exists() {
            let _ = std::fs::remove_dir_all(PIN_DIR);
        }
        if !dpkg_knows() {
            let _ = std::fs::remove_file(MARKER);
        }
    }
}

#[test]
fn the_deb_installs_works_and_purge_ends_enforcement() {
    require_root();
    require_clean_host();
    let deb = deb();
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(
        name.starts_with("loopwarden_") && name.ends_with(".deb"),
        "{}",
        deb.display()
    );

    // Contents: root-owned, every piece where Debian looks for it.
    let listing = text(&run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for path in [
        "./usr/sbin/loopwarden",
        "./etc/loopwarden/loopwarden.toml",
        "./lib/systemd/system/loopwarden.service",
        "./usr/share/man/man8/loopwarden.8.gz",
        "./usr/share/man/man8/loopwarden-run.8.gz",
        "./usr/share/man/man8/loopwarden-check-config.8.gz",
        "./usr/share/bash-completion/completions/loopwarden",
        "./usr/share/zsh/vendor-completions/_loopwarden",
        "./usr/share/fish/vendor_completions.d/loopwarden.fish",
        "./usr/share/doc/loopwarden/copyright",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} missing from the package:\n{listing}"));
        assert!(line.contains(" root/root "), "{line}");
    }
    // The hidden commands get no man page.
    assert!(!listing.contains("loopwarden-generate"), "{listing}");
    assert!(!listing.contains("loopwarden-baseline"), "{listing}");
    let field = |f: &str| {
        text(&run_ok(
            Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f),
        ))
    };
    assert!(
        field("Depends").starts_with("libc6 (>= 2."),
        "{}",
        field("Depends")
    );
    let version = field("Version").trim().to_owned();
    let conffiles = text(&run_ok(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    ));
    assert_eq!(conffiles, "/etc/loopwarden/loopwarden.toml\n");

    let ns = Netns::new();
    let _servers = ns.http_servers();
    let socat_reaches = |ns: &Netns| ns.socat_connect(&format!("TCP:127.0.0.1:{PROTECTED}")).0;
    // Positive control: without loopwarden, socat reaches the service.
    assert!(socat_reaches(&ns));

    let installed = Installed::install(&deb);
    let version_line = text(&run_ok(Command::new(BIN).arg("--version")));
    assert_eq!(version_line.trim(), format!("loopwarden {version}"));

    // The man page: found by man itself in its section, and it renders.
    let found = text(&run_ok(Command::new("man").args(["-w", "8", "loopwarden"])));
    assert_eq!(found.trim(), MAN);
    let page = text(&run_ok(
        Command::new("man")
            .args(["-l", MAN])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    ));
    for expected in ["NAME", "SUBCOMMANDS", "check-config", "status", "detach"] {
        assert!(
            page.contains(expected),
            "{expected} not in the man page:\n{page}"
        );
    }
    assert!(
        !page.contains("generate"),
        "a hidden command in the man page:\n{page}"
    );

    // bash loads the completion and binds it; zsh and fish files are theirs.
    let bound = text(&run_ok(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/loopwarden && complete -p loopwarden",
    ])));
    assert!(bound.contains("loopwarden"), "{bound}");
    let zsh = std::fs::read_to_string("/usr/share/zsh/vendor-completions/_loopwarden").unwrap();
    assert!(zsh.starts_with("#compdef loopwarden"), "{zsh}");
    let fish =
        std::fs::read_to_string("/usr/share/fish/vendor_completions.d/loopwarden.fish").unwrap();
    assert!(fish.contains("complete -c loopwarden"), "{fish}");

    // The unit as installed: systemd finds nothing wrong (the binary and the
    // man page it names exist now).
    let verify = run(Command::new("systemd-analyze").args(["verify", UNIT]));
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(verify.status.success(), "{complaints}");
    assert!(!complaints.contains("loopwarden"), "{complaints}");

    // The shipped policy compiles and is audit mode.
    let checked = run_ok(Command::new(BIN).arg("check-config"));
    let compiled = text(&checked);
    assert!(
        compiled.starts_with("# /etc/loopwarden/loopwarden.toml: OK"),
        "{compiled}"
    );
    assert!(compiled.contains("audit"), "{compiled}");

    // The package's daemon enforces from the default pin directory, with a
    // policy scoped to the test's namespace: the catalog refuses socat.
    let install = Install::new();
    std::fs::write(install.config_path(), policy(&ns, "enforce", "")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(install.config_path())
        .args(["--log-format", "json"]);
    let mut daemon = Daemon::start_cmd(&install, cmd);
    assert!(
        !socat_reaches(&ns),
        "socat reached the service under enforcement"
    );
    assert!(daemon.stop(), "{}", daemon.stderr_text());
    // Stopped, the pins go on enforcing: only the purge ends it.
    assert!(
        !socat_reaches(&ns),
        "enforcement lapsed when the daemon stopped"
    );
    let status = run(Command::new(BIN).args(["status", "--json"]));
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status --json parses");
    let linked: Vec<u64> = status["links"]
        .as_array()
        .map(|links| links.iter().filter_map(|l| l["prog_id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(linked.len(), 2, "{status:#}");

    // Removal keeps enforcing (the pins outlive the binary) and says so,
    // with the way out, since no loopwarden is left to ask.
    let removed = run_ok(Command::new("dpkg").args(["--remove", PACKAGE]));
    let said = String::from_utf8_lossy(&removed.stderr);
    assert!(said.contains("keep enforcing: dpkg --purge"), "{said}");
    assert!(!Path::new(BIN).exists(), "{BIN} is left after the removal");
    assert!(!socat_reaches(&ns), "enforcement lapsed at the removal");
    let purge = run_ok(Command::new("dpkg").args(["--purge", PACKAGE]));
    let said = text(&purge);
    assert!(said.contains("no longer enforces"), "{said}");
    for path in [BIN, UNIT, MAN, CONFIG_DIR, PIN_DIR, RUN_DIR] {
        assert!(!Path::new(path).exists(), "{path} is left after the purge");
    }
    assert!(
        !dpkg_knows(),
        "dpkg still knows the package after the purge"
    );
    let loaded: Vec<u64> = ["lw_connect4", "lw_connect6"]
        .iter()
        .flat_map(|name| prog_ids(name))
        .collect();
    assert!(
        linked.iter().all(|id| !loaded.contains(id)),
        "programs {linked:?} of the purged package are still loaded ({loaded:?})"
    );
    // The same connect that was refused now reaches the service.
    assert!(socat_reaches(&ns), "socat still refused after the purge");
    // Only now: the guard's clean-up would hide what the purge left.
    drop(installed);
}
