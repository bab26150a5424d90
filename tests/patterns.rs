//! Write-through and write-behind against a real database (SQLite, in memory), including a
//! database that goes down and comes back, shutdown in the middle of a burst, and a full
//! queue.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::patterns::{Backpressure, Store, WriteBehindBuilder, WriteThrough};
use larder::Cache;
use rusqlite::{params, Connection, OptionalExtension};

/// A SQLite table `kv(key INTEGER PRIMARY KEY, value TEXT)` behind a mutex, with switches
/// to take it down and to slow its reads, and counters of what reached it.
struct Sqlite {
    conn: Mutex<Connection>,
    down: AtomicBool,
    slow_reads: AtomicBool,
    queries: AtomicUsize,
    rows_written: AtomicUsize,
}

impl Sqlite {
    fn new() -> Arc<Self> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE kv (key INTEGER PRIMARY KEY, value TEXT NOT NULL)")
            .unwrap();
        Arc::new(Self {
            conn: Mutex::new(conn),
            down: AtomicBool::new(false),
            slow_reads: AtomicBool::new(false),
            queries: AtomicUsize::new(0),
            rows_written: AtomicUsize::new(0),
        })
    }

    fn check(&self) -> Result<std::sync::MutexGuard<'_, Connection>, String> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err("database is down".into());
        }
        Ok(self.conn.lock().unwrap())
    }

    /// The row for `key`, read directly (not through any cache).
    fn row(&self, key: u64) -> Option<String> {
        let conn = self.conn.lock().unwrap();
        conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .unwrap()
    }
}

/// The store is shared with the test through an `Arc`.
#[derive(Clone)]
struct Db(Arc<Sqlite>);

impl Store<u64, String> for Db {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<String>, String> {
        let conn = self.0.check()?;
        let row = conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| e.to_string())?;
        drop(conn);
        if self.0.slow_reads.load(Ordering::SeqCst) {
            // The value was read; a write may now race to replace it.
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(row)
    }

    fn store(&self, key: &u64, value: &String) -> Result<(), String> {
        self.store_many(&[(*key, value.clone())])
    }

    fn delete(&self, key: &u64) -> Result<(), String> {
        self.delete_many(&[*key])
    }

    fn store_many(&self, entries: &[(u64, String)]) -> Result<(), String> {
        let mut conn = self.0.check()?;
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        for (key, value) in entries {
            tx.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
        self.0
            .rows_written
            .fetch_add(entries.len(), Ordering::SeqCst);
        Ok(())
    }

    fn delete_many(&self, keys: &[u64]) -> Result<(), String> {
        let mut conn = self.0.check()?;
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        for key in keys {
            tx.execute("DELETE FROM kv WHERE key = ?1", [key])
                .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
        self.0.rows_written.fetch_add(keys.len(), Ordering::SeqCst);
        Ok(())
    }
}

fn cache(n: u64) -> Cache<u64, String> {
    Cache::builder().max_entries(n).build().unwrap()
}

#[test]
fn write_through_writes_the_store_first_and_drops_the_cached_value_on_store_errors() {
    let db = Sqlite::new();
    let users = WriteThrough::new(cache(100), Db(Arc::clone(&db)));
    users.insert(1, "ada".into()).unwrap();
    assert_eq!(db.row(1).as_deref(), Some("ada"));
    assert_eq!(users.cache().get(&1).as_deref(), Some("ada"));

    db.down.store(true, Ordering::SeqCst);
    assert_eq!(
        users.insert(1, "grace".into()),
        Err("database is down".into())
    );
    // The store may have taken a write that reports an error: the cache keeps no copy.
    assert_eq!(users.cache().get(&1), None, "cached value dropped");
    assert_eq!(users.remove(&1), Err("database is down".into()));
    db.down.store(false, Ordering::SeqCst);
    assert_eq!(db.row(1).as_deref(), Some("ada"), "store unchanged");
    assert_eq!(users.get(&1).unwrap().as_deref(), Some("ada"), "read again");

    users.remove(&1).unwrap();
    assert_eq!((db.row(1), users.cache().get(&1)), (None, None));
    assert_eq!(users.get(&1), Ok(None), "absent in the store");
    assert_eq!(users.cache().get(&1), None, "absence is not cached");
}

#[test]
fn write_through_reads_through_once_per_key() {
    let db = Sqlite::new();
    Db(Arc::clone(&db)).store(&5, &"five".into()).unwrap();
    let users = WriteThrough::new(cache(100), Db(Arc::clone(&db)));
    db.slow_reads.store(true, Ordering::SeqCst);
    db.queries.store(0, Ordering::SeqCst);
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| assert_eq!(users.get(&5).unwrap().as_deref(), Some("five")));
        }
    });
    assert_eq!(
        db.queries.load(Ordering::SeqCst),
        1,
        "one query for 16 readers"
    );
    db.down.store(true, Ordering::SeqCst);
    assert_eq!(users.get(&6), Err("database is down".into()));
}

