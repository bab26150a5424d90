//! One cached key-value pair as readers see it.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::sync::{AtomicU8, Guard, Ordering, Owned, Shared};

/// Saturation point of [`Entry::record_access`]: two bits of frequency are enough for CLOCK
/// to tell "touched once" from "hot", and saturating early means a hot entry stops writing
/// its cache line after a few reads.
pub(crate) const ACCESS_MAX: u8 = 3;

/// Expiry time meaning "never": the read path skips the clock entirely for such entries.
pub(crate) const NEVER: u64 = u64::MAX;

/// A published key-value pair.
///
/// Immutable once published except for `access`: a write of the same key publishes a new
/// `Entry` and retires this one through the epoch collector, so a reader holding a guard can
/// clone `value` without any lock.
///
/// Aligned to 8 so the table can keep three hash bits in each entry pointer's low bits, on
/// 32-bit targets too.
#[derive(Debug)]
#[repr(align(8))]
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    /// The full hash of `key`, so probes and table rebuilds never call the user's hasher.
    pub(crate) hash: u64,
    /// Clock time (ns) at which the entry stops being readable; [`NEVER`] for no TTL.
    pub(crate) expires_at: u64,
    /// Index of this entry's record in its shard's slab, policy and wheel.
    pub(crate) id: u32,
    /// Reads since the CLOCK hand last passed, saturating at [`ACCESS_MAX`]. Lossy on purpose:
    /// racing readers may lose an increment, which costs a little precision and no lock.
    access: AtomicU8,
}

impl<K, V> Entry<K, V> {
    pub(crate) fn new(key: K, value: V, hash: u64, expires_at: u64) -> Self {
        Self {
            key,
            value,
            hash,
            expires_at,
            id: u32::MAX,
            access: AtomicU8::new(0),
        }
    }

    /// True once `now` has reached the expiry time.
    #[inline]
    pub(crate) fn is_expired_at(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    /// Notes a read. Loads first so a saturated (hot) entry is never written again.
    #[inline]
    pub(crate) fn record_access(&self) {
        let seen = self.access.load(Ordering::Relaxed);
        if seen < ACCESS_MAX {
            self.access.store(seen + 1, Ordering::Relaxed);
        }
    }

    /// Returns the reads since the last call and starts counting afresh (CLOCK's sweep).
    /// A load and a store rather than a swap: the count is lossy anyway, and a read racing
    /// the sweep may be forgotten at no cost to correctness.
    pub(crate) fn take_access(&self) -> u8 {
        let reads = self.access.load(Ordering::Relaxed);
        if reads != 0 {
            self.access.store(0, Ordering::Relaxed);
        }
        reads
    }

    /// Reads recorded since the CLOCK hand last passed, without resetting them.
    pub(crate) fn pending_reads(&self) -> u8 {
        self.access.load(Ordering::Relaxed)
    }

    /// Carries the read history of the entry this one replaces.
    pub(crate) fn inherit_access(&self, previous: &Self) {
        self.access
            .store(previous.access.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Drops an entry larder owns, containing a panic from the key's or value's `Drop`.
///
/// Unchecked, such a panic would unwind through the epoch collector (which runs deferred
/// drops on whichever thread collects, inside some unrelated cache call, possibly of another
/// cache) or out of `Cache::drop` with the remaining entries leaked. The entry's memory is
/// freed either way; the panic has been reported by the panic hook and goes no further.
pub(crate) fn drop_contained<K, V>(entry: Owned<Entry<K, V>>) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(entry)));
}

/// Hands an entry that is no longer reachable from the table to the epoch collector, which
/// drops it (contained, see [`drop_contained`]) once every reader pinned now has unpinned.
///
/// # Safety
/// `entry` must be unreachable for new readers (unlinked or replaced in the table) and be
/// retired only once. The drop may run on any thread, so `K` and `V` must be `Send` (the
/// public `Cache` requires `Send + Sync` of both).
pub(crate) unsafe fn retire_entry<K, V>(guard: &Guard, entry: Shared<'_, Entry<K, V>>) {
    // SAFETY: the caller guarantees the entry is unreachable and retired once; the collector
    // runs the closure only after every guard pinned before this call (which may still hold
    // references to the entry) is dropped, so taking ownership then is exclusive.
    unsafe { guard.defer_unchecked(move || drop_contained(entry.into_owned())) }
}
