//! Sizes the admission window by replaying a sample of the reads through miniature copies
//! of the cache's own policy, one per candidate window share, and taking the share whose
//! miniature hits most.
//!
//! A small window favours frequency (TinyLFU keeps what is popular over time); a large one
//! favours recency (bursts and shifting hot sets). Which wins depends on the workload.
//! Caffeine finds out by hill climbing: it moves the window, compares the next sample's hit
//! ratio with the last, and keeps going or turns back. larder did the same until session
//! 16, and the climber had two faults no tuning removed (see `docs/history.md`): on traces
//! made of phases most of the difference between two samples is the workload's, not the
//! window's, so the window random-walked; and a short trace or a large cache gives the
//! climber few samples (LIRS zigzag at 1,001 entries five), too few to climb anywhere.
//!
//! The miniatures compare the windows side by side on the *same* reads, so a phase change
//! moves them all and picks none, and one sample is enough to rank them. Each is larder's
//! own policy (`Policy`: the window, the segmented CLOCK main, the sketch and the ghosts),
//! not a textbook W-TinyLFU: session 15's shadows of textbook policies mispredicted larder
//! on ARC's P12. Keys are sampled by hash (spatial sampling, as in SHARDS, Waldspurger et
//! al., FAST 2015, and the miniature simulations of their ATC 2017 paper): a key is in or
//! out for good, so every read of a sampled key reaches the miniatures, and a miniature of
//! the cache's capacity scaled by the sampling rate hits about what the full cache would.
//!
//! Measured with the simulator over the 113 rows of the real traces (larder against the
//! best of moka held to its capacity, quick_cache and LRU; 3 runs each against 4 of the
//! climber's build, which gave +0.301): +0.464 with miniatures of up to 4,096 keys, +0.469
//! with 1,024, +0.455 with 256, **+0.440 with 128** (the bound adopted; at 1,000 entries a
//! write costs 27% more instructions with it, 3.2 times as many with 1,024); three windows
//! (1%, 20%, 95%) +0.416, four +0.446; choosing every fortieth of a sample instead of every
//! sample −0.078 (each change of window costs the cache a transition). The largest gains
//! are the rows the climber never reached: orm-night at 86 entries +4.1, orm-busy at 76
//! +2.3, orm-night at 4,323 +2.1, zigzag at 500 +1.4, web12 at 14 and 69 +1.5 and +1.6.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use super::key_ids::KeyIds;
use super::{Members, Policy};
use crate::raw::entry::ACCESS_MAX;

/// The window shares the miniatures try, in per mille of the capacity.
pub(crate) const WINDOWS_PER_MILLE: [u32; 5] = [10, 50, 200, 500, 950];

/// The window at start: 1% (Caffeine's), the first of [`WINDOWS_PER_MILLE`].
pub(crate) const INITIAL_WINDOW_PER_MILLE: u32 = WINDOWS_PER_MILLE[0];

/// A window share as the cache hands it to its shards: thousandths of a shard's capacity,
/// rounded down, so a shard of fewer than 100 units has no window at 1%; or, until the
/// miniatures first choose, [`WindowShare::STARTING`]: 1% of at least one unit.
///
/// Without a window a new entry duels as soon as it is inserted into a full shard, as in
/// TinyLFU. One unit of a 10-entry cache is a 10% window, not 1%, and frequent keys lost
/// it: on 2_pools at 10 and 50 entries, whose 100 hot keys are read about equally often,
/// larder held one hot key fewer than moka held to its capacity (4.49% and 24.34% against
/// 5.03% and 24.99%; now about 4.97% and 24.83%). The starting window keeps its unit
/// because a window of nothing, taken without evidence, cost the short cs trace up to 1.4
/// points at 10 to 70 entries. A miniature's window keeps one unit where a shard's does
/// (see `WindowChooser::new`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WindowShare(u32);

impl WindowShare {
    /// The flag, beside the thousandths, of a window that keeps at least one unit.
    const AT_LEAST_ONE_UNIT: u32 = 1 << 31;

    /// The window before the miniatures' first choice.
    pub(crate) const STARTING: Self = Self::at_least_one_unit(INITIAL_WINDOW_PER_MILLE);

