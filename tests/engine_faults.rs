//! Faults session 24's review of the engine (`src/raw/`) found, each test failing before
//! its fix: a cell leaked by every write whose key's `Eq` panicked, `run_pending_tasks`
//! spinning on a clock that keeps panicking, and a clock panic while other shards made room
//! for a write that left the write unsettled; and, from the review of the API's edges,
//! `run_pending_tasks` looping under a listener that panicked. Also the review's churn
//! check of readers against rebuilds and recycled cells.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

mod common;

use common::KeyIsHash;
use larder::{Cache, Clock, RemovalCause};

/// Panics these tests cause on purpose carry this prefix, and are not printed.
const INTENDED: &str = "engine_faults:";

fn quiet_intended_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let intended = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| s.starts_with(INTENDED));
            if !intended {
                default(info);
            }
        }));
    });
}

/// A key whose `Eq` panics when either side is armed.
#[derive(Debug)]
struct Bomb {
    id: u64,
    armed: bool,
}

impl Hash for Bomb {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl PartialEq for Bomb {
    fn eq(&self, other: &Self) -> bool {
        if self.armed || other.armed {
            std::panic::panic_any("engine_faults: Eq panicked");
        }
        self.id == other.id
    }
}

impl Eq for Bomb {}

/// A write whose key's `Eq` panics leaves the entries unchanged, and must leave nothing
/// else behind: the entry used to be built in a cell before the probe ran `Eq`, and the
/// cell stayed taken until the cache was dropped (about 40 bytes a write; after about 2^26
/// such writes a shard had no cell left, and every insert into it panicked). Shown through
/// `metadata_bytes`, which counts the chunk directory, grown by about a byte a leaked cell.
#[test]
fn a_panicking_eq_does_not_leak_a_cell_per_write() {
    quiet_intended_panics();
    let cache: Cache<Bomb, u64> = Cache::builder()
        .max_entries(1000)
        .shards(1)
        .build()
        .unwrap();
    cache
        .insert(
            Bomb {
                id: 1,
                armed: false,
            },
            1,
        )
        .unwrap();
    let before = cache.metadata_bytes();
    let writes = 300_000;
    for _ in 0..writes {
        let write = std::panic::AssertUnwindSafe(|| {
            let _ = cache.insert(Bomb { id: 1, armed: true }, 2);
        });
        assert!(std::panic::catch_unwind(write).is_err(), "Eq ran");
    }
    cache.validate();
    assert_eq!(cache.len(), 1);
    let after = cache.metadata_bytes();
    assert!(
        after < before + 64 * 1024,
        "metadata grew from {before} to {after} bytes over {writes} failed writes of a \
         one-entry cache"
    );
}

/// A clock that panics while `failing` is set (one behind a poisoned lock, say), and stops
/// after `limit` panics so that a test of a spinning caller ends.
#[derive(Debug)]
struct FailingClock {
    failing: Arc<AtomicBool>,
    panics: Arc<AtomicU64>,
    limit: u64,
}

impl Clock for FailingClock {
    fn now_nanos(&self) -> u64 {
        if self.failing.load(Ordering::SeqCst) {
            if self.panics.fetch_add(1, Ordering::SeqCst) + 1 >= self.limit {
                self.failing.store(false, Ordering::SeqCst);
            }
            std::panic::panic_any("engine_faults: the clock failed");
        }
        0
    }
}

/// `run_pending_tasks` re-raises a listener's panic once every due entry is gone, which
/// it did by retrying after any panic: a clock that kept panicking made it spin (here
/// 100,000 times, where the clock gives up) instead of passing the first panic on.
#[test]
fn run_pending_tasks_passes_a_clock_panic_on_instead_of_spinning() {
    quiet_intended_panics();
    let failing = Arc::new(AtomicBool::new(false));
    let panics = Arc::new(AtomicU64::new(0));
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(100)
        .shards(1)
        .clock(FailingClock {
            failing: Arc::clone(&failing),
            panics: Arc::clone(&panics),
            limit: 100_000,
        })
        .build()
        .unwrap();
    cache.insert(1, 1).unwrap();
    failing.store(true, Ordering::SeqCst);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.run_pending_tasks();
    }));
    failing.store(false, Ordering::SeqCst);
    let panics = panics.load(Ordering::SeqCst);
    assert_eq!(panics, 1, "the clock was asked {panics} times");
    assert!(outcome.is_err(), "the clock's panic was swallowed");
    cache.run_pending_tasks();
    assert_eq!(cache.get(&1), Some(1));
    cache.validate();
}

