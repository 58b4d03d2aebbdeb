//! Probes of the kernel's BPF features, each loaded or created for real:
//! the program type, the connect hooks, every helper and map type the
//! programs use, `BPF_LINK_UPDATE` on a throwaway cgroup, and `SOCK_DESTROY`
//! on a listening socket of our own.

use std::{
    fs,
    io::{self},
    net::TcpListener,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

use super::Check;
use crate::{
    error_chain,
    kernel::{
        btf::{self, VMLINUX_BTF},
        loader::Programs,
        sock_diag::{self, SockDiag, state},
        sys::{self, Insn},
    },
};

pub(super) fn program_type() -> Check {
    const NAME: &str = "program type";
    match is_program_supported(ProgramType::CgroupSockAddr) {
        Ok(true) => Check::ok(NAME, true, "cgroup_sock_addr (cgroup/connect4) loads"),
        Ok(false) => Check::bad(
            NAME,
            true,
            "cgroup_sock_addr programs are not supported",
            "a kernel with CONFIG_CGROUP_BPF=y",
        ),
        Err(e) => Check::bad(
            NAME,
            true,
            format!("probe failed: {}", error_chain(&e)),
            "run as root; see the capabilities and lockdown lines",
        ),
    }
}

/// The daemon's own programs, every one of them (the connect, recvmsg and
/// bind hooks, getsockopt, the tracking programs), loaded with this
/// kernel's offsets and verified, nothing attached: the probe that
/// answers for all the program types, attach types and helpers they use.
pub(super) fn programs() -> Check {
    const NAME: &str = "programs";
    let loaded = btf::kernel_offsets(Path::new(VMLINUX_BTF))
        .map_err(|e| error_chain(&e))
        .and_then(|offsets| Programs::load_unpinned(&offsets).map_err(|e| error_chain(&e)));
    match loaded {
        Ok(programs) => Check::ok(
            NAME,
            true,
            format!(
                "all {} of the daemon's programs load and pass the verifier (nothing attached)",
                programs.loaded()
            ),
        ),
        Err(e) => Check::bad(
            NAME,
            true,
            e,
            "see the lines above; a kernel the daemon supports loads them all",
        ),
    }
}

/// `r1 = -ECONNREFUSED; call bpf_set_retval; r0 = 0; exit`: the way the
/// programs refuse a connect.
pub(super) fn refusing_program() -> [Insn; 4] {
    [
        Insn::mov(1, -libc::ECONNREFUSED),
        Insn::call(BpfHelper::BPF_FUNC_set_retval as i32),
        Insn::mov_r0(0),
        Insn::exit(),
    ]
}

/// aya's helper probe only tells "the verifier knows this helper"; this
/// loads, for each hook we attach, the exact refusing sequence our programs
/// run, so a kernel that would reject it fails here.
pub(super) fn connect_programs() -> Check {
    const NAME: &str = "connect hooks";
    let hooks = [
        ("connect4", sys::ATTACH_INET4_CONNECT),
        ("connect6", sys::ATTACH_INET6_CONNECT),
    ];
    for (hook, attach) in hooks {
        if let Err(e) = sys::load_sock_addr_prog(&refusing_program(), attach) {
            return Check::bad(
                NAME,
                true,
                format!("a cgroup/{hook} program calling bpf_set_retval was refused: {e}"),
                "Linux 5.18 or later (bpf_set_retval in cgroup programs)",
            );
        }
    }
    Check::ok(
        NAME,
        true,
        "cgroup/connect4 and cgroup/connect6 programs refusing with bpf_set_retval(-ECONNREFUSED) load",
    )
}

/// The helpers the connect hooks call, probed for `cgroup/connect4` (the
/// "programs" check loads every program, whatever it calls).
const HELPERS: [(&str, BpfHelper); 13] = [
    ("set_retval", BpfHelper::BPF_FUNC_set_retval),
    (
        "get_current_pid_tgid",
        BpfHelper::BPF_FUNC_get_current_pid_tgid,
    ),
    (
        "get_current_uid_gid",
        BpfHelper::BPF_FUNC_get_current_uid_gid,
    ),
    ("get_current_comm", BpfHelper::BPF_FUNC_get_current_comm),
    (
        "get_current_cgroup_id",
        BpfHelper::BPF_FUNC_get_current_cgroup_id,
    ),
    (
        "get_current_ancestor_cgroup_id",
        BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
    ),
    (
        "get_current_task_btf",
        BpfHelper::BPF_FUNC_get_current_task_btf,
    ),
    ("probe_read_kernel", BpfHelper::BPF_FUNC_probe_read_kernel),
    (
        "probe_read_kernel_str",
        BpfHelper::BPF_FUNC_probe_read_kernel_str,
    ),
    ("get_netns_cookie", BpfHelper::BPF_FUNC_get_netns_cookie),
    ("get_socket_cookie", BpfHelper::BPF_FUNC_get_socket_cookie),
    ("ktime_get_ns", BpfHelper::BPF_FUNC_ktime_get_ns),
    ("ringbuf_reserve", BpfHelper::BPF_FUNC_ringbuf_reserve),
];

pub(super) fn helpers() -> Check {
    const NAME: &str = "helpers";
    let missing = unsupported(HELPERS, |helper| {
        is_helper_supported(ProgramType::CgroupSockAddr, helper)
    });
    if missing.is_empty() {
        Check::ok(
            NAME,
            true,
            format!(
                "all {} helpers the connect hooks call are available to cgroup/connect4",
                HELPERS.len()
            ),
        )
    } else {
        Check::bad(
            NAME,
            true,
            format!("not available to cgroup/connect4: {}", missing.join(", ")),
            "task and probe_read helpers need CAP_PERFMON (or CAP_SYS_ADMIN) and no \
             lockdown=confidentiality; set_retval needs Linux 5.18",
        )
    }
}

/// The names whose probe says no, or failed (with why).
pub(super) fn unsupported<T, E: std::error::Error>(
    items: impl IntoIterator<Item = (&'static str, T)>,
    probe: impl Fn(T) -> Result<bool, E>,
) -> Vec<String> {
    items
        .into_iter()
        .filter_map(|(name, item)| match probe(item) {
            Ok(true) => None,
            Ok(false) => Some(name.to_owned()),
            Err(e) => Some(format!("{name} (probe failed: {})", error_chain(&e))),
        })
        .collect()
}

pub(super) fn map_types() -> Check {
    const NAME: &str = "map types";
    let types = [
        ("ringbuf", MapType::RingBuf),
        ("percpu_array", MapType::PerCpuArray),
        ("hash", MapType::Hash),
        ("lru_hash", MapType::LruHash),
        ("array", MapType::Array),
        ("lpm_trie", MapType::LpmTrie),
    ];
    let names: Vec<&str> = types.iter().map(|(name, _)| *name).collect();
    let missing = unsupported(types, is_map_supported);
    if missing.is_empty() {
        Check::ok(
            NAME,
            true,
            format!("{} maps can be created", names.join(", ")),
        )
    } else {
        Check::bad(
            NAME,
            true,
            format!("cannot create: {}", missing.join(", ")),
            "Linux 5.8 or later for ring buffers; run as root",
        )
    }
}

/// Removes the throwaway cgroup on drop.
struct ThrowawayCgroup(PathBuf);

impl Drop for ThrowawayCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// aya 0.14 has no probe for `BPF_LINK_UPDATE` (and keeps its link update
/// crate-private), so this is done by hand: two allow-everything connect4
/// programs, a link of the first to a fresh empty cgroup below the root (no
/// process is ever in it, so nothing is judged), the second swapped in
/// through the link, the link asked which program it runs.
pub(super) fn link_update(cgroup_root: Option<&Path>) -> Check {
    const NAME: &str = "link update";
    const FIX: &str = "Linux 5.7 or later (cgroup links with BPF_LINK_UPDATE)";
    let Some(root) = cgroup_root else {
        return Check::bad(NAME, true, "not probed: no cgroup v2 mount", FIX);
    };
    // A cgroup to attach to, which the daemon itself never makes: where
    // none can be made (a read-only cgroup mount, as in many containers)
    // the link update is not probed, and that says nothing of the kernel.
    let dir = ThrowawayCgroup(root.join(format!("loopwarden-doctor-{}", std::process::id())));
    let cgroup = match fs::create_dir(&dir.0).and_then(|()| fs::File::open(&dir.0)) {
        Ok(cgroup) => cgroup,
        Err(e) => {
            return Check::bad(
                NAME,
                false,
                format!(
                    "not probed: making a cgroup under {} to probe in failed: {e}",
                    root.display()
                ),
                "run doctor where the cgroup v2 mount is writable to probe it (the daemon \
                 makes no cgroup; it needs Linux 5.7 or later for BPF_LINK_UPDATE)",
            );
        }
    };
    let probe = || -> io::Result<(u32, u32)> {
        let allow = [Insn::mov_r0(1), Insn::exit()];
        let first = sys::load_sock_addr_prog(&allow, sys::ATTACH_INET4_CONNECT)?;
        let second = sys::load_sock_addr_prog(&allow, sys::ATTACH_INET4_CONNECT)?;
        let link = sys::link_create(first.as_fd(), cgroup.as_fd(), sys::ATTACH_INET4_CONNECT)?;
        let before = sys::link_info(&link)?.prog_id;
        sys::link_update(link.as_fd(), second.as_fd(), Some(first.as_fd()))?;
        let after = sys::link_info(&link)?.prog_id;
        drop(link);
        Ok((before, after))
    };
    match probe() {
        Ok((before, after)) if before != after => Check::ok(
            NAME,
            true,
            format!(
                "a cgroup/connect4 link swapped program {before} for {after} in place \
                 (how an upgrade replaces the programs without a gap)"
            ),
        ),
        Ok((before, _)) => Check::bad(
            NAME,
            true,
            format!("the link still runs program {before} after BPF_LINK_UPDATE"),
            FIX,
        ),
        Err(e) => Check::bad(NAME, true, format!("probe failed: {e}"), FIX),
    }
}

/// CONFIG_INET_DIAG_DESTROY, probed: a listening socket of our own on
/// 127.0.0.1 (no connect, so no connect hook runs) found through sock_diag
/// and destroyed. Without it, connections let in before an enforce-mode
/// install are not cut; enforcement itself is unaffected.
pub(super) fn sock_destroy() -> Check {
    const NAME: &str = "sock destroy";
    const FIX: &str = "a kernel with CONFIG_INET_DIAG_DESTROY=y (and CAP_NET_ADMIN) to cut connections admitted earlier";
    let probe = || -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let inode = fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))?
        .ino();
        let mut diag = SockDiag::open()?;
        let mut sockets = Vec::new();
        diag.dump(
            libc::AF_INET as u8,
            state::bit(state::LISTEN),
            usize::MAX,
            &mut sockets,
        )?;
        let ours = sockets
            .iter()
            .find(|s| s.src == addr && s.inode == inode)
            .ok_or_else(|| io::Error::other("our listening socket is not in the sock_diag dump"))?;
        diag.destroy(ours)
    };
    match probe() {
        Ok(()) => Check::ok(
            NAME,
            false,
            "SOCK_DESTROY aborted a socket of ours (cut works)",
        ),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Check::bad(
            NAME,
            false,
            "SOCK_DESTROY not supported: connections admitted earlier are not cut",
            FIX,
        ),
        // The kernel answers a dump of a family it has no diagnostics
        // module for with ENOENT: `inet_diag`/`tcp_diag` are modules on
        // most distribution kernels, loaded on demand unless module
        // loading is off (or, in a VM's initramfs, there is no modprobe).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Check::bad(
            NAME,
            false,
            "no TCP socket diagnostics (sock_diag has no tcp_diag): connections admitted \
             earlier cannot be listed, so they are not cut",
            sock_diag::NO_TCP_DIAG_FIX,
        ),
        Err(e) => Check::bad(NAME, false, format!("probe failed: {e}"), FIX),
    }
}
