//! Faults session 22's review found in the Redis tier (single node, tracking and pub/sub).
//! Each test failed before its fix (the partition's since session 23).
#![cfg(feature = "redis")]

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::tier::{Invalidations, TieredCache};
use larder::Cache;

#[allow(dead_code)] // `get_many_under_writes` is for the other tier tests.
mod tier_common;
#[allow(dead_code)] // `restart`, `kill` and `start_with` are for `tier.rs`.
mod tier_server;
use tier_common::wait_until;
use tier_server::Server;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

const PREFIX: &str = "t:";

async fn tier_with(url: &str, how: Invalidations, l2_ttl: Duration) -> TieredCache<u64, String> {
    let l1 = Cache::builder().max_entries(10_000).build().unwrap();
    TieredCache::builder(l1, url)
        .prefix(PREFIX)
        .l2_ttl(l2_ttl)
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .breaker(8, Duration::from_secs(10))
        .invalidations(how)
        .build()
        .await
        .unwrap()
}

async fn load(value: &str) -> Result<String, std::io::Error> {
    Ok(value.to_string())
}

/// While untracked, a fill's L1 TTL was `untracked_l1_ttl` (1 s) even when the L1 TTL cap
/// (here the L2 TTL, 200 ms) was shorter. Fixed: the smaller of the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untracked_fill_keeps_to_the_l1_ttl_cap() {
    // Nothing listens there: the tier starts untracked.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let l1 = Cache::builder().max_entries(100).build().unwrap();
    let tier = TieredCache::<u64, String>::builder(l1, &url)
        .prefix(PREFIX)
        .l2_ttl(Duration::from_millis(200))
        .l1_ttl(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    assert!(!tier.is_tracked());
    assert_eq!(tier.get_or_load(1, load("v")).await.unwrap(), "v");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tier.l1().get(&1).is_none(),
        "L1 still holds the fill 500 ms later: l1_ttl 100 ms, l2_ttl 200 ms"
    );
}

/// `get` of a key absent from Redis ended its single-flight "load" with an error, so each
/// waiting caller led in turn and made its own Redis call, one after another. On a hung
/// Redis each of those waited the call timeout: the k-th concurrent caller waited k
/// timeouts (up to the breaker threshold). Fixed: the miss is shared with the waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_of_a_missing_key_wait_one_timeout_each() {
    let server = Server::start();
    let tier = tier_with(
        &server.url(),
        Invalidations::Tracking,
        Duration::from_secs(300),
    )
    .await;
    assert!(tier.is_tracked());

    // Healthy Redis: 16 concurrent gets of an absent key.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut server.client())
        .unwrap();
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let tier = tier.clone();
            tokio::spawn(async move { tier.get(&42).await })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), None);
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.client())
        .unwrap();
    let gets = info
        .lines()
        .find(|l| l.starts_with("cmdstat_get:"))
        .unwrap_or("none")
        .to_string();
    println!("16 concurrent gets of an absent key sent: {gets}");

    // Hung Redis: 6 concurrent gets of one key; the breaker (8 failures) stays closed.
    server.signal("-STOP");
    let start = Instant::now();
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let tier = tier.clone();
            tokio::spawn(async move {
                let begun = Instant::now();
                let got = tier.get(&7).await;
                (got, begun.elapsed())
            })
        })
        .collect();
    let mut times = Vec::new();
    for reader in readers {
        let (got, took) = reader.await.unwrap();
        assert_eq!(got, None);
        times.push(took);
    }
    server.signal("-CONT");
    times.sort();
    println!("with Redis hung: {times:?} (total {:?})", start.elapsed());
    let slowest = *times.last().unwrap();
    // Call timeout: connect 100 ms + response 100 ms.
    assert!(
        slowest < Duration::from_millis(400),
        "a get waited {slowest:?}, past the 200 ms call timeout"
    );
}

