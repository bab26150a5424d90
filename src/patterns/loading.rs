//! Read-through with refresh: a cache that loads what it misses, and refreshes hot entries
//! before they expire (probabilistic early refresh, "XFetch") or serves them stale for a
//! grace period while one refresh runs (stale-while-revalidate).

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::time::Duration;

use crate::time::{duration_to_nanos, Clock};
use crate::{BuildError, Cache, CacheBuilder};

/// How a [`LoadingCache`] refreshes entries whose TTL is running out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refresh {
    /// Never: an expired entry is loaded again by the next caller (single-flight).
    Never,
    /// Probabilistic early refresh (XFetch, Vattani et al., VLDB 2015). A read refreshes
    /// the entry before it expires with probability rising as expiry nears:
    /// `now - delta * beta * ln(rand) >= expiry`, `delta` being how long the entry took to
    /// load. The reader that draws it reloads in line (others keep the current value), so
    /// a hot key is reloaded once, shortly before it would expire, and never stampedes.
    /// `beta > 1` refreshes earlier; 1 is the paper's choice.
    Early {
        /// Eagerness; [`Refresh::early`] uses 1.0.
        beta: f64,
    },
    /// Stale-while-revalidate: for `grace` after its TTL an entry is still served (stale)
    /// while exactly one refresh runs in the background. A failed refresh keeps the stale
    /// value until the grace period ends; then the entry is gone and the next caller loads.
    ///
    /// Under either policy, a value whose refresh failed (the loader erred or panicked, or
    /// the future of an async refresh was dropped before it ended) is not refreshed again
    /// for 10 ms, a wait that doubles with each failure in a row up to 1 s, so a database
    /// that is down is not asked again at every read of a hot key. The loader's errors and
    /// panics count in [`LoadingStats::refresh_failures`]; a cancelled refresh does not.
    StaleWhileRevalidate {
        /// How long past its TTL an entry may be served.
        grace: Duration,
    },
}

/// A cached value with what refreshing needs.
#[derive(Debug)]
struct Stamped<V> {
    value: V,
    /// Clock time (ns) after which the value is stale.
    fresh_until: u64,
    /// How long the load took (ns): XFetch's `delta`.
    delta: u64,
    /// Set by the one reader that refreshes this entry.
    refreshing: AtomicBool,
    /// Failed refreshes of this value in a row, and the clock time (ns) before which no
    /// other is tried (see [`REFRESH_RETRY_FIRST`]).
    failures: AtomicU32,
    retry_at: AtomicU64,
}

/// The wait after a value's first failed refresh before it is tried again; it doubles at
/// each failure in a row, up to [`REFRESH_RETRY_MAX`]. Without it a database that fails
/// fast was asked again by the very next read of a stale hot key: under stale-while-
/// revalidate a thread and a query per read, where the database most needs rest.
const REFRESH_RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between two refreshes of a value that keep failing.
const REFRESH_RETRY_MAX: Duration = Duration::from_secs(1);

impl Refresh {
    /// [`Refresh::Early`] with the paper's `beta` of 1.
    pub const fn early() -> Self {
        Refresh::Early { beta: 1.0 }
    }
}

/// Counters of a [`LoadingCache`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadingStats {
    /// Loader runs, failures and refreshes included (one per key at a time, however many
    /// callers waited).
    pub loads: u64,
    /// Refreshes started (early or stale-while-revalidate).
    pub refreshes: u64,
    /// Refreshes whose loader erred or panicked (the old value stayed).
    pub refresh_failures: u64,
    /// Reads answered with a stale value during the grace period.
    pub stale_served: u64,
}

#[derive(Debug, Default)]
struct Counters {
    loads: AtomicU64,
    refreshes: AtomicU64,
    refresh_failures: AtomicU64,
    stale_served: AtomicU64,
}

/// Settings of a [`LoadingCache`]; from [`CacheBuilder::loader`].
#[must_use]
pub struct LoadingBuilder<K, V, F, S> {
    cache: CacheBuilder<K, V, S>,
    loader: F,
    refresh: Refresh,
    seed: Option<u64>,
}

