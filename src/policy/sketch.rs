//! TinyLFU frequency estimation: a 4-bit count-min sketch fronted by a doorkeeper bloom filter.
//!
//! The four rows are hashed independently over the whole table, so an item's counters usually
//! sit in four different words. That can touch four cache lines instead of Caffeine's one, but
//! per-shard tables are small and independent rows are what the count-min error bound assumes.

/// Distinct odd multipliers: each row sees an unrelated bijection of the hash, so two items that
/// collide in one row are unlikely to collide in another.
const ROW_MUL: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
];
/// Clears the bit that a one-bit right shift moves into the top of each lower nibble.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;
const MAX_COUNT: u64 = 15;
const DOOR_PROBES: usize = 3;
/// Doorkeeper bits per table word, so at least per expected entry; must divide 64. Under heavy
/// churn a period holds up to 10x that many distinct items and the filter fills: 16 measured
/// about 4x lower estimation error there, for one more byte per entry.
const DOOR_BITS_PER_ENTRY: usize = 16;
const MIN_ENTRIES: usize = 16;
/// Keeps table indexes within the bits the row hash provides and bounds memory on absurd input.
const MAX_ENTRIES: usize = 1 << 30;

/// Approximate per-item access counts over a sliding window of recent accesses.
#[derive(Clone)]
pub(crate) struct FrequencySketch {
    table: Vec<u64>,
    table_mask: usize,
    door: Vec<u64>,
    door_bit_mask: u64,
    sized_for: usize,
    sample_size: usize,
    samples: usize,
}

impl FrequencySketch {
    /// Sized for about `expected_entries` distinct hot items (at least 16).
    pub(crate) fn with_capacity(expected_entries: usize) -> Self {
        let n = expected_entries.clamp(MIN_ENTRIES, MAX_ENTRIES);
        let words = n.next_power_of_two();
        // Divide first: multiplying could overflow a 32-bit usize near MAX_ENTRIES.
        let door_words = words / (64 / DOOR_BITS_PER_ENTRY);
        Self {
            table: vec![0; words],
            table_mask: words - 1,
            door: vec![0; door_words],
            door_bit_mask: (door_words as u64 * 64) - 1,
            sized_for: n,
            sample_size: n.saturating_mul(10),
            samples: 0,
        }
    }

    /// Grows (and resets) the sketch if `expected_entries` exceeds what it was sized for.
    /// Growth is at least twofold, so a shard that grows one entry at a time resets its
    /// sketch O(log n) times, not on every insert.
    pub(crate) fn ensure_capacity(&mut self, expected_entries: usize) {
        // Clamp first, or a request above MAX_ENTRIES would reset the sketch on every call.
        if expected_entries.min(MAX_ENTRIES) > self.sized_for {
            *self = Self::with_capacity(expected_entries.max(self.sized_for.saturating_mul(2)));
        }
    }

    /// Records one access of the item whose well-mixed 64-bit hash is `hash`.
    ///
    /// Every call counts toward the sample, including those that only set the doorkeeper, as in
    /// the TinyLFU paper: the window is measured in accesses, not in counter increments.
    pub(crate) fn increment(&mut self, hash: u64) {
        if self.door_insert(hash) {
            // Conservative update (raise only the minimal counters) was measured against this
            // and changed error by under 2%: the doorkeeper already keeps one-hit items out.
            for (i, shift) in self.slots(hash) {
                if (self.table[i] >> shift) & 0xF < MAX_COUNT {
                    self.table[i] += 1 << shift;
                }
            }
        }
        self.samples += 1;
        if self.samples >= self.sample_size {
            self.age();
        }
    }

    /// Estimated frequency in `0..=16`: the smallest of the four counters, plus one if the
    /// doorkeeper has seen the item in the current period.
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        let min = self
            .slots(hash)
            .iter()
            .map(|&(i, s)| (self.table[i] >> s) & 0xF)
            .min()
            .unwrap_or(0);
        min as u8 + u8::from(self.door_contains(hash))
    }

    /// Halves every counter, clears the doorkeeper and halves the sample counter.
    ///
    /// The sample counter is halved (as Caffeine does) rather than zeroed because the halved
    /// counters still carry about half a period of history; starting the next period half full
    /// keeps the effective window near `sample_size` accesses instead of stretching it.
    pub(crate) fn age(&mut self) {
        for word in &mut self.table {
            *word = (*word >> 1) & HALVE_MASK;
        }
        self.door.fill(0);
        self.samples /= 2;
    }

    /// Bytes held by the counter table and the doorkeeper.
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.table.capacity() + self.door.capacity()) * std::mem::size_of::<u64>()
    }

    /// (word index, bit shift) of the item's counter in each row.
    #[inline]
    fn slots(&self, hash: u64) -> [(usize, u32); 4] {
        ROW_MUL.map(|mul| {
            let h = hash.wrapping_mul(mul);
            // The low product bits depend only on the low hash bits; fold the high half down.
            let h = h ^ (h >> 32);
            ((h as usize) & self.table_mask, ((h >> 60) as u32) << 2)
        })
    }

    /// Double hashing; the odd stride keeps the probes on distinct bits.
    #[inline]
    fn door_probes(&self, hash: u64) -> [(usize, u64); DOOR_PROBES] {
        let stride = (hash >> 32) | 1;
        let mut bit = hash;
        [(); DOOR_PROBES].map(|()| {
            let b = bit & self.door_bit_mask;
            bit = bit.wrapping_add(stride);
            ((b >> 6) as usize, 1 << (b & 63))
        })
    }

    fn door_contains(&self, hash: u64) -> bool {
        self.door_probes(hash)
            .iter()
            .all(|&(i, m)| self.door[i] & m != 0)
    }

    /// Sets the item's bits; returns whether they were all set already.
    fn door_insert(&mut self, hash: u64) -> bool {
        let mut present = true;
        for (i, m) in self.door_probes(hash) {
            present &= self.door[i] & m != 0;
            self.door[i] |= m;
        }
        present
    }
}

