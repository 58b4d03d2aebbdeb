//! Reading the calling task's identity from kernel memory.
//!
//! aya cannot emit CO-RE relocations, so userspace reads the structure
//! offsets from the running kernel's BTF and patches them into
//! [`LW_OFFSETS`] before the programs load. That global lives in the frozen,
//! read-only `.rodata` map, so the verifier knows each offset as a constant:
//! starting from `bpf_get_current_task_btf()` (a BTF-typed `task_struct *`),
//! every load below is checked against the kernel's BTF at load time (a wrong
//! offset fails verification instead of reading garbage) and runs as a
//! fault-handled direct load, several times cheaper than a
//! `bpf_probe_read_kernel` call. Only the file name, a string, is copied with
//! `bpf_probe_read_kernel_str`.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_task_btf,
    },
};
use loopwarden_common::{COMM_LEN, EXE_NAME_LEN, ExeKey, KernelOffsets};

/// Patched by userspace at load time (see `userspace/src/kernel/btf/mod.rs`).
#[unsafe(no_mangle)]
static LW_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    task_mm: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_flags: 0,
    mm_exe_file: 0,
    file_inode: 0,
    file_dentry: 0,
    dentry_name: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    task_comm: 0,
    task_pid: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_family: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_net: 0,
    sk_cookie: 0,
    sk_protocol: 0,
    sk_state: 0,
    net_inum: 0,
    tcp_rcv_nxt: 0,
    tcp_bytes_received: 0,
    tcp_snd_una: 0,
    tcp_bytes_acked: 0,
    tcp_inet_sport: 0,
    sk_lock_owned: 0,
    task_cred: 0,
    cred_uid: 0,
    cred_gid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    sk_uid: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    fdtable_open_fds: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_sk: 0,
    dentry_inline_name: 0,
    sb_magic: 0,
    btrfs_inode_vfs: 0,
    btrfs_inode_root: 0,
    btrfs_root_anon_dev: 0,
    sk_userlocks_bit: 0,
    task_signal: 0,
    signal_live: 0,
});

/// One field of the offsets userspace patched in, as one volatile load
/// (volatile: the compiler would fold a plain read of the static to its
/// zero initialiser). `Global::load` would copy the whole struct, a load
/// per field, at every use.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: `Global` is `repr(transparent)` over the value: a read
        // of one field of a static.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*$crate::identity::offsets_ptr()).$field
            ))
        }
    };
}
pub(crate) use offset;

/// Where [`offset!`] reads.
#[inline(always)]
pub fn offsets_ptr() -> *const KernelOffsets {
    (&raw const LW_OFFSETS).cast()
}

/// A `struct task_struct *` as the verifier sees it: BTF-typed.
#[derive(Clone, Copy)]
pub struct Task(pub u64);

/// Loads a field at a load-time-constant offset from a BTF-typed pointer.
/// A NULL or stale pointer reads as 0 (the load is fault-handled).
#[inline(always)]
pub fn load<T>(base: u64, offset: u32) -> T {
    // SAFETY: `base` is a BTF-typed kernel pointer; the verifier checks the
    // access against the kernel's BTF and makes it a fault-handled load.
    unsafe { core::ptr::read_volatile((base as *const u8).add(offset as usize).cast::<T>()) }
}

/// Words `at` of the kernel socket at `sk`, from a copy of its first `N`
/// words (`bpf_probe_read_kernel`): how cgroup programs, which may neither
/// type their socket as a kernel `struct sock` nor offset its pointer,
/// read fields at their BTF offsets. `None` if one is past the copy, or
/// the copy failed.
#[inline(always)]
pub fn sock_words<const N: usize, const K: usize>(
    sk: *const core::ffi::c_void,
    at: [usize; K],
) -> Option<[u64; K]> {
    if at.iter().any(|&i| i >= N) {
        return None;
    }
    let mut prefix = [0u64; N];
    // SAFETY: the helper copies from any kernel address and fails cleanly.
    let copied = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            prefix.as_mut_ptr().cast(),
            (N * 8) as u32,
            sk,
        )
    };
    (copied == 0).then(|| at.map(|i| prefix[i]))
}

