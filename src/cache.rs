//! The public [`Cache`]: a thin, documented shell over the engine in `raw`.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Duration;

use crate::load::{IfAbsent, Loads};
use crate::raw::shard::Departures;
use crate::raw::RawCache;
use crate::sync::Guard;
use crate::time::duration_to_nanos;
use crate::{CacheBuilder, InsertError, InsertErrorKind, LoadError, Stats};

/// Why an entry left the cache, as told to the eviction listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Evicted by the policy to stay within the budget.
    Evicted,
    /// Its TTL ran out.
    Expired,
    /// Taken out by `remove` or `clear`.
    Removed,
    /// Overwritten by an insert of the same key.
    Replaced,
}

/// A concurrent cache with lock-free reads. Cloning gives another handle to the same cache.
///
/// See the [crate documentation](crate) for the design and guarantees.
pub struct Cache<K, V, S = ahash::RandomState> {
    raw: Arc<RawCache<K, V, S>>,
    loads: Arc<Loads<K, V>>,
}

// A panic in user code (hasher, `Eq`, weigher, loader, listener) never leaves a shard half
// updated: such code runs either before a write starts or after it has finished. So a cache
// seen again after a caught panic is consistent, which is what these impls promise.
impl<K, V, S> std::panic::UnwindSafe for Cache<K, V, S> {}
impl<K, V, S> std::panic::RefUnwindSafe for Cache<K, V, S> {}

impl<K, V, S> Clone for Cache<K, V, S> {
    fn clone(&self) -> Self {
        Self {
            raw: Arc::clone(&self.raw),
            loads: Arc::clone(&self.loads),
        }
    }
}

impl<K, V, S> fmt::Debug for Cache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl<K, V> Cache<K, V> {
    /// Starts building a cache; see [`CacheBuilder`].
    pub fn builder() -> CacheBuilder<K, V> {
        CacheBuilder::new()
    }
}