impl<K, V, F, S> std::fmt::Debug for LoadingBuilder<K, V, F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadingBuilder")
            .field("cache", &self.cache)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl<K, V, F, S> LoadingBuilder<K, V, F, S> {
    pub(crate) fn new(cache: CacheBuilder<K, V, S>, loader: F) -> Self {
        Self {
            cache,
            loader,
            refresh: Refresh::Never,
            seed: None,
        }
    }

    /// How entries are refreshed (default [`Refresh::Never`]). Any other policy needs the
    /// cache's `default_ttl`, which sets how long a loaded value is fresh.
    pub fn refresh(mut self, refresh: Refresh) -> Self {
        self.refresh = refresh;
        self
    }

    /// Seeds the random source of [`Refresh::Early`], for reproducible tests (default:
    /// random).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

impl<K, V, F, S> LoadingBuilder<K, V, F, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Send + Sync + 'static,
    S: BuildHasher,
{
    /// Builds the loading cache.
    ///
    /// # Errors
    /// Every [`CacheBuilder::build`] error; [`BuildError::RefreshWithoutTtl`] for a refresh
    /// policy without `default_ttl`; [`BuildError::BadRefreshBeta`] for a `beta` that is not
    /// finite and positive.
    pub fn build(mut self) -> Result<LoadingCache<K, V, F, S>, BuildError> {
        let ttl = self.cache.default_ttl_setting();
        if self.refresh != Refresh::Never && ttl.is_none() {
            return Err(BuildError::RefreshWithoutTtl);
        }
        if let Refresh::Early { beta } = self.refresh {
            if !(beta.is_finite() && beta > 0.0) {
                return Err(BuildError::BadRefreshBeta);
            }
        }
        let clock = self.cache.clock_or_default();
        // The engine keeps an entry for its TTL plus the grace period; the wrapper decides
        // what is fresh.
        let grace = match self.refresh {
            Refresh::StaleWhileRevalidate { grace } => grace,
            _ => Duration::ZERO,
        };
        let fresh_for = ttl.map_or(u64::MAX, duration_to_nanos);
        // The entry's cell holds the `Arc`; the stamped value and the `Arc`'s two counts
        // live in an allocation of their own.
        let shared_allocation =
            std::mem::size_of::<Stamped<V>>() + 2 * std::mem::size_of::<usize>();
        let mut inner = self.cache.map_values(
            |stamped: &Arc<Stamped<V>>| &stamped.value,
            shared_allocation as u64,
        );
        if let Some(ttl) = ttl {
            inner = inner.default_ttl(ttl.saturating_add(grace));
        }
        let seed = self
            .seed
            .unwrap_or_else(|| ahash::RandomState::new().hash_one(0u64));
        Ok(LoadingCache {
            shared: Arc::new(Shared {
                cache: inner.build()?,
                loader: self.loader,
                refresh: self.refresh,
                fresh_for,
                clock,
                rng: AtomicU64::new(seed | 1),
                counters: Counters::default(),
            }),
        })
    }
}

struct Shared<K, V, F, S> {
    cache: Cache<K, Arc<Stamped<V>>, S>,
    loader: F,
    refresh: Refresh,
    /// The TTL in nanoseconds (`u64::MAX`: none).
    fresh_for: u64,
    clock: Arc<dyn Clock>,
    /// xorshift state for XFetch's draws.
    rng: AtomicU64,
    counters: Counters,
}

/// A read-through cache: [`get`](Self::get) answers from the cache, or loads with the
/// loader given to [`CacheBuilder::loader`] (one load per key at a time; a failing load
/// caches nothing). With a [`Refresh`] policy, hot entries are refreshed before they expire
/// or served stale while they are refreshed, so a hot key's expiry never sends every caller
/// to the database at once. Cloning gives another handle to the same cache.
///
/// Use it when application code should only talk to the cache and the loader is the one
/// way values are made. Guarantees: one load per key at a time (a load holds its key
/// against refreshes and other loads); a failed load or refresh caches nothing and never
/// replaces a good value; a refresh never overwrites a value removed or replaced meanwhile.
/// Costs: [`Refresh::Early`] spends some extra loads on hot keys (each refresh reloads a
/// value that was still fresh); [`Refresh::StaleWhileRevalidate`] serves values up to
/// `grace` past their TTL and keeps entries that long (they count against the budget), and
/// its blocking form starts a thread per refresh.
///
/// ```
/// use std::time::Duration;
/// use larder::{patterns::Refresh, Cache};
///
/// let profiles = Cache::<u64, String>::builder()
///     .max_entries(10_000)
///     .default_ttl(Duration::from_secs(60))
///     .loader(|id: &u64| Ok::<_, String>(format!("user {id}"))) // the database query
///     .refresh(Refresh::Early { beta: 1.0 })
///     .build()
///     .unwrap();
/// assert_eq!(profiles.get(&7).unwrap(), "user 7");
/// assert_eq!(profiles.stats().loads, 1);
/// ```
pub struct LoadingCache<K, V, F, S = ahash::RandomState> {
    shared: Arc<Shared<K, V, F, S>>,
}

impl<K, V, F, S> Clone for LoadingCache<K, V, F, S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, V, F, S> std::fmt::Debug for LoadingCache<K, V, F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadingCache")
            .field("refresh", &self.shared.refresh)
            .finish_non_exhaustive()
    }
}

