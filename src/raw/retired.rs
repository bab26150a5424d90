//! Entries a shard has unlinked: handed to the epoch collector in batches, their memory
//! recycled for the shard's next writes.
//!
//! Every write publishes a new immutable entry (the price of lock-free reads) and retires
//! the one it replaces or evicts. Done naively that is one heap allocation, one free and one
//! epoch-bag slot per write. With glibc, the frees go to bins that each full epoch bag's
//! 2 KiB node allocation then consolidates. Two things here avoid most of that:
//!
//! - **Batches.** A shard gathers what it unlinks under its lock and defers the whole batch
//!   as one closure: one bag slot per [`BATCH_LEN`] entries.
//! - **Shells.** When the collector runs a batch, it drops each entry's key and value but
//!   keeps the memory (a *shell*) and hands it back to the shard. The shard builds its next
//!   entries in those shells instead of allocating.
//!
//! Both are bounded. A batch is handed over when it holds [`BATCH_LEN`] entries or a 64th of
//! the shard's capacity in weight, and `run_pending_tasks` and `clear` hand over what is
//! pending. In byte mode the entries waiting in batches weigh at most about 1/64 of the
//! budget. A shard keeps at most [`SPARE_BYTES`] of shells and frees the rest.

use std::mem::{ManuallyDrop, MaybeUninit};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::raw::entry::{drop_contained, drop_in_place_contained, Entry};
use crate::sync::{lock, Guard, Mutex, Owned, Shared};

/// Entries per batch.
pub(crate) const BATCH_LEN: usize = 8;

/// A batch also leaves once it weighs this fraction of the shard's capacity, so in byte
/// mode the memory of entries waiting in batches stays within about that fraction of the
/// budget.
const BATCH_WEIGHT_FRACTION: u64 = 64;

/// Shell memory a shard keeps for reuse: with `u64` pairs, 2,048 shells. One writing thread
/// gets its shells back steadily, but with two the epoch advances in bursts and so do the
/// returns: at 16 KiB the throughput benchmark's insert-only run on 2 threads overflowed
/// the spare, freed the excess and allocated afresh, and glibc's `malloc`, `free` and
/// `malloc_consolidate` (triggered by the collector's own 2 KiB bag allocations among the
/// freed shells) took 1–26% of its time (perf, several runs); at 64 KiB, 0.9–1.1%.
pub(crate) const SPARE_BYTES: usize = 64 << 10;

/// The list a batch's entries travel in, boxed so that it and the shard's handle on
/// [`Returned`] are two words together: the epoch collector stores a deferred closure of up
/// to three words inline and boxes a larger one, and a plain `Vec` (three words) made that one
/// heap allocation and one free per batch handed over (about 20 instructions per write under
/// cachegrind, `examples/op_cost.rs` insert-only).
type Buffer<K, V> = Box<Vec<NonNull<Entry<K, V>>>>;

const _: () = assert!(
    std::mem::size_of::<Batch<u64, u64>>() + std::mem::size_of::<Arc<()>>()
        <= 3 * std::mem::size_of::<usize>(),
    "a handed-over batch must fit crossbeam-epoch's inline closure storage"
);

/// Entries unreachable from the table whose readers may still be pinned.
///
/// Owns its entries: dropping a batch drops them. A batch is either run by the collector
/// (once no reader can hold its entries; see [`Batch::recycle`]) or dropped with its shard
/// (when no reader can exist).
struct Batch<K, V>(Buffer<K, V>);

impl<K, V> Batch<K, V> {
    /// Drops each entry's key and value (see [`drop_in_place_contained`]) and returns the
    /// memory to `returned`.
    ///
    /// # Safety
    /// No reader may still hold any of the batch's entries.
    unsafe fn recycle(self, returned: &Returned<K, V>) {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the buffer is moved out of it
        // exactly once; its entries are handled below instead of by `Batch`'s drop.
        let shells = unsafe { std::ptr::read(&this.0) };
        for &entry in shells.iter() {
            // SAFETY: the batch owns each entry (see `Retired::push`), and no reader holds
            // one (the caller's contract); this is the only drop, as the pointer then goes on
            // as a shell, whose contents are never dropped.
            unsafe { drop_in_place_contained(entry) };
        }
        returned.take_back(Shells(shells));
    }
}

impl<K, V> Drop for Batch<K, V> {
    fn drop(&mut self) {
        for entry in self.0.drain(..) {
            // SAFETY: each pointer came from an `Owned` entry that was then published and
            // unlinked (see `Retired::push`); the batch is its only owner, and it is dropped
            // only when no reader can reach the entry (see the type's documentation).
            drop_contained(unsafe { Owned::from_raw(entry.as_ptr()) });
        }
    }
}

