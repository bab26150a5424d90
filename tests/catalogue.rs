//! The catalogue of bad inputs (README, "Bad input"): one test per row not already covered
//! in `tests/api.rs`. Each shows what the caller gets and that nothing else was lost.

use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use larder::{Cache, InsertErrorKind};

mod common;
use common::settle;

/// Loop sizes: full natively, small under Miri, which runs a few thousand times slower.
fn scaled(native: u64) -> u64 {
    if cfg!(miri) {
        (native / 100).max(20)
    } else {
        native
    }
}

/// A cache of `n` bystanders (keys `1000..1000 + n`), to check that a bad call loses none.
fn with_bystanders<V: Clone + Send + Sync + 'static>(
    cache: Cache<u64, V>,
    n: u64,
    value: impl Fn(u64) -> V,
) -> Cache<u64, V> {
    for key in 1000..1000 + n {
        cache.insert(key, value(key)).unwrap();
    }
    cache
}

fn assert_bystanders<V: Clone + Send + Sync + PartialEq + std::fmt::Debug + 'static>(
    cache: &Cache<u64, V>,
    n: u64,
    value: impl Fn(u64) -> V,
) {
    for key in 1000..1000 + n {
        assert_eq!(cache.get(&key), Some(value(key)), "bystander {key} lost");
    }
    cache.validate();
}

#[test]
fn a_weigher_returning_zero_still_charges_the_entry_overhead() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(1 << 20)
        .weigher(|_, _| 0)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    let overhead = cache.weighted_size();
    assert!(
        overhead > 0,
        "free entries would make the budget meaningless"
    );
    // So a flood of "weightless" entries is still bounded by the budget.
    for key in 0..scaled(100_000) {
        cache.insert(key, key).unwrap();
    }
    assert!(cache.weighted_size() <= 1 << 20);
    assert!(cache.len() as u64 <= (1 << 20) / overhead);
    cache.validate();
}

#[test]
fn a_weigher_returning_u64_max_is_refused_without_overflow() {
    let cache = with_bystanders(
        Cache::<u64, u64>::builder()
            .max_bytes(1 << 20)
            .weigher(|_, v| if *v == 7 { u64::MAX } else { 8 })
            .build()
            .unwrap(),
        10,
        |k| k,
    );
    cache.insert(1, 1).unwrap();
    let err = cache.insert(1, 7).unwrap_err();
    assert_eq!((err.key, err.value), (1, 7), "key and value handed back");
    assert!(matches!(
        err.kind,
        InsertErrorKind::TooHeavy {
            weight: u64::MAX,
            ..
        }
    ));
    assert_eq!(cache.get(&1), Some(1), "the previous value stays");
    assert_bystanders(&cache, 10, |k| k);
}

#[test]
fn a_panicking_weigher_panics_the_insert_and_changes_nothing() {
    let cache = with_bystanders(
        Cache::<u64, u64>::builder()
            .max_bytes(1 << 20)
            .weigher(|_, v| {
                assert!(*v != 13, "weigher panicked");
                8
            })
            .build()
            .unwrap(),
        10,
        |k| k,
    );
    cache.insert(1, 1).unwrap();
    let before = cache.weighted_size();
    let result = catch_unwind(AssertUnwindSafe(|| cache.insert(1, 13)));
    assert!(result.is_err(), "the panic reaches the caller");
    assert_eq!(cache.get(&1), Some(1), "the previous value stays");
    assert_eq!(cache.weighted_size(), before, "nothing charged");
    assert_bystanders(&cache, 10, |k| k);
}

/// Equal to nothing, not even itself: a broken `Eq`.
#[derive(Debug, Clone)]
struct NeverEqual(u64);

impl PartialEq for NeverEqual {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}
impl Eq for NeverEqual {}
impl Hash for NeverEqual {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Hashes differently on every call: a `Hash` that disagrees with `Eq`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fickle(u64);

static FICKLE_CALLS: AtomicU64 = AtomicU64::new(0);

impl Hash for Fickle {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.0, FICKLE_CALLS.fetch_add(1, Ordering::Relaxed)).hash(state);
    }
}

/// Keys whose `Hash` and `Eq` disagree cannot be found again (documented), but the cache
/// stays within budget, consistent, and drops what it held.
#[test]
fn keys_whose_hash_and_eq_disagree_are_lost_but_corrupt_nothing() {
    let cache: Cache<NeverEqual, u64> = Cache::builder().max_entries(100).build().unwrap();
    for round in 0..3 {
        for key in 0..scaled(200) {
            cache.insert(NeverEqual(key), round).unwrap();
            assert_eq!(cache.get(&NeverEqual(key)), None);
        }
    }
    assert!(cache.len() <= 100 && cache.weighted_size() <= 100);
    assert_eq!(cache.remove(&NeverEqual(1)), None);
    cache.validate();
    cache.clear();
    assert_eq!(cache.len(), 0);

    let cache: Cache<Fickle, u64> = Cache::builder().max_entries(100).build().unwrap();
    for key in 0..scaled(500) {
        cache.insert(Fickle(key), key).unwrap();
        let _ = cache.get(&Fickle(key));
    }
    assert!(cache.len() <= 100 && cache.weighted_size() <= 100);
    cache.validate();
}

/// A value whose `Clone` panics when asked to.
#[derive(Debug)]
struct CloneBomb(u64, Arc<AtomicBool>);

