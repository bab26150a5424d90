//! The real caches under test (larder and its peers) behind one interface that several
//! threads can share, each checked on every hit for returning the value stored for its key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::weights::Weights;

/// A real, thread-safe cache, replayed in one of two ways (see [`Pattern`]).
pub trait SharedCache: Sync {
    /// Name in tables and plots.
    fn name(&self) -> &'static str;
    /// Cache-aside: reads `key`, inserting it on a miss. `Ok(true)` on a hit; an error if
    /// the hit returned a value that was never stored for `key` (a broken cache).
    fn access(&self, key: u64) -> Result<bool, String>;
    /// Single-flight: the cache's own get-or-load call, which runs one load per missing key
    /// however many callers ask at once. `Ok(true)` when this call ran no load (a hit, or
    /// it waited for another caller's load); an error as for `access`. Caches without such
    /// a call fall back to `access`.
    fn load(&self, key: u64) -> Result<bool, String> {
        self.access(key)
    }
}

/// How the replaying threads use a cache on a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `get`, and `insert` on a miss: two threads that miss the same key both load it.
    CacheAside,
    /// The cache's single-flight get-or-load call ([`SharedCache::load`]).
    SingleFlight,
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cache-aside" => Ok(Self::CacheAside),
            "single-flight" => Ok(Self::SingleFlight),
            other => Err(format!(
                "--pattern {other}: expected cache-aside or single-flight"
            )),
        }
    }
}

/// Checks a value a cache returned for `key`.
fn checked(name: &str, key: u64, value: u64) -> Result<(), String> {
    if value == value_of(key) {
        Ok(())
    } else {
        Err(format!("{name}: key {key} read value {value:#x}"))
    }
}

/// The value stored for `key`: distinct per key, so a mixed-up read is caught.
pub fn value_of(key: u64) -> u64 {
    key.rotate_left(17) ^ 0xA5A5_A5A5_A5A5_A5A5
}

/// Nanoseconds a load takes (`--load-ns`), for every cache alike.
static LOAD_NANOS: AtomicU64 = AtomicU64::new(0);

/// Makes every later load take `nanos` nanoseconds, as a backing store would.
pub fn set_load_nanos(nanos: u64) {
    LOAD_NANOS.store(nanos, Ordering::Relaxed);
}

/// A miss's load of `key`: its value, after the load's latency. The wait spins rather than
/// sleeps: a sleep lasts at least the scheduler's tick, and gives the core away.
fn load(key: u64) -> u64 {
    load_taking(key, LOAD_NANOS.load(Ordering::Relaxed))
}

fn load_taking(key: u64, nanos: u64) -> u64 {
    if nanos != 0 {
        let start = Instant::now();
        while start.elapsed() < Duration::from_nanos(nanos) {
            std::hint::spin_loop();
        }
    }
    value_of(key)
}

/// Read-through: read with `get`, check the value, and on a miss `insert` it.
fn read_through(
    name: &str,
    key: u64,
    get: impl FnOnce() -> Option<u64>,
    insert: impl FnOnce(u64) -> Result<(), String>,
) -> Result<bool, String> {
    match get() {
        Some(value) if value == value_of(key) => Ok(true),
        Some(value) => Err(format!("{name}: key {key} read value {value:#x}")),
        None => insert(load(key)).map(|()| false),
    }
}

struct Larder(larder::Cache<u64, u64>);
struct Moka(moka::sync::Cache<u64, u64>);
/// moka held to its capacity: it applies writes and evicts in batches, so between batches
/// it holds more entries than its capacity (on small caches, many times more).
struct MokaBounded(moka::sync::Cache<u64, u64>);
struct Quick(quick_cache::sync::Cache<u64, u64>);
/// quick_cache under a byte budget (its weighter is part of its type).
struct QuickBytes(quick_cache::sync::Cache<u64, u64, Charged>);

/// quick_cache's weighter in byte mode: what [`Weights::charged`] says.
#[derive(Clone)]
struct Charged(Weights);

impl quick_cache::Weighter<u64, u64> for Charged {
    fn weight(&self, key: &u64, _: &u64) -> u64 {
        self.0.charged(*key)
    }
}
/// stretto, charged each entry's cost as [`Weights::charged`] says.
struct Stretto(stretto::Cache<u64, u64>, Weights);

impl SharedCache for Larder {
    fn name(&self) -> &'static str {
        "larder"
    }
    fn access(&self, key: u64) -> Result<bool, String> {
        read_through(
            self.name(),
            key,
            || self.0.get(&key),
            |value| match self.0.insert(key, value) {
                // Heavier than the whole byte budget: not cached, as the peers drop it.
                Err(error) if matches!(error.kind, larder::InsertErrorKind::TooHeavy { .. }) => {
                    Ok(())
                }
                result => result.map_err(|e| e.to_string()),
            },
        )
    }
    fn load(&self, key: u64) -> Result<bool, String> {
        let mut loaded = false;
        let value = self.0.get_or_insert_with(key, || {
            loaded = true;
            load(key)
        });
        checked(self.name(), key, value).map(|()| !loaded)
    }
}