/// Copies a `T` from kernel address `addr` with `bpf_probe_read_kernel`,
/// for addresses the verifier has no BTF type for; 0 (the default) when
/// it cannot be read.
#[inline(always)]
pub fn probe<T: Copy + Default>(addr: u64) -> T {
    // SAFETY: the helper checks the address and copies nothing on a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}

impl Task {
    /// No task: every read through it yields 0.
    #[inline(always)]
    pub const fn null() -> Self {
        Self(0)
    }

    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: a plain helper call returning the BTF-typed current task.
        Self(unsafe { bpf_get_current_task_btf() } as u64)
    }

    /// `task->real_parent`.
    #[inline(always)]
    pub fn parent(self) -> Task {
        Task(load(self.0, offset!(task_real_parent)))
    }

    /// `task->group_leader`: the process's main thread.
    #[inline(always)]
    pub fn group_leader(self) -> Task {
        Task(load(self.0, offset!(task_group_leader)))
    }

    /// `task->comm` into `comm` (NUL-terminated, the rest left as it was).
    #[inline(always)]
    pub fn comm(self, comm: &mut [u8; COMM_LEN]) {
        let src = self.0 + u64::from(offset!(task_comm));
        // SAFETY: probe_read_kernel_str validates the source; a failed read
        // leaves the buffer as it was (zeroed by the caller).
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src as *const u8, comm) };
    }

    /// `task->comm` as two words: two loads where `bpf_get_current_comm`
    /// is a helper call and a string copy (the kernel keeps the name
    /// NUL-terminated and padded; a concurrent rename can tear it, as it
    /// can the helper's copy).
    #[inline(always)]
    pub fn comm_words(self) -> [u64; COMM_LEN / 8] {
        let at = offset!(task_comm);
        [load(self.0, at), load(self.0, at + 8)]
    }

    /// `task->signal->live`: how many of the process's threads are alive
    /// (an exiting thread has taken itself off before `sched_process_exit`);
    /// `None` where this kernel's BTF did not give the offsets.
    #[inline(always)]
    pub fn threads_alive(self) -> Option<i32> {
        let (signal_at, live_at) = (offset!(task_signal), offset!(signal_live));
        if signal_at == 0 || live_at == 0 {
            return None;
        }
        let signal: u64 = load(self.0, signal_at);
        Some(load(signal, live_at))
    }

    /// `task->tgid`.
    #[inline(always)]
    pub fn tgid(self) -> u32 {
        load(self.0, offset!(task_tgid))
    }

    /// `task->pid`: the thread's id.
    #[inline(always)]
    pub fn pid(self) -> u32 {
        load(self.0, offset!(task_pid))
    }

    /// `task->mm->arg_start` and `arg_end`: where the command line lies in
    /// the process's memory (0 for kernel threads).
    #[inline(always)]
    pub fn args(self) -> (u64, u64) {
        let mm: u64 = load(self.0, offset!(task_mm));
        (
            load(mm, offset!(mm_arg_start)),
            load(mm, offset!(mm_arg_end)),
        )
    }

    /// `task->cred`'s uid (low half) and gid (high half), as
    /// `bpf_get_current_uid_gid` returns them for the current task: three
    /// loads where the helper is a call into the kernel, and its calls in
    /// turn (each return through a return thunk where the kernel mitigates
    /// speculative returns: on this project's test VM the helper cost a
    /// connect about 100 ns). The ids are the kernel's own (`kuid_t`),
    /// which are the initial user namespace's, as the helper reports them.
    #[inline(always)]
    pub fn uid_gid(self) -> u64 {
        let cred: u64 = load(self.0, offset!(task_cred));
        let uid: u32 = load(cred, offset!(cred_uid));
        let gid: u32 = load(cred, offset!(cred_gid));
        (u64::from(gid) << 32) | u64::from(uid)
    }

    /// `task->cgroups->dfl_cgrp->kn->id`: the task's cgroup v2 id, as
    /// `bpf_get_current_cgroup_id` returns it for the current task (four
    /// loads instead of a helper call, see [`Task::uid_gid`]).
    #[inline(always)]
    pub fn cgroup_id(self) -> u64 {
        let cset: u64 = load(self.0, offset!(task_cgroups));
        let cgrp: u64 = load(cset, offset!(css_set_dfl_cgrp));
        let kn: u64 = load(cgrp, offset!(cgroup_kn));
        load(kn, offset!(kernfs_node_id))
    }

    /// `task->group_leader->start_boottime`: when the process started,
    /// and whether the process has executed nothing since the fork that
    /// made it (`PF_FORKNOEXEC` in its main thread's flags: every new task
    /// starts with it, an exec clears it, and the thread that executes
    /// becomes the main thread; a later thread's own flag says nothing).
    #[inline(always)]
    pub fn process_start(self) -> (u64, bool) {
        let leader: u64 = load(self.0, offset!(task_group_leader));
        let flags: u32 = load(leader, offset!(task_flags));
        (
            load(leader, offset!(task_start_boottime)),
            flags & PF_FORKNOEXEC != 0,
        )
    }

    /// `task->mm->exe_file`; 0 for kernel threads (whose `mm` is NULL: the
    /// fault-handled load through it reads 0).
    #[inline(always)]
    pub fn exe_file(self) -> u64 {
        let mm: u64 = load(self.0, offset!(task_mm));
        load(mm, offset!(mm_exe_file))
    }

    /// Device and inode of the task's executable; zero for kernel threads.
    #[inline(always)]
    pub fn exe(self) -> ExeKey {
        exe_key(self.exe_file())
    }

    /// Inode number of the task's executable (two loads fewer than
    /// [`Task::exe`]: what a filter is asked before the lookup).
    #[inline(always)]
    pub fn exe_ino(self) -> u64 {
        let inode: u64 = load(self.exe_file(), offset!(file_inode));
        load(inode, offset!(inode_ino))
    }
}

