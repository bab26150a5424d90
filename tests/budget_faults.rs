//! Budget and weight accounting, from session 23's review: the faults it found (each test
//! failed before its fix) and the checks it ran that found none (a randomised model of
//! what each live entry was charged, budget edges, concurrent runs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use larder::{BuildError, Cache, InsertErrorKind, ManualClock, RemovalCause};

mod common;
use common::Rng;

/// larder's per-entry overhead for `Cache<K, V>`, read from the builder's error.
fn overhead<K, V>() -> u64
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    match Cache::<K, V>::builder().max_bytes(1).build() {
        Err(BuildError::BelowOneEntry { entry_overhead, .. }) => entry_overhead,
        other => panic!("unexpected {:?}", other.map(|_| ())),
    }
}

/// Starts a `get_or_insert_with(1, ..)` on another thread whose loader returns `value`
/// once `go` is sent; returns once the load has begun.
fn start_blocked_load(
    cache: &Cache<u64, Vec<u8>>,
    value: Vec<u8>,
) -> (mpsc::Sender<()>, std::thread::JoinHandle<Vec<u8>>) {
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let loader = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.get_or_insert_with(1, || {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                value
            })
        })
    };
    started_rx.recv().unwrap();
    (go_tx, loader)
}

/// Runs `during` while a `get_or_insert_with(1, ..)` on another thread is loading `[1; 10]`,
/// then checks that the load's value was cached all the same (`what` names the write).
fn a_load_in_flight_survives(cache: &Cache<u64, Vec<u8>>, what: &str, during: impl FnOnce()) {
    let (go, loader) = start_blocked_load(cache, vec![1; 10]);
    during();
    go.send(()).unwrap();
    assert_eq!(loader.join().unwrap().len(), 10);
    assert_eq!(
        cache.get(&1).map(|v| v.len()),
        Some(10),
        "the {what} insert changed the cache: the load's value was not cached"
    );
}

/// An insert refused as too heavy must leave the cache unchanged. A get_or_insert_with
/// of the same key in flight at that moment should still cache its value; the refused
/// insert marked the load invalidated first (cache.rs insert_inner), so it was not cached.
#[test]
fn a_refused_too_heavy_insert_does_not_cancel_a_load_in_flight() {
    let cache: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(10_000)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .shards(1)
        .build()
        .unwrap();
    a_load_in_flight_survives(&cache, "refused", || {
        let refused = cache.insert(1, vec![0; 20_000]).unwrap_err();
        assert!(matches!(refused.kind, InsertErrorKind::TooHeavy { .. }));
    });
}

/// Same with a weigher that panics: "nothing charged, the old value stays" / "changes
/// nothing", yet the concurrent load's value was dropped.
#[test]
fn a_panicking_weigher_does_not_cancel_a_load_in_flight() {
    let cache: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(100_000)
        .weigher(|_, v: &Vec<u8>| {
            assert!(v.len() != 13, "weigher refuses 13");
            v.len() as u64
        })
        .shards(1)
        .build()
        .unwrap();
    a_load_in_flight_survives(&cache, "panicked", || {
        let panicked = std::panic::catch_unwind(|| cache.insert(1, vec![0; 13]));
        assert!(panicked.is_err());
    });
}

/// A LoadingCache stores `Arc<Stamped<V>>`: the entry's inline size covers the Arc
/// pointer only, and the weigher (documented to count heap bytes *beyond* the inline size,
/// larder adding the inline size) sees `&V`. So `size_of::<V>()` per entry was charged to
/// nobody, and the budget did not bound memory (8 MB held under a 1 MiB budget).
#[test]
fn a_loading_cache_charges_the_values_inline_size() {
    type V = [u8; 4096];
    let budget = 1u64 << 20;
    let cache = Cache::<u64, V>::builder()
        .max_bytes(budget)
        // `[u8; 4096]` owns no heap: by the weigher's contract, 0.
        .weigher(|_, _| 0)
        .shards(1)
        .loader(|key: &u64| Ok::<V, ()>([*key as u8; 4096]))
        .build()
        .unwrap();
    for key in 0..2_000u64 {
        cache.get(&key).unwrap();
    }
    let stats = cache.cache_stats();
    let value_bytes = stats.entries * std::mem::size_of::<V>() as u64;
    // A plain Cache<u64, V> would be charged at least size_of::<V>() per entry.
    assert!(overhead::<u64, V>() > std::mem::size_of::<V>() as u64);
    assert!(
        stats.weighted_size >= value_bytes,
        "{} entries hold {} bytes of values inline in their Arcs, charged {} in all \
         (budget {})",
        stats.entries,
        value_bytes,
        stats.weighted_size,
        budget
    );
}