/// `get_or_insert_with` on the cache under a write-through joins a read-through's load of
/// the same key; when that load finds nothing in the store, the joined caller runs its own
/// loader (it used to panic: its loader always returns a value, so "absent" was taken to
/// be impossible).
#[test]
fn get_or_insert_with_joining_a_read_through_that_finds_nothing_loads_its_own() {
    let db = Sqlite::new();
    let users = WriteThrough::new(cache(100), Db(Arc::clone(&db)));
    db.slow_reads.store(true, Ordering::SeqCst);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| users.get(&1));
        // The read-through is now in its 100 ms store read.
        std::thread::sleep(Duration::from_millis(30));
        let own = users
            .cache()
            .get_or_insert_with(1, || "default".to_string());
        assert_eq!(own, "default");
        assert_eq!(reader.join().unwrap(), Ok(None));
    });
    assert_eq!(users.cache().get(&1).as_deref(), Some("default"));
    assert_eq!(
        db.row(1),
        None,
        "the cache's own loader writes nothing to the store"
    );
}

/// The cache-aside race: a reader loads the old value, a writer replaces it in the store,
/// then the reader caches what it read. Here the write waits for the load, so the cache ends
/// with the new value.
#[test]
fn a_write_racing_a_slow_load_never_leaves_the_old_value_cached() {
    let db = Sqlite::new();
    Db(Arc::clone(&db)).store(&1, &"old".into()).unwrap();
    let users = WriteThrough::new(cache(100), Db(Arc::clone(&db)));
    db.slow_reads.store(true, Ordering::SeqCst);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| users.get(&1).unwrap());
        std::thread::sleep(Duration::from_millis(30));
        users.insert(1, "new".into()).unwrap();
        assert_eq!(reader.join().unwrap().as_deref(), Some("old"));
    });
    assert_eq!(db.row(1).as_deref(), Some("new"));
    assert_eq!(users.cache().get(&1).as_deref(), Some("new"));
}

#[test]
fn write_behind_coalesces_a_burst_and_drop_writes_everything() {
    let db = Sqlite::new();
    {
        let store = WriteBehindBuilder::default()
            .flush_interval(Duration::from_millis(20))
            .build(cache(10_000), Db(Arc::clone(&db)));
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let store = &store;
                scope.spawn(move || {
                    for round in 0..2_500u64 {
                        let key = thread * 1000 + round % 1000;
                        store.insert(key, format!("{thread}-{round}")).unwrap();
                    }
                });
            }
        });
        // Dropped here, mid-stream: whatever is still queued must be written first.
    }
    for thread in 0..4u64 {
        for key in 0..1000u64 {
            // The last round that wrote this key (rounds 0..2500 cycle over 1000 keys).
            let last = if key < 500 { 2000 + key } else { 1000 + key };
            assert_eq!(
                db.row(thread * 1000 + key),
                Some(format!("{thread}-{last}")),
                "key {}",
                thread * 1000 + key
            );
        }
    }
    let rows = db.rows_written.load(Ordering::SeqCst);
    println!("10,000 writes over 4,000 keys reached the database as {rows} row writes");
    assert!((4000..=10_000).contains(&rows), "{rows} row writes");

    // A hot key written 1,000 times within one flush interval reaches the store once or
    // twice (the last value always).
    let before = db.rows_written.load(Ordering::SeqCst);
    let store = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(200))
        .build(cache(100), Db(Arc::clone(&db)));
    for n in 0..1000 {
        store.insert(9_999, format!("hot-{n}")).unwrap();
    }
    store.close();
    let rows = db.rows_written.load(Ordering::SeqCst) - before;
    println!("1,000 writes of one hot key reached the database as {rows} row write(s)");
    assert!(rows <= 2, "{rows} row writes");
    assert_eq!(db.row(9_999).as_deref(), Some("hot-999"));
}

