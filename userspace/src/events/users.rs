//! User names by uid, from NSS, through a cache that forgets, asked on a
//! thread of their own so that a lookup that never returns holds the event
//! loop for [`ANSWER_WAIT`] once, not for as long as it takes.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    time::{Duration, Instant},
};

/// How long a user name found for a uid is used before asking NSS again.
pub(super) const USER_NAME_TTL: Duration = Duration::from_secs(60);
/// How long a uid NSS had no name for (or failed on) shows none before
/// asking again: a user created meanwhile (a `DynamicUser=` unit starting)
/// is named within this time.
pub(super) const USER_MISSING_TTL: Duration = Duration::from_secs(5);
/// Past this many cached uids, expired entries are dropped (all of them, if
/// none has expired): the cache stays small however many uids connect.
pub(super) const USER_CACHE_MAX: usize = 4096;
/// Most NSS lookups a second. Past them a line goes without its user's
/// name (or with the one found before) until the next second: uids without
/// end (the 65,536 of a user namespace) cost the event loop a bounded time
/// a second.
pub(super) const USER_LOOKUPS_PER_SECOND: u32 = 64;
/// Most time a second spent waiting for NSS. A directory service slower
/// than that (an LDAP server that is down, a hung `sssd`) is asked less
/// often: after lookups that took `t`, the next are asked no sooner than
/// `LOOKUP_SHARE` × `t` after the first of them, so over time the event
/// loop waits for it a tenth of its time at most.
pub(super) const USER_LOOKUP_TIME_PER_SECOND: Duration = Duration::from_millis(50);
const LOOKUP_SHARE: u32 = 10;
/// How long a line waits for its user's name. NSS has no timeout to give:
/// a lookup still running past this (an LDAP server that does not answer)
/// goes on on its thread, the line goes without the name (or with the one
/// found before), and no other lookup is asked until it returns, its
/// answer then cached as any other.
pub(super) const ANSWER_WAIT: Duration = Duration::from_millis(25);

/// A lookup's answer: the uid, its name (or why there is none), and how
/// long it took.
type Answer = (u32, io::Result<Option<String>>, Duration);

/// `lookup` of `uid`, and how long it took by `clock`.
fn timed(
    lookup: fn(u32) -> io::Result<Option<String>>,
    clock: fn() -> Instant,
    uid: u32,
) -> Answer {
    let began = clock();
    let name = lookup(uid);
    (uid, name, clock().saturating_duration_since(began))
}

/// The thread that asks NSS, one uid at a time.
struct Asker {
    requests: Sender<u32>,
    answers: Receiver<Answer>,
    /// The uid asked about and not answered yet.
    asking: Option<u32>,
}

/// User names by uid, from NSS, cached for a while (see the module
/// documentation): one lookup per uid per minute at most, and
/// [`USER_LOOKUPS_PER_SECOND`] and [`USER_LOOKUP_TIME_PER_SECOND`] in all,
/// so a slow directory service costs the event loop little.
pub(super) struct UserNames {
    pub(super) lookup: fn(u32) -> std::io::Result<Option<String>>,
    /// Times the lookups (tests give a clock of their own).
    pub(super) clock: fn() -> Instant,
    /// The name (`None`: none, or the lookup failed) and when to ask again.
    pub(super) cache: HashMap<u32, (Option<String>, Instant)>,
    /// Lookups left in the window that began at `began`.
    left: u32,
    /// Time spent in them.
    spent: Duration,
    began: Option<Instant>,
    /// When the next window may begin.
    next: Option<Instant>,
    /// Started at the first lookup (`None` before, or if it could not
    /// start: then lookups are made on the caller's thread).
    asker: Option<Asker>,
    asker_failed: bool,
}

impl Default for UserNames {
    fn default() -> Self {
        Self::with_lookup(crate::resolve::user_name)
    }
}

impl UserNames {
    /// Names from `lookup` instead of NSS.
    pub(super) fn with_lookup(lookup: fn(u32) -> std::io::Result<Option<String>>) -> Self {
        Self {
            lookup,
            clock: Instant::now,
            cache: HashMap::new(),
            left: 0,
            spent: Duration::ZERO,
            began: None,
            next: None,
            asker: None,
            asker_failed: false,
        }
    }

    /// The name of `uid`, asking NSS when the cached answer has expired.
    #[cfg(test)]
    pub(super) fn name(&mut self, uid: u32, now: Instant) -> Option<&str> {
        self.refresh(uid, now);
        self.cached(uid)
    }

    /// The name cached for `uid` (see [`UserNames::refresh`]).
    pub(super) fn cached(&self, uid: u32) -> Option<&str> {
        self.cache.get(&uid).and_then(|(name, _)| name.as_deref())
    }

