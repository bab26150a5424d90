//! Time, statistics, the eviction listener, the builder's errors, and `len` and
//! `weighted_size` against the keys present after concurrent writers (session 24's
//! review). One failed before that session's fixes: a clock panic while other shards made
//! room for a write lost the listener's notice of what had already left. (The review's
//! tests of `run_pending_tasks` under a panicking clock or listener are in
//! `engine_faults.rs`.)

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::KeyIsHash as Identity;
use larder::{BuildError, Cache, Clock, ManualClock, RemovalCause};

/// A clock that panics while its flag is set (without the panic hook, so a loop of them
/// prints nothing), else returns 1.
#[derive(Debug)]
struct PanickingClock(Arc<AtomicBool>);
impl Clock for PanickingClock {
    fn now_nanos(&self) -> u64 {
        if self.0.load(Ordering::SeqCst) {
            std::panic::resume_unwind(Box::new("the clock panics"));
        }
        1
    }
}

/// A clock driven by a closure over a shared counter.
#[derive(Debug, Clone)]
struct ScriptClock(Arc<AtomicU64>);
impl Clock for ScriptClock {
    fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

type Heard = Arc<Mutex<Vec<(u64, u64, RemovalCause)>>>;

fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

// ---------------------------------------------------------------------------------------
// 1. Time
// ---------------------------------------------------------------------------------------

/// A clock that panics while other shards make room for a write, after one eviction: that
/// entry left the cache (counted as an eviction) and the listener must hear of it (before
/// session 24's fix it never did).
#[test]
fn a_clock_panicking_mid_make_room_loses_no_listener_notice() {
    let panicking = Arc::new(AtomicBool::new(false));
    let heard: Heard = Arc::default();
    let cache: Cache<u64, u64, Identity> = Cache::builder()
        .max_bytes(100_000)
        .weigher(|_: &u64, v: &u64| *v)
        .shards(4)
        .hasher(Identity::default())
        .clock(PanickingClock(Arc::clone(&panicking)))
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |k: &u64, v: &u64, c| heard.lock().unwrap().push((*k, *v, c))
        })
        .build()
        .unwrap();
    let shard = |s: u64, k: u64| (s << 62) | k;
    // Shard 1: heavy, no TTL (over its share of 25,000). Shard 2: lighter, with a TTL.
    cache.insert(shard(1, 1), 30_000).unwrap();
    cache
        .insert_with_ttl(shard(2, 1), 20_000, Duration::from_secs(3600))
        .unwrap();
    panicking.store(true, Ordering::SeqCst);
    let insert = std::panic::catch_unwind(|| cache.insert(shard(0, 1), 90_000));
    panicking.store(false, Ordering::SeqCst);
    assert!(insert.is_err());
    let stats = cache.stats();
    let heard = heard.lock().unwrap().clone();
    assert_eq!(
        stats.evictions,
        heard.len() as u64,
        "evictions counted {} but the listener heard {:?}",
        stats.evictions,
        heard
    );
}

