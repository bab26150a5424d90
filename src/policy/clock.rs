//! CLOCK rings: circular lists of slab ids with a hand, sharing one link array.
//!
//! Each id lives in at most one ring, so the rings of a policy (window, main) share a single
//! `Vec<Link>` indexed by id. New ids join just behind the hand, so the hand meets them last:
//! the hand always points at the oldest id that has not been given a second chance.
//!
//! The lists are singly linked: one `u32` per id, where a doubly linked ring took two (4
//! bytes per entry less). Every move the policy makes takes the id under the hand, whose
//! predecessor the ring keeps (its `tail`). An id removed from elsewhere in the ring (the
//! entry was removed, replaced under a new id, or expired) is only marked dead and stays
//! linked until the hand reaches it, or until dead ids outnumber a quarter of the live ones
//! and the ring is compacted; either way it is then handed back through `released`, and
//! its slab id may be reused only after that.

/// Marks "no id": an empty ring's hand, an unlinked id's successor.
pub(crate) const NIL: u32 = ID_MASK;

/// Bits of [`Link::next_tag`] holding an id; the three above hold the id's tag.
const ID_BITS: u32 = 29;
const ID_MASK: u32 = (1 << ID_BITS) - 1;
// Ids stay below `MAX_ID` (see `Slab::insert`), so none is `NIL`.
const _: () = assert!(crate::raw::entry::MAX_ID <= ID_MASK);

/// Tags an id can carry (see [`Links::tag`]); the last one, [`DEAD`], is the ring's own.
pub(crate) const TAGS: u8 = 7;
/// The tag of an id removed from its ring but still linked in it.
const DEAD: u8 = TAGS;

/// An id's successor in its ring, and the id's own tag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    /// The successor (low [`ID_BITS`] bits) and the tag the policy keeps for this id (top
    /// three): its region, or [`DEAD`]. In the link rather than an array of its own, it
    /// costs no memory and no cache line of its own.
    next_tag: u32,
}

impl Link {
    fn next(self) -> u32 {
        self.next_tag & ID_MASK
    }

    fn set_next(&mut self, id: u32) {
        self.next_tag = (self.next_tag & !ID_MASK) | id;
    }

    fn tag(self) -> u8 {
        (self.next_tag >> ID_BITS) as u8
    }

    fn set_tag(&mut self, tag: u8) {
        self.next_tag = (self.next_tag & ID_MASK) | (u32::from(tag) << ID_BITS);
    }
}

const UNLINKED: Link = Link { next_tag: NIL };

/// The shared link storage of every ring of one policy.
#[derive(Debug, Default)]
pub(crate) struct Links {
    links: Vec<Link>,
    /// Ids the shard is expected to use (0 when unknown); see `crate::growth`.
    expected: usize,
}

impl Links {
    /// Empty link storage for about `expected` ids (0 when unknown).
    pub(crate) fn expecting(expected: usize) -> Self {
        Self {
            links: Vec::new(),
            expected,
        }
    }