// ---------------------------------------------------------------------------------------
// Randomised accounting checker against a model.

type Events = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

fn check_model(seed: u64, shards: usize, budget: u64, keys: u64, steps: usize) {
    check_model_limited(seed, shards, budget, keys, steps, usize::MAX)
}

fn check_model_limited(
    seed: u64,
    shards: usize,
    budget: u64,
    keys: u64,
    steps: usize,
    limit: usize,
) {
    let ovh = overhead::<u64, u64>();
    // The weigher's answer is chosen by the test, per call, and remembered.
    let next_weight = Arc::new(AtomicU64::new(0));
    let last_weight = Arc::new(AtomicU64::new(u64::MAX));
    let events: Events = Arc::default();
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = {
        let (next, last, events) = (next_weight.clone(), last_weight.clone(), events.clone());
        Cache::builder()
            .max_bytes(budget)
            .shards(shards)
            .shard_entry_limit(limit)
            .clock(clock.clone())
            .weigher(move |_, _| {
                let w = next.load(Ordering::SeqCst);
                last.store(w, Ordering::SeqCst);
                w
            })
            .eviction_listener(move |k: &u64, v: &u64, cause| {
                events.lock().unwrap().push((*k, *v, cause));
            })
            .build()
            .unwrap()
    };
    let mut rng = Rng(seed | 1);
    // key -> (value, charged weight)
    let mut model: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut notified: HashMap<u64, u32> = HashMap::new();
    for step in 0..steps {
        // Every value written is unique.
        let value = step as u64 + 1;
        let key = rng.below(keys);
        // Weights: mostly small, sometimes large, sometimes right at the budget.
        let w = match rng.below(10) {
            0 => budget - ovh,
            1 => budget - ovh + 1,
            2 => rng.below(budget / 2),
            3 => u64::MAX - rng.below(3),
            _ => rng.below(200),
        };
        next_weight.store(w, Ordering::SeqCst);
        let op = rng.below(12);
        let mut inserted = None;
        match op {
            0..=4 => {
                if cache.insert(key, value).is_ok() {
                    inserted = Some(value);
                }
            }
            5 | 6 => {
                let ttl = Duration::from_millis(rng.below(3000));
                if cache.insert_with_ttl(key, value, ttl).is_ok() {
                    inserted = Some(value);
                }
            }
            7 => {
                let got = cache.get_or_insert_with(key, || value);
                if got == value {
                    let charged = last_weight.load(Ordering::SeqCst).saturating_add(ovh);
                    if charged <= budget {
                        inserted = Some(value);
                    }
                }
            }
            8 => {
                cache.remove(&key);
            }
            9 => clock.advance(Duration::from_millis(rng.below(1500))),
            10 => cache.run_pending_tasks(),
            _ => {
                if rng.below(10) == 0 {
                    cache.clear();
                } else {
                    cache.get(&key);
                }
            }
        }
        if let Some(v) = inserted {
            let charged = last_weight.load(Ordering::SeqCst).saturating_add(ovh);
            assert!(
                charged <= budget,
                "step {step}: accepted {charged} > {budget}"
            );
            model.insert(key, (v, charged));
        }
        for (k, v, cause) in events.lock().unwrap().drain(..) {
            *notified.entry(v).or_default() += 1;
            assert_eq!(
                notified[&v], 1,
                "step {step}: value {v} notified twice ({cause:?})"
            );
            if model.get(&k).is_some_and(|&(mv, _)| mv == v) {
                model.remove(&k);
            }
        }
        let sum: u64 = model.values().map(|&(_, w)| w).sum();
        let stats = cache.stats();
        assert_eq!(
            cache.weighted_size(),
            sum,
            "step {step} (op {op}): weighted_size drifted from the live entries' charges"
        );
        assert_eq!(stats.weighted_size, sum, "step {step}: stats.weighted_size");
        assert_eq!(cache.len(), model.len(), "step {step}: len");
        assert!(sum <= budget, "step {step}: {sum} over {budget} at rest");
        assert_eq!(
            stats.inserts,
            stats.entries + stats.evictions + stats.expirations + stats.removals,
            "step {step}: stats do not add up: {stats:?}"
        );
        for (k, &(v, _)) in &model {
            let _ = (k, v);
        }
        if step % 64 == 0 {
            cache.validate();
        }
    }
    if std::env::var_os("R23C_PRINT").is_some() {
        eprintln!("seed {seed}: {:?}", cache.stats());
    }
}