/// A clock that jumps to its end and back: no panic, no expired entry returned, and
/// `run_pending_tasks` terminates quickly.
#[test]
fn a_clock_at_its_end_then_back_to_zero() {
    let done = within(30, || {
        let now = Arc::new(AtomicU64::new(1_000_000_000));
        let heard: Heard = Arc::default();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(1000)
            .shards(4)
            .clock(ScriptClock(Arc::clone(&now)))
            .eviction_listener({
                let heard = Arc::clone(&heard);
                move |k: &u64, v: &u64, c| heard.lock().unwrap().push((*k, *v, c))
            })
            .build()
            .unwrap();
        for k in 0..200u64 {
            cache
                .insert_with_ttl(k, k, Duration::from_nanos(k * 1_000_000_000 + 1))
                .unwrap();
        }
        now.store(u64::MAX, Ordering::SeqCst);
        for k in 0..200u64 {
            assert_eq!(cache.get(&k), None, "at the clock's end");
        }
        cache
            .insert_with_ttl(1000, 1, Duration::from_secs(1))
            .unwrap();
        assert_eq!(cache.get(&1000), None, "at u64::MAX a 1 s TTL is over");
        cache.insert(1001, 1).unwrap();
        assert_eq!(cache.get(&1001), Some(1), "no TTL: never expires");
        cache.run_pending_tasks();
        now.store(0, Ordering::SeqCst);
        for k in 0..50u64 {
            cache
                .insert_with_ttl(2000 + k, k, Duration::from_nanos(10))
                .unwrap();
        }
        cache.run_pending_tasks();
        now.store(20, Ordering::SeqCst);
        for k in 0..50u64 {
            assert_eq!(cache.get(&(2000 + k)), None);
        }
        cache.run_pending_tasks();
        now.store(u64::MAX - 1, Ordering::SeqCst);
        cache.run_pending_tasks();
        now.store(u64::MAX, Ordering::SeqCst);
        cache.run_pending_tasks();
        cache.validate();
        // Everything with a TTL is gone now; 1001 stays.
        assert_eq!(cache.len(), 1, "only the TTL-free entry is left");
        let stats = cache.stats();
        assert_eq!(
            stats.inserts,
            stats.entries + stats.evictions + stats.expirations + stats.removals
        );
        let heard = heard.lock().unwrap();
        assert_eq!(heard.len() as u64, stats.expirations + stats.evictions);
    });
    assert!(done.is_some(), "hung");
}

/// TTL conversions at the edges.
#[test]
fn ttl_edges() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(100)
        .clock(clock.clone())
        .build()
        .unwrap();
    clock.advance(Duration::from_secs(10));
    cache.insert_with_ttl(1, 1, Duration::MAX).unwrap();
    cache
        .insert_with_ttl(2, 2, Duration::from_nanos(u64::MAX))
        .unwrap();
    cache
        .insert_with_ttl(3, 3, Duration::from_nanos(u64::MAX - 1))
        .unwrap();
    cache
        .insert_with_ttl(4, 4, Duration::from_nanos(1))
        .unwrap();
    cache.insert_with_ttl(5, 5, Duration::ZERO).unwrap();
    cache
        .insert_with_ttl(6, 6, Duration::new(u64::MAX, 999_999_999))
        .unwrap();
    assert_eq!(cache.get(&4), Some(4));
    assert_eq!(cache.get(&5), None);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(cache.get(&4), None);
    clock.set_nanos(u64::MAX - 1);
    assert_eq!(cache.get(&1), Some(1));
    assert_eq!(cache.get(&2), Some(2));
    assert_eq!(cache.get(&3), None, "a finite TTL saturates before the end");
    assert_eq!(cache.get(&6), Some(6));
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 3);
    cache.validate();
}

/// A ManualClock jumping back and forth at random, with TTL inserts and reads: a read
/// never returns an entry past its expiry by the clock's reading.
#[test]
fn random_clock_never_returns_expired() {
    let done = within(60, || {
        let now = Arc::new(AtomicU64::new(0));
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(64)
            .shards(2)
            .clock(ScriptClock(Arc::clone(&now)))
            .build()
            .unwrap();
        let mut model: HashMap<u64, u64> = HashMap::new(); // key -> expires_at (u64::MAX none)
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let spans = [
            1u64,
            1 << 20,
            1 << 30,
            1 << 36,
            1 << 42,
            1 << 47,
            1 << 50,
            1 << 62,
        ];
        for _ in 0..20_000 {
            let r = rnd();
            match r % 8 {
                0 => {
                    let span = spans[(rnd() % spans.len() as u64) as usize];
                    let t = now.load(Ordering::SeqCst);
                    let d = rnd() % span;
                    let t = if rnd() % 5 == 0 {
                        t.saturating_sub(d)
                    } else {
                        t.saturating_add(d)
                    };
                    now.store(t, Ordering::SeqCst);
                }
                1 => cache.run_pending_tasks(),
                2 | 3 => {
                    let k = rnd() % 100;
                    let span = spans[(rnd() % spans.len() as u64) as usize];
                    let ttl = rnd() % span;
                    let t = now.load(Ordering::SeqCst);
                    let expiry = t.saturating_add(ttl).min(u64::MAX - 1);
                    cache
                        .insert_with_ttl(k, expiry, Duration::from_nanos(ttl))
                        .unwrap();
                    model.insert(k, expiry);
                }
                4 => {
                    let k = rnd() % 100;
                    cache.remove(&k);
                }
                _ => {
                    let k = rnd() % 100;
                    let t = now.load(Ordering::SeqCst);
                    if let Some(v) = cache.get(&k) {
                        assert!(t < v, "read at {t} returned an entry expiring at {v}");
                    }
                }
            }
        }
        cache.validate();
        let stats = cache.stats();
        assert_eq!(
            stats.inserts,
            stats.entries + stats.evictions + stats.expirations + stats.removals,
            "{stats:?}"
        );
    });
    assert!(done.is_some(), "hung");
}