#[test]
fn write_behind_retries_while_the_database_is_down_and_loses_nothing() {
    let db = Sqlite::new();
    let store = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(5))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build(cache(50), Db(Arc::clone(&db)));
    db.down.store(true, Ordering::SeqCst);
    for key in 0..500u64 {
        store.insert(key, format!("v{key}")).unwrap();
    }
    store.remove(&7).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stats = store.stats();
    assert!(stats.failed_batches > 0, "{stats:?}");
    assert_eq!(stats.last_error.as_deref(), Some("database is down"));
    // While down, reads see the queued writes, even those the 50-entry cache evicted.
    for key in 0..500u64 {
        let want = (key != 7).then(|| format!("v{key}"));
        assert_eq!(store.get(&key).unwrap(), want, "key {key}");
    }
    db.down.store(false, Ordering::SeqCst);
    store.flush();
    assert_eq!(store.stats().pending, 0);
    for key in 0..500u64 {
        let want = (key != 7).then(|| format!("v{key}"));
        assert_eq!(db.row(key), want, "key {key}");
    }
}

/// A retry backoff the clock cannot count (`Duration::MAX`) waits for good instead of
/// panicking on the background thread the first time a batch fails: that killed the
/// thread, lost the batch and everything queued, and made later writes panic.
#[test]
fn a_retry_backoff_of_duration_max_keeps_the_thread_and_the_writes() {
    let db = Sqlite::new();
    db.down.store(true, Ordering::SeqCst);
    let store = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(5))
        .retry_backoff(Duration::MAX, Duration::MAX)
        .build(cache(50), Db(Arc::clone(&db)));
    store.insert(1, "one".to_string()).unwrap();
    let start = std::time::Instant::now();
    while store.stats().failed_batches == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never tried");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The thread is past the failure and waiting out the backoff, not dead: writes are still
    // queued (a dead thread makes them panic) and reads see what is waiting.
    std::thread::sleep(Duration::from_millis(50));
    store.insert(2, "two".to_string()).unwrap();
    store.remove(&1).unwrap();
    store.cache().clear();
    assert_eq!(store.get(&1).unwrap(), None);
    assert_eq!(store.get(&2).unwrap().as_deref(), Some("two"));
    let stats = store.stats();
    assert_eq!(stats.failed_batches, 1, "{stats:?}");
    assert_eq!(stats.pending, 2, "{stats:?}");
    // The retry is due at the end of time, and dropping waits for it (as documented): leak
    // the store, and with it the waiting thread.
    std::mem::forget(store);
}

#[test]
fn close_in_the_middle_of_a_burst_writes_everything_queued() {
    let db = Sqlite::new();
    let store = WriteBehindBuilder::default()
        .flush_interval(Duration::from_secs(60))
        // 5,000 is not a multiple of 128: the last writes wait for the (60 s) interval.
        .batch_size(128)
        .build(cache(1000), Db(Arc::clone(&db)));
    for key in 0..5_000u64 {
        store.insert(key, format!("v{key}")).unwrap();
    }
    assert!(store.stats().pending > 0, "the burst is still queued");
    store.close();
    for key in 0..5_000u64 {
        assert_eq!(db.row(key), Some(format!("v{key}")), "key {key}");
    }
}

