//! Network namespaces a test owns ([`Netns`]), the processes started in
//! them ([`Proc`]), and two namespaces joined by a veth pair ([`Topology`]).

use std::{
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{PROTECTED, UNPROTECTED, require_root, run, run_ok, wait_for};

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} failed: {e}"));
        Self { child, what }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process now (what drop does) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics if the process already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.what);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A network namespace owned by one test, deleted on drop along with every
/// process still in it.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_root();
        let name = format!(
            "lwt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, as policies name it.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Gives the namespace addresses of its own besides loopback: a veth
    /// pair with both ends inside (this kernel has no dummy links; it goes
    /// with the namespace), `addrs` (CIDRs, IPv6 without duplicate address
    /// detection) on its end `lw-a`.
    pub fn add_addresses(&self, addrs: &[&str]) {
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
        ip(&[
            "link", "add", "lw-a", "type", "veth", "peer", "name", "lw-b",
        ]);
        ip(&["link", "set", "lw-a", "up"]);
        ip(&["link", "set", "lw-b", "up"]);
        for addr in addrs {
            if addr.contains(':') {
                ip(&["addr", "add", addr, "dev", "lw-a", "nodad"]);
            } else {
                ip(&["addr", "add", addr, "dev", "lw-a"]);
            }
        }
    }

    /// A command that runs `program` inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Starts a long-running process inside the namespace.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Proc {
        Proc::spawn(self.cmd(program).args(args))
    }

    /// Waits until something listens on TCP `port` in the namespace (checked
    /// with `ss`, without connecting).
    pub fn wait_listening(&self, port: u16) {
        self.wait_bound("-Hltn", &format!("a listener on port {port}"), port);
    }

    /// Waits until something is bound to UDP `port` in the namespace.
    pub fn wait_udp_bound(&self, port: u16) {
        self.wait_bound("-Hlun", &format!("a UDP socket on port {port}"), port);
    }

    /// Waits until a TCP socket listens on `addr` itself.
    pub fn wait_listening_at(&self, addr: std::net::SocketAddr) {
        wait_for(
            &format!("a listener on {addr} in {}", self.name),
            Duration::from_secs(10),
            || {
                let out = self.cmd("ss").args(["-Hltn"]).output().ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|line| line.split_whitespace().nth(3))
                    .any(|local| local == addr.to_string())
                    .then_some(())
            },
        );
    }

    /// Waits until `ss FLAGS` lists a socket on local `port`.
    fn wait_bound(&self, flags: &str, what: &str, port: u16) {
        wait_for(
            &format!("{what} in {}", self.name),
            Duration::from_secs(10),
            || {
                let out = run(self.cmd("ss").args([flags, &format!("sport = :{port}")]));
                (!out.stdout.is_empty()).then_some(())
            },
        );
    }

    /// Starts the test HTTP services: `PROTECTED` and `UNPROTECTED` on `[::]`.
    pub fn http_servers(&self) -> (Proc, Proc) {
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap_or("/tmp");
        let start = |port: u16| {
            let p = self.spawn(
                "python3",
                &[
                    "-m",
                    "http.server",
                    "--bind",
                    "::",
                    "--directory",
                    dir,
                    &port.to_string(),
                ],
            );
            self.wait_listening(port);
            p
        };
        (start(PROTECTED), start(UNPROTECTED))
    }

    /// `curl` inside the namespace; `Ok(status)` when an HTTP response came
    /// back, `Err(curl exit code)` otherwise.
    pub fn curl(&self, url: &str) -> Result<u16, i32> {
        self.curl_with(&[], url)
    }

    /// [`Netns::curl`] with more options (`--local-port 53`).
    pub fn curl_with(&self, options: &[&str], url: &str) -> Result<u16, i32> {
        let out = run(self
            .cmd("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                "-w",
                "%{http_code}",
            ])
            .args(options)
            .arg(url));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0))
        } else {
            Err(out.status.code().unwrap_or(-1))
        }
    }

    /// `curl` of `url` inside the namespace as uid/gid 65534 (nobody), its
    /// body discarded: the whole output, for the exit code and stderr.
    pub fn curl_as_nobody(&self, url: &str) -> Output {
        run(self
            .cmd(crate::AS_NOBODY[0])
            .args(&crate::AS_NOBODY[1..])
            .args(["curl", "-sS", "-o", "/dev/null", "--max-time", "5", url]))
    }

    /// Starts `socat` relaying TCP `listen` in the namespace to `target`
    /// (a socat address such as `TCP:127.0.0.1:8080`), optionally as another
    /// user through `setpriv`.
    pub fn socat_relay(&self, listen: u16, target: &str, as_uid: Option<u32>) -> Proc {
        let listen_arg = format!("TCP-LISTEN:{listen},fork,reuseaddr");
        let p = match as_uid {
            None => self.spawn("socat", &[&listen_arg, target]),
            Some(uid) => {
                let uid = uid.to_string();
                self.spawn(
                    "setpriv",
                    &[
                        "--reuid",
                        &uid,
                        "--regid",
                        &uid,
                        "--clear-groups",
                        "socat",
                        &listen_arg,
                        target,
                    ],
                )
            }
        };
        self.wait_listening(listen);
        p
    }

    /// A server on the protected port that accepts and closes at once, with
    /// a backlog deep enough for a connect flood (python's http.server
    /// queues 5).
    pub fn sink_server(&self) -> Proc {
        let script = format!(
            r#"
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {PROTECTED}))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
"#
        );
        let server = self.spawn("/usr/bin/python3", &["-c", &script]);
        self.wait_listening(PROTECTED);
        server
    }

    /// A one-shot `socat` connect to `target`; returns its stderr (socat
    /// reports the connect() error there) and whether it succeeded.
    pub fn socat_connect(&self, target: &str) -> (bool, String) {
        self.socat_connect_from("socat", target)
    }

    /// [`Netns::socat_connect`], run from the executable `socat` (a copy
    /// of it, under another path or inode).
    pub fn socat_connect_from(&self, socat: &str, target: &str) -> (bool, String) {
        let out = run(self
            .cmd(socat)
            .args(["-T", "3", "-u", "OPEN:/dev/null", target]));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The local namespace's address on the link to the remote one.
pub const LOCAL_ADDR: &str = "10.77.0.1";
/// The remote namespace's address on the link to the local one.
pub const REMOTE_ADDR: &str = "10.77.0.2";
/// The local namespace's IPv6 address on that link.
pub const LOCAL_ADDR6: &str = "fd77::1";
/// The remote namespace's IPv6 address on that link.
pub const REMOTE_ADDR6: &str = "fd77::2";

/// A "local" namespace (where the protected service, the policy and the
/// relays are) and a "remote" one standing for the rest of the network,
/// joined by a veth pair that exists only inside them: `lw0` in local with
/// [`LOCAL_ADDR`]/24 and [`LOCAL_ADDR6`]/64, `lw1` in remote with
/// [`REMOTE_ADDR`]/24 and [`REMOTE_ADDR6`]/64. Deleting the namespaces (on
/// drop) deletes the pair.
pub struct Topology {
    pub local: Netns,
    pub remote: Netns,
}

impl Topology {
    pub fn new() -> Self {
        let local = Netns::new();
        let remote = Netns::new();
        let ip = |ns: &Netns, args: &[&str]| {
            run_ok(Command::new("ip").args(["-n", ns.name()]).args(args));
        };
        ip(
            &local,
            &[
                "link",
                "add",
                "lw0",
                "type",
                "veth",
                "peer",
                "name",
                "lw1",
                "netns",
                remote.name(),
            ],
        );
        for (ns, dev, v4, v6) in [
            (&local, "lw0", LOCAL_ADDR, LOCAL_ADDR6),
            (&remote, "lw1", REMOTE_ADDR, REMOTE_ADDR6),
        ] {
            ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            // nodad: usable at once, no tentative period.
            ip(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            ip(ns, &["link", "set", dev, "up"]);
        }
        for (ns, dev) in [(&local, "lw0"), (&remote, "lw1")] {
            wait_for(
                &format!("{dev} up in {}", ns.name()),
                Duration::from_secs(10),
                || {
                    let out = run(Command::new("ip").args(["-n", ns.name(), "link", "show", dev]));
                    String::from_utf8_lossy(&out.stdout)
                        .contains("LOWER_UP")
                        .then_some(())
                },
            );
        }
        Self { local, remote }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// A second name for a namespace (a bind mount of its file, as `ip netns
/// add` makes), removed on drop as `ip netns del` removes one: the
/// namespace lives on (its own name and processes keep it).
pub struct NetnsAlias(pub String);

impl NetnsAlias {
    pub fn new(ns: &Netns) -> Self {
        let alias = NetnsAlias(format!("{}-alias", ns.path()));
        std::fs::File::create(&alias.0).expect("the alias's mount point");
        run_ok(Command::new("mount").args(["--bind", &ns.path(), &alias.0]));
        alias
    }
}

impl Drop for NetnsAlias {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}
