//! Entries a shard has unlinked: handed to the epoch collector in batches, their cells
//! recycled for the shard's next writes.
//!
//! Every write publishes a new immutable entry (the price of lock-free reads) and retires
//! the one it replaces or evicts. Done naively that is one heap allocation, one free and one
//! epoch-bag slot per write. Two things here avoid that:
//!
//! - **Batches.** A shard gathers what it unlinks under its lock and defers the whole batch
//!   as one closure: one bag slot per [`BATCH_LEN`] entries.
//! - **Shells.** When the collector runs a batch, it drops each entry's key and value but
//!   keeps the cell (a *shell*) and hands it back to the shard. The shard builds its next
//!   entries in those shells, and takes a fresh cell from its chunks (see
//!   [`crate::raw::arena`]) only when none is back.
//!
//! A batch is handed over when it holds [`BATCH_LEN`] entries or a 64th of the shard's
//! capacity in weight, and `run_pending_tasks` and `clear` hand over what is pending. In byte
//! mode the entries waiting in batches weigh at most about 1/64 of the budget.
//!
//! Handed over is not yet freed. crossbeam-epoch keeps up to 64 deferred closures in the
//! thread's own bag before it seals the bag for the global queue, where it waits for the
//! epoch to advance twice, and a thread tries to advance it once every 128 pins: about 320
//! closures in flight per writing thread, whatever they hold. With heavy entries, each its
//! own batch, that was five times a byte budget of retired values still alive (session 21's
//! review). So each thread counts what it handed over, as shares of the shards' capacities,
//! and once that reaches [`FLUSH_SHARE_BYTES`] (a 64th; in count mode a quarter) its next
//! `finish` flushes the bag (see [`Retired::push`]): a flush tries to advance the epoch, and
//! a flushed bag is freed after two advances. Alone, a writing thread keeps at most about
//! three such shares alive. A thread pinned elsewhere holds everything back until it
//! unpins (the price of epochs): one preempted in the middle of an operation holds back
//! what other threads retire for as long as it waits for a core.

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::raw::arena::{CellId, Chunks, Fresh};
use crate::raw::entry::{drop_in_place_contained, Entry};
use crate::sync::{lock, Guard, Mutex};

/// Entries per batch.
pub(crate) const BATCH_LEN: usize = 8;

/// A batch also leaves once it weighs this fraction of the shard's capacity, so in byte
/// mode the memory of entries waiting in batches stays within about that fraction of the
/// budget.
const BATCH_WEIGHT_FRACTION: u64 = 64;

/// What a thread hands over between two flushes of its bag, as a share of the capacity of
/// the shards the batches came from. In byte mode a 64th, for a byte budget is a promise
/// about memory. In count mode a quarter: the budget counts entries, not their bytes, and a
/// 64th would flush a small shard's thread every few evictions (a 100-entry cache's 50-50
/// operation cost 2,075 instructions before flushes, 2,490 at a 64th and 2,120 at a
/// quarter, under cachegrind); a large shard's thread in count mode reaches a quarter only
/// every few hundred batches, its bag having sealed itself at 64 several times over.
const FLUSH_SHARE_BYTES: f64 = 1.0 / 64.0;
const FLUSH_SHARE_ENTRIES: f64 = 1.0 / 4.0;

#[cfg(not(larder_loom))]
std::thread_local! {
    /// The shares this thread handed to the collector since its bag was last flushed.
    static UNFLUSHED_SHARE: Cell<f64> = const { Cell::new(0.0) };
}

// Loom's, under loom: it runs a model's threads on one OS thread, so a std thread-local
// carried this count from one execution to the next and made models of count-mode caches
// above 4 entries non-deterministic (session 24's review: loom crashed on the 16th
// execution, whose flush no earlier execution had made).
#[cfg(larder_loom)]
loom::thread_local! {
    static UNFLUSHED_SHARE: Cell<f64> = Cell::new(0.0);
}

