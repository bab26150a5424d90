//! loom models of larder's lock-free protocols, one protocol per model.
//!
//! Run with:
//! `RUSTFLAGS="--cfg larder_loom --cfg crossbeam_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`
//!
//! Under `larder_loom` every atomic, mutex and the epoch collector in the engine are loom's,
//! so loom explores the interleavings of the real read and write paths.
#![cfg(larder_loom)]

use loom::sync::Arc;
use loom::thread;

use larder::Cache;

/// loom replays executions and needs them deterministic: a fixed hasher, not a random one.
type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

fn cache(capacity: u64) -> Cache<u64, u64, Fixed> {
    Cache::builder()
        .max_entries(capacity)
        .shards(1)
        .hasher(Fixed::default())
        .build()
        .unwrap()
}

/// A reader racing an insert sees nothing or the inserted value.
#[test]
fn insert_vs_get() {
    loom::model(|| {
        let cache = cache(4);
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 10).unwrap())
        };
        let seen = cache.get(&1);
        assert!(seen.is_none() || seen == Some(10), "saw {seen:?}");
        writer.join().unwrap();
        assert_eq!(cache.get(&1), Some(10));
    });
}

/// A reader racing a remove sees the old value or nothing, never freed memory.
#[test]
fn remove_vs_get() {
    loom::model(|| {
        let cache = cache(4);
        cache.insert(1, 10).unwrap();
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || assert_eq!(cache.remove(&1), Some(10)))
        };
        let seen = cache.get(&1);
        assert!(seen.is_none() || seen == Some(10), "saw {seen:?}");
        writer.join().unwrap();
        assert_eq!(cache.get(&1), None);
    });
}

/// A reader racing a replacement sees the old or the new value; afterwards only the new.
#[test]
fn replace_vs_get() {
    loom::model(|| {
        let cache = cache(4);
        cache.insert(1, 10).unwrap();
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 11).unwrap())
        };
        let seen = cache.get(&1);
        assert!(seen == Some(10) || seen == Some(11), "saw {seen:?}");
        writer.join().unwrap();
        assert_eq!(cache.get(&1), Some(11));
    });
}

/// A reader racing an eviction of its key sees the value or nothing; the budget holds.
#[test]
fn evict_vs_get() {
    loom::model(|| {
        let cache = cache(1);
        cache.insert(1, 10).unwrap();
        let writer = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(2, 20).unwrap())
        };
        let seen = cache.get(&1);
        assert!(seen.is_none() || seen == Some(10), "saw {seen:?}");
        writer.join().unwrap();
        assert_eq!(cache.weighted_size(), 1);
    });
}

/// Two writers racing on one shard keep the table, slab and weights consistent.
#[test]
fn insert_vs_insert() {
    loom::model(|| {
        let cache = cache(2);
        let other = {
            let cache = cache.clone();
            thread::spawn(move || cache.insert(1, 10).unwrap())
        };
        cache.insert(2, 20).unwrap();
        other.join().unwrap();
        assert_eq!(cache.get(&1), Some(10));
        assert_eq!(cache.get(&2), Some(20));
        assert_eq!(cache.len(), 2);
    });
}

/// Values retired while a reader holds them are dropped exactly once, after the reader.
#[test]
fn reclamation_drops_each_value_once() {
    loom::model(|| {
        let token = Arc::new(());
        let cache: Cache<u64, Arc<()>, Fixed> = Cache::builder()
            .max_entries(4)
            .shards(1)
            .hasher(Fixed::default())
            .build()
            .unwrap();
        cache.insert(1, Arc::clone(&token)).unwrap();
        let writer = {
            let cache = cache.clone();
            let token = Arc::clone(&token);
            thread::spawn(move || {
                cache.insert(1, Arc::clone(&token)).unwrap();
                cache.remove(&1);
            })
        };
        if let Some(value) = cache.get(&1) {
            assert!(Arc::ptr_eq(&value, &token));
        }
        writer.join().unwrap();
        drop(cache);
        // The model's collector is dropped with the execution; what is left must be ours
        // or deferred garbage, never more clones than were made.
        assert!(Arc::strong_count(&token) <= 3);
    });
}
