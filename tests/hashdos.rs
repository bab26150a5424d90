//! Hash flooding: keys an attacker chose to collide under a hash function they know.
//!
//! The default hasher is seeded at random per cache, so such keys collide only under the
//! function the attacker modelled, not under the cache's. Each test shows the attack under
//! a known function (so it is a real attack) and its failure under the default hasher.

use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use larder::Cache;

/// SipHash with fixed keys: a hash function the attacker knows.
type Known = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// Keys whose hashes under `Known` have the top 12 bits of their low half clear: a shard's
/// table scales that half to its length to pick the first slot of the probe sequence, so in
/// any table of up to 4096 slots they form one cluster.
fn colliding_keys(count: usize) -> Vec<u64> {
    let known = Known::default();
    (0u64..)
        .filter(|key| (known.hash_one(key) as u32) >> 20 == 0)
        .take(count)
        .collect()
}

/// Mean probe distance after inserting every key (each lookup walks that far).
fn probe_distance<S: BuildHasher>(cache: &Cache<u64, u64, S>, keys: &[u64]) -> f64 {
    for &key in keys {
        cache.insert(key, key).unwrap();
    }
    for &key in keys {
        assert_eq!(cache.get(&key), Some(key));
    }
    cache.mean_probe_distance()
}

#[test]
fn keys_colliding_under_a_known_hash_do_not_slow_lookups_with_the_default_hasher() {
    let keys = colliding_keys(if cfg!(miri) { 40 } else { 1000 });
    // One shard, room for every key: nothing but the table's probing is measured.
    let known: Cache<u64, u64, Known> = Cache::builder()
        .max_entries(4096)
        .shards(1)
        .hasher(Known::default())
        .build()
        .unwrap();
    let attacked = probe_distance(&known, &keys);
    let default: Cache<u64, u64> = Cache::builder()
        .max_entries(4096)
        .shards(1)
        .build()
        .unwrap();
    let defended = probe_distance(&default, &keys);
    println!("mean probe distance: {attacked:.1} slots under the known hash, {defended:.2} seeded");
    // The attack is real: one cluster, each lookup walking half of it on average.
    assert!(
        attacked > keys.len() as f64 / 4.0,
        "attack ineffective: {attacked}"
    );
    // Seeded, the same keys land as random keys do (at most 3/4 load: under ~2 slots).
    assert!(defended < 2.0, "lookups slowed by a flood: {defended}");
}

/// A hasher that keeps only the low 16 bits of a `u64` key: a hash the attacker controls
/// completely, so keys `0xFFFF + n << 16` are one and the same item to the sketch.
#[derive(Default, Clone)]
struct Weak(u64);

impl Hasher for Weak {
    fn finish(&self) -> u64 {
        // Spread the kept bits over the word, as a real hash function would.
        (self.0 & 0xFFFF).wrapping_mul(0x9E37_79B9_7F4A_7C15)
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

/// Hit ratio (%) of a hot set while one-hit keys flood the cache, crafted to share one hash
/// under `Weak`: together they drive that hash's sketch counters to the top, so each new
/// flood key looks hotter than any hot key and would win every admission duel.
fn hot_hit_ratio_under_flood<S: BuildHasher>(cache: &Cache<u64, u64, S>) -> f64 {
    const HOT: u64 = 50;
    let read = |key: u64| {
        let hit = cache.get(&key).is_some();
        if !hit {
            cache.insert(key, key).unwrap();
        }
        hit
    };
    for _ in 0..20 {
        (0..HOT).for_each(|key| {
            read(key);
        });
    }
    let (mut hot_reads, mut hot_hits) = (0u64, 0u64);
    let flood = if cfg!(miri) { 500 } else { 50_000 };
    for n in 1..=flood {
        // Each flood key is new; to `Weak` they are all the same key.
        read(0xFFFF | (n << 16));
        if n % 4 == 0 {
            hot_reads += 1;
            hot_hits += u64::from(read(n / 4 % HOT));
        }
    }
    100.0 * hot_hits as f64 / hot_reads as f64
}

#[test]
fn one_hit_keys_crafted_to_look_hot_do_not_flush_the_hot_set_with_the_default_hasher() {
    let weak: Cache<u64, u64, BuildHasherDefault<Weak>> = Cache::builder()
        .max_entries(100)
        .hasher(BuildHasherDefault::<Weak>::default())
        .build()
        .unwrap();
    let attacked = hot_hit_ratio_under_flood(&weak);
    let default: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let defended = hot_hit_ratio_under_flood(&default);
    println!("hot-set hit ratio under the flood: {attacked:.1}% known hash, {defended:.1}% seeded");
    // Under the known hash the flood costs the hot set some hits (the segmented main keeps
    // most of it: flood keys churn through probation); seeded, it costs nothing.
    assert!(
        attacked < defended,
        "the crafted flood had no effect: {attacked}%"
    );
    assert!(defended >= 99.0, "the flood hurt the hot set: {defended}%");
}
