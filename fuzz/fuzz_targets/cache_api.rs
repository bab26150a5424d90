//! The whole `Cache` API against a reference model, single-threaded, with a manual clock.
//!
//! The model is exact, not merely permissive: an eviction listener reports every entry that
//! leaves (evicted, expired, removed, replaced), so the model knows precisely which keys the
//! cache holds. After every step: each read agrees with the model, `len` and the stats add
//! up, the weight is within budget, and `validate()` finds the engine's invariants intact.
//!
//! Beyond safety it checks what the listener says and when:
//! - every departure is of a value the model holds (or one a store just displaced), reported
//!   exactly once, with the right cause: `Expired` only for an entry due by the clock's
//!   reading, `Evicted`/`Removed`/`Replaced` only for a live one, `Replaced` for (and only
//!   for) the live value an insert of its key displaced, `Removed` only by `remove` of that
//!   key or `clear`, nothing at all from reads, `hottest`, clock moves or a refused insert;
//! - the statistics match the listener and the model cause by cause (`expirations`,
//!   `evictions`, `removals`, `updates`, `inserts`, `hits`, `misses`, `loads`), and a refused
//!   (too heavy) insert changes none of them;
//! - liveness: after `run_pending_tasks()` with the clock at its highest reading, no due entry
//!   is held (`len` is the model's unexpired count: each due entry reported `Expired` once);
//!   a write at the clock's highest reading leaves no other due entry in its shard, nor in a
//!   shard it evicted from ("a shard asked to make room for another's insert expires its due
//!   entries before evicting a live one"), when that shard had at most
//!   `WRITE_LIVENESS_ENTRIES` entries on its wheel (64 wheel steps per write: ample for that
//!   few); shards are the top bits of the key's hash, as the crate documentation says;
//! - clock leaps of weeks, years and centuries (to the clock's end, `u64::MAX`), and jumps
//!   back by minutes or hours.
#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use larder::{Cache, InsertErrorKind, ManualClock, RemovalCause, Stats};
use libfuzzer_sys::fuzz_target;

/// Deterministic hashing, so every crash reproduces.
type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// Values carry a unique id (so departures are matched exactly) and a weight for byte mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Value {
    id: u32,
    weight: u32,
}

const DAY: u64 = 86_400;
const YEAR: u64 = 365 * DAY;

const TTLS: [Duration; 12] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_secs(1),
    Duration::from_secs(60),
    Duration::from_secs(3600),
    Duration::from_secs(DAY * 3),
    Duration::from_nanos(u64::MAX - 5),
    Duration::MAX,
    // Beyond the top level (6.5 days): the overflow bucket.
    Duration::from_secs(DAY * 30),
    Duration::from_secs(YEAR * 2),
    Duration::from_secs(90),
];

const STEPS: [Duration; 6] = [
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_millis(900),
    Duration::from_secs(61),
    Duration::from_secs(3601),
    Duration::from_secs(DAY * 2),
];

/// Clock leaps between two writes, up to the clock's end (4 × 400 years saturates).
const LEAPS: [Duration; 5] = [
    Duration::from_secs(DAY * 7),
    Duration::from_secs(DAY * 30),
    Duration::from_secs(YEAR),
    Duration::from_secs(YEAR * 100),
    Duration::from_secs(YEAR * 400),
];

/// Entries on the wheel (due or not) below which one write must catch the wheel up.
const WRITE_LIVENESS_ENTRIES: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        key: u8,
        weight: u16,
    },
    InsertWithTtl {
        key: u8,
        weight: u16,
        ttl: u8,
    },
    Get {
        key: u8,
    },
    ContainsKey {
        key: u8,
    },
    Remove {
        key: u8,
    },
    GetOrInsert {
        key: u8,
        weight: u16,
    },
    TryGetOrInsert {
        key: u8,
        weight: u16,
        fail: bool,
    },
    Advance {
        step: u8,
        times: u8,
    },
    /// Sets the clock back (a clock that jumps); the cache must stay consistent.
    JumpBack {
        by: u8,
    },
    RunPendingTasks,
    Clear,
    /// Moves the clock forward by weeks to centuries.
    Leap {
        unit: u8,
        times: u8,
    },
    /// Sets the clock back by minutes (`by` × 1 min, so up to about 4 h).
    JumpBackFar {
        by: u8,
    },
    Hottest {
        n: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Count mode (`max_entries`) or byte mode (`max_bytes` with a weigher).
    bytes: bool,
    capacity: u8,
    shards: u8,
    default_ttl: Option<u8>,
    ops: Vec<Op>,
}

