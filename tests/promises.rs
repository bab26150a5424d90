//! The documented promises of the in-process cache and its patterns, from session 23's
//! audit: each test checks one the other tests did not (three failed before their fixes:
//! a key's or a refused value's panicking `Drop` in a write, and a panicking refresh's
//! count).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::patterns::{Refresh, Store, WriteBehindBuilder, WriteThrough};
use larder::{BuildError, Cache, InsertErrorKind, LoadError, ManualClock, RemovalCause};

type Heard<K, V> = Arc<Mutex<Vec<(K, V, RemovalCause)>>>;

fn listener<K: Clone + Send + 'static, V: Clone + Send + 'static>(
    heard: &Heard<K, V>,
) -> impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static {
    let heard = Arc::clone(heard);
    move |k: &K, v: &V, c| heard.lock().unwrap().push((k.clone(), v.clone(), c))
}

// ---------------------------------------------------------------------------------------
// A key whose `Drop` panics once, when armed: the first drop of key 7 after arming.

static KEY_DROP_ARMED: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct BombKey(u64);

impl Clone for BombKey {
    fn clone(&self) -> Self {
        BombKey(self.0)
    }
}
impl PartialEq for BombKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for BombKey {}
impl Hash for BombKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}
impl Drop for BombKey {
    fn drop(&mut self) {
        if self.0 == 7 && !std::thread::panicking() && KEY_DROP_ARMED.swap(false, Ordering::SeqCst)
        {
            panic!("key Drop panicked");
        }
    }
}

struct MapStore<K, V>(Mutex<HashMap<K, V>>);

impl<K, V> Default for MapStore<K, V> {
    fn default() -> Self {
        MapStore(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static, V: Clone + Send + Sync + 'static> Store<K, V>
    for MapStore<K, V>
{
    type Error = String;
    fn load(&self, key: &K) -> Result<Option<V>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn store(&self, key: &K, value: &V) -> Result<(), String> {
        self.0.lock().unwrap().insert(key.clone(), value.clone());
        Ok(())
    }
    fn delete(&self, key: &K) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

/// A store of `BombKey`s that keeps plain ids, so it never drops a `BombKey` itself.
#[derive(Default)]
struct IdStore(Mutex<HashMap<u64, u64>>);

impl Store<BombKey, u64> for IdStore {
    type Error = String;
    fn load(&self, key: &BombKey) -> Result<Option<u64>, String> {
        Ok(self.0.lock().unwrap().get(&key.0).copied())
    }
    fn store(&self, key: &BombKey, value: &u64) -> Result<(), String> {
        self.0.lock().unwrap().insert(key.0, *value);
        Ok(())
    }
    fn delete(&self, key: &BombKey) -> Result<(), String> {
        self.0.lock().unwrap().remove(&key.0);
        Ok(())
    }
}

/// lib.rs "Bad input": a panic in user code "reaches the caller of the call that ran it, and
/// leaves the cache consistent"; a key's `Drop` panic "is contained where larder drops
/// entries". A write-through `remove` whose key's `Drop` panics when larder drops the key it
/// registered must not leave the removed entry's weight charged, nor its departure unheard.
#[test]
fn a_key_drop_panic_in_a_write_through_remove_leaves_the_cache_consistent() {
    let heard: Heard<u64, u64> = Arc::default();
    let heard_in = Arc::clone(&heard);
    let cache: Cache<BombKey, u64> = Cache::builder()
        .max_entries(100)
        .eviction_listener(move |k: &BombKey, v: &u64, c| {
            heard_in.lock().unwrap().push((k.0, *v, c))
        })
        .build()
        .unwrap();
    let users = WriteThrough::new(cache.clone(), IdStore::default());
    for k in 0..10 {
        users.insert(BombKey(k), k * 10).unwrap();
    }
    assert_eq!(cache.weighted_size(), 10);
    let key = BombKey(7);
    KEY_DROP_ARMED.store(true, Ordering::SeqCst);
    let result = catch_unwind(AssertUnwindSafe(|| users.remove(&key)));
    KEY_DROP_ARMED.store(false, Ordering::SeqCst);
    drop(key);
    // Whether or not the panic reached the caller, the cache must be consistent.
    assert!(result.is_err(), "the key's Drop panic reaches the caller");
    assert_eq!(users.store().load(&BombKey(7)).unwrap(), None);
    assert_eq!(cache.get(&BombKey(7)), None);
    assert_eq!(cache.len(), 9);
    assert_eq!(
        cache.weighted_size(),
        cache.len() as u64,
        "count mode: the weighted size is the entry count at rest"
    );
    assert_eq!(
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, c)| *k == 7 && *c == RemovalCause::Removed)
            .count(),
        1,
        "the listener hears the removal once"
    );
    cache.validate();
}

// ---------------------------------------------------------------------------------------
// A value whose `Drop` panics when it is the caller's original (clones are harmless).

static VALUE_DROP_ARMED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, PartialEq)]
struct BombValue {
    len: u64,
    original: bool,
}

