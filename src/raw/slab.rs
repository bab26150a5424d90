//! Dense ids for a shard's entries: the index shared by the policy, the wheel and the shard.
//!
//! An id maps to the table slot holding its entry, not to the entry itself: a write that
//! replaces an entry keeps its slot, so it leaves the slab alone (and in count mode, where
//! every entry weighs 1, it touches nothing here at all). Only a table rebuild moves slots,
//! and it reports each move through [`Slab::set_slot`].

use crate::growth;
use crate::raw::entry::MAX_ID;

/// Slot of a free id, or of an id whose entry is not in the table yet.
const VACANT: u32 = u32::MAX;

/// Id allocation with reuse, so policy and wheel arrays stay as dense as the shard is full.
#[derive(Debug)]
pub(crate) struct Slab {
    /// Per id, the table slot of its entry ([`VACANT`] when free).
    slots: Vec<u32>,
    /// Per id, the weight charged for its entry; empty when every entry weighs 1.
    weights: Vec<u64>,
    unit_weights: bool,
    free: Vec<u32>,
    /// Entries the shard is expected to hold (0 when unknown); see [`growth`].
    expected: usize,
}

impl Slab {
    /// An empty slab; `unit_weights` when every entry weighs 1 (count mode), for a shard
    /// expected to hold `expected` entries (0 when unknown).
    pub(crate) fn new(unit_weights: bool, expected: usize) -> Self {
        Self {
            slots: Vec::new(),
            weights: Vec::new(),
            unit_weights,
            free: Vec::new(),
            expected,
        }
    }

    /// An empty slab with the same settings.
    pub(crate) fn emptied(&self) -> Self {
        Self::new(self.unit_weights, self.expected)
    }

    /// Takes a free id for an entry of `weight`; its slot is set once the entry is placed.
    ///
    /// # Panics
    /// If the shard already holds [`MAX_ID`] ids (about half a billion).
    pub(crate) fn insert(&mut self, weight: u64) -> u32 {
        debug_assert!(!self.unit_weights || weight == 1);
        if let Some(id) = self.free.pop() {
            if !self.unit_weights {
                self.weights[id as usize] = weight;
            }
            return id;
        }
        let id = u32::try_from(self.slots.len())
            .ok()
            .filter(|&id| id < MAX_ID)
            .expect("a shard holds fewer than 2^29 entries");
        growth::reserve(&mut self.slots, id as usize + 1, self.expected);
        self.slots.push(VACANT);
        if !self.unit_weights {
            growth::reserve(&mut self.weights, id as usize + 1, self.expected);
            self.weights.push(weight);
        }
        id
    }

    /// Records that `id`'s entry now lives in table slot `slot`.
    pub(crate) fn set_slot(&mut self, id: u32, slot: usize) {
        self.slots[id as usize] = slot as u32;
    }

    /// Whether `id` is taken by an entry in the table.
    pub(crate) fn is_occupied(&self, id: u32) -> bool {
        self.slots
            .get(id as usize)
            .is_some_and(|&slot| slot != VACANT)
    }

    /// The table slot of an occupied id.
    pub(crate) fn slot(&self, id: u32) -> usize {
        let slot = self.slots[id as usize];
        debug_assert!(slot != VACANT, "id {id} is free");
        slot as usize
    }

    /// The weight charged for an occupied id.
    pub(crate) fn weight(&self, id: u32) -> u64 {
        if self.unit_weights {
            1
        } else {
            self.weights[id as usize]
        }
    }

    /// Charges `id` at `weight` instead; returns the old weight.
    pub(crate) fn reweigh(&mut self, id: u32, weight: u64) -> u64 {
        if self.unit_weights {
            debug_assert_eq!(weight, 1);
            1
        } else {
            std::mem::replace(&mut self.weights[id as usize], weight)
        }
    }

    /// Vacates `id` and returns its (slot, weight). The id is not reused until
    /// [`Slab::release`]d: the policy may still hold it (see `Policy::take_released`).
    pub(crate) fn remove(&mut self, id: u32) -> (usize, u64) {
        let weight = self.weight(id);
        let slot = std::mem::replace(&mut self.slots[id as usize], VACANT);
        debug_assert!(slot != VACANT, "id {id} removed twice");
        (slot as usize, weight)
    }

    /// Makes a vacated id free for reuse.
    pub(crate) fn release(&mut self, id: u32) {
        debug_assert!(self.slots[id as usize] == VACANT, "id {id} is occupied");
        #[cfg(test)]
        assert!(!self.free.contains(&id), "id {id} released twice");
        self.free.push(id);
    }

    /// Occupied ids and their slots (invariant checks).
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|&(_, &slot)| slot != VACANT)
            .map(|(id, &slot)| (id as u32, slot as usize))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.slots.capacity() + self.free.capacity()) * std::mem::size_of::<u32>()
            + self.weights.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_and_slots_follow_moves() {
        let mut slab = Slab::new(false, 0);
        let (a, b) = (slab.insert(10), slab.insert(20));
        slab.set_slot(a, 5);
        slab.set_slot(b, 7);
        assert_eq!(slab.remove(a), (5, 10));
        assert_eq!(slab.insert(40), 2, "a removed id waits for its release");
        slab.release(a);
        let c = slab.insert(30);
        assert_eq!(c, a, "freed id reused");
        slab.set_slot(c, 9);
        slab.set_slot(b, 2);
        assert_eq!(slab.reweigh(b, 25), 20);
        slab.set_slot(2, 4);
        assert_eq!(
            slab.occupied().collect::<Vec<_>>(),
            vec![(0, 9), (1, 2), (2, 4)]
        );
        assert_eq!((slab.weight(b), slab.weight(c)), (25, 30));
    }

    #[test]
    fn unit_weights_keep_no_weight_array() {
        let mut slab = Slab::new(true, 0);
        for _ in 0..100 {
            let id = slab.insert(1);
            slab.set_slot(id, id as usize);
        }
        assert_eq!(slab.weight(42), 1);
        assert_eq!(slab.remove(42), (42, 1));
        assert!(slab.heap_bytes() < 100 * 8, "{}", slab.heap_bytes());
    }
}