/// A clock that returns ever larger values on every call: `run_pending_tasks` still ends.
#[test]
fn run_pending_tasks_ends_with_a_racing_clock() {
    #[derive(Debug)]
    struct Racing(AtomicU64);
    impl Clock for Racing {
        fn now_nanos(&self) -> u64 {
            self.0.fetch_add(1 << 33, Ordering::SeqCst)
        }
    }
    let done = within(30, || {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(20_000)
            .shards(4)
            .clock(Racing(AtomicU64::new(0)))
            .build()
            .unwrap();
        for k in 0..20_000u64 {
            cache
                .insert_with_ttl(k, k, Duration::from_secs(k % 5000))
                .unwrap();
        }
        cache.run_pending_tasks();
        cache.validate();
    });
    assert!(done.is_some(), "run_pending_tasks did not end");
}

// ---------------------------------------------------------------------------------------
// 2. Stats
// ---------------------------------------------------------------------------------------

#[test]
fn hits_plus_misses_equal_gets_across_threads() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(1000).build().unwrap();
    for k in 0..500 {
        cache.insert(k, k).unwrap();
    }
    let per_thread = 200_000u64;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut hits = 0u64;
                for i in 0..per_thread {
                    let k = (i * 7 + t) % 1000;
                    if cache.get(&k).is_some() {
                        hits += 1;
                    }
                    if i % 1000 == 0 {
                        let _ = cache.insert(k, k);
                    }
                }
                hits
            })
        })
        .collect();
    let hits: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, 4 * per_thread, "{stats:?}");
    assert_eq!(stats.hits, hits);
}

/// Stats and listener against a sequential model: every cause counted once.
#[test]
fn stats_and_listener_agree_with_a_model() {
    let clock = ManualClock::new();
    let heard: Heard = Arc::default();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(50)
        .shards(2)
        .clock(clock.clone())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |k: &u64, v: &u64, c| heard.lock().unwrap().push((*k, *v, c))
        })
        .build()
        .unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut gets = 0;
    for i in 0..50_000u64 {
        let k = rnd() % 120;
        match rnd() % 10 {
            0 => drop(cache.insert_with_ttl(k, i, Duration::from_millis(rnd() % 3000))),
            1 | 2 => drop(cache.insert(k, i)),
            3 => drop(cache.remove(&k)),
            4 => clock.advance(Duration::from_millis(rnd() % 800)),
            5 if i % 997 == 0 => cache.clear(),
            6 if i % 101 == 0 => cache.run_pending_tasks(),
            _ => {
                gets += 1;
                let _ = cache.get(&k);
            }
        }
    }
    cache.run_pending_tasks();
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, gets);
    assert_eq!(
        stats.inserts,
        stats.entries + stats.evictions + stats.expirations + stats.removals,
        "{stats:?}"
    );
    let heard = heard.lock().unwrap();
    let count = |c| heard.iter().filter(|h| h.2 == c).count() as u64;
    assert_eq!(count(RemovalCause::Evicted), stats.evictions);
    assert_eq!(count(RemovalCause::Expired), stats.expirations);
    assert_eq!(count(RemovalCause::Removed), stats.removals);
    assert_eq!(count(RemovalCause::Replaced), stats.updates);
    assert_eq!(stats.entries as usize, cache.len());
    assert_eq!(stats.weighted_size, cache.len() as u64);
    drop(heard);
    cache.clear();
    let after = cache.stats();
    assert_eq!((after.entries, after.weighted_size), (0, 0));
    assert_eq!(
        after.inserts,
        after.evictions + after.expirations + after.removals
    );
}