impl Clone for BombValue {
    fn clone(&self) -> Self {
        BombValue {
            len: self.len,
            original: false,
        }
    }
}
impl Drop for BombValue {
    fn drop(&mut self) {
        if self.original
            && !std::thread::panicking()
            && VALUE_DROP_ARMED.swap(false, Ordering::SeqCst)
        {
            panic!("value Drop panicked");
        }
    }
}

/// A write-through insert of an entry too heavy to cache removes the older cached value;
/// if the refused value's `Drop` then panics, the removal must still be settled (weight off
/// the budget, the listener told).
#[test]
fn a_value_drop_panic_in_a_too_heavy_write_through_insert_leaves_the_cache_consistent() {
    let heard: Heard<u64, u64> = Arc::default();
    let heard_in = Arc::clone(&heard);
    let cache: Cache<u64, BombValue> = Cache::builder()
        .max_bytes(1 << 16)
        .shards(1)
        .weigher(|_, v: &BombValue| v.len)
        .eviction_listener(move |k: &u64, v: &BombValue, c| {
            heard_in.lock().unwrap().push((*k, v.len, c))
        })
        .build()
        .unwrap();
    let users = WriteThrough::new(cache.clone(), MapStore::<u64, BombValue>::default());
    for k in 0..4 {
        users
            .insert(
                k,
                BombValue {
                    len: 10,
                    original: false,
                },
            )
            .unwrap();
    }
    let per_entry = cache.weighted_size() / 4;
    VALUE_DROP_ARMED.store(true, Ordering::SeqCst);
    let result = catch_unwind(AssertUnwindSafe(|| {
        users.insert(
            1,
            BombValue {
                len: 1 << 20,
                original: true,
            },
        )
    }));
    VALUE_DROP_ARMED.store(false, Ordering::SeqCst);
    assert!(result.is_err(), "the value's Drop panic reaches the caller");
    assert_eq!(cache.get(&1), None, "the older value must not stay");
    assert_eq!(cache.len(), 3);
    assert_eq!(
        cache.weighted_size(),
        3 * per_entry,
        "the removed older value's weight must leave the budget"
    );
    assert_eq!(
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| *k == 1)
            .count(),
        1,
        "the listener hears key 1's old value leave once"
    );
    cache.validate();
}

// ---------------------------------------------------------------------------------------

/// `contains_key`: "Does not count as a read (no statistics, no frequency)."
#[test]
fn contains_key_counts_no_read_and_no_frequency() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    for k in 0..10 {
        cache.insert(k, k).unwrap();
    }
    for _ in 0..50 {
        assert!(cache.contains_key(&3));
        assert!(!cache.contains_key(&99));
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0));
    for _ in 0..3 {
        cache.get(&5);
    }
    assert_eq!(cache.hottest(1), vec![(5, 5)]);
}

