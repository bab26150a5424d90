//! A miniature LRU run beside the cache on a sample of its reads: a control that sees the
//! same workload as the cache but none of the climber's window moves.
//!
//! The climber compares the hit ratio of one sample with the previous one and reads the
//! difference as the effect of its last move. On traces made of phases (ARC's P2 swings
//! between 10% and 44% from one sample to the next) most of that difference is the
//! workload's, and the climber random-walks. The shadow's own hit ratio moves with the
//! workload alone, so when it moved by more than [`WORKLOAD_MOVED`] between two samples the
//! climber takes the new sample as its baseline instead of as a gradient.
//!
//! Keys are sampled by their hash (spatial sampling, as in SHARDS, Waldspurger et al., FAST
//! 2015): a key is in or out for good, so every read of a sampled key reaches the shadow,
//! and an LRU of the cache's capacity scaled by the sampling rate hits about the share of
//! the sampled reads a full-size LRU would. Only the change from one sample to the next is
//! used, so a capacity that is only estimated (byte mode) still serves.

use hashbrown::HashMap;

/// The most keys the shadow holds; larger caches sample fewer keys.
pub(crate) const MAX_SHADOW_ENTRIES: u64 = 4096;

/// Fewest sampled reads in a climber sample for its shadow hit ratio to count.
pub(crate) const MIN_SAMPLED_READS: u64 = 256;

/// A change of the shadow's hit ratio between two climber samples this large means the
/// workload moved. Measured with the simulator at 32,768 entries (`--policies larder`,
/// averages of 3 to 10 runs, the random hasher making each run differ): ARC's P2 29.19%
/// without the rule (28.81–29.43) and 31.42% with it (31.20–31.62); P6 28.44% and 28.32%;
/// P3 18.69% and 18.51%; P12 15.15% (12.40–17.76, 10 runs) and 15.90% (13.88–17.51).
/// Over the 113 rows of the real traces −0.015 points (4 runs against 6; a 4-run mean
/// moves by about ±0.02). A threshold of 2 points also gave P2 31.6%, but −0.042 over the
/// rows (orm-busy at 76 entries −3.4; 2 runs of an experimental build).
pub(crate) const WORKLOAD_MOVED: f64 = 0.05;

/// Bits of the hash that pick the sampled keys start here: above the 32 the shard's table
/// and sketch use (`short_hash`), below the top bits that pick the shard.
const SAMPLE_BITS_SHIFT: u32 = 32;

/// Which keys a cache of about `entries` entries samples, and the shadow's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampling {
    /// A key is sampled when its hash has these bits clear.
    mask: u64,
    /// The shadow's capacity: `entries` scaled by the sampling rate.
    pub(crate) capacity: usize,
}

impl Sampling {
    /// Every key up to [`MAX_SHADOW_ENTRIES`] entries, then one in a power of two.
    pub(crate) fn for_entries(entries: u64) -> Self {
        let entries = entries.max(1);
        let mut rate_log2 = 0;
        while entries >> rate_log2 > MAX_SHADOW_ENTRIES {
            rate_log2 += 1;
        }
        Self {
            mask: ((1u64 << rate_log2) - 1) << SAMPLE_BITS_SHIFT,
            capacity: (entries >> rate_log2).max(1) as usize,
        }
    }

    /// Whether reads of the key with this hash go to the shadow.
    #[inline]
    pub(crate) fn samples(&self, hash: u64) -> bool {
        hash & self.mask == 0
    }
}

/// The shadow's key for a hash: its low half, independent of the bits that sampled it.
#[inline]
pub(crate) fn shadow_key(hash: u64) -> u32 {
    hash as u32
}

/// No node: the end of the list.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    key: u32,
    /// Toward the most recently used end.
    newer: u32,
    /// Toward the least recently used end.
    older: u32,
}

/// An exact LRU over 32-bit keys: about 30 bytes a key with its index (120 KiB full).
#[derive(Debug)]
pub(crate) struct ShadowLru {
    capacity: usize,
    index: HashMap<u32, u32>,
    nodes: Vec<Node>,
    newest: u32,
    oldest: u32,
}