// ---------------------------------------------------------------------------------------
// 3. Listener
// ---------------------------------------------------------------------------------------

#[test]
fn listener_causes_and_values() {
    let clock = ManualClock::new();
    let heard: Heard = Arc::default();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(2)
        .shards(1)
        .clock(clock.clone())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |k: &u64, v: &u64, c| heard.lock().unwrap().push((*k, *v, c))
        })
        .build()
        .unwrap();
    cache.insert(1, 10).unwrap();
    cache.insert(1, 11).unwrap();
    assert_eq!(
        heard.lock().unwrap().drain(..).collect::<Vec<_>>(),
        [(1, 10, RemovalCause::Replaced)]
    );
    cache.remove(&1);
    assert_eq!(
        heard.lock().unwrap().drain(..).collect::<Vec<_>>(),
        [(1, 11, RemovalCause::Removed)]
    );
    cache
        .insert_with_ttl(2, 20, Duration::from_secs(1))
        .unwrap();
    clock.advance(Duration::from_secs(1));
    cache.run_pending_tasks();
    assert_eq!(
        heard.lock().unwrap().drain(..).collect::<Vec<_>>(),
        [(2, 20, RemovalCause::Expired)]
    );
    cache
        .insert_with_ttl(3, 30, Duration::from_secs(1))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.remove(&3), None);
    assert_eq!(
        heard.lock().unwrap().drain(..).collect::<Vec<_>>(),
        [(3, 30, RemovalCause::Expired)]
    );
    cache
        .insert_with_ttl(4, 40, Duration::from_secs(1))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    cache.insert(4, 41).unwrap();
    assert_eq!(
        heard.lock().unwrap().drain(..).collect::<Vec<_>>(),
        [(4, 40, RemovalCause::Expired)]
    );
    cache.insert(5, 50).unwrap();
    cache.insert(6, 60).unwrap();
    let h: Vec<_> = heard.lock().unwrap().drain(..).collect();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].2, RemovalCause::Evicted);
    cache.clear();
    let h: Vec<_> = heard.lock().unwrap().drain(..).collect();
    assert_eq!(h.len(), 2);
    assert!(h.iter().all(|x| x.2 == RemovalCause::Removed));
}

/// A listener that clears the cache from inside clear, and one that runs
/// run_pending_tasks from inside run_pending_tasks: no deadlock.
#[test]
fn listener_recursing_into_clear_and_run_pending_tasks() {
    let done = within(30, || {
        let clock = ManualClock::new();
        let slot: Arc<Mutex<Option<Cache<u64, u64>>>> = Arc::default();
        let calls = Arc::new(AtomicU64::new(0));
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(100)
            .shards(4)
            .clock(clock.clone())
            .eviction_listener({
                let slot = Arc::clone(&slot);
                let calls = Arc::clone(&calls);
                move |_k: &u64, _v: &u64, c| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let cache = slot.lock().unwrap().clone();
                    if let Some(cache) = cache {
                        match c {
                            RemovalCause::Removed => cache.clear(),
                            RemovalCause::Expired => cache.run_pending_tasks(),
                            _ => {}
                        }
                    }
                }
            })
            .build()
            .unwrap();
        *slot.lock().unwrap() = Some(cache.clone());
        for k in 0..100 {
            cache.insert(k, k).unwrap();
        }
        cache.clear();
        assert_eq!(cache.len(), 0);
        for k in 0..100 {
            cache.insert_with_ttl(k, k, Duration::from_secs(1)).unwrap();
        }
        clock.advance(Duration::from_secs(2));
        cache.run_pending_tasks();
        assert_eq!(cache.len(), 0);
        *slot.lock().unwrap() = None;
        calls.load(Ordering::SeqCst)
    });
    assert_eq!(done, Some(200), "hung or wrong count");
}

