//! The eviction and admission policy under uneven weights, tiny and huge capacities and a
//! degenerate hash (session 24's review): randomized runs against a model of which keys are
//! present, checking `len`, `weighted_size`, the budget, `validate` and the statistics'
//! identities after every step. Two tests failed before that session's fix: a new entry
//! that landed in a shard far below its share displaced other shards' entries without an
//! admission duel, so a scan of one-hit entries heavier than half a shard's share flushed a
//! hot set held in other shards.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

mod common;

use common::KeyIsHash as Pass;
use common::SplitMix as Rng;
use larder::{BuildError, Cache, InsertErrorKind, ManualClock};

/// What byte mode charges a `Cache<u64, u64>` entry beyond its weigher's figure.
fn overhead() -> u64 {
    match Cache::<u64, u64>::builder().max_bytes(1).build() {
        Err(BuildError::BelowOneEntry { entry_overhead, .. }) => entry_overhead,
        other => panic!("{other:?}"),
    }
}

#[derive(Clone, Copy, Debug)]
struct Live {
    value: u64,
    /// Absolute expiry in nanos of the manual clock, `u64::MAX` for none.
    expires_at: u64,
}

/// Runs a random sequence against a byte-mode cache whose weigher charges the value itself,
/// checking after each step (and a `run_pending_tasks`) len, weight, presence and stats
/// against a model.
fn random_byte_run(seed: u64, shards: usize, budget: u64, keys: u64, steps: usize) {
    random_byte_run_limited(seed, shards, budget, keys, steps, usize::MAX)
}

fn random_byte_run_limited(
    seed: u64,
    shards: usize,
    budget: u64,
    keys: u64,
    steps: usize,
    limit: usize,
) {
    let ov = overhead();
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(budget)
        .weigher(|_, v: &u64| *v)
        .shards(shards)
        .clock(clock.clone())
        .shard_entry_limit(limit)
        .build()
        .unwrap();
    let mut rng = Rng(seed);
    let mut model: HashMap<u64, Live> = HashMap::new();
    let mut ok_inserts = 0u64;
    let mut now = 0u64;
    for step in 0..steps {
        let key = rng.below(keys);
        let op = rng.below(100);
        let ctx =
            format!("seed {seed} shards {shards} budget {budget} step {step} op {op} key {key}");
        match op {
            0..=44 => {
                // Weights from 1 byte to the whole budget (and one above), mixed.
                let value = match rng.below(10) {
                    0..=4 => rng.below(16),
                    5 | 6 => rng.below(budget / 8 + 1),
                    7 => budget - ov - rng.below(4).min(budget - ov),
                    8 => budget - ov,
                    _ => budget - ov + 1,
                };
                let ttl = if rng.below(4) == 0 {
                    Some(Duration::from_nanos(rng.below(3) * 1_000))
                } else {
                    None
                };
                let result = match ttl {
                    Some(ttl) => cache.insert_with_ttl(key, value, ttl),
                    None => cache.insert(key, value),
                };
                let charge = value + ov;
                if charge > budget {
                    let err = result.expect_err(&ctx);
                    assert!(
                        matches!(err.kind, InsertErrorKind::TooHeavy { .. }),
                        "{ctx}"
                    );
                } else {
                    result.unwrap_or_else(|e| panic!("{ctx}: refused {e:?}"));
                    ok_inserts += 1;
                    let expires_at = ttl.map_or(u64::MAX, |t| now + t.as_nanos() as u64);
                    model.insert(key, Live { value, expires_at });
                }
            }
            45..=69 => {
                if let Some(v) = cache.get(&key) {
                    let live = model
                        .get(&key)
                        .unwrap_or_else(|| panic!("{ctx}: got {v} for absent key"));
                    assert_eq!(live.value, v, "{ctx}: stale value");
                    assert!(live.expires_at > now, "{ctx}: expired value returned");
                }
            }
            70..=84 => {
                let removed = cache.remove(&key);
                if let Some(v) = removed {
                    let live = model
                        .get(&key)
                        .unwrap_or_else(|| panic!("{ctx}: removed {v} for absent key"));
                    assert_eq!(live.value, v, "{ctx}");
                }
                model.remove(&key);
            }
            85..=86 => {
                cache.clear();
                model.clear();
            }
            _ => {
                let by = rng.below(3) * 1_000;
                now += by;
                clock.advance(Duration::from_nanos(by));
            }
        }
        // Expired keys leave the model (the cache may still hold them until the wheel runs).
        model.retain(|_, live| live.expires_at > now);
        cache.validate();
        assert!(cache.weighted_size() <= budget, "{ctx}: over budget");
        cache.run_pending_tasks();
        cache.validate();
        // Presence through contains_key; every present key must be live in the model.
        let mut present = 0usize;
        let mut weight = 0u64;
        for k in 0..keys {
            if cache.contains_key(&k) {
                let live = model.get(&k).unwrap_or_else(|| {
                    panic!("{ctx}: key {k} present but removed/expired in the model")
                });
                present += 1;
                weight += live.value + ov;
            }
        }
        assert_eq!(
            cache.len(),
            present,
            "{ctx}: len vs contains_key after run_pending_tasks"
        );
        assert_eq!(
            cache.weighted_size(),
            weight,
            "{ctx}: weighted_size vs live charges"
        );
        let stats = cache.stats();
        assert_eq!(
            stats.inserts + stats.updates,
            ok_inserts,
            "{ctx}: {stats:?}"
        );
        assert_eq!(
            stats.inserts,
            stats.entries + stats.evictions + stats.expirations + stats.removals,
            "{ctx}: {stats:?}"
        );
        assert!(
            stats.admission_rejections <= stats.evictions,
            "{ctx}: {stats:?}"
        );
    }
}

