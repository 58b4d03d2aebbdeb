//! Relay detection, end to end: a "local" namespace with the protected
//! service and a "remote" one standing for the network, joined by a veth
//! pair ([`Topology`]). Real relays (socat, nginx, `ssh -L`, `ssh -R`, bore,
//! a python forwarder) carry a remote client's request to the service; their
//! connect() is made by a network-facing process and is reported (audit) or
//! refused (`[relay] action = "deny"`) by the relay verdict, with the remote
//! party named in `via`. Direct local clients are never flagged.
//!
//! Every relay is first shown to work without loopwarden
//! ([`relays_work_without_loopwarden`] and each test's first phase), so a
//! refusal is loopwarden's doing. Relays are started after the daemon in
//! each phase, so the kernel sees their listen, accept and traffic.

use std::path::{Path, PathBuf};

use loopwarden_tests::{
    Daemon, Fields, LOCAL_ADDR, LOCAL_ADDR6, Netns, PROTECTED, Policy, Proc, REMOTE_ADDR,
    REMOTE_ADDR6, SYSTEM_PYTHON, Sshd, TempDir, Topology, exe_name, nginx_proxy, rule, run, run_ok,
    spawn_forwarder,
};
use serde_json::Value;

const SOCAT_PORT: u16 = 9001;
const NGINX_PORT: u16 = 9002;
const SSH_L_PORT: u16 = 9003;
const SSH_R_PORT: u16 = 9004;
const BORE_PORT: u16 = 9005;
const FORWARDER_PORT: u16 = 9006;
const INETD_PORT: u16 = 9007;
const SOCAT6_PORT: u16 = 9011;
const SSHD_PORT: u16 = 2222;
/// bore's control port (fixed in bore).
const BORE_CONTROL: u16 = 7835;
/// The default `[relay] window_ms`.
const WINDOW_MS: u64 = 2000;

/// The protected service as relays reach it.
fn service() -> String {
    format!("127.0.0.1:{PROTECTED}")
}

/// The bore binary: `bore` on `PATH`, else `~/.cargo/bin/bore`.
fn bore_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("bore"))
            .find(|p| p.is_file())
    });
    let in_cargo = || {
        std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cargo/bin/bore"))
            .filter(|p| p.is_file())
    };
    on_path
        .or_else(in_cargo)
        .expect("bore is not installed (cargo install bore-cli)")
}

/// The relays under test.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// socat listening on the local link address, forking per connection.
    Socat,
    /// nginx reverse proxy on the local link address.
    Nginx,
    /// sshd in local, `ssh -L` from remote: sshd connects to the service.
    SshL,
    /// sshd in remote, `ssh -R` from local: the ssh client connects to it.
    SshR,
    /// bore server in remote, `bore local` in local.
    Bore,
    /// A threaded python forwarder on the local link address.
    Forwarder,
    /// inetd-style: socat forks per connection and execs a second socat
    /// with the accepted socket as its stdin and stdout.
    Inetd,
}

const ALL: [Kind; 7] = [
    Kind::Socat,
    Kind::Nginx,
    Kind::SshL,
    Kind::SshR,
    Kind::Bore,
    Kind::Forwarder,
    Kind::Inetd,
];

/// What `via` should show for a relay's connect.
struct Via {
    host: &'static str,
    port: Option<u16>,
    how: &'static [&'static str],
}

impl Kind {
    /// The remote party the kernel saw and how.
    fn expected_via(self) -> Via {
        let (port, how): (Option<u16>, &'static [&'static str]) = match self {
            // Connects right after accept, before reading.
            Kind::Socat | Kind::Forwarder => (None, &["accepted"]),
            // Reads the request first.
            Kind::Nginx => (None, &["received"]),
            // Reads the channel open first; an sshd that re-executes itself
            // per connection (OpenSSH's default) runs with the connection
            // as its stdin and stdout.
            Kind::SshL => (None, &["received", "stdio"]),
            // Executed with the connection as stdin and stdout, it
            // connects before it reads.
            Kind::Inetd => (None, &["stdio"]),
            // The ssh client hears of the forwarded connection from sshd.
            Kind::SshR => (Some(SSHD_PORT), &["received"]),
            // bore local hears of it on its control connection, then
            // opens a new one to the server before connecting locally.
            Kind::Bore => (None, &["received", "connected"]),
        };
        Via {
            host: REMOTE_ADDR,
            port,
            how,
        }
    }

    fn start(self, topo: &Topology) -> Relay {
        match self {
            Kind::Socat => socat(topo),
            Kind::Nginx => nginx(topo),
            Kind::SshL => ssh_local_forward(topo),
            Kind::SshR => ssh_remote_forward(topo),
            Kind::Bore => bore(topo, &bore_bin()),
            Kind::Forwarder => forwarder(topo),
            Kind::Inetd => inetd(topo),
        }
    }
}

