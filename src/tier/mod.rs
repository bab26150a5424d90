//! Two tiers: larder in process (L1), Redis shared between processes (L2), kept coherent.
//!
//! A read tries L1 (tens of nanoseconds), then Redis (a round trip), then the loader, with
//! one load per key at a time in this process (single-flight across all three). A value
//! found in Redis fills L1 for no longer than Redis will keep it; a loaded value is written
//! to Redis with the tier's L2 TTL, then to L1.
//!
//! **Coherence.** When any other client changes or deletes a key under the tier's prefix,
//! Redis tells this process (RESP3 client tracking) and the key leaves L1, typically within
//! a millisecond (see the README for measured figures). If the connection drops, L1 is
//! emptied (invalidations sent meanwhile are lost) and tracking is turned on again once the
//! connection is back; until then L1 keeps fills only for `untracked_l1_ttl`. A connection
//! that goes silent without dropping (a partition) counts as dropped once the tier's
//! heartbeat has gone unanswered for `untracked_l1_ttl` (see
//! [`TierBuilder::tracking_check`]). See
//! `coherence.rs` for the protocol. Where Redis refuses client tracking, tiers publish their
//! own writes to each other instead ([`Invalidations::PubSub`], `pubsub.rs`), which covers
//! only writes made through tiers.
//!
//! **Faults.** Every Redis call is bounded by `connect_timeout + response_timeout`, and a
//! circuit breaker stops calling a Redis that keeps failing, then probes it back. A failed
//! or skipped L2 read is a miss (counted in [`TierStats::l2_errors`] or
//! [`TierStats::l2_skipped`]): the caller still gets L1's value or the loader's. Writes
//! ([`insert`](TieredCache::insert), [`invalidate`](TieredCache::invalidate)) report a
//! failed L2 write as [`TierError::Unavailable`], with L1 already cleared of the key so this
//! process never serves a value Redis may not have.
//!
//! ```no_run
//! # async fn demo() -> Result<(), larder::tier::TierError> {
//! use std::time::Duration;
//! use larder::{tier::TieredCache, Cache};
//!
//! let l1 = Cache::<u64, String>::builder().max_entries(10_000).build().unwrap();
//! let tier = TieredCache::builder(l1, "redis://127.0.0.1:6379")
//!     .prefix("profile:")
//!     .l2_ttl(Duration::from_secs(300))
//!     .build()
//!     .await?;
//! let name = tier
//!     .get_or_load(7, async { Ok::<_, std::io::Error>("Ada".to_string()) })
//!     .await
//!     .unwrap();
//! assert_eq!(name, "Ada");
//! # Ok(())
//! # }
//! ```

mod breaker;
mod codec;
mod coherence;
mod key;
mod l2;
mod pubsub;
mod stats;
mod watch;

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ahash::RandomState;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::sync::{AtomicBool, Ordering};

pub use codec::{Codec, CodecError, MessagePack};
pub use key::RedisKey;
pub use pubsub::Invalidations;
pub use stats::TierStats;

use crate::Cache;
use breaker::Breaker;
use coherence::Coherence;
use l2::{Connection, L2Error, L2};
use pubsub::Channel;
use stats::Counters;
use watch::{OpeningWatch, Openings};