/// A clock that panics only when another shard makes room for a write, after the home
/// shard has published it: the write used to stand unsettled (the cache over its budget at
/// rest, the replaced value never reported to the listener). Now the eviction completes
/// without it (nothing counts as expired), the listener hears of everything that left, and
/// then the panic reaches the writer.
#[test]
fn a_clock_panic_while_other_shards_make_room_leaves_the_write_settled() {
    quiet_intended_panics();
    let failing = Arc::new(AtomicBool::new(false));
    let notices = Arc::new(Mutex::new(Vec::new()));
    let cache: Cache<u64, u64, KeyIsHash> = Cache::builder()
        .max_bytes(10_000)
        .weigher(|_: &u64, value: &u64| *value)
        .shards(2)
        .hasher(KeyIsHash::default())
        .clock(FailingClock {
            failing: Arc::clone(&failing),
            panics: Arc::new(AtomicU64::new(0)),
            limit: u64::MAX,
        })
        .eviction_listener({
            let notices = Arc::clone(&notices);
            move |key: &u64, value: &u64, cause| notices.lock().unwrap().push((*key, *value, cause))
        })
        .build()
        .unwrap();
    let (home, other) = (1u64, (1u64 << 63) | 1);
    // The other shard holds an entry with a TTL, so making room there reads the clock.
    cache
        .insert_with_ttl(other, 3000, Duration::from_secs(3600))
        .unwrap();
    cache.insert(home, 100).unwrap();
    failing.store(true, Ordering::SeqCst);
    // Over the budget, and the home shard holds only this key: the other shard makes room.
    let write = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.insert(home, 7000)));
    failing.store(false, Ordering::SeqCst);
    let message = write
        .expect_err("the clock's panic reaches the writer")
        .downcast_ref::<&str>()
        .map(|s| s.to_string());
    assert_eq!(message.as_deref(), Some("engine_faults: the clock failed"));
    assert_eq!(cache.get(&home), Some(7000));
    assert!(cache.weighted_size() <= 10_000, "{}", cache.weighted_size());
    cache.validate();
    let notices = notices.lock().unwrap().clone();
    assert!(
        notices.contains(&(home, 100, RemovalCause::Replaced)),
        "{notices:?}"
    );
    assert!(
        notices.contains(&(other, 3000, RemovalCause::Evicted)),
        "{notices:?}"
    );
}

/// Readers never see a value that is not their key's, nor a torn one, while one writer
/// churns a one-shard cache through inserts, replacements, removals, clears, table
/// rebuilds (tombstone purges and growth) and recycled cells. (No fault found.)
#[test]
fn readers_see_only_their_keys_values_under_churn_rebuilds_and_recycling() {
    let cache: Cache<u64, [u64; 4]> = Cache::builder().max_entries(512).shards(1).build().unwrap();
    let value = |key: u64, version: u64| [key, version, key ^ version, key.wrapping_mul(version)];
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let cache = cache.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut reads, mut hits) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                for key in 0..2048u64 {
                    if let Some(v) = cache.get(&key) {
                        hits += 1;
                        assert!(
                            v[0] == key && v[2] == key ^ v[1] && v[3] == key.wrapping_mul(v[1]),
                            "key {key} read {v:?}"
                        );
                    }
                    reads += 1;
                }
            }
            (reads, hits)
        })
    };
    let started = Instant::now();
    let mut version = 0u64;
    let mut state = 0x1234_5678_9abc_def0u64;
    while started.elapsed() < Duration::from_secs(2) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = state % 2048;
        version += 1;
        match state >> 60 {
            0 => {
                cache.remove(&key);
            }
            1 if version % 4096 == 0 => cache.clear(),
            _ => cache.insert(key, value(key, version)).unwrap(),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, hits) = reader.join().unwrap();
    assert!(reads > 0 && hits > 0, "reads {reads}, hits {hits}");
    cache.validate();
}

