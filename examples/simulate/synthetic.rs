//! Workloads generated on the spot, so the simulator runs on a fresh machine with no traces.

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};

/// A named, generated trace.
#[derive(Debug)]
pub struct Workload {
    /// Name in tables and plot file names.
    pub name: String,
    /// The requests, in order.
    pub keys: Vec<u64>,
}

/// Multiplies ranks to scatter them: Knuth's multiplicative-hash prime, larger than any
/// key count here and so coprime to it.
const SCATTER: u64 = 2_654_435_761;

/// Rank `rank` (1 to `keys`) of a Zipf distribution over `keys` keys as a key in
/// `0..keys`, scattered so hot keys are not also the smallest numbers. Multiplying by a
/// number coprime to `keys` modulo `keys` is a bijection: every key has a rank, so a
/// workload over 100,000 keys has 100,000 to draw from.
fn scatter(rank: u64, keys: u64) -> u64 {
    debug_assert!(keys < SCATTER && (1..=keys).contains(&rank));
    // In u128: rank times the multiplier overflows u64 past 2^32 keys' ranks.
    (u128::from(rank) * u128::from(SCATTER) % u128::from(keys)) as u64
}

fn zipf(rng: &mut StdRng, keys: u64, exponent: f64, count: usize, offset: u64) -> Vec<u64> {
    let zipf = Zipf::new(keys as f64, exponent).expect("valid Zipf parameters");
    (0..count)
        .map(|_| offset + scatter(zipf.sample(rng) as u64, keys))
        .collect()
}

/// The embedded workloads, each deterministic (seeded).
pub fn workloads() -> Vec<Workload> {
    let mut rng = StdRng::seed_from_u64(0x1a2d3e4);
    let mut out = Vec::new();
    for exponent in [0.8, 1.0, 1.2] {
        out.push(Workload {
            name: format!("synthetic/zipf-{exponent:.1}"),
            keys: zipf(&mut rng, 100_000, exponent, 1_000_000, 0),
        });
    }
    // Zipf traffic interrupted by scans of keys never seen again.
    let mut mixed = Vec::with_capacity(1_000_000);
    let mut fresh = 1u64 << 40;
    while mixed.len() < 1_000_000 {
        mixed.extend(zipf(&mut rng, 100_000, 1.0, 20_000, 0));
        mixed.extend(fresh..fresh + 5_000);
        fresh += 5_000;
    }
    out.push(Workload {
        name: "synthetic/zipf-with-scans".into(),
        keys: mixed,
    });
    // A loop larger than most cache sizes: LRU gets nothing, the optimum keeps a fixed part.
    out.push(Workload {
        name: "synthetic/loop".into(),
        keys: (0..25).flat_map(|_| 0..20_000u64).collect(),
    });
    // A hot set that moves: four phases over disjoint key ranges.
    let shifting = (0..4u64)
        .flat_map(|phase| zipf(&mut rng, 50_000, 1.0, 250_000, phase * 1_000_000))
        .collect();
    out.push(Workload {
        name: "synthetic/shifting-hot-set".into(),
        keys: shifting,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_has_one_rank() {
        for keys in [1, 2, 50_000, 100_000] {
            let scattered: HashSet<u64> = (1..=keys).map(|rank| scatter(rank, keys)).collect();
            assert_eq!(scattered.len() as u64, keys, "{keys} keys");
            assert!(scattered.iter().all(|&key| key < keys), "{keys} keys");
        }
        // Neighbouring ranks land far apart.
        assert!(scatter(1, 100_000).abs_diff(scatter(2, 100_000)) > 1_000);
    }
}