/// A running relay and everything it needs; dropped together.
struct Relay {
    /// Processes, sshds, temp dirs: dropped in order.
    _parts: Vec<Box<dyn std::any::Any>>,
    /// The URL the remote namespace fetches through the relay.
    url: String,
    /// `exe_name` of the process whose connect reaches the service.
    exe_name: String,
}

impl Relay {
    /// A remote client's request through the relay.
    fn fetch(&self, topo: &Topology) -> Result<u16, i32> {
        topo.remote.curl(&self.url)
    }

    fn is_its(&self, e: &Value) -> bool {
        e["exe_name"] == self.exe_name.as_str()
    }
}

fn socat(topo: &Topology) -> Relay {
    let proc = topo.local.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{SOCAT_PORT},bind={LOCAL_ADDR},fork,reuseaddr"),
            &format!("TCP:{}", service()),
        ],
    );
    topo.local.wait_listening(SOCAT_PORT);
    Relay {
        _parts: vec![Box::new(proc)],
        url: format!("http://{LOCAL_ADDR}:{SOCAT_PORT}/"),
        exe_name: exe_name(Path::new("/usr/bin/socat")),
    }
}

fn nginx(topo: &Topology) -> Relay {
    let dir = TempDir::new("nginx");
    let proc = nginx_proxy(&topo.local, &dir, LOCAL_ADDR, NGINX_PORT);
    Relay {
        _parts: vec![Box::new(proc), Box::new(dir)],
        url: format!("http://{LOCAL_ADDR}:{NGINX_PORT}/"),
        exe_name: exe_name(Path::new("/usr/sbin/nginx")),
    }
}

/// `ssh -N <forward> root@<addr>` in `ns`, a client of `sshd`.
fn ssh_forward(ns: &Netns, sshd: &Sshd, forward: &[&str], addr: &str) -> Proc {
    let mut args = sshd.client_args();
    args.push("-N".into());
    args.extend(forward.iter().map(|a| (*a).to_owned()));
    args.push(format!("root@{addr}"));
    Proc::spawn(ns.cmd("ssh").args(&args))
}

fn ssh_local_forward(topo: &Topology) -> Relay {
    let sshd = Sshd::start(&topo.local, LOCAL_ADDR, SSHD_PORT);
    let mut client = ssh_forward(
        &topo.remote,
        &sshd,
        &["-L", &format!("{SSH_L_PORT}:{}", service())],
        LOCAL_ADDR,
    );
    topo.remote.wait_listening(SSH_L_PORT);
    client.assert_running();
    Relay {
        _parts: vec![Box::new(client), Box::new(sshd)],
        url: format!("http://127.0.0.1:{SSH_L_PORT}/"),
        exe_name: exe_name(Path::new("/usr/sbin/sshd")),
    }
}

fn ssh_remote_forward(topo: &Topology) -> Relay {
    let sshd = Sshd::start(&topo.remote, REMOTE_ADDR, SSHD_PORT);
    let mut client = ssh_forward(
        &topo.local,
        &sshd,
        &["-R", &format!("{SSH_R_PORT}:{}", service())],
        REMOTE_ADDR,
    );
    // The remote sshd listens for the forward once the client is in.
    topo.remote.wait_listening(SSH_R_PORT);
    client.assert_running();
    Relay {
        _parts: vec![Box::new(client), Box::new(sshd)],
        url: format!("http://127.0.0.1:{SSH_R_PORT}/"),
        exe_name: exe_name(Path::new("/usr/bin/ssh")),
    }
}

/// A bore server in remote and `program local` (bore, or a copy of it) in
/// local, tunnelling the service to the server's `BORE_PORT`.
fn bore(topo: &Topology, program: &Path) -> Relay {
    let bore = bore_bin();
    let bore = bore.to_str().expect("utf-8 path");
    let server = topo.remote.spawn(
        bore,
        &[
            "server",
            "--bind-addr",
            REMOTE_ADDR,
            "--min-port",
            "9000",
            "--max-port",
            "9099",
        ],
    );
    topo.remote.wait_listening(BORE_CONTROL);
    let mut client = topo.local.spawn(
        program.to_str().expect("utf-8 path"),
        &[
            "local",
            &PROTECTED.to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            REMOTE_ADDR,
            "--port",
            &BORE_PORT.to_string(),
        ],
    );
    topo.remote.wait_listening(BORE_PORT);
    client.assert_running();
    Relay {
        _parts: vec![Box::new(client), Box::new(server)],
        url: format!("http://{REMOTE_ADDR}:{BORE_PORT}/"),
        exe_name: exe_name(program),
    }
}

