//! Heap cost per entry of larder, moka and quick_cache, and larder's byte-budget accuracy.
//!
//! A counting global allocator tracks the bytes currently allocated twice: the sizes
//! requested, and (on glibc) the blocks malloc really hands out for them, each with its
//! 8-byte header and rounded up to 16 bytes (at least 32). A cache that allocates each entry
//! on its own pays that rounding per entry; one that stores entries in large arrays does not,
//! so the second figure is the fairer comparison. Fragmentation is in neither (RSS would be
//! higher still).
//!
//! Scenario 1: each cache gets room for 1,000,000 entries and 1,000,000 distinct `u64 → u64`
//! inserts; the heap growth is divided by the entries actually held. larder also runs with
//! room for 600,000, since its arrays fill differently at other sizes. `overhead/entry`
//! subtracts the 16 bytes of key and value.
//!
//! Scenario 2 (larder only): byte mode with a 64 MiB budget, 100-byte `Vec<u8>` values and
//! 2,000,000 distinct inserts (so most are evicted); the heap is compared with the budget.
//!
//! larder and moka retire memory through crossbeam-epoch's default collector (a dependency
//! of larder, so usable here); the bench flushes it before each reading and reports how much
//! garbage was still deferred.
//!
//! Run: `cargo bench --bench memory`. Prints markdown to stdout.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `System`, counting the bytes currently allocated.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// Bytes of the malloc blocks currently allocated, headers included (see the module docs).
static FOOTPRINT: AtomicUsize = AtomicUsize::new(0);

/// The malloc block holding `ptr`: its usable size plus glibc's 8-byte header.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn block_size(ptr: *mut u8, _requested: usize) -> usize {
    // SAFETY: `ptr` is a live allocation of the system allocator (glibc malloc).
    unsafe { libc::malloc_usable_size(ptr.cast()) + 8 }
}

