//! Hierarchical timing wheel for per-entry TTL expiry (one per shard, used under the shard lock).
//!
//! | level    | tick (bucket span)    | buckets | horizon (buckets × tick) |
//! |----------|-----------------------|---------|--------------------------|
//! | 0        | 2^30 ns ≈ 1.07 s      | 64      | 2^36 ns ≈ 68.7 s         |
//! | 1        | 2^36 ns ≈ 1.15 min    | 64      | 2^42 ns ≈ 73.3 min       |
//! | 2        | 2^42 ns ≈ 1.22 h      | 32      | 2^47 ns ≈ 39.1 h         |
//! | 3        | 2^47 ns ≈ 1.63 days   | 4       | 2^49 ns ≈ 6.5 days       |
//! | overflow | 2^49 ns ≈ 6.5 days    | 1       | unbounded                |
//!
//! Each level's horizon equals the next level's tick, so an entry cascaded out of a higher
//! bucket always fits a lower level. An entry goes to the lowest level whose tick distance from
//! the wheel time is below that level's bucket count; level 0 also takes entries that are
//! already due.
//!
//! `advance` works through per-level cursors (the next tick of each level still to visit).
//! A visited bucket is spliced whole onto a `pending` list, and pending nodes are then either
//! expired or re-placed relative to the new time. Both steps are O(1) units of work, so the
//! caller's budget can stop the wheel between any two of them with every id still linked in
//! some list; passing an empty bucket is free. Each level visits at most one revolution per
//! call, so even a jump of years costs O(buckets + entries).
//!
//! The current level-0 bucket is the one subtle spot: it holds ids not yet due within the
//! current tick and ids that were due when scheduled. A forward `advance` therefore re-opens
//! the current tick, `place` pulls the level-0 cursor back when it files a due id behind it,
//! and each head keeps a lower bound of its expiries so that re-opening is O(1) until
//! something in the bucket is really due.

/// Link value of an unscheduled node.
const NIL: u32 = u32::MAX;
/// Tick size of each level as a power of two (the last one is the overflow bucket).
const SHIFTS: [u32; LEVELS] = [30, 36, 42, 47, 49];
/// Bucket count of each level (powers of two, so a tick maps to a bucket through a mask).
const BUCKETS: [u64; LEVELS] = [64, 64, 32, 4, 1];
/// Index of each level's first bucket head in `heads`.
const OFFSETS: [usize; LEVELS] = [0, 64, 128, 160, 164];
/// Number of levels, counting the overflow bucket.
const LEVELS: usize = 5;
/// Index in `heads` of the list of nodes taken out of buckets and not yet handled.
const PENDING: usize = 165;
/// Bucket heads plus the pending head.
const HEADS: usize = PENDING + 1;
/// Links at or above this value name a list head, which is why ids must stay below it.
const HEAD_BASE: u32 = NIL - HEADS as u32;
/// Link value naming the pending list's head.
const PENDING_LINK: u32 = HEAD_BASE + PENDING as u32;

/// A link in an intrusive circular doubly-linked list, 8 bytes. An id's expiry is not
/// copied here: the cache already keeps it in the entry, and `advance` asks for it.
#[derive(Clone, Copy, Debug)]
struct Node {
    /// Previous link, or `NIL` when unscheduled.
    prev: u32,
    /// Next link, or `NIL` when unscheduled.
    next: u32,
}

impl Node {
    /// An unscheduled node (`link == NIL`) or an empty list head (`link` naming itself).
    const fn looped(link: u32) -> Self {
        Self {
            prev: link,
            next: link,
        }
    }
}

/// A hierarchical timing wheel mapping dense `u32` ids to expiry times in nanoseconds.
pub(crate) struct TimerWheel {
    /// Per-id nodes, indexed by id and grown on demand.
    nodes: Vec<Node>,
    /// List heads: the buckets of every level, then `PENDING`.
    heads: Vec<Node>,
    /// Per head, a lower bound of its nodes' expiry times, so that repeated advances inside
    /// the same level-0 tick can skip the current bucket.
    bounds: Vec<u64>,
    /// Latest `now` accepted by `advance`; placement is relative to it.
    time: u64,
    /// Per level, the next tick whose bucket has not been visited yet.
    cursor: [u64; LEVELS],
    /// Number of scheduled ids.
    len: usize,
    /// Ids the wheel is expected to see (0 when unknown): `nodes` grows onto it.
    expected: usize,
}

