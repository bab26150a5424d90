//! Which entry leaves when a shard is over budget: W-TinyLFU over CLOCK rings.
//!
//! New entries enter a *window* ring, a recency buffer whose share of the shard is chosen
//! by replaying a sample of the reads through miniature copies of this policy at a few
//! fixed windows (`miniature.rs`). When the window is over its share, its
//! CLOCK victim becomes a *candidate* for *main*. Main is segmented as in Caffeine:
//! admitted entries start on *probation*, entries read there move to *protected* (80% of
//! main), and protected overflow returns to probation. If main is full, the candidate duels
//! probation's CLOCK victim on estimated frequency per unit of weight (TinyLFU) and the
//! loser is evicted; under a byte budget the hand passes a few victims much lighter than
//! the candidate for a heavier one, so heavy residents are dueled as their bytes warrant. A
//! small ghost (`ghost.rs`) remembers rejected candidates: one that returns soon wins its
//! next duel. A second ghost remembers main's evicted victims; the two ghosts' counts tell
//! a hot set that moves (`shift.rs`). Reads never touch this code: they bump a lossy counter in the entry, which the CLOCK
//! hands read, clear and feed into the frequency sketch as they sweep.
//!
//! Everything here is plain `&mut self` code over slab ids; the shard drives it under its lock.

pub(crate) mod clock;
pub(crate) mod ghost;
mod key_ids;
pub(crate) mod miniature;
pub(crate) mod shift;
pub(crate) mod sketch;

use clock::{Links, Ring};
use ghost::Ghost;
use miniature::WindowShare;
use sketch::{FrequencySketch, MINIATURE_PERIOD_FLOOR, SHARD_PERIOD_FLOOR};

/// What the policy needs to know about the entries it orders, supplied by the shard.
pub(crate) trait Members {
    /// The entry's weight as charged to the budget.
    fn weight(&self, id: u32) -> u64;
    /// The entry's key hash, for the frequency sketch.
    fn hash(&self, id: u32) -> u64;
    /// Reads of the entry since the last call (see `Entry::take_access`), with its key hash:
    /// what a CLOCK hand feeds the sketch, found with one lookup of the entry.
    fn take_access(&self, id: u32) -> (u8, u64);
}

/// Tenths of main held by its protected segment (Caffeine's 80%).
const PROTECTED_TENTHS: u64 = 8;

/// How much more often than the victim a candidate must have been seen to be admitted.
///
/// The candidate was read or written moments ago, so the sketch's doorkeeper nearly always
/// counts it once for the current period, while the victim gets that count only if it was
/// seen since the sketch last aged. With no margin that bonus alone wins duels between
/// equally frequent keys, and a loop longer than the sketch's period degenerates into LRU:
/// on the LIRS `gli` trace at 632 entries the hit ratio was 23.6% against OPT's 42.2%; with
/// this margin, 41.6%. Over the 113 rows of the real traces, the mean gap to the best of
/// moka, quick_cache and LRU went from -2.15 to -1.03 points (3 runs each).
const ADMISSION_MARGIN: u8 = 1;

/// Unread entries on probation the hand may pass, looking for a duel victim at least two
/// thirds as heavy as the candidate (see [`Policy::main_victim`]).
///
/// CLOCK picks victims entry by entry, so under a byte budget a heavy resident is dueled
/// no more often than a light one, though it holds many times the bytes: the few heavy
/// entries that filled main first stayed for good, and the duels went to the light ones.
/// On a loop of 2,001 keys of 16 B to 16 KiB (the simulator's scan trace) under a budget
/// of 100 entries of the mean size, larder held about 450 entries of which 48 above 1 KB
/// took 61% of the budget, and hit 17% where the lightest keys that fit would hit 50%;
/// 95% of its duels set a heavier candidate against a lighter victim, which it lost.
/// Passing up to this many lighter unread entries (each gets a second chance, as a read
/// one does): 44% there. Over the simulator's 99 rows with sizes of 16 B to 16 KiB (4 runs
/// each), larder's hits per row against the best of moka held to its capacity, quick_cache
/// and LRU by bytes went from +2.18 to +8.21 points (passing at most one entry +7.46, four
/// +8.02, sixteen +8.29, sixty-four +8.33: each pass costs a load of the entry). Only
/// entries lighter than two thirds of the candidate are passed: passing any lighter one
/// cost sizes of 100 to 120 B (which differ by 11% at most with larder's overhead) 0.45
/// points per row, for nothing; with the two thirds they are unchanged (+0.31), and
/// sizes of 100 B to 1,000 B gain 1.49 (+1.06 to +2.55; half the candidate's weight: +2.44).
const LIGHTER_VICTIMS_PASSED: u32 = 8;

/// A candidate this frequent may be admitted at random even when it loses the duel: an
/// attacker who floods keys that collide with a hot victim in the sketch cannot pin it out.
const JITTER_MIN_FREQUENCY: u8 = 6;

// `Policy::admit` rejects a candidate within the margin without asking about jitter.
const _: () = assert!(ADMISSION_MARGIN < JITTER_MIN_FREQUENCY);

/// How one eviction was decided, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Eviction {
    pub(crate) id: u32,
    /// The victim was a window candidate that lost the admission duel.
    pub(crate) rejected: bool,
}

/// Which ghosts recognised a new key (see [`Policy::on_insert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// It lost an admission duel recently: it wins its next one.
    pub(crate) returning: bool,
    /// Main evicted it recently.
    pub(crate) recalled: bool,
}

/// A candidate for main, as the admission duel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Contender {
    /// Its key hash, for the sketch.
    pub(crate) hash: u64,
    /// Its weight, as charged to the budget.
    pub(crate) weight: u64,
    /// The ghost recognised it when it was inserted: it lost a duel recently and came back.
    pub(crate) returning: bool,
}

/// Where an id lives, kept as the id's tag in the ring links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Window,
    /// In the window, and recognised by the ghost when inserted: wins its admission duel.
    Returning,
    /// Main's probation segment: admitted entries start here and duel victims come from here.
    Main,
    /// Main's protected segment: entries read while on probation.
    Protected,
}