/// `contains_key` and `get` never report an expired entry.
#[test]
fn contains_key_and_hottest_skip_expired_entries() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(100)
        .clock(clock.clone())
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 1, Duration::from_secs(1)).unwrap();
    cache.insert(2, 2).unwrap();
    for _ in 0..5 {
        cache.get(&1);
    }
    clock.advance(Duration::from_secs(1));
    assert!(!cache.contains_key(&1));
    assert_eq!(cache.hottest(10), vec![(2, 2)]);
    assert_eq!(cache.len(), 2, "len counts expired entries not yet reaped");
    assert_eq!(cache.stats().entries, 2);
}

/// `run_pending_tasks`: "Removes every expired entry now", whatever the TTL's level in the
/// wheel, each reported once as expired; an entry one nanosecond short of its expiry stays.
#[test]
fn run_pending_tasks_removes_every_entry_at_its_exact_expiry() {
    let ttls = [
        Duration::from_nanos(1),
        Duration::from_millis(1),
        Duration::from_millis(1500),
        Duration::from_secs(65),
        Duration::from_secs(3 * 3600 + 17),
        Duration::from_secs(3 * 86400 + 5),
        Duration::from_secs(10 * 86400 + 3),
        Duration::from_secs(400 * 86400),
    ];
    for (i, ttl) in ttls.iter().enumerate() {
        for offset_ns in [0u64, 123_456_789] {
            let clock = ManualClock::new();
            clock.advance(Duration::from_nanos(offset_ns));
            let heard: Heard<u64, u64> = Arc::default();
            let cache: Cache<u64, u64> = Cache::builder()
                .max_entries(100)
                .clock(clock.clone())
                .eviction_listener(listener(&heard))
                .build()
                .unwrap();
            cache.insert_with_ttl(1, 1, *ttl).unwrap();
            cache.insert(2, 2).unwrap();
            clock.advance(*ttl - Duration::from_nanos(1));
            cache.run_pending_tasks();
            assert_eq!(cache.get(&1), Some(1), "ttl #{i} {ttl:?}: expired early");
            assert_eq!(cache.len(), 2, "ttl #{i} {ttl:?}: reaped early");
            clock.advance(Duration::from_nanos(1));
            assert_eq!(cache.get(&1), None, "ttl #{i} {ttl:?}");
            cache.run_pending_tasks();
            assert_eq!(cache.len(), 1, "ttl #{i} {ttl:?}: not reaped at its expiry");
            assert_eq!(cache.stats().expirations, 1);
            assert_eq!(
                *heard.lock().unwrap(),
                vec![(1, 1, RemovalCause::Expired)],
                "ttl #{i} {ttl:?}"
            );
            cache.validate();
        }
    }
}

/// `Stats`: "at rest the figures add up exactly: inserts == entries + evictions +
/// expirations + removals", and the listener hears each departure once with the cause the
/// counter names.
#[test]
fn stats_add_up_and_match_the_listener_over_every_kind_of_departure() {
    let clock = ManualClock::new();
    let heard: Heard<u64, u64> = Arc::default();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(4000)
        .shards(2)
        .weigher(|_, v: &u64| *v % 1000)
        .clock(clock.clone())
        .eviction_listener(listener(&heard))
        .build()
        .unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..20_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = x % 64;
        match x % 13 {
            0 => drop(cache.remove(&key)),
            1 => clock.advance(Duration::from_millis(x % 3000)),
            2 => drop(cache.insert_with_ttl(key, x % 500, Duration::from_millis(x % 4000))),
            3 => drop(cache.insert_with_ttl(key, x % 500, Duration::ZERO)),
            4 => drop(cache.get_or_insert_with(key, || x % 500)),
            5 => drop(cache.get_or_insert_with(key, || 999_999_999)), // too heavy
            6 if i % 500 == 6 => cache.clear(),
            7 => cache.run_pending_tasks(),
            8 => drop(cache.insert(key, 3900 + x % 100)), // near the whole budget, or refused
            9 => drop(cache.contains_key(&key)),
            _ => drop(cache.insert(key, x % 300)),
        }
    }
    let s = cache.stats();
    assert_eq!(
        s.inserts,
        s.entries + s.evictions + s.expirations + s.removals,
        "{s:?}"
    );
    let heard = heard.lock().unwrap();
    let count = |cause| heard.iter().filter(|(_, _, c)| *c == cause).count() as u64;
    assert_eq!(count(RemovalCause::Evicted), s.evictions);
    assert_eq!(count(RemovalCause::Expired), s.expirations);
    assert_eq!(count(RemovalCause::Removed), s.removals);
    assert_eq!(count(RemovalCause::Replaced), s.updates);
    assert!(s.admission_rejections <= s.evictions);
    assert_eq!(s.entries, cache.len() as u64);
    assert_eq!(s.weighted_size, cache.weighted_size());
    cache.validate();
}

