//! Single-flight loading: one loader runs per key at a time; other callers wait for it.
//!
//! A caller that misses registers its key in a per-shard table of loads in flight. Later
//! callers for the same key find the registration and wait on its slot. The loader removes
//! its registration and publishes its value to the cache under the table's lock (newcomers
//! look at the cache again under that lock), then hands the value to its waiters. If the
//! loader fails or panics, its slot is marked abandoned and the waiters start over: one of
//! them becomes the next loader.
//!
//! The same protocol serves blocking callers and futures. A slot wakes blocked threads
//! through a condition variable and waiting futures through their wakers, so async loading
//! works on any runtime. A leading future that is dropped (cancelled, timed out) drops its
//! registration, which abandons the slot: a waiter takes over.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use hashbrown::HashTable;

use crate::sync::{lock, AtomicUsize, Condvar, Mutex, Ordering};
use crate::{Cache, LoadError};

/// How a load ended, as seen by its waiters.
#[derive(Debug)]
enum Outcome<V> {
    Loading,
    Done(V),
    /// The loader found nothing for the key (read-through of a store); nothing cached.
    Absent,
    Abandoned,
}

/// What a waiter learns once its load has ended.
enum Ended<V> {
    Value(V),
    Absent,
    /// The loader failed, panicked or was cancelled: look again, perhaps load.
    Abandoned,
}

/// Where waiters wait until their load ends: threads on `ended`, futures through `wakers`.
#[derive(Debug)]
struct Slot<V> {
    state: Mutex<SlotState<V>>,
    ended: Condvar,
}

