//! Soak: two threads of mixed operations with TTLs for a long time (10 minutes by default;
//! `LARDER_SOAK_SECONDS` overrides). Heap, which includes the epoch collector's deferred
//! garbage, must stay flat once warm, and within the byte budget plus a bounded margin; the
//! statistics must add up at the end. Ignored by default: `.ci/soak` runs it in release mode.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use larder::Cache;

/// Counts live heap bytes of the whole test process.
struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BUDGET: u64 = 16 << 20;
const KEYS: u64 = 400_000;
const TTLS_MS: [u64; 5] = [1, 50, 500, 5_000, 60_000];

fn soak_seconds() -> u64 {
    std::env::var("LARDER_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

#[test]
#[ignore = "long: run by .ci/soak"]
fn two_threads_for_minutes_keep_memory_flat_and_stats_exact() {
    let seconds = soak_seconds();
    let cache: Cache<u64, Vec<u8>> = Cache::builder()
        .max_bytes(BUDGET)
        .weigher(|_, v: &Vec<u8>| v.capacity() as u64)
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let (cache, stop) = (&cache, &stop);
            scope.spawn(move || {
                let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (thread << 32 | 1);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1024 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        // Skewed keys: the low range is hot, the rest a long tail.
                        let key = if rng % 4 == 0 { rng >> 40 } else { rng >> 20 } % KEYS;
                        let size = ((rng >> 8) % 256) as usize;
                        match (rng >> 56) % 20 {
                            0..=3 => {
                                let ttl = TTLS_MS[((rng >> 4) % 5) as usize];
                                let value = vec![key as u8; size];
                                cache
                                    .insert_with_ttl(key, value, Duration::from_millis(ttl))
                                    .unwrap();
                            }
                            4 => cache.insert(key, vec![key as u8; size]).unwrap(),
                            5 => {
                                cache.remove(&key);
                            }
                            6 => {
                                cache.get_or_insert_with(key, || vec![key as u8; size]);
                            }
                            _ => {
                                if let Some(value) = cache.get(&key) {
                                    assert!(value.iter().all(|&b| b == key as u8), "wrong value");
                                }
                            }
                        }
                    }
                }
            });
        }
        while start.elapsed() < Duration::from_secs(seconds) {
            std::thread::sleep(Duration::from_millis(500));
            let heap = LIVE_BYTES.load(Ordering::Relaxed);
            samples.push((start.elapsed().as_secs_f64(), heap));
            notes.push(format!(
                "entries {:7}  weight {:6.2} MiB  metadata {:6.2} MiB",
                cache.len(),
                cache.weighted_size() as f64 / 1048576.0,
                cache.metadata_bytes() as f64 / 1048576.0
            ));
        }
        stop.store(true, Ordering::Relaxed);
    });

    // Warm: the first fifth fills the cache. Compare the second fifth with the last two:
    // growth (a leak, garbage piling up) shows as a rising mean. Means, because a single
    // sample swings with the garbage in flight at that instant.
    let fifth = seconds as f64 / 5.0;
    let window = |from: f64, to: f64| -> Vec<i64> {
        let heaps: Vec<i64> = samples
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|&(_, heap)| heap)
            .collect();
        assert!(!heaps.is_empty(), "no samples in {from}..{to} s");
        heaps
    };
    let mean = |heaps: &[i64]| heaps.iter().sum::<i64>() as f64 / heaps.len() as f64;
    let (early, late) = (window(fifth, 2.0 * fifth), window(3.0 * fifth, f64::MAX));
    let peak = *late.iter().max().unwrap();
    let every = (samples.len() / 20).max(1);
    for ((t, heap), note) in samples.iter().zip(&notes).step_by(every) {
        println!(
            "{t:7.1} s  heap {:6.2} MiB  {note}",
            *heap as f64 / 1048576.0
        );
    }
    println!(
        "soak {seconds} s: mean heap {:.2} MiB early, {:.2} MiB late (peak {:.2}), budget {} MiB",
        mean(&early) / 1048576.0,
        mean(&late) / 1048576.0,
        peak as f64 / 1048576.0,
        BUDGET >> 20
    );
    assert!(
        mean(&late) <= mean(&early) * 1.05,
        "heap grew: mean {} -> {}",
        mean(&early),
        mean(&late)
    );
    // The budget counts entries and larder's metadata; the margin covers the table at low
    // load, vector growth slack and in-flight garbage.
    assert!(
        peak as f64 <= BUDGET as f64 * 1.25,
        "heap {peak} far above the budget {BUDGET}"
    );

    cache.run_pending_tasks();
    cache.validate();
    let stats = cache.stats();
    println!("{stats:?}");
    assert!(stats.expirations > 0 && stats.evictions > 0 && stats.removals > 0);
    assert_eq!(
        stats.inserts,
        stats.entries + stats.evictions + stats.expirations + stats.removals,
        "stats do not add up: {stats:?}"
    );
}
