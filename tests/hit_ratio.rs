//! Hit-ratio regressions on small generated traces, deterministic (fixed hasher).

use std::hash::BuildHasherDefault;

use larder::Cache;

type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// Read-through replay: hits over requests, in percent.
fn replay(cache: &Cache<u64, u64, Fixed>, keys: impl Iterator<Item = u64>) -> f64 {
    let (mut hits, mut total) = (0u64, 0u64);
    for key in keys {
        total += 1;
        if cache.get(&key).is_some() {
            hits += 1;
        } else {
            cache.insert(key, key).unwrap();
        }
    }
    100.0 * hits as f64 / total as f64
}

fn cache(capacity: u64, shards: usize) -> Cache<u64, u64, Fixed> {
    Cache::builder()
        .max_entries(capacity)
        .shards(shards)
        .hasher(Fixed::default())
        .build()
        .unwrap()
}

/// A loop over twice the cache's capacity: LRU, FIFO and CLOCK get 0%, the optimum about
/// 50%. TinyLFU's duel keeps a fixed part resident. With several shards this collapsed to
/// 0% once, when a global-budget eviction in a shard skipped the duel; the floor is well
/// below the measured 40-45% so only such a collapse trips it.
#[test]
fn a_loop_larger_than_the_cache_keeps_a_resident_part_with_any_shard_count() {
    for shards in [1, 2, 4] {
        let cache = cache(1001, shards);
        let ratio = replay(&cache, (0..50_000u64).map(|i| i % 2001));
        assert!(ratio > 30.0, "{shards} shard(s): {ratio:.2}% on a loop");
    }
}

/// The same loop in shards of under 100 entries, whose 1% window is none: the shard's new
/// entry must still duel when the global budget makes a shard under its share evict
/// (session 28's review). Measured 45.95%, 45.55% and 46.45%; with the new entry moved into
/// main for free and main paying undueled, 40.51%, 43.50% and 43.55%.
#[test]
fn a_loop_in_shards_without_a_window_keeps_its_duel() {
    for (capacity, shards, floor) in [(61, 4, 45.0), (201, 8, 44.5), (401, 8, 45.5)] {
        let cache = cache(capacity, shards);
        let ratio = replay(&cache, (0..200_000u64).map(|i| i % (2 * capacity - 1)));
        assert!(
            ratio > floor,
            "{capacity} entries in {shards} shards: {ratio:.2}% on a loop"
        );
    }
}

/// A small generated trace, the same on every run: Zipf(0.9) requests over 20,000 keys,
/// interrupted every 5,000 requests by a scan of 1,000 keys never seen again, with the hot
/// set moving to fresh keys halfway. Scans and the move test the window and the duel.
fn embedded_trace() -> Vec<u64> {
    let mut zipf = Zipf::new(20_000, 0.9, 0x853C_49E6_748F_EA9B);
    let mut trace = Vec::new();
    let mut fresh = 1u64 << 40;
    for request in 0..300_000u64 {
        if request % 5_000 == 0 {
            trace.extend(fresh..fresh + 1_000);
            fresh += 1_000;
        }
        let phase = if request < 150_000 { 0 } else { 1 << 32 };
        trace.push(phase + zipf.next_key());
    }
    trace
}

/// Zipf-distributed keys in `0..keys`, ranks scattered over the keys, from a seeded
/// xorshift: the same sequence on every run.
struct Zipf {
    cumulative: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(keys: usize, exponent: f64, seed: u64) -> Self {
        let cumulative = (1..=keys)
            .scan(0.0, |sum, rank| {
                *sum += 1.0 / (rank as f64).powf(exponent);
                Some(*sum)
            })
            .collect();
        Self {
            cumulative,
            state: seed,
        }
    }

    fn next_key(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let total = self.cumulative[self.cumulative.len() - 1];
        let u = (self.state >> 11) as f64 / (1u64 << 53) as f64 * total;
        let rank = self.cumulative.partition_point(|&c| c < u) as u64;
        rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.cumulative.len() as u64
    }
}

/// Exact LRU's hit ratio on `trace`, for reference.
fn lru_hit_ratio(trace: &[u64], capacity: usize) -> f64 {
    let mut last_use = std::collections::HashMap::new();
    let mut by_age = std::collections::BTreeMap::new();
    let mut hits = 0usize;
    for (time, &key) in trace.iter().enumerate() {
        if let Some(old) = last_use.insert(key, time) {
            by_age.remove(&old);
            hits += 1;
        } else if by_age.len() == capacity {
            let (_, victim) = by_age.pop_first().unwrap();
            last_use.remove(&victim);
        }
        by_age.insert(time, key);
    }
    100.0 * hits as f64 / trace.len() as f64
}

/// Key sets the floor test averages over: the same trace with every key XORed by each mask,
/// so the keys hash differently while the access pattern stays the same. One key set alone
/// moves by up to half a point with any change to how hashes are used (measured over twelve
/// seeds: a spread of 48.7-50.3% at 1 shard), which would make a single-run floor either
/// loose or flaky.
const KEY_MASKS: [u64; 6] = [
    0,
    0x5851_F42D_4C95_7F2D,
    0x1405_7B7E_F767_814F,
    0x2545_F491_4F6C_DD1D,
    0x9E37_79B9_7F4A_7C15,
    0xD6E8_FEB8_6659_FD93,
];

