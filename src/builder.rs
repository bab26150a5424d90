//! [`CacheBuilder`]: validates settings and builds a [`Cache`].

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::raw::{Config, Listener, RawCache, Weigher, SHARD_ENTRY_LIMIT};
use crate::time::{duration_to_nanos, Clock, MonotonicClock};
use crate::{BuildError, Cache, RemovalCause};

/// The largest shard count `shards` accepts.
pub const MAX_SHARDS: usize = 256;

/// Shards are not made smaller than this many entries by default: below it, sharding costs
/// more hit ratio (each shard runs its own policy on a slice of the traffic) than it buys in
/// parallelism. Measured on orm-busy (fixed hasher): at 763 entries 1 shard hit 74.7%, 2
/// shards 65.5%; at 3,817 entries 85.0% against 79.2%. 256, the previous value, split
/// those caches into 2 to 8 shards.
const MIN_DEFAULT_SHARD_ENTRIES: u64 = 4096;

/// Largest `max_entries`, 2^33: [`MAX_SHARDS`] shards of `SHARD_ENTRY_LIMIT` (2^25)
/// entries each (a shard's table names its entries' cells in 26 bits).
const MAX_ENTRIES: u64 = MAX_SHARDS as u64 * SHARD_ENTRY_LIMIT as u64;

/// Largest `max_bytes`, 2^48 (256 TiB). Under concurrency the global weight counter can
/// run over the budget by one entry per insert in flight (each entry weighs at most the
/// budget) before the evictions catch up, so the headroom to `u64::MAX` must cover many of
/// them: 2^16 inserts of the whole budget's weight at once. At `u64::MAX / 2`, the
/// previous limit, three concurrent inserts of about the whole budget into different
/// shards wrapped the counter, and the cache kept three times its budget at rest.
const MAX_BYTES: u64 = 1 << 48;

/// Sketch size a cache starts with; sketches grow with the entries they see, so a huge
/// capacity allocates nothing up front.
const INITIAL_SKETCH_ENTRIES: u64 = 4096;

/// Builds a [`Cache`]; start from [`Cache::builder`].
///
/// Exactly one capacity mode must be chosen: [`max_entries`](Self::max_entries) (every entry
/// weighs 1) or [`max_bytes`](Self::max_bytes) (entries weigh what the weigher says plus
/// larder's own per-entry overhead, so the budget tracks real memory like Redis `maxmemory`).
///
/// ```
/// use std::time::Duration;
/// use larder::Cache;
///
/// let cache = Cache::<String, Vec<u8>>::builder()
///     .max_bytes(64 * 1024 * 1024)
///     .weigher(|key: &String, value: &Vec<u8>| (key.len() + value.len()) as u64)
///     .default_ttl(Duration::from_secs(300))
///     .build()
///     .expect("valid settings");
/// assert_eq!(cache.len(), 0);
/// ```
#[must_use]
pub struct CacheBuilder<K, V, S = ahash::RandomState> {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    weigher: Option<Weigher<K, V>>,
    default_ttl: Option<Duration>,
    shards: Option<usize>,
    hasher: S,
    clock: Option<Arc<dyn Clock>>,
    listener: Option<Listener<K, V>>,
    /// Most entries per shard: `SHARD_ENTRY_LIMIT`, lowered only by tests.
    shard_entry_limit: usize,
    /// Most cells per shard: `arena::MAX_CELLS`, lowered only by tests.
    shard_cell_limit: usize,
    /// Bytes each entry keeps outside the engine's cell that the weigher does not see (a
    /// loading cache's shared allocation of the value it wraps): charged in byte mode.
    out_of_line: u64,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V, S> fmt::Debug for CacheBuilder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("default_ttl", &self.default_ttl)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl<K, V> CacheBuilder<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            max_entries: None,
            max_bytes: None,
            weigher: None,
            default_ttl: None,
            shards: None,
            hasher: ahash::RandomState::new(),
            clock: None,
            listener: None,
            shard_entry_limit: SHARD_ENTRY_LIMIT,
            shard_cell_limit: crate::raw::MAX_SHARD_CELLS,
            out_of_line: 0,
            _types: PhantomData,
        }
    }
}

