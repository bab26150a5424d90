//! Single-flight loading: one loader runs per key at a time; other callers wait for it.
//!
//! A caller that misses registers its key in a per-shard table of loads in flight. Later
//! callers for the same key find the registration and wait on its slot. The loader removes
//! its registration and publishes its value to the cache under the table's lock (newcomers
//! look at the cache again under that lock), then hands the value to its waiters. If the
//! loader fails or panics, its slot is marked abandoned and the waiters start over: one of
//! them becomes the next loader.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::sync::{lock, Condvar, Mutex};
use crate::Cache;

/// How a load ended, as seen by its waiters.
#[derive(Debug)]
enum Outcome<V> {
    Loading,
    Done(V),
    Abandoned,
}

/// Where waiters block until their load ends.
#[derive(Debug)]
struct Slot<V> {
    outcome: Mutex<Outcome<V>>,
    ended: Condvar,
}

impl<V: Clone> Slot<V> {
    fn end(&self, outcome: Outcome<V>) {
        *lock(&self.outcome) = outcome;
        self.ended.notify_all();
    }

    /// Blocks until the load ends; `None` if it was abandoned.
    fn wait(&self) -> Option<V> {
        let mut outcome = lock(&self.outcome);
        loop {
            match &*outcome {
                Outcome::Loading => {
                    outcome = self.ended.wait(outcome).unwrap_or_else(|e| e.into_inner());
                }
                Outcome::Done(value) => return Some(value.clone()),
                Outcome::Abandoned => return None,
            }
        }
    }
}

/// A load in flight: the key it is for (owned by the loader until it inserts) and its slot.
struct InFlight<K, V> {
    hash: u64,
    key: K,
    slot: Arc<Slot<V>>,
}

/// The loads in flight of one cache, sharded like the cache.
/// One shard of loads in flight.
type LoadShard<K, V> = Mutex<HashTable<InFlight<K, V>>>;

pub(crate) struct Loads<K, V> {
    shards: Box<[LoadShard<K, V>]>,
}

impl<K, V> std::fmt::Debug for Loads<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loads").finish_non_exhaustive()
    }
}

impl<K, V> Loads<K, V> {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashTable::new())).collect(),
        }
    }

    fn shard(&self, hash: u64) -> &LoadShard<K, V> {
        &self.shards[hash as usize & (self.shards.len() - 1)]
    }
}

/// The loader's hold on its registration. Whatever way the loader leaves (value, error or
/// panic anywhere, including in `Clone` or the weigher), dropping this unregisters the key if
/// still registered and ends the slot as abandoned if it has not ended, so no waiter blocks
/// forever.
struct Registration<'a, K, V: Clone> {
    loads: &'a Loads<K, V>,
    hash: u64,
    slot: Arc<Slot<V>>,
    registered: bool,
    ended: bool,
}

impl<K, V: Clone> Registration<'_, K, V> {
    /// Takes the registration out of `table` (its shard, locked by the caller) and returns
    /// its key.
    fn unregister(&mut self, table: &mut HashTable<InFlight<K, V>>) -> K {
        let slot = &self.slot;
        let Ok(found) = table.find_entry(self.hash, |load| Arc::ptr_eq(&load.slot, slot)) else {
            unreachable!("a registered load stays registered until its loader ends")
        };
        self.registered = false;
        found.remove().0.key
    }

    fn end(&mut self, outcome: Outcome<V>) {
        self.ended = true;
        self.slot.end(outcome);
    }
}

impl<K, V: Clone> Drop for Registration<'_, K, V> {
    fn drop(&mut self) {
        if self.registered {
            let mut table = lock(self.loads.shard(self.hash));
            drop(self.unregister(&mut table));
        }
        if !self.ended {
            self.end(Outcome::Abandoned);
        }
    }
}

pub(crate) fn get_or_load<K, V, S, E>(
    cache: &Cache<K, V, S>,
    loads: &Loads<K, V>,
    key: K,
    load: impl FnOnce() -> Result<V, E>,
) -> Result<V, E>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    let hash = cache.raw().hash(&key);
    let slot = loop {
        if let Some(value) = cache.get(&key) {
            return Ok(value);
        }
        let mut table = lock(loads.shard(hash));
        // A load may have ended between that read and this lock. Loaders publish to the
        // cache under this lock, so looking again here cannot miss one.
        if let Some(value) = cache.peek(&key) {
            return Ok(value);
        }
        if let Some(load) = table.find(hash, |load| load.key == key) {
            let slot = Arc::clone(&load.slot);
            drop(table);
            if let Some(value) = slot.wait() {
                return Ok(value);
            }
            // Abandoned: look again, and perhaps become the loader.
            continue;
        }
        let slot = Arc::new(Slot {
            outcome: Mutex::new(Outcome::Loading),
            ended: Condvar::new(),
        });
        table.insert_unique(
            hash,
            InFlight {
                hash,
                key,
                slot: Arc::clone(&slot),
            },
            |load| load.hash,
        );
        break slot;
    };
    let mut registration = Registration {
        loads,
        hash,
        slot,
        registered: true,
        ended: false,
    };
    let value = load()?;
    let guard = crate::sync::pin();
    // Unregister and publish to the cache under the shard's lock: a newcomer then finds
    // either the registration or the cached value, so loads of one key never run twice.
    // The listener runs after the lock is released (`finish`), so it may use this cache.
    let departed = {
        let mut table = lock(loads.shard(hash));
        let key = registration.unregister(&mut table);
        // A value too heavy to cache is still handed to this caller and its waiters.
        cache.insert_pinned(key, value.clone(), None, &guard).ok()
    };
    registration.end(Outcome::Done(value.clone()));
    if let Some(departed) = departed {
        cache.raw().finish(departed);
    }
    Ok(value)
}
