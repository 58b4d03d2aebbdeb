//! One query-socket request, from its line to its answer line: parsing
//! ([`Request::parse`]), who may see what ([`Caller`]), and the lookup in
//! `LW_CONN_SLOTS` and `LW_CONNS` ([`Request::answer`]). The protocol is the README's "The
//! query socket".

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use loopwarden_common::origin::{OriginRecord, status};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Conns, Seen, answer::origin, conns::conn_key};
use crate::{
    events::{Enricher, SharedRules, SharedUserNames},
    fresh::Fresh,
};

/// Protocol version in every answer (`"v"`).
pub const VERSION: u8 = 1;
/// The most connections a `conns` answer lists: the newest, with the
/// number of older ones left out (`"more"`). Each takes up to some 6 KiB
/// of command line, executable path and the rest, so an answer stays
/// within some 25 MiB however many connections a user keeps open.
pub const MAX_LISTED: usize = 4096;

/// Why a request got no origin (`"error"` of an answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// No such connection is known (or it is not protected), or it is
    /// one the caller may not see: the two are never told apart.
    Unknown,
    /// A caller other than root in the host's network namespace named
    /// another network namespace than its own.
    Forbidden,
    /// Not JSON, or not a request this protocol has.
    BadRequest,
    /// A line over [`super::query::MAX_LINE`] bytes; the connection closes.
    TooLong,
    /// No request within [`super::query::IDLE`]; the connection closes.
    Timeout,
    /// The caller's uid holds as many clients as one uid may; the
    /// connection closes.
    Busy,
    /// The daemon cannot read its connection table right now.
    Unavailable,
}

/// One answer line.
#[derive(Debug, Serialize)]
pub struct Reply {
    v: u8,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conns: Option<Vec<Value>>,
    /// How many older connections a `conns` answer leaves out (past
    /// [`MAX_LISTED`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    more: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl Reply {
    pub fn error(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply {
            v: VERSION,
            ok: false,
            id,
            origin: None,
            conns: None,
            more: None,
            error: Some(code),
            message: Some(message.into()),
        }
    }

    fn ok(id: Option<Value>) -> Self {
        Reply {
            v: VERSION,
            ok: true,
            id,
            origin: None,
            conns: None,
            more: None,
            error: None,
            message: None,
        }
    }

    /// The answer as one line, newline included.
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            let message = format!("serializing the answer failed: {e}");
            let reply = serde_json::json!({"v": VERSION, "ok": false, "error": "unavailable", "message": message});
            reply.to_string().into_bytes()
        });
        line.push(b'\n');
        line
    }
}

/// The last `max` of `sorted` (oldest first), and how many are left out
/// before them.
fn newest<T>(sorted: &[T], max: usize) -> (&[T], usize) {
    let older = sorted.len().saturating_sub(max);
    (&sorted[older..], older)
}

/// How long [`proc_hides_pids`] stands: a `/proc` remounted with or
/// without `hidepid` is seen this much later at most.
const HIDEPID_KEPT: Duration = Duration::from_secs(2);

/// Whether `/proc` is mounted `hidepid` (see
/// [`crate::kernel::mountinfo::proc_hides_pids`]) where the daemon runs or
/// where the host's init does: each mount of procfs has its own `hidepid`
/// (Linux 5.8), and a daemon in a container of its own (a DaemonSet) has a
/// `/proc` of its own, mounted without it, while the host's users see the
/// host's. Read at most every [`HIDEPID_KEPT`]: a host with thousands of
/// mounts (a Kubernetes node) has megabytes of mountinfo, which each
/// request parsed.
fn proc_hides_pids() -> bool {
    static LAST: Fresh<bool> = Fresh::new(HIDEPID_KEPT);
    LAST.get(|| {
        ["/proc/self/mountinfo", "/proc/1/mountinfo"]
            .into_iter()
            .any(|path| {
                std::fs::read_to_string(path)
                    .is_ok_and(|text| crate::kernel::mountinfo::proc_hides_pids(&text))
            })
    })
}

