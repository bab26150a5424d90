//! Public error types. A failed call hands back whatever it took from the caller.

use std::fmt;

/// Why [`CacheBuilder::build`](crate::CacheBuilder::build) refused its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// Neither `max_entries` nor `max_bytes` was set: a cache needs a bound.
    NoCapacity,
    /// Both `max_entries` and `max_bytes` were set: pick one mode.
    BothCapacities,
    /// The capacity is zero: such a cache could hold nothing.
    ZeroCapacity,
    /// `max_bytes` is below what larder charges for one entry of these types before the
    /// weigher adds anything: such a cache could hold nothing either.
    BelowOneEntry {
        /// The budget that was asked for.
        max_bytes: u64,
        /// larder's own overhead per entry, inline key and value included.
        entry_overhead: u64,
    },
    /// The capacity is larger than larder can account for: more than 2^25 entries per
    /// shard (2^33 in all, over the most shards), or more than 2^48 bytes.
    CapacityTooLarge {
        /// The capacity that was asked for.
        requested: u64,
    },
    /// `shards` was zero, not a power of two, or above [`MAX_SHARDS`](crate::MAX_SHARDS).
    BadShardCount {
        /// The shard count that was asked for.
        requested: usize,
    },
    /// A weigher was given in `max_entries` mode, where every entry weighs 1.
    WeigherWithoutBytes,
    /// A loading cache's refresh policy needs entries to expire: set `default_ttl`.
    RefreshWithoutTtl,
    /// The early-refresh factor `beta` must be finite and positive.
    BadRefreshBeta,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCapacity => write!(f, "set max_entries or max_bytes"),
            Self::BothCapacities => write!(f, "set only one of max_entries and max_bytes"),
            Self::ZeroCapacity => write!(f, "capacity must be at least 1"),
            Self::BelowOneEntry {
                max_bytes,
                entry_overhead,
            } => write!(
                f,
                "max_bytes {max_bytes} is below one entry's overhead ({entry_overhead} bytes)"
            ),
            Self::CapacityTooLarge { requested } => {
                write!(f, "capacity {requested} is larger than larder supports")
            }
            Self::BadShardCount { requested } => write!(
                f,
                "shard count {requested} must be a power of two between 1 and {}",
                crate::MAX_SHARDS
            ),
            Self::WeigherWithoutBytes => write!(f, "a weigher needs max_bytes mode"),
            Self::RefreshWithoutTtl => write!(f, "a refresh policy needs a default_ttl"),
            Self::BadRefreshBeta => write!(f, "the early-refresh beta must be finite and positive"),
        }
    }
}

impl std::error::Error for BuildError {}

/// An insert that the cache refused. The key and value are handed back unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct InsertError<K, V> {
    /// The key that was not inserted.
    pub key: K,
    /// The value that was not inserted.
    pub value: V,
    /// Why.
    pub kind: InsertErrorKind,
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertErrorKind {
    /// The entry's weight plus larder's per-entry overhead exceeds the whole budget.
    TooHeavy {
        /// The entry's weight as charged, overhead included.
        weight: u64,
        /// The cache's budget.
        budget: u64,
    },
    /// The key's shard has no free cell for the entry: every cell it may take (2^26) holds
    /// an entry, or a replaced or removed one that the epoch collector has not freed
    /// because some thread has stayed pinned (inside an eviction listener that blocks, say)
    /// through tens of millions of writes to that shard. Inserts succeed again once that
    /// thread moves on.
    NoFreeCell,
}

impl<K, V> fmt::Debug for InsertError<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InsertError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<K, V> fmt::Display for InsertError<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            InsertErrorKind::TooHeavy { weight, budget } => write!(
                f,
                "entry weighs {weight} (overhead included), more than the whole budget of {budget}"
            ),
            InsertErrorKind::NoFreeCell => write!(
                f,
                "no free cell in the key's shard: a thread has stayed pinned while it took them all"
            ),
        }
    }
}

impl<K, V> std::error::Error for InsertError<K, V> {}

/// Why [`Cache::try_get_or_insert_with_timeout`](crate::Cache::try_get_or_insert_with_timeout)
/// returned no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError<E> {
    /// This caller's loader failed; nothing was cached.
    Failed(E),
    /// Another caller's load of the key did not finish within the timeout. That load goes
    /// on (and may still cache its value); this caller stopped waiting.
    TimedOut,
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => write!(f, "the loader failed: {e}"),
            Self::TimedOut => write!(f, "timed out waiting for another caller's load"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for LoadError<E> {}