/// The list a batch's entries travel in, boxed so that it and the shard's handle on
/// [`Returned`] are two words together: the epoch collector stores a deferred closure of up
/// to three words inline and boxes a larger one, and a plain `Vec` (three words) made that one
/// heap allocation and one free per batch handed over (about 20 instructions per write under
/// cachegrind, `examples/op_cost.rs` insert-only).
type Buffer = Box<Vec<CellId>>;

const _: () = assert!(
    std::mem::size_of::<Batch>() + std::mem::size_of::<Arc<()>>()
        <= 3 * std::mem::size_of::<usize>(),
    "a handed-over batch must fit crossbeam-epoch's inline closure storage"
);

/// Entries unreachable from the table whose readers may still be pinned, by cell.
///
/// Owns its entries. A batch is either run by the collector (once no reader can hold its
/// entries; see [`Batch::recycle`]) or, if it never left its shard, dropped with the shard
/// (`Retired`'s drop, when no reader can exist). It has no drop of its own: it names its
/// entries by cell, and only those two know the chunks.
struct Batch(Buffer);

impl Batch {
    /// Drops each entry's key and value (see [`drop_in_place_contained`]) and returns the
    /// cells to `returned`.
    ///
    /// # Safety
    /// No reader may still hold any of the batch's entries, which must lie in `returned`'s
    /// chunks.
    unsafe fn recycle<K, V>(self, returned: &Returned<K, V>) {
        let shells = self.0;
        for &cell in shells.iter() {
            // SAFETY: the batch owns each entry (see `Retired::push`), in a cell of
            // `returned`'s chunks whose hand-out the collector's hand-over orders before this,
            // and no reader holds one (the caller's contract); this is the only drop, as the
            // cell then goes on as a shell, whose contents are never dropped.
            unsafe { drop_in_place_contained(returned.chunks.cell(cell)) };
        }
        returned.take_back(Shells(shells));
    }
}

/// Cells whose entries have been dropped, ready for new entries. Dropping `Shells` frees
/// nothing: the cells belong to the shard's chunks.
struct Shells(Buffer);

/// What a shard shares with the batches it handed to the collector, which may run after the
/// shard is gone: the shells they hand back, and the chunks every cell lies in (which the
/// shard's table holds too).
struct Returned<K, V> {
    batches: Mutex<Vec<Shells>>,
    chunks: Arc<Chunks<Entry<K, V>>>,
}

impl<K, V> Returned<K, V> {
    fn take_back(&self, shells: Shells) {
        lock(&self.batches).push(shells);
    }
}

/// A cell of the shard's chunks taken for the next entry: it holds no value (a shell's was
/// dropped, a fresh cell never had one) and is this shard's alone. Dropped unused, the cell
/// stays unused until the chunks are freed (`Shard::insert` fills it at once).
pub(crate) struct FreeCell<K, V>(NonNull<Entry<K, V>>, CellId);

impl<K, V> FreeCell<K, V> {
    /// Builds `entry` in the cell.
    #[inline]
    pub(crate) fn place(self, entry: Entry<K, V>) -> Placed<K, V> {
        // SAFETY: the cell lies in the shard's chunks, holds no value and is this shard's
        // alone (see the type): writing a whole entry makes it one, which `Placed` owns.
        unsafe { self.0.as_ptr().write(entry) };
        Placed(self.0, self.1)
    }
}

/// An entry built in a cell of the shard's chunks and not yet published.
///
/// Owns the entry: dropped before publication, it drops the key and value and leaves the
/// cell unused until the chunks are freed. `Shard::insert` places an entry only once the
/// user's `Eq` has run (session 24: a panicking `Eq` leaked a cell per write), so only an
/// internal panic (an allocation) can drop one.
pub(crate) struct Placed<K, V>(NonNull<Entry<K, V>>, CellId);

impl<K, V> Placed<K, V> {
    /// Gives up ownership, for the table to publish: the entry is then retired like any
    /// other (see [`Retired::push`]).
    pub(crate) fn into_cell(self) -> CellId {
        ManuallyDrop::new(self).1
    }
}