impl PartialEq for CloneBomb {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Clone for CloneBomb {
    fn clone(&self) -> Self {
        assert!(!self.1.load(Ordering::SeqCst), "clone panicked");
        Self(self.0, Arc::clone(&self.1))
    }
}

#[test]
fn a_panicking_clone_panics_the_read_and_changes_nothing() {
    let armed = Arc::new(AtomicBool::new(false));
    let value = |k| CloneBomb(k, Arc::clone(&armed));
    let cache = with_bystanders(
        Cache::<u64, CloneBomb>::builder()
            .max_entries(100)
            .build()
            .unwrap(),
        10,
        value,
    );
    cache.insert(1, value(1)).unwrap();
    armed.store(true, Ordering::SeqCst);
    assert!(catch_unwind(AssertUnwindSafe(|| cache.get(&1))).is_err());
    assert!(catch_unwind(AssertUnwindSafe(|| cache.remove(&1))).is_err());
    armed.store(false, Ordering::SeqCst);
    // A panicking clone in `remove` comes after the removal: the entry is gone, as asked.
    assert_eq!(cache.get(&1), None);
    assert_bystanders(&cache, 10, value);
}

/// A value whose `Drop` panics once armed, counting the drops that ran.
#[derive(Debug)]
struct DropBomb {
    armed: bool,
    drops: Arc<AtomicU64>,
}

impl Drop for DropBomb {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        assert!(!self.armed, "drop panicked");
    }
}

#[test]
fn a_panicking_drop_is_contained_wherever_larder_drops_values() {
    let drops = Arc::new(AtomicU64::new(0));
    let bomb = |armed| DropBomb {
        armed,
        drops: Arc::clone(&drops),
    };
    let cache: Cache<u64, Arc<DropBomb>> = Cache::builder().max_entries(10).build().unwrap();
    // Replaced, evicted, removed and cleared values are dropped by the epoch collector on
    // whichever thread collects; a panic there must not unwind through it.
    for key in 0..30u64 {
        cache.insert(key, Arc::new(bomb(true))).unwrap();
    }
    cache.insert(1, Arc::new(bomb(true))).unwrap();
    let _ = cache.remove(&2);
    cache.clear();
    for key in 0..5u64 {
        cache.insert(key, Arc::new(bomb(true))).unwrap();
    }
    // The first 31 values (30 keys plus one replacement) were replaced, evicted, removed or
    // cleared: all dropped. The last 5 are live.
    settle(|| drops.load(Ordering::SeqCst) == 31);
    // The cache keeps working on every path after the panics were contained.
    cache.insert(100, Arc::new(bomb(false))).unwrap();
    assert!(cache.get(&100).is_some());
    cache.validate();
    // Dropping the cache drops the rest, panicking values included, without unwinding.
    drop(cache);
    settle(|| drops.load(Ordering::SeqCst) == 30 + 1 + 5 + 1);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        30 + 1 + 5 + 1,
        "every value dropped once"
    );
}

#[test]
fn a_flood_of_inserts_of_one_key_keeps_one_entry_and_bounded_garbage() {
    let cache = with_bystanders(
        Cache::<u64, Vec<u8>>::builder()
            .max_bytes(1 << 20)
            .weigher(|_, v: &Vec<u8>| v.len() as u64)
            .build()
            .unwrap(),
        10,
        |k| vec![k as u8; 100],
    );
    let rounds = scaled(200_000);
    for round in 0..rounds {
        cache.insert(7, vec![round as u8; 100]).unwrap();
    }
    assert_eq!(cache.len(), 11);
    assert_eq!(cache.stats().updates, rounds - 1);
    assert_bystanders(&cache, 10, |k| vec![k as u8; 100]);
}

#[test]
fn a_clock_that_stops_keeps_entries_alive_and_the_budget_enforced() {
    let clock = larder::ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(100)
        .clock(clock.clone())
        .build()
        .unwrap();
    let keys = scaled(1000);
    for key in 0..keys {
        cache
            .insert_with_ttl(key, key, std::time::Duration::from_millis(1))
            .unwrap();
    }
    // Time stands still: nothing expires, but eviction still holds the budget.
    assert_eq!(cache.stats().expirations, 0);
    assert!(cache.len() <= 100);
    let live = (0..keys).filter(|k| cache.get(k) == Some(*k)).count();
    assert_eq!(
        live,
        cache.len(),
        "every held entry readable while time stands"
    );
    // Once it moves again, everything due goes.
    clock.advance(std::time::Duration::from_millis(1));
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 0);
    cache.validate();
}

#[test]
fn a_loaded_value_whose_clone_panics_leaves_the_cache_consistent() {
    let armed = Arc::new(AtomicBool::new(false));
    let cache: Cache<u64, CloneBomb> = Cache::builder().max_entries(100).build().unwrap();
    let value = CloneBomb(1, Arc::clone(&armed));
    let result = catch_unwind(AssertUnwindSafe(|| {
        cache.get_or_insert_with(1, || {
            armed.store(true, Ordering::SeqCst);
            value
        })
    }));
    armed.store(false, Ordering::SeqCst);
    assert!(result.is_err(), "the clone's panic reaches the caller");
    assert_eq!(cache.weighted_size(), 0, "nothing half published");
    cache.validate();
    assert_eq!(
        cache
            .get_or_insert_with(1, || CloneBomb(2, Arc::clone(&armed)))
            .0,
        2
    );
}