/// Why building a tier or writing through it failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TierError {
    /// A setting is out of range, or the Redis URL is malformed; the message says which.
    Config(String),
    /// Redis did not take a write (down, timed out, or refused by the open circuit
    /// breaker). L1 no longer holds the key; Redis may still hold its old value until that
    /// expires.
    Unavailable(String),
    /// The value could not be encoded for Redis. Nothing was written.
    Codec(CodecError),
}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(why) => write!(f, "tier configuration: {why}"),
            Self::Unavailable(why) => write!(f, "L2 write failed: {why}"),
            Self::Codec(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TierError {}

impl From<L2Error> for TierError {
    fn from(e: L2Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Where the L2 lives.
#[derive(Debug)]
enum Target {
    Node(String),
    Cluster(Vec<String>),
}

/// Builds a [`TieredCache`]; see [`TieredCache::builder`] for the defaults.
#[derive(Debug)]
#[must_use]
pub struct TierBuilder<K, V, C = MessagePack, S = RandomState> {
    l1: Cache<K, V, S>,
    target: Target,
    prefix: String,
    l1_ttl: Option<Duration>,
    l2_ttl: Duration,
    untracked_l1_ttl: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    retries: usize,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    tracking_check: Duration,
    invalidations: Invalidations,
    codec: C,
}

impl<K, V, C, S> TierBuilder<K, V, C, S> {
    /// Prefix of every key the tier writes in Redis, and of the keys it tracks
    /// (default `"larder:"`). Tiers sharing a prefix share their entries.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// TTL of values the tier writes to Redis (default 5 minutes). As for L1 entries
    /// ([`Cache::insert_with_ttl`]), `Duration::MAX`, or any TTL beyond about 584 years,
    /// means no expiry: values are written without one (Redis refuses an expiry that far
    /// out) and stay until written over, deleted or evicted (a `volatile-*` maxmemory
    /// policy never evicts them). L1 copies then have no expiry either, unless
    /// [`l1_ttl`](Self::l1_ttl) sets one.
    pub fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.l2_ttl = ttl;
        self
    }

    /// Upper bound on an L1 entry's TTL (default: the L2 TTL). An entry filled from Redis
    /// never outlives its Redis copy whatever this says. Zero is refused by
    /// [`build`](Self::build): every fill would be stored already expired.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// L1 TTL of values filled while tracking is off (default 1 s): how stale a value may
    /// get while invalidations cannot arrive. Also how long Redis may leave the tier's
    /// heartbeat unanswered before the tier stops trusting tracking (see
    /// [`tracking_check`](Self::tracking_check)): a stall shorter than this drops nothing,
    /// and a partition that no socket error reports lets L1 serve a value changed meanwhile
    /// for about this long, plus two `tracking_check`s and one call timeout, and no longer.
    pub fn untracked_l1_ttl(mut self, ttl: Duration) -> Self {
        self.untracked_l1_ttl = ttl;
        self
    }

    /// Time allowed to (re)connect to Redis (default 250 ms). Timeouts too long to count
    /// (`Duration::MAX`) are as good as none: a call to a hung Redis waits until it answers.
    /// On a cluster, the tier also waits a call timeout (both timeouts) for a connection the
    /// client opens to settle before checking or turning on its tracking, so then tracking
    /// lost to a reconnection stays off (L1 keeps fills for `untracked_l1_ttl` only).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for one Redis reply (default 100 ms). As for
    /// [`connect_timeout`](Self::connect_timeout), `Duration::MAX` is as good as none.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Reconnection attempts per lost connection (default 1).
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// Opens the circuit breaker after `failures` consecutive failed calls, for `cooldown`
    /// before one probe (default 5 failures, 1 s). A cooldown too long for the clock to
    /// count (`Duration::MAX`) lasts for good: once open, the breaker lets no probe through
    /// and the tier runs on L1 and the loader alone.
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// How often the tier sends its heartbeat while tracking (default 100 ms): a `PING`,
    /// and on a cluster a check that every connection the cluster client holds still
    /// tracks. Redis pushes invalidations in order with replies, so an answered heartbeat
    /// vouches that every invalidation sent before it has come in (the client hands it to
    /// the tier moments later). A connection cut off without a socket
    /// error (a partition) reports no disconnection: once heartbeats have gone unanswered
    /// for [`untracked_l1_ttl`](Self::untracked_l1_ttl), the tier drops tracking as for a
    /// disconnection (L1 emptied, counted in [`TierStats::silences`]). On a cluster every
    /// node must answer, replicas included. On a cluster the
    /// client also opens connections by itself; the tier notices each as it opens, and the
    /// check catches one that is put in use later than expected. Until it does,
    /// invalidations from that node can be missed: this bounds how long.
    pub fn tracking_check(mut self, interval: Duration) -> Self {
        self.tracking_check = interval;
        self
    }

    /// How the tier learns of other processes' writes (default: client tracking, with
    /// pub/sub as the fallback if a single node refuses it for good). See [`Invalidations`].
    /// Every tier sharing a prefix must use the same mode: a tracking tier does not publish,
    /// so a pub/sub tier would not hear its writes. Pub/sub is for a single node only:
    /// [`build`](Self::build) refuses it for a cluster.
    pub fn invalidations(mut self, how: Invalidations) -> Self {
        self.invalidations = how;
        self
    }

    /// Encodes values with `codec` instead of MessagePack.
    pub fn codec<C2>(self, codec: C2) -> TierBuilder<K, V, C2, S> {
        TierBuilder {
            l1: self.l1,
            target: self.target,
            prefix: self.prefix,
            l1_ttl: self.l1_ttl,
            l2_ttl: self.l2_ttl,
            untracked_l1_ttl: self.untracked_l1_ttl,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            retries: self.retries,
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: self.breaker_cooldown,
            tracking_check: self.tracking_check,
            invalidations: self.invalidations,
            codec,
        }
    }
}

impl<K, V, C, S> TierBuilder<K, V, C, S>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    C: Codec<V>,
    S: BuildHasher + Send + Sync + 'static,
{
    /// Connects and turns on tracking if Redis answers in time. A single node is connected
    /// lazily: one that is down now is not an error, the tier starts degraded and recovers
    /// when it comes up. Must run inside a tokio runtime, which keeps a small task that
    /// re-enables tracking after reconnections.
    ///
    /// # Errors
    /// [`TierError::Config`] for a malformed URL, a zero timeout, TTL (`l1_ttl` included)
    /// or `tracking_check`, naming the setting;
    /// [`TierError::Unavailable`] if a cluster does not answer within the timeouts.
    pub async fn build(self) -> Result<TieredCache<K, V, C, S>, TierError> {
        for (name, value) in [
            ("l2_ttl", self.l2_ttl),
            // Every L1 fill would be stored already expired.
            ("l1_ttl", self.l1_ttl.unwrap_or(self.l2_ttl)),
            ("untracked_l1_ttl", self.untracked_l1_ttl),
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
            ("tracking_check", self.tracking_check),
        ] {
            if value.is_zero() {
                return Err(TierError::Config(format!("{name} must be above zero")));
            }
        }
        // A cluster routes PUBLISH by its channel as if it were a key, so it cannot share a
        // pipeline with the write it announces; pub/sub is for a single node only.
        if self.invalidations == Invalidations::PubSub && matches!(self.target, Target::Cluster(_))
        {
            return Err(TierError::Config(
                "invalidations: pub/sub is for a single node; a cluster needs client tracking"
                    .into(),
            ));
        }
        let coherence = Arc::new(Coherence::new());
        let counters = Arc::new(Counters::default());
        let wake_tracker = Arc::new(Notify::new());
        let openings = Arc::new(Openings::new());
        let prefix = self.prefix.into_bytes();
        let channel = Arc::new(Channel::new(&prefix));
        let handler = Arc::new(PushHandler {
            channel: channel.clone(),
            l1: self.l1.clone(),
            coherence: coherence.clone(),
            counters: counters.clone(),
            wake_tracker: wake_tracker.clone(),
            prefix: prefix.clone(),
        });
        let on_push = {
            let handler = handler.clone();
            move |push: PushInfo| {
                handler.handle(push);
                Ok::<(), redis::aio::SendError>(())
            }
        };
        // Saturating: `Duration::MAX` timeouts mean no limit, not a panic.
        let call_timeout = self.connect_timeout.saturating_add(self.response_timeout);
        let connection = match &self.target {
            Target::Node(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| TierError::Config(format!("redis url {url:?}: {e}")))?;
                // Invalidation pushes need RESP3.
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))
                    .map_err(|e| TierError::Config(e.to_string()))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(self.retries)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500))
                    .set_push_sender(on_push);
                let manager = ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| TierError::Config(e.to_string()))?;
                Connection::Node(manager)
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .retries(u32::try_from(self.retries).unwrap_or(u32::MAX))
                    .push_sender(on_push)
                    .async_dns_resolver(OpeningWatch::new(openings.clone(), move |replaces| {
                        if replaces {
                            handler.lose_tracking();
                        } else {
                            // Check the new connection once it is in place.
                            handler.wake_tracker.notify_one();
                        }
                    }))
                    .build()
                    .map_err(|e| TierError::Config(format!("cluster nodes {nodes:?}: {e}")))?;
                // The cluster client connects eagerly: it must learn the slot map first.
                let connected = tokio::time::timeout(call_timeout, client.get_async_connection())
                    .await
                    .map_err(|_| TierError::Unavailable("cluster: connect timed out".into()))?
                    .map_err(|e| TierError::Unavailable(format!("cluster: {e}")))?;
                Connection::Cluster(connected)
            }
        };
        let breaker = Breaker::new(self.breaker_threshold, self.breaker_cooldown);
        let shared = Arc::new(Shared {
            l1: self.l1,
            l2: L2::new(connection, breaker, call_timeout),
            codec: self.codec,
            prefix,
            l1_ttl: self.l1_ttl.unwrap_or(self.l2_ttl).min(self.l2_ttl),
            l2_ttl: self.l2_ttl,
            untracked_l1_ttl: self.untracked_l1_ttl,
            coherence,
            counters,
            wake_tracker,
            openings,
            call_timeout,
            tracking_check: self.tracking_check,
            channel,
            pubsub: AtomicBool::new(self.invalidations == Invalidations::PubSub),
        });
        // First attempt inline, so a tier built against a live Redis starts tracked.
        shared.try_enable_tracking().await;
        tokio::spawn(keep_tracking(Arc::downgrade(&shared)));
        Ok(TieredCache { shared })
    }
}

