//! Hit-ratio simulator: replays cache traces against the real `larder::Cache`, its peers
//! (moka, quick_cache, stretto) and reference policies (LRU, CLOCK, FIFO, Random, LFU, ARC,
//! LIRS, S3-FIFO, W-TinyLFU as Caffeine runs it, Belady's OPT), side by side in one run.
//!
//! Usage: see `usage.txt` beside this file (also printed by `--help`).
//!
//! Prints a markdown table (trace, size, policy, hit ratio %). Every hit of a real cache is
//! checked to return the value stored for its key, and any policy that beats OPT at the same
//! size is flagged: both mean a broken cache. OPT runs for that check even when
//! `--policies` leaves it out (its row is then not printed). With `--threads` above 1 a
//! real cache sees the trace reordered, which the serial OPT does not bound: one above it
//! is flagged as such, and does not fail the run.

pub mod lirs;
pub mod peers;
pub mod plot;
pub mod policies;
pub mod s3fifo;
pub mod synthetic;
pub mod trace;
pub mod weights;
pub mod wtinylfu;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use weights::Weights;

/// Fractions of a trace's unique keys used as default cache sizes.
const DEFAULT_FRACTIONS: [f64; 7] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5];

/// Reference policies, in table order.
const REFERENCE: [&str; 11] = [
    "lru",
    "clock",
    "fifo",
    "random",
    "lfu",
    "arc",
    "lirs",
    "s3fifo",
    "wtinylfu",
    "wtinylfu_fixed",
    "opt",
];

/// The reference policies byte mode runs: LRU over bytes. The others count entries, and
/// Belady's OPT is no bound once sizes vary (keeping small entries hits more often).
const BYTE_MODE_REFERENCE: [&str; 1] = ["lru"];

/// Real caches, in table order.
const REAL: [&str; 5] = peers::NAMES;

/// Accesses between progress-bar updates.
const PROGRESS_STEP: usize = 1 << 16;

struct Options {
    traces: Vec<PathBuf>,
    sizes: Option<Vec<usize>>,
    format: Option<trace::Format>,
    threads: usize,
    pattern: peers::Pattern,
    out: PathBuf,
    /// Only these policies, if given.
    policies: Option<Vec<String>>,
    /// Replays of each real cache per row (see [`plan`]).
    runs: usize,
    /// Nanoseconds each load of a real cache takes (see `peers::set_load_nanos`).
    load_nanos: u64,
    /// Write each trace's sizes and keys here instead of replaying (see [`write_keys`]).
    keys_out: Option<PathBuf>,
    /// Count mode, or byte mode with these sizes (see `weights.rs`).
    weights: Weights,
}

fn parse_args() -> Result<Options, String> {
    parse_args_from(std::env::args().skip(1))
}