impl<K, V, F, S> LoadingCache<K, V, F, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// Drops `key`'s cached value; the next `get` loads it again.
    ///
    /// Waits, blocking the thread, for a load or refresh of `key` in flight to end. In
    /// async code (a cache built with [`CacheBuilder::async_loader`]) use
    /// [`remove_async`](Self::remove_async): on a runtime's thread this call would wait for a
    /// load that runs on that same thread, forever on a current-thread runtime.
    pub fn remove(&self, key: &K)
    where
        K: Clone,
    {
        // Exclusive, like loads and refreshes: one that read the old value before this call
        // finishes first, and its value is then removed, never put back after.
        let _ = self
            .shared
            .cache
            .write_with(key.clone(), |_| Ok::<_, ()>(None));
    }

    /// The async form of [`remove`](Self::remove): waits for a load of `key` in flight
    /// without blocking the thread (session 22's review: `remove` on a current-thread
    /// runtime waited forever for the load it had to outlast).
    pub async fn remove_async(&self, key: &K)
    where
        K: Clone,
    {
        let _ = self
            .shared
            .cache
            .write_with_async(key.clone(), None, |_| async { Ok::<_, ()>(None) })
            .await;
    }

    /// Counters of loads and refreshes.
    pub fn stats(&self) -> LoadingStats {
        let c = &self.shared.counters;
        LoadingStats {
            loads: c.loads.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            refresh_failures: c.refresh_failures.load(Ordering::Relaxed),
            stale_served: c.stale_served.load(Ordering::Relaxed),
        }
    }

    /// The engine's statistics (hits, misses, evictions...).
    pub fn cache_stats(&self) -> crate::Stats {
        self.shared.cache.stats()
    }
}

impl<K, V, F, E, S> LoadingCache<K, V, F, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
    S: BuildHasher + Send + Sync + 'static,
{
    /// The value for `key`, from the cache or loaded. May refresh the entry (see
    /// [`Refresh`]).
    ///
    /// # Errors
    /// The loader's error on a miss (nothing cached). A failed refresh is not an error:
    /// the current value is returned and the failure counted.
    ///
    /// # Panics
    /// If the loader panics in a load this call runs: on a miss, or in an early refresh
    /// ([`Refresh::Early`] runs it in line, on the reader that draws it; the old value
    /// stays cached). A stale-while-revalidate refresh runs on a thread of its own, whose
    /// panic no reader sees.
    pub fn get(&self, key: &K) -> Result<V, E> {
        let shared = &self.shared;
        let Some(stamped) = shared.cache.get(key) else {
            let load = || shared.load(key).map(Some);
            let loaded = shared
                .cache
                .try_get_or_insert_after_miss(key.clone(), load)?;
            let loaded = loaded.expect("a loader that always returns a value ended absent");
            return Ok(loaded.value.clone());
        };
        let now = shared.clock.now_nanos();
        if now < stamped.fresh_until {
            if let Refresh::Early { beta } = shared.refresh {
                if shared.early_refresh_due(&stamped, now, beta) && stamped.claim(now) {
                    return Ok(self.refresh_in_line(key, &stamped));
                }
            }
            return Ok(stamped.value.clone());
        }
        // Past its freshness. Without a grace period the engine's TTL decides: it started at
        // the insert, a little after the value was stamped (the insert's wait for the shard
        // lock, the weigher), so for that moment the engine still holds a value the stamp
        // calls stale. It is served as it is; the next caller after the engine expires it
        // loads again.
        if !matches!(shared.refresh, Refresh::StaleWhileRevalidate { .. }) {
            return Ok(stamped.value.clone());
        }
        shared.counters.stale_served.fetch_add(1, Ordering::Relaxed);
        if stamped.claim(now) {
            // Until the thread's refresh owns the claim, a panic here (the key's `Clone`, a
            // thread the system refuses) releases it: otherwise the entry would get no
            // refresh until its grace period ended.
            let claimed = Release(&stamped.refreshing);
            let this = self.clone();
            let key = key.clone();
            let stale = Arc::clone(&stamped);
            std::thread::spawn(move || {
                this.refresh_in_line(&key, &stale);
            });
            std::mem::forget(claimed);
        }
        Ok(stamped.value.clone())
    }

    /// Reloads `key` now, replacing `current` if it is still the cached entry, and returns
    /// the newest value (the old one if the load failed).
    fn refresh_in_line(&self, key: &K, current: &Arc<Stamped<V>>) -> V {
        let shared = &self.shared;
        let _release = Release(&current.refreshing);
        let mut attempt = Attempt::new(current, &*shared.clock, &shared.counters.refresh_failures);
        shared.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut newest = current.value.clone();
        // Exclusive against loads and other writes of the key.
        let _ = shared.cache.write_with(key.clone(), |key| {
            if !shared.still_cached(key, current) {
                attempt.succeeded();
                return Err(());
            }
            let fresh = shared.refreshed(shared.load(key))?;
            attempt.succeeded();
            newest = fresh.value.clone();
            Ok(Some(fresh))
        });
        newest
    }

    /// Loads each of `keys` that is not cached through the loader, so a cold start does not
    /// meet production traffic. Returns how many loads failed (nothing is cached for them).
    pub fn preload(&self, keys: impl IntoIterator<Item = K>) -> usize {
        keys.into_iter()
            .filter(|key| self.get(key).is_err())
            .count()
    }
}