/// Elsewhere the requested size stands in for the block.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn block_size(_ptr: *mut u8, requested: usize) -> usize {
    requested
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees carry over; the counting has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we forward.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
            FOOTPRINT.fetch_add(block_size(ptr, layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract, which we forward.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
            FOOTPRINT.fetch_add(block_size(ptr, layout.size()), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The block is measured before it goes.
        FOOTPRINT.fetch_sub(block_size(ptr, layout.size()), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract: `ptr` came from this
        // allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_block = block_size(ptr, layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which we forward.
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            FOOTPRINT.fetch_sub(old_block, Ordering::Relaxed);
            FOOTPRINT.fetch_add(block_size(new_ptr, new_size), Ordering::Relaxed);
            let old_size = layout.size();
            if new_size >= old_size {
                ALLOCATED.fetch_add(new_size - old_size, Ordering::Relaxed);
            } else {
                ALLOCATED.fetch_sub(old_size - new_size, Ordering::Relaxed);
            }
        }
        new_ptr
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes currently allocated on the heap.
fn heap() -> usize {
    ALLOCATED.load(Ordering::SeqCst)
}

/// Bytes of malloc blocks currently allocated.
fn footprint() -> usize {
    FOOTPRINT.load(Ordering::SeqCst)
}

/// Frees what crossbeam-epoch still defers (larder and moka retire memory through its
/// default collector), so the heap can be read without that garbage. Each `flush` frees at
/// most a few bags of 64 objects, so it repeats until the heap has stopped shrinking.
/// Returns the bytes it freed.
fn drain_epoch_garbage() -> isize {
    let start = heap() as isize;
    let mut last = heap();
    let mut quiet = 0;
    for _ in 0..10_000_000 {
        crossbeam_epoch::pin().flush();
        let now = heap();
        if now < last {
            last = now;
            quiet = 0;
        } else {
            quiet += 1;
            if quiet >= 256 {
                break;
            }
        }
    }
    start - heap() as isize
}

/// Entries inserted in scenario 1 (and each cache's capacity).
const ENTRIES: u64 = 1_000_000;
/// Bytes of one entry's key and value in scenario 1.
const PAYLOAD: f64 = 16.0;
/// TTL for the caches that support one.
const TTL: Duration = Duration::from_secs(3600);

/// One row of the scenario 1 table.
struct Row {
    cache: &'static str,
    ttl: &'static str,
    held: usize,
    /// Heap growth with epoch garbage flushed.
    bytes: usize,
    /// Growth of the malloc blocks' footprint, at the same time.
    blocks: usize,
    /// Epoch garbage freed by the flush before the heap was read.
    garbage: isize,
    fill: Duration,
    leftover: isize,
    /// The cache's own account of its metadata bytes, where it offers one.
    metadata: Option<usize>,
}

/// Measures one cache: `build` makes it, `fill` inserts `ENTRIES` entries and settles it,
/// `held` counts its entries (and reports the cache's own metadata bytes, if it can).
fn measure<C>(
    cache: &'static str,
    ttl: &'static str,
    build: impl FnOnce() -> C,
    fill: impl FnOnce(&C),
    held: impl FnOnce(&C) -> (usize, Option<usize>),
) -> Row {
    drain_epoch_garbage();
    let before = heap();
    let blocks_before = footprint();
    let c = build();
    let started = Instant::now();
    fill(&c);
    let fill_time = started.elapsed();
    let garbage = drain_epoch_garbage();
    let after = heap();
    let blocks = footprint().saturating_sub(blocks_before);
    let (held, metadata) = held(&c);
    drop(c);
    drain_epoch_garbage();
    let leftover = heap() as isize - before as isize;
    Row {
        cache,
        ttl,
        held,
        metadata,
        bytes: after.saturating_sub(before),
        blocks,
        garbage,
        fill: fill_time,
        leftover,
    }
}

/// Measures larder with room for `capacity` entries, a TTL on every entry, and `ENTRIES`
/// inserts.
fn measure_larder(name: &'static str, capacity: u64) -> Row {
    measure(
        name,
        "3600 s (default_ttl)",
        || {
            larder::Cache::<u64, u64>::builder()
                .max_entries(capacity)
                .default_ttl(TTL)
                .build()
                .expect("valid larder settings")
        },
        |c| {
            for k in 0..ENTRIES {
                c.insert(k, k).expect("u64 entries always fit");
            }
            c.run_pending_tasks();
        },
        |c| (c.len(), Some(c.metadata_bytes())),
    )
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn main() {
    // Under `cargo test --benches` (which passes no `--bench`) there is nothing to check.
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory bench: run with `cargo bench --bench memory`");
        return;
    }

    let rows = [
        measure_larder("larder", ENTRIES),
        // Per-entry metadata depends on how full the shards' arrays are at a given size:
        // the same cache with room for 60% of the keys (the rest evicted on the way).
        measure_larder("larder, capacity 600,000", ENTRIES * 3 / 5),
        measure(
            "moka",
            "3600 s (time_to_live)",
            || {
                moka::sync::Cache::<u64, u64>::builder()
                    .max_capacity(ENTRIES)
                    .time_to_live(TTL)
                    .build()
            },
            |c| {
                for k in 0..ENTRIES {
                    c.insert(k, k);
                }
                c.run_pending_tasks();
            },
            |c| (c.entry_count() as usize, None),
        ),
        measure(
            "quick_cache",
            "none (unsupported)",
            || quick_cache::sync::Cache::<u64, u64>::new(ENTRIES as usize),
            |c| {
                for k in 0..ENTRIES {
                    c.insert(k, k);
                }
            },
            |c| (c.len(), None),
        ),
    ];

    println!("## Scenario 1: {ENTRIES} distinct u64 -> u64 inserts, capacity {ENTRIES} entries");
    println!();
    println!(
        "| cache | TTL | entries held | heap growth (MiB) | bytes/entry | overhead/entry | overhead/entry in malloc blocks | epoch garbage flushed | fill time | heap left after drop |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let per_entry = r.bytes as f64 / r.held.max(1) as f64;
        let per_block = r.blocks as f64 / r.held.max(1) as f64;
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} B | {:.2} s | {} B |",
            r.cache,
            r.ttl,
            r.held,
            mib(r.bytes as f64),
            per_entry,
            per_entry - PAYLOAD,
            per_block - PAYLOAD,
            r.garbage,
            r.fill.as_secs_f64(),
            r.leftover,
        );
    }
    println!();
    println!("quick_cache has no TTL, so its row carries no expiry metadata.");
    for r in &rows {
        if let Some(meta) = r.metadata {
            println!(
                "{}: metadata_bytes() (tables, slabs, policy, wheels; entry nodes excluded) = \
                 {:.1} MiB, {:.1} B/entry.",
                r.cache,
                mib(meta as f64),
                meta as f64 / r.held.max(1) as f64
            );
        }
    }
    println!();

    // Scenario 2: larder byte mode under churn.
    const MAX_BYTES: u64 = 64 << 20;
    const INSERTS: u64 = 2_000_000;
    const VALUE_LEN: usize = 100;
    drain_epoch_garbage();
    let before = heap();
    let blocks_before = footprint();
    let cache = larder::Cache::<u64, Vec<u8>>::builder()
        .max_bytes(MAX_BYTES)
        .weigher(|_: &u64, v: &Vec<u8>| v.capacity() as u64)
        .build()
        .expect("valid larder settings");
    let started = Instant::now();
    for k in 0..INSERTS {
        cache
            .insert(k, vec![k as u8; VALUE_LEN])
            .expect("a 108-byte entry fits a 64 MiB budget");
    }
    cache.run_pending_tasks();
    let fill = started.elapsed();
    let grown_raw = heap().saturating_sub(before);
    let garbage = drain_epoch_garbage();
    let grown = heap().saturating_sub(before);
    let blocks = footprint().saturating_sub(blocks_before);
    let held = cache.len();
    let weighted = cache.weighted_size();
    let metadata = cache.metadata_bytes();
    drop(cache);
    drain_epoch_garbage();
    let leftover = heap() as isize - before as isize;
    let ratio_raw = grown_raw as f64 / MAX_BYTES as f64;
    let ratio = grown as f64 / MAX_BYTES as f64;
    let ratio_blocks = blocks as f64 / MAX_BYTES as f64;

    println!(
        "## Scenario 2: larder byte mode, max_bytes {MAX_BYTES} (64 MiB), {INSERTS} distinct inserts of {VALUE_LEN}-byte Vec<u8>"
    );
    println!();
    println!(
        "| entries held | weighted_size | heap growth (MiB) | heap / max_bytes | target | malloc blocks / max_bytes | before epoch flush | fill time | heap left after drop |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {held} | {weighted} | {:.1} | {ratio:.3} | <= 1.05 ({}) | {ratio_blocks:.3} | {ratio_raw:.3} ({:.1} MiB, {garbage} B deferred) | {:.2} s | {leftover} B |",
        mib(grown as f64),
        if ratio <= 1.05 { "met" } else { "MISSED" },
        mib(grown_raw as f64),
        fill.as_secs_f64(),
    );
    let values = held * VALUE_LEN;
    let rest = grown.saturating_sub(values + metadata);
    let per = |bytes: usize| bytes as f64 / held.max(1) as f64;
    println!();
    println!(
        "Per held entry: {:.1} B of heap = {:.1} B value buffer + {:.1} B larder metadata_bytes() \
         + {:.1} B other (entry nodes: key, Vec header, larder's entry header); charged weight \
         {:.1} B ({} B from the weigher).",
        per(grown),
        per(values),
        per(metadata),
        per(rest),
        weighted as f64 / held.max(1) as f64,
        8 + VALUE_LEN,
    );
    println!();
    println!(
        "Notes: heap figures are bytes requested from the allocator; \"in malloc blocks\" \
         counts glibc's blocks instead (8-byte header, 16-byte rounding); fragmentation is in \
         neither, so RSS is higher. larder and moka free replaced, evicted and resized \
         memory through crossbeam-epoch's default collector: before each reading the bench \
         flushes it until the heap stops shrinking (\"epoch garbage flushed\" / \"before epoch \
         flush\" show how much was still deferred). \"heap left after drop\" is what stayed \
         allocated after dropping the cache and flushing again."
    );
}
