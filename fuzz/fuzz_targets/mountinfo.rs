//! `/proc/self/mountinfo`: the cgroup v2 mount, the superblock device of a
//! path's mount, and the octal escapes of mountinfo fields. Input: a path,
//! a NUL, then the mountinfo text (or just the text, for a fixed path).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use loopwarden::{
    kernel::{compat, mountinfo},
    resolve,
};

fuzz_target!(|data: &[u8]| {
    // The daemon reads mountinfo with read_to_string; lossy decoding keeps
    // inputs with a stray byte useful instead of discarding them.
    let text = String::from_utf8_lossy(data);
    let (path, info) = text.split_once('\0').unwrap_or(("/usr/bin/socat", &text));
    let _ = compat::mountinfo_cgroup2(info);
    let _ = resolve::superblock_dev(info, Path::new(path));
    let _ = mountinfo::mounts(info).count();
    for field in info.split_ascii_whitespace() {
        let _ = mountinfo::unescape(field);
    }
});