    /// Asks NSS about `uid` unless a cached answer is still fresh, waiting
    /// [`ANSWER_WAIT`] for the answer at most.
    pub(super) fn refresh(&mut self, uid: u32, now: Instant) {
        self.take_answers(now);
        if let Some((_, until)) = self.cache.get(&uid)
            && now < *until
        {
            return;
        }
        if self.asker.as_ref().is_some_and(|a| a.asking.is_some()) {
            return;
        }
        if self.next.is_none_or(|next| now >= next) {
            self.began = Some(now);
            self.next = Some(now + Duration::from_secs(1));
            self.left = USER_LOOKUPS_PER_SECOND;
            self.spent = Duration::ZERO;
        }
        if self.left == 0 || self.spent >= USER_LOOKUP_TIME_PER_SECOND {
            return;
        }
        self.left -= 1;
        let Some(asker) = self.asker() else {
            let (uid, name, took) = timed(self.lookup, self.clock, uid);
            self.answered(uid, name, took, now);
            return;
        };
        if asker.requests.send(uid).is_err() {
            return;
        }
        asker.asking = Some(uid);
        match asker.answers.recv_timeout(ANSWER_WAIT) {
            Ok((uid, name, took)) => {
                asker.asking = None;
                self.answered(uid, name, took, now);
            }
            // Answered later (see `take_answers`); waited for meanwhile.
            Err(RecvTimeoutError::Timeout) => self.spend(ANSWER_WAIT),
            // The thread is gone (a lookup panicked): asked here from now.
            Err(RecvTimeoutError::Disconnected) => {
                self.asker = None;
                self.asker_failed = true;
            }
        }
    }

    /// The thread that asks, started at the first lookup.
    fn asker(&mut self) -> Option<&mut Asker> {
        if self.asker.is_none() && !self.asker_failed {
            let (requests, asked) = mpsc::channel::<u32>();
            let (answer, answers) = mpsc::channel();
            let (lookup, clock) = (self.lookup, self.clock);
            let started = std::thread::Builder::new()
                .name("lw-users".into())
                .spawn(move || {
                    for uid in asked {
                        if answer.send(timed(lookup, clock, uid)).is_err() {
                            break;
                        }
                    }
                });
            match started {
                Ok(_) => {
                    self.asker = Some(Asker {
                        requests,
                        answers,
                        asking: None,
                    })
                }
                Err(e) => {
                    tracing::warn!(
                        "starting the thread that looks up user names failed ({e}): looking \
                         them up on the event loop"
                    );
                    self.asker_failed = true;
                }
            }
        }
        self.asker.as_mut()
    }

    /// Caches the answers of lookups that outlasted [`ANSWER_WAIT`].
    fn take_answers(&mut self, now: Instant) {
        while let Some(asker) = self.asker.as_mut()
            && asker.asking.is_some()
            && let Ok((uid, name, _took)) = asker.answers.try_recv()
        {
            asker.asking = None;
            // The event loop waited for it only as long as counted then.
            self.answered(uid, name, Duration::ZERO, now);
        }
    }

    /// Counts `took` against the second's time for lookups.
    fn spend(&mut self, took: Duration) {
        self.spent += took;
        if let (Some(began), Some(next)) = (self.began, self.next) {
            self.next = Some(next.max(began + self.spent * LOOKUP_SHARE));
        }
    }

    /// Caches `uid`'s lookup, which took `took`.
    fn answered(
        &mut self,
        uid: u32,
        name: io::Result<Option<String>>,
        took: Duration,
        now: Instant,
    ) {
        self.spend(took);
        // A failed lookup shows no name and is retried like a missing one.
        let name = name.ok().flatten();
        let ttl = if name.is_some() {
            USER_NAME_TTL
        } else {
            USER_MISSING_TTL
        };
        if self.cache.len() >= USER_CACHE_MAX {
            self.cache.retain(|_, (_, until)| now < *until);
            if self.cache.len() >= USER_CACHE_MAX {
                self.cache.clear();
            }
        }
        self.cache.insert(uid, (name, now + ttl));
    }
}

/// One [`UserNames`] for many short-lived enrichers (one a query-socket
/// request): one cache and one lookup thread for all of them. Each request
/// with its own would start a thread of its own at its first name, and
/// with NSS hung every such thread stays blocked in it: threads without
/// end, one per request.
#[derive(Clone, Default)]
pub struct SharedUserNames(Arc<Mutex<UserNames>>);

impl SharedUserNames {
    #[cfg(test)]
    pub(super) fn with_lookup(lookup: fn(u32) -> io::Result<Option<String>>) -> Self {
        Self(Arc::new(Mutex::new(UserNames::with_lookup(lookup))))
    }
}

/// The user names an enricher gives its records: from a cache of its own
/// (the event loop's), or from one it shares ([`SharedUserNames`]), of
/// which it keeps the last name asked for.
pub(super) enum Names {
    Own(UserNames),
    Shared {
        names: SharedUserNames,
        /// The last uid refreshed and its name as the shared cache had it.
        last: Option<(u32, Option<String>)>,
    },
}

impl Names {
    /// [`UserNames::refresh`] of the cache in use.
    pub(super) fn refresh(&mut self, uid: u32, now: Instant) {
        match self {
            Names::Own(names) => names.refresh(uid, now),
            Names::Shared { names, last } => {
                let mut names = names.0.lock().unwrap_or_else(PoisonError::into_inner);
                names.refresh(uid, now);
                *last = Some((uid, names.cached(uid).map(str::to_owned)));
            }
        }
    }

    /// [`UserNames::cached`] of the cache in use (shared: as of the last
    /// [`Names::refresh`] of `uid`).
    pub(super) fn cached(&self, uid: u32) -> Option<&str> {
        match self {
            Names::Own(names) => names.cached(uid),
            Names::Shared { last, .. } => last
                .as_ref()
                .filter(|(asked, _)| *asked == uid)
                .and_then(|(_, name)| name.as_deref()),
        }
    }
}
