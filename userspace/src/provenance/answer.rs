//! An [`OriginRecord`] as the query socket answers it: the audit line's
//! fields, built by the same [`Enricher`] so their names and meanings never
//! drift apart, plus the connection's own (`client`, `server`, `netns`,
//! `server_uid`, the two cookies, when it was connected and established)
//! and whether the process that connected still runs (`alive`).

use std::time::{Duration, SystemTime};

use loopwarden_common::origin::OriginRecord;
use serde_json::{Map, Value};

use super::conns::socket_addr;
use crate::events::{Enricher, Time, event_time, same_process};

/// Audit-line fields an origin leaves out: `time` is `connected_at` here,
/// `socket_cookie` is `client_cookie`, and `src`/`repeat` belong to cut and
/// summary lines only.
const AUDIT_ONLY: [&str; 4] = ["time", "socket_cookie", "src", "repeat"];

/// The origin object of `record`. `/proc` is read (for `exe`, `cmdline`,
/// `cgroup`, as for an audit line) only while the process that connected
/// is the one `/proc` shows under its pid.
pub fn origin(record: &OriginRecord, enricher: &mut Enricher) -> Value {
    let ev = &record.origin;
    let alive = same_process(ev.tgid, ev.start_boottime_ns);
    let mut fields = match serde_json::to_value(enricher.enrich(ev)) {
        Ok(Value::Object(fields)) => fields,
        // An AuditRecord is a struct of plain fields: always an object.
        _ => Map::new(),
    };
    for field in AUDIT_ONLY {
        fields.remove(field);
    }
    let conn = &record.conn;
    // One clock offset for both stamps, so their difference is exact.
    let boot = event_time(0);
    let extra = [
        (
            "client",
            socket_addr(&conn.client, conn.client_port)
                .to_string()
                .into(),
        ),
        (
            "server",
            socket_addr(&conn.server, conn.server_port)
                .to_string()
                .into(),
        ),
        ("netns", conn.netns.into()),
        ("server_uid", record.server_uid.into()),
        ("server_cookie", record.server_cookie.into()),
        ("client_cookie", ev.socket_cookie.into()),
        ("connected_at", rfc3339(ev.ktime_ns, boot)),
        ("established_at", rfc3339(record.established_ns, boot)),
        ("alive", alive.into()),
    ];
    for (name, value) in extra {
        fields.insert(name.to_owned(), value);
    }
    Value::Object(fields)
}

/// A CLOCK_MONOTONIC stamp as RFC 3339 wall-clock time, like an audit
/// line's `time`, given the wall-clock time of the clock's zero.
fn rfc3339(ktime_ns: u64, boot: SystemTime) -> Value {
    Time(boot + Duration::from_nanos(ktime_ns))
        .to_string()
        .into()
}

#[cfg(test)]
mod tests {
    use loopwarden_common::{ConnectEvent, verdict};

    use super::*;
    use crate::{
        policy::{Action, RuleInfo},
        provenance::conn_key,
    };

    #[test]
    fn an_origin_has_the_audit_fields_and_the_connection() {
        let mut ev = ConnectEvent::zeroed();
        ev.tgid = u32::MAX - 1; // no such process
        ev.pid = ev.tgid;
        ev.uid = 1000;
        ev.verdict = verdict::AUDIT;
        ev.rule = 0;
        ev.policy_seq = 3;
        ev.socket_cookie = 11;
        ev.ktime_ns = 1_000_000_000;
        ev.comm[..5].copy_from_slice(b"socat");
        ev.exe_name[..5].copy_from_slice(b"socat");
        let mut record = OriginRecord::unknown();
        record.status = loopwarden_common::origin::status::KNOWN;
        record.server_uid = 65534;
        record.server_cookie = 22;
        record.established_ns = 2_000_000_000;
        record.conn = conn_key(
            4026531840,
            "127.0.0.1:53422".parse().unwrap(),
            "[::1]:8080".parse().unwrap(),
        );
        record.origin = ev;
        let mut enricher = Enricher::new("/sys/fs/cgroup".into());
        enricher.set_rules(
            3,
            vec![RuleInfo {
                name: "socat".to_owned(),
                action: Action::Audit,
                matches: String::new(),
                browser: false,
            }],
        );
        let origin = origin(&record, &mut enricher);
        assert_eq!(origin["client"], "127.0.0.1:53422");
        assert_eq!(origin["server"], "[::1]:8080");
        assert_eq!(origin["netns"], 4026531840u32);
        assert_eq!(origin["server_uid"], 65534);
        assert_eq!(origin["server_cookie"], 22);
        assert_eq!(origin["client_cookie"], 11);
        assert_eq!(origin["pid"], u32::MAX - 1);
        assert_eq!(origin["comm"], "socat");
        assert_eq!(origin["exe_name"], "socat");
        assert_eq!(origin["verdict"], "audit");
        assert_eq!(origin["rule"], "socat");
        assert_eq!(origin["alive"], false);
        assert_eq!(origin["exe"], Value::Null);
        assert_eq!(origin["cmdline"], Value::Null);
        for field in AUDIT_ONLY {
            assert!(origin.get(field).is_none(), "{field} in {origin}");
        }
        let connected = humantime::parse_rfc3339(origin["connected_at"].as_str().unwrap());
        let established = humantime::parse_rfc3339(origin["established_at"].as_str().unwrap());
        let gap = established.unwrap().duration_since(connected.unwrap());
        assert_eq!(gap.unwrap().as_millis(), 1000);
    }
}
