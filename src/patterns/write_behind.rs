//! Write-behind: writes land in the cache at once and reach the store later, in batches, from
//! a background thread.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Store;
use crate::Cache;

/// What a write does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait until the background thread has made room (the default).
    Block,
    /// Refuse at once with [`WriteBehindError::QueueFull`].
    Error,
}

/// A write that was refused; the cache and the queue are unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBehindError<K, V> {
    /// The queue holds `capacity` distinct keys and [`Backpressure::Error`] is set. The key
    /// and value (`None` for a removal) come back.
    QueueFull {
        /// The key of the refused write.
        key: K,
        /// Its value; `None` for a removal.
        value: Option<V>,
    },
}

impl<K, V> fmt::Display for WriteBehindError<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull { .. } => write!(f, "write-behind queue is full"),
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> std::error::Error for WriteBehindError<K, V> {}

/// The writes a [`WriteBehind::close_within`] could not store in its time: each waiting key
/// once, with its newest write (`None`: a delete), for the caller to keep elsewhere or
/// replay later. They are still in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritten<K, V> {
    /// The keys' newest writes, the batch the store last failed (or was writing) first,
    /// then the queue oldest first.
    pub writes: Vec<(K, Option<V>)>,
    /// The store's last error, if a batch failed.
    pub last_error: Option<String>,
}

impl<K, V> fmt::Display for Unwritten<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} write-behind writes not stored", self.writes.len())?;
        match &self.last_error {
            Some(error) => write!(f, " (the store's last error: {error})"),
            None => Ok(()),
        }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> std::error::Error for Unwritten<K, V> {}

/// Counters of a [`WriteBehind`]'s background writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Distinct keys waiting to be written.
    pub pending: usize,
    /// Writes (after coalescing) the store has accepted.
    pub written: u64,
    /// Writes folded into a later write of the same key before they were stored.
    pub coalesced: u64,
    /// Batches the store refused (each is retried).
    pub failed_batches: u64,
    /// The store's last error, if any batch failed.
    pub last_error: Option<String>,
}

/// Settings of a [`WriteBehind`].
#[derive(Debug, Clone)]
pub struct WriteBehindBuilder {
    batch_size: usize,
    flush_interval: Duration,
    capacity: usize,
    backpressure: Backpressure,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Default for WriteBehindBuilder {
    fn default() -> Self {
        Self {
            batch_size: 256,
            flush_interval: Duration::from_millis(100),
            capacity: 65_536,
            backpressure: Backpressure::Block,
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl WriteBehindBuilder {
    /// Most writes per batch (default 256). A batch is written as soon as this many are
    /// pending.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Longest a write waits before its batch is written, if the batch does not fill
    /// first (default 100 ms).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Most distinct keys waiting in the queue (default 65,536). Writes to a key already
    /// waiting replace its value and need no room. The batch being written (up to
    /// [`batch_size`](Self::batch_size) keys) has left the queue and does not count, so up
    /// to `capacity + batch_size` keys can be unwritten at once (all of them counted in
    /// `WriteBehindStats::pending`).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// What a write does when the queue is full (default [`Backpressure::Block`]).
    pub fn backpressure(mut self, backpressure: Backpressure) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// Backoff between retries of a failed batch: starts at `initial`, doubles, stops
    /// growing at `max` (defaults 10 ms and 5 s). Retries never give up while the
    /// `WriteBehind` lives: an acknowledged write is never dropped. A backoff too long for
    /// the clock to count (`Duration::MAX`) waits for good: a batch that failed once stays
    /// queued (reads still see it) and is not retried, so [`flush`](WriteBehind::flush),
    /// [`close`](WriteBehind::close) and drop wait for good too.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        // At least a millisecond: a zero backoff would spin on a failing store.
        self.retry_initial = initial.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_initial);
        self
    }

    /// Starts the background thread writing to `store`, with `cache` in front.
    ///
    /// # Panics
    /// If the operating system cannot start a thread.
    pub fn build<K, V, St, S>(self, cache: Cache<K, V, S>, store: St) -> WriteBehind<K, V, St, S>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        St: Store<K, V>,
        S: BuildHasher + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            cache,
            store,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            settings: self,
        });
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("larder-write-behind".into())
                .spawn(move || shared.run())
                .expect("start the write-behind thread")
        };
        WriteBehind {
            shared,
            worker: Some(worker),
        }
    }
}