/// Absolute expiry as the cache computes it: saturating, and "never" for the largest TTLs.
fn expiry(now: u64, ttl: Option<Duration>) -> u64 {
    match ttl.map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)) {
        None | Some(u64::MAX) => u64::MAX,
        Some(nanos) => now.saturating_add(nanos).min(u64::MAX - 1),
    }
}

/// Whether an entry expiring at `expires` is due at `now` (`u64::MAX` is never, even when
/// the clock reads `u64::MAX`).
fn due(expires: u64, now: u64) -> bool {
    expires != u64::MAX && now >= expires
}

/// Which departures an operation may cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    /// Reads, clock moves, `hottest`, refused inserts: none.
    Quiet,
    /// An insert or a load's store of `key`: `Replaced` (of the value it displaced),
    /// `Evicted` and `Expired` of any key.
    Write(u8),
    /// `remove(key)`: `Removed` or `Expired`, of that key only.
    Remove(u8),
    /// `clear`: `Removed` or `Expired`, any key.
    Clear,
    /// `run_pending_tasks`: `Expired` only.
    Maintain,
}

#[derive(Default, Debug)]
struct Counts {
    expired: u64,
    evicted: u64,
    removed: u64,
    replaced: u64,
    hits: u64,
    misses: u64,
    loads: u64,
}

struct Model {
    /// What the cache holds: value and absolute expiry (expired entries stay until the
    /// cache reports them gone).
    held: HashMap<u8, (Value, u64)>,
    /// Values a store displaced, still to be reported (as `Replaced`, or `Expired` if due).
    displaced: Vec<(u8, Value, u64)>,
    departures: Arc<Mutex<Vec<(u8, Value, RemovalCause)>>>,
    /// Stores that created an entry (the cache's `Stats::inserts`).
    inserts: u64,
    counts: Counts,
    /// Keys reported evicted by the last `settle`.
    evicted_keys: Vec<u8>,
}

impl Model {
    fn live(&self, key: u8, now: u64) -> Option<Value> {
        self.held
            .get(&key)
            .filter(|(_, expires)| !due(*expires, now))
            .map(|(v, _)| *v)
    }

    /// Records a stored value, counting it as an insert (not an update) unless it replaced
    /// a live value, as the cache's statistics do.
    fn store(&mut self, key: u8, value: Value, expires: u64, now: u64) {
        if self.live(key, now).is_none() {
            self.inserts += 1;
        }
        if let Some((old, old_expires)) = self.held.insert(key, (value, expires)) {
            self.displaced.push((key, old, old_expires));
        }
    }

    /// A read counted in the statistics (`get`, and the look of `get_or_insert_with`).
    fn read(&mut self, key: u8, now: u64) -> Option<Value> {
        let found = self.live(key, now);
        if found.is_some() {
            self.counts.hits += 1;
        } else {
            self.counts.misses += 1;
        }
        found
    }