/// larder's hit ratio on `trace` averaged over [`KEY_MASKS`], printed beside LRU's `lru`.
fn over_key_sets(trace: &[u64], capacity: u64, shards: usize, lru: f64) -> f64 {
    let ratios: Vec<f64> = KEY_MASKS
        .iter()
        .map(|&mask| {
            replay(
                &cache(capacity, shards),
                trace.iter().map(|&key| key ^ mask),
            )
        })
        .collect();
    let ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!("{shards} shard(s): larder {ratio:.2}% (per key set {ratios:.2?}), LRU {lru:.2}%");
    ratio
}

/// Pins larder's hit ratio on the embedded trace, averaged over [`KEY_MASKS`], above floors
/// half a point below measured values (at 1,000 entries: 1 shard 49.86%, 2 shards 49.63%,
/// 4 shards 49.93% since session 16's miniatures chose the window; LRU 41.38%; 50.02%,
/// 49.86% and 49.94% with session 14's hill climber and shift detector), so a policy change that loses more than half a point fails
/// here before it reaches the simulator. Raise the floors when the policy improves.
#[test]
#[cfg_attr(
    miri,
    ignore = "2M requests: far too slow under Miri, and no unsafe of its own"
)]
fn embedded_trace_hit_ratio_stays_above_its_measured_floor() {
    let trace = embedded_trace();
    let lru = lru_hit_ratio(&trace, 1000);
    for (shards, floor) in [(1, 49.3), (2, 49.1), (4, 49.4)] {
        let ratio = over_key_sets(&trace, 1000, shards, lru);
        assert!(
            ratio > floor,
            "{shards} shard(s): {ratio:.2}% fell below {floor}%"
        );
        assert!(
            ratio > lru,
            "{shards} shard(s): {ratio:.2}% not above LRU's {lru:.2}%"
        );
    }
}

/// A hot set that moves: `phases` phases of Zipf(1.0) requests over `keys` fresh keys each.
fn moving_hot_set(phases: u64, keys: usize, per_phase: usize) -> Vec<u64> {
    let mut zipf = Zipf::new(keys, 1.0, 0x2545_F491_4F6C_DD1D);
    (0..phases)
        .flat_map(|phase| (0..per_phase).map(move |_| phase << 32))
        .map(|phase| phase + zipf.next_key())
        .collect()
}

/// Pins larder's hit ratio on a hot set that moves (four phases of Zipf(1.0) requests over
/// 5,000 fresh keys each, 25,000 requests a phase, a cache of half a phase's keys), where
/// LRU is near the optimum (87.46%), above floors half a point below the measured values
/// (averaged over [`KEY_MASKS`]: 1 shard 86.11%, 2 shards 86.17%, 4 shards 86.22% since
/// session 16's miniatures; 85.71%, 85.52% and 85.70% with the hill climber). Before
/// the shift detector and main's paying for a grown window, larder hit 81.58%, 79.59% and
/// 79.38% here: its window stayed small while the old phase's keys won their duels.
#[test]
#[cfg_attr(
    miri,
    ignore = "1.8M requests: far too slow under Miri, and no unsafe of its own"
)]
fn a_moving_hot_set_stays_near_lru() {
    let trace = moving_hot_set(4, 5_000, 25_000);
    let lru = lru_hit_ratio(&trace, 2_500);
    for (shards, floor) in [(1, 85.6), (2, 85.6), (4, 85.7)] {
        let ratio = over_key_sets(&trace, 2_500, shards, lru);
        assert!(
            ratio > floor,
            "{shards} shard(s): {ratio:.2}% fell below {floor}%"
        );
    }
}

/// A key's size in the byte-mode test: log-uniform from 16 B to 16 KiB, drawn from a hash
/// of the key (as the simulator's `--weights varied`), so most entries are small and a few
/// large ones hold most of the bytes.
fn size_of_key(key: u64) -> u64 {
    let mut h = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    let uniform = (h >> 11) as f64 / (1u64 << 53) as f64;
    (16.0 * 1024f64.powf(uniform)) as u64
}

/// What the byte-mode test's caches are charged per entry beyond its size: larder's own
/// overhead, measured on a cache whose weigher says 0.
fn entry_overhead() -> u64 {
    let cache = Cache::<u64, u64>::builder()
        .max_bytes(1 << 20)
        .weigher(|_, _| 0)
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    cache.weighted_size()
}