    /// `per_mille` thousandths (at most 1,000) of the capacity, rounded down.
    pub(crate) const fn exact(per_mille: u32) -> Self {
        assert!(per_mille <= 1000);
        Self(per_mille)
    }

    /// `per_mille` thousandths (at most 1,000) of the capacity, and at least one unit.
    pub(crate) const fn at_least_one_unit(per_mille: u32) -> Self {
        Self(Self::exact(per_mille).0 | Self::AT_LEAST_ONE_UNIT)
    }

    /// The share packed in a `u32`, for the cache's atomic (see [`WindowShare::from_bits`]).
    pub(crate) const fn to_bits(self) -> u32 {
        self.0
    }

    pub(crate) const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The share in thousandths.
    pub(crate) const fn per_mille(self) -> u32 {
        self.0 & !Self::AT_LEAST_ONE_UNIT
    }

    /// The window's units in a shard of `capacity` units.
    pub(crate) fn units(self, capacity: u64) -> u64 {
        let units = (u128::from(capacity) * u128::from(self.per_mille()) / 1000) as u64;
        if self.0 & Self::AT_LEAST_ONE_UNIT != 0 {
            units.max(1)
        } else {
            units
        }
    }
}

/// The largest window: main keeps a twentieth, so frequency still counts. Recency-bound
/// traces want all the window they can get (orm-night at 86 entries hits 37.6% at a fixed
/// 50% window, 43.6% at 80%, 44.7% under LRU).
pub(crate) const CEILING_PER_MILLE: u32 = WINDOWS_PER_MILLE[WINDOWS_PER_MILLE.len() - 1];

/// The most keys a miniature holds; larger caches sample fewer keys.
pub(crate) const MAX_MINIATURE_ENTRIES: u64 = 128;

/// Sampled reads between two drains that each thread keeps (see `Counters::new`): enough
/// that a small cache, where every read is sampled, loses few of them between writes.
pub(crate) const SAMPLED_READS_KEPT: usize = 1024;

/// Each sample's counts weigh this much less at every sample that follows: a window chosen
/// on one sample alone followed the noise (+0.367 over the 113 rows against +0.464 at 0.7
/// and +0.442 at 0.5).
const DECAY: f64 = 0.7;

/// Fewest sampled reads, decayed as the counts are, for the miniatures' hit ratios to
/// count: until then the window stays where it is.
const MIN_SAMPLED_READS: f64 = 256.0;

/// Bits of the hash that pick the sampled keys start here: above the 32 the shard's table
/// and sketch use (`short_hash`), below the top bits that pick the shard.
const SAMPLE_BITS_SHIFT: u32 = 32;

/// The fewest keys [`Sampling::thinner`] leaves a miniature: below, the 1% and 5% windows
/// are both a single entry.
pub(crate) const MIN_THINNED_ENTRIES: usize = 32;

/// Which keys a cache of about `entries` entries samples, and the miniatures' capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampling {
    /// A key is sampled when its hash has these bits clear.
    pub(crate) mask: u64,
    /// A miniature's capacity: `entries` scaled by the sampling rate.
    pub(crate) capacity: usize,
}

impl Sampling {
    /// Every key up to [`MAX_MINIATURE_ENTRIES`] entries, then one in a power of two.
    pub(crate) fn for_entries(entries: u64) -> Self {
        let entries = entries.max(1);
        let mut rate_log2 = 0;
        // The mask has the 32 bits above `SAMPLE_BITS_SHIFT`: a cache of more than 2^39
        // entries (a byte budget near its 2^48 limit) gets larger miniatures instead (until
        // session 21 the mask lost its top bits there and sampled 8 times fewer keys than
        // the miniatures were scaled for).
        while entries >> rate_log2 > MAX_MINIATURE_ENTRIES
            && rate_log2 < u64::BITS - SAMPLE_BITS_SHIFT
        {
            rate_log2 += 1;
        }
        Self {
            mask: ((1u64 << rate_log2) - 1) << SAMPLE_BITS_SHIFT,
            capacity: (entries >> rate_log2).max(1) as usize,
        }
    }

