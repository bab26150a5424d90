//! The memory entries live in: cells carved from chunks a shard allocates, reused through
//! the epoch collector (see [`crate::raw::retired`]) and freed only with the last chunk.
//!
//! An entry used to be a heap allocation of its own. glibc's `malloc` adds an 8-byte header
//! and rounds up to 16 bytes, so a 32-byte `u64` entry took a 48-byte block, and the byte
//! budget charged that block by assuming glibc's rounding (another global allocator made
//! the charge wrong). Carved from chunks, an entry costs its size, whatever the allocator.
//!
//! Cells are never freed one by one: a shard keeps the cells of the most entries it has
//! held at once (plus those waiting for the collector) until the cache and every batch the
//! collector still holds are dropped. The budget bounds that peak, since each entry is
//! charged at least its cell.
//!
//! A cell is named by a dense 32-bit [`CellId`], which the table stores in its slots (4
//! bytes where a pointer took 8). All chunks of a shard have one power-of-two size, so an
//! id splits into chunk and offset with a shift and a mask, and a directory (one pointer
//! per chunk) gives the chunk's address. Readers resolve ids through it without a lock:
//! a chunk is entered in the directory before any of its ids is handed out, a grown
//! directory is published only once it holds every chunk, and no directory is freed before
//! the chunks (`loom_models` checks the growth against a reader).

use std::mem::MaybeUninit;
use std::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::sync::{lock, AtomicPtr, Mutex, Ordering};

/// Fewest cells in a chunk.
const MIN_CHUNK_CELLS: usize = 16;

/// Largest chunk: big enough that a shard of 125,000 `u64` entries needs few chunks, small
/// enough that the unused end of the last one is a fraction of a byte per entry.
const MAX_CHUNK_BYTES: usize = 64 << 10;

/// Cells a shard may hold: a table slot keeps `id + 1` in 26 bits, beside six hash bits
/// (see `raw::table`).
pub(crate) const MAX_CELLS: u32 = (1 << 26) - 2;

/// A cell's number in its shard's chunks, dense from 0: what a table slot stores instead
/// of a pointer (4 bytes, not 8), resolved through the shard's directory of chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct CellId(u32);

impl CellId {
    pub(crate) fn get(self) -> u32 {
        self.0
    }

    /// The cell numbered `id` (which [`Fresh::cell`] handed out for the same chunks).
    pub(crate) fn new(id: u32) -> Self {
        debug_assert!(id <= MAX_CELLS);
        Self(id)
    }
}

/// How cells are laid out in chunks: every chunk of one shard has the same number of cells,
/// a power of two, so a cell id splits into chunk and offset with a shift and a mask (the
/// read path does this on every probe that meets a candidate entry).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    /// Log2 of a chunk's cells.
    chunk_log2: u32,
    /// A chunk's cells less one: kept rather than computed from `chunk_log2` on every
    /// lookup (a variable shift and a decrement on the read path).
    offset_mask: u32,
}

impl Geometry {
    /// Chunks of about a 64th of the shard's expected entries: the unused end of the last
    /// chunk stays within about 1.6% of the cells, and a full shard has some 64 chunks.
    /// At least [`MIN_CHUNK_CELLS`], at most what fits in [`MAX_CHUNK_BYTES`].
    fn of<T>(expected_entries: usize) -> Self {
        let fit = (MAX_CHUNK_BYTES / size_of::<T>().max(1)).max(MIN_CHUNK_CELLS);
        let wanted = (expected_entries / 64).clamp(MIN_CHUNK_CELLS, fit);
        // The largest power of two within `wanted`.
        let chunk_log2 = usize::BITS - 1 - wanted.leading_zeros();
        Self {
            chunk_log2,
            offset_mask: (1 << chunk_log2) - 1,
        }
    }

    fn chunk_len(self) -> usize {
        1 << self.chunk_log2
    }

