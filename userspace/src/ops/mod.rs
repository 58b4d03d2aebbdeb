//! Operating a host: `loopwarden status` ([`status`]) reads what enforces
//! right now from the pins in bpffs (and, for the daemon's side, its run
//! directory); `loopwarden doctor` ([`doctor`]) probes what the host offers
//! the programs and says what to change; the daemon serves Prometheus
//! [`metrics`]; `loopwarden generate` ([`generate`]) renders the man pages
//! and completions the package installs; `check-config` checks the
//! settings read only at start too ([`check`]).

pub mod check;
pub mod doctor;
pub mod generate;
pub mod metrics;
pub mod status;

use std::path::Path;

use crate::{daemon::DEFAULT_RUN_DIR, kernel::pins::DEFAULT_PIN_DIR};

/// The `loopwarden SUB` command line a hint gives: with `--pin-dir` and
/// `--run-dir` where they are not the defaults (a hint run as printed must
/// reach the same daemon's pins).
pub fn command(sub: &str, pin_dir: &Path, run_dir: Option<&Path>) -> String {
    let mut line = format!("loopwarden {sub}");
    if pin_dir != Path::new(DEFAULT_PIN_DIR) {
        line.push_str(&format!(" --pin-dir {}", pin_dir.display()));
    }
    if let Some(dir) = run_dir.filter(|d| *d != Path::new(DEFAULT_RUN_DIR)) {
        line.push_str(&format!(" --run-dir {}", dir.display()));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_names_the_directories_that_are_not_the_defaults() {
        let pins = Path::new(DEFAULT_PIN_DIR);
        let run = Path::new(DEFAULT_RUN_DIR);
        assert_eq!(command("detach", pins, Some(run)), "loopwarden detach");
        assert_eq!(
            command(
                "detach",
                Path::new("/sys/fs/bpf/x"),
                Some(Path::new("/tmp/r"))
            ),
            "loopwarden detach --pin-dir /sys/fs/bpf/x --run-dir /tmp/r"
        );
        assert_eq!(
            command("status", pins, Some(Path::new("/tmp/r"))),
            "loopwarden status --run-dir /tmp/r"
        );
    }
}
