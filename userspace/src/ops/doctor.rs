//! `loopwarden doctor`: can this host run loopwarden, and if not, what to
//! change. Each check probes the running kernel instead of guessing from its
//! version: the program type, every helper and map type the programs use
//! are loaded or created for real (aya's feature probes where aya has one),
//! `BPF_LINK_UPDATE` is tried on a throwaway cgroup, BTF is parsed, and
//! `SOCK_DESTROY` is tried on a listening socket of our own.
//!
//! A probe leaves nothing behind: probe programs are unloaded when their
//! descriptors close, the throwaway cgroup (which no process ever joins) is
//! removed, and securityfs, if it had to be mounted to read the lockdown
//! mode, is unmounted again.

use std::{
    ffi::CString,
    fs,
    io::{self, ErrorKind},
    net::TcpListener,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};
use serde::Serialize;

use crate::{
    cut::sock_diag::{SockDiag, state},
    error_chain,
    kernel::{
        btf::{VMLINUX_BTF, kernel_offsets},
        compat, host_cgroup,
        pins::{BPFFS_MOUNT, is_bpffs},
        sys::{self, Insn},
    },
};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    /// Whether loopwarden cannot run without it (exit 1 unless ok).
    pub required: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, required: bool, detail: impl Into<String>) -> Self {
        Self {
            name,
            level: Level::Ok,
            required,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(
        name: &'static str,
        required: bool,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name,
            level: if required { Level::Fail } else { Level::Warn },
            required,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every required check is ok.
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.ok { 0 } else { 1 }
    }

    /// One line per check: `ok|warn|FAIL  name  detail  (fix: ...)`.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<5} {:<22} {}",
                c.level.word(),
                c.name,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("  (fix: {fix})"));
            }
            out.push('\n');
        }
        out.push_str(if self.ok {
            "every required check passed\n"
        } else {
            "some required check failed: loopwarden cannot run here as is\n"
        });
        out
    }
}

/// Runs every check; `host_cgroup_root` is `--host-cgroup-root`.
pub fn run(host_cgroup_root: Option<&Path>) -> Report {
    let (cgroup_root, cgroup2_check) = match host_cgroup_root {
        Some(path) => match host_cgroup::use_host_root(path) {
            Ok(root) => {
                let check = cgroup2(Some(&root));
                (Some(root), check)
            }
            Err(e) => (
                None,
                Check::bad(
                    "cgroup v2",
                    true,
                    e.to_string(),
                    "mount the host's cgroup v2 root there",
                ),
            ),
        },
        None => {
            let root = compat::find_cgroup2_root();
            let check = cgroup2(root.as_deref());
            (root, check)
        }
    };
    let mut checks = vec![
        root(),
        capabilities(),
        kernel_release(),
        cgroup2_check,
        cgroup_namespace(host_cgroup_root.is_some()),
        btf(),
        bpffs(),
    ];
    // Without the privileges the daemon has, every probe fails with EPERM
    // and says nothing about the kernel: say so once per probe instead.
    let privileged = checks[..2].iter().all(|c| c.level == Level::Ok);
    type Probe<'a> = (&'static str, bool, Box<dyn FnOnce() -> Check + 'a>);
    let probes: Vec<Probe<'_>> = vec![
        ("program type", true, Box::new(program_type)),
        ("connect hooks", true, Box::new(connect_programs)),
        ("helpers", true, Box::new(helpers)),
        ("map types", true, Box::new(map_types)),
        (
            "link update",
            true,
            Box::new(|| link_update(cgroup_root.as_deref())),
        ),
        ("lockdown", false, Box::new(lockdown)),
        ("unprivileged bpf", false, Box::new(unprivileged_bpf)),
        ("sock destroy", false, Box::new(sock_destroy)),
    ];
    for (name, required, probe) in probes {
        if privileged || name == "unprivileged bpf" {
            checks.push(probe());
        } else {
            checks.push(Check::bad(
                name,
                required,
                "not probed: needs root with the capabilities above",
                "run loopwarden doctor as root",
            ));
        }
    }
    Report {
        ok: checks.iter().all(|c| !c.required || c.level == Level::Ok),
        checks,
    }
}

fn root() -> Check {
    match compat::require_root() {
        Ok(()) => Check::ok("root", true, "effective uid 0"),
        Err(_) => Check::bad(
            "root",
            true,
            "not root: the daemon refuses to start, and the probes below fail",
            "run loopwarden (and doctor) as root",
        ),
    }
}