/// A threaded forwarder without any catalogued name: per connection it
/// connects to the service before reading, then pumps both ways.
fn forwarder(topo: &Topology) -> Relay {
    let dir = TempDir::new("forwarder");
    let (proc, _) = spawn_forwarder(&topo.local, &dir, LOCAL_ADDR, FORWARDER_PORT);
    Relay {
        _parts: vec![Box::new(proc), Box::new(dir)],
        url: format!("http://{LOCAL_ADDR}:{FORWARDER_PORT}/"),
        exe_name: exe_name(Path::new(SYSTEM_PYTHON)),
    }
}

/// An inetd-style server: socat accepts on the local link address and,
/// per connection, executes (`nofork`: in place of its forked child) a
/// second socat whose stdin and stdout are the accepted socket and which
/// connects to the service before reading anything.
fn inetd(topo: &Topology) -> Relay {
    let proc = topo.local.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{INETD_PORT},bind={LOCAL_ADDR},fork,reuseaddr"),
            // Colons inside the command are escaped from socat's parser.
            &format!(
                "EXEC:socat STDIO {},nofork",
                format!("TCP:{}", service()).replace(':', "\\:")
            ),
        ],
    );
    topo.local.wait_listening(INETD_PORT);
    Relay {
        _parts: vec![Box::new(proc)],
        url: format!("http://{LOCAL_ADDR}:{INETD_PORT}/"),
        exe_name: exe_name(Path::new("/usr/bin/socat")),
    }
}

/// socat on the local link's IPv6 address.
fn socat6(topo: &Topology) -> Relay {
    let proc = topo.local.spawn(
        "socat",
        &[
            &format!("TCP6-LISTEN:{SOCAT6_PORT},bind=[{LOCAL_ADDR6}],fork,reuseaddr"),
            &format!("TCP:{}", service()),
        ],
    );
    topo.local.wait_listening(SOCAT6_PORT);
    Relay {
        _parts: vec![Box::new(proc)],
        url: format!("http://[{LOCAL_ADDR6}]:{SOCAT6_PORT}/"),
        exe_name: exe_name(Path::new("/usr/bin/socat")),
    }
}

