//! The listener and the counters agree with what happened: random single-threaded runs
//! (count and byte mode, odd weights and TTLs, a clock that jumps) and concurrent ones
//! with `clear` and `run_pending_tasks`, every accepted value reported exactly once; a
//! listener that panics or calls back into the cache; an expired entry that leaves through
//! eviction; tiny budgets. From session 22's review, whose three faults are fixed: a
//! panicking listener cut `clear` and `run_pending_tasks` short at the first shard, and an
//! expired entry taken by eviction was reported evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::{Cache, InsertErrorKind, ManualClock, RemovalCause};

mod common;
use common::Rng;

type Heard = Arc<Mutex<Vec<(u32, u64, RemovalCause)>>>;

/// Random single-threaded operations; listener and stats must agree exactly, every accepted
/// value must be reported exactly once by the end, no read returns a dead value.
fn random_run(seed: u64, byte_mode: bool, shards: usize) {
    let mut rng = Rng(seed | 1);
    let clock = ManualClock::new();
    let heard: Heard = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let mut builder = Cache::<u32, u64>::builder()
        .shards(shards)
        .clock(clock.clone())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |k: &u32, v: &u64, cause| heard.lock().unwrap().push((*k, *v, cause))
        });
    if byte_mode {
        let calls = Arc::clone(&calls);
        // A weigher that changes its mind between calls for the same entry, sometimes 0,
        // sometimes absurd.
        builder = builder.max_bytes(8_000).weigher(move |_k, v| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            match (v ^ n) % 7 {
                0 => 0,
                1 => u64::MAX,
                2 => 7_000,
                _ => (v ^ n) % 500,
            }
        });
    } else {
        builder = builder.max_entries(20);
    }
    let cache = builder.build().unwrap();
    let mut next_value = 1u64;
    // key -> (value, expires_at) of the latest accepted write.
    let mut latest: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut accepted = 0u64;
    let mut now = 0u64;
    for _ in 0..3000 {
        let key = rng.below(40) as u32;
        match rng.below(12) {
            0..=3 => {
                let value = next_value;
                next_value += 1;
                let ttl = match rng.below(6) {
                    0 => None,
                    1 => Some(Duration::ZERO),
                    2 => Some(Duration::MAX),
                    3 => Some(Duration::from_nanos(u64::MAX - 5)),
                    _ => Some(Duration::from_secs(rng.below(200))),
                };
                let result = match ttl {
                    None => cache.insert(key, value),
                    Some(ttl) => cache.insert_with_ttl(key, value, ttl),
                };
                match result {
                    Ok(()) => {
                        accepted += 1;
                        let expires = match ttl {
                            None => u64::MAX,
                            Some(t) if t == Duration::MAX => u64::MAX,
                            Some(t) => {
                                let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
                                if nanos == u64::MAX {
                                    u64::MAX
                                } else {
                                    now.saturating_add(nanos).min(u64::MAX - 1)
                                }
                            }
                        };
                        latest.insert(key, (value, expires));
                    }
                    Err(e) => {
                        assert!(byte_mode);
                        assert_eq!((e.key, e.value), (key, value), "handed back");
                        assert!(matches!(e.kind, InsertErrorKind::TooHeavy { .. }));
                    }
                }
            }
            4..=5 => {
                let got = cache.get(&key);
                let contains = cache.contains_key(&key);
                assert_eq!(got.is_some(), contains, "get and contains_key disagree");
                if let Some(v) = got {
                    let (value, expires) = latest[&key];
                    assert_eq!(v, value, "not the latest write");
                    assert!(
                        expires == u64::MAX || now < expires,
                        "expired value returned: key {key} value {v} expires {expires} now {now}"
                    );
                }
            }
            6 => {
                if let Some(v) = cache.remove(&key) {
                    let (value, expires) = latest[&key];
                    assert_eq!(v, value);
                    assert!(
                        expires == u64::MAX || now < expires,
                        "expired value returned by remove"
                    );
                }
                latest.remove(&key);
            }
            7 => {
                now = now.saturating_add(rng.below(100) * 1_000_000_000);
                clock.set_nanos(now);
            }
            8 => {
                // Jumps: backwards, far ahead, to the clock's end.
                now = match rng.below(4) {
                    0 => now / 2,
                    1 => now.saturating_add(1 << 50),
                    2 => u64::MAX,
                    _ => 0,
                };
                clock.set_nanos(now);
            }
            9 => cache.run_pending_tasks(),
            10 if rng.below(20) == 0 => {
                cache.clear();
                latest.clear();
            }
            _ => {}
        }
        cache.validate();
        if !byte_mode {
            assert_eq!(cache.weighted_size(), cache.len() as u64);
        }
        check_counts(&cache, &heard, accepted);
    }
    clear_and_check_every_value_reported_once(&cache, &heard, accepted);
}