/// moka's single-flight call; `then` runs after a load this call made.
fn moka_get_with(
    cache: &moka::sync::Cache<u64, u64>,
    name: &str,
    key: u64,
    then: impl FnOnce(),
) -> Result<bool, String> {
    let mut loaded = false;
    let value = cache.get_with(key, || {
        loaded = true;
        load(key)
    });
    if loaded {
        then();
    }
    checked(name, key, value).map(|()| !loaded)
}

/// Adapters for caches whose `get` returns the value and whose `insert` cannot fail;
/// `$load` is their single-flight call, given the adapter and the key.
macro_rules! infallible_adapter {
    ($adapter:ident, $name:literal, $load:expr) => {
        impl SharedCache for $adapter {
            fn name(&self) -> &'static str {
                $name
            }
            fn access(&self, key: u64) -> Result<bool, String> {
                read_through(
                    self.name(),
                    key,
                    || self.0.get(&key),
                    |value| {
                        self.0.insert(key, value);
                        Ok(())
                    },
                )
            }
            fn load(&self, key: u64) -> Result<bool, String> {
                $load(self, key)
            }
        }
    };
}

infallible_adapter!(Moka, "moka", |moka: &Moka, key| moka_get_with(
    &moka.0,
    moka.name(),
    key,
    || {}
));
infallible_adapter!(Quick, "quick_cache", |quick: &Quick, key| {
    quick_get_or_insert(&quick.0, quick.name(), key)
});
infallible_adapter!(QuickBytes, "quick_cache", |quick: &QuickBytes, key| {
    quick_get_or_insert(&quick.0, quick.name(), key)
});

/// quick_cache's single-flight call, whatever its weighter.
fn quick_get_or_insert<W: quick_cache::Weighter<u64, u64> + Clone>(
    cache: &quick_cache::sync::Cache<u64, u64, W>,
    name: &str,
    key: u64,
) -> Result<bool, String> {
    let mut loaded = false;
    let value = cache.get_or_insert_with(&key, || {
        loaded = true;
        Ok::<u64, std::convert::Infallible>(load(key))
    });
    let Ok(value) = value;
    checked(name, key, value).map(|()| !loaded)
}

impl SharedCache for MokaBounded {
    fn name(&self) -> &'static str {
        "moka_bounded"
    }
    fn access(&self, key: u64) -> Result<bool, String> {
        read_through(
            self.name(),
            key,
            || self.0.get(&key),
            |value| {
                self.0.insert(key, value);
                // Apply the insert and its eviction now, as a cache bounded at every
                // moment would.
                self.0.run_pending_tasks();
                Ok(())
            },
        )
    }
    fn load(&self, key: u64) -> Result<bool, String> {
        moka_get_with(&self.0, self.name(), key, || self.0.run_pending_tasks())
    }
}

impl SharedCache for Stretto {
    fn name(&self) -> &'static str {
        "stretto"
    }
    fn access(&self, key: u64) -> Result<bool, String> {
        let get = || self.0.get(&key).map(|value| *value.value());
        // Inserts are buffered and applied later unless waited for; as its users run it.
        read_through(self.name(), key, get, |value| {
            let cost = i64::try_from(self.1.charged(key)).unwrap_or(i64::MAX);
            self.0.insert(key, value, cost);
            Ok(())
        })
    }
}

/// The real caches' names, in table order.
pub const NAMES: [&str; 5] = ["larder", "moka", "moka_bounded", "quick_cache", "stretto"];