/// `get_many` computes each key's L1 TTL from the `PTTL` it read, then fills the keys one
/// by one through the single flight, waiting on any load in flight for an earlier key. The
/// later keys' TTLs were not shortened by that wait: in pub/sub mode (no expiry reports) an
/// L1 entry outlived its Redis copy by the wait, and hid the newer value another tier
/// loaded meanwhile. Fixed: the TTL counts from the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_fills_do_not_outlive_their_redis_copy_after_waiting_on_a_load() {
    let server = Server::start();
    let ttl = Duration::from_millis(400);
    let a = tier_with(&server.url(), Invalidations::PubSub, ttl).await;
    let b = tier_with(&server.url(), Invalidations::PubSub, ttl).await;
    // B loads key 1 (absent from Redis), slowly.
    let slow = {
        let b = b.clone();
        tokio::spawn(async move {
            b.get_or_load(1, async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                load("slow").await
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile A writes keys 1 and 2 (400 ms TTL each).
    a.insert(1, "one".into()).await.unwrap();
    a.insert(2, "two".into()).await.unwrap();
    let values = b.get_many(&[1, 2]).await;
    println!("get_many: {values:?}");
    slow.await.unwrap().unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg("t:2")
        .query(&mut server.client())
        .unwrap();
    assert!(!exists, "key 2 expired in Redis during the wait");
    // Another tier loads a newer value for key 2.
    assert_eq!(a.get_or_load(2, load("two-v2")).await.unwrap(), "two-v2");
    assert_eq!(
        b.get(&2).await.as_deref(),
        Some("two-v2"),
        "B's L1 kept key 2 after its Redis copy expired"
    );
}

/// A caller that joined a single-flight load after an invalidation of its key arrived got
/// the load's value, read before the change: the fill was undone in L1 (`settle_fill`), but
/// not for the callers that waited on it. Fixed: a fill invalidated during its read or
/// load reads Redis again before it hands its value over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_begun_after_the_invalidation_gets_the_new_value() {
    let server = Server::start();
    let ttl = Duration::from_secs(300);
    let a = tier_with(&server.url(), Invalidations::Tracking, ttl).await;
    let b = tier_with(&server.url(), Invalidations::Tracking, ttl).await;
    assert!(a.is_tracked() && b.is_tracked());
    // B loads key 1 (absent from Redis) from a source that answers slowly with "old".
    let leader = {
        let b = b.clone();
        tokio::spawn(async move {
            b.get_or_load(1, async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                load("old").await
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = b.stats().invalidations;
    // Another process writes "new" through its tier; B hears of it.
    a.insert(1, "new".into()).await.unwrap();
    wait_until(Duration::from_secs(1), || b.stats().invalidations > seen).await;
    // A read in B that begins after B handled the invalidation.
    let read = b.get(&1).await;
    leader.await.unwrap().unwrap();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("t:1")
        .query(&mut server.client())
        .unwrap();
    assert_eq!(rmp_serde::from_slice::<String>(&stored).unwrap(), "new");
    let in_l1 = b.l1().get(&1);
    assert!(
        in_l1.as_deref().map_or(true, |v| v == "new"),
        "L1 holds {in_l1:?}"
    );
    assert_eq!(
        read.as_deref(),
        Some("new"),
        "a get begun after the invalidation served the voided value"
    );
}

/// A TCP proxy that can hold its traffic back (a network partition between the tier and
/// Redis: the connection stays open and nothing gets through either way, until the
/// partition heals and TCP delivers what waited, in order), hold back the next `PING` (the
/// tier's heartbeat) for a while, or cut the connection in the middle of the next write
/// that announces itself with `PUBLISH` (all from session 23's reviews).
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    held: AtomicBool,
    /// Milliseconds to hold the next `PING` for (0: none armed).
    ping_stall: AtomicU64,
    pings_stalled: AtomicU64,
    /// Armed: the next chunk sent to Redis that holds `PUBLISH` goes only up to it, and the
    /// connection is closed.
    cut_at_publish: AtomicBool,
    cuts: AtomicU64,
}

impl Proxy {
    fn start(upstream: u16) -> Self {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (to_server, (mut from, mut to)) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ]
                .into_iter()
                .enumerate()
                .map(|(i, ends)| (i == 0, ends))
                {
                    let state = shared.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            while state.held.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            let chunk = &buf[..n];
                            if to_server && chunk.windows(4).any(|w| w == b"PING") {
                                let stall = state.ping_stall.swap(0, Ordering::SeqCst);
                                if stall > 0 {
                                    std::thread::sleep(Duration::from_millis(stall));
                                    state.pings_stalled.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            let publish = chunk.windows(7).position(|w| w == b"PUBLISH");
                            if let (true, Some(at)) = (to_server, publish) {
                                if state.cut_at_publish.swap(false, Ordering::SeqCst) {
                                    let _ = to.write_all(&chunk[..at]);
                                    state.cuts.fetch_add(1, Ordering::SeqCst);
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    let _ = from.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                            }
                            if to.write_all(chunk).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, state }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn hold(&self, hold: bool) {
        self.state.held.store(hold, Ordering::SeqCst);
    }

    /// Cuts the connection that sends the next write with a `PUBLISH` in it, just before
    /// the `PUBLISH`.
    fn cut_at_next_publish(&self) {
        self.state.cut_at_publish.store(true, Ordering::SeqCst);
    }

    /// Holds the next `PING` for `stall`, and returns once it has gone through.
    async fn stall_next_ping(&self, stall: Duration) {
        let before = self.state.pings_stalled.load(Ordering::SeqCst);
        self.state
            .ping_stall
            .store(stall.as_millis() as u64, Ordering::SeqCst);
        wait_until(Duration::from_secs(10), || {
            self.state.pings_stalled.load(Ordering::SeqCst) > before
        })
        .await;
    }
}

async fn tier_behind(
    proxy: &Proxy,
    untracked_l1_ttl: Duration,
    tracking_check: Duration,
) -> TieredCache<u64, String> {
    let l1 = Cache::builder().max_entries(100).build().unwrap();
    TieredCache::<u64, String>::builder(l1, &proxy.url())
        .prefix(PREFIX)
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .breaker(3, Duration::from_millis(200))
        .untracked_l1_ttl(untracked_l1_ttl)
        .tracking_check(tracking_check)
        .build()
        .await
        .unwrap()
}

fn set_elsewhere(server: &Server, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(rmp_serde::to_vec_named(value).unwrap())
        .query(&mut server.client())
        .unwrap();
}

/// Session 22's review: cut off from Redis without the socket failing (a partition, a dead
/// peer without RST), the tier timed out every call and opened its breaker, yet stayed
/// "tracked": timeouts never lost tracking (the redis crate does not reconnect on them, so
/// no `Disconnection` push came), and L1 served a value another process changed in Redis
/// for as long as the partition lasted (up to its L1 TTL, 5 min by default). Fixed: the
/// tier's heartbeat goes unanswered, and after `untracked_l1_ttl` of that silence tracking
/// is dropped as for a disconnection. Once the partition heals, tracking comes back and the
/// new value is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_untracked_ttl_drops_tracking_and_its_l1() {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    let b = tier_behind(
        &proxy,
        Duration::from_millis(500),
        Duration::from_millis(50),
    )
    .await;
    assert!(b.is_tracked());
    assert_eq!(b.get_or_load(1, load("old")).await.unwrap(), "old");
    proxy.hold(true);
    let cut_at = Instant::now();
    // Another process changes key 1 in Redis; the invalidation cannot reach B.
    set_elsewhere(&server, "t:1", "new");
    wait_until(Duration::from_secs(5), || !b.is_tracked()).await;
    let lost_after = cut_at.elapsed();
    let stats = b.stats();
    assert!(stats.silences == 1 && stats.l1_resets == 1, "{stats:?}");
    // 500 ms of silence, then at most one 50 ms check and one 200 ms call (plus a loaded
    // machine's slack).
    assert!(
        lost_after >= Duration::from_millis(500) && lost_after < Duration::from_millis(2000),
        "tracking dropped after {lost_after:?}"
    );
    assert_eq!(
        b.get(&1).await,
        None,
        "Redis is out of reach and L1 was emptied"
    );
    proxy.hold(false);
    wait_until(Duration::from_secs(10), || b.is_tracked()).await;
    assert_eq!(b.get(&1).await.as_deref(), Some("new"));
    // Tracking holds again: a change made now reaches L1.
    set_elsewhere(&server, "t:1", "newer");
    let mut seen = None;
    for _ in 0..200 {
        seen = b.get(&1).await;
        if seen.as_deref() == Some("newer") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.as_deref(), Some("newer"));
}

/// A stall shorter than `untracked_l1_ttl` (Redis slow for a moment, a brief partition)
/// keeps tracking and L1: the invalidations held up arrive once it ends, in order before
/// the heartbeat's late reply, and drop what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shorter_than_the_untracked_ttl_keeps_tracking_and_l1() {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    let b = tier_behind(&proxy, Duration::from_secs(3), Duration::from_millis(50)).await;
    assert!(b.is_tracked());
    assert_eq!(b.get_or_load(1, load("old")).await.unwrap(), "old");
    assert_eq!(b.get_or_load(2, load("kept")).await.unwrap(), "kept");
    proxy.hold(true);
    set_elsewhere(&server, "t:1", "new");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.is_tracked(), "{:?}", b.stats());
    proxy.hold(false);
    wait_until(Duration::from_secs(5), || !b.l1().contains_key(&1)).await;
    let stats = b.stats();
    assert!(stats.silences == 0 && stats.l1_resets == 0, "{stats:?}");
    assert!(b.is_tracked());
    assert!(b.l1().contains_key(&2), "L1 kept what did not change");
    assert_eq!(b.get(&1).await.as_deref(), Some("new"));
}

/// Session 23's review: the silence was measured from the last answered heartbeat, sent a
/// whole `tracking_check` before the one that went unanswered. With a `tracking_check`
/// longer than `untracked_l1_ttl` (2 s and 1 s), one heartbeat held up for 300 ms dropped
/// tracking and emptied L1. It is now measured from the first unanswered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_stall_keeps_tracking_under_a_long_tracking_check() {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    let b = tier_behind(&proxy, Duration::from_secs(1), Duration::from_secs(2)).await;
    assert!(b.is_tracked());
    assert_eq!(b.get_or_load(1, load("one")).await.unwrap(), "one");
    proxy.stall_next_ping(Duration::from_millis(300)).await;
    // The stall is over; the tracking task has time to decide.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = b.stats();
    assert!(stats.silences == 0 && stats.l1_resets == 0, "{stats:?}");
    assert!(b.is_tracked() && b.l1().contains_key(&1), "{stats:?}");
}

/// Redis busy with a script for longer than `untracked_l1_ttl` answers the heartbeat with
/// `BUSY`: an answer, in order after any invalidation, so tracking and L1 are kept (no write
/// can run during the script either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_busy_past_the_untracked_ttl_still_answers_and_keeps_l1() {
    let server = Server::start_with(&["--busy-reply-threshold", "50"]);
    let l1 = Cache::builder().max_entries(100).build().unwrap();
    let b = TieredCache::<u64, String>::builder(l1, &server.url())
        .prefix(PREFIX)
        .untracked_l1_ttl(Duration::from_millis(300))
        .tracking_check(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    assert!(b.is_tracked());
    assert_eq!(b.get_or_load(1, load("one")).await.unwrap(), "one");
    let mut busy = server.client();
    // Loops on the server's clock for a second.
    let took = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let _: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
            .arg(
                "local s = redis.call('TIME') repeat local n = redis.call('TIME') \
                 until (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 1000000 return nil",
            )
            .arg(0)
            .query(&mut busy);
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        took >= Duration::from_millis(900),
        "the script ran {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = b.stats();
    assert!(stats.silences == 0 && stats.l1_resets == 0, "{stats:?}");
    assert!(b.is_tracked() && b.l1().contains_key(&1));
}

fn redis_get(server: &Server, key: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query(&mut server.client())
        .unwrap();
    bytes.map(|b| rmp_serde::from_slice(&b).unwrap())
}

/// Session 23's review: in pub/sub mode a tier's write and its `PUBLISH` went as a plain
/// pipeline, so a connection lost between the two (reset, killed, a proxy failing over)
/// left Redis with the write and no tier told of it: the other tiers served the old value
/// from L1 for its whole TTL (5 min by default). Now the write and its notice are one
/// script: Redis applies both or neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_a_write_cut_off_before_its_publish_leaves_no_tier_stale() {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    let url = proxy.url();
    let a = tier_with(&url, Invalidations::PubSub, Duration::from_secs(300)).await;
    let b = tier_with(
        &server.url(),
        Invalidations::PubSub,
        Duration::from_secs(300),
    )
    .await;
    assert!(a.is_tracked() && b.is_tracked());
    assert_eq!(b.get_or_load(1, load("old")).await.unwrap(), "old");
    assert_eq!(b.get_or_load(2, load("old")).await.unwrap(), "old");
    proxy.cut_at_next_publish();
    let written = a.insert(1, "new".to_string()).await;
    assert_eq!(proxy.state.cuts.load(Ordering::SeqCst), 1, "{written:?}");
    wait_until(Duration::from_secs(10), || a.is_tracked()).await;
    proxy.cut_at_next_publish();
    let deleted = a.invalidate(&2).await;
    assert_eq!(proxy.state.cuts.load(Ordering::SeqCst), 2, "{deleted:?}");
    let (one_in_redis, two_in_redis) = (redis_get(&server, "t:1"), redis_get(&server, "t:2"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (one, two) = (b.l1().get(&1), b.l1().get(&2));
    assert!(
        one.as_ref()
            .map_or(true, |one| Some(one) == one_in_redis.as_ref())
            && two
                .as_ref()
                .map_or(true, |two| Some(two) == two_in_redis.as_ref()),
        "1 s after the writes (insert {written:?}, invalidate {deleted:?}), B's L1 holds \
         key 1 = {one:?} (Redis: {one_in_redis:?}) and key 2 = {two:?} (Redis: {two_in_redis:?})"
    );
}

/// Where scripts are refused (an ACL without `eval`), pub/sub writes fall back to the
/// pipeline: the write still succeeds and the other tiers still hear of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_writes_without_scripts_still_reach_the_other_tiers() {
    let server = Server::start();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-eval")
        .query(&mut server.client())
        .unwrap();
    let a = tier_with(
        &server.url(),
        Invalidations::PubSub,
        Duration::from_secs(300),
    )
    .await;
    let b = tier_with(
        &server.url(),
        Invalidations::PubSub,
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(b.get_or_load(1, load("old")).await.unwrap(), "old");
    assert_eq!(b.get_or_load(2, load("old")).await.unwrap(), "old");
    a.insert(1, "new".to_string()).await.unwrap();
    a.invalidate(&2).await.unwrap();
    wait_until(Duration::from_secs(5), || {
        !b.l1().contains_key(&1) && !b.l1().contains_key(&2)
    })
    .await;
    assert_eq!(b.get(&1).await.as_deref(), Some("new"));
    assert_eq!(a.stats().l2_errors, 0, "{:?}", a.stats());
}
