//! The relays under test ([`Kind`]): how each is started between the two
//! namespaces ([`Relay`]) and what `via` should show for its connect.

use super::*;

/// The relays under test.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
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
    /// HAProxy in TCP mode on the local link address, one thread per CPU
    /// (its default).
    HaProxy,
    /// Caddy's reverse proxy (Go: goroutines over a few threads) on the
    /// local link address.
    Caddy,
}

pub(crate) const ALL: [Kind; 9] = [
    Kind::Socat,
    Kind::Nginx,
    Kind::SshL,
    Kind::SshR,
    Kind::Bore,
    Kind::Forwarder,
    Kind::Inetd,
    Kind::HaProxy,
    Kind::Caddy,
];

/// What `via` should show for a relay's connect.
pub(crate) struct Via {
    pub(crate) host: &'static str,
    pub(crate) port: Option<u16>,
    pub(crate) how: &'static [&'static str],
}

impl Kind {
    /// The rule that refuses it under the catalog and relay deny: the
    /// catalog's deny entry for its executable, else (no entry, or an
    /// audit one: the reverse proxies) the relay verdict.
    pub(crate) fn refused_by(self) -> &'static str {
        match self {
            Kind::Socat | Kind::Inetd => "catalog:socat",
            Kind::SshL => "catalog:sshd",
            Kind::SshR => "catalog:ssh",
            Kind::Bore => "catalog:bore",
            Kind::Nginx | Kind::Caddy | Kind::HaProxy | Kind::Forwarder => "relay",
        }
    }

    /// The remote party the kernel saw and how.
    pub(crate) fn expected_via(self) -> Via {
        let (port, how): (Option<u16>, &'static [&'static str]) = match self {
            // Connects right after accept, before reading.
            Kind::Socat | Kind::Forwarder => (None, &["accepted"]),
            // Sets its connect up as soon as it accepts, but often reads
            // the request (sent right behind the handshake) first: the
            // same remote client either way (each in about half the runs).
            Kind::HaProxy => (None, &["accepted", "received"]),
            // Reads the request first.
            Kind::Nginx | Kind::Caddy => (None, &["received"]),
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

    pub(crate) fn start(self, topo: &Topology) -> Relay {
        match self {
            Kind::Socat => socat(topo),
            Kind::Nginx => nginx(topo),
            Kind::SshL => ssh_local_forward(topo),
            Kind::SshR => ssh_remote_forward(topo),
            Kind::Bore => bore(topo, &bore_bin()),
            Kind::Forwarder => forwarder(topo),
            Kind::Inetd => inetd(topo),
            Kind::HaProxy => haproxy(topo),
            Kind::Caddy => caddy(topo),
        }
    }
}

/// A running relay and everything it needs; dropped together.
pub(crate) struct Relay {
    /// Processes, sshds, temp dirs: dropped in order.
    _parts: Vec<Box<dyn std::any::Any>>,
    /// The URL the remote namespace fetches through the relay.
    url: String,
    /// `exe_name` of the process whose connect reaches the service.
    exe_name: String,
}

impl Relay {
    /// A remote client's request through the relay.
    pub(crate) fn fetch(&self, topo: &Topology) -> Result<u16, i32> {
        topo.remote.curl(&self.url)
    }

    pub(crate) fn is_its(&self, e: &Value) -> bool {
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
pub(crate) fn bore(topo: &Topology, program: &Path) -> Relay {
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

/// HAProxy in TCP mode (it forwards bytes, parsing no HTTP), in the
/// foreground (`-db`), with as many threads as CPUs (its default).
fn haproxy(topo: &Topology) -> Relay {
    let dir = TempDir::new("haproxy");
    let conf = dir.path().join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
             timeout server 30s\n\
             frontend relay\n    bind {LOCAL_ADDR}:{HAPROXY_PORT}\n    default_backend service\n\
             backend service\n    server s {}\n",
            service()
        ),
    )
    .expect("haproxy.cfg");
    let proc = topo.local.spawn(
        "/usr/sbin/haproxy",
        &["-db", "-f", conf.to_str().expect("utf-8 path")],
    );
    topo.local.wait_listening(HAPROXY_PORT);
    Relay {
        _parts: vec![Box::new(proc), Box::new(dir)],
        url: format!("http://{LOCAL_ADDR}:{HAPROXY_PORT}/"),
        exe_name: exe_name(Path::new("/usr/sbin/haproxy")),
    }
}

/// Caddy (`caddy run`) with a Caddyfile that reverse-proxies plain HTTP on
/// the local link address to the service: no admin endpoint, no automatic
/// HTTPS, its data and autosaved config in a temporary directory.
fn caddy(topo: &Topology) -> Relay {
    let dir = TempDir::new("caddy");
    let home = dir.path().to_str().expect("utf-8 path");
    let conf = dir.path().join("Caddyfile");
    std::fs::write(
        &conf,
        format!(
            "{{\n    admin off\n    auto_https off\n}}\n\
             http://{LOCAL_ADDR}:{CADDY_PORT} {{\n    bind {LOCAL_ADDR}\n    \
             reverse_proxy {}\n}}\n",
            service()
        ),
    )
    .expect("Caddyfile");
    let proc = Proc::spawn(
        topo.local
            .cmd("/usr/bin/caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf)
            .env("HOME", home)
            .env("XDG_DATA_HOME", home)
            .env("XDG_CONFIG_HOME", home),
    );
    topo.local.wait_listening(CADDY_PORT);
    Relay {
        _parts: vec![Box::new(proc), Box::new(dir)],
        url: format!("http://{LOCAL_ADDR}:{CADDY_PORT}/"),
        exe_name: exe_name(Path::new("/usr/bin/caddy")),
    }
}

/// A threaded forwarder without any catalogued name: per connection it
/// connects to the service before reading, then pumps both ways.
pub(crate) fn forwarder(topo: &Topology) -> Relay {
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
    let proc = spawn_inetd(&topo.local, LOCAL_ADDR, INETD_PORT);
    Relay {
        _parts: vec![Box::new(proc)],
        url: format!("http://{LOCAL_ADDR}:{INETD_PORT}/"),
        exe_name: exe_name(Path::new("/usr/bin/socat")),
    }
}

/// An inetd-style server in `ns` on `addr`:`port`: socat forks per
/// connection and execs a second socat, with the accepted socket as its
/// stdin and stdout, that carries it to the protected service.
pub(crate) fn spawn_inetd(ns: &Netns, addr: &str, port: u16) -> Proc {
    let proc = ns.spawn(
        "socat",
        &[
            &format!("TCP-LISTEN:{port},bind={addr},fork,reuseaddr"),
            // Colons inside the command are escaped from socat's parser.
            &format!(
                "EXEC:socat STDIO {},nofork",
                format!("TCP:{}", service()).replace(':', "\\:")
            ),
        ],
    );
    ns.wait_listening(port);
    proc
}

/// socat on the local link's IPv6 address.
pub(crate) fn socat6(topo: &Topology) -> Relay {
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