impl<K, V, S> CacheBuilder<K, V, S> {
    /// The same settings for a cache of `W`, each holding a `V` that `project` reaches: the
    /// weigher and listener see the `V`. For caches that wrap values (loading caches).
    /// `out_of_line` is what each `W` keeps beyond its own inline size that the weigher
    /// does not count (the wrapper's allocation, the `V` inside it included): byte mode
    /// charges it to every entry (session 23's review: a loading cache of 4 KiB arrays under
    /// a 1 MiB budget held 8 MB of them, charged 168 KB).
    pub(crate) fn map_values<W: 'static>(
        self,
        project: fn(&W) -> &V,
        out_of_line: u64,
    ) -> CacheBuilder<K, W, S>
    where
        K: 'static,
        V: 'static,
    {
        let weigher = self.weigher.map(|weigh| -> Weigher<K, W> {
            Arc::new(move |key: &K, wrapped: &W| weigh(key, project(wrapped)))
        });
        let listener = self.listener.map(|listen| -> Listener<K, W> {
            Arc::new(move |key: &K, wrapped: &W, cause| listen(key, project(wrapped), cause))
        });
        CacheBuilder {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            weigher,
            default_ttl: self.default_ttl,
            shards: self.shards,
            hasher: self.hasher,
            clock: self.clock,
            listener,
            shard_entry_limit: self.shard_entry_limit,
            shard_cell_limit: self.shard_cell_limit,
            out_of_line: self.out_of_line.saturating_add(out_of_line),
            _types: PhantomData,
        }
    }

    /// The default TTL set so far.
    pub(crate) fn default_ttl_setting(&self) -> Option<Duration> {
        self.default_ttl
    }

    /// The clock set so far, or the default one (so a wrapper reads the cache's own time).
    pub(crate) fn clock_or_default(&mut self) -> Arc<dyn Clock> {
        Arc::clone(
            self.clock
                .get_or_insert_with(|| Arc::new(MonotonicClock::default())),
        )
    }

    /// A read-through cache: what it misses, it loads with `loader` (one load per key at a
    /// time), and with a [`Refresh`](crate::patterns::Refresh) policy it refreshes entries
    /// before or after they expire. See [`LoadingCache`](crate::patterns::LoadingCache).
    pub fn loader<F, E>(self, loader: F) -> crate::patterns::LoadingBuilder<K, V, F, S>
    where
        F: Fn(&K) -> Result<V, E> + Send + Sync + 'static,
    {
        crate::patterns::LoadingBuilder::new(self, loader)
    }

    /// [`loader`](Self::loader) with an async loader: the cache's reads are then
    /// [`LoadingCache::get_async`](crate::patterns::LoadingCache::get_async), on any
    /// runtime.
    pub fn async_loader<F, Fut, E>(self, loader: F) -> crate::patterns::LoadingBuilder<K, V, F, S>
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<V, E>>,
    {
        crate::patterns::LoadingBuilder::new(self, loader)
    }

    /// Count mode: at most `n` entries, each weighing 1.
    ///
    /// `n` may be up to 2^25 per shard: 2^33 with the most shards, which is what the
    /// default shard count gives a budget that needs them (see [`shards`](Self::shards)).
    /// Above that [`build`](Self::build) returns [`BuildError::CapacityTooLarge`].
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// Byte mode: each entry is charged its weigher's figure plus the entry's inline size
    /// and larder's per-entry metadata (about 68 bytes plus `size_of::<K>() +
    /// size_of::<V>()`), and the sum stays within `n` at rest (see the crate docs for the
    /// overshoot bound under concurrency). Without a weigher, only the fixed part is charged.
    /// A [`LoadingCache`](crate::patterns::LoadingCache) keeps each value in a shared
    /// allocation of its own (with its load time), whose size is charged too.
    ///
    /// Entries are stored in chunks of memory the cache reuses and frees only when it is
    /// dropped: after a [`clear`](Cache::clear) or a wave of expirations it keeps the room
    /// of the most entries it has held (which the budget bounds), ready for new ones.
    ///
    /// `n` may be up to 2^48 (256 TiB); above that [`build`](Self::build) returns
    /// [`BuildError::CapacityTooLarge`], and below one entry's overhead (larder's own
    /// bytes per entry, inline key and value included: 80-odd for `u64` keys and values)
    /// [`BuildError::BelowOneEntry`].
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }

    /// The heap bytes an entry's key and value own beyond their inline size, such as a
    /// `String`'s or `Vec`'s capacity (byte mode only; larder adds the inline size and its own
    /// overhead). Called once per insert, outside the shard's lock (a single-flight load
    /// stores its value under the lock of the cache's table of loads in flight, so a weigher
    /// must not call back into the cache's loading methods); a weigher that panics makes
    /// that insert panic and leaves the cache unchanged. Sums saturate, so `u64::MAX` is simply
    /// "too heavy".
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// TTL of entries inserted without one. `Duration::MAX` means no expiry.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Number of shards: a power of two from 1 to [`MAX_SHARDS`]. The default scales with
    /// available parallelism, keeps shards at least 4,096 entries large, and gives a count
    /// budget above 2^25 entries (a shard's most) as many shards as it needs. In byte mode
    /// the default counts on entries of about 1 KiB: set the count yourself when a small
    /// budget of small entries is written by many threads at once (more shards, fewer
    /// waits on a shard's lock) or a budget of large entries holds few of them (fewer
    /// shards, a better hit ratio).
    ///
    /// In count mode, `max_entries` above 2^25 per shard is refused by
    /// [`build`](Self::build) ([`BuildError::CapacityTooLarge`]). In byte mode a shard that
    /// reaches 2^25 entries (about 2.5 GB of them at the least) evicts its own entries to take more,
    /// even below the budget.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// Lowers the most entries a shard holds (2^25), so tests can reach it.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn shard_entry_limit(mut self, n: usize) -> Self {
        self.shard_entry_limit = n.clamp(1, SHARD_ENTRY_LIMIT);
        self
    }

    /// Lowers the most cells a shard's entries and the retired ones readers may still see
    /// take together (2^26), so tests can reach it (see [`InsertErrorKind::NoFreeCell`]).
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn shard_cell_limit(mut self, n: usize) -> Self {
        self.shard_cell_limit = n.clamp(1, crate::raw::MAX_SHARD_CELLS);
        self
    }

    /// The hasher for keys. The default, `ahash::RandomState`, is seeded at random per
    /// cache, which keeps crafted colliding keys from degrading lookups.
    pub fn hasher<S2: BuildHasher>(self, hasher: S2) -> CacheBuilder<K, V, S2> {
        CacheBuilder {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            weigher: self.weigher,
            default_ttl: self.default_ttl,
            shards: self.shards,
            hasher,
            clock: self.clock,
            listener: self.listener,
            shard_entry_limit: self.shard_entry_limit,
            shard_cell_limit: self.shard_cell_limit,
            out_of_line: self.out_of_line,
            _types: PhantomData,
        }
    }

    /// The time source for TTLs (default [`MonotonicClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Called with each entry that leaves the cache and why, after the cache's locks are
    /// released (so it may call back into the cache). A panic in the listener propagates to
    /// the call that triggered it once all pending notifications have run; the cache stays
    /// consistent.
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }
}

