//! The client against a fake query socket: a `UnixListener` that records
//! each request line and answers from a script.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
};

use serde_json::{Value, json};

use super::{Error, Query, is_direct};

/// A fake daemon serving clients one after another; the socket file goes
/// on drop.
struct Fake {
    path: PathBuf,
    server: Option<JoinHandle<Vec<Value>>>,
}

/// Prefixes of a fake's scripted lines: written without waiting for a
/// request, then the connection closed (the daemon's idle close); written
/// after [`LATE`] (a slow answer).
const NOTICE: &str = "notice:";
const LATE: &str = "late:";
/// Prefix of a scripted answer written a byte at a time, [`DRIP`] apart.
const DRIPPED: &str = "dripped:";
const DRIP: std::time::Duration = std::time::Duration::from_millis(30);
/// Prefix of a scripted answer of which only what follows is written, with
/// no newline, before the connection is closed (the daemon closing the
/// client idle longest as its answer is written).
const CUT: &str = "cut:";
/// As [`CUT`], the part followed by the first byte of a two-byte character
/// (the close cutting inside it).
const CUT_IN_CHAR: &str = "cutchar:";
/// A scripted line that closes the connection, after a while, without
/// reading the request (a close with it unread: the client's read is
/// reset).
const RESET: &str = "reset";
const SLOW: std::time::Duration = std::time::Duration::from_millis(300);

impl Fake {
    /// Answers the i-th request with `answers[i]` (`{id}` replaced by the
    /// request's id), then closes.
    fn new(answers: &[&str]) -> Self {
        Self::connections(&[answers])
    }

