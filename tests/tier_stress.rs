//! A randomised concurrent coherence checker for the Redis tier (single node, client
//! tracking and pub/sub), with and without faults (`CLIENT KILL`, restarts), from session
//! 23's review. The one fault it led to (pub/sub: a write cut off from its `PUBLISH`) has
//! its own test in `tier_faults.rs`.
//!
//! The checker: 2-3 tiers on one Redis and a plain client run random `get`, `get_many`,
//! `get_or_load`, `insert`, `invalidate`, plain `SET`/`DEL` on a small key space, with
//! versioned values; then every writer stops (all tasks joined), the invalidations are
//! given time to arrive (and, with faults, `untracked_l1_ttl` and the heartbeat's slack to
//! run out), and every tier's L1 is compared with Redis. An L1 entry that differs from
//! Redis's value (or that Redis no longer holds) is a fault; a miss is not.
//!
//! Knobs: `LARDER_STRESS_SEED` (first seed), `LARDER_STRESS_ROUNDS` (rounds per configuration).
#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::tier::{Invalidations, TieredCache};
use larder::Cache;

#[allow(dead_code)]
mod tier_common;
#[allow(dead_code)]
mod tier_server;
use tier_server::Server;

const PREFIX: &str = "stress:";

/// xorshift64*: small, seeded, good enough to pick operations.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
struct Config {
    how: Invalidations,
    tiers: usize,
    keys: u64,
    tasks: usize,
    /// How long the operations run each round.
    run: Duration,
    /// `CLIENT KILL` of random connections while operations run.
    kills: bool,
    /// Restarts of redis-server while operations run.
    restarts: bool,
    untracked_l1_ttl: Duration,
    /// Plain `SET`s with short expiries (1-30 ms) and the odd `FLUSHALL`.
    expiries_and_flushes: bool,
}

struct World {
    tiers: Vec<TieredCache<u64, String>>,
    /// The "database" the loaders read: the last version written per key.
    db: Arc<Vec<AtomicU64>>,
    next_version: Arc<AtomicU64>,
}

async fn build_tier(url: &str, cfg: &Config) -> TieredCache<u64, String> {
    let l1 = Cache::builder().max_entries(10_000).build().unwrap();
    TieredCache::builder(l1, url)
        .prefix(PREFIX)
        .l2_ttl(Duration::from_secs(600))
        .untracked_l1_ttl(cfg.untracked_l1_ttl)
        .connect_timeout(Duration::from_millis(100))
        .response_timeout(Duration::from_millis(100))
        .breaker(5, Duration::from_millis(100))
        .tracking_check(Duration::from_millis(50))
        .invalidations(cfg.how)
        .build()
        .await
        .unwrap()
}

fn value(key: u64, version: u64) -> String {
    format!("{key}.{version}")
}

/// The version a [`value`] was written at.
fn version(value: &str) -> u64 {
    value
        .rsplit('.')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a versioned value")
}

fn encode(v: &str) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

/// One task's random operations until `stop`.
async fn worker(
    world: Arc<World>,
    raw: redis::aio::ConnectionManager,
    cfg: Config,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut rng = Rng::new(seed);
    let mut raw = raw;
    let mut ops = 0;
    let raw_ops = cfg.how == Invalidations::Tracking;
    while !stop.load(Ordering::SeqCst) {
        ops += 1;
        let tier = &world.tiers[rng.below(world.tiers.len() as u64) as usize];
        let key = rng.below(cfg.keys);
        let op = rng.below(if raw_ops { 100 } else { 86 });
        match op {
            0..=24 => {
                let _ = tier.get(&key).await;
            }
            25..=39 => {
                let n = 1 + rng.below(6);
                let keys: Vec<u64> = (0..n).map(|_| rng.below(cfg.keys)).collect();
                let _ = tier.get_many(&keys).await;
            }
            40..=59 => {
                let db = world.db.clone();
                let delay = rng.below(4);
                let _ = tier
                    .get_or_load(key, async move {
                        // The source is read at the start of the load, then it "takes time".
                        let v = db[key as usize].load(Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        Ok::<_, std::io::Error>(value(key, v))
                    })
                    .await;
            }
            60..=73 => {
                let v = world.next_version.fetch_add(1, Ordering::SeqCst);
                world.db[key as usize].store(v, Ordering::SeqCst);
                let _ = tier.insert(key, value(key, v)).await;
            }
            74..=85 => {
                let v = world.next_version.fetch_add(1, Ordering::SeqCst);
                world.db[key as usize].store(v, Ordering::SeqCst);
                let _ = tier.invalidate(&key).await;
            }
            86..=94 => {
                let v = world.next_version.fetch_add(1, Ordering::SeqCst);
                world.db[key as usize].store(v, Ordering::SeqCst);
                let px = if cfg.expiries_and_flushes && rng.below(3) == 0 {
                    1 + rng.below(30)
                } else {
                    600_000
                };
                let _: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(format!("{PREFIX}{key}"))
                    .arg(encode(&value(key, v)))
                    .arg("PX")
                    .arg(px)
                    .query_async(&mut raw)
                    .await;
            }
            _ if cfg.expiries_and_flushes && rng.below(200) == 0 => {
                let _: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut raw).await;
            }
            _ => {
                let v = world.next_version.fetch_add(1, Ordering::SeqCst);
                world.db[key as usize].store(v, Ordering::SeqCst);
                let _: redis::RedisResult<()> = redis::cmd("DEL")
                    .arg(format!("{PREFIX}{key}"))
                    .query_async(&mut raw)
                    .await;
            }
        }
        if rng.below(8) == 0 {
            tokio::task::yield_now().await;
        }
    }
    ops
}

