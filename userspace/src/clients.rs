//! The clients a local server (the query socket, the ident responder, the
//! metrics) is
//! serving: at most a fixed number, the next past it closing the one idle
//! longest, so clients that keep their connections open, even sending a
//! request now and then, cannot shut out the next. A client whose request
//! is being looked up is not idle: however fast others connect, it gets its
//! answer. Once the answer is made it is idle again, while the answer is
//! written: a client that sends requests and never reads the answers
//! (its receive window full, the write waiting) is closed for the next
//! like any other idle one.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Mutex, PoisonError},
};

use tokio::{sync::oneshot, time::Instant};
use tracing::debug;

/// The clients being served, each tagged (the query socket: its uid;
/// ident: its address).
pub(crate) struct Clients<T> {
    /// The server's name, for the log.
    server: &'static str,
    max: usize,
    table: Mutex<Table<T>>,
}

struct Table<T> {
    next: u64,
    /// By id: the tag, since when the client has been waited for (its
    /// connect or its last answer; `None` while a request of its is being
    /// answered), and its stop signal (dropping the sender ends its task).
    live: HashMap<u64, (T, Option<Instant>, oneshot::Sender<()>)>,
}

impl<T: Copy + PartialEq + Debug> Clients<T> {
    pub(crate) fn new(server: &'static str, max: usize) -> Self {
        Self {
            server,
            max,
            table: Mutex::new(Table {
                next: 0,
                live: HashMap::new(),
            }),
        }
    }

    /// Admits a client tagged `tag`: its id and its stop signal, closing
    /// the client idle longest if all `max` places are taken. When none is
    /// idle (every one is being answered), up to `max` more are admitted,
    /// and past that the new client is closed at once (its signal fires).
    pub(crate) fn admit(&self, tag: T) -> (u64, oneshot::Receiver<()>) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        self.insert(&mut table, tag)
    }

    /// [`Clients::admit`], unless `per_tag` clients of that tag are served
    /// already: `Err(tag)`.
    pub(crate) fn admit_within(
        &self,
        tag: T,
        per_tag: usize,
    ) -> Result<(u64, oneshot::Receiver<()>), T> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.live.values().filter(|c| c.0 == tag).count() >= per_tag {
            return Err(tag);
        }
        Ok(self.insert(&mut table, tag))
    }

    fn insert(&self, table: &mut Table<T>, tag: T) -> (u64, oneshot::Receiver<()>) {
        let id = table.next;
        table.next += 1;
        let (stop, stopped) = oneshot::channel();
        if table.live.len() >= self.max {
            let oldest = table
                .live
                .iter()
                .filter_map(|(id, c)| Some((*id, c.1?)))
                .min_by_key(|(_, since)| *since)
                .map(|(id, _)| id);
            if let Some(oldest) = oldest {
                table.live.remove(&oldest);
                debug!(
                    "{}: {} clients are being served: closing the one idle longest for {tag:?}",
                    self.server, self.max
                );
            } else if table.live.len() >= 2 * self.max {
                debug!(
                    "{}: {} clients are being answered: closing the new one, {tag:?}",
                    self.server,
                    table.live.len()
                );
                return (id, stopped);
            }
        }
        table.live.insert(id, (tag, Some(Instant::now()), stop));
        (id, stopped)
    }

    /// Makes the answer to a request of client `id` with `lookup`: while it
    /// runs the client is not idle (it is not closed for a new client);
    /// once the answer is made it is idle again, while the caller writes
    /// it.
    pub(crate) async fn looking_up<F: Future>(&self, id: u64, lookup: F) -> F::Output {
        self.busy(id);
        let answer = lookup.await;
        self.answered(id);
        answer
    }

    /// A request of client `id` is being looked up: it is not idle, and is
    /// not closed for a new client until the answer is made.
    pub(crate) fn busy(&self, id: u64) {
        self.set_since(id, None);
    }

    /// Client `id`'s answer is made (and being written): its idle time
    /// starts again.
    pub(crate) fn answered(&self, id: u64) {
        self.set_since(id, Some(Instant::now()));
    }

    fn set_since(&self, id: u64, since: Option<Instant>) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = table.live.get_mut(&id) {
            client.1 = since;
        }
    }

    /// Client `id` is gone.
    pub(crate) fn leave(&self, id: u64) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.live.remove(&id);
    }

    /// How many are served.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.live.len()
    }
}