#[derive(Debug)]
struct SlotState<V> {
    outcome: Outcome<V>,
    /// One entry per waiting future, at the index it keeps: replaced when it is polled
    /// with another waker, taken out when it is dropped. `None`s are free places.
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl<V: Clone> Slot<V> {
    fn new() -> Self {
        Self {
            state: Mutex::new(SlotState {
                outcome: Outcome::Loading,
                wakers: Vec::new(),
                free: Vec::new(),
            }),
            ended: Condvar::new(),
        }
    }

    fn end(&self, outcome: Outcome<V>) {
        let wakers = {
            let mut state = lock(&self.state);
            state.outcome = outcome;
            state.free.clear();
            std::mem::take(&mut state.wakers)
        };
        self.ended.notify_all();
        // Every waiter is woken even if one's waker panics (an executor's bug): the first
        // panic goes on once all are awake, unless this thread is already unwinding, where
        // a second panic would abort (session 23's review: the waiters after it slept on).
        let mut first_panic = None;
        for waker in wakers.into_iter().flatten() {
            let woken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
            if let Err(panic) = woken {
                first_panic.get_or_insert(panic);
            }
        }
        if let Some(panic) = first_panic {
            if !std::thread::panicking() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// What the load ended with, once it has.
    fn ended(state: &SlotState<V>) -> Option<Ended<V>> {
        match &state.outcome {
            Outcome::Loading => None,
            Outcome::Done(value) => Some(Ended::Value(value.clone())),
            Outcome::Absent => Some(Ended::Absent),
            Outcome::Abandoned => Some(Ended::Abandoned),
        }
    }

    /// Blocks until the load ends.
    fn wait(&self) -> Ended<V> {
        let mut state = lock(&self.state);
        loop {
            if let Some(ended) = Self::ended(&state) {
                return ended;
            }
            state = self.ended.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`Slot::wait`] giving up at `deadline`: `Err(())` if the load was still running.
    fn wait_until(&self, deadline: std::time::Instant) -> Result<Ended<V>, ()> {
        let mut state = lock(&self.state);
        loop {
            if let Some(ended) = Self::ended(&state) {
                return Ok(ended);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(());
            }
            state = self
                .ended
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The future form of [`Slot::wait`]: `place` is the waiting future's entry among the
    /// wakers, kept between polls.
    fn poll_wait(&self, cx: &mut Context<'_>, place: &mut Option<usize>) -> Poll<Ended<V>> {
        let mut state = lock(&self.state);
        if let Some(ended) = Self::ended(&state) {
            *place = None;
            return Poll::Ready(ended);
        }
        let state = &mut *state;
        match *place {
            Some(at) => match &mut state.wakers[at] {
                Some(waker) => waker.clone_from(cx.waker()),
                none => *none = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                *place = Some(match state.free.pop() {
                    Some(at) => {
                        state.wakers[at] = waker;
                        at
                    }
                    None => {
                        state.wakers.push(waker);
                        state.wakers.len() - 1
                    }
                });
            }
        }
        Poll::Pending
    }

    /// Takes a dropped waiting future's waker out (if the load has not ended meanwhile).
    fn forget(&self, place: usize) {
        let mut state = lock(&self.state);
        if matches!(state.outcome, Outcome::Loading) {
            state.wakers[place] = None;
            state.free.push(place);
        }
    }

    /// Waits for the load to end, as a future that leaves nothing behind when dropped.
    async fn wait_async(&self) -> Ended<V> {
        struct Place<'a, V: Clone>(&'a Slot<V>, Option<usize>);
        impl<V: Clone> Drop for Place<'_, V> {
            fn drop(&mut self) {
                if let Some(place) = self.1 {
                    self.0.forget(place);
                }
            }
        }
        let mut place = Place(self, None);
        std::future::poll_fn(|cx| self.poll_wait(cx, &mut place.1)).await
    }
}

/// A load in flight: the key it is for (owned by the loader until it inserts) and its slot.
struct InFlight<K, V> {
    hash: u64,
    key: K,
    slot: Arc<Slot<V>>,
    /// A plain `insert`, `remove` or `clear` of the key came while it ran: its value, maybe
    /// read from the source before that change, goes to its callers but not to the cache
    /// (session 22's review: the load's value undid the change).
    invalidated: bool,
    /// A write holding the key (write-through and its kin), not a load. Callers that come
    /// after it was invalidated wait for it to end, then look again: its value may be older
    /// than the change that invalidated it (another writer's, in the store before a
    /// cache-aside `remove`), and a load beside it could cache the store's value from
    /// before it. An invalidated load they pass by (see [`step`]).
    write: bool,
}

impl<K, V> InFlight<K, V> {
    /// Whether a caller that finds its key missing from the cache waits for this load or
    /// write (takes its value, or outlasts it: see `write`) rather than loading anew.
    fn joinable(&self) -> bool {
        self.write || !self.invalidated
    }
}

/// One shard of loads in flight.
type LoadShard<K, V> = Mutex<HashTable<InFlight<K, V>>>;

/// The loads in flight of one cache, sharded like the cache.
pub(crate) struct Loads<K, V> {
    shards: Box<[LoadShard<K, V>]>,
    /// Loads and writes registered, over all shards: a plain write checks it (one load)
    /// and looks for a load of its key only if there are any.
    in_flight: AtomicUsize,
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
            in_flight: AtomicUsize::new(0),
        }
    }

    fn shard(&self, hash: u64) -> &LoadShard<K, V> {
        &self.shards[hash as usize & (self.shards.len() - 1)]
    }

    /// Marks the load of `key` in flight, if any, so that its value is not cached: called by
    /// a plain write of the key before it changes the cache. SeqCst with the count's
    /// increment at registration: a write that sees no load registered came before it, and
    /// that load's read of the source comes after the write's change there.
    #[inline]
    pub(crate) fn invalidate<Q>(&self, hash: impl FnOnce() -> u64, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if self.in_flight.load(Ordering::SeqCst) != 0 {
            self.invalidate_in_flight(hash(), key);
        }
    }

    #[cold]
    #[inline(never)]
    fn invalidate_in_flight<Q>(&self, hash: u64, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut table = lock(self.shard(hash));
        // Loads already invalidated may linger beside the one callers join now.
        if let Some(load) =
            table.find_mut(hash, |load| !load.invalidated && load.key.borrow() == key)
        {
            load.invalidated = true;
        }
    }

    /// [`Loads::invalidate`] for every key (`clear`).
    pub(crate) fn invalidate_all(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        for shard in self.shards.iter() {
            lock(shard)
                .iter_mut()
                .for_each(|load| load.invalidated = true);
        }
    }
}

/// What an ended registration was.
struct Unregistered {
    /// A plain write of the key came while it ran.
    invalidated: bool,
    /// A write, not a load.
    write: bool,
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
        self.unregister_whole(table).0
    }

    /// [`Registration::unregister`], also giving what the registration was.
    fn unregister_whole(&mut self, table: &mut HashTable<InFlight<K, V>>) -> (K, Unregistered) {
        let slot = &self.slot;
        let Ok(found) = table.find_entry(self.hash, |load| Arc::ptr_eq(&load.slot, slot)) else {
            unreachable!("a registered load stays registered until its loader ends")
        };
        self.registered = false;
        self.loads.in_flight.fetch_sub(1, Ordering::SeqCst);
        let load = found.remove().0;
        let was = Unregistered {
            invalidated: load.invalidated,
            write: load.write,
        };
        (load.key, was)
    }

    fn end(&mut self, outcome: Outcome<V>) {
        self.ended = true;
        self.slot.end(outcome);
    }
}

impl<K, V: Clone> Drop for Registration<'_, K, V> {
    fn drop(&mut self) {
        // The key is dropped last, outside the lock: its `Drop` may panic, and the waiters
        // must be released first.
        let key = self.registered.then(|| {
            let mut table = lock(self.loads.shard(self.hash));
            self.unregister(&mut table)
        });
        if !self.ended {
            self.end(Outcome::Abandoned);
        }
        drop(key);
    }
}