impl<K, V> Deref for Placed<K, V> {
    type Target = Entry<K, V>;
    fn deref(&self) -> &Entry<K, V> {
        // SAFETY: `place` wrote a whole entry into the cell, and `Placed` is its only owner.
        unsafe { self.0.as_ref() }
    }
}

impl<K, V> DerefMut for Placed<K, V> {
    fn deref_mut(&mut self) -> &mut Entry<K, V> {
        // SAFETY: as in `deref`; `&mut self` makes the access unique.
        unsafe { self.0.as_mut() }
    }
}

impl<K, V> Drop for Placed<K, V> {
    fn drop(&mut self) {
        // SAFETY: the entry was never published, so this is its only owner and only drop.
        unsafe { drop_in_place_contained(self.0) };
    }
}

/// A shard's pending batch of retired entries, its spare shells and its fresh cells.
///
/// A batch's buffer travels: it carries retired entries to the collector, comes back as a
/// batch of shells, is emptied by [`Retired::place`], and carries the next retired entries.
/// Steady writes therefore allocate nothing here.
pub(crate) struct Retired<K, V> {
    batch: Batch,
    weight: u64,
    max_weight: u64,
    /// A unit of weight's share of the shard's capacity.
    per_weight: f64,
    /// The share a thread hands over before it flushes its bag ([`FLUSH_SHARE_BYTES`] or
    /// [`FLUSH_SHARE_ENTRIES`]).
    flush_share: f64,
    returned: Arc<Returned<K, V>>,
    /// The batch of shells being used up (taken from `returned` under the shard lock, like
    /// the rest of `Retired`).
    spare: Shells,
    /// An emptied buffer, ready to carry the next batch.
    buffer: Option<Buffer>,
    /// Cells never used yet, for when no shell is back.
    fresh: Fresh<Entry<K, V>>,
}

impl<K, V> std::fmt::Debug for Retired<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retired")
            .field("pending", &self.batch.0.len())
            .field("weight", &self.weight)
            .field("spare", &self.spare.0.len())
            .field("fresh", &self.fresh)
            .finish()
    }
}

// SAFETY: a `Retired` owns its batch's entries, so sending it sends them, which is sound
// when keys and values may be sent; shells and fresh cells hold neither.
unsafe impl<K: Send, V: Send> Send for Retired<K, V> {}

impl<K, V> Retired<K, V> {
    /// An empty batch for a shard of `capacity` weight whose entries lie in `chunks`;
    /// `unit_weights` in count mode.
    pub(crate) fn new(capacity: u64, unit_weights: bool, chunks: Arc<Chunks<Entry<K, V>>>) -> Self {
        Self {
            batch: Batch(Box::default()),
            weight: 0,
            max_weight: (capacity / BATCH_WEIGHT_FRACTION).max(1),
            per_weight: 1.0 / capacity.max(1) as f64,
            flush_share: if unit_weights {
                FLUSH_SHARE_ENTRIES
            } else {
                FLUSH_SHARE_BYTES
            },
            returned: Arc::new(Returned {
                batches: Mutex::new(Vec::new()),
                chunks,
            }),
            spare: Shells(Box::default()),
            buffer: None,
            fresh: Fresh::new(),
        }
    }

    /// Lowers the most cells the shard takes (tests only reach the real limit slowly).
    pub(crate) fn limit_cells(&mut self, cells: usize) {
        self.fresh.limit(cells);
    }

    /// Builds `entry` in a spare shell, or in a fresh cell if no shell is back.
    ///
    /// # Errors
    /// The entry, when no shell is back and the shard has taken all the cells it may: the
    /// others hold entries, or retired ones the collector has not run yet because a thread
    /// stays pinned.
    #[cfg(test)]
    pub(crate) fn place(&mut self, entry: Entry<K, V>) -> Result<Placed<K, V>, Entry<K, V>> {
        match self.take_cell() {
            Some(cell) => Ok(cell.place(entry)),
            None => Err(entry),
        }
    }

