//! Kernel BTF (`/sys/kernel/btf/vmlinux`): the header, the type index and
//! the member lookups that give the kernel programs their offsets; and a
//! module's split BTF over it (the same blob read as both).

#![no_main]

use libfuzzer_sys::fuzz_target;
use loopwarden::kernel::btf::{self, Btf};

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    let _ = btf::offsets_from(&btf);
    // Paths offsets_from does not take: deeper, missing, through non-structs.
    for (name, member) in [
        ("task_struct", "f_path.dentry.d_name"),
        ("file", "f_path"),
        ("dentry", "d_name.name.len"),
        ("bits", "y"),
        ("task_struct", ""),
        ("", "x"),
    ] {
        let _ = btf.member_offset(name, member);
        let _ = btf.member_offset_of(name, member, btf::Width::AtLeast(1));
    }
    // Split over itself: ids and string offsets past the base's.
    if let Ok(module) = Btf::parse_split(data, &btf) {
        for (name, member) in [
            ("btrfs_inode", "vfs_inode"),
            ("task_struct", "f_path.dentry"),
            ("dentry", "d_name.name"),
        ] {
            let _ = module.member_offset(name, member);
        }
    }
});