    /// Applies what the listener heard during an operation of kind `ctx` at `now`: each
    /// departure must be of a held (or just displaced) value, once, with a cause true to
    /// the clock's reading and to the operation.
    fn settle(&mut self, now: u64, ctx: Ctx) {
        let heard: Vec<_> = self.departures.lock().unwrap().drain(..).collect();
        self.evicted_keys.clear();
        for (key, value, cause) in heard {
            let (expires, was_displaced) = if let Some(i) = self
                .displaced
                .iter()
                .position(|d| d.0 == key && d.1 == value)
            {
                (self.displaced.swap_remove(i).2, true)
            } else if self.held.get(&key).is_some_and(|h| h.0 == value) {
                (self.held.remove(&key).unwrap().1, false)
            } else {
                panic!("{ctx:?}: departure of {key} {value:?} as {cause:?}: not held, or reported twice");
            };
            let is_due = due(expires, now);
            let allowed = match (ctx, cause) {
                (Ctx::Quiet, _) => false,
                (Ctx::Write(_), RemovalCause::Expired) => true,
                (Ctx::Write(k), RemovalCause::Replaced) => was_displaced && k == key,
                (Ctx::Write(_), RemovalCause::Evicted) => !was_displaced,
                (Ctx::Write(_), _) => false,
                (Ctx::Remove(k), RemovalCause::Removed | RemovalCause::Expired) => k == key,
                (Ctx::Clear, RemovalCause::Removed | RemovalCause::Expired) => true,
                (Ctx::Maintain, RemovalCause::Expired) => true,
                _ => false,
            };
            assert!(
                allowed,
                "{ctx:?}: {key} {value:?} departed as {cause:?} (displaced: {was_displaced})"
            );
            match cause {
                RemovalCause::Expired => {
                    assert!(is_due, "{key} reported expired at {now}, due at {expires}");
                    self.counts.expired += 1;
                }
                other => {
                    assert!(
                        !is_due,
                        "{key} reported {other:?} at {now}, due at {expires} (expired)"
                    );
                    match other {
                        RemovalCause::Evicted => {
                            self.counts.evicted += 1;
                            self.evicted_keys.push(key);
                        }
                        RemovalCause::Removed => self.counts.removed += 1,
                        RemovalCause::Replaced => self.counts.replaced += 1,
                        _ => unreachable!(),
                    }
                }
            }
        }
        assert!(
            self.displaced.is_empty(),
            "{ctx:?}: displaced values never reported: {:?}",
            self.displaced
        );
    }

    /// Held entries due at `now` in the shards `keep` accepts, other than `except`'s.
    fn due_held(&self, now: u64, except: Option<u8>, keep: impl Fn(u8) -> bool) -> Vec<(u8, u64)> {
        let mut due_now: Vec<_> = self
            .held
            .iter()
            .filter(|(k, (_, e))| Some(**k) != except && keep(**k) && due(*e, now))
            .map(|(k, (_, e))| (*k, *e))
            .collect();
        due_now.sort_unstable();
        due_now
    }

    /// Held entries with an expiry (so on their shard's wheel), per shard.
    fn scheduled(&self, shard_of: impl Fn(u8) -> usize, shards: usize) -> Vec<usize> {
        let mut per_shard = vec![0; shards];
        for (k, (_, e)) in &self.held {
            if *e != u64::MAX {
                per_shard[shard_of(*k)] += 1;
            }
        }
        per_shard
    }
}

