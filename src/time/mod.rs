//! Time for TTLs: the [`Clock`] trait, its default, a manual clock for tests, and the wheel.

pub(crate) mod wheel;

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// A monotonic source of time for expiry, in nanoseconds since an arbitrary origin.
///
/// larder reads the clock only for entries that have a TTL and on writes, so the default
/// [`MonotonicClock`] (`Instant`, a vDSO call on Linux) costs nothing on TTL-free caches.
/// A clock that stops makes entries live longer; a clock that jumps forward expires them
/// early. Neither corrupts the cache. A clock must not go backwards by more than it has
/// already advanced (values are compared, never subtracted below zero). One that does go
/// back corrupts nothing either, and reads never return an entry past its expiry by the
/// clock's reading, but the expiry wheel keeps its highest reading: entries that fall due
/// while the clock stands below it are reaped (counted as expirations, handed to the
/// eviction listener) only once the clock passes that reading again, or evicted before.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time in nanoseconds.
    fn now_nanos(&self) -> u64;
}

/// The default clock: [`Instant`] measured from the clock's creation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        duration_to_nanos(self.origin.elapsed())
    }
}

/// Whole nanoseconds in `duration`, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_to_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A clock that moves only when told to, for deterministic TTL tests.
///
/// Clones share one time, so a test keeps a clone and advances the cache's clock.
///
/// ```
/// use std::time::Duration;
/// use larder::{Cache, ManualClock};
///
/// let clock = ManualClock::new();
/// let cache = Cache::<u32, &str>::builder()
///     .max_entries(10)
///     .clock(clock.clone())
///     .build()
///     .unwrap();
/// cache.insert_with_ttl(1, "one", Duration::from_secs(5)).unwrap();
/// clock.advance(Duration::from_secs(4));
/// assert_eq!(cache.get(&1), Some("one"));
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(cache.get(&1), None);
/// ```
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[cfg(any(test, feature = "test-util"))]
impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = duration_to_nanos(by);
        let _ = self.now.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |now| Some(now.saturating_add(by)),
        );
    }

    /// Sets the time to `nanos`, which may be earlier than now (to test a clock that jumps).
    pub fn set_nanos(&self, nanos: u64) {
        self.now.store(nanos, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
}
