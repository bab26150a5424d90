#![cfg(all(feature = "redis", feature = "serde"))]
//! Redis Cluster while a slot migrates (a reshard), from session 21's review:
//!
//! - The connection the cluster client opens for an `ASK` redirect, to a node that owns no
//!   slot yet, never tracks, and the tracking check (which asks the nodes of the slot map)
//!   never looks at it: L1 kept a value another client changed on that node. Fixed in
//!   session 23: values written or read through a redirect are not trusted to tracking.
//! - A key in a migrating slot could not be read: `GET` and `PTTL` went as one pipeline,
//!   and `ASKING` covers only its first command, so the node answered the second with
//!   `MOVED`. Fixed: such a read falls back to the two commands apart.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder::tier::TieredCache;
use larder::Cache;

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

struct Node(u16, Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.1.kill();
        let _ = self.1.wait();
    }
}
impl Node {
    fn start(dir: &std::path::Path) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let node = Node(port, child);
        wait(|| node.try_conn().is_some());
        node
    }
    fn try_conn(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.0))
            .ok()?
            .get_connection()
            .ok()
    }
    fn conn(&self) -> redis::Connection {
        self.try_conn().unwrap()
    }
    fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.conn()).unwrap()
    }
    fn id(&self) -> String {
        self.cmd(&["CLUSTER", "MYID"])
    }
}

fn wait(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn msgpack(s: &str) -> Vec<u8> {
    rmp_serde::to_vec_named(&s.to_string()).unwrap()
}

struct Setup {
    a: Node,
    b: Node,
    dir: std::path::PathBuf,
    tier: TieredCache<u64, String>,
}

/// A owns every slot; B is a master with none yet (just added, about to receive slots). The
/// slot of `c:7` is set migrating from A to B and `c:7` (holding v1) is moved to B, as
/// `redis-cli --cluster reshard` does.
async fn setup() -> Setup {
    let dir = std::env::temp_dir().join(format!(
        "larder-review-ask-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let a = Node::start(&dir);
    let b = Node::start(&dir);
    let _: () = a.cmd(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
    let _: () = a.cmd(&["CLUSTER", "MEET", "127.0.0.1", &b.0.to_string()]);
    // Both nodes must see the cluster up: A answered `CLUSTERDOWN` to the setup's SET while
    // only B was checked, with five such setups running at once on a loaded machine.
    wait(|| {
        let ok = |node: &Node| {
            let info: String = node.cmd(&["CLUSTER", "INFO"]);
            info.contains("cluster_state:ok")
        };
        let nodes: String = a.cmd(&["CLUSTER", "NODES"]);
        ok(&a) && ok(&b) && nodes.lines().count() == 2
    });
    let l1 = Cache::builder().max_entries(1000).build().unwrap();
    let url = format!("redis://127.0.0.1:{}", a.0);
    let tier: TieredCache<u64, String> = TieredCache::cluster_builder(l1, &[&url])
        .prefix("c:")
        .build()
        .await
        .unwrap();
    assert!(tier.is_tracked());
    let slot: i64 = a.cmd(&["CLUSTER", "KEYSLOT", "c:7"]);
    let slot = slot.to_string();
    let _: () = redis::cmd("SET")
        .arg("c:7")
        .arg(msgpack("v1"))
        .query(&mut a.conn())
        .unwrap();
    let _: () = b.cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &a.id()]);
    let _: () = a.cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &b.id()]);
    let _: redis::Value = a.cmd(&[
        "MIGRATE",
        "127.0.0.1",
        &b.0.to_string(),
        "",
        "0",
        "5000",
        "KEYS",
        "c:7",
    ]);
    // A reports the SET and the MIGRATE's delete to the tier; one arriving during a test's
    // insert would rightly keep it out of L1.
    let start = Instant::now();
    while tier.stats().invalidations < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            tier.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Setup { a, b, dir, tier }
}

/// Another client writes `c:7` where it now lives (B, through ASKING), and checks it took.
fn write_on_b(b: &Node, value: &str) {
    let mut bc = b.conn();
    let (): () = redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("SET")
        .arg("c:7")
        .arg(msgpack(value))
        .ignore()
        .query(&mut bc)
        .unwrap();
    let (now,): (Vec<u8>,) = redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("GET")
        .arg("c:7")
        .query(&mut bc)
        .unwrap();
    assert_eq!(now, msgpack(value));
}

