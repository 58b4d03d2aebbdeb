//! Decoding hand-built records: known, unknown, damaged and short.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use loopwarden_common::{
    Addr, NO_RULE, RELAY_RULE, evidence,
    origin::{MAGIC, OriginRecord, VERSION, status},
    verdict,
};

use super::{Error, How, Rule, Verdict, decode, origin};

fn key(ip: IpAddr) -> Addr {
    Addr::from_ip(ip)
}

fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out[..s.len()].copy_from_slice(s);
    out
}

/// socat (pid 4242, forked from 4200) relaying 10.77.0.2:5555's
/// connection to 127.0.0.1:8080, accepted 3 ms before its connect.
fn relayed() -> OriginRecord {
    let mut r = OriginRecord::unknown();
    r.status = status::KNOWN;
    r.server_uid = 33;
    r.established_ns = 5_000_100_000;
    r.server_cookie = 77;
    r.conn.netns = 4_026_531_840;
    r.conn.client_port = 53_422;
    r.conn.server_port = 8080;
    r.conn.client = key("127.0.0.1".parse().unwrap());
    r.conn.server = key("127.0.0.1".parse().unwrap());
    let o = &mut r.origin;
    o.ktime_ns = 5_000_000_000;
    o.socket_cookie = 76;
    o.start_boottime_ns = 1_000;
    o.cgroup_id = 9;
    o.tgid = 4242;
    o.pid = 4243;
    o.ppid = 4200;
    o.forked = 1;
    o.uid = 1000;
    o.gid = 100;
    o.dport = 8080;
    o.family = 2;
    o.verdict = verdict::AUDIT;
    o.rule = RELAY_RULE;
    o.comm = fixed(b"socat");
    o.exe_name = fixed(b"socat");
    o.exe.dev = (259 << 20) | 3;
    o.exe.ino = 1_234_567;
    o.via.addr = key("10.77.0.2".parse().unwrap());
    o.via.port = 5555;
    o.via.kind = evidence::ACCEPTED;
    o.via.ktime_ns = 4_997_000_000;
    r
}

fn bytes(r: &OriginRecord) -> Vec<u8> {
    // SAFETY: OriginRecord is #[repr(C)] integers without implicit padding.
    unsafe {
        std::slice::from_raw_parts(
            (r as *const OriginRecord).cast::<u8>(),
            size_of::<OriginRecord>(),
        )
    }
    .to_vec()
}