/// L1 (a [`Cache`]) in front of Redis (L2), coherent across processes. Cloning gives
/// another handle to the same tier.
pub struct TieredCache<K, V, C = MessagePack, S = RandomState> {
    shared: Arc<Shared<K, V, C, S>>,
}

impl<K, V, S> TieredCache<K, V, MessagePack, S> {
    /// A builder for a tier with `l1` in front of the Redis at `redis_url`
    /// (`redis://[user:password@]host:port[/db]`; the tier always speaks RESP3, which
    /// invalidation pushes need, so Redis 6 or later).
    ///
    /// Defaults: prefix `"larder:"`, L2 TTL 5 min, L1 TTL capped at the L2 TTL, untracked
    /// L1 TTL 1 s, connect timeout 250 ms, response timeout 100 ms, 1 reconnection retry, a
    /// breaker opening after 5 consecutive failures for 1 s, MessagePack values.
    pub fn builder(l1: Cache<K, V, S>, redis_url: &str) -> TierBuilder<K, V, MessagePack, S> {
        Self::builder_for(l1, Target::Node(redis_url.to_string()))
    }

    /// A builder for a tier with `l1` in front of a Redis Cluster reached through any of
    /// `nodes` (URLs as for [`builder`](Self::builder)); the cluster client routes each key
    /// to its hash slot's primary and follows failovers. Unlike a single node, the cluster
    /// must answer at [`build`](TierBuilder::build), to hand out its slot map. Tracking is
    /// turned on at every node the client is connected to, and on every connection it opens
    /// later (after a failover, say): see [`tracking_check`](TierBuilder::tracking_check).
    /// Needs Redis 6.2 or later (`CLIENT INFO`). Every write on a cluster also asks `CLIENT
    /// GETREDIR` whether the connection that took it tracks; an ACL that refuses it costs
    /// the write its L1 copy, never the write.
    pub fn cluster_builder(
        l1: Cache<K, V, S>,
        nodes: &[&str],
    ) -> TierBuilder<K, V, MessagePack, S> {
        let nodes = nodes.iter().map(|node| node.to_string()).collect();
        Self::builder_for(l1, Target::Cluster(nodes))
    }

    fn builder_for(l1: Cache<K, V, S>, target: Target) -> TierBuilder<K, V, MessagePack, S> {
        TierBuilder {
            l1,
            target,
            prefix: "larder:".to_string(),
            l1_ttl: None,
            l2_ttl: Duration::from_secs(300),
            untracked_l1_ttl: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(250),
            response_timeout: Duration::from_millis(100),
            retries: 1,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            tracking_check: Duration::from_millis(100),
            invalidations: Invalidations::Tracking,
            codec: MessagePack,
        }
    }
}

impl<K, V, C, S> Clone for TieredCache<K, V, C, S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K, V, C, S> fmt::Debug for TieredCache<K, V, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("stats", &self.shared.counters.snapshot())
            .field("tracked", &self.shared.coherence.is_tracked())
            .finish_non_exhaustive()
    }
}

