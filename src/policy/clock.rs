//! CLOCK rings: circular lists of slab ids with a hand, sharing one link array.
//!
//! Each id lives in at most one ring, so the rings of a policy (window, main) share a single
//! `Vec<Link>` indexed by id. New ids join just behind the hand, so the hand meets them last:
//! the hand always points at the oldest id that has not been given a second chance.

/// Marks "no id": an empty ring's hand, an unlinked id's successor.
pub(crate) const NIL: u32 = u32::MAX;

/// Bits of [`Link::prev_tag`] holding an id; the two above hold the id's tag.
const ID_BITS: u32 = 30;
const ID_MASK: u32 = (1 << ID_BITS) - 1;
const _: () = assert!(crate::raw::entry::MAX_ID <= ID_MASK);

/// An id's neighbours in its ring, and the id's own tag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    next: u32,
    /// The predecessor (low [`ID_BITS`] bits) and the tag the policy keeps for this id (top
    /// two): its region. In the link rather than an array of its own, it costs no memory
    /// and no cache line of its own.
    prev_tag: u32,
}

impl Link {
    fn prev(self) -> u32 {
        self.prev_tag & ID_MASK
    }

    fn set_prev(&mut self, id: u32) {
        self.prev_tag = (self.prev_tag & !ID_MASK) | id;
    }
}

const UNLINKED: Link = Link {
    next: NIL,
    prev_tag: ID_MASK,
};

/// Tags an id can carry (see [`Links::tag`]).
pub(crate) const TAGS: u8 = 4;

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

    fn ensure(&mut self, id: u32) {
        let needed = id as usize + 1;
        if self.links.len() < needed {
            crate::growth::reserve(&mut self.links, needed, self.expected);
            self.links.resize(needed, UNLINKED);
        }
    }

    /// The tag last set for `id` (0 if none was): kept while the id moves between rings.
    pub(crate) fn tag(&self, id: u32) -> u8 {
        self.links
            .get(id as usize)
            .map_or(0, |link| (link.prev_tag >> ID_BITS) as u8)
    }

    /// Sets `id`'s tag, below [`TAGS`].
    pub(crate) fn set_tag(&mut self, id: u32, tag: u8) {
        debug_assert!(tag < TAGS);
        self.ensure(id);
        let link = &mut self.links[id as usize];
        link.prev_tag = (link.prev_tag & ID_MASK) | (u32::from(tag) << ID_BITS);
    }

    /// Whether `id` is in some ring.
    pub(crate) fn is_linked(&self, id: u32) -> bool {
        self.links
            .get(id as usize)
            .is_some_and(|link| link.next != NIL)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
    }
}

/// One CLOCK ring: a hand into a circular list, with its total weight.
#[derive(Debug)]
pub(crate) struct Ring {
    hand: u32,
    len: usize,
    weight: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            hand: NIL,
            len: 0,
            weight: 0,
        }
    }
}

impl Ring {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    /// The id the hand points at: the oldest one, or `None` when empty.
    pub(crate) fn hand(&self) -> Option<u32> {
        (self.hand != NIL).then_some(self.hand)
    }

    /// Adds `id` (which must be in no ring) just behind the hand: the newest position.
    pub(crate) fn push(&mut self, links: &mut Links, id: u32, weight: u64) {
        links.ensure(id);
        debug_assert!(!links.is_linked(id), "id {id} is already in a ring");
        if self.hand == NIL {
            let link = &mut links.links[id as usize];
            link.set_prev(id);
            link.next = id;
            self.hand = id;
        } else {
            let next = self.hand;
            let prev = links.links[next as usize].prev();
            let link = &mut links.links[id as usize];
            link.set_prev(prev);
            link.next = next;
            links.links[prev as usize].next = id;
            links.links[next as usize].set_prev(id);
        }
        self.len += 1;
        self.weight += weight;
    }

    /// Unlinks `id`, which must be in this ring.
    pub(crate) fn remove(&mut self, links: &mut Links, id: u32, weight: u64) {
        debug_assert!(links.is_linked(id), "id {id} is in no ring");
        let link = links.links[id as usize];
        let (prev, next) = (link.prev(), link.next);
        if next == id {
            self.hand = NIL;
        } else {
            links.links[prev as usize].next = next;
            links.links[next as usize].set_prev(prev);
            if self.hand == id {
                self.hand = next;
            }
        }
        // Unlinked, with its tag kept.
        let link = &mut links.links[id as usize];
        link.next = NIL;
        link.set_prev(ID_MASK);
        self.len -= 1;
        self.weight -= weight;
    }

    /// Moves the hand one step: the id it leaves behind becomes the newest (second chance).
    pub(crate) fn advance(&mut self, links: &Links) {
        if self.hand != NIL {
            self.hand = links.links[self.hand as usize].next;
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

    fn order(ring: &Ring, links: &Links) -> Vec<u32> {
        let mut out = Vec::new();
        let Some(start) = ring.hand() else {
            return out;
        };
        let mut id = start;
        loop {
            out.push(id);
            id = links.links[id as usize].next;
            if id == start {
                return out;
            }
        }
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
    fn remove_hand_middle_and_last() {
        let (mut links, mut ring) = (Links::default(), Ring::default());
        for id in 0..4 {
            ring.push(&mut links, id, 2);
        }
        ring.remove(&mut links, 0, 2);
        assert_eq!(order(&ring, &links), vec![1, 2, 3]);
        ring.remove(&mut links, 2, 2);
        assert_eq!(order(&ring, &links), vec![1, 3]);
        assert!(!links.is_linked(2));
        ring.remove(&mut links, 1, 2);
        ring.remove(&mut links, 3, 2);
        assert!(ring.is_empty());
        assert_eq!(ring.hand(), None);
        assert_eq!(ring.weight(), 0);
    }

    #[test]
    fn tags_survive_moves_between_rings() {
        let (mut links, mut a, mut b) = (Links::default(), Ring::default(), Ring::default());
        links.set_tag(5, 3);
        a.push(&mut links, 5, 1);
        a.push(&mut links, 6, 1);
        links.set_tag(6, 2);
        a.remove(&mut links, 5, 1);
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
        a.remove(&mut links, 0, 1);
        b.push(&mut links, 0, 1);
        assert_eq!(order(&a, &links), vec![2]);
        assert_eq!(order(&b, &links), vec![1, 0]);
    }
}
