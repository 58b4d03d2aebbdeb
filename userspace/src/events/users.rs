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
/// User names by uid, from NSS, cached for a while (see the module
/// documentation): one lookup per uid per minute at most, so a slow
/// directory service costs the event loop little.
pub(super) struct UserNames {
    pub(super) lookup: fn(u32) -> std::io::Result<Option<String>>,
    /// The name (`None`: none, or the lookup failed) and when to ask again.
    pub(super) cache: HashMap<u32, (Option<String>, Instant)>,
}

impl Default for UserNames {
    fn default() -> Self {
        Self {
            lookup: crate::resolve::user_name,
            cache: HashMap::new(),
        }
    }
}

impl UserNames {
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
        // A failed lookup shows no name and is retried like a missing one.
        let name = (self.lookup)(uid).ok().flatten();
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