    /// Every insert asks (through `set_tag`); the links grow only with the shard.
    #[inline]
    fn ensure(&mut self, id: u32) {
        if self.links.len() <= id as usize {
            self.grow(id);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, id: u32) {
        let needed = id as usize + 1;
        crate::growth::reserve(&mut self.links, needed, self.expected);
        self.links.resize(needed, UNLINKED);
    }

    /// The tag last set for `id` (0 if none was): kept while the id moves between rings.
    #[inline]
    pub(crate) fn tag(&self, id: u32) -> u8 {
        self.links.get(id as usize).map_or(0, |link| link.tag())
    }

    /// Sets `id`'s tag, below [`TAGS`].
    #[inline]
    pub(crate) fn set_tag(&mut self, id: u32, tag: u8) {
        debug_assert!(tag < TAGS);
        self.ensure(id);
        self.links[id as usize].set_tag(tag);
    }

    /// Whether `id` is in some ring, live or dead.
    pub(crate) fn is_linked(&self, id: u32) -> bool {
        self.links
            .get(id as usize)
            .is_some_and(|link| link.next() != NIL)
    }

    #[inline]
    fn next(&self, id: u32) -> u32 {
        self.links[id as usize].next()
    }

    #[inline]
    fn set_next(&mut self, id: u32, next: u32) {
        self.links[id as usize].set_next(next);
    }

    #[inline]
    fn is_dead(&self, id: u32) -> bool {
        self.links[id as usize].tag() == DEAD
    }

    /// Takes `id` out of every ring; its tag stays, unless it was dead, which resets it.
    #[inline]
    fn unlink(&mut self, id: u32) {
        let link = &mut self.links[id as usize];
        link.set_next(NIL);
        if link.tag() == DEAD {
            link.set_tag(0);
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
    }
}

/// One CLOCK ring: a hand into a circular list, with the totals of its live ids.
#[derive(Debug)]
pub(crate) struct Ring {
    hand: u32,
    /// The id just behind the hand (the hand's predecessor): where new ids join.
    tail: u32,
    len: usize,
    /// Ids removed but still linked (see the module docs).
    dead: usize,
    weight: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            hand: NIL,
            tail: NIL,
            len: 0,
            dead: 0,
            weight: 0,
        }
    }
}

impl Ring {
    /// Live ids in the ring.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// The live id the hand points at: the oldest one, or `None` when there is none. Dead
    /// ids the hand meets first leave the ring and go to `released`.
    #[inline]
    pub(crate) fn hand(&mut self, links: &mut Links, released: &mut Vec<u32>) -> Option<u32> {
        while self.hand != NIL && links.is_dead(self.hand) {
            let id = self.hand;
            self.unlink_hand(links);
            self.dead -= 1;
            released.push(id);
        }
        (self.hand != NIL).then_some(self.hand)
    }

    /// Adds `id` (which must be in no ring) just behind the hand: the newest position.
    #[inline]
    pub(crate) fn push(&mut self, links: &mut Links, id: u32, weight: u64) {
        links.ensure(id);
        debug_assert!(!links.is_linked(id), "id {id} is already in a ring");
        if self.hand == NIL {
            links.set_next(id, id);
            self.hand = id;
        } else {
            links.set_next(id, self.hand);
            links.set_next(self.tail, id);
        }
        self.tail = id;
        self.len += 1;
        self.weight += weight;
    }

    /// Unlinks `id`, which must be the live id under the hand (see [`Ring::hand`]).
    #[inline]
    pub(crate) fn take_hand(&mut self, links: &mut Links, id: u32, weight: u64) {
        debug_assert_eq!(self.hand, id, "only the hand's id leaves a ring at once");
        debug_assert!(!links.is_dead(id));
        self.unlink_hand(links);
        self.len -= 1;
        self.weight -= weight;
    }

    /// Removes `id`, a live member, from the ring's order and totals. Unless it is under the
    /// hand it stays linked, dead, until a hand or a compaction releases it; ids released
    /// now (it, or those a compaction unlinks) go to `released`.
    pub(crate) fn remove(
        &mut self,
        links: &mut Links,
        id: u32,
        weight: u64,
        released: &mut Vec<u32>,
    ) {
        debug_assert!(
            links.is_linked(id) && !links.is_dead(id),
            "id {id} is not live"
        );
        if self.hand == id {
            self.take_hand(links, id, weight);
            released.push(id);
            return;
        }
        links.links[id as usize].set_tag(DEAD);
        self.len -= 1;
        self.dead += 1;
        self.weight -= weight;
        // A quarter of the live ids (and a few) bounds what dead ids add to the per-id
        // arrays; the compaction's walk, over len + dead ids, is paid for by the removals
        // since the last one.
        if self.dead > self.len / 4 + 8 {
            self.compact(links, released);
        }
    }

    /// Unlinks every dead id, keeping the order of the live ones.
    fn compact(&mut self, links: &mut Links, released: &mut Vec<u32>) {
        let mut id = self.hand;
        let mut prev = self.tail;
        for _ in 0..self.len + self.dead {
            let next = links.next(id);
            if links.is_dead(id) {
                links.set_next(prev, next);
                links.unlink(id);
                released.push(id);
            } else {
                prev = id;
            }
            id = next;
        }
        self.dead = 0;
        if self.len == 0 {
            (self.hand, self.tail) = (NIL, NIL);
        } else {
            // `prev` is the last live id before the old hand, `id` the old hand again; the
            // hand moves on to the first live id at or after it.
            self.tail = prev;
            self.hand = links.next(prev);
        }
    }