impl<K, V, F, Fut, E, S> LoadingCache<K, V, F, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    F: Fn(&K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<V, E>>,
    S: BuildHasher + Send + Sync + 'static,
{
    /// The async form of [`get`](Self::get), for a cache built with
    /// [`CacheBuilder::async_loader`]. Works on any runtime. Refreshes run in line: an early
    /// refresh by the reader that draws it, a stale-while-revalidate refresh by the first
    /// reader of the stale entry (the others get the stale value at once).
    ///
    /// ```
    /// # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # runtime.block_on(async {
    /// use std::time::Duration;
    /// let profiles = larder::Cache::<u64, String>::builder()
    ///     .max_entries(1000)
    ///     .default_ttl(Duration::from_secs(60))
    ///     .async_loader(|id: &u64| {
    ///         let id = *id;
    ///         async move { Ok::<_, String>(format!("user {id}")) } // the database query
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(profiles.get_async(&7).await.unwrap(), "user 7");
    /// # });
    /// ```
    ///
    /// # Errors
    /// The loader's error on a miss (nothing cached).
    pub async fn get_async(&self, key: &K) -> Result<V, E> {
        let shared = &self.shared;
        let Some(stamped) = shared.cache.get(key) else {
            let loaded = shared
                .cache
                .try_get_or_insert_async_after_miss(key.clone(), shared.load_async(key))
                .await?;
            return Ok(loaded.value.clone());
        };
        let now = shared.clock.now_nanos();
        if now < stamped.fresh_until {
            if let Refresh::Early { beta } = shared.refresh {
                if shared.early_refresh_due(&stamped, now, beta) && stamped.claim(now) {
                    let refreshed = self.refresh_async(key, &stamped).await;
                    return Ok(refreshed.unwrap_or_else(|| stamped.value.clone()));
                }
            }
            return Ok(stamped.value.clone());
        }
        // Past its freshness: served as it is unless stale-while-revalidate applies, as in
        // `get` (session 21's review: without this check `Refresh::Never` and `Early`
        // refreshed here and counted the value as served stale).
        if !matches!(shared.refresh, Refresh::StaleWhileRevalidate { .. }) {
            return Ok(stamped.value.clone());
        }
        // The reader that refreshes waits for the refresh, and is served stale only if it
        // fails (session 23's review: it was counted stale while it got the new value).
        if stamped.claim(now) {
            if let Some(refreshed) = self.refresh_async(key, &stamped).await {
                return Ok(refreshed);
            }
        }
        shared.counters.stale_served.fetch_add(1, Ordering::Relaxed);
        Ok(stamped.value.clone())
    }

    /// The async form of `refresh_in_line`, giving the newer value if one came (`None`:
    /// the refresh failed, or found the entry replaced without a value for it).
    async fn refresh_async(&self, key: &K, current: &Arc<Stamped<V>>) -> Option<V> {
        let shared = &self.shared;
        // Also when this future is dropped mid-refresh (cancelled).
        let _release = Release(&current.refreshing);
        let attempt = std::sync::Mutex::new(Attempt::new(
            current,
            &*shared.clock,
            &shared.counters.refresh_failures,
        ));
        let attempt_ref = &attempt;
        shared.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let newest = std::sync::Mutex::new(None);
        let newest_ref = &newest;
        let succeeded = || {
            attempt_ref
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .succeeded();
        };
        let write = |key: K| async move {
            if !shared.still_cached(&key, current) {
                succeeded();
                return Err(());
            }
            let fresh = shared.refreshed(shared.load_async(&key).await)?;
            succeeded();
            *newest_ref.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.value.clone());
            Ok(Some(fresh))
        };
        let _ = shared
            .cache
            .write_with_async(key.clone(), None, write)
            .await;
        newest.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// The async form of [`preload`](Self::preload).
    pub async fn preload_async(&self, keys: impl IntoIterator<Item = K>) -> usize {
        let mut failed = 0;
        for key in keys {
            failed += usize::from(self.get_async(&key).await.is_err());
        }
        failed
    }
}

impl<K, V, F, Fut, E, S> Shared<K, V, F, S>
where
    F: Fn(&K) -> Fut,
    Fut: Future<Output = Result<V, E>>,
{
    /// Runs the async loader, timing it for XFetch.
    async fn load_async(&self, key: &K) -> Result<Arc<Stamped<V>>, E> {
        let started = self.clock.now_nanos();
        self.counters.loads.fetch_add(1, Ordering::Relaxed);
        let value = (self.loader)(key).await?;
        Ok(self.stamp(value, started))
    }
}

/// Clears an entry's `refreshing` flag when the refresh ends, however it ends (value,
/// error, panic, cancellation), so a later read can try again. Clearing it on an entry the
/// refresh replaced is harmless: that entry is no longer cached.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<V> Stamped<V> {
    /// Elects the caller that refreshes this entry: true for exactly one caller, and for
    /// none while a failed refresh's wait runs.
    fn claim(&self, now: u64) -> bool {
        // The flag first: its Acquire sees the wait a failed refresh stored before it let go
        // of the flag (read before it, the wait could be the one before that failure).
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return false;
        }
        if now < self.retry_at.load(Ordering::Acquire) {
            self.refreshing.store(false, Ordering::Release);
            return false;
        }
        true
    }
}

