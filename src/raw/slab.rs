//! Dense ids for a shard's entries: the index shared by the policy, the wheel and the shard.

use crate::raw::entry::Entry;

/// One occupied id: the published entry and the weight charged for it.
#[derive(Debug)]
pub(crate) struct Record<K, V> {
    pub(crate) entry: *const Entry<K, V>,
    pub(crate) weight: u64,
}

/// Id allocation with reuse, so policy and wheel arrays stay as dense as the shard is full.
#[derive(Debug)]
pub(crate) struct Slab<K, V> {
    records: Vec<Record<K, V>>,
    free: Vec<u32>,
}

impl<K, V> Default for Slab<K, V> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<K, V> Slab<K, V> {
    /// Stores `record` under a free id and returns the id.
    pub(crate) fn insert(&mut self, record: Record<K, V>) -> u32 {
        if let Some(id) = self.free.pop() {
            self.records[id as usize] = record;
            return id;
        }
        let id = u32::try_from(self.records.len()).expect("a shard holds fewer than 2^32 entries");
        self.records.push(record);
        id
    }

    pub(crate) fn get(&self, id: u32) -> &Record<K, V> {
        let record = &self.records[id as usize];
        debug_assert!(!record.entry.is_null(), "id {id} is free");
        record
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> &mut Record<K, V> {
        &mut self.records[id as usize]
    }

    /// Frees `id` and returns what it held.
    pub(crate) fn remove(&mut self, id: u32) -> Record<K, V> {
        let vacant = Record {
            entry: std::ptr::null(),
            weight: 0,
        };
        let record = std::mem::replace(&mut self.records[id as usize], vacant);
        debug_assert!(!record.entry.is_null(), "id {id} freed twice");
        self.free.push(id);
        record
    }

    /// Occupied ids (invariant checks, warm-up snapshots).
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (u32, &Record<K, V>)> {
        self.records
            .iter()
            .enumerate()
            .filter(|(_, record)| !record.entry.is_null())
            .map(|(id, record)| (id as u32, record))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<Record<K, V>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
    }
}