/// Kills random client connections (not this one) while the round runs.
async fn killer(url: String, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng::new(seed ^ 0xABCD);
    let mut kills = 0;
    let client = redis::Client::open(url).unwrap();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5 + rng.below(60))).await;
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            continue;
        };
        let Ok(me): redis::RedisResult<i64> =
            redis::cmd("CLIENT").arg("ID").query_async(&mut c).await
        else {
            continue;
        };
        let Ok(list): redis::RedisResult<String> =
            redis::cmd("CLIENT").arg("LIST").query_async(&mut c).await
        else {
            continue;
        };
        let ids: Vec<i64> = list
            .lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .filter_map(|id| id.parse().ok())
            .filter(|&id| id != me)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let id = ids[rng.below(ids.len() as u64) as usize];
        let _: redis::RedisResult<redis::Value> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut c)
            .await;
        kills += 1;
    }
    kills
}

/// An L1 entry that disagrees with Redis at quiescence (read through `Debug` in the
/// failure message).
#[derive(Debug)]
#[allow(dead_code)]
struct Stale {
    tier: usize,
    key: u64,
    l1: String,
    redis: Option<String>,
    tracked: bool,
}

fn redis_values(server_url: &str, keys: u64) -> Vec<Option<String>> {
    let mut c = redis::Client::open(server_url)
        .unwrap()
        .get_connection()
        .unwrap();
    (0..keys)
        .map(|k| {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("{PREFIX}{k}"))
                .query(&mut c)
                .unwrap();
            bytes.map(|b| rmp_serde::from_slice::<String>(&b).unwrap())
        })
        .collect()
}

fn check(world: &World, url: &str, keys: u64) -> Vec<Stale> {
    let redis = redis_values(url, keys);
    let mut stale = Vec::new();
    for (t, tier) in world.tiers.iter().enumerate() {
        for key in 0..keys {
            if let Some(l1) = tier.l1().get(&key) {
                let in_redis = redis[key as usize].as_ref();
                // A load's `SET NX` that lost to an older value there (the classic
                // cache-aside race, documented: a load that read the source before another
                // process's write and delete can leave Redis stale until its TTL) keeps
                // the newer value in its own L1. Older than Redis's is the fault.
                let newer = in_redis.is_some_and(|r| version(&l1) > version(r));
                if Some(&l1) != in_redis && !newer {
                    stale.push(Stale {
                        tier: t,
                        key,
                        l1,
                        redis: redis[key as usize].clone(),
                        tracked: tier.is_tracked(),
                    });
                }
            }
        }
    }
    stale
}