#[test]
fn relayed_record_decodes() {
    let o = decode(&bytes(&relayed())).unwrap().expect("known");
    assert_eq!(
        (o.pid, o.tid, o.ppid, o.uid, o.gid),
        (4242, 4243, 4200, 1000, 100)
    );
    assert!(o.forked, "socat's per-connection child");
    assert_eq!((o.comm.as_str(), o.exe_name.as_str()), ("socat", "socat"));
    assert_eq!(o.exe.to_string(), "259:3:1234567");
    assert_eq!(o.start_boottime, Duration::from_micros(1));
    assert_eq!(o.script, None);
    assert_eq!(o.verdict, Verdict::Audit);
    assert_eq!(o.rule, Some(Rule::Relay));
    let via = o.via.expect("via");
    assert_eq!(via.addr, "10.77.0.2:5555".parse::<SocketAddr>().unwrap());
    assert_eq!(via.how, How::Accepted);
    assert_eq!(via.ago, Some(Duration::from_millis(3)));
    assert_eq!(o.client, "127.0.0.1:53422".parse::<SocketAddr>().unwrap());
    assert_eq!(o.server, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!((o.netns, o.cgroup_id), (4_026_531_840, 9));
    assert_eq!(o.connected, Duration::from_secs(5));
    assert_eq!(o.established, Duration::from_nanos(5_000_100_000));
    assert_eq!(
        (o.server_uid, o.server_cookie, o.client_cookie),
        (33, 77, 76)
    );
    assert!(!o.is_direct());
}

#[test]
fn direct_record_is_direct() {
    let mut r = relayed();
    r.origin.verdict = verdict::ALLOW;
    r.origin.rule = NO_RULE;
    r.origin.via = loopwarden_common::Evidence::NONE;
    r.origin.forked = 0;
    let o = decode(&bytes(&r)).unwrap().expect("known");
    assert_eq!((o.verdict, o.rule, o.via), (Verdict::Allow, None, None));
    assert!(!o.forked);
    assert!(o.is_direct());
    // Allowed by a rule: still direct. Flagged by a rule without relay
    // evidence: not.
    r.origin.rule = 3;
    assert!(decode(&bytes(&r)).unwrap().unwrap().is_direct());
    r.origin.verdict = verdict::WOULD_DENY;
    let o = decode(&bytes(&r)).unwrap().unwrap();
    assert_eq!(
        (o.verdict, o.rule),
        (Verdict::WouldDeny, Some(Rule::Index(3)))
    );
    assert!(!o.is_direct());
}

#[test]
fn listening_evidence_has_no_age_and_ipv6_stays_ipv6() {
    let mut r = relayed();
    r.conn.client = key(IpAddr::V6(Ipv6Addr::LOCALHOST));
    r.conn.server = key(IpAddr::V6(Ipv6Addr::LOCALHOST));
    r.origin.via.kind = evidence::LISTENING;
    r.origin.via.addr = key("fd77::1".parse().unwrap());
    let o = decode(&bytes(&r)).unwrap().unwrap();
    assert_eq!(o.client, "[::1]:53422".parse::<SocketAddr>().unwrap());
    let via = o.via.unwrap();
    assert_eq!((via.how, via.ago), (How::Listening, None));
    assert_eq!(via.addr, "[fd77::1]:5555".parse::<SocketAddr>().unwrap());
}

#[test]
fn odd_bytes_never_panic() {
    let mut r = relayed();
    // No NUL at all, invalid UTF-8, a script, values from a future version.
    r.origin.comm = [b'x'; 16];
    r.origin.exe_name = fixed(b"py\xffthon");
    r.origin.script = fixed(b"/srv/fwd.py\0junk");
    r.origin.verdict = 9;
    r.origin.via.kind = 200;
    r.origin.via.ktime_ns = u64::MAX;
    let o = decode(&bytes(&r)).unwrap().unwrap();
    assert_eq!(o.comm, "x".repeat(16));
    assert_eq!(o.exe_name, "py\u{fffd}thon");
    assert_eq!(o.script.as_deref(), Some("/srv/fwd.py"));
    assert_eq!(o.verdict, Verdict::Other(9));
    assert_eq!(o.verdict.name(), "unknown");
    let via = o.via.unwrap();
    assert_eq!((via.how, via.ago), (How::Other(200), Some(Duration::ZERO)));
    assert!(!o.is_direct());
}

#[test]
fn unknown_record_is_none() {
    assert_eq!(decode(&bytes(&OriginRecord::unknown())).unwrap(), None);
}

#[test]
fn later_versions_may_append() {
    let mut r = relayed();
    r.size += 8;
    let mut b = bytes(&r);
    b.extend_from_slice(&[0xaa; 8]);
    assert_eq!(decode(&b).unwrap().unwrap().pid, 4242);
}

#[test]
fn damaged_records_are_refused() {
    let mut r = relayed();
    r.magic = u32::from_le_bytes(*b"XXXX");
    assert!(matches!(decode(&bytes(&r)), Err(Error::BadMagic { found }) if found == r.magic));
    let mut r = relayed();
    r.version = VERSION + 1;
    assert!(matches!(decode(&bytes(&r)), Err(Error::Version { found }) if found == VERSION + 1));
    let mut r = relayed();
    r.size = 32;
    assert!(matches!(
        decode(&bytes(&r)),
        Err(Error::BadSize { size: 32 })
    ));
    let mut r = relayed();
    r.status = 7;
    assert!(matches!(
        decode(&bytes(&r)),
        Err(Error::BadStatus { found: 7 })
    ));
    assert_eq!(relayed().magic, MAGIC);
}

#[test]
fn short_buffers_are_refused() {
    let b = bytes(&relayed());
    for len in [0, 8, 32, b.len() - 1] {
        match decode(&b[..len]) {
            Err(e @ Error::Short { len: l }) if l == len => {
                assert!(e.to_string().contains("328"), "{e}");
            }
            other => panic!("{len} bytes: {other:?}"),
        }
    }
}

#[test]
fn a_file_is_no_socket() {
    let file = std::fs::File::open("/dev/null").unwrap();
    match origin(&file) {
        Err(Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOTSOCK)),
        other => panic!("{other:?}"),
    }
}