/// A panicking listener: the cache stays consistent, every departure is still reported
/// exactly once, and the panic reaches the caller.
#[test]
fn panicking_listener_reports_every_departure_once() {
    let heard: Heard = Arc::default();
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(20)
        .shards(4)
        .clock(clock.clone())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |k: &u64, v: &u64, c| {
                heard.lock().unwrap().push((*k, *v, c));
                if k % 3 == 0 {
                    std::panic::resume_unwind(Box::new("listener"));
                }
            }
        })
        .build()
        .unwrap();
    let mut panics = 0;
    for i in 0..3000u64 {
        let k = i % 60;
        let r = std::panic::catch_unwind(|| match i % 6 {
            0 => drop(cache.insert_with_ttl(k, i, Duration::from_millis(i % 1700))),
            1 => drop(cache.remove(&k)),
            2 => clock.advance(Duration::from_millis(300)),
            3 => cache.run_pending_tasks(),
            4 if i % 200 == 4 => cache.clear(),
            _ => drop(cache.insert(k, i)),
        });
        if r.is_err() {
            panics += 1;
        }
    }
    assert!(panics > 0);
    let _ = std::panic::catch_unwind(|| cache.clear());
    cache.validate();
    let stats = cache.stats();
    let heard = heard.lock().unwrap();
    assert_eq!(
        heard.len() as u64,
        stats.evictions + stats.expirations + stats.removals + stats.updates
    );
    assert_eq!(
        stats.inserts,
        stats.evictions + stats.expirations + stats.removals
    );
}

// ---------------------------------------------------------------------------------------
// 4. Builder
// ---------------------------------------------------------------------------------------

#[test]
fn build_errors() {
    let b = || Cache::<u64, u64>::builder();
    assert_eq!(b().build().unwrap_err(), BuildError::NoCapacity);
    assert_eq!(
        b().max_entries(1).max_bytes(1000).build().unwrap_err(),
        BuildError::BothCapacities
    );
    assert_eq!(
        b().max_entries(0).build().unwrap_err(),
        BuildError::ZeroCapacity
    );
    assert_eq!(
        b().max_bytes(0).build().unwrap_err(),
        BuildError::ZeroCapacity
    );
    assert!(matches!(
        b().max_bytes(1).build().unwrap_err(),
        BuildError::BelowOneEntry { max_bytes: 1, .. }
    ));
    for n in [0usize, 3, 6, 257, 512, 1 << 20, usize::MAX] {
        assert_eq!(
            b().max_entries(10).shards(n).build().unwrap_err(),
            BuildError::BadShardCount { requested: n },
            "{n}"
        );
        let msg = b()
            .max_entries(10)
            .shards(n)
            .build()
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&n.to_string()), "{msg}");
    }
    for n in [1usize, 2, 4, 128, 256] {
        let c = b().max_entries(10).shards(n).build().unwrap();
        for k in 0..100 {
            c.insert(k, k).unwrap();
        }
        c.validate();
        assert!(c.len() <= 10);
    }
    assert_eq!(
        b().max_entries(10).weigher(|_, _| 1).build().unwrap_err(),
        BuildError::WeigherWithoutBytes
    );
    assert!(matches!(
        b().max_entries(u64::MAX).build().unwrap_err(),
        BuildError::CapacityTooLarge { .. }
    ));
    assert!(matches!(
        b().max_bytes(u64::MAX).build().unwrap_err(),
        BuildError::CapacityTooLarge { .. }
    ));
    assert!(matches!(
        b().max_entries(1 << 26).shards(1).build().unwrap_err(),
        BuildError::CapacityTooLarge { .. }
    ));
    assert!(b().max_entries(1 << 25).shards(1).build().is_ok());
}

