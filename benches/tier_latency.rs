//! Latency of the Redis tier's three read paths, p50 and p99, on a real `redis-server`
//! started on a free loopback port (no persistence):
//!
//! * L1 hit: the key is in larder.
//! * L2 hit: the key is only in Redis (dropped from L1 before each read): one round trip.
//! * full miss: the key is nowhere; the loader answers at once, so the figure is the tier's
//!   own cost of a miss: a `GET`+`PTTL` round trip, the loader, a `SET NX PX` round trip and
//!   the L1 fill.
//!
//! Each read is timed on its own (`Instant` around one call), so the figures include the
//! timer's cost (~20-30 ns), which matters only for the L1 row.
//!
//! Run: `cargo bench --features redis --bench tier_latency` (needs `redis-server` on the
//! PATH). Prints markdown.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder::tier::TieredCache;
use larder::Cache;

const L1_SAMPLES: u64 = 200_000;
const L2_SAMPLES: u64 = 20_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn row(name: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "| {name} | {} | {:.3} | {:.3} |",
        times.len(),
        percentile(&times, 0.50).as_nanos() as f64 / 1000.0,
        percentile(&times, 0.99).as_nanos() as f64 / 1000.0,
    );
}

fn main() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    let url = format!("redis://127.0.0.1:{port}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let l1 = Cache::builder().max_entries(100_000).build().unwrap();
        let tier: TieredCache<u64, String> = TieredCache::builder(l1, &url)
            .prefix("bench:")
            .build()
            .await
            .unwrap();
        let load = |key: u64| async move { Ok::<_, std::io::Error>(format!("value {key}")) };
        println!("| path | reads | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|");

        for key in 0..1000 {
            tier.get_or_load(key, load(key)).await.unwrap();
        }
        let mut times = Vec::with_capacity(L1_SAMPLES as usize);
        for i in 0..L1_SAMPLES {
            let key = i % 1000;
            let start = Instant::now();
            let value = tier.get_or_load(key, load(key)).await.unwrap();
            times.push(start.elapsed());
            std::hint::black_box(value);
        }
        row("L1 hit", times);

        let mut times = Vec::with_capacity(L2_SAMPLES as usize);
        for i in 0..L2_SAMPLES {
            let key = i % 1000;
            tier.l1().remove(&key);
            let start = Instant::now();
            let value = tier.get_or_load(key, load(key)).await.unwrap();
            times.push(start.elapsed());
            std::hint::black_box(value);
        }
        row("L2 hit (Redis)", times);

        let mut times = Vec::with_capacity(L2_SAMPLES as usize);
        for i in 0..L2_SAMPLES {
            let key = 1_000_000 + i;
            let start = Instant::now();
            let value = tier.get_or_load(key, load(key)).await.unwrap();
            times.push(start.elapsed());
            std::hint::black_box(value);
        }
        row("full miss (loader answers at once)", times);
        let stats = tier.stats();
        println!(
            "\nTier stats: {} L1 hits, {} L2 hits, {} misses, {} L2 errors.",
            stats.l1_hits, stats.l2_hits, stats.misses, stats.l2_errors
        );
    });
    let _ = server.kill();
    let _ = server.wait();
}