/// `remove` of an expired entry: returns `None` ("its value if it was live"), and the entry
/// leaves as expired, not removed.
#[test]
fn removing_an_expired_entry_returns_none_and_reports_it_expired() {
    let clock = ManualClock::new();
    let heard: Heard<u64, u64> = Arc::default();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(10)
        .clock(clock.clone())
        .eviction_listener(listener(&heard))
        .build()
        .unwrap();
    cache.insert_with_ttl(1, 1, Duration::from_secs(1)).unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.remove(&1), None);
    assert_eq!(*heard.lock().unwrap(), vec![(1, 1, RemovalCause::Expired)]);
    let s = cache.stats();
    assert_eq!((s.removals, s.expirations, s.entries), (0, 1, 0));
}

/// `clear`: "Removes every entry (each reported to the listener as removed, or expired)";
/// the weighted size goes to zero; a load in flight is not cached afterwards.
#[test]
fn clear_reports_each_entry_once_and_empties_the_weight() {
    let clock = ManualClock::new();
    let heard: Heard<u64, u64> = Arc::default();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(1 << 20)
        .weigher(|_, _| 10)
        .shards(4)
        .clock(clock.clone())
        .eviction_listener(listener(&heard))
        .build()
        .unwrap();
    for k in 0..100 {
        if k % 2 == 0 {
            cache.insert_with_ttl(k, k, Duration::from_secs(1)).unwrap();
        } else {
            cache.insert(k, k).unwrap();
        }
    }
    clock.advance(Duration::from_secs(1));
    cache.clear();
    assert_eq!(cache.len(), 0);
    assert!(cache.is_empty());
    assert_eq!(cache.weighted_size(), 0);
    let heard = heard.lock().unwrap();
    assert_eq!(heard.len(), 100);
    for (k, _, c) in heard.iter() {
        let want = if k % 2 == 0 {
            RemovalCause::Expired
        } else {
            RemovalCause::Removed
        };
        assert_eq!(*c, want, "key {k}");
    }
    let s = cache.stats();
    assert_eq!((s.removals, s.expirations), (50, 50));
}