/// An origin's fields read from `/proc/PID` (and the parent's
/// `/proc/PPID/exe`), which `hidepid` hides from other users.
const PROC_FIELDS: [&str; 5] = ["exe", "parent_exe", "parent_exe_id", "cmdline", "cgroup"];

/// Who asks, from the socket's `SO_PEERCRED`.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    /// The caller's network namespace (inode): the one its socket was made
    /// in; `None` when the kernel would not say.
    pub netns: Option<u32>,
    /// Whether that namespace is the daemon's own (the host's), and the
    /// connecting process's as well: a socket made on the host and handed
    /// to a container's root makes no root of the host.
    pub host_netns: bool,
}

impl Caller {
    /// Root of the host: uid 0 in the daemon's network namespace. A uid 0
    /// elsewhere (a container's root without a user namespace of its own,
    /// which `SO_PEERCRED` shows as uid 0 too) is root of its own
    /// namespace only: it may not look into others.
    fn is_host_root(&self) -> bool {
        self.uid == 0 && self.host_netns
    }

    /// Whose share of the query socket's clients, walks and lookups this
    /// caller takes: its uid's, but a uid 0 outside the host's network
    /// namespace counts as a user of its own ([`CONTAINED_ROOT`]), so that a
    /// container's root cannot take what is kept for the host's.
    pub fn share(&self) -> u32 {
        if self.uid == 0 && !self.host_netns {
            CONTAINED_ROOT
        } else {
            self.uid
        }
    }

    /// `origin` as `/proc` would show it to the caller: with `/proc`
    /// mounted `hidepid` (`hides`), a process of another user's has its
    /// paths and command line hidden from all but root, so a caller other
    /// than the host's root gets them as null for a client not of its uid
    /// (the kernel's record, `exe_name` and `exe_id` included, stays).
    fn as_proc_shows(&self, hides: bool, mut origin: Value) -> Value {
        if hides && !self.is_host_root() && origin["uid"].as_u64() != Some(u64::from(self.uid)) {
            for field in PROC_FIELDS {
                if let Some(value) = origin.get_mut(field) {
                    *value = Value::Null;
                }
            }
        }
        origin
    }

    /// Whether the caller sees `record`: root, of the host or of the
    /// connection's namespace, does; a user sees it as its server
    /// ([`Seen::as_server`]), by its accepted socket's owner now only in
    /// its own namespace (the only one whose sockets it is told about).
    /// A record that does not say it is known (the kernel writes none
    /// such today) is seen by no one: it is answered as unknown, as
    /// getsockopt and ident answer it.
    fn sees(&self, record: &OriginRecord) -> Seen {
        if record.status != status::KNOWN {
            return Seen::Never;
        }
        if self.uid == 0 {
            if self.host_netns || self.netns == Some(record.conn.netns) {
                Seen::Always
            } else {
                Seen::Never
            }
        } else {
            match Seen::as_server(self.uid, record) {
                Seen::IfOwnedBy(_) if self.netns != Some(record.conn.netns) => Seen::Never,
                seen => seen,
            }
        }
    }
}

/// The share ([`Caller::share`]) of every uid 0 outside the host's network
/// namespace: `(uid_t)-1`, which no user has.
pub const CONTAINED_ROOT: u32 = u32::MAX;

/// Why a caller whose network namespace could not be read is not answered.
const UNREAD_NETNS: &str = "the caller's network namespace cannot be read (the kernel would not \
                            name its connection's, SIOCGSKNS): it is not known for root of the \
                            host either; the daemon's log says why";

/// A request line as sent.
#[derive(Debug, Deserialize)]
struct Wire {
    op: String,
    peer: Option<String>,
    local: Option<String>,
    cookie: Option<u64>,
    netns: Option<u32>,
}

/// What a request asks.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    /// The connection from `peer` to `local`.
    Who { peer: SocketAddr, local: SocketAddr },
    /// The connection whose accepted socket has this `SO_COOKIE`.
    Cookie(u64),
    /// Every connection the caller may see.
    Conns,
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    id: Option<Value>,
    op: Op,
    /// The namespace root asked about (`"netns"`).
    netns: Option<u32>,
}