    /// A spare shell, or a fresh cell if no shell is back, for the next entry (see
    /// [`FreeCell::place`]). `None` when the shard has taken all the cells it may: the
    /// others hold entries, or retired ones the collector has not run yet because a thread
    /// stays pinned. (Taken apart from the entry, so that the entry is moved only once, into
    /// the cell: a `place` that handed the entry back on failure cost an update 20
    /// instructions under cachegrind.)
    #[inline]
    pub(crate) fn take_cell(&mut self) -> Option<FreeCell<K, V>> {
        if self.spare.0.is_empty() {
            if let Some(shells) = lock(&self.returned.batches).pop() {
                let emptied = std::mem::replace(&mut self.spare, shells);
                debug_assert!(emptied.0.is_empty());
                self.buffer = Some(emptied.0);
            }
        }
        let chunks = &self.returned.chunks;
        let (cell, id) = match self.spare.0.pop() {
            // SAFETY: a shell is a cell this shard's `Fresh` handed out; it came back through
            // the `returned` mutex, which orders its hand-out before this.
            Some(shell) => (unsafe { chunks.cell(shell) }, shell),
            None => self.fresh.cell(chunks)?,
        };
        // The next insert writes the next shell, which has sat unused since its entry was
        // retired: start fetching it now so that write does not wait for memory.
        if let Some(&next) = self.spare.0.last() {
            // SAFETY: as above, a shell of this shard's chunks.
            crate::sync::prefetch(unsafe { chunks.cell(next) }.as_ptr());
        }
        Some(FreeCell(cell, id))
    }

    /// Takes ownership of the entry in `cell`, charged at `weight`, and hands the batch to
    /// the collector if it is full. Returns true when this thread has handed over enough
    /// since its bag was last flushed that the caller should flush it (`Guard::flush`) once
    /// it holds no lock: the flush may run deferred drops, which are user code.
    ///
    /// # Safety
    /// The entry must lie in this shard's chunks, be unreachable for new readers (unlinked
    /// or replaced in the table) and be retired only once. The collector may drop its key
    /// and value on any thread, so `K` and `V` must be `Send` (the public `Cache` requires
    /// `Send + Sync` of both).
    #[inline]
    #[must_use = "a due flush keeps retired values alive until it happens"]
    pub(crate) unsafe fn push(&mut self, guard: &Guard, cell: CellId, weight: u64) -> bool {
        self.batch.0.push(cell);
        self.weight = self.weight.saturating_add(weight);
        if self.batch.0.len() >= BATCH_LEN || self.weight >= self.max_weight {
            self.hand_over(guard)
        } else {
            false
        }
    }

    /// Hands the pending entries to the epoch collector. Returns true if this thread's bag
    /// is due a flush (see [`Retired::push`]).
    pub(crate) fn hand_over(&mut self, guard: &Guard) -> bool {
        if self.batch.0.is_empty() {
            return false;
        }
        // A float: a share of capacities from 1 to 2^48, summed over shards and caches.
        let share = self.weight as f64 * self.per_weight;
        let buffer = self
            .buffer
            .take()
            .unwrap_or_else(|| Box::new(Vec::with_capacity(BATCH_LEN)));
        let batch = std::mem::replace(&mut self.batch, Batch(buffer));
        self.weight = 0;
        let returned = Arc::clone(&self.returned);
        // SAFETY: every entry in the batch was unreachable for new readers when pushed
        // (`push`'s contract), so only readers pinned before now can hold one, and the
        // collector runs the closure after all of them have unpinned. `K` and `V` are `Send`
        // (`push`'s contract), so dropping them on another thread is sound.
        unsafe { guard.defer_unchecked(move || batch.recycle(&returned)) };
        UNFLUSHED_SHARE.with(|unflushed| {
            let total = unflushed.get() + share;
            let due = total >= self.flush_share;
            unflushed.set(if due { 0.0 } else { total });
            due
        })
    }