const _: () = assert!(Region::ALL.len() <= clock::TAGS as usize);

impl Region {
    const ALL: [Self; 4] = [Self::Window, Self::Returning, Self::Main, Self::Protected];

    fn of_tag(tag: u8) -> Self {
        Self::ALL[usize::from(tag)]
    }

    fn tag(self) -> u8 {
        self as u8
    }
}

/// The replacement policy of one shard.
#[derive(Debug)]
pub(crate) struct Policy {
    links: Links,
    window: Ring,
    main: Ring,
    protected: Ring,
    sketch: FrequencySketch,
    ghost: Ghost,
    /// Main's evicted victims, for the shift detector (see `shift.rs`): only counted.
    main_ghost: Ghost,
    capacity: u64,
    window_share: WindowShare,
    window_target: u64,
    main_target: u64,
    protected_target: u64,
    /// xorshift state for admission jitter; seeded per shard from the cache's random state.
    jitter: u64,
    /// Ids the shard is expected to use (0 when unknown): per-id arrays grow onto it.
    expected_ids: usize,
    /// Ids removed through [`Policy::on_remove`] that have left their rings since the shard
    /// last took them (see [`Policy::take_released`]): only then may the slab reuse them.
    released: Vec<u32>,
}

impl Policy {
    /// A policy for a shard holding up to `capacity` weight, expected to hold about
    /// `expected_entries` entries (sizes the sketch; it grows if more arrive).
    pub(crate) fn new(capacity: u64, expected_entries: usize, seed: u64) -> Self {
        Self::with_period_floor(capacity, expected_entries, seed, SHARD_PERIOD_FLOOR)
    }

    /// A policy for one of the window's miniatures (see `miniature.rs`): as [`Policy::new`],
    /// its sketch's period sized for at least [`MINIATURE_PERIOD_FLOOR`] entries.
    pub(crate) fn miniature(capacity: u64, expected_entries: usize, seed: u64) -> Self {
        Self::with_period_floor(capacity, expected_entries, seed, MINIATURE_PERIOD_FLOOR)
    }

    fn with_period_floor(
        capacity: u64,
        expected_entries: usize,
        seed: u64,
        period_floor: usize,
    ) -> Self {
        let mut policy = Self {
            links: Links::default(),
            window: Ring::default(),
            main: Ring::default(),
            protected: Ring::default(),
            sketch: FrequencySketch::with_period_floor(expected_entries, period_floor),
            ghost: Ghost::with_capacity(expected_entries),
            main_ghost: Ghost::with_capacity(expected_entries),
            capacity,
            window_share: WindowShare::exact(0),
            window_target: 0,
            main_target: 0,
            protected_target: 0,
            jitter: seed | 1,
            expected_ids: 0,
            released: Vec::new(),
        };
        policy.set_window(WindowShare::STARTING);
        policy
    }

    /// The same policy, its per-id arrays growing onto `expected` ids (see `crate::growth`).
    pub(crate) fn expecting(mut self, expected: usize) -> Self {
        self.expected_ids = expected;
        self.links = Links::expecting(expected);
        self
    }

    /// Gives the window its share of the capacity (see [`WindowShare`]). The regions
    /// converge to their new targets as later evictions move entries between them.
    #[inline]
    pub(crate) fn set_window(&mut self, share: WindowShare) {
        // Inline for every write, which nearly always finds the share unchanged.
        if share != self.window_share {
            self.resize_window(share);
        }
    }

    fn resize_window(&mut self, share: WindowShare) {
        self.window_share = share;
        self.window_target = share.units(self.capacity);
        self.main_target = self.capacity.saturating_sub(self.window_target);
        // Multiply before dividing: `main_target / 10 * 8` gave a main under 10 units no
        // protected segment at all (a 10-entry cache ran main as plain probation).
        self.protected_target =
            (u128::from(self.main_target) * u128::from(PROTECTED_TENTHS) / 10) as u64;
    }

    /// Accesses between the sketch's agings.
    #[cfg(test)]
    pub(crate) fn sketch_period(&self) -> usize {
        self.sketch.period()
    }

