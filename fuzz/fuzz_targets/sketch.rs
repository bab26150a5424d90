//! The frequency sketch against exact counts: a count-min sketch may overestimate (items share
//! counters) but never underestimate. The reference keeps, per item, a lower bound of its
//! counters, updated as the sketch's contract says: the first access of a period only sets the
//! doorkeeper, later ones count up to 15, and aging halves the counters and clears the
//! doorkeeper. The estimate must be at least that bound (plus one for the doorkeeper).
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use larder::fuzzing::Sketch;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Access item `n` (of a small set, so items repeat and collide).
    Access(u8),
    /// Access item `n` many times in a row.
    Burst(u8, u8),
    Age,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Sketch size, kept small so counters collide and aging comes often.
    size: u8,
    ops: Vec<Op>,
}

/// What the sketch must at least remember of one item.
#[derive(Default, Clone, Copy)]
struct Bound {
    /// Lower bound of the item's four counters.
    counters: u8,
    /// Accessed since the last aging (so the doorkeeper holds it).
    seen: bool,
}

/// Item hashes: well mixed, as the engine's hasher gives.
fn hash(item: u8) -> u64 {
    let mut z = u64::from(item).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn age(bounds: &mut HashMap<u8, Bound>) {
    for bound in bounds.values_mut() {
        bound.counters /= 2;
        bound.seen = false;
    }
}

fuzz_target!(|input: Input| {
    let mut sketch = Sketch::new(usize::from(input.size));
    let mut bounds: HashMap<u8, Bound> = HashMap::new();
    let access = |sketch: &mut Sketch, bounds: &mut HashMap<u8, Bound>, item: u8| {
        let bound = bounds.entry(item).or_default();
        if bound.seen {
            bound.counters = (bound.counters + 1).min(15);
        }
        bound.seen = true;
        if sketch.increment(hash(item)) {
            age(bounds);
        }
    };
    for op in input.ops {
        match op {
            Op::Access(item) => access(&mut sketch, &mut bounds, item),
            Op::Burst(item, times) => {
                for _ in 0..times % 32 {
                    access(&mut sketch, &mut bounds, item);
                }
            }
            Op::Age => {
                sketch.age();
                age(&mut bounds);
            }
        }
        for (&item, bound) in &bounds {
            let estimate = sketch.frequency(hash(item));
            let floor = bound.counters + u8::from(bound.seen);
            assert!(
                estimate >= floor,
                "item {item}: estimate {estimate} below {floor}"
            );
            assert!(estimate <= 16, "item {item}: estimate {estimate} above 16");
        }
    }
});