fn capabilities() -> Check {
    const NAME: &str = "capabilities";
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = compat::cap_eff(&status) else {
        return Check::bad(
            NAME,
            true,
            "CapEff not found in /proc/self/status",
            "check that /proc is mounted",
        );
    };
    let missing = compat::missing_capabilities(eff);
    if missing.is_empty() {
        Check::ok(
            NAME,
            true,
            format!("{} effective", compat::required_names().join(" ")),
        )
    } else {
        Check::bad(
            NAME,
            true,
            format!("missing {}", missing.join(" ")),
            "run as root with a full capability set (systemd: no CapabilityBoundingSet= that drops them)",
        )
    }
}

fn kernel_release() -> Check {
    match compat::kernel_release() {
        Ok(release) => Check::ok(
            "kernel",
            false,
            format!(
                "{release} (for the record: the checks below probe, they do not go by version)"
            ),
        ),
        Err(e) => Check::bad("kernel", false, format!("uname failed: {e}"), "none needed"),
    }
}

fn cgroup2(root: Option<&Path>) -> Check {
    match root {
        Some(root) => Check::ok(
            "cgroup v2",
            true,
            format!("hierarchy root mounted at {}", root.display()),
        ),
        None => Check::bad(
            "cgroup v2",
            true,
            "no cgroup2 mount of the hierarchy's root",
            "mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1",
        ),
    }
}

/// With `host_root_given`, a child namespace is fine: the cgroup v2
/// check says whether the given root is the host's.
fn cgroup_namespace(host_root_given: bool) -> Check {
    if compat::in_child_cgroup_namespace() {
        if host_root_given {
            return Check::ok(
                "cgroup namespace",
                true,
                "a child namespace, with the host's root given (--host-cgroup-root)",
            );
        }
        Check::bad(
            "cgroup namespace",
            true,
            "running in a child cgroup namespace: its root is only a subtree",
            "run in the host's cgroup namespace (outside the container, or --cgroupns=host), \
             or mount the host's cgroup v2 root and pass --host-cgroup-root PATH",
        )
    } else {
        Check::ok("cgroup namespace", true, "the host's (initial) namespace")
    }
}