/// Clears the cache, then checks the counters again and that every accepted value was
/// reported exactly once.
fn clear_and_check_every_value_reported_once(
    cache: &Cache<u32, u64>,
    heard: &Heard,
    accepted: u64,
) {
    cache.clear();
    check_counts(cache, heard, accepted);
    assert_eq!((cache.len(), cache.weighted_size()), (0, 0));
    let heard = heard.lock().unwrap();
    let mut seen = std::collections::HashSet::new();
    for &(_, v, _) in heard.iter() {
        assert!(seen.insert(v), "value {v} reported twice");
    }
    assert_eq!(
        seen.len() as u64,
        accepted,
        "some accepted value never reported"
    );
}

fn check_counts(cache: &Cache<u32, u64>, heard: &Heard, accepted: u64) {
    let s = cache.stats();
    let heard = heard.lock().unwrap();
    let count = |c| heard.iter().filter(|h| h.2 == c).count() as u64;
    assert_eq!(s.inserts + s.updates, accepted, "{s:?}");
    assert_eq!(count(RemovalCause::Evicted), s.evictions, "{s:?}");
    assert_eq!(count(RemovalCause::Expired), s.expirations, "{s:?}");
    assert_eq!(count(RemovalCause::Removed), s.removals, "{s:?}");
    assert_eq!(count(RemovalCause::Replaced), s.updates, "{s:?}");
    assert_eq!(
        s.inserts,
        s.entries + s.evictions + s.expirations + s.removals,
        "{s:?}"
    );
    assert!(s.admission_rejections <= s.evictions);
    assert_eq!(s.entries, cache.len() as u64);
    assert_eq!(s.weighted_size, cache.weighted_size());
}

#[test]
fn random_ops_count_mode_one_shard() {
    for seed in 1..40 {
        random_run(seed * 7919, false, 1);
    }
}

#[test]
fn random_ops_count_mode_four_shards() {
    for seed in 1..40 {
        random_run(seed * 104_729, false, 4);
    }
}

#[test]
fn random_ops_byte_mode() {
    for seed in 1..40 {
        random_run(seed * 15_485_863, true, 1);
        random_run(seed * 32_452_843, true, 4);
    }
}

