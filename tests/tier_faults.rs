//! Faults session 22's review found in the Redis tier (single node, tracking and pub/sub).
//! Each test failed before its fix; one fault is not fixed, and its test is ignored
//! (run them with `--ignored`; see the README's "Not done yet").
#![cfg(feature = "redis")]

use std::net::TcpListener;

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

/// A TCP proxy that can black-hole its traffic (a network partition between the tier and
/// Redis: the connection stays open, nothing gets through either way).
struct Proxy {
    port: u16,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let flag = blackhole.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if flag.load(Ordering::SeqCst) {
                                continue; // dropped on the floor
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, blackhole }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self, cut: bool) {
        self.blackhole
            .store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Not fixed: cut off from Redis without the socket failing (a partition, a dead peer
/// without RST),
/// the tier times out every call and opens its breaker, yet stays "tracked": timeouts never
/// lose tracking (the redis crate does not reconnect on them, so no `Disconnection` push
/// comes), and L1 keeps serving values others changed in Redis meanwhile, as long as the
/// partition lasts (up to their L1 TTL, 5 min by default). Since session 22, fills made
/// while the breaker is open get the untracked TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known fault: a partition that no socket error reports leaves L1's entries tracked"]
async fn a_partitioned_tier_stays_tracked_and_serves_stale_values() {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    let l1 = Cache::builder().max_entries(100).build().unwrap();
    let b = TieredCache::<u64, String>::builder(l1, &proxy.url())
        .prefix(PREFIX)
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .breaker(3, Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    assert!(b.is_tracked());
    assert_eq!(b.get_or_load(1, load("old")).await.unwrap(), "old");
    proxy.cut(true);
    // Another process changes key 1 in Redis; the invalidation cannot reach B.
    let _: () = redis::cmd("SET")
        .arg("t:1")
        .arg(rmp_serde::to_vec_named("new").unwrap())
        .query(&mut server.client())
        .unwrap();
    for key in 10..15u64 {
        assert_eq!(b.get(&key).await, None);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = b.stats();
    println!(
        "cut off 1.5 s: {stats:?}, tracked {}, breaker open {}",
        b.is_tracked(),
        b.l2_is_shut_off()
    );
    assert!(stats.l2_errors >= 3 && stats.l2_skipped >= 1, "{stats:?}");
    let served = b.get(&1).await;
    proxy.cut(false);
    assert!(
        !b.is_tracked() || served.as_deref() != Some("old"),
        "calls time out, the breaker opened, the tier still claims tracking and serves {served:?}"
    );
}