    /// Bytes of the pending batch's buffer and of the shard's unused cells (shells and fresh
    /// ones; cells holding entries, live or retired, are the entries' own).
    pub(crate) fn heap_bytes(&self) -> usize {
        let id = std::mem::size_of::<CellId>();
        let returned = lock(&self.returned.batches);
        let shells = self.spare.0.len()
            + returned.iter().map(|s| s.0.len()).sum::<usize>()
            + self.fresh.len();
        let boxes = 2 + usize::from(self.buffer.is_some()) + returned.len();
        let buffers = self.batch.0.capacity()
            + self.spare.0.capacity()
            + self.buffer.as_ref().map_or(0, |buffer| buffer.capacity())
            + returned.iter().map(|s| s.0.capacity()).sum::<usize>();
        buffers * id
            + boxes * std::mem::size_of::<Vec<CellId>>()
            + shells * std::mem::size_of::<Entry<K, V>>()
    }
}

impl<K, V> Drop for Retired<K, V> {
    fn drop(&mut self) {
        for &cell in self.batch.0.iter() {
            // SAFETY: the pending batch owns its entries (see `push`), in cells of this
            // shard's chunks, and they never reached the collector; dropping the shard means
            // no reader can reach them any more. The cells stay with the chunks, which
            // outlive this (`returned` holds them).
            unsafe { drop_in_place_contained(self.returned.chunks.cell(cell)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::entry::NEVER;
    use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};

    /// Counts its drops.
    struct Counted(&'static AtomicUsize);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, StdOrdering::Relaxed);
        }
    }

    /// Places `n` entries, then retires them all. With an unprotected guard the collector
    /// runs each batch as soon as it is handed over. Returns the entries' addresses.
    fn place_then_retire(
        retired: &mut Retired<u64, Counted>,
        drops: &'static AtomicUsize,
        n: u64,
    ) -> Vec<usize> {
        // SAFETY: no other thread exists and nothing reads the entries: running deferred
        // closures at once is sound.
        let guard = unsafe { crossbeam_epoch::unprotected() };
        let placed: Vec<CellId> = (0..n)
            .map(|key| {
                let entry = retired
                    .place(Entry::new(key, Counted(drops), key, NEVER))
                    .ok()
                    .expect("a cell");
                entry.into_cell()
            })
            .collect();
        for &cell in &placed {
            // SAFETY: in the shard's chunks, never published, so unreachable; retired once.
            let _ = unsafe { retired.push(guard, cell, 1) };
        }
        let _ = retired.hand_over(guard);
        placed
            .iter()
            // SAFETY: handed out by this shard's chunks, on this thread.
            .map(|&cell| unsafe { retired.returned.chunks.cell(cell) }.as_ptr() as usize)
            .collect()
    }

    #[test]
    fn retired_values_are_dropped_once_and_their_memory_reused() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let mut retired = Retired::new(1_000_000, true, Arc::new(Chunks::new(0)));
        let mut first = place_then_retire(&mut retired, &DROPS, 20);
        assert_eq!(
            DROPS.load(StdOrdering::Relaxed),
            20,
            "every retired value dropped"
        );
        let mut second = place_then_retire(&mut retired, &DROPS, 20);
        assert_eq!(DROPS.load(StdOrdering::Relaxed), 40);
        first.sort_unstable();
        second.sort_unstable();
        assert_eq!(first, second, "the second round reused every shell");
        drop(retired);
        assert_eq!(
            DROPS.load(StdOrdering::Relaxed),
            40,
            "shells are never dropped again"
        );
    }

    #[test]
    fn fresh_cells_are_taken_only_when_no_shell_is_back() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let mut retired = Retired::new(1_000_000, true, Arc::new(Chunks::new(0)));
        let cell = std::mem::size_of::<Entry<u64, Counted>>();
        let n = if cfg!(miri) { 300 } else { 10_000 };
        place_then_retire(&mut retired, &DROPS, n);
        let chunk_bytes = retired.returned.chunks.bytes();
        assert!(chunk_bytes >= n as usize * cell);
        for _ in 0..3 {
            place_then_retire(&mut retired, &DROPS, n);
        }
        assert_eq!(
            retired.returned.chunks.bytes(),
            chunk_bytes,
            "rounds after the first reuse the first round's cells"
        );
        assert_eq!(DROPS.load(StdOrdering::Relaxed), 4 * n as usize);
        let unused = retired.spare.0.len()
            + lock(&retired.returned.batches)
                .iter()
                .map(|shells| shells.0.len())
                .sum::<usize>()
            + retired.fresh.len();
        assert_eq!(unused * cell, chunk_bytes, "every cell is back, none lost");
    }