    /// Serves one client per entry of `scripts`, each as [`Fake::new`]
    /// would (or as a line's prefix says: [`NOTICE`], [`LATE`]).
    fn connections(scripts: &[&[&str]]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "lw-client-test-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let scripts: Vec<Vec<String>> = scripts
            .iter()
            .map(|script| script.iter().map(|&a| a.to_owned()).collect())
            .collect();
        let server = thread::spawn(move || {
            let mut seen = Vec::new();
            for script in scripts {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                for answer in script {
                    if answer == RESET {
                        thread::sleep(SLOW);
                        break;
                    }
                    if let Some(notice) = answer.strip_prefix(NOTICE) {
                        writer.write_all(notice.as_bytes()).unwrap();
                        writer.write_all(b"\n").unwrap();
                        break;
                    }
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        break;
                    }
                    let req: Value = serde_json::from_str(&line).unwrap();
                    let answer = match answer.strip_prefix(LATE) {
                        Some(late) => {
                            thread::sleep(SLOW);
                            late.to_owned()
                        }
                        None => answer,
                    };
                    let answer = answer.replace("{id}", &req["id"].to_string());
                    seen.push(req);
                    if let Some(part) = answer.strip_prefix(CUT) {
                        let _ = writer.write_all(part.as_bytes());
                        break;
                    }
                    if let Some(part) = answer.strip_prefix(CUT_IN_CHAR) {
                        let _ = writer.write_all(part.as_bytes());
                        let _ = writer.write_all(&[0xc3]);
                        break;
                    }
                    if let Some(dripped) = answer.strip_prefix(DRIPPED) {
                        for byte in dripped.bytes().chain([b'\n']) {
                            thread::sleep(DRIP);
                            if writer.write_all(&[byte]).is_err() {
                                break;
                            }
                        }
                        continue;
                    }
                    // The client may have given up on a late answer.
                    let _ = writer.write_all(answer.as_bytes());
                    let _ = writer.write_all(b"\n");
                }
            }
            seen
        });
        Fake {
            path,
            server: Some(server),
        }
    }

    fn connect(&self) -> Query {
        Query::connect(&self.path).unwrap()
    }

    /// The requests the fake received.
    fn requests(mut self) -> Vec<Value> {
        self.server.take().unwrap().join().unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const ORIGIN: &str = r#"{"v":1,"ok":true,"id":{id},"origin":{"pid":4242,"comm":"socat","user":"alice","verdict":"would-deny","via":"10.77.0.2:5555","via_how":"accepted","alive":true}}"#;

#[test]
fn who_sends_both_ends_and_returns_the_origin() {
    let fake = Fake::new(&[ORIGIN, ORIGIN]);
    let mut q = fake.connect();
    let peer = "127.0.0.1:53422".parse().unwrap();
    let local = "[::1]:8080".parse().unwrap();
    let origin = q.who(peer, local).unwrap().expect("an origin");
    assert_eq!(origin["pid"], 4242);
    assert_eq!(origin["user"], "alice");
    assert!(!is_direct(&origin));
    // A second request on the same connection gets a new id.
    assert!(q.who(peer, local).unwrap().is_some());
    drop(q);
    let reqs = fake.requests();
    assert_eq!(
        reqs[0],
        json!({"op": "who", "peer": "127.0.0.1:53422", "local": "[::1]:8080", "id": 1})
    );
    assert_eq!(reqs[1]["id"], 2);
}

#[test]
fn who_cookie_sends_the_cookie() {
    let fake = Fake::new(&[r#"{"v":1,"ok":true,"id":{id},"origin":{"pid":7,"verdict":"allow"}}"#]);
    let origin = fake.connect().who_cookie(4711).unwrap().unwrap();
    assert!(is_direct(&origin));
    assert_eq!(
        fake.requests()[0],
        json!({"op": "who", "cookie": 4711, "id": 1})
    );
}

#[test]
fn unknown_is_none() {
    let fake = Fake::new(&[
        r#"{"v":1,"ok":false,"id":{id},"error":"unknown","message":"no such connection"}"#,
    ]);
    let peer = "127.0.0.1:1".parse().unwrap();
    assert_eq!(fake.connect().who(peer, peer).unwrap(), None);
}

#[test]
fn conns_lists() {
    let fake = Fake::new(&[r#"{"v":1,"ok":true,"id":{id},"conns":[{"pid":1},{"pid":2}]}"#]);
    let conns = fake.connect().conns().unwrap();
    assert_eq!(conns, vec![json!({"pid": 1}), json!({"pid": 2})]);
    assert_eq!(fake.requests()[0]["op"], "conns");
}

#[test]
fn errors_are_told_apart() {
    let fake = Fake::new(&[
        r#"{"v":1,"ok":false,"error":"forbidden","message":"only root may ask about another network namespace"}"#,
        r#"{"v":1,"ok":false,"error":"bad-request","message":"no op"}"#,
        r#"{"v":1,"ok":false,"id":{id},"error":"timeout","message":"a request takes 10 s at most"}"#,
    ]);
    let mut q = fake.connect();
    match q.who_cookie(1) {
        Err(e @ Error::Forbidden { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("forbidden") && text.contains("another network namespace"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    match q.conns() {
        Err(Error::Refused { code, message }) => {
            assert_eq!((code.as_str(), message.as_str()), ("bad-request", "no op"));
        }
        other => panic!("{other:?}"),
    }
    match q.who_cookie(1) {
        Err(e @ Error::Timeout { .. }) => assert!(e.to_string().contains("10 s"), "{e}"),
        other => panic!("{other:?}"),
    }
    // The fake has closed (waited for: a listener not yet dropped would
    // take the new connection and then close it, which is `Closed`), and
    // takes no new connection: the next request finds the end of the
    // stream (or a broken pipe), tries a new connection, and says it
    // cannot connect.
    assert_eq!(fake.requests().len(), 3);
    match q.conns() {
        Err(Error::Connect { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A fake that answers one request (pid 7), then sends the daemon's idle
/// close notice and closes, then answers the next connection's request.
fn idle_closing() -> Fake {
    let ok = r#"{"v":1,"ok":true,"id":{id},"origin":{"pid":7,"verdict":"allow"}}"#;
    let idle_close = format!(
        r#"{NOTICE}{{"v":1,"ok":false,"error":"timeout","message":"no request within 10 s"}}"#
    );
    Fake::connections(&[&[ok, &idle_close], &[ok]])
}

#[test]
fn a_connection_the_daemon_closed_idle_is_replaced_and_the_request_asked_again() {
    let fake = idle_closing();
    let mut q = fake.connect();
    assert_eq!(q.who_cookie(1).unwrap().unwrap()["pid"], 7);
    // The fake sends its idle close's notice and closes as the second
    // request is sent (or before): it is asked again on a new connection.
    assert_eq!(q.who_cookie(2).unwrap().unwrap()["pid"], 7);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1]["cookie"], 2);
}

/// The daemon closes the connection with the request unread in it (an
/// idle close at the moment the request was written, or its exit): the
/// client's read is reset, and the request is asked again on a new
/// connection, as for any close.
#[test]
fn a_request_the_daemon_closed_unread_is_asked_again() {
    let ok = r#"{"v":1,"ok":true,"id":{id},"origin":{"pid":7,"verdict":"allow"}}"#;
    let fake = Fake::connections(&[&[RESET], &[ok]]);
    let mut q = fake.connect();
    assert_eq!(q.who_cookie(3).unwrap().unwrap()["pid"], 7);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0]["cookie"], 3);
}

/// The daemon closes the connection as it writes the answer (the client
/// idle longest makes room for a new one once its answer is made): the
/// part that came is no answer, and the request is asked again on a new
/// connection, as for any close, not taken for a malformed answer.
#[test]
fn an_answer_cut_short_by_a_close_is_asked_again() {
    let ok = r#"{"v":1,"ok":true,"id":{id},"origin":{"pid":7,"verdict":"allow"}}"#;
    let cut = r#"cut:{"v":1,"ok":true,"id":{id},"origin":{"pid":7,"#;
    // Cut inside a character (the first byte of "é"'s two).
    let cut_in_char = r#"cutchar:{"v":1,"ok":true,"id":{id},"origin":{"cmdline":"caf"#;
    for cut in [cut, cut_in_char] {
        let fake = Fake::connections(&[&[cut], &[ok]]);
        let mut q = fake.connect();
        assert_eq!(q.who_cookie(4).unwrap().unwrap()["pid"], 7, "{cut}");
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert_eq!(reqs[1]["cookie"], 4);
    }
}

/// A new connection the daemon refuses (its uid holds as many as one uid
/// may) is told `busy` and closed before the client writes: the write
/// finds the connection closed, and the client still reads the notice and
/// says `busy`, not that the daemon closed the connection.
#[test]
fn a_notice_before_the_close_is_read_though_the_send_fails() {
    let busy = format!(
        r#"{NOTICE}{{"v":1,"ok":false,"error":"busy","message":"uid 1000 holds 16 clients"}}"#
    );
    // One connection: a client that took the failed send for a close and
    // asked again on a new one would find no daemon.
    let fake = Fake::connections(&[&[&busy]]);
    let mut q = fake.connect();
    // Closed by the fake before the request is written.
    thread::sleep(SLOW);
    match q.who_cookie(1) {
        Err(Error::Refused { code, message }) => {
            assert_eq!(code, "busy");
            assert!(message.contains("16 clients"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(fake.requests().is_empty());
}

/// The timeout bounds the whole request: an answer that comes a byte at
/// a time, each well within it, is given up on once the timeout has
/// passed since the request began (each read waited the full timeout
/// anew, and a daemon answering that slowly held the caller for as long
/// as it kept sending).
/// Fails unless `answer` is the error of a request whose timeout passed.
fn assert_timed_out(answer: Result<Option<Value>, Error>) {
    match answer {
        Err(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_answer_that_trickles_in_is_given_up_on_at_the_timeout() {
    let dripped = format!(r#"{DRIPPED}{{"v":1,"ok":true,"id":{{id}},"origin":{{"pid":1}}}}"#);
    let fake = Fake::new(&[&dripped]);
    let mut q = fake.connect();
    // The answer takes about 45 bytes * 30 ms = 1.4 s; every byte comes
    // 30 ms after the one before, ten times sooner than the timeout.
    q.set_timeout(Some(DRIP * 10)).unwrap();
    assert_timed_out(q.who_cookie(1));
}

#[test]
fn a_late_answer_is_never_taken_for_the_next_requests() {
    let late = format!(r#"{LATE}{{"v":1,"ok":true,"id":{{id}},"origin":{{"pid":1}}}}"#);
    let ok = r#"{"v":1,"ok":true,"id":{id},"origin":{"pid":2}}"#;
    let fake = Fake::connections(&[&[&late, ok], &[ok]]);
    let mut q = fake.connect();
    q.set_timeout(Some(SLOW / 3)).unwrap();
    assert_timed_out(q.who_cookie(1));
    q.set_timeout(Some(SLOW * 10)).unwrap();
    // On the first connection the late answer would be read now, and
    // refused for its id; on a new one, this request's is.
    assert_eq!(q.who_cookie(2).unwrap().unwrap()["pid"], 2);
}

#[test]
fn malformed_answers_are_protocol_errors() {
    // Each on a connection of its own: after an answer that is not one,
    // the client starts a new connection.
    let fake = Fake::connections(&[
        &["not json"],
        &[r#"{"v":2,"ok":true,"id":{id},"origin":{}}"#],
        &[r#"{"v":1,"ok":true,"id":99,"origin":{}}"#],
        &[r#"{"v":1,"ok":true,"id":{id}}"#],
    ]);
    let mut q = fake.connect();
    for want in [
        "not json",
        "protocol version 2",
        "answer to request 99",
        "no `origin`",
    ] {
        match q.who_cookie(1) {
            Err(e @ Error::Protocol(_)) => assert!(e.to_string().contains(want), "{e}"),
            other => panic!("wanted {want:?}: {other:?}"),
        }
    }
}

#[test]
fn a_missing_socket_says_where_and_why() {
    let path = std::env::temp_dir().join("lw-client-test-no-such.sock");
    match Query::connect(&path) {
        Err(e @ Error::Connect { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains("[provenance] query"), "{text}");
        }
        other => panic!("{other:?}"),
    }
}

/// A timeout too long to add to the clock waits without end, as `None`
/// does, instead of panicking at the next connect.
#[test]
fn the_longest_timeout_is_no_panic() {
    let fake = idle_closing();
    let mut q = fake.connect();
    q.set_timeout(Some(std::time::Duration::MAX)).unwrap();
    assert_eq!(q.who_cookie(1).unwrap().unwrap()["pid"], 7);
    // Asked again on a new connection, connected with that timeout.
    assert_eq!(q.who_cookie(2).unwrap().unwrap()["pid"], 7);
}

#[test]
fn a_zero_timeout_is_refused_and_the_one_before_stays() {
    let fake = idle_closing();
    let mut q = fake.connect();
    assert_eq!(q.who_cookie(1).unwrap().unwrap()["pid"], 7);
    match q.set_timeout(Some(std::time::Duration::ZERO)) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}"),
        other => panic!("{other:?}"),
    }
    // Asked again on a new connection, which takes the timeout before.
    assert_eq!(q.who_cookie(2).unwrap().unwrap()["pid"], 7);
}

/// A request written to a connection the daemon has closed fails with
/// `BrokenPipe` and raises no `SIGPIPE`, which would kill a process that
/// keeps the signal's default action (Rust's runtime ignores it, so the
/// send runs in a forked child that restores the default).
#[test]
fn a_closed_connection_raises_no_sigpipe() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(theirs);
    // SAFETY: the child makes only async-signal-safe calls (signal, send,
    // _exit) before it exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let broken = matches!(
                super::send_all(&ours, b"{}\n"),
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe
            );
            libc::_exit(if broken { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's send: wait status {status:#x} (signal {})",
        libc::WTERMSIG(status)
    );
}

/// A daemon whose backlog is full (stopped, or its accept loop stalled)
/// makes the connect fail after the timeout instead of waiting without
/// end.
#[test]
fn a_connect_to_a_full_backlog_gives_up_at_the_timeout() {
    use std::os::fd::AsRawFd as _;
    let path =
        std::env::temp_dir().join(format!("lw-client-test-full-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    // SAFETY: the listener's own descriptor: one pending connection fills it.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let _pending = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let timeout = std::time::Duration::from_millis(200);
    let began = std::time::Instant::now();
    let result = super::connect_within(&path, began + timeout);
    let took = began.elapsed();
    match result {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        Ok(_) => panic!("connected to a full backlog"),
    }
    assert!(took >= timeout, "gave up after {took:?}");
    // Positive control: once the daemon has accepted, there is room.
    let _accepted = listener.accept().unwrap();
    let connected = super::connect_within(&path, std::time::Instant::now() + timeout);
    let _ = std::fs::remove_file(&path);
    connected.expect("a connect with room in the backlog");
}