    /// Whether reads of the key with this hash go to the miniatures.
    #[cfg(test)]
    pub(crate) fn samples(&self, hash: u64) -> bool {
        hash & self.mask == 0
    }

    /// Half the keys (a subset of these) in miniatures of half the capacity, for a cache
    /// whose threads read faster than its miniatures replay (see `RawCache`'s sampler):
    /// `None` once that would leave fewer than [`MIN_THINNED_ENTRIES`] keys.
    pub(crate) fn thinner(&self) -> Option<Self> {
        let capacity = self.capacity / 2;
        (capacity >= MIN_THINNED_ENTRIES && self.mask >> 63 == 0).then_some(Self {
            mask: self.mask << 1 | 1 << SAMPLE_BITS_SHIFT,
            capacity,
        })
    }

    /// Back one step towards `full` (this cache's sampling before any [`Sampling::thinner`]):
    /// twice the keys in miniatures of twice the capacity. `None` when this is `full`.
    pub(crate) fn finer(&self, full: Sampling) -> Option<Self> {
        let extra_bits = self.mask.count_ones() - full.mask.count_ones();
        (extra_bits > 0).then(|| Self {
            // The mask is contiguous bits from `SAMPLE_BITS_SHIFT`: drop its highest.
            mask: self.mask >> 1 & self.mask,
            // As `thinner` halves it from `full`, so the steps retrace the same sizes.
            capacity: full.capacity >> (extra_bits - 1),
        })
    }
}

/// A sampled key as the miniatures know it: its hash's low half, independent of the bits
/// that sampled it. The miniatures' policies key their sketches by it, as the shards' do
/// by the same bits.
#[inline]
pub(crate) fn sample_key(hash: u64) -> u32 {
    hash as u32
}

/// The weights of sampled keys' entries as their writes charged them, for the miniatures
/// of a byte-mode cache (count mode needs none: every entry weighs 1).
///
/// A miniature inserts a sampled key when it replays a read that missed, and the read path
/// knows no weight: a miss has no entry, and a hit's entry does not keep its weight (the
/// slab does, under the shard's lock). The writes do know it, and in a read-through cache
/// the write of a missed key comes soon after its read, before the replay, which waits
/// for a later write's drain. So each write of a sampled key leaves its weight here, and
/// the replay looks it up. A small table, direct-mapped by key: a newer key takes an older
/// one's slot, and a key not found is taken to weigh the cache's mean.
///
/// Until session 25 the miniatures weighed every key 1, so in byte mode they modelled a
/// policy other than the cache's once its duel weighed entries (`Policy::admits`). With
/// entries of 16 B to 16 KiB (the simulator's `--weights varied`, 2 runs per row),
/// weighing them moved larder's hits per row by +0.35 points against the best peer.
#[derive(Debug)]
pub(crate) struct SampleWeights {
    /// Each slot `key << 32 | weight`, the weight capped at `u32::MAX`; 0 when empty (a
    /// byte-mode entry weighs at least larder's overhead).
    slots: Box<[AtomicU64]>,
}

/// Slots of [`SampleWeights`]: eight per key a miniature holds at most, so a key written
/// before its read is replayed is seldom pushed out by another.
const SAMPLE_WEIGHT_SLOTS: usize = 8 * MAX_MINIATURE_ENTRIES as usize;

impl SampleWeights {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SAMPLE_WEIGHT_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn slot(&self, key: u32) -> &AtomicU64 {
        // Sample keys are hash bits already: their low bits spread over the slots.
        &self.slots[key as usize % SAMPLE_WEIGHT_SLOTS]
    }

    /// Records that the sampled key `key`'s entry was written at `weight`.
    pub(crate) fn record(&self, key: u32, weight: u64) {
        let weight = weight.clamp(1, u64::from(u32::MAX));
        self.slot(key)
            .store(u64::from(key) << 32 | weight, Ordering::Relaxed);
    }

    /// The weight last recorded for `key`, if its slot still holds it.
    pub(crate) fn get(&self, key: u32) -> Option<u64> {
        let slot = self.slot(key).load(Ordering::Relaxed);
        (slot != 0 && (slot >> 32) as u32 == key).then_some(slot & u64::from(u32::MAX))
    }
}