#[test]
fn random_byte_mode_uneven_weights_keep_invariants() {
    let ov = overhead();
    let mut seed = 1;
    for shards in [1usize, 2, 4, 16, 64] {
        for budget in [ov, ov + 1, 2 * ov + 3, 5 * ov, 40 * ov, 1000 * ov] {
            for _ in 0..3 {
                random_byte_run(seed, shards, budget, 24, 600);
                seed += 1;
            }
        }
    }
}

/// Count mode at tiny capacities over many shards: random ops with TTLs, the count never
/// above capacity at rest, and a cache that was emptied holds `cap` fresh keys.
#[test]
fn tiny_count_capacities_over_many_shards() {
    for cap in [1u64, 2, 3, 5] {
        for shards in [1usize, 2, 4, 8, 64, 256] {
            let clock = ManualClock::new();
            let cache: Cache<u64, u64> = Cache::builder()
                .max_entries(cap)
                .shards(shards)
                .clock(clock.clone())
                .build()
                .unwrap();
            let mut rng = Rng(cap * 1000 + shards as u64);
            let mut ok = 0u64;
            for step in 0..3000 {
                let key = rng.below(12);
                match rng.below(10) {
                    0..=4 => {
                        cache.insert(key, step).unwrap();
                        ok += 1;
                    }
                    5 => {
                        cache
                            .insert_with_ttl(key, step, Duration::from_nanos(rng.below(3)))
                            .unwrap();
                        ok += 1;
                    }
                    6 | 7 => {
                        cache.get(&key);
                    }
                    8 => {
                        cache.remove(&key);
                    }
                    _ => clock.advance(Duration::from_nanos(1)),
                }
                cache.validate();
                assert!(cache.weighted_size() <= cap);
                cache.run_pending_tasks();
                assert!(
                    cache.len() as u64 <= cap,
                    "cap {cap} shards {shards} step {step}"
                );
                assert_eq!(cache.len() as u64, cache.weighted_size());
                let stats = cache.stats();
                assert_eq!(stats.inserts + stats.updates, ok);
                assert_eq!(
                    stats.inserts,
                    stats.entries + stats.evictions + stats.expirations + stats.removals
                );
            }
            // Emptied, it takes `cap` distinct fresh keys without evicting any.
            cache.clear();
            for key in 1000..1000 + cap {
                cache.insert(key, key).unwrap();
            }
            assert_eq!(cache.len() as u64, cap, "cap {cap} shards {shards}");
            for key in 1000..1000 + cap {
                assert!(
                    cache.contains_key(&key),
                    "cap {cap} shards {shards} key {key}"
                );
            }
        }
    }
}

