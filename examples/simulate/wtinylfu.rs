//! W-TinyLFU as Caffeine runs it: the reference larder's hit ratio is meant to beat.
//!
//! Written from the description in Caffeine's `BoundedLocalCache` (Einziger, Friedman and
//! Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM TOS 2017, and "Adaptive
//! Software Cache Management", Middleware 2018), replayed one access at a time with unit
//! weights, with the cache's maintenance (evictions, then the climber) after every access:
//! - an LRU *window*, 1% of the capacity at first, in front of a segmented LRU *main*:
//!   *probation*, and *protected* (80% of main), which a probation hit promotes to and whose
//!   overflow goes back to probation;
//! - a count-min sketch of four 4-bit counters per key (no doorkeeper), 16 counters per
//!   64-bit word and as many words as the capacity's next power of two, every counter of a
//!   key raised on each access, all halved once the increments reach ten times the
//!   capacity; like Caffeine's, it starts counting only once the cache is half full;
//! - window overflow moves to probation's recent end as *candidates*; while the cache is
//!   over capacity the newest candidate duels probation's least recent entry (the *victim*):
//!   the candidate stays only if its estimate is higher, or, at an estimate of 6 or more,
//!   once in 128 duels at random (the defence against hash flooding);
//! - a hill climber over samples of ten times the capacity in requests: it moves the window
//!   by a step (6.25% of the capacity at first) in the direction that raised the hit ratio,
//!   shrinks the step by 2% a sample, and restarts it when the hit ratio moves 5 points.
//!
//! What it leaves out is what a single-threaded replay cannot see: the read and write
//! buffers between the map and the policy, and weights. `wtinylfu_fixed` keeps the window at
//! 1%, as Caffeine did before 2.7; `caffeine/replay.sh` replays the same rows through that
//! Caffeine (Debian's 2.6.2), and over the 113 rows of `../shared/traces` the two came
//! within 0.06 points of each other on average (96 rows within 0.5, the farthest 2.0 apart:
//! the sketches hash differently, and Caffeine seeds its own at random).

use hashbrown::HashMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::policies::{Lists, Policy, NIL};

const WINDOW: u8 = 0;
const PROBATION: u8 = 1;
const PROTECTED: u8 = 2;

/// Main's share of the capacity at first: the window starts with the rest.
const PERCENT_MAIN: f64 = 0.99;
/// Protected's share of main.
const PERCENT_MAIN_PROTECTED: f64 = 0.80;
/// A change of the sample's hit ratio this large restarts the climber's step.
const RESTART_THRESHOLD: f64 = 0.05;
/// The climber's first step, and its step on a restart, as a share of the capacity.
const STEP_PERCENT: f64 = 0.0625;
/// The step shrinks by this factor every sample.
const STEP_DECAY: f64 = 0.98;
/// Candidates at or above this estimate win a lost duel once in 128.
const JITTER_MIN_FREQUENCY: u8 = 6;
/// Entries one climb moves between regions at most.
const TRANSFER_LIMIT: usize = 1000;

/// Caffeine's popularity sketch: four 4-bit counters per key, in four words, each word
/// holding sixteen counters, the key's four in one of its four groups of four.
#[derive(Debug)]
struct Sketch {
    table: Vec<u64>,
    /// Increments so far this period.
    size: usize,
    /// Increments per period: ten per entry of capacity, as Caffeine's `sampleSize` (ten
    /// per word of the power-of-two table until session 22's review).
    period: usize,
}

const SEEDS: [u64; 4] = [
    0x97CB_3127_8A49_01F5,
    0xB492_B66F_BE98_F273,
    0x9AE1_6A3B_2F90_404F,
    0xCBF2_9CE4_8422_2325,
];

impl Sketch {
    fn new(capacity: usize) -> Self {
        let words = capacity.max(1).next_power_of_two();
        Self {
            table: vec![0; words],
            size: 0,
            period: 10 * capacity.max(1),
        }
    }

    /// Word and bit shift of the key's counter in row `row`.
    fn place(&self, hash: u64, row: usize) -> (usize, u32) {
        let mixed = (hash ^ SEEDS[row]).wrapping_mul(SEEDS[(row + 1) % 4]);
        let word = (mixed ^ (mixed >> 32)) as usize & (self.table.len() - 1);
        let counter = ((hash & 3) << 2) as u32 + row as u32;
        (word, counter * 4)
    }

    fn frequency(&self, hash: u64) -> u8 {
        (0..4)
            .map(|row| {
                let (word, shift) = self.place(hash, row);
                ((self.table[word] >> shift) & 0xF) as u8
            })
            .min()
            .unwrap_or(0)
    }

