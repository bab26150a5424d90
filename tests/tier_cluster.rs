//! The Redis tier against a real Redis Cluster: `redis-server` nodes started by each test on
//! free loopback ports (no persistence), joined with `redis-cli --cluster create`.
//!
//! Run: `cargo test --features redis --test tier_cluster` (needs `redis-server` and
//! `redis-cli`; `.ci/test` installs them).
#![cfg(feature = "redis")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder::tier::TieredCache;
use larder::Cache;

mod tier_common;
use tier_common::{get_many_under_writes, wait_until};

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `cmd`'s answer for a poll, or the default while the node cannot be reached: a
    /// poll retries until its deadline, where `wait` fails the test. (A live node once
    /// refused a connection for a moment after a failover, and the unwrap in `client`
    /// failed the test where the poll would have waited.) Each try gives up after a
    /// second, so a node that accepts a connection but does not answer cannot hold a poll
    /// past its deadline.
    fn poll<T: redis::FromRedisValue + Default>(&self, cmd: &redis::Cmd) -> T {
        let patience = Duration::from_secs(1);
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(patience))
            .and_then(|mut connection| {
                connection.set_read_timeout(Some(patience))?;
                cmd.query(&mut connection)
            })
            .unwrap_or_default()
    }

    fn is_master(&self) -> bool {
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut self.client()).unwrap();
        matches!(&role[0], redis::Value::BulkString(b) if b == b"master")
    }

    /// Sends the node's process `signal` (`-STOP` to freeze it, `-CONT` to resume it).
    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("a running node")
            .id()
            .to_string();
        Command::new("kill").args([signal, &pid]).status().unwrap();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    fn start(masters: usize, replicas: usize) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "larder-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<Node> = (0..masters * (1 + replicas))
            .map(|_| {
                let port = free_port();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                    // Replicas sync at once, and may take over whatever their data's age.
                    .args(["--repl-diskless-sync-delay", "0"])
                    .args(["--cluster-replica-validity-factor", "0"])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server on the PATH");
                Node {
                    port,
                    child: Some(child),
                }
            })
            .collect();
        for node in &nodes {
            wait(Duration::from_secs(10), || {
                redis::Client::open(node.url())
                    .and_then(|c| c.get_connection())
                    .is_ok()
            });
        }
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli on the PATH");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes, dir };
        cluster.wait_healthy();
        // Replicas hold their master's data before any test kills a master.
        for node in &cluster.nodes {
            wait(Duration::from_secs(20), || {
                let info: String = node.poll(redis::cmd("INFO").arg("replication"));
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
        cluster
    }

    /// Waits until every live node reports the cluster healthy.
    fn wait_healthy(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            wait(Duration::from_secs(20), || {
                let info: String = node.poll(redis::cmd("CLUSTER").arg("INFO"));
                info.contains("cluster_state:ok")
            });
        }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some() && self.nodes[i].is_master())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait(limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// The tests run one at a time: each starts six Redis nodes, and on a 2-core machine six
/// clusters at once left a failover unfinished after 20 s (nodes too starved to hold the
/// election in time).
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn tier(cluster: &Cluster) -> TieredCache<u64, String> {
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let l1 = Cache::builder().max_entries(10_000).build().unwrap();
    TieredCache::cluster_builder(l1, &urls)
        .prefix("c:")
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(200))
        .breaker(3, Duration::from_millis(200))
        .build()
        .await
        .unwrap()
}

async fn truth(key: u64) -> Result<String, std::io::Error> {
    Ok(format!("v{key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_master_and_tiers_stay_coherent() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 1);
    let (a, b) = (tier(&cluster).await, tier(&cluster).await);
    assert!(a.is_tracked() && b.is_tracked());
    for key in 0..300u64 {
        assert_eq!(
            a.get_or_load(key, truth(key)).await.unwrap(),
            format!("v{key}")
        );
    }
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        let keys: u64 = redis::cmd("DBSIZE")
            .query(&mut cluster.nodes[m].client())
            .unwrap();
        assert!(keys > 50, "master {m} holds {keys} of 300 keys");
    }
    // B finds every key in Redis (the cluster client routes each to its slot).
    for key in 0..300u64 {
        assert_eq!(b.get(&key).await, Some(format!("v{key}")));
    }
    assert_eq!((b.stats().l2_hits, b.stats().loads), (300, 0));

    // A write through A drops B's L1 copy, whichever master holds the key.
    for key in 0..30u64 {
        assert!(b.l1().contains_key(&key));
        a.insert(key, format!("new{key}")).await.unwrap();
        let start = Instant::now();
        while b.l1().contains_key(&key) {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "key {key} not dropped"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        assert_eq!(b.get(&key).await, Some(format!("new{key}")));
    }
}

/// Kills a master during a read loop: every answer stays right, no call blocks past the
/// timeouts, and with replicas the tier uses Redis again once a replica takes over.
async fn lose_a_master(replicas: usize, check_invalidations: bool) {
    let mut cluster = Cluster::start(3, replicas);
    let reader = tier(&cluster).await;
    for key in 0..100u64 {
        reader.get_or_load(key, truth(key)).await.unwrap();
    }
    let victim = cluster.masters()[0];
    cluster.nodes[victim].kill();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(4) {
        for key in 0..100u64 {
            let call = Instant::now();
            assert_eq!(
                reader.get_or_load(key, truth(key)).await.unwrap(),
                format!("v{key}")
            );
            slowest = slowest.max(call.elapsed());
        }
    }
    println!(
        "replicas {replicas}: slowest call {slowest:?}, {:?}",
        reader.stats()
    );
    // Two Redis calls per miss, each cut at connect + response (400 ms), plus slack.
    assert!(slowest < Duration::from_millis(1200), "{slowest:?}");
    if replicas > 0 {
        cluster.wait_healthy();
        // Redis answers for every slot again: a fresh key of each slot range is stored.
        let hits_before = reader.stats().l2_hits;
        let other = tier(&cluster).await;
        for key in 1000..1100u64 {
            other.get_or_load(key, truth(key)).await.unwrap();
        }
        for key in 1000..1100u64 {
            assert_eq!(reader.get(&key).await, Some(format!("v{key}")));
        }
        assert!(
            reader.stats().l2_hits >= hits_before + 100,
            "{:?}",
            reader.stats()
        );
        // Invalidations flow from every primary, the promoted replica included.
        for key in (1000..1030u64).filter(|_| check_invalidations) {
            assert!(reader.l1().contains_key(&key));
            other.insert(key, format!("new{key}")).await.unwrap();
            let start = Instant::now();
            while reader.l1().contains_key(&key) {
                assert!(
                    start.elapsed() < Duration::from_secs(1),
                    "key {key} not dropped"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_master_with_replicas_fails_over() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    lose_a_master(1, false).await;
}

/// After a failover the cluster client has replaced connections (to every node when it falls
/// back to its seed nodes, and to the replicas when a later slot refresh brings them back);
/// the new ones must track too, or changes on those nodes never reach the reader's L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_flow_after_a_failover() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    lose_a_master(1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_master_without_replicas_degrades_to_the_loader() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    lose_a_master(0, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_reads_keys_of_every_slot_and_master() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0);
    let (a, b) = (tier(&cluster).await, tier(&cluster).await);
    for key in 0..300u64 {
        a.insert(key, format!("v{key}")).await.unwrap();
    }
    let masters = cluster.masters();
    for &m in &masters {
        let keys: u64 = redis::cmd("DBSIZE")
            .query(&mut cluster.nodes[m].client())
            .unwrap();
        assert!(keys > 50, "master {m} holds {keys} of 300 keys");
    }
    // A bare MGET of these keys is refused (CROSSSLOT); get_many splits them by slot.
    let mget: redis::RedisResult<Vec<Option<Vec<u8>>>> = redis::cmd("MGET")
        .arg("c:1")
        .arg("c:2")
        .query(&mut cluster.nodes[masters[0]].client());
    assert!(mget.is_err());
    b.get(&5).await.unwrap();
    let keys: Vec<u64> = (0..320).collect();
    let values = b.get_many(&keys).await;
    for (key, value) in keys.iter().zip(&values) {
        let expected = (*key < 300).then(|| format!("v{key}"));
        assert_eq!(value, &expected, "key {key}");
    }
    let stats = b.stats();
    assert_eq!((stats.l1_hits, stats.l2_hits), (1, 300), "{stats:?}");
    assert_eq!(stats.misses, 20);
    assert!((0..300u64).all(|key| b.l1().contains_key(&key)));
    // Filled entries are tracked on every master.
    for key in [0u64, 100, 200] {
        a.insert(key, "new".to_string()).await.unwrap();
    }
    wait_until(Duration::from_secs(1), || {
        [0u64, 100, 200].iter().all(|key| !b.l1().contains_key(key))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_leaves_no_stale_entry_when_writes_race_it() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0);
    let reader = tier(&cluster).await;
    let mut plain = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_connection()
        .unwrap();
    get_many_under_writes(reader, |key, bytes| {
        let _: () = redis::cmd("SET")
            .arg(format!("c:{key}"))
            .arg(bytes)
            .query(&mut plain)
            .unwrap();
    })
    .await;
}

/// A tier over `cluster` holding keys 0 to 99 in L1, tracked, and its L1 resets so far.
async fn reader_of_a_hundred_keys(cluster: &Cluster) -> (TieredCache<u64, String>, u64) {
    let reader = tier(cluster).await;
    for key in 0..100u64 {
        reader.get_or_load(key, truth(key)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resets = reader.stats().l1_resets;
    (reader, resets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_stalled_for_a_moment_does_not_empty_l1() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0);
    let (reader, resets) = reader_of_a_hundred_keys(&cluster).await;
    // Stalled past the tracking check's timeout, not past the cluster's node timeout: no
    // connection is lost or replaced, so every L1 entry is still covered by tracking.
    let master = cluster.masters()[0];
    cluster.nodes[master].signal("-STOP");
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.nodes[master].signal("-CONT");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let held = (0..100u64).filter(|k| reader.l1().contains_key(k)).count();
    assert_eq!(held, 100, "{:?}", reader.stats());
    assert_eq!(reader.stats().l1_resets, resets);
    assert!(reader.is_tracked());
}

/// Session 21's review: a node that answers the tracking check with an error (`BUSY`, a
/// script running past `busy-reply-threshold`) was taken for a node whose connection does
/// not track, and every L1 was emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_busy_with_a_script_does_not_empty_l1() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0);
    let (reader, resets) = reader_of_a_hundred_keys(&cluster).await;
    let master = cluster.masters()[0];
    let mut busy = cluster.nodes[master].client();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("busy-reply-threshold")
        .arg("50")
        .query(&mut busy)
        .unwrap();
    // A script that loops for about half a second: the node answers others `BUSY` meanwhile.
    let script = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let _: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
            .arg("for i = 1, 150000000 do end return nil")
            .arg(0)
            .query(&mut busy);
        started.elapsed()
    });
    let took = tokio::task::spawn_blocking(move || script.join().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = (0..100u64).filter(|k| reader.l1().contains_key(k)).count();
    assert_eq!(
        reader.stats().l1_resets,
        resets,
        "L1 emptied by a node busy for {took:?}"
    );
    assert_eq!(held, 100, "{:?}", reader.stats());
}

/// A master that stops answering without a socket error (stopped here; a partition does the
/// same) for longer than `untracked_l1_ttl`: its invalidations may be held up, so once the
/// heartbeat has gone unanswered that long the tier drops tracking and empties L1 (before
/// session 23 nothing reported it, and L1 kept serving for the tracked TTL). Tracking comes
/// back once the master answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_silent_past_the_untracked_ttl_drops_tracking() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0);
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let l1 = Cache::builder().max_entries(10_000).build().unwrap();
    let reader = TieredCache::cluster_builder(l1, &urls)
        .prefix("c:")
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(200))
        .breaker(3, Duration::from_millis(200))
        .untracked_l1_ttl(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    for key in 0..100u64 {
        reader.get_or_load(key, truth(key)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reader.is_tracked());
    let master = cluster.masters()[0];
    // Under the cluster's node timeout (1 s): the other nodes do not mark it failed.
    cluster.nodes[master].signal("-STOP");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let stats = reader.stats();
    let tracked = reader.is_tracked();
    let held = (0..100u64).filter(|k| reader.l1().contains_key(k)).count();
    cluster.nodes[master].signal("-CONT");
    assert!(
        stats.silences >= 1 && !tracked,
        "{stats:?}, tracked {tracked}"
    );
    assert!(held < 100, "L1 kept all its entries: {stats:?}");
    wait_until(Duration::from_secs(10), || reader.is_tracked()).await;
}

/// Session 23's review: a cluster whose ACL grants what the tier needed before session 23
/// (least-privilege setups list the `CLIENT` subcommands they allow) refuses the `CLIENT
/// GETREDIR` that now ends every write's pipeline. That failed every `insert` although
/// Redis took its SET, and the failures opened the breaker. Now the refusal only means the
/// write's connection is not known to track: L1 keeps no copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_getredir_does_not_fail_writes_redis_took() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3, 0);
    for node in &cluster.nodes {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("-client|getredir")
            .query(&mut node.client())
            .unwrap();
    }
    let tier = tier(&cluster).await;
    assert!(tier.is_tracked(), "{:?}", tier.stats());
    for key in 0..10u64 {
        let inserted = tier.insert(key, format!("v{key}")).await;
        assert!(inserted.is_ok(), "{inserted:?}: {:?}", tier.stats());
        assert!(!tier.l1().contains_key(&key));
    }
    assert_eq!(tier.stats().l2_errors, 0, "{:?}", tier.stats());
    for key in 0..10u64 {
        assert_eq!(tier.get(&key).await, Some(format!("v{key}")));
    }
}