/// A byte budget barely above one entry's overhead, over many shards (each shard's share is
/// a byte or two): one entry of the whole budget is accepted, and the budget holds exactly
/// one. Each next one nearly always replaces it. It may instead lose the admission duel
/// against the resident in another shard, whose sketch can count a key seen once as seen
/// twice (a collision), and then the resident stays: about one insert in 30,000 with two
/// shards. Until session 26 this test demanded every replacement, and about 2% of its
/// runs failed (7 of 300 on session 25's build, 3 of 200 on session 26's).
#[test]
fn one_entry_may_use_the_whole_tiny_byte_budget_over_many_shards() {
    let ov = overhead();
    for shards in [1usize, 2, 16, 256] {
        for extra in [0u64, 1, 7] {
            let budget = ov + extra;
            let cache: Cache<u64, u64> = Cache::builder()
                .max_bytes(budget)
                .weigher(|_, v: &u64| *v)
                .shards(shards)
                .build()
                .unwrap();
            let mut held = None;
            let mut replaced = 0;
            for key in 0..200u64 {
                cache.insert(key, extra).unwrap();
                if cache.contains_key(&key) {
                    held = Some(key);
                    replaced += 1;
                } else {
                    let resident = held.expect("the first entry has nothing to lose to");
                    assert!(
                        cache.contains_key(&resident),
                        "shards {shards} extra {extra} key {key}: neither it nor {resident} held"
                    );
                }
                assert_eq!(cache.len(), 1);
                assert_eq!(cache.weighted_size(), budget);
                cache.validate();
            }
            assert!(
                replaced >= 190,
                "shards {shards} extra {extra}: {replaced} of 200"
            );
        }
    }
}

