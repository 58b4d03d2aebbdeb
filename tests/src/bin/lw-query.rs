//! `lw-query SOCKET PEER LOCAL COOKIE UNKNOWN_PEER UNKNOWN_LOCAL`: asks the
//! query socket through `loopwarden-client`'s [`Query`], on one connection,
//! `who` by the two ends, `who` by cookie, `conns`, and `who` of a
//! connection loopwarden does not know, and prints the answers as one JSON
//! object, shaped like the Python client's in `tests/tests/client.rs`.

use std::net::SocketAddr;

use loopwarden_client::query::Query;
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, peer, local, cookie, unknown_peer, unknown_local] = &args[..] else {
        eprintln!("usage: lw-query SOCKET PEER LOCAL COOKIE UNKNOWN_PEER UNKNOWN_LOCAL");
        std::process::exit(2);
    };
    let addr = |s: &str| -> SocketAddr { s.parse().expect("ADDR:PORT") };
    let mut query = Query::connect(socket).expect("connecting to the query socket");
    let answer = json!({
        "who": query.who(addr(peer), addr(local)).expect("who"),
        "who_cookie": query.who_cookie(cookie.parse().expect("a cookie")).expect("who_cookie"),
        "conns": Value::Array(query.conns().expect("conns")),
        "unknown": query.who(addr(unknown_peer), addr(unknown_local)).expect("who (unknown)"),
    });
    println!("{answer}");
}