struct Shared<K, V, C, S> {
    l1: Cache<K, V, S>,
    l2: L2,
    codec: C,
    prefix: Vec<u8>,
    l1_ttl: Duration,
    l2_ttl: Duration,
    untracked_l1_ttl: Duration,
    coherence: Arc<Coherence>,
    counters: Arc<Counters>,
    /// Wakes the task that re-enables tracking (after a disconnection, or to let it exit).
    wake_tracker: Arc<Notify>,
    /// Connections the cluster client began opening (see `watch.rs`).
    openings: Arc<Openings>,
    /// The most one Redis call takes: also how long after it began a new connection may be
    /// put in use (its connect, then a `PING`).
    call_timeout: Duration,
    tracking_check: Duration,
    /// The pub/sub fallback's channel (see `pubsub.rs`).
    channel: Arc<Channel>,
    /// Whether coherence runs on pub/sub instead of client tracking.
    pubsub: AtomicBool,
}

/// Drops `key` from L1 if a write's future is dropped (its caller gave up: a timeout,
/// `select!`) while the write is in flight. The write may still reach Redis, which reports
/// no change to the connection that made it (`NOLOOP`), and the cancelled L1 write leaves
/// the old value: without this, L1 would serve it until its TTL. A write that completes
/// forgets the guard and settles L1 itself.
struct DropOnCancel<'a, K, V, C, S>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    C: Codec<V>,
    S: BuildHasher + Send + Sync + 'static,
{
    shared: &'a Shared<K, V, C, S>,
    key: &'a K,
}

impl<K, V, C, S> Drop for DropOnCancel<'_, K, V, C, S>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    C: Codec<V>,
    S: BuildHasher + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.shared.coherence.invalidate(self.key);
        self.shared.l1.remove(self.key);
    }
}

impl<K, V, C, S> Drop for Shared<K, V, C, S> {
    fn drop(&mut self) {
        // The tracking task holds only a weak handle: woken, it finds the tier gone and ends.
        self.wake_tracker.notify_one();
    }
}