/// Writes waiting for the store, coalesced per key.
struct Queue<K, V> {
    /// The latest write of each waiting key (`None`: delete).
    pending: HashMap<K, Option<V>>,
    /// Waiting keys, oldest first, each once.
    order: VecDeque<K>,
    /// When the oldest waiting write arrived.
    oldest: Option<Instant>,
    /// The batch being written: still the newest state of its keys unless a later write of
    /// the same key is pending.
    in_flight: HashMap<K, Option<V>>,
    /// Callers waiting in `flush`: write without waiting for the interval.
    flushing: usize,
    /// Keys taken into batches so far. A flush waits until `stats.written` (keys whose
    /// batch the store accepted) reaches the `taken + in the queue` it saw: batches leave
    /// in queue order and complete in that order.
    taken: u64,
    closed: bool,
    /// Set by `close_within`: past this instant the background thread takes no new batch
    /// and stops retrying a failed one, leaving it in `in_flight`.
    give_up_at: Option<Instant>,
    /// The background thread died (see [`StopOnUnwind`]): nothing queued will reach the
    /// store, so writers and flushes must not wait on it.
    stopped: bool,
    stats: WriteBehindStats,
}

impl<K, V> Default for Queue<K, V> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            order: VecDeque::new(),
            oldest: None,
            in_flight: HashMap::new(),
            flushing: 0,
            taken: 0,
            closed: false,
            give_up_at: None,
            stopped: false,
            stats: WriteBehindStats::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Queue<K, V> {
    /// The newest write of `key` not yet in the store: `Some(None)` for a delete.
    fn newest(&self, key: &K) -> Option<Option<V>> {
        self.pending
            .get(key)
            .or_else(|| self.in_flight.get(key))
            .cloned()
    }

    /// Whether `close_within`'s time is up.
    fn giving_up(&self) -> bool {
        self.give_up_at.is_some_and(|at| Instant::now() >= at)
    }

    /// Everything not stored, each key once with its newest write: the batch in flight's
    /// keys that no later write replaced, then the queue in order. Empties both.
    fn take_unwritten(&mut self) -> Vec<(K, Option<V>)> {
        let mut writes: Vec<(K, Option<V>)> = self
            .in_flight
            .drain()
            .filter(|(key, _)| !self.pending.contains_key(key))
            .collect();
        for key in self.order.drain(..) {
            if let Some(value) = self.pending.remove(&key) {
                writes.push((key, value));
            }
        }
        self.oldest = None;
        writes
    }
}

struct Shared<K, V, St, S> {
    cache: Cache<K, V, S>,
    store: St,
    queue: Mutex<Queue<K, V>>,
    /// Signalled on every change of the queue: new writes, room, batches stored, closing.
    changed: Condvar,
    settings: WriteBehindBuilder,
}