/// Session 21's review: the tier wrote v1 through an `ASK` redirect (the cluster client
/// opened a connection to B, never told to track, and the SET landed there); L1 kept v1
/// with the tracked TTL, and still served it two seconds after another client changed the
/// key on B. Fixed in session 23: a write that lands on a connection that does not track
/// (`CLIENT GETREDIR` answers -1 in the write's pipeline) leaves no L1 copy, and a value
/// read through a redirect fills L1 for `untracked_l1_ttl` (1 s) only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_reached_through_an_ask_redirect_stay_in_l1_for_the_untracked_ttl_only() {
    let Setup { a, b, dir, tier } = setup().await;
    tier.insert(7, "v1".to_string()).await.unwrap();
    assert!(
        !tier.l1().contains_key(&7),
        "written through a connection that does not track"
    );
    assert_eq!(tier.get(&7).await.as_deref(), Some("v1"));
    assert!(tier.l1().contains_key(&7), "{:?}", tier.stats());
    // Another process changes the key; no invalidation can come from B.
    write_on_b(&b, "v2");
    let changed = Instant::now();
    let mut seen = tier.get(&7).await;
    while seen.as_deref() != Some("v2") {
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "L1 still serves {seen:?} 3 s after Redis changed the key: {:?}",
            tier.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen = tier.get(&7).await;
    }
    let took = changed.elapsed();
    println!("v2 served {took:?} after the change, {:?}", tier.stats());
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(tier.is_tracked(), "{:?}", tier.stats());
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same bound for `get_many`'s fills and for a loaded value whose read and `SET NX`
/// went through the redirect (a key new to the moving slot: A answers `ASK` for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_and_loads_through_an_ask_redirect_keep_the_untracked_ttl() {
    use redis::cluster_routing::Slot;
    let Setup { a, b, dir, tier } = setup().await;
    let slot = Slot::for_key("c:7");
    let new_key = (8..)
        .find(|k| Slot::for_key(format!("c:{k}")) == slot)
        .unwrap();
    assert_eq!(tier.get_many(&[7]).await, [Some("v1".to_string())]);
    let loaded = tier.get_or_load(new_key, async { Ok::<_, std::io::Error>("w1".to_string()) });
    assert_eq!(loaded.await.unwrap(), "w1");
    assert!(tier.l1().contains_key(&7) && tier.l1().contains_key(&new_key));
    write_on_b(&b, "v2");
    let mut bc = b.conn();
    let (): () = redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("SET")
        .arg(format!("c:{new_key}"))
        .arg(msgpack("w2"))
        .ignore()
        .query(&mut bc)
        .unwrap();
    let changed = Instant::now();
    loop {
        let seen = tier.get_many(&[7, new_key]).await;
        if seen == [Some("v2".to_string()), Some("w2".to_string())] {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_millis(1500),
            "L1 still serves {seen:?}: {:?}",
            tier.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fixed in session 21: a read whose pipeline meets the redirect reads the value and its
/// TTL apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_a_migrating_slot_can_be_read() {
    let Setup { a, b, dir, tier } = setup().await;
    let got = tier.get(&7).await;
    println!("{:?}", tier.stats());
    assert_eq!(
        got.as_deref(),
        Some("v1"),
        "Redis holds v1 (on B, the ASK target)"
    );
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same through `get_many`, whose keys of one slot go as one pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_reads_a_key_in_a_migrating_slot() {
    let Setup { a, b, dir, tier } = setup().await;
    let got = tier.get_many(&[7]).await;
    assert_eq!(got, [Some("v1".to_string())], "{:?}", tier.stats());
    assert_eq!(tier.stats().l2_errors, 0);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Once the slot has moved for good, the client learns B from its slot map: writes on B
/// reach L1, and no check empties it again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_reshard_completes_writes_on_the_new_owner_still_invalidate_l1() {
    let Setup { a, b, dir, tier } = setup().await;
    tier.insert(7, "v1".to_string()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slot: i64 = a.cmd(&["CLUSTER", "KEYSLOT", "c:7"]);
    let slot = slot.to_string();
    for node in [&a, &b] {
        let _: () = node.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &b.id()]);
    }
    // A now answers MOVED for the slot, and the client refreshes its slot map. The tier
    // finds the connection to B there, and has it track (emptying L1 once, if it did not).
    tier.l1().remove(&7);
    assert_eq!(tier.get(&7).await.as_deref(), Some("v1"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tier.get(&7).await.as_deref(), Some("v1"));
    let resets = tier.stats().l1_resets;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tier.l1().contains_key(&7), "{:?}", tier.stats());
    let _: () = redis::cmd("SET")
        .arg("c:7")
        .arg(msgpack("v2"))
        .query(&mut b.conn())
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        tier.get(&7).await.as_deref(),
        Some("v2"),
        "{:?}",
        tier.stats()
    );
    assert!(tier.is_tracked());
    assert_eq!(tier.stats().l1_resets, resets, "{:?}", tier.stats());
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