#[test]
fn weighted_size_matches_a_model_one_shard() {
    for seed in 1..40 {
        check_model(seed * 7919, 1, 4_000, 40, 3_000);
    }
}

#[test]
fn weighted_size_matches_a_model_many_shards() {
    for seed in 1..40 {
        check_model(seed * 104_729, 8, 6_000, 64, 3_000);
    }
}

/// Count mode: every entry is charged 1, whatever happens.
#[test]
fn count_mode_weighted_size_is_len() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(50)
        .shards(4)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut rng = Rng(12345);
    for step in 0..20_000 {
        let key = rng.below(200);
        match rng.below(8) {
            0..=3 => cache.insert(key, step).unwrap(),
            4 => cache
                .insert_with_ttl(key, step, Duration::from_millis(rng.below(2000)))
                .unwrap(),
            5 => {
                cache.remove(&key);
            }
            6 => clock.advance(Duration::from_millis(rng.below(1000))),
            _ => {
                if rng.below(50) == 0 {
                    cache.clear()
                } else {
                    cache.get_or_insert_with(key, || step);
                }
            }
        }
        assert_eq!(cache.weighted_size(), cache.len() as u64, "step {step}");
        assert!(cache.len() <= 50, "step {step}");
    }
    cache.validate();
}

#[test]
fn weighted_size_matches_a_model_budget_below_the_shards_minimums() {
    let ovh = overhead::<u64, u64>();
    for seed in 1..60 {
        // 16 shards, room for about 3 bare entries in all: a shard's share is under one.
        check_model(seed * 31, 16, 3 * ovh + 10, 32, 2_000);
    }
}

#[test]
fn weighted_size_matches_a_model_long() {
    for seed in 1..6 {
        check_model(seed * 7, 4, 20_000, 500, 40_000);
    }
}

