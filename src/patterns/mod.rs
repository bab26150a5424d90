//! Caching patterns on top of [`Cache`]: read-through with refresh
//! ([`LoadingCache`], from [`CacheBuilder::loader`](crate::CacheBuilder::loader)), the
//! source of truth behind a cache (a [`Store`]), and the ways writes reach it.
//!
//! | pattern | a write goes | a read that misses | use it when |
//! |---|---|---|---|
//! | [`WriteThrough`] | to the store, then the cache | loads from the store (single-flight) | every write must be durable before it returns |
//! | [`WriteBehind`] | to the cache and a queue; a background thread batches it to the store | looks in the queue, then the store | writes are frequent and may be acknowledged before they are durable |
//!
//! Both hold a key exclusively while they write it, against every load of it through the
//! same cache, so a load that read the old value from the store can never cache it after a
//! newer write (the classic cache-aside race).

mod loading;
mod store;
#[cfg(feature = "serde")]
pub mod warm_up;
mod write_behind;
mod write_through;

use std::hash::{BuildHasher, Hash};

use crate::Cache;

pub use loading::{LoadingBuilder, LoadingCache, LoadingStats, Refresh};
pub use store::Store;
pub use write_behind::{
    Backpressure, Unwritten, WriteBehind, WriteBehindBuilder, WriteBehindError, WriteBehindStats,
};
pub use write_through::WriteThrough;

/// Read-through for the write patterns: the cached value, else `load`'s answer (one load
/// per key however many callers ask), cached if present. Absence is not cached.
fn read_through<K, V, S, E>(
    cache: &Cache<K, V, S>,
    key: &K,
    load: impl FnOnce() -> Result<Option<V>, E>,
) -> Result<Option<V>, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    if let Some(value) = cache.get(key) {
        return Ok(Some(value));
    }
    cache.try_get_or_insert_after_miss(key.clone(), load)
}