/// Writers, readers, `clear` and `run_pending_tasks` at once: at rest every accepted value
/// is reported once, and the stats add up.
fn concurrent_run(byte_mode: bool, shards: usize) {
    let clock = ManualClock::new();
    let heard: Heard = Arc::default();
    let mut builder = Cache::<u32, u64>::builder()
        .shards(shards)
        .clock(clock.clone())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |k: &u32, v: &u64, cause| heard.lock().unwrap().push((*k, *v, cause))
        });
    builder = if byte_mode {
        builder.max_bytes(20_000).weigher(|_, v| v % 300)
    } else {
        builder.max_entries(64)
    };
    let cache = builder.build().unwrap();
    let accepted = AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut writers = Vec::new();
        for t in 0..3u64 {
            let cache = &cache;
            let accepted = &accepted;
            writers.push(s.spawn(move || {
                let mut rng = Rng((t + 1) * 0x9E37_79B9);
                for i in 0..20_000u64 {
                    let key = rng.below(200) as u32;
                    let value = (t << 40) | i;
                    let r = match rng.below(3) {
                        0 => cache.insert(key, value),
                        1 => cache.insert_with_ttl(key, value, Duration::from_secs(rng.below(5))),
                        _ => {
                            cache.remove(&key);
                            cache.get(&key);
                            continue;
                        }
                    };
                    if r.is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        let cache2 = &cache;
        let clock2 = &clock;
        let stop2 = &stop;
        s.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                cache2.clear();
                clock2.advance(Duration::from_millis(300));
                cache2.run_pending_tasks();
                std::thread::yield_now();
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let accepted = accepted.load(Ordering::Relaxed);
    cache.validate();
    check_counts(&cache, &heard, accepted);
    clear_and_check_every_value_reported_once(&cache, &heard, accepted);
}

#[test]
fn concurrent_clear_count_mode() {
    for _ in 0..3 {
        concurrent_run(false, 4);
        concurrent_run(false, 1);
    }
}

#[test]
fn concurrent_clear_byte_mode() {
    for _ in 0..3 {
        concurrent_run(true, 4);
        concurrent_run(true, 1);
    }
}

/// `clear` with a listener that panics: the panic reaches the caller "once the cache is
/// consistent" and "every other notification still runs" (README, Bad input), and every
/// shard is emptied (it stopped at the first shard whose notice panicked).
#[test]
fn clear_with_a_panicking_listener_empties_every_shard() {
    let cache: Cache<u32, u32> = Cache::builder()
        .max_entries(1000)
        .shards(8)
        .eviction_listener(|_, _, _| panic!("listener"))
        .build()
        .unwrap();
    for key in 0..200 {
        cache.insert(key, key).unwrap();
    }
    let result = std::panic::catch_unwind(|| cache.clear());
    assert!(result.is_err());
    cache.validate();
    assert_eq!(
        cache.len(),
        0,
        "clear left entries behind after the listener panicked"
    );
}

/// Same for `run_pending_tasks`: every expired entry should be removed.
#[test]
fn run_pending_tasks_with_a_panicking_listener_expires_every_shard() {
    let clock = ManualClock::new();
    let cache: Cache<u32, u32> = Cache::builder()
        .max_entries(1000)
        .shards(8)
        .clock(clock.clone())
        .eviction_listener(|_, _, _| panic!("listener"))
        .build()
        .unwrap();
    for key in 0..200 {
        cache
            .insert_with_ttl(key, key, Duration::from_secs(1))
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    let result = std::panic::catch_unwind(|| cache.run_pending_tasks());
    assert!(result.is_err());
    cache.validate();
    assert_eq!(
        cache.len(),
        0,
        "expired entries left behind after the listener panicked"
    );
}

/// Hashes a `u64` key to itself: the top bit picks the shard of a two-shard cache.
#[derive(Default, Clone)]
struct Identity(u64);
impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!()
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
type IdentityState = std::hash::BuildHasherDefault<Identity>;

/// An entry whose TTL ran out long before it left is reported `Expired` by `remove`,
/// `clear` and a replacing insert, and by eviction too (which reported it `Evicted`): here
/// the insert into a shard far below its share makes room in the other, whose due entries
/// it now expires before evicting any live one.
#[test]
fn an_expired_entry_that_leaves_through_eviction_is_reported_expired() {
    let clock = ManualClock::new();
    let heard: Arc<Mutex<Vec<(u64, RemovalCause)>>> = Arc::default();
    let cache: Cache<u64, u64, IdentityState> = Cache::builder()
        .max_entries(100)
        .shards(2)
        .clock(clock.clone())
        .hasher(IdentityState::default())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |k: &u64, _: &u64, cause| heard.lock().unwrap().push((*k, cause))
        })
        .build()
        .unwrap();
    const SHARD_1: u64 = 1 << 63;
    // Shard 0: 90 entries living one second; shard 1: 10 without TTL.
    for key in 0..90u64 {
        cache
            .insert_with_ttl(key << 32 | key, key, Duration::from_secs(1))
            .unwrap();
    }
    for key in 0..10u64 {
        cache.insert(SHARD_1 | key << 32 | key, key).unwrap();
    }
    assert_eq!(cache.len(), 100);
    clock.advance(Duration::from_secs(60));
    // Every shard-0 entry is long expired; the next insert into shard 1 must make room.
    cache.insert(SHARD_1 | 99 << 32 | 99, 99).unwrap();
    let heard = heard.lock().unwrap().clone();
    let stats = cache.stats();
    assert!(!heard.is_empty());
    for &(key, cause) in &heard {
        assert!(key < SHARD_1, "a live shard-1 entry left: {heard:?}");
        assert_eq!(
            cause,
            RemovalCause::Expired,
            "an entry expired 59 s ago was reported as {cause:?}"
        );
    }
    assert_eq!(stats.evictions, 0, "{stats:?}");
    assert_eq!(stats.expirations, heard.len() as u64, "{stats:?}");
}

/// Tiny and odd budgets build and behave: every insert either fits or is refused.
#[test]
fn tiny_budgets_do_not_panic() {
    for bytes in [1u64, 50, 83, 84, 85, 100, 168, 169, 200] {
        for shards in [1usize, 2, 256] {
            let built = Cache::<u64, u64>::builder()
                .max_bytes(bytes)
                .shards(shards)
                .build();
            // Below one entry's overhead the builder refuses: such a cache holds nothing.
            let Ok(cache) = built else {
                assert!(matches!(
                    built,
                    Err(larder::BuildError::BelowOneEntry { .. })
                ));
                continue;
            };
            for key in 0..300u64 {
                let _ = cache.insert(key, key);
                let _ = cache.get(&key);
            }
            cache.validate();
            let _ = cache.stats();
        }
    }
    for entries in [1u64, 2, 3, 255, 257] {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(entries)
            .shards(256)
            .build()
            .unwrap();
        for key in 0..3000u64 {
            cache.insert(key, key).unwrap();
        }
        cache.validate();
        assert!(cache.len() as u64 <= entries);
    }
}

/// A listener that calls back into the cache from every kind of departure: no deadlock.
#[test]
fn a_listener_calling_back_into_the_cache_never_deadlocks() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let clock = ManualClock::new();
        let slot: Arc<Mutex<Option<Cache<u64, u64>>>> = Arc::default();
        let depth = Arc::new(AtomicU64::new(0));
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(16)
            .shards(2)
            .clock(clock.clone())
            .eviction_listener({
                let slot = Arc::clone(&slot);
                let depth = Arc::clone(&depth);
                move |k: &u64, _: &u64, _| {
                    let cache = slot.lock().unwrap().clone();
                    if let Some(cache) = cache {
                        if depth.fetch_add(1, Ordering::Relaxed) < 1 {
                            let _ = cache.get(k);
                            let _ = cache.len();
                            let _ = cache.stats();
                            let _ = cache.insert(k + 1_000_000, 1);
                            let _ = cache.remove(&(k + 2));
                            let _ = cache.get_or_insert_with(k + 3_000_000, || 3);
                            cache.run_pending_tasks();
                            let _ = cache.hottest(3);
                        }
                        depth.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            })
            .build()
            .unwrap();
        *slot.lock().unwrap() = Some(cache.clone());
        for i in 0..2000u64 {
            match i % 7 {
                0 => drop(cache.insert_with_ttl(i % 50, i, Duration::from_secs(i % 3))),
                1 => drop(cache.remove(&(i % 50))),
                2 => clock.advance(Duration::from_secs(1)),
                3 => cache.run_pending_tasks(),
                4 => drop(cache.get_or_insert_with(i % 60, || i)),
                5 if i % 100 == 5 => cache.clear(),
                _ => drop(cache.insert(i % 70, i)),
            }
        }
        cache.validate();
        *slot.lock().unwrap() = None;
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("deadlock: the listener's call back into the cache never returned");
}