/// A round of `run_pending_tasks` whose listener panicked lost that round's "done", so
/// the call ran another round: a listener that re-inserts the expired key it is told about
/// (with a zero TTL, so it is due at once) and then panics kept it going for ever, where
/// the same listener without the panic let it return (session 24's review of the API
/// edges). Now the call ends once a round catches up, and re-raises the listener's panic.
#[test]
fn run_pending_tasks_ends_under_a_panicking_listener_that_reinserts() {
    quiet_intended_panics();
    fn returns(panics: bool) -> bool {
        let stop = Arc::new(AtomicBool::new(false));
        let slot: Arc<Mutex<Option<Cache<u64, u64>>>> = Arc::default();
        let clock = larder::ManualClock::new();
        let cache: Cache<u64, u64> = Cache::builder()
            .max_entries(16)
            .shards(1)
            .clock(clock.clone())
            .eviction_listener({
                let slot = Arc::clone(&slot);
                let stop = Arc::clone(&stop);
                move |key: &u64, value: &u64, cause| {
                    if stop.load(Ordering::SeqCst) || cause != RemovalCause::Expired {
                        return;
                    }
                    let cache = slot.lock().unwrap().clone();
                    if let Some(cache) = cache {
                        let _ = cache.insert_with_ttl(*key, *value, Duration::ZERO);
                    }
                    if panics {
                        std::panic::panic_any("engine_faults: the listener panicked");
                    }
                }
            })
            .build()
            .unwrap();
        *slot.lock().unwrap() = Some(cache.clone());
        cache.insert_with_ttl(1, 1, Duration::from_secs(1)).unwrap();
        clock.advance(Duration::from_secs(2));
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let outcome = std::panic::catch_unwind(|| cache.run_pending_tasks());
                let _ = tx.send(outcome.is_err());
            })
        };
        let outcome = rx.recv_timeout(Duration::from_secs(5));
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        *slot.lock().unwrap() = None;
        // Ended, and with a panic exactly when the listener panicked.
        outcome == Ok(panics)
    }
    assert!(returns(false), "without the panic it returns");
    assert!(
        returns(true),
        "with the listener's panic it must end too, re-raising that panic"
    );
}

/// A replaced entry's cell comes back only through the epoch collector, so while a thread
/// stays pinned every write takes a fresh cell, and a shard's cells run out (2^26, lowered
/// here to 64). Inserts are then refused with `NoFreeCell`, key and value handed back and
/// the old value kept, until the pinned thread moves on; before session 24 an internal
/// assertion panicked in every insert into the shard.
#[test]
fn a_shard_out_of_cells_refuses_inserts_until_reclamation_resumes() {
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(16)
        .shards(1)
        .shard_cell_limit(64)
        .build()
        .unwrap();
    cache.insert(0, 0).unwrap();
    // This thread's own pin holds back every retired cell, as a listener that blocks would.
    let pinned = crossbeam_epoch::pin();
    let refused = (1..10_000u64).find_map(|n| cache.insert(0, n).err().map(|e| (n, e)));
    let (n, refused) = refused.expect("refused once the cells ran out");
    assert!(n <= 64, "{n} writes before the refusal, with 64 cells");
    assert_eq!(refused.kind, larder::InsertErrorKind::NoFreeCell);
    assert_eq!((refused.key, refused.value), (0, n));
    assert!(refused.to_string().contains("no free cell"));
    assert_eq!(cache.get(&0), Some(n - 1), "the previous value stays");
    assert!(cache.insert(1, 1).is_err(), "no cell for a new key either");
    cache.validate();
    drop(pinned);
    // Unpinned, the collector frees the retired entries and their cells come back.
    let accepted = (0..10_000).any(|_| {
        crossbeam_epoch::pin().flush();
        cache.insert(0, 99).is_ok()
    });
    assert!(accepted, "inserts stay refused after the pin ended");
    assert_eq!(cache.get(&0), Some(99));
    cache.validate();
}
