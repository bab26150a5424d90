//! Faults session 22's review found in the write patterns, each test failing before its fix:
//! a key whose `Clone` panics, a store that panics after writing, a store error whose
//! `Display` panics, writes stuck in a failing batch, and a store error after the write.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::patterns::{Store, WriteBehindBuilder, WriteThrough};
use larder::Cache;

// ---------------------------------------------------------------------------------------
// Write-behind: a key whose `Clone` panicked on the caller's thread inside `enqueue` left
// an entry pending but not ordered: later writes of that key coalesced into it, were
// acknowledged, and were never stored; flush and close skipped them. Fixed: both clones
// are made before either structure changes.

thread_local! {
    /// Clones allowed on this thread before one panics (negative: never panic).
    static CLONES_LEFT: Cell<i64> = const { Cell::new(-1) };
}

#[derive(Debug, PartialEq, Eq)]
struct Key(u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Clone for Key {
    fn clone(&self) -> Self {
        CLONES_LEFT.with(|left| {
            let n = left.get();
            if n == 0 {
                left.set(-1);
                panic!("Key::clone refuses");
            }
            if n > 0 {
                left.set(n - 1);
            }
        });
        Key(self.0)
    }
}

#[derive(Default)]
struct MapStore(Mutex<HashMap<u64, u64>>);

impl Store<Key, u64> for Arc<MapStore> {
    type Error = String;
    fn load(&self, key: &Key) -> Result<Option<u64>, String> {
        Ok(self.0.lock().unwrap().get(&key.0).copied())
    }
    fn store(&self, key: &Key, value: &u64) -> Result<(), String> {
        self.0.lock().unwrap().insert(key.0, *value);
        Ok(())
    }
    fn delete(&self, key: &Key) -> Result<(), String> {
        self.0.lock().unwrap().remove(&key.0);
        Ok(())
    }
}

#[test]
fn write_behind_a_key_clone_panic_in_enqueue_does_not_lose_later_writes() {
    let store = Arc::new(MapStore::default());
    let cache = Cache::<Key, u64>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let wb = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(5))
        .build(cache, Arc::clone(&store));
    // Make the n-th clone of the key on this thread panic, for n = 0..6, one key each.
    for n in 0..6u64 {
        CLONES_LEFT.with(|left| left.set(n as i64));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wb.insert(Key(n), 1)));
        CLONES_LEFT.with(|left| left.set(-1));
        let _ = r; // panicked or not: either way the caller got no acknowledgement
    }
    // Now acknowledged writes of every key.
    for n in 0..6u64 {
        wb.insert(Key(n), 2).expect("acknowledged");
    }
    wb.flush();
    let stored: Vec<(u64, Option<u64>)> = (0..6u64)
        .map(|n| (n, store.0.lock().unwrap().get(&n).copied()))
        .collect();
    let stats = wb.stats();
    wb.close();
    let after_close: Vec<(u64, Option<u64>)> = (0..6u64)
        .map(|n| (n, store.0.lock().unwrap().get(&n).copied()))
        .collect();
    assert_eq!(
        stored,
        (0..6u64).map(|n| (n, Some(2))).collect::<Vec<_>>(),
        "flush returned before acknowledged writes were stored (stats {stats:?}); after close: {after_close:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Write-through: a store that took the write and then panicked left the old value cached
// while the store held the new one (as session 21's weigher panic did). Fixed: the key
// leaves the cache before the panic goes on.

#[derive(Default)]
struct PanicsAfterWriting(Mutex<HashMap<u64, String>>);

impl Store<u64, String> for PanicsAfterWriting {
    type Error = String;
    fn load(&self, key: &u64) -> Result<Option<String>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn store(&self, key: &u64, value: &String) -> Result<(), String> {
        self.0.lock().unwrap().insert(*key, value.clone());
        assert!(value != "boom", "the store panics after committing");
        Ok(())
    }
    fn delete(&self, key: &u64) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        assert!(*key != 13, "the store panics after deleting");
        Ok(())
    }
}

#[test]
fn write_through_store_panicking_after_storing_does_not_leave_the_old_value_cached() {
    let cache = Cache::<u64, String>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let users = WriteThrough::new(cache, PanicsAfterWriting::default());
    users.insert(1, "old".into()).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        users.insert(1, "boom".into())
    }));
    assert!(r.is_err());
    let in_store = users.store().load(&1).unwrap();
    assert_eq!(in_store.as_deref(), Some("boom"));
    assert_eq!(
        users.get(&1).unwrap(),
        in_store,
        "cache and store disagree after the store panicked"
    );
}

#[test]
fn write_through_store_panicking_after_deleting_does_not_leave_the_value_cached() {
    let cache = Cache::<u64, String>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let users = WriteThrough::new(cache, PanicsAfterWriting::default());
    users.insert(13, "x".into()).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| users.remove(&13)));
    assert!(r.is_err());
    assert_eq!(users.store().load(&13).unwrap(), None);
    assert_eq!(
        users.get(&13).unwrap(),
        None,
        "the cache serves a key the store deleted"
    );
}