#[test]
fn a_full_queue_refuses_or_blocks_as_configured() {
    let db = Sqlite::new();
    db.down.store(true, Ordering::SeqCst);
    let refusing = WriteBehindBuilder::default()
        .capacity(4)
        .backpressure(Backpressure::Error)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(5))
        .build(cache(100), Db(Arc::clone(&db)));
    // The first batch leaves the queue for the (failing) store; fill the queue behind it.
    refusing.insert(0, "zero".into()).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    for key in 1..=4u64 {
        refusing.insert(key, format!("v{key}")).unwrap();
    }
    let refused = refusing.insert(5, "five".into()).unwrap_err();
    assert_eq!(
        refused,
        larder::patterns::WriteBehindError::QueueFull {
            key: 5,
            value: Some("five".into())
        }
    );
    assert_eq!(refusing.cache().get(&5), None, "the cache is unchanged");
    refusing.insert(2, "two again".into()).unwrap();
    assert_eq!(refusing.stats().coalesced, 1, "a waiting key needs no room");

    let blocking = WriteBehindBuilder::default()
        .capacity(4)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(5))
        .build(cache(100), Db(Arc::clone(&db)));
    blocking.insert(10, "ten".into()).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    for key in 11..=14u64 {
        blocking.insert(key, format!("v{key}")).unwrap();
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| blocking.insert(15, "fifteen".into()));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!writer.is_finished(), "a full queue blocks the writer");
        db.down.store(false, Ordering::SeqCst);
        writer.join().unwrap().unwrap();
    });
    blocking.flush();
    refusing.flush();
    assert_eq!(db.row(15).as_deref(), Some("fifteen"));
    assert_eq!(db.row(2).as_deref(), Some("two again"));
}

#[test]
fn flush_returns_while_other_threads_keep_writing() {
    let db = Sqlite::new();
    let store = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(5))
        .build(cache(1000), Db(Arc::clone(&db)));
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                store.insert(n % 500, format!("w{n}")).unwrap();
                n += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        store.insert(10_000, "flushed".into()).unwrap();
        let started = std::time::Instant::now();
        store.flush();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "flush waited for later writes"
        );
        assert_eq!(db.row(10_000).as_deref(), Some("flushed"));
        stop.store(true, Ordering::SeqCst);
    });
}

/// A value whose `Clone` panics on the write-behind thread (and only there).
#[derive(Debug, PartialEq)]
struct BrittleOnTheWorker(u64);

impl Clone for BrittleOnTheWorker {
    fn clone(&self) -> Self {
        assert_ne!(
            std::thread::current().name(),
            Some("larder-write-behind"),
            "clone on the write-behind thread"
        );
        Self(self.0)
    }
}

#[derive(Default)]
struct Kept(Mutex<std::collections::HashMap<u64, BrittleOnTheWorker>>);

impl Store<u64, BrittleOnTheWorker> for Kept {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<BrittleOnTheWorker>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }

    fn store(&self, key: &u64, value: &BrittleOnTheWorker) -> Result<(), String> {
        self.0.lock().unwrap().insert(*key, value.clone());
        Ok(())
    }

    fn delete(&self, key: &u64) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

/// When the key's or value's own code panics on the background thread, the thread is gone:
/// `flush` and later writes panic instead of waiting for it forever (or queueing writes it
/// will never store), and dropping re-raises the thread's panic.
#[test]
fn a_dead_write_behind_thread_makes_flush_and_writes_panic_instead_of_hang() {
    let cache = Cache::<u64, BrittleOnTheWorker>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let store = WriteBehindBuilder::default()
        .flush_interval(Duration::from_millis(5))
        .build(cache, Kept::default());
    store.insert(1, BrittleOnTheWorker(1)).unwrap();
    // A detached thread, so that a flush that hangs fails the test instead of hanging it.
    let store = Arc::new(store);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let flusher = Arc::clone(&store);
    std::thread::spawn(move || {
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flusher.flush()));
        drop(flusher);
        done_tx.send(flushed.is_err()).unwrap();
    });
    let flush_panicked = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("flush returned or panicked within 10 s");
    assert!(flush_panicked, "flush claimed the write was stored");
    let store = Arc::into_inner(store).expect("the flusher's handle is gone once it answered");
    let insert = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.insert(2, BrittleOnTheWorker(2))
    }));
    assert!(insert.is_err(), "a write was queued for a dead thread");
    assert_eq!(
        store.cache().get(&2),
        None,
        "the refused write left the cache unchanged"
    );
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(store)));
    assert!(dropped.is_err(), "drop re-raises the thread's panic");
}