impl<K, V, S> Cache<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    pub(crate) fn from_raw(raw: RawCache<K, V, S>) -> Self {
        let loads = Loads::new(raw.shard_count());
        Self {
            raw: Arc::new(raw),
            loads: Arc::new(loads),
        }
    }

    /// The value for `key` if present and not expired. Never blocks: no lock is taken.
    ///
    /// ```
    /// let cache = larder::Cache::<u64, String>::builder().max_entries(100).build().unwrap();
    /// cache.insert(1, "one".to_string()).unwrap();
    /// assert_eq!(cache.get(&1).as_deref(), Some("one"));
    /// assert_eq!(cache.get(&2), None);
    /// ```
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let guard = crate::sync::pin();
        self.raw.get(key, &guard).map(|entry| entry.value.clone())
    }

    /// Whether `key` has a live entry. Does not count as a read (no statistics, no
    /// frequency).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let guard = crate::sync::pin();
        self.raw.peek(key, &guard).is_some()
    }

    /// Inserts `key` → `value` with the default TTL (if any), replacing any previous value.
    ///
    /// The entry is readable as soon as this returns. When the cache is over budget the
    /// policy then evicts; a new entry that loses TinyLFU's admission duel may be evicted at
    /// once (counted in [`Stats::admission_rejections`]).
    ///
    /// # Errors
    /// [`InsertErrorKind::TooHeavy`] if the entry's weight (overhead included) exceeds the
    /// whole budget; the key and value come back in the error and the cache is unchanged
    /// (a previous value of the key stays). [`InsertErrorKind::NoFreeCell`], likewise, if
    /// the key's shard has no free cell left while a thread stays pinned (see there); a
    /// `get_or_insert_with` load of the key in flight then caches nothing.
    pub fn insert(&self, key: K, value: V) -> Result<(), InsertError<K, V>> {
        self.insert_inner(key, value, None)
    }

    /// Inserts with a TTL of its own. `Duration::ZERO` stores an already expired entry
    /// (it replaces, and so hides, an older value); `Duration::MAX`, or any TTL beyond
    /// about 584 years, means no expiry.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::<u64, u64>::builder().max_entries(100).build().unwrap();
    /// cache.insert_with_ttl(7, 49, Duration::from_secs(60)).unwrap();
    /// assert_eq!(cache.get(&7), Some(49));
    /// ```
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn insert_with_ttl(
        &self,
        key: K,
        value: V,
        ttl: Duration,
    ) -> Result<(), InsertError<K, V>> {
        self.insert_inner(key, value, Some(duration_to_nanos(ttl)))
    }

    fn insert_inner(&self, key: K, value: V, ttl: Option<u64>) -> Result<(), InsertError<K, V>> {
        // Weighed and checked before a load in flight is told of the write: an insert that
        // is refused (too heavy) or whose weigher panics changes nothing, and must not keep
        // that load's value out of the cache (session 23's review).
        let weight = self.raw.weigh(&key, &value);
        if let Err(kind) = self.admits(weight) {
            return Err(InsertError { key, value, kind });
        }
        self.loads.invalidate(|| self.raw.hash(&key), &key);
        let guard = crate::sync::pin();
        let mut out = self.raw.departures();
        let inserted = self.raw.insert(key, value, weight, ttl, &guard, &mut out);
        self.raw.finish(&mut out);
        inserted.map_err(|(key, value)| InsertError {
            key,
            value,
            kind: InsertErrorKind::NoFreeCell,
        })
    }

    /// Whether an entry of `weight` (overhead included) fits the whole budget.
    fn admits(&self, weight: u64) -> Result<(), InsertErrorKind> {
        let budget = self.raw.budget();
        if weight > budget {
            return Err(InsertErrorKind::TooHeavy { weight, budget });
        }
        Ok(())
    }

    /// Inserts an entry already weighed (`raw().weigh`, for a caller that must weigh
    /// before it gives up the key) without settling what left the cache: the caller passes
    /// `out` to `raw().finish` once it holds no lock of its own, since the listener runs
    /// there.
    pub(crate) fn insert_weighed_pinned<'g>(
        &self,
        key: K,
        value: V,
        weight: u64,
        ttl: Option<u64>,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> Result<(), InsertError<K, V>> {
        if let Err(kind) = self.admits(weight) {
            return Err(InsertError { key, value, kind });
        }
        self.raw
            .insert(key, value, weight, ttl, guard, out)
            .map_err(|(key, value)| InsertError {
                key,
                value,
                kind: InsertErrorKind::NoFreeCell,
            })
    }

    /// The live value of `key` without counting a read (no statistics, no frequency).
    pub(crate) fn peek(&self, key: &K) -> Option<V>
    where
        V: Clone,
    {
        let guard = crate::sync::pin();
        self.raw.peek(key, &guard).map(|entry| entry.value.clone())
    }

    /// Removes `key`, returning its value if it was live.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.loads.invalidate(|| self.raw.hash(key), key);
        let guard = crate::sync::pin();
        let mut out = self.raw.departures();
        let removed = self.raw.remove(key, &guard, &mut out);
        // Settle first: a panicking `clone` must not leave the removal half accounted. The
        // entry stays readable while `guard` is pinned.
        self.raw.finish(&mut out);
        removed.map(|entry| entry.value.clone())
    }

    /// Number of entries, including expired ones not yet removed by the wheel.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of the entries' weights: the entry count in count mode, bytes (larder's overhead
    /// included) in byte mode. Exact at rest; while other threads insert it also counts
    /// their inserts in progress, so it may briefly exceed the budget by their weights.
    pub fn weighted_size(&self) -> u64 {
        self.raw.weighted_size()
    }

    /// Removes every entry (each reported to the listener as removed, or expired).
    pub fn clear(&self) {
        self.loads.invalidate_all();
        self.raw.clear();
    }

    /// Removes every expired entry now, instead of a little at a time on writes. Useful
    /// before reading `len` or `stats`, or from a timer on a cache that is rarely written.
    pub fn run_pending_tasks(&self) {
        // A listener's panic is re-raised once every due entry is gone; a clock's reaches
        // the caller at once.
        let mut first_panic = None;
        loop {
            let (done, panic) = self.raw.run_pending_tasks(4096);
            if let Some(panic) = panic {
                first_panic.get_or_insert(panic);
            }
            if done {
                break;
            }
        }
        if let Some(panic) = first_panic {
            std::panic::resume_unwind(panic);
        }
    }

    /// A snapshot of the cache's counters.
    pub fn stats(&self) -> Stats {
        self.raw.stats()
    }

    /// Returns the value for `key`, computing it with `load` if absent. Concurrent callers
    /// for the same key wait for one load and share its value (no stampede).
    ///
    /// Prefer it to [`get`](Self::get) followed by [`insert`](Self::insert) wherever
    /// several threads may miss the same key at once: `get` never waits for a writer, so a
    /// `get` that runs while another thread is still inserting the key misses, and its
    /// caller loads the key a second time. Replaying a database trace from two threads
    /// (orm-busy, 763 entries, in the README), 1% of requests were such second loads with
    /// `get` and `insert`, none with this call.
    ///
    /// If `load` panics, the panic propagates to this caller, nothing is cached, and one
    /// waiting caller (if any) runs its own loader instead. An entry too heavy to cache is
    /// returned without being cached.
    ///
    /// An [`insert`](Self::insert), [`remove`](Self::remove) or [`clear`](Self::clear) of
    /// the key while `load` runs wins: the load's value, which may have been read from the
    /// source before that change, goes to this caller and its waiters but is not cached
    /// (until session 22 it was, undoing the change: cache-aside's race). A caller that
    /// comes after the change does not wait for that load: it loads anew.
    ///
    /// ```
    /// let cache = larder::Cache::<u64, u64>::builder().max_entries(100).build().unwrap();
    /// assert_eq!(cache.get_or_insert_with(3, || 9), 9);
    /// assert_eq!(cache.get_or_insert_with(3, || unreachable!()), 9);
    /// ```
    pub fn get_or_insert_with(&self, key: K, load: impl FnOnce() -> V) -> V
    where
        V: Clone,
    {
        match self.try_get_or_insert_with(key, || Ok::<V, std::convert::Infallible>(load())) {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// Like [`get_or_insert_with`](Self::get_or_insert_with) with a fallible loader.
    ///
    /// # Errors
    /// The loader's error. Nothing is cached; of the callers that were waiting on this load,
    /// one runs its own loader and the others wait for it (the error is not shared, so `E`
    /// need not be `Clone`).
    pub fn try_get_or_insert_with<E>(
        &self,
        key: K,
        load: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E>
    where
        V: Clone,
    {
        let load = || load().map(Some);
        let loaded =
            crate::load::get_or_load(self, &self.loads, key, false, None, IfAbsent::LoadOwn, load);
        present(untimed(loaded))
    }

    /// [`try_get_or_insert_with`](Self::try_get_or_insert_with) waiting at most `timeout`
    /// for another caller's load of the same key. A caller that runs the load itself is not
    /// interrupted (its loader is its own code; give the loader its own timeouts, such as
    /// the database client's). Async callers use their runtime's timeout around
    /// [`try_get_or_insert_async`](Self::try_get_or_insert_async) instead.
    ///
    /// ```
    /// use std::time::Duration;
    /// let cache = larder::Cache::<u64, u64>::builder().max_entries(100).build().unwrap();
    /// let got = cache.try_get_or_insert_with_timeout(1, Duration::from_millis(50), || Ok::<_, ()>(10));
    /// assert_eq!(got, Ok(10));
    /// ```
    ///
    /// # Errors
    /// [`LoadError::TimedOut`] if another caller's load outlasted `timeout` (this caller's
    /// loader did not run); [`LoadError::Failed`] with the loader's error.
    pub fn try_get_or_insert_with_timeout<E>(
        &self,
        key: K,
        timeout: Duration,
        load: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, LoadError<E>>
    where
        V: Clone,
    {
        let deadline = std::time::Instant::now().checked_add(timeout);
        let load = || load().map(Some);
        present(crate::load::get_or_load(
            self,
            &self.loads,
            key,
            false,
            deadline,
            IfAbsent::LoadOwn,
            load,
        ))
    }

    /// [`try_get_or_insert_with`](Self::try_get_or_insert_with) for a caller whose own
    /// `get` of `key` just missed (and was counted): the miss is not counted twice. The
    /// loader may find nothing (`Ok(None)`): nothing is cached, and callers waiting on this
    /// load get `None` too instead of loading again one after another.
    pub(crate) fn try_get_or_insert_after_miss<E>(
        &self,
        key: K,
        load: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<V>, E>
    where
        V: Clone,
    {
        untimed(crate::load::get_or_load(
            self,
            &self.loads,
            key,
            true,
            None,
            IfAbsent::Share,
            load,
        ))
    }

    /// The async form of [`get_or_insert_with`](Self::get_or_insert_with): concurrent
    /// callers for the same key, threads or tasks alike, share one load. Works on any
    /// runtime (waiting tasks are woken through their wakers; no runtime is required).
    ///
    /// Cancellation is safe at every await point: if the caller running the load is
    /// dropped (cancelled, or timed out by its runtime, e.g. `tokio::time::timeout`), a
    /// waiting caller takes over and runs its own loader; nothing is cached from the
    /// abandoned load. A timeout per call is therefore the runtime's timeout around this
    /// future.
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// let cache = larder::Cache::<u64, String>::builder().max_entries(100).build().unwrap();
    /// let profile = cache.get_or_insert_async(7, async { "ada".to_string() }).await;
    /// assert_eq!(profile, "ada");
    /// # });
    /// ```
    pub async fn get_or_insert_async(&self, key: K, load: impl Future<Output = V>) -> V
    where
        V: Clone,
    {
        let load = async { Ok::<V, std::convert::Infallible>(load.await) };
        match self.try_get_or_insert_async(key, load).await {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// The async form of [`try_get_or_insert_with`](Self::try_get_or_insert_with).
    ///
    /// # Errors
    /// The loader's error. Nothing is cached; of the waiting callers, one runs its own
    /// loader and the others wait for it.
    pub async fn try_get_or_insert_async<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, E>
    where
        V: Clone,
    {
        let load = async { load.await.map(|value| Some((value, None))) };
        let loaded =
            crate::load::get_or_load_async(self, &self.loads, key, false, IfAbsent::LoadOwn, load)
                .await?;
        Ok(loaded.expect("a loader that always returns a value ended absent"))
    }

    /// [`try_get_or_insert_async`](Self::try_get_or_insert_async) for a caller whose own
    /// `get` of `key` just missed (and was counted).
    pub(crate) async fn try_get_or_insert_async_after_miss<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, E>
    where
        V: Clone,
    {
        let load = async { load.await.map(|value| (value, None)) };
        self.try_get_or_insert_async_with_ttl(key, load).await
    }

    /// [`try_get_or_insert_async_after_miss`](Self::try_get_or_insert_async_after_miss)
    /// whose load also chooses the entry's TTL (`None`: the default TTL).
    pub(crate) async fn try_get_or_insert_async_with_ttl<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<(V, Option<Duration>), E>>,
    ) -> Result<V, E>
    where
        V: Clone,
    {
        let load = async {
            let (value, ttl) = load.await?;
            Ok(Some((value, ttl.map(duration_to_nanos))))
        };
        // A load that always finds a value: joining a fill that found nothing, it loads.
        let loaded =
            crate::load::get_or_load_async(self, &self.loads, key, true, IfAbsent::LoadOwn, load)
                .await?;
        Ok(loaded.expect("a loader that always returns a value ended absent"))
    }

    /// [`try_get_or_insert_async_with_ttl`](Self::try_get_or_insert_async_with_ttl) for a
    /// load that may find nothing (`Ok(None)`: nothing cached), an answer the callers
    /// waiting on it share rather than each looking again: the Redis tier's read of a key
    /// Redis does not hold (session 22's review: each waiting caller read Redis in turn,
    /// and on a hung Redis the k-th waited k timeouts).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn fill_async<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<Option<(V, Option<Duration>)>, E>>,
    ) -> Result<Option<V>, E>
    where
        V: Clone,
    {
        let load = async {
            let found = load.await?;
            Ok(found.map(|(value, ttl)| (value, ttl.map(duration_to_nanos))))
        };
        crate::load::get_or_load_async(self, &self.loads, key, true, IfAbsent::Share, load).await
    }

    /// The future form of [`write_with`](Self::write_with), caching the written value for
    /// `ttl` (`None`: the default TTL).
    pub(crate) async fn write_with_async<E, Fut>(
        &self,
        key: K,
        ttl: Option<Duration>,
        write: impl FnOnce(K) -> Fut,
    ) -> Result<(), E>
    where
        K: Clone,
        V: Clone,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let ttl = ttl.map(duration_to_nanos);
        crate::load::write_exclusive_async(self, &self.loads, key, ttl, write).await
    }

    /// Runs `write` holding `key` exclusively against every load and write of it through
    /// this cache, then caches what it returns (`None` removes the key). See
    /// `load::write_exclusive`.
    pub(crate) fn write_with<E>(
        &self,
        key: K,
        write: impl FnOnce(&K) -> Result<Option<V>, E>,
    ) -> Result<(), E>
    where
        K: Clone,
        V: Clone,
    {
        crate::load::write_exclusive(self, &self.loads, key, write)
    }

    /// Up to `n` live entries, hottest first by the admission policy's own frequency
    /// estimate: what to save for a warm start (see `patterns::warm_up` with the `serde`
    /// feature). An administrative call: it visits every entry (each shard's lock held
    /// while that shard is scanned) and sorts them all; it clones only the entries returned.
    ///
    /// ```
    /// let cache = larder::Cache::<u64, u64>::builder().max_entries(100).build().unwrap();
    /// for key in 0..10 {
    ///     cache.insert(key, key).unwrap();
    /// }
    /// for _ in 0..5 {
    ///     cache.get(&3);
    /// }
    /// assert_eq!(cache.hottest(1), vec![(3, 3)]);
    /// ```
    pub fn hottest(&self, n: usize) -> Vec<(K, V)>
    where
        K: Clone,
        V: Clone,
    {
        let guard = crate::sync::pin();
        self.raw
            .hottest(n, &guard)
            .into_iter()
            .map(|entry| (entry.key.clone(), entry.value.clone()))
            .collect()
    }

    pub(crate) fn raw(&self) -> &RawCache<K, V, S> {
        &self.raw
    }

    /// Bytes of larder's own metadata (tables, slabs, policy, wheels, sketches), for
    /// measuring per-entry overhead.
    #[doc(hidden)]
    pub fn metadata_bytes(&self) -> usize {
        self.raw.metadata_bytes()
    }

    /// Mean distance (in slots) of an entry from its home slot in its shard's table: the
    /// extra probing a lookup does. For tests of hash flooding.
    #[doc(hidden)]
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub fn mean_probe_distance(&self) -> f64 {
        self.raw.mean_displacement()
    }

    /// Panics if an internal invariant is broken: fuzzing and tests call it after each step.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub fn validate(&self) {
        self.raw.validate();
        assert!(
            self.raw.weighted_size() <= self.raw.budget(),
            "weight {} over budget {} at rest",
            self.raw.weighted_size(),
            self.raw.budget()
        );
    }
}

/// The value of a load whose loader always returns one (so it cannot have ended absent).
fn present<V, E>(result: Result<Option<V>, E>) -> Result<V, E> {
    result.map(|value| value.expect("a loader that always returns a value ended absent"))
}

/// The loader's error of a load that had no deadline (so it cannot have timed out).
fn untimed<V, E>(result: Result<V, LoadError<E>>) -> Result<V, E> {
    result.map_err(|e| match e {
        LoadError::Failed(e) => e,
        LoadError::TimedOut => unreachable!("no deadline was set"),
    })
}
