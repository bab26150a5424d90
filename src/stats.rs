//! Always-on counters, striped per thread so a hit costs a plain load and store.
//!
//! These are statistics, not part of any concurrency protocol, so they use std atomics even
//! under loom (modelling them would only slow the models down).

use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

/// A point-in-time snapshot of a cache's counters.
///
/// Counters are summed across stripes without a lock, so a snapshot taken while other
/// threads work may be a few operations stale; at rest the figures add up exactly: every
/// insert of a new key ends as a live entry, an eviction, an expiration or a removal, so
/// `inserts == entries + evictions + expirations + removals` (`clear` counts as removals;
/// `updates` replace a value without starting a new entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing, or only an expired entry.
    pub misses: u64,
    /// Inserts of a key that was not present.
    pub inserts: u64,
    /// Inserts over a present key (the old value was replaced).
    pub updates: u64,
    /// Entries taken out by `remove` or `clear`.
    pub removals: u64,
    /// Entries evicted to stay within the budget, rejected candidates included.
    pub evictions: u64,
    /// Evictions of a newly admitted entry that lost TinyLFU's frequency duel.
    pub admission_rejections: u64,
    /// Entries removed because their TTL ran out.
    pub expirations: u64,
    /// Live entries.
    pub entries: u64,
    /// Sum of live entries' weights, larder's overhead included in `max_bytes` mode.
    pub weighted_size: u64,
    /// Loader runs of `get_or_insert_with` and its relatives (each failure included).
    pub loads: u64,
    /// Callers of those methods served by another caller's load instead of running their
    /// own: the stampedes single-flight avoided.
    pub loads_joined: u64,
}

impl Stats {
    /// Hits over reads, 0.0 when there were no reads.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// What one stripe counts.
#[derive(Debug, Default)]
pub(crate) struct Stripe {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) inserts: AtomicU64,
    pub(crate) updates: AtomicU64,
    pub(crate) removals: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) admission_rejections: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) loads_joined: AtomicU64,
    /// New keys the ghost recognised (see `Policy::on_insert`); for the window's climber,
    /// not reported in [`Stats`].
    pub(crate) returning: AtomicU64,
}

/// Picks one counter of a stripe.
pub(crate) type Pick = fn(&Stripe) -> &AtomicU64;

/// Stripes owned by one live thread each: the owner adds with a plain load and store (no
/// locked instruction), which is exact because no one else writes there.
const OWNED_STRIPES: usize = 64;

/// Stripes shared, with atomic adds, by threads beyond the first `OWNED_STRIPES` alive.
const SHARED_STRIPES: usize = 8;

/// The counters of one cache.
#[derive(Debug)]
pub(crate) struct Counters {
    stripes: Box<[CachePadded<Stripe>]>,
}

/// Stripe numbers of threads that exited, for reuse, so a long-lived process that spawns
/// many short threads keeps getting owned stripes.
static FREE_STRIPES: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// This thread's stripe number, unique among live threads, returned on thread exit.
struct StripeNumber(usize);

impl StripeNumber {
    fn take() -> Self {
        let reused = FREE_STRIPES.lock().ok().and_then(|mut free| free.pop());
        Self(reused.unwrap_or_else(|| NEXT_STRIPE.fetch_add(1, AcqRel)))
    }
}

impl Drop for StripeNumber {
    fn drop(&mut self) {
        if let Ok(mut free) = FREE_STRIPES.lock() {
            free.push(self.0);
        }
    }
}

thread_local! {
    static STRIPE: StripeNumber = StripeNumber::take();
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..OWNED_STRIPES + SHARED_STRIPES)
                .map(|_| CachePadded::default())
                .collect(),
        }
    }

    /// Adds `n` (often zero, then nothing happens) to the counter `pick` selects, in this
    /// thread's stripe.
    #[inline]
    pub(crate) fn add(&self, pick: Pick, n: u64) {
        if n != 0 {
            self.add_each([(pick, n)]);
        }
    }

    /// Adds each `(counter, n)` pair's `n` to the counter in this thread's stripe, looking
    /// the stripe up once for all of them (a write settles up to seven counters at once). In
    /// an owned stripe every counter is added to, zeros included: a plain load and store to
    /// a line only this thread writes costs less than a branch per counter.
    #[inline]
    pub(crate) fn add_each<const N: usize>(&self, adds: [(Pick, u64); N]) {
        // During thread teardown the stripe number may be gone: count in a shared stripe.
        let number = STRIPE.try_with(|stripe| stripe.0).unwrap_or(usize::MAX);
        if number < OWNED_STRIPES {
            let stripe = &self.stripes[number];
            for (pick, n) in adds {
                let counter = pick(stripe);
                counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
            }
        } else {
            let stripe = &self.stripes[OWNED_STRIPES + number % SHARED_STRIPES];
            for (pick, n) in adds {
                if n != 0 {
                    pick(stripe).fetch_add(n, Relaxed);
                }
            }
        }
    }

    /// Sums the stripes; the caller fills `entries` and `weighted_size`.
    ///
    /// Only owned stripes some thread has had are read, with the shared ones: the
    /// hit-ratio sampler takes a snapshot every few hundred writes, and reading all 72
    /// stripes (two cache lines each) cost 0.13 L1 misses per operation of a one-thread
    /// insert-only run (`examples/op_cost.rs` under cachegrind). A stripe number is handed
    /// out before its thread counts anything, and a thread joined (or otherwise synchronised
    /// with) has its number visible here, so figures at rest still add up exactly.
    pub(crate) fn snapshot(&self) -> Stats {
        let mut stats = Stats::default();
        for stripe in self.in_use() {
            stats.hits += stripe.hits.load(Relaxed);
            stats.misses += stripe.misses.load(Relaxed);
            stats.inserts += stripe.inserts.load(Relaxed);
            stats.updates += stripe.updates.load(Relaxed);
            stats.removals += stripe.removals.load(Relaxed);
            stats.evictions += stripe.evictions.load(Relaxed);
            stats.admission_rejections += stripe.admission_rejections.load(Relaxed);
            stats.expirations += stripe.expirations.load(Relaxed);
            stats.loads += stripe.loads.load(Relaxed);
            stats.loads_joined += stripe.loads_joined.load(Relaxed);
        }
        stats
    }

    /// The sum of one counter over the stripes in use (see [`Counters::snapshot`]).
    pub(crate) fn sum(&self, pick: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.in_use().map(|stripe| pick(stripe).load(Relaxed)).sum()
    }

    /// The owned stripes some thread has had, and the shared ones.
    fn in_use(&self) -> impl Iterator<Item = &CachePadded<Stripe>> {
        let owned_in_use = NEXT_STRIPE.load(Acquire).min(OWNED_STRIPES);
        self.stripes[..owned_in_use]
            .iter()
            .chain(&self.stripes[OWNED_STRIPES..])
    }
}
