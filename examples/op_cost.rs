//! The work one cache operation costs, for a deterministic profiler: instructions and cache
//! misses per operation under valgrind's cachegrind.
//!
//! Wall-clock throughput on a shared 2-core machine moves by 20–50% between runs; counts of
//! instructions and simulated misses do not, so a change to the write path can be judged
//! by them before the throughput benchmark confirms it. The workload is the throughput
//! benchmark's: Zipf(1.0) `u64` keys over 1M keys, a 100k-entry cache warmed by one
//! read-through pass, then `OPS` operations, a share of them inserts.
//!
//! Run it twice, with 0 and with N operations, and divide the difference by N, which
//! removes the warm-up. `--LL` models a 1 MiB last level (this machine's L2 per core):
//!
//! ```sh
//! cargo build --release --example op_cost
//! for ops in 0 1000000; do
//!   valgrind --tool=cachegrind --cache-sim=yes --LL=1048576,16,64 \
//!     --cachegrind-out-file=/dev/null target/release/examples/op_cost larder insert-only $ops
//! done
//! ```
//!
//! Usage: `op_cost CACHE WORKLOAD OPS [CAPACITY]` with CACHE `larder`, `quick_cache` or
//! `larder-bytes` (a byte budget over sizes of 16 B to 16 KiB drawn from the key, CAPACITY
//! entries of the mean size), WORKLOAD `get-only`, `95-5`, `50-50`, `insert-only`,
//! `update-only` or `new-only`, and CAPACITY in entries (default 100,000, the benchmark's;
//! small caches cost more per operation, see the README's "Throughput"). The last two workloads are not the
//! benchmark's. `update-only` draws its keys uniformly from half the capacity, all resident
//! once warmed, so every operation replaces a value (a write without an eviction). `new-only`
//! inserts a key never seen before each time, so every operation evicts (the write path's
//! slowest case: an admission duel, and the loser's removal). It prints the wall time per
//! operation, which outside valgrind is a rough check only.

use std::time::Instant;

// The simulator's sizes (`--weights varied`), so both measure byte mode alike.
#[path = "simulate/weights.rs"]
#[allow(dead_code)]
pub mod weights;

use weights::Weights;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

const KEY_SPACE: f64 = 1_000_000.0;
const STREAM_LEN: usize = 1 << 20;
const DEFAULT_CAPACITY: usize = 100_000;
/// The mean of sizes log-uniform from 16 B to 16 KiB: (16,384 - 16) / ln(1,024).
const VARIED_MEAN_SIZE: f64 = 2361.6;

/// The two operations measured, over either cache.
enum Subject {
    Larder(larder::Cache<u64, u64>),
    QuickCache(quick_cache::sync::Cache<u64, u64>),
}

impl Subject {
    fn get(&self, key: u64) -> bool {
        match self {
            Self::Larder(cache) => cache.get(&key).is_some(),
            Self::QuickCache(cache) => cache.get(&key).is_some(),
        }
    }

    fn insert(&self, key: u64, value: u64) {
        match self {
            // Count mode: every entry weighs 1, so no insert is refused.
            Self::Larder(cache) => drop(cache.insert(key, value)),
            Self::QuickCache(cache) => cache.insert(key, value),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cache, workload, ops, capacity) = match args.as_slice() {
        [cache, workload, ops] => (cache, workload, ops, DEFAULT_CAPACITY),
        [cache, workload, ops, capacity] => (
            cache,
            workload,
            ops,
            capacity
                .parse()
                .ok()
                .filter(|&c| c >= 2)
                .expect("CAPACITY is a number of entries, at least 2"),
        ),
        _ => {
            eprintln!(
                "usage: op_cost larder|larder-bytes|quick_cache get-only|95-5|50-50|insert-only|update-only|new-only OPS [CAPACITY]"
            );
            std::process::exit(2);
        }
    };
    // Keys of the `update-only` workload: half the capacity, so all stay resident.
    let resident_keys = capacity as u64 / 2;
    let insert_percent = match workload.as_str() {
        "get-only" => 0,
        "95-5" => 5,
        "50-50" => 50,
        "insert-only" | "update-only" | "new-only" => 100,
        other => panic!("unknown workload {other}"),
    };
    let ops: usize = ops.parse().expect("OPS is a number");
    let subject = match cache.as_str() {
        "larder" => Subject::Larder(
            larder::Cache::builder()
                .max_entries(capacity as u64)
                // A fixed seed: the window's miniatures replay the reads of keys picked by
                // hash, and whether a Zipf-hot key is among them moved a 50-50 operation at
                // 1,000 entries between 640 and 1,020 instructions from one random seed to
                // the next, and the two runs this measurement subtracts had different ones.
                .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
                .build()
                .expect("valid settings"),
        ),
        // Byte mode: sizes of 16 B to 16 KiB drawn from the key (the simulator's `--weights
        // varied`), a budget of CAPACITY entries of their mean size (about 2,362 B) with
        // larder's overhead.
        "larder-bytes" => Subject::Larder(
            larder::Cache::builder()
                .max_bytes(Weights::VARIED.budget(capacity, VARIED_MEAN_SIZE))
                .weigher(|key: &u64, _: &u64| Weights::VARIED.of(*key))
                .hasher(ahash::RandomState::with_seeds(1, 2, 3, 4))
                .build()
                .expect("valid settings"),
        ),
        "quick_cache" => Subject::QuickCache(quick_cache::sync::Cache::new(capacity)),
        other => panic!("unknown cache {other}"),
    };
    let mut rng = StdRng::seed_from_u64(7);
    let zipf = Zipf::new(KEY_SPACE, 1.0).expect("valid Zipf parameters");
    let resident_only = workload == "update-only";
    let keys: Vec<u64> = (0..STREAM_LEN)
        .map(|_| {
            if resident_only {
                rng.random_range(0..resident_keys)
            } else {
                zipf.sample(&mut rng) as u64
            }
        })
        .collect();
    let is_insert: Vec<bool> = (0..STREAM_LEN)
        .map(|_| rng.random_range(0..100) < insert_percent)
        .collect();
    for &key in &keys {
        if !subject.get(key) {
            subject.insert(key, key);
        }
    }
    let began = Instant::now();
    let mut hits = 0u64;
    for op in 0..ops {
        // A stride through the stream, so consecutive operations use unrelated keys.
        let at = (op * 7 + 12_345) & (STREAM_LEN - 1);
        if is_insert[at] {
            if workload == "new-only" {
                subject.insert(KEY_SPACE as u64 + op as u64, op as u64);
            } else {
                subject.insert(keys[at], op as u64);
            }
        } else {
            hits += u64::from(subject.get(keys[at]));
        }
    }
    let per_op = began.elapsed().as_nanos() as f64 / ops.max(1) as f64;
    // The policy's decisions, to check that a change meant to keep them did: a seeded
    // run repeats its evictions and rejections exactly.
    let decisions = match &subject {
        Subject::Larder(cache) => {
            let stats = cache.stats();
            format!(
                ", {} evictions, {} rejections",
                stats.evictions, stats.admission_rejections
            )
        }
        Subject::QuickCache(_) => String::new(),
    };
    println!("{cache} {workload}: {ops} ops, {per_op:.1} ns/op, {hits} get hits{decisions}");
}
