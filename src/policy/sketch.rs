//! TinyLFU frequency estimation: a 4-bit count-min sketch fronted by a doorkeeper bloom filter.
//!
//! Both live in one table of 64-byte blocks, and an item's four counters and its three
//! doorkeeper bits lie in the same block: four words of counters (four rows of 16, a word
//! each) and four words of doorkeeper. An `increment` or `frequency` therefore touches one
//! cache line, where four independent rows and three independent probes would touch up to
//! seven, and where a separate doorkeeper table (the layout before session 7) touched two.
//! Once the sketch outgrows L2 the insert path is bound by those misses. The price is a
//! little accuracy: items that share a block share their collisions in all four rows and in
//! the doorkeeper, so the errors are no longer independent.

/// Spreads the hash before picking a block.
const BLOCK_MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Re-mixes the block hash into the positions of the four counters within the block.
const COUNTER_MUL: u64 = 0xC2B2_AE3D_27D4_EB4F;
/// Spreads the hash into the doorkeeper's probe positions: a multiplier unrelated to
/// `BLOCK_MUL`, so items that share a block are unlikely to share probe bits too.
const DOOR_MUL: u64 = 0x1656_67B1_9E37_79F9;
/// Clears the bit that a one-bit right shift moves into the top of each lower nibble.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;
const MAX_COUNT: u64 = 15;
const DOOR_PROBES: usize = 3;
const WORDS_PER_BLOCK: usize = 8;
/// Words of a block holding counters; the rest hold the doorkeeper.
///
/// Four, one per row, since session 18: an item's counter in each row is then four bits of
/// its hash, a shift where rows of 24 counters across six words took a multiply and a
/// division per row, and the doorkeeper has twice the bits. A new key's write (an increment
/// and the duel's two estimates) took 1,466 instructions against 1,539
/// (`examples/op_cost.rs` new-only under cachegrind, 100,000 entries), with the same
/// misses, and the 113 rows of the real traces did as well: +0.496 against the best of
/// moka held to its capacity, quick_cache and LRU over 8 runs, +0.496 over 16 runs of the
/// six words the same day (sets of 4 runs ranged from +0.467 to +0.529 either way); the
/// synthetic workloads 56.68% against 56.61%.
const COUNTER_WORDS: usize = 4;
const DOOR_WORDS: usize = WORDS_PER_BLOCK - COUNTER_WORDS;
const DOOR_BITS: u64 = (DOOR_WORDS * 64) as u64;
const ROWS: usize = 4;
/// Counters of one row within a block: each row has its own, so an item's four counters are
/// always four different ones.
const ROW_COUNTERS: u64 = (COUNTER_WORDS * 16 / ROWS) as u64;
/// Expected entries one block serves: 8 counters and 32 doorkeeper bits, 8 bytes, per
/// entry (12 and 16 before session 18; see [`COUNTER_WORDS`]). The separate tables before
/// gave each entry 16 counters and 16 bits in 10 bytes. Measured with 12 and 16, over the
/// 113 rows of the real traces (larder against the best of moka held to its
/// capacity, quick_cache and LRU; 5 runs each, sd of a run's mean 0.02) the mean gap was
/// +0.044 with the separate tables, +0.043 with one block per 6 entries (10.7 bytes) and
/// +0.021 with one per 8: 2.7 bytes an entry for about 0.02 points.
const ENTRIES_PER_BLOCK: usize = 8;
/// A sketch sized for fewer entries than this has a table sized for this many: a small
/// cache still gets a table wide enough to rank what it sees. At 16, a 10-entry cache
/// forgot every count after 160 accesses, in a 16-word table; with a floor of 512 for both
/// the table and the period, over the 113 rows of the real traces (larder vs the best of
/// moka held to its capacity, quick_cache and LRU) the mean gap went from -0.052 points
/// (5 runs) to +0.072 (8 runs) and rows within 0.5 from 71.2 to 81.0: ps at 15 +1.6,
/// multi1 at 13 +1.1, sprite at 10 +1.0, web12 at 14 +1.1 (cpp at 61 -2.2). 256 gave
/// +0.067, 1,024 +0.076 (3 runs). Both halves matter: the longer period alone gave -0.046,
/// the wider table alone -0.127 (3 runs each). The cost is a fixed 4 KiB per shard. The
/// period has its own floor since session 29, [`SHARD_PERIOD_FLOOR`].
const MIN_ENTRIES: usize = 512;
/// A shard's sketch's period is at least [`PERIOD_PER_ENTRY`] accesses per this many
/// entries, half the table's floor: a shard of under 256 entries remembers more than ten
/// accesses per entry, one of 256 to 511 exactly ten. With the period's floor at the
/// table's 512 (sessions 6 to 28), cpp at 61 entries, whose hot set moves, kept stale
/// counts and hit 61.7% where moka held to its capacity hits 64.0%. Over the 113 rows
/// (larder vs the best of moka held to its capacity, quick_cache and LRU, session 28's
/// peer run, sets of 4 runs): +0.503 to +0.512 with 512, +0.549 to +0.563 with 256 (4 sets
/// each; rows within 0.5, 98 to 101 either way); cpp at 61 +1.7, multi3 at 373 +1.0, OLTP
/// at 187 -0.7. 128 gave +0.536, 192 +0.555 to +0.563, 320 +0.541 (1 to 3 sets); at 256 a
/// one-shard cache's window sample floor of 5,120 accesses (see `raw::MIN_WINDOW_SAMPLE`)
/// spans two periods. Down to ten accesses per entry of any cache (no floor; one set
/// against one) cpp at 61 gains 2.6 but multi1 at 13, ps at 15 and sprite at 35 lose 2.9,
/// 2.8 and 2.4: +0.327 (session 29; session 19 measured the same). In byte mode a shard
/// expects its budget's entries at the smallest plausible weight (the overhead alone, 84 B
/// for `u64` keys and values), so of the 99 rows of `--weights varied` those under about 17
/// entries move: a 10-entry row's shard expects about 290 entries, and its period falls
/// from 5,120 to about 2,900 (loop at 10 -1.5, cs at 10 and 14 -0.6 and -0.4, zigzag at 10
/// -0.6, 2_pools at 10 +1.0); -0.05 on the mean (5 sets each). The miniatures keep the
/// table's floor, [`MINIATURE_PERIOD_FLOOR`].
pub(crate) const SHARD_PERIOD_FLOOR: usize = 256;
/// The floor of a miniature's period (see `policy::miniature`): a miniature holds at most
/// 128 sampled keys, so this floor sets the history of every cache's miniatures, not only
/// small caches'. At [`SHARD_PERIOD_FLOOR`] too, the 113 rows gained +0.028 where the
/// shards alone gained +0.047 (4 sets against 4), zigzag at 500 and 1,001 entries about
/// 0.8 points less (rows that move by a point between sets of one build).
pub(crate) const MINIATURE_PERIOD_FLOOR: usize = MIN_ENTRIES;
/// Increments between agings per entry the sketch is sized for.
pub(crate) const PERIOD_PER_ENTRY: usize = 10;
/// A miniature's shortest period between agings, in increments; two of a small shard's.
pub(crate) const MINIATURE_MIN_PERIOD: usize = PERIOD_PER_ENTRY * MINIATURE_PERIOD_FLOOR;
/// Keeps block indexes within the 32 well-mixed bits `spread` provides and bounds memory on
/// absurd input.
const MAX_ENTRIES: usize = 1 << 30;