impl<K, V, S> CacheBuilder<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    /// Checks the settings and builds the cache.
    ///
    /// # Errors
    /// [`BuildError`] when no capacity or both were set, the capacity is zero, absurdly
    /// large or (in bytes) below one entry's overhead, a weigher was set without `max_bytes`, or `shards` is not a power of two in
    /// `1..=MAX_SHARDS`.
    pub fn build(self) -> Result<Cache<K, V, S>, BuildError> {
        // What byte mode charges each entry beyond its weigher's figure.
        let overhead = crate::raw::entry_overhead::<K, V>().saturating_add(self.out_of_line);
        let (budget, weigher) = match (self.max_entries, self.max_bytes) {
            (None, None) => return Err(BuildError::NoCapacity),
            (Some(_), Some(_)) => return Err(BuildError::BothCapacities),
            (Some(_), None) if self.weigher.is_some() => {
                return Err(BuildError::WeigherWithoutBytes)
            }
            (Some(0), None) | (None, Some(0)) => return Err(BuildError::ZeroCapacity),
            (Some(n), None) if n > MAX_ENTRIES => {
                return Err(BuildError::CapacityTooLarge { requested: n })
            }
            (None, Some(n)) if n > MAX_BYTES => {
                return Err(BuildError::CapacityTooLarge { requested: n })
            }
            (Some(n), None) => (n, None),
            (None, Some(n)) if n < overhead => {
                return Err(BuildError::BelowOneEntry {
                    max_bytes: n,
                    entry_overhead: overhead,
                })
            }
            (None, Some(n)) => {
                let weigher = self.weigher.unwrap_or_else(|| Arc::new(|_: &K, _: &V| 0));
                (n, Some(weigher))
            }
        };
        // In byte mode, guess entries from the smallest plausible entry.
        let expected_entries = match weigher {
            None => budget,
            Some(_) => budget / overhead.max(1),
        };
        let limit = self.shard_entry_limit as u64;
        let shards = match self.shards {
            Some(n) if n == 0 || !n.is_power_of_two() || n > MAX_SHARDS => {
                return Err(BuildError::BadShardCount { requested: n })
            }
            Some(n) => n,
            None => default_shards(match weigher {
                None => budget,
                Some(_) => budget / overhead.max(TYPICAL_ENTRY_BYTES),
            })
            .max(shards_needed(expected_entries, limit)),
        };
        // Byte mode leaves it to the shards (see `shards`).
        if weigher.is_none() && budget.div_ceil(shards as u64) > limit {
            return Err(BuildError::CapacityTooLarge { requested: budget });
        }
        let raw = RawCache::new(Config {
            budget,
            shards,
            weigher,
            entry_overhead: overhead,
            default_ttl: self.default_ttl.map(duration_to_nanos),
            hasher: self.hasher,
            clock: self
                .clock
                .unwrap_or_else(|| Arc::new(MonotonicClock::default())),
            listener: self.listener,
            expected_entries: expected_entries.min(INITIAL_SKETCH_ENTRIES * shards as u64) as usize,
            sample_size: crate::raw::window_sample_size(expected_entries),
            shard_entry_limit: self.shard_entry_limit,
            shard_cell_limit: self.shard_cell_limit,
            capacity_entries: expected_entries,
        });
        Ok(Cache::from_raw(raw))
    }
}

