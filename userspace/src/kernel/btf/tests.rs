//! Tests of the BTF reader and the offsets it finds, on hand-built BTF
//! blobs (a base and split BTF over it) and the fuzz seeds.

use super::{
    reader::{HEADER_LEN, MAGIC, kind},
    *,
};

/// Builds little-endian BTF blobs by hand.
#[derive(Default)]
struct Builder {
    strings: Vec<u8>,
    types: Vec<u8>,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Self {
            strings: vec![0],
            types: Vec::new(),
            next_id: 1,
        }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Adds a record header and returns its type id.
    fn ty(&mut self, name: &str, kind: u8, kind_flag: bool, vlen: u16, size_or_type: u32) -> u32 {
        let name = self.str(name);
        let info = (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | u32::from(vlen);
        self.words(&[name, info, size_or_type]);
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.ty(name, kind::INT, false, 0, bytes);
        self.words(&[bytes * 8]);
        id
    }

    /// A struct or union; members are (name, type, raw offset field).
    fn aggregate(
        &mut self,
        kind: u8,
        name: &str,
        kind_flag: bool,
        size: u32,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let id = self.ty(name, kind, kind_flag, members.len() as u16, size);
        for &(m, ty, off) in members {
            let m = self.str(m);
            self.words(&[m, ty, off]);
        }
        id
    }

    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let type_len = self.types.len() as u32;
        for w in [
            HEADER_LEN as u32,
            0,
            type_len,
            type_len,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A blob with one record of every kind before the structs, so a wrong
/// record size for any kind misplaces everything after it.
fn sample() -> Vec<u8> {
    let mut b = Builder::new();
    let int = b.int("int", 4); // 1
    let long = b.int("long", 8); // 2
    let ptr = b.ty("", kind::PTR, false, 0, int); // 3
    b.ty("", kind::ARRAY, false, 0, 0); // 4
    b.words(&[int, int, 4]);
    b.ty("e", kind::ENUM, false, 2, 4); // 5
    b.words(&[0, 1, 0, 2]);
    b.ty("task_struct", kind::FWD, false, 0, 0); // 6: the forward declaration comes first
    b.ty("v", kind::VOLATILE, false, 0, int); // 7
    b.ty("", kind::RESTRICT, false, 0, ptr); // 8
    let proto = b.ty("", kind::FUNC_PROTO, false, 3, int); // 9
    b.words(&[0, int, 0, long, 0, ptr]);
    b.ty("f", kind::FUNC, false, 0, proto); // 10
    b.ty("var", kind::VAR, false, 0, int); // 11
    b.words(&[1]);
    b.ty(".data", kind::DATASEC, false, 1, 4); // 12
    b.words(&[11, 0, 4]);
    b.ty("double", kind::FLOAT, false, 0, 8); // 13
    b.ty("tag", kind::DECL_TAG, false, 0, 10); // 14
    b.words(&[u32::MAX]);
    b.ty("user", kind::TYPE_TAG, false, 0, int); // 15
    b.ty("e64", kind::ENUM64, false, 1, 8); // 16
    b.words(&[0, 1, 0]);

    // struct { long c; long d; } inside union { long b; struct {...}; }
    let inner = b.aggregate(
        kind::STRUCT,
        "",
        false,
        16,
        &[("c", long, 0), ("d", long, 64)],
    );
    let inner_const = b.ty("", kind::CONST, false, 0, inner);
    let union = b.aggregate(
        kind::UNION,
        "",
        false,
        16,
        &[("b", long, 0), ("", inner_const, 0)],
    );
    let union_td = b.ty("anon_t", kind::TYPEDEF, false, 0, union);
    // struct path { long mnt; long *dentry; }
    let path = b.aggregate(
        kind::STRUCT,
        "path",
        false,
        16,
        &[("mnt", long, 0), ("dentry", ptr, 64)],
    );
    let path_td = b.ty("path_t", kind::TYPEDEF, false, 0, path);
    b.aggregate(
        kind::STRUCT,
        "task_struct",
        false,
        64,
        &[
            ("a", long, 0),
            ("", union_td, 64),
            ("f_path", path_td, 192),
            ("e", long, 320),
        ],
    );
    // Bitfields: the high 8 bits are the bitfield size.
    b.aggregate(
        kind::STRUCT,
        "bits",
        true,
        16,
        &[
            ("x", int, 32),
            ("y", int, (3 << 24) | 72),
            ("z", int, (1 << 24) | 75),
        ],
    );
    b.build()
}

#[test]
fn direct_and_anonymous_members() {
    let data = sample();
    let btf = Btf::parse(&data).unwrap();
    assert_eq!(btf.member_offset("task_struct", "a"), Ok(0));
    assert_eq!(btf.member_offset("task_struct", "b"), Ok(8));
    assert_eq!(btf.member_offset("task_struct", "c"), Ok(8));
    assert_eq!(btf.member_offset("task_struct", "d"), Ok(16));
    assert_eq!(btf.member_offset("task_struct", "e"), Ok(40));
}

#[test]
fn dotted_path_through_typedef() {
    let data = sample();
    let btf = Btf::parse(&data).unwrap();
    assert_eq!(
        btf.member_offset("task_struct", "f_path.dentry"),
        Ok(24 + 8)
    );
    assert_eq!(
        btf.member_offset("task_struct", "a.b"),
        Err(LookupError::NotAggregate {
            struct_name: "task_struct".into(),
            member: "a".into(),
            next: "b".into(),
        })
    );
    assert_eq!(
        btf.member_offset("task_struct", "f_path.nope"),
        Err(LookupError::MemberNotFound {
            struct_name: "task_struct.f_path".into(),
            member: "nope".into(),
        })
    );
}

#[test]
fn kind_flag_bitfield_offsets() {
    let data = sample();
    let btf = Btf::parse(&data).unwrap();
    assert_eq!(btf.member_offset("bits", "x"), Ok(4));
    assert_eq!(btf.member_offset("bits", "y"), Ok(9));
    assert_eq!(btf.member_bit_offset("bits", "y"), Ok(72));
    assert_eq!(btf.member_bit_offset("bits", "z"), Ok(75));
    assert_eq!(
        btf.member_offset("bits", "z"),
        Err(LookupError::Unaligned {
            struct_name: "bits".into(),
            member: "z".into(),
            bit_offset: 75,
        })
    );
}

/// A member read as a width it does not have is refused, naming both:
/// scalars and pointers by their exact size, aggregates by the least the
/// programs read, bitfields never.
#[test]
fn members_are_checked_for_the_width_the_programs_read() {
    let data = sample();
    let btf = Btf::parse(&data).unwrap();
    assert_eq!(
        btf.member_offset_of("task_struct", "a", Width::Bytes(8)),
        Ok(0)
    );
    // Through a typedef'd union and a const anonymous struct.
    assert_eq!(
        btf.member_offset_of("task_struct", "d", Width::Bytes(8)),
        Ok(16)
    );
    assert_eq!(
        btf.member_offset_of("task_struct", "f_path.dentry", Width::Bytes(8)),
        Ok(32)
    );
    assert_eq!(
        btf.member_offset_of("task_struct", "f_path", Width::AtLeast(16)),
        Ok(24)
    );
    assert_eq!(btf.member_offset_of("bits", "x", Width::Bytes(4)), Ok(4));
    let width = |member: &str, expected: Width, found: &str| LookupError::Width {
        struct_name: if member == "y" { "bits" } else { "task_struct" }.into(),
        member: member.into(),
        expected,
        found: found.into(),
    };
    assert_eq!(
        btf.member_offset_of("task_struct", "a", Width::Bytes(4)),
        Err(width("a", Width::Bytes(4), "8 bytes"))
    );
    assert_eq!(
        btf.member_offset_of("task_struct", "f_path", Width::AtLeast(17)),
        Err(width("f_path", Width::AtLeast(17), "16 bytes"))
    );
    assert_eq!(
        btf.member_offset_of("bits", "y", Width::Bytes(4)),
        Err(width("y", Width::Bytes(4), "a 3-bit bitfield"))
    );
    let message = width("a", Width::Bytes(4), "8 bytes").to_string();
    assert!(
        message.contains("task_struct.a is 8 bytes where loopwarden reads 4 bytes"),
        "{message}"
    );

    // An integer of fewer bits than its bytes (a bitfield the old way,
    // without kind_flag), and an array's size from its element's.
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let narrow = b.ty("flags_t", kind::INT, false, 0, 4);
    b.words(&[3]);
    let comm = b.ty("", kind::ARRAY, false, 0, 0);
    b.words(&[int, int, 4]);
    b.aggregate(
        kind::STRUCT,
        "s",
        false,
        24,
        &[("n", narrow, 0), ("comm", comm, 32), ("i", int, 160)],
    );
    let data = b.build();
    let btf = Btf::parse(&data).unwrap();
    assert!(matches!(
        btf.member_offset_of("s", "n", Width::Bytes(4)),
        Err(LookupError::Width { .. })
    ));
    assert_eq!(btf.member_offset_of("s", "comm", Width::AtLeast(16)), Ok(4));
    assert!(
        btf.member_offset_of("s", "comm", Width::AtLeast(17))
            .is_err()
    );
    assert_eq!(btf.member_offset_of("s", "i", Width::Bytes(4)), Ok(20));
}

#[test]
fn missing_struct_and_member() {
    let data = sample();
    let btf = Btf::parse(&data).unwrap();
    assert_eq!(
        btf.member_offset("mm_struct", "exe_file"),
        Err(LookupError::StructNotFound {
            name: "mm_struct".into()
        })
    );
    assert_eq!(
        btf.member_offset("task_struct", "mm"),
        Err(LookupError::MemberNotFound {
            struct_name: "task_struct".into(),
            member: "mm".into(),
        })
    );
}

#[test]
fn bad_magic() {
    let mut data = sample();
    data[0] = 0;
    assert!(matches!(
        Btf::parse(&data),
        Err(FormatError::BadMagic { .. })
    ));
    assert!(matches!(
        Btf::parse(b"ELF\x7f"),
        Err(FormatError::BadMagic { .. })
    ));
}

#[test]
fn truncated() {
    let data = sample();
    assert!(matches!(
        Btf::parse(&data[..1]),
        Err(FormatError::Truncated { .. })
    ));
    assert!(matches!(
        Btf::parse(&data[..10]),
        Err(FormatError::Truncated { .. })
    ));
    // Sections run past the end of the file.
    assert!(matches!(
        Btf::parse(&data[..data.len() - 1]),
        Err(FormatError::Truncated {
            what: "string section",
            ..
        })
    ));
    // A type section that ends inside a record.
    let mut short = data.clone();
    let type_len = u32::from_le_bytes(short[12..16].try_into().unwrap());
    short[12..16].copy_from_slice(&(type_len - 4).to_le_bytes());
    assert!(matches!(
        Btf::parse(&short),
        Err(FormatError::Truncated {
            what: "type record",
            ..
        })
    ));
}

/// Found by the btf fuzz target (a timeout): anonymous members that
/// refer back to their own type, or many times to one type, made a
/// lookup take exponential time.
#[test]
fn shared_and_cyclic_anonymous_members_are_searched_once() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    // Type 2 refers to itself through 1000 anonymous members.
    let members: Vec<(&str, u32, u32)> = (0..1000).map(|_| ("", 2, 0)).collect();
    let cyclic = b.aggregate(kind::STRUCT, "", false, 8, &members);
    assert_eq!(cyclic, 2);
    // A chain of 40 types, each with two anonymous members naming the next.
    let mut next = b.aggregate(kind::STRUCT, "", false, 8, &[("leaf", int, 0)]);
    for _ in 0..40 {
        next = b.aggregate(kind::STRUCT, "", false, 8, &[("", next, 0), ("", next, 32)]);
    }
    b.aggregate(
        kind::STRUCT,
        "task_struct",
        false,
        64,
        &[("", cyclic, 0), ("", next, 64), ("a", int, 128)],
    );
    let data = b.build();
    let btf = Btf::parse(&data).unwrap();
    let start = std::time::Instant::now();
    assert_eq!(
        btf.member_offset("task_struct", "missing"),
        Err(LookupError::MemberNotFound {
            struct_name: "task_struct".into(),
            member: "missing".into(),
        })
    );
    assert_eq!(btf.member_offset("task_struct", "a"), Ok(16));
    // More anonymous levels than MAX_DEPTH: not found (and not hung).
    assert!(btf.member_offset("task_struct", "leaf").is_err());
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn unknown_kind() {
    let mut b = Builder::new();
    b.int("int", 4);
    b.ty("", 31, false, 0, 0);
    assert_eq!(
        Btf::parse(&b.build()).unwrap_err(),
        FormatError::UnknownKind {
            type_id: 2,
            kind: 31
        }
    );
}

/// The fuzz seeds (made by fuzz/seeds/make-seeds.py) hold every
/// structure offsets_from reads, in both byte orders, so the fuzzer
/// starts from inputs that reach the lookups.
#[test]
fn fuzz_seeds_have_every_offset() {
    for data in [
        &include_bytes!("../../../../fuzz/seeds/btf/structs-le.btf")[..],
        &include_bytes!("../../../../fuzz/seeds/btf/structs-be.btf")[..],
    ] {
        let btf = Btf::parse(data).unwrap();
        let o = offsets_from(&btf).unwrap();
        assert_eq!(
            (o.task_mm, o.task_tgid, o.task_start_boottime, o.file_dentry),
            (64, 100, 160, 16)
        );
        assert_eq!((o.dentry_name, o.inode_ino, o.sb_dev), (24, 64, 16));
        assert_eq!(o.task_flags, 4);
        assert_eq!(
            (o.tcp_rcv_nxt, o.tcp_bytes_received, o.tcp_inet_sport),
            (256, 264, 64)
        );
        assert_eq!((o.tcp_snd_una, o.tcp_bytes_acked), (272, 280));
        assert_eq!((o.sk_family, o.sk_state), (16, 18));
        assert_eq!((o.fdtable_fd, o.fdtable_open_fds), (8, 24));
        assert_eq!(
            (o.task_cred, o.cred_uid, o.cred_gid, o.kernfs_node_id),
            (232, 4, 8, 40)
        );
    }
}

/// A module's split BTF over `base`: its type ids and strings continue
/// the base's (as `/sys/kernel/btf/<module>` does).
fn split_over(base: &Builder) -> Builder {
    Builder {
        strings: Vec::new(),
        types: Vec::new(),
        next_id: base.next_id,
    }
}

impl Builder {
    /// A name already in `base`'s string section (split BTF shares the
    /// kernel's strings instead of repeating them).
    fn base_str(base: &Builder, s: &str) -> u32 {
        let needle = [s.as_bytes(), b"\0"].concat();
        base.strings
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .expect("in the base strings") as u32
    }

    /// [`Builder::str`] for a split blob: offsets count from the end of
    /// `base`'s strings.
    fn split_str(&mut self, base: &Builder, s: &str) -> u32 {
        base.strings.len() as u32 + self.str(s)
    }
}

/// The kernel without btrfs, and btrfs as a module over it: `btrfs_inode`
/// embeds the kernel's `struct inode` after a pointer to its root, whose
/// member names are partly the kernel's strings.
fn kernel_and_btrfs_module() -> (Vec<u8>, Vec<u8>) {
    let mut k = Builder::new();
    let u32_t = k.int("unsigned int", 4); // 1
    let ptr = k.ty("", kind::PTR, false, 0, 0); // 2
    let inode = k.aggregate(
        kind::STRUCT,
        "inode",
        false,
        64,
        &[("i_ino", ptr, 0), ("root", u32_t, 64)],
    ); // 3
    let kernel = k.build();

    let mut m = split_over(&k);
    let root_name = Builder::base_str(&k, "root");
    let inode_name = m.split_str(&k, "vfs_inode");
    let anon = m.split_str(&k, "anon_dev");
    let name = m.split_str(&k, "btrfs_root");
    // struct btrfs_root { unsigned int x; dev_t anon_dev; } (id 4)
    let first = m.split_str(&k, "x");
    let info = (u32::from(kind::STRUCT) << 24) | 2;
    m.words(&[name, info, 16, first, u32_t, 0, anon, u32_t, 96]);
    m.next_id += 1;
    // struct btrfs_inode { struct btrfs_root *root; ...; struct inode vfs_inode; } (id 5)
    let name = m.split_str(&k, "btrfs_inode");
    m.words(&[
        name,
        info,
        200,
        root_name,
        ptr,
        0,
        inode_name,
        inode,
        8 * 136,
    ]);
    m.next_id += 1;
    (kernel, m.build())
}

#[test]
fn a_modules_split_btf_reads_the_kernels_types_and_strings() {
    let (kernel, module) = kernel_and_btrfs_module();
    let base = Btf::parse(&kernel).unwrap();
    let btrfs = Btf::parse_split(&module, &base).unwrap();
    assert_eq!(btrfs.member_offset("btrfs_inode", "root"), Ok(0));
    assert_eq!(btrfs.member_offset("btrfs_inode", "vfs_inode"), Ok(136));
    // Through the embedded kernel struct, whose type is the base's.
    assert_eq!(
        btrfs.member_offset("btrfs_inode", "vfs_inode.root"),
        Ok(144)
    );
    assert_eq!(btrfs.member_offset("btrfs_root", "anon_dev"), Ok(12));
    // The kernel's own structs are not the module's to look up.
    assert!(matches!(
        btrfs.member_offset("inode", "i_ino"),
        Err(LookupError::StructNotFound { .. })
    ));
    // Read alone, the module names strings and types it does not hold.
    assert!(
        Btf::parse(&module)
            .unwrap()
            .member_offset("btrfs_inode", "root")
            .is_err()
    );
}

#[test]
fn btrfs_offsets_come_from_the_module_when_the_kernel_has_none() {
    let (kernel, module) = kernel_and_btrfs_module();
    let base = Btf::parse(&kernel).unwrap();
    let dir = std::env::temp_dir().join(format!("lw-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("btrfs");
    std::fs::write(&path, &module).unwrap();
    assert_eq!(btrfs_offsets(&base, &path), Some((136, 0, 12)));
    // No module loaded: no btrfs, nothing to read.
    assert_eq!(btrfs_offsets(&base, &dir.join("absent")), None);
    // A module whose BTF is not BTF: no subvolumes read, no failure.
    std::fs::write(&path, b"not btf").unwrap();
    assert_eq!(btrfs_offsets(&base, &path), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_names_the_config_option() {
    let err = kernel_offsets(Path::new("/nonexistent/btf/vmlinux")).unwrap_err();
    assert!(matches!(err, BtfError::NotFound { .. }));
    assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF=y"), "{err}");
}

#[test]
fn running_kernel() {
    let path = Path::new(VMLINUX_BTF);
    if !path.exists() {
        println!("skipped: {VMLINUX_BTF} does not exist (kernel without CONFIG_DEBUG_INFO_BTF)");
        return;
    }
    let o = kernel_offsets(path).unwrap();
    let all = [
        o.task_mm,
        o.task_real_parent,
        o.task_tgid,
        o.mm_exe_file,
        o.file_inode,
        o.file_dentry,
        o.dentry_name,
        o.inode_ino,
        o.inode_sb,
        o.sb_dev,
    ];
    assert!(all.iter().all(|&off| off < 8192), "{o:?}");
    // `skc_state` right after `skc_family`, as since Linux 2.6.
    assert_eq!(o.sk_state, o.sk_family + 2, "{o:?}");
    // `sk_userlocks` (a bitfield on older kernels) is named, within the
    // words of `struct sock` the recvmsg programs copy.
    assert!(
        o.sk_userlocks_bit != 0 && o.sk_userlocks_bit < SOCK_COPY_WORDS as u32 * 64,
        "{o:?}"
    );
    assert!(o.task_signal != 0 && o.signal_live != 0, "{o:?}");
    for off in [
        o.task_mm,
        o.task_real_parent,
        o.task_tgid,
        o.mm_exe_file,
        o.file_dentry,
        o.dentry_name,
    ] {
        assert_ne!(off, 0, "{o:?}");
    }
    // Pointers and the pointer-sized i_ino are 8-byte aligned.
    for off in [
        o.task_mm,
        o.task_real_parent,
        o.mm_exe_file,
        o.file_inode,
        o.file_dentry,
        o.inode_ino,
        o.inode_sb,
    ] {
        assert_eq!(off % 8, 0, "{o:?}");
    }
    assert_eq!(o.task_tgid % 4, 0, "{o:?}");
    // Where the kernel's BTF or a loaded module's describes btrfs (built
    // in on the development VM), its subvolume is found.
    let data = std::fs::read(path).unwrap();
    let kernel = Btf::parse(&data).unwrap();
    let described = kernel.member_offset("btrfs_inode", "root").is_ok()
        || path.with_file_name("btrfs").exists();
    assert_eq!(o.btrfs_inode_vfs != 0, described, "{o:?}");
    assert_ne!(o.sb_magic, 0, "{o:?}");
}
