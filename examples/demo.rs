//! A tour of the engine on embedded defaults: `cargo run --release --example demo`.
//!
//! Runs a Zipf workload from two threads, then shows byte budgets, TTLs, single-flight
//! loading and the eviction listener, printing what each step did.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::{Cache, RemovalCause};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::Zipf;

fn main() {
    zipf_workload();
    byte_budget();
    ttl();
    single_flight();
}

/// Cache-aside over a skewed key space: read, and on a miss "load" and insert.
fn zipf_workload() {
    const KEYS: u64 = 1_000_000;
    const CAPACITY: u64 = 100_000;
    const OPS_PER_THREAD: usize = 2_000_000;
    let cache: Cache<u64, u64> = Cache::builder().max_entries(CAPACITY).build().unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let cache = cache.clone();
            scope.spawn(move || {
                let mut rng = StdRng::seed_from_u64(thread);
                let zipf = Zipf::new(KEYS as f64, 1.0).unwrap();
                for _ in 0..OPS_PER_THREAD {
                    let key = rng.sample(zipf) as u64;
                    if cache.get(&key).is_none() {
                        cache.insert(key, key * 2).unwrap();
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let stats = cache.stats();
    println!(
        "1. Zipf(1.0) over {KEYS} keys, {CAPACITY}-entry cache, 2 threads, get + insert on miss"
    );
    println!(
        "   {} ops in {:.2?} ({:.1} M ops/s); hit ratio {:.1}%",
        2 * OPS_PER_THREAD,
        elapsed,
        (2 * OPS_PER_THREAD) as f64 / elapsed.as_secs_f64() / 1e6,
        100.0 * stats.hit_ratio()
    );
    println!(
        "   entries {} (<= {CAPACITY}), inserts {}, evictions {} (of which rejected by TinyLFU {})",
        stats.entries, stats.inserts, stats.evictions, stats.admission_rejections
    );
}

/// Byte mode: the budget counts the values' bytes and larder's own overhead.
fn byte_budget() {
    const BUDGET: u64 = 1 << 20;
    let cache: Cache<u32, String> = Cache::builder()
        .max_bytes(BUDGET)
        .weigher(|_, value: &String| value.capacity() as u64)
        .build()
        .unwrap();
    for key in 0..10_000 {
        cache.insert(key, "x".repeat(200)).unwrap();
    }
    println!("\n2. Byte budget of {BUDGET} bytes, 10000 inserts of 200-byte strings");
    println!(
        "   holds {} entries weighing {} bytes (overhead included)",
        cache.len(),
        cache.weighted_size()
    );
    let before = (cache.len(), cache.weighted_size());
    let refused = cache.insert(1, "y".repeat(2 << 20)).unwrap_err();
    println!("   a 2 MiB value is refused and handed back: {refused}");
    println!(
        "   the cache is unchanged by the refusal: {}",
        before == (cache.len(), cache.weighted_size())
    );
}

/// Per-entry TTLs: an expired entry is never returned, and the wheel removes it.
fn ttl() {
    let expired = Arc::new(AtomicUsize::new(0));
    let cache: Cache<&str, &str> = {
        let expired = Arc::clone(&expired);
        Cache::builder()
            .max_entries(100)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Expired {
                    expired.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build()
            .unwrap()
    };
    cache
        .insert_with_ttl("session", "alice", Duration::from_millis(50))
        .unwrap();
    cache.insert("config", "v1").unwrap();
    println!("\n3. TTL: 'session' lives 50 ms, 'config' has no TTL");
    println!("   at once:      session = {:?}", cache.get("session"));
    std::thread::sleep(Duration::from_millis(60));
    println!(
        "   after 60 ms:  session = {:?}, config = {:?}",
        cache.get("session"),
        cache.get("config")
    );
    cache.run_pending_tasks();
    println!(
        "   run_pending_tasks removed it: len = {}, listener heard {} expiry",
        cache.len(),
        expired.load(Ordering::Relaxed)
    );
}

/// Single-flight: eight callers miss the same key at once; one loader runs.
fn single_flight() {
    let cache: Cache<&str, u64> = Cache::builder().max_entries(100).build().unwrap();
    let loads = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                cache.get_or_insert_with("report", || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                    42
                })
            });
        }
    });
    println!("\n4. Single-flight: 8 concurrent get_or_insert_with calls for one key");
    println!(
        "   loader ran {} time(s); value = {:?}",
        loads.load(Ordering::SeqCst),
        cache.get("report")
    );
}
