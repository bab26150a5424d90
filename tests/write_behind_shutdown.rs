//! A write-behind's bounded shutdown: `close_within` and `flush_within` return in their
//! time when the store is down or slow, and hand back every write the store did not take,
//! each key once with its newest write, so none is dropped unstored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder::patterns::{Store, WriteBehindBuilder};
use larder::Cache;

/// A store that can be down (refusing every call), panicking, or slow (each call waits
/// `delay_ms`), and keeps what it took.
#[derive(Default)]
struct Db {
    down: AtomicBool,
    panics: AtomicBool,
    delay_ms: AtomicU64,
    map: Mutex<HashMap<u64, u64>>,
}

impl Db {
    fn call(&self) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        if self.panics.load(Ordering::SeqCst) {
            panic!("the database panicked");
        }
        if self.down.load(Ordering::SeqCst) {
            return Err("connection refused".into());
        }
        Ok(())
    }
}

/// The write-behind's handle on the test's database.
struct DbRef(Arc<Db>);

impl Store<u64, u64> for DbRef {
    type Error = String;
    fn load(&self, key: &u64) -> Result<Option<u64>, String> {
        Ok(self.0.map.lock().unwrap().get(key).copied())
    }
    fn store(&self, key: &u64, value: &u64) -> Result<(), String> {
        self.0.call()?;
        self.0.map.lock().unwrap().insert(*key, *value);
        Ok(())
    }
    fn delete(&self, key: &u64) -> Result<(), String> {
        self.0.call()?;
        self.0.map.lock().unwrap().remove(key);
        Ok(())
    }
}

fn cache() -> Cache<u64, u64> {
    Cache::builder().max_entries(10_000).build().unwrap()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn close_within_hands_back_every_write_a_down_store_refused() {
    let db = Arc::new(Db::default());
    db.down.store(true, Ordering::SeqCst);
    db.map.lock().unwrap().insert(50, 500);
    let wb = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(1))
        .retry_backoff(Duration::from_millis(5), Duration::from_secs(5))
        .build(cache(), DbRef(Arc::clone(&db)));
    for k in 0..20 {
        wb.insert(k, k).unwrap();
    }
    // Let the first batch fail, so one batch is in flight and the rest queued behind it.
    while wb.stats().failed_batches == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    wb.insert(3, 333).unwrap(); // replaces a write of the failed batch
    wb.insert(100, 1).unwrap(); // queued after it
    wb.remove(&50).unwrap();
    let began = Instant::now();
    let unwritten = wb
        .close_within(Duration::from_millis(200))
        .expect_err("a store that is down takes nothing");
    let took = began.elapsed();
    assert!(took < Duration::from_secs(2), "close_within took {took:?}");
    let mut expected: Vec<(u64, Option<u64>)> = (0..20).map(|k| (k, Some(k))).collect();
    expected[3].1 = Some(333);
    expected.push((100, Some(1)));
    expected.push((50, None));
    assert_eq!(sorted(unwritten.writes.clone()), sorted(expected));
    assert_eq!(unwritten.last_error.as_deref(), Some("connection refused"));
    assert!(unwritten
        .to_string()
        .contains("22 write-behind writes not stored"));
    assert_eq!(*db.map.lock().unwrap(), HashMap::from([(50, 500)]));
}

