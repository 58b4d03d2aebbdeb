//! Kernel structure offsets from the running kernel's BTF.
//!
//! aya cannot emit CO-RE relocations from Rust, so the kernel programs read
//! `task_struct`, `mm_struct`, `file`, `dentry`, `inode` and `super_block`
//! fields at offsets userspace finds here and patches into
//! [`loopwarden_common::OFFSETS_GLOBAL`] before loading.
//!
//! This module owns a small reader for the raw BTF format (`/sys/kernel/btf/vmlinux`,
//! see the kernel's [BTF documentation](https://docs.kernel.org/bpf/btf.html)
//! and `include/uapi/linux/btf.h`): the header, the string section, and just
//! enough of the type section to walk every record and look up struct
//! members, including members nested in anonymous structs and unions.

use std::{
    collections::HashSet,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use loopwarden_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `BTF_MAGIC` as read in the file's own byte order.
const MAGIC: u16 = 0xeb9f;
/// Fixed part of `struct btf_header`: magic, version, flags, hdr_len and the
/// four section offsets/lengths.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type` (name_off, info, size/type).
const TYPE_LEN: usize = 12;
/// Deepest nesting of anonymous members or modifier chains we follow; real
/// kernels need a handful, this only stops a malformed blob from looping.
const MAX_DEPTH: usize = 32;

/// `BTF_KIND_*` values.
mod kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

/// Why [`kernel_offsets`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "kernel BTF not found at {}: the kernel needs CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.x have it)",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("reading kernel BTF {} failed", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid BTF", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("kernel BTF {} lacks a structure field loopwarden reads", path.display())]
    Lookup {
        path: PathBuf,
        #[source]
        source: LookupError,
    },
}

/// A BTF blob that cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad magic {found:#06x} (expected {MAGIC:#06x})")]
    BadMagic { found: u16 },
    #[error("unsupported BTF version {version} (expected 1)")]
    Version { version: u8 },
    #[error("truncated: {what} needs bytes {start}..{end} but only {len} are there")]
    Truncated {
        what: &'static str,
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("type {type_id} has unknown kind {kind}")]
    UnknownKind { type_id: u32, kind: u8 },
    #[error("name offset {offset} is outside the string section")]
    BadString { offset: u32 },
}

/// A structure or member that is not where we expect it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no struct {name}")]
    StructNotFound { name: String },
    #[error("struct {struct_name} has no member {member}")]
    MemberNotFound { struct_name: String, member: String },
    #[error("member {struct_name}.{member} is not a struct or union, so it has no member {next}")]
    NotAggregate {
        struct_name: String,
        member: String,
        next: String,
    },
    #[error("member {struct_name}.{member} is at bit {bit_offset}, not on a byte boundary")]
    Unaligned {
        struct_name: String,
        member: String,
        bit_offset: u64,
    },
    #[error("member {struct_name}.{member} is beyond 4 GiB (bit {bit_offset})")]
    TooFar {
        struct_name: String,
        member: String,
        bit_offset: u64,
    },
    #[error("type {type_id} is referenced but not defined")]
    BadTypeId { type_id: u32 },
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Reads the offsets the kernel programs need from the BTF file at `path`
/// (normally [`VMLINUX_BTF`]).
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    let data = fs::read(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => BtfError::NotFound {
            path: path.to_owned(),
        },
        _ => BtfError::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    let btf = Btf::parse(&data).map_err(|source| BtfError::Malformed {
        path: path.to_owned(),
        source,
    })?;
    offsets_from(&btf).map_err(|source| BtfError::Lookup {
        path: path.to_owned(),
        source,
    })
}