impl<K, V, C, S> TieredCache<K, V, C, S>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    C: Codec<V>,
    S: BuildHasher + Send + Sync + 'static,
{
    /// The value of `key` from L1 or Redis, without loading. A Redis failure is a miss.
    pub async fn get(&self, key: &K) -> Option<V> {
        let shared = &self.shared;
        if let Some(value) = shared.l1.get(key) {
            Counters::bump(&shared.counters.l1_hits);
            return Some(value);
        }
        let fill = FillTicket::default();
        // A miss is shared with the callers waiting on this read, as a value would be
        // (session 22's review: each of them read Redis again in turn).
        let loaded: Result<Option<V>, std::convert::Infallible> = shared
            .l1
            .fill_async(key.clone(), async {
                let mut read = shared.read_for_fill(key, &fill).await;
                if !fill.unchanged(&shared.coherence) {
                    // Invalidated during the read: callers who joined since must not get
                    // the value it voided (session 22's review). Once more is enough to
                    // pass one change; a key changing all the time is settled by L1.
                    read = shared.read_for_fill(key, &fill).await;
                }
                match read {
                    L2Read::Hit(found) => Ok(Some(found)),
                    L2Read::Miss | L2Read::Undecodable => {
                        Counters::bump(&shared.counters.misses);
                        Ok(None)
                    }
                }
            })
            .await;
        let Ok(loaded) = loaded;
        if loaded.is_none() && fill.get().is_none() {
            // A caller that shared another's miss (the leader counted its own).
            Counters::bump(&shared.counters.misses);
        }
        shared.settle_fill(key, fill.get(), loaded.is_some());
        loaded
    }

    /// The values of `keys` (in the same order) from L1, else Redis, without loading: the
    /// keys L1 does not hold are read from Redis in one round of requests (one pipeline on
    /// a single node; on a cluster one per hash slot, sent together, so keys on different
    /// slots and masters work). Values found fill L1 as [`get`](Self::get)'s do, under the
    /// same guard against invalidations that race the read. A Redis failure is a miss for
    /// the keys it concerns.
    pub async fn get_many(&self, keys: &[K]) -> Vec<Option<V>> {
        let shared = &self.shared;
        let mut values: Vec<Option<V>> = keys.iter().map(|key| shared.l1.get(key)).collect();
        let missed: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
        Counters::add(&shared.counters.l1_hits, (keys.len() - missed.len()) as u64);
        if missed.is_empty() {
            return values;
        }
        // Tickets before the read: an invalidation after them voids the fill.
        let tickets: Vec<_> = missed
            .iter()
            .map(|&i| shared.coherence.ticket(&keys[i]))
            .collect();
        let names: Vec<Vec<u8>> = missed.iter().map(|&i| shared.redis_key(&keys[i])).collect();
        let read_at = Instant::now();
        let found = match shared.l2_call(shared.l2.get_many(&names)).await {
            Ok(found) => found,
            Err(_) => vec![None; names.len()],
        };
        if found.iter().any(Option::is_none) && !found.iter().all(Option::is_none) {
            // Some slots' reads failed while others answered (the call as a whole did not).
            Counters::bump(&shared.counters.l2_errors);
        }
        for ((&i, ticket), found) in missed.iter().zip(tickets).zip(found) {
            let key = &keys[i];
            let read = match found {
                Some(read) => shared.decode(read, ticket),
                None => L2Read::Miss,
            };
            let L2Read::Hit((fill, ttl)) = read else {
                Counters::bump(&shared.counters.misses);
                continue;
            };
            // The TTL counted from the read, not from now: earlier keys' fills may have
            // waited on loads in flight (review 22f, F3).
            let fill = (fill, ttl.map(|ttl| ttl.saturating_sub(read_at.elapsed())));
            // Through the single-flight path, like `get`: a concurrent `insert` of this key
            // in this process wins, and a value already in L1 is kept.
            let filled: Result<V, ()> = shared
                .l1
                .try_get_or_insert_async_with_ttl(key.clone(), async { Ok(fill) })
                .await;
            shared.settle_fill(key, Some(ticket), filled.is_ok());
            values[i] = filled.ok();
        }
        values
    }

    /// The value of `key` from L1, else Redis, else `load`, which runs once per key at a
    /// time in this process (other callers wait for it). A loaded value goes to Redis (with
    /// the L2 TTL) and to L1. A failing load caches nothing and its error is returned; a
    /// Redis failure is only a miss.
    ///
    /// # Errors
    /// The loader's error.
    pub async fn get_or_load<E>(
        &self,
        key: K,
        load: impl Future<Output = Result<V, E>>,
    ) -> Result<V, E> {
        let shared = &self.shared;
        if let Some(value) = shared.l1.get(&key) {
            Counters::bump(&shared.counters.l1_hits);
            return Ok(value);
        }
        let fill = FillTicket::default();
        let loaded = shared
            .l1
            .try_get_or_insert_async_with_ttl(key.clone(), async {
                let read = shared.read_for_fill(&key, &fill).await;
                let Some(ticket) = fill.get() else {
                    unreachable!("a read for a fill notes its ticket");
                };
                if let L2Read::Hit(found) = read {
                    return Ok(found);
                }
                Counters::bump(&shared.counters.misses);
                Counters::bump(&shared.counters.loads);
                let value = load.await?;
                // Best effort: a Redis that is down costs the next reader a load, not this
                // one. `NX`: a value another process wrote meanwhile is newer than ours; but
                // a value no one here can read is replaced.
                let mut ticket = ticket;
                if let Ok(bytes) = shared.codec.encode(&value) {
                    let name = shared.redis_key(&key);
                    let stored = if matches!(read, L2Read::Undecodable) {
                        // This replaces a value other processes may hold in their L1 (one
                        // that can read it): in pub/sub mode they must hear of it (session
                        // 21's review; tracking reports it by itself).
                        let notice = shared.notice(&name);
                        let set = shared.l2.set(&name, &bytes, shared.l2_ttl, notice.as_ref());
                        shared.l2_call(set).await
                    } else {
                        let set = shared.l2.set_if_absent(&name, &bytes, shared.l2_ttl);
                        shared.l2_call(set).await
                    };
                    if let Ok(false) = stored {
                        // Written through a connection that does not track (see `l2::Read`).
                        ticket = ticket.untracked();
                    }
                }
                if !shared.coherence.unchanged_since(ticket) {
                    // Another process wrote the key while this one loaded: Redis holds a
                    // newer value than the load (the `NX` kept it), and callers who joined
                    // since must get it (session 22's review: they got the load's).
                    if let L2Read::Hit(found) = shared.read_for_fill(&key, &fill).await {
                        return Ok(found);
                    }
                }
                Ok((value, Some(shared.l1_ttl_for(ticket, None))))
            })
            .await;
        shared.settle_fill(&key, fill.get(), loaded.is_ok());
        loaded
    }

    /// Writes `value` through to Redis, then to L1 (write-through), holding `key` against
    /// concurrent loads in this process. Other processes drop their L1 copies when Redis
    /// reports the change.
    ///
    /// # Errors
    /// [`TierError::Codec`] if the value cannot be encoded (nothing changes);
    /// [`TierError::Unavailable`] if Redis did not take it (L1 has dropped the key).
    pub async fn insert(&self, key: K, value: V) -> Result<(), TierError> {
        let shared = &self.shared;
        let bytes = shared.codec.encode(&value).map_err(TierError::Codec)?;
        let redis_key = shared.redis_key(&key);
        let cancelled = DropOnCancel { shared, key: &key };
        // As for a fill: L1's copy lives no longer than Redis's, nor than the L1 TTL cap
        // (shorter while untracked, and in pub/sub mode, where no expiry is reported).
        let started = shared.coherence.ticket(&key);
        let ttl = shared.l1_ttl_for(started, Some(shared.l2_ttl));
        // What the coherence counters read once Redis took the write.
        let stored = std::sync::OnceLock::new();
        let written = shared
            .l1
            .write_with_async(key.clone(), Some(ttl), |_| async {
                // Noted before the SET: an invalidation that arrives with its reply (another
                // process deleted or rewrote the key right after it) may be handled before
                // this task resumes, and must still show as a change (session 21's review:
                // noted after the SET, it counted as already seen, and L1 kept a value
                // Redis no longer held).
                let before = shared.coherence.ticket(&key);
                let notice = shared.notice(&redis_key);
                let set = shared
                    .l2
                    .set(&redis_key, &bytes, shared.l2_ttl, notice.as_ref());
                shared.l2_call(set).await.map(|tracked| {
                    // Redis sends no invalidation for this connection's own writes
                    // (`NOLOOP`): void the fills that read the old value before this SET (a
                    // `get_many` reads outside the key's single flight), before this value
                    // reaches L1, so that one landing after it is dropped when it settles.
                    // Then only this bump may have moved the stripe since `before`.
                    shared.coherence.invalidate(&key);
                    // A write that landed on a connection that does not track (a cluster
                    // redirect: see `l2::Read`) leaves `stored` unset, so that L1 drops
                    // the value below: no other client's change of it would be reported.
                    if tracked {
                        let _ = stored.set(before.after_own_invalidation());
                    }
                    Some(value)
                })
            })
            .await;
        std::mem::forget(cancelled);
        if let Err(e) = written {
            // The write may have reached Redis before the reply was lost: void the fills
            // that read the old value and drop L1's copy.
            shared.coherence.invalidate(&key);
            shared.l1.remove(&key);
            return Err(e.into());
        }
        // An invalidation of the key (another process wrote it after this SET), or a change
        // of tracking, may have reached L1 before this value did: then it may be stale
        // already (and, untracked, cached for too long). Nor does L1 keep a value written
        // through a connection that does not track.
        let current = stored
            .get()
            .is_some_and(|&stored| shared.coherence.unchanged_since(stored))
            && shared.coherence.generation_unchanged_since(started);
        if !current {
            shared.l1.remove(&key);
        }
        Ok(())
    }

    /// Deletes `key` from Redis and L1 (cache-aside invalidation, after a write to the
    /// source of truth).
    ///
    /// # Errors
    /// [`TierError::Unavailable`] if Redis did not take the delete (L1 has dropped the key).
    pub async fn invalidate(&self, key: &K) -> Result<(), TierError> {
        let shared = &self.shared;
        let redis_key = shared.redis_key(key);
        let cancelled = DropOnCancel { shared, key };
        let deleted = shared
            .l1
            .write_with_async(key.clone(), None, |_| async {
                shared
                    .l2_call(
                        shared
                            .l2
                            .delete(&redis_key, shared.notice(&redis_key).as_ref()),
                    )
                    .await
                    .map(|()| None)
            })
            .await;
        std::mem::forget(cancelled);
        // As in `insert`: no invalidation comes back for our own delete.
        shared.coherence.invalidate(key);
        shared.l1.remove(key);
        deleted.map_err(TierError::from)
    }

    /// The tier's counters.
    pub fn stats(&self) -> TierStats {
        self.shared.counters.snapshot()
    }

    /// The L1 cache (for its own statistics, or to inspect what it holds).
    pub fn l1(&self) -> &Cache<K, V, S> {
        &self.shared.l1
    }

    /// Whether invalidations can reach this tier now: Redis tracks its keys for it (or,
    /// with [`Invalidations::PubSub`], it is subscribed); false while reconnecting.
    pub fn is_tracked(&self) -> bool {
        self.shared.coherence.is_tracked()
    }

    /// How the tier learns of other processes' writes now: [`Invalidations::PubSub`] if it
    /// was built so, or fell back to it because Redis refused client tracking.
    pub fn invalidations(&self) -> Invalidations {
        if self.shared.pubsub.load(Ordering::SeqCst) {
            Invalidations::PubSub
        } else {
            Invalidations::Tracking
        }
    }

    /// Whether the circuit breaker would hold a call to Redis back now (it is open and its
    /// cooldown has not run out).
    pub fn l2_is_shut_off(&self) -> bool {
        self.shared.l2.breaker_is_open()
    }
}

