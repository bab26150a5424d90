//! The real caches under test (larder and its peers) behind one interface that several
//! threads can share, each checked on every hit for returning the value stored for its key.

/// A real, thread-safe cache replayed as read-through: read, and on a miss insert.
pub trait SharedCache: Sync {
    /// Name in tables and plots.
    fn name(&self) -> &'static str;
    /// Reads `key`, inserting it on a miss. `Ok(true)` on a hit; an error if the hit
    /// returned a value that was never stored for `key` (a broken cache).
    fn access(&self, key: u64) -> Result<bool, String>;
}

/// The value stored for `key`: distinct per key, so a mixed-up read is caught.
pub fn value_of(key: u64) -> u64 {
    key.rotate_left(17) ^ 0xA5A5_A5A5_A5A5_A5A5
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
        None => insert(value_of(key)).map(|()| false),
    }
}

struct Larder(larder::Cache<u64, u64>);
struct Moka(moka::sync::Cache<u64, u64>);
/// moka held to its capacity: it applies writes and evicts in batches, so between batches
/// it holds more entries than its capacity (on small caches, many times more).
struct MokaBounded(moka::sync::Cache<u64, u64>);
struct Quick(quick_cache::sync::Cache<u64, u64>);
struct Stretto(stretto::Cache<u64, u64>);

impl SharedCache for Larder {
    fn name(&self) -> &'static str {
        "larder"
    }
    fn access(&self, key: u64) -> Result<bool, String> {
        read_through(
            self.name(),
            key,
            || self.0.get(&key),
            |value| self.0.insert(key, value).map_err(|e| e.to_string()),
        )
    }
}

/// Adapters for caches whose `get` returns the value and whose `insert` cannot fail.
macro_rules! infallible_adapter {
    ($adapter:ident, $name:literal) => {
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
        }
    };
}

infallible_adapter!(Moka, "moka");
infallible_adapter!(Quick, "quick_cache");

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
}

impl SharedCache for Stretto {
    fn name(&self) -> &'static str {
        "stretto"
    }
    fn access(&self, key: u64) -> Result<bool, String> {
        let get = || self.0.get(&key).map(|value| *value.value());
        // Inserts are buffered and applied later unless waited for; as its users run it.
        read_through(self.name(), key, get, |value| {
            self.0.insert(key, value, 1);
            Ok(())
        })
    }
}

/// Every real cache, each holding at most `capacity` entries.
pub fn all(capacity: usize) -> Vec<Box<dyn SharedCache>> {
    let larder = larder::Cache::builder()
        .max_entries(capacity as u64)
        .build()
        .expect("capacity is at least 1");
    let stretto =
        stretto::Cache::new(capacity * 10, capacity as i64).expect("valid stretto settings");
    vec![
        Box::new(Larder(larder)),
        Box::new(Moka(moka::sync::Cache::new(capacity as u64))),
        Box::new(MokaBounded(moka::sync::Cache::new(capacity as u64))),
        Box::new(Quick(quick_cache::sync::Cache::new(capacity))),
        Box::new(Stretto(stretto)),
    ]
}
