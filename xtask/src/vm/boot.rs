//! Boots one kernel under QEMU with the initramfs and reads the guest's
//! verdict from the serial console.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Outcome, VmTestArgs, debian::Kernel};
use crate::proc::{self, say};

const RESULT_MARKER: &str = "LW-VM-RESULT:";

pub(super) fn boot(
    qemu: &Path,
    kernel: &Kernel,
    initrd: &Path,
    dir: &Path,
    args: &VmTestArgs,
) -> anyhow::Result<Outcome> {
    let log_path = dir.join(format!("{}.log", kernel.package));
    let mut cmd = Command::new(qemu);
    if args.kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
    }
    cmd.args([
        "-m",
        "1024",
        "-smp",
        "1",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // A guest outlives no xtask killed under it (a CI timeout's SIGKILL).
    // SAFETY: prctl(2) only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    say!("vm-test: booting {} ...", kernel.package);
    say!("$ {}", proc::display(&cmd));

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", qemu.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                if tx
                    .send(line.trim_end_matches(['\r', '\n']).to_owned())
                    .is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);

    let deadline = started + Duration::from_secs(args.timeout);
    let mut log = Vec::new();
    let mut result: Option<String> = None;
    let mut timed_out = false;
    loop {
        // After the marker, give the guest a few seconds to power off.
        let limit = match &result {
            Some(_) => deadline.min(Instant::now() + Duration::from_secs(10)),
            None => deadline,
        };
        let Some(wait) = limit.checked_duration_since(Instant::now()) else {
            timed_out = result.is_none();
            break;
        };
        // An interrupt (a CI timeout's SIGTERM, ^C) ends the boot now: the
        // guest is killed below, not left running out its timeout.
        if proc::interrupted() {
            break;
        }
        match rx.recv_timeout(wait.min(Duration::from_millis(500))) {
            Ok(line) => {
                if args.verbose {
                    eprintln!("  | {line}");
                }
                if let Some(rest) = line.split_once(RESULT_MARKER).map(|(_, rest)| rest) {
                    result.get_or_insert_with(|| rest.trim().to_owned());
                }
                log.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if child.try_wait()?.is_none() {
        child.kill().ok();
    }
    child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    fs::write(&log_path, log.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", log_path.display()))?;

    let guest: Vec<&String> = log.iter().filter(|l| l.contains("LW-VM")).collect();
    let (pass, detail) = match &result {
        Some(rest) => {
            // "PASS kernel=..." or "FAIL kernel=... reason": the word goes to its own column.
            let (word, detail) = rest.split_once(' ').unwrap_or((rest.as_str(), ""));
            (word == "PASS", detail.to_owned())
        }
        None if timed_out => (
            false,
            format!("no result marker within {} s (killed)", args.timeout),
        ),
        None => (false, "QEMU exited without a result marker".to_owned()),
    };
    if pass {
        for line in guest.iter().filter(|l| {
            !l.contains("LW-VM-ERR") && !l.contains("LW-VM-OUT") && !l.contains("LW-VM: ----")
        }) {
            say!("  {line}");
        }
        say!(
            "vm-test: {} PASS in {seconds:.1} s (console: {})",
            kernel.package,
            log_path.display()
        );
    } else {
        say!(
            "vm-test: {} FAIL in {seconds:.1} s: {detail}",
            kernel.package
        );
        if guest.is_empty() {
            say!("vm-test: last console lines:");
            for line in log.iter().rev().take(40).rev() {
                eprintln!("  | {line}");
            }
        } else {
            print_guest_lines(&guest);
        }
        say!("vm-test: full console in {}", log_path.display());
    }
    Ok(Outcome {
        kernel: kernel.package.clone(),
        pass,
        detail,
        seconds,
    })
}

/// The guest's report; a long daemon stderr (a verifier log runs to
/// thousands of lines) is cut to its head and tail.
fn print_guest_lines(guest: &[&String]) {
    const HEAD: usize = 30;
    const TAIL: usize = 60;
    let err_total = guest.iter().filter(|l| l.contains("LW-VM-ERR")).count();
    let mut err_seen = 0;
    for line in guest {
        if line.contains("LW-VM-ERR") {
            err_seen += 1;
            if err_total > HEAD + TAIL && err_seen > HEAD && err_seen <= err_total - TAIL {
                if err_seen == HEAD + 1 {
                    eprintln!(
                        "  | ... {} daemon stderr lines left out ...",
                        err_total - HEAD - TAIL
                    );
                }
                continue;
            }
        }
        eprintln!("  | {line}");
    }
}
