//! larder's throughput as ratios to quick_cache's and to the no-policy baseline's, measured
//! in alternating rounds so that this machine's drift cancels out.
//!
//! On these shared 2-core machines a cache's speed moves by 20–50% from one minute to the
//! next, and criterion (`benches/throughput.rs`) measures each cache for seconds before the
//! next: two caches' figures in one run can come from different weather. Here every round
//! runs the same operations on each cache in turn, in an order shuffled anew each round (a
//! fixed rotation would always run a cache right after the same other one, whose data it
//! then finds evicted or not), and the figure of merit is each round's ratio of the caches'
//! times, whose median over the rounds is printed with its interquartile range. The
//! workloads, caches and key stream are `throughput`'s (see `common`); moka and stretto, at
//! a tenth of these speeds or less, are left to it.
//!
//! Run: `cargo bench --bench interleaved` (under a minute here; `ROUNDS=N` and `BATCH=N` set
//! the rounds and each cache's operations per round, 400 and 50,000 by default;
//! `CAPACITY=N` the caches' capacity, 100,000 by default).

mod common;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use common::{
    make_larder, make_quick_cache, op_mix, timed_run, warm, Baseline, STREAM_LEN, THREADS,
    WORKLOADS,
};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The `q`-quantile of `values` (sorted in place), by nearest rank.
fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // Under `cargo test` (no `--bench` argument) one short round checks that it runs.
    let bench_mode = std::env::args().any(|arg| arg == "--bench");
    let (rounds, batch) = if bench_mode {
        (setting("ROUNDS", 400), setting("BATCH", 50_000) as u64)
    } else {
        (1, 1_000)
    };
    let keys = common::key_stream();
    let larder = make_larder();
    let quick = make_quick_cache();
    let baseline = Baseline::new();
    warm(&larder, &keys);
    warm(&quick, &keys);
    warm(&baseline, &keys);
    // The caches in the table's order (larder first: the ratios' numerator), each run
    // through its own monomorphic loop.
    const SUBJECTS: usize = 3;
    let run = |which: usize, is_insert: &[bool], cursor: usize, threads: usize| match which {
        0 => timed_run(&larder, &keys, is_insert, cursor, threads, batch),
        1 => timed_run(&quick, &keys, is_insert, cursor, threads, batch),
        _ => timed_run(&baseline, &keys, is_insert, cursor, threads, batch),
    };
    println!(
        "{rounds} rounds of {batch} operations per cache, caches of {} entries in random order\n",
        common::capacity()
    );
    println!("| workload | threads | larder Mops/s | quick_cache Mops/s | baseline Mops/s | larder / quick_cache | larder / baseline |");
    println!("|---|---:|---:|---:|---:|---|---|");
    let mut cursor = 0usize;
    let mut rng = StdRng::seed_from_u64(0x0dd_0de5);
    for (seed, (workload, insert_ratio)) in WORKLOADS.into_iter().enumerate() {
        let is_insert = op_mix(insert_ratio, seed as u64);
        for threads in THREADS {
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); SUBJECTS];
            for _ in 0..rounds {
                let mut order: Vec<usize> = (0..SUBJECTS).collect();
                order.shuffle(&mut rng);
                for which in order {
                    times[which].push(run(which, &is_insert, cursor, threads));
                }
                // Every cache ran the same operations this round; the next round moves on.
                cursor = cursor.wrapping_add(batch as usize) & (STREAM_LEN - 1);
            }
            let mops = |i: usize| {
                let mut rates: Vec<f64> = times[i]
                    .iter()
                    .map(|t| batch as f64 / t.as_secs_f64() / 1e6)
                    .collect();
                quantile(&mut rates, 0.5)
            };
            let ratio = |other: usize| {
                // A ratio of speeds: the other cache's time over larder's.
                let mut ratios: Vec<f64> = times[0]
                    .iter()
                    .zip(&times[other])
                    .map(|(ours, theirs)| theirs.as_secs_f64() / ours.as_secs_f64())
                    .collect();
                let (low, mid, high) = (
                    quantile(&mut ratios, 0.25),
                    quantile(&mut ratios, 0.5),
                    quantile(&mut ratios, 0.75),
                );
                format!("**{mid:.2}x** ({low:.2}–{high:.2})")
            };
            println!(
                "| {workload} | {threads} | {:.2} | {:.2} | {:.2} | {} | {} |",
                mops(0),
                mops(1),
                mops(2),
                ratio(1),
                ratio(2)
            );
        }
    }
}