/// Splits a socket address string (`1.2.3.4:5`, `[::1]:5`) into host and port.
fn split_addr(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

/// Checks `via`, `via_how` and `via_ago_ms` of a relay's record.
fn assert_via(ev: &Value, want: &Via) {
    let via = ev["via"]
        .as_str()
        .unwrap_or_else(|| panic!("no via: {ev:#}"));
    let (host, port) = split_addr(via).unwrap_or_else(|| panic!("via is no address: {ev:#}"));
    assert_eq!(host, want.host, "{ev:#}");
    if let Some(p) = want.port {
        assert_eq!(port, p, "{ev:#}");
    }
    let how = ev["via_how"].as_str().unwrap_or_default();
    assert!(
        want.how.contains(&how),
        "via_how {how:?}, wanted one of {:?}: {ev:#}",
        want.how
    );
    match how {
        "listening" => assert!(ev.get("via_ago_ms").is_none(), "{ev:#}"),
        "accepted" | "stdio" => assert!(ev["via_ago_ms"].is_u64(), "{ev:#}"),
        _ => assert!(
            ev["via_ago_ms"].as_u64().is_some_and(|ms| ms <= WINDOW_MS),
            "evidence older than the window: {ev:#}"
        ),
    }
}

/// A record that says the relay verdict (or a refusal) applied.
fn is_flagged(e: &Value) -> bool {
    e["rule"] == "relay"
        || e["verdict"] == "deny"
        || e["verdict"] == "would-deny"
        || e.get("via").is_some()
}

/// The relay works end to end without loopwarden.
fn assert_relays(topo: &Topology, kind: Kind) {
    let relay = kind.start(topo);
    assert_eq!(
        relay.fetch(topo),
        Ok(200),
        "{kind:?} does not relay even without loopwarden"
    );
}

/// All phases for one relay: works without loopwarden; reported by the
/// relay verdict in audit mode (catalog off, `[relay]` defaults); refused
/// by it in enforce mode; refused with the catalog on too.
fn relay_is_reported_and_refused(kind: Kind) {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    assert_relays(&topo, kind);
    let want = kind.expected_via();

    {
        let daemon = Daemon::start(&Policy::new(&topo.local, "audit").catalog(false).text());
        let relay = kind.start(&topo);
        assert_eq!(relay.fetch(&topo), Ok(200), "{kind:?} in audit mode");
        let ev = daemon.wait_event(&format!("relay audit of {kind:?}"), |e| {
            e["rule"] == "relay" && relay.is_its(e)
        });
        assert_eq!(ev["verdict"], "audit", "{ev:#}");
        assert_eq!(ev["dst"], service(), "{ev:#}");
        assert_via(&ev, &want);
    }

    {
        let policy = Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("deny");
        let daemon = Daemon::start(&policy.text());
        let relay = kind.start(&topo);
        let result = relay.fetch(&topo);
        assert_ne!(result, Ok(200), "{kind:?} was not refused");
        let ev = daemon.wait_event(&format!("relay deny of {kind:?}"), |e| {
            e["verdict"] == "deny" && relay.is_its(e)
        });
        assert_eq!(ev["rule"], "relay", "{ev:#}");
        assert_eq!(ev["dst"], service(), "{ev:#}");
        assert_via(&ev, &want);
    }

    let policy = Policy::new(&topo.local, "enforce")
        .catalog(true)
        .relay("deny");
    let daemon = Daemon::start(&policy.text());
    let relay = kind.start(&topo);
    let result = relay.fetch(&topo);
    assert_ne!(result, Ok(200), "{kind:?} was not refused");
    let ev = daemon.wait_event(&format!("deny of {kind:?}"), |e| {
        e["verdict"] == "deny" && relay.is_its(e)
    });
    let rule = ev["rule"].as_str().unwrap_or_default();
    assert!(
        rule == "relay" || rule.starts_with("catalog:"),
        "{kind:?} refused by {rule:?}: {ev:#}"
    );
}

#[test]
fn relays_work_without_loopwarden() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    // The link itself.
    assert_eq!(
        topo.remote
            .curl(&format!("http://{LOCAL_ADDR}:{PROTECTED}/")),
        Ok(200),
        "the service itself from remote"
    );
    for kind in ALL {
        assert_relays(&topo, kind);
    }
    let relay = socat6(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200), "socat over IPv6");
    drop(relay);
    let dir = TempDir::new("bore-asset");
    for name in ASSET_NAMES {
        let copy = bore_copy(&dir, name);
        let relay = bore(&topo, &copy);
        assert_eq!(relay.fetch(&topo), Ok(200), "{name}");
    }
    // The direct clients work, and the DNS answer is what they expect.
    let _dns = dns_responder(&topo);
    let sshd = Sshd::start(&topo.local, "127.0.0.1", SSHD_PORT);
    direct_clients(&topo, &sshd);
}

#[test]
fn socat_is_a_relay() {
    relay_is_reported_and_refused(Kind::Socat);
}

#[test]
fn nginx_is_a_relay() {
    relay_is_reported_and_refused(Kind::Nginx);
}

#[test]
fn sshd_forwarding_for_ssh_dash_l_is_a_relay() {
    relay_is_reported_and_refused(Kind::SshL);
}

#[test]
fn the_ssh_client_forwarding_for_ssh_dash_r_is_a_relay() {
    relay_is_reported_and_refused(Kind::SshR);
}

#[test]
fn bore_is_a_relay() {
    relay_is_reported_and_refused(Kind::Bore);
}

#[test]
fn a_python_forwarder_with_no_catalogued_name_is_a_relay() {
    relay_is_reported_and_refused(Kind::Forwarder);
}

#[test]
fn an_inetd_style_program_executed_with_the_connection_as_stdio_is_a_relay() {
    relay_is_reported_and_refused(Kind::Inetd);
}

#[test]
fn an_ipv6_peer_is_shown_bracketed() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    assert_eq!(socat6(&topo).fetch(&topo), Ok(200), "without loopwarden");
    let daemon = Daemon::start(&Policy::new(&topo.local, "audit").catalog(false).text());
    let relay = socat6(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200));
    let ev = daemon.wait_event("relay audit of socat over IPv6", |e| {
        e["rule"] == "relay" && relay.is_its(e)
    });
    assert_eq!(ev["verdict"], "audit", "{ev:#}");
    let via = ev["via"].as_str().unwrap_or_default();
    assert!(via.starts_with(&format!("[{REMOTE_ADDR6}]:")), "{ev:#}");
    assert_via(
        &ev,
        &Via {
            host: REMOTE_ADDR6,
            port: None,
            how: &["accepted"],
        },
    );
}