/// Entry allocations whose contents have been dropped.
struct Shells<K, V>(Buffer<K, V>);

// SAFETY: a shell holds no key or value (they were dropped), only memory, which any thread
// may reuse or free.
unsafe impl<K, V> Send for Shells<K, V> {}

impl<K, V> Shells<K, V> {
    /// The buffer of a batch whose shells have all been used.
    fn into_buffer(self) -> Buffer<K, V> {
        debug_assert!(self.0.is_empty(), "shells would leak");
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the buffer is moved out of it
        // exactly once; it holds no shells for `Shells`' drop to free.
        unsafe { std::ptr::read(&this.0) }
    }
}

impl<K, V> Drop for Shells<K, V> {
    fn drop(&mut self) {
        for shell in self.0.drain(..) {
            // SAFETY: a shell is a `Box<Entry>` allocation (from `Owned::new`) whose contents
            // were dropped: freeing it as a box of uninitialised memory frees the memory
            // without dropping anything again.
            drop(unsafe { Box::from_raw(shell.as_ptr().cast::<MaybeUninit<Entry<K, V>>>()) });
        }
    }
}

/// Shells the collector handed back to a shard, batch by batch. Shared with the deferred
/// closures, which may run after the shard is gone.
struct Returned<K, V> {
    batches: Mutex<Vec<Shells<K, V>>>,
    max_batches: usize,
}

impl<K, V> Returned<K, V> {
    /// Keeps `shells` if there is room, else frees them.
    fn take_back(&self, shells: Shells<K, V>) {
        let mut batches = lock(&self.batches);
        if batches.len() < self.max_batches {
            batches.push(shells);
        }
        // Otherwise dropping `shells` frees them.
    }
}

/// A shard's pending batch of retired entries and its spare shells.
///
/// A batch's buffer travels: it carries retired entries to the collector, comes back as a
/// batch of shells, is emptied by [`Retired::place`], and carries the next retired entries.
/// Steady writes therefore allocate nothing here.
pub(crate) struct Retired<K, V> {
    batch: Batch<K, V>,
    weight: u64,
    max_weight: u64,
    returned: Arc<Returned<K, V>>,
    /// The batch of shells being used up (taken from `returned` under the shard lock, like
    /// the rest of `Retired`).
    spare: Shells<K, V>,
    /// An emptied buffer, ready to carry the next batch.
    buffer: Option<Buffer<K, V>>,
}

impl<K, V> std::fmt::Debug for Retired<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retired")
            .field("pending", &self.batch.0.len())
            .field("weight", &self.weight)
            .field("spare", &self.spare.0.len())
            .finish()
    }
}

// SAFETY: a `Retired` owns its batch's entries, so sending it sends them, which is sound
// when keys and values may be sent; shells hold neither.
unsafe impl<K: Send, V: Send> Send for Retired<K, V> {}

impl<K, V> Retired<K, V> {
    /// An empty batch for a shard of `capacity` weight.
    pub(crate) fn new(capacity: u64) -> Self {
        let shell_bytes = std::mem::size_of::<Entry<K, V>>().max(1);
        Self {
            batch: Batch(Box::default()),
            weight: 0,
            max_weight: (capacity / BATCH_WEIGHT_FRACTION).max(1),
            returned: Arc::new(Returned {
                batches: Mutex::new(Vec::new()),
                max_batches: (SPARE_BYTES / (shell_bytes * BATCH_LEN)).max(1),
            }),
            spare: Shells(Box::default()),
            buffer: None,
        }
    }

    /// Moves `entry` to the heap, into a spare shell if there is one.
    #[inline]
    pub(crate) fn place(&mut self, entry: Entry<K, V>) -> Owned<Entry<K, V>> {
        if self.spare.0.is_empty() {
            if let Some(shells) = lock(&self.returned.batches).pop() {
                let emptied = std::mem::replace(&mut self.spare, shells);
                self.buffer = Some(emptied.into_buffer());
            }
        }
        let shell = self.spare.0.pop();
        // The next insert writes the next shell, which has sat unused since its entry was
        // retired: start fetching it now so that write does not wait for memory.
        if let Some(next) = self.spare.0.last() {
            crate::sync::prefetch(next.as_ptr());
        }
        match shell {
            Some(shell) => {
                // SAFETY: a shell is a `Box<Entry>` allocation with its contents dropped, owned
                // by this shard alone once popped: writing a whole entry into it makes it a
                // box again, which `Owned` takes over.
                unsafe {
                    shell.as_ptr().write(entry);
                    Owned::from_raw(shell.as_ptr())
                }
            }
            None => Owned::new(entry),
        }
    }