#[test]
fn close_within_stops_a_slow_drain_at_its_deadline_and_loses_nothing() {
    let db = Arc::new(Db::default());
    db.delay_ms.store(20, Ordering::SeqCst);
    let wb = WriteBehindBuilder::default()
        .batch_size(4)
        .capacity(10_000)
        .build(cache(), DbRef(Arc::clone(&db)));
    for k in 0..400 {
        wb.insert(k, k + 1).unwrap();
    }
    let began = Instant::now();
    // 400 writes at 20 ms each take 8 s; the close gives up after 300 ms.
    let unwritten = wb
        .close_within(Duration::from_millis(300))
        .expect_err("8 s of writes cannot end in 300 ms");
    let took = began.elapsed();
    assert!(took < Duration::from_secs(3), "close_within took {took:?}");
    let stored = db.map.lock().unwrap().clone();
    assert!(!stored.is_empty(), "the store took nothing in 300 ms");
    let mut seen: HashMap<u64, u64> = stored.clone();
    for (key, value) in &unwritten.writes {
        let value = value.expect("only stores were queued");
        assert!(
            !stored.contains_key(key),
            "key {key} both stored and handed back"
        );
        assert!(
            seen.insert(*key, value).is_none(),
            "key {key} handed back twice"
        );
    }
    let all: HashMap<u64, u64> = (0..400).map(|k| (k, k + 1)).collect();
    assert_eq!(
        seen, all,
        "stored and handed back together must be every write"
    );
    assert_eq!(unwritten.last_error, None);
}

#[test]
fn close_within_returns_ok_once_a_store_that_comes_back_took_everything() {
    let db = Arc::new(Db::default());
    db.down.store(true, Ordering::SeqCst);
    let wb = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(1))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build(cache(), DbRef(Arc::clone(&db)));
    for k in 0..10 {
        wb.insert(k, k).unwrap();
    }
    while wb.stats().failed_batches == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let db_up = Arc::clone(&db);
    let revive = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        db_up.down.store(false, Ordering::SeqCst);
    });
    assert_eq!(wb.close_within(Duration::from_secs(30)), Ok(()));
    revive.join().unwrap();
    let expected: HashMap<u64, u64> = (0..10).map(|k| (k, k)).collect();
    assert_eq!(*db.map.lock().unwrap(), expected);
}

#[test]
fn close_within_treats_a_panicking_store_as_a_failure() {
    let db = Arc::new(Db::default());
    db.panics.store(true, Ordering::SeqCst);
    let wb = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(1))
        .build(cache(), DbRef(Arc::clone(&db)));
    wb.insert(1, 1).unwrap();
    let unwritten = wb
        .close_within(Duration::from_millis(100))
        .expect_err("a panicking store takes nothing");
    assert_eq!(unwritten.writes, vec![(1, Some(1))]);
    assert_eq!(unwritten.last_error.as_deref(), Some("the store panicked"));
}

#[test]
fn close_within_a_zero_timeout_hands_back_the_queue_untouched() {
    let db = Arc::new(Db::default());
    let wb = WriteBehindBuilder::default()
        .flush_interval(Duration::from_secs(3600))
        .build(cache(), DbRef(Arc::clone(&db)));
    wb.insert(1, 10).unwrap();
    wb.insert(1, 11).unwrap();
    let unwritten = wb
        .close_within(Duration::ZERO)
        .expect_err("no time to write");
    assert_eq!(unwritten.writes, vec![(1, Some(11))]);
    assert!(db.map.lock().unwrap().is_empty());
}

#[test]
fn flush_within_gives_up_in_its_time_and_the_writes_stay_queued() {
    let db = Arc::new(Db::default());
    db.down.store(true, Ordering::SeqCst);
    let wb = WriteBehindBuilder::default()
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build(cache(), DbRef(Arc::clone(&db)));
    for k in 0..5 {
        wb.insert(k, k).unwrap();
    }
    let began = Instant::now();
    assert!(!wb.flush_within(Duration::from_millis(100)));
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "flush_within took {took:?}"
    );
    assert_eq!(wb.stats().pending, 5);
    db.down.store(false, Ordering::SeqCst);
    assert!(wb.flush_within(Duration::from_secs(30)));
    assert_eq!(wb.stats().pending, 0);
    assert_eq!(db.map.lock().unwrap().len(), 5);
    // Nothing left: an immediate close has nothing to hand back.
    assert_eq!(wb.close_within(Duration::ZERO), Ok(()));
}
