//! Small text files from the system: the kernel release (`uname -r`),
//! `/proc/PID/stat` (start time), `/proc/PID/cmdline`, `/proc/PID/cgroup`
//! and `/etc/passwd` (by uid and by name).

#![no_main]

use libfuzzer_sys::fuzz_target;
use loopwarden::{compat, events, resolve};

fuzz_target!(|data: &[u8]| {
    let _ = events::cmdline_text(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = compat::parse_kernel_version(text);
    let _ = events::starttime_ticks(text);
    let _ = events::cgroup_v2_path(text);
    for uid in [0, 1000, 65534, u32::MAX] {
        let _ = events::user_by_uid(text, uid);
    }
    for name in text
        .lines()
        .filter_map(|line| line.split(':').next())
        .take(4)
    {
        let _ = resolve::passwd_uid(text, name);
    }
});