/// A value whose `Clone` panics once `armed` is set.
#[derive(Debug)]
struct Armed {
    value: u64,
    armed: Arc<AtomicBool>,
}

impl Clone for Armed {
    fn clone(&self) -> Self {
        assert!(!self.armed.load(Ordering::SeqCst), "clone while armed");
        Self {
            value: self.value,
            armed: Arc::clone(&self.armed),
        }
    }
}

/// Stores by cloning, then arms values from 2 on: the clones that follow, when the write
/// is published to the cache, panic.
#[derive(Default)]
struct ArmsAfterStoring(Mutex<std::collections::HashMap<u64, Armed>>);

impl Store<u64, Armed> for ArmsAfterStoring {
    type Error = String;

    fn load(&self, key: &u64) -> Result<Option<Armed>, String> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }

    fn store(&self, key: &u64, value: &Armed) -> Result<(), String> {
        self.0.lock().unwrap().insert(*key, value.clone());
        // Values from 2 on: the first write of the test goes through whole.
        if value.value >= 2 {
            value.armed.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    fn delete(&self, key: &u64) -> Result<(), String> {
        self.0.lock().unwrap().remove(key);
        Ok(())
    }
}

/// Session 21's review: a write-through whose weigher panics after the store took the
/// write left the older value cached while the store held the new one.
#[test]
fn a_write_through_whose_weigher_panics_after_storing_drops_the_old_cached_value() {
    let cache = Cache::<u64, String>::builder()
        .max_bytes(1 << 20)
        .weigher(|_, value: &String| {
            assert!(value != "poison", "the weigher refuses");
            value.len() as u64
        })
        .build()
        .unwrap();
    let sqlite = Sqlite::new();
    let users = WriteThrough::new(cache, Db(Arc::clone(&sqlite)));
    users.insert(1, "old".to_string()).unwrap();
    let write = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        users.insert(1, "poison".to_string())
    }));
    assert!(write.is_err(), "the weigher's panic reaches the writer");
    assert_eq!(
        sqlite.row(1).as_deref(),
        Some("poison"),
        "the store took it"
    );
    assert_eq!(users.cache().get(&1), None, "the old value left the cache");
    // The next read goes to the store, and caching what it reads panics again.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| users.get(&1)));
    assert!(read.is_err());
    assert_eq!(users.cache().get(&1), None);
    users.insert(1, "new".to_string()).unwrap();
    assert_eq!(users.get(&1).unwrap().as_deref(), Some("new"));
}

/// A write-through whose value's `Clone` panics after the store took the write: the store
/// holds the new value, so the cache must not keep serving the old one.
#[test]
fn a_write_through_whose_clone_panics_after_storing_drops_the_old_cached_value() {
    let cache = Cache::<u64, Armed>::builder()
        .max_entries(100)
        .build()
        .unwrap();
    let users = WriteThrough::new(cache, ArmsAfterStoring::default());
    let armed = Arc::new(AtomicBool::new(false));
    let old = Armed {
        value: 1,
        armed: Arc::clone(&armed),
    };
    users.insert(7, old).unwrap();
    assert_eq!(users.cache().get(&7).map(|a| a.value), Some(1));
    let new = Armed {
        value: 2,
        armed: Arc::clone(&armed),
    };
    let write = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| users.insert(7, new)));
    assert!(write.is_err(), "the clone's panic reaches the writer");
    armed.store(false, Ordering::SeqCst);
    assert!(
        users.cache().get(&7).is_none(),
        "the old value left the cache"
    );
    assert_eq!(
        users.get(&7).unwrap().map(|a| a.value),
        Some(2),
        "read from the store"
    );
}
