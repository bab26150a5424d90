//! Throughput of larder against other in-process caches, and against a no-policy ceiling.
//!
//! Workload: Zipf-distributed `u64` keys (exponent 1.0) over 1,000,000 keys, a precomputed
//! stream of 2^20 samples shared by every cache; caches of 100,000 entries, warmed by one
//! read-through pass over the whole stream (get, insert on a miss) before measuring.
//! Each cache is built and warmed once, on first use (so a filter skips unused ones), then
//! carried through the workloads in the order below: all use the same key distribution, so
//! the contents stay at steady state, and warming stretto (whose inserts are slow) once
//! instead of per workload keeps the whole run to a few minutes.
//!
//! Workloads (a precomputed per-op array fixes which ops are inserts; a get that misses is
//! *not* followed by an insert):
//!
//! * `get-only`
//! * `95-5` (95% get, 5% insert)
//! * `50-50`
//! * `insert-only`
//!
//! Each runs on 1 and 2 threads; every thread walks the key stream from its own offset.
//! Criterion names results `{workload}/{threads}t/{cache}` and reports ops/s.
//!
//! Caches: `larder`, `quick_cache`, `moka`, `stretto` and `baseline`, 64 shards of
//! `RwLock<HashTable<(u64, u64)>>` holding every key of the stream (no eviction, no
//! policy): an upper bound for a sharded map, not a cache.
//!
//! Run: `cargo bench --bench throughput` (a filter such as `-- 'get-only/1t'` narrows it).

use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::RwLock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Distinct keys the Zipf distribution draws from.
const KEY_SPACE: u64 = 1_000_000;
/// Zipf exponent.
const ZIPF_EXPONENT: f64 = 1.0;
/// Length of the precomputed key stream (a power of two, so indices wrap with a mask).
const STREAM_LEN: usize = 1 << 20;
/// Capacity of every cache under test, in entries.
const CAPACITY: usize = 100_000;
/// Thread counts measured.
const THREADS: [usize; 2] = [1, 2];
/// Shards of the baseline map.
const BASELINE_SHARDS: usize = 64;

/// The operations a benchmark needs from a cache.
trait Bench: Send + Sync {
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
type Shard = CachePadded<RwLock<HashTable<(u64, u64)>>>;

/// No-policy ceiling: a sharded hash map with no eviction, no statistics and no TTL.
struct Baseline {
    hasher: ahash::RandomState,
    shards: Box<[Shard]>,
}

impl Baseline {
    fn new() -> Self {
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
fn key_stream() -> Vec<u64> {
    let zipf = Zipf::new(KEY_SPACE as f64, ZIPF_EXPONENT).expect("valid Zipf parameters");
    let mut rng = StdRng::seed_from_u64(0x1a2d_e5c0_ffee);
    (0..STREAM_LEN)
        .map(|_| zipf.sample(&mut rng) as u64)
        .collect()
}

/// Which ops of the stream are inserts, for a given insert ratio.
fn op_mix(insert_ratio: f64, seed: u64) -> Vec<bool> {
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
fn warm<B: Bench>(cache: &B, keys: &[u64]) {
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
fn run_ops<B: Bench>(cache: &B, keys: &[u64], is_insert: &[bool], start: usize, ops: u64) {
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
fn timed_run<B: Bench>(
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

/// Registers `{threads}t/{name}` in `group`. The cache is built and warmed on first use
/// and then shared by every workload and thread count.
fn bench_cache<B: Bench>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    threads: usize,
    name: &str,
    cell: &OnceCell<B>,
    make: fn() -> B,
    keys: &[u64],
    is_insert: &[bool],
) {
    let mut cursor = 0usize;
    group.bench_function(BenchmarkId::new(format!("{threads}t"), name), |b| {
        let cache = cell.get_or_init(|| {
            let cache = make();
            warm(&cache, keys);
            cache
        });
        b.iter_custom(|iters| {
            let elapsed = timed_run(cache, keys, is_insert, cursor, threads, iters);
            cursor = cursor.wrapping_add(iters as usize) & (STREAM_LEN - 1);
            elapsed
        });
    });
}

fn make_larder() -> larder::Cache<u64, u64> {
    larder::Cache::<u64, u64>::builder()
        .max_entries(CAPACITY as u64)
        .build()
        .expect("valid larder settings")
}

fn make_quick_cache() -> quick_cache::sync::Cache<u64, u64> {
    quick_cache::sync::Cache::new(CAPACITY)
}

fn make_moka() -> moka::sync::Cache<u64, u64> {
    moka::sync::Cache::new(CAPACITY as u64)
}

fn make_stretto() -> stretto::Cache<u64, u64> {
    stretto::Cache::new(CAPACITY * 10, CAPACITY as i64).expect("valid stretto settings")
}

fn throughput(c: &mut Criterion) {
    let keys = key_stream();
    let workloads: [(&str, f64); 4] = [
        ("get-only", 0.0),
        ("95-5", 0.05),
        ("50-50", 0.5),
        ("insert-only", 1.0),
    ];
    // Built and warmed on first use, then kept across workloads.
    let larder = OnceCell::new();
    let quick = OnceCell::new();
    let moka = OnceCell::new();
    let stretto = OnceCell::new();
    let baseline = OnceCell::new();
    for (seed, (workload, insert_ratio)) in workloads.into_iter().enumerate() {
        let is_insert = op_mix(insert_ratio, seed as u64);
        let mut group = c.benchmark_group(workload);
        group
            .throughput(Throughput::Elements(1))
            .measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
            .sample_size(10);
        for threads in THREADS {
            let g = &mut group;
            bench_cache(
                g,
                threads,
                "larder",
                &larder,
                make_larder,
                &keys,
                &is_insert,
            );
            bench_cache(
                g,
                threads,
                "quick_cache",
                &quick,
                make_quick_cache,
                &keys,
                &is_insert,
            );
            bench_cache(g, threads, "moka", &moka, make_moka, &keys, &is_insert);
            bench_cache(
                g,
                threads,
                "stretto",
                &stretto,
                make_stretto,
                &keys,
                &is_insert,
            );
            bench_cache(
                g,
                threads,
                "baseline",
                &baseline,
                Baseline::new,
                &keys,
                &is_insert,
            );
        }
        group.finish();
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
