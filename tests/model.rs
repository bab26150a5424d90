//! State-machine test of the public API against a reference model, with a manual clock.
//!
//! Properties that hold under any policy: a read returns the latest write of that key or
//! nothing; never an expired entry; never another key's value; the weight is within budget
//! at rest. With a capacity larger than the key space nothing may be evicted, so there the
//! cache must agree with the model exactly.

use std::collections::HashMap;
use std::time::Duration;

use larder::{Cache, ManualClock};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u32),
    InsertTtl(u8, u32, u16),
    Get(u8),
    Contains(u8),
    Remove(u8),
    GetOrInsert(u8, u32),
    Advance(u16),
    RunPending,
    Clear,
}

/// The latest write of each key and the time, in milliseconds.
#[derive(Debug, Clone, Default)]
struct Model {
    latest: HashMap<u8, (u32, Option<u64>)>,
    now_ms: u64,
    keys: u8,
    capacity: u64,
}

impl Model {
    /// The live value the model holds for `key`, if any.
    fn live(&self, key: u8) -> Option<u32> {
        let (value, expires) = self.latest.get(&key)?;
        match expires {
            Some(at) if self.now_ms >= *at => None,
            _ => Some(*value),
        }
    }

    /// True when nothing can have been evicted: the cache must match the model exactly.
    fn roomy(&self) -> bool {
        self.capacity >= self.keys as u64
    }
}

