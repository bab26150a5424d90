//! The Redis tier against a real `redis-server` (Debian's package), started by each test on a
//! free loopback port, without persistence, and killed at the end.
//!
//! Run: `cargo test --features redis --test tier` (needs `redis-server` on the PATH; `.ci/run`
//! installs it).
#![cfg(feature = "redis")]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::tier::{Invalidations, TieredCache};
use larder::Cache;

mod tier_common;
mod tier_server;
use tier_common::{get_many_under_writes, wait_until};
use tier_server::Server;

const PREFIX: &str = "t:";

async fn tier(url: &str) -> TieredCache<u64, String> {
    let l1 = Cache::builder().max_entries(10_000).build().unwrap();
    TieredCache::builder(l1, url)
        .prefix(PREFIX)
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .breaker(3, Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

async fn load(value: &str) -> Result<String, std::io::Error> {
    Ok(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_l1_then_redis_then_the_loader_once() {
    let server = Server::start();
    let (a, b) = (tier(&server.url()).await, tier(&server.url()).await);
    assert!(a.is_tracked() && b.is_tracked());

    assert_eq!(a.get_or_load(1, load("one")).await.unwrap(), "one");
    assert_eq!(a.get_or_load(1, load("not loaded")).await.unwrap(), "one");
    let stats = a.stats();
    assert_eq!((stats.loads, stats.misses, stats.l1_hits), (1, 1, 1));

    // Another process's tier (its own L1 and connection) finds it in Redis.
    assert_eq!(b.get_or_load(1, load("not loaded")).await.unwrap(), "one");
    assert_eq!((b.stats().l2_hits, b.stats().loads), (1, 0));
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("t:1")
        .query(&mut server.client())
        .unwrap();
    assert!(stored.len() < 8, "MessagePack, not JSON: {stored:?}");

    // 32 concurrent readers of a missing key: one load across L1, Redis and the loader.
    let runs = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (b, runs) = (b.clone(), runs.clone());
            tokio::spawn(async move {
                b.get_or_load(2, async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    load("two").await
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), "two");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(b.get(&3).await, None, "absent everywhere, no loader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_anywhere_drop_every_other_l1_copy_promptly() {
    let server = Server::start();
    let (a, b) = (tier(&server.url()).await, tier(&server.url()).await);
    let mut latencies = Vec::new();
    for round in 0..100u64 {
        let key = 1000 + round;
        let seen = b.stats().invalidations;
        a.get_or_load(key, load("old")).await.unwrap();
        // A's write reaches B as an invalidation; a fill racing it would (conservatively)
        // be dropped again, so let it arrive first.
        wait_until(Duration::from_secs(1), || b.stats().invalidations > seen).await;
        assert_eq!(b.get(&key).await.as_deref(), Some("old"));
        assert!(b.l1().contains_key(&key));
        // Write-through on A; B's L1 copy must go.
        a.insert(key, "new".to_string()).await.unwrap();
        assert_eq!(a.l1().get(&key).as_deref(), Some("new"));
        latencies.push(wait_until(Duration::from_secs(1), || !b.l1().contains_key(&key)).await);
        assert_eq!(b.get(&key).await.as_deref(), Some("new"));
    }
    latencies.sort();
    println!(
        "invalidation latency over {} writes: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies[latencies.len() - 1]
    );

    // A program writing Redis directly, and a cache-aside delete, drop both L1 copies.
    let _: () = redis::cmd("SET")
        .arg("t:1000")
        .arg("x")
        .query(&mut server.client())
        .unwrap();
    wait_until(Duration::from_secs(1), || {
        !a.l1().contains_key(&1000) && !b.l1().contains_key(&1000)
    })
    .await;
    b.get_or_load(1001, load("x")).await.unwrap();
    a.invalidate(&1001).await.unwrap();
    wait_until(Duration::from_secs(1), || !b.l1().contains_key(&1001)).await;
    assert!(b.stats().invalidations >= 102, "{:?}", b.stats());

    // FLUSHALL empties every L1.
    b.get_or_load(7, load("seven")).await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut server.client()).unwrap();
    wait_until(Duration::from_secs(1), || b.l1().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l1_entry_never_outlives_its_redis_copy() {
    let server = Server::start();
    let tier = tier(&server.url()).await;
    let bytes = rmp_serde::to_vec_named("short-lived").unwrap();
    let _: () = redis::cmd("SET")
        .arg("t:9")
        .arg(bytes)
        .arg("PX")
        .arg(300)
        .query(&mut server.client())
        .unwrap();
    wait_until(Duration::from_secs(1), || tier.stats().invalidations == 1).await;
    assert_eq!(tier.get(&9).await.as_deref(), Some("short-lived"));
    assert!(tier.l1().contains_key(&9));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!tier.l1().contains_key(&9), "L1 kept it past Redis's TTL");
    assert_eq!(tier.get(&9).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_costs_callers_at_most_the_timeout_and_the_tier_recovers() {
    let mut server = Server::start();
    let tier = tier(&server.url()).await;
    // The source of truth behind both tiers.
    let truth = |key: u64| async move { Ok::<_, std::io::Error>(format!("v{key}")) };
    tier.get_or_load(1, truth(1)).await.unwrap();
    assert!(tier.l1().contains_key(&1));
    server.kill();

    // Every answer stays right (L1 while it may be trusted, else the loader); no call waits
    // past the call timeout (connect 100 ms + response 100 ms) plus scheduling slack.
    let mut slowest = Duration::ZERO;
    for round in 0..200u64 {
        let key = round % 50;
        let start = Instant::now();
        let value = tier.get_or_load(key, truth(key)).await.unwrap();
        assert_eq!(value, format!("v{key}"));
        slowest = slowest.max(start.elapsed());
    }
    println!("slowest call with Redis down: {slowest:?}");
    assert!(slowest < Duration::from_millis(400), "{slowest:?}");
    let stats = tier.stats();
    assert!(stats.l2_errors >= 3, "{stats:?}");
    assert!(stats.l2_skipped > 0, "the breaker never opened: {stats:?}");
    assert!(
        stats.l1_resets >= 1,
        "L1 kept entries after the connection dropped"
    );
    assert!(!tier.is_tracked());
    // Writes report the outage, and leave no L1 copy behind.
    assert!(tier.insert(5, "w".to_string()).await.is_err());
    assert!(!tier.l1().contains_key(&5));

    server.restart();
    let recovered = wait_until(Duration::from_secs(10), || tier.is_tracked()).await;
    println!("tracking back {recovered:?} after the restart");
    // Redis is used again, and invalidations flow again.
    wait_until(Duration::from_secs(5), || !tier.l2_is_shut_off()).await;
    tier.insert(6, "six".to_string()).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg("t:6")
        .query(&mut server.client())
        .unwrap();
    wait_until(Duration::from_secs(1), || !tier.l1().contains_key(&6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_callers_at_most_the_timeout() {
    let server = Server::start();
    let tier = tier(&server.url()).await;
    let truth = |key: u64| async move { Ok::<_, std::io::Error>(format!("v{key}")) };
    server.signal("-STOP");
    let mut times = Vec::new();
    for key in 0..20u64 {
        let start = Instant::now();
        assert_eq!(
            tier.get_or_load(key, truth(key)).await.unwrap(),
            format!("v{key}")
        );
        times.push(start.elapsed());
    }
    server.signal("-CONT");
    println!("calls with Redis hung: {times:?}");
    // Connect 100 ms + response 100 ms bound each Redis call; a miss makes two (the read
    // and the loader's write), so 400 ms plus slack bounds a call.
    let slowest = times.iter().max().unwrap();
    assert!(*slowest < Duration::from_millis(600), "{slowest:?}");
    let stats = tier.stats();
    assert!(stats.l2_skipped > 0, "the breaker never opened: {stats:?}");
    // Once the breaker opens, calls skip Redis and cost next to nothing.
    assert!(
        times[10..].iter().all(|t| *t < Duration::from_millis(50)),
        "{times:?}"
    );
    // After the cooldown a probe goes through, succeeds, and Redis serves reads again.
    let bytes = rmp_serde::to_vec_named("in-redis").unwrap();
    let _: () = redis::cmd("SET")
        .arg("t:500")
        .arg(bytes)
        .query(&mut server.client())
        .unwrap();
    let start = Instant::now();
    while tier.get(&500).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            tier.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!tier.l2_is_shut_off());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_built_while_redis_is_down_starts_degraded() {
    let mut server = Server::start();
    server.kill();
    let tier = tier(&server.url()).await;
    assert!(!tier.is_tracked());
    assert_eq!(tier.get_or_load(1, load("loaded")).await.unwrap(), "loaded");
    server.restart();
    wait_until(Duration::from_secs(10), || tier.is_tracked()).await;
}

/// The other process of `coherence_holds_across_processes`: writes through its own tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by coherence_holds_across_processes as a child process"]
async fn child_writes_through_its_own_tier() {
    let url = std::env::var("LARDER_TIER_URL").expect("run by the parent test");
    let tier = tier(&url).await;
    tier.insert(77, "from-child".to_string()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherence_holds_across_processes() {
    let server = Server::start();
    let tier = tier(&server.url()).await;
    tier.get_or_load(77, load("old")).await.unwrap();
    assert!(tier.l1().contains_key(&77));
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_writes_through_its_own_tier"])
        .env("LARDER_TIER_URL", server.url())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    wait_until(Duration::from_secs(1), || !tier.l1().contains_key(&77)).await;
    assert_eq!(tier.get(&77).await.as_deref(), Some("from-child"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_value_in_redis_is_a_miss_and_is_replaced() {
    let server = Server::start();
    let tier = tier(&server.url()).await;
    // 0xc1 is never valid MessagePack.
    let _: () = redis::cmd("SET")
        .arg("t:11")
        .arg(&[0xc1u8][..])
        .query(&mut server.client())
        .unwrap();
    wait_until(Duration::from_secs(1), || tier.stats().invalidations == 1).await;
    assert_eq!(tier.get(&11).await, None);
    assert_eq!(tier.get_or_load(11, load("fresh")).await.unwrap(), "fresh");
    assert_eq!(tier.stats().decode_errors, 2);
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("t:11")
        .query(&mut server.client())
        .unwrap();
    assert_eq!(rmp_serde::from_slice::<String>(&stored).unwrap(), "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tier_settings_are_refused_with_the_setting_named() {
    let l1 = || {
        Cache::<u64, String>::builder()
            .max_entries(10)
            .build()
            .unwrap()
    };
    let error = TieredCache::builder(l1(), "redis://127.0.0.1:1")
        .l2_ttl(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("l2_ttl"), "{error}");
    // Every L1 fill would be stored already expired.
    let error = TieredCache::builder(l1(), "redis://127.0.0.1:1")
        .l1_ttl(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("l1_ttl"), "{error}");
    let error = TieredCache::builder(l1(), "redis://127.0.0.1:1")
        .response_timeout(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("response_timeout"), "{error}");
    let error = TieredCache::builder(l1(), "not a url")
        .build()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not a url"), "{error}");
    // A cluster routes PUBLISH by channel: pub/sub cannot ride with the write it announces.
    let error = TieredCache::cluster_builder(l1(), &["redis://127.0.0.1:1"])
        .invalidations(Invalidations::PubSub)
        .build()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("invalidations"), "{error}");
}

/// `Duration::MAX` timeouts mean no limit: the tier builds and works (their sum, the call
/// timeout, once overflowed and panicked in `build`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_duration_max_mean_no_limit() {
    let server = Server::start();
    let l1 = Cache::builder().max_entries(100).build().unwrap();
    let tier = TieredCache::<u64, String>::builder(l1, &server.url())
        .prefix(PREFIX)
        .connect_timeout(Duration::MAX)
        .response_timeout(Duration::MAX)
        .build()
        .await
        .unwrap();
    assert!(tier.is_tracked());
    assert_eq!(tier.get_or_load(1, load("one")).await.unwrap(), "one");
    tier.insert(2, "two".to_string()).await.unwrap();
    tier.l1().clear();
    assert_eq!(tier.get(&2).await.as_deref(), Some("two"));
}

/// A cooldown of `Duration::MAX` keeps the breaker open for good once it opens, and reads
/// are misses. The first failed call (the tracking attempt in `build`, here) once panicked
/// computing the cooldown's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_cooldown_of_duration_max_keeps_it_open_and_reads_miss() {
    let l1 = Cache::builder().max_entries(100).build().unwrap();
    // Nothing listens on port 1: every call fails at once.
    let tier = TieredCache::<u64, String>::builder(l1, "redis://127.0.0.1:1")
        .prefix(PREFIX)
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .breaker(1, Duration::MAX)
        .build()
        .await
        .unwrap();
    assert_eq!(tier.get(&1).await, None);
    assert!(tier.l2_is_shut_off());
    assert_eq!(tier.get_or_load(1, load("loaded")).await.unwrap(), "loaded");
    let stats = tier.stats();
    assert!(stats.l2_skipped > 0, "{stats:?}");
    assert!(tier.insert(2, "two".to_string()).await.is_err());
    assert!(!tier.l1().contains_key(&2));
}

/// `l2_ttl(Duration::MAX)` means no expiry, as for L1 entries: values go to Redis without
/// one (Redis refuses `PX 18446744073709551615`, which failed every write) and L1 keeps them
/// without one. A finite TTL still gets its `PX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_ttl_of_duration_max_means_no_expiry() {
    let server = Server::start();
    let build = |ttl: Duration| {
        let url = server.url();
        async move {
            let l1 = Cache::builder().max_entries(100).build().unwrap();
            TieredCache::<u64, String>::builder(l1, &url)
                .prefix(PREFIX)
                .l2_ttl(ttl)
                .build()
                .await
                .unwrap()
        }
    };
    let (a, b) = (build(Duration::MAX).await, build(Duration::MAX).await);
    let pttl = |key: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut server.client())
            .unwrap()
    };
    a.insert(1, "one".to_string()).await.unwrap();
    assert_eq!(pttl("t:1"), -1, "no expiry");
    assert_eq!(a.get_or_load(2, load("two")).await.unwrap(), "two");
    assert_eq!(pttl("t:2"), -1, "no expiry");
    assert_eq!(b.get(&1).await.as_deref(), Some("one"));
    assert_eq!(b.stats().l2_hits, 1);
    assert!(a.l1().contains_key(&1) && b.l1().contains_key(&1));
    assert_eq!(a.stats().l2_errors, 0);
    // 1,000 years is past the engine's horizon too; 100 years is not.
    let years = |n: u64| Duration::from_secs(n * 365 * 86_400);
    let far = build(years(1_000)).await;
    far.insert(3, "three".into()).await.unwrap();
    assert_eq!(pttl("t:3"), -1, "no expiry");
    let near = build(years(100)).await;
    near.insert(4, "four".into()).await.unwrap();
    let left = pttl("t:4");
    assert!(left > 0, "{left}");
    assert!(
        Duration::from_millis(left as u64) > years(99),
        "{left} ms left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_reads_the_other_keys_when_one_holds_another_type() {
    let server = Server::start();
    let (a, b) = (tier(&server.url()).await, tier(&server.url()).await);
    for key in 0..10u64 {
        a.insert(key, format!("v{key}")).await.unwrap();
    }
    // A list where a string should be: its GET fails with WRONGTYPE.
    let _: () = redis::cmd("DEL")
        .arg("t:9")
        .query(&mut server.client())
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg("t:9")
        .arg("x")
        .query(&mut server.client())
        .unwrap();
    let keys: Vec<u64> = (0..10).collect();
    for _ in 0..6 {
        let values = b.get_many(&keys).await;
        for key in 0..9u64 {
            assert_eq!(values[key as usize], Some(format!("v{key}")), "key {key}");
        }
        assert_eq!(values[9], None);
        b.l1().clear();
    }
    assert!(!b.l2_is_shut_off(), "one bad key opened the breaker");
    assert_eq!(b.get(&1).await, Some("v1".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_reads_l1_then_redis_for_the_rest() {
    let server = Server::start();
    let (a, b) = (tier(&server.url()).await, tier(&server.url()).await);
    for key in 0..50u64 {
        a.insert(key, format!("v{key}")).await.unwrap();
    }
    // A value B cannot decode is a miss, like for `get`.
    let _: () = redis::cmd("SET")
        .arg("t:49")
        .arg(&[0xc1u8][..])
        .query(&mut server.client())
        .unwrap();
    // All 51 (A's 50 writes and that SET): a late one voids the fills of its coherence
    // stripe, which a key of the read below may share (one run left key 34 unfilled).
    wait_until(Duration::from_secs(1), || b.stats().invalidations >= 51).await;
    assert_eq!(b.get(&1).await.as_deref(), Some("v1"));
    assert_eq!(b.get(&2).await.as_deref(), Some("v2"));
    let before = b.stats();

    // 0..49 in Redis (1 and 2 also in B's L1), 49 undecodable, 50..60 nowhere; a repeat.
    let keys: Vec<u64> = (0..60).chain([7]).collect();
    let values = b.get_many(&keys).await;
    assert_eq!(values.len(), keys.len());
    for (key, value) in keys.iter().zip(&values) {
        let expected = (*key < 49).then(|| format!("v{key}"));
        assert_eq!(value, &expected, "key {key}");
    }
    let after = b.stats();
    assert_eq!(after.l1_hits - before.l1_hits, 2);
    assert_eq!(after.l2_hits - before.l2_hits, 48, "{after:?}");
    assert_eq!(after.misses - before.misses, 11, "{after:?}");
    assert_eq!(after.decode_errors - before.decode_errors, 1);
    assert_eq!(after.loads, before.loads, "no loader");
    for key in 0..49u64 {
        assert!(b.l1().contains_key(&key), "key {key} not filled");
    }
    assert!(b.get_many(&[]).await.is_empty());

    // Entries it filled are tracked like any other.
    a.insert(3, "new".to_string()).await.unwrap();
    wait_until(Duration::from_secs(1), || !b.l1().contains_key(&3)).await;
    assert_eq!(b.get_many(&[3]).await, vec![Some("new".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_leaves_no_stale_entry_when_writes_race_it() {
    let server = Server::start();
    let reader = tier(&server.url()).await;
    let mut plain = server.client();
    get_many_under_writes(reader, |key, bytes| {
        let _: () = redis::cmd("SET")
            .arg(format!("t:{key}"))
            .arg(bytes)
            .query(&mut plain)
            .unwrap();
    })
    .await;
}

async fn pubsub_tier(url: &str, how: Invalidations) -> TieredCache<u64, String> {
    let l1 = Cache::builder().max_entries(10_000).build().unwrap();
    TieredCache::builder(l1, url)
        .prefix(PREFIX)
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .breaker(3, Duration::from_millis(200))
        .invalidations(how)
        .build()
        .await
        .unwrap()
}

/// Tiers' writes reach each other's L1 through pub/sub: `insert` and `invalidate` drop the
/// other tier's copy, the writer keeps its own.
async fn tiers_invalidate_each_other(a: &TieredCache<u64, String>, b: &TieredCache<u64, String>) {
    for key in 1..=20u64 {
        a.get_or_load(key, load("old")).await.unwrap();
        assert_eq!(b.get(&key).await.as_deref(), Some("old"));
        if key % 2 == 0 {
            a.insert(key, "new".to_string()).await.unwrap();
        } else {
            a.invalidate(&key).await.unwrap();
        }
        wait_until(Duration::from_secs(1), || !b.l1().contains_key(&key)).await;
        let expected = (key % 2 == 0).then(|| "new".to_string());
        assert_eq!(b.get(&key).await, expected);
    }
    assert!(b.stats().invalidations >= 20, "{:?}", b.stats());
    // A's own messages come back to it and are skipped: its write-through copy stays.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.l1().get(&20).as_deref(), Some("new"));
    assert_eq!(a.stats().invalidations, 0, "{:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_coherence_covers_writes_through_tiers() {
    let mut server = Server::start();
    let a = pubsub_tier(&server.url(), Invalidations::PubSub).await;
    let b = pubsub_tier(&server.url(), Invalidations::PubSub).await;
    assert_eq!(b.invalidations(), Invalidations::PubSub);
    assert!(a.is_tracked() && b.is_tracked());
    // Nothing tracks; both tiers listen on the channel.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut server.client())
        .unwrap();
    let flags = |line: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix("flags="))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        clients.lines().all(|line| !flags(line).contains('t')),
        "{clients}"
    );
    assert_eq!(clients.matches(" sub=1 ").count(), 2, "{clients}");

    tiers_invalidate_each_other(&a, &b).await;

    // The documented limit: a plain SET tells no one.
    b.get_or_load(100, load("old")).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("t:100")
        .arg(rmp_serde::to_vec_named("plain").unwrap())
        .query(&mut server.client())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.l1().get(&100).as_deref(), Some("old"));

    // After a restart both subscribe again, and messages flow again.
    server.kill();
    wait_until(Duration::from_secs(1), || {
        !a.is_tracked() && !b.is_tracked()
    })
    .await;
    server.restart();
    wait_until(Duration::from_secs(10), || a.is_tracked() && b.is_tracked()).await;
    wait_until(Duration::from_secs(5), || {
        !a.l2_is_shut_off() && !b.l2_is_shut_off()
    })
    .await;
    b.get_or_load(7, load("old")).await.unwrap();
    a.insert(7, "after restart".to_string()).await.unwrap();
    wait_until(Duration::from_secs(1), || !b.l1().contains_key(&7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_tracking_gets_the_pubsub_fallback() {
    // `CLIENT` renamed away: `CLIENT TRACKING` is an unknown command.
    let server = Server::start_with(&["--rename-command", "CLIENT", ""]);
    let a = pubsub_tier(&server.url(), Invalidations::Tracking).await;
    let b = pubsub_tier(&server.url(), Invalidations::Tracking).await;
    assert_eq!(a.invalidations(), Invalidations::PubSub);
    assert_eq!(b.invalidations(), Invalidations::PubSub);
    assert!(a.is_tracked() && b.is_tracked());
    tiers_invalidate_each_other(&a, &b).await;
}

/// A caller that gives up on `insert` (a request timeout, `select!`) after the SET was sent:
/// Redis still takes the write and, since a connection gets no invalidation for its own
/// writes (`NOLOOP`), L1 must drop the old value itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_insert_leaves_no_old_value_in_l1() {
    let server = Server::start();
    let a = tier(&server.url()).await;
    assert_eq!(a.get_or_load(1, load("old")).await.unwrap(), "old");
    server.signal("-STOP");
    let cancelled =
        tokio::time::timeout(Duration::from_millis(30), a.insert(1, "new".to_string())).await;
    assert!(cancelled.is_err(), "the caller gave up");
    server.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("t:1")
        .query(&mut server.client())
        .unwrap();
    let stored: String = rmp_serde::from_slice(&stored).unwrap();
    assert_eq!(stored, "new", "the write reached Redis");
    assert_eq!(a.get(&1).await.as_deref(), Some("new"));
}

/// The same for `invalidate`: the delete reaches Redis, and L1 must not keep the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_invalidate_leaves_no_deleted_value_in_l1() {
    let server = Server::start();
    let a = tier(&server.url()).await;
    assert_eq!(a.get_or_load(1, load("old")).await.unwrap(), "old");
    server.signal("-STOP");
    let cancelled = tokio::time::timeout(Duration::from_millis(30), a.invalidate(&1)).await;
    assert!(cancelled.is_err(), "the caller gave up");
    server.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("t:1")
        .query(&mut server.client())
        .unwrap();
    assert!(!exists, "the delete reached Redis");
    assert_eq!(a.get(&1).await, None);
}

/// A key under the prefix holding another Redis type answers `GET` with `WRONGTYPE`: a miss
/// for that key only. Redis answered, so the breaker (3 failures here) stays closed and the
/// other keys are still read from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_redis_type_is_a_miss_and_leaves_the_breaker_closed() {
    let server = Server::start();
    let a = tier(&server.url()).await;
    let mut c = server.client();
    let one = rmp_serde::to_vec_named("one").unwrap();
    let _: () = redis::cmd("SET").arg("t:1").arg(one).query(&mut c).unwrap();
    let _: () = redis::cmd("HSET")
        .arg("t:9")
        .arg("f")
        .arg("v")
        .query(&mut c)
        .unwrap();
    for _ in 0..5 {
        assert_eq!(a.get(&9).await, None);
    }
    assert!(
        !a.l2_is_shut_off(),
        "a per-key data error opened the breaker"
    );
    assert_eq!(a.get(&1).await.as_deref(), Some("one"));
}

/// `insert` caches its value in L1 for no longer than its Redis copy lives (and the L1 TTL
/// cap). In pub/sub mode Redis reports no expiry, so an L1 copy cached for L1's own default
/// TTL (none here) outlived the key in Redis and hid the newer value another tier loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inserted_value_does_not_outlive_its_redis_copy_under_pubsub() {
    let server = Server::start();
    let build = || async {
        let l1 = Cache::builder().max_entries(100).build().unwrap();
        TieredCache::<u64, String>::builder(l1, &server.url())
            .prefix(PREFIX)
            .l2_ttl(Duration::from_millis(500))
            .invalidations(Invalidations::PubSub)
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    a.insert(1, "v1".to_string()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("t:1")
        .query(&mut server.client())
        .unwrap();
    assert!(!exists, "expired in Redis");
    assert_eq!(b.get_or_load(1, load("v2")).await.unwrap(), "v2");
    assert_eq!(a.get(&1).await.as_deref(), Some("v2"));
}

/// Session 21's review: another client's `DEL` right after an insert's `SET` sends the
/// invalidation on the tier's connection behind the SET's reply, and the redis crate hands
/// it to the tier's handler on another task, which may run before the insert resumes. The
/// insert noted the coherence counter after the SET, so the DEL looked already seen and L1
/// kept a value Redis no longer held (19 and 14 of 20 inserts in two runs).
#[test]
fn an_insert_keeps_no_l1_copy_of_a_value_deleted_right_after_its_set() {
    let server = Server::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let a = tier(&server.url()).await;
        assert!(a.is_tracked());
        let mut stale = 0;
        for key in 0..20u64 {
            let (go, wait) = std::sync::mpsc::channel::<()>();
            let mut other = server.client();
            let deleter = std::thread::spawn(move || {
                wait.recv().unwrap();
                std::thread::sleep(Duration::from_millis(20));
                redis::cmd("DEL")
                    .arg(format!("{PREFIX}{key}"))
                    .query::<i64>(&mut other)
                    .unwrap()
            });
            // Once the SET is on the wire, hold the runtime's only thread while Redis
            // answers it and runs the DEL: the reply and the invalidation then arrive
            // together, and the handler may run first.
            let blocker = tokio::spawn(async move {
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                go.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(80));
            });
            a.insert(key, "v".to_string()).await.unwrap();
            blocker.await.unwrap();
            assert_eq!(deleter.join().unwrap(), 1, "the DEL came after the SET");
            tokio::time::sleep(Duration::from_millis(50)).await;
            stale += usize::from(a.l1().get(&key).is_some());
        }
        assert_eq!(stale, 0, "inserts whose L1 copy outlived a later DEL");
    });
}

/// Session 21's review: in pub/sub mode a load that replaced a value this tier could not
/// decode wrote Redis without a notice, so a tier of another release, which could decode
/// the old value, kept it in L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_over_an_undecodable_value_tells_the_other_tiers_under_pubsub() {
    struct Tagged;
    impl larder::tier::Codec<String> for Tagged {
        fn encode(&self, value: &String) -> Result<Vec<u8>, larder::tier::CodecError> {
            Ok(format!("tagged:{value}").into_bytes())
        }
        fn decode(&self, bytes: &[u8]) -> Result<String, larder::tier::CodecError> {
            let text = std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.strip_prefix("tagged:"));
            text.map(str::to_string)
                .ok_or(larder::tier::CodecError("untagged".into()))
        }
    }
    let server = Server::start();
    let old = pubsub_tier(&server.url(), Invalidations::PubSub).await;
    let l1 = Cache::builder().max_entries(100).build().unwrap();
    let new = TieredCache::builder(l1, &server.url())
        .prefix(PREFIX)
        .invalidations(Invalidations::PubSub)
        .codec(Tagged)
        .build()
        .await
        .unwrap();
    old.insert(1, "old".to_string()).await.unwrap();
    assert_eq!(new.get_or_load(1, load("new")).await.unwrap(), "new");
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(format!("{PREFIX}1"))
        .query(&mut server.client())
        .unwrap();
    assert_eq!(stored, b"tagged:new");
    // The old tier's L1 must drop the value Redis replaced (this fails with "not within").
    wait_until(Duration::from_secs(2), || old.l1().get(&1).is_none()).await;
}
