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

/// A fake daemon serving one client; the socket file goes on drop.
struct Fake {
    path: PathBuf,
    server: Option<JoinHandle<Vec<Value>>>,
}

impl Fake {
    /// Answers the i-th request with `answers[i]` (`{id}` replaced by the
    /// request's id), then closes.
    fn new(answers: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "lw-client-test-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let answers: Vec<String> = answers.iter().map(|&a| a.to_owned()).collect();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let mut seen = Vec::new();
            for answer in answers {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                let req: Value = serde_json::from_str(&line).unwrap();
                let answer = answer.replace("{id}", &req["id"].to_string());
                seen.push(req);
                writer.write_all(answer.as_bytes()).unwrap();
                writer.write_all(b"\n").unwrap();
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
        r#"{"v":1,"ok":false,"error":"forbidden","message":"the socket is uid 33's"}"#,
        r#"{"v":1,"ok":false,"error":"bad-request","message":"no op"}"#,
        r#"{"v":1,"ok":false,"error":"timeout","message":"silent for 10 s"}"#,
    ]);
    let mut q = fake.connect();
    match q.who_cookie(1) {
        Err(e @ Error::Forbidden { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("forbidden") && text.contains("uid 33's"),
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
        Err(e @ Error::Timeout { .. }) => assert!(e.to_string().contains("connect again"), "{e}"),
        other => panic!("{other:?}"),
    }
    // The fake has closed: the next request finds the end of the stream
    // (or a broken pipe, if the write comes after the close is seen).
    match q.conns() {
        Err(Error::Closed | Error::Io(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_answers_are_protocol_errors() {
    let fake = Fake::new(&[
        "not json",
        r#"{"v":2,"ok":true,"id":{id},"origin":{}}"#,
        r#"{"v":1,"ok":true,"id":99,"origin":{}}"#,
        r#"{"v":1,"ok":true,"id":{id}}"#,
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
