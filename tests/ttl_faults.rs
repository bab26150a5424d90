//! Expiry (TTL) faults session 23's review found. Each test failed before its fix.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::KeyIsHash as Identity;
use larder::{Cache, ManualClock, RemovalCause};

type Heard = Arc<Mutex<Vec<(u64, RemovalCause)>>>;

/// Writes about a minute apart: each write's 64 steps went to level 0's buckets (re-opened
/// from the previous write's time, empty ones charged too), so level 1 was never visited
/// and an entry filed there never expired, however many writes followed. Fixed: empty and
/// not-yet-due buckets cost no work.
#[test]
fn writes_70_s_apart_reap_an_entry_filed_on_level_one() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(10_000)
        .shards(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    cache
        .insert_with_ttl(0, 0, Duration::from_secs(100))
        .unwrap();
    for key in 1..=200u64 {
        clock.advance(Duration::from_secs(70));
        cache.insert(key, key).unwrap();
    }
    // 14,000 s on, 200 writes later: entry 0 fell due at 100 s.
    assert_eq!(cache.get(&0), None);
    let stats = cache.stats();
    assert_eq!(
        (stats.expirations, cache.len()),
        (1, 200),
        "entry due 13,900 s ago still held after 200 writes: {stats:?}"
    );
}

/// The same starvation for a shard written once every 68 s, each write an entry with a
/// 30 s TTL: the write files its entry relative to the wheel's time of the previous write
/// (98 s away, so on level 1), then its 64 steps all went to level 0's buckets. Nothing
/// expired through writes: after 600 writes (11 h 20 min) all 599 due entries were held.
#[test]
fn a_shard_written_every_68_s_expires_its_entries() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(100_000)
        .shards(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    for key in 0..600u64 {
        clock.advance(Duration::from_secs(68));
        cache
            .insert_with_ttl(key, key, Duration::from_secs(30))
            .unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.expirations, cache.len()), (599, 1), "{stats:?}");
}

/// `run_pending_tasks` read the clock once and took each shard in turn. A shard whose
/// wheel a write advanced to a later reading in between (here from the listener, which runs
/// between shards; in production any concurrent writer) answered "done" at once (`advance`
/// with a `now` below its time is a no-op), so `run_pending_tasks` returned with thousands
/// of entries there long expired. Fixed: each shard reads the clock under its lock.
#[test]
fn run_pending_tasks_expires_a_shard_a_write_advanced_meanwhile() {
    let clock = ManualClock::new();
    let slot: Arc<Mutex<Option<Cache<u64, u64, Identity>>>> = Arc::default();
    let cache = {
        let slot = Arc::clone(&slot);
        let clock = clock.clone();
        Cache::<u64, u64>::builder()
            .max_entries(1_000_000)
            .shards(2)
            .hasher(Identity::default())
            .clock(clock.clone())
            .eviction_listener(move |&key: &u64, _: &u64, _| {
                if key == 0 {
                    // Between shard 0 and shard 1 of `run_pending_tasks`: a write to
                    // shard 1 at a later reading.
                    clock.advance(Duration::from_secs(1));
                    let cache = slot.lock().unwrap().clone().unwrap();
                    cache.insert(1 << 63 | 999_999, 0).unwrap();
                }
            })
            .build()
            .unwrap()
    };
    *slot.lock().unwrap() = Some(cache.clone());
    let n = 10_000u64;
    for i in 0..n {
        cache
            .insert_with_ttl(1 << 63 | i, i, Duration::from_secs(1))
            .unwrap();
    }
    cache.insert_with_ttl(0, 0, Duration::from_secs(1)).unwrap();
    clock.advance(Duration::from_secs(2));
    cache.run_pending_tasks();
    *slot.lock().unwrap() = None;
    let stats = cache.stats();
    // Left: the TTL-free key inserted from the listener.
    assert_eq!(
        (cache.len(), stats.expirations),
        (1, n + 1),
        "run_pending_tasks returned with due entries held"
    );
}

/// An entry inserted with a zero TTL is expired from the start. Inserted into a shard whose
/// wheel was empty, the write read no clock (`now` = 0), so when admission evicted it at
/// once it was reported `Evicted` (and counted as an admission rejection), not `Expired`.
#[test]
fn a_zero_ttl_entry_evicted_by_its_own_insert_is_reported_expired() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(5));
    let heard: Heard = Arc::default();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(4)
        .shards(1)
        .clock(clock.clone())
        .eviction_listener({
            let heard = Arc::clone(&heard);
            move |&k: &u64, _: &u64, cause| heard.lock().unwrap().push((k, cause))
        })
        .build()
        .unwrap();
    for key in 0..4u64 {
        cache.insert(key, key).unwrap();
    }
    // Hot residents, so the newcomer loses the admission duel.
    for _ in 0..50 {
        for key in 0..4u64 {
            cache.get(&key);
        }
    }
    for key in 0..4u64 {
        cache.insert(key, key).unwrap();
    }
    cache.insert_with_ttl(100, 100, Duration::ZERO).unwrap();
    let heard = heard.lock().unwrap().clone();
    let of_100: Vec<_> = heard.iter().filter(|(k, _)| *k == 100).collect();
    assert_eq!(
        of_100,
        vec![&(100, RemovalCause::Expired)],
        "all heard: {heard:?}; stats {:?}",
        cache.stats()
    );
}
