//! Reclamation: every key and value is dropped exactly once, and garbage stays bounded.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use larder::Cache;

mod common;
use common::settle;

/// The tests run one at a time: the epoch collector is shared by the process, and a thread
/// of the other test pinned while the machine is loaded holds back every reclamation, which
/// `deferred_garbage_stays_bounded_under_churn` measures (11,000 values alive in one CI run
/// beside a fuzzer, where it is 1,248 alone).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A value that counts how many instances are alive and panics on a double drop.
#[derive(Debug)]
struct Counted {
    live: Arc<AtomicI64>,
    dropped: AtomicU64,
}

impl Counted {
    fn new(live: &Arc<AtomicI64>) -> Arc<Self> {
        live.fetch_add(1, Ordering::SeqCst);
        Arc::new(Self {
            live: Arc::clone(live),
            dropped: AtomicU64::new(0),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        assert_eq!(
            self.dropped.fetch_add(1, Ordering::SeqCst),
            0,
            "dropped twice"
        );
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Key that counts its live instances too.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key(u64, Arc<()>);

#[test]
fn every_key_and_value_is_dropped_exactly_once() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let live = Arc::new(AtomicI64::new(0));
    let key_token = Arc::new(());
    {
        let cache: Cache<Key, Arc<Counted>> = Cache::builder().max_entries(500).build().unwrap();
        for round in 0..4u64 {
            for key in 0..2000u64 {
                cache
                    .insert(Key(key, Arc::clone(&key_token)), Counted::new(&live))
                    .unwrap();
                if key % 7 == round {
                    cache.remove(&Key(key, Arc::clone(&key_token)));
                }
            }
        }
        cache.clear();
        for key in 0..300u64 {
            cache
                .insert(Key(key, Arc::clone(&key_token)), Counted::new(&live))
                .unwrap();
        }
    }
    settle(|| live.load(Ordering::SeqCst) == 0 && Arc::strong_count(&key_token) == 1);
    assert_eq!(live.load(Ordering::SeqCst), 0, "values leaked");
    assert_eq!(Arc::strong_count(&key_token), 1, "keys leaked");
}

#[test]
fn deferred_garbage_stays_bounded_under_churn() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let live = Arc::new(AtomicI64::new(0));
    let cache: Cache<u64, Arc<Counted>> = Cache::builder().max_entries(1000).build().unwrap();
    let mut worst = 0;
    for i in 0..200_000u64 {
        // Replacements of a small key set: almost every write retires an entry.
        cache.insert(i % 2000, Counted::new(&live)).unwrap();
        if i % 1000 == 0 {
            cache.run_pending_tasks();
            worst = worst.max(live.load(Ordering::SeqCst));
        }
    }
    // Live values are at most the 1000 cached ones plus what the collector has not freed
    // yet; without reclamation this would be 200,000.
    assert!(worst < 1000 + 10_000, "garbage grew to {worst} values");
    drop(cache);
    settle(|| live.load(Ordering::SeqCst) == 0);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}
