//! The global weight budget shared by all shards.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

/// How much weight the cache may hold and how much it holds now.
///
/// Writers charge an entry's weight before publishing it and release weight as entries
/// leave, so `weight` may briefly exceed the sum of the shards, never fall below it:
/// eviction errs on the side of the budget.
#[derive(Debug)]
pub(crate) struct Budget {
    /// The most the cache may hold at rest.
    pub(crate) limit: u64,
    /// A shard's fair part of `limit`: a shard above it evicts from itself first.
    pub(crate) share: u64,
    weight: CachePadded<AtomicU64>,
}

impl Budget {
    pub(crate) fn new(limit: u64, shards: usize) -> Self {
        Self {
            limit,
            share: limit.div_ceil(shards as u64),
            weight: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Charges `weight` for an insert about to be published. The charge is released again
    /// if the insert unwinds before [`Charge::keep`] is called once the entry is in.
    pub(crate) fn charge(&self, weight: u64) -> Charge<'_> {
        self.weight.fetch_add(weight, Ordering::Relaxed);
        Charge {
            budget: self,
            weight,
        }
    }

    /// Charges for an entry of weight `old` replaced by one of weight `new`: only the
    /// difference, so an equal weight costs no atomic write.
    pub(crate) fn replace(&self, old: u64, new: u64) {
        if new > old {
            self.weight.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.release(old - new);
        }
    }

    pub(crate) fn release(&self, weight: u64) {
        if weight != 0 {
            self.weight.fetch_sub(weight, Ordering::Relaxed);
        }
    }

    /// The weight held, including inserts in progress: at rest, the sum of the shards.
    pub(crate) fn weight(&self) -> u64 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether the cache holds more than its limit.
    pub(crate) fn is_over(&self) -> bool {
        self.weight.load(Ordering::Relaxed) > self.limit
    }
}

/// A charge on the budget that is released when dropped, unless kept.
#[derive(Debug)]
#[must_use = "a dropped charge is released"]
pub(crate) struct Charge<'a> {
    budget: &'a Budget,
    weight: u64,
}

impl Charge<'_> {
    /// The insert went in: the weight now belongs to its entry.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        self.budget.release(self.weight);
    }
}
