//! [`Enricher`]: kernel events and cut connections to [`AuditRecord`]s, with
//! what `/proc` says about each process ([`super::proc_cache`]).

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
    time::Instant,
};

use loopwarden_common::{
    BIND_RULE, ConnectEvent, EGRESS_RULE_BASE, Evidence, ExeKey, MAX_EGRESS_RULES, NO_RULE,
    RELAY_RULE, evidence,
};
use tracing::warn;

use super::proc_cache::ProcCache;
use super::rule_file::RuleFile;
use super::{
    AuditRecord, BIND_RULE_NAME, CUT, EGRESS_PREFIX, ExeId, RELAY_RULE_NAME, Time, event_time,
    evidence_name, treatment_name,
    users::{Names, SharedUserNames, UserNames},
    verdict_name,
};
use crate::{cut::Cut, policy::RuleInfo};

/// Rule lists of this many recent installs are kept, so a report queued
/// (or a flow summarised) since a policy change still names the rule that
/// judged it. Installs with the same rules (re-resolutions: new ids, the
/// same rules) share one list, and count once.
const RULE_LISTS_KEPT: usize = 64;
/// Installs kept by their sequence number, however few lists they share.
const INSTALLS_KEPT: usize = 1024;
/// Rule lists by the `policy_seq` of their install, newest last.
type RuleLists = std::collections::VecDeque<(u64, Arc<Vec<RuleInfo>>)>;

/// How many lists `lists` holds (installs that follow one another with the
/// same rules share one).
fn distinct_lists(lists: &RuleLists) -> usize {
    let changes = lists
        .iter()
        .zip(lists.iter().skip(1))
        .filter(|((_, a), (_, b))| !Arc::ptr_eq(a, b))
        .count();
    usize::from(!lists.is_empty()) + changes
}

/// The rule lists an [`Enricher`] knows, shared with readers off the event
/// path (the query socket): [`Enricher::set_rules`] writes them; the event
/// path reads its own copy, never this lock.
#[derive(Clone, Default)]
pub struct SharedRules(Arc<RwLock<RuleLists>>);

impl SharedRules {
    fn snapshot(&self) -> RuleLists {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, lists: &RuleLists) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = lists.clone();
    }
}

/// Turns kernel events into [`AuditRecord`]s.
pub struct Enricher {
    rules: RuleLists,
    /// The same lists, for other readers.
    shared: SharedRules,
    /// The cgroup v2 mount, to check a `/proc` cgroup path against the id
    /// the kernel reported.
    cgroup_root: PathBuf,
    users: Names,
    procs: ProcCache,
    /// Where the lists are kept for the next daemon, if anywhere.
    rule_file: Option<RuleFile>,
    /// Writing it failed last time (said once, until it works again).
    rule_file_failed: bool,
}

/// Egress rule `r` of a report's rule index ([`EGRESS_RULE_BASE`] `+ r`).
fn egress_index(index: u8) -> Option<usize> {
    let egress = usize::from(index.wrapping_sub(EGRESS_RULE_BASE));
    (index >= EGRESS_RULE_BASE && egress < MAX_EGRESS_RULES).then_some(egress)
}

/// The name records give rule `index`: the reserved rules', else `rule`'s
/// (as [`Enricher::rule`] found it), else `#N` (`egress:#N` for an egress
/// rule) for a policy whose rule list this daemon does not have (one a
/// predecessor installed and `rules.json` does not name).
fn name_of(index: u8, rule: Option<&RuleInfo>) -> Option<Cow<'_, str>> {
    let name = match index {
        NO_RULE => return None,
        RELAY_RULE => Cow::Borrowed(RELAY_RULE_NAME),
        BIND_RULE => Cow::Borrowed(BIND_RULE_NAME),
        _ => match (rule, egress_index(index)) {
            (Some(r), _) => Cow::Borrowed(r.name.as_str()),
            (None, Some(egress)) => Cow::Owned(format!("{EGRESS_PREFIX}#{egress}")),
            (None, None) => Cow::Owned(format!("#{index}")),
        },
    };
    Some(name)
}

impl Enricher {
    pub fn new(cgroup_root: PathBuf) -> Self {
        Self::with_rules(cgroup_root, SharedRules::default())
    }

    /// An enricher naming rules from `shared` as they are now (another
    /// enricher's [`Enricher::shared_rules`]), with caches of its own.
    pub fn with_rules(cgroup_root: PathBuf, shared: SharedRules) -> Self {
        Self::with_names(cgroup_root, shared, Names::Own(UserNames::default()))
    }