/// Registers a load or (`write`) a write of `key`, which no caller of `table` (the locked
/// shard of `loads`) would join now: none is registered, or only loads a plain write
/// invalidated.
fn register<'a, K, V: Clone>(
    loads: &'a Loads<K, V>,
    table: &mut HashTable<InFlight<K, V>>,
    hash: u64,
    key: K,
    write: bool,
) -> Registration<'a, K, V> {
    let slot = Arc::new(Slot::new());
    let in_flight = InFlight {
        hash,
        key,
        slot: Arc::clone(&slot),
        invalidated: false,
        write,
    };
    table.insert_unique(hash, in_flight, |load| load.hash);
    loads.in_flight.fetch_add(1, Ordering::SeqCst);
    Registration {
        loads,
        hash,
        slot,
        registered: true,
        ended: false,
    }
}

/// A key's slot, taken for a write, or the slot of the load or write holding it now.
enum Claim<'a, K, V: Clone> {
    Held(Registration<'a, K, V>),
    Busy(Arc<Slot<V>>),
}

/// Registers a write of `key` unless a load or write of it is in flight. Unlike [`step`] it
/// ignores the cached value: a write replaces it.
fn try_claim<'a, K, V>(loads: &'a Loads<K, V>, hash: u64, key: &K) -> Claim<'a, K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    let mut table = lock(loads.shard(hash));
    if let Some(load) = table.find(hash, |load| load.key == *key) {
        return Claim::Busy(Arc::clone(&load.slot));
    }
    Claim::Held(register(loads, &mut table, hash, key.clone(), true))
}

/// Ends a write holding its key's registration: `Some(value)` is cached and handed to the
/// callers that waited, `None` removes the key (they look again).
fn finish_write<K, V, S>(
    cache: &Cache<K, V, S>,
    registration: Registration<'_, K, V>,
    outcome: Option<V>,
    ttl: Option<u64>,
) where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    match outcome {
        Some(value) => drop(publish(cache, registration, value, ttl)),
        None => withdraw(cache, registration),
    }
}

/// Ends a registration by removing its key from the cache: what a write of "no value"
/// publishes, and what a publish that cannot clone its value leaves (the write it ends may
/// already be in the store, so the older cached value must not stay).
fn withdraw<K, V, S>(cache: &Cache<K, V, S>, mut registration: Registration<'_, K, V>)
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    // Remove under the loads lock, as `publish` inserts: a newcomer then finds the
    // registration or the key gone. The listener runs after the lock is released.
    let guard = crate::sync::pin();
    let mut departed = cache.raw().departures();
    let key = {
        let mut table = lock(registration.loads.shard(registration.hash));
        let (key, was) = registration.unregister_whole(&mut table);
        // A plain write of the key that came during a *load* stays, as for `publish`
        // (session 23's review: a load whose value's `Clone` panicked removed it). A write's
        // withdrawal removes the key whatever came meanwhile: its store may hold no value,
        // or one this process could not clone, and a miss is always safe.
        if !was.invalidated || was.write {
            cache.raw().remove(&key, &guard, &mut departed);
        }
        key
    };
    // Waiters look again: the key is gone, so one of them loads it.
    registration.end(Outcome::Abandoned);
    cache.raw().finish(&mut departed);
    // Last, outside the lock: its `Drop` may panic, and the weight of what left must be
    // settled first (session 23's review: a panicking key left it on the budget for good).
    drop(key);
}