impl TimerWheel {
    /// Creates an empty wheel whose clock starts at `now`.
    pub(crate) fn new(now: u64) -> Self {
        let heads = (HEAD_BASE..NIL).map(Node::looped).collect();
        let cursor = std::array::from_fn(|l| (now >> SHIFTS[l]) + 1);
        Self {
            nodes: Vec::new(),
            heads,
            bounds: vec![u64::MAX; HEADS],
            time: now,
            cursor,
            len: 0,
            expected: 0,
        }
    }

    /// The same wheel, expecting ids below `expected` (see `crate::growth`).
    pub(crate) fn expecting(mut self, expected: usize) -> Self {
        self.expected = expected;
        self
    }

    /// The ids it expects (see [`TimerWheel::expecting`]).
    pub(crate) fn expected(&self) -> usize {
        self.expected
    }

    /// Schedules `id` to expire at `expires_at` (ns). If `id` is already scheduled it is moved.
    /// `expires_at == u64::MAX` means never: deschedule instead.
    ///
    /// # Panics
    /// If `id` is one of the top 167 `u32` values, which the list encoding reserves.
    pub(crate) fn schedule(&mut self, id: u32, expires_at: u64) {
        if expires_at == u64::MAX {
            self.deschedule(id);
            return;
        }
        assert!(id < HEAD_BASE, "timer id {id} is reserved");
        let idx = id as usize;
        if idx >= self.nodes.len() {
            crate::growth::reserve(&mut self.nodes, idx + 1, self.expected);
            self.nodes.resize(idx + 1, Node::looped(NIL));
        }
        if self.nodes[idx].prev == NIL {
            self.len += 1;
        } else {
            self.unlink(id);
        }
        self.place(id, expires_at);
    }

    /// Removes `id` if scheduled; no-op otherwise. O(1).
    pub(crate) fn deschedule(&mut self, id: u32) {
        if self.is_scheduled(id) {
            self.unlink(id);
            self.len -= 1;
        }
    }

    /// Whether `id` is currently scheduled.
    pub(crate) fn is_scheduled(&self, id: u32) -> bool {
        self.nodes.get(id as usize).is_some_and(|n| n.prev != NIL)
    }

    /// Number of scheduled ids.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Advances the wheel toward `now`, pushing onto `expired` every scheduled id whose
    /// expiry is at or before `now` (they become unscheduled). `expiry_of` gives the expiry
    /// each scheduled id was last scheduled with; doing at most about `max_work` units of work
    /// (node visits and visits of buckets that hold ids; at least two, so that every call
    /// makes progress). Empty buckets, and level-0 buckets none of whose ids is due, are
    /// passed at no charge, at most one revolution per level (165 heads): charged, a jump of
    /// 64 level-0 ticks (about 68 s) between two calls spent a call's whole work on level 0,
    /// and a shard written that rarely never reached level 1 again (session 23's review).
    /// Returns true if it caught up with `now` fully, false if it stopped early because of the
    /// work limit (the next call resumes where it stopped; no id is lost or returned twice).
    /// Never returns an id whose expires_at > now. A `now` below a previous one is a no-op
    /// returning true: the clock went backwards, and the next forward call catches up.
    pub(crate) fn advance(
        &mut self,
        now: u64,
        max_work: usize,
        expiry_of: impl Fn(u32) -> u64,
        expired: &mut Vec<u32>,
    ) -> bool {
        if now < self.time {
            return true;
        }
        if now > self.time {
            // Ids of the current level-0 tick that were not yet due may be due now.
            self.cursor[0] = self.cursor[0].min(self.time >> SHIFTS[0]);
            self.time = now;
        }
        let mut budget = max_work.max(2);
        loop {
            let first = self.heads[PENDING].next;
            // Lowest level first: ids cascaded from above then land in level-0 buckets that this
            // call has already visited, instead of being visited again.
            let level = (first == PENDING_LINK)
                .then(|| (0..LEVELS).find(|&l| self.cursor[l] <= now >> SHIFTS[l]));
            if level == Some(None) {
                return true;
            }
            if let Some(Some(l)) = level {
                let end = now >> SHIFTS[l];
                let tick = self.cursor[l].max(end.saturating_sub(BUCKETS[l] - 1));
                let head = OFFSETS[l] + (tick & (BUCKETS[l] - 1)) as usize;
                let empty = self.heads[head].next == HEAD_BASE + head as u32;
                // An empty or not-yet-due bucket costs no budget (at most one revolution per
                // level per call, so the scan stays bounded).
                if empty || (l == 0 && self.bounds[head] > now) {
                    self.cursor[l] = tick + 1;
                    continue;
                }
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                self.cursor[l] = tick + 1;
                self.take_bucket(head);
            } else {
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                self.unlink(first);
                let expires_at = expiry_of(first);
                if expires_at <= now {
                    self.len -= 1;
                    expired.push(first);
                } else {
                    self.place(first, expires_at);
                }
            }
        }
    }