#[test]
fn default_ttl_zero_and_max() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(10)
        .default_ttl(Duration::ZERO)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    assert_eq!(cache.get(&1), None);
    cache
        .insert_with_ttl(2, 2, Duration::from_secs(60))
        .unwrap();
    assert_eq!(cache.get(&2), Some(2));
    cache.run_pending_tasks();
    assert_eq!(cache.len(), 1);
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(10)
        .default_ttl(Duration::MAX)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    assert_eq!(cache.get(&1), Some(1));
}

#[test]
fn deterministic_hasher() {
    type H = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    for shards in [1usize, 2, 8, 256] {
        let cache: Cache<String, u64, H> = Cache::builder()
            .max_entries(1000)
            .shards(shards)
            .hasher(H::default())
            .build()
            .unwrap();
        for k in 0..3000u64 {
            cache.insert(format!("k{k}"), k).unwrap();
        }
        cache.validate();
        assert_eq!(cache.len(), 1000, "{shards}");
        let present = (0..3000u64)
            .filter(|k| cache.contains_key(&format!("k{k}")))
            .count();
        assert_eq!(present, 1000);
        assert_eq!(
            cache.get("k2999"),
            Some(2999).filter(|_| cache.contains_key("k2999"))
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. clear / run_pending_tasks / len / weighted_size under concurrency
// ---------------------------------------------------------------------------------------

fn drift_run(byte_mode: bool) {
    let clock = ManualClock::new();
    let builder = Cache::<u64, u64>::builder().shards(4).clock(clock.clone());
    let cache = if byte_mode {
        builder
            .max_bytes(200_000)
            .weigher(|_, v: &u64| *v % 500)
            .build()
            .unwrap()
    } else {
        builder.max_entries(500).build().unwrap()
    };
    let keys = 2000u64;
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let cache = &cache;
            let clock = &clock;
            s.spawn(move || {
                let mut x = 0x1234_5678u64 + t;
                for i in 0..60_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % keys;
                    match x % 13 {
                        0 if t == 0 && i % 500 == 0 => cache.clear(),
                        1 if i % 50 == 0 => cache.run_pending_tasks(),
                        2 | 3 => drop(cache.remove(&k)),
                        4 => drop(cache.insert_with_ttl(k, x, Duration::from_millis(x % 50))),
                        5 if t == 1 => clock.advance(Duration::from_millis(1)),
                        6 => drop(cache.get(&k)),
                        _ => drop(cache.insert(k, x)),
                    }
                    let _ = cache.len();
                    let _ = cache.weighted_size();
                }
            });
        }
    });
    clock.advance(Duration::from_secs(10));
    cache.run_pending_tasks();
    let present = (0..keys).filter(|k| cache.contains_key(k)).count();
    assert_eq!(cache.len(), present);
    if !byte_mode {
        assert_eq!(cache.weighted_size(), present as u64);
    }
    let stats = cache.stats();
    assert_eq!(stats.entries as usize, present);
    assert_eq!(
        stats.inserts,
        stats.entries + stats.evictions + stats.expirations + stats.removals,
        "{stats:?}"
    );
    cache.validate();
    cache.clear();
    assert_eq!((cache.len(), cache.weighted_size()), (0, 0));
}

#[test]
fn concurrent_drift_count_mode() {
    drift_run(false);
}

#[test]
fn concurrent_drift_byte_mode() {
    drift_run(true);
}