fn ops(keys: u8) -> BoxedStrategy<Op> {
    let key = 0..keys;
    prop_oneof![
        4 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (key.clone(), any::<u32>(), 0u16..3000).prop_map(|(k, v, t)| Op::InsertTtl(k, v, t)),
        5 => key.clone().prop_map(Op::Get),
        1 => key.clone().prop_map(Op::Contains),
        2 => key.clone().prop_map(Op::Remove),
        2 => (key, any::<u32>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
        2 => (0u16..2000).prop_map(Op::Advance),
        1 => Just(Op::RunPending),
        1 => Just(Op::Clear).prop_filter("rare", |_| true),
    ]
    .boxed()
}

macro_rules! reference {
    ($name:ident, $keys:expr, $capacity:expr) => {
        struct $name;
        impl ReferenceStateMachine for $name {
            type State = Model;
            type Transition = Op;
            fn init_state() -> BoxedStrategy<Model> {
                Just(Model {
                    keys: $keys,
                    capacity: $capacity,
                    ..Model::default()
                })
                .boxed()
            }
            fn transitions(_: &Model) -> BoxedStrategy<Op> {
                ops($keys)
            }
            fn apply(mut state: Model, op: &Op) -> Model {
                match *op {
                    Op::Insert(k, v) => {
                        state.latest.insert(k, (v, None));
                    }
                    Op::InsertTtl(k, v, ttl) => {
                        state.latest.insert(k, (v, Some(state.now_ms + ttl as u64)));
                    }
                    Op::Remove(k) => {
                        state.latest.remove(&k);
                    }
                    Op::GetOrInsert(k, v) => {
                        // If absent from the *cache* the load runs; the harness records
                        // what it saw, so here only the "absent from model" case is known.
                        if state.live(k).is_none() {
                            state.latest.insert(k, (v, None));
                        }
                    }
                    Op::Advance(ms) => state.now_ms += ms as u64,
                    Op::Clear => state.latest.clear(),
                    Op::Get(_) | Op::Contains(_) | Op::RunPending => {}
                }
                state
            }
        }
    };
}

struct Harness {
    cache: Cache<u8, u32>,
    clock: ManualClock,
    /// What the cache really holds for keys whose get_or_insert outcome the model cannot
    /// predict (the cache may have evicted the model's live value, so the load ran).
    overrides: HashMap<u8, Option<u32>>,
}

fn check_read(model: &Model, harness: &Harness, key: u8, seen: Option<u32>) {
    let expected = match harness.overrides.get(&key) {
        Some(over) => *over,
        None => model.live(key),
    };
    match seen {
        Some(value) => assert_eq!(
            Some(value),
            expected,
            "key {key}: read a value that is not its latest live write"
        ),
        None if model.roomy() => assert_eq!(expected, None, "key {key}: lost without eviction"),
        None => {}
    }
}

macro_rules! machine {
    ($test:ident, $reference:ident) => {
        struct $test;
        impl StateMachineTest for $test {
            type SystemUnderTest = Harness;
            type Reference = $reference;

            fn init_test(model: &Model) -> Harness {
                let clock = ManualClock::new();
                let cache = Cache::builder()
                    .max_entries(model.capacity)
                    .shards(1)
                    .clock(clock.clone())
                    .build()
                    .unwrap();
                Harness {
                    cache,
                    clock,
                    overrides: HashMap::new(),
                }
            }

            fn apply(mut h: Harness, model: &Model, op: Op) -> Harness {
                // `model` is the state *after* `op`; reads are checked against it, which is
                // the same as before for reads.
                match op {
                    Op::Insert(k, v) => {
                        h.cache.insert(k, v).unwrap();
                        h.overrides.remove(&k);
                    }
                    Op::InsertTtl(k, v, ttl) => {
                        h.cache
                            .insert_with_ttl(k, v, Duration::from_millis(ttl as u64))
                            .unwrap();
                        h.overrides.remove(&k);
                    }
                    Op::Get(k) => {
                        let seen = h.cache.get(&k);
                        check_read(model, &h, k, seen);
                    }
                    Op::Contains(k) => {
                        let seen = h.cache.contains_key(&k);
                        let expected = h.overrides.get(&k).copied().unwrap_or(model.live(k));
                        if seen {
                            assert!(expected.is_some(), "key {k}: contains a dead key");
                        } else if model.roomy() {
                            assert!(expected.is_none(), "key {k}: lost without eviction");
                        }
                    }
                    Op::Remove(k) => {
                        let removed = h.cache.remove(&k);
                        // The model already forgot k; compare with what it held before.
                        if let Some(value) = removed {
                            assert_ne!(h.overrides.get(&k), Some(&None), "removed a dead key");
                            let _ = value;
                        }
                        h.overrides.remove(&k);
                        assert_eq!(h.cache.get(&k), None, "key {k}: readable after remove");
                    }
                    Op::GetOrInsert(k, v) => {
                        let got = h.cache.get_or_insert_with(k, || v);
                        // Either the live value (model) or the freshly loaded `v`.
                        let model_value = match h.overrides.get(&k) {
                            Some(over) => *over,
                            None => model.live(k),
                        };
                        if model.roomy() {
                            assert_eq!(Some(got), model_value, "key {k}: get_or_insert");
                        } else {
                            assert!(
                                Some(got) == model_value || got == v,
                                "key {k}: get_or_insert returned a stranger"
                            );
                            h.overrides.insert(k, Some(got));
                        }
                    }
                    Op::Advance(ms) => {
                        h.clock.advance(Duration::from_millis(ms as u64));
                        // Overrides have no TTL, nothing to do.
                    }
                    Op::RunPending => h.cache.run_pending_tasks(),
                    Op::Clear => {
                        h.cache.clear();
                        h.overrides.clear();
                        assert_eq!(h.cache.len(), 0);
                    }
                }
                h
            }

            fn check_invariants(h: &Harness, model: &Model) {
                h.cache.validate();
                assert!(h.cache.weighted_size() <= model.capacity);
                if model.roomy() {
                    h.cache.run_pending_tasks();
                    let live = (0..model.keys).filter(|&k| model.live(k).is_some()).count();
                    assert_eq!(h.cache.len(), live, "roomy cache: entry count");
                    assert_eq!(h.cache.stats().evictions, 0, "roomy cache evicted");
                }
            }
        }
    };
}

reference!(RoomyModel, 12, 64);
machine!(RoomyTest, RoomyModel);
reference!(TightModel, 40, 6);
machine!(TightTest, TightModel);

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn roomy_cache_matches_the_model_exactly(sequential 1..80 => RoomyTest);

    #[test]
    fn tight_cache_only_returns_latest_live_writes(sequential 1..120 => TightTest);
}
