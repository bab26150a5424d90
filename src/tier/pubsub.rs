//! The fallback for coherence where a single Redis will not track keys (`CLIENT` renamed
//! away or not permitted, a proxy in front of it that lacks it): tiers tell each other.
//! Redis before 6 cannot serve the tier at all: it speaks RESP3 only. A cluster cannot use
//! this mode: it routes `PUBLISH` by channel, so it cannot share the write's pipeline.
//!
//! Each write a tier makes to Redis (`insert`, `invalidate`) publishes the key's Redis name
//! on `<prefix>invalidate`, in the same round trip as the write; every tier subscribes to
//! that channel and drops the named key from L1, through the same path as a tracking
//! invalidation (stripe counter first, so a racing fill is undone). A message carries its
//! sender's id, so a tier skips its own. This covers only writes made through tiers: a
//! plain `SET` or `DEL` from another program, a `FLUSHALL`, or an expiry in Redis tells no
//! one (an L1 entry never outlives its Redis copy's TTL anyway).
//!
//! Fills (`SET NX` after a load) publish nothing: they only write keys Redis did not hold,
//! and no L1 can hold a key Redis does not (it was dropped when the key was deleted, and
//! expires with it otherwise). The one fill that overwrites, over a value this tier cannot
//! decode (another release's codec), publishes like a write: a tier that can decode the old
//! value may hold it.

use super::l2::Notice;

/// How a tier learns that other processes changed keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Invalidations {
    /// RESP3 client tracking: Redis reports every change to a key under the prefix,
    /// whoever made it. If Redis refuses `CLIENT TRACKING`, the tier falls back to
    /// [`PubSub`](Self::PubSub) (see `TieredCache::invalidations`).
    #[default]
    Tracking,
    /// Tiers publish their own writes on `<prefix>invalidate` and subscribe to it; writes
    /// made without a tier (plain `SET`s, `FLUSHALL`) are not seen.
    PubSub,
}

/// This tier's channel and id, to publish its writes and recognise others'.
#[derive(Debug)]
pub(crate) struct Channel {
    name: Vec<u8>,
    id: [u8; 8],
}

impl Channel {
    pub(crate) fn new(prefix: &[u8]) -> Self {
        let mut name = prefix.to_vec();
        name.extend_from_slice(b"invalidate");
        // Randomly seeded per call: tiers in one process differ too.
        let id = ahash::RandomState::new().hash_one(0u8).to_be_bytes();
        Self { name, id }
    }

    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    /// The message announcing a write to the key Redis names `redis_key`.
    pub(crate) fn notice(&self, redis_key: &[u8]) -> Notice {
        let mut message = self.id.to_vec();
        message.extend_from_slice(redis_key);
        (self.name.clone(), message)
    }

    /// The Redis name of the key another tier wrote, if `message` came on this channel from
    /// another tier.
    pub(crate) fn foreign_key<'m>(&self, channel: &[u8], message: &'m [u8]) -> Option<&'m [u8]> {
        if channel != self.name.as_slice() {
            return None;
        }
        let (sender, key) = message.split_at_checked(self.id.len())?;
        (sender != self.id.as_slice()).then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_messages_and_other_channels_are_skipped() {
        let (mine, theirs) = (Channel::new(b"p:"), Channel::new(b"p:"));
        assert_eq!(mine.name(), b"p:invalidate");
        let (channel, message) = theirs.notice(b"p:7");
        assert_eq!(mine.foreign_key(&channel, &message), Some(&b"p:7"[..]));
        let (channel, message) = mine.notice(b"p:7");
        assert_eq!(mine.foreign_key(&channel, &message), None, "own");
        assert_eq!(mine.foreign_key(b"other", &message), None);
        assert_eq!(mine.foreign_key(&channel, b"short"), None);
    }
}