    /// Takes the hand's id (live or dead) out of the ring; the hand moves to its successor.
    #[inline]
    fn unlink_hand(&mut self, links: &mut Links) {
        let id = self.hand;
        if self.tail == id {
            (self.hand, self.tail) = (NIL, NIL);
        } else {
            let next = links.next(id);
            links.set_next(self.tail, next);
            self.hand = next;
        }
        links.unlink(id);
    }

    /// Moves the hand one step: the id it leaves behind becomes the newest (second chance).
    #[inline]
    pub(crate) fn advance(&mut self, links: &Links) {
        if self.hand != NIL {
            self.tail = self.hand;
            self.hand = links.next(self.hand);
        }
    }

    /// Changes the recorded weight of a member whose weight changed from `old` to `new`.
    pub(crate) fn reweigh(&mut self, old: u64, new: u64) {
        self.weight = self.weight - old + new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live ids from the hand on, without moving anything.
    fn order(ring: &Ring, links: &Links) -> Vec<u32> {
        all_linked(ring, links)
            .into_iter()
            .filter(|&id| !links.is_dead(id))
            .collect()
    }

    /// Every linked id, dead or live, from the hand on; checks the tail and the counts.
    fn all_linked(ring: &Ring, links: &Links) -> Vec<u32> {
        let mut out = Vec::new();
        if ring.hand == NIL {
            assert_eq!((ring.tail, ring.len, ring.dead), (NIL, 0, 0));
            return out;
        }
        let mut id = ring.hand;
        loop {
            out.push(id);
            let next = links.next(id);
            if next == ring.hand {
                assert_eq!(id, ring.tail, "the tail precedes the hand");
                break;
            }
            id = next;
        }
        assert_eq!(out.len(), ring.len + ring.dead);
        out
    }

    /// A ring holding `ids` (in order, each of `weight`), its links, and no released ids.
    fn filled(ids: impl IntoIterator<Item = u32>, weight: u64) -> (Links, Ring, Vec<u32>) {
        let (mut links, mut ring) = (Links::default(), Ring::default());
        for id in ids {
            ring.push(&mut links, id, weight);
        }
        (links, ring, Vec::new())
    }

    #[test]
    fn push_places_newest_behind_the_hand() {
        let (mut links, mut ring) = (Links::default(), Ring::default());
        for id in [4, 1, 7] {
            ring.push(&mut links, id, 10);
        }
        assert_eq!(order(&ring, &links), vec![4, 1, 7]);
        assert_eq!((ring.len(), ring.weight()), (3, 30));
    }

    #[test]
    fn advance_gives_a_second_chance() {
        let (mut links, mut ring) = (Links::default(), Ring::default());
        for id in 0..3 {
            ring.push(&mut links, id, 1);
        }
        ring.advance(&links);
        assert_eq!(order(&ring, &links), vec![1, 2, 0]);
        ring.push(&mut links, 9, 1);
        assert_eq!(order(&ring, &links), vec![1, 2, 0, 9]);
    }

    #[test]
    fn removal_at_the_hand_is_at_once_elsewhere_when_the_hand_arrives() {
        let (mut links, mut ring, mut released) = filled(0..4, 2);
        ring.remove(&mut links, 0, 2, &mut released);
        assert_eq!(
            (order(&ring, &links), &released[..]),
            (vec![1, 2, 3], &[0][..])
        );
        assert!(!links.is_linked(0));
        ring.remove(&mut links, 2, 2, &mut released);
        assert_eq!(order(&ring, &links), vec![1, 3]);
        assert!(links.is_linked(2), "dead, still linked");
        assert_eq!((ring.len(), ring.weight(), released.len()), (2, 4, 1));
        // The hand passes 1 (second chance) and meets 2, dead: released on the way to 3.
        ring.advance(&links);
        assert_eq!(ring.hand(&mut links, &mut released), Some(3));
        assert_eq!(released, vec![0, 2]);
        assert!(!links.is_linked(2));
        assert_eq!(order(&ring, &links), vec![3, 1]);
        ring.take_hand(&mut links, 3, 2);
        ring.remove(&mut links, 1, 2, &mut released);
        assert!(ring.is_empty());
        assert_eq!(ring.hand(&mut links, &mut released), None);
        assert_eq!((ring.weight(), released), (0, vec![0, 2, 1]));
        assert_eq!(all_linked(&ring, &links), vec![]);
    }

    #[test]
    fn a_dead_tail_stays_linked_and_new_ids_follow_it() {
        let (mut links, mut ring, mut released) = filled(0..3, 1);
        ring.remove(&mut links, 2, 1, &mut released);
        ring.push(&mut links, 5, 1);
        assert_eq!(all_linked(&ring, &links), vec![0, 1, 2, 5]);
        assert_eq!(order(&ring, &links), vec![0, 1, 5]);
        ring.remove(&mut links, 5, 1, &mut released);
        ring.remove(&mut links, 1, 1, &mut released);
        ring.take_hand(&mut links, 0, 1);
        // Only dead ids left: the hand releases them all.
        assert_eq!(ring.hand(&mut links, &mut released), None);
        released.sort_unstable();
        assert_eq!(released, vec![1, 2, 5]);
        assert_eq!(all_linked(&ring, &links), vec![]);
    }

    #[test]
    fn dead_ids_are_compacted_beyond_a_quarter_of_the_live_ones() {
        let (mut links, mut ring, mut released) = filled(0..100, 1);
        ring.advance(&links);
        // Every third id from 2 on dies, never under the hand (which stays on 1).
        let mut dead = Vec::new();
        for id in (2..100).step_by(3) {
            ring.remove(&mut links, id, 1, &mut released);
            dead.push(id);
            assert!(ring.dead <= ring.len / 4 + 8);
            assert_eq!(released.len() + ring.dead, dead.len());
        }
        assert!(!released.is_empty(), "a compaction ran");
        let live: Vec<u32> = (1..100)
            .chain([0])
            .filter(|id| !dead.contains(id))
            .collect();
        assert_eq!(order(&ring, &links), live);
        assert_eq!(ring.len(), live.len());
        for &id in &released {
            assert!(!links.is_linked(id) && links.tag(id) == 0);
        }
    }

    #[test]
    fn compaction_of_a_ring_with_dead_hand_and_tail() {
        let (mut links, mut ring, mut released) = filled(0..40, 1);
        ring.advance(&links);
        // Kill 1..=10 except the hand (1), then the tail (0) and 2..: 0 is the tail.
        for id in (0..12).filter(|&id| id != 1) {
            ring.remove(&mut links, id, 1, &mut released);
        }
        ring.compact(&mut links, &mut released);
        assert_eq!(ring.dead, 0);
        let live: Vec<u32> = [1].into_iter().chain(12..40).collect();
        assert_eq!(all_linked(&ring, &links), live);
        // Dead hand: compaction moves the hand to the next live id.
        ring.remove(&mut links, 12, 1, &mut released);
        ring.advance(&links);
        assert_eq!(ring.hand, 12);
        ring.compact(&mut links, &mut released);
        assert_eq!(all_linked(&ring, &links)[..2], [13, 14]);
        assert_eq!(ring.tail, 1);
    }

    #[test]
    fn tags_survive_moves_between_rings() {
        let (mut links, mut a, mut b) = (Links::default(), Ring::default(), Ring::default());
        links.set_tag(5, 3);
        a.push(&mut links, 5, 1);
        a.push(&mut links, 6, 1);
        links.set_tag(6, 2);
        a.take_hand(&mut links, 5, 1);
        assert_eq!((links.tag(5), links.tag(6), links.tag(7)), (3, 2, 0));
        b.push(&mut links, 5, 1);
        a.push(&mut links, 7, 1);
        assert_eq!(order(&a, &links), vec![6, 7]);
        assert_eq!((links.tag(5), links.tag(6)), (3, 2));
        links.set_tag(5, 1);
        assert_eq!(order(&b, &links), vec![5]);
    }

    #[test]
    fn two_rings_share_links() {
        let (mut links, mut a, mut b) = (Links::default(), Ring::default(), Ring::default());
        a.push(&mut links, 0, 1);
        b.push(&mut links, 1, 1);
        a.push(&mut links, 2, 1);
        a.take_hand(&mut links, 0, 1);
        b.push(&mut links, 0, 1);
        assert_eq!(order(&a, &links), vec![2]);
        assert_eq!(order(&b, &links), vec![1, 0]);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A random operation on one of two rings sharing their links.
    #[derive(Clone, Debug)]
    enum Op {
        /// Push a free id (the lowest) into ring `r`.
        Push(usize),
        /// Advance ring `r`'s hand.
        Advance(usize),
        /// Take the live id under ring `r`'s hand.
        TakeHand(usize),
        /// Remove the `n`th (modulo) live id of ring `r`, counted from the hand.
        Remove(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..2usize).prop_map(Op::Push),
            2 => (0..2usize).prop_map(Op::Advance),
            1 => (0..2usize).prop_map(Op::TakeHand),
            2 => (0..2usize, any::<usize>()).prop_map(|(r, n)| Op::Remove(r, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]
        /// Random operation sequences agree with a model of each ring as a queue of live ids
        /// from the hand on, and an id is never reused before it has left every ring.
        #[test]
        fn matches_model(ops in prop::collection::vec(op(), 1..300)) {
            let mut links = Links::default();
            let mut rings = [Ring::default(), Ring::default()];
            let mut model = [VecDeque::<u32>::new(), VecDeque::<u32>::new()];
            // Ids in no ring, and ids removed but maybe still linked (not free yet).
            let mut free: Vec<u32> = (0..64).rev().collect();
            let mut released = Vec::new();
            for op in ops {
                match op {
                    Op::Push(r) => {
                        let Some(id) = free.pop() else { continue };
                        prop_assert!(!links.is_linked(id), "id {} reused while linked", id);
                        rings[r].push(&mut links, id, 1);
                        model[r].push_back(id);
                    }
                    Op::Advance(r) => {
                        // The hand moves from a live id: dead ones before it leave first.
                        if rings[r].hand(&mut links, &mut released).is_some() {
                            rings[r].advance(&links);
                            model[r].rotate_left(1);
                        }
                    }
                    Op::TakeHand(r) => {
                        let hand = rings[r].hand(&mut links, &mut released);
                        prop_assert_eq!(hand, model[r].front().copied());
                        if let Some(id) = hand {
                            rings[r].take_hand(&mut links, id, 1);
                            model[r].pop_front();
                            free.push(id);
                        }
                    }
                    Op::Remove(r, n) => {
                        if model[r].is_empty() {
                            continue;
                        }
                        let id = model[r].remove(n % model[r].len()).unwrap();
                        rings[r].remove(&mut links, id, 1, &mut released);
                    }
                }
                free.append(&mut released);
                for r in 0..2 {
                    prop_assert_eq!(rings[r].len(), model[r].len());
                    prop_assert_eq!(rings[r].weight(), model[r].len() as u64);
                    let live: Vec<u32> = model[r].iter().copied().collect();
                    prop_assert_eq!(tests_order(&rings[r], &links), live);
                }
            }
            // Every id is accounted for: live in a ring, free, or dead and still linked.
            let dead = rings[0].dead + rings[1].dead;
            prop_assert_eq!(model[0].len() + model[1].len() + free.len() + dead, 64);
        }
    }

    /// The live ids of `ring` from its hand on.
    fn tests_order(ring: &Ring, links: &Links) -> Vec<u32> {
        let mut out = Vec::new();
        if ring.hand == NIL {
            return out;
        }
        let mut id = ring.hand;
        loop {
            if !links.is_dead(id) {
                out.push(id);
            }
            id = links.next(id);
            if id == ring.hand {
                return out;
            }
        }
    }
}