/// Concurrent inserts: at rest within budget, and the shards' sum equals the counter.
#[test]
fn concurrent_mixed_weights_end_within_budget() {
    let budget = 50_000u64;
    for trial in 0..200u64 {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_bytes(budget)
            .shards(4)
            .weigher(move |_, v: &u64| *v)
            .build()
            .unwrap();
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(((trial * 3 + t) * 0x9E37_79B9) | 1);
                    for _ in 0..300 {
                        let key = rng.below(100);
                        let w = match rng.below(8) {
                            0 => budget - 200,
                            1 => rng.below(budget / 2),
                            _ => rng.below(300),
                        };
                        let _ = cache.insert(key, w);
                        if rng.below(10) == 0 {
                            cache.remove(&key);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(
            cache.weighted_size() <= budget,
            "trial {trial}: {} over {budget} at rest ({} entries)",
            cache.weighted_size(),
            cache.len()
        );
        cache.validate();
    }
}

/// An entry of exactly the budget, into a cache whose other shards hold entries and whose
/// own shard is empty, is kept and the others make room.
#[test]
fn an_entry_of_exactly_the_budget_is_kept() {
    let ovh = overhead::<u64, u64>();
    let budget = 100_000u64;
    for shards in [1usize, 2, 8] {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_bytes(budget)
            .shards(shards)
            .weigher(move |_, v: &u64| *v)
            .build()
            .unwrap();
        cache.insert(0, budget - ovh).unwrap();
        assert_eq!(cache.weighted_size(), budget);
        assert_eq!(cache.get(&0), Some(budget - ovh));
        for key in 1..50 {
            cache.insert(key, 10).unwrap();
            cache.validate();
        }
        let err = cache.insert(1000, budget - ovh + 1).unwrap_err();
        assert!(
            matches!(err.kind, InsertErrorKind::TooHeavy { weight, budget: b } if weight == budget + 1 && b == budget)
        );
        cache.validate();
    }
}

/// A too-heavy value from get_or_insert_with goes to the caller and its waiters, nothing
/// cached, nothing charged.
#[test]
fn a_too_heavy_load_goes_to_waiters_and_is_not_cached() {
    let cache: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(10_000)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .shards(1)
        .build()
        .unwrap();
    cache.insert(5, vec![0; 100]).unwrap();
    let before = cache.weighted_size();
    let (go_tx, leader) = start_blocked_load(&cache, vec![1; 20_000]);
    let waiter = {
        let cache = cache.clone();
        std::thread::spawn(move || cache.get_or_insert_with(1, || vec![2; 5]))
    };
    std::thread::sleep(Duration::from_millis(100));
    go_tx.send(()).unwrap();
    assert_eq!(leader.join().unwrap().len(), 20_000);
    let w = waiter.join().unwrap();
    assert!(w.len() == 20_000 || w.len() == 5, "{}", w.len());
    assert_eq!(
        cache.get(&1).map(|v| v.len()),
        if w.len() == 5 { Some(5) } else { None }
    );
    assert_eq!(cache.get(&5).map(|v| v.len()), Some(100));
    if w.len() == 20_000 {
        assert_eq!(cache.weighted_size(), before);
    }
    cache.validate();
}

/// An entry inserted with a zero TTL that leaves at once through eviction, in a shard whose
/// wheel was empty, is reported to the listener as evicted (and counted as a lost admission
/// duel), not expired: `Shard::insert` reads no clock when the wheel was empty (now = 0).
#[test]
fn an_already_expired_entry_evicted_by_its_own_insert_is_reported_expired() {
    let events: Events = Arc::default();
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(10));
    let cache: Cache<u64, u64> = {
        let events = events.clone();
        Cache::builder()
            .max_entries(10)
            .shards(1)
            .clock(clock.clone())
            .eviction_listener(move |k: &u64, v: &u64, cause| {
                events.lock().unwrap().push((*k, *v, cause));
            })
            .build()
            .unwrap()
    };
    for key in 0..10 {
        cache.insert(key, key).unwrap();
        for _ in 0..5 {
            cache.get(&key);
        }
    }
    events.lock().unwrap().clear();
    cache.insert_with_ttl(100, 100, Duration::ZERO).unwrap();
    let got: Vec<_> = events.lock().unwrap().drain(..).collect();
    let stats = cache.stats();
    assert_eq!(got, vec![(100, 100, RemovalCause::Expired)], "{stats:?}");
}

#[test]
fn weighted_size_matches_a_model_at_the_shard_entry_limit() {
    for seed in 1..40 {
        check_model_limited(seed * 13, 2, 50_000, 64, 3_000, 3);
    }
}

/// Concurrent inserts, removes, TTLs, clears and a moving clock: at rest the counter is the
/// shards' sum (validate) and within budget.
#[test]
fn concurrent_everything_ends_consistent() {
    let budget = 20_000u64;
    for trial in 0..100u64 {
        let clock = ManualClock::new();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_bytes(budget)
            .shards(4)
            .clock(clock.clone())
            .weigher(move |_, v: &u64| *v)
            .build()
            .unwrap();
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let (cache, clock) = (cache.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(((trial * 3 + t + 1) * 0x9E37_79B9) | 1);
                    for i in 0..400u64 {
                        let key = rng.below(64);
                        let w = match rng.below(8) {
                            0 => budget - 200,
                            1 => rng.below(budget / 2),
                            _ => rng.below(300),
                        };
                        match rng.below(10) {
                            0 => {
                                cache.remove(&key);
                            }
                            1 => {
                                let _ = cache.insert_with_ttl(
                                    key,
                                    w,
                                    Duration::from_millis(rng.below(50)),
                                );
                            }
                            2 => clock.advance(Duration::from_millis(rng.below(20))),
                            3 if i % 97 == 0 => cache.clear(),
                            4 => {
                                cache.get_or_insert_with(key, || w);
                            }
                            5 => cache.run_pending_tasks(),
                            _ => {
                                let _ = cache.insert(key, w);
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        cache.validate();
    }
}

/// Heavy entries (each about half the budget) from several threads into many shards: every
/// insert must make room elsewhere, so `make_room_elsewhere` races other threads' evictions.
#[test]
fn concurrent_half_budget_inserts_end_within_budget() {
    let trials: u64 = std::env::var("R23C_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let budget = 100_000u64;
    let mut over = 0;
    for trial in 0..trials {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_bytes(budget)
            .shards(8)
            .weigher(move |_, v: &u64| *v)
            .build()
            .unwrap();
        let start = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (cache, start) = (cache.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..50u64 {
                        let _ = cache.insert(t * 1000 + i + trial, budget / 2 - 100 + (i % 3) * 10);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        if cache.weighted_size() > budget {
            over += 1;
            eprintln!(
                "trial {trial}: {} over {budget}, {} entries",
                cache.weighted_size(),
                cache.len()
            );
        }
        cache.validate();
    }
    assert_eq!(over, 0);
}

/// The same invalidation, seen through a write-through: a too-heavy plain insert refused
/// during a write-through's store call cancelled the write-through's caching, and the value
/// cached before both (v1) stayed beside a store holding v2.
#[test]
fn a_refused_too_heavy_insert_during_a_write_through_leaves_no_stale_value() {
    use larder::patterns::{Store, WriteThrough};
    struct Db {
        map: Mutex<HashMap<u64, Vec<u8>>>,
        gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }
    impl Store<u64, Vec<u8>> for Db {
        type Error = std::convert::Infallible;
        fn load(&self, key: &u64) -> Result<Option<Vec<u8>>, Self::Error> {
            Ok(self.map.lock().unwrap().get(key).cloned())
        }
        fn store(&self, key: &u64, value: &Vec<u8>) -> Result<(), Self::Error> {
            self.map.lock().unwrap().insert(*key, value.clone());
            if let Some((started, go)) = self.gate.lock().unwrap().take() {
                started.send(()).unwrap();
                go.recv().unwrap();
            }
            Ok(())
        }
        fn delete(&self, key: &u64) -> Result<(), Self::Error> {
            self.map.lock().unwrap().remove(key);
            Ok(())
        }
    }
    let cache: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(10_000)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .shards(1)
        .build()
        .unwrap();
    let db = Db {
        map: Mutex::default(),
        gate: Mutex::new(None),
    };
    let wt = WriteThrough::new(cache, db);
    wt.insert(1, vec![1; 10]).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    *wt.store().gate.lock().unwrap() = Some((started_tx, go_rx));
    let writer = {
        let wt = wt.clone();
        std::thread::spawn(move || wt.insert(1, vec![2; 20]).unwrap())
    };
    started_rx.recv().unwrap();
    assert!(wt.cache().insert(1, vec![9; 50_000]).is_err());
    go_tx.send(()).unwrap();
    writer.join().unwrap();
    assert_eq!(wt.store().load(&1).unwrap().map(|v| v[0]), Some(2));
    assert_eq!(
        wt.get(&1).unwrap().map(|v| v[0]),
        Some(2),
        "the cache serves a value older than the store's"
    );
}