#[test]
fn audit_mode_with_relay_deny_reports_would_deny() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let policy = Policy::new(&topo.local, "audit")
        .catalog(false)
        .relay("deny");
    let daemon = Daemon::start(&policy.text());
    let relay = Kind::Socat.start(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200));
    let ev = daemon.wait_event("would-deny of socat", |e| {
        e["rule"] == "relay" && relay.is_its(e)
    });
    assert_eq!(ev["verdict"], "would-deny", "{ev:#}");
    assert_via(&ev, &Kind::Socat.expected_via());
}

/// Release-asset names of bore, as downloaded or as a wrapper installs it.
const ASSET_NAMES: [&str; 2] = ["bore-v0.5.2-x86_64-unknown-linux-musl", ".bore-wrapped"];

/// A copy of bore named `name` in `dir`.
fn bore_copy(dir: &TempDir, name: &str) -> PathBuf {
    let copy = dir.path().join(name);
    if !copy.exists() {
        std::fs::copy(bore_bin(), &copy).expect("copying bore");
    }
    copy
}

#[test]
fn bore_under_a_release_asset_name_is_catalogued() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let dir = TempDir::new("bore-asset");
    for name in ASSET_NAMES {
        let copy = bore_copy(&dir, name);
        {
            let relay = bore(&topo, &copy);
            assert_eq!(relay.fetch(&topo), Ok(200), "{name} without loopwarden");
        }
        // Relay detection off: only the catalog can refuse it.
        let policy = Policy::new(&topo.local, "enforce")
            .catalog(true)
            .relay("allow");
        let daemon = Daemon::start(&policy.text());
        let relay = bore(&topo, &copy);
        let result = relay.fetch(&topo);
        assert_ne!(result, Ok(200), "{name} was not refused");
        let ev = daemon.wait_event(&format!("deny of {name}"), |e| {
            e["verdict"] == "deny" && relay.is_its(e)
        });
        assert_eq!(ev["rule"], "catalog:bore", "{ev:#}");
        assert_eq!(ev["exe_name"], exe_name(&copy), "{ev:#}");
    }
}

/// A DNS server in remote on port 53 of the link address: answers any
/// query with one A record.
fn dns_responder(topo: &Topology) -> Proc {
    let script = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{REMOTE_ADDR}", 53))
while True:
    q, peer = s.recvfrom(512)
    end = 12
    while q[end]: end += q[end] + 1
    question = q[12:end + 5]
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton("{REMOTE_ADDR}")
    s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, peer)
"#
    );
    let p = topo.remote.spawn(SYSTEM_PYTHON, &["-c", &script]);
    topo.remote.wait_udp_bound(53);
    p
}

/// Asks the DNS responder (over a connected UDP socket as glibc does, or
/// with sendto), reads the answer, then connects to the service at once.
const DNS_THEN_CONNECT: &str = r#"
import socket, struct, sys
server, port, connected = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "connected"
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x0arelay-test\x07example\x00\x00\x01\x00\x01"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
if connected:
    u.connect((server, 53)); u.send(q); a = u.recv(512)
else:
    u.sendto(q, (server, 53)); a, _ = u.recvfrom(512)
ident, _, _, answers = struct.unpack(">HHHH", a[:8])
s = socket.create_connection(("127.0.0.1", port), timeout=3)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
status = s.recv(64).split()[1].decode()
print(f"id={ident:#x} answers={answers} addr={socket.inet_ntoa(a[-4:])} status={status}")
"#;