/// Runs `write` with exclusive hold of `key` against every load and write of it through
/// this cache, then publishes what it returns: `Some(value)` is cached and handed to the
/// callers that waited, `None` removes the key (they look again). An error or panic leaves
/// the cache unchanged and releases the waiters.
///
/// This is what keeps write-through and write-behind coherent with read-through: a load
/// that read the old value from the store can never publish it after the write.
pub(crate) fn write_exclusive<K, V, S, E>(
    cache: &Cache<K, V, S>,
    loads: &Loads<K, V>,
    key: K,
    write: impl FnOnce(&K) -> Result<Option<V>, E>,
) -> Result<(), E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    let hash = cache.raw().hash(&key);
    let registration = loop {
        match try_claim(loads, hash, &key) {
            Claim::Held(registration) => break registration,
            // Whatever it ended with, look again: the key is free only when unregistered.
            Claim::Busy(slot) => drop(slot.wait()),
        }
    };
    let outcome = write(&key)?;
    finish_write(cache, registration, outcome, None);
    Ok(())
}

/// The future form of [`write_exclusive`], caching the written value for `ttl` nanoseconds
/// (`None`: the cache's default). Cancelling it before `write` completes leaves the cache
/// unchanged and releases the waiters.
pub(crate) async fn write_exclusive_async<K, V, S, E, Fut>(
    cache: &Cache<K, V, S>,
    loads: &Loads<K, V>,
    key: K,
    ttl: Option<u64>,
    write: impl FnOnce(K) -> Fut,
) -> Result<(), E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    Fut: Future<Output = Result<Option<V>, E>>,
{
    let hash = cache.raw().hash(&key);
    let registration = loop {
        match try_claim(loads, hash, &key) {
            Claim::Held(registration) => break registration,
            Claim::Busy(slot) => drop(slot.wait_async().await),
        }
    };
    let outcome = write(key).await?;
    finish_write(cache, registration, outcome, ttl);
    Ok(())
}

/// Where a caller stands after looking for its key.
enum Step<'a, K, V: Clone> {
    /// The value was cached.
    Cached(V),
    /// Another caller is loading it: wait on the slot, then (if abandoned) look again with
    /// the key handed back.
    Wait(Arc<Slot<V>>, K),
    /// An invalidated write holds the key: wait for it to end, then look again.
    Outlast(Arc<Slot<V>>, K),
    /// This caller is the loader.
    Lead(Registration<'a, K, V>),
}

/// Looks for `key` in the cache, then among the loads in flight, registering a load if
/// there is none. `counted` means the caller's own read already counted this miss (and
/// recorded the access), so this look must not count it again.
fn step<'a, K, V, S>(
    cache: &Cache<K, V, S>,
    loads: &'a Loads<K, V>,
    hash: u64,
    key: K,
    counted: bool,
) -> Step<'a, K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    let cached = if counted {
        cache.peek(&key)
    } else {
        cache.get(&key)
    };
    if let Some(value) = cached {
        return Step::Cached(value);
    }
    // Pinned before locking: a pin may run deferred drops (user `Drop` code), and the
    // nested pin of `peek` below never does, so none runs under the loads lock.
    let _pinned = crate::sync::pin();
    let mut table = lock(loads.shard(hash));
    // A load may have ended between that read and this lock. Loaders publish to the cache
    // under this lock, so looking again here cannot miss one.
    if let Some(value) = cache.peek(&key) {
        return Step::Cached(value);
    }
    // A load that a plain `remove` or `clear` invalidated may have read the source before
    // that change: a caller that came after it loads anew (session 23's review: it got the
    // old value, after `remove` had returned).
    if let Some(load) = table.find(hash, |load| load.joinable() && load.key == key) {
        // An invalidated write: its value may be older than the change that invalidated
        // it (another writer's, made in the store before a cache-aside `remove`). Outlast
        // it (a load beside it could cache the old value after it), then look again.
        if load.invalidated {
            return Step::Outlast(Arc::clone(&load.slot), key);
        }
        return Step::Wait(Arc::clone(&load.slot), key);
    }
    Step::Lead(register(loads, &mut table, hash, key, false))
}