/// [`parse_args`] over `args` (the program's name left out).
fn parse_args_from(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        traces: Vec::new(),
        sizes: None,
        format: None,
        threads: 1,
        pattern: peers::Pattern::CacheAside,
        out: PathBuf::from("target/simulate"),
        policies: None,
        runs: 1,
        load_nanos: 0,
        keys_out: None,
        weights: Weights::Unit,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--sizes" => {
                let mut sizes = value("--sizes")?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--sizes {s}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if sizes.contains(&0) {
                    return Err("--sizes: a cache size must be at least 1".into());
                }
                if let Some(big) = sizes.iter().find(|&&size| size > MAX_SIZE) {
                    return Err(format!(
                        "--sizes {big}: at most {MAX_SIZE} entries (the reference policies \
                         allocate for their size up front)"
                    ));
                }
                // A size given twice would replay twice and count as two runs of one row.
                sizes.sort_unstable();
                sizes.dedup();
                options.sizes = Some(sizes);
            }
            "--format" => options.format = Some(value("--format")?.parse()?),
            "--threads" => {
                options.threads = value("--threads")?
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or("--threads needs a whole number >= 1")?;
            }
            "--runs" => {
                options.runs = value("--runs")?
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or("--runs needs a whole number >= 1")?;
            }
            "--load-ns" => {
                options.load_nanos = value("--load-ns")?
                    .parse()
                    .map_err(|e| format!("--load-ns: {e}"))?;
            }
            "--pattern" => options.pattern = value("--pattern")?.parse()?,
            "--weights" => options.weights = value("--weights")?.parse()?,
            "--out" => options.out = PathBuf::from(value("--out")?),
            "--keys-out" => options.keys_out = Some(PathBuf::from(value("--keys-out")?)),
            "--policies" => {
                let names: Vec<String> =
                    value("--policies")?.split(',').map(str::to_owned).collect();
                if let Some(bad) = names
                    .iter()
                    .find(|n| !REAL.contains(&n.as_str()) && !REFERENCE.contains(&n.as_str()))
                {
                    return Err(format!("--policies: unknown policy {bad}"));
                }
                options.policies = Some(names);
            }
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            path => options.traces.push(PathBuf::from(path)),
        }
    }
    if options.weights.in_bytes() {
        if let Some(other) = options.policies.iter().flatten().find(|name| {
            REFERENCE.contains(&name.as_str()) && !BYTE_MODE_REFERENCE.contains(&name.as_str())
        }) {
            return Err(format!(
                "--policies {other}: in byte mode the only reference policy is lru (by bytes)"
            ));
        }
    }
    Ok(options)
}

/// The largest cache size the simulator replays: 2^26 entries (W-TinyLFU's sketch alone
/// takes 512 MiB there). Larger sizes aborted the run allocating (session 22's review).
const MAX_SIZE: usize = 1 << 26;

/// A trace ready to replay.
struct Trace {
    name: String,
    keys: Vec<u64>,
    sizes: Vec<usize>,
    /// The mean size of its distinct keys under `--weights` (1 in count mode).
    mean_weight: f64,
    /// The bytes of all its requests under `--weights`, overhead aside (its length in
    /// count mode): the denominator of the byte hit ratio.
    requested_bytes: u64,
}

fn default_sizes(unique: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = DEFAULT_FRACTIONS
        .iter()
        .map(|f| ((unique as f64 * f).round() as usize).max(10))
        .collect();
    sizes.dedup();
    sizes
}

/// Writes `DIR/<trace>.keys` for each trace: its sizes on the first line (comma-separated),
/// then its keys, one per line, so that a cache outside this program (Caffeine, through
/// `caffeine/replay.sh` beside this file) replays the same rows.
fn write_keys(dir: &std::path::Path, traces: &[Trace]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    for trace in traces {
        let path = dir.join(format!("{}.keys", trace.name));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let sizes: Vec<String> = trace.sizes.iter().map(usize::to_string).collect();
        writeln!(out, "{}", sizes.join(","))?;
        for key in &trace.keys {
            writeln!(out, "{key}")?;
        }
        out.flush()?;
        eprintln!("keys: {}", path.display());
    }
    Ok(())
}

fn load_traces(options: &Options) -> Result<Vec<Trace>, String> {
    let loaded: Vec<(String, Vec<u64>)> = if options.traces.is_empty() {
        synthetic::workloads()
            .into_iter()
            .map(|w| (w.name, w.keys))
            .collect()
    } else {
        let mut loaded = Vec::new();
        for path in &options.traces {
            let keys = trace::load(path, options.format).map_err(|e| e.to_string())?;
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            loaded.push((name, keys));
        }
        loaded
    };
    Ok(loaded
        .into_iter()
        .map(|(name, keys)| {
            let unique = keys.iter().collect::<HashSet<_>>().len();
            let sizes = options
                .sizes
                .clone()
                .unwrap_or_else(|| default_sizes(unique));
            let mean_weight = options.weights.mean(&keys);
            let requested_bytes = keys.iter().map(|&key| options.weights.of(key)).sum();
            Trace {
                name,
                keys,
                sizes,
                mean_weight,
                requested_bytes,
            }
        })
        .collect())
}