impl<K, V, C, S> Shared<K, V, C, S>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    C: Codec<V>,
    S: BuildHasher + Send + Sync + 'static,
{
    /// What to publish with a write of `redis_key`, in pub/sub mode.
    fn notice(&self, redis_key: &[u8]) -> Option<l2::Notice> {
        self.pubsub
            .load(Ordering::SeqCst)
            .then(|| self.channel.notice(redis_key))
    }

    fn redis_key(&self, key: &K) -> Vec<u8> {
        let mut name = self.prefix.clone();
        name.extend_from_slice(&key.to_redis_key());
        name
    }

    /// Counts a failed Redis call.
    async fn l2_call<T>(
        &self,
        call: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        let outcome = call.await;
        match &outcome {
            Err(L2Error::Skipped) => Counters::bump(&self.counters.l2_skipped),
            Err(_) => Counters::bump(&self.counters.l2_errors),
            Ok(_) => {}
        }
        outcome
    }

    /// Reads `key` from Redis for an L1 fill that began at `ticket`: the value and the L1
    /// TTL it may have.
    /// Reads `key` for an L1 fill under a new ticket, noted in `fill` (the one the fill
    /// settles against).
    /// A redirected read's ticket is marked untracked (see `l2::Read`), so that the fill,
    /// or the value a load makes after it, gets the untracked TTL.
    async fn read_for_fill(&self, key: &K, fill: &FillTicket) -> L2Read<V> {
        let ticket = self.coherence.ticket(key);
        fill.set(ticket);
        match self.l2_call(self.l2.get(&self.redis_key(key))).await {
            Ok(read) => {
                if read.redirected {
                    fill.set(ticket.untracked());
                }
                self.decode(read, ticket)
            }
            Err(_) => L2Read::Miss,
        }
    }

    /// What a read that began at `ticket` found, decoded.
    fn decode(&self, read: l2::Read, ticket: coherence::Ticket) -> L2Read<V> {
        let ticket = if read.redirected {
            ticket.untracked()
        } else {
            ticket
        };
        let Some((bytes, left)) = read.found else {
            return L2Read::Miss;
        };
        match self.codec.decode(&bytes) {
            Ok(value) => {
                Counters::bump(&self.counters.l2_hits);
                L2Read::Hit((value, Some(self.l1_ttl_for(ticket, left))))
            }
            Err(_) => {
                Counters::bump(&self.counters.decode_errors);
                L2Read::Undecodable
            }
        }
    }

    /// The L1 TTL for a fill that started at `ticket`, of a value Redis keeps for `left`.
    fn l1_ttl_for(&self, ticket: coherence::Ticket, left: Option<Duration>) -> Duration {
        // An open breaker may be a partition that no socket error reports: invalidations
        // may not be arriving, so fills get the untracked TTL (session 22's review: a
        // loader's value filled during a black-holed connection kept the tracked TTL).
        let cap = if ticket.tracked() && !self.l2.breaker_is_open() {
            self.l1_ttl
        } else {
            // Never above the L1 TTL cap (review 22f, F1).
            self.untracked_l1_ttl.min(self.l1_ttl)
        };
        left.map_or(cap, |left| left.min(cap))
    }

    /// After this caller's fill (it led the single-flight load: `ticket` is set) put a
    /// value into L1: drops it again if an invalidation or a tracking change since the
    /// ticket may have made it stale (see `coherence.rs`). Dropping a value that was in fact
    /// fresh costs one miss.
    fn settle_fill(&self, key: &K, ticket: Option<coherence::Ticket>, filled: bool) {
        if let Some(ticket) = ticket {
            if filled && !self.coherence.unchanged_since(ticket) {
                self.l1.remove(key);
            }
        }
    }

    /// Turns tracking on on every connection, and checks that it took on all of them and
    /// that no connection began replacing a tracked one meanwhile (it could be put in use
    /// untracked).
    ///
    /// In pub/sub mode, or once Redis refuses tracking, subscribes to the tiers' channel.
    async fn try_enable_tracking(&self) -> bool {
        let openings = self.openings.replacing();
        // A disconnection from here on must keep tracking off (see `regain_tracking_since`).
        let generation = self.coherence.generation();
        let enabled = if self.pubsub.load(Ordering::SeqCst) {
            self.subscribe().await
        } else {
            match self.l2_call(self.l2.enable_tracking(&self.prefix)).await {
                Ok(()) => self.l2_call(self.l2.tracked_nodes()).await,
                // Redis refused for good (the command is unknown or not allowed): every tier
                // sharing it hears the same refusal and falls back alike. A transient error
                // (too many clients, loading) is retried instead: a fleet where some tiers
                // track and others listen would miss each other's writes.
                Err(L2Error::Failed(e)) if l2::refused_for_good(&e) && !self.l2.is_cluster() => {
                    self.pubsub.store(true, Ordering::SeqCst);
                    self.subscribe().await
                }
                Err(e) => Err(e),
            }
        };
        match enabled {
            Ok(Some(nodes)) if self.openings.replacing() == openings => {
                self.openings.set_tracked(nodes);
                // Whatever L1 filled while untracked may have missed invalidations.
                self.l1.clear();
                if !self.coherence.regain_tracking_since(generation) {
                    return false;
                }
                Counters::bump(&self.counters.tracking_enabled);
                true
            }
            _ => false,
        }
    }

    async fn subscribe(&self) -> Result<Option<Vec<String>>, L2Error> {
        let subscribe = self.l2.subscribe(self.channel.name());
        // No node's connection tracks: an opening never replaces a tracked one.
        self.l2_call(subscribe).await.map(|()| Some(Vec::new()))
    }

    /// The heartbeat: asks every connection that carries invalidations for a reply, and on
    /// a cluster whether it still tracks. Returns whether every one answered: Redis pushes
    /// invalidations in order with replies on the same connection, so a reply means every
    /// invalidation sent before it has come in. (It may not have been handled yet: a
    /// single node's `ConnectionManager` hands pushes over through a task of its own,
    /// moments later. A late invalidation still drops its key and voids racing fills.)
    ///
    /// A connection that does not track drops tracking as a disconnection would (L1
    /// emptied) so that the tracking task turns it on again. A check that failed or timed
    /// out (a node slow for a moment) drops nothing by itself: emptying every process's L1
    /// for it would send all readers to Redis or the loader at once. The tracking task
    /// drops tracking once the silence outlasts `untracked_l1_ttl` (see `keep_tracking`).
    async fn check_tracking(&self) -> bool {
        if !self.l2.is_cluster() {
            return match self.l2_call(self.l2.ping()).await {
                Ok(()) => true,
                Err(e) => e.answered(),
            };
        }
        match self.l2_call(self.l2.tracked_nodes()).await {
            // Nodes that left the client's topology drop out: reaching them again is a new
            // node, not a replacement.
            Ok(Some(nodes)) => {
                self.openings.set_tracked(nodes);
                true
            }
            Ok(None) => {
                let _: bool = self.drop_tracking();
                true
            }
            Err(e) => e.answered(),
        }
    }

    /// Drops tracking (invalidations may have been missed) and empties L1. Returns whether
    /// tracking was on until now.
    fn drop_tracking(&self) -> bool {
        let was = self.coherence.lose_tracking();
        if was {
            self.l1.clear();
            Counters::bump(&self.counters.l1_resets);
        }
        was
    }
}

