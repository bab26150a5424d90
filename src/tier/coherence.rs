//! Keeping L1 coherent with Redis: invalidation pushes drop keys, a lost connection drops
//! everything, and fills that raced with either are undone.
//!
//! Redis (6+) tracks keys for us: the tier's connection runs `CLIENT TRACKING ON BCAST
//! PREFIX <prefix> NOLOOP`, so whenever any other client changes or deletes a key under the
//! prefix, Redis pushes `invalidate [key]` on that connection (RESP3), and the tier drops the
//! key from L1. A `FLUSHALL` pushes `invalidate` with no keys: L1 is emptied.
//!
//! Two races need care:
//! - A fill reads a value from Redis, then another client changes the key and its
//!   invalidation arrives before the fill has put the old value into L1: the invalidation
//!   finds nothing to drop, and the stale value would stay. So each key maps to a stripe
//!   counter that every invalidation bumps *before* dropping the key; a fill notes the
//!   counter before reading Redis and, after filling L1, drops its own entry again if the
//!   counter moved. Whichever way the two interleave, the stale value does not stay.
//! - The connection drops: invalidations sent meanwhile are lost, and the new connection is
//!   not tracked until `CLIENT TRACKING` runs on it again. So a disconnection empties L1 and
//!   bumps a generation that every fill also checks; until tracking is back, fills go into L1
//!   with a short TTL only (`untracked_l1_ttl`), bounding how stale they can get.

use std::hash::Hash;

use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// Stripe counters: enough that unrelated keys rarely share one (a shared stripe only costs
/// a fill its L1 entry, never correctness).
const STRIPES: usize = 1024;

/// What a fill noted before reading Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    count: u64,
    generation: u64,
    tracked: bool,
}

impl Ticket {
    /// Whether the connection was tracked when the fill began: its L1 TTL may be long.
    pub(crate) fn tracked(&self) -> bool {
        self.tracked
    }

    /// The ticket of a read whose value may not be covered by tracking (it came through a
    /// cluster redirect, see `l2::Read`): its fill gets the untracked TTL.
    pub(crate) fn untracked(self) -> Self {
        Self {
            tracked: false,
            ..self
        }
    }

    /// The ticket as it reads after one invalidation of its stripe: the writer's own (see
    /// `TieredCache::insert`), so that any other shows as a change.
    pub(crate) fn after_own_invalidation(self) -> Self {
        Self {
            count: self.count + 1,
            ..self
        }
    }
}

#[derive(Debug)]
pub(crate) struct Coherence {
    stripes: Box<[AtomicU64]>,
    generation: AtomicU64,
    tracked: AtomicBool,
    hasher: ahash::RandomState,
}