/// One miniature: the policy at a fixed window over the sampled keys, each weighing what
/// its entry weighs in the cache (1 in count mode).
#[derive(Debug)]
struct Miniature {
    policy: Policy,
    /// The weight it holds at most: the cache's budget scaled by the sampling rate.
    budget: u64,
    /// Each resident key's id in `policy`.
    ids: KeyIds,
    /// By id: the key, and its reads since the policy's hand last passed (as an entry's
    /// read counter, saturating at `ACCESS_MAX`).
    keys: Vec<u32>,
    reads: Vec<Cell<u8>>,
    /// By id, the weight the key was inserted with.
    weights: Vec<u64>,
    free_ids: Vec<u32>,
    /// This sample's reads and hits, then the decayed sums of earlier samples.
    sample_reads: u64,
    sample_hits: u64,
    decayed_reads: f64,
    decayed_hits: f64,
}

/// The miniature's entries as the policy sees them.
struct MiniatureMembers<'a> {
    keys: &'a [u32],
    reads: &'a [Cell<u8>],
    weights: &'a [u64],
}

impl Members for MiniatureMembers<'_> {
    fn weight(&self, id: u32) -> u64 {
        self.weights[id as usize]
    }

    fn hash(&self, id: u32) -> u64 {
        u64::from(self.keys[id as usize])
    }

    fn take_access(&self, id: u32) -> (u8, u64) {
        (self.reads[id as usize].replace(0), self.hash(id))
    }
}

impl Miniature {
    /// A miniature expected to hold about `capacity` entries within `budget` of weight,
    /// its window `window`.
    fn new(capacity: usize, budget: u64, window: WindowShare, seed: u64) -> Self {
        let capacity = capacity.max(1);
        let budget = budget.max(1);
        let mut policy = Policy::miniature(budget, capacity, seed).expecting(capacity + 1);
        policy.set_window(window);
        Self {
            policy,
            budget,
            ids: KeyIds::with_capacity(capacity + 1),
            keys: Vec::with_capacity(capacity + 1),
            reads: Vec::with_capacity(capacity + 1),
            weights: Vec::with_capacity(capacity + 1),
            free_ids: Vec::new(),
            sample_reads: 0,
            sample_hits: 0,
            decayed_reads: 0.0,
            decayed_hits: 0.0,
        }
    }

    /// A read of `key`, which on a miss is inserted at `weight`, as a read-through cache
    /// would. Returns whether it hit. A key heavier than the whole budget is not inserted,
    /// as the cache refuses it.
    fn access(&mut self, key: u32, weight: u64) -> bool {
        self.sample_reads += 1;
        if let Some(id) = self.ids.get(key) {
            let reads = &self.reads[id as usize];
            reads.set((reads.get() + 1).min(ACCESS_MAX));
            self.sample_hits += 1;
            return true;
        }
        if weight > self.budget {
            return false;
        }
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.keys[id as usize] = key;
                self.reads[id as usize].set(0);
                self.weights[id as usize] = weight;
                id
            }
            None => {
                self.keys.push(key);
                self.reads.push(Cell::new(0));
                self.weights.push(weight);
                (self.keys.len() - 1) as u32
            }
        };
        self.ids.insert(key, id);
        self.policy.on_insert(id, u64::from(key), weight);
        while self.policy.weight() > self.budget {
            let members = MiniatureMembers {
                keys: &self.keys,
                reads: &self.reads,
                weights: &self.weights,
            };
            let Some(eviction) = self.policy.evict(&members) else {
                break;
            };
            self.ids.remove(self.keys[eviction.id as usize]);
            self.free_ids.push(eviction.id);
        }
        false
    }

    /// The window share this miniature tries, in per mille.
    fn window_per_mille(&self) -> u32 {
        self.policy.window_share.per_mille()
    }

    /// Ends a sample: its counts join the decayed sums. Returns the hit ratio over them,
    /// `None` while they hold too few reads.
    fn end_sample(&mut self) -> Option<f64> {
        self.decayed_reads = self.decayed_reads * DECAY + self.sample_reads as f64;
        self.decayed_hits = self.decayed_hits * DECAY + self.sample_hits as f64;
        self.sample_reads = 0;
        self.sample_hits = 0;
        (self.decayed_reads >= MIN_SAMPLED_READS).then(|| self.decayed_hits / self.decayed_reads)
    }
}