fn btf() -> Check {
    match kernel_offsets(Path::new(VMLINUX_BTF)) {
        Ok(o) => Check::ok(
            "BTF",
            true,
            format!(
                "{VMLINUX_BTF} parsed: task_struct.mm={} mm_struct.exe_file={} file.f_inode={}",
                o.task_mm, o.mm_exe_file, o.file_inode
            ),
        ),
        Err(e) => Check::bad(
            "BTF",
            true,
            error_chain(&e),
            "a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
    }
}

fn bpffs() -> Check {
    if is_bpffs(Path::new(BPFFS_MOUNT)) {
        return Check::ok("bpffs", true, format!("mounted at {BPFFS_MOUNT}"));
    }
    let known = fs::read_to_string("/proc/filesystems").is_ok_and(|f| {
        f.lines()
            .any(|l| l.split_whitespace().last() == Some("bpf"))
    });
    if known {
        Check::ok(
            "bpffs",
            true,
            format!("not mounted, but the kernel has it: the daemon mounts it on {BPFFS_MOUNT}"),
        )
    } else {
        Check::bad(
            "bpffs",
            true,
            "the kernel has no bpf filesystem (not in /proc/filesystems)",
            "a kernel with CONFIG_BPF_SYSCALL=y",
        )
    }
}

fn program_type() -> Check {
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

/// `r1 = -ECONNREFUSED; call bpf_set_retval; r0 = 0; exit`: the way the
/// programs refuse a connect.
fn refusing_program() -> [Insn; 4] {
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
fn connect_programs() -> Check {
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

/// Every helper the programs call (see ebpf/src).
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

fn helpers() -> Check {
    const NAME: &str = "helpers";
    let missing = unsupported(HELPERS, |helper| {
        is_helper_supported(ProgramType::CgroupSockAddr, helper)
    });
    if missing.is_empty() {
        Check::ok(
            NAME,
            true,
            format!(
                "all {} helpers the programs call are available to cgroup/connect4",
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
fn unsupported<T, E: std::error::Error>(
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

fn map_types() -> Check {
    const NAME: &str = "map types";
    let types = [
        ("ringbuf", MapType::RingBuf),
        ("percpu_array", MapType::PerCpuArray),
        ("hash", MapType::Hash),
        ("array", MapType::Array),
        ("lpm_trie", MapType::LpmTrie),
    ];
    let missing = unsupported(types, is_map_supported);
    if missing.is_empty() {
        Check::ok(
            NAME,
            true,
            "ringbuf, percpu_array, hash, array and lpm_trie maps can be created",
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
fn link_update(cgroup_root: Option<&Path>) -> Check {
    const NAME: &str = "link update";
    const FIX: &str = "Linux 5.7 or later (cgroup links with BPF_LINK_UPDATE)";
    let Some(root) = cgroup_root else {
        return Check::bad(NAME, true, "not probed: no cgroup v2 mount", FIX);
    };
    let probe = || -> io::Result<(u32, u32)> {
        let dir = ThrowawayCgroup(root.join(format!("loopwarden-doctor-{}", std::process::id())));
        fs::create_dir(&dir.0)?;
        let cgroup = fs::File::open(&dir.0)?;
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

const SECURITYFS: &str = "/sys/kernel/security";

fn lockdown() -> Check {
    const NAME: &str = "lockdown";
    let file = Path::new(SECURITYFS).join("lockdown");
    let text = match read_lockdown(&file) {
        Ok(Some(text)) => text,
        Ok(None) => return Check::ok(NAME, false, "no lockdown LSM in this kernel"),
        Err(e) => {
            return Check::bad(
                NAME,
                false,
                format!("not read: {e}"),
                "mount -t securityfs securityfs /sys/kernel/security and run doctor again",
            );
        }
    };
    // "none [integrity] confidentiality": the bracketed one is in force.
    let mode = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .unwrap_or("?")
        .to_owned();
    match mode.as_str() {
        "confidentiality" => Check::bad(
            NAME,
            false,
            "confidentiality: bpf_probe_read_kernel is refused (see helpers)",
            "boot with lockdown=integrity or without lockdown",
        ),
        _ => Check::ok(NAME, false, format!("{mode}: kernel reads allowed")),
    }
}

/// The lockdown file's text; `None` when the kernel has no lockdown LSM.
/// Mounts securityfs when it is not mounted, and unmounts it afterwards.
fn read_lockdown(file: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(file) {
        Ok(text) => return Ok(Some(text)),
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if securityfs_mounted() {
        return Ok(None);
    }
    let c = |s: &str| CString::new(s).expect("no NUL in constants");
    let (source, target) = (c("securityfs"), c(SECURITYFS));
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let text = match fs::read_to_string(file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    // SAFETY: as above.
    unsafe { libc::umount2(target.as_ptr(), 0) };
    text
}

fn securityfs_mounted() -> bool {
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines().any(|l| {
            let mount_point = l.split_whitespace().nth(4).map(compat::unescape);
            let fstype = l
                .split_once(" - ")
                .and_then(|(_, r)| r.split_whitespace().next());
            mount_point.as_deref() == Some(SECURITYFS) && fstype == Some("securityfs")
        })
    })
}

fn unprivileged_bpf() -> Check {
    const NAME: &str = "unprivileged bpf";
    match fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled") {
        Ok(v) if v.trim() == "0" => Check::bad(
            NAME,
            false,
            "kernel.unprivileged_bpf_disabled=0: any user may load BPF programs",
            "sysctl -w kernel.unprivileged_bpf_disabled=2 (loopwarden runs as root and needs no unprivileged BPF)",
        ),
        Ok(v) => Check::ok(
            NAME,
            false,
            format!("kernel.unprivileged_bpf_disabled={}", v.trim()),
        ),
        Err(e) => Check::ok(NAME, false, format!("sysctl not present ({e})")),
    }
}

/// CONFIG_INET_DIAG_DESTROY, probed: a listening socket of our own on
/// 127.0.0.1 (no connect, so no connect hook runs) found through sock_diag
/// and destroyed. Without it, connections let in before an enforce-mode
/// install are not cut; enforcement itself is unaffected.
fn sock_destroy() -> Check {
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
        Err(e) => Check::bad(NAME, false, format!("probe failed: {e}"), FIX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_failure_fails_the_report() {
        let report = |checks: Vec<Check>| Report {
            ok: checks.iter().all(|c| !c.required || c.level == Level::Ok),
            checks,
        };
        let warn = Check::bad("x", false, "meh", "later");
        assert_eq!(warn.level, Level::Warn);
        assert_eq!(report(vec![warn.clone()]).exit_code(), 0);
        let fail = Check::bad("y", true, "broken", "fix it");
        assert_eq!(fail.level, Level::Fail);
        let r = report(vec![warn, fail]);
        assert_eq!(r.exit_code(), 1);
        assert!(r.human().contains("FAIL  y"), "{}", r.human());
        assert!(r.human().contains("(fix: fix it)"), "{}", r.human());
    }
}
