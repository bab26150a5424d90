//! Helpers shared by the Redis tier's tests (`tier.rs`, `tier_cluster.rs`).

use std::time::{Duration, Instant};

use larder::tier::TieredCache;

/// Polls `done` every 100 µs for up to `limit`, then fails the test; returns how long it took.
pub(crate) async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    start.elapsed()
}

/// Another client rewrites keys while a tier reads them with `get_many`, round after round:
/// once a round's invalidations are in, no L1 entry may hold an old version (a fill that
/// raced an invalidation must have been undone).
pub(crate) async fn get_many_under_writes(
    reader: TieredCache<u64, String>,
    mut writer: impl FnMut(u64, &[u8]),
) {
    const KEYS: u64 = 40;
    const ROUNDS: u64 = 150;
    let keys: Vec<u64> = (0..KEYS).collect();
    let mut stale = 0;
    for version in 1..=ROUNDS {
        let seen = reader.stats().invalidations;
        let reading = {
            let (reader, keys) = (reader.clone(), keys.clone());
            tokio::spawn(async move { reader.get_many(&keys).await })
        };
        for key in 0..KEYS {
            writer(
                key,
                &rmp_serde::to_vec_named(&format!("{key}.{version}")).unwrap(),
            );
        }
        reading.await.unwrap();
        wait_until(Duration::from_secs(1), || {
            reader.stats().invalidations >= seen + KEYS
        })
        .await;
        for key in 0..KEYS {
            if let Some(value) = reader.l1().get(&key) {
                if value != format!("{key}.{version}") {
                    stale += 1;
                }
            }
        }
    }
    println!(
        "{ROUNDS} rounds, {stale} stale L1 entries, {:?}",
        reader.stats()
    );
    assert_eq!(stale, 0, "L1 kept values older than the last write");
    assert!(reader.stats().l2_hits > 0, "get_many never read Redis");
}