/// The miniatures, one per window of [`WINDOWS_PER_MILLE`].
#[derive(Debug)]
pub(crate) struct WindowChooser {
    miniatures: Vec<Miniature>,
}

impl WindowChooser {
    /// Miniatures of about `capacity` entries (the sampling's) within `budget` of weight
    /// (`capacity` in count mode), their policies seeded from `seed`, standing for a cache
    /// whose shards each hold `shard_budget`.
    ///
    /// A miniature's window keeps at least one unit where a shard's at the same share does.
    /// A sampled miniature stands for a larger cache: its 1% of 64 to 128 entries, rounded
    /// down, would be none where a shard of 373 entries keeps 3. One that replays every key
    /// of a one-shard cache is the cache's size, and rounds down as the cache does. (The
    /// miniatures replay the whole cache as one policy, so a small cache of several shards
    /// is modelled as one shard. Over the simulator's rows, rounding the sampled
    /// miniatures down measured alike: session 28, `docs/history.md`.)
    pub(crate) fn new(capacity: usize, budget: u64, shard_budget: u64, seed: u64) -> Self {
        let share = |per_mille| {
            let exact = WindowShare::exact(per_mille);
            if exact.units(shard_budget) > 0 {
                WindowShare::at_least_one_unit(per_mille)
            } else {
                exact
            }
        };
        Self {
            miniatures: WINDOWS_PER_MILLE
                .iter()
                .zip(0u64..)
                .map(|(&per_mille, index)| {
                    Miniature::new(capacity, budget, share(per_mille), seed ^ index)
                })
                .collect(),
        }
    }

    /// Replays a read of the sampled key `key`, whose entry weighs `weight`, in every
    /// miniature.
    pub(crate) fn access(&mut self, key: u32, weight: u64) {
        for miniature in &mut self.miniatures {
            miniature.access(key, weight);
        }
    }

    /// Ends a sample and returns the window to use next: the one whose miniature hit most
    /// over the decayed samples, unless `current`'s did as well (then `current`); `None`
    /// if the miniatures have not seen enough reads to choose yet.
    pub(crate) fn choose(&mut self, current: u32) -> Option<u32> {
        let mut best: Option<(f64, u32)> = None;
        let mut current_ratio = None;
        let mut enough = true;
        // Every miniature ends its sample, so their counts stay weighted alike (session
        // 21's review: returning at the first without enough reads decayed that one alone,
        // and later comparisons favoured it).
        for miniature in &mut self.miniatures {
            let Some(ratio) = miniature.end_sample() else {
                enough = false;
                continue;
            };
            if best.map_or(true, |(best_ratio, _)| ratio > best_ratio) {
                best = Some((ratio, miniature.window_per_mille()));
            }
            if miniature.window_per_mille() == current {
                current_ratio = Some(ratio);
            }
        }
        if !enough {
            return None;
        }
        Some(match (best, current_ratio) {
            (Some((ratio, window)), Some(current_ratio)) if ratio > current_ratio => window,
            (Some((_, window)), None) => window,
            _ => current,
        })
    }

    /// The window whose miniature hit most in the sample so far (the smaller of any that
    /// tie), if that is at least one read in `lead_reads` more than the starting window's
    /// miniature hit, over at least `min_reads` reads (see `RawCache`'s early choice).
    pub(crate) fn early_leader(&self, lead_reads: u64, min_reads: u64) -> Option<u32> {
        let starting = self.miniatures.first()?;
        let reads = starting.sample_reads;
        // Ties go to the smaller window, as in `choose`.
        let best = self
            .miniatures
            .iter()
            .max_by_key(|m| (m.sample_hits, std::cmp::Reverse(m.window_per_mille())))?;
        let lead = best.sample_hits.saturating_sub(starting.sample_hits);
        (reads >= min_reads && lead > 0 && lead.saturating_mul(lead_reads) >= reads)
            .then(|| best.window_per_mille())
    }