/// A listener that calls back into the cache while a single-flight load publishes (and its
/// insert evicts): no deadlock, including loads of the same key from the listener.
#[test]
fn a_listener_loading_through_the_cache_during_a_load_s_eviction_does_not_deadlock() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let slot: Arc<Mutex<Option<Cache<u64, u64>>>> = Arc::default();
        let depth = Arc::new(AtomicUsize::new(0));
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(4)
            .shards(1)
            .eviction_listener({
                let slot = Arc::clone(&slot);
                let depth = Arc::clone(&depth);
                move |k: &u64, _: &u64, _| {
                    let cache = slot.lock().unwrap().clone();
                    if let Some(cache) = cache {
                        if depth.fetch_add(1, Ordering::SeqCst) == 0 {
                            let _ = cache.get_or_insert_with(*k, || 1);
                            let _ = cache.try_get_or_insert_with_timeout(
                                k + 1,
                                Duration::from_secs(1),
                                || Ok::<_, ()>(2),
                            );
                            cache.clear();
                        }
                        depth.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .build()
            .unwrap();
        *slot.lock().unwrap() = Some(cache.clone());
        for k in 0..500 {
            cache.get_or_insert_with(k % 37, || k);
        }
        *slot.lock().unwrap() = None;
        cache.validate();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("deadlock");
}

/// `try_get_or_insert_with_timeout` with `Duration::MAX`: no limit (no panic computing the
/// deadline), the value is shared.
#[test]
fn a_timeout_of_duration_max_waits_without_limit() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(10).build().unwrap();
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_insert_with(1, || {
                std::thread::sleep(Duration::from_millis(200));
                5
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        let got = cache.try_get_or_insert_with_timeout(1, Duration::MAX, || Ok::<_, ()>(9));
        assert_eq!(got, Ok(5));
        assert_eq!(leader.join().unwrap(), 5);
    });
    let s = cache.stats();
    assert_eq!((s.loads, s.loads_joined), (1, 1));
    let zero = cache.try_get_or_insert_with_timeout(2, Duration::ZERO, || Ok::<_, ()>(3));
    assert_eq!(zero, Ok(3), "no other load: the caller's own loader runs");
    let failed = cache.try_get_or_insert_with_timeout(3, Duration::ZERO, || Err::<u64, _>("no"));
    assert_eq!(failed, Err(LoadError::Failed("no")));
}

/// `get_or_insert_with`: "An entry too heavy to cache is returned without being cached."
/// and the statistics count its load but no insert.
#[test]
fn a_too_heavy_loaded_value_is_returned_not_cached() {
    let cache: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(10_000)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build()
        .unwrap();
    cache.insert(2, vec![1; 10]).unwrap();
    assert_eq!(
        cache.get_or_insert_with(1, || vec![0; 20_000]).len(),
        20_000
    );
    assert!(!cache.contains_key(&1));
    let s = cache.stats();
    assert_eq!((s.loads, s.inserts, s.entries), (1, 1, 1));
    cache.validate();
}

/// `BuildError`s: a byte budget of exactly one entry's overhead builds, one below does not;
/// a weigher in count mode; shards; beta.
#[test]
fn builder_edges() {
    let e = Cache::<u64, u64>::builder()
        .max_bytes(1)
        .build()
        .unwrap_err();
    let BuildError::BelowOneEntry { entry_overhead, .. } = e else {
        panic!("{e:?}")
    };
    let exact = Cache::<u64, u64>::builder()
        .max_bytes(entry_overhead)
        .build()
        .unwrap();
    exact.insert(1, 1).unwrap();
    assert_eq!(exact.get(&1), Some(1));
    assert!(matches!(
        Cache::<u64, u64>::builder()
            .max_bytes(entry_overhead - 1)
            .build(),
        Err(BuildError::BelowOneEntry { .. })
    ));
    assert_eq!(
        Cache::<u64, u64>::builder()
            .max_entries(10)
            .weigher(|_, _| 1)
            .build()
            .unwrap_err(),
        BuildError::WeigherWithoutBytes
    );
    assert_eq!(
        Cache::<u64, u64>::builder()
            .max_entries(1 << 26)
            .shards(1)
            .build()
            .unwrap_err(),
        BuildError::CapacityTooLarge { requested: 1 << 26 }
    );
    let refresh = Cache::<u64, u64>::builder()
        .max_entries(10)
        .loader(|k: &u64| Ok::<_, ()>(*k))
        .refresh(Refresh::early())
        .build();
    assert_eq!(refresh.unwrap_err(), BuildError::RefreshWithoutTtl);
    for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let bad = Cache::<u64, u64>::builder()
            .max_entries(10)
            .default_ttl(Duration::from_secs(1))
            .loader(|k: &u64| Ok::<_, ()>(*k))
            .refresh(Refresh::Early { beta })
            .build();
        assert_eq!(bad.unwrap_err(), BuildError::BadRefreshBeta);
    }
    // A loading cache whose budget fits the engine's overhead but not the wrapper's.
    let loading = Cache::<u64, u64>::builder()
        .max_bytes(entry_overhead)
        .loader(|k: &u64| Ok::<_, ()>(*k))
        .build();
    assert!(matches!(loading, Err(BuildError::BelowOneEntry { .. })));
}

/// One entry may use the whole budget, exactly: an entry whose weight with overhead equals
/// `max_bytes` is accepted (into an empty cache it stays), one byte more is `TooHeavy` with
/// key and value handed back.
#[test]
fn an_entry_of_exactly_the_budget_is_accepted_and_one_more_byte_refused() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(100_000)
        .weigher(|_, v: &u64| *v)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    let overhead = cache.weighted_size() - 1;
    cache.remove(&1);
    cache.insert(2, 100_000 - overhead).unwrap();
    assert_eq!(cache.get(&2), Some(100_000 - overhead));
    assert_eq!(cache.weighted_size(), 100_000);
    let err = cache.insert(3, 100_001 - overhead).unwrap_err();
    assert_eq!((err.key, err.value), (3, 100_001 - overhead));
    assert_eq!(
        err.kind,
        InsertErrorKind::TooHeavy {
            weight: 100_001,
            budget: 100_000
        }
    );
    assert_eq!(
        cache.get(&2),
        Some(100_000 - overhead),
        "the refused insert changed nothing"
    );
    cache.validate();
}