/// One replay: a policy at a size on a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Job {
    trace: usize,
    size: usize,
    policy: &'static str,
    /// In the table and plots; false for an OPT run only for the check against it.
    shown: bool,
    /// Which of the row's replays of a real cache this is, from 0 (see [`plan`]).
    run: usize,
}

/// Every replay to run: each of `policies` at each size of each trace, in table order.
/// OPT runs at every size even when `policies` leaves it out, unshown: the check for
/// policies above it needs it, and it costs about what a replay of LRU does.
///
/// A real cache is replayed `runs` times per row, one job each, and its row shows their
/// mean: each replay builds a new cache, whose hasher is seeded at random (larder's and
/// quick_cache's), so single replays of one build differ, on ARC's P12 by up to 1.5
/// points. The reference policies are deterministic and run once.
///
/// In byte mode (`with_opt` false) OPT does not run: it is no bound once sizes vary.
fn plan(traces: &[Trace], policies: &[&'static str], runs: usize, with_opt: bool) -> Vec<Job> {
    let unshown_opt = with_opt && !policies.contains(&"opt");
    let at = |trace, size| {
        let job = move |policy, shown, run| Job {
            trace,
            size,
            policy,
            shown,
            run,
        };
        let chosen = policies.iter().flat_map(move |&policy| {
            let replays = if REAL.contains(&policy) { runs } else { 1 };
            (0..replays).map(move |run| job(policy, true, run))
        });
        chosen.chain(unshown_opt.then(|| job("opt", false, 0)))
    };
    traces
        .iter()
        .enumerate()
        .flat_map(|(index, trace)| trace.sizes.iter().flat_map(move |&size| at(index, size)))
        .collect()
}

/// What a replay found.
struct Outcome {
    hits: usize,
    /// The bytes of the hits under `--weights`, overhead aside (the hits in count mode).
    hit_bytes: u64,
    error: Option<String>,
}

fn replay_reference(
    job: Job,
    keys: &[u64],
    weights: Weights,
    budget: u64,
    progress: &ProgressBar,
) -> Outcome {
    let mut policy = match job.policy {
        "lru" if weights.in_bytes() => {
            policies::lru_weighing(budget, move |key| weights.charged(key))
        }
        "lru" => policies::lru(job.size),
        "clock" => policies::clock(job.size),
        "fifo" => policies::fifo(job.size),
        "random" => policies::random(job.size, 0x5eed),
        "lfu" => policies::lfu(job.size),
        "arc" => policies::arc(job.size),
        "lirs" => lirs::lirs(job.size),
        "s3fifo" => s3fifo::s3fifo(job.size),
        "wtinylfu" => wtinylfu::wtinylfu(job.size),
        "wtinylfu_fixed" => wtinylfu::wtinylfu_fixed(job.size),
        "opt" => policies::opt(job.size, keys),
        other => unreachable!("unknown policy {other}"),
    };
    let (mut hits, mut hit_bytes) = (0, 0);
    for chunk in keys.chunks(PROGRESS_STEP) {
        for &key in chunk {
            if policy.access(key) {
                hits += 1;
                hit_bytes += weights.of(key);
            }
        }
        progress.inc(chunk.len() as u64);
    }
    Outcome {
        hits,
        hit_bytes,
        error: None,
    }
}

/// Replays `keys` against a real cache from `threads` threads taking requests in trace
/// order from a shared cursor.
fn replay_real(
    job: Job,
    keys: &[u64],
    options: &Options,
    budget: u64,
    progress: &ProgressBar,
) -> Outcome {
    let (threads, pattern, weights) = (options.threads, options.pattern, options.weights);
    let cache = peers::one(job.policy, job.size, weights, budget)
        .expect("every real policy has an adapter");
    let cache = &*cache;
    let hits = AtomicUsize::new(0);
    let hit_bytes = AtomicU64::new(0);
    let error = Mutex::new(None);
    // The threads take requests from one shared cursor, in trace order, as a pool of
    // workers serves one stream of clients: the cache sees the trace reordered only locally
    // (by what is in flight), however the threads are scheduled. (Giving each thread a
    // fixed stride of the trace instead lets a descheduled thread fall thousands of requests
    // behind, which measures the scheduler, not the cache.)
    let cursor = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (cache, hits, hit_bytes, error, cursor) =
                (cache, &hits, &hit_bytes, &error, &cursor);
            scope.spawn(move || {
                let (mut local, mut local_bytes) = (0, 0);
                let mut done = 0;
                while let Some(&key) = keys.get(cursor.fetch_add(1, Ordering::Relaxed)) {
                    let outcome = match pattern {
                        peers::Pattern::CacheAside => cache.access(key),
                        peers::Pattern::SingleFlight => cache.load(key),
                    };
                    match outcome {
                        Ok(hit) => {
                            if hit {
                                local += 1;
                                local_bytes += weights.of(key);
                            }
                        }
                        Err(message) => {
                            error.lock().unwrap().get_or_insert(message);
                        }
                    }
                    done += 1;
                    if done == PROGRESS_STEP {
                        progress.inc(done as u64);
                        done = 0;
                    }
                }
                progress.inc(done as u64);
                hits.fetch_add(local, Ordering::Relaxed);
                hit_bytes.fetch_add(local_bytes, Ordering::Relaxed);
            });
        }
    });
    Outcome {
        hits: hits.into_inner(),
        hit_bytes: hit_bytes.into_inner(),
        error: error.into_inner().unwrap(),
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{}", include_str!("usage.txt"));
            return ExitCode::from(2);
        }
    };
    peers::set_load_nanos(options.load_nanos);
    let traces = match load_traces(&options) {
        Ok(traces) => traces,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(1);
        }
    };
    if let Some(dir) = &options.keys_out {
        return match write_keys(dir, &traces) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: --keys-out {}: {e}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    let chosen = |policy: &&'static str| {
        options
            .policies
            .as_ref()
            .map_or(true, |names| names.iter().any(|name| name == policy))
    };
    let in_bytes = options.weights.in_bytes();
    let policies: Vec<&'static str> = REAL
        .iter()
        .chain(REFERENCE.iter())
        .copied()
        .filter(chosen)
        .filter(|policy| {
            !in_bytes || !REFERENCE.contains(policy) || BYTE_MODE_REFERENCE.contains(policy)
        })
        .collect();
    let jobs = plan(&traces, &policies, options.runs, !in_bytes);
    let total: u64 = jobs.iter().map(|j| traces[j.trace].keys.len() as u64).sum();
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {percent:>3}% {pos}/{len} accesses, eta {eta}")
            .expect("valid template"),
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = (cores / options.threads).max(1);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(&job) = jobs.get(index) else { break };
                let trace = &traces[job.trace];
                let keys = &trace.keys;
                let budget = options.weights.budget(job.size, trace.mean_weight);
                let outcome = if REAL.contains(&job.policy) {
                    replay_real(job, keys, &options, budget, &progress)
                } else {
                    replay_reference(job, keys, options.weights, budget, &progress)
                };
                results.lock().unwrap().insert(index, outcome);
            });
        }
    });
    progress.finish_and_clear();
    let results = results.into_inner().unwrap();
    report(&options, &traces, &jobs, &results)
}

