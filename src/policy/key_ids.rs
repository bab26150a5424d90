//! The window's miniatures' index of their resident keys: sample key → the miniature's id
//! for it.
//!
//! Every sampled read looks its key up in five miniatures, and every miss there inserts one
//! key and removes another, so the index is on the replay's hottest path. A general hash map
//! (hashbrown, with its hasher) took about 270 of the 2,405 instructions per operation of a
//! 100-entry cache's 50-50 workload (`examples/op_cost.rs` under cachegrind, session 18).
//! This table does only what the miniatures need: `u32` keys that are already hashes
//! (mixed once more here, so tests' small integers spread too), a size fixed by the
//! miniature's capacity, linear probing at most half full, and removal by shifting the
//! probe run back, so no tombstones build up.

/// A free slot. An occupied one holds `key << 32 | id`, and ids stay far below `u32::MAX`
/// (a miniature numbers at most its capacity plus one), so no occupied slot equals it.
const EMPTY: u64 = u64::MAX;

/// Fibonacci hashing: the top bits of the product pick the slot.
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Sample key → id, for at most about as many keys as it was made for (it grows if not).
#[derive(Debug)]
pub(crate) struct KeyIds {
    slots: Vec<u64>,
    /// `64 - log2(slots.len())`: the product's bits above it pick the slot.
    shift: u32,
    len: usize,
}

impl KeyIds {
    /// Room for `keys` keys with the table at most half full.
    pub(crate) fn with_capacity(keys: usize) -> Self {
        let len = (keys.max(1) * 2).next_power_of_two();
        Self {
            slots: vec![EMPTY; len],
            shift: 64 - len.trailing_zeros(),
            len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, key: u32) -> Option<u32> {
        self.find(key).ok().map(|index| self.slots[index] as u32)
    }

    /// Maps `key`, which must not be present, to `id`.
    pub(crate) fn insert(&mut self, key: u32, id: u32) {
        debug_assert!(id < u32::MAX, "id {id} would read as an empty slot");
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        match self.find(key) {
            Ok(_) => debug_assert!(false, "key {key} inserted twice"),
            Err(free) => {
                self.slots[free] = u64::from(key) << 32 | u64::from(id);
                self.len += 1;
            }
        }
    }

    /// Unmaps `key`, returning its id. The probe run after it shifts back over the hole,
    /// each key as far as its home slot allows, so every key stays reachable from its home
    /// without tombstones.
    pub(crate) fn remove(&mut self, key: u32) -> Option<u32> {
        let mut hole = self.find(key).ok()?;
        let id = self.slots[hole] as u32;
        self.slots[hole] = EMPTY;
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut next = hole;
        loop {
            next = (next + 1) & mask;
            let slot = self.slots[next];
            if slot == EMPTY {
                return Some(id);
            }
            let home = self.home((slot >> 32) as u32);
            // The key at `next` may fill the hole if the hole lies on its probe path, from
            // its home up to where it sits.
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                self.slots[next] = EMPTY;
                hole = next;
            }
        }
    }

    fn home(&self, key: u32) -> usize {
        (u64::from(key).wrapping_mul(MUL) >> self.shift) as usize
    }

    /// The slot holding `key`, or the free slot that ends its probe run. The table is never
    /// more than half full, so the run ends.
    fn find(&self, key: u32) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut index = self.home(key);
        loop {
            let slot = self.slots[index];
            if slot == EMPTY {
                return Err(index);
            }
            if (slot >> 32) as u32 == key {
                return Ok(index);
            }
            index = (index + 1) & mask;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let old = std::mem::replace(self, Self::with_capacity(self.slots.len()));
        for slot in old.slots.into_iter().filter(|&slot| slot != EMPTY) {
            self.insert((slot >> 32) as u32, slot as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Random inserts and removals, checked against a `HashMap` after every step.
    fn churn(keys: impl Fn(u64) -> u32, capacity: usize) {
        let mut ids = KeyIds::with_capacity(capacity);
        let mut model = HashMap::new();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for step in 0..20_000u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = keys(state % (3 * capacity as u64));
            match model.get(&key) {
                Some(&id) => {
                    assert_eq!(ids.remove(key), Some(id), "step {step}");
                    model.remove(&key);
                }
                None if model.len() < capacity => {
                    ids.insert(key, step);
                    model.insert(key, step);
                }
                None => assert_eq!(ids.remove(key), None),
            }
            assert_eq!(ids.len(), model.len());
            if step % 97 == 0 {
                for (&key, &id) in &model {
                    assert_eq!(ids.get(key), Some(id), "step {step}");
                }
            }
        }
    }

    #[test]
    fn matches_a_map_under_churn_with_sequential_keys() {
        churn(|i| i as u32, 129);
    }

    #[test]
    fn matches_a_map_under_churn_with_hashed_keys() {
        churn(|i| (i.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 32) as u32, 33);
    }

    #[test]
    fn keys_beyond_the_capacity_grow_the_table() {
        let mut ids = KeyIds::with_capacity(2);
        for key in 0..100 {
            ids.insert(key * 7, key);
        }
        assert_eq!(ids.len(), 100);
        assert!((0..100).all(|key| ids.get(key * 7) == Some(key)));
        assert_eq!(ids.get(1), None);
        // The largest key and id that can be stored.
        ids.insert(u32::MAX, u32::MAX - 1);
        assert_eq!(ids.get(u32::MAX), Some(u32::MAX - 1));
    }
}