fuzz_target!(|input: Input| {
    let clock = ManualClock::new();
    let departures = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&departures);
    let overhead = larder::fuzzing::entry_overhead::<u8, Value>();
    let shard_bits = u32::from(input.shards % 3);
    let shards = 1usize << shard_bits;
    // The shard of a key: the top `shard_bits` bits of its hash (crate docs, "Shards").
    let shard_of = |key: u8| ((Fixed::default().hash_one(key) >> 1) >> (63 - shard_bits)) as usize;
    let default_ttl = input.default_ttl.map(|t| TTLS[usize::from(t) % TTLS.len()]);
    let mut builder = Cache::<u8, Value>::builder()
        .shards(shards)
        .hasher(Fixed::default())
        .clock(clock.clone())
        .eviction_listener(move |k: &u8, v: &Value, cause| {
            heard.lock().unwrap().push((*k, *v, cause))
        });
    let budget = if input.bytes {
        let budget = (overhead + 64) * (u64::from(input.capacity % 16) + 1);
        builder = builder
            .max_bytes(budget)
            .weigher(|_, v: &Value| u64::from(v.weight));
        budget
    } else {
        let budget = u64::from(input.capacity % 64) + 1;
        builder = builder.max_entries(budget);
        budget
    };
    if let Some(ttl) = default_ttl {
        builder = builder.default_ttl(ttl);
    }
    let cache = builder.build().expect("valid settings");
    let weight_of = |v: &Value| {
        if input.bytes {
            u64::from(v.weight) + overhead
        } else {
            1
        }
    };
    let mut model = Model {
        held: HashMap::new(),
        displaced: Vec::new(),
        departures,
        inserts: 0,
        counts: Counts::default(),
        evicted_keys: Vec::new(),
    };
    let mut next_id = 0u32;
    let mut value = |weight: u16| {
        next_id += 1;
        Value {
            id: next_id,
            weight: u32::from(weight % 512),
        }
    };
    // The clock's highest reading so far: the wheels never stand above it.
    let mut high = 0u64;

    for op in input.ops {
        let now = larder::Clock::now_nanos(&clock);
        high = high.max(now);
        let at_high = now == high;
        let before: Stats = cache.stats();
        // Shards a write must leave with no other due entry (see `WRITE_LIVENESS_ENTRIES`).
        let light: Vec<bool> = model
            .scheduled(shard_of, shards)
            .into_iter()
            .map(|n| at_high && n <= WRITE_LIVENESS_ENTRIES)
            .collect();
        let mut ctx = Ctx::Quiet;
        // Set when the cache must be left exactly as it was (stats included).
        let mut unchanged = false;
        // The key an insert-type op stored (its write must catch the wheel up).
        let mut wrote = None;
        match op {
            Op::Insert { key, weight } | Op::InsertWithTtl { key, weight, .. } => {
                let v = value(weight);
                let ttl = match op {
                    Op::InsertWithTtl { ttl, .. } => Some(TTLS[usize::from(ttl) % TTLS.len()]),
                    _ => None,
                };
                let result = match ttl {
                    Some(ttl) => cache.insert_with_ttl(key, v, ttl),
                    None => cache.insert(key, v),
                };
                if weight_of(&v) > budget {
                    let err = result.expect_err("too heavy");
                    assert!(matches!(err.kind, InsertErrorKind::TooHeavy { .. }));
                    assert_eq!((err.key, err.value), (key, v), "handed back");
                    unchanged = true;
                    assert_eq!(
                        cache.contains_key(&key),
                        model.live(key, now).is_some(),
                        "refused insert of {key} changed it"
                    );
                } else {
                    result.expect("fits");
                    model.store(key, v, expiry(now, ttl.or(default_ttl)), now);
                    ctx = Ctx::Write(key);
                    wrote = Some(key);
                }
            }
            Op::Get { key } => {
                let want = model.read(key, now);
                assert_eq!(cache.get(&key), want, "get {key}");
            }
            Op::ContainsKey { key } => {
                assert_eq!(
                    cache.contains_key(&key),
                    model.live(key, now).is_some(),
                    "contains {key}"
                );
                unchanged = true;
            }
            Op::Remove { key } => {
                assert_eq!(cache.remove(&key), model.live(key, now), "remove {key}");
                ctx = Ctx::Remove(key);
                model.settle(now, ctx);
                assert!(
                    !model.held.contains_key(&key),
                    "{key} still held after remove"
                );
            }
            Op::GetOrInsert { key, weight } => {
                let v = value(weight);
                let want = model.read(key, now);
                let got = cache.get_or_insert_with(key, || v);
                assert_eq!(got, want.unwrap_or(v), "get_or_insert {key}");
                if want.is_none() {
                    model.counts.loads += 1;
                    // A value too heavy to cache takes out an older (expired) one.
                    ctx = Ctx::Write(key);
                    if weight_of(&v) <= budget {
                        model.store(key, v, expiry(now, default_ttl), now);
                        wrote = Some(key);
                    }
                }
            }
            Op::TryGetOrInsert { key, weight, fail } => {
                let v = value(weight);
                let want = model.read(key, now);
                let got =
                    cache.try_get_or_insert_with(key, || if fail { Err("no") } else { Ok(v) });
                match want {
                    Some(held) => assert_eq!(got, Ok(held), "try_get_or_insert {key} hit"),
                    None if fail => {
                        model.counts.loads += 1;
                        assert_eq!(got, Err("no"), "failing loader");
                        assert!(!cache.contains_key(&key), "failed load of {key} cached");
                    }
                    None => {
                        model.counts.loads += 1;
                        assert_eq!(got, Ok(v), "try_get_or_insert {key} load");
                        ctx = Ctx::Write(key);
                        if weight_of(&v) <= budget {
                            model.store(key, v, expiry(now, default_ttl), now);
                            wrote = Some(key);
                        }
                    }
                }
            }
            Op::Advance { step, times } => {
                let step = STEPS[usize::from(step) % STEPS.len()];
                clock.advance(step * u32::from(times % 8 + 1));
                unchanged = true;
            }
            Op::Leap { unit, times } => {
                let leap = LEAPS[usize::from(unit) % LEAPS.len()];
                clock.advance(leap * u32::from(times % 4 + 1));
                unchanged = true;
            }
            Op::JumpBack { by } => {
                clock.set_nanos(now.saturating_sub(u64::from(by) * 1_000_000));
                unchanged = true;
            }
            Op::JumpBackFar { by } => {
                clock.set_nanos(now.saturating_sub(u64::from(by) * 60_000_000_000));
                unchanged = true;
            }
            Op::RunPendingTasks => {
                cache.run_pending_tasks();
                ctx = Ctx::Maintain;
                model.settle(now, ctx);
                if at_high {
                    let left = model.due_held(now, None, |_| true);
                    assert!(
                        left.is_empty(),
                        "run_pending_tasks at {now} (the clock's highest) left due entries {left:?}"
                    );
                    let unexpired = model.held.values().filter(|(_, e)| !due(*e, now)).count();
                    assert_eq!(cache.len(), unexpired, "len after run_pending_tasks");
                }
            }
            Op::Clear => {
                cache.clear();
                ctx = Ctx::Clear;
                model.settle(now, ctx);
                assert!(model.held.is_empty(), "clear left {:?}", model.held.keys());
            }
            Op::Hottest { n } => {
                let n = usize::from(n % 16);
                let hot = cache.hottest(n);
                let live = model.held.values().filter(|(_, e)| !due(*e, now)).count();
                assert_eq!(hot.len(), n.min(live), "hottest({n}) of {live} live");
                let mut keys: Vec<u8> = hot.iter().map(|(k, _)| *k).collect();
                keys.sort_unstable();
                keys.dedup();
                assert_eq!(keys.len(), hot.len(), "hottest repeats a key: {hot:?}");
                for (k, v) in &hot {
                    assert_eq!(model.live(*k, now), Some(*v), "hottest gave {k} {v:?}");
                }
                unchanged = true;
            }
        }
        model.settle(now, ctx);
        if let Some(key) = wrote {
            let touched: BTreeSet<usize> = std::iter::once(shard_of(key))
                .chain(model.evicted_keys.iter().map(|&k| shard_of(k)))
                .filter(|&s| light[s])
                .collect();
            let left = model.due_held(now, Some(key), |k| touched.contains(&shard_of(k)));
            assert!(
                left.is_empty(),
                "a write of {key} (shard {}) at {now}, the clock's highest, left due entries \
                 {left:?} in shards {touched:?} (evicted from: {:?}; at most \
                 {WRITE_LIVENESS_ENTRIES} on each wheel before)",
                shard_of(key),
                model.evicted_keys
            );
        }
        cache.validate();
        assert_eq!(cache.len(), model.held.len(), "len");
        assert_eq!(cache.is_empty(), model.held.is_empty(), "is_empty");
        assert!(
            cache.weighted_size() <= budget,
            "weight {} over {budget}",
            cache.weighted_size()
        );
        let model_weight: u64 = model.held.values().map(|(v, _)| weight_of(v)).sum();
        assert_eq!(cache.weighted_size(), model_weight, "weighted size");
        let stats = cache.stats();
        if unchanged {
            assert_eq!(
                stats, before,
                "a read or refused insert changed the statistics"
            );
        }
        assert_eq!(stats.inserts, model.inserts, "inserts counted");
        assert_eq!(
            stats.inserts,
            stats.entries + stats.evictions + stats.expirations + stats.removals,
            "stats add up: {stats:?}"
        );
        assert_eq!(stats.entries, model.held.len() as u64, "stats.entries");
        assert_eq!(stats.weighted_size, model_weight, "stats.weighted_size");
        let c = &model.counts;
        assert_eq!(
            (
                stats.expirations,
                stats.evictions,
                stats.removals,
                stats.updates
            ),
            (c.expired, c.evicted, c.removed, c.replaced),
            "(expirations, evictions, removals, updates) against the listener"
        );
        assert_eq!(
            (stats.hits, stats.misses),
            (c.hits, c.misses),
            "hits, misses"
        );
        assert_eq!((stats.loads, stats.loads_joined), (c.loads, 0), "loads");
        assert!(
            stats.admission_rejections <= stats.evictions,
            "rejections {} above evictions {}",
            stats.admission_rejections,
            stats.evictions
        );
    }
});