impl<K, V, St, S> Shared<K, V, St, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher,
{
    fn lock(&self) -> MutexGuard<'_, Queue<K, V>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(
        &self,
        queue: MutexGuard<'a, Queue<K, V>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Queue<K, V>> {
        match timeout {
            None => self.changed.wait(queue).unwrap_or_else(|e| e.into_inner()),
            Some(timeout) => {
                self.changed
                    .wait_timeout(queue, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        }
    }

    /// Queues a write of `key`, waiting for room or refusing as configured.
    ///
    /// # Panics
    /// If the background thread has died: the write could never be stored.
    fn enqueue(&self, key: &K, value: Option<V>) -> Result<(), WriteBehindError<K, V>> {
        let mut queue = self.lock();
        assert_running(&queue);
        if let Some(waiting) = queue.pending.get_mut(key) {
            *waiting = value;
            queue.stats.coalesced += 1;
            return Ok(());
        }
        while queue.order.len() >= self.settings.capacity {
            if self.settings.backpressure == Backpressure::Error {
                return Err(WriteBehindError::QueueFull {
                    key: key.clone(),
                    value,
                });
            }
            queue = self.wait(queue, None);
            assert_running(&queue);
        }
        // Both clones before either change: a panicking `Clone` must not leave the key
        // pending but unordered (never written, and later writes coalescing into it).
        let (for_pending, for_order) = (key.clone(), key.clone());
        queue.pending.insert(for_pending, value);
        queue.order.push_back(for_order);
        queue.oldest.get_or_insert_with(Instant::now);
        self.changed.notify_all();
        Ok(())
    }

    /// The background thread: takes batches and writes them until closed and drained.
    fn run(&self) {
        let _stop_on_unwind = StopOnUnwind(self);
        while let Some(batch) = self.next_batch() {
            if !self.write(&batch) {
                // `close_within`'s time is up: the batch stays in `in_flight` for it.
                return;
            }
            let mut queue = self.lock();
            queue.in_flight.clear();
            queue.stats.written += batch.len() as u64;
            self.changed.notify_all();
        }
    }

    /// Waits until a batch is due (full, old enough, or hurried) and takes it; `None` once
    /// closed and drained.
    fn next_batch(&self) -> Option<Vec<(K, Option<V>)>> {
        let mut queue = self.lock();
        loop {
            if queue.giving_up() {
                return None;
            }
            if let Some(oldest) = queue.oldest {
                let age = oldest.elapsed();
                // A full queue is due too, or writers blocked on it would wait the interval.
                let full = self.settings.batch_size.min(self.settings.capacity);
                let due = queue.order.len() >= full
                    || queue.flushing > 0
                    || queue.closed
                    || age >= self.settings.flush_interval;
                if due {
                    break;
                }
                let left = self.settings.flush_interval - age;
                queue = self.wait(queue, Some(left));
            } else if queue.closed {
                return None;
            } else {
                queue = self.wait(queue, None);
            }
        }
        let take = queue.order.len().min(self.settings.batch_size);
        let keys: Vec<K> = queue.order.drain(..take).collect();
        let batch: Vec<(K, Option<V>)> = keys
            .into_iter()
            .map(|key| {
                let value = queue
                    .pending
                    .remove(&key)
                    .expect("ordered keys are pending");
                (key, value)
            })
            .collect();
        // What is left arrived after the batch's oldest write, but not necessarily after
        // its interval started: keep the old mark, so nothing waits more than one interval.
        if queue.order.is_empty() {
            queue.oldest = None;
        }
        queue.taken += batch.len() as u64;
        queue.in_flight = batch.iter().cloned().collect();
        // Room was made.
        self.changed.notify_all();
        Some(batch)
    }

    /// Writes one batch, retrying with backoff until the store accepts it (true) or
    /// `close_within`'s time is up (false).
    fn write(&self, batch: &[(K, Option<V>)]) -> bool {
        let (stores, deletes): (Vec<_>, Vec<_>) = batch.iter().partition(|(_, v)| v.is_some());
        let stores: Vec<(K, V)> = stores
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        let deletes: Vec<K> = deletes.into_iter().map(|(k, _)| k.clone()).collect();
        let mut backoff = self.settings.retry_initial;
        loop {
            // A panicking store is a failure like any other: retried, so the thread lives
            // on and nothing queued is lost (and `flush` cannot wait forever on a dead
            // thread).
            // The error is displayed (and dropped) inside too: that is the store's code.
            let attempt =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
                    if !stores.is_empty() {
                        self.store.store_many(&stores).map_err(|e| e.to_string())?;
                    }
                    if !deletes.is_empty() {
                        self.store
                            .delete_many(&deletes)
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                }));
            let error = match attempt {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => error,
                Err(_) => "the store panicked".to_string(),
            };
            let mut queue = self.lock();
            queue.stats.failed_batches += 1;
            queue.stats.last_error = Some(error);
            // Sleep the whole backoff: every queue change wakes this condvar. A backoff the
            // clock cannot count (`None`) never ends, rather than panic here: that would kill
            // this thread and lose the batch and everything queued behind it. Only
            // `close_within`'s deadline cuts it short.
            let until = Instant::now().checked_add(backoff);
            loop {
                if queue.giving_up() {
                    return false;
                }
                let until = match (until, queue.give_up_at) {
                    (Some(until), Some(give_up)) => Some(until.min(give_up)),
                    (until, give_up) => until.or(give_up),
                };
                let left = until.map(|until| until.saturating_duration_since(Instant::now()));
                if left == Some(Duration::ZERO) && !queue.giving_up() {
                    break;
                }
                queue = self.wait(queue, left);
            }
            drop(queue);
            backoff = backoff.saturating_mul(2).min(self.settings.retry_max);
        }
    }

    /// Waits until everything queued before this call has been stored (later writes may
    /// still be waiting), or until `deadline` (`None`: for good). Whether it was stored.
    fn drain(&self, deadline: Option<Instant>) -> bool {
        let mut queue = self.lock();
        let target = queue.taken + queue.order.len() as u64;
        queue.flushing += 1;
        self.changed.notify_all();
        while queue.stats.written < target {
            assert_running(&queue);
            let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                break;
            }
            queue = self.wait(queue, left);
        }
        queue.flushing -= 1;
        queue.stats.written >= target
    }
}