/// The summary: larder against the best of moka, quick_cache and LRU per row, for the rows
/// where larder and at least one of them ran. Peers above OPT (flagged as holding more
/// than their capacity) are left out of the best. When `moka_bounded` ran, a
/// second line compares against it in moka's place: moka as its users run it holds more
/// than its capacity between batches of evictions, which OPT does not always expose.
fn print_comparison(
    options: &Options,
    traces: &[Trace],
    find: &dyn Fn(usize, usize, &str) -> Option<f64>,
) {
    let Some(rows) = compare(traces, find, ["moka", "quick_cache", "lru"]) else {
        return;
    };
    println!();
    println!("| trace | size | larder | best of moka, quick_cache, lru | difference |");
    println!("|---|---:|---:|---:|---:|");
    for &(name, size, larder, best) in &rows {
        println!(
            "| {name} | {size} | {larder:.2} | {best:.2} | {:+.2} |",
            larder - best
        );
    }
    println!();
    let setting = format!(
        "{} thread(s) per real cache, {:?}, {} ns per load, mean of {} run(s), weights {}",
        options.threads, options.pattern, options.load_nanos, options.runs, options.weights
    );
    print_summary("larder vs best peer", &rows, &setting);
    if let Some(bounded) = compare(traces, find, ["moka_bounded", "quick_cache", "lru"]) {
        print_summary(
            "larder vs best peer, moka held to its capacity",
            &bounded,
            &setting,
        );
    }
    if let Some((rows, means)) = policy_means(traces, find, &MEAN_POLICIES) {
        let listed: Vec<String> = means
            .iter()
            .map(|(policy, mean)| format!("{policy} {mean:.2}"))
            .collect();
        println!(
            "each policy's mean over the {rows} rows all of them ran (moka's rows above OPT included): {}",
            listed.join(", ")
        );
    }
}

