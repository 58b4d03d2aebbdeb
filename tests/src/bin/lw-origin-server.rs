//! `lw-origin-server ADDR:PORT`: an HTTP server that tells each client what
//! loopwarden says of its connection, through `loopwarden-client`, for the
//! client tests (`tests/tests/client.rs`).
//!
//! Per accepted connection it asks [`loopwarden_client::origin`], prints
//! one JSON line to stdout (`{"origin": {...}}`, `{"origin": null}` for
//! unknown, or `{"error": "..."}`) and sends the same line back as the body
//! of an HTTP 200, so `curl` shows it too. The JSON is shaped like the
//! Python test server's (`tests/src/client.rs`).

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use loopwarden_client::{Origin, Rule, origin};
use serde_json::{Value, json};

fn describe(o: &Origin) -> Value {
    json!({
        "pid": o.pid,
        "tid": o.tid,
        "ppid": o.ppid,
        "forked": o.forked,
        "uid": o.uid,
        "gid": o.gid,
        "comm": o.comm,
        "exe_name": o.exe_name,
        "exe": o.exe.to_string(),
        "start_boottime_ns": u64::try_from(o.start_boottime.as_nanos()).unwrap_or(u64::MAX),
        "script": o.script,
        "verdict": o.verdict.name(),
        "rule": match o.rule {
            None => Value::Null,
            Some(Rule::Relay) => json!("relay"),
            Some(Rule::Index(i)) => json!(i),
        },
        "via": o.via.map(|v| v.addr.to_string()),
        "via_how": o.via.map(|v| v.how.name()),
        "client": o.client.to_string(),
        "server": o.server.to_string(),
        "direct": o.is_direct(),
    })
}

fn serve(stream: TcpStream) -> io::Result<()> {
    let line = match origin(&stream) {
        Ok(Some(o)) => json!({ "origin": describe(&o) }),
        Ok(None) => json!({ "origin": null }),
        Err(e) => json!({ "error": e.to_string() }),
    }
    .to_string();
    println!("{line}");
    // Read the request head (to its blank line) so closing does not reset
    // the connection under the client's feet.
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut head = String::new();
    while reader.read_line(&mut head)? > 0 && !head.ends_with("\r\n\r\n") {}
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{line}\n",
        line.len() + 1
    )
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen] = args.as_slice() else {
        eprintln!("usage: lw-origin-server LISTEN_ADDR:PORT");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen)?;
    for stream in listener.incoming() {
        let stream = stream?;
        thread::spawn(move || serve(stream));
    }
    Ok(())
}