/// Publishes the loader's value: unregisters, caches it and hands it to the waiters.
fn publish<K, V, S>(
    cache: &Cache<K, V, S>,
    mut registration: Registration<'_, K, V>,
    value: V,
    ttl: Option<u64>,
) -> V
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    // Clone first, so a panicking `Clone` leaves nothing half done: the key leaves the cache
    // (a write-through's store may already hold this value, so an older cached one must not
    // stay), the waiters are released and look again, and the panic goes on to the caller.
    let clones = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (value.clone(), value.clone())
    }));
    let (for_waiters, for_caller) = match clones {
        Ok(clones) => clones,
        Err(panic) => {
            withdraw(cache, registration);
            std::panic::resume_unwind(panic);
        }
    };
    let guard = crate::sync::pin();
    // Unregister and publish to the cache under the shard's lock: a newcomer then finds
    // either the registration or the cached value, so loads of one key never run twice.
    // The listener runs after the lock is released (`finish`), so it may use this cache.
    let mut departed = cache.raw().departures();
    // What is dropped only once the waiters are released and the weight settled: user
    // `Drop` code may panic (session 23's review: a refused value's panic skipped both).
    let mut invalidated_key = None;
    let mut refused_entry = None;
    'publish: {
        let mut table = lock(registration.loads.shard(registration.hash));
        let (key, was) = registration.unregister_whole(&mut table);
        if was.invalidated {
            // Not cached; the key is dropped outside the lock (its `Drop` may panic).
            invalidated_key = Some(key);
            break 'publish;
        }
        // Weighed apart, while the key is still at hand: a panicking weigher must not leave
        // an older cached value behind either (session 21's review found a write-through
        // whose store held the new value while the cache kept the old).
        let weight = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cache.raw().weigh(&key, &value)
        }));
        let weight = match weight {
            Ok(weight) => weight,
            Err(panic) => {
                cache.raw().remove(&key, &guard, &mut departed);
                drop(table);
                registration.end(Outcome::Abandoned);
                cache.raw().finish(&mut departed);
                std::panic::resume_unwind(panic);
            }
        };
        let inserted = cache.insert_weighed_pinned(key, value, weight, ttl, &guard, &mut departed);
        if let Err(refused) = inserted {
            // Too heavy to cache, or no free cell for it: still handed to this caller and its
            // waiters, and an older cached value of the key (a write replacing it) must not
            // stay behind.
            cache.raw().remove(&refused.key, &guard, &mut departed);
            refused_entry = Some(refused);
        }
    }
    registration.end(Outcome::Done(for_waiters));
    cache.raw().finish(&mut departed);
    drop(invalidated_key);
    drop(refused_entry);
    for_caller
}

/// What a waiter makes of the load it joined when that load found nothing (a read-through
/// of a store, whose loader returns `Ok(None)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfAbsent {
    /// The waiter's own loader could find nothing too (read-through): nothing is its
    /// answer as well, rather than a second look at the store.
    Share,
    /// The waiter's own loader always returns a value (`get_or_insert_with` and its kin,
    /// which may join a read-through's load of the same key): it looks again and loads, as
    /// after an abandoned load.
    LoadOwn,
}