/// Runs every direct client in local against the service (and `ssh`
/// against `sshd`) and asserts each succeeded.
fn direct_clients(topo: &Topology, sshd: &Sshd) {
    let ns = &topo.local;
    let url = format!("http://127.0.0.1:{PROTECTED}/");

    assert_eq!(ns.curl(&url), Ok(200), "curl");

    if Path::new("/usr/bin/wget").exists() {
        run_ok(
            ns.cmd("/usr/bin/wget")
                .args(["-q", "-O", "/dev/null", &url]),
        );
    } else {
        let out = run_ok(ns.cmd(SYSTEM_PYTHON).args([
            "-c",
            &format!("import socket; socket.create_connection(('127.0.0.1', {PROTECTED}))"),
        ]));
        assert!(out.status.success());
    }

    let out = run_ok(ns.cmd(SYSTEM_PYTHON).args([
        "-c",
        &format!("import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).status)"),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200", "urllib");

    let out = run_ok(ns.cmd("/bin/bash").args([
        "-c",
        &format!(
            r#"for i in 1 2 3; do
                exec 3<>/dev/tcp/127.0.0.1/{PROTECTED}
                printf 'GET / HTTP/1.0\r\n\r\n' >&3
                read -r line <&3
                echo "$line"
                exec 3<&-
            done"#
        ),
    ]));
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        lines.lines().filter(|l| l.contains(" 200 ")).count(),
        3,
        "bash /dev/tcp: {lines}"
    );

    let mut args = sshd.client_args();
    args.extend([
        "root@127.0.0.1".to_owned(),
        "echo".to_owned(),
        "ssh-ok".to_owned(),
    ]);
    let out = run_ok(ns.cmd("ssh").args(&args));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ssh-ok");

    for how in ["connected", "sendto"] {
        let out = run(ns.cmd(SYSTEM_PYTHON).args([
            "-c",
            DNS_THEN_CONNECT,
            REMOTE_ADDR,
            &PROTECTED.to_string(),
            how,
        ]));
        let f = Fields::of(&out);
        assert_eq!(&f["id"], "0x1234", "DNS ({how}) {f:?}");
        assert_eq!(&f["answers"], "1", "DNS ({how}) {f:?}");
        assert_eq!(&f["addr"], REMOTE_ADDR, "DNS ({how}) {f:?}");
        assert_eq!(&f["status"], "200", "DNS then connect ({how}) {f:?}");
    }
}

/// Direct clients under `[relay] action = "deny"` in `mode`: all succeed,
/// none is flagged. A socat relay afterwards is the marker: once its record
/// is in, any earlier client's would be too.
fn direct_clients_are_never_flagged(mode: &str) {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let _dns = dns_responder(&topo);
    let policy = Policy::new(&topo.local, mode)
        .catalog(false)
        .ports(&[PROTECTED, SSHD_PORT])
        .relay("deny");
    let daemon = Daemon::start(&policy.text());
    let sshd = Sshd::start(&topo.local, "127.0.0.1", SSHD_PORT);
    direct_clients(&topo, &sshd);

    let marker = Kind::Socat.start(&topo);
    let _ = marker.fetch(&topo);
    daemon.wait_event("the marker relay", |e| {
        e["rule"] == "relay" && marker.is_its(e)
    });
    // Refusals have a ring of their own: give the other one a moment too.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flagged: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| is_flagged(e) && !marker.is_its(e))
        .collect();
    assert!(
        flagged.is_empty(),
        "direct clients were flagged ({mode}): {flagged:#?}"
    );
}

#[test]
fn direct_clients_are_never_flagged_in_enforce_mode() {
    direct_clients_are_never_flagged("enforce");
}

#[test]
fn direct_clients_are_never_flagged_in_audit_mode() {
    direct_clients_are_never_flagged("audit");
}

#[test]
fn an_allow_rule_exempts_a_relay_from_the_relay_verdict() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let python = std::fs::canonicalize(SYSTEM_PYTHON).expect("resolving the system python");
    let python = python.to_str().expect("utf-8 path");
    let policy = Policy::new(&topo.local, "enforce")
        .catalog(false)
        .relay("deny")
        .extra(&rule("bridge", "allow", "exe", python));
    let daemon = Daemon::start(&policy.text());
    let relay = Kind::Forwarder.start(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200), "the exempted forwarder");

    // Not exempted: refused by the same policy.
    let marker = Kind::Socat.start(&topo);
    assert_ne!(marker.fetch(&topo), Ok(200));
    daemon.wait_event("the marker relay", |e| {
        e["verdict"] == "deny" && marker.is_its(e)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let refused: Vec<Value> = daemon
        .events()
        .into_iter()
        .filter(|e| relay.is_its(e) && (e["verdict"] == "deny" || e["rule"] == "relay"))
        .collect();
    assert!(refused.is_empty(), "the exempted forwarder: {refused:#?}");
}

/// Item 4: an interpreter's script is known from exec, shown in the
/// relay's events, and a rule can name it.
#[test]
fn a_script_rule_names_an_interpreted_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    // Relay detection off: only a rule can refuse the forwarder. A script
    // rule naming another file does not match it (the positive control).
    let other = rule("scripted", "deny", "script", "/nonexistent/other.py");
    let daemon = Daemon::start(
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("audit")
            .extra(&other)
            .text(),
    );
    let relay = forwarder(&topo);
    assert_eq!(relay.fetch(&topo), Ok(200));
    let ev = daemon.wait_event("the forwarder's relay audit", |e| {
        e["rule"] == "relay" && relay.is_its(e)
    });
    let script = ev["script"].as_str().unwrap_or_default().to_owned();
    assert!(script.ends_with("/forwarder.py"), "{ev:#}");
    // The next daemon adopts the pinned maps, and with them what the
    // kernel learnt at the forwarder's exec.
    let install = daemon.install().clone();
    drop(daemon);

    let named = rule("scripted", "deny", "script", &script);
    let daemon = Daemon::start_in(
        &install,
        &Policy::new(&topo.local, "enforce")
            .catalog(false)
            .relay("allow")
            .extra(&named)
            .text(),
        &[],
    );
    assert!(
        relay.fetch(&topo).is_err(),
        "a forwarder named by its script got through"
    );
    let ev = daemon.wait_event("the script rule's refusal", |e| {
        e["verdict"] == "deny" && relay.is_its(e)
    });
    assert_eq!(ev["rule"], "scripted", "{ev:#}");
    assert_eq!(ev["script"], script.as_str(), "{ev:#}");
}

/// A catalog entry marked `children` (VS Code's `code-tunnel`) also
/// matches what the tunnel runs: the kernel's lineage passes through fork
/// and exec. A plain shell running the same client is the control.
#[test]
fn a_catalogued_tunnels_children_are_matched_through_lineage() {
    let ns = Netns::new();
    let _servers = ns.http_servers();
    let dir = TempDir::new("lineage");
    let tunnel = dir.path().join("code-tunnel");
    std::fs::copy("/bin/bash", &tunnel).expect("copying bash");
    let tunnel = tunnel.to_str().expect("utf-8 temp dir").to_owned();
    let daemon = Daemon::start(&Policy::new(&ns, "enforce").relay("allow").text());
    let client = format!(
        "curl -sS -o /dev/null --max-time 5 -w %{{http_code}} http://127.0.0.1:{PROTECTED}/"
    );
    let plain = run(ns.cmd("/bin/bash").args(["-c", &client]));
    assert!(
        plain.status.success(),
        "a shell's curl was refused: {plain:?}"
    );
    let child = run(ns.cmd(&tunnel).args(["-c", &client]));
    assert!(
        !child.status.success(),
        "the tunnel's child curl got through"
    );
    let ev = daemon.wait_event("the child's refusal", |e| {
        e["verdict"] == "deny" && e["exe_name"] == "curl"
    });
    assert_eq!(ev["rule"], "catalog:code-tunnel", "{ev:#}");
}

/// Port the UDP tunnel client below is told about connections on.
const UDP_TUNNEL_PORT: u16 = 9010;

/// The tunnel clients' Python: `open_service()` connects to the service
/// (port `sys.argv[3]`), asks for `/` and prints `status N` or `error
/// ERRNO`.
macro_rules! open_service_py {
    () => {
        r#"
import os, socket, sys
def open_service():
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        print("status " + s.recv(64).split()[1].decode(), flush=True)
    except OSError as e:
        print("error " + str(e.errno), flush=True)
"#
    };
}

/// A UDP tunnel client in miniature (QUIC and WireGuard tunnels read their
/// unconnected socket with the source address): for each datagram from
/// its "server" it connects to the service and prints what happened.
const UDP_TUNNEL: &str = concat!(
    open_service_py!(),
    r#"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], int(sys.argv[2])))
while True:
    _, peer = u.recvfrom(512)
    open_service()
"#
);

/// The remote "server" tells the local UDP tunnel client about a
/// connection; returns what the client printed.
fn udp_open(topo: &Topology, client: &mut LineReader) -> String {
    run_ok(topo.remote.cmd(SYSTEM_PYTHON).args([
        "-c",
        "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'open', (sys.argv[1], int(sys.argv[2])))",
        LOCAL_ADDR,
        &UDP_TUNNEL_PORT.to_string(),
    ]));
    client.next_line()
}

/// A child's stdout, line by line.
struct LineReader {
    _proc: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LineReader {
    fn spawn(mut cmd: std::process::Command) -> Self {
        use std::io::BufRead as _;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the UDP tunnel client");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            _proc: child,
            lines,
        }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| "(no answer)".to_owned())
    }
}

