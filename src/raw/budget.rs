//! The global weight budget shared by all shards.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

/// How much weight the cache may hold and how much it holds now.
///
/// An insert settles what it adds and what leaves its shard on the shared counter once, as
/// its critical section ends (see [`Pending`]), so in steady state, where an insert evicts
/// about its own weight, the counter's cache line is read but not written: a shared line
/// written by every insert was two atomic read-modify-writes per new key, and the line
/// moving between cores with every write from two threads. While inserts are in flight the
/// counter may differ from the shards' sum by their weights (the documented overshoot); at
/// rest it is their sum.
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

    /// Starts accounting for one insert's critical section: see [`Pending`].
    pub(crate) fn pending(&self) -> Pending<'_> {
        Pending {
            budget: self,
            added: 0,
            removed: 0,
        }
    }

    #[inline]
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
    #[inline]
    pub(crate) fn is_over(&self) -> bool {
        self.weight.load(Ordering::Relaxed) > self.limit
    }
}

/// The weight one insert adds and removes under its shard lock, settled on the shared
/// counter in one write (none when they cancel) when dropped, which also happens if the
/// insert unwinds, so the counter never loses track of a published entry.
#[derive(Debug)]
#[must_use = "dropping it settles the weight at once"]
pub(crate) struct Pending<'a> {
    budget: &'a Budget,
    added: u64,
    removed: u64,
}

impl Pending<'_> {
    /// An entry of `weight` came in (or a replacement's new weight).
    pub(crate) fn add(&mut self, weight: u64) {
        self.added += weight;
    }

    /// An entry of `weight` left (or a replacement's old weight).
    pub(crate) fn remove(&mut self, weight: u64) {
        self.removed += weight;
    }

    /// Whether the cache would hold more than its limit once this is settled. Never while
    /// this adds no net weight (a rewrite at the same weight, a new key that has evicted one
    /// of its own): whatever else holds the cache over its limit then is other inserts in
    /// flight, each of which evicts for itself, and the shared counter is not even read.
    #[inline]
    pub(crate) fn is_over(&self) -> bool {
        if self.added <= self.removed {
            return false;
        }
        let weight = self.budget.weight().saturating_add(self.added);
        weight > self.budget.limit.saturating_add(self.removed)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.added > self.removed {
            let grown = self.added - self.removed;
            self.budget.weight.fetch_add(grown, Ordering::Relaxed);
        } else {
            self.budget.release(self.removed - self.added);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_weight_settles_once_and_counts_for_is_over() {
        let budget = Budget::new(10, 1);
        let mut first = budget.pending();
        first.add(8);
        assert!(!first.is_over());
        first.add(4);
        assert!(first.is_over(), "8 + 4 > 10 before anything is settled");
        first.remove(3);
        assert!(!first.is_over());
        assert_eq!(budget.weight(), 0, "nothing settled yet");
        drop(first);
        assert_eq!(budget.weight(), 9);
        let mut second = budget.pending();
        second.add(1);
        second.remove(1);
        drop(second);
        assert_eq!(budget.weight(), 9, "cancelled out");
        let mut third = budget.pending();
        third.remove(5);
        drop(third);
        assert_eq!(budget.weight(), 4);
        // Another insert in flight holds the cache over its limit; one adding nothing net
        // leaves that to it.
        let mut in_flight = budget.pending();
        in_flight.add(8);
        drop(in_flight);
        let mut rewrite = budget.pending();
        rewrite.add(2);
        rewrite.remove(2);
        assert!(!rewrite.is_over(), "12 > 10, but not through this one");
        rewrite.add(1);
        assert!(rewrite.is_over());
    }
}