/// README "Design": "One entry may use up to the whole budget." With one small, never-read
/// entry cached, a whole-budget entry is accepted (`Ok`) but is the one evicted, as a lost
/// admission duel: it is not cached. Documented by `insert` ("may be evicted at once"); kept
/// to show what the README's sentence means in practice.
#[test]
fn a_whole_budget_entry_beside_one_cold_entry_loses_its_admission_duel() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(100_000)
        .weigher(|_, v: &u64| *v)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    let overhead = cache.weighted_size() - 1;
    cache.insert(2, 100_000 - overhead).unwrap();
    let s = cache.stats();
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!((s.evictions, s.admission_rejections), (1, 1));
    cache.validate();
}

/// `Clone`/`Send`/`Sync` of the patterns' handles.
#[test]
fn pattern_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn clone<T: Clone>() {}
    type Loader = fn(&u64) -> Result<String, ()>;
    send_sync::<larder::patterns::LoadingCache<u64, String, Loader>>();
    clone::<larder::patterns::LoadingCache<u64, String, Loader>>();
    send_sync::<WriteThrough<u64, String, MapStore<u64, String>>>();
    clone::<WriteThrough<u64, String, MapStore<u64, String>>>();
    send_sync::<larder::patterns::WriteBehind<u64, String, MapStore<u64, String>>>();
    send_sync::<Cache<u64, String>>();
    send_sync::<larder::Stats>();
}

/// `LoadingStats::refresh_failures`: "Refreshes whose loader failed (the old value
/// stayed)"; `Refresh` says a refresh fails when "the loader erred or panicked".
#[test]
fn a_refresh_whose_loader_panics_counts_as_a_refresh_failure() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicU64::new(0));
    let calls_in = Arc::clone(&calls);
    let cache = Cache::<u64, u64>::builder()
        .max_entries(10)
        .default_ttl(Duration::from_secs(10))
        .clock(clock.clone())
        .loader(move |k: &u64| {
            if calls_in.fetch_add(1, Ordering::SeqCst) > 0 {
                panic!("the database driver panicked");
            }
            Ok::<_, ()>(*k)
        })
        .refresh(Refresh::StaleWhileRevalidate {
            grace: Duration::from_secs(10),
        })
        .build()
        .unwrap();
    assert_eq!(cache.get(&1), Ok(1));
    clock.advance(Duration::from_secs(11));
    assert_eq!(cache.get(&1), Ok(1), "stale value served");
    // The background refresh panics in its own thread; the failure is counted as it
    // unwinds (printing the panic, a backtrace perhaps, comes first).
    for _ in 0..500 {
        if cache.stats().refresh_failures == 1 && calls.load(Ordering::SeqCst) == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = cache.stats();
    assert_eq!(s.refreshes, 1);
    assert_eq!(s.refresh_failures, 1, "{s:?}");
    assert_eq!(cache.get(&1), Ok(1), "the old value stayed");
}