/// Every value inserted (each unique) is reported exactly once by the time a final clear
/// returns, under four threads inserting, removing, clearing and expiring.
fn every_value_heard_once(byte_mode: bool) {
    let clock = ManualClock::new();
    let heard: Arc<Mutex<Vec<(u64, RemovalCause)>>> = Arc::default();
    let builder = Cache::<u64, u64>::builder()
        .shards(4)
        .clock(clock.clone())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |_k: &u64, v: &u64, c| heard.lock().unwrap().push((*v, c))
        });
    let cache = if byte_mode {
        builder
            .max_bytes(60_000)
            .weigher(|_, v: &u64| (*v >> 32) % 700)
            .build()
            .unwrap()
    } else {
        builder.max_entries(300).build().unwrap()
    };
    let inserted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (cache, clock, inserted) = (&cache, &clock, &inserted);
            s.spawn(move || {
                let mut x = 0x9876_5432u64 + t * 7919;
                for i in 0..40_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % 1000;
                    let v = (x << 32 >> 32 << 32) | (t << 28) | i;
                    match x % 17 {
                        0 if t == 0 && i % 700 == 0 => cache.clear(),
                        1 if i % 40 == 0 => cache.run_pending_tasks(),
                        2 | 3 => drop(cache.remove(&k)),
                        4 | 5 => {
                            if cache
                                .insert_with_ttl(k, v, Duration::from_millis(x % 40))
                                .is_ok()
                            {
                                inserted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        6 if t == 1 => clock.advance(Duration::from_millis(1)),
                        7 | 8 => drop(cache.get(&k)),
                        _ => {
                            if cache.insert(k, v).is_ok() {
                                inserted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            });
        }
    });
    cache.clear();
    let heard = heard.lock().unwrap();
    let mut seen = HashMap::new();
    for (v, c) in heard.iter() {
        if let Some(prev) = seen.insert(*v, *c) {
            panic!("value {v:#x} reported twice: {prev:?} then {c:?}");
        }
    }
    assert_eq!(
        seen.len() as u64,
        inserted.load(Ordering::Relaxed),
        "lost notices"
    );
    assert_eq!((cache.len(), cache.weighted_size()), (0, 0));
}

#[test]
fn every_value_heard_once_count_mode() {
    every_value_heard_once(false);
}

#[test]
fn every_value_heard_once_byte_mode() {
    every_value_heard_once(true);
}

/// Forward-only clock: after `run_pending_tasks`, `len` counts exactly the entries whose
/// expiry is still ahead (a model of key -> expiry), across every wheel level, rewrites
/// that change a TTL, removes and clears.
#[test]
fn run_pending_tasks_leaves_exactly_the_unexpired() {
    for seed in 1..=20u64 {
        let now = Arc::new(AtomicU64::new(seed * 1_000_003));
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(100_000)
            .shards(2)
            .clock(ScriptClock(Arc::clone(&now)))
            .build()
            .unwrap();
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64 ^ seed;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let spans = [
            1u64 << 10,
            1 << 30,
            1 << 33,
            1 << 36,
            1 << 40,
            1 << 44,
            1 << 48,
            1 << 52,
        ];
        for step in 0..30_000u64 {
            let t = now.load(Ordering::SeqCst);
            match rnd() % 12 {
                0 => {
                    let d = rnd() % spans[(rnd() % 8) as usize];
                    now.store(t + d, Ordering::SeqCst);
                }
                1 => {
                    cache.run_pending_tasks();
                    let live = model.values().filter(|&&e| e > t).count();
                    assert_eq!(cache.len(), live, "seed {seed} step {step}");
                    model.retain(|_, e| *e > t);
                }
                2 => {
                    let k = rnd() % 500;
                    cache.remove(&k);
                    model.remove(&k);
                }
                3 if rnd() % 50 == 0 => {
                    cache.clear();
                    model.clear();
                }
                4 => {
                    let k = rnd() % 500;
                    cache.insert(k, 0).unwrap();
                    model.insert(k, u64::MAX);
                }
                _ => {
                    let k = rnd() % 500;
                    let ttl = rnd() % spans[(rnd() % 8) as usize];
                    cache
                        .insert_with_ttl(k, 0, Duration::from_nanos(ttl))
                        .unwrap();
                    model.insert(k, (t + ttl).min(u64::MAX - 1));
                }
            }
            let k = rnd() % 500;
            let t = now.load(Ordering::SeqCst);
            let expect = model.get(&k).is_some_and(|&e| e > t);
            assert_eq!(
                cache.contains_key(&k),
                expect,
                "seed {seed} step {step} key {k}"
            );
        }
        let t = now.load(Ordering::SeqCst);
        cache.run_pending_tasks();
        assert_eq!(cache.len(), model.values().filter(|&&e| e > t).count());
        cache.validate();
    }
}
