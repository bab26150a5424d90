//! Retired values waiting for the epoch collector, alone in its test binary: a thread pinned
//! elsewhere in the process holds back everything retired while it stays pinned, and a test
//! thread preempted mid-operation on a loaded machine is such a thread. One test, its
//! scenarios in turn, so that no other thread of this process pins.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use larder::Cache;

/// A value that counts its live instances.
struct Counted(Arc<AtomicI64>);

impl Counted {
    fn new(live: &Arc<AtomicI64>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(live))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The most retired values alive after any of `inserts` inserts of new keys into `cache`:
/// the garbage the collector still holds.
fn worst_garbage(cache: &Cache<u64, Counted>, inserts: u64) -> u64 {
    let live = Arc::new(AtomicI64::new(0));
    let mut worst = 0;
    for key in 0..inserts {
        cache.insert(key, Counted::new(&live)).unwrap();
        worst = worst.max(live.load(Ordering::SeqCst) - cache.len() as i64);
    }
    worst as u64
}

/// Session 21's review: crossbeam-epoch holds about 320 deferred closures per thread before
/// it frees any (64 in the thread's bag, then sealed bags waiting for two epoch advances),
/// and a heavy entry is a batch, a closure, of its own: a byte budget of 64 entries kept
/// 320 retired values alive, five budgets' worth, and a 16-entry cache in count mode 318.
/// A thread's bag is now flushed once it holds a 64th of a shard's capacity in byte mode (2
/// values alive at worst here), a quarter in count mode (7, 74 and 344 at worst for 16, 100
/// and 1,000 entries).
#[test]
fn retired_values_stay_within_a_fraction_of_the_capacity() {
    const BUDGET: u64 = 1 << 20;
    const WEIGHT: u64 = 16 << 10;
    let heavy: Cache<u64, Counted> = Cache::builder()
        .max_bytes(BUDGET)
        .weigher(|_, _| WEIGHT)
        .shards(1)
        .build()
        .unwrap();
    let worst = worst_garbage(&heavy, 20_000);
    println!(
        "byte budget of {} entries: at worst {worst} retired values alive ({:.3} of the budget)",
        heavy.len(),
        (worst * WEIGHT) as f64 / BUDGET as f64
    );
    assert!(worst * WEIGHT <= BUDGET / 8, "{worst} retired values alive");

    for capacity in [16u64, 100, 1000] {
        let cache: Cache<u64, Counted> = Cache::builder()
            .max_entries(capacity)
            .shards(1)
            .build()
            .unwrap();
        let worst = worst_garbage(&cache, 50_000);
        println!("{capacity} entries: at worst {worst} retired values alive");
        // Count mode flushes at a quarter of the capacity (see `raw::retired`).
        assert!(
            worst <= capacity,
            "{capacity} entries: {worst} retired values alive"
        );
    }
}