/// Write-behind: "no acknowledged write is lost while this value lives ... drop drain[s]
/// the queue", with a store that fails a while, writes from several threads, and a drop
/// right after.
#[test]
fn write_behind_drop_right_after_a_failing_burst_loses_nothing() {
    struct Flaky {
        map: Mutex<HashMap<u64, u64>>,
        failures_left: AtomicU64,
    }
    struct Shared(Arc<Flaky>);
    impl std::ops::Deref for Shared {
        type Target = Flaky;
        fn deref(&self) -> &Flaky {
            &self.0
        }
    }
    impl Store<u64, u64> for Shared {
        type Error = String;
        fn load(&self, key: &u64) -> Result<Option<u64>, String> {
            Ok(self.map.lock().unwrap().get(key).copied())
        }
        fn store(&self, key: &u64, value: &u64) -> Result<(), String> {
            if self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("down".into());
            }
            self.map.lock().unwrap().insert(*key, *value);
            Ok(())
        }
        fn delete(&self, key: &u64) -> Result<(), String> {
            self.map.lock().unwrap().remove(key);
            Ok(())
        }
    }
    let flaky = Arc::new(Flaky {
        map: Mutex::default(),
        failures_left: AtomicU64::new(5),
    });
    let cache: Cache<u64, u64> = Cache::builder().max_entries(16).build().unwrap();
    let wb = WriteBehindBuilder::default()
        .batch_size(7)
        .capacity(50)
        .flush_interval(Duration::from_millis(5))
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(4))
        .build(cache, Shared(Arc::clone(&flaky)));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let wb = &wb;
            s.spawn(move || {
                for i in 0..300u64 {
                    let key = t * 1000 + i % 120;
                    if i % 11 == 10 {
                        wb.remove(&key).unwrap();
                    } else {
                        wb.insert(key, i).unwrap();
                    }
                }
            });
        }
    });
    // The newest write of each key, as each thread wrote its keys in order.
    let mut want = HashMap::new();
    for t in 0..4u64 {
        for i in 0..300u64 {
            let key = t * 1000 + i % 120;
            if i % 11 == 10 {
                want.remove(&key);
            } else {
                want.insert(key, i);
            }
        }
    }
    drop(wb);
    assert_eq!(*flaky.map.lock().unwrap(), want);
}

