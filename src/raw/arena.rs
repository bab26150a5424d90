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

use std::mem::MaybeUninit;
use std::ptr::NonNull;

use crate::sync::{lock, Mutex};

/// Cells in a shard's first chunk; each next chunk doubles, up to [`MAX_CHUNK_BYTES`].
const FIRST_CHUNK_CELLS: usize = 16;

/// Largest chunk: big enough that a shard of 125,000 `u64` entries needs few chunks, small
/// enough that the unused end of the last one is a fraction of a byte per entry.
const MAX_CHUNK_BYTES: usize = 64 << 10;

/// One chunk of uninitialised cells, owned by [`Chunks`].
struct Chunk<T>(NonNull<[MaybeUninit<T>]>);

// SAFETY: a chunk is plain memory: the values in its cells are owned and dropped by whoever
// holds the cell (an entry in a table, a retired batch), never by the chunk, so moving the
// chunk's ownership between threads moves no `T`.
unsafe impl<T> Send for Chunk<T> {}

/// The chunks of one shard: allocated under the shard's lock, freed when the last holder
/// (the shard, or a retired batch the collector has not run yet) lets go.
pub(crate) struct Chunks<T> {
    list: Mutex<Vec<Chunk<T>>>,
}

impl<T> Chunks<T> {
    pub(crate) fn new() -> Self {
        Self {
            list: Mutex::new(Vec::new()),
        }
    }

    /// A new chunk of `len` cells; returns its first cell.
    fn allocate(&self, len: usize) -> NonNull<T> {
        let mut cells: Vec<MaybeUninit<T>> = Vec::with_capacity(len);
        // SAFETY: `MaybeUninit` needs no initialisation, and the capacity is `len`.
        unsafe { cells.set_len(len) };
        let chunk = NonNull::from(Box::leak(cells.into_boxed_slice()));
        lock(&self.list).push(Chunk(chunk));
        chunk.cast::<T>()
    }

    /// Bytes of all chunks, cells in use or not.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        lock(&self.list)
            .iter()
            .map(|chunk| chunk.0.len())
            .sum::<usize>()
            * size_of::<T>()
    }
}

impl<T> Drop for Chunks<T> {
    fn drop(&mut self) {
        let list = std::mem::take(&mut *lock(&self.list));
        for chunk in list {
            // SAFETY: the chunk came from `Box::leak` in `allocate` and is freed once, here.
            // Whoever holds `Chunks` holds every cell's user too (see the module docs), so no
            // cell is in use any more; `MaybeUninit` cells drop nothing.
            drop(unsafe { Box::from_raw(chunk.0.as_ptr()) });
        }
    }
}

/// A shard's supply of cells never used yet: the rest of its newest chunk.
pub(crate) struct Fresh<T> {
    next: NonNull<T>,
    left: usize,
    next_chunk: usize,
}

impl<T> Fresh<T> {
    pub(crate) fn new() -> Self {
        Self {
            next: NonNull::dangling(),
            left: 0,
            next_chunk: FIRST_CHUNK_CELLS,
        }
    }

    /// An unused cell, from a new chunk of `chunks` when the current one is used up. The
    /// cell holds no value; it stays allocated as long as `chunks`.
    pub(crate) fn cell(&mut self, chunks: &Chunks<T>) -> NonNull<T> {
        if self.left == 0 {
            let max = (MAX_CHUNK_BYTES / size_of::<T>().max(1)).max(FIRST_CHUNK_CELLS);
            self.next = chunks.allocate(self.next_chunk);
            self.left = self.next_chunk;
            self.next_chunk = (self.next_chunk * 2).min(max);
        }
        let cell = self.next;
        self.left -= 1;
        // SAFETY: `cell` is one of the `left + 1` cells at the end of a live chunk, so the
        // next one is in that chunk or one past its end.
        self.next = unsafe { cell.add(1) };
        cell
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
    fn cells_are_distinct_aligned_and_chunks_grow_to_a_bound() {
        let chunks = Chunks::<[u64; 4]>::new();
        let mut fresh = Fresh::new();
        let n = if cfg!(miri) { 600 } else { 20_000 };
        let mut cells: Vec<usize> = (0..n)
            .map(|i| {
                let cell = fresh.cell(&chunks);
                // SAFETY: a fresh cell is valid for writes of one `T`, used by nothing else.
                unsafe { cell.as_ptr().write([i as u64; 4]) };
                cell.as_ptr() as usize
            })
            .collect();
        assert!(cells.iter().all(|&cell| cell % align_of::<[u64; 4]>() == 0));
        cells.sort_unstable();
        cells.dedup();
        assert_eq!(cells.len(), n, "a cell was handed out twice");
        let chunk_sizes: Vec<usize> = lock(&chunks.list).iter().map(|c| c.0.len()).collect();
        let max = MAX_CHUNK_BYTES / 32;
        assert_eq!(chunk_sizes[..2], [FIRST_CHUNK_CELLS, FIRST_CHUNK_CELLS * 2]);
        assert!(chunk_sizes.iter().all(|&len| len <= max));
        assert_eq!(chunks.bytes(), (n + fresh.len()) * 32);
        assert!(fresh.len() < max, "at most one chunk is partly unused");
    }
}