    /// [`Enricher::with_rules`], its user names from `names` (shared with
    /// other enrichers), its process cache its own.
    pub fn with_shared_names(
        cgroup_root: PathBuf,
        shared: SharedRules,
        names: SharedUserNames,
    ) -> Self {
        Self::with_names(cgroup_root, shared, Names::Shared { names, last: None })
    }

    fn with_names(cgroup_root: PathBuf, shared: SharedRules, users: Names) -> Self {
        Self {
            rules: shared.snapshot(),
            shared,
            cgroup_root,
            users,
            procs: ProcCache::default(),
            rule_file: None,
            rule_file_failed: false,
        }
    }

    /// Keeps the rule lists in `file` from now on, rewritten at each
    /// [`Enricher::set_rules`] (a failure is warned of once, and the next
    /// install tries again).
    pub fn keep_rules_in(&mut self, file: RuleFile) {
        self.rule_file = Some(file);
        self.save_rules();
    }

    fn save_rules(&mut self) {
        let Some(file) = &self.rule_file else {
            return;
        };
        let lists = self
            .rules
            .iter()
            .map(|(seq, rules)| (*seq, rules.as_slice()));
        match file.save(lists) {
            Ok(()) => self.rule_file_failed = false,
            Err(e) if !self.rule_file_failed => {
                warn!(
                    "writing {} failed: {e}; a daemon started after this one names the rules of \
                     this one's newest policies #N (tried again at the next install)",
                    file.file.path.display()
                );
                self.rule_file_failed = true;
            }
            Err(_) => {}
        }
    }

    /// Records the rule names of the policy installed as `seq`.
    pub fn set_rules(&mut self, seq: u64, rules: Vec<RuleInfo>) {
        let list = match self.rules.back() {
            Some((_, newest)) if **newest == rules => newest.clone(),
            _ => Arc::new(rules),
        };
        self.rules.push_back((seq, list));
        while self.rules.len() > INSTALLS_KEPT || distinct_lists(&self.rules) > RULE_LISTS_KEPT {
            self.rules.pop_front();
        }
        self.shared.publish(&self.rules);
        self.save_rules();
    }

    /// The rule lists this enricher knows, kept up to date by
    /// [`Enricher::set_rules`], for readers in other tasks and threads.
    pub fn shared_rules(&self) -> SharedRules {
        self.shared.clone()
    }

    /// Rule `index` of the policy installed as `seq`, if its rule list is
    /// known (this daemon installed it, or `rules.json` named it).
    fn rule(&self, seq: u64, index: u8) -> Option<&RuleInfo> {
        let (_, rules) = self.rules.iter().rev().find(|(s, _)| *s == seq)?;
        match egress_index(index) {
            // Egress rules follow the others in the list (see
            // `CompiledPolicy::named_rules`).
            Some(egress) => rules
                .iter()
                .filter(|r| r.name.starts_with(EGRESS_PREFIX))
                .nth(egress),
            None => rules.get(usize::from(index)),
        }
    }