/// `PF_FORKNOEXEC` (`include/linux/sched.h`): forked but did not exec.
const PF_FORKNOEXEC: u32 = 0x40;

/// `BTRFS_SUPER_MAGIC`.
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;

/// Device and inode of an executable `struct file *`: the device `stat()`
/// reports for it. That is the superblock's, but on btrfs, where inode
/// numbers repeat across subvolumes and every subvolume has an anonymous
/// device of its own (`btrfs_getattr`), the subvolume's.
#[inline(always)]
pub fn exe_key(file: u64) -> ExeKey {
    let inode: u64 = load(file, offset!(file_inode));
    let sb: u64 = load(inode, offset!(inode_sb));
    let mut dev: u32 = load(sb, offset!(sb_dev));
    // A constant to the verifier (0 without btrfs): the branch is dropped
    // on a kernel without it.
    let vfs = offset!(btrfs_inode_vfs);
    if vfs != 0 && load::<u64>(sb, offset!(sb_magic)) == BTRFS_SUPER_MAGIC {
        // `BTRFS_I(inode)->root->anon_dev`. The `btrfs_inode` around the
        // inode has no BTF type the verifier could check a load against
        // (it lies before the pointer): copied with the helper.
        let btrfs_inode = inode.wrapping_sub(u64::from(vfs));
        let root: u64 = probe(btrfs_inode + u64::from(offset!(btrfs_inode_root)));
        dev = if root == 0 {
            0
        } else {
            probe(root + u64::from(offset!(btrfs_root_anon_dev)))
        };
    }
    ExeKey {
        dev: u64::from(dev),
        ino: load(inode, offset!(inode_ino)),
    }
}

/// The first `8 * N` bytes (at most 32) of an executable `struct file *`'s
/// file name, as words, every byte from the first NUL on zeroed (a failed
/// read: all zero, the empty name, in no rule).
///
/// A short name (most are) lies in the dentry itself (`d_shortname`, or
/// `d_iname` before Linux 6.14; at least 32 bytes), whose loads the
/// verifier checks against BTF: `N` loads, no helper call. A longer one
/// is in an allocation longer than 32 bytes, copied with one fixed-size
/// `bpf_probe_read_kernel` (not the byte-by-byte string copy).
#[inline(always)]
fn exe_name_fixed<const N: usize>(file: u64) -> [u64; N] {
    const { assert!(N * 8 <= 32) };
    let dentry: u64 = load(file, offset!(file_dentry));
    let name_ptr: u64 = load(dentry, offset!(dentry_name));
    let inline = offset!(dentry_inline_name);
    let mut words = [0u64; N];
    if name_ptr == dentry + u64::from(inline) {
        for (i, w) in words.iter_mut().enumerate() {
            *w = load(dentry, inline + 8 * i as u32);
        }
    } else {
        // SAFETY: probe_read_kernel checks the source.
        words = unsafe { bpf_probe_read_kernel(name_ptr as *const [u64; N]) }.unwrap_or([0; N]);
    }
    let mut ended = false;
    for w in words.iter_mut() {
        if ended {
            *w = 0;
            continue;
        }
        let nul = crate::names::zero_bytes(*w);
        if nul != 0 {
            // Keep the bytes before the first NUL.
            *w &= (1u64 << (nul.trailing_zeros() & !7)) - 1;
            ended = true;
        }
    }
    words
}

/// The first 15 bytes of an executable `struct file *`'s file name (NUL
/// padded) as two words: enough for [`crate::names::may_be_named`]. Only
/// the first word is read unless the name starts with a dot.
#[inline(always)]
pub fn exe_name_head(file: u64) -> [u64; 2] {
    let [w] = exe_name_fixed::<1>(file);
    if w & 0xff == u64::from(b'.') {
        exe_name_fixed::<2>(file)
    } else {
        [w, 0]
    }
}

/// The file name of an executable `struct file *` as words (see
/// [`crate::names`]): its first 31 bytes, NUL padded.
#[inline(always)]
pub fn exe_name_words(file: u64) -> crate::names::Words {
    let mut words = exe_name_fixed::<{ EXE_NAME_LEN / 8 }>(file);
    // What the string copy keeps of a longer name: 31 bytes.
    words[EXE_NAME_LEN / 8 - 1] &= !(0xffu64 << 56);
    words
}