const _: () = assert!(COUNTER_WORDS * 16 % ROWS == 0 && ROW_COUNTERS <= 256);
const _: () = assert!(DOOR_BITS.is_power_of_two());
const _: () = assert!(std::mem::size_of::<Block>() == 64 && std::mem::align_of::<Block>() == 64);

/// One cache line. The alignment makes every element of a `Vec<Block>` start on a line
/// boundary, so whatever one item touches costs a single line fill.
#[derive(Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; WORDS_PER_BLOCK]);

/// Where one item's counters and doorkeeper bits lie: its block, the (word, bit shift) of its
/// counter in each row, and the (word, mask) of each doorkeeper probe.
struct Place {
    block: usize,
    counters: [(usize, u32); ROWS],
    door: [(usize, u64); DOOR_PROBES],
}

/// Approximate per-item access counts over a sliding window of recent accesses.
#[derive(Clone)]
pub(crate) struct FrequencySketch {
    /// Per block, 16 four-bit counters in each of the first [`COUNTER_WORDS`] words, and
    /// doorkeeper bits in the rest.
    table: Vec<Block>,
    sized_for: usize,
    sample_size: usize,
    samples: usize,
}

impl FrequencySketch {
    /// A shard's sketch, sized for about `expected_entries` distinct hot items (a table for
    /// at least [`MIN_ENTRIES`], a period for at least [`SHARD_PERIOD_FLOOR`]). Shards build
    /// theirs through `Policy::new`.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn with_capacity(expected_entries: usize) -> Self {
        Self::with_period_floor(expected_entries, SHARD_PERIOD_FLOOR)
    }

    /// Sized for about `expected_entries` distinct hot items, its period for at least
    /// `period_floor` entries (at most [`MIN_ENTRIES`], the table's floor).
    pub(crate) fn with_period_floor(expected_entries: usize, period_floor: usize) -> Self {
        debug_assert!(period_floor <= MIN_ENTRIES);
        let n = expected_entries.clamp(MIN_ENTRIES, MAX_ENTRIES);
        // Any number of blocks, since a block is picked by scaling the hash to the count
        // (`scale`). Rounding up to a power of two, as the sketch once did, gave a shard of
        // 75,000 entries 131,072 words.
        let blocks = n.div_ceil(ENTRIES_PER_BLOCK);
        // Unlike `vec![0u64; n]` this zeroes eagerly (std only uses calloc for small
        // alignments): the page faults a lazily zeroed table would take on first touch,
        // moved up front. Lazily zeroed aligned memory would need unsafe code.
        Self {
            table: vec![Block::default(); blocks],
            sized_for: n,
            sample_size: expected_entries
                .clamp(period_floor, MAX_ENTRIES)
                .saturating_mul(PERIOD_PER_ENTRY),
            samples: 0,
        }
    }

    /// Grows (and resets) the sketch if `expected_entries` exceeds what it was sized for.
    /// Growth is geometric (see `crate::growth`: twofold, landing on `ceiling`, the entries
    /// the shard is expected to hold, 0 when unknown), so a shard that grows one entry at a
    /// time resets its sketch O(log n) times, not on every insert.
    #[inline]
    pub(crate) fn ensure_capacity(&mut self, expected_entries: usize, ceiling: usize) {
        // Clamp first, or a request above MAX_ENTRIES would reset the sketch on every call.
        let needed = expected_entries.min(MAX_ENTRIES);
        if needed > self.sized_for {
            self.grow(needed, ceiling);
        }
    }

    /// Out of line: every insert asks, and the answer is nearly always no.
    #[cold]
    fn grow(&mut self, needed: usize, ceiling: usize) {
        // A grown sketch is sized for more than `MIN_ENTRIES`, above either period floor,
        // so its period is ten accesses per entry whichever floor it was built with.
        let grown = crate::growth::grown_capacity(self.sized_for, needed, ceiling);
        debug_assert!(grown > MIN_ENTRIES);
        *self = Self::with_period_floor(grown, MIN_ENTRIES);
    }

    /// Accesses between agings.
    #[cfg(test)]
    pub(crate) fn period(&self) -> usize {
        self.sample_size
    }

    /// Records one access of the item whose well-mixed 64-bit hash is `hash`.
    ///
    /// Every call counts toward the sample, including those that only set the doorkeeper, as in
    /// the TinyLFU paper: the window is measured in accesses, not in counter increments.
    /// Returns true if this access completed a period and the sketch aged.
    pub(crate) fn increment(&mut self, hash: u64) -> bool {
        self.increment_by(hash, 1)
    }

    /// Records `accesses` accesses of one item: what as many calls of [`increment`] do, with
    /// the item's place computed once (the CLOCK hands feed an entry's reads, up to three, in
    /// one go), except that a period ending among them ages the sketch after all of them
    /// rather than between two. Returns true if the sketch aged.
    ///
    /// [`increment`]: FrequencySketch::increment
    pub(crate) fn increment_by(&mut self, hash: u64, accesses: u8) -> bool {
        if accesses == 0 {
            return false;
        }
        let place = self.place(hash);
        let words = &mut self.table[place.block].0;
        let mut seen = true;
        for (w, mask) in place.door {
            seen &= words[w] & mask != 0;
            words[w] |= mask;
        }
        // An item the doorkeeper has not seen spends its first access setting the doorkeeper.
        let raise = u64::from(accesses) - u64::from(!seen);
        if raise != 0 {
            // Conservative update (raise only the minimal counters) was measured against this
            // and changed error by under 2%: the doorkeeper already keeps one-hit items out.
            for (w, shift) in place.counters {
                let count = (words[w] >> shift) & 0xF;
                let raised = (count + raise).min(MAX_COUNT);
                words[w] += (raised - count) << shift;
            }
        }
        self.samples += usize::from(accesses);
        if self.samples >= self.sample_size {
            self.age();
            return true;
        }
        false
    }

    /// Starts fetching the block `hash`'s counters lie in (see [`crate::sync::prefetch`]),
    /// for an increment or estimate that follows shortly.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        // `place` is inlined, and what it computes beyond the block is unused and dropped.
        crate::sync::prefetch(self.table.as_ptr().wrapping_add(self.place(hash).block));
    }

    /// Estimated frequency in `0..=16`: the smallest of the four counters, plus one if the
    /// doorkeeper has seen the item in the current period.
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        self.frequency_this_period(hash).0
    }

    /// The estimate of [`FrequencySketch::frequency`], with whether the doorkeeper has seen
    /// the item since the sketch last aged (its share of the estimate).
    #[inline]
    pub(crate) fn frequency_this_period(&self, hash: u64) -> (u8, bool) {
        let place = self.place(hash);
        let words = &self.table[place.block].0;
        let min = place
            .counters
            .iter()
            .map(|&(w, s)| (words[w] >> s) & 0xF)
            .min()
            .unwrap_or(0);
        let door = place.door.iter().all(|&(w, mask)| words[w] & mask != 0);
        (min as u8 + u8::from(door), door)
    }

    /// Halves every counter, clears the doorkeeper and halves the sample counter.
    ///
    /// The sample counter is halved (as Caffeine does) rather than zeroed because the halved
    /// counters still carry about half a period of history; starting the next period half full
    /// keeps the effective window near `sample_size` accesses instead of stretching it.
    pub(crate) fn age(&mut self) {
        for block in &mut self.table {
            let (counters, door) = block.0.split_at_mut(COUNTER_WORDS);
            for word in counters {
                *word = (*word >> 1) & HALVE_MASK;
            }
            door.fill(0);
        }
        self.samples /= 2;
    }

    /// Bytes held by the table.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.table.capacity() * std::mem::size_of::<Block>()
    }

    /// Where the item with `hash` lies in the table.
    #[inline]
    fn place(&self, hash: u64) -> Place {
        let block_hash = spread(hash, BLOCK_MUL);
        let block = scale(block_hash, self.table.len());
        // Items that share a block agree in the top bits of `block_hash`'s low half; the top
        // half of this product depends on all 64 bits, so their counter positions are still
        // unrelated. One byte per row, scaled to the row's counters.
        let counter_hash = (block_hash.wrapping_mul(COUNTER_MUL) >> 32) as u32;
        let counters = [0, 1, 2, 3].map(|row: u64| {
            let byte = u64::from((counter_hash >> (8 * row)) as u8);
            let counter = row * ROW_COUNTERS + ((byte * ROW_COUNTERS) >> 8);
            ((counter / 16) as usize, ((counter % 16) * 4) as u32)
        });
        // Double hashing over the doorkeeper's bits; the odd stride keeps the probes on
        // distinct bits (the bit count is a power of two).
        let door_hash = spread(hash, DOOR_MUL) >> 32;
        let stride = (door_hash >> 16) | 1;
        let mut bit = door_hash;
        let door = [(); DOOR_PROBES].map(|()| {
            let b = bit % DOOR_BITS;
            bit = bit.wrapping_add(stride);
            (COUNTER_WORDS + (b / 64) as usize, 1 << (b % 64))
        });
        Place {
            block,
            counters,
            door,
        }
    }
}