impl Coherence {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            tracked: AtomicBool::new(false),
            hasher: ahash::RandomState::new(),
        }
    }

    fn stripe<K: Hash>(&self, key: &K) -> usize {
        self.hasher.hash_one(key) as usize % STRIPES
    }

    /// Notes the state a fill of `key` starts from.
    pub(crate) fn ticket<K: Hash>(&self, key: &K) -> Ticket {
        let stripe = self.stripe(key);
        // Generation before the stripe: `lose` bumps the generation first, so a ticket never
        // pairs a new stripe count with an old generation that looks unchanged later.
        let generation = self.generation.load(Ordering::SeqCst);
        let tracked = self.tracked.load(Ordering::SeqCst);
        let count = self.stripes[stripe].load(Ordering::SeqCst);
        Ticket {
            stripe,
            count,
            generation,
            tracked,
        }
    }

    /// Whether nothing that could make the fill stale happened since `ticket`: no
    /// invalidation of its stripe, no loss or regain of tracking.
    pub(crate) fn unchanged_since(&self, ticket: Ticket) -> bool {
        self.stripes[ticket.stripe].load(Ordering::SeqCst) == ticket.count
            && self.generation.load(Ordering::SeqCst) == ticket.generation
    }

    /// Whether tracking neither dropped nor came back (and nothing was flushed) since
    /// `ticket`; invalidations of single keys do not count.
    pub(crate) fn generation_unchanged_since(&self, ticket: Ticket) -> bool {
        self.generation.load(Ordering::SeqCst) == ticket.generation
    }

    /// Called for each invalidated key, before dropping it from L1.
    pub(crate) fn invalidate<K: Hash>(&self, key: &K) {
        self.stripes[self.stripe(key)].fetch_add(1, Ordering::SeqCst);
    }

    /// Called for a flush of everything, before emptying L1.
    pub(crate) fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The connection dropped: its invalidations can no longer arrive. Returns whether
    /// tracking was on until now (if not, L1 already holds only untracked fills).
    pub(crate) fn lose_tracking(&self) -> bool {
        let was = self.tracked.swap(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        was
    }

    /// Tracking is on again, on a new connection.
    #[cfg(test)]
    pub(crate) fn regain_tracking(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.tracked.store(true, Ordering::SeqCst);
    }

    /// The current generation, read before turning tracking on (see
    /// [`Coherence::regain_tracking_since`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Tracking is on again, on a connection that was turned on after `seen` was read:
    /// unless the connection dropped (or anything else changed the generation) since, which
    /// leaves tracking off and returns false. Setting it anyway would have the tier believe
    /// a new, untracked connection tracks, with no one left to turn it on.
    pub(crate) fn regain_tracking_since(&self, seen: u64) -> bool {
        let next = seen.wrapping_add(1);
        let exchanged =
            self.generation
                .compare_exchange(seen, next, Ordering::SeqCst, Ordering::SeqCst);
        if exchanged.is_err() {
            return false;
        }
        self.tracked.store(true, Ordering::SeqCst);
        // A loss between the exchange and the store found tracking still off, and so left
        // it as it was: undo, and move the generation on so that no fill keeps the tracked
        // TTL a ticket may have read in between.
        if self.generation.load(Ordering::SeqCst) != next {
            self.tracked.store(false, Ordering::SeqCst);
            self.generation.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(crate) fn is_tracked(&self) -> bool {
        self.tracked.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_and_tracking_changes_void_tickets() {
        let coherence = Coherence::new();
        coherence.regain_tracking();
        let ticket = coherence.ticket(&"a");
        assert!(ticket.tracked() && coherence.unchanged_since(ticket));
        coherence.invalidate(&"a");
        assert!(!coherence.unchanged_since(ticket), "invalidated key");
        let ticket = coherence.ticket(&"a");
        assert!(coherence.lose_tracking());
        assert!(!coherence.unchanged_since(ticket), "lost tracking");
        let ticket = coherence.ticket(&"a");
        assert!(!coherence.lose_tracking(), "already lost");
        assert!(!coherence.unchanged_since(ticket), "lost again");
        let ticket = coherence.ticket(&"a");
        assert!(!ticket.tracked());
        coherence.regain_tracking();
        assert!(!coherence.unchanged_since(ticket), "regained tracking");
        let ticket = coherence.ticket(&"a");
        coherence.invalidate_all();
        assert!(!coherence.unchanged_since(ticket), "flushed");
    }

    /// The tracking task reads the generation, turns tracking on, then regains: a
    /// disconnection in between (its push lost tracking while it was still off) must leave
    /// the tier untracked, so the task tries again.
    #[test]
    fn a_loss_while_turning_tracking_on_keeps_it_off() {
        let coherence = Coherence::new();
        let seen = coherence.generation();
        assert!(!coherence.lose_tracking(), "not tracked yet");
        assert!(!coherence.regain_tracking_since(seen));
        assert!(!coherence.is_tracked());
        let seen = coherence.generation();
        let ticket = coherence.ticket(&"a");
        assert!(coherence.regain_tracking_since(seen));
        assert!(coherence.is_tracked());
        assert!(!coherence.unchanged_since(ticket), "regained tracking");
    }
}
