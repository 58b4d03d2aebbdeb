//! Driving the helpers from the bench: starting them in a namespace,
//! reading their one-line results ([`Run`]), stopping them on drop.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{DATAGRAM_SIZE, Proto, STREAM_CHUNK};
use crate::{
    bench::netns::Netns,
    proc::{self, say},
};

/// A running `bench-server`, killed on drop.
pub struct Server {
    child: Child,
}

/// Where `bench-client` connects.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Loopback4,
    Loopback6,
    /// An address across the veth pair: an outbound connect.
    Addr(IpAddr),
}

impl Server {
    /// Listens on `ports` in `netns`: on the loopback addresses, or on
    /// `addr`; answering each connection's request with `respond`.
    pub fn start(
        netns: &Netns,
        xtask: &Path,
        ports: &[u16],
        addr: Option<IpAddr>,
        respond: bool,
    ) -> anyhow::Result<Self> {
        let mut cmd = netns.exec(xtask);
        cmd.arg("bench-server")
            .args(ports.iter().map(u16::to_string));
        if let Some(addr) = addr {
            cmd.arg("--addr").arg(addr.to_string());
        }
        if respond {
            cmd.arg("--respond");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        say!("starting listeners on {ports:?} in {}", netns.name());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", proc::display(&cmd)))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let server = Self { child };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading bench-server's output")?;
        if line.trim() != "listening" {
            bail!("bench-server did not start (said {:?})", line.trim());
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one load run measured: operations (connects, reads, spawns) and
/// bytes over the elapsed time.
#[derive(Clone, Copy)]
pub struct Run {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Run {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Bytes per second.
    pub fn byte_rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }

    /// Parses a helper's `ops=N bytes=B errors=E elapsed_ns=T` line.
    fn parse(helper: &str, out: &str) -> anyhow::Result<Self> {
        let field = |key: &str| -> anyhow::Result<u64> {
            out.split_whitespace()
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .with_context(|| format!("{helper} printed no {key}: {out:?}"))
        };
        Ok(Self {
            ops: field("ops")?,
            bytes: field("bytes")?,
            errors: field("errors")?,
            elapsed: Duration::from_nanos(field("elapsed_ns")?),
        })
    }
}

/// Runs `bench-client` inside `netns` against `port` at `to` for
/// `seconds`; with `request`, each connection carries a request and its
/// response (a server started with `respond`).
pub fn run_client(
    netns: &Netns,
    xtask: &Path,
    port: u16,
    to: Target,
    seconds: f64,
    request: bool,
) -> anyhow::Result<Run> {
    let mut cmd = netns.exec(xtask);
    cmd.args(["bench-client", "--port", &port.to_string(), "--seconds"])
        .arg(seconds.to_string());
    if request {
        cmd.arg("--request");
    }
    match to {
        Target::Loopback4 => {}
        Target::Loopback6 => {
            cmd.arg("--ipv6");
        }
        Target::Addr(addr) => {
            cmd.arg("--addr").arg(addr.to_string());
        }
    }
    Run::parse("bench-client", &proc::output(&mut cmd)?)
}

/// Runs `bench-client --alternate` inside `netns` on 127.0.0.1 for
/// `seconds`: windows of `window` seconds alternating between `port` and
/// `other`, each connection carrying a request with `request`. Returns
/// each whole pair's runs, `port`'s first.
pub fn run_alternating(
    netns: &Netns,
    xtask: &Path,
    [port, other]: [u16; 2],
    request: bool,
    seconds: f64,
    window: f64,
) -> anyhow::Result<Vec<[Run; 2]>> {
    let mut cmd = netns.exec(xtask);
    cmd.args(["bench-client", "--port", &port.to_string()])
        .args(["--alternate", &other.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .args(["--window", &window.to_string()]);
    if request {
        cmd.arg("--request");
    }
    windows_in_pairs(port, &proc::output(&mut cmd)?)
}

/// The `window port=P ...` lines of `bench-client --alternate`'s output
/// `out`, paired in order, `port`'s run first in each pair.
fn windows_in_pairs(port: u16, out: &str) -> anyhow::Result<Vec<[Run; 2]>> {
    let mut windows = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("window port=") else {
            continue;
        };
        let (p, fields) = rest
            .split_once(' ')
            .with_context(|| format!("bench-client printed a bad window line: {line:?}"))?;
        let p: u16 = p
            .parse()
            .with_context(|| format!("bench-client printed a bad port: {line:?}"))?;
        windows.push((p == port, Run::parse("bench-client", fields)?));
    }
    let pairs: Vec<[Run; 2]> = windows
        .chunks_exact(2)
        .filter_map(|pair| match pair {
            [(true, a), (false, b)] | [(false, b), (true, a)] => Some([*a, *b]),
            _ => None,
        })
        .collect();
    if pairs.len() * 2 != windows.len() {
        bail!("bench-client's windows do not alternate between the two ports: {out:?}");
    }
    Ok(pairs)
}

/// Runs the timed loop `helper` (`bench-spawn`, `bench-getsockopt`,
/// `bench-bind`) inside `netns` for `seconds`, with `extra` arguments.
pub fn run_timed(
    netns: &Netns,
    xtask: &Path,
    helper: &str,
    seconds: f64,
    extra: &[&str],
) -> anyhow::Result<Run> {
    Run::parse(
        helper,
        &proc::output(
            netns
                .exec(xtask)
                .args([helper, "--seconds"])
                .arg(seconds.to_string())
                .args(extra),
        )?,
    )
}

/// Runs `bench-receive` on `listen` inside `receiver` and `bench-send` to it
/// from `sender`, for `seconds` of receiving.
pub fn run_receive(
    receiver: &Netns,
    sender: &Netns,
    xtask: &Path,
    proto: Proto,
    listen: SocketAddr,
    seconds: f64,
) -> anyhow::Result<Run> {
    let mut cmd = receiver.exec(xtask);
    cmd.args(["bench-receive", "--proto", proto.as_str(), "--listen"])
        .arg(listen.to_string())
        .arg("--seconds")
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut receive = Helper::spawn(&mut cmd)?;
    let mut stdout = BufReader::new(receive.stdout()?);
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .context("reading bench-receive's output")?;
    if line.trim() != "listening" {
        bail!("bench-receive did not start (said {:?})", line.trim());
    }
    let size = match proto {
        Proto::Tcp => STREAM_CHUNK,
        Proto::Udp => DATAGRAM_SIZE,
    };
    let _send = Helper::spawn(
        sender
            .exec(xtask)
            .args(["bench-send", "--proto", proto.as_str(), "--to"])
            .arg(listen.to_string())
            .args(["--size", &size.to_string(), "--seconds"])
            .arg((seconds + 10.0).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )?;
    // The receiver stops by itself after `seconds` of data, or a stall.
    let mut out = String::new();
    stdout
        .read_to_string(&mut out)
        .context("reading bench-receive's output")?;
    let status = receive.wait()?;
    if !status.success() {
        bail!("bench-receive failed ({status}) on {proto:?} {listen}");
    }
    Run::parse("bench-receive", &out)
}

/// A helper process, killed on drop unless waited for.
struct Helper {
    child: Option<Child>,
}

impl Helper {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", proc::display(cmd)))?;
        Ok(Self { child: Some(child) })
    }

    fn stdout(&mut self) -> anyhow::Result<ChildStdout> {
        self.child
            .as_mut()
            .and_then(|child| child.stdout.take())
            .context("the helper's stdout is not piped")
    }

    fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("the helper was already waited for")?;
        Ok(child.wait()?)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::windows_in_pairs;

    #[test]
    fn windows_pair_up_whichever_port_ran_first() {
        let out = "window port=1 ops=10 bytes=0 errors=0 elapsed_ns=100\n\
                   window port=2 ops=20 bytes=0 errors=1 elapsed_ns=100\n\
                   window port=2 ops=30 bytes=0 errors=0 elapsed_ns=100\n\
                   window port=1 ops=40 bytes=0 errors=0 elapsed_ns=100\n\
                   ops=100 bytes=0 errors=1 elapsed_ns=400\n";
        let pairs = windows_in_pairs(1, out).unwrap();
        let ops: Vec<[u64; 2]> = pairs.iter().map(|[a, b]| [a.ops, b.ops]).collect();
        assert_eq!(ops, [[10, 20], [40, 30]]);
        assert_eq!(pairs[0][1].errors, 1);
    }

    #[test]
    fn windows_that_do_not_alternate_are_an_error() {
        let out = "window port=1 ops=10 bytes=0 errors=0 elapsed_ns=100\n\
                   window port=1 ops=20 bytes=0 errors=0 elapsed_ns=100\n";
        assert!(windows_in_pairs(1, out).is_err());
        assert!(windows_in_pairs(1, "window port=x ops=1\n").is_err());
    }
}