/// Notes, when dropped, that a refresh of `stamped` failed, unless [`Attempt::succeeded`]
/// was called: a loader that errs or panics, or a future dropped mid-load, all count.
/// Dropped before the claim is released, so the next claim sees the wait.
struct Attempt<'a, V> {
    stamped: &'a Stamped<V>,
    clock: &'a dyn Clock,
    /// `LoadingStats::refresh_failures`: a loader's error is counted where it is seen
    /// (`Shared::refreshed`), a panic here.
    panics: &'a AtomicU64,
    failed: bool,
}

impl<'a, V> Attempt<'a, V> {
    fn new(stamped: &'a Stamped<V>, clock: &'a dyn Clock, panics: &'a AtomicU64) -> Self {
        Self {
            stamped,
            clock,
            panics,
            failed: true,
        }
    }

    /// The refresh replaced the value, or found it no longer cached: nothing to wait for.
    fn succeeded(&mut self) {
        self.failed = false;
    }
}

impl<V> Drop for Attempt<'_, V> {
    fn drop(&mut self) {
        if !self.failed {
            return;
        }
        if std::thread::panicking() {
            // A cancelled refresh is no failure of the loader (session 23's review: a
            // panicking one went uncounted).
            self.panics.fetch_add(1, Ordering::Relaxed);
        }
        let failures = self.stamped.failures.fetch_add(1, Ordering::Relaxed);
        let wait = REFRESH_RETRY_FIRST
            .saturating_mul(1 << failures.min(16))
            .min(REFRESH_RETRY_MAX);
        let until = self
            .clock
            .now_nanos()
            .saturating_add(duration_to_nanos(wait));
        self.stamped.retry_at.store(until, Ordering::Release);
    }
}