    /// The chunk holding cell `id`, and the cell's place in it.
    #[inline]
    fn locate(self, id: u32) -> (usize, usize) {
        (
            (id >> self.chunk_log2) as usize,
            (id & self.offset_mask) as usize,
        )
    }
}

/// One chunk of uninitialised cells, owned by [`Chunks`].
struct Chunk<T>(NonNull<[MaybeUninit<T>]>);

/// Per chunk, its first cell; readers resolve cell ids through it without a lock. Leaked
/// from a `Box<[_]>` and freed with the chunks.
type Directory<T> = NonNull<[AtomicPtr<T>]>;

/// What [`Chunks`] frees when dropped: every chunk, and every directory it published (an
/// outgrown directory may still be read by a reader that loaded it, so none is freed
/// before the chunks; together they are at most twice the last one).
struct Owned<T> {
    chunks: Vec<Chunk<T>>,
    directories: Vec<Directory<T>>,
}

// SAFETY: a chunk is plain memory: the values in its cells are owned and dropped by whoever
// holds the cell (an entry in a table, a retired batch), never by the chunk, so moving the
// chunks' ownership between threads moves no `T`; a directory holds only atomics. Bounded
// by `T: Send` all the same, so that nothing holding chunks of a `T` that may not cross
// threads becomes `Send` through them.
unsafe impl<T: Send> Send for Owned<T> {}

/// The chunks of one shard: allocated under the shard's lock, read by anyone holding a
/// cell id, freed when the last holder (the shard's table, or a retired batch the collector
/// has not run yet) lets go.
pub(crate) struct Chunks<T> {
    /// The first element of the newest directory; never null. Only its address is
    /// published: a reader needs no length, since every id it holds lies in a chunk that
    /// the directory it loads already names (see [`Chunks::cell`]).
    directory: AtomicPtr<AtomicPtr<T>>,
    geometry: Geometry,
    /// On a line of its own: locking it (a new chunk, memory accounting) must not take the
    /// line every read loads `directory` from.
    owned: CachePadded<Mutex<Owned<T>>>,
}

// SAFETY: the chunks are shared between the shard's threads and the collector's: cells are
// reached through ids by whoever holds them (their users synchronise), the directory through
// atomics, and what is owned under a mutex. No `T` is dropped or moved by `Chunks` itself;
// the bounds keep the entries' own thread-safety visible to whoever holds the chunks.
unsafe impl<T: Send + Sync> Sync for Chunks<T> {}
// SAFETY: see `Sync`; dropping frees memory only.
unsafe impl<T: Send> Send for Chunks<T> {}

fn new_directory<T>(len: usize) -> Directory<T> {
    let firsts: Box<[AtomicPtr<T>]> = (0..len)
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    NonNull::from(Box::leak(firsts))
}

impl<T> Chunks<T> {
    /// No chunks yet, for a shard expected to hold about `expected_entries` entries (0 when
    /// unknown), which sizes the chunks.
    pub(crate) fn new(expected_entries: usize) -> Self {
        let geometry = Geometry::of::<T>(expected_entries);
        // Room for the expected chunks, within reason: a huge capacity must not allocate for
        // itself up front (the directory doubles as chunks come).
        let directory =
            new_directory::<T>(((expected_entries >> geometry.chunk_log2) + 2).min(256));
        Self {
            directory: AtomicPtr::new(directory.cast::<AtomicPtr<T>>().as_ptr()),
            geometry,
            owned: CachePadded::new(Mutex::new(Owned {
                chunks: Vec::new(),
                directories: vec![directory],
            })),
        }
    }