/// The policies whose own means the summary prints: larder and the peers it is judged by.
const MEAN_POLICIES: [&str; 5] = ["larder", "moka", "moka_bounded", "quick_cache", "lru"];

/// Each policy's mean hit ratio over the rows (trace and size) where every one of
/// `policies` that ran anywhere ran: the other reading of the goal's "mean at least 2
/// points above the best of theirs" (larder's mean against each peer's, rather than the
/// mean of per-row differences). `None` if none of them ran, or no row has them all.
fn policy_means<'p>(
    traces: &[Trace],
    find: &dyn Fn(usize, usize, &str) -> Option<f64>,
    policies: &[&'p str],
) -> Option<(usize, Vec<(&'p str, f64)>)> {
    let rows: Vec<(usize, usize)> = traces
        .iter()
        .enumerate()
        .flat_map(|(index, trace)| trace.sizes.iter().map(move |&size| (index, size)))
        .collect();
    let ran: Vec<&str> = policies
        .iter()
        .copied()
        .filter(|p| rows.iter().any(|&(t, s)| find(t, s, p).is_some()))
        .collect();
    if ran.is_empty() {
        return None;
    }
    let complete: Vec<(usize, usize)> = rows
        .into_iter()
        .filter(|&(t, s)| ran.iter().all(|p| find(t, s, p).is_some()))
        .collect();
    if complete.is_empty() {
        return None;
    }
    let means = ran
        .iter()
        .map(|&p| {
            let sum: f64 = complete.iter().filter_map(|&(t, s)| find(t, s, p)).sum();
            (p, sum / complete.len() as f64)
        })
        .collect();
    Some((complete.len(), means))
}

/// One row per trace and size: (trace, size, larder's ratio, the best of `peers` not above OPT).
fn compare<'t>(
    traces: &'t [Trace],
    find: &dyn Fn(usize, usize, &str) -> Option<f64>,
    peers: [&str; 3],
) -> Option<Vec<(&'t str, usize, f64, f64)>> {
    let mut rows = Vec::new();
    for (index, trace) in traces.iter().enumerate() {
        for &size in &trace.sizes {
            let Some(larder) = find(index, size, "larder") else {
                continue;
            };
            // A peer above OPT holds more than its capacity (or is broken): flagged above,
            // and no bar for larder to clear.
            let opt = find(index, size, "opt").unwrap_or(f64::INFINITY);
            let best = peers
                .iter()
                .filter_map(|p| find(index, size, p))
                .filter(|&ratio| ratio <= opt + 1e-9)
                .reduce(f64::max);
            if let Some(best) = best {
                rows.push((trace.name.as_str(), size, larder, best));
            }
        }
    }
    (!rows.is_empty()).then_some(rows)
}

