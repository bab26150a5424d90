//! LIRS (Jiang and Zhang, SIGMETRICS 2002), the other classic reference beside ARC.
//!
//! LIRS ranks blocks by *reuse distance*: how many other blocks were accessed between a
//! block's last two accesses. Blocks with a short one (LIR) hold most of the cache; the
//! rest (HIR) get a small resident share, `Lhirs`, and are the ones evicted. Two lists:
//! - the stack S, in recency order, holding every LIR block and the HIR blocks (resident
//!   or not) accessed since the least recent LIR block. An HIR block accessed again while
//!   still in S has a reuse distance shorter than that LIR block's recency, so they swap;
//! - the queue Q of resident HIR blocks, evicted from the front.
//!
//! The paper leaves S unbounded; like Caffeine's simulator (`LirsPolicy`, its
//! `non-resident-multiplier` of 2) this keeps at most twice the cache's size of
//! non-resident blocks, forgetting the one that left residence longest ago. Parameters are
//! the paper's: `Lhirs` is 1% of the cache, at least one block.

use hashbrown::HashMap;

use crate::policies::{Policy, NIL};

/// The share of the cache for resident HIR blocks, in percent (the paper's 1%).
const HIR_PERCENT: usize = 1;

/// Non-resident blocks remembered, as a multiple of the cache's size.
const NON_RESIDENT_MULTIPLIER: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Lir,
    ResidentHir,
    NonResidentHir,
}

/// Links of one intrusive list: towards the head (more recent) and the tail. A block can be
/// in S and Q at once, so it carries two sets of links, where `policies::Lists` gives a
/// node one.
#[derive(Debug, Clone, Copy)]
struct Links {
    prev: usize,
    next: usize,
}

const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

#[derive(Debug, Clone, Copy)]
struct Block {
    key: u64,
    state: State,
    in_stack: bool,
    /// Links in S.
    stack: Links,
    /// Links in Q while resident HIR; in the non-resident queue while non-resident.
    queue: Links,
}

/// Head, tail and length of one intrusive list over the blocks.
#[derive(Debug, Clone, Copy)]
struct List {
    head: usize,
    tail: usize,
    len: usize,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
    len: 0,
};

/// Which links of a block a list uses.
#[derive(Debug, Clone, Copy)]
enum Via {
    Stack,
    Queue,
}

#[derive(Debug)]
struct Lirs {
    lir_capacity: usize,
    capacity: usize,
    blocks: Vec<Block>,
    free: Vec<usize>,
    map: HashMap<u64, usize>,
    /// S: head is the most recent.
    stack: List,
    /// Q: resident HIR blocks, head the most recently queued, tail the next evicted.
    queue: List,
    /// Non-resident HIR blocks in S, head the most recently evicted, tail forgotten first.
    non_resident: List,
    lir_count: usize,
}

impl Lirs {
    fn new(capacity: usize) -> Self {
        let hir = (capacity * HIR_PERCENT / 100).max(1).min(capacity);
        Self {
            lir_capacity: capacity - hir,
            capacity,
            blocks: Vec::new(),
            free: Vec::new(),
            map: HashMap::new(),
            stack: EMPTY,
            queue: EMPTY,
            non_resident: EMPTY,
            lir_count: 0,
        }
    }

    fn links(&mut self, block: usize, via: Via) -> &mut Links {
        match via {
            Via::Stack => &mut self.blocks[block].stack,
            Via::Queue => &mut self.blocks[block].queue,
        }
    }

    fn push_front(&mut self, list: fn(&mut Self) -> &mut List, block: usize, via: Via) {
        let old = list(self).head;
        *self.links(block, via) = Links {
            prev: NIL,
            next: old,
        };
        if old == NIL {
            list(self).tail = block;
        } else {
            self.links(old, via).prev = block;
        }
        let l = list(self);
        l.head = block;
        l.len += 1;
    }

    fn unlink(&mut self, list: fn(&mut Self) -> &mut List, block: usize, via: Via) {
        let Links { prev, next } = *self.links(block, via);
        if prev == NIL {
            list(self).head = next;
        } else {
            self.links(prev, via).next = next;
        }
        if next == NIL {
            list(self).tail = prev;
        } else {
            self.links(next, via).prev = prev;
        }
        list(self).len -= 1;
        *self.links(block, via) = UNLINKED;
    }