/// Single-flight: the cached value of `key`, else one caller's load shared with the others.
/// The loader may find nothing (`Ok(None)`, read-through of a store): then nothing is
/// cached and the waiters learn it too (what they make of it: `if_absent`). `counted`: the
/// caller has just read `key`, missed, and had that miss counted. With a `deadline`,
/// waiting for another caller's load gives up then ([`LoadError::TimedOut`]).
pub(crate) fn get_or_load<K, V, S, E>(
    cache: &Cache<K, V, S>,
    loads: &Loads<K, V>,
    key: K,
    counted: bool,
    deadline: Option<std::time::Instant>,
    if_absent: IfAbsent,
    load: impl FnOnce() -> Result<Option<V>, E>,
) -> Result<Option<V>, LoadError<E>>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    let hash = cache.raw().hash(&key);
    let mut key = key;
    let mut counted = counted;
    let registration = loop {
        match step(
            cache,
            loads,
            hash,
            key,
            std::mem::replace(&mut counted, true),
        ) {
            Step::Cached(value) => return Ok(Some(value)),
            Step::Wait(slot, handed_back) => {
                let ended = match deadline {
                    None => slot.wait(),
                    Some(deadline) => slot
                        .wait_until(deadline)
                        .map_err(|()| LoadError::TimedOut)?,
                };
                match ended {
                    Ended::Value(value) => {
                        cache.raw().count_joined_load();
                        return Ok(Some(value));
                    }
                    Ended::Absent if if_absent == IfAbsent::Share => {
                        cache.raw().count_joined_load();
                        return Ok(None);
                    }
                    // Look again, and perhaps become the loader.
                    Ended::Absent | Ended::Abandoned => key = handed_back,
                }
            }
            Step::Outlast(slot, handed_back) => {
                match deadline {
                    None => drop(slot.wait()),
                    Some(deadline) => drop(
                        slot.wait_until(deadline)
                            .map_err(|()| LoadError::TimedOut)?,
                    ),
                }
                key = handed_back;
            }
            Step::Lead(registration) => break registration,
        }
    };
    // If `load` fails or panics, dropping the registration releases the waiters.
    cache.raw().count_load();
    match load().map_err(LoadError::Failed)? {
        Some(value) => Ok(Some(publish(cache, registration, value, None))),
        None => {
            conclude_absent(registration);
            Ok(None)
        }
    }
}

/// Ends a load that found nothing: unregistered, nothing cached, waiters told.
fn conclude_absent<K, V: Clone>(mut registration: Registration<'_, K, V>) {
    {
        let mut table = lock(registration.loads.shard(registration.hash));
        registration.unregister(&mut table);
    }
    registration.end(Outcome::Absent);
}

/// The future form of [`get_or_load`]. Cancellation at any await point is safe: a dropped
/// leader abandons its load (a waiter takes over), a dropped waiter just stops waiting.
/// The load gives the value and its TTL in nanoseconds (`None`: the cache's default).
pub(crate) async fn get_or_load_async<K, V, S, E>(
    cache: &Cache<K, V, S>,
    loads: &Loads<K, V>,
    key: K,
    counted: bool,
    if_absent: IfAbsent,
    load: impl Future<Output = Result<Option<(V, Option<u64>)>, E>>,
) -> Result<Option<V>, E>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    let hash = cache.raw().hash(&key);
    let mut key = key;
    let mut counted = counted;
    let registration = loop {
        match step(
            cache,
            loads,
            hash,
            key,
            std::mem::replace(&mut counted, true),
        ) {
            Step::Cached(value) => return Ok(Some(value)),
            Step::Wait(slot, handed_back) => {
                match slot.wait_async().await {
                    Ended::Value(value) => {
                        cache.raw().count_joined_load();
                        return Ok(Some(value));
                    }
                    Ended::Absent if if_absent == IfAbsent::Share => {
                        cache.raw().count_joined_load();
                        return Ok(None);
                    }
                    // A load that found nothing is no value for a loader that always
                    // returns one: look again (and load) like after an abandon.
                    Ended::Absent | Ended::Abandoned => key = handed_back,
                }
            }
            Step::Outlast(slot, handed_back) => {
                drop(slot.wait_async().await);
                key = handed_back;
            }
            Step::Lead(registration) => break registration,
        }
    };
    cache.raw().count_load();
    match load.await? {
        Some((value, ttl)) => Ok(Some(publish(cache, registration, value, ttl))),
        None => {
            conclude_absent(registration);
            Ok(None)
        }
    }
}
