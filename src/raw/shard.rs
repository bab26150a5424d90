//! One shard: a lock-free-read table plus the write-side state behind a short mutex.

use std::borrow::Borrow;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::policy::miniature::WindowShare;
use crate::policy::{Eviction, Members, Policy};
use crate::raw::arena::{CellId, Chunks};
use crate::raw::budget::Budget;
use crate::raw::entry::{Entry, NEVER};
use crate::raw::retired::Retired;
use crate::raw::slab::Slab;
use crate::raw::table::{Probe, Table, TableCounts};
use crate::stats::WriteTally;
use crate::sync::{lock_shard, AtomicU64, Guard, Ordering, ShardMutex, Shared};
use crate::time::wheel::TimerWheel;
use crate::RemovalCause;

/// Wheel work done per write: enough to keep up with expiries at any realistic write rate
/// while keeping the critical section short. `run_pending_tasks` drains the rest.
pub(crate) const WHEEL_WORK_PER_WRITE: usize = 64;

/// What one write call left to settle once the caller has released every lock: the weight
/// that left the shards, and the entries that left, for the eviction listener, which runs
/// outside the locks (`RawCache::finish`). Filled in place through `&mut` from the public
/// method down, never moved between the layers of a write. Each entry in `list` is already
/// retired: it stays readable only as long as the guard `'g` is pinned. (The statistics are
/// counted in the shards, under their locks: see [`WriteTally`].)
#[derive(Debug)]
pub(crate) struct Departures<'g, K, V> {
    /// Filled only when someone listens.
    pub(crate) list: Vec<(&'g Entry<K, V>, RemovalCause)>,
    keep: bool,
    /// Weight that left the shards, to take off the global total.
    pub(crate) weight: u64,
    /// The shard has seen enough inserts that a hit-ratio sample may be complete.
    pub(crate) sample_due: bool,
    /// This thread handed enough garbage to the collector that its bag should be flushed
    /// once no lock is held (see `Retired::push`).
    pub(crate) flush_due: bool,
    /// A panic of the clock while other shards made room for this write, re-raised once the
    /// write is settled (see `RawCache::make_room_elsewhere`).
    pub(crate) clock_panic: Option<Box<dyn std::any::Any + Send>>,
    /// The new entry whose shard left the eviction it needs to others (see [`Candidate`]).
    /// Here rather than in `Shard::insert`'s result, which every write moves.
    pub(crate) candidate: Option<Candidate>,
}

/// A new entry whose shard left the eviction it needs to other shards (the shard was far
/// below its share, or held nothing else): it duels each victim they would give up for it,
/// as it would duel its own shard's victim (see `Shard::evict_one`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    /// The entry's slab id in its own shard.
    id: u32,
    /// Its key's short hash, as the sketch and the table know it.
    hash: u64,
    /// The entry's address, which tells it from a later entry under the same id and short
    /// hash (a rewrite of its key, or another key that took the id after a removal: session
    /// 24's review showed `Shard::reject` evicting both). The inserting thread stays pinned
    /// until the candidate's duels are over, so its cell is not reused meanwhile.
    address: usize,
    /// Its weight, as charged to the budget.
    weight: u64,
    /// Its own shard's frequency estimate.
    frequency: u8,
    /// Its own shard's ghost recognised it: it wins its duels outright unless it is
    /// heavier than the victim.
    returning: bool,
}

/// How [`Shard::evict_one`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Duel {
    /// Weight left the shard: an expired entry, or the victim the candidate beat.
    MadeRoom,
    /// The shard holds no entry.
    Empty,
    /// The victim was more frequent than the candidate, which should leave instead;
    /// `remember`: the candidate was no heavier than the victim (the ghost may keep it).
    Lost { remember: bool },
}

impl<'g, K: 'g, V: 'g> Departures<'g, K, V> {
    pub(crate) fn new(keep: bool) -> Self {
        Self {
            list: Vec::new(),
            keep,
            weight: 0,
            sample_due: false,
            flush_due: false,
            clock_panic: None,
            candidate: None,
        }
    }