    /// The cell numbered `id`. Lock-free: no length is checked, which is why this is
    /// `unsafe`.
    ///
    /// # Safety
    /// `id` must have been handed out by a [`Fresh`] of these chunks, and the caller must
    /// have learnt it through a chain of synchronisation from that hand-out (a table slot
    /// loaded with `Acquire`, the shard's lock): the chunk's entry in the directory was
    /// stored before, so it is seen, and lies within the directory loaded here.
    #[inline]
    pub(crate) unsafe fn cell(&self, id: CellId) -> NonNull<T> {
        let (chunk, offset) = self.geometry.locate(id.0);
        let directory = self.directory.load(Ordering::Acquire);
        // SAFETY: directories are never null and never freed before `self` (see `Owned`).
        // The id's chunk was published (`allocate`) before the id was handed out, in the
        // directory then newest, and every later directory copies it; the caller learnt the
        // id through synchronisation from the hand-out (the contract), so the directory it
        // loads now is that one or a later one, and `chunk` is within its length. Relaxed
        // is enough for the entry itself: the same chain orders its store before this load.
        let first = unsafe { &*directory.add(chunk) }.load(Ordering::Relaxed);
        debug_assert!(!first.is_null(), "cell {} was never handed out", id.0);
        // SAFETY: `first` is the first cell of chunk `chunk`, published before any of its
        // ids was handed out (the caller's contract), and `offset` is below that chunk's
        // length (`locate`), so the result lies in the chunk and is non-null.
        unsafe { NonNull::new_unchecked(first.add(offset)) }
    }

    /// A new chunk, published in the directory; returns its first cell, that cell's id and
    /// the chunk's length. `None` if the chunks would then hold more than `max_cells` cells
    /// (at most [`MAX_CELLS`] + 1, all that table slots can name).
    fn allocate(&self, max_cells: usize) -> Option<(NonNull<T>, CellId, usize)> {
        let mut owned = lock(&self.owned);
        let index = owned.chunks.len();
        let len = self.geometry.chunk_len();
        let first_id = index * len;
        if first_id + len > max_cells.min(MAX_CELLS as usize + 1) {
            return None;
        }
        let mut cells: Vec<MaybeUninit<T>> = Vec::with_capacity(len);
        // SAFETY: `MaybeUninit` needs no initialisation, and the capacity is `len`.
        unsafe { cells.set_len(len) };
        let chunk = NonNull::from(Box::leak(cells.into_boxed_slice()));
        owned.chunks.push(Chunk(chunk));
        let first = chunk.cast::<T>();
        // SAFETY: the newest directory is the last one owned, alive until `self` drops.
        let mut directory = unsafe { owned.directories.last().expect("one at least").as_ref() };
        if index == directory.len() {
            let grown = new_directory::<T>(index * 2);
            // SAFETY: just allocated, freed only with `self`.
            let grown_ref = unsafe { grown.as_ref() };
            for (old, new) in directory.iter().zip(grown_ref.iter()) {
                new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            owned.directories.push(grown);
            directory = grown_ref;
            // Release: a reader that sees this directory sees the chunks copied into it.
            self.directory
                .store(grown.cast::<AtomicPtr<T>>().as_ptr(), Ordering::Release);
        }
        // Release: a reader that sees this chunk's first cell sees the chunk allocated.
        directory[index].store(first.as_ptr(), Ordering::Release);
        Some((first, CellId(first_id as u32), len))
    }

    /// Bytes of the directories (the newest and those it outgrew), for memory accounting.
    pub(crate) fn directory_bytes(&self) -> usize {
        lock(&self.owned)
            .directories
            .iter()
            .map(|directory| directory.len())
            .sum::<usize>()
            * size_of::<AtomicPtr<T>>()
    }

    /// Bytes of all chunks, cells in use or not.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        lock(&self.owned)
            .chunks
            .iter()
            .map(|chunk| chunk.0.len())
            .sum::<usize>()
            * size_of::<T>()
    }
}