impl<K, V, F, E, S> Shared<K, V, F, S>
where
    F: Fn(&K) -> Result<V, E>,
{
    /// Runs the loader, timing it for XFetch.
    fn load(&self, key: &K) -> Result<Arc<Stamped<V>>, E> {
        let started = self.clock.now_nanos();
        self.counters.loads.fetch_add(1, Ordering::Relaxed);
        let value = (self.loader)(key)?;
        Ok(self.stamp(value, started))
    }
}

impl<K, V, F, S> Shared<K, V, F, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// Whether `current` is still the cached entry of `key`: a refresh replaces only the
    /// entry it was claimed on (a concurrent write or removal wins, an expired one is gone).
    fn still_cached(&self, key: &K, current: &Arc<Stamped<V>>) -> bool {
        self.cache
            .peek(key)
            .is_some_and(|cached| Arc::ptr_eq(&cached, current))
    }

    /// A refresh's load result, counting a failure.
    fn refreshed<E>(&self, loaded: Result<Arc<Stamped<V>>, E>) -> Result<Arc<Stamped<V>>, ()> {
        loaded.map_err(|_| {
            self.counters
                .refresh_failures
                .fetch_add(1, Ordering::Relaxed);
        })
    }
}

impl<K, V, F, S> Shared<K, V, F, S> {
    /// Wraps a value loaded since `started` with its freshness and load time.
    fn stamp(&self, value: V, started: u64) -> Arc<Stamped<V>> {
        let now = self.clock.now_nanos();
        Arc::new(Stamped {
            value,
            fresh_until: now.saturating_add(self.fresh_for),
            delta: now.saturating_sub(started),
            refreshing: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            retry_at: AtomicU64::new(0),
        })
    }

    /// XFetch's test with a fresh uniform draw.
    fn early_refresh_due(&self, stamped: &Stamped<V>, now: u64, beta: f64) -> bool {
        // `-ln(u)` is at most 36.8 for the 53-bit draws: further from expiry than that many
        // deltas, no draw can refresh, so skip the shared generator (a contended line).
        let reach = stamped.delta as f64 * beta * 37.0;
        if (stamped.fresh_until.saturating_sub(now) as f64) > reach {
            return false;
        }
        xfetch_due(
            now,
            stamped.fresh_until,
            stamped.delta,
            beta,
            self.uniform(),
        )
    }

    /// A uniform draw in `(0, 1]` from a shared xorshift generator (lossy under races,
    /// which only reuses a draw).
    fn uniform(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        ((x >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// XFetch: refresh if `now - delta * beta * ln(u) >= expiry`, for `u` uniform in `(0, 1]`.
/// The probability at a gap `g = expiry - now` is `exp(-g / (delta * beta))`.
pub(crate) fn xfetch_due(now: u64, expiry: u64, delta: u64, beta: f64, u: f64) -> bool {
    let ahead = -(delta as f64) * beta * u.ln();
    now as f64 + ahead >= expiry as f64
}

#[cfg(test)]
mod tests {
    use super::xfetch_due;

    #[test]
    fn xfetch_probability_follows_the_exponential_law() {
        let delta = 100_000_000u64; // 100 ms
        let expiry = 10_000_000_000u64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let draws = if cfg!(miri) { 2_000 } else { 200_000 };
        for (gap, beta) in [
            (0u64, 1.0),
            (50_000_000, 1.0),
            (100_000_000, 1.0),
            (300_000_000, 1.0),
            (100_000_000, 2.0),
        ] {
            let hits = (0..draws)
                .filter(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let u = ((x >> 11) + 1) as f64 / (1u64 << 53) as f64;
                    xfetch_due(expiry - gap, expiry, delta, beta, u)
                })
                .count();
            let measured = hits as f64 / draws as f64;
            let expected = (-(gap as f64) / (delta as f64 * beta)).exp();
            let tolerance = if cfg!(miri) { 0.05 } else { 0.01 };
            assert!(
                (measured - expected).abs() < tolerance,
                "gap {gap} beta {beta}: {measured:.4} vs {expected:.4}"
            );
        }
        // Never before a load that took no time, always at or past expiry.
        assert!(!xfetch_due(expiry - 1, expiry, 0, 1.0, 0.5));
        assert!(xfetch_due(expiry, expiry, 0, 1.0, 1.0));
    }
}