impl Drop for LineReader {
    fn drop(&mut self) {
        let _ = self._proc.kill();
        let _ = self._proc.wait();
    }
}

/// UDP evidence: what a datagram from a non-local peer makes of the
/// process that reads it with its source (the recvmsg hooks).
#[test]
fn a_udp_tunnel_client_is_a_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    let start = || {
        let mut cmd = topo.local.cmd(SYSTEM_PYTHON);
        cmd.args([
            "-c",
            UDP_TUNNEL,
            LOCAL_ADDR,
            &UDP_TUNNEL_PORT.to_string(),
            &PROTECTED.to_string(),
        ]);
        let client = LineReader::spawn(cmd);
        topo.local.wait_udp_bound(UDP_TUNNEL_PORT);
        client
    };
    // Without loopwarden it reaches the service.
    {
        let mut client = start();
        assert_eq!(udp_open(&topo, &mut client), "status 200");
    }
    // Audit: the relay verdict names the UDP peer.
    {
        let policy = Policy::new(&topo.local, "audit").catalog(false);
        let daemon = Daemon::start(&policy.text());
        let mut client = start();
        assert_eq!(udp_open(&topo, &mut client), "status 200");
        let ev = daemon.wait_event("the UDP tunnel's relay audit", |e| e["rule"] == "relay");
        assert_eq!(ev["verdict"], "audit", "{ev:#}");
        assert_eq!(ev["via_how"], "received", "{ev:#}");
        assert!(
            ev["via"]
                .as_str()
                .is_some_and(|v| v.starts_with(&format!("{REMOTE_ADDR}:"))),
            "{ev:#}"
        );
    }
    // Enforce with relay deny: refused.
    let policy = Policy::new(&topo.local, "enforce")
        .catalog(false)
        .relay("deny");
    let daemon = Daemon::start(&policy.text());
    let mut client = start();
    assert_eq!(udp_open(&topo, &mut client), "error 111");
    let ev = daemon.wait_event("the UDP tunnel's refusal", |e| e["verdict"] == "deny");
    assert_eq!(ev["rule"], "relay", "{ev:#}");
}

