//! Write-through: a write reaches the store before the cache.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::Store;
use crate::Cache;

/// A cache in front of a [`Store`] that writes through it: `insert` and `remove` go to the
/// store first and change the cache only once the store has accepted them; `get` reads
/// through (a miss loads from the store, one load per key however many callers ask).
///
/// Guarantees: a store error is returned, and the key's cached value is dropped (the store
/// may have taken the write anyway; the next read loads what it holds); a write holds its
/// key against concurrent loads, so a load that read the old value cannot cache it after the
/// write. Cost: every write waits for the store. Other processes writing the same store are
/// not seen until the entry leaves the cache (use TTLs, or the Redis tier's invalidation).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use larder::patterns::{Store, WriteThrough};
///
/// #[derive(Default)]
/// struct Db(Mutex<HashMap<u64, String>>);
///
/// impl Store<u64, String> for Db {
///     type Error = std::convert::Infallible;
///     fn load(&self, key: &u64) -> Result<Option<String>, Self::Error> {
///         Ok(self.0.lock().unwrap().get(key).cloned())
///     }
///     fn store(&self, key: &u64, value: &String) -> Result<(), Self::Error> {
///         self.0.lock().unwrap().insert(*key, value.clone());
///         Ok(())
///     }
///     fn delete(&self, key: &u64) -> Result<(), Self::Error> {
///         self.0.lock().unwrap().remove(key);
///         Ok(())
///     }
/// }
///
/// let cache = larder::Cache::builder().max_entries(1000).build().unwrap();
/// let users = WriteThrough::new(cache, Db::default());
/// users.insert(1, "ada".to_string()).unwrap();
/// assert_eq!(users.store().load(&1).unwrap().as_deref(), Some("ada"));
/// assert_eq!(users.get(&1).unwrap().as_deref(), Some("ada"));
/// ```
#[derive(Debug)]
pub struct WriteThrough<K, V, St, S = ahash::RandomState> {
    cache: Cache<K, V, S>,
    store: Arc<St>,
}

impl<K, V, St, S> Clone for WriteThrough<K, V, St, S> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            store: Arc::clone(&self.store),
        }
    }
}

impl<K, V, St, S> WriteThrough<K, V, St, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    St: Store<K, V>,
    S: BuildHasher,
{
    /// Puts `cache` in front of `store`.
    pub fn new(cache: Cache<K, V, S>, store: St) -> Self {
        Self {
            cache,
            store: Arc::new(store),
        }
    }

    /// The cache (for statistics, or reads that must not reach the store).
    pub fn cache(&self) -> &Cache<K, V, S> {
        &self.cache
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The value for `key`: from the cache, else loaded from the store and cached. Absent
    /// keys are not cached (each miss asks the store again).
    ///
    /// # Errors
    /// The store's error on a miss; nothing is cached.
    pub fn get(&self, key: &K) -> Result<Option<V>, St::Error> {
        super::read_through(&self.cache, key, || self.store.load(key))
    }

    /// Stores `value` for `key` in the store, then in the cache. If the entry is too heavy
    /// for the cache it is stored but not cached (and any older cached value is dropped).
    ///
    /// # Errors
    /// The store's error. The key's cached value is dropped then, since the store may have
    /// taken the write all the same (see [`Store::store`]): the next read loads what the
    /// store holds. A store that panics is treated alike before the panic goes on.
    pub fn insert(&self, key: K, value: V) -> Result<(), St::Error> {
        self.write(key, |key| {
            self.store.store(key, &value).map(|()| Some(value))
        })
    }

    /// Deletes `key` from the store, then from the cache.
    ///
    /// # Errors
    /// The store's error; the key's cached value is dropped all the same, as for
    /// [`insert`](Self::insert).
    pub fn remove(&self, key: &K) -> Result<(), St::Error> {
        self.write(key.clone(), |key| self.store.delete(key).map(|()| None))
    }

    /// Runs the store call `write` holding `key` against every load and write of it, and
    /// caches what it returns. A call that fails or panics may have reached the store
    /// anyway (an acknowledgement lost to a timeout, a panic after the commit), so the key
    /// then leaves the cache: keeping the old value could serve it beside a store that
    /// holds the new one (session 22's review showed both).
    fn write(
        &self,
        key: K,
        write: impl FnOnce(&K) -> Result<Option<V>, St::Error>,
    ) -> Result<(), St::Error> {
        let mut failure = None;
        let mut panic = None;
        let cached: Result<(), std::convert::Infallible> = self.cache.write_with(key, |key| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(key))) {
                Ok(Ok(cached)) => Ok(cached),
                Ok(Err(error)) => {
                    failure = Some(error);
                    Ok(None)
                }
                Err(payload) => {
                    panic = Some(payload);
                    Ok(None)
                }
            }
        });
        let Ok(()) = cached;
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
        failure.map_or(Ok(()), Err)
    }
}
