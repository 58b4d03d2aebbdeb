//! [`Fresh`]: a value read again once it is older than its time to live
//! (a host name, the search directories, whether `/proc` hides pids).

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The last value read and when, kept for callers within `ttl` of it.
pub struct Fresh<T> {
    ttl: Duration,
    last: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Fresh<T> {
    pub const fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The value read less than the time to live ago, else `read()`'s,
    /// kept. Read without the lock held (a read may wait on a
    /// filesystem): two callers at once may both read.
    pub fn get(&self, read: impl FnOnce() -> T) -> T {
        if let Some((at, value)) = &*self.last.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < self.ttl
        {
            return value.clone();
        }
        let value = read();
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_value_is_read_again_only_once_its_time_is_up() {
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            reads.get()
        };
        let kept = Fresh::new(Duration::from_millis(50));
        assert_eq!(kept.get(read), 1);
        assert_eq!(kept.get(read), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(kept.get(read), 2);
        let never = Fresh::new(Duration::ZERO);
        assert_eq!(never.get(read), 3);
        assert_eq!(never.get(read), 4);
    }
}
