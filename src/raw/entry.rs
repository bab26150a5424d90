//! One cached key-value pair as readers see it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::sync::{AtomicU32, Ordering};

/// Saturation point of an entry's read count: two bits of frequency are enough for CLOCK to
/// tell "touched once" from "hot", and saturating early means a hot entry stops writing its
/// cache line after a few reads.
pub(crate) const ACCESS_MAX: u8 = 3;

/// Expiry time meaning "never": the read path skips the clock entirely for such entries.
pub(crate) const NEVER: u64 = u64::MAX;

/// Bits of `Entry::id_reads` holding the id; the two bits above hold the read count.
const ID_BITS: u32 = 30;
const ID_MASK: u32 = (1 << ID_BITS) - 1;
/// Ids a shard can hand out: one per entry it holds (and per id a CLOCK ring has not
/// released yet). 29 bits, not the 30 this word has room for: the rings keep a 3-bit tag
/// beside each id (`policy::clock`).
pub(crate) const MAX_ID: u32 = (1 << 29) - 1;

/// The part of a key's 64-bit hash an entry keeps: the low half, which places it in its
/// shard's table and keys it in the frequency sketch. (The top bits pick the shard.)
#[inline]
pub(crate) fn short_hash(hash: u64) -> u32 {
    hash as u32
}

/// A published key-value pair.
///
/// Immutable once published except for its read count: a write of the same key publishes a
/// new `Entry` and retires this one through the epoch collector, so a reader holding a guard
/// can clone `value` without any lock. With `u64` keys and values it is 32 bytes.
#[derive(Debug)]
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    /// Clock time (ns) at which the entry stops being readable; [`NEVER`] for no TTL.
    pub(crate) expires_at: u64,
    /// [`short_hash`] of `key`, so probes, table rebuilds and the policy never call the
    /// user's hasher again.
    pub(crate) hash: u32,
    /// The entry's id in its shard (low [`ID_BITS`] bits), fixed before publication, and its
    /// reads since the CLOCK hand last passed (top two bits), saturating at [`ACCESS_MAX`].
    /// One word for both keeps the entry at 32 bytes for `u64` pairs. The count is lossy on
    /// purpose: racing readers may lose an increment, which costs a little precision and no
    /// lock. Every store writes back the id bits it loaded, and those never change after
    /// publication, so a racing store can lose a read but never corrupt the id.
    id_reads: AtomicU32,
}

impl<K, V> Entry<K, V> {
    /// An unpublished entry; `hash` is the key's full hash. Its id is set by the shard.
    pub(crate) fn new(key: K, value: V, hash: u64, expires_at: u64) -> Self {
        Self {
            key,
            value,
            expires_at,
            hash: short_hash(hash),
            id_reads: AtomicU32::new(ID_MASK),
        }
    }

    /// The entry's id in its shard's slab, policy and wheel.
    #[inline]
    pub(crate) fn id(&self) -> u32 {
        self.id_reads.load(Ordering::Relaxed) & ID_MASK
    }

    /// Sets the id, keeping the read count. Only before publication: afterwards readers
    /// write the word too.
    pub(crate) fn set_id(&mut self, id: u32) {
        debug_assert!(id <= MAX_ID);
        let reads = self.id_reads.load(Ordering::Relaxed) & !ID_MASK;
        self.id_reads.store(reads | id, Ordering::Relaxed);
    }

    /// True once `now` has reached the expiry time; never for an entry without one (even
    /// at `now == u64::MAX`, which equals `NEVER`).
    #[inline]
    pub(crate) fn is_expired_at(&self, now: u64) -> bool {
        self.expires_at != NEVER && now >= self.expires_at
    }

    /// Notes a read. Loads first so a saturated (hot) entry is never written again.
    #[inline]
    pub(crate) fn record_access(&self) {
        let seen = self.id_reads.load(Ordering::Relaxed);
        if seen >> ID_BITS < u32::from(ACCESS_MAX) {
            self.id_reads
                .store(seen + (1 << ID_BITS), Ordering::Relaxed);
        }
    }

    /// Returns the reads since the last call and starts counting afresh (CLOCK's sweep).
    /// A load and a store rather than a swap: the count is lossy anyway, and a read racing
    /// the sweep may be forgotten at no cost to correctness.
    pub(crate) fn take_access(&self) -> u8 {
        let seen = self.id_reads.load(Ordering::Relaxed);
        let reads = (seen >> ID_BITS) as u8;
        if reads != 0 {
            self.id_reads.store(seen & ID_MASK, Ordering::Relaxed);
        }
        reads
    }

    /// Reads recorded since the CLOCK hand last passed, without resetting them.
    pub(crate) fn pending_reads(&self) -> u8 {
        (self.id_reads.load(Ordering::Relaxed) >> ID_BITS) as u8
    }

    /// Carries the read history of the entry this one replaces, and its id.
    pub(crate) fn inherit(&mut self, previous: &Self) {
        let word = previous.id_reads.load(Ordering::Relaxed);
        self.id_reads.store(word, Ordering::Relaxed);
    }
}

/// Drops an entry's key and value in place, keeping its memory (a cell of the shard's
/// chunks), containing a panic from the key's or value's `Drop`.
///
/// Unchecked, such a panic would unwind through the epoch collector (which runs deferred
/// drops on whichever thread collects, inside some unrelated cache call, possibly of another
/// cache) or out of `Cache::drop` with the remaining entries leaked. The panic has been
/// reported by the panic hook and goes no further.
///
/// # Safety
/// `entry` must point to a live entry that nothing else will drop or read again; afterwards
/// its memory holds no key or value.
pub(crate) unsafe fn drop_in_place_contained<K, V>(entry: NonNull<Entry<K, V>>) {
    // SAFETY: the caller's contract: the entry is live and this is its only drop.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        std::ptr::drop_in_place(entry.as_ptr())
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_pairs_take_32_bytes() {
        assert_eq!(std::mem::size_of::<Entry<u64, u64>>(), 32);
    }

    #[test]
    fn reads_saturate_and_never_touch_the_id() {
        let mut entry = Entry::new(1u64, 2u64, 0xABCD_0123_4567_89EF, NEVER);
        entry.set_id(MAX_ID);
        for _ in 0..10 {
            entry.record_access();
        }
        assert_eq!((entry.pending_reads(), entry.id()), (ACCESS_MAX, MAX_ID));
        assert_eq!(entry.take_access(), ACCESS_MAX);
        assert_eq!((entry.pending_reads(), entry.id()), (0, MAX_ID));
        entry.record_access();
        let mut next = Entry::new(1u64, 3u64, 0xABCD_0123_4567_89EF, NEVER);
        next.inherit(&entry);
        assert_eq!((next.pending_reads(), next.id()), (1, MAX_ID));
        assert_eq!(next.hash, 0x4567_89EF);
    }
}