    /// The sketch's frequency estimate for a key hash (warm-up picks the hottest).
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        self.sketch.frequency(hash)
    }

    /// Starts fetching the sketch's counters for a key hash that is about to be inserted.
    #[inline]
    pub(crate) fn prefetch_frequency(&self, hash: u64) {
        self.sketch.prefetch(hash);
    }

    /// Entries the policy orders.
    pub(crate) fn len(&self) -> usize {
        self.window.len() + self.main.len() + self.protected.len()
    }

    /// The weight of the entries the policy orders.
    pub(crate) fn weight(&self) -> u64 {
        self.window.weight() + self.main_weight()
    }

    fn main_weight(&self) -> u64 {
        self.main.weight() + self.protected.weight()
    }

    fn main_is_empty(&self) -> bool {
        self.main.is_empty() && self.protected.is_empty()
    }

    /// Records a newly inserted entry: it counts as an access and joins the window. Returns
    /// which ghosts recognised it.
    pub(crate) fn on_insert(&mut self, id: u32, hash: u64, weight: u64) -> Arrival {
        self.sketch.increment(hash);
        self.sketch
            .ensure_capacity(self.len() + 1, self.expected_ids);
        self.ghost.ensure_capacity(self.len() + 1);
        self.main_ghost.ensure_capacity(self.len() + 1);
        let returning = self.ghost.take(hash);
        let recalled = self.main_ghost.take(hash);
        let region = if returning {
            Region::Returning
        } else {
            Region::Window
        };
        self.set_region(id, region);
        self.window.push(&mut self.links, id, weight);
        Arrival {
            returning,
            recalled,
        }
    }

    /// Records that a write changed an entry's weight. (The write also counts as an access,
    /// but the shard records that in the entry's read counter, as for a read: the CLOCK hand
    /// feeds it to the sketch later, so an update touches no sketch line, two cache misses
    /// off the commonest write.)
    #[inline]
    pub(crate) fn on_reweigh(&mut self, id: u32, old_weight: u64, new_weight: u64) {
        if old_weight != new_weight {
            self.ring_of(id).reweigh(old_weight, new_weight);
        }
    }

    /// Forgets an entry removed for any reason other than [`Policy::evict`]. Its id stays
    /// taken until [`Policy::take_released`] returns it (the rings are singly linked: an id
    /// away from the hand leaves its ring when a hand or a compaction reaches it).
    pub(crate) fn on_remove(&mut self, id: u32, weight: u64) {
        let (ring, links, released) = self.parts(self.region(id));
        ring.remove(links, id, weight, released);
    }

    /// The ids removed through [`Policy::on_remove`] that are in no ring any more, which the
    /// slab may now reuse. (An id [`Policy::evict`] returns is out of every ring at once.)
    #[inline]
    pub(crate) fn take_released(&mut self) -> Option<std::vec::Drain<'_, u32>> {
        // Most calls find none: skip building and dropping an empty `Drain`.
        (!self.released.is_empty()).then(|| self.released.drain(..))
    }

    /// Forgets every entry (the cache was cleared); frequency history is kept.
    pub(crate) fn clear(&mut self) {
        self.links = Links::expecting(self.expected_ids);
        self.window = Ring::default();
        self.main = Ring::default();
        self.protected = Ring::default();
        self.released.clear();
    }

    /// Whether another shard's new entry should displace the entry this shard would give
    /// up next. `candidate` is the newcomer's frequency as its own shard's sketch estimates
    /// it, `weight` its weight, and `returning` whether its shard's ghost recognised it.
    /// The victim is found as [`Policy::evict`] finds its victims, but left in place.
    /// Main's CLOCK victim is dueled as a candidate leaving the window would duel it
    /// ([`Policy::admit`]). With main empty the victim is the window's CLOCK victim, which
    /// in one shard would have left for the new entry by recency alone, its frequency
    /// unasked: it stays only if the sketch counts it more often than the new entry (per
    /// unit of weight, as the duel counts), so an unread resident leaves and a hot one
    /// stays. `None` if the shard is empty; otherwise the verdict and the victim's weight.
    pub(crate) fn yields_to(
        &mut self,
        candidate: u8,
        weight: u64,
        returning: bool,
        members: &impl Members,
    ) -> Option<(bool, u64)> {
        let main_is_empty = self.main_is_empty();
        let (victim, victim_hash) = if main_is_empty {
            self.sweep(Region::Window, members)?
        } else {
            self.main_victim(members, weight)?
        };
        let victim_weight = members.weight(victim);
        if returning && weight <= victim_weight {
            return Some((true, victim_weight));
        }
        if main_is_empty {
            let victim = self.sketch.frequency(victim_hash);
            return Some((
                u128::from(candidate) * u128::from(victim_weight)
                    >= u128::from(victim) * u128::from(weight),
                victim_weight,
            ));
        }
        Some((
            self.admits(candidate, weight, victim_hash, victim_weight),
            victim_weight,
        ))
    }

    /// Forgets a new entry that lost a duel against another shard's victim (see
    /// [`Policy::yields_to`]), as [`Policy::on_remove`] does, and, if `remember` (it was
    /// no heavier than the victim it lost to, as in `evict`), remembers it as a rejected
    /// candidate: if it comes back soon, it wins its next duel.
    pub(crate) fn reject(&mut self, id: u32, hash: u64, weight: u64, remember: bool) {
        self.on_remove(id, weight);
        if remember {
            self.ghost.insert(hash);
        }
    }

    /// Chooses, unlinks and returns the entry to evict, or `None` if the shard is empty.
    pub(crate) fn evict(&mut self, members: &impl Members) -> Option<Eviction> {
        // Window overflow moves into main for free while main has room: no one must leave.
        // The window's swept hand, if main had no room for it: the candidate below. So is
        // its last entry: moved, it would leave the window empty, and main would pay for
        // this eviction with a victim that never dueled. That is the case of a shard under
        // its share whose window is none, or lighter than the entry (session 28's review:
        // with shards of under 100 entries, where 1% is none, a loop over twice the
        // capacity hit 45.15% on 61 entries in 4 shards before windows rounded down, 40.51%
        // after, 45.95% with this).
        let mut swept = None;
        while self.window.weight() > self.window_target {
            let Some((candidate, hash)) = self.sweep(Region::Window, members) else {
                break;
            };
            let weight = members.weight(candidate);
            if self.main_weight() + weight > self.main_target || self.window.len() == 1 {
                swept = Some((candidate, hash, weight));
                break;
            }
            self.window.take_hand(&mut self.links, candidate, weight);
            self.promote(candidate, weight);
        }
        // Main alone is over its target (the window is within its own): main pays, which is
        // how main shrinks when the window grows. Otherwise the eviction was forced by the
        // cache's global budget while this shard is within its share; then the shard acts as
        // full and the window's candidate duels main's victim, as it would in a full shard,
        // rather than main losing entries without a duel.
        //
        // Main used to pay only when the whole shard was over its capacity. A shard a little
        // under its share (about half of them, at any time: keys do not spread evenly) then
        // answered every eviction with a duel, one out for one in, so a window the climber
        // had grown stayed at its old size: on a hot set that moves (the simulator's
        // synthetic workload at 31,814 entries) a 95% window stayed at 1% in all four shards.
        let main_pays = self.window.is_empty()
            || (self.window.weight() <= self.window_target
                && self.main_weight() > self.main_target);
        if main_pays && !self.main_is_empty() {
            let (victim, victim_hash) = self.main_victim(members, 0)?;
            self.main_ghost.insert(victim_hash);
            self.main
                .take_hand(&mut self.links, victim, members.weight(victim));
            return Some(Eviction {
                id: victim,
                rejected: false,
            });
        }
        // Nothing here moved the window's hand since it was swept, so it is still the
        // candidate (a read since then counts as one just after the sweep would have).
        let (candidate, candidate_hash, candidate_weight) = match swept {
            Some(swept) => swept,
            None => {
                let (candidate, hash) = self.sweep(Region::Window, members)?;
                (candidate, hash, members.weight(candidate))
            }
        };
        self.window
            .take_hand(&mut self.links, candidate, candidate_weight);
        let Some((victim, victim_hash)) = self.main_victim(members, candidate_weight) else {
            return Some(Eviction {
                id: candidate,
                rejected: false,
            });
        };
        let victim_weight = members.weight(victim);
        let returning = self.region(candidate) == Region::Returning;
        if self.admit(
            Contender {
                hash: candidate_hash,
                weight: candidate_weight,
                returning,
            },
            victim_hash,
            victim_weight,
        ) {
            self.main_ghost.insert(victim_hash);
            self.main.take_hand(&mut self.links, victim, victim_weight);
            self.promote(candidate, candidate_weight);
            Some(Eviction {
                id: victim,
                rejected: false,
            })
        } else {
            // The ghost keeps a loser that would win outright if it came back soon (see
            // `admit`): one no heavier than its victim. A heavier one lost on its weight as
            // much as on its newness, and its return says nothing of a hot set that moves
            // (`shift.rs`): remembered, in byte mode with entries of 16 B to 16 KiB, they
            // held the window open at the ceiling and cost about a point of hits per row
            // over the simulator's traces (−2.03 against −1.07, 2 runs each).
            if candidate_weight <= victim_weight {
                self.ghost.insert(candidate_hash);
            }
            Some(Eviction {
                id: candidate,
                rejected: true,
            })
        }
    }

    /// TinyLFU's duel, by frequency per unit of weight: the candidate enters only if, its
    /// recent access ([`ADMISSION_MARGIN`]) aside, it was seen more often for its weight than
    /// the victim for its own (no margin for a lighter candidate whose victim was seen this
    /// period; see [`Policy::admits`]). A candidate the ghost recognised wins outright
    /// unless it is heavier than the victim.
    #[inline]
    fn admit(&mut self, candidate: Contender, victim_hash: u64, victim_weight: u64) -> bool {
        if candidate.returning && candidate.weight <= victim_weight {
            return true;
        }
        let frequency = self.sketch.frequency(candidate.hash);
        self.admits(frequency, candidate.weight, victim_hash, victim_weight)
    }

    /// The duel of [`Policy::admit`] for a candidate whose frequency is already known (a
    /// new entry of another shard, estimated by that shard's sketch).
    ///
    /// Entries of equal weight (count mode, or a byte budget over entries of one size) duel
    /// on frequency alone: the candidate wins if seen more than [`ADMISSION_MARGIN`] times
    /// more often than the victim. Otherwise each side's count is taken per unit of its
    /// weight, the candidate's less its margin: `(candidate - margin) / candidate_weight >
    /// victim / victim_weight`. A miss costs the same whatever the entry weighs, so a byte
    /// of budget is worth most in the entry that is read most often per byte.
    ///
    /// A candidate lighter than a victim the sketch's doorkeeper saw since it last aged
    /// duels without the margin. The margin offsets the candidate's own recent access, which
    /// the doorkeeper counts for it and not for a victim unseen this period; a victim seen
    /// too has its count, so the two are level and the weight decides: at equal counts the
    /// lighter newcomer wins. With the margin, two keys seen once or twice each could
    /// never trade places, and a loop of keys of varied sizes kept the first heavy keys
    /// that filled main. With entries of 16 B to 16 KiB (the simulator's `--weights
    /// varied`, 99 rows, 4 runs) this took larder's hits per row against the best of moka
    /// held to its capacity, quick_cache and LRU by bytes from about −0.3 to +2.2 (scan at
    /// 200 entries +26, zigzag at 100 +14, the web and OLTP traces +0.3 to +0.7). Heavier
    /// candidates, and equal weights, keep the margin: without it for every candidate,
    /// entries of 100 to 120 B (whose weights, with larder's overhead, differ by 11% at
    /// most) lost 1.4 points per row, as equal counts let the newest key in; the lighter
    /// candidates' rule alone costs them 0.15 (`docs/history.md`, byte mode).
    ///
    /// The victim is the first unread entry on probation at least two thirds as heavy as
    /// the candidate, within a few the hand passes ([`LIGHTER_VICTIMS_PASSED`]): picked entry
    /// by entry regardless of weight, a heavy candidate met mostly lighter victims and lost,
    /// and heavy residents were seldom dueled at all.
    ///
    /// Only main's one victim is dueled: a heavy newcomer that beats it is admitted, and
    /// main, then over its target, makes up the rest of the newcomer's weight with its next
    /// CLOCK victims, undueled, however often they were read (the newcomer dueling all of
    /// them together, as moka does, measured worse, and each in turn, as Caffeine does, no
    /// better: `docs/history.md`, byte mode). Until session 25 the duel ignored weights: larder
    /// hit 5.91 points fewer reads per row than those peers in byte mode.
    #[inline]
    pub(crate) fn admits(
        &mut self,
        candidate: u8,
        candidate_weight: u64,
        victim_hash: u64,
        victim_weight: u64,
    ) -> bool {
        let lighter = candidate_weight < victim_weight;
        // A candidate within the margin of zero loses to any victim of its weight or
        // lighter and is too rare for jitter, so the victim's estimate (another sketch
        // line) is not needed. Most candidates are keys seen once or twice, so most duels
        // in count mode end here. Under cachegrind (`examples/op_cost.rs`, the same
        // evictions and rejections either way): a new key's write 1,444 → 1,355
        // instructions at 100,000 entries, a 50-50 operation at 100 entries (whose
        // miniatures duel on most sampled reads) 2,274 → 2,125.
        if candidate <= ADMISSION_MARGIN && !lighter {
            return false;
        }
        let (victim, victim_seen) = self.sketch.frequency_this_period(victim_hash);
        let margin = if lighter && victim_seen {
            0
        } else {
            ADMISSION_MARGIN
        };
        // Weights are below 2^64 and counts below 2^8: the products fit in 128 bits.
        if u128::from(candidate.saturating_sub(margin)) * u128::from(victim_weight)
            > u128::from(victim) * u128::from(candidate_weight)
        {
            return true;
        }
        if candidate < JITTER_MIN_FREQUENCY {
            return false;
        }
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        self.jitter & 127 == 0
    }

    /// Runs the CLOCK hand of `region` to the first entry not read since the hand last
    /// passed, feeding the reads it clears into the sketch. Returns that entry, still linked,
    /// with its key hash. Terminates within two laps: the first lap clears every counter it
    /// passes.
    #[inline]
    fn sweep(&mut self, region: Region, members: &impl Members) -> Option<(u32, u64)> {
        // The fields borrowed apart, so the loop picks the ring once.
        let Self {
            links,
            released,
            sketch,
            ..
        } = self;
        let ring = match region {
            Region::Window | Region::Returning => &mut self.window,
            Region::Main => &mut self.main,
            Region::Protected => &mut self.protected,
        };
        for _ in 0..2 * ring.len() {
            let id = ring.hand(links, released)?;
            let (reads, hash) = members.take_access(id);
            if reads == 0 {
                return Some((id, hash));
            }
            sketch.increment_by(hash, reads);
            ring.advance(links);
        }
        let id = ring.hand(links, released)?;
        Some((id, members.hash(id)))
    }

    /// Takes the reads `id` had since a hand last passed and counts them in the sketch.
    /// Returns them with the entry's key hash.
    fn feed_reads(&mut self, id: u32, members: &impl Members) -> (u8, u64) {
        let (reads, hash) = members.take_access(id);
        if reads != 0 {
            self.sketch.increment_by(hash, reads);
        }
        (reads, hash)
    }

    /// Main's victim, still linked in probation: the first probation entry not read since
    /// the hand passed. Entries read on probation move to protected (feeding the sketch);
    /// protected overflow, oldest unread first, goes back to probation. For a duel against
    /// a candidate of `candidate_weight`, the hand passes up to [`LIGHTER_VICTIMS_PASSED`]
    /// unread entries lighter than two thirds of it, each left for the hand's next round
    /// (0: the first unread entry, whatever it weighs). Bounded: after a fixed number of
    /// steps it takes the oldest entry of main, read or not, so a non-empty main always
    /// yields a victim. Returns the victim with its key hash.
    #[inline]
    fn main_victim(&mut self, members: &impl Members, candidate_weight: u64) -> Option<(u32, u64)> {
        // A candidate of weight 1 (count mode) or 0 (none) has nothing lighter to pass:
        // that hand runs as plain CLOCK, with no weight looked up and nothing counted (the
        // passing loop cost a new key's write in count mode 18 instructions of 1,445).
        if candidate_weight > 1 {
            self.probation_victim::<true>(members, candidate_weight)
        } else {
            self.probation_victim::<false>(members, 0)
        }
    }

    /// [`Policy::main_victim`]'s hand, passing lighter entries if `PASS_LIGHTER`.
    #[inline]
    fn probation_victim<const PASS_LIGHTER: bool>(
        &mut self,
        members: &impl Members,
        candidate_weight: u64,
    ) -> Option<(u32, u64)> {
        let mut passes = if PASS_LIGHTER {
            LIGHTER_VICTIMS_PASSED
        } else {
            0
        };
        let steps = 2 * (self.main.len() + self.protected.len()) + 2 + passes as usize;
        // The first entry passed: should the hand come back to it (probation holds fewer
        // lighter unread entries than it may pass), it is the victim, the oldest of them
        // (the review found the hand lapping probation and dueling whichever entry the
        // passes ran out on).
        let mut first_passed = None;
        for _ in 0..steps {
            let Some(id) = self.hand(Region::Main) else {
                let (demoted, _) = self.sweep(Region::Protected, members)?;
                self.move_to(
                    demoted,
                    Region::Protected,
                    Region::Main,
                    members.weight(demoted),
                );
                continue;
            };
            let (reads, hash) = self.feed_reads(id, members);
            if reads == 0 {
                // Weights below 2^64: the products fit in 128 bits.
                if PASS_LIGHTER
                    && passes > 0
                    && first_passed != Some(id)
                    && 3 * u128::from(members.weight(id)) < 2 * u128::from(candidate_weight)
                {
                    first_passed.get_or_insert(id);
                    passes -= 1;
                    self.main.advance(&self.links);
                    continue;
                }
                return Some((id, hash));
            }
            self.move_to(id, Region::Main, Region::Protected, members.weight(id));
            while self.protected.weight() > self.protected_target {
                let Some((demoted, _)) = self.sweep(Region::Protected, members) else {
                    break;
                };
                self.move_to(
                    demoted,
                    Region::Protected,
                    Region::Main,
                    members.weight(demoted),
                );
            }
        }
        // Out of steps (readers kept marking entries while the hand moved): take the oldest
        // of probation, or of protected, so a non-empty main always yields a victim. (With
        // probation empty, the id moved there is its only one, so it is under its hand.)
        if let Some(id) = self.hand(Region::Main) {
            return Some((id, members.hash(id)));
        }
        let id = self.hand(Region::Protected)?;
        self.move_to(id, Region::Protected, Region::Main, members.weight(id));
        Some((id, members.hash(id)))
    }

    /// Moves `id`, the live id under `from`'s hand, to the newest place in `to`.
    #[inline]
    fn move_to(&mut self, id: u32, from: Region, to: Region, weight: u64) {
        let (ring, links, _) = self.parts(from);
        ring.take_hand(links, id, weight);
        self.set_region(id, to);
        let (ring, links, _) = self.parts(to);
        ring.push(links, id, weight);
    }

    /// The live id under `region`'s hand (dead ids before it are released on the way).
    #[inline]
    fn hand(&mut self, region: Region) -> Option<u32> {
        let (ring, links, released) = self.parts(region);
        ring.hand(links, released)
    }

    /// A region's ring with the shared links and the released ids, borrowed together.
    #[inline]
    fn parts(&mut self, region: Region) -> (&mut Ring, &mut Links, &mut Vec<u32>) {
        let ring = match region {
            Region::Window | Region::Returning => &mut self.window,
            Region::Main => &mut self.main,
            Region::Protected => &mut self.protected,
        };
        (ring, &mut self.links, &mut self.released)
    }

    #[inline]
    fn promote(&mut self, id: u32, weight: u64) {
        self.set_region(id, Region::Main);
        self.main.push(&mut self.links, id, weight);
    }

    fn set_region(&mut self, id: u32, region: Region) {
        self.links.set_tag(id, region.tag());
    }

    fn region(&self, id: u32) -> Region {
        Region::of_tag(self.links.tag(id))
    }

    fn ring_of(&mut self, id: u32) -> &mut Ring {
        self.parts(self.region(id)).0
    }

    /// Bytes of policy metadata, for memory accounting.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.links.heap_bytes()
            + self.released.capacity() * std::mem::size_of::<u32>()
            + self.sketch.heap_bytes()
            + self.ghost.heap_bytes()
            + self.main_ghost.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Entries of unit weight whose hash is their id and whose reads the test sets.
    #[derive(Default)]
    struct Fake {
        reads: RefCell<Vec<u8>>,
        /// Weights other than 1, by id.
        weights: RefCell<std::collections::HashMap<u32, u64>>,
    }

    impl Fake {
        fn read(&self, id: u32) {
            let mut reads = self.reads.borrow_mut();
            if reads.len() <= id as usize {
                reads.resize(id as usize + 1, 0);
            }
            reads[id as usize] = reads[id as usize].saturating_add(1).min(3);
        }
    }

    impl Members for Fake {
        fn weight(&self, id: u32) -> u64 {
            self.weights.borrow().get(&id).copied().unwrap_or(1)
        }
        fn hash(&self, id: u32) -> u64 {
            (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        }
        fn take_access(&self, id: u32) -> (u8, u64) {
            let reads = self
                .reads
                .borrow_mut()
                .get_mut(id as usize)
                .map_or(0, std::mem::take);
            (reads, self.hash(id))
        }
    }

    fn fill(policy: &mut Policy, fake: &Fake, ids: std::ops::Range<u32>) {
        for id in ids {
            policy.on_insert(id, fake.hash(id), 1);
        }
    }

    /// Counts each id's key four more times in the sketch.
    fn make_frequent(policy: &mut Policy, fake: &Fake, ids: std::ops::Range<u32>) {
        for _ in 0..4 {
            for id in ids.clone() {
                policy.sketch.increment(fake.hash(id));
            }
        }
    }

    #[test]
    fn empty_policy_has_no_victim() {
        let mut policy = Policy::new(10, 10, 1);
        assert_eq!(policy.evict(&Fake::default()), None);
    }

    #[test]
    fn every_inserted_id_is_evicted_exactly_once() {
        let fake = Fake::default();
        let mut policy = Policy::new(100, 100, 7);
        fill(&mut policy, &fake, 0..300);
        let mut seen = vec![false; 300];
        while let Some(eviction) = policy.evict(&fake) {
            assert!(!std::mem::replace(&mut seen[eviction.id as usize], true));
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(policy.len(), 0);
    }

    #[test]
    fn frequently_read_entries_survive_a_scan() {
        let fake = Fake::default();
        let mut policy = Policy::new(100, 100, 3);
        fill(&mut policy, &fake, 0..100);
        // Make 0..50 hot: reads (saturating at 3) that the CLOCK hands feed to the sketch.
        for _ in 0..4 {
            for id in 0..50 {
                fake.read(id);
            }
        }
        let mut evicted = Vec::new();
        // A scan of 1000 one-hit ids, each inserted then trimmed back to capacity.
        for id in 1000..2000 {
            policy.on_insert(id, fake.hash(id), 1);
            while policy.len() > 100 {
                evicted.push(policy.evict(&fake).unwrap().id);
            }
        }
        let hot_lost = evicted.iter().filter(|&&id| id < 50).count();
        assert_eq!(hot_lost, 0, "hot ids evicted by a scan: {hot_lost}");
    }

    /// A shard's policy ages its sketch on the shard's floor, a miniature's on its own
    /// (session 29): swapping the two constructors fails here.
    #[test]
    fn a_shard_policy_ages_sooner_than_a_miniature_policy() {
        assert_eq!(Policy::new(61, 61, 1).sketch_period(), 2_560);
        assert_eq!(Policy::miniature(61, 61, 1).sketch_period(), 5_120);
        assert_eq!(Policy::new(300, 300, 1).sketch_period(), 3_000);
    }

    /// Once the miniatures chose 1%, a shard of 10 has no window: a new entry duels main's
    /// victim as soon as it arrives and loses to frequent residents. Before they chose,
    /// the window keeps one entry, and the resident it displaced from the window duels
    /// instead (session 28; until then every chosen window kept one entry).
    #[test]
    fn a_chosen_one_percent_leaves_a_small_shard_no_window() {
        for (share, evicted, rejected) in [
            (WindowShare::STARTING, 9, true),
            (WindowShare::exact(10), 10, true),
        ] {
            let fake = Fake::default();
            let mut policy = Policy::new(10, 10, 1);
            policy.set_window(share);
            fill(&mut policy, &fake, 0..10);
            make_frequent(&mut policy, &fake, 0..10);
            policy.on_insert(10, fake.hash(10), 1);
            let eviction = policy.evict(&fake).unwrap();
            assert_eq!(
                eviction,
                Eviction {
                    id: evicted,
                    rejected
                },
                "{share:?}"
            );
        }
    }

    /// A shard under its capacity evicts when the cache's global budget says so. With no
    /// window, the new entry is the window's last and duels main's victim rather than move
    /// into main for free and leave main to pay with a frequent resident (session 28's
    /// review).
    #[test]
    fn a_shard_under_its_capacity_without_a_window_still_duels() {
        let fake = Fake::default();
        let mut policy = Policy::new(10, 10, 1);
        policy.set_window(WindowShare::exact(10));
        fill(&mut policy, &fake, 0..5);
        make_frequent(&mut policy, &fake, 0..5);
        for newcomer in 5..8 {
            policy.on_insert(newcomer, fake.hash(newcomer), 1);
            let eviction = policy.evict(&fake).unwrap();
            assert_eq!(
                eviction,
                Eviction {
                    id: newcomer,
                    rejected: true
                }
            );
        }
        assert_eq!((policy.window.len(), policy.main_weight()), (0, 5));
    }

    #[test]
    fn main_shrinks_to_a_grown_window_below_capacity() {
        let fake = Fake::default();
        let mut policy = Policy::new(100, 100, 3);
        // Filled to 90 of its 100: the window at its 1%, main holding the rest.
        fill(&mut policy, &fake, 0..90);
        while policy.window.weight() > policy.window_target {
            let (id, _) = policy.sweep(Region::Window, &fake).unwrap();
            policy.window.take_hand(&mut policy.links, id, 1);
            policy.promote(id, 1);
        }
        assert_eq!(policy.window.len(), 1);
        policy.set_window(WindowShare::exact(500));
        // Evictions the cache's budget forces (the shard is under its capacity): main pays
        // for each new entry until it is down to its half, and the window keeps them all.
        let mut inserted = 0;
        while policy.main_weight() > policy.main_target {
            let id = 90 + inserted;
            policy.on_insert(id, fake.hash(id), 1);
            let evicted = policy.evict(&fake).unwrap();
            assert!(evicted.id < 90, "evicted {evicted:?} from the window");
            inserted += 1;
        }
        assert_eq!(inserted, 89 - 50);
        assert_eq!(policy.window.len(), 1 + inserted as usize);
    }

    #[test]
    fn a_duel_below_the_jitter_floor_admits_only_by_more_than_the_margin() {
        // Each key seen `n` times: the first access sets the doorkeeper, the others count.
        let seen = |policy: &mut Policy, hash: u64, n: u8| {
            for _ in 0..n {
                policy.sketch.increment(hash);
            }
        };
        for candidate in 0..JITTER_MIN_FREQUENCY {
            for victim in 0..JITTER_MIN_FREQUENCY + 2 {
                let mut policy = Policy::new(100, 100, 9);
                let (c, v) = (0x1234_5678_9ABC_DEF1, 0x0FED_CBA9_8765_4321);
                seen(&mut policy, c, candidate);
                seen(&mut policy, v, victim);
                assert_eq!(policy.sketch.frequency(c), candidate);
                assert_eq!(policy.sketch.frequency(v), victim);
                // Equal weights, whatever they are, duel on frequency alone.
                for weight in [1, 7, u64::MAX] {
                    let contender = Contender {
                        hash: c,
                        weight,
                        returning: false,
                    };
                    assert_eq!(
                        policy.admit(contender, v, weight),
                        candidate > victim + ADMISSION_MARGIN,
                        "candidate {candidate}, victim {victim}, weight {weight}"
                    );
                }
            }
        }
    }

    /// Inserts `id` weighing `weight`, seen `seen` times in all (its insert included), and
    /// evicts until the policy is back within its capacity; returns what left.
    fn insert_weighing(
        policy: &mut Policy,
        fake: &Fake,
        id: u32,
        weight: u64,
        seen: u8,
    ) -> Vec<Eviction> {
        fake.weights.borrow_mut().insert(id, weight);
        for _ in 1..seen {
            policy.sketch.increment(fake.hash(id));
        }
        policy.on_insert(id, fake.hash(id), weight);
        let mut evicted = Vec::new();
        while policy.weight() > policy.capacity {
            evicted.push(policy.evict(fake).unwrap());
        }
        evicted
    }

    #[test]
    fn heavy_newcomers_read_a_little_more_often_do_not_displace_light_residents() {
        let fake = Fake::default();
        let mut policy = Policy::new(100, 100, 3);
        // 100 residents weighing 1, each seen 4 times.
        for id in 0..100 {
            assert!(insert_weighing(&mut policy, &fake, id, 1, 4).is_empty());
        }
        // Newcomers weighing 20, each seen 6 times: more often than any resident, but 20
        // residents seen 80 times in all would leave for each.
        let mut evicted = Vec::new();
        for id in 1000..1010 {
            evicted.extend(insert_weighing(&mut policy, &fake, id, 20, 6));
        }
        // (A resident still in the window when the newcomers came is a candidate too, and
        // may lose its own duel: that is not a displacement.)
        let displaced: Vec<_> = evicted
            .iter()
            .filter(|e| e.id < 100 && !e.rejected)
            .collect();
        assert!(displaced.is_empty(), "residents displaced: {displaced:?}");
        assert!(evicted.iter().any(|e| e.id >= 1000 && e.rejected));
    }

    #[test]
    fn a_light_newcomer_displaces_a_heavy_resident_read_about_as_often() {
        let fake = Fake::default();
        let mut policy = Policy::new(100, 100, 3);
        // 10 residents weighing 10, each seen 4 times.
        for id in 0..10 {
            assert!(insert_weighing(&mut policy, &fake, id, 10, 4).is_empty());
        }
        // Newcomers weighing 1, each seen 5 times: one read more than a resident (the
        // margin a recent access gets), so by frequency alone each would lose its duel;
        // per unit of weight each is read ten times as often, and residents leave for them.
        let mut evicted = Vec::new();
        for id in 100..150 {
            evicted.extend(insert_weighing(&mut policy, &fake, id, 1, 5));
        }
        let displaced = evicted.iter().filter(|e| e.id < 10 && !e.rejected).count();
        assert!(displaced > 0, "{evicted:?}");
    }

    /// Probation holding `weights` in order, oldest (under the hand) first; ids from 0.
    fn probation(fake: &Fake, weights: &[u64]) -> Policy {
        let mut policy = Policy::new(100_000, 100, 5);
        for (id, &weight) in (0u32..).zip(weights) {
            fake.weights.borrow_mut().insert(id, weight);
            policy.promote(id, weight);
        }
        policy
    }

    #[test]
    fn a_heavy_candidate_duels_the_first_unread_victim_at_least_two_thirds_its_weight() {
        let fake = Fake::default();
        // Five light entries, then a heavy one.
        let mut policy = probation(&fake, &[10, 10, 10, 10, 10, 100]);
        // Count mode (weight 1), no candidate (0), or a candidate at most half as heavy
        // again as the victim: the first unread entry, as CLOCK has it.
        for candidate_weight in [0, 1, 14, 15] {
            assert_eq!(policy.main_victim(&fake, candidate_weight).unwrap().0, 0);
        }
        // Heavier than that, the hand passes the light ones for the heavy one; they wait
        // for its next round, and a read one still moves to protected.
        fake.read(3);
        assert_eq!(policy.main_victim(&fake, 16).unwrap().0, 5);
        policy.main.take_hand(&mut policy.links, 5, 100);
        assert_eq!(policy.region(3), Region::Protected);
        assert_eq!(policy.main_victim(&fake, 0).unwrap().0, 0);
    }

    #[test]
    fn the_hand_passes_a_bounded_number_of_lighter_victims() {
        let fake = Fake::default();
        let passed = LIGHTER_VICTIMS_PASSED as usize;
        let mut weights = vec![10; passed + 2];
        weights.push(1000);
        let mut policy = probation(&fake, &weights);
        // The heavy entry is beyond reach: the first light one after those passed.
        assert_eq!(policy.main_victim(&fake, 1000).unwrap().0, passed as u32);
        // Entries of one weight never pass one another.
        let mut policy = probation(&fake, &[7; 12]);
        assert_eq!(policy.main_victim(&fake, 7).unwrap().0, 0);
    }

    #[test]
    fn a_hand_that_passed_every_light_entry_duels_the_oldest() {
        // Fewer light entries than the hand may pass, none heavy enough: once the hand is
        // back at the first one it passed, that one is the victim (the review found it
        // lapping probation: with 3 entries it dueled the third, with 5 the fourth).
        let fake = Fake::default();
        for n in 1..=LIGHTER_VICTIMS_PASSED as usize {
            let mut policy = probation(&fake, &vec![10; n]);
            assert_eq!(policy.main_victim(&fake, 100).unwrap().0, 0, "{n} entries");
        }
    }

    #[test]
    fn a_new_entry_of_another_shard_duels_a_victim_of_its_weight() {
        // `yields_to` finds the victim as a window candidate's duel does: a heavy newcomer
        // is set against the heavy resident, not the light ones before it.
        let fake = Fake::default();
        let mut policy = probation(&fake, &[10, 10, 10, 100]);
        let (_, victim_weight) = policy.yields_to(1, 90, false, &fake).unwrap();
        assert_eq!(victim_weight, 100);
        let mut policy = probation(&fake, &[10, 10, 10, 100]);
        let (_, victim_weight) = policy.yields_to(1, 1, false, &fake).unwrap();
        assert_eq!(victim_weight, 10);
    }

    #[test]
    fn a_lighter_candidate_duels_a_victim_seen_this_period_without_the_margin() {
        let mut policy = Policy::new(1000, 1000, 9);
        let (c, v) = (0x1234_5678_9ABC_DEF1, 0x0FED_CBA9_8765_4321);
        // Both seen twice this period: level counts, each with the doorkeeper's share.
        for _ in 0..2 {
            policy.sketch.increment(c);
            policy.sketch.increment(v);
        }
        let candidate = policy.sketch.frequency(c);
        assert_eq!(
            (candidate, policy.sketch.frequency_this_period(v)),
            (2, (2, true))
        );
        // Equal weights keep the margin: count mode's rule, the newcomer loses.
        assert!(!policy.admits(candidate, 100, v, 100));
        // A little lighter, it wins: the counts are level and the weight decides.
        assert!(policy.admits(candidate, 99, v, 100));
        // A little heavier, it loses.
        assert!(!policy.admits(candidate, 101, v, 100));
        // Seen once each (the doorkeeper's bit alone), the lighter one still wins.
        let (c1, v1) = (0x0BAD_CAFE_F00D_0001, 0x7EED_BEEF_0000_0003);
        policy.sketch.increment(c1);
        policy.sketch.increment(v1);
        assert!(policy.admits(1, 60, v1, 100));
        assert!(!policy.admits(1, 100, v1, 100));
        // After the sketch ages, the victim is unseen this period: a candidate level with
        // it keeps the margin, which its own recent access would have earned it.
        for _ in 0..3 {
            policy.sketch.increment(v);
        }
        policy.sketch.age();
        let (victim, seen) = policy.sketch.frequency_this_period(v);
        assert!(!seen && victim >= 2, "{victim}");
        assert!(!policy.admits(victim, 99, v, 100));
        // Per unit of weight it must then beat the victim by the margin's worth.
        assert!(policy.admits(
            victim,
            100 * u64::from(victim - 1) / u64::from(victim) / 2,
            v,
            100
        ));
    }

    #[test]
    fn a_returning_candidate_wins_outright_only_if_no_heavier_than_the_victim() {
        let mut policy = Policy::new(100, 100, 9);
        let (c, v) = (0x1234_5678_9ABC_DEF1, 0x0FED_CBA9_8765_4321);
        for _ in 0..3 {
            policy.sketch.increment(v);
        }
        let returning = |weight| Contender {
            hash: c,
            weight,
            returning: true,
        };
        assert!(policy.admit(returning(5), v, 5));
        assert!(policy.admit(returning(1), v, 5));
        // Heavier: it duels, and unseen otherwise, loses.
        assert!(!policy.admit(returning(6), v, 5));
    }

    #[test]
    fn regions_round_trip_through_their_tags() {
        for region in Region::ALL {
            assert_eq!(Region::of_tag(region.tag()), region);
        }
    }

    #[test]
    fn a_small_main_still_has_a_protected_segment() {
        let policy = Policy::new(10, 10, 1);
        assert_eq!(policy.main_target, 9);
        assert_eq!(policy.protected_target, 7);
    }

    #[test]
    fn removing_an_id_takes_it_out_of_eviction_order() {
        let fake = Fake::default();
        let mut policy = Policy::new(10, 10, 5);
        fill(&mut policy, &fake, 0..5);
        policy.on_remove(2, 1);
        let mut order = Vec::new();
        while let Some(eviction) = policy.evict(&fake) {
            order.push(eviction.id);
        }
        order.sort_unstable();
        assert_eq!(order, vec![0, 1, 3, 4]);
    }
}