    fn increment(&mut self, hash: u64) {
        let mut added = false;
        for row in 0..4 {
            let (word, shift) = self.place(hash, row);
            if (self.table[word] >> shift) & 0xF < 15 {
                self.table[word] += 1 << shift;
                added = true;
            }
        }
        if added {
            self.size += 1;
            if self.size == self.period {
                self.halve();
            }
        }
    }

    /// Ages every counter by half; the period's count drops by what the halving truncated.
    fn halve(&mut self) {
        let mut odd = 0;
        for word in &mut self.table {
            odd += (*word & 0x1111_1111_1111_1111).count_ones() as usize;
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.size = (self.size - odd / 4) / 2;
    }
}

/// A fixed mix of the trace's key, as Caffeine spreads a key's hash code.
fn spread(key: u64) -> u64 {
    let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

#[derive(Debug)]
struct WTinyLfu {
    capacity: usize,
    map: HashMap<u64, usize>,
    lists: Lists,
    sketch: Sketch,
    /// The sketch counts once the cache has been half full.
    counting: bool,
    window_max: usize,
    protected_max: usize,
    hits_in_sample: usize,
    misses_in_sample: usize,
    previous_hit_rate: f64,
    step: f64,
    /// Window change still to apply (Caffeine's `adjustment`): what a climb could not move
    /// within the transfer limit is carried to the next maintenance.
    adjustment: i64,
    /// The climber is off: the window stays at 1%, as in Caffeine before 2.7 (the version
    /// Debian packages, which `caffeine/replay.sh` runs, so the two can be compared).
    fixed_window: bool,
    /// Seeded: a replay is deterministic, as the other reference policies are.
    jitter: StdRng,
}

impl WTinyLfu {
    fn len(&self, list: u8) -> usize {
        self.lists.len[list as usize]
    }

    /// The least recent entry of `list`, or `NIL`.
    fn oldest(&self, list: u8) -> usize {
        self.lists.tail[list as usize]
    }

    fn count(&mut self, key: u64) {
        if self.counting {
            self.sketch.increment(spread(key));
        }
    }

    fn evict(&mut self, node: usize) {
        let key = self.lists.remove(node);
        self.map.remove(&key);
    }

    /// Moves window overflow to probation's recent end; returns how many moved.
    fn evict_from_window(&mut self) -> usize {
        let mut candidates = 0;
        while self.len(WINDOW) > self.window_max {
            let node = self.oldest(WINDOW);
            self.lists.move_front(node, PROBATION);
            candidates += 1;
        }
        candidates
    }

    fn admit(&mut self, candidate: u64, victim: u64) -> bool {
        let victim = self.sketch.frequency(spread(victim));
        let candidate = self.sketch.frequency(spread(candidate));
        if candidate > victim {
            return true;
        }
        if candidate < JITTER_MIN_FREQUENCY {
            return false;
        }
        self.jitter.random::<u32>() & 127 == 0
    }

    /// Duels the `candidates` newest probation entries against probation's oldest while the
    /// cache is over capacity, as Caffeine's `evictFromMain` walks both ends of the queue.
    fn evict_from_main(&mut self, mut candidates: usize) {
        let mut victim_list = PROBATION;
        let mut victim = self.oldest(PROBATION);
        let mut candidate = self.lists.head[PROBATION as usize];
        while self.map.len() > self.capacity {
            if candidates == 0 {
                candidate = self.lists.head[WINDOW as usize];
            }
            if candidate == NIL && victim == NIL {
                match victim_list {
                    PROBATION => {
                        victim = self.oldest(PROTECTED);
                        victim_list = PROTECTED;
                        continue;
                    }
                    PROTECTED => {
                        victim = self.oldest(WINDOW);
                        victim_list = WINDOW;
                        continue;
                    }
                    _ => break,
                }
            }
            // Towards the newer end from the victim, the older end from a candidate.
            let newer = |lists: &Lists, node: usize| lists.nodes[node].prev;
            let older = |lists: &Lists, node: usize| lists.nodes[node].next;
            if victim == NIL || candidate == victim {
                let next = older(&self.lists, candidate);
                if candidate == victim {
                    victim = newer(&self.lists, victim);
                }
                self.evict(candidate);
                candidate = next;
                candidates = candidates.saturating_sub(1);
                continue;
            }
            if candidate == NIL {
                let next = newer(&self.lists, victim);
                self.evict(victim);
                victim = next;
                continue;
            }
            candidates = candidates.saturating_sub(1);
            let (candidate_key, victim_key) = (
                self.lists.nodes[candidate].key,
                self.lists.nodes[victim].key,
            );
            if self.admit(candidate_key, victim_key) {
                let next = newer(&self.lists, victim);
                self.evict(victim);
                victim = next;
                candidate = older(&self.lists, candidate);
            } else {
                let next = if candidates > 0 {
                    older(&self.lists, candidate)
                } else {
                    newer(&self.lists, candidate)
                };
                self.evict(candidate);
                candidate = next;
            }
        }
    }

    fn demote_from_protected(&mut self) {
        for _ in 0..TRANSFER_LIMIT {
            if self.len(PROTECTED) <= self.protected_max {
                break;
            }
            let node = self.oldest(PROTECTED);
            self.lists.move_front(node, PROBATION);
        }
    }

    /// Ends a sample once it holds ten requests per entry, and moves the window.
    fn climb(&mut self) {
        if self.fixed_window {
            self.demote_from_protected();
            return;
        }
        if !self.counting {
            self.hits_in_sample = 0;
            self.misses_in_sample = 0;
            self.previous_hit_rate = 0.0;
            return;
        }
        let requests = self.hits_in_sample + self.misses_in_sample;
        if requests >= self.sketch.period {
            let hit_rate = self.hits_in_sample as f64 / requests as f64;
            let change = hit_rate - self.previous_hit_rate;
            let amount = if change >= 0.0 { self.step } else { -self.step };
            self.step = if change.abs() >= RESTART_THRESHOLD {
                STEP_PERCENT * self.capacity as f64 * amount.signum()
            } else {
                STEP_DECAY * amount
            };
            self.previous_hit_rate = hit_rate;
            self.hits_in_sample = 0;
            self.misses_in_sample = 0;
            self.adjustment = amount as i64;
        }
        self.demote_from_protected();
        match self.adjustment {
            0 => {}
            grow if grow > 0 => self.increase_window(grow as usize),
            shrink => self.decrease_window(shrink.unsigned_abs() as usize),
        }
    }

    /// Gives the window `amount` of protected's share, moving main's oldest entries over.
    fn increase_window(&mut self, amount: usize) {
        if self.protected_max == 0 {
            return;
        }
        let mut quota = amount.min(self.protected_max);
        self.protected_max -= quota;
        self.window_max += quota;
        self.demote_from_protected();
        for _ in 0..TRANSFER_LIMIT {
            if quota == 0 {
                break;
            }
            let mut node = self.oldest(PROBATION);
            if node == NIL {
                node = self.oldest(PROTECTED);
            }
            if node == NIL {
                break;
            }
            self.lists.move_front(node, WINDOW);
            quota -= 1;
        }
        self.protected_max += quota;
        self.window_max -= quota;
        self.adjustment = quota as i64;
    }

    /// Gives protected `amount` of the window's share, moving the window's oldest to probation.
    fn decrease_window(&mut self, amount: usize) {
        if self.window_max <= 1 {
            return;
        }
        let mut quota = amount.min(self.window_max - 1);
        self.protected_max += quota;
        self.window_max -= quota;
        for _ in 0..TRANSFER_LIMIT {
            if quota == 0 {
                break;
            }
            let node = self.oldest(WINDOW);
            if node == NIL {
                break;
            }
            self.lists.move_front(node, PROBATION);
            quota -= 1;
        }
        self.protected_max -= quota;
        self.window_max += quota;
        self.adjustment = -(quota as i64);
    }
}

impl Policy for WTinyLfu {
    fn name(&self) -> &'static str {
        "W-TinyLFU"
    }

    fn access(&mut self, key: u64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let hit = if let Some(&node) = self.map.get(&key) {
            self.count(key);
            match self.lists.nodes[node].list {
                PROBATION => self.lists.move_front(node, PROTECTED),
                list => self.lists.move_front(node, list),
            }
            self.hits_in_sample += 1;
            true
        } else {
            let node = self.lists.insert(key, WINDOW);
            self.map.insert(key, node);
            self.misses_in_sample += 1;
            if self.map.len() >= self.capacity / 2 {
                self.counting = true;
            }
            self.count(key);
            false
        };
        let candidates = self.evict_from_window();
        self.evict_from_main(candidates);
        self.climb();
        debug_assert!(self.map.len() <= self.capacity);
        hit
    }
}

/// W-TinyLFU with Caffeine's adaptive window, for `capacity` entries.
pub fn wtinylfu(capacity: usize) -> Box<dyn Policy> {
    Box::new(WTinyLfu::new(capacity, false))
}

/// W-TinyLFU with the window fixed at 1%, as Caffeine ran it before 2.7.
pub fn wtinylfu_fixed(capacity: usize) -> Box<dyn Policy> {
    Box::new(WTinyLfu::new(capacity, true))
}

impl WTinyLfu {
    fn new(capacity: usize, fixed_window: bool) -> Self {
        let window_max = capacity - (PERCENT_MAIN * capacity as f64) as usize;
        let protected_max = (PERCENT_MAIN_PROTECTED * (capacity - window_max) as f64) as usize;
        Self {
            capacity,
            map: HashMap::new(),
            lists: Lists::default(),
            sketch: Sketch::new(capacity),
            counting: false,
            window_max,
            protected_max,
            hits_in_sample: 0,
            misses_in_sample: 0,
            previous_hit_rate: 0.0,
            step: -STEP_PERCENT * capacity as f64,
            adjustment: 0,
            fixed_window,
            jitter: StdRng::seed_from_u64(0x5eed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(policy: &mut dyn Policy, trace: impl IntoIterator<Item = u64>) -> usize {
        trace.into_iter().filter(|&key| policy.access(key)).count()
    }

    #[test]
    fn holds_its_capacity_and_hits_what_it_holds() {
        let mut cache = wtinylfu(100);
        for key in 0..100 {
            assert!(!cache.access(key));
        }
        assert_eq!(replay(&mut *cache, 0..100), 100);
        // A thousand new keys later it still holds at most 100, and some of the first ones:
        // they were read twice, the newcomers once.
        replay(&mut *cache, 1000..2000);
        assert!(replay(&mut *cache, 0..100) > 50);
    }

    #[test]
    fn a_scan_does_not_flush_a_hot_set() {
        let mut cache = wtinylfu(1000);
        let hot = 0..500u64;
        for _ in 0..5 {
            replay(&mut *cache, hot.clone());
        }
        replay(&mut *cache, 10_000..60_000);
        let kept = replay(&mut *cache, hot);
        assert!(kept >= 450, "{kept} of 500 hot keys kept through a scan");
    }

    /// Forty phases, each reading 800 fresh keys ten times over: recency is all that counts.
    fn replay_a_moving_hot_set(cache: &mut WTinyLfu) {
        for phase in 0..40u64 {
            for _ in 0..10 {
                replay(cache, phase * 1000..phase * 1000 + 800);
            }
        }
    }

    #[test]
    fn the_climber_grows_the_window_for_a_hot_set_that_moves() {
        let capacity = 1000;
        let mut cache = WTinyLfu::new(capacity, false);
        replay_a_moving_hot_set(&mut cache);
        assert!(
            cache.window_max > capacity / 10,
            "window {} of {capacity}",
            cache.window_max
        );
    }

    #[test]
    fn without_the_climber_the_window_stays_at_one_percent() {
        let capacity = 1000;
        let mut cache = WTinyLfu::new(capacity, true);
        replay_a_moving_hot_set(&mut cache);
        assert_eq!(cache.window_max, 10);
    }

    #[test]
    fn a_zero_capacity_never_hits() {
        let mut cache = wtinylfu(0);
        assert_eq!(replay(&mut *cache, [1, 1, 1]), 0);
    }

    /// Caffeine's `FrequencySketch.ensureCapacity`: `sampleSize = 10 * maximum` (the
    /// capacity, not the table's length), and the climber's sample is that same size.
    #[test]
    fn the_sketch_period_is_ten_times_the_capacity() {
        for capacity in [1_000usize, 5_121, 20_000, 32_768] {
            assert_eq!(
                Sketch::new(capacity).period,
                10 * capacity,
                "capacity {capacity}"
            );
        }
    }

    /// Caffeine's `increaseWindow` moves at most `QUEUE_TRANSFER_THRESHOLD` (1,000) entries
    /// per maintenance and keeps the rest as its `adjustment`, which the next climb applies
    /// even when no new sample has completed (the rest was dropped until session 22).
    #[test]
    fn a_climb_moves_the_window_by_the_whole_step() {
        let capacity = 32_768;
        let mut cache = WTinyLfu::new(capacity, false);
        replay(&mut cache, 0..40_000u64); // full, counting, main all probation
        let before = cache.window_max;
        // A sample just completed with a higher hit ratio: adjustment = +step = +2,048.
        cache.step = STEP_PERCENT * capacity as f64;
        cache.previous_hit_rate = 0.0;
        cache.hits_in_sample = cache.sketch.period;
        cache.misses_in_sample = 0;
        let resident: Vec<u64> = cache.map.keys().copied().take(5).collect();
        for key in resident {
            assert!(cache.access(key));
        }
        assert_eq!(
            cache.window_max - before,
            2_048,
            "window grew by {}",
            cache.window_max - before
        );
    }
}