/// Port of the remote end the splicing client below reads from.
const SPLICE_SERVER_PORT: u16 = 9012;

/// A tunnel client that moves what it receives with splice(2) (as Go's
/// `io.Copy` between two TCP connections does on Linux), so no byte of it
/// is copied to the process: it connects to its server, and for each
/// message spliced out of that connection connects to the service.
const SPLICE_TUNNEL: &str = concat!(
    open_service_py!(),
    r#"
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
r, w = os.pipe()
while True:
    n = os.splice(c.fileno(), w, 512)
    if n == 0:
        break
    os.read(r, n)
    open_service()
"#
);

/// The remote server: accepts the client, waits past the relay window (so
/// the client's `connected` evidence has expired), then sends one message.
const SPLICE_SERVER: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
c, _ = s.accept()
time.sleep(1.0)
c.sendall(b"open")
time.sleep(30)
"#;

/// The window of the splice test: well under the server's wait.
const SPLICE_WINDOW_MS: u64 = 300;

/// Starts the remote server and the splicing client; returns the client's
/// first line (what its connect to the service did) and the server.
fn splice_open(topo: &Topology) -> (String, Proc) {
    let port = SPLICE_SERVER_PORT.to_string();
    let server = topo
        .remote
        .spawn(SYSTEM_PYTHON, &["-c", SPLICE_SERVER, REMOTE_ADDR, &port]);
    topo.remote.wait_listening(SPLICE_SERVER_PORT);
    let mut cmd = topo.local.cmd(SYSTEM_PYTHON);
    cmd.args([
        "-c",
        SPLICE_TUNNEL,
        REMOTE_ADDR,
        &port,
        &PROTECTED.to_string(),
    ]);
    let client = LineReader::spawn(cmd);
    (client.next_line(), server)
}

/// Data received by splice(2) is `received` evidence like data read with
/// recv(): the relay verdict names the server it came from.
#[test]
fn a_tunnel_client_that_splices_what_it_receives_is_a_relay() {
    let topo = Topology::new();
    let _servers = topo.local.http_servers();
    // Without loopwarden it reaches the service.
    assert_eq!(splice_open(&topo).0, "status 200");
    // Audit: the relay verdict, from the data spliced out of the
    // connection (the connect to the server is older than the window).
    {
        let policy = Policy::new(&topo.local, "audit")
            .catalog(false)
            .window_ms(SPLICE_WINDOW_MS);
        let daemon = Daemon::start(&policy.text());
        let (line, _server) = splice_open(&topo);
        assert_eq!(line, "status 200");
        let ev = daemon.wait_event("the splicing client's relay audit", |e| {
            e["rule"] == "relay"
        });
        assert_eq!(ev["verdict"], "audit", "{ev:#}");
        assert_eq!(ev["via_how"], "received", "{ev:#}");
        assert_eq!(
            ev["via"],
            format!("{REMOTE_ADDR}:{SPLICE_SERVER_PORT}"),
            "{ev:#}"
        );
    }
    // Enforce with relay deny: refused.
    let policy = Policy::new(&topo.local, "enforce")
        .catalog(false)
        .relay("deny")
        .window_ms(SPLICE_WINDOW_MS);
    let daemon = Daemon::start(&policy.text());
    let (line, _server) = splice_open(&topo);
    assert_eq!(line, "error 111");
    let ev = daemon.wait_event("the splicing client's refusal", |e| e["verdict"] == "deny");
    assert_eq!(ev["rule"], "relay", "{ev:#}");
}
