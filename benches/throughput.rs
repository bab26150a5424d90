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

mod common;

use std::cell::OnceCell;
use std::time::Duration;

use common::{
    make_larder, make_moka, make_quick_cache, make_stretto, op_mix, timed_run, warm, Baseline,
    Bench, STREAM_LEN, THREADS, WORKLOADS,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

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

fn throughput(c: &mut Criterion) {
    let keys = common::key_stream();
    // Built and warmed on first use, then kept across workloads.
    let larder = OnceCell::new();
    let quick = OnceCell::new();
    let moka = OnceCell::new();
    let stretto = OnceCell::new();
    let baseline = OnceCell::new();
    for (seed, (workload, insert_ratio)) in WORKLOADS.into_iter().enumerate() {
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