/// Fills [`KernelOffsets`] from parsed kernel BTF.
pub fn offsets_from(btf: &Btf<'_>) -> Result<KernelOffsets, LookupError> {
    Ok(KernelOffsets {
        task_mm: btf.member_offset("task_struct", "mm")?,
        task_real_parent: btf.member_offset("task_struct", "real_parent")?,
        task_tgid: btf.member_offset("task_struct", "tgid")?,
        task_group_leader: btf.member_offset("task_struct", "group_leader")?,
        task_start_boottime: btf.member_offset("task_struct", "start_boottime")?,
        mm_exe_file: btf.member_offset("mm_struct", "exe_file")?,
        file_inode: btf.member_offset("file", "f_inode")?,
        file_dentry: btf.member_offset("file", "f_path.dentry")?,
        dentry_name: btf.member_offset("dentry", "d_name.name")?,
        inode_ino: btf.member_offset("inode", "i_ino")?,
        inode_sb: btf.member_offset("inode", "i_sb")?,
        sb_dev: btf.member_offset("super_block", "s_dev")?,
        task_comm: btf.member_offset("task_struct", "comm")?,
        task_pid: btf.member_offset("task_struct", "pid")?,
        mm_arg_start: btf.member_offset("mm_struct", "arg_start")?,
        mm_arg_end: btf.member_offset("mm_struct", "arg_end")?,
        sk_daddr: btf.member_offset("sock", "__sk_common.skc_daddr")?,
        sk_rcv_saddr: btf.member_offset("sock", "__sk_common.skc_rcv_saddr")?,
        sk_dport: btf.member_offset("sock", "__sk_common.skc_dport")?,
        sk_num: btf.member_offset("sock", "__sk_common.skc_num")?,
        sk_family: btf.member_offset("sock", "__sk_common.skc_family")?,
        sk_v6_daddr: btf.member_offset("sock", "__sk_common.skc_v6_daddr")?,
        sk_v6_rcv_saddr: btf.member_offset("sock", "__sk_common.skc_v6_rcv_saddr")?,
        sk_net: btf.member_offset("sock", "__sk_common.skc_net.net")?,
        sk_cookie: btf.member_offset("sock", "__sk_common.skc_cookie")?,
        sk_protocol: btf.member_offset("sock", "sk_protocol")?,
        sk_uid: btf.member_offset("sock", "sk_uid")?,
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdtable_fd: btf.member_offset("fdtable", "fd")?,
        fdtable_max_fds: btf.member_offset("fdtable", "max_fds")?,
        file_private_data: btf.member_offset("file", "private_data")?,
        inode_mode: btf.member_offset("inode", "i_mode")?,
        socket_sk: btf.member_offset("socket", "sk")?,
        dentry_inline_name: btf
            .member_offset("dentry", "d_shortname")
            .or_else(|_| btf.member_offset("dentry", "d_iname"))?,
        net_inum: btf.member_offset("net", "ns.inum")?,
        tcp_rcv_nxt: btf.member_offset("tcp_sock", "rcv_nxt")?,
        tcp_bytes_received: btf.member_offset("tcp_sock", "bytes_received")?,
        tcp_inet_sport: btf.member_offset("tcp_sock", "inet_conn.icsk_inet.inet_sport")?,
        sk_lock_owned: btf.member_offset("sock", "sk_lock.owned")?,
        task_cred: btf.member_offset("task_struct", "cred")?,
        cred_uid: btf.member_offset("cred", "uid.val")?,
        cred_gid: btf.member_offset("cred", "gid.val")?,
        task_cgroups: btf.member_offset("task_struct", "cgroups")?,
        css_set_dfl_cgrp: btf.member_offset("css_set", "dfl_cgrp")?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kernfs_node_id: btf.member_offset("kernfs_node", "id")?,
    })
}

/// One record of the type section, as located by [`Btf::parse`].
#[derive(Clone, Copy, Debug)]
struct TypeEntry {
    /// Start of the `btf_type` within the type section.
    offset: usize,
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// `size` for structs, unions, ints...; `type` for modifiers, typedefs.
    size_or_type: u32,
}

/// A struct member, as stored after its `btf_type`.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

/// Parsed BTF: the type index over a borrowed blob.
#[derive(Debug)]
pub struct Btf<'a> {
    types_data: &'a [u8],
    strings: &'a [u8],
    big_endian: bool,
    /// Indexed by type id; entry 0 (void) is a placeholder.
    types: Vec<TypeEntry>,
}

