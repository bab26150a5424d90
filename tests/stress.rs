//! Multi-threaded stress with a checker.
//!
//! Each key has one writer thread, which writes `key << 32 | seq` with `seq` increasing.
//! Every thread reads every key. The checker asserts that a read never returns another
//! key's value and that, per reader and key, values never go back in time (an evicted key
//! may read as absent, but an overwritten value can never reappear).

use std::collections::HashMap;
use std::time::Duration;

use larder::Cache;

const THREADS: u64 = 4;
const KEYS: u64 = 4096;

fn ops() -> u64 {
    if cfg!(miri) {
        300
    } else {
        200_000
    }
}

fn run(cache: &Cache<u64, u64>, budget: u64) {
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            scope.spawn(move || {
                let mut seen: HashMap<u64, u64> = HashMap::new();
                let mut seq = vec![0u64; KEYS as usize];
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ thread;
                for _ in 0..ops() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = rng % KEYS;
                    let owner = key % THREADS == thread;
                    match (rng >> 40) % 10 {
                        0..=2 if owner => {
                            seq[key as usize] += 1;
                            let value = key << 32 | seq[key as usize];
                            if (rng >> 50) % 4 == 0 {
                                cache
                                    .insert_with_ttl(key, value, Duration::from_micros(rng % 500))
                                    .unwrap();
                            } else {
                                cache.insert(key, value).unwrap();
                            }
                        }
                        3 if owner => {
                            cache.remove(&key);
                        }
                        _ => {
                            if let Some(value) = cache.get(&key) {
                                assert_eq!(value >> 32, key, "read another key's value");
                                let last = seen.entry(key).or_insert(0);
                                assert!(value >= *last, "key {key} went back in time");
                                *last = value;
                            }
                        }
                    }
                    assert!(
                        cache.weighted_size() <= budget + THREADS,
                        "overshoot beyond one in-flight insert per thread: {} over {budget}",
                        cache.weighted_size()
                    );
                }
            });
        }
    });
    cache.run_pending_tasks();
    cache.validate();
    assert!(cache.weighted_size() <= budget);
    let stats = cache.stats();
    assert_eq!(
        stats.inserts,
        stats.entries + stats.evictions + stats.expirations + stats.removals,
        "stats do not add up: {stats:?}"
    );
}

#[test]
fn concurrent_mixed_operations_keep_every_invariant() {
    let cache = Cache::builder().max_entries(1000).build().unwrap();
    run(&cache, 1000);
}

#[test]
fn concurrent_mixed_operations_on_one_shard() {
    // One shard: every writer contends on the same lock and table.
    let cache = Cache::builder().max_entries(500).shards(1).build().unwrap();
    run(&cache, 500);
}
