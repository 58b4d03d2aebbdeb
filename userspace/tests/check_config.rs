//! `loopwarden check-config` on odd files: the same clear errors the config
//! module's unit tests check, as the operator sees them (exit status 78, as
//! `run` exits for a bad file, and one `loopwarden: error:` line naming the
//! file), and never a panic.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Writes `contents` to `name` in `dir`; its path.
fn write(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// `run`'s and `check-config`'s exit code for a bad file (EX_CONFIG).
const BAD_FILE: i32 = 78;

/// Runs `check-config FILE`: (exit code, stderr).
fn check(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loopwarden"))
        .arg("check-config")
        .arg(file)
        .env("LOOPWARDEN_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), stderr)
}

fn expect_error(file: &Path, message: &str) {
    let (code, stderr) = check(file);
    assert_eq!(code, Some(BAD_FILE), "{}: {stderr}", file.display());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("loopwarden: error: ") && stderr.contains(message),
        "expected {message:?} in: {stderr}"
    );
}

#[test]
fn odd_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = |name: &str| tmp.path().join(name).display().to_string();

    let latin1 = write(&tmp, "latin1.toml", b"mode = \"audit\"\n# caf\xe9\n");
    expect_error(
        &latin1,
        &format!("{}:2:6: not UTF-8 text (byte 0xe9)", path("latin1.toml")),
    );

    expect_error(
        tmp.path(),
        &format!("config file {} is a directory", tmp.path().display()),
    );

    let huge = tmp.path().join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(50 << 20)
        .unwrap();
    expect_error(
        &huge,
        &format!(
            "config file {} is 52428800 bytes, over the 4194304-byte (4 MiB) limit",
            path("huge.toml")
        ),
    );

    let rules: String = (0..5000)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\naction = \"deny\"\nuid = {i}\n"))
        .collect();
    let many = write(&tmp, "many.toml", rules.as_bytes());
    // Four lines a rule; the error points at the name of the first that does not fit.
    let fit = loopwarden_common::MAX_RULES - loopwarden::catalog::CATALOG.len();
    expect_error(
        &many,
        &format!(
            "{}:{}:8: too many rules: 5000 in the file",
            path("many.toml"),
            4 * fit + 2
        ),
    );

    let long = format!("/{}", "a".repeat(199)).repeat(50);
    let text = format!("[[rule]]\nname = \"long\"\naction = \"deny\"\nexe = \"{long}\"\n");
    let long = write(&tmp, "long.toml", text.as_bytes());
    expect_error(
        &long,
        &format!(
            "{}:4:7: `exe` path is 10000 bytes, longer than Linux allows",
            path("long.toml")
        ),
    );
}

#[test]
fn an_empty_file_checks_as_the_defaults_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = write(&tmp, "empty.toml", b"");
    let out = Command::new(env!("CARGO_BIN_EXE_loopwarden"))
        .arg("check-config")
        .arg(&empty)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("no settings"),
        "{stderr}"
    );
    assert!(stdout.contains("mode:        audit"), "{stdout}");
    assert!(stdout.contains("ports:       all"), "{stdout}");
}

/// `check-config --as-daemon FILE`: (exit code, stderr).
fn check_as_daemon(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loopwarden"))
        .args(["check-config", "--as-daemon"])
        .arg(file)
        .env("LOOPWARDEN_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A policy scoped to namespaces none of which exists would judge nothing:
/// a reload (which `--as-daemon` checks as) refuses it; one that exists
/// beside the missing one is enough.
#[test]
fn a_scope_to_network_namespaces_that_do_not_exist_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-netns");
    let scoped = |paths: &[&Path]| {
        let list: Vec<String> = paths
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!(
            "mode = \"enforce\"\n[protect]\nnetns = [{}]\n",
            list.join(", ")
        )
    };
    let typo = write(&tmp, "typo.toml", scoped(&[&missing]).as_bytes());
    let (code, stderr) = check(&typo);
    assert_eq!(code, Some(BAD_FILE), "{stderr}");
    assert!(stderr.contains("no-such-netns"), "{stderr}");
    let (code, stderr) = check_as_daemon(&typo);
    assert_eq!(code, Some(BAD_FILE), "{stderr}");
    assert!(
        stderr.contains("none of the network namespaces [protect] netns names exists"),
        "{stderr}"
    );
    // The positive control: this process's own namespace exists.
    let own = Path::new("/proc/self/ns/net");
    let one = write(&tmp, "one.toml", scoped(&[&missing, own]).as_bytes());
    let (code, stderr) = check_as_daemon(&one);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no-such-netns"), "{stderr}");
}

/// Settings the daemon reads only at start are checked too: an `[ident]
/// netns` that does not exist is warned of (the daemon starts without the
/// responder and binds it once the file is there), one that is no
/// namespace is refused (a start would fail; for the daemon's check,
/// which a reload never applies, a warning), and a `getsockopt_cgroups`
/// cgroup not found is warned of.
#[test]
fn settings_read_only_at_start_are_checked_too() {
    let tmp = tempfile::tempdir().unwrap();
    let ident = |netns: &str| format!("[ident]\nlisten = [\"127.0.0.1:113\"]\nnetns = {netns:?}\n");
    let missing = tmp.path().join("no-such-netns").display().to_string();
    let later = write(&tmp, "later.toml", ident(&missing).as_bytes());
    let (code, stderr) = check(&later);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("later.toml:3:9: [ident] netns")
            && stderr.contains("no-such-netns")
            && stderr.contains("once the namespace is there"),
        "{stderr}"
    );
    // A file that is there but no namespace: a start would fail.
    let not_netns = tmp.path().join("not-a-netns");
    std::fs::write(&not_netns, b"").unwrap();
    let bad = write(
        &tmp,
        "ident.toml",
        ident(&not_netns.display().to_string()).as_bytes(),
    );
    let (code, stderr) = check(&bad);
    assert_eq!(code, Some(BAD_FILE), "{stderr}");
    assert!(
        stderr.contains("ident.toml:3:9: [ident] netns") && stderr.contains("not-a-netns"),
        "{stderr}"
    );
    let (code, stderr) = check_as_daemon(&bad);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("not-a-netns"),
        "{stderr}"
    );
    // The positive control: this process's own namespace.
    let good = write(&tmp, "own.toml", ident("/proc/self/ns/net").as_bytes());
    let (code, stderr) = check(&good);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("[ident]"), "{stderr}");

    let cgroups = write(
        &tmp,
        "cgroups.toml",
        b"[provenance]\ngetsockopt_cgroups = [\"no-such-unit-loopwarden.service\"]\n",
    );
    let (code, stderr) = check(&cgroups);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("cgroups.toml:2:23: getsockopt_cgroups `no-such-unit-loopwarden.service`"),
        "{stderr}"
    );
}
