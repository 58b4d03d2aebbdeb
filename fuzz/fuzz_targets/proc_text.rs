//! Small text files from the system: the kernel release (`uname -r`),
//! `/proc/PID/stat` (start time), `/proc/PID/cmdline` and `/proc/PID/cgroup`.
//! (User names come from NSS, not from parsing `/etc/passwd`.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use loopwarden::{events, kernel::compat};

fuzz_target!(|data: &[u8]| {
    let _ = events::cmdline_text(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = compat::parse_kernel_version(text);
    let _ = events::starttime_ticks(text);
    let _ = events::cgroup_v2_path(text);
});
