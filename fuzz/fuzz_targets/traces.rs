//! Every trace parser of the simulator on arbitrary bytes: an error or keys, never a panic,
//! and never more keys or decompressed bytes than the limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../examples/simulate/trace.rs"]
mod trace;

use trace::Format;

/// Keeps a few bytes of `.lis` (ranges of blocks) from expanding into gigabytes.
const MAX_KEYS: u64 = 1 << 16;
const MAX_BYTES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(bytes) = trace::decompress_with_limit("fuzz", data, MAX_BYTES) else {
        return;
    };
    assert!(bytes.len() as u64 <= MAX_BYTES);
    for format in [
        Format::Arc,
        Format::Lirs,
        Format::Text,
        Format::U32Be,
        Format::U64Be,
    ] {
        if let Ok(keys) = trace::parse_with_limit("fuzz", format, &bytes, MAX_KEYS) {
            assert!(
                !keys.is_empty() && keys.len() as u64 <= MAX_KEYS,
                "{format}: {} keys",
                keys.len()
            );
        }
    }
});