    /// Drops the sample in progress (what miniatures back from a rest hit while they
    /// refill says nothing of the windows) and ages the decayed sums of the samples before
    /// it as `samples` samples would have: the rest and this one. Kept at full weight, a
    /// steady stretch's sums outweighed the first sample after a rest 2.3 to 1, so a
    /// workload that had changed during the rest took two or three more samples to move
    /// the window (session 31's review).
    pub(crate) fn drop_sample(&mut self, samples: u64) {
        let age = DECAY.powi(i32::try_from(samples).unwrap_or(i32::MAX));
        for miniature in &mut self.miniatures {
            miniature.sample_reads = 0;
            miniature.sample_hits = 0;
            miniature.decayed_reads *= age;
            miniature.decayed_hits *= age;
        }
    }

    /// Forgets every count so far, decayed or not: what the miniatures hit while they
    /// filled says nothing of the windows.
    pub(crate) fn forget_counts(&mut self) {
        for miniature in &mut self.miniatures {
            miniature.sample_reads = 0;
            miniature.sample_hits = 0;
            miniature.decayed_reads = 0.0;
            miniature.decayed_hits = 0.0;
        }
    }

    /// The decayed reads of the samples so far (every miniature counts the same reads).
    #[cfg(test)]
    pub(crate) fn decayed_reads(&self) -> f64 {
        self.miniatures[0].decayed_reads
    }

