//! The source of truth behind a cache.

/// Where values live when they are not cached: a database, a service, a file.
///
/// Only `load`, `store` and `delete` are required. The batch forms default to one call per
/// key; override them when the store can do better (one transaction, one round trip), as
/// write-behind sends its batches through them.
///
/// A store is shared between the callers and (for [`WriteBehind`](super::WriteBehind)) a
/// background thread, hence `Send + Sync`; wrap a connection in a `Mutex` or use a pool.
pub trait Store<K, V>: Send + Sync + 'static {
    /// Why a call failed. Write patterns hand it back to the caller or retry on it.
    type Error: std::fmt::Debug + std::fmt::Display + Send + Sync + 'static;

    /// The value stored for `key`, or `None` if there is none.
    ///
    /// # Errors
    /// The store could not answer.
    fn load(&self, key: &K) -> Result<Option<V>, Self::Error>;

    /// Stores `value` for `key`, replacing any previous value.
    ///
    /// # Errors
    /// The write did not happen (or may not have: write patterns retry or report it).
    fn store(&self, key: &K, value: &V) -> Result<(), Self::Error>;

    /// Deletes `key`; deleting an absent key succeeds.
    ///
    /// # Errors
    /// The delete did not happen.
    fn delete(&self, key: &K) -> Result<(), Self::Error>;

    /// [`load`](Self::load) for several keys, answers in the same order.
    ///
    /// # Errors
    /// As `load`; no partial answer is returned.
    fn load_many(&self, keys: &[K]) -> Result<Vec<Option<V>>, Self::Error> {
        keys.iter().map(|key| self.load(key)).collect()
    }

    /// [`store`](Self::store) for several entries; keys are distinct. Should be atomic if
    /// the store can make it so: write-behind retries a failed batch whole.
    ///
    /// # Errors
    /// As `store`.
    fn store_many(&self, entries: &[(K, V)]) -> Result<(), Self::Error> {
        entries
            .iter()
            .try_for_each(|(key, value)| self.store(key, value))
    }

    /// [`delete`](Self::delete) for several keys; keys are distinct.
    ///
    /// # Errors
    /// As `delete`.
    fn delete_many(&self, keys: &[K]) -> Result<(), Self::Error> {
        keys.iter().try_for_each(|key| self.delete(key))
    }
}
