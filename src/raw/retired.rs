//! Entries a shard has unlinked, handed to the epoch collector in batches.
//!
//! Deferring each entry on its own fills the writing thread's epoch bag one closure per
//! write, and every full bag (64 closures) is copied into a fresh 2 KiB heap node. With
//! glibc that allocation also consolidates the small-chunk bins the freed entries went to.
//! A shard instead gathers what it unlinks under its lock and defers the whole batch as one
//! closure: one bag slot per [`BATCH_LEN`] entries.
//!
//! Batching delays reclamation, so it is bounded: a batch is handed over when it holds
//! [`BATCH_LEN`] entries or a 64th of the shard's capacity in weight, whichever comes first,
//! and `run_pending_tasks` and `clear` hand over what is pending. In byte mode the entries
//! waiting in batches therefore weigh at most about 1/64 of the budget, across all shards.

use std::ptr::NonNull;

use crate::raw::entry::{drop_contained, Entry};
use crate::sync::{Guard, Owned, Shared};

/// Entries per batch.
pub(crate) const BATCH_LEN: usize = 8;

/// Entries unreachable from the table whose readers may still be pinned.
///
/// Owns its entries: dropping a batch drops them, so a batch is either handed to the
/// collector (which drops it once no reader can hold its entries) or dropped with its shard
/// (when no reader can exist).
struct Batch<K, V>(Vec<NonNull<Entry<K, V>>>);

impl<K, V> Drop for Batch<K, V> {
    fn drop(&mut self) {
        for entry in self.0.drain(..) {
            // SAFETY: each pointer came from an `Owned` entry that was then published and
            // unlinked (see `Retired::push`); the batch is its only owner, and it is dropped
            // only when no reader can reach the entry (see the type's documentation).
            drop_contained(unsafe { Owned::from_raw(entry.as_ptr()) });
        }
    }
}

/// A shard's pending batch of retired entries.
pub(crate) struct Retired<K, V> {
    batch: Batch<K, V>,
    weight: u64,
    max_weight: u64,
}

impl<K, V> std::fmt::Debug for Retired<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retired")
            .field("pending", &self.batch.0.len())
            .field("weight", &self.weight)
            .finish()
    }
}

// SAFETY: a `Retired` owns its entries (see `Batch`), so sending it sends them, which is
// sound when keys and values may be sent.
unsafe impl<K: Send, V: Send> Send for Retired<K, V> {}

impl<K, V> Retired<K, V> {
    /// An empty batch for a shard of `capacity` weight.
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            batch: Batch(Vec::new()),
            weight: 0,
            max_weight: (capacity / BATCH_LEN as u64).max(1),
        }
    }

    /// Takes ownership of `entry`, charged at `weight`, and hands the batch to the collector
    /// if it is full.
    ///
    /// # Safety
    /// `entry` must be unreachable for new readers (unlinked or replaced in the table) and
    /// be retired only once. The collector may drop it on any thread, so `K` and `V` must be
    /// `Send` (the public `Cache` requires `Send + Sync` of both).
    pub(crate) unsafe fn push(
        &mut self,
        guard: &Guard,
        entry: Shared<'_, Entry<K, V>>,
        weight: u64,
    ) {
        let entry = NonNull::new(entry.as_raw().cast_mut()).expect("retired entries are non-null");
        self.batch.0.push(entry);
        self.weight = self.weight.saturating_add(weight);
        if self.batch.0.len() >= BATCH_LEN || self.weight >= self.max_weight {
            self.hand_over(guard);
        }
    }

    /// Hands the pending entries to the epoch collector.
    pub(crate) fn hand_over(&mut self, guard: &Guard) {
        if self.batch.0.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Batch(Vec::with_capacity(BATCH_LEN)));
        self.weight = 0;
        // SAFETY: every entry in the batch was unreachable for new readers when pushed
        // (`push`'s contract), so only readers pinned before now can hold one; the collector
        // runs the closure after all of them have unpinned. `K` and `V` are `Send` (`push`'s
        // contract), so dropping them on another thread is sound.
        unsafe { guard.defer_unchecked(move || drop(batch)) };
    }

    /// Bytes of the pending batch's buffer.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.batch.0.capacity() * std::mem::size_of::<NonNull<Entry<K, V>>>()
    }
}
