//! Per-tier counters. Tier calls cost microseconds (a Redis round trip), so plain relaxed
//! atomics are cheap enough here; the L1's own hot-path counters live in `crate::stats`.

use crate::sync::{AtomicU64, Ordering};

/// A snapshot of a [`TieredCache`](super::TieredCache)'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierStats {
    /// Reads answered by L1, the in-process cache.
    pub l1_hits: u64,
    /// Reads that missed L1 and were answered by Redis.
    pub l2_hits: u64,
    /// Reads that missed both tiers.
    pub misses: u64,
    /// Loader runs (one per key at a time in this process: single-flight).
    pub loads: u64,
    /// Redis calls that failed or timed out: reads (each then served as a miss), writes,
    /// and the background calls that turn tracking on and check it.
    pub l2_errors: u64,
    /// Redis calls not made because the circuit breaker was open (same kinds).
    pub l2_skipped: u64,
    /// Values in Redis this tier could not decode (treated as misses).
    pub decode_errors: u64,
    /// Keys dropped from L1 because Redis reported them changed by another client.
    pub invalidations: u64,
    /// Times L1 was emptied because tracking was lost (a disconnection, or a flush).
    pub l1_resets: u64,
    /// Times tracking was (re-)enabled on a new connection.
    pub tracking_enabled: u64,
    /// Times Redis left the tier's heartbeat unanswered for longer than the untracked L1
    /// TTL with no socket error (a partition, a peer gone without a reset): invalidations
    /// may have been held up, so tracking was dropped as for a disconnection (L1 emptied,
    /// also counted in `l1_resets`).
    pub silences: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) l1_hits: AtomicU64,
    pub(crate) l2_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) l2_errors: AtomicU64,
    pub(crate) l2_skipped: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) l1_resets: AtomicU64,
    pub(crate) tracking_enabled: AtomicU64,
    pub(crate) silences: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TierStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TierStats {
            l1_hits: read(&self.l1_hits),
            l2_hits: read(&self.l2_hits),
            misses: read(&self.misses),
            loads: read(&self.loads),
            l2_errors: read(&self.l2_errors),
            l2_skipped: read(&self.l2_skipped),
            decode_errors: read(&self.decode_errors),
            invalidations: read(&self.invalidations),
            l1_resets: read(&self.l1_resets),
            tracking_enabled: read(&self.tracking_enabled),
            silences: read(&self.silences),
        }
    }
}