/// The ticket of the read a caller's fill is built on, if this caller led the fill: the
/// last one, when an invalidation made it read again.
#[derive(Default)]
struct FillTicket(std::sync::Mutex<Option<coherence::Ticket>>);

impl FillTicket {
    fn set(&self, ticket: coherence::Ticket) {
        *crate::sync::lock(&self.0) = Some(ticket);
    }

    fn get(&self) -> Option<coherence::Ticket> {
        *crate::sync::lock(&self.0)
    }

    /// Whether no invalidation of the key (nor change of tracking) came since the read.
    fn unchanged(&self, coherence: &Coherence) -> bool {
        self.get()
            .map_or(true, |ticket| coherence.unchanged_since(ticket))
    }
}

/// What an L1 fill found in Redis.
enum L2Read<V> {
    /// The value and the L1 TTL it may have.
    Hit((V, Option<Duration>)),
    /// Nothing, or Redis failed (counted).
    Miss,
    /// Bytes this tier's codec cannot decode (counted).
    Undecodable,
}

/// Re-enables tracking whenever it is lost and, while it holds, sends the heartbeat every
/// `tracking_check` (`Shared::check_tracking`), for as long as the tier exists.
///
/// A connection cut off with no socket error (a partition, a peer gone without a reset)
/// fails every call but reports no disconnection, and the invalidations it should carry
/// are held up. So tracking counts only while the heartbeat is answered: once heartbeats
/// have gone unanswered for `untracked_l1_ttl`, counted from the first of them, tracking
/// is dropped as for a disconnection (L1 emptied, fills get the untracked TTL) until Redis
/// answers again. While they go unanswered the heartbeat runs at least four times per
/// `untracked_l1_ttl`, so that a stall's end is seen in time. A stale value is then served
/// for at most about `untracked_l1_ttl`, two `tracking_check`s and a call timeout (on a
/// cluster whose client is opening connections, one call timeout more: the new ones are
/// checked once they can be in place). A stall shorter than `untracked_l1_ttl` drops
/// nothing, whatever `tracking_check` is (session 23's review: measured from the last
/// answered heartbeat, a 300 ms stall dropped tracking under a 2 s `tracking_check`).
async fn keep_tracking<K, V, C, S>(tier: Weak<Shared<K, V, C, S>>)
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    C: Codec<V>,
    S: BuildHasher + Send + Sync + 'static,
{
    let mut backoff = Duration::from_millis(10);
    // When the first heartbeat of the current silence was sent (`None`: the last one was
    // answered).
    let mut silent_since: Option<Instant> = None;
    loop {
        let Some(shared) = tier.upgrade() else {
            return;
        };
        if shared.coherence.is_tracked() {
            let mut check = shared.tracking_check;
            if silent_since.is_some() {
                check = check.min(shared.untracked_l1_ttl / 4);
            }
            let wake = shared.wake_tracker.clone();
            drop(shared);
            // Woken: tracking was lost (the top of the loop sees it), a connection began
            // opening, or the tier is gone.
            let _woken = tokio::time::timeout(check, wake.notified()).await;
            let Some(mut shared) = tier.upgrade() else {
                return;
            };
            // A new connection is checked once it can be in place.
            if let Some(left) = shared.openings.settle_left(shared.call_timeout) {
                drop(shared);
                tokio::time::sleep(left).await;
                let Some(again) = tier.upgrade() else {
                    return;
                };
                shared = again;
            }
            if shared.coherence.is_tracked() {
                let sent = Instant::now();
                if shared.check_tracking().await {
                    silent_since = None;
                } else {
                    let since = *silent_since.get_or_insert(sent);
                    if since.elapsed() > shared.untracked_l1_ttl && shared.drop_tracking() {
                        Counters::bump(&shared.counters.silences);
                    }
                }
            }
            continue;
        }
        // A connection replacing a tracked one may be put in use up to a call timeout after it
        // began: turning tracking on before would leave it out.
        if let Some(left) = shared.openings.replacing_settle_left(shared.call_timeout) {
            drop(shared);
            tokio::time::sleep(left).await;
            continue;
        }
        if shared.try_enable_tracking().await {
            silent_since = None;
            backoff = Duration::from_millis(10);
            continue;
        }
        drop(shared);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Handles what Redis pushes on the tier's connection.
struct PushHandler<K, V, S> {
    channel: Arc<Channel>,
    l1: Cache<K, V, S>,
    coherence: Arc<Coherence>,
    counters: Arc<Counters>,
    wake_tracker: Arc<Notify>,
    prefix: Vec<u8>,
}

impl<K, V, S> PushHandler<K, V, S>
where
    K: RedisKey + Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    fn handle(&self, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(names)) => {
                    for name in names {
                        if let Value::BulkString(name) = name {
                            self.invalidate(name);
                        }
                    }
                }
                // `FLUSHALL` / `FLUSHDB`: every key changed.
                _ => {
                    self.coherence.invalidate_all();
                    self.l1.clear();
                    Counters::bump(&self.counters.l1_resets);
                }
            },
            // The pub/sub fallback: another tier wrote this key.
            PushKind::Message => {
                if let [Value::BulkString(channel), Value::BulkString(message)] = &push.data[..] {
                    if let Some(name) = self.channel.foreign_key(channel, message) {
                        self.invalidate(name);
                    }
                }
            }
            PushKind::Disconnection => self.lose_tracking(),
            _ => {}
        }
    }

    /// Invalidations may no longer arrive (the connection dropped, or the cluster client is
    /// opening a new one): empty L1 and have tracking turned on again. Already untracked,
    /// L1 holds only fills with the untracked TTL, which bounds their staleness by design:
    /// emptying it again (at each attempt to reach a dead node) would only cost loads.
    fn lose_tracking(&self) {
        if self.coherence.lose_tracking() {
            self.l1.clear();
            Counters::bump(&self.counters.l1_resets);
        }
        self.wake_tracker.notify_one();
    }

    fn invalidate(&self, name: &[u8]) {
        let Some(key) = name
            .strip_prefix(self.prefix.as_slice())
            .and_then(K::from_redis_key)
        else {
            return;
        };
        self.coherence.invalidate(&key);
        self.l1.remove(&key);
        Counters::bump(&self.counters.invalidations);
    }
}
