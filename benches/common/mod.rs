//! What the throughput benchmarks share: the workload (a Zipf key stream and which of its
//! operations are inserts), the caches under test behind one trait, and the timed runs.

#![allow(dead_code)] // each benchmark uses its own part

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Distinct keys the Zipf distribution draws from.
pub(crate) const KEY_SPACE: u64 = 1_000_000;
/// Zipf exponent.
pub(crate) const ZIPF_EXPONENT: f64 = 1.0;
/// Length of the precomputed key stream (a power of two, so indices wrap with a mask).
pub(crate) const STREAM_LEN: usize = 1 << 20;
/// Capacity of every cache under test, in entries.
pub(crate) const CAPACITY: usize = 100_000;

/// The caches' capacity: [`CAPACITY`], or the `CAPACITY` environment variable's (small
/// caches cost larder more per write, see the README's "Throughput").
pub(crate) fn capacity() -> usize {
    std::env::var("CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(CAPACITY)
}
/// Thread counts measured.
pub(crate) const THREADS: [usize; 2] = [1, 2];
/// Shards of the baseline map.
pub(crate) const BASELINE_SHARDS: usize = 64;

/// The operations a benchmark needs from a cache.
pub(crate) trait Bench: Send + Sync {
    /// Looks `k` up; whether it hit.
    fn get(&self, k: u64) -> bool;
    /// Inserts or replaces `k` → `v`.
    fn insert(&self, k: u64, v: u64);
    /// Called once after the warm-up pass (for caches that apply writes asynchronously).
    fn settle(&self) {}
}

impl Bench for larder::Cache<u64, u64> {
    #[inline]
    fn get(&self, k: u64) -> bool {
        larder::Cache::get(self, &k).is_some()
    }

    #[inline]
    fn insert(&self, k: u64, v: u64) {
        // Only a too-heavy entry is refused, and in count mode every entry weighs 1.
        let _ = larder::Cache::insert(self, k, v);
    }
}

impl Bench for quick_cache::sync::Cache<u64, u64> {
    #[inline]
    fn get(&self, k: u64) -> bool {
        quick_cache::sync::Cache::get(self, &k).is_some()
    }

    #[inline]
    fn insert(&self, k: u64, v: u64) {
        quick_cache::sync::Cache::insert(self, k, v);
    }
}

impl Bench for moka::sync::Cache<u64, u64> {
    #[inline]
    fn get(&self, k: u64) -> bool {
        moka::sync::Cache::get(self, &k).is_some()
    }

    #[inline]
    fn insert(&self, k: u64, v: u64) {
        moka::sync::Cache::insert(self, k, v);
    }
}

impl Bench for stretto::Cache<u64, u64> {
    #[inline]
    fn get(&self, k: u64) -> bool {
        // The returned `ValueRef` holds a shard read lock: drop it at once.
        stretto::Cache::get(self, &k).is_some()
    }

    #[inline]
    fn insert(&self, k: u64, v: u64) {
        // Stretto may drop inserts under contention (its write buffer is lossy); that is
        // part of its design, so it is measured as is.
        let _ = stretto::Cache::insert(self, k, v, 1);
    }

    fn settle(&self) {
        self.wait().expect("stretto wait");
    }
}

/// One baseline shard: a locked open-addressing table of `(key, value)` pairs.
pub(crate) type Shard = CachePadded<RwLock<HashTable<(u64, u64)>>>;

/// No-policy ceiling: a sharded hash map with no eviction, no statistics and no TTL.
pub(crate) struct Baseline {
    hasher: ahash::RandomState,
    shards: Box<[Shard]>,
}

impl Baseline {
    pub(crate) fn new() -> Self {
        Self {
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
            shards: (0..BASELINE_SHARDS)
                .map(|_| CachePadded::new(RwLock::new(HashTable::new())))
                .collect(),
        }
    }

    /// The key's hash and its shard. The shard comes from bits 32..38, which hashbrown
    /// uses neither for the bucket index (low bits) nor for the tag (top 7 bits).
    #[inline]
    fn locate(&self, k: u64) -> (u64, &RwLock<HashTable<(u64, u64)>>) {
        let hash = self.hasher.hash_one(k);
        let shard = ((hash >> 32) as usize) & (BASELINE_SHARDS - 1);
        (hash, &self.shards[shard])
    }
}

impl Bench for Baseline {
    #[inline]
    fn get(&self, k: u64) -> bool {
        let (hash, shard) = self.locate(k);
        let table = shard.read();
        black_box(table.find(hash, |&(key, _)| key == k).map(|&(_, v)| v)).is_some()
    }

    #[inline]
    fn insert(&self, k: u64, v: u64) {
        let (hash, shard) = self.locate(k);
        let mut table = shard.write();
        match table.find_mut(hash, |&(key, _)| key == k) {
            Some(slot) => slot.1 = v,
            None => {
                table.insert_unique(hash, (k, v), |&(key, _)| self.hasher.hash_one(key));
            }
        }
    }
}

/// The Zipf key stream, `STREAM_LEN` samples in `1..=KEY_SPACE`.
pub(crate) fn key_stream() -> Vec<u64> {
    let zipf = Zipf::new(KEY_SPACE as f64, ZIPF_EXPONENT).expect("valid Zipf parameters");
    let mut rng = StdRng::seed_from_u64(0x1a2d_e5c0_ffee);
    (0..STREAM_LEN)
        .map(|_| zipf.sample(&mut rng) as u64)
        .collect()
}

/// Which ops of the stream are inserts, for a given insert ratio.
pub(crate) fn op_mix(insert_ratio: f64, seed: u64) -> Vec<bool> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..STREAM_LEN)
        .map(|_| insert_ratio > 0.0 && (insert_ratio >= 1.0 || rng.random_bool(insert_ratio)))
        .collect()
}