impl<'a> Btf<'a> {
    /// Reads the header and indexes every record of the type section.
    pub fn parse(data: &'a [u8]) -> Result<Self, FormatError> {
        let magic_bytes = slice(data, 0, 2, "header")?;
        let big_endian = match [magic_bytes[0], magic_bytes[1]] {
            m if u16::from_le_bytes(m) == MAGIC => false,
            m if u16::from_be_bytes(m) == MAGIC => true,
            m => {
                return Err(FormatError::BadMagic {
                    found: u16::from_le_bytes(m),
                });
            }
        };
        let header = slice(data, 0, HEADER_LEN, "header")?;
        let version = header[2];
        if version != 1 {
            return Err(FormatError::Version { version });
        }
        let word = |at: usize| read_u32(header, at, big_endian, "header");
        let hdr_len = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let body = data.get(hdr_len..).ok_or(FormatError::Truncated {
            what: "header",
            start: 0,
            end: hdr_len,
            len: data.len(),
        })?;
        let types_data =
            slice(body, type_off, type_len, "type section").map_err(|e| shift(e, hdr_len))?;
        let strings =
            slice(body, str_off, str_len, "string section").map_err(|e| shift(e, hdr_len))?;

        let mut btf = Btf {
            types_data,
            strings,
            big_endian,
            types: vec![TypeEntry {
                offset: 0,
                name_off: 0,
                kind: 0,
                kind_flag: false,
                vlen: 0,
                size_or_type: 0,
            }],
        };
        let mut offset = 0;
        while offset < types_data.len() {
            let type_id = u32::try_from(btf.types.len()).unwrap_or(u32::MAX);
            let name_off = btf.word(offset, "type record")?;
            let info = btf.word(offset + 4, "type record")?;
            let size_or_type = btf.word(offset + 8, "type record")?;
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = (info & 0xffff) as u16;
            let extra = match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * usize::from(vlen),
                kind::ENUM | kind::FUNC_PROTO => 8 * usize::from(vlen),
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                _ => return Err(FormatError::UnknownKind { type_id, kind }),
            };
            let end = offset + TYPE_LEN + extra;
            if end > types_data.len() {
                return Err(FormatError::Truncated {
                    what: "type record",
                    start: offset,
                    end,
                    len: types_data.len(),
                });
            }
            btf.types.push(TypeEntry {
                offset,
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
            });
            offset = end;
        }
        Ok(btf)
    }

    /// Byte offset of `member` in struct `struct_name`. `member` may be a
    /// dotted path through embedded structs (`f_path.dentry`); each step may
    /// sit inside anonymous structs or unions, whose offsets are added.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, LookupError> {
        let mut type_id = self.find_struct(struct_name)?;
        let mut bits: u64 = 0;
        let mut owner = struct_name.to_owned();
        let mut steps = member.split('.').peekable();
        while let Some(step) = steps.next() {
            let (found_bits, member_type) = self
                .find_member(type_id, step, 0, &mut HashSet::from([type_id]))?
                .ok_or_else(|| LookupError::MemberNotFound {
                    struct_name: owner.clone(),
                    member: step.to_owned(),
                })?;
            bits += found_bits;
            if let Some(next) = steps.peek() {
                let resolved = self.skip_modifiers(member_type)?;
                if !matches!(self.entry(resolved)?.kind, kind::STRUCT | kind::UNION) {
                    return Err(LookupError::NotAggregate {
                        struct_name: owner,
                        member: step.to_owned(),
                        next: (*next).to_owned(),
                    });
                }
                type_id = resolved;
                owner = format!("{owner}.{step}");
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(LookupError::Unaligned {
                struct_name: struct_name.to_owned(),
                member: member.to_owned(),
                bit_offset: bits,
            });
        }
        u32::try_from(bits / 8).map_err(|_| LookupError::TooFar {
            struct_name: struct_name.to_owned(),
            member: member.to_owned(),
            bit_offset: bits,
        })
    }

    /// Id of the first `STRUCT` (not a forward declaration) named `name`.
    fn find_struct(&self, name: &str) -> Result<u32, LookupError> {
        for (id, entry) in self.types.iter().enumerate().skip(1) {
            if entry.kind == kind::STRUCT && self.name(entry.name_off)? == name.as_bytes() {
                return Ok(u32::try_from(id).unwrap_or(u32::MAX));
            }
        }
        Err(LookupError::StructNotFound {
            name: name.to_owned(),
        })
    }

    /// Bit offset and type of the member `name` of struct/union `type_id`,
    /// looking inside anonymous members. `searched` holds the types already
    /// looked into: one that did not have the member the first time is not
    /// searched again, so a blob whose anonymous members refer to one type
    /// many times, or to themselves, costs one pass over its members instead
    /// of exponential time.
    fn find_member(
        &self,
        type_id: u32,
        name: &str,
        depth: usize,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<(u64, u32)>, LookupError> {
        let entry = self.entry(type_id)?;
        for index in 0..usize::from(entry.vlen) {
            let member = self.member(entry, index)?;
            if member.name_off != 0 {
                if self.name(member.name_off)? == name.as_bytes() {
                    return Ok(Some((u64::from(member.bit_offset), member.type_id)));
                }
                continue;
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            let inner = self.skip_modifiers(member.type_id)?;
            if !matches!(self.entry(inner)?.kind, kind::STRUCT | kind::UNION)
                || !searched.insert(inner)
            {
                continue;
            }
            if let Some((bits, found)) = self.find_member(inner, name, depth + 1, searched)? {
                return Ok(Some((u64::from(member.bit_offset) + bits, found)));
            }
        }
        Ok(None)
    }

    /// Follows typedef, const, volatile, restrict and type tags to the
    /// underlying type.
    fn skip_modifiers(&self, mut type_id: u32) -> Result<u32, LookupError> {
        for _ in 0..MAX_DEPTH {
            let entry = self.entry(type_id)?;
            match entry.kind {
                kind::TYPEDEF | kind::CONST | kind::VOLATILE | kind::RESTRICT | kind::TYPE_TAG => {
                    type_id = entry.size_or_type;
                }
                _ => return Ok(type_id),
            }
        }
        Ok(type_id)
    }

    fn entry(&self, type_id: u32) -> Result<TypeEntry, LookupError> {
        usize::try_from(type_id)
            .ok()
            .filter(|&id| id != 0)
            .and_then(|id| self.types.get(id))
            .copied()
            .ok_or(LookupError::BadTypeId { type_id })
    }

    /// The `index`th `btf_member` of a struct or union; the bit offset is
    /// decoded (low 24 bits when the type's kind_flag marks bitfields).
    fn member(&self, entry: TypeEntry, index: usize) -> Result<Member, FormatError> {
        let at = entry.offset + TYPE_LEN + index * 12;
        let raw_offset = self.word(at + 8, "struct member")?;
        Ok(Member {
            name_off: self.word(at, "struct member")?,
            type_id: self.word(at + 4, "struct member")?,
            bit_offset: if entry.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            },
        })
    }

    /// The NUL-terminated name at `offset` in the string section.
    fn name(&self, offset: u32) -> Result<&'a [u8], FormatError> {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|o| self.strings.get(o..))
            .ok_or(FormatError::BadString { offset })?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(FormatError::BadString { offset })?;
        Ok(&rest[..end])
    }

    fn word(&self, at: usize, what: &'static str) -> Result<u32, FormatError> {
        read_u32(self.types_data, at, self.big_endian, what)
    }
}

