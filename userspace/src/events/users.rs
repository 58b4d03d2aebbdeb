//! User names by uid, from NSS, through a cache that forgets.

use std::{
    collections::HashMap,
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
/// loop waits for it a tenth of its time at most. One lookup still holds
/// it for as long as that lookup takes (NSS has no timeout to give).
pub(super) const USER_LOOKUP_TIME_PER_SECOND: Duration = Duration::from_millis(50);
const LOOKUP_SHARE: u32 = 10;

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

    /// Asks NSS about `uid` unless a cached answer is still fresh.
    pub(super) fn refresh(&mut self, uid: u32, now: Instant) {
        if let Some((_, until)) = self.cache.get(&uid)
            && now < *until
        {
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
        // A failed lookup shows no name and is retried like a missing one.
        let asked = (self.clock)();
        let name = (self.lookup)(uid).ok().flatten();
        self.spent += (self.clock)().saturating_duration_since(asked);
        if let (Some(began), Some(next)) = (self.began, self.next) {
            self.next = Some(next.max(began + self.spent * LOOKUP_SHARE));
        }
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