    fn push(&mut self, entry: &'g Entry<K, V>, cause: RemovalCause) {
        if self.keep {
            self.list.push((entry, cause));
        }
    }
}

/// Write-side state, only touched under the shard mutex.
struct State<K, V> {
    counts: TableCounts,
    slab: Slab,
    policy: Policy,
    wheel: TimerWheel,
    weight: u64,
    /// Inserts since the shard last asked for a hit-ratio sample.
    inserts_since_sample: u32,
    retired: Retired<K, V>,
}

impl<K, V> std::fmt::Debug for State<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("weight", &self.weight)
            .field("live", &self.counts.live())
            .finish_non_exhaustive()
    }
}

/// Frees for reuse the slab ids the policy no longer holds (see `Policy::take_released`).
#[inline]
fn release_ids<K, V>(state: &mut State<K, V>) {
    if let Some(released) = state.policy.take_released() {
        for id in released {
            state.slab.release(id);
        }
    }
}

/// The policy's view of the shard's entries, lent by the lock holder.
struct SlabMembers<'a, K, V> {
    slab: &'a Slab,
    counts: &'a TableCounts,
    table: &'a Table<K, V>,
    guard: &'a Guard,
}

impl<'a, K: 'static, V: 'static> SlabMembers<'a, K, V> {
    /// An occupied id's live entry: only the lock holder (who lent us the slab) could
    /// retire it, and it vacates the id first.
    fn entry(&self, id: u32) -> &'a Entry<K, V> {
        self.table
            .entry_at(self.counts, self.slab.slot(id), self.guard)
    }
}

impl<K: 'static, V: 'static> Members for SlabMembers<'_, K, V> {
    fn weight(&self, id: u32) -> u64 {
        self.slab.weight(id)
    }
    fn hash(&self, id: u32) -> u64 {
        u64::from(self.entry(id).hash)
    }
    fn take_access(&self, id: u32) -> (u8, u64) {
        let entry = self.entry(id);
        (entry.take_access(), u64::from(entry.hash))
    }
}

/// One shard of a cache.
#[derive(Debug)]
pub(crate) struct Shard<K, V> {
    /// On cache lines of its own: every read loads the slot array's pointer from here, and
    /// the mutex and the state beside it are written by every write. Sharing a line (the
    /// table sat at offset 0, the mutex at 16), each write to a shard cost the next read of
    /// it on another core a coherence miss.
    ///
    /// Its entries lie in cells of the shard's chunks, which it holds (as does `state`'s
    /// `Retired`, and every batch the collector has not run yet), so the chunks outlive
    /// whichever of them drops last.
    table: CachePadded<Table<K, V>>,
    state: ShardMutex<State<K, V>>,
    /// Mirror of `State::weight`, readable without the lock (global eviction, statistics).
    weight: AtomicU64,
    /// What writes did here; written under the lock, read without it.
    tally: WriteTally,
    /// Most entries the shard holds, whatever the budget (see `SHARD_ENTRY_LIMIT`).
    entry_limit: usize,
}