    /// The miniatures' hit ratios over their decayed samples so far, by window (for tests
    /// and diagnostics).
    #[cfg(test)]
    pub(crate) fn ratios(&self) -> Vec<(u32, f64)> {
        self.miniatures
            .iter()
            .map(|m| {
                let reads = m.decayed_reads.max(1.0);
                (m.window_per_mille(), m.decayed_hits / reads)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_weights_keep_the_latest_write_per_slot() {
        let weights = SampleWeights::new();
        assert_eq!(weights.get(7), None);
        weights.record(7, 300);
        weights.record(7, 500);
        assert_eq!(weights.get(7), Some(500));
        // Another key in the same slot takes it over.
        let rival = 7 + SAMPLE_WEIGHT_SLOTS as u32;
        weights.record(rival, 40);
        assert_eq!((weights.get(7), weights.get(rival)), (None, Some(40)));
        weights.record(9, u64::MAX);
        assert_eq!(weights.get(9), Some(u64::from(u32::MAX)));
    }

    /// A miniature holds at most 128 keys whatever the cache's size, so its sketch's
    /// period keeps the longer floor (see `sketch::MINIATURE_PERIOD_FLOOR`).
    #[test]
    fn a_miniature_keeps_the_longer_sketch_period() {
        let miniature = Miniature::new(61, 61, WindowShare::exact(10), 1);
        assert_eq!(miniature.policy.sketch_period(), 5_120);
    }

    #[test]
    fn a_weighted_miniature_holds_its_budget_of_weight() {
        let mut miniature = Miniature::new(10, 1000, WindowShare::exact(10), 1);
        // Keys weighing 100 fill the 1,000 of budget with 10; light ones with more.
        for key in 0..20 {
            miniature.access(key, 100);
        }
        assert_eq!(miniature.policy.weight(), 1000);
        for key in 100..200 {
            miniature.access(key, 5);
        }
        assert!(miniature.policy.weight() <= 1000);
        assert!(miniature.ids.len() > 10, "{}", miniature.ids.len());
        // A key heavier than the whole budget is not held.
        assert!(!miniature.access(5000, 1001));
        assert!(!miniature.access(5000, 1001));
    }

    #[test]
    fn sampling_takes_every_key_of_a_small_cache_and_scales_a_large_one() {
        let small = Sampling::for_entries(100);
        assert_eq!(small.capacity, 100);
        assert!((0..1000u64).all(|h| small.samples(h << 32 | h)));
        let large = Sampling::for_entries(100_000);
        // 100,000 / 1,024 = 97 keys, one key in 1,024 sampled.
        assert_eq!(large.capacity, 97);
        let sampled = (0..1u64 << 20)
            .filter(|&i| large.samples(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .count();
        assert!((800..1250).contains(&sampled), "{sampled}");
        assert_eq!(Sampling::for_entries(0).capacity, 1);
    }

    #[test]
    fn thinner_sampling_keeps_half_the_keys_in_half_the_capacity() {
        let sampling = Sampling::for_entries(100_000);
        let thinner = sampling.thinner().expect("97 keys leave 48");
        assert_eq!(thinner.capacity, 48);
        let hashes: Vec<u64> = (0..1u64 << 20)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let before = hashes.iter().filter(|&&h| sampling.samples(h)).count();
        let after = hashes.iter().filter(|&&h| thinner.samples(h)).count();
        assert!(
            hashes
                .iter()
                .all(|&h| !thinner.samples(h) || sampling.samples(h)),
            "a subset of the keys"
        );
        assert!(
            (after * 2).abs_diff(before) < before / 8,
            "{before} -> {after}"
        );
        // 48 keys leave 24, under the floor.
        assert_eq!(thinner.thinner(), None);
        assert_eq!(
            Sampling::for_entries(64).thinner().map(|s| s.capacity),
            Some(32)
        );
    }

    #[test]
    fn finer_sampling_retraces_the_thinner_steps_back_to_the_full_one() {
        for entries in [1, 64, 125, 1_000, 100_000, 1 << 40] {
            let full = Sampling::for_entries(entries);
            assert_eq!(full.finer(full), None, "{entries} entries");
            let mut steps = vec![full];
            while let Some(thinner) = steps.last().unwrap().thinner() {
                steps.push(thinner);
            }
            for pair in steps.windows(2) {
                assert_eq!(pair[1].finer(full), Some(pair[0]), "{entries} entries");
            }
        }
        // An odd capacity halved and doubled comes back whole: 125 keys, 62, 125.
        let full = Sampling::for_entries(1_000);
        let thinner = full.thinner().unwrap();
        assert_eq!((full.capacity, thinner.capacity), (125, 62));
        assert_eq!(thinner.finer(full), Some(full));
    }

    #[test]
    fn a_miniature_holds_its_capacity_and_hits_what_it_holds() {
        let mut miniature = Miniature::new(10, 10, WindowShare::exact(10), 1);
        // Ten keys fit: the second pass hits them all.
        for key in 0..10 {
            assert!(!miniature.access(key, 1));
        }
        for key in 0..10 {
            assert!(miniature.access(key, 1), "key {key}");
        }
        // Many new keys: never more than ten resident.
        for key in 100..1000 {
            miniature.access(key, 1);
            assert!(miniature.ids.len() <= 10);
            assert_eq!(miniature.ids.len(), miniature.policy.len());
        }
        // Ids are reused, not grown without bound.
        assert!(miniature.keys.len() <= 11, "{}", miniature.keys.len());
    }

    #[test]
    fn a_chosen_share_rounds_down_and_the_starting_one_keeps_a_unit() {
        assert_eq!(WindowShare::exact(10).units(10), 0);
        assert_eq!(WindowShare::exact(10).units(99), 0);
        assert_eq!(WindowShare::exact(10).units(1000), 10);
        assert_eq!(WindowShare::exact(950).units(10), 9);
        assert_eq!(WindowShare::STARTING.units(10), 1);
        assert_eq!(WindowShare::STARTING.units(1000), 10);
        assert_eq!(WindowShare::exact(1000).units(u64::MAX), u64::MAX);
        let share = WindowShare::exact(500);
        assert_eq!(WindowShare::from_bits(share.to_bits()), share);
        assert_ne!(WindowShare::STARTING, WindowShare::exact(10));
    }

    /// Each miniature's window keeps a unit where one of the cache's shards at its share
    /// does: a miniature of 93 sampled keys from a 373-entry shard keeps one unit at 1%,
    /// one of a 50-entry shard none, and a thinned one from a 100-entry shard one.
    #[test]
    fn a_miniature_window_keeps_a_unit_where_the_shard_does() {
        let one_percent = |chooser: &WindowChooser| chooser.miniatures[0].policy.window_target;
        assert_eq!(one_percent(&WindowChooser::new(93, 93, 373, 1)), 1);
        assert_eq!(one_percent(&WindowChooser::new(50, 50, 50, 1)), 0);
        assert_eq!(one_percent(&WindowChooser::new(50, 50, 100, 1)), 1);
        assert_eq!(one_percent(&WindowChooser::new(40, 40, 80, 1)), 0);
        let chooser = WindowChooser::new(93, 93, 373, 1);
        let targets: Vec<u64> = chooser
            .miniatures
            .iter()
            .map(|m| m.policy.window_target)
            .collect();
        assert_eq!(targets, [1, 4, 18, 46, 88]);
    }

    #[test]
    fn the_window_stays_put_until_the_miniatures_have_seen_enough() {
        let mut chooser = WindowChooser::new(16, 16, 16, 7);
        for key in 0..100 {
            chooser.access(key % 40, 1);
        }
        assert_eq!(chooser.choose(50), None);
    }

    /// A loop over more keys than the cache holds: LRU-like windows hit nothing, while a
    /// small window keeps a part of the loop resident in main. The small window must win.
    #[test]
    fn a_loop_larger_than_the_cache_picks_a_small_window() {
        let mut chooser = WindowChooser::new(100, 100, 100, 3);
        for _ in 0..40 {
            for key in 0..150 {
                chooser.access(key, 1);
            }
        }
        let ratios = chooser.ratios();
        assert_eq!(
            chooser.choose(CEILING_PER_MILLE),
            Some(INITIAL_WINDOW_PER_MILLE),
            "{ratios:?}"
        );
    }

    /// A hot set that moves to fresh keys every few hundred reads: frequency from the last
    /// set holds main against the new one, so the largest window must win.
    #[test]
    fn a_hot_set_that_keeps_moving_picks_the_largest_window() {
        let mut chooser = WindowChooser::new(100, 100, 100, 5);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for phase in 0..60u32 {
            for _ in 0..400 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // 80 hot keys of this phase, plus repeats of the previous phase's.
                let key = phase * 1000 + (state % 80) as u32;
                chooser.access(key, 1);
            }
        }
        let ratios = chooser.ratios();
        assert_eq!(
            chooser.choose(INITIAL_WINDOW_PER_MILLE),
            Some(CEILING_PER_MILLE),
            "{ratios:?}"
        );
    }

    #[test]
    fn a_tie_keeps_the_current_window() {
        let mut chooser = WindowChooser::new(1000, 1000, 1000, 9);
        // Fewer keys than the capacity: every miniature hits every repeat alike.
        for _ in 0..10 {
            for key in 0..100 {
                chooser.access(key, 1);
            }
        }
        assert_eq!(chooser.choose(200), Some(200));
        assert_eq!(chooser.choose(500), Some(500));
    }

    /// Session 21's review: a sample too short to choose from ended the first miniature's
    /// sample only, and from then on the miniatures' counts were weighted differently.
    #[test]
    fn a_sample_too_short_to_choose_from_ends_every_miniature_alike() {
        let mut chooser = WindowChooser::new(100, 100, 100, 3);
        for key in 0..200 {
            chooser.access(key, 1);
        }
        assert_eq!(chooser.choose(10), None, "too few reads yet");
        for key in 0..200 {
            chooser.access(key, 1);
        }
        chooser.choose(10);
        let reads: Vec<f64> = chooser.miniatures.iter().map(|m| m.decayed_reads).collect();
        assert!(reads.iter().all(|&r| r == reads[0]), "{reads:?}");
    }

    #[test]
    fn the_largest_caches_sample_as_many_keys_as_their_miniatures_stand_for() {
        for entries in [1u64 << 39, 1 << 40, 1 << 45] {
            let sampling = Sampling::for_entries(entries);
            let modelled = (sampling.capacity as u64) << sampling.mask.count_ones();
            assert!(modelled * 2 > entries, "{sampling:?} for {entries}");
            assert_eq!(sampling.mask.trailing_zeros(), SAMPLE_BITS_SHIFT);
        }
    }
}