impl Request {
    /// Whether answering walks every connection the maps hold (`conns`,
    /// `who` by cookie), not one lookup.
    pub fn walks(&self) -> bool {
        matches!(self.op, Op::Conns | Op::Cookie(_))
    }

    /// The `unavailable` answer to this request, saying `why`.
    pub fn unavailable(&self, why: String) -> Reply {
        Reply::error(self.id.clone(), ErrorCode::Unavailable, why)
    }

    /// The `busy` answer to this request, saying `why`.
    pub fn busy(&self, why: String) -> Reply {
        Reply::error(self.id.clone(), ErrorCode::Busy, why)
    }

    /// The request's `id`, which its answer carries.
    pub fn id(&self) -> Option<Value> {
        self.id.clone()
    }

    /// Parses one line (without its newline); a bad line gets its answer.
    pub fn parse(line: &[u8]) -> Result<Self, Box<Reply>> {
        let bad = |id: Option<Value>, message: String| {
            Box::new(Reply::error(id, ErrorCode::BadRequest, message))
        };
        let value: Value = serde_json::from_slice(line).map_err(|e| {
            // serde_json's "expected ident" is a JSON word (true, null),
            // not the ident responder.
            let e = e
                .to_string()
                .replace("expected ident", "expected a JSON value");
            bad(None, format!("not a JSON object: {e}"))
        })?;
        let id = value.get("id").cloned();
        let wire: Wire = serde_json::from_value(value)
            .map_err(|e| bad(id.clone(), format!("not a request: {e}")))?;
        let addr = |name: &str, text: &Option<String>| -> Result<Option<SocketAddr>, String> {
            text.as_deref()
                .map(|t| {
                    t.parse().map_err(|_| {
                        format!(
                            "{name} {t:?} is not ADDRESS:PORT (e.g. 127.0.0.1:53422 or [::1]:53422)"
                        )
                    })
                })
                .transpose()
        };
        let peer = addr("peer", &wire.peer).map_err(|m| bad(id.clone(), m))?;
        let local = addr("local", &wire.local).map_err(|m| bad(id.clone(), m))?;
        let op = match (wire.op.as_str(), peer, local, wire.cookie) {
            ("who", Some(peer), Some(local), None) => Op::Who { peer, local },
            ("who", None, None, Some(cookie)) => Op::Cookie(cookie),
            ("who", ..) => {
                return Err(bad(
                    id,
                    "\"who\" takes \"peer\" and \"local\", or \"cookie\"".to_owned(),
                ));
            }
            ("conns", None, None, None) => Op::Conns,
            ("conns", ..) => {
                return Err(bad(
                    id,
                    "\"conns\" takes no peer, local or cookie".to_owned(),
                ));
            }
            (other, ..) => {
                return Err(bad(
                    id,
                    format!("unknown op {other:?}: \"who\" or \"conns\""),
                ));
            }
        };
        Ok(Request {
            id,
            op,
            netns: wire.netns,
        })
    }