/// `weigher`: "Called once per insert", whatever path the insert takes.
#[test]
fn the_weigher_runs_once_per_insert() {
    let calls = Arc::new(AtomicU64::new(0));
    let calls_in = Arc::clone(&calls);
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(1 << 20)
        .weigher(move |_, _| {
            calls_in.fetch_add(1, Ordering::SeqCst);
            8
        })
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    cache.get_or_insert_with(2, || 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    cache.get_or_insert_with(2, || 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a hit weighs nothing");
    let users = WriteThrough::new(cache.clone(), MapStore::<u64, u64>::default());
    users.insert(3, 3).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    users.remove(&3).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// `WriteBehindError::QueueFull`: "A write that was refused; the cache and the queue are
/// unchanged", the key and value handed back.
#[test]
fn a_write_behind_queue_full_refusal_changes_nothing() {
    struct Stuck(Mutex<HashMap<u64, u64>>, AtomicBool);
    impl Store<u64, u64> for Stuck {
        type Error = String;
        fn load(&self, key: &u64) -> Result<Option<u64>, String> {
            Ok(self.0.lock().unwrap().get(key).copied())
        }
        fn store(&self, key: &u64, value: &u64) -> Result<(), String> {
            if self.1.load(Ordering::SeqCst) {
                return Err("down".into());
            }
            self.0.lock().unwrap().insert(*key, *value);
            Ok(())
        }
        fn delete(&self, key: &u64) -> Result<(), String> {
            if self.1.load(Ordering::SeqCst) {
                return Err("down".into());
            }
            self.0.lock().unwrap().remove(key);
            Ok(())
        }
    }
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let wb = WriteBehindBuilder::default()
        .capacity(2)
        .batch_size(100)
        .flush_interval(Duration::from_secs(3600))
        .backpressure(larder::patterns::Backpressure::Error)
        .build(
            cache.clone(),
            Stuck(Mutex::default(), AtomicBool::new(false)),
        );
    wb.insert(9, 90).unwrap();
    wb.flush();
    wb.store().1.store(true, Ordering::SeqCst);
    // A batch of these two is taken and keeps failing; the next two fill the queue.
    wb.insert(1, 1).unwrap();
    wb.insert(2, 2).unwrap();
    while wb.stats().failed_batches == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    wb.insert(3, 3).unwrap();
    wb.insert(4, 4).unwrap();
    let before = wb.stats().pending;
    let err = wb.insert(9, 91).unwrap_err();
    assert_eq!(
        err,
        larder::patterns::WriteBehindError::QueueFull {
            key: 9,
            value: Some(91)
        }
    );
    let err = wb.remove(&9).unwrap_err();
    assert_eq!(
        err,
        larder::patterns::WriteBehindError::QueueFull {
            key: 9,
            value: None
        }
    );
    assert_eq!(cache.get(&9), Some(90));
    assert_eq!(wb.get(&9), Ok(Some(90)));
    assert_eq!(wb.stats().pending, before);
    wb.insert(3, 33).unwrap(); // coalesces: needs no room
    wb.store().1.store(false, Ordering::SeqCst);
    wb.flush();
    let map = wb.store().0.lock().unwrap().clone();
    assert_eq!(
        map,
        HashMap::from([(9, 90), (1, 1), (2, 2), (3, 33), (4, 4)])
    );
}

/// Warm-up `load`: "Returns how many were inserted; entries too heavy for the budget are
/// skipped", "Entries get the cache's default TTL".
#[test]
fn warm_up_load_skips_too_heavy_entries_and_applies_the_default_ttl() {
    let big: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(1 << 22)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build()
        .unwrap();
    for k in 0..10u64 {
        let len = if k < 3 { 100_000 } else { 10 };
        big.insert(k, vec![k as u8; len]).unwrap();
    }
    let mut snapshot = Vec::new();
    assert_eq!(
        larder::patterns::warm_up::save(&big, 100, &mut snapshot).unwrap(),
        10
    );
    let clock = ManualClock::new();
    let small: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(50_000)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .default_ttl(Duration::from_secs(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(
        larder::patterns::warm_up::load(&small, &snapshot[..]).unwrap(),
        7
    );
    assert_eq!(small.len(), 7);
    clock.advance(Duration::from_secs(5));
    assert_eq!(small.get(&5), None, "the default TTL applies");
}

/// The same through `LoadingCache::remove`, which withdraws the key the same way.
#[test]
fn a_key_drop_panic_in_a_loading_cache_remove_leaves_the_cache_consistent() {
    // A key type and flag of its own: tests run in parallel.
    static ARMED: AtomicBool = AtomicBool::new(false);
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct K(u64);
    impl Drop for K {
        fn drop(&mut self) {
            if self.0 == 3 && !std::thread::panicking() && ARMED.swap(false, Ordering::SeqCst) {
                panic!("key Drop panicked");
            }
        }
    }
    let cache = Cache::<K, u64>::builder()
        .max_entries(100)
        .loader(|k: &K| Ok::<_, ()>(k.0))
        .build()
        .unwrap();
    for k in 0..5 {
        cache.get(&K(k)).unwrap();
    }
    let before = cache.cache_stats();
    assert_eq!(before.weighted_size, 5);
    let key = K(3);
    ARMED.store(true, Ordering::SeqCst);
    let result = catch_unwind(AssertUnwindSafe(|| cache.remove(&key)));
    ARMED.store(false, Ordering::SeqCst);
    assert!(result.is_err());
    let after = cache.cache_stats();
    assert_eq!(after.entries, 4);
    assert_eq!(after.weighted_size, 4, "{after:?}");
}
