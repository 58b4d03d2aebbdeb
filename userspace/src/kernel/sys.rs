//! The `bpf(2)` commands pinned enforcement needs that aya 0.14 keeps
//! crate-private: opening a pinned object, replacing a link's program in
//! place (`BPF_LINK_UPDATE`), and asking a link which program it runs and
//! where. For `loopwarden status` and `doctor` also: which programs a cgroup
//! runs (`BPF_PROG_QUERY`), and loading and linking a program of a few
//! hand-written instructions (the `BPF_LINK_UPDATE` probe). And linking
//! and pinning a program whose link type aya cannot pin
//! (`cgroup/getsockopt`), and detaching a link at once (`BPF_LINK_DETACH`:
//! aya's links detach only when dropped). And the runs of a program the
//! kernel skipped (`recursion_misses`), of a program opened by its id. Each builds the
//! command's `union bpf_attr` member as laid out in include/uapi/linux/bpf.h.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;
/// `BPF_F_REPLACE`: update only if the link still runs `old_prog_fd`.
const BPF_F_REPLACE: u32 = 1 << 2;

fn bpf(cmd: libc::c_long, attr: &mut [u64], size: usize) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-filled buffer at least `size` bytes long
    // holding the command's fields; the kernel reads (and for info writes
    // through pointers we set) only what the command defines.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Pins a BPF object at `path` in bpffs (`BPF_OBJ_PIN`).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains NUL"))?;
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [0u64; 2];
    attr[0] = c_path.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr, 16)?;
    Ok(())
}

/// Opens a pinned BPF object (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains NUL"))?;
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [0u64; 2];
    attr[0] = c_path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr, 16)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program a link runs, atomically: every run before the
/// update uses the old program, every run after it the new one; the link
/// is never without a program. With `old`, fails (EPERM) unless the link
/// still runs that program.
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old_prog: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    let words = [
        link.as_raw_fd() as u32,
        new_prog.as_raw_fd() as u32,
        if old_prog.is_some() { BPF_F_REPLACE } else { 0 },
        old_prog.map_or(0, |fd| fd.as_raw_fd() as u32),
    ];
    let mut attr = [
        u64::from(words[0]) | (u64::from(words[1]) << 32),
        u64::from(words[2]) | (u64::from(words[3]) << 32),
    ];
    bpf(BPF_LINK_UPDATE, &mut attr, 16).map(drop)
}

/// Detaches a link from its hook before returning (`BPF_LINK_DETACH`,
/// Linux 5.9): its program runs no more, whoever still holds the link.
/// Removing a link's last pin does not: the kernel drops that reference
/// after an RCU grace period and frees the link from a work queue, so
/// the program can still run for a moment after the unlink returns.
/// Cgroup links support it; tracing links refuse it (EOPNOTSUPP or
/// EINVAL) and go with their last reference.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // struct { __u32 link_fd; }
    let mut attr = [u64::from(link.as_raw_fd() as u32)];
    bpf(BPF_LINK_DETACH, &mut attr, 8).map(drop)
}

/// The id of the program a link runs (`bpf_link_info.prog_id`).
pub fn link_prog_id(link: impl AsFd) -> io::Result<u32> {
    // struct bpf_link_info starts { __u32 type; __u32 id; __u32 prog_id; ... }
    let mut info = [0u64; 16];
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    let mut attr = [
        u64::from(link.as_fd().as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32),
        info.as_mut_ptr() as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16)?;
    Ok((info[1] & 0xffff_ffff) as u32)
}

/// Opens the loaded program `id` (`BPF_PROG_GET_FD_BY_ID`). aya 0.14
/// opens a program by id only inside its walk of every program loaded on
/// the host (`loaded_programs`), a few syscalls per program.
pub fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    // struct { __u32 prog_id; __u32 next_id; __u32 open_flags; }
    let mut attr = [u64::from(id), 0];
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr, 12)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a loaded program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgInfo {
    /// The name it was loaded with (the kernel keeps 15 bytes of it).
    pub name: String,
    /// How many of its runs the kernel skipped because it would have run
    /// nested on a CPU already running it (`recursion_misses`: Linux 5.12
    /// and later count it for tracing programs, the kernel before leaves
    /// it 0). aya 0.14's `ProgramInfo` does not expose the field.
    pub recursion_misses: u64,
}

/// Asks the kernel about the program `prog`.
pub fn prog_info(prog: impl AsFd) -> io::Result<ProgInfo> {
    // SAFETY: a plain C struct of integers and arrays; all zeroes is valid
    // (and what the kernel expects of the fields it does not fill).
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    let mut attr = [
        u64::from(prog.as_fd().as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32),
        (&raw mut info) as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16)?;
    let name: Vec<u8> = info
        .name
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    Ok(ProgInfo {
        name: String::from_utf8_lossy(&name).into_owned(),
        recursion_misses: info.recursion_misses,
    })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a cgroup link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// `BPF_LINK_TYPE_*`; [`LINK_TYPE_CGROUP`] for ours.
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// For a cgroup link: the cgroup's id (0 once the cgroup is gone).
    pub cgroup_id: u64,
    /// For a cgroup link: the `BPF_CGROUP_*` attach type.
    pub attach_type: u32,
}