    fn stack(&mut self) -> &mut List {
        &mut self.stack
    }

    fn queue(&mut self) -> &mut List {
        &mut self.queue
    }

    fn non_resident(&mut self) -> &mut List {
        &mut self.non_resident
    }

    /// Moves (or puts) the block at the top of S.
    fn move_to_stack_top(&mut self, block: usize) {
        if self.blocks[block].in_stack {
            self.unlink(Self::stack, block, Via::Stack);
        }
        self.blocks[block].in_stack = true;
        self.push_front(Self::stack, block, Via::Stack);
    }

    fn forget(&mut self, block: usize) {
        self.map.remove(&self.blocks[block].key);
        self.free.push(block);
    }

    /// Removes HIR blocks from the bottom of S until a LIR block is there: they were
    /// accessed less recently than every LIR block, so they can no longer become LIR.
    fn prune(&mut self) {
        while self.stack.tail != NIL {
            let bottom = self.stack.tail;
            match self.blocks[bottom].state {
                State::Lir => break,
                State::ResidentHir => {
                    self.unlink(Self::stack, bottom, Via::Stack);
                    self.blocks[bottom].in_stack = false;
                }
                State::NonResidentHir => {
                    self.unlink(Self::stack, bottom, Via::Stack);
                    self.unlink(Self::non_resident, bottom, Via::Queue);
                    self.forget(bottom);
                }
            }
        }
    }

    /// The LIR block at the bottom of S becomes resident HIR, queued last for eviction.
    fn demote_bottom_lir(&mut self) {
        let bottom = self.stack.tail;
        debug_assert_eq!(self.blocks[bottom].state, State::Lir);
        self.unlink(Self::stack, bottom, Via::Stack);
        self.blocks[bottom].in_stack = false;
        self.blocks[bottom].state = State::ResidentHir;
        self.lir_count -= 1;
        self.push_front(Self::queue, bottom, Via::Queue);
        self.prune();
    }

    /// Turns an HIR block of S into a LIR block at S's top, demoting the bottom LIR block.
    fn promote(&mut self, block: usize) {
        if self.lir_capacity == 0 {
            // A cache of one block has room for its one resident HIR block only: S holds
            // no LIR block to swap with, and the block stays HIR.
            self.blocks[block].state = State::ResidentHir;
            self.move_to_stack_top(block);
            self.push_front(Self::queue, block, Via::Queue);
            return;
        }
        self.blocks[block].state = State::Lir;
        self.lir_count += 1;
        self.move_to_stack_top(block);
        if self.lir_count > self.lir_capacity {
            self.demote_bottom_lir();
        }
    }

    /// Evicts the resident HIR block queued longest: it stays in S as non-resident if it is
    /// there, so a quick return can still make it LIR.
    fn evict(&mut self) {
        let victim = self.queue.tail;
        debug_assert!(
            victim != NIL,
            "a full LIRS cache with no resident HIR block"
        );
        self.unlink(Self::queue, victim, Via::Queue);
        if self.blocks[victim].in_stack {
            self.blocks[victim].state = State::NonResidentHir;
            self.push_front(Self::non_resident, victim, Via::Queue);
            if self.non_resident.len > NON_RESIDENT_MULTIPLIER * self.capacity {
                let oldest = self.non_resident.tail;
                self.unlink(Self::non_resident, oldest, Via::Queue);
                self.unlink(Self::stack, oldest, Via::Stack);
                self.forget(oldest);
            }
        } else {
            self.forget(victim);
        }
    }

    fn resident(&self) -> usize {
        self.lir_count + self.queue.len
    }

    fn new_block(&mut self, key: u64, state: State) -> usize {
        let block = Block {
            key,
            state,
            in_stack: false,
            stack: UNLINKED,
            queue: UNLINKED,
        };
        let b = match self.free.pop() {
            Some(b) => {
                self.blocks[b] = block;
                b
            }
            None => {
                self.blocks.push(block);
                self.blocks.len() - 1
            }
        };
        self.map.insert(key, b);
        b
    }
}