    /// Bytes of heap memory owned by the wheel.
    pub(crate) fn heap_bytes(&self) -> usize {
        (self.nodes.capacity() + self.heads.capacity()) * std::mem::size_of::<Node>()
            + self.bounds.capacity() * std::mem::size_of::<u64>()
    }

    /// Links an unlinked `id`, expiring at `expires_at`, into the bucket that time belongs to
    /// at the current time.
    fn place(&mut self, id: u32, expires_at: u64) {
        // Already-due ids go to the current level-0 bucket, which the next advance visits.
        let at = expires_at.max(self.time);
        let level = (0..LEVELS - 1)
            .find(|&l| (at >> SHIFTS[l]) - (self.time >> SHIFTS[l]) < BUCKETS[l])
            .unwrap_or(LEVELS - 1);
        let tick = at >> SHIFTS[level];
        if level == 0 && tick < self.cursor[0] {
            // The current bucket was already visited at this time; a due id must not wait for
            // the clock to move.
            self.cursor[0] = tick;
        }
        let head = OFFSETS[level] + (tick & (BUCKETS[level] - 1)) as usize;
        let head_link = HEAD_BASE + head as u32;
        let last = self.heads[head].prev;
        self.heads[head].prev = id;
        self.bounds[head] = self.bounds[head].min(expires_at);
        self.link_mut(last).next = id;
        let node = &mut self.nodes[id as usize];
        (node.prev, node.next) = (last, head_link);
    }

    /// Unlinks a linked `id` from whatever list holds it.
    fn unlink(&mut self, id: u32) {
        let Node { prev, next, .. } = self.nodes[id as usize];
        self.link_mut(prev).next = next;
        self.link_mut(next).prev = prev;
        let node = &mut self.nodes[id as usize];
        (node.prev, node.next) = (NIL, NIL);
    }

    /// Moves every node of bucket `head` to the end of the pending list in O(1).
    fn take_bucket(&mut self, head: usize) {
        let (first, last) = (self.heads[head].next, self.heads[head].prev);
        let self_link = HEAD_BASE + head as u32;
        if first == self_link {
            return;
        }
        self.heads[head] = Node::looped(self_link);
        self.bounds[head] = u64::MAX;
        let pending_last = self.heads[PENDING].prev;
        self.link_mut(pending_last).next = first;
        self.link_mut(first).prev = pending_last;
        self.link_mut(last).next = PENDING_LINK;
        self.heads[PENDING].prev = last;
    }

    /// The node or list head a link value names.
    fn link_mut(&mut self, link: u32) -> &mut Node {
        match link.checked_sub(HEAD_BASE) {
            Some(head) => &mut self.heads[head as usize],
            None => &mut self.nodes[link as usize],
        }
    }
}

/// A wheel that keeps each id's expiry itself, for code that has no entries to look it up
/// in: the wheel's own tests and the fuzz target.
#[cfg(any(test, fuzzing, feature = "test-util"))]
#[derive(Debug)]
pub(crate) struct TrackedWheel {
    wheel: TimerWheel,
    expiries: std::collections::HashMap<u32, u64>,
}

#[cfg(any(test, fuzzing, feature = "test-util"))]
impl TrackedWheel {
    pub(crate) fn new(now: u64) -> Self {
        Self {
            wheel: TimerWheel::new(now),
            expiries: std::collections::HashMap::new(),
        }
    }

    pub(crate) fn schedule(&mut self, id: u32, expires_at: u64) {
        self.wheel.schedule(id, expires_at);
        self.expiries.insert(id, expires_at);
    }

    pub(crate) fn deschedule(&mut self, id: u32) {
        self.wheel.deschedule(id);
    }

