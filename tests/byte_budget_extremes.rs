//! Byte budgets at their extremes through the public API: weights of 0, 1, the whole
//! budget, one byte over it and `u64::MAX`, budgets from one entry's overhead to 2^48, run
//! in the test profile, where arithmetic overflow panics (session 26's review of byte mode).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder::{BuildError, Cache};

mod common;
use common::SplitMix as Rng;

fn overhead() -> u64 {
    match Cache::<u64, u64>::builder().max_bytes(1).build() {
        Err(BuildError::BelowOneEntry { entry_overhead, .. }) => entry_overhead,
        other => panic!("{other:?}"),
    }
}

/// The weigher charges the value itself; values are drawn from extremes.
fn run(budget: u64, shards: Option<usize>, seed: u64, steps: u64) {
    let o = overhead();
    let mut builder = Cache::<u64, u64>::builder()
        .max_bytes(budget)
        .weigher(|_, &v| v);
    if let Some(n) = shards {
        builder = builder.shards(n);
    }
    let cache = builder.build().unwrap();
    let mut rng = Rng(seed);
    let picks = [
        0,
        1,
        budget - o,
        (budget - o) / 2,
        budget.saturating_sub(o).saturating_add(1),
        u64::MAX,
        u64::MAX - o,
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
    ];
    for _ in 0..steps {
        let key = rng.next() % 64;
        let r = rng.next();
        let value = if r % 3 == 0 {
            picks[(r >> 8) as usize % picks.len()]
        } else {
            (r >> 16) % (budget / 4 + 1)
        };
        match rng.next() % 10 {
            0..=4 => {
                let _ = cache.insert(key, value);
            }
            5 => {
                let _ = cache.insert_with_ttl(key, value, Duration::from_nanos(rng.next() % 3));
            }
            6 => {
                cache.remove(&key);
            }
            _ => {
                cache.get(&key);
            }
        }
    }
    cache.run_pending_tasks();
    cache.validate();
    assert!(cache.weighted_size() <= budget);
}

#[test]
fn extreme_weights_at_tiny_and_huge_budgets() {
    let o = overhead();
    for budget in [o, o + 1, 2 * o, 3 * o + 7, 1 << 20, 1 << 48] {
        for shards in [None, Some(1), Some(2), Some(8)] {
            for seed in 0..4 {
                run(budget, shards, seed, 20_000);
            }
        }
    }
}

/// Weights changing on every update, one key hot, across threads, with sampled keys'
/// weights read concurrently.
#[test]
fn concurrent_reweighs() {
    let cache = Arc::new(
        Cache::<u64, u64>::builder()
            .max_bytes(1 << 16)
            .weigher(|_, &v| v)
            .build()
            .unwrap(),
    );
    let counter = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..2 {
            let cache = cache.clone();
            let counter = counter.clone();
            s.spawn(move || {
                let mut rng = Rng(t);
                for _ in 0..100_000 {
                    let key = rng.next() % 512;
                    let value = rng.next() % 5000;
                    if rng.next() % 2 == 0 {
                        let _ = cache.insert(key, value);
                    } else if cache.get(&key).is_some() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    cache.run_pending_tasks();
    cache.validate();
    assert!(cache.weighted_size() <= 1 << 16);
}

/// One key read on every other access, weighing 32 KiB, among a scan of one-hit
/// keys weighing 100 B, under a 1 MiB budget. The hottest key by far should stay.
#[test]
fn a_hot_heavy_key_among_a_scan_of_light_ones_stays() {
    const HEAVY: u64 = u64::MAX;
    let cache = Cache::<u64, u64>::builder()
        .max_bytes(1 << 20)
        .weigher(|&key, _| if key == HEAVY { 32 << 10 } else { 100 })
        .shards(1)
        .build()
        .unwrap();
    let (mut hits, mut reads) = (0u64, 0u64);
    for scan in 0..200_000u64 {
        for key in [HEAVY, scan] {
            let hit = cache.get(&key).is_some();
            if !hit {
                let _ = cache.insert(key, 0);
            }
            if key == HEAVY && scan >= 100_000 {
                reads += 1;
                hits += u64::from(hit);
            }
        }
    }
    let ratio = hits as f64 / reads as f64;
    eprintln!("hot heavy key's hit ratio {ratio:.4}");
    assert!(ratio > 0.99, "hot heavy key's hit ratio {ratio:.4}");
}
