//! Kernel structure offsets from the running kernel's BTF.
//!
//! aya cannot emit CO-RE relocations from Rust, so the kernel programs read
//! `task_struct`, `mm_struct`, `file`, `dentry`, `inode` and `super_block`
//! fields at offsets userspace finds here and patches into
//! [`loopwarden_common::OFFSETS_GLOBAL`] before loading.
//!
//! [`reader`] is a small reader for the raw BTF format
//! (`/sys/kernel/btf/vmlinux`, see the kernel's [BTF
//! documentation](https://docs.kernel.org/bpf/btf.html) and
//! `include/uapi/linux/btf.h`). Not aya's: aya parses BTF (`aya::Btf`) but
//! keeps looking a type up by id crate-private (aya-obj 0.3: `type_by_id`,
//! `types`), so it cannot walk a struct's members; and it holds every type
//! decoded in memory, where this reader indexes the file's bytes (dropping
//! aya's parsed copy, with two allocator changes, took the daemon's idle
//! resident memory from 22 to 9 MiB).

mod reader;

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use loopwarden_common::{KernelOffsets, SOCK_COPY_WORDS};

use self::reader::MAGIC;
pub use self::reader::{Btf, Width};

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

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
    #[error(
        "kernel BTF {} lacks a structure field loopwarden reads, or has it in another form",
        path.display()
    )]
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
    #[error(
        "member {struct_name}.{member} is {found} where loopwarden reads {expected}: this \
         kernel lays it out unlike the kernels loopwarden knows (5.18 and later)"
    )]
    Width {
        struct_name: String,
        member: String,
        expected: Width,
        found: String,
    },
    #[error("type {type_id} is referenced but not defined")]
    BadTypeId { type_id: u32 },
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Reads the offsets the kernel programs need from the BTF file at `path`
/// (normally [`VMLINUX_BTF`]), and btrfs's from it or, when btrfs is a
/// module, from the module's BTF beside it (see [`btrfs_offsets`]).
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
    let mut offsets = offsets_from(&btf).map_err(|source| BtfError::Lookup {
        path: path.to_owned(),
        source,
    })?;
    let module = path.with_file_name("btrfs");
    if let Some(btrfs) = btrfs_offsets(&btf, &module) {
        (
            offsets.btrfs_inode_vfs,
            offsets.btrfs_inode_root,
            offsets.btrfs_root_anon_dev,
        ) = btrfs;
    }
    Ok(offsets)
}

/// Where btrfs keeps a file's subvolume, `(btrfs_inode.vfs_inode,
/// btrfs_inode.root, btrfs_root.anon_dev)`: from the kernel's BTF when
/// btrfs is built in, else from the module's split BTF at `module`
/// (`/sys/kernel/btf/btrfs`, there while the module is loaded). `None`
/// without btrfs: no file can be on it then. A module loaded later (a
/// btrfs filesystem mounted after the daemon started) is read at the next
/// start; until then, paths on it are refused as without subvolume support.
pub fn btrfs_offsets(kernel: &Btf<'_>, module: &Path) -> Option<(u32, u32, u32)> {
    let read = |btf: &Btf<'_>| -> Result<(u32, u32, u32), LookupError> {
        Ok((
            btf.member_offset("btrfs_inode", "vfs_inode")?,
            btf.member_offset_of("btrfs_inode", "root", POINTER)?,
            btf.member_offset_of("btrfs_root", "anon_dev", Width::Bytes(4))?,
        ))
    };
    let found = match read(kernel) {
        Ok(found) => Ok(found),
        Err(LookupError::StructNotFound { .. }) => {
            let data = fs::read(module).ok()?;
            Btf::parse_split(&data, kernel)
                .map_err(LookupError::from)
                .and_then(|btf| read(&btf))
        }
        Err(e) => Err(e),
    };
    match found {
        // `vfs_inode` at 0 would mean "no btrfs" to the programs; btrfs has
        // never put it first.
        Ok(found) if found.0 != 0 => Some(found),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(
                "btrfs subvolumes cannot be told apart on this kernel ({e}): executable paths \
                 on btrfs are refused in rules"
            );
            None
        }
    }
}