impl ShadowLru {
    /// An empty LRU that holds up to `capacity` keys (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            index: HashMap::with_capacity(capacity),
            nodes: Vec::with_capacity(capacity),
            newest: NIL,
            oldest: NIL,
        }
    }

    /// Records a read of `key` and returns whether the LRU held it.
    pub(crate) fn access(&mut self, key: u32) -> bool {
        if let Some(&node) = self.index.get(&key) {
            self.unlink(node);
            self.push_newest(node);
            return true;
        }
        let node = if self.nodes.len() < self.capacity {
            self.nodes.push(Node {
                key,
                newer: NIL,
                older: NIL,
            });
            (self.nodes.len() - 1) as u32
        } else {
            // Full: the least recently used key makes room, and its node is reused.
            let node = self.oldest;
            self.unlink(node);
            self.index.remove(&self.nodes[node as usize].key);
            self.nodes[node as usize].key = key;
            node
        };
        self.index.insert(key, node);
        self.push_newest(node);
        false
    }

    fn unlink(&mut self, node: u32) {
        let Node { newer, older, .. } = self.nodes[node as usize];
        match newer {
            NIL => self.newest = older,
            newer => self.nodes[newer as usize].older = older,
        }
        match older {
            NIL => self.oldest = newer,
            older => self.nodes[older as usize].newer = newer,
        }
    }

    fn push_newest(&mut self, node: u32) {
        let previous = self.newest;
        self.nodes[node as usize].newer = NIL;
        self.nodes[node as usize].older = previous;
        match previous {
            NIL => self.oldest = node,
            previous => self.nodes[previous as usize].newer = node,
        }
        self.newest = node;
    }

    /// Bytes held by the index and the nodes.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.index.allocation_size() + self.nodes.capacity() * std::mem::size_of::<Node>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = ShadowLru::new(2);
        assert!(!lru.access(1));
        assert!(!lru.access(2));
        assert!(lru.access(1)); // 2 is now the oldest
        assert!(!lru.access(3)); // evicts 2
        assert!(lru.access(1));
        assert!(!lru.access(2)); // evicts 3
        assert!(!lru.access(3));
    }

    #[test]
    fn matches_a_reference_lru() {
        for capacity in [1, 2, 7, 12] {
            let mut lru = ShadowLru::new(capacity);
            let mut reference: Vec<u32> = Vec::new(); // most recent last
            let mut x = 12_345u64;
            for _ in 0..5_000 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let key = ((x >> 33) % 13) as u32;
                let held = reference.iter().position(|&k| k == key);
                assert_eq!(
                    lru.access(key),
                    held.is_some(),
                    "capacity {capacity}, key {key}"
                );
                if let Some(at) = held {
                    reference.remove(at);
                } else if reference.len() == capacity {
                    reference.remove(0);
                }
                reference.push(key);
            }
        }
    }

    #[test]
    fn samples_every_key_of_a_small_cache_and_a_fixed_share_of_a_large_one() {
        let small = Sampling::for_entries(1_000);
        assert_eq!(small.capacity, 1_000);
        assert!((0..10_000u64).all(|i| small.samples(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))));

        let large = Sampling::for_entries(1_000_000);
        assert!(large.capacity <= MAX_SHADOW_ENTRIES as usize);
        assert!(large.capacity * 2 > MAX_SHADOW_ENTRIES as usize);
        // 1,000,000 / 4,096 rounds up to a rate of one key in 256.
        let sampled = (0..1_000_000u64)
            .filter(|&i| large.samples(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .count();
        assert!((3_000..5_000).contains(&sampled), "{sampled} sampled");
        // The low half, which names the key in the shadow, plays no part in the choice.
        assert!(large.samples(0xFFFF_FFFF));
    }

    #[test]
    fn a_full_shadow_costs_about_30_bytes_a_key() {
        let capacity = MAX_SHADOW_ENTRIES as usize;
        let mut lru = ShadowLru::new(capacity);
        for key in 0..2 * capacity as u32 {
            lru.access(key);
        }
        let per_key = lru.heap_bytes() as f64 / capacity as f64;
        assert!(per_key <= 32.0, "{per_key} bytes a key");
    }

    #[test]
    fn zero_entries_still_give_a_shadow_of_one() {
        assert_eq!(Sampling::for_entries(0).capacity, 1);
    }
}
