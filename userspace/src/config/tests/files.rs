//! The file itself: missing, not UTF-8, a directory, empty, huge; and
//! the line index errors are named with.

use super::*;

#[test]
fn missing_file_says_how_to_fix() {
    let err = Config::from_file("/nonexistent/loopwarden.toml").unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }));
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/loopwarden.toml"),
        "{message}"
    );
    assert!(message.contains("--config"), "{message}");
    assert!(message.contains("check-config"), "{message}");
}

#[test]
fn a_file_that_is_not_utf8_is_named_with_the_position() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(&tmp, "latin1.toml", b"mode = \"audit\"\n# caf\xe9\n");
    let err = Config::from_file(&path).unwrap_err();
    assert!(matches!(err, ConfigError::NotUtf8 { .. }), "{err:?}");
    let message = err.to_string();
    assert_eq!(
        message,
        format!(
            "{}:2:6: not UTF-8 text (byte 0xe9): policy files must be UTF-8",
            path.display()
        )
    );
    // A binary file fails at its first byte that is not UTF-8.
    let err = Config::from_bytes_named(b"\x7fELF\x02\x01\x01\xff", "x").unwrap_err();
    assert!(err.to_string().starts_with("x:1:8: not UTF-8"), "{err}");
}

#[test]
fn a_directory_is_not_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Config::from_file(tmp.path()).unwrap_err();
    assert!(matches!(err, ConfigError::IsDirectory { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "config file {} is a directory",
            tmp.path().display()
        )),
        "{message}"
    );
}

#[test]
fn an_empty_file_is_the_default_policy_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(&tmp, "empty.toml", b"");
    let config = Config::from_file(&path).unwrap();
    assert_eq!(config.mode, Mode::Audit);
    assert_eq!(config.protect.ports, PortSet::All);
    assert_eq!(config.warnings.len(), 1);
    assert!(
        config.warnings[0].starts_with(&path.display().to_string()),
        "{:?}",
        config.warnings
    );
}

#[test]
fn huge_files_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    // 50 MiB, sparse: nothing is written, and nothing must be read.
    let path = tmp.path().join("huge.toml");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(50 << 20)
        .unwrap();
    let start = std::time::Instant::now();
    let err = Config::from_file(&path).unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(
        err.to_string(),
        format!(
            "config file {} is 52428800 bytes, over the 4194304-byte (4 MiB) limit for policy \
             files: is this the right file?",
            path.display()
        )
    );
    // Exactly at the limit is read (and then parsed: all spaces is empty).
    let path = write(&tmp, "limit.toml", &vec![b' '; MAX_CONFIG_BYTES as usize]);
    assert!(Config::from_file(&path).is_ok());
    // A device that never ends and says no size: read up to the limit only.
    let err = Config::from_file("/dev/zero").unwrap_err();
    assert!(
        matches!(err, ConfigError::TooLarge { size: None, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is longer than the 4194304-byte"),
        "{err}"
    );
}

#[test]
fn line_index() {
    let lines = LineIndex::new("ab\nc\u{e9}d\n\nx");
    assert_eq!(lines.locate(0), Location { line: 1, column: 1 });
    assert_eq!(lines.locate(2), Location { line: 1, column: 3 });
    assert_eq!(lines.locate(3), Location { line: 2, column: 1 });
    assert_eq!(lines.locate(6), Location { line: 2, column: 3 });
    assert_eq!(lines.locate(8), Location { line: 3, column: 1 });
    assert_eq!(lines.locate(9), Location { line: 4, column: 1 });
}

#[test]
fn a_fifo_nothing_writes_to_is_said_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("policy");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    // Before, the open waited for a writer for ever; now 10 s (here 0.1).
    let err = Config::from_file_waiting(&fifo, std::time::Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, ConfigError::UnwrittenFifo { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("is a FIFO that nothing wrote to within"),
        "{err}"
    );
    // One a writer holds is read whole, however slowly it is written (the
    // writer opens it for reading too, which Linux lets a FIFO's open do
    // without waiting for a reader).
    let mut w = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let opened = {
        let fifo = fifo.clone();
        // Both ends open in this process: the writer's and the reader's.
        move || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(Result::ok)
                .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == fifo))
                .count()
                >= 2
        }
    };
    let writer = std::thread::spawn(move || {
        // Written late, and closed only once the reader has it open (a
        // FIFO's data goes with its last open end).
        std::thread::sleep(std::time::Duration::from_millis(200));
        while !opened() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::io::Write::write_all(&mut w, b"mode = \"enforce\"\n").unwrap();
    });
    let config = Config::from_file(&fifo);
    writer.join().unwrap();
    assert_eq!(config.unwrap().mode, crate::policy::Mode::Enforce);
}
