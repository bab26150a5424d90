//! One shard's slot table against a `HashMap`, with hashes chosen to collide: long probe
//! runs, tombstones, tombstone reuse and rebuilds all happen within a few hundred operations.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use larder::fuzzing::Index;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Insert(u16, u64),
    Remove(u16),
    Get(u16),
    /// Check every entry against the model.
    Scan,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// How many distinct hashes keys map to: few means heavy collisions.
    hash_bits: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let bits = u32::from(input.hash_bits % 17);
    // Keep the low `bits` bits of the key, then spread them over the whole word: keys that
    // agree in those bits get equal hashes (same tag, same probe start).
    let hash =
        |key: u16| (u64::from(key) & ((1u64 << bits) - 1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut index = Index::default();
    let mut model: HashMap<u16, u64> = HashMap::new();
    for op in input.ops {
        match op {
            Op::Insert(key, value) => {
                let old = index.insert(u64::from(key), value, hash(key));
                assert_eq!(old, model.insert(key, value), "insert {key}");
            }
            Op::Remove(key) => {
                let old = index.remove(u64::from(key), hash(key));
                assert_eq!(old, model.remove(&key), "remove {key}");
            }
            Op::Get(key) => {
                let got = index.get(u64::from(key), hash(key));
                assert_eq!(got, model.get(&key).copied(), "get {key}");
            }
            Op::Scan => {
                let mut all = index.entries();
                all.sort_unstable();
                let mut want: Vec<(u64, u64)> =
                    model.iter().map(|(&k, &v)| (u64::from(k), v)).collect();
                want.sort_unstable();
                assert_eq!(all, want, "scan");
            }
        }
        assert_eq!(index.len(), model.len(), "live count");
    }
});