/// Runs `rounds` rounds of `cfg` from `seed`; returns the stale entries found, per round.
async fn run_checker(cfg: Config, seed: u64, rounds: u64) -> Vec<(u64, Vec<Stale>)> {
    let server = Arc::new(std::sync::Mutex::new(Server::start()));
    let url = server.lock().unwrap().url();
    let mut tiers = Vec::new();
    for _ in 0..cfg.tiers {
        tiers.push(build_tier(&url, &cfg).await);
    }
    let world = Arc::new(World {
        tiers,
        db: Arc::new((0..cfg.keys).map(|_| AtomicU64::new(0)).collect()),
        next_version: Arc::new(AtomicU64::new(1)),
    });
    let raw_client = redis::Client::open(url.as_str()).unwrap();
    let raw_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(100)))
        .set_response_timeout(Some(Duration::from_millis(100)))
        .set_number_of_retries(1);
    let raw = redis::aio::ConnectionManager::new_lazy_with_config(raw_client, raw_config).unwrap();
    let mut failures = Vec::new();
    let mut total_ops = 0;
    let started = Instant::now();
    for round in 0..rounds {
        let round_seed = seed.wrapping_add(round.wrapping_mul(7919));
        let mut rng = Rng::new(round_seed);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for t in 0..cfg.tasks {
            handles.push(tokio::spawn(worker(
                world.clone(),
                raw.clone(),
                cfg,
                round_seed ^ ((t as u64 + 1) * 0x1234_5678),
                stop.clone(),
            )));
        }
        let killer = cfg
            .kills
            .then(|| tokio::spawn(killer(url.clone(), round_seed, stop.clone())));
        // A restart at a random moment of the round.
        let restart = cfg.restarts && rng.below(2) == 0;
        if restart {
            let at = Duration::from_millis(rng.below(cfg.run.as_millis() as u64));
            let down = Duration::from_millis(rng.below(300));
            tokio::time::sleep(at).await;
            let server = server.clone();
            tokio::task::spawn_blocking(move || {
                server.lock().unwrap().kill();
                std::thread::sleep(down);
                server.lock().unwrap().restart();
            })
            .await
            .unwrap();
            tokio::time::sleep(cfg.run.saturating_sub(at)).await;
        } else {
            tokio::time::sleep(cfg.run).await;
        }
        stop.store(true, Ordering::SeqCst);
        for h in handles {
            total_ops += h.await.unwrap();
        }
        if let Some(k) = killer {
            k.await.unwrap();
        }
        // Quiesce: no operation is in flight. Invalidations arrive within a millisecond or
        // so; with faults, untracked fills live `untracked_l1_ttl`, and a tier may take its
        // heartbeat's slack to notice. Wait until every tier tracks again first.
        if cfg.kills || cfg.restarts {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !world.tiers.iter().all(|t| t.is_tracked()) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(cfg.untracked_l1_ttl + Duration::from_millis(400)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let stale = check(&world, &url, cfg.keys);
        if !stale.is_empty() {
            // Still there a while later?
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again = check(&world, &url, cfg.keys);
            println!("round {round} seed {round_seed}: stale {stale:?}; 500 ms later {again:?}");
            failures.push((round, stale));
        }
    }
    let stats: Vec<_> = world.tiers.iter().map(|t| t.stats()).collect();
    println!(
        "{cfg:?}: seed {seed}, {rounds} rounds, {total_ops} ops, {:?}, {} rounds with stale L1\n{stats:#?}",
        started.elapsed(),
        failures.len()
    );
    failures
}

fn tracking(kills: bool, restarts: bool) -> Config {
    Config {
        how: Invalidations::Tracking,
        tiers: 3,
        keys: 20,
        tasks: 8,
        run: Duration::from_millis(300),
        kills,
        restarts,
        untracked_l1_ttl: Duration::from_millis(300),
        expiries_and_flushes: false,
    }
}

fn assert_coherent(failures: Vec<(u64, Vec<Stale>)>) {
    assert!(
        failures.is_empty(),
        "stale L1 entries at quiescence in {} rounds: {:?}",
        failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_tracking() {
    let seed = env_u64("LARDER_STRESS_SEED", 1);
    let rounds = env_u64("LARDER_STRESS_ROUNDS", 10);
    assert_coherent(run_checker(tracking(false, false), seed, rounds).await);
}

/// Few keys (more contention), four tiers, expiries and flushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_tracking_contended_with_expiries_and_flushes() {
    let seed = env_u64("LARDER_STRESS_SEED", 1);
    let rounds = env_u64("LARDER_STRESS_ROUNDS", 10);
    let cfg = Config {
        tiers: 4,
        keys: 5,
        tasks: 12,
        expiries_and_flushes: true,
        ..tracking(false, false)
    };
    assert_coherent(run_checker(cfg, seed, rounds).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_pubsub() {
    let seed = env_u64("LARDER_STRESS_SEED", 1);
    let rounds = env_u64("LARDER_STRESS_ROUNDS", 10);
    let cfg = Config {
        how: Invalidations::PubSub,
        ..tracking(false, false)
    };
    assert_coherent(run_checker(cfg, seed, rounds).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_tracking_with_kills_and_restarts() {
    let seed = env_u64("LARDER_STRESS_SEED", 1);
    let rounds = env_u64("LARDER_STRESS_ROUNDS", 6);
    assert_coherent(run_checker(tracking(true, true), seed, rounds).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_pubsub_with_kills_and_restarts() {
    let seed = env_u64("LARDER_STRESS_SEED", 1);
    let rounds = env_u64("LARDER_STRESS_ROUNDS", 6);
    let cfg = Config {
        how: Invalidations::PubSub,
        ..tracking(true, true)
    };
    assert_coherent(run_checker(cfg, seed, rounds).await);
}