/// Panics if the background thread has died, rather than wait forever for it or queue a
/// write it will never store.
fn assert_running<K, V>(queue: &Queue<K, V>) {
    assert!(
        !queue.stopped,
        "the write-behind thread has stopped: a key's or value's Hash, Eq or Clone panicked in it"
    );
}

/// Marks the queue stopped and wakes every waiter if the background thread unwinds.
struct StopOnUnwind<'a, K, V, St, S>(&'a Shared<K, V, St, S>)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher;

impl<K, V, St, S> Drop for StopOnUnwind<'_, K, V, St, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher,
{
    fn drop(&mut self) {
        if std::thread::panicking() {
            // `lock` recovers the queue if the panic poisoned it.
            self.0.lock().stopped = true;
            self.0.changed.notify_all();
        }
    }
}

/// A cache in front of a [`Store`] whose writes reach the store later, in batches.
///
/// `insert` and `remove` change the cache at once and queue the write; a background thread
/// writes queued writes in batches of up to `batch_size`, at least every `flush_interval`.
/// Writes to the same key coalesce while they wait (the last one wins; per key, writes
/// reach the store in order). Reads see the newest write: the cache, then the queue, then
/// the store.
///
/// Guarantees: no acknowledged write is lost while this value lives. A store error is
/// retried with exponential backoff until it succeeds; [`flush`](Self::flush) waits until
/// everything queued has been stored; [`close`](Self::close) and dropping drain the queue
/// before the thread stops. A full queue blocks writers or refuses writes
/// ([`Backpressure`]). Cost: a write is acknowledged before it is durable, so a crash of the
/// process loses what was queued; and a store that stays down makes `flush`, `close` and
/// drop wait until it is back. [`flush_within`](Self::flush_within) and
/// [`close_within`](Self::close_within) bound that wait; the latter hands back what was not
/// stored ([`Unwritten`]), for the caller to keep elsewhere. The background thread runs the key's and value's `Hash`,
/// `Eq` and `Clone`: if one of those panics there, the thread stops, what was queued is not
/// stored, later writes and `flush` panic rather than wait for it, and `close` or drop
/// re-raises the thread's panic (a panicking store, by contrast, is retried).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use larder::patterns::{Store, WriteBehindBuilder};
///
/// #[derive(Default)]
/// struct Db(Mutex<HashMap<u64, u64>>);
///
/// impl Store<u64, u64> for Db {
///     type Error = std::convert::Infallible;
///     fn load(&self, key: &u64) -> Result<Option<u64>, Self::Error> {
///         Ok(self.0.lock().unwrap().get(key).copied())
///     }
///     fn store(&self, key: &u64, value: &u64) -> Result<(), Self::Error> {
///         self.0.lock().unwrap().insert(*key, *value);
///         Ok(())
///     }
///     fn delete(&self, key: &u64) -> Result<(), Self::Error> {
///         self.0.lock().unwrap().remove(key);
///         Ok(())
///     }
/// }
///
/// let cache = larder::Cache::builder().max_entries(1000).build().unwrap();
/// let counters = WriteBehindBuilder::default().build(cache, Db::default());
/// for n in 0..100 {
///     counters.insert(1, n).unwrap(); // coalesced: the store sees few writes
/// }
/// assert_eq!(counters.get(&1).unwrap(), Some(99));
/// counters.flush();
/// assert_eq!(counters.store().load(&1).unwrap(), Some(99));
/// ```
pub struct WriteBehind<K, V, St, S = ahash::RandomState>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher,
{
    shared: Arc<Shared<K, V, St, S>>,
    worker: Option<JoinHandle<()>>,
}