/// Extreme capacities build quickly and small.
#[test]
fn huge_capacities_build_lazily_or_refuse() {
    let start = Instant::now();
    for shards in [1usize, 2, 256] {
        let cache: Cache<u64, u64> = Cache::builder()
            .max_bytes(1 << 48)
            .shards(shards)
            .build()
            .unwrap();
        cache.insert(1, 1).unwrap();
        assert_eq!(cache.get(&1), Some(1));
        assert!(
            cache.metadata_bytes() < 64 << 20,
            "{}",
            cache.metadata_bytes()
        );
    }
    let cache: Cache<u64, u64> = Cache::builder()
        .max_bytes(1 << 48)
        .weigher(|_, _| u64::MAX)
        .build()
        .unwrap();
    assert!(cache.insert(1, 1).is_err());
    for n in [u64::MAX, (1 << 33) + 1, usize::MAX as u64] {
        assert!(matches!(
            Cache::<u64, u64>::builder().max_entries(n).build(),
            Err(BuildError::CapacityTooLarge { .. })
        ));
    }
    assert!(matches!(
        Cache::<u64, u64>::builder().max_bytes(u64::MAX).build(),
        Err(BuildError::CapacityTooLarge { .. })
    ));
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(1 << 25)
        .shards(1)
        .build()
        .unwrap();
    for k in 0..10_000 {
        cache.insert(k, k).unwrap();
    }
    assert!(
        cache.metadata_bytes() < 64 << 20,
        "{}",
        cache.metadata_bytes()
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

/// A key whose `Hash` is constant: every key is one item to the sketch, the ghosts and the
/// table's probe sequence. Operations stay bounded (the table degrades to a scan of the
/// shard, as any hash map would), and the budget and invariants hold.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Same(u64);

impl Hash for Same {
    fn hash<H: Hasher>(&self, state: &mut H) {
        0u8.hash(state);
    }
}

#[test]
fn constant_hash_keys_degrade_gracefully() {
    let cache: Cache<Same, u64> = Cache::builder().max_entries(512).shards(4).build().unwrap();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..20_000u64 {
        let t = Instant::now();
        cache.insert(Same(i % 3000), i).unwrap();
        cache.get(&Same(i % 700));
        if i % 97 == 0 {
            cache.remove(&Same(i % 1000));
        }
        slowest = slowest.max(t.elapsed());
    }
    cache.validate();
    assert!(cache.len() <= 512);
    println!(
        "constant hash: {:?} total, slowest op {:?}",
        start.elapsed(),
        slowest
    );
}

/// Count mode, many keys, removals and TTL expiries from anywhere in the rings (so dead ids
/// pile up and rings compact), reads that promote to protected: invariants at every step.
#[test]
fn random_count_mode_churn_keeps_invariants() {
    for (seed, cap, shards, keys) in [
        (11u64, 64u64, 1usize, 400u64),
        (12, 200, 2, 600),
        (13, 17, 1, 50),
        (14, 1000, 1, 3000),
    ] {
        let clock = ManualClock::new();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(cap)
            .shards(shards)
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut rng = Rng(seed);
        let mut model: HashMap<u64, Live> = HashMap::new();
        let mut now = 0u64;
        let mut ok = 0u64;
        for step in 0..40_000 {
            // A skewed key: a hot few and a long tail.
            let key = if rng.below(2) == 0 {
                rng.below(keys / 8 + 1)
            } else {
                rng.below(keys)
            };
            let ctx = format!("seed {seed} step {step} key {key}");
            match rng.below(100) {
                0..=29 => {
                    cache.insert(key, step).unwrap();
                    ok += 1;
                    model.insert(
                        key,
                        Live {
                            value: step,
                            expires_at: u64::MAX,
                        },
                    );
                }
                30..=39 => {
                    let ttl = rng.below(50);
                    cache
                        .insert_with_ttl(key, step, Duration::from_nanos(ttl))
                        .unwrap();
                    ok += 1;
                    model.insert(
                        key,
                        Live {
                            value: step,
                            expires_at: now + ttl,
                        },
                    );
                }
                40..=79 => {
                    if let Some(v) = cache.get(&key) {
                        let live = model
                            .get(&key)
                            .unwrap_or_else(|| panic!("{ctx}: phantom {v}"));
                        assert_eq!(live.value, v, "{ctx}");
                        assert!(live.expires_at > now, "{ctx}");
                    }
                }
                80..=94 => {
                    cache.remove(&key);
                    model.remove(&key);
                }
                95 => {
                    if rng.below(20) == 0 {
                        cache.clear();
                        model.clear();
                    }
                }
                _ => {
                    now += 1 + rng.below(5);
                    clock.set_nanos(now);
                }
            }
            model.retain(|_, l| l.expires_at > now);
            if step % 64 == 0 {
                cache.validate();
            }
            assert!(cache.weighted_size() <= cap, "{ctx}");
            if step % 997 == 0 {
                cache.run_pending_tasks();
                cache.validate();
                let present: Vec<u64> = (0..keys).filter(|k| cache.contains_key(k)).collect();
                for k in &present {
                    assert!(model.contains_key(k), "{ctx}: {k} present");
                }
                assert_eq!(cache.len(), present.len(), "{ctx}");
                assert_eq!(cache.len() as u64, cache.weighted_size(), "{ctx}");
                let s = cache.stats();
                assert_eq!(s.inserts + s.updates, ok, "{ctx}");
                assert_eq!(
                    s.inserts,
                    s.entries + s.evictions + s.expirations + s.removals,
                    "{ctx} {s:?}"
                );
            }
        }
    }
}

/// Two threads inserting mixed weights (1 byte to the whole budget) into a many-shard byte
/// cache: at rest the weight is within budget and equals the live entries' charges.
#[test]
fn concurrent_uneven_weights_end_within_budget() {
    let ov = overhead();
    for shards in [2usize, 8, 64] {
        for budget in [ov, 3 * ov, 50 * ov] {
            let cache: std::sync::Arc<Cache<u64, u64>> = std::sync::Arc::new(
                Cache::builder()
                    .max_bytes(budget)
                    .weigher(|_, v: &u64| *v)
                    .shards(shards)
                    .build()
                    .unwrap(),
            );
            let threads: Vec<_> = (0..2u64)
                .map(|t| {
                    let cache = cache.clone();
                    std::thread::spawn(move || {
                        let mut rng = Rng(t * 77 + shards as u64 + budget);
                        for _ in 0..20_000 {
                            let key = rng.below(64);
                            let value = match rng.below(4) {
                                0 => budget - ov,
                                1 => rng.below(budget - ov + 1),
                                _ => rng.below(8).min(budget - ov),
                            };
                            match rng.below(8) {
                                0 => {
                                    cache.remove(&key);
                                }
                                1 | 2 => {
                                    cache.get(&key);
                                }
                                _ => cache.insert(key, value).unwrap(),
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            cache.validate();
            let live: u64 = (0..64u64)
                .filter(|k| cache.contains_key(k))
                .map(|k| cache.get(&k).unwrap() + ov)
                .sum();
            assert_eq!(
                cache.weighted_size(),
                live,
                "shards {shards} budget {budget}"
            );
            assert!(live <= budget, "shards {shards} budget {budget}: {live}");
        }
    }
}

/// README, "Design", Budget: "An entry of up to the whole budget is accepted ...; whether
/// it stays is the admission policy's call, as for any entry (beside even one resident
/// entry it must win the frequency duel)." A never-read whole-budget entry loses that duel
/// to a hot resident when both are in one shard, and (since session 24) when it lands in
/// another, empty shard too: before, the hot resident was evicted for it without a duel.
#[test]
fn a_whole_budget_entry_in_another_shard_meets_the_admission_duel() {
    let ov = overhead();
    let budget = 100 * ov;
    for (shards, heavy_key) in [(1usize, 2u64), (2, 2), (2, 1 << 63 | 2)] {
        let cache: Cache<u64, u64, Pass> = Cache::builder()
            .max_bytes(budget)
            .weigher(|_, v: &u64| *v)
            .shards(shards)
            .hasher(Pass::default())
            .build()
            .unwrap();
        // The hot resident, key 1 (shard 0): written and read many times.
        for _ in 0..20 {
            cache.insert(1, 0).unwrap();
            for _ in 0..20 {
                assert_eq!(cache.get(&1), Some(0));
            }
        }
        // A one-hit entry of the whole budget.
        cache.insert(heavy_key, budget - ov).unwrap();
        cache.validate();
        let rejections = cache.stats().admission_rejections;
        println!(
            "shards {shards} heavy key {heavy_key:#x}: hot kept {}, heavy kept {}, rejections {rejections}",
            cache.contains_key(&1),
            cache.contains_key(&heavy_key)
        );
        assert!(
            cache.contains_key(&1) && !cache.contains_key(&heavy_key),
            "shards {shards}, heavy key {heavy_key:#x}: the one-hit whole-budget entry displaced the hot resident without a duel"
        );
    }
}

/// A fixed, well-mixing hasher (splitmix64 of the key and a salt), so runs repeat.
#[derive(Default, Clone)]
struct Mix(u64);

impl Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0 << 8 | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Hot-set hit ratio (%) while one-hit keys of the same weight scan through a byte cache.
fn hot_ratio_under_heavy_scan(shards: usize, salt: u64) -> f64 {
    hot_ratio_under_scan_of(shards, salt, 6)
}

fn hot_ratio_under_scan_of(shards: usize, salt: u64, per_budget: u64) -> f64 {
    let ov = overhead();
    let budget = 1000 * ov;
    let weight = budget / per_budget - ov;
    let cache: Cache<u64, u64, std::hash::BuildHasherDefault<Mix>> = Cache::builder()
        .max_bytes(budget)
        .weigher(|_, v: &u64| *v)
        .shards(shards)
        .hasher(std::hash::BuildHasherDefault::<Mix>::default())
        .build()
        .unwrap();
    let hot: Vec<u64> = (0..4u64).map(|k| k + salt * 1_000_000_000).collect();
    let read = |key: u64| {
        let hit = cache.get(&key).is_some();
        if !hit {
            cache.insert(key, weight).unwrap();
        }
        hit
    };
    for _ in 0..50 {
        hot.iter().for_each(|&k| {
            read(k);
        });
    }
    let (mut reads, mut hits) = (0u64, 0u64);
    for n in 0..2000u64 {
        read(salt * 1_000_000_000 + 1_000_000 + n);
        for &k in &hot {
            reads += 1;
            hits += u64::from(read(k));
        }
    }
    cache.validate();
    100.0 * hits as f64 / reads as f64
}

/// The same at scale: a hot set of heavy entries (each heavier than a shard's share), read
/// over and over, and a scan of one-hit entries of the same weight. With one shard TinyLFU
/// keeps the hot set through the scan; with 8 shards (what `build` picks by default for a
/// 64 MiB byte budget on 2 cores) the scan flushed much of it before session 24 (47.0% of
/// the hot reads hit with this salt, 0.3–47.5% across salts).
#[test]
fn a_heavy_one_hit_scan_keeps_a_hot_set_held_in_other_shards() {
    for salt in 0..8 {
        let one = hot_ratio_under_heavy_scan(1, salt);
        let eight = hot_ratio_under_heavy_scan(8, salt);
        println!("salt {salt}: hot-set hit ratio during the scan: 1 shard {one:.1}%, 8 shards {eight:.1}%");
        assert!(one > 90.0, "salt {salt}, one shard: {one:.1}%");
        assert!(
            eight > 90.0,
            "salt {salt}, 8 shards: the one-hit scan flushed the hot set ({eight:.1}%)"
        );
    }
}

#[test]
fn random_byte_mode_with_a_low_shard_entry_limit() {
    let ov = overhead();
    let mut seed = 500;
    for shards in [1usize, 2, 8] {
        for limit in [1usize, 2, 5] {
            for budget in [3 * ov, 40 * ov] {
                random_byte_run_limited(seed, shards, budget, 24, 800, limit);
                seed += 1;
            }
        }
    }
}
