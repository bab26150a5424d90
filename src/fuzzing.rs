//! Engine components behind a small safe surface, for the fuzz targets in `fuzz/` (built with
//! `cfg(fuzzing)`) and for tests (`test-util`). Not part of the API: no stability promise.
//!
//! Each wrapper drives one component on its own, so a target can compare it with a simple
//! reference without the rest of the engine in the way.

use crate::policy::sketch::FrequencySketch;
use crate::raw::entry::{short_hash, Entry, NEVER};
use crate::raw::table::{LooseCells, Probe, Table, TableCounts};
use crate::sync::pin;
use crate::time::wheel::TrackedWheel;

/// The TinyLFU frequency sketch (count-min plus doorkeeper, aged by halving).
#[derive(Debug)]
pub struct Sketch(FrequencySketch);

impl Sketch {
    /// A sketch sized for about `expected_entries` items.
    pub fn new(expected_entries: usize) -> Self {
        Self(FrequencySketch::with_capacity(expected_entries))
    }

    /// Records one access of the item with this (well-mixed) hash. Returns true if the
    /// access completed a sample period, so the sketch aged (halved every counter).
    pub fn increment(&mut self, hash: u64) -> bool {
        self.0.increment(hash)
    }

    /// The item's estimated frequency, `0..=16`.
    pub fn frequency(&self, hash: u64) -> u8 {
        self.0.frequency(hash)
    }

    /// Ages the sketch now.
    pub fn age(&mut self) {
        self.0.age();
    }
}

/// The hierarchical timing wheel, mapping ids to expiry times in nanoseconds.
#[derive(Debug)]
pub struct Wheel(TrackedWheel);

impl Wheel {
    /// Ids at or above this are reserved by the wheel's list encoding.
    pub const MAX_ID: u32 = u32::MAX - 200;

    /// An empty wheel whose clock starts at `now`.
    pub fn new(now: u64) -> Self {
        Self(TrackedWheel::new(now))
    }

    /// Schedules (or moves) `id` to expire at `expires_at`; `u64::MAX` deschedules.
    pub fn schedule(&mut self, id: u32, expires_at: u64) {
        self.0.schedule(id, expires_at);
    }

    /// Removes `id` if scheduled.
    pub fn deschedule(&mut self, id: u32) {
        self.0.deschedule(id);
    }

    /// Whether `id` is scheduled.
    pub fn is_scheduled(&self, id: u32) -> bool {
        self.0.is_scheduled(id)
    }

    /// Number of scheduled ids.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no id is scheduled.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// Moves toward `now` with at most about `max_work` steps, appending what expired.
    /// Returns true if it caught up.
    pub fn advance(&mut self, now: u64, max_work: usize, expired: &mut Vec<u32>) -> bool {
        self.0.advance(now, max_work, expired)
    }
}

/// One shard's index (the lock-free-read slot table) of `u64` keys and values, with the hash
/// of each key chosen by the caller, so collisions, tombstones and rebuilds can be forced.
/// Single-threaded: the wrapper plays the shard lock's holder.
#[derive(Debug)]
pub struct Index {
    table: Table<u64, u64>,
    counts: TableCounts,
    cells: LooseCells<u64, u64>,
}

impl Default for Index {
    fn default() -> Self {
        let (table, counts, cells) = LooseCells::table(0);
        Self {
            table,
            counts,
            cells,
        }
    }
}

impl Index {
    /// The value stored for `key` (looked up under `hash`).
    pub fn get(&self, key: u64, hash: u64) -> Option<u64> {
        let guard = pin();
        Some(self.table.find(hash, &key, &guard)?.entry.value)
    }

    /// Stores `key` → `value` under `hash`, replacing any entry of `key`; returns the old
    /// value. The caller must use the same hash for a key every time.
    pub fn insert(&mut self, key: u64, value: u64, hash: u64) -> Option<u64> {
        let guard = pin();
        let cell = self.cells.place(Entry::new(key, value, hash, NEVER));
        // The writer's lookup, as the shard's insert makes it.
        match self.table.probe(&self.counts, hash, &key, &guard) {
            Probe::Found(found) => {
                // SAFETY: a whole, unpublished entry of the same key, in a cell of the
                // table's chunks.
                let (old, _) = unsafe {
                    self.table.replace(
                        &mut self.counts,
                        found.index,
                        cell,
                        short_hash(hash),
                        &guard,
                    )
                };
                // SAFETY: `old` was just swapped out of the table; its cell is never reused
                // (`LooseCells`), so it stays readable.
                Some(unsafe { old.deref() }.value)
            }
            Probe::Vacant(vacant) => {
                // SAFETY: a whole, unpublished entry, in a cell of the table's chunks; the
                // slot is the probe's, under the same `&mut self`.
                unsafe {
                    self.table.insert_vacant(
                        &mut self.counts,
                        vacant,
                        cell,
                        short_hash(hash),
                        &guard,
                        |_, _| {},
                    )
                };
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: u64, hash: u64) -> Option<u64> {
        let guard = pin();
        let found = self.table.find(hash, &key, &guard)?;
        let (unlinked, _) = self.table.remove_at(&mut self.counts, found.index, &guard);
        assert!(
            std::ptr::eq(unlinked.as_raw(), found.entry),
            "the slot found by key holds another entry"
        );
        // SAFETY: found in the table under `&mut self` (the lock holder's role); its cell is
        // never reused (`LooseCells`), so it stays readable.
        Some(unsafe { unlinked.deref() }.value)
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.counts.live()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.counts.live() == 0
    }

    /// Every (key, value) in the index, in slot order.
    pub fn entries(&self) -> Vec<(u64, u64)> {
        let guard = pin();
        let mut all = Vec::new();
        self.table.for_each(&guard, |shared| {
            // SAFETY: reachable from the table under `&mut`-free shared access by the only
            // writer (us), so live while `guard` is pinned.
            let entry = unsafe { shared.deref() };
            all.push((entry.key, entry.value));
        });
        all
    }
}

/// Bytes the cache charges per entry on top of the weigher's figure in `max_bytes` mode.
pub fn entry_overhead<K, V>() -> u64 {
    crate::raw::entry_overhead::<K, V>()
}