impl Policy for Lirs {
    fn name(&self) -> &'static str {
        "LIRS"
    }

    fn access(&mut self, key: u64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let found = self.map.get(&key).copied();
        let hit = match found {
            Some(b) => match self.blocks[b].state {
                State::Lir => {
                    let was_bottom = self.stack.tail == b;
                    self.move_to_stack_top(b);
                    if was_bottom {
                        self.prune();
                    }
                    true
                }
                State::ResidentHir => {
                    if self.blocks[b].in_stack {
                        self.unlink(Self::queue, b, Via::Queue);
                        self.promote(b);
                    } else {
                        self.move_to_stack_top(b);
                        self.unlink(Self::queue, b, Via::Queue);
                        self.push_front(Self::queue, b, Via::Queue);
                    }
                    true
                }
                State::NonResidentHir => {
                    self.unlink(Self::non_resident, b, Via::Queue);
                    if self.resident() >= self.capacity {
                        self.evict();
                    }
                    self.promote(b);
                    false
                }
            },
            None => {
                if self.resident() >= self.capacity {
                    self.evict();
                }
                if self.lir_count < self.lir_capacity {
                    let b = self.new_block(key, State::Lir);
                    self.lir_count += 1;
                    self.move_to_stack_top(b);
                } else {
                    let b = self.new_block(key, State::ResidentHir);
                    self.move_to_stack_top(b);
                    self.push_front(Self::queue, b, Via::Queue);
                }
                false
            }
        };
        debug_assert!(self.resident() <= self.capacity);
        debug_assert!(self.lir_count <= self.lir_capacity);
        hit
    }
}

/// LIRS with the paper's 1% resident HIR share, for a cache of `capacity` blocks.
pub fn lirs(capacity: usize) -> Box<dyn Policy> {
    Box::new(Lirs::new(capacity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::{count, lru, opt};

    const H: bool = true;
    const M: bool = false;

    #[test]
    fn lir_blocks_outlast_blocks_read_once() {
        // Capacity 3: two LIR blocks and one resident HIR block. 1 and 2 become LIR, 3
        // resident HIR; read again while in S, 3 becomes LIR and 1, the bottom LIR block,
        // resident HIR. 4 evicts 1, 1 evicts 4; the LIR blocks 2 and 3 stay, where LRU
        // loses both to the two blocks read once.
        let t = [1, 2, 3, 3, 4, 1, 2, 3];
        let mut p = lirs(3);
        let hits: Vec<bool> = t.iter().map(|&k| p.access(k)).collect();
        assert_eq!(hits, [M, M, M, H, M, M, H, H]);
        let mut l = lru(3);
        let lru_hits: Vec<bool> = t.iter().map(|&k| l.access(k)).collect();
        assert_eq!(lru_hits, [M, M, M, H, M, M, M, M]);
    }

    #[test]
    fn a_loop_longer_than_the_cache_keeps_its_lir_blocks() {
        // LRU hits nothing on a loop of 100 keys with room for 50; LIRS keeps its 49 LIR
        // blocks for good, as OPT keeps 49 of the 50.
        let t: Vec<u64> = (0..40).flat_map(|_| 0..100).collect();
        let lirs_hits = count(&mut *lirs(50), &t);
        let opt_hits = count(&mut *opt(50, &t), &t);
        assert_eq!(count(&mut *lru(50), &t), 0);
        assert!(
            lirs_hits * 10 >= opt_hits * 9,
            "LIRS {lirs_hits} against OPT {opt_hits}"
        );
    }

    #[test]
    fn remembers_at_most_twice_its_capacity_of_non_resident_blocks() {
        // Nine LIR blocks, then keys read once each: every one is evicted while in S, where
        // nothing prunes it (the bottom LIR block is never read again).
        let mut p = Lirs::new(10);
        for k in 0..10_000 {
            p.access(k);
        }
        assert_eq!(p.non_resident.len, 20);
        assert_eq!(p.map.len(), 30, "9 LIR, 1 resident HIR, 20 non-resident");
        // The oldest non-resident blocks were forgotten: only the last 20 evicted remain.
        assert!(!p.access(9_000) && !p.map.contains_key(&9_001));
    }
}