impl<T> Drop for Chunks<T> {
    fn drop(&mut self) {
        let owned = std::mem::replace(
            &mut *lock(&self.owned),
            Owned {
                chunks: Vec::new(),
                directories: Vec::new(),
            },
        );
        for chunk in owned.chunks {
            // SAFETY: the chunk came from `Box::leak` in `allocate` and is freed once, here.
            // Whoever holds `Chunks` holds every cell's user too (see the module docs), so no
            // cell is in use any more; `MaybeUninit` cells drop nothing.
            drop(unsafe { Box::from_raw(chunk.0.as_ptr()) });
        }
        for directory in owned.directories {
            // SAFETY: from `Box::leak` in `new_directory`, freed once, here; no reader is
            // left (`&mut self`).
            drop(unsafe { Box::from_raw(directory.as_ptr()) });
        }
    }
}

/// A shard's supply of cells never used yet: the rest of its newest chunk.
pub(crate) struct Fresh<T> {
    next: NonNull<T>,
    next_id: u32,
    left: usize,
    /// Most cells the chunks may hold (all that table slots can name, unless a test lowers it).
    max_cells: usize,
}

impl<T> Fresh<T> {
    pub(crate) fn new() -> Self {
        Self {
            next: NonNull::dangling(),
            next_id: 0,
            left: 0,
            max_cells: MAX_CELLS as usize + 1,
        }
    }

    /// Hands out at most `cells` cells (rounded down to whole chunks).
    pub(crate) fn limit(&mut self, cells: usize) {
        self.max_cells = cells;
    }

    /// An unused cell and its id, from a new chunk of `chunks` when the current one is used
    /// up; `None` once the chunks hold all the cells allowed. The cell holds no value; it
    /// stays allocated as long as `chunks`.
    pub(crate) fn cell(&mut self, chunks: &Chunks<T>) -> Option<(NonNull<T>, CellId)> {
        if self.left == 0 {
            let (first, id, len) = chunks.allocate(self.max_cells)?;
            self.next = first;
            self.next_id = id.0;
            self.left = len;
        }
        let cell = (self.next, CellId(self.next_id));
        self.left -= 1;
        self.next_id += 1;
        // SAFETY: `cell` is one of the `left + 1` cells at the end of a live chunk, so the
        // next one is in that chunk or one past its end.
        self.next = unsafe { self.next.add(1) };
        Some(cell)
    }

    /// Cells not handed out yet.
    pub(crate) fn len(&self) -> usize {
        self.left
    }
}