/// `BPF_LINK_TYPE_CGROUP`.
pub const LINK_TYPE_CGROUP: u32 = 3;
/// `BPF_CGROUP_INET4_BIND`.
pub const ATTACH_INET4_BIND: u32 = 8;
/// `BPF_CGROUP_INET6_BIND`.
pub const ATTACH_INET6_BIND: u32 = 9;
/// `BPF_CGROUP_INET4_CONNECT`.
pub const ATTACH_INET4_CONNECT: u32 = 10;
/// `BPF_CGROUP_INET6_CONNECT`.
pub const ATTACH_INET6_CONNECT: u32 = 11;
/// `BPF_CGROUP_UDP4_RECVMSG`.
pub const ATTACH_UDP4_RECVMSG: u32 = 19;
/// `BPF_CGROUP_UDP6_RECVMSG`.
pub const ATTACH_UDP6_RECVMSG: u32 = 20;
/// `BPF_CGROUP_GETSOCKOPT`.
pub const ATTACH_GETSOCKOPT: u32 = 21;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// A link's type, id, program and (for a cgroup link) cgroup and attach type.
pub fn link_info(link: impl AsFd) -> io::Result<LinkInfo> {
    // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; union {
    //   struct { __u64 cgroup_id; __u32 attach_type; } cgroup; ... } } (the
    // union is 8-aligned: offset 16)
    let mut info = [0u64; 16];
    let mut attr = [
        u64::from(link.as_fd().as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32),
        info.as_mut_ptr() as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16)?;
    Ok(LinkInfo {
        link_type: (info[0] & 0xffff_ffff) as u32,
        id: (info[0] >> 32) as u32,
        prog_id: (info[1] & 0xffff_ffff) as u32,
        cgroup_id: info[2],
        attach_type: (info[3] & 0xffff_ffff) as u32,
    })
}

/// Ids of the programs attached directly to the cgroup `cgroup` for
/// `attach_type` (not inherited ones), in run order.
pub fn prog_query(cgroup: impl AsFd, attach_type: u32) -> io::Result<Vec<u32>> {
    // A cgroup holds at most BPF_CGROUP_MAX_PROGS (64) per attach type.
    let mut ids = [0u32; 64];
    // struct { __u32 target_fd; __u32 attach_type; __u32 query_flags;
    //   __u32 attach_flags; __aligned_u64 prog_ids; __u32 prog_cnt; ... }
    let mut attr = [
        u64::from(cgroup.as_fd().as_raw_fd() as u32) | (u64::from(attach_type) << 32),
        0,
        ids.as_mut_ptr() as u64,
        ids.len() as u64,
    ];
    bpf(BPF_PROG_QUERY, &mut attr, 32)?;
    let count = ((attr[3] & 0xffff_ffff) as usize).min(ids.len());
    Ok(ids[..count].to_vec())
}

/// One eBPF instruction (`struct bpf_insn`), for probe programs.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// `r0 = imm` (64-bit move).
    pub const fn mov_r0(imm: i32) -> Self {
        Self::mov(0, imm)
    }

    /// `rN = imm` (64-bit move).
    pub const fn mov(reg: u8, imm: i32) -> Self {
        // BPF_ALU64 | BPF_MOV | BPF_K
        Self {
            code: 0xb7,
            regs: reg,
            off: 0,
            imm,
        }
    }

    /// Calls helper number `helper`.
    pub const fn call(helper: i32) -> Self {
        // BPF_JMP | BPF_CALL
        Self {
            code: 0x85,
            regs: 0,
            off: 0,
            imm: helper,
        }
    }

    /// `exit`.
    pub const fn exit() -> Self {
        // BPF_JMP | BPF_EXIT
        Self {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        }
    }
}

/// Loads a GPL-licensed `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` program of
/// `insns` for `attach_type`; on refusal the error carries the start of
/// the verifier's log.
pub fn load_sock_addr_prog(insns: &[Insn], attach_type: u32) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    // struct { __u32 prog_type; __u32 insn_cnt; __aligned_u64 insns;
    //   __aligned_u64 license; __u32 log_level; __u32 log_size;
    //   __aligned_u64 log_buf; __u32 kern_version; __u32 prog_flags;
    //   char prog_name[16]; __u32 prog_ifindex; __u32 expected_attach_type; }
    let mut attr = [0u64; 9];
    attr[0] = u64::from(PROG_TYPE_CGROUP_SOCK_ADDR) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    attr[6] = u64::from_ne_bytes(*b"lw_probe");
    attr[8] = u64::from(attach_type) << 32;
    let size = size_of_val(&attr);
    match bpf(BPF_PROG_LOAD, &mut attr, size) {
        // SAFETY: the kernel returned a new descriptor that nobody else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end.min(300)]);
            let text = text.trim();
            if text.is_empty() {
                Err(e)
            } else {
                Err(io::Error::new(e.kind(), format!("{e}: {text}")))
            }
        }
    }
}

/// Attaches `prog` to the cgroup `cgroup` through a new link
/// (`BPF_LINK_CREATE`); the program is detached when the link's last
/// descriptor closes.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; }
    let mut attr = [
        u64::from(prog.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32),
        u64::from(attach_type),
    ];
    let fd = bpf(BPF_LINK_CREATE, &mut attr, 16)?;
    // SAFETY: the kernel returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
