//! The whole `Cache` API against a reference model, single-threaded, with a manual clock.
//!
//! The model is exact, not merely permissive: an eviction listener reports every entry that
//! leaves (evicted, expired, removed, replaced), so the model knows precisely which keys the
//! cache holds. After every step: each read agrees with the model, `len` and the stats add
//! up, the weight is within budget, and `validate()` finds the engine's invariants intact.
#![no_main]

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use larder::{Cache, InsertErrorKind, ManualClock, RemovalCause};
use libfuzzer_sys::fuzz_target;

/// Deterministic hashing, so every crash reproduces.
type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// Values carry a unique id (so departures are matched exactly) and a weight for byte mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Value {
    id: u32,
    weight: u32,
}

const TTLS: [Duration; 9] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_secs(1),
    Duration::from_secs(60),
    Duration::from_secs(3600),
    Duration::from_secs(86_400 * 3),
    Duration::from_nanos(u64::MAX - 5),
    Duration::MAX,
];

const STEPS: [Duration; 6] = [
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_millis(900),
    Duration::from_secs(61),
    Duration::from_secs(3601),
    Duration::from_secs(86_400 * 2),
];

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

struct Model {
    /// What the cache holds: value and absolute expiry (expired entries stay until the
    /// cache reports them gone).
    held: HashMap<u8, (Value, u64)>,
    departures: Arc<Mutex<Vec<(u8, Value, RemovalCause)>>>,
    /// Stores that created an entry (the cache's `Stats::inserts`).
    inserts: u64,
}

impl Model {
    fn live(&self, key: u8, now: u64) -> Option<Value> {
        self.held
            .get(&key)
            .filter(|(_, expires)| now < *expires)
            .map(|(v, _)| *v)
    }

    /// Records a stored value, counting it as an insert (not an update) unless it replaced
    /// a live value, as the cache's statistics do.
    fn store(&mut self, key: u8, value: Value, expires: u64, now: u64) {
        if self.live(key, now).is_none() {
            self.inserts += 1;
        }
        self.held.insert(key, (value, expires));
    }

    /// Applies what the listener heard: an entry leaves the model only if it is the one
    /// that left (a replaced value is already gone from it).
    fn settle(&mut self) {
        for (key, value, cause) in self.departures.lock().unwrap().drain(..) {
            if cause == RemovalCause::Replaced {
                assert_ne!(
                    self.held.get(&key).map(|h| h.0),
                    Some(value),
                    "replaced value still current"
                );
                continue;
            }
            if self.held.get(&key).is_some_and(|h| h.0 == value) {
                self.held.remove(&key);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let clock = ManualClock::new();
    let departures = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&departures);
    let overhead = larder::fuzzing::entry_overhead::<u8, Value>();
    let shards = 1usize << (input.shards % 3);
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
        departures,
        inserts: 0,
    };
    let mut next_id = 0u32;
    let mut value = |weight: u16| {
        next_id += 1;
        Value {
            id: next_id,
            weight: u32::from(weight % 512),
        }
    };

    for op in input.ops {
        let now = larder::Clock::now_nanos(&clock);
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
                } else {
                    result.expect("fits");
                    model.store(key, v, expiry(now, ttl.or(default_ttl)), now);
                }
            }
            Op::Get { key } => {
                assert_eq!(cache.get(&key), model.live(key, now), "get {key}");
            }
            Op::ContainsKey { key } => {
                assert_eq!(
                    cache.contains_key(&key),
                    model.live(key, now).is_some(),
                    "contains {key}"
                );
            }
            Op::Remove { key } => {
                assert_eq!(cache.remove(&key), model.live(key, now), "remove {key}");
                model.settle();
                assert!(
                    !model.held.contains_key(&key),
                    "{key} still held after remove"
                );
            }
            Op::GetOrInsert { key, weight } => {
                let v = value(weight);
                let want = model.live(key, now);
                let got = cache.get_or_insert_with(key, || v);
                assert_eq!(got, want.unwrap_or(v), "get_or_insert {key}");
                if want.is_none() && weight_of(&v) <= budget {
                    model.store(key, v, expiry(now, default_ttl), now);
                }
            }
            Op::TryGetOrInsert { key, weight, fail } => {
                let v = value(weight);
                let want = model.live(key, now);
                let got =
                    cache.try_get_or_insert_with(key, || if fail { Err("no") } else { Ok(v) });
                match want {
                    Some(held) => assert_eq!(got, Ok(held), "try_get_or_insert {key} hit"),
                    None if fail => assert_eq!(got, Err("no"), "failing loader"),
                    None => {
                        assert_eq!(got, Ok(v), "try_get_or_insert {key} load");
                        if weight_of(&v) <= budget {
                            model.store(key, v, expiry(now, default_ttl), now);
                        }
                    }
                }
            }
            Op::Advance { step, times } => {
                let step = STEPS[usize::from(step) % STEPS.len()];
                clock.advance(step * u32::from(times % 8 + 1));
            }
            Op::JumpBack { by } => {
                clock.set_nanos(now.saturating_sub(u64::from(by) * 1_000_000));
            }
            Op::RunPendingTasks => cache.run_pending_tasks(),
            Op::Clear => {
                cache.clear();
                model.settle();
                assert!(model.held.is_empty(), "clear left {:?}", model.held.keys());
            }
        }
        model.settle();
        cache.validate();
        assert_eq!(cache.len(), model.held.len(), "len");
        assert!(
            cache.weighted_size() <= budget,
            "weight {} over {budget}",
            cache.weighted_size()
        );
        let model_weight: u64 = model.held.values().map(|(v, _)| weight_of(v)).sum();
        assert_eq!(cache.weighted_size(), model_weight, "weighted size");
        let stats = cache.stats();
        assert_eq!(stats.inserts, model.inserts, "inserts counted");
        assert_eq!(
            stats.inserts,
            stats.entries + stats.evictions + stats.expirations + stats.removals,
            "stats add up: {stats:?}"
        );
    }
});
