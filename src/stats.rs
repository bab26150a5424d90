//! Always-on counters. Reads count in per-thread stripes, so a hit costs a plain load and
//! store; writes count in their shard ([`WriteTally`]), under the lock they already hold.
//!
//! These are statistics, not part of any concurrency protocol, so they use std atomics even
//! under loom (modelling them would only slow the models down).

use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

use crate::policy::shift::GhostCounts;

/// A point-in-time snapshot of a cache's counters.
///
/// Counters are summed across stripes and shards without a lock, so a snapshot taken while
/// other threads work may be a few operations stale; at rest the figures add up exactly: every
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

/// What one stripe counts: what happens outside any shard's lock.
#[derive(Debug, Default)]
pub(crate) struct Stripe {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) loads_joined: AtomicU64,
}

/// What writes did in one shard.
///
/// Only the shard's lock holder writes these, with a plain load and store: exact, since the
/// lock orders the writers. `stats()` reads them without the lock. Before, a write settled
/// its counts in its thread's stripe after releasing the lock: the stripe's thread-local
/// lookup and seven counters took 42 of an update's 423 instructions
/// (`examples/op_cost.rs` update-only under cachegrind), where the shard's own line is in
/// cache anyway.
#[derive(Debug, Default)]
pub(crate) struct WriteTally {
    pub(crate) inserts: AtomicU64,
    pub(crate) updates: AtomicU64,
    pub(crate) removals: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) admission_rejections: AtomicU64,
    pub(crate) expirations: AtomicU64,
    /// New keys the ghost recognised (see `Policy::on_insert`); for the window's climber,
    /// not reported in [`Stats`].
    pub(crate) returning: AtomicU64,
    /// New keys main's ghost recognised; for the shift detector, not reported.
    pub(crate) recalled: AtomicU64,
}

impl WriteTally {
    /// Adds `n` to `counter`, one of this tally's. Only under the shard's lock.
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// New keys inserted, and those of them each ghost recognised.
    pub(crate) fn ghost_counts(&self) -> GhostCounts {
        GhostCounts {
            inserts: self.inserts.load(Relaxed),
            returning: self.returning.load(Relaxed),
            recalled: self.recalled.load(Relaxed),
        }
    }

    /// Adds this shard's counts to `stats`.
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.inserts += self.inserts.load(Relaxed);
        stats.updates += self.updates.load(Relaxed);
        stats.removals += self.removals.load(Relaxed);
        stats.evictions += self.evictions.load(Relaxed);
        stats.admission_rejections += self.admission_rejections.load(Relaxed);
        stats.expirations += self.expirations.load(Relaxed);
    }
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

    /// Adds `n` to the counter `pick` selects, in this thread's stripe.
    #[inline]
    pub(crate) fn add(&self, pick: Pick, n: u64) {
        // During thread teardown the stripe number may be gone: count in a shared stripe.
        let number = STRIPE.try_with(|stripe| stripe.0).unwrap_or(usize::MAX);
        if number < OWNED_STRIPES {
            let counter = pick(&self.stripes[number]);
            counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
        } else {
            pick(&self.stripes[OWNED_STRIPES + number % SHARED_STRIPES]).fetch_add(n, Relaxed);
        }
    }

    /// Sums the stripes; the caller adds the shards' write counts and fills `entries` and
    /// `weighted_size`.
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
            stats.loads += stripe.loads.load(Relaxed);
            stats.loads_joined += stripe.loads_joined.load(Relaxed);
        }
        stats
    }

    /// The owned stripes some thread has had, and the shared ones.
    fn in_use(&self) -> impl Iterator<Item = &CachePadded<Stripe>> {
        let owned_in_use = NEXT_STRIPE.load(Acquire).min(OWNED_STRIPES);
        self.stripes[..owned_in_use]
            .iter()
            .chain(&self.stripes[OWNED_STRIPES..])
    }
}