/// The bytes byte mode's default shard count assumes an entry weighs, overhead included.
///
/// The shard count is fixed for the cache's life, and a byte budget says nothing of how
/// many entries it will hold. Too many shards cost hit ratio: each shard runs its own
/// policy over its slice of the keys, which on a small cache is too few (see
/// [`MIN_DEFAULT_SHARD_ENTRIES`]). Too few cost only writers' waits on a shard's lock
/// (readers take none). Until session 25 the count assumed entries of larder's overhead
/// alone, so a 5 MB budget of 10 KB values (about 500 entries) ran on 8 shards and hit
/// 24.7% of the LIRS loop trace's reads, against 48.6% on one shard and 49.4% in count mode.
const TYPICAL_ENTRY_BYTES: u64 = 1024;

/// The fewest shards (a power of two, at most [`MAX_SHARDS`]) that hold `entries` at
/// `limit` entries each.
fn shards_needed(entries: u64, limit: u64) -> usize {
    let needed = entries.div_ceil(limit.max(1)).next_power_of_two();
    usize::try_from(needed).map_or(MAX_SHARDS, |n| n.min(MAX_SHARDS))
}

/// Four shards per core (so two threads rarely meet on a lock), fewer for small caches.
fn default_shards(expected_entries: u64) -> usize {
    if cfg!(any(miri, larder_loom)) {
        return 2;
    }
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let wanted = (cores * 4).next_power_of_two().min(MAX_SHARDS);
    let affordable = (expected_entries / MIN_DEFAULT_SHARD_ENTRIES).max(1);
    // Largest power of two not above `affordable`.
    let affordable = 1usize << (63 - affordable.leading_zeros()).min(16);
    wanted.min(affordable)
}