/// A pointer's width (the kernels loopwarden runs on are 64-bit).
const POINTER: Width = Width::Bytes(8);

/// Fills [`KernelOffsets`] from parsed kernel BTF, each member checked
/// for the width the programs read it as.
pub fn offsets_from(btf: &Btf<'_>) -> Result<KernelOffsets, LookupError> {
    Ok(KernelOffsets {
        task_mm: btf.member_offset_of("task_struct", "mm", POINTER)?,
        task_real_parent: btf.member_offset_of("task_struct", "real_parent", POINTER)?,
        task_tgid: btf.member_offset_of("task_struct", "tgid", Width::Bytes(4))?,
        task_group_leader: btf.member_offset_of("task_struct", "group_leader", POINTER)?,
        task_start_boottime: btf.member_offset_of(
            "task_struct",
            "start_boottime",
            Width::Bytes(8),
        )?,
        task_flags: btf.member_offset_of("task_struct", "flags", Width::Bytes(4))?,
        mm_exe_file: btf.member_offset_of("mm_struct", "exe_file", POINTER)?,
        file_inode: btf.member_offset_of("file", "f_inode", POINTER)?,
        file_dentry: btf.member_offset_of("file", "f_path.dentry", POINTER)?,
        dentry_name: btf.member_offset_of("dentry", "d_name.name", POINTER)?,
        inode_ino: btf.member_offset_of("inode", "i_ino", Width::Bytes(8))?,
        inode_sb: btf.member_offset_of("inode", "i_sb", POINTER)?,
        sb_dev: btf.member_offset_of("super_block", "s_dev", Width::Bytes(4))?,
        task_comm: btf.member_offset_of("task_struct", "comm", Width::AtLeast(16))?,
        task_pid: btf.member_offset_of("task_struct", "pid", Width::Bytes(4))?,
        mm_arg_start: btf.member_offset_of("mm_struct", "arg_start", Width::Bytes(8))?,
        mm_arg_end: btf.member_offset_of("mm_struct", "arg_end", Width::Bytes(8))?,
        sk_daddr: btf.member_offset_of("sock", "__sk_common.skc_daddr", Width::Bytes(4))?,
        sk_rcv_saddr: btf.member_offset_of("sock", "__sk_common.skc_rcv_saddr", Width::Bytes(4))?,
        sk_dport: btf.member_offset_of("sock", "__sk_common.skc_dport", Width::Bytes(2))?,
        sk_num: btf.member_offset_of("sock", "__sk_common.skc_num", Width::Bytes(2))?,
        sk_family: btf.member_offset_of("sock", "__sk_common.skc_family", Width::Bytes(2))?,
        sk_v6_daddr: btf.member_offset_of("sock", "__sk_common.skc_v6_daddr", Width::Bytes(16))?,
        sk_v6_rcv_saddr: btf.member_offset_of(
            "sock",
            "__sk_common.skc_v6_rcv_saddr",
            Width::Bytes(16),
        )?,
        sk_net: btf.member_offset_of("sock", "__sk_common.skc_net.net", POINTER)?,
        sk_cookie: btf.member_offset_of("sock", "__sk_common.skc_cookie", Width::Bytes(8))?,
        sk_protocol: btf.member_offset_of("sock", "sk_protocol", Width::Bytes(2))?,
        sk_state: btf.member_offset_of("sock", "__sk_common.skc_state", Width::Bytes(1))?,
        sk_uid: btf.member_offset_of("sock", "sk_uid", Width::Bytes(4))?,
        task_files: btf.member_offset_of("task_struct", "files", POINTER)?,
        files_fdt: btf.member_offset_of("files_struct", "fdt", POINTER)?,
        fdtable_fd: btf.member_offset_of("fdtable", "fd", POINTER)?,
        fdtable_max_fds: btf.member_offset_of("fdtable", "max_fds", Width::Bytes(4))?,
        fdtable_open_fds: btf.member_offset_of("fdtable", "open_fds", POINTER)?,
        file_private_data: btf.member_offset_of("file", "private_data", POINTER)?,
        inode_mode: btf.member_offset_of("inode", "i_mode", Width::Bytes(2))?,
        socket_sk: btf.member_offset_of("socket", "sk", POINTER)?,
        dentry_inline_name: btf
            .member_offset_of("dentry", "d_shortname", Width::AtLeast(32))
            .or_else(|e| match e {
                // Its name before Linux 6.14.
                LookupError::MemberNotFound { .. } => {
                    btf.member_offset_of("dentry", "d_iname", Width::AtLeast(32))
                }
                e => Err(e),
            })?,
        net_inum: btf.member_offset_of("net", "ns.inum", Width::Bytes(4))?,
        tcp_rcv_nxt: btf.member_offset_of("tcp_sock", "rcv_nxt", Width::Bytes(4))?,
        tcp_bytes_received: btf.member_offset_of("tcp_sock", "bytes_received", Width::Bytes(8))?,
        tcp_snd_una: btf.member_offset_of("tcp_sock", "snd_una", Width::Bytes(4))?,
        tcp_bytes_acked: btf.member_offset_of("tcp_sock", "bytes_acked", Width::Bytes(8))?,
        tcp_inet_sport: btf.member_offset_of(
            "tcp_sock",
            "inet_conn.icsk_inet.inet_sport",
            Width::Bytes(2),
        )?,
        sk_lock_owned: btf.member_offset_of("sock", "sk_lock.owned", Width::Bytes(4))?,
        task_cred: btf.member_offset_of("task_struct", "cred", POINTER)?,
        cred_uid: btf.member_offset_of("cred", "uid.val", Width::Bytes(4))?,
        cred_gid: btf.member_offset_of("cred", "gid.val", Width::Bytes(4))?,
        task_cgroups: btf.member_offset_of("task_struct", "cgroups", POINTER)?,
        css_set_dfl_cgrp: btf.member_offset_of("css_set", "dfl_cgrp", POINTER)?,
        cgroup_kn: btf.member_offset_of("cgroup", "kn", POINTER)?,
        kernfs_node_id: btf.member_offset_of("kernfs_node", "id", Width::Bytes(8))?,
        sb_magic: btf.member_offset_of("super_block", "s_magic", Width::Bytes(8))?,
        btrfs_inode_vfs: 0,
        btrfs_inode_root: 0,
        btrfs_root_anon_dev: 0,
        // Optional: without it a UDP socket's bound port is not told from a
        // chosen one (see `ebpf/src/recvmsg.rs`), nor past the words the
        // programs copy to read it.
        sk_userlocks_bit: btf
            .member_bit_offset("sock", "sk_userlocks")
            .ok()
            .filter(|&bits| bits < SOCK_COPY_WORDS as u64 * 64)
            .and_then(|bits| u32::try_from(bits).ok())
            .unwrap_or(0),
        // Optional: without them a process's tracking ends with its main
        // thread rather than its last (see `ebpf/src/process.rs`).
        task_signal: optional(btf.member_offset_of("task_struct", "signal", POINTER)),
        signal_live: optional(btf.member_offset_of(
            "signal_struct",
            "live.counter",
            Width::Bytes(4),
        )),
    })
}

/// An optional member's offset, 0 (not read) without it; one of another
/// form than the programs read is warned of, as what it costs is not said
/// elsewhere.
fn optional(found: Result<u32, LookupError>) -> u32 {
    match found {
        Ok(offset) => offset,
        Err(LookupError::MemberNotFound { .. } | LookupError::StructNotFound { .. }) => 0,
        Err(e) => {
            tracing::warn!(
                "{e}: a process's tracking ends with its main thread rather than its last"
            );
            0
        }
    }
}

#[cfg(test)]
mod tests;