impl<K, V> Shard<K, V>
where
    K: Eq + 'static,
    V: 'static,
{
    /// A shard of `capacity` weight expected to hold about `expected_entries` entries;
    /// `unit_weights` when every entry weighs 1 (count mode).
    pub(crate) fn new(
        capacity: u64,
        expected_entries: usize,
        seed: u64,
        now: u64,
        unit_weights: bool,
    ) -> Self {
        // Count mode knows how many entries the shard will hold; byte mode does not.
        let expected = if unit_weights {
            usize::try_from(capacity).unwrap_or(usize::MAX)
        } else {
            0
        };
        // Chunks sized for the entries the shard's share allows (each is charged at least
        // the entry overhead in byte mode), not for the sketch's first guess.
        let allowed = if unit_weights {
            expected
        } else {
            usize::try_from(capacity / crate::raw::entry_overhead::<K, V>()).unwrap_or(usize::MAX)
        };
        let chunks = Arc::new(Chunks::new(allowed));
        let (table, counts) = Table::new(expected, Arc::clone(&chunks));
        Self {
            table: CachePadded::new(table),
            state: ShardMutex::new(State {
                counts,
                slab: Slab::new(unit_weights, expected),
                policy: Policy::new(capacity, expected_entries, seed).expecting(expected),
                wheel: TimerWheel::new(now).expecting(expected),
                weight: 0,
                inserts_since_sample: 0,
                retired: Retired::new(capacity, unit_weights, chunks),
            }),
            weight: AtomicU64::new(0),
            tally: WriteTally::default(),
            entry_limit: super::SHARD_ENTRY_LIMIT,
        }
    }

    /// The same shard, holding at most `entry_limit` entries.
    pub(crate) fn limited_to(mut self, entry_limit: usize, cell_limit: usize) -> Self {
        self.entry_limit = entry_limit.clamp(1, super::SHARD_ENTRY_LIMIT);
        lock_shard(&self.state).retired.limit_cells(cell_limit);
        self
    }

    /// Weight of the shard's live entries.
    pub(crate) fn weight(&self) -> u64 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Accesses between the agings of the shard's sketch.
    #[cfg(test)]
    pub(crate) fn sketch_period(&self) -> usize {
        lock_shard(&self.state).policy.sketch_period()
    }

    /// The policy's view of the entries, for the lock holder that owns `slab`.
    fn members<'a>(
        &'a self,
        slab: &'a Slab,
        counts: &'a TableCounts,
        guard: &'a Guard,
    ) -> SlabMembers<'a, K, V> {
        SlabMembers {
            slab,
            counts,
            table: &self.table,
            guard,
        }
    }

    /// The live, unexpired entry for `key`, its read recorded. Takes no lock.
    #[inline]
    pub(crate) fn get<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        now: impl FnOnce() -> u64,
        guard: &'g Guard,
    ) -> Option<&'g Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let entry = self.peek(hash, key, now, guard)?;
        entry.record_access();
        Some(entry)
    }

    /// The live, unexpired entry for `key`, without recording a read. Takes no lock.
    /// `now` is called only if the entry has a TTL.
    #[inline]
    pub(crate) fn peek<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        now: impl FnOnce() -> u64,
        guard: &'g Guard,
    ) -> Option<&'g Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let entry = self.table.find(hash, key, guard)?.entry;
        if entry.expires_at != NEVER && entry.is_expired_at(now()) {
            return None;
        }
        Some(entry)
    }

    /// Publishes `entry` charged at `weight`, replacing any entry of the same key. What the
    /// insert adds and what leaves the shard (a replaced entry, expired and evicted ones)
    /// are settled on `budget` in one write as the critical section ends (see
    /// `budget::Pending`), none when they cancel: a rewrite at the same weight, or a new
    /// key that evicts one of its weight, touches no shared counter. Until then concurrent
    /// writers do not see this insert's weight, which is the documented overshoot.
    /// `clock` is called at most once, only if the shard's wheel holds entries, and before
    /// the shard changes. While the cache is over
    /// `budget`, evicts from this shard before unlocking (see the loop for when it leaves
    /// that to other shards).
    ///
    /// `window` is the admission window's current share.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn insert<'g>(
        &self,
        entry: Entry<K, V>,
        weight: u64,
        clock: impl Fn() -> u64,
        budget: &Budget,
        window: WindowShare,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> Result<(), Box<Entry<K, V>>> {
        // The probe below needs this slot: let its miss overlap with taking the lock.
        self.table.prefetch_home(u64::from(entry.hash), guard);
        let mut state = lock_shard(&self.state);
        let state = &mut *state;
        let mut pending = budget.pending();
        state.policy.set_window(window);
        state.inserts_since_sample += 1;
        // Ask often enough for small caches to adapt, rarely enough to cost nothing.
        let sample_every = (state.policy.len() / 4).clamp(16, 1024) as u32;
        if state.inserts_since_sample >= sample_every {
            state.inserts_since_sample = 0;
            out.sample_due = true;
        }
        let expires_at = entry.expires_at;
        // The table and the sketch key entries by their short hash, which eviction reads
        // back from the entry.
        let sketch_hash = u64::from(entry.hash);
        let tally = &self.tally;
        // User code runs before the shard changes, so a panic in it leaves the shard as it
        // was (what `Cache`'s `UnwindSafe` promises): the clock is read here, and the probe
        // below runs the key's `Eq`; the wheel advances only once the write is done (it
        // advanced first until session 21, and an `Eq` that panicked then lost the weight of
        // the entries it had expired). An entry with an expiry is always in the wheel, so a
        // replaced entry's expiry is checked against this reading (the wheel was not empty).
        let wheel_busy = state.wheel.len() != 0;
        // The new entry's own expiry counts too: a zero-TTL entry that its own insert evicts
        // is reported expired (session 23's review: read as 0, it was "evicted").
        let now = if wheel_busy || expires_at != NEVER {
            clock()
        } else {
            0
        };
        // A new key's id, and whether the ghost recognised it.
        let mut arrived = None;
        let probe = self
            .table
            .probe(&state.counts, sketch_hash, &entry.key, guard);
        // Built in its cell only once the user's `Eq` has run: a panic there left the cell
        // taken until the cache was dropped (session 24's review: a million panicking
        // writes leaked 40 MB, and about 2^26 left the shard without cells for good).
        // No free cell (all taken by entries and by retired ones a pinned reader may still
        // see): nothing has changed yet, and the entry goes back to the caller.
        // Boxed, so that the result stays small on the path every write takes (the entry
        // itself in it cost an update 8 instructions of moves under cachegrind).
        let Some(cell) = state.retired.take_cell() else {
            return Err(Box::new(entry));
        };
        let mut entry = cell.place(entry);
        match probe {
            Probe::Found(found) => {
                let old = found.entry;
                let id = old.id();
                entry.inherit(old);
                // The write is an access (see `Policy::on_reweigh`).
                entry.record_access();
                debug_assert!(
                    old.expires_at == NEVER || wheel_busy,
                    "an expiring entry off the wheel"
                );
                let was_expired = old.expires_at != NEVER && old.is_expired_at(now);
                let was_scheduled = old.expires_at != NEVER;
                let old_weight = state.slab.reweigh(id, weight);
                pending.add(weight);
                pending.remove(old_weight);
                let hash = entry.hash;
                // Same slot: the slab keeps pointing at it.
                // SAFETY: a whole entry of the same key and hash, built in a cell of this shard's
                // chunks (which outlive the table), never published.
                let old = unsafe {
                    self.table.replace(
                        &mut state.counts,
                        found.index,
                        entry.into_cell(),
                        hash,
                        guard,
                    )
                };
                state.policy.on_reweigh(id, old_weight, weight);
                state.weight = state.weight - old_weight + weight;
                let cause = if was_expired {
                    RemovalCause::Expired
                } else {
                    RemovalCause::Replaced
                };
                self.retire(&mut state.retired, old, old_weight, cause, guard, out);
                // TTL-free entries never touch the wheel: no memory traffic for them.
                if was_scheduled || expires_at != NEVER {
                    state.wheel.schedule(id, expires_at);
                }
                // A key whose entry had expired counts as new (the expired one as an expiration).
                WriteTally::add(
                    if was_expired {
                        &tally.inserts
                    } else {
                        &tally.updates
                    },
                    1,
                );
            }
            Probe::Vacant(vacant) => {
                // A new key: `on_insert` below counts it in the sketch, a miss on a large
                // shard, which can overlap with the slab and table updates before it.
                state.policy.prefetch_frequency(sketch_hash);
                let id = state.slab.insert(weight);
                entry.set_id(id);
                let slab = &mut state.slab;
                let hash = entry.hash;
                // SAFETY: a whole entry of that hash, built in a cell of this shard's chunks
                // (which outlive the table), never published; its key is not in the table (just
                // probed).
                let slot = unsafe {
                    self.table.insert_vacant(
                        &mut state.counts,
                        vacant,
                        entry.into_cell(),
                        hash,
                        guard,
                        |moved, slot| {
                            slab.set_slot(moved, slot);
                        },
                    )
                };
                slab.set_slot(id, slot);
                pending.add(weight);
                let arrival = state.policy.on_insert(id, sketch_hash, weight);
                arrived = Some((id, arrival.returning));
                if arrival.returning {
                    WriteTally::add(&tally.returning, 1);
                }
                if arrival.recalled {
                    WriteTally::add(&tally.recalled, 1);
                }
                state.weight += weight;
                if expires_at != NEVER {
                    state.wheel.schedule(id, expires_at);
                }
                WriteTally::add(&tally.inserts, 1);
                if state.policy.len() > self.entry_limit {
                    self.evict_to_entry_limit(state, now, guard, out);
                }
            }
        }
        if wheel_busy {
            self.expire_locked(state, now, WHEEL_WORK_PER_WRITE, guard, out);
        }
        loop {
            pending.remove(std::mem::take(&mut out.weight));
            if !pending.is_over() {
                break;
            }
            // Steady state: the inserting shard pays for its insert, through the policy's
            // admission duel (its window just grew). Only a shard far below its share (skew)
            // or holding nothing but the new entry (one entry may use the whole budget)
            // leaves the eviction to others, and then the new entry, if still here, duels
            // their victims (session 24's review: it displaced them unopposed, so a scan of
            // entries heavier than half a shard's share flushed a hot set held elsewhere).
            if state.policy.len() <= 1 || state.weight < budget.share / 2 {
                let Some((id, returning)) = arrived.filter(|&(id, _)| state.slab.is_occupied(id))
                else {
                    break;
                };
                // Under the lock since its insert, the id still names the new entry.
                let members = self.members(&state.slab, &state.counts, guard);
                let address = std::ptr::from_ref(members.entry(id)) as usize;
                // Already expired (a zero TTL): it leaves at once, as expired, and duels no
                // one (session 24's review: it was dueled, and reported evicted).
                if expires_at != NEVER && now >= expires_at {
                    arrived = None;
                    state.policy.on_remove(id, state.slab.weight(id));
                    self.unlink(state, id, RemovalCause::Expired, guard, out);
                    release_ids(state);
                    continue;
                }
                out.candidate = Some(Candidate {
                    id,
                    hash: sketch_hash,
                    address,
                    weight: state.slab.weight(id),
                    frequency: state.policy.frequency(sketch_hash),
                    returning,
                });
                break;
            }
            let Some(eviction) =
                state
                    .policy
                    .evict(&self.members(&state.slab, &state.counts, guard))
            else {
                // The hands may have released removed ids before finding the shard empty.
                release_ids(state);
                break;
            };
            self.take_victim(state, eviction, now, guard, out);
        }
        // One write to the shared counter, none when the insert paid for itself.
        drop(pending);
        self.weight.store(state.weight, Ordering::Relaxed);
        Ok(())
    }

    /// Evicts until the shard is back within its entry limit, whatever the budget: in byte
    /// mode the weights alone do not keep a shard within its ids.
    #[cold]
    #[inline(never)]
    fn evict_to_entry_limit<'g>(
        &self,
        state: &mut State<K, V>,
        now: u64,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) {
        while state.policy.len() > self.entry_limit && self.evict_locked(state, now, guard, out) {}
    }

    /// Removes `key`'s entry. Returns it if it was live; an expired one is removed as expired.
    pub(crate) fn remove<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        now: u64,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> Option<&'g Entry<K, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut state = lock_shard(&self.state);
        let state = &mut *state;
        let entry = self.table.find(hash, key, guard)?.entry;
        let live = !entry.is_expired_at(now);
        let cause = if live {
            RemovalCause::Removed
        } else {
            RemovalCause::Expired
        };
        let id = entry.id();
        state.policy.on_remove(id, state.slab.weight(id));
        self.unlink(state, id, cause, guard, out);
        release_ids(state);
        self.weight.store(state.weight, Ordering::Relaxed);
        live.then_some(entry)
    }

    /// Makes room for another shard's insert: expires what is due here (bounded work, as a
    /// write of its own would), and evicts one entry chosen by the policy only if that freed
    /// nothing and `candidate`, the new entry it makes room for (if any), wins the admission
    /// duel against that victim. Until session 22 it evicted at once, so the expired entries
    /// of a shard nobody wrote kept their share of the budget while live entries elsewhere
    /// left for them.
    pub(crate) fn evict_one<'g>(
        &self,
        candidate: Option<Candidate>,
        clock: impl Fn() -> u64,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> Duel {
        let mut state = lock_shard(&self.state);
        let state = &mut *state;
        let before = state.weight;
        // The clock only matters to entries with an expiry, which are all on the wheel.
        let now = if state.wheel.len() != 0 { clock() } else { 0 };
        self.expire_locked(state, now, WHEEL_WORK_PER_WRITE, guard, out);
        let outcome = if state.weight < before {
            Duel::MadeRoom
        } else {
            let members = self.members(&state.slab, &state.counts, guard);
            let lost = candidate.map(|new| {
                state
                    .policy
                    .yields_to(new.frequency, new.weight, new.returning, &members)
            });
            match lost {
                Some(None) => Duel::Empty,
                Some(Some((false, victim_weight))) => Duel::Lost {
                    remember: candidate.is_some_and(|new| new.weight <= victim_weight),
                },
                None | Some(Some((true, _))) => {
                    if self.evict_locked(state, now, guard, out) {
                        Duel::MadeRoom
                    } else {
                        Duel::Empty
                    }
                }
            }
        };
        release_ids(state);
        self.weight.store(state.weight, Ordering::Relaxed);
        outcome
    }

    /// Evicts `candidate`, a new entry of this shard that lost its duel in another shard,
    /// counted as an admission rejection. False if it is gone already (removed, replaced
    /// by a later write of its key, or evicted here meanwhile), whatever entry holds its id
    /// and short hash now.
    ///
    /// An entry whose TTL has run out at `now` leaves as expired instead, not counted as a
    /// rejection (the fuzzer's oracle: an expired entry is never reported evicted).
    pub(crate) fn reject<'g>(
        &self,
        candidate: Candidate,
        remember: bool,
        now: u64,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> bool {
        let mut state = lock_shard(&self.state);
        let state = &mut *state;
        let id = candidate.id;
        if !state.slab.is_occupied(id) {
            return false;
        }
        let entry = self.members(&state.slab, &state.counts, guard).entry(id);
        if std::ptr::from_ref(entry) as usize != candidate.address {
            return false;
        }
        let weight = state.slab.weight(id);
        let cause = if entry.is_expired_at(now) {
            state.policy.on_remove(id, weight);
            RemovalCause::Expired
        } else {
            state.policy.reject(id, candidate.hash, weight, remember);
            WriteTally::add(&self.tally.admission_rejections, 1);
            RemovalCause::Evicted
        };
        self.unlink(state, id, cause, guard, out);
        release_ids(state);
        self.weight.store(state.weight, Ordering::Relaxed);
        true
    }

    /// Evicts one entry chosen by the policy, for the lock holder, who publishes the
    /// weight. Returns false if the shard is empty.
    fn evict_locked<'g>(
        &self,
        state: &mut State<K, V>,
        now: u64,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> bool {
        let Some(eviction) = state
            .policy
            .evict(&self.members(&state.slab, &state.counts, guard))
        else {
            // The hands may have released removed ids before finding the shard empty.
            release_ids(state);
            return false;
        };
        self.take_victim(state, eviction, now, guard, out);
        true
    }

    /// Takes out the entry the policy chose to evict: as expired if its TTL has run out at
    /// `now` (the wheel had not reached it yet), else as evicted, counting a lost admission
    /// duel. The entry itself is read only if it has an expiry. (Every victim was reported
    /// evicted until session 22.)
    #[inline]
    fn take_victim<'g>(
        &self,
        state: &mut State<K, V>,
        eviction: Eviction,
        now: u64,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) {
        let expired = state.wheel.is_scheduled(eviction.id)
            && self
                .members(&state.slab, &state.counts, guard)
                .entry(eviction.id)
                .is_expired_at(now);
        let cause = if expired {
            RemovalCause::Expired
        } else {
            WriteTally::add(
                &self.tally.admission_rejections,
                u64::from(eviction.rejected),
            );
            RemovalCause::Evicted
        };
        self.unlink(state, eviction.id, cause, guard, out);
        state.slab.release(eviction.id);
        // The hands may have released removed ids on their way.
        release_ids(state);
    }

    /// Removes entries whose TTL ran out, doing at most about `max_work` wheel steps.
    /// Returns true if the wheel caught up with `now`.
    pub(crate) fn expire<'g>(
        &self,
        clock: impl Fn() -> u64,
        max_work: usize,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> bool {
        let mut state = lock_shard(&self.state);
        // Read under the lock: no earlier lock holder advanced the wheel past this reading.
        let now = clock();
        let done = self.expire_locked(&mut state, now, max_work, guard, out);
        self.weight.store(state.weight, Ordering::Relaxed);
        // Maintenance is also when garbage the shard batched goes to the collector (and
        // `RawCache::run_pending_tasks` flushes the thread's bag after every shard).
        out.flush_due |= state.retired.hand_over(guard);
        done
    }

    fn expire_locked<'g>(
        &self,
        state: &mut State<K, V>,
        now: u64,
        max_work: usize,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) -> bool {
        if state.wheel.len() == 0 {
            return true;
        }
        let mut expired = Vec::new();
        let members = self.members(&state.slab, &state.counts, guard);
        let expiry_of = |id| members.entry(id).expires_at;
        let done = state.wheel.advance(now, max_work, expiry_of, &mut expired);
        for id in expired {
            state.policy.on_remove(id, state.slab.weight(id));
            self.unlink(state, id, RemovalCause::Expired, guard, out);
        }
        release_ids(state);
        done
    }

    /// Removes every entry.
    pub(crate) fn clear<'g>(&self, now: u64, guard: &'g Guard, out: &mut Departures<'g, K, V>) {
        let mut state = lock_shard(&self.state);
        let state = &mut *state;
        let retired = &mut state.retired;
        self.table.clear(&mut state.counts, guard, |entry, cell| {
            // SAFETY: unlinked from the table just now, under the lock; retired once, here.
            let departed = unsafe { entry.deref() };
            let cause = if departed.is_expired_at(now) {
                RemovalCause::Expired
            } else {
                RemovalCause::Removed
            };
            self.count_departure(cause);
            out.push(departed, cause);
            // SAFETY: unreachable from the table, and retired once, here. The weight is
            // settled below for the whole shard; 0 keeps the batch to its length limit (and
            // the thread's bag is flushed after every shard by `RawCache::clear`).
            let _ = unsafe { retired.push(guard, cell, 0) };
        });
        let _ = retired.hand_over(guard);
        out.weight += state.weight;
        state.slab = state.slab.emptied();
        state.policy.clear();
        state.wheel = TimerWheel::new(now).expecting(state.wheel.expected());
        state.weight = 0;
        self.weight.store(0, Ordering::Relaxed);
    }

    /// Takes `id` (already out of the policy's order) out of the table and wheel, vacates it
    /// in the slab, and retires its entry. The caller releases the id (see `release_ids`).
    fn unlink<'g>(
        &self,
        state: &mut State<K, V>,
        id: u32,
        cause: RemovalCause,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) {
        let (slot, weight) = state.slab.remove(id);
        state.wheel.deschedule(id);
        state.weight -= weight;
        out.weight += weight;
        let entry = self.table.remove_at(&mut state.counts, slot, guard);
        self.retire(&mut state.retired, entry, weight, cause, guard, out);
    }

    #[inline]
    fn retire<'g>(
        &self,
        retired: &mut Retired<K, V>,
        (entry, cell): (Shared<'g, Entry<K, V>>, CellId),
        weight: u64,
        cause: RemovalCause,
        guard: &'g Guard,
        out: &mut Departures<'g, K, V>,
    ) {
        self.count_departure(cause);
        // SAFETY: the entry is unreachable from the table (unlinked or replaced by the caller
        // under the lock), so no new reader can find it, and it is retired once, here. The
        // collector frees it only after every reader pinned before the batch is handed over
        // has unpinned, including `guard`, which keeps the reference in `out` valid.
        unsafe {
            out.push(entry.deref(), cause);
            out.flush_due |= retired.push(guard, cell, weight);
        }
    }

    /// Tallies an entry leaving for `cause`. Only under the lock (see [`WriteTally`]); a
    /// replaced entry is counted as its key's update.
    #[inline]
    fn count_departure(&self, cause: RemovalCause) {
        let counter = match cause {
            RemovalCause::Evicted => &self.tally.evictions,
            RemovalCause::Expired => &self.tally.expirations,
            RemovalCause::Removed => &self.tally.removals,
            RemovalCause::Replaced => return,
        };
        WriteTally::add(counter, 1);
    }

    /// What writes did in this shard.
    pub(crate) fn tally(&self) -> &WriteTally {
        &self.tally
    }

    /// Appends each live, unexpired entry with the policy's frequency estimate for it: the
    /// sketch's count plus the reads the CLOCK hand has not fed into the sketch yet.
    pub(crate) fn frequencies<'g>(
        &self,
        now: u64,
        guard: &'g Guard,
        out: &mut Vec<(u8, &'g Entry<K, V>)>,
    ) {
        let state = lock_shard(&self.state);
        self.table.for_each(guard, |shared| {
            // SAFETY: reachable from the table. Once the lock is released it may be retired,
            // but only through the epoch collector, which frees it after `guard` (pinned
            // before this call) is dropped: the reference is valid for `'g`.
            let entry: &'g Entry<K, V> = unsafe { shared.deref() };
            if entry.expires_at == NEVER || !entry.is_expired_at(now) {
                let estimate =
                    state.policy.frequency(u64::from(entry.hash)) + entry.pending_reads();
                out.push((estimate, entry));
            }
        });
    }

    /// Number of live entries (including expired ones the wheel has not reached).
    pub(crate) fn len(&self) -> usize {
        lock_shard(&self.state).counts.live()
    }

    /// Bytes of shard metadata outside the entries themselves.
    pub(crate) fn metadata_bytes(&self, guard: &Guard) -> usize {
        let state = lock_shard(&self.state);
        self.table.slot_bytes(guard)
            + self.table.directory_bytes()
            + state.slab.heap_bytes()
            + state.policy.heap_bytes()
            + state.wheel.heap_bytes()
            + state.retired.heap_bytes()
    }

    /// See [`Table::displacement`].
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn displacement(&self, guard: &Guard) -> (usize, usize) {
        self.table.displacement(guard)
    }

    /// Checks the shard's internal invariants; panics with a description if one fails.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    pub(crate) fn validate(&self, guard: &Guard) {
        let state = lock_shard(&self.state);
        let mut in_table = 0usize;
        let mut table_weight = 0u64;
        self.table.for_each(guard, |shared| {
            // SAFETY: reachable from the table under the lock.
            let entry = unsafe { shared.deref() };
            let id = entry.id();
            let slot = state.slab.slot(id);
            assert!(
                std::ptr::eq(self.table.entry_at(&state.counts, slot, guard), entry),
                "slab id {id} does not point back"
            );
            table_weight += state.slab.weight(id);
            in_table += 1;
        });
        assert_eq!(in_table, state.counts.live(), "live count drifted");
        assert_eq!(
            state.slab.occupied().count(),
            in_table,
            "slab holds stale ids"
        );
        assert_eq!(state.policy.len(), in_table, "policy lost or kept ids");
        assert_eq!(table_weight, state.weight, "shard weight drifted");
        assert_eq!(self.weight(), state.weight, "weight mirror drifted");
    }
}