impl<T> std::fmt::Debug for Fresh<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh").field("left", &self.left).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_cells_stop_at_the_limit_in_whole_chunks() {
        let chunks = Chunks::<u64>::new(0);
        let len = chunks.geometry.chunk_len();
        let mut fresh = Fresh::new();
        fresh.limit(2 * len + len / 2);
        for i in 0..2 * len {
            let (_, id) = fresh.cell(&chunks).expect("within the limit");
            assert_eq!(id.get(), i as u32);
        }
        assert!(
            fresh.cell(&chunks).is_none(),
            "a third chunk would pass the limit"
        );
        assert!(fresh.cell(&chunks).is_none(), "and stays refused");
        assert_eq!(lock(&chunks.owned).chunks.len(), 2);
    }

    #[test]
    fn cells_are_distinct_aligned_resolvable_and_chunks_grow_to_a_bound() {
        let chunks = Chunks::<[u64; 4]>::new(0);
        let mut fresh = Fresh::new();
        let n = if cfg!(miri) { 600 } else { 20_000 };
        let mut cells: Vec<usize> = (0..n)
            .map(|i| {
                let (cell, id) = fresh.cell(&chunks).expect("within the limit");
                assert_eq!(id.get(), i as u32, "ids are dense, in order");
                // SAFETY: handed out just now, on this thread.
                let resolved = unsafe { chunks.cell(id) };
                assert_eq!(resolved, cell, "the directory resolves the id");
                // SAFETY: a fresh cell is valid for writes of one `T`, used by nothing else.
                unsafe { cell.as_ptr().write([i as u64; 4]) };
                cell.as_ptr() as usize
            })
            .collect();
        for i in (0..n).step_by(7) {
            // SAFETY: handed out and written above, on this thread; the chunks are alive.
            let value = unsafe { chunks.cell(CellId::new(i as u32)).as_ptr().read() };
            assert_eq!(value, [i as u64; 4]);
        }
        assert!(cells.iter().all(|&cell| cell % align_of::<[u64; 4]>() == 0));
        cells.sort_unstable();
        cells.dedup();
        assert_eq!(cells.len(), n, "a cell was handed out twice");
        let chunk_sizes: Vec<usize> = lock(&chunks.owned)
            .chunks
            .iter()
            .map(|c| c.0.len())
            .collect();
        // Nothing expected: chunks of 16 cells, the directory grown many times over.
        assert!(chunk_sizes.iter().all(|&len| len == MIN_CHUNK_CELLS));
        let max = MIN_CHUNK_CELLS;
        assert_eq!(chunks.bytes(), (n + fresh.len()) * 32);
        assert!(fresh.len() < max, "at most one chunk is partly unused");
    }

    #[test]
    fn chunks_are_a_64th_of_the_expected_entries_within_bounds() {
        let log2 = |expected| Geometry::of::<[u64; 4]>(expected).chunk_log2;
        assert_eq!(
            (log2(0), log2(64 * 100), log2(125_000), log2(usize::MAX)),
            (4, 6, 10, 11)
        );
        assert_eq!(Geometry::of::<[u8; 10_000]>(1 << 20).chunk_log2, 4);
        let g = Geometry::of::<u64>(64 * 1024);
        assert_eq!(
            (g.locate(0), g.locate(1023), g.locate(1024), g.locate(5000)),
            ((0, 0), (0, 1023), (1, 0), (4, 904))
        );
    }
}

/// loom model of the directory: a reader resolving cells while the writer's next chunk
/// grows the directory. Run with the loom models' flags (see `tests/loom.rs`):
/// `cargo test --release --lib raw::arena::loom_models`.
#[cfg(all(test, larder_loom))]
mod loom_models {
    use super::*;
    use crate::sync::AtomicU32;
    use loom::sync::Arc;

    #[test]
    fn directory_growth_vs_resolving_reader() {
        loom::model(|| {
            // No expected entries: chunks of 16 cells and a directory of 2, so the 33rd cell
            // needs a third chunk and a grown directory.
            let chunks = Arc::new(Chunks::<u64>::new(0));
            let mut fresh = Fresh::new();
            for i in 0..32 {
                let (cell, _) = fresh.cell(&chunks).expect("within the limit");
                // SAFETY: a fresh cell, used by nothing else yet.
                unsafe { cell.as_ptr().write(i) };
            }
            // The id the writer publishes, plus one (0: nothing yet).
            let published = Arc::new(AtomicU32::new(0));
            let reader = {
                let (chunks, published) = (Arc::clone(&chunks), Arc::clone(&published));
                loom::thread::spawn(move || {
                    // Cells handed out before the reader started resolve in any directory.
                    // SAFETY: written before the spawn; the chunks outlive this thread.
                    let early = unsafe { chunks.cell(CellId::new(5)).as_ptr().read() };
                    assert_eq!(early, 5);
                    let id = published.load(Ordering::Acquire);
                    if id != 0 {
                        // SAFETY: handed out, then published with Release, loaded with Acquire.
                        let cell = unsafe { chunks.cell(CellId::new(id - 1)) };
                        // SAFETY: written before its id was published with Release.
                        assert_eq!(unsafe { cell.as_ptr().read() }, 32);
                    }
                })
            };
            let (cell, id) = fresh.cell(&chunks).expect("within the limit");
            assert_eq!(id.get(), 32);
            // SAFETY: a fresh cell, used by nothing else yet.
            unsafe { cell.as_ptr().write(32) };
            published.store(id.get() + 1, Ordering::Release);
            reader.join().unwrap();
        });
    }
}