impl<K, V, St, S> fmt::Debug for WriteBehind<K, V, St, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehind")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<K, V, St, S> WriteBehind<K, V, St, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher,
{
    /// The cache.
    pub fn cache(&self) -> &Cache<K, V, S> {
        &self.shared.cache
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The newest value of `key`: cached, else queued, else loaded from the store (one load
    /// per key however many callers ask) and cached.
    ///
    /// # Errors
    /// The store's error on a miss; nothing is cached.
    pub fn get(&self, key: &K) -> Result<Option<V>, St::Error> {
        // The load holds the key against writes, so the queue and the store cannot change
        // for this key between the two looks.
        super::read_through(&self.shared.cache, key, || {
            let queued = self.shared.lock().newest(key);
            match queued {
                Some(queued) => Ok(queued),
                None => self.shared.store.load(key),
            }
        })
    }

    /// Caches `value` for `key` and queues its write to the store.
    ///
    /// # Errors
    /// [`WriteBehindError::QueueFull`] with [`Backpressure::Error`] when the queue is full;
    /// the cache is unchanged.
    ///
    /// # Panics
    /// If the background thread has died (see the type's docs); the cache is unchanged.
    pub fn insert(&self, key: K, value: V) -> Result<(), WriteBehindError<K, V>> {
        self.shared.cache.write_with(key, |key| {
            self.shared.enqueue(key, Some(value.clone()))?;
            Ok(Some(value))
        })
    }

    /// Removes `key` from the cache and queues its delete from the store.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Panics
    /// As [`insert`](Self::insert).
    pub fn remove(&self, key: &K) -> Result<(), WriteBehindError<K, V>> {
        self.shared.cache.write_with(key.clone(), |key| {
            self.shared.enqueue(key, None)?;
            Ok(None)
        })
    }

    /// Waits until every write queued before this call has reached the store (retrying
    /// failures as long as it takes). Writes queued meanwhile do not hold it up.
    ///
    /// # Panics
    /// If the background thread has died (see the type's docs).
    pub fn flush(&self) {
        self.shared.drain(None);
    }

    /// [`flush`](Self::flush) for at most `timeout`: whether every write queued before this
    /// call reached the store in that time. Those that did not stay queued and are still
    /// retried.
    ///
    /// # Panics
    /// As [`flush`](Self::flush).
    pub fn flush_within(&self, timeout: Duration) -> bool {
        self.shared.drain(Instant::now().checked_add(timeout))
    }

    /// Counters of the background writes.
    pub fn stats(&self) -> WriteBehindStats {
        let queue = self.shared.lock();
        let mut stats = queue.stats.clone();
        // Distinct keys not yet stored: the queue's, and the batch in flight's that are not
        // queued again.
        let in_flight_only = queue
            .in_flight
            .keys()
            .filter(|key| !queue.pending.contains_key(*key))
            .count();
        stats.pending = queue.order.len() + in_flight_only;
        stats
    }

    /// Writes everything queued, then stops the background thread. Dropping does the same.
    /// A store that stays down makes it wait until the store is back: for a shutdown with
    /// a bound, see [`close_within`](Self::close_within).
    pub fn close(mut self) {
        self.shutdown(None);
    }

    /// Writes what is queued for at most `timeout`, then stops the background thread, and
    /// hands back what the store has not taken: nothing is dropped unstored, even when the
    /// store stays down at shutdown.
    ///
    /// It returns after `timeout`, or later by the store call in progress then (a call is
    /// never cut short). Batches keep going to the store until the time is up; a failed
    /// batch is retried with the usual backoff, cut short at the deadline. A batch the store
    /// failed part-way (its `store_many` wrote some keys, then erred) comes back whole:
    /// replaying it writes the same newest values again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::patterns::{Store, WriteBehindBuilder};
    ///
    /// struct Down; // a database that refuses every write
    /// impl Store<u64, u64> for Down {
    ///     type Error = String;
    ///     fn load(&self, _: &u64) -> Result<Option<u64>, String> { Err("down".into()) }
    ///     fn store(&self, _: &u64, _: &u64) -> Result<(), String> { Err("down".into()) }
    ///     fn delete(&self, _: &u64) -> Result<(), String> { Err("down".into()) }
    /// }
    ///
    /// let cache = larder::Cache::builder().max_entries(100).build().unwrap();
    /// let counters = WriteBehindBuilder::default().build(cache, Down);
    /// counters.insert(1, 10).unwrap();
    /// counters.remove(&2).unwrap();
    /// let unwritten = counters.close_within(Duration::from_millis(50)).unwrap_err();
    /// let mut writes = unwritten.writes;
    /// writes.sort();
    /// assert_eq!(writes, vec![(1, Some(10)), (2, None)]);
    /// assert_eq!(unwritten.last_error.as_deref(), Some("down"));
    /// ```
    ///
    /// # Errors
    /// [`Unwritten`] with every write not stored when the time ran out (`Ok` once all are).
    ///
    /// # Panics
    /// As [`close`](Self::close), if the background thread panicked.
    pub fn close_within(mut self, timeout: Duration) -> Result<(), Unwritten<K, V>> {
        self.shutdown(Some(Instant::now().checked_add(timeout)));
        let mut queue = self.shared.lock();
        let writes = queue.take_unwritten();
        if writes.is_empty() {
            return Ok(());
        }
        Err(Unwritten {
            writes,
            last_error: queue.stats.last_error.clone(),
        })
    }

    /// Stops the background thread once it has drained the queue, or, with a deadline
    /// (`Some(None)`: one too far to count, so none), once the deadline passes.
    fn shutdown(&mut self, deadline: Option<Option<Instant>>) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        {
            let mut queue = self.shared.lock();
            queue.closed = true;
            queue.give_up_at = deadline.flatten();
            self.shared.changed.notify_all();
        }
        // The worker only ends after draining. It catches the store's panics; a panic here
        // came from the key's or value's `Hash`, `Eq` or `Clone` in the worker (or a larder
        // bug) and is re-raised unless this thread is already unwinding.
        if let Err(panic) = worker.join() {
            if !std::thread::panicking() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

impl<K, V, St, S> Drop for WriteBehind<K, V, St, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher,
{
    fn drop(&mut self) {
        self.shutdown(None);
    }
}