fn print_summary(label: &str, rows: &[(&str, usize, f64, f64)], setting: &str) {
    let differences: Vec<f64> = rows.iter().map(|&(_, _, l, b)| l - b).collect();
    let mean = differences.iter().sum::<f64>() / differences.len() as f64;
    let worst = differences.iter().copied().fold(f64::INFINITY, f64::min);
    let close = differences.iter().filter(|&&d| d >= -0.5).count();
    println!(
        "{label}: mean {mean:+.2} points, worst {worst:+.2} points, {close} of {} rows within 0.5 points or better ({setting})",
        differences.len(),
    );
}

fn report(
    options: &Options,
    traces: &[Trace],
    jobs: &[Job],
    results: &BTreeMap<usize, Outcome>,
) -> ExitCode {
    let ratio = |index: usize| {
        let job = jobs[index];
        100.0 * results[&index].hits as f64 / traces[job.trace].keys.len() as f64
    };
    // The jobs replaying `policy` at `size` on `trace` (one per run).
    let replays = |trace: usize, size: usize, policy: &str| -> Vec<usize> {
        (0..jobs.len())
            .filter(|&i| {
                let job = jobs[i];
                job.trace == trace && job.size == size && job.policy == policy
            })
            .collect()
    };
    // A row's hit ratio: the mean of its runs.
    let find = |trace: usize, size: usize, policy: &str| {
        let runs = replays(trace, size, policy);
        (!runs.is_empty()).then(|| runs.iter().map(|&i| ratio(i)).sum::<f64>() / runs.len() as f64)
    };
    let mut broken = false;
    println!("| trace | size | policy | hit ratio % | note |");
    println!("|---|---:|---|---:|---|");
    for job in jobs.iter().filter(|job| job.shown && job.run == 0) {
        let trace = &traces[job.trace];
        // `plan` runs OPT at every size, except in byte mode, where nothing is checked
        // against it.
        let opt = find(job.trace, job.size, "opt").unwrap_or(f64::INFINITY);
        let runs = replays(job.trace, job.size, job.policy);
        let mut notes = Vec::new();
        if runs.len() > 1 {
            let (low, high) = runs
                .iter()
                .map(|&i| ratio(i))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), r| {
                    (low.min(r), high.max(r))
                });
            notes.push(format!("mean of {} runs, {low:.2}–{high:.2}", runs.len()));
        }
        // Every run is checked: one above OPT or one wrong value is a broken cache.
        for &index in &runs {
            let error = results[&index].error.as_deref();
            let (note, fails) = note(job.policy, ratio(index), opt, error, options.threads);
            broken |= fails;
            if !note.is_empty() && !notes.contains(&note) {
                notes.push(note);
            }
        }
        if options.weights.in_bytes() {
            let bytes: u64 = runs.iter().map(|&i| results[&i].hit_bytes).sum();
            let share = bytes as f64 / runs.len() as f64 / trace.requested_bytes.max(1) as f64;
            notes.push(format!("bytes hit {:.2}%", 100.0 * share));
        }
        let mean = find(job.trace, job.size, job.policy).expect("the row's own runs");
        println!(
            "| {} | {} | {} | {mean:.2} | {} |",
            trace.name,
            job.size,
            job.policy,
            notes.join("; ")
        );
    }
    print_comparison(options, traces, &find);
    if let Err(message) = write_plots(options, traces, jobs, &find) {
        eprintln!("warning: plots not written: {message}");
    }
    if broken {
        eprintln!("error: larder or a reference policy returned a wrong value or beat OPT");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// A row's note, and whether what it notes fails the run. A peer's flaw is shown, not
/// chased (stretto's buffered inserts and moka's lazy eviction overshoot their capacity);
/// one of ours (larder, or a reference policy) fails the run. Except above OPT with
/// `threads` > 1: a real cache replayed from several threads sees the trace reordered (two
/// threads can take one key back to back, a hit no serial replay has), so the serial OPT
/// is no bound for it. That is flagged, as above the serial OPT, and fails nothing.
/// Reference policies always replay serially.
fn note(policy: &str, ratio: f64, opt: f64, error: Option<&str>, threads: usize) -> (String, bool) {
    let ours = policy == "larder" || REFERENCE.contains(&policy);
    let serial = threads == 1 || REFERENCE.contains(&policy);
    let (mut notes, mut fails) = (Vec::new(), false);
    if ratio > opt + 1e-9 && serial {
        notes.push("ABOVE OPT: holds more than its capacity, or broken".to_owned());
        fails |= ours;
    } else if ratio > opt + 1e-9 {
        notes.push(format!(
            "above the serial OPT: {threads} threads reorder the trace, which OPT does not bound"
        ));
    }
    if let Some(error) = error {
        notes.push(format!("WRONG VALUE: {error}"));
        fails |= ours;
    }
    (notes.join("; "), fails)
}

/// One plot per trace, of each row's hit ratio as `find` gives it (the mean of its runs).
fn write_plots(
    options: &Options,
    traces: &[Trace],
    jobs: &[Job],
    find: &dyn Fn(usize, usize, &str) -> Option<f64>,
) -> Result<(), String> {
    std::fs::create_dir_all(&options.out).map_err(|e| format!("{}: {e}", options.out.display()))?;
    for (index, trace) in traces.iter().enumerate() {
        let points: Vec<plot::Point<'_>> = jobs
            .iter()
            .filter(|job| job.trace == index && job.shown && job.run == 0)
            .map(|job| plot::Point {
                policy: job.policy,
                size: job.size,
                hit_ratio: find(index, job.size, job.policy).expect("a job's own row"),
            })
            .collect();
        let file_name: String = trace
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let file = options.out.join(format!("{file_name}.svg"));
        plot::hit_ratio_svg(&file, &trace.name, &points)?;
        eprintln!("plot: {}", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &str) -> Result<Options, String> {
        parse_args_from(args.split(' ').map(str::to_owned))
    }

    #[test]
    fn byte_mode_runs_lru_alone_of_the_references_and_no_opt() {
        assert!(parsed("--weights varied --policies larder,arc").is_err());
        assert!(parsed("--weights none").is_err());
        let options = parsed("--weights 100 --policies larder,lru").unwrap();
        assert_eq!(options.weights, Weights::Fixed(100));
        let traces = vec![trace("a.trc", vec![10, 20])];
        let jobs = plan(&traces, &["larder", "lru"], 1, false);
        assert_eq!(jobs.len(), 4);
        assert!(jobs.iter().all(|job| job.policy != "opt"));
    }

    #[test]
    fn sizes_given_twice_replay_once_and_sizes_too_large_are_refused() {
        let options = parsed("--sizes 20,2,20,2 t.trc").unwrap();
        assert_eq!(options.sizes, Some(vec![2, 20]));
        let error = parsed("--sizes 100000000000 t.trc").err().unwrap();
        assert!(error.contains("at most 67108864 entries"), "{error}");
        assert!(parsed("--sizes 67108864 t.trc").is_ok());
    }

    fn trace(name: &str, sizes: Vec<usize>) -> Trace {
        Trace {
            name: name.into(),
            keys: Vec::new(),
            sizes,
            mean_weight: 1.0,
            requested_bytes: 0,
        }
    }

    #[test]
    fn keys_out_writes_the_sizes_then_the_keys() {
        let dir = std::env::temp_dir().join(format!("larder-keys-out-{}", std::process::id()));
        let mut a = trace("a.trc", vec![10, 20]);
        a.keys = vec![3, 1, 3];
        write_keys(&dir, &[a, trace("b", vec![5])]).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("a.trc.keys"), "10,20\n3\n1\n3\n");
        assert_eq!(read("b.keys"), "5\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn opt_runs_unshown_when_policies_leave_it_out() {
        let traces = [trace("a", vec![10, 20]), trace("b", vec![5])];
        let job = |trace, size, policy, shown| Job {
            trace,
            size,
            policy,
            shown,
            run: 0,
        };
        assert_eq!(
            plan(&traces, &["larder", "lru"], 1, true),
            [
                job(0, 10, "larder", true),
                job(0, 10, "lru", true),
                job(0, 10, "opt", false),
                job(0, 20, "larder", true),
                job(0, 20, "lru", true),
                job(0, 20, "opt", false),
                job(1, 5, "larder", true),
                job(1, 5, "lru", true),
                job(1, 5, "opt", false),
            ]
        );
        // Chosen, it runs once, shown.
        assert_eq!(
            plan(&traces[1..], &["opt", "lru"], 1, true),
            [job(0, 5, "opt", true), job(0, 5, "lru", true)]
        );
    }

    #[test]
    fn only_real_caches_replay_once_per_run() {
        let traces = [trace("a", vec![10])];
        let job = |policy, shown, run| Job {
            trace: 0,
            size: 10,
            policy,
            shown,
            run,
        };
        assert_eq!(
            plan(&traces, &["larder", "lru"], 3, true),
            [
                job("larder", true, 0),
                job("larder", true, 1),
                job("larder", true, 2),
                job("lru", true, 0),
                job("opt", false, 0),
            ]
        );
    }

    #[test]
    fn above_opt_fails_the_run_only_in_a_serial_replay() {
        let above = "ABOVE OPT: holds more than its capacity, or broken";
        let serial = "above the serial OPT: 2 threads reorder the trace, which OPT does not bound";
        // At or below OPT, nothing to note.
        assert_eq!(note("larder", 50.0, 50.0, None, 1), (String::new(), false));
        // One thread: ours above OPT fail the run, a peer is flagged only.
        assert_eq!(note("larder", 60.0, 50.0, None, 1), (above.into(), true));
        assert_eq!(note("lru", 60.0, 50.0, None, 1), (above.into(), true));
        assert_eq!(note("moka", 60.0, 50.0, None, 1), (above.into(), false));
        // Threads: a real cache is flagged against the serial OPT, failing nothing; the
        // reference policies still replay serially.
        assert_eq!(note("larder", 90.0, 50.0, None, 2), (serial.into(), false));
        assert_eq!(note("moka", 90.0, 50.0, None, 2), (serial.into(), false));
        assert_eq!(note("lru", 60.0, 50.0, None, 2), (above.into(), true));
        // A wrong value fails the run in any mode, its note apart from the other.
        let wrong = note(
            "larder",
            90.0,
            50.0,
            Some("larder: key 1 read value 0x2"),
            2,
        );
        let want = format!("{serial}; WRONG VALUE: larder: key 1 read value 0x2");
        assert_eq!(wrong, (want, true));
        let wrong = note("larder", 60.0, 50.0, Some("e"), 1);
        assert_eq!(wrong, (format!("{above}; WRONG VALUE: e"), true));
    }

    #[test]
    fn policy_means_use_only_rows_every_policy_ran() {
        let traces = vec![trace("a", vec![10, 20]), trace("b", vec![5])];
        // lru did not run on b at 5, and "arc" ran nowhere: the means cover a's two rows
        // and list no arc.
        let find = |trace: usize, size: usize, policy: &str| match (trace, size, policy) {
            (0, 10, "larder") => Some(50.0),
            (0, 20, "larder") => Some(70.0),
            (1, 5, "larder") => Some(0.0),
            (0, 10, "lru") => Some(40.0),
            (0, 20, "lru") => Some(50.0),
            _ => None,
        };
        let (rows, means) = policy_means(&traces, &find, &["larder", "lru", "arc"]).unwrap();
        assert_eq!(rows, 2);
        assert_eq!(means, vec![("larder", 60.0), ("lru", 45.0)]);
        let nothing = |_: usize, _: usize, _: &str| None;
        assert!(policy_means(&traces, &nothing, &["larder"]).is_none());
    }
}