/// LRU under a byte budget, each key charged its size plus `overhead`.
fn byte_lru_hit_ratio(trace: &[u64], budget: u64, overhead: u64) -> f64 {
    let mut last_use = std::collections::HashMap::new();
    let mut by_age = std::collections::BTreeMap::new();
    let (mut used, mut hits) = (0u64, 0usize);
    for (time, &key) in trace.iter().enumerate() {
        if let Some(old) = last_use.insert(key, time) {
            by_age.remove(&old);
            hits += 1;
        } else {
            used += size_of_key(key) + overhead;
            while used > budget {
                let (_, victim) = by_age.pop_first().unwrap();
                last_use.remove(&victim);
                used -= size_of_key(victim) + overhead;
            }
        }
        by_age.insert(time, key);
    }
    100.0 * hits as f64 / trace.len() as f64
}

/// Byte mode, entries of 16 B to 16 KiB: the embedded trace under a budget of 1,000
/// entries of the mean size, with the default shard count (one, for a budget this small)
/// and with four. Every miss costs the same whatever the entry weighs, so a byte of budget
/// is worth most in the entry read most often per byte. Measured, averaged over
/// [`KEY_MASKS`], where byte LRU hits 41.29%: session 27, 61.70% with the default shards
/// and 61.82% with four (the hand passing victims much lighter than the candidate);
/// session 26, 57.55% with the default shards
/// and 56.99% with four (56.64% and 56.99% before its duel let lighter newcomers in
/// without the margin); session 25, 56.71% and 56.49% (56.14% and 55.95% before new
/// miniatures were let warm up); session 24's build, whose duel weighed frequencies
/// alone, whose miniatures weighed every key 1 and whose default here was four shards,
/// 51.11% either way. Floors about half a point below.
#[test]
#[cfg_attr(
    miri,
    ignore = "1.8M requests: far too slow under Miri, and no unsafe of its own"
)]
fn byte_mode_keeps_the_entries_read_most_per_byte() {
    let overhead = entry_overhead();
    let trace = embedded_trace();
    let keys: std::collections::HashSet<u64> = trace.iter().copied().collect();
    let mean = keys.iter().map(|&key| size_of_key(key)).sum::<u64>() / keys.len() as u64;
    let budget = 1000 * (mean + overhead);
    let lru = byte_lru_hit_ratio(&trace, budget, overhead);
    for (shards, floor) in [(None, 61.2), (Some(4), 61.3)] {
        let ratios: Vec<f64> = KEY_MASKS
            .iter()
            .map(|&mask| {
                let builder = Cache::builder()
                    .max_bytes(budget)
                    .weigher(move |key: &u64, _: &u64| size_of_key(key ^ mask))
                    .hasher(Fixed::default());
                let cache = match shards {
                    Some(n) => builder.shards(n),
                    None => builder,
                }
                .build()
                .unwrap();
                replay(&cache, trace.iter().map(|&key| key ^ mask))
            })
            .collect();
        let ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
        println!(
            "shards {shards:?}: larder {ratio:.2}% (per key set {ratios:.2?}), byte LRU {lru:.2}%"
        );
        assert!(
            ratio > floor,
            "shards {shards:?}: {ratio:.2}% fell below {floor}%"
        );
        assert!(
            ratio > lru,
            "shards {shards:?}: {ratio:.2}% not above byte LRU's {lru:.2}%"
        );
    }
}

/// Byte mode, a loop: 25 passes over 2,001 keys of 16 B to 16 KiB, under a budget of 500
/// entries of the mean size. Every key is read as often as every other, so the budget
/// hits most held in the lightest keys: the duel must let a lighter newcomer displace a
/// resident seen as often. With the admission margin in every duel (session 25), keys seen
/// once or twice per period could not trade places, and main kept the keys that filled it
/// first: 37.12% averaged over [`KEY_MASKS`] (32.86% to 43.81%); session 26's duel
/// 47.29% (42.02% to 51.55%). Those left heavy residents in place for another reason too:
/// main's CLOCK hand picked victims entry by entry, so heavy candidates met light victims
/// and lost, and the few heavy entries that filled main were seldom dueled. Since session
/// 27 the hand passes victims lighter than two thirds of the candidate: 73.53% (72.92% to
/// 73.93%), near the 75.7% that holding the lightest keys that fit would hit (key set 0).
/// Byte LRU hits nothing. Floor 1 point below.
#[test]
#[cfg_attr(
    miri,
    ignore = "50,025 requests per key set: too slow under Miri, and no unsafe of its own"
)]
fn byte_mode_keeps_the_lightest_keys_of_a_loop() {
    let overhead = entry_overhead();
    let trace: Vec<u64> = (0..50_025u64).map(|i| i % 2001).collect();
    let ratios: Vec<f64> = KEY_MASKS
        .iter()
        .map(|&mask| {
            let mean = (0..2001).map(|key| size_of_key(key ^ mask)).sum::<u64>() / 2001;
            let cache = Cache::builder()
                .max_bytes(500 * (mean + overhead))
                .weigher(move |key: &u64, _: &u64| size_of_key(*key))
                .hasher(Fixed::default())
                .build()
                .unwrap();
            replay(&cache, trace.iter().map(|&key| key ^ mask))
        })
        .collect();
    let ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!("loop: larder {ratio:.2}% (per key set {ratios:.2?})");
    assert!(ratio > 72.5, "{ratio:.2}% fell below 72.5%");
}
