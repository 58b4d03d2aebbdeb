//! Reading the calling task's identity from kernel memory.
//!
//! aya cannot emit CO-RE relocations, so userspace reads the structure
//! offsets from the running kernel's BTF and patches them into
//! [`LW_OFFSETS`] before the programs load. Every read goes through
//! `bpf_probe_read_kernel`, so a stale pointer yields an error, never a fault.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
};
use loopwarden_common::{EXE_NAME_LEN, ExeKey, KernelOffsets};

/// Patched by userspace at load time (see `userspace/src/btf.rs`).
#[unsafe(no_mangle)]
static LW_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    task_mm: 0,
    task_real_parent: 0,
    task_tgid: 0,
    mm_exe_file: 0,
    file_inode: 0,
    file_dentry: 0,
    dentry_name: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
});

/// A `struct task_struct *`.
#[derive(Clone, Copy)]
pub struct Task(u64);

#[inline(always)]
fn read_u64(base: u64, offset: u32) -> Result<u64, i32> {
    // SAFETY: probe_read_kernel validates the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }
}

#[inline(always)]
fn read_u32(base: u64, offset: u32) -> Result<u32, i32> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u32) }
}

impl Task {
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: a plain helper call; the value is only used as an address for probe reads.
        Self(unsafe { bpf_get_current_task() })
    }

    #[inline(always)]
    pub fn is_null(self) -> bool {
        self.0 == 0
    }

    #[inline(always)]
    pub fn same(self, other: Task) -> bool {
        self.0 == other.0
    }

    /// `task->real_parent`.
    #[inline(always)]
    pub fn parent(self) -> Result<Task, i32> {
        read_u64(self.0, LW_OFFSETS.load().task_real_parent).map(Task)
    }

    /// `task->tgid`.
    #[inline(always)]
    pub fn tgid(self) -> Result<u32, i32> {
        read_u32(self.0, LW_OFFSETS.load().task_tgid)
    }

    /// `task->mm->exe_file`, 0 for kernel threads.
    #[inline(always)]
    pub fn exe_file(self) -> Result<u64, i32> {
        let o = LW_OFFSETS.load();
        let mm = read_u64(self.0, o.task_mm)?;
        if mm == 0 {
            return Ok(0);
        }
        read_u64(mm, o.mm_exe_file)
    }

    /// Device and inode of the task's executable; zero for kernel threads.
    #[inline(always)]
    pub fn exe(self) -> Result<ExeKey, i32> {
        let file = self.exe_file()?;
        if file == 0 {
            return Ok(ExeKey::default());
        }
        exe_key(file)
    }
}

/// Device and inode of an executable `struct file *`.
#[inline(always)]
pub fn exe_key(file: u64) -> Result<ExeKey, i32> {
    let o = LW_OFFSETS.load();
    let inode = read_u64(file, o.file_inode)?;
    let ino = read_u64(inode, o.inode_ino)?;
    let sb = read_u64(inode, o.inode_sb)?;
    let dev = read_u32(sb, o.sb_dev)?;
    Ok(ExeKey {
        dev: u64::from(dev),
        ino,
    })
}

/// The file name (dentry name) of an executable `struct file *` into `name`.
#[inline(always)]
pub fn exe_name(file: u64, name: &mut [u8; EXE_NAME_LEN]) -> Result<(), i32> {
    let o = LW_OFFSETS.load();
    let dentry = read_u64(file, o.file_dentry)?;
    let name_ptr = read_u64(dentry, o.dentry_name)?;
    // SAFETY: probe_read_kernel_str validates the source; dest is our buffer.
    unsafe { bpf_probe_read_kernel_str_bytes(name_ptr as *const u8, name)? };
    Ok(())
}
