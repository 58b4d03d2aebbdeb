//! Offsets into kernel structures, read from the running kernel's BTF.

/// Offsets into kernel structures, read from the running kernel's BTF at
/// load time and passed to the programs as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.group_leader`
    pub task_group_leader: u32,
    /// `task_struct.start_boottime` (what `/proc/PID/stat` reports as starttime)
    pub task_start_boottime: u32,
    /// `task_struct.flags` (`PF_*`)
    pub task_flags: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.f_path.dentry`
    pub file_dentry: u32,
    /// `dentry.d_name.name`
    pub dentry_name: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `mm_struct.arg_start`
    pub mm_arg_start: u32,
    /// `mm_struct.arg_end`
    pub mm_arg_end: u32,
    /// `sock.__sk_common.skc_daddr`
    pub sk_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr`
    pub sk_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (network order)
    pub sk_dport: u32,
    /// `sock.__sk_common.skc_num` (host order)
    pub sk_num: u32,
    /// `sock.__sk_common.skc_family`
    pub sk_family: u32,
    /// `sock.__sk_common.skc_v6_daddr`
    pub sk_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`
    pub sk_v6_rcv_saddr: u32,
    /// `sock.__sk_common.skc_net.net`
    pub sk_net: u32,
    /// `sock.__sk_common.skc_cookie`
    pub sk_cookie: u32,
    /// `sock.sk_protocol`
    pub sk_protocol: u32,
    /// `sock.__sk_common.skc_state` (`TCP_*`)
    pub sk_state: u32,
    /// `net.ns.inum`
    pub net_inum: u32,
    /// `tcp_sock.rcv_nxt`
    pub tcp_rcv_nxt: u32,
    /// `tcp_sock.bytes_received`: sequence space received (data and FIN).
    pub tcp_bytes_received: u32,
    /// `tcp_sock.snd_una`: the first byte sent and not yet acknowledged.
    pub tcp_snd_una: u32,
    /// `tcp_sock.bytes_acked`: sequence space acknowledged (the SYN, data
    /// and FIN).
    pub tcp_bytes_acked: u32,
    /// `tcp_sock.inet_conn.icsk_inet.inet_sport` (network order): the
    /// local port, still set when a closing socket's `skc_num` is not.
    pub tcp_inet_sport: u32,
    /// `sock.sk_lock.owned`: a task holds the socket lock (`lock_sock`).
    pub sk_lock_owned: u32,
    /// `task_struct.cred`: the task's subjective credentials.
    pub task_cred: u32,
    /// `cred.uid.val`
    pub cred_uid: u32,
    /// `cred.gid.val`
    pub cred_gid: u32,
    /// `task_struct.cgroups`
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`: the task's cgroup in the v2 hierarchy.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id`: the cgroup's id (its directory's inode number).
    pub kernfs_node_id: u32,
    /// `sock.sk_uid`
    pub sk_uid: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.fd`
    pub fdtable_fd: u32,
    /// `fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `fdtable.open_fds`: the bitmap of open descriptors.
    pub fdtable_open_fds: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `dentry.d_shortname` (Linux 6.14 and later) or `dentry.d_iname`: the
    /// buffer a short name is stored in, inside the dentry.
    pub dentry_inline_name: u32,
    /// `super_block.s_magic`: which filesystem an inode is on.
    pub sb_magic: u32,
    /// `btrfs_inode.vfs_inode`: how far into its `btrfs_inode` an inode on
    /// btrfs lies. 0 when this kernel's BTF has no btrfs (not built in and
    /// the module not loaded): the programs then read no subvolume.
    pub btrfs_inode_vfs: u32,
    /// `btrfs_inode.root`: the inode's subvolume (`struct btrfs_root *`).
    pub btrfs_inode_root: u32,
    /// `btrfs_root.anon_dev`: the device `stat()` reports for the
    /// subvolume's files.
    pub btrfs_root_anon_dev: u32,
    /// `sock.sk_userlocks`, in bits: a `u8` on recent kernels, a 4-bit
    /// bitfield on older ones (Linux 6.1, at byte 512). Its
    /// `SOCK_BINDPORT_LOCK` says a socket's port was bound by its user, not
    /// chosen by the kernel. 0 when this kernel's BTF does not name it, or
    /// places it past the [`SOCK_COPY_WORDS`] the programs copy: they then
    /// cannot tell.
    pub sk_userlocks_bit: u32,
    /// `task_struct.signal`: what the process's threads share. 0 when not
    /// found (with `signal_live`): a process then ends with its main
    /// thread.
    pub task_signal: u32,
    /// `signal_struct.live.counter`: the process's threads still alive.
    pub signal_live: u32,
}

/// Words of a `struct sock` the recvmsg programs copy (into a per-CPU map
/// value: the stack holds 512 bytes in all) to read `sk_userlocks`: 1 KiB.
pub const SOCK_COPY_WORDS: usize = 128;