/// The real cache called `name` (one of [`NAMES`]), holding at most `capacity` entries in
/// count mode, or `budget` bytes as `weights` charges them in byte mode (see
/// `weights.rs`); `None` for any other name. Only that cache is built: the others'
/// allocations (stretto's counters grow with the capacity) and threads (stretto runs one
/// per cache) would cost every replay, and fail it at a capacity only they cannot allocate.
pub fn one(
    name: &str,
    capacity: usize,
    weights: Weights,
    budget: u64,
) -> Option<Box<dyn SharedCache>> {
    let entries = u64::try_from(capacity).unwrap_or(u64::MAX);
    // moka's weigher returns a u32: a larger charge saturates (sizes here stay far below).
    let moka_bytes = || {
        moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(move |key: &u64, _: &u64| {
                u32::try_from(weights.charged(*key)).unwrap_or(u32::MAX)
            })
            .build()
    };
    let cache: Box<dyn SharedCache> = match (name, weights.in_bytes()) {
        ("larder", false) => Box::new(Larder(
            larder::Cache::builder()
                .max_entries(entries)
                .build()
                .unwrap_or_else(|e| panic!("larder at {capacity} entries: {e}")),
        )),
        ("larder", true) => Box::new(Larder(
            larder::Cache::builder()
                .max_bytes(budget)
                .weigher(move |key: &u64, _: &u64| weights.of(*key))
                .build()
                .unwrap_or_else(|e| panic!("larder at {budget} bytes: {e}")),
        )),
        ("moka", false) => Box::new(Moka(moka::sync::Cache::new(entries))),
        ("moka", true) => Box::new(Moka(moka_bytes())),
        ("moka_bounded", false) => Box::new(MokaBounded(moka::sync::Cache::new(entries))),
        ("moka_bounded", true) => Box::new(MokaBounded(moka_bytes())),
        ("quick_cache", false) => Box::new(Quick(quick_cache::sync::Cache::new(capacity))),
        ("quick_cache", true) => Box::new(QuickBytes(quick_cache::sync::Cache::with_weighter(
            capacity,
            budget,
            Charged(weights),
        ))),
        ("stretto", in_bytes) => {
            // Ten counters per entry, as stretto's documentation advises; saturating, as
            // the cost limit is, so a huge capacity asks too much rather than wraps.
            let counters = capacity.saturating_mul(10);
            let cost = i64::try_from(budget).unwrap_or(i64::MAX);
            let stretto = stretto::Cache::new(counters, cost).expect("valid stretto settings");
            Box::new(Stretto(
                stretto,
                if in_bytes { weights } else { Weights::Unit },
            ))
        }
        _ => return None,
    };
    Some(cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_name_builds_its_own_cache_and_no_other() {
        for name in NAMES {
            assert_eq!(
                one(name, 10, Weights::Unit, 10).map(|c| c.name()),
                Some(name)
            );
        }
        assert!(one("lru", 10, Weights::Unit, 10).is_none());
        // A capacity whose stretto (10 counters an entry) could not be allocated: the
        // peers that allocate as they fill build without building it. (larder refuses
        // capacities above 2^33 itself.)
        for name in ["moka", "moka_bounded", "quick_cache"] {
            let cache = one(name, usize::MAX / 8, Weights::Unit, u64::MAX / 8).unwrap();
            assert_eq!(cache.access(3), Ok(false), "{name}");
            assert_eq!(cache.access(3), Ok(true), "{name}");
        }
    }

    #[test]
    fn in_byte_mode_a_cache_holds_about_its_budget_of_entries() {
        // Ten entries' budget at 1,000 bytes each; thirty keys, then thirty again.
        let weights = Weights::Fixed(1_000);
        let budget = weights.budget(10, 1_000.0);
        for name in ["larder", "moka_bounded", "quick_cache"] {
            let cache = one(name, 10, weights, budget).unwrap();
            for key in 0..30 {
                assert_eq!(cache.access(key), Ok(false), "{name}");
            }
            let hits = (0..30).filter(|&key| cache.access(key) == Ok(true)).count();
            assert!(hits <= 12, "{name}: {hits} of 30 keys still held");
        }
        // A key heavier than the whole budget is not cached, and is no error.
        let cache = one("larder", 1, Weights::Fixed(1_000_000), 1_000).unwrap();
        assert_eq!(cache.access(1), Ok(false));
        assert_eq!(cache.access(1), Ok(false));
    }

    #[test]
    fn a_load_returns_the_keys_value_no_sooner_than_its_latency() {
        let start = Instant::now();
        assert_eq!(load_taking(5, 2_000_000), value_of(5));
        assert!(start.elapsed() >= Duration::from_millis(2));
        assert_eq!(load_taking(6, 0), value_of(6));
    }

    #[test]
    fn patterns_parse_by_name() {
        assert_eq!("cache-aside".parse(), Ok(Pattern::CacheAside));
        assert_eq!("single-flight".parse(), Ok(Pattern::SingleFlight));
        assert!("read-through".parse::<Pattern>().is_err());
    }

    /// Under single-flight, threads that ask for one missing key at once run one load
    /// between them, and every later call is a hit. (Stretto has no such call.)
    #[test]
    fn single_flight_loads_a_key_once_however_many_threads_ask() {
        for name in NAMES.into_iter().filter(|&n| n != "stretto") {
            let cache = one(name, 1_000, Weights::Unit, 1_000).unwrap();
            for key in 0..20 {
                let loads = AtomicUsize::new(0);
                std::thread::scope(|scope| {
                    for _ in 0..4 {
                        scope.spawn(|| {
                            let hit = cache.load(key).expect("the stored value");
                            loads.fetch_add(usize::from(!hit), Ordering::Relaxed);
                        });
                    }
                });
                assert_eq!(loads.into_inner(), 1, "{} key {key}", cache.name());
                assert_eq!(cache.load(key), Ok(true), "{}", cache.name());
            }
        }
    }
}