/// A block index below `len` from the low 32 bits of a spread hash (multiply and shift), so
/// the block count need not be a power of two.
#[inline]
fn scale(hash: u64, len: usize) -> usize {
    ((u64::from(hash as u32) * len as u64) >> 32) as usize
}

/// Multiplies by an odd constant and folds the high half down, a bijection of `hash`. The
/// product's low bits depend only on the hash's low bits; after the fold the low 32 bits, which
/// pick the block, depend on all 64, so a hash with weak low bits still spreads over the blocks.
#[inline]
fn spread(hash: u64, mul: u64) -> u64 {
    let h = hash.wrapping_mul(mul);
    h ^ (h >> 32)
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
    fn increments_at_once_count_as_many_increments() {
        let mut one_by_one = FrequencySketch::with_capacity(1024);
        let mut at_once = one_by_one.clone();
        for i in 0..3_000u64 {
            let h = splitmix64(i % 700);
            let accesses = (i % 4) as u8;
            for _ in 0..accesses {
                one_by_one.increment(h);
            }
            at_once.increment_by(h, accesses);
        }
        // 4,500 accesses: fewer than a period (10,240), so the two never age apart.
        assert_eq!(one_by_one.samples, at_once.samples);
        assert!(one_by_one
            .table
            .iter()
            .zip(&at_once.table)
            .all(|(a, b)| a.0 == b.0));
    }

    #[test]
    fn first_hit_only_sets_doorkeeper_then_counts_rise_and_saturate_at_16() {
        let mut s = FrequencySketch::with_capacity(1024);
        let h = splitmix64(7);
        assert_eq!(s.frequency(h), 0);
        s.increment(h);
        assert_eq!(s.frequency(h), 1);
        assert!(s
            .table
            .iter()
            .all(|b| b.0[..COUNTER_WORDS] == [0; COUNTER_WORDS]));
        for expected in 2..=16u8 {
            s.increment(h);
            assert_eq!(s.frequency(h), expected);
        }
        (0..100).for_each(|_| {
            s.increment(h);
        });
        assert_eq!(s.frequency(h), 16);
    }

    #[test]
    fn unseen_items_estimate_near_zero_at_moderate_load() {
        let mut s = FrequencySketch::with_capacity(512);
        (0..5 * 512).for_each(|i| {
            s.increment(splitmix64(i % 512));
        });
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
        (0..11).for_each(|_| {
            s.increment(hot);
        });
        s.increment(once);
        assert_eq!((s.frequency(hot), s.frequency(once)), (11, 1));
        s.age();
        assert_eq!((s.frequency(hot), s.frequency(once)), (5, 0));
        assert_eq!(s.samples, 6);
        // Saturated neighbours must not leak their low bit into the counter below them.
        s.table.fill(Block([u64::MAX; WORDS_PER_BLOCK]));
        s.age();
        assert!((0..100).all(|i| s.frequency(splitmix64(i)) == 7));
    }

    #[test]
    fn sample_size_triggers_aging() {
        let mut s = FrequencySketch::with_capacity(16);
        let period = s.sample_size;
        assert_eq!(period, 10 * SHARD_PERIOD_FLOOR);
        let hot = splitmix64(0);
        (0..16).for_each(|_| {
            s.increment(hot);
        });
        (1..period as u64 - 16).for_each(|i| {
            s.increment(splitmix64(i));
        });
        assert_eq!((s.samples, s.frequency(hot)), (period - 1, 16));
        s.increment(splitmix64(1 << 40));
        // Counters were saturated at 15 and the doorkeeper bit is gone.
        assert_eq!((s.samples, s.frequency(hot)), (period / 2, 7));
    }

    #[test]
    fn a_small_shard_ages_sooner_than_a_miniature_on_the_same_table() {
        let shard = FrequencySketch::with_capacity(61);
        let miniature = FrequencySketch::with_period_floor(61, MINIATURE_PERIOD_FLOOR);
        assert_eq!(shard.table.len(), blocks(MIN_ENTRIES));
        assert_eq!(miniature.table.len(), blocks(MIN_ENTRIES));
        assert_eq!((shard.sample_size, miniature.sample_size), (2_560, 5_120));
        // Between the period's floor and the table's, ten accesses per entry.
        assert_eq!(FrequencySketch::with_capacity(300).sample_size, 3_000);
        assert_eq!(FrequencySketch::with_capacity(4_000).sample_size, 40_000);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "statistical: meaningful only at full size, and no unsafe"
    )]
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

    /// Blocks for `entries`: one per [`ENTRIES_PER_BLOCK`], in whole blocks.
    fn blocks(entries: usize) -> usize {
        entries.div_ceil(ENTRIES_PER_BLOCK)
    }

    #[test]
    fn ensure_capacity_grows_and_resets_only_when_larger() {
        let mut s = FrequencySketch::with_capacity(10);
        assert_eq!(s.table.len(), blocks(MIN_ENTRIES));
        let before = s.heap_bytes();
        assert_eq!(before, blocks(MIN_ENTRIES) * 64);
        let h = splitmix64(3);
        s.increment(h);
        s.ensure_capacity(MIN_ENTRIES, 0);
        assert_eq!((s.table.len(), s.frequency(h)), (blocks(MIN_ENTRIES), 1));
        // Not a power of two: a block per eight entries, in whole blocks.
        s.ensure_capacity(2000, 0);
        assert_eq!((s.table.len(), s.sample_size), (blocks(2000), 20_000));
        assert_eq!(s.frequency(h), 0);
        assert!(s.heap_bytes() > before);
        assert_eq!(s.heap_bytes(), blocks(2000) * 64);
        // Within a doubling of the shard's expected entries (plus slack), it lands there.
        s.ensure_capacity(2001, 3000);
        assert_eq!((s.sized_for, s.table.len()), (3216, blocks(3216)));
    }

    #[test]
    fn blocks_are_cache_line_aligned() {
        for cap in [1, 16, 100, 4096, 1 << 16] {
            let s = FrequencySketch::with_capacity(cap);
            assert_eq!(s.table.as_ptr() as usize % 64, 0);
        }
    }

    #[test]
    fn an_item_touches_four_counters_and_three_door_bits_of_one_block() {
        let nonzero: fn(&[Block]) -> Vec<usize> = |blocks| {
            (0..blocks.len())
                .filter(|&i| blocks[i].0 != [0; WORDS_PER_BLOCK])
                .collect()
        };
        for i in 0..if cfg!(miri) { 5 } else { 500 } {
            let mut s = FrequencySketch::with_capacity(4096);
            let h = splitmix64(i);
            s.increment(h);
            s.increment(h);
            let touched = nonzero(&s.table);
            assert_eq!(touched.len(), 1);
            let (counters, door) = s.table[touched[0]].0.split_at(COUNTER_WORDS);
            let bits: u32 = door.iter().map(|w| w.count_ones()).sum();
            assert_eq!(bits, DOOR_PROBES as u32);
            // Four distinct counters, one in each row, each at 1.
            let nibbles: Vec<u64> = (0..COUNTER_WORDS as u64 * 16)
                .filter(|&c| (counters[(c / 16) as usize] >> (c % 16 * 4)) & 0xF != 0)
                .collect();
            assert_eq!(nibbles.len(), ROWS, "counters {nibbles:?}");
            for (row, &c) in nibbles.iter().enumerate() {
                assert_eq!(c / ROW_COUNTERS, row as u64);
                assert_eq!((counters[(c / 16) as usize] >> (c % 16 * 4)) & 0xF, 1);
            }
            assert_eq!(s.frequency(h), 2);
        }
    }

    #[test]
    fn items_spread_over_all_blocks() {
        // Catches a block index drawn from too few hash bits, which would leave blocks unused.
        let mut s = FrequencySketch::with_capacity(1024);
        let blocks = s.table.len();
        for i in 0..16 * blocks as u64 {
            let h = splitmix64(i);
            s.increment(h);
            s.increment(h);
        }
        assert!(s
            .table
            .iter()
            .all(|b| b.0[..COUNTER_WORDS] != [0; COUNTER_WORDS]));
        assert!(s
            .table
            .iter()
            .all(|b| b.0[COUNTER_WORDS..] != [0; DOOR_WORDS]));
    }

    #[test]
    fn growing_one_entry_at_a_time_resets_rarely() {
        let mut s = FrequencySketch::with_capacity(16);
        let mut resets = 0;
        let top = if cfg!(miri) { 5_000 } else { 100_000 };
        for n in 17..top {
            let before = s.sized_for;
            s.ensure_capacity(n, 0);
            resets += usize::from(s.sized_for != before);
        }
        assert!(resets <= 14, "{resets} resets");
    }
}
