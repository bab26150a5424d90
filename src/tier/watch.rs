//! Noticing the connections a cluster client opens by itself, which tracking does not cover.
//!
//! The cluster client keeps one connection per node and replaces them as it sees fit: all of
//! them when it falls back to its seed nodes (after losing a node), one when a slot refresh
//! finds a node it had dropped (a replica back in the topology, a promoted one), when a
//! redirect names a node it has no connection to, or when a connection fails a health check.
//! It drops the old connection quietly (a `Disconnection` push comes only from a socket that
//! failed), and the new one does not track: invalidations from that node stop, with nothing
//! said. Seen in `tests/tier_cluster.rs`: after a failover, every replica's connection had
//! been replaced and none of the new ones tracked.
//!
//! Every new connection starts with a name lookup through the client's resolver, so the
//! tier passes its own ([`OpeningWatch`]). A lookup for a node whose connection was tracked
//! means that connection is being replaced: tracking is lost at once (L1 emptied, fills get
//! the untracked TTL) and turned on again once the new connection can be in place. A lookup
//! for any other node (one that was down, or new to the client) replaces nothing that
//! tracked, and no L1 entry came from it; the client retries a dead node every second, and
//! emptying L1 each time would only cost loads. Either way the tier checks, once the new
//! connection can be in place and then every `tracking_check`, that every connection the
//! client holds tracks (`L2::tracked_nodes`); that check also catches a connection put in
//! use later than expected.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::io::AsyncDNSResolver;
use redis::RedisFuture;

use crate::sync::{lock, AtomicU64, Mutex, Ordering};

/// The connections the cluster client began opening: when the last one began, when the
/// last one replacing a tracked connection began and how many of those there were, and
/// which nodes' connections were last seen tracking (as `host:port`).
#[derive(Debug)]
pub(crate) struct Openings {
    replacing: AtomicU64,
    times: Mutex<Times>,
    tracked: Mutex<HashSet<String>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    any: Option<Instant>,
    replacing: Option<Instant>,
}

impl Openings {
    pub(crate) fn new() -> Self {
        Self {
            replacing: AtomicU64::new(0),
            times: Mutex::new(Times::default()),
            tracked: Mutex::new(HashSet::new()),
        }
    }

    /// Notes an opening to `host:port`; returns whether it replaces a tracked connection.
    fn record(&self, host: &str, port: u16) -> bool {
        let replaces = lock(&self.tracked).contains(&format!("{host}:{port}"));
        let now = Some(Instant::now());
        let mut times = lock(&self.times);
        times.any = now;
        if replaces {
            times.replacing = now;
            self.replacing.fetch_add(1, Ordering::SeqCst);
        }
        replaces
    }

    /// The nodes whose connections were just seen tracking.
    pub(crate) fn set_tracked(&self, nodes: impl IntoIterator<Item = String>) {
        *lock(&self.tracked) = nodes.into_iter().collect();
    }

    /// How many openings replacing a tracked connection have begun so far.
    pub(crate) fn replacing(&self) -> u64 {
        self.replacing.load(Ordering::SeqCst)
    }

    /// How long until `settle` has passed since the last opening that replaces a tracked
    /// connection began (`None`: it has): turning tracking on before could miss it.
    pub(crate) fn replacing_settle_left(&self, settle: Duration) -> Option<Duration> {
        left(lock(&self.times).replacing, settle)
    }

    /// How long until `settle` has passed since the last opening of any kind began.
    pub(crate) fn settle_left(&self, settle: Duration) -> Option<Duration> {
        left(lock(&self.times).any, settle)
    }
}

fn left(since: Option<Instant>, settle: Duration) -> Option<Duration> {
    settle
        .checked_sub(since?.elapsed())
        .filter(|left| !left.is_zero())
}

/// The resolver the tier gives the cluster client: resolves like the default one (through
/// tokio), after recording the opening and calling `on_open(replaces_tracked)`.
pub(crate) struct OpeningWatch {
    openings: Arc<Openings>,
    on_open: Box<dyn Fn(bool) + Send + Sync>,
}

impl OpeningWatch {
    pub(crate) fn new(
        openings: Arc<Openings>,
        on_open: impl Fn(bool) + Send + Sync + 'static,
    ) -> Self {
        Self {
            openings,
            on_open: Box::new(on_open),
        }
    }
}

impl AsyncDNSResolver for OpeningWatch {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        // Before the connection exists: once it replaces a tracked one, invalidations that
        // would have come on the old one are lost.
        let replaces_tracked = self.openings.record(host, port);
        (self.on_open)(replaces_tracked);
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, port)).await?;
            Ok(Box::new(addrs) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_are_counted_and_told_apart() {
        let openings = Openings::new();
        assert_eq!(openings.settle_left(Duration::from_secs(60)), None);
        assert!(!openings.record("10.0.0.1", 7000), "nothing tracked yet");
        assert_eq!(
            openings.replacing_settle_left(Duration::from_secs(60)),
            None
        );
        openings.set_tracked(["10.0.0.1:7000".to_string()]);
        assert!(!openings.record("10.0.0.2", 7000), "a node not tracked");
        assert_eq!(openings.replacing(), 0);
        assert!(
            openings.record("10.0.0.1", 7000),
            "replaces a tracked connection"
        );
        assert_eq!(openings.replacing(), 1);
        let left = openings
            .replacing_settle_left(Duration::from_secs(60))
            .unwrap();
        assert!(left > Duration::from_secs(59), "{left:?}");
        assert!(openings.settle_left(Duration::from_secs(60)).is_some());
        assert_eq!(openings.settle_left(Duration::ZERO), None);
    }
}