    /// Takes ownership of `entry`, charged at `weight`, and hands the batch to the collector
    /// if it is full.
    ///
    /// # Safety
    /// `entry` must be unreachable for new readers (unlinked or replaced in the table) and
    /// be retired only once. The collector may drop its key and value on any thread, so `K`
    /// and `V` must be `Send` (the public `Cache` requires `Send + Sync` of both).
    #[inline]
    pub(crate) unsafe fn push(
        &mut self,
        guard: &Guard,
        entry: Shared<'_, Entry<K, V>>,
        weight: u64,
    ) {
        let entry = NonNull::new(entry.as_raw().cast_mut()).expect("retired entries are non-null");
        self.batch.0.push(entry);
        self.weight = self.weight.saturating_add(weight);
        if self.batch.0.len() >= BATCH_LEN || self.weight >= self.max_weight {
            self.hand_over(guard);
        }
    }

    /// Hands the pending entries to the epoch collector.
    pub(crate) fn hand_over(&mut self, guard: &Guard) {
        if self.batch.0.is_empty() {
            return;
        }
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
    }

    /// Bytes of the pending batch's buffer and of the shard's shells.
    pub(crate) fn heap_bytes(&self) -> usize {
        let pointer = std::mem::size_of::<NonNull<Entry<K, V>>>();
        let returned = lock(&self.returned.batches);
        let shells = self.spare.0.len() + returned.iter().map(|s| s.0.len()).sum::<usize>();
        let boxes = 2 + usize::from(self.buffer.is_some()) + returned.len();
        let buffers = self.batch.0.capacity()
            + self.spare.0.capacity()
            + self.buffer.as_ref().map_or(0, |buffer| buffer.capacity())
            + returned.iter().map(|s| s.0.capacity()).sum::<usize>();
        buffers * pointer
            + boxes * std::mem::size_of::<Vec<NonNull<Entry<K, V>>>>()
            + shells * std::mem::size_of::<Entry<K, V>>()
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
        let placed: Vec<_> = (0..n)
            .map(|key| {
                let entry = retired.place(Entry::new(key, Counted(drops), key, NEVER));
                entry.into_shared(guard)
            })
            .collect();
        for &shared in &placed {
            // SAFETY: never published, so unreachable; retired once.
            unsafe { retired.push(guard, shared, 1) };
        }
        retired.hand_over(guard);
        placed
            .iter()
            .map(|shared| shared.as_raw() as usize)
            .collect()
    }

    #[test]
    fn retired_values_are_dropped_once_and_their_memory_reused() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let mut retired = Retired::new(1_000_000);
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
    fn spare_shells_are_bounded() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let mut retired = Retired::new(1_000_000);
        let shell = std::mem::size_of::<Entry<u64, Counted>>();
        // A quarter more than the spare holds (fewer under Miri, where each costs more).
        let n = if cfg!(miri) {
            (SPARE_BYTES / shell * 5 / 4) as u64
        } else {
            10_000
        };
        place_then_retire(&mut retired, &DROPS, n);
        let returned = lock(&retired.returned.batches);
        let kept = returned.iter().map(|s| s.0.len()).sum::<usize>() + retired.spare.0.len();
        assert_eq!(
            kept * shell,
            SPARE_BYTES,
            "kept {kept} shells of {shell} bytes"
        );
        assert_eq!(DROPS.load(StdOrdering::Relaxed), n as usize);
    }

    #[test]
    fn a_batch_is_handed_over_by_length_or_by_weight() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let drops = &DROPS;
        // SAFETY: as in `place_then_retire`.
        let guard = unsafe { crossbeam_epoch::unprotected() };
        // Capacity 800: a batch may weigh up to 800 / 8 = 100.
        let mut retired = Retired::new(800);
        let retire = |retired: &mut Retired<u64, Counted>, weight| {
            let entry = retired.place(Entry::new(0, Counted(drops), 0, NEVER));
            // SAFETY: never published, so unreachable; retired once.
            unsafe { retired.push(guard, entry.into_shared(guard), weight) };
        };
        for _ in 0..BATCH_LEN - 1 {
            retire(&mut retired, 1);
        }
        assert_eq!(
            drops.load(StdOrdering::Relaxed),
            0,
            "held until the batch is full"
        );
        retire(&mut retired, 1);
        assert_eq!(drops.load(StdOrdering::Relaxed), BATCH_LEN);
        retire(&mut retired, 100);
        assert_eq!(
            drops.load(StdOrdering::Relaxed),
            BATCH_LEN + 1,
            "a heavy entry goes at once"
        );
    }
}