fn slice<'d>(
    data: &'d [u8],
    start: usize,
    len: usize,
    what: &'static str,
) -> Result<&'d [u8], FormatError> {
    let end = start.saturating_add(len);
    data.get(start..end).ok_or(FormatError::Truncated {
        what,
        start,
        end,
        len: data.len(),
    })
}

fn read_u32(
    data: &[u8],
    at: usize,
    big_endian: bool,
    what: &'static str,
) -> Result<u32, FormatError> {
    let bytes: [u8; 4] =
        slice(data, at, 4, what)?
            .try_into()
            .map_err(|_| FormatError::Truncated {
                what,
                start: at,
                end: at + 4,
                len: data.len(),
            })?;
    Ok(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// Makes a section-relative truncation error file-relative.
fn shift(error: FormatError, by: usize) -> FormatError {
    match error {
        FormatError::Truncated {
            what,
            start,
            end,
            len,
        } => FormatError::Truncated {
            what,
            start: start.saturating_add(by),
            end: end.saturating_add(by),
            len: len.saturating_add(by),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        fn ty(
            &mut self,
            name: &str,
            kind: u8,
            kind_flag: bool,
            vlen: u16,
            size_or_type: u32,
        ) -> u32 {
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
        assert_eq!(
            btf.member_offset("bits", "z"),
            Err(LookupError::Unaligned {
                struct_name: "bits".into(),
                member: "z".into(),
                bit_offset: 75,
            })
        );
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
            &include_bytes!("../../../fuzz/seeds/btf/structs-le.btf")[..],
            &include_bytes!("../../../fuzz/seeds/btf/structs-be.btf")[..],
        ] {
            let btf = Btf::parse(data).unwrap();
            let o = offsets_from(&btf).unwrap();
            assert_eq!(
                (o.task_mm, o.task_tgid, o.task_start_boottime, o.file_dentry),
                (64, 100, 160, 16)
            );
            assert_eq!((o.dentry_name, o.inode_ino, o.sb_dev), (24, 64, 16));
            assert_eq!(
                (o.tcp_rcv_nxt, o.tcp_bytes_received, o.tcp_inet_sport),
                (256, 264, 64)
            );
            assert_eq!(
                (o.task_cred, o.cred_uid, o.cred_gid, o.kernfs_node_id),
                (232, 4, 8, 40)
            );
        }
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
            println!(
                "skipped: {VMLINUX_BTF} does not exist (kernel without CONFIG_DEBUG_INFO_BTF)"
            );
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
    }
}