/// One read-through pass over the whole stream: get, insert on a miss.
///
/// Under `cargo test` (criterion's test mode, no `--bench` argument) each benchmark runs once
/// as a smoke test, so only a prefix of the stream is used: a full warm-up of stretto alone
/// takes about a minute.
pub(crate) fn warm<B: Bench>(cache: &B, keys: &[u64]) {
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let keys = if bench_mode { keys } else { &keys[..4096] };
    for &k in keys {
        if !cache.get(k) {
            cache.insert(k, k);
        }
    }
    cache.settle();
}

/// Runs `ops` operations of the stream starting at `start` on one thread.
#[inline]
pub(crate) fn run_ops<B: Bench>(
    cache: &B,
    keys: &[u64],
    is_insert: &[bool],
    start: usize,
    ops: u64,
) {
    let mask = STREAM_LEN - 1;
    let mut idx = start & mask;
    for _ in 0..ops {
        let k = keys[idx];
        if is_insert[idx] {
            cache.insert(k, k);
        } else {
            black_box(cache.get(k));
        }
        idx = (idx + 1) & mask;
    }
}

/// Runs `iters` operations split over `threads` threads and returns the wall time from the
/// first thread starting to the last one finishing (thread spawn and join are excluded).
pub(crate) fn timed_run<B: Bench>(
    cache: &B,
    keys: &[u64],
    is_insert: &[bool],
    cursor: usize,
    threads: usize,
    iters: u64,
) -> Duration {
    let per_thread = iters / threads as u64;
    let extra = iters % threads as u64;
    let stride = STREAM_LEN / threads;
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                let ops = per_thread + if t == 0 { extra } else { 0 };
                let start = cursor.wrapping_add(t * stride);
                scope.spawn(move || {
                    barrier.wait();
                    let began = Instant::now();
                    run_ops(cache, keys, is_insert, start, ops);
                    (began, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect()
    });
    let first = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("at least one thread");
    let last = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("at least one thread");
    last - first
}

pub(crate) fn make_larder() -> larder::Cache<u64, u64> {
    larder::Cache::<u64, u64>::builder()
        .max_entries(capacity() as u64)
        .build()
        .expect("valid larder settings")
}

pub(crate) fn make_quick_cache() -> quick_cache::sync::Cache<u64, u64> {
    quick_cache::sync::Cache::new(capacity())
}

pub(crate) fn make_moka() -> moka::sync::Cache<u64, u64> {
    moka::sync::Cache::new(capacity() as u64)
}

pub(crate) fn make_stretto() -> stretto::Cache<u64, u64> {
    stretto::Cache::new(capacity() * 10, capacity() as i64).expect("valid stretto settings")
}

/// The workloads, by name, with the share of their operations that are inserts.
pub(crate) const WORKLOADS: [(&str, f64); 4] = [
    ("get-only", 0.0),
    ("95-5", 0.05),
    ("50-50", 0.5),
    ("insert-only", 1.0),
];