// Manual so that a cache's derived `Debug` prints a summary, not thousands of table words.
impl std::fmt::Debug for FrequencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrequencySketch")
            .field("sized_for", &self.sized_for)
            .field("samples", &self.samples)
            .field("sample_size", &self.sample_size)
            .field("heap_bytes", &self.heap_bytes())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splitmix64(i: u64) -> u64 {
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn first_hit_only_sets_doorkeeper_then_counts_rise_and_saturate_at_16() {
        let mut s = FrequencySketch::with_capacity(1024);
        let h = splitmix64(7);
        assert_eq!(s.frequency(h), 0);
        s.increment(h);
        assert_eq!(s.frequency(h), 1);
        assert!(s.table.iter().all(|&w| w == 0));
        for expected in 2..=16u8 {
            s.increment(h);
            assert_eq!(s.frequency(h), expected);
        }
        (0..100).for_each(|_| s.increment(h));
        assert_eq!(s.frequency(h), 16);
    }

    #[test]
    fn unseen_items_estimate_near_zero_at_moderate_load() {
        let mut s = FrequencySketch::with_capacity(512);
        (0..5 * 512).for_each(|i| s.increment(splitmix64(i % 512)));
        let total: u32 = (1 << 40..(1 << 40) + 1000)
            .map(|i| u32::from(s.frequency(splitmix64(i))))
            .sum();
        let mean = f64::from(total) / 1000.0;
        assert!(mean < 0.25, "mean estimate for unseen items {mean}"); // measured 0.03
    }

    #[test]
    fn age_halves_counts_and_clears_doorkeeper() {
        let mut s = FrequencySketch::with_capacity(1024);
        let (hot, once) = (splitmix64(1), splitmix64(2));
        (0..11).for_each(|_| s.increment(hot));
        s.increment(once);
        assert_eq!((s.frequency(hot), s.frequency(once)), (11, 1));
        s.age();
        assert_eq!((s.frequency(hot), s.frequency(once)), (5, 0));
        assert_eq!(s.samples, 6);
        // Saturated neighbours must not leak their low bit into the counter below them.
        s.table.fill(u64::MAX);
        s.age();
        assert!((0..100).all(|i| s.frequency(splitmix64(i)) == 7));
    }

    #[test]
    fn sample_size_triggers_aging() {
        let mut s = FrequencySketch::with_capacity(16);
        assert_eq!(s.sample_size, 160);
        let hot = splitmix64(0);
        (0..16).for_each(|_| s.increment(hot));
        (1..144).for_each(|i| s.increment(splitmix64(i)));
        assert_eq!((s.samples, s.frequency(hot)), (159, 16));
        s.increment(splitmix64(10_000));
        // Counters were saturated at 15 and the doorkeeper bit is gone.
        assert_eq!((s.samples, s.frequency(hot)), (80, 7));
    }

    #[test]
    fn heavy_hitters_rank_above_one_hit_wonders() {
        let mut s = FrequencySketch::with_capacity(256);
        let mut counts = vec![0u32; 4096];
        // Log-uniform keys: P(k) falls off roughly as 1/k, a Zipf-like skew.
        for i in 0..20_000u64 {
            let u = (splitmix64(i) >> 11) as f64 / (1u64 << 53) as f64;
            let key = (4096f64.powf(u) as usize - 1).min(4095);
            counts[key] += 1;
            s.increment(splitmix64(key as u64 + 1_000_000));
        }
        let est = |k: usize| s.frequency(splitmix64(k as u64 + 1_000_000));
        let rare: Vec<u8> = (0..4096).filter(|&k| counts[k] == 1).map(est).collect();
        let rare_mean = rare.iter().map(|&f| f64::from(f)).sum::<f64>() / rare.len() as f64;
        assert!(rare.len() > 100 && rare_mean < 0.5, "rare mean {rare_mean}");
        let heavy: Vec<u8> = (0..8).map(est).collect();
        assert!(heavy.iter().all(|&f| f >= 12), "heavy hitters {heavy:?}");
    }

    #[test]
    fn ensure_capacity_grows_and_resets_only_when_larger() {
        let mut s = FrequencySketch::with_capacity(10);
        let door_words = |words: usize| words * DOOR_BITS_PER_ENTRY / 64;
        assert_eq!((s.table.len(), s.door.len()), (16, door_words(16)));
        let before = s.heap_bytes();
        let h = splitmix64(3);
        s.increment(h);
        s.ensure_capacity(16);
        assert_eq!((s.table.len(), s.frequency(h)), (16, 1));
        s.ensure_capacity(1000);
        assert_eq!(
            (s.table.len(), s.door.len(), s.sample_size),
            (1024, door_words(1024), 10_000)
        );
        assert_eq!(s.frequency(h), 0);
        assert!(s.heap_bytes() > before);
    }

    #[test]
    fn growing_one_entry_at_a_time_resets_rarely() {
        let mut s = FrequencySketch::with_capacity(16);
        let mut resets = 0;
        for n in 17..100_000 {
            let before = s.sized_for;
            s.ensure_capacity(n);
            resets += usize::from(s.sized_for != before);
        }
        assert!(resets <= 14, "{resets} resets");
    }
}