    /// The name of rule `index` of the policy installed as `seq`; `#N` for
    /// a policy whose rule list it does not have (see [`name_of`]).
    pub(crate) fn rule_name(&self, seq: u64, index: u8) -> Option<Cow<'_, str>> {
        name_of(index, self.rule(seq, index))
    }

    /// The record of a kernel event, `/proc` details from the cache (read
    /// now for a process not seen before).
    pub fn enrich<'a>(&'a mut self, ev: &'a ConnectEvent) -> AuditRecord<'a> {
        let now = Instant::now();
        self.procs.fill(ev, &self.cgroup_root);
        self.users.refresh(ev.uid, now);
        let info = self.procs.get(ev);
        let ip = ev.daddr.to_ipv6();
        // Show plain IPv4 for an IPv4 socket; keep the mapped form a v6 socket used.
        let ip = match (ev.family, ip.to_ipv4_mapped()) {
            (2, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(ip),
        };
        let (via, via_how, via_ago_ms) = via_fields(&ev.via, ev.ktime_ns);
        let script = (ev.script[0] != 0).then(|| str_from_fixed(&ev.script));
        let rule = self.rule(ev.policy_seq, ev.rule);
        AuditRecord {
            // Taken afresh for every record: the lines follow the wall
            // clock when NTP steps it.
            time: Time(event_time(ev.ktime_ns)),
            verdict: verdict_name(ev.verdict),
            rule: name_of(ev.rule, rule),
            browser: rule
                .filter(|r| r.browser)
                .map(|_| treatment_name(ev.verdict)),
            dst: SocketAddr::new(ip, ev.dport),
            src: None,
            dst_port: ev.dport,
            pid: ev.tgid,
            tid: ev.pid,
            ppid: ev.ppid,
            uid: ev.uid,
            user: self.users.cached(ev.uid),
            gid: ev.gid,
            comm: str_from_fixed(&ev.comm),
            exe: info.and_then(|i| i.exe.as_deref()),
            exe_name: str_from_fixed(&ev.exe_name),
            exe_id: ExeId(ev.exe),
            parent_exe: info.and_then(|i| i.parent_exe.as_deref()),
            parent_exe_id: info.and_then(|i| i.parent_exe_id).map(ExeId),
            cmdline: info.and_then(|i| i.cmdline.as_deref()),
            cgroup: info.and_then(|i| i.cgroup.as_deref()),
            cgroup_id: ev.cgroup_id,
            netns_cookie: ev.netns_cookie,
            socket_cookie: ev.socket_cookie,
            script,
            via,
            via_how,
            via_ago_ms,
            repeat: None,
        }
    }

    /// The record of a connection [`crate::cut`] destroyed. Everything but
    /// the relay evidence comes from `/proc` as the owner is now, not from
    /// the kernel at connect(): `via` is what the connection's origin
    /// recorded at its connect (absent if it recorded none, as for an
    /// untagged connection); `time` is when it was cut; `tid` is the pid (which thread
    /// connected is not known); `comm` is the process's (main thread's);
    /// `uid`/`gid` are the real ids; `exe_name` is the file name of the
    /// `/proc/PID/exe` link target; `cgroup_id` is the inode of the cgroup's
    /// directory (0 if it could not be read).
    pub fn cut<'a>(&'a mut self, cut: &'a Cut) -> AuditRecord<'a> {
        let (via, via_how, via_ago_ms) = match &cut.relayed {
            Some(r) => via_fields(&r.via, r.connect_ns),
            None => (None, None, None),
        };
        let owner = &cut.owner;
        let id = &owner.identity;
        let parent = id
            .ancestors
            .first()
            .filter(|key| **key != ExeKey::default());
        self.users.refresh(id.uid, Instant::now());
        AuditRecord {
            time: Time(cut.at),
            verdict: CUT,
            rule: Some(Cow::Borrowed(cut.rule_name.as_str())),
            browser: None,
            dst: cut.socket.dst,
            src: Some(cut.socket.src),
            dst_port: cut.socket.dst.port(),
            pid: owner.pid,
            tid: owner.pid,
            ppid: owner.ppid,
            uid: id.uid,
            user: self.users.cached(id.uid),
            gid: owner.gid,
            comm: Cow::Borrowed(owner.comm.as_str()),
            exe: owner.exe.as_deref(),
            exe_name: String::from_utf8_lossy(&id.exe_name),
            exe_id: ExeId(id.exe),
            parent_exe: owner.parent_exe.as_deref(),
            parent_exe_id: parent.copied().map(ExeId),
            cmdline: owner.cmdline.as_deref(),
            cgroup: owner.cgroup.as_deref(),
            cgroup_id: id.cgroups.last().copied().unwrap_or(0),
            netns_cookie: cut.netns_cookie,
            socket_cookie: cut.socket.cookie,
            // The script the kernel's exec handler read, as a report of
            // the connect would name it.
            script: id
                .tracked
                .as_ref()
                .filter(|tracked| tracked.script[0] != 0)
                .map(|tracked| str_from_fixed(&tracked.script)),
            via,
            via_how,
            via_ago_ms,
            repeat: None,
        }
    }
}

/// The line's `via`, `via_how` and `via_ago_ms` for evidence `via` the
/// kernel found at a connect at `connect_ns`: the peer (IPv4 peers kept
/// IPv4-mapped), how, and how long before the connect (not for
/// `listening`, which has no moment, nor `untracked`, whose peer is the
/// unspecified address: none is known, but a `via` is there all the same,
/// so no client takes the process for a direct one).
fn via_fields(
    via: &Evidence,
    connect_ns: u64,
) -> (Option<SocketAddr>, Option<&'static str>, Option<u64>) {
    let how = evidence_name(via.kind);
    let peer = how.map(|_| SocketAddr::new(via.addr.to_ip(), via.port));
    let ago_ms = match via.kind {
        evidence::LISTENING | evidence::NONE | evidence::UNTRACKED => None,
        _ => Some(connect_ns.saturating_sub(via.ktime_ns) / 1_000_000),
    };
    (peer, how, ago_ms)
}

/// A NUL-padded kernel string, borrowed when it is valid UTF-8.
fn str_from_fixed(buf: &[u8]) -> Cow<'_, str> {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end])
}