    #[test]
    fn an_entry_dropped_before_publication_drops_its_value_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let mut retired = Retired::new(1_000, true, Arc::new(Chunks::new(0)));
        drop(
            retired
                .place(Entry::new(1, Counted(&DROPS), 1, NEVER))
                .ok()
                .expect("a cell"),
        );
        assert_eq!(DROPS.load(StdOrdering::Relaxed), 1);
        drop(retired);
        assert_eq!(
            DROPS.load(StdOrdering::Relaxed),
            1,
            "the cell drops nothing"
        );
    }

    #[test]
    fn a_pending_batch_is_dropped_with_its_shard() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        // SAFETY: as in `place_then_retire`.
        let guard = unsafe { crossbeam_epoch::unprotected() };
        let mut retired = Retired::new(1_000_000, true, Arc::new(Chunks::new(0)));
        for key in 0..3 {
            let entry = retired
                .place(Entry::new(key, Counted(&DROPS), key, NEVER))
                .ok()
                .expect("a cell");
            // SAFETY: in the shard's chunks, never published, so unreachable; retired once.
            let _ = unsafe { retired.push(guard, entry.into_cell(), 1) };
        }
        assert_eq!(DROPS.load(StdOrdering::Relaxed), 0, "still pending");
        drop(retired);
        assert_eq!(DROPS.load(StdOrdering::Relaxed), 3);
    }

    #[test]
    fn a_batch_is_handed_over_by_length_or_by_weight_and_heavy_ones_ask_for_a_flush() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let drops = &DROPS;
        // SAFETY: as in `place_then_retire`.
        let guard = unsafe { crossbeam_epoch::unprotected() };
        // Byte mode, capacity 800: a batch leaves once it weighs 800 / 64 = 12, and the
        // thread's bag is due a flush once it was handed 800 / 64 = 12.5.
        let mut retired = Retired::new(800, false, Arc::new(Chunks::new(0)));
        let retire = |retired: &mut Retired<u64, Counted>, weight| {
            let entry = retired
                .place(Entry::new(0, Counted(drops), 0, NEVER))
                .ok()
                .expect("a cell");
            // SAFETY: in the shard's chunks, never published, so unreachable; retired once.
            unsafe { retired.push(guard, entry.into_cell(), weight) }
        };
        for _ in 0..BATCH_LEN - 1 {
            assert!(!retire(&mut retired, 1));
        }
        assert_eq!(
            drops.load(StdOrdering::Relaxed),
            0,
            "held until the batch is full"
        );
        // Eight of 800 handed over: no flush yet.
        assert!(!retire(&mut retired, 1));
        assert_eq!(drops.load(StdOrdering::Relaxed), BATCH_LEN);
        assert!(retire(&mut retired, 100), "a heavy batch asks for a flush");
        assert_eq!(
            drops.load(StdOrdering::Relaxed),
            BATCH_LEN + 1,
            "a heavy entry goes at once"
        );
        // The count starts again after a flush.
        for _ in 0..BATCH_LEN {
            assert!(!retire(&mut retired, 1));
        }
    }
}