/// The README's table of the record ("The record (`getsockopt`)"), which
/// clients in other languages are written from, is the layout of
/// `OriginRecord`: each row's offset and size, and every field in a row.
#[test]
fn the_readmes_record_table_is_the_records_layout() {
    use std::mem::{offset_of, size_of_val};
    let r = OriginRecord::unknown();
    macro_rules! fields {
        ($($name:literal => $($f:ident).+;)*) => {
            [$(($name, offset_of!(OriginRecord, $($f).+), size_of_val(&r.$($f).+))),*]
        };
    }
    let layout = fields! {
        "magic" => magic;
        "version" => version;
        "size" => size;
        "status" => status;
        "server_uid" => server_uid;
        "established_ns" => established_ns;
        "server_cookie" => server_cookie;
        "conn.netns" => conn.netns;
        "conn.client_port" => conn.client_port;
        "conn.server_port" => conn.server_port;
        "conn.client" => conn.client;
        "conn.server" => conn.server;
        "origin.ktime_ns" => origin.ktime_ns;
        "origin.policy_seq" => origin.policy_seq;
        "origin.socket_cookie" => origin.socket_cookie;
        "origin.netns_cookie" => origin.netns_cookie;
        "origin.start_boottime_ns" => origin.start_boottime_ns;
        "origin.cgroup_id" => origin.cgroup_id;
        "origin.exe" => origin.exe;
        "origin.daddr" => origin.daddr;
        "origin.tgid" => origin.tgid;
        "origin.pid" => origin.pid;
        "origin.ppid" => origin.ppid;
        "origin.uid" => origin.uid;
        "origin.gid" => origin.gid;
        "origin.dport" => origin.dport;
        "origin.family" => origin.family;
        "origin.verdict" => origin.verdict;
        "origin.rule" => origin.rule;
        "origin.forked" => origin.forked;
        "origin.comm" => origin.comm;
        "origin.exe_name" => origin.exe_name;
        "origin.via.addr" => origin.via.addr;
        "origin.via.ktime_ns" => origin.via.ktime_ns;
        "origin.via.port" => origin.via.port;
        "origin.via.kind" => origin.via.kind;
        "origin.script" => origin.script;
    };
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("### The record (`getsockopt`)")
        .nth(1)
        .expect("the README's record section");
    let rows: Vec<(usize, usize, &str)> = section
        .lines()
        .skip_while(|line| !line.starts_with("| Offset"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let number = |i: usize| {
                cells[i]
                    .parse::<usize>()
                    .unwrap_or_else(|e| panic!("{line}: {e}"))
            };
            (number(1), number(2), cells[3].trim_matches('`'))
        })
        .collect();
    let named: Vec<&str> = rows.iter().map(|&(_, _, name)| name).collect();
    let fields: Vec<&str> = layout.iter().map(|&(name, _, _)| name).collect();
    assert_eq!(
        named, fields,
        "the README's rows are not the record's fields"
    );
    for (&(offset, size, name), &(_, at, bytes)) in rows.iter().zip(&layout) {
        assert_eq!((offset, size), (at, bytes), "the README's row for `{name}`");
    }
    let last = rows.last().expect("rows");
    assert_eq!(
        last.0 + last.1,
        size_of::<OriginRecord>(),
        "the record's size"
    );
}