    /// Answers the request from `conns` (blocking: reads the map and
    /// `/proc`, and may ask NSS for a user name, through `names`, which
    /// every request shares).
    pub fn answer(
        self,
        caller: Caller,
        conns: Result<&Conns, &str>,
        cgroup_root: PathBuf,
        rules: SharedRules,
        names: SharedUserNames,
    ) -> Reply {
        let id = self.id;
        if let Some(asked) = self.netns
            && !caller.is_host_root()
            && Some(asked) != caller.netns
        {
            if caller.netns.is_none() {
                return Reply::error(id, ErrorCode::Unavailable, UNREAD_NETNS);
            }
            return Reply::error(
                id,
                ErrorCode::Forbidden,
                "only root in the host's network namespace may ask about another network \
                 namespace",
            );
        }
        let netns = self.netns.or(caller.netns);
        // The host root's `conns` without a namespace named: every
        // namespace's.
        let every = caller.is_host_root() && self.netns.is_none() && matches!(self.op, Op::Conns);
        // A cookie names one socket on the host, whatever its namespace.
        if netns.is_none() && !every && !matches!(self.op, Op::Cookie(_)) {
            return Reply::error(id, ErrorCode::Unavailable, UNREAD_NETNS);
        }
        let conns = match conns {
            Ok(conns) => conns,
            Err(e) => return Reply::error(id, ErrorCode::Unavailable, e),
        };
        let mut enricher = Enricher::with_shared_names(cgroup_root, rules, names);
        let hides = proc_hides_pids();
        let mut shown =
            |record: &OriginRecord| caller.as_proc_shows(hides, origin(record, &mut enricher));
        let found = match self.op {
            Op::Conns => {
                // Filtered before the check that each is open, so that a
                // request costs only the lookups of the connections it may
                // see (a user's: those of its namespace; its walks are few
                // at once, see `query::WALKS`).
                let mut records: Vec<OriginRecord> = conns.list(|r| {
                    if every || Some(r.conn.netns) == netns {
                        caller.sees(r)
                    } else {
                        Seen::Never
                    }
                });
                records.sort_by_key(|r| r.established_ns);
                let (listed, older) = newest(&records, MAX_LISTED);
                let mut reply = Reply::ok(id);
                reply.conns = Some(listed.iter().map(&mut shown).collect());
                reply.more = (older > 0).then_some(older);
                return reply;
            }
            // One root names must hold it.
            Op::Cookie(cookie) => conns.by_cookie(cookie, |r| {
                if self.netns.is_none_or(|n| n == r.conn.netns) {
                    caller.sees(r)
                } else {
                    Seen::Never
                }
            }),
            Op::Who { peer, local } => match netns {
                Some(netns) => conns.get(&conn_key(netns, peer, local), |r| caller.sees(r)),
                None => Ok(None),
            },
        };
        // A connection the caller may not see is answered as one that does
        // not exist (and is not checked for being open, so no error tells
        // it apart either): a cookie names a socket in any namespace, so
        // telling them apart would show any user which protected
        // connections are open on the host, and whose.
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                return Reply::error(
                    id,
                    ErrorCode::Unavailable,
                    format!("cannot tell whether the connection is still open: {e}"),
                );
            }
        };
        match found {
            None => Reply::error(
                id,
                ErrorCode::Unknown,
                "no such protected connection is open that you may ask about (not to a \
                 protected port, closed, older than the tagging, or its accepted socket is \
                 another uid's: ask as that uid or as root)",
            ),
            Some(record) => {
                let mut reply = Reply::ok(id);
                reply.origin = Some(shown(&record));
                reply
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Request, Value> {
        Request::parse(line.as_bytes())
            .map_err(|reply| serde_json::from_slice(&reply.line()).unwrap())
    }

    /// The answer to `line` from `caller`, with no connection map to read
    /// (the checks before it decide, or it says "no map").
    fn ask(line: &str, caller: Caller) -> Value {
        let reply = parse(line).unwrap().answer(
            caller,
            Err("no map"),
            PathBuf::from("/sys/fs/cgroup"),
            SharedRules::default(),
            SharedUserNames::default(),
        );
        serde_json::from_slice(&reply.line()).unwrap()
    }

    #[test]
    fn conns_lists_the_newest_and_counts_the_rest() {
        let established: Vec<u64> = (1..=10).collect();
        assert_eq!(newest(&established, 4), (&established[6..], 6));
        assert_eq!(newest(&established, 10), (&established[..], 0));
        assert_eq!(newest(&established, 4096), (&established[..], 0));
        let mut reply = Reply::ok(Some(Value::from(3)));
        reply.conns = Some(Vec::new());
        reply.more = Some(6);
        let line: Value = serde_json::from_slice(&reply.line()).unwrap();
        assert_eq!(line["more"], 6, "{line}");
        let none: Value = serde_json::from_slice(&Reply::ok(None).line()).unwrap();
        assert!(none.get("more").is_none(), "{none}");
    }

    #[test]
    fn requests_parse() {
        let r = parse(r#"{"op":"who","peer":"127.0.0.1:53422","local":"127.0.0.1:8080","id":7}"#)
            .unwrap();
        assert_eq!(r.id, Some(Value::from(7)));
        assert_eq!(
            r.op,
            Op::Who {
                peer: "127.0.0.1:53422".parse().unwrap(),
                local: "127.0.0.1:8080".parse().unwrap()
            }
        );
        assert_eq!(
            parse(r#"{"op":"who","cookie":4711}"#).unwrap().op,
            Op::Cookie(4711)
        );
        let r = parse(r#"{"op":"conns","netns":4026531840}"#).unwrap();
        assert_eq!((r.op, r.netns), (Op::Conns, Some(4026531840)));
    }

    #[test]
    fn bad_requests_say_why_and_echo_the_id() {
        for (line, why) in [
            ("{", "not a JSON object"),
            ("[1]", "not a request"),
            (r#"{"op":"who","id":"a"}"#, "takes"),
            (
                r#"{"op":"who","peer":"x","local":"127.0.0.1:1","id":"a"}"#,
                "ADDRESS:PORT",
            ),
            (
                r#"{"op":"who","peer":"127.0.0.1:1","cookie":1,"id":"a"}"#,
                "takes",
            ),
            (r#"{"op":"conns","cookie":1,"id":"a"}"#, "takes no"),
            (r#"{"op":"whom","id":"a"}"#, "unknown op"),
        ] {
            let reply = parse(line).unwrap_err();
            assert_eq!(reply["ok"], false, "{line}");
            assert_eq!(reply["v"], 1);
            assert_eq!(reply["error"], "bad-request", "{line}");
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains(why), "{line}: {message}");
            if line.contains("\"id\"") {
                assert_eq!(reply["id"], "a", "{line}");
            }
        }
    }

    #[test]
    fn other_namespaces_are_root_only() {
        let caller = Caller {
            uid: 1000,
            netns: Some(2),
            host_netns: false,
        };
        let reply = ask(r#"{"op":"conns","netns":1,"id":1}"#, caller);
        assert_eq!(reply["error"], "forbidden");
        // Its own namespace named explicitly passes the check.
        let reply = ask(r#"{"op":"conns","netns":2}"#, caller);
        assert_eq!(reply["error"], "unavailable");
        assert_eq!(reply["message"], "no map");
    }

    /// A record of a connection in namespace `netns` whose listener
    /// `server_uid` owned.
    fn record(netns: u32, server_uid: u32) -> OriginRecord {
        let mut record = OriginRecord::unknown();
        record.status = status::KNOWN;
        record.conn.netns = netns;
        record.server_uid = server_uid;
        record
    }

    /// A uid 0 outside the host's network namespace (or whose namespace is
    /// not known) shares no count with the host's root.
    #[test]
    fn a_contained_root_has_a_share_of_its_own() {
        let caller = |uid, host_netns| Caller {
            uid,
            netns: Some(1),
            host_netns,
        };
        assert_eq!(caller(0, true).share(), 0);
        assert_eq!(caller(0, false).share(), CONTAINED_ROOT);
        assert_eq!(caller(1000, false).share(), 1000);
        assert_eq!(caller(1000, true).share(), 1000);
    }

    /// A record that does not say it is known is no one's to see, root's
    /// neither.
    #[test]
    fn a_record_not_known_is_seen_by_no_one() {
        let root = Caller {
            uid: 0,
            netns: Some(1),
            host_netns: true,
        };
        let mut r = record(1, 0);
        assert_eq!(root.sees(&r), Seen::Always);
        r.status = status::UNKNOWN;
        assert_eq!(root.sees(&r), Seen::Never);
    }

    /// A uid 0 outside the host's network namespace (a container's root
    /// without a user namespace) is root of its own namespace only.
    #[test]
    fn a_root_in_another_namespace_sees_only_its_own() {
        let host = Caller {
            uid: 0,
            netns: Some(1),
            host_netns: true,
        };
        let contained = Caller {
            uid: 0,
            netns: Some(2),
            host_netns: false,
        };
        for (netns, server_uid) in [(1, 0), (1, 1000), (2, 0), (2, 1000)] {
            let r = record(netns, server_uid);
            assert_eq!(host.sees(&r), Seen::Always, "{netns} {server_uid}");
            let seen = if netns == 2 {
                Seen::Always
            } else {
                Seen::Never
            };
            assert_eq!(contained.sees(&r), seen, "{netns} {server_uid}");
        }
        let other = r#"{"op":"conns","netns":1}"#;
        assert_eq!(ask(other, contained)["error"], "forbidden");
        assert_eq!(ask(other, host)["message"], "no map");
        for own in [r#"{"op":"conns","netns":2}"#, r#"{"op":"conns"}"#] {
            assert_eq!(ask(own, contained)["message"], "no map", "{own}");
        }
    }

    /// A user sees the connections of its listeners, and in its own
    /// namespace those whose accepted socket it owns (a service that
    /// listened as root, then became the user); none elsewhere.
    #[test]
    fn a_user_sees_what_it_serves() {
        let user = Caller {
            uid: 1000,
            netns: Some(2),
            host_netns: false,
        };
        assert_eq!(user.sees(&record(2, 1000)), Seen::Always);
        assert_eq!(user.sees(&record(1, 1000)), Seen::Always);
        assert_eq!(user.sees(&record(2, 0)), Seen::IfOwnedBy(1000));
        assert_eq!(user.sees(&record(2, 1001)), Seen::IfOwnedBy(1000));
        assert_eq!(user.sees(&record(1, 0)), Seen::Never);
    }

    /// With `/proc` mounted `hidepid`, another user's client has its
    /// paths and command line withheld, as `/proc` would withhold them;
    /// the caller's own clients, and the host's root, see them.
    #[test]
    fn hidepid_withholds_what_proc_would() {
        let origin = serde_json::json!({"uid": 1000, "exe_name": "socat", "exe": "/usr/bin/socat",
                            "parent_exe": "/usr/bin/socat", "parent_exe_id": "254:1:42",
                            "cmdline": "socat TCP-LISTEN:1",
                            "cgroup": "/user.slice"});
        let caller = |uid: u32, host_netns: bool| Caller {
            uid,
            netns: Some(1),
            host_netns,
        };
        let other = caller(1001, false).as_proc_shows(true, origin.clone());
        // Named here, not taken from PROC_FIELDS: a field left out of it
        // fails.
        for field in ["exe", "parent_exe", "parent_exe_id", "cmdline", "cgroup"] {
            assert_eq!(other[field], Value::Null, "{field}: {other}");
        }
        assert_eq!(other["exe_name"], "socat", "{other}");
        for (who, hides) in [
            (caller(1000, false), true),
            (caller(0, true), true),
            (caller(1001, false), false),
        ] {
            assert_eq!(
                who.as_proc_shows(hides, origin.clone()),
                origin,
                "{who:?} {hides}"
            );
        }
        // A container's root is not the host's: withheld too.
        let contained = caller(0, false).as_proc_shows(true, origin.clone());
        assert_eq!(contained["cmdline"], Value::Null, "{contained}");
    }

    #[test]
    fn a_caller_whose_namespace_cannot_be_read_is_told_so() {
        let lost = Caller {
            uid: 1000,
            netns: None,
            host_netns: false,
        };
        // Naming a namespace too: it cannot be told whether it is the
        // caller's own, so it is neither refused as another's nor asked.
        for line in [
            r#"{"op":"conns"}"#,
            r#"{"op":"who","peer":"127.0.0.1:1","local":"127.0.0.1:2"}"#,
            r#"{"op":"conns","netns":5}"#,
        ] {
            let reply = ask(line, lost);
            assert_eq!(reply["error"], "unavailable", "{line}: {reply}");
            assert!(
                reply["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("network namespace")),
                "{line}: {reply}"
            );
        }
        // A cookie needs no namespace; nor does the host root's
        // every-namespace `conns`: both go on to the map.
        let root = Caller {
            uid: 0,
            netns: Some(1),
            host_netns: true,
        };
        for (line, caller) in [
            (r#"{"op":"who","cookie":7}"#, lost),
            (r#"{"op":"conns"}"#, root),
        ] {
            assert_eq!(ask(line, caller)["message"], "no map", "{line}");
        }
    }
}
