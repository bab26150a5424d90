//! Always-on counters, striped per thread so a hit costs one uncontended atomic add.
//!
//! These are statistics, not part of any concurrency protocol, so they use std atomics even
//! under loom (modelling them would only slow the models down).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

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
}

/// The counters of one cache.
#[derive(Debug)]
pub(crate) struct Counters {
    stripes: Box<[CachePadded<Stripe>]>,
}

/// Hands each thread a stripe number once; threads then keep to their own stripe.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Counters {
    pub(crate) fn new(stripes: usize) -> Self {
        let stripes = stripes.max(1).next_power_of_two();
        Self {
            stripes: (0..stripes).map(|_| CachePadded::default()).collect(),
        }
    }

    /// This thread's stripe.
    #[inline]
    pub(crate) fn local(&self) -> &Stripe {
        let index = STRIPE.with(|stripe| {
            let mut index = stripe.get();
            if index == usize::MAX {
                index = NEXT_STRIPE.fetch_add(1, Relaxed);
                stripe.set(index);
            }
            index
        });
        &self.stripes[index & (self.stripes.len() - 1)]
    }

    /// Sums the stripes; the caller fills `entries` and `weighted_size`.
    pub(crate) fn snapshot(&self) -> Stats {
        let mut stats = Stats::default();
        for stripe in self.stripes.iter() {
            stats.hits += stripe.hits.load(Relaxed);
            stats.misses += stripe.misses.load(Relaxed);
            stats.inserts += stripe.inserts.load(Relaxed);
            stats.updates += stripe.updates.load(Relaxed);
            stats.removals += stripe.removals.load(Relaxed);
            stats.evictions += stripe.evictions.load(Relaxed);
            stats.admission_rejections += stripe.admission_rejections.load(Relaxed);
            stats.expirations += stripe.expirations.load(Relaxed);
        }
        stats
    }
}