    pub(crate) fn is_scheduled(&self, id: u32) -> bool {
        self.wheel.is_scheduled(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.wheel.len()
    }

    pub(crate) fn advance(&mut self, now: u64, max_work: usize, expired: &mut Vec<u32>) -> bool {
        let expiries = &self.expiries;
        self.wheel
            .advance(now, max_work, |id| expiries[&id], expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const DAY: u64 = 86_400 * SEC;

    /// Advances with unlimited work and returns the sorted expired ids.
    fn run(w: &mut TrackedWheel, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        assert!(w.advance(now, usize::MAX, &mut out));
        out.sort_unstable();
        out
    }

    /// Each level's horizon must be the next level's tick for cascading to work.
    #[test]
    fn levels_chain_and_node_is_8_bytes() {
        for l in 0..LEVELS - 1 {
            assert_eq!(BUCKETS[l] << SHIFTS[l], 1 << SHIFTS[l + 1]);
            assert_eq!(OFFSETS[l] + BUCKETS[l] as usize, OFFSETS[l + 1]);
        }
        assert_eq!(std::mem::size_of::<Node>(), 8);
    }

    /// Delays land on every level (700 ns .. 40 days, the last in overflow); expiry is exact.
    #[test]
    fn expires_at_exact_time_on_every_level() {
        let secs = [0, 2, 90, 3_000, 108_000, 259_200, 3_456_000];
        for (t0, s) in secs.iter().flat_map(|&s| [(5, s), (SEC + 7, s)]) {
            let (d, mut w) = (s * SEC + 700, TrackedWheel::new(t0));
            w.schedule(3, t0 + d);
            assert_eq!(run(&mut w, t0 + d / 2), Vec::<u32>::new());
            assert_eq!(run(&mut w, t0 + d - 1), Vec::<u32>::new(), "delay {d}");
            assert!(w.is_scheduled(3));
            assert_eq!(run(&mut w, t0 + d), vec![3], "delay {d}");
            assert_eq!((w.len(), w.is_scheduled(3)), (0, false));
        }
    }

    /// Descheduling is idempotent, rescheduling moves, and `u64::MAX` deschedules.
    #[test]
    fn deschedule_and_reschedule() {
        let mut w = TrackedWheel::new(0);
        w.schedule(1, 10 * SEC);
        w.schedule(2, 20 * SEC);
        for id in [1, 1, 999] {
            w.deschedule(id);
        }
        assert_eq!(w.len(), 1);
        w.schedule(2, 5 * DAY); // moved later
        w.schedule(3, 5 * DAY);
        w.schedule(3, SEC); // moved earlier
        w.schedule(4, SEC);
        w.schedule(4, u64::MAX); // never
        assert_eq!((w.len(), w.is_scheduled(4)), (2, false));
        assert_eq!(run(&mut w, DAY), vec![3]);
        assert_eq!(run(&mut w, 5 * DAY - 1), Vec::<u32>::new());
        assert_eq!(run(&mut w, 5 * DAY), vec![2]);
    }

    /// A jump of days costs one revolution per level plus the ids, whatever the distance.
    #[test]
    fn overflow_and_huge_jumps_are_cheap() {
        let mut w = TrackedWheel::new(SEC);
        let n = 1_000u32;
        for id in 0..n {
            w.schedule(id, SEC + u64::from(id) * 997 * SEC); // spread over ~11.5 days
        }
        w.schedule(n, 365 * DAY);
        w.schedule(n + 1, u64::MAX - 1);
        let mut out = Vec::new();
        // One revolution of every level, one visit per id, and re-placing the two far ids.
        assert!(w.advance(20 * DAY, HEADS + n as usize + 2, &mut out));
        assert_eq!(out.len(), n as usize);
        assert_eq!(run(&mut w, 365 * DAY - 1), Vec::<u32>::new());
        assert_eq!(run(&mut w, 365 * DAY), vec![n]);
        assert_eq!(run(&mut w, u64::MAX - 2), Vec::<u32>::new());
        assert_eq!(run(&mut w, u64::MAX), vec![n + 1]);
    }

    /// Already-due ids are not lost; same-tick ids stay until their exact time.
    #[test]
    fn already_due_and_same_tick_entries() {
        let mut w = TrackedWheel::new(0);
        assert_eq!(run(&mut w, 100 * SEC), Vec::<u32>::new());
        w.schedule(1, 50 * SEC); // already due: returned by the next advance, even at the same now
        w.schedule(2, 100 * SEC + 10);
        w.schedule(3, 100 * SEC + 20);
        assert_eq!(run(&mut w, 100 * SEC), vec![1]);
        assert_eq!(run(&mut w, 100 * SEC + 10), vec![2]);
        assert_eq!(run(&mut w, 100 * SEC + 19), Vec::<u32>::new());
        assert_eq!(run(&mut w, 100 * SEC + 20), vec![3]);
    }

    /// A clock going backwards changes nothing.
    #[test]
    fn now_going_backwards_is_a_noop() {
        let mut w = TrackedWheel::new(100 * SEC);
        w.schedule(2, 50 * SEC);
        assert_eq!((run(&mut w, 60 * SEC), w.is_scheduled(2)), (vec![], true));
        assert_eq!(run(&mut w, 100 * SEC), vec![2]);
    }

    /// A tight budget spreads the work over calls, with changes made in between.
    #[test]
    fn bounded_work_resumes_without_loss_or_duplicates() {
        let mut w = TrackedWheel::new(0);
        for id in 0..100 {
            w.schedule(id, 3 * SEC + u64::from(id % 3) * DAY);
        }
        let mut out = Vec::new();
        for call in 1.. {
            let before = out.len();
            let done = w.advance(2 * DAY + 3 * SEC, 7, &mut out);
            assert!(out.len() - before <= 7);
            if call == 3 {
                // Both due at 2 days: on level 3, which this call's lower levels keep it
                // from (it may be on the pending list by now).
                w.deschedule(50);
                w.schedule(53, 4 * DAY);
            }
            if done {
                break;
            }
        }
        out.sort_unstable();
        let want: Vec<u32> = (0..100).filter(|&id| id != 50 && id != 53).collect();
        assert_eq!((out, w.len()), (want, 1));
        assert_eq!(run(&mut w, 4 * DAY), vec![53]);
        assert!(w.wheel.heap_bytes() >= 100 * 8);
    }
}

#[cfg(all(test, not(miri)))]
mod proptests {
    use super::TrackedWheel;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A random operation against the wheel.
    #[derive(Clone, Debug)]
    enum Op {
        /// Schedule `id` at `now + delta`, or in the past if `delta` is `None`.
        Schedule(u32, Option<u64>),
        /// Deschedule `id`, through `deschedule` or through `schedule(id, u64::MAX)`.
        Deschedule(u32, bool),
        /// Advance by `delta` (backwards if `None`) with a budget; optionally loop to completion.
        Advance(Option<u64>, usize, bool),
    }

    /// Offsets reaching every level: ns, seconds, minutes, hours, days, and past the top level.
    fn delta() -> impl Strategy<Value = u64> {
        (0u32..6, any::<u64>())
            .prop_map(|(k, r)| r % (1u64 << [12, 31, 37, 43, 48, 53][k as usize]))
    }

    /// Schedules dominate so that buckets are crowded; advances are often interrupted.
    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..40, prop::option::weighted(0.9, delta())).prop_map(|(i, d)| Op::Schedule(i, d)),
            1 => (0u32..40, any::<bool>()).prop_map(|(i, b)| Op::Deschedule(i, b)),
            3 => (prop::option::weighted(0.95, prop_oneof![Just(0), delta()]), 1usize..6, any::<bool>())
                .prop_map(|(d, w, f)| Op::Advance(d, w, f)),
        ]
    }