// ---------------------------------------------------------------------------------------
// Write-behind: a store error whose `Display` panicked killed the background thread
// (`to_string` ran outside the `catch_unwind`): the queued write was never stored, although
// "a panicking store is retried". Fixed: the error is displayed inside.

#[derive(Debug)]
struct BadError;

impl std::fmt::Display for BadError {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("the store's error cannot display itself")
    }
}

#[derive(Default)]
struct FailsOnce {
    failed: AtomicBool,
    map: Mutex<HashMap<u64, u64>>,
}

impl Store<u64, u64> for FailsOnce {
    type Error = BadError;
    fn load(&self, key: &u64) -> Result<Option<u64>, BadError> {
        Ok(self.map.lock().unwrap().get(key).copied())
    }
    fn store(&self, key: &u64, value: &u64) -> Result<(), BadError> {
        if !self.failed.swap(true, Ordering::SeqCst) {
            return Err(BadError);
        }
        self.map.lock().unwrap().insert(*key, *value);
        Ok(())
    }
    fn delete(&self, key: &u64) -> Result<(), BadError> {
        self.map.lock().unwrap().remove(key);
        Ok(())
    }
}

#[test]
fn write_behind_a_store_error_whose_display_panics_is_retried() {
    let cache = Cache::<u64, u64>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let wb = Arc::new(
        WriteBehindBuilder::default()
            .flush_interval(Duration::from_millis(1))
            .build(cache, FailsOnce::default()),
    );
    wb.insert(1, 1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let flusher = Arc::clone(&wb);
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flusher.flush()));
        drop(flusher);
        tx.send(r.is_ok()).unwrap();
    });
    let flushed = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("flush ended");
    assert!(
        flushed,
        "flush panicked: the write-behind thread died on the store's error"
    );
    assert_eq!(wb.store().map.lock().unwrap().get(&1), Some(&1));
}

// ---------------------------------------------------------------------------------------
// Write-behind stats: `pending` ("distinct keys waiting to be written") left out the batch
// in flight, so while the store was down it reported 0 with nothing stored.

#[derive(Default)]
struct Down {
    down: AtomicBool,
    map: Mutex<HashMap<u64, u64>>,
}

impl Store<u64, u64> for Down {
    type Error = String;
    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        Ok(self.map.lock().unwrap().get(key).copied())
    }
    fn store(&self, key: &u64, value: &u64) -> Result<(), String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("down".into());
        }
        self.map.lock().unwrap().insert(*key, *value);
        Ok(())
    }
    fn delete(&self, key: &u64) -> Result<(), String> {
        self.map.lock().unwrap().remove(key);
        Ok(())
    }
}

#[test]
fn write_behind_pending_counts_writes_stuck_in_a_failing_batch() {
    let cache = Cache::<u64, u64>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let wb = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(1))
        .build(cache, Down::default());
    let store = wb.store();
    store.down.store(true, Ordering::SeqCst);
    for k in 0..10 {
        wb.insert(k, k).unwrap();
    }
    while wb.stats().failed_batches == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stats = wb.stats();
    store.down.store(false, Ordering::SeqCst);
    assert!(store.map.lock().unwrap().is_empty() || stats.written == 0);
    assert_eq!(stats.written, 0);
    assert_eq!(stats.pending, 10, "10 unstored writes, stats say {stats:?}");
}

// ---------------------------------------------------------------------------------------
// Write-through: `Store::store`'s doc allows an error after the write happened ("The write
// did not happen (or may not have ...)"), e.g. a commit whose acknowledgement timed out.
// Write-through kept the old value cached while the store held the new one. Fixed: a store
// error drops the key's cached value.

#[derive(Default)]
struct AmbiguousTimeout(Mutex<HashMap<u64, String>>);

impl Store<u64, String> for AmbiguousTimeout {
    type Error = String;
    fn load(&self, key: &u64) -> Result<Option<String>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }
    fn store(&self, key: &u64, value: &String) -> Result<(), String> {
        self.0.lock().unwrap().insert(*key, value.clone());
        if value == "late-ack" {
            return Err("timed out waiting for the commit's acknowledgement".into());
        }
        Ok(())
    }
    fn delete(&self, key: &u64) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

#[test]
fn write_through_an_ambiguous_store_error_does_not_leave_cache_and_store_disagreeing() {
    let cache = Cache::<u64, String>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let users = WriteThrough::new(cache, AmbiguousTimeout::default());
    users.insert(1, "old".into()).unwrap();
    assert!(users.insert(1, "late-ack".into()).is_err());
    assert_eq!(
        users.get(&1).unwrap(),
        users.store().load(&1).unwrap(),
        "cache and store disagree after an error the Store trait allows"
    );
}
