//! Ghost: fingerprints of keys that recently lost their admission duel.
//!
//! TinyLFU judges a candidate by its frequency over the sketch's whole period, so when the
//! hot set moves, the new keys lose their duels to residents that were frequent a while ago,
//! and keep losing for as long as it takes them to outcount them. A key that comes back soon
//! after it was rejected is the cheapest sign of that: the policy admits it at its next duel.
//! Kept small (a sixteenth of the shard's entries) so that only a quick return counts: a loop
//! or a scan over more keys than the cache holds brings its keys back after many rejections,
//! when the ghost has forgotten them, and TinyLFU's duel keeps its resident part as before.
//!
//! A direct-mapped table of 16-bit fingerprints: a new fingerprint overwrites whatever shared
//! its slot, so the ghost forgets at random rather than oldest first, for one line per access
//! and no links.

/// Spreads the key hash over slot index and fingerprint (the hash may carry only 32 bits).
const MUL: u64 = 0xD6E8_FEB8_6659_FD93;

/// Shard entries per ghost slot. Measured over the 113 rows of the real traces (larder vs
/// the best of moka held to its capacity, quick_cache and LRU): a sixteenth, with at least 4
/// slots, took the mean gap from -0.25 to -0.17 points (5 runs). Other sizes, 5 runs each
/// with a 2% climber tolerance: a thirty-second -0.21, a sixteenth -0.16, an eighth -0.19, a
/// quarter -0.22 (4 slots at least only for the sixteenth, 16 for the others: tiny caches,
/// whose ghost then outsized them, lost up to 1.7 points); a whole shard's worth (3 runs, no
/// tolerance) -0.67, with LIRS zigzag at 1,001 entries 15 points down: it brings rejected
/// keys back within a cache's length.
const ENTRIES_PER_SLOT: usize = 16;
const MIN_SLOTS: usize = 4;

/// Fingerprints of recently rejected keys; 0 marks an empty slot.
#[derive(Clone)]
pub(crate) struct Ghost {
    slots: Vec<u16>,
    mask: usize,
}

impl Ghost {
    /// A ghost for a shard of about `expected_entries` entries.
    pub(crate) fn with_capacity(expected_entries: usize) -> Self {
        let n = (expected_entries / ENTRIES_PER_SLOT)
            .max(MIN_SLOTS)
            .next_power_of_two();
        Self {
            slots: vec![0; n],
            mask: n - 1,
        }
    }

    /// Grows (and empties) the ghost if the shard outgrew it, at least twofold, as the
    /// sketch does.
    #[inline]
    pub(crate) fn ensure_capacity(&mut self, entries: usize) {
        if entries / ENTRIES_PER_SLOT > self.slots.len() {
            self.grow(entries);
        }
    }

    #[cold]
    fn grow(&mut self, entries: usize) {
        *self = Self::with_capacity(entries.max(2 * self.slots.len() * ENTRIES_PER_SLOT));
    }

    /// Remembers a rejected key.
    pub(crate) fn insert(&mut self, hash: u64) {
        let (slot, fingerprint) = self.place(hash);
        self.slots[slot] = fingerprint;
    }

    /// Whether the key was rejected recently; forgets it, so it is recognised once.
    pub(crate) fn take(&mut self, hash: u64) -> bool {
        let (slot, fingerprint) = self.place(hash);
        let found = self.slots[slot] == fingerprint;
        if found {
            self.slots[slot] = 0;
        }
        found
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u16>()
    }

    /// The key's slot and its nonzero fingerprint: the product's low half (folded) picks
    /// the slot, its top 16 bits, which depend on every bit of the hash, the fingerprint.
    fn place(&self, hash: u64) -> (usize, u16) {
        let h = hash.wrapping_mul(MUL);
        let slot = (h ^ (h >> 32)) as usize & self.mask;
        (slot, (h >> 48) as u16 | 1)
    }
}

// Manual so that a policy's derived `Debug` prints a summary, not every slot.
impl std::fmt::Debug for Ghost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ghost")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
    }

    #[test]
    fn a_rejected_key_is_recognised_once() {
        let mut ghost = Ghost::with_capacity(1024);
        ghost.insert(hash(7));
        assert!(ghost.take(hash(7)));
        assert!(!ghost.take(hash(7)));
    }

    #[test]
    fn unseen_keys_are_rarely_recognised() {
        let mut ghost = Ghost::with_capacity(1 << 14);
        for i in 0..1024 {
            ghost.insert(hash(i));
        }
        let false_hits = (1 << 20..(1 << 20) + 100_000)
            .filter(|&i| ghost.take(hash(i)))
            .count();
        assert!(false_hits < 20, "{false_hits} false hits in 100,000");
    }

    #[test]
    fn holds_about_a_sixteenth_of_the_entries() {
        let mut ghost = Ghost::with_capacity(1 << 14);
        for i in 0..10_000 {
            ghost.insert(hash(i));
        }
        let remembered = (0..10_000).filter(|&i| ghost.take(hash(i))).count();
        assert!(
            (700..=1024).contains(&remembered),
            "{remembered} of 1024 slots"
        );
    }

    #[test]
    fn grows_with_the_shard() {
        let mut ghost = Ghost::with_capacity(16);
        assert_eq!(ghost.slots.len(), MIN_SLOTS);
        ghost.ensure_capacity(79);
        assert_eq!(ghost.slots.len(), MIN_SLOTS);
        ghost.ensure_capacity(80);
        assert_eq!(ghost.slots.len(), 8);
        ghost.ensure_capacity(100_000);
        assert_eq!(ghost.slots.len(), 8192);
    }
}