    proptest! {
        // Miri runs each case thousands of times slower: a few cases still walk every path.
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]
        /// Random operation sequences agree with a `BTreeMap` model of id -> expiry.
        #[test]
        fn matches_model(start in 1u64..1 << 40, ops in prop::collection::vec(op(), 1..120)) {
            let mut w = TrackedWheel::new(start);
            let mut model = BTreeMap::<u32, u64>::new();
            let mut now = start;
            let check = |w: &mut TrackedWheel, model: &mut BTreeMap<u32, u64>, at: u64, work: usize| {
                let mut out = Vec::new();
                let done = w.advance(at, work, &mut out);
                for id in &out {
                    let e = model.remove(id);
                    prop_assert!(e.is_some_and(|e| e <= at), "id {} returned early/twice: {:?}", id, e);
                }
                if done {
                    prop_assert!(model.values().all(|&e| e > at), "due entry left behind");
                }
                Ok(done)
            };
            for op in ops {
                match op {
                    Op::Schedule(id, d) => {
                        let e = d.map_or(now.saturating_sub(7), |d| now + d);
                        w.schedule(id, e);
                        model.insert(id, e);
                    }
                    Op::Deschedule(id, via_schedule) => {
                        match via_schedule {
                            true => w.schedule(id, u64::MAX),
                            false => w.deschedule(id),
                        }
                        model.remove(&id);
                    }
                    Op::Advance(None, work, _) => {
                        let mut out = Vec::new();
                        prop_assert!(w.advance(now.saturating_sub(1), work, &mut out));
                        prop_assert!(out.is_empty());
                    }
                    Op::Advance(Some(d), work, finish) => {
                        now += d;
                        while !check(&mut w, &mut model, now, work)? && finish {}
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                prop_assert!((0..40).all(|id| w.is_scheduled(id) == model.contains_key(&id)));
            }
            now += 1 << 53;
            while !check(&mut w, &mut model, now, 3)? {}
            prop_assert!(model.is_empty() && w.len() == 0);
        }
    }
}

impl std::fmt::Debug for TimerWheel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("time", &self.time)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
