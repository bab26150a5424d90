//! How a shard's per-entry arrays grow: by doubling, but onto the number of entries the
//! shard is expected to hold (with a little slack) when that is within reach, so a full
//! shard's arrays carry no unused tail.
//!
//! Doubling alone leaves an array anywhere from half to completely full once the shard
//! stops growing. With eight shards, a cache of 600,000 `u64` entries held 75,000 per shard
//! in arrays of 131,072: 67.8 bytes of metadata per entry against 46.0 for a million
//! entries (`cargo bench --bench memory`).

/// Room above the expected size: a shard's share of a global budget is not a hard limit.
/// With random keys a shard's count is binomial: a million entries over eight shards differ
/// by a standard deviation of about 330 out of 125,000. The slack covers four of those, and
/// at least a 64th of the size (it was a sixteenth, which over the slab's, ring's, wheel's
/// and sketch's 28 bytes per entry cost 1.75 bytes; a 64th costs 0.44). A shard past it,
/// under skew, grows by quarters.
fn slack(expected: usize) -> usize {
    let deviations = 4 * (expected as f64).sqrt() as usize;
    (expected / 64).max(deviations)
}

/// The capacity an array now able to hold `capacity` items should grow to so that it holds
/// `needed`. Below the `expected` number of items (0 when unknown), plus [`slack`], it
/// doubles, and lands on that size once it is within a doubling; beyond it, it grows by a
/// quarter at a time (still geometric, so still amortised O(1) per item), since a shard past
/// its share rarely goes far past it.
pub(crate) fn grown_capacity(capacity: usize, needed: usize, expected: usize) -> usize {
    let landing = expected.saturating_add(slack(expected));
    let doubled = needed.max(capacity.saturating_mul(2));
    if expected == 0 {
        doubled
    } else if landing >= needed {
        // Within a doubling of the landing size, go straight there: one copy fewer.
        if doubled.saturating_mul(2) > landing {
            landing
        } else {
            doubled
        }
    } else {
        needed.max(capacity.saturating_add(capacity / 4))
    }
}

/// Makes room in `vec` for `needed` items in all, growing it as [`grown_capacity`] says.
pub(crate) fn reserve<T>(vec: &mut Vec<T>, needed: usize, expected: usize) {
    if needed > vec.capacity() {
        let capacity = grown_capacity(vec.capacity(), needed, expected);
        vec.reserve_exact(capacity - vec.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_lands_on_the_expected_size_then_grows_by_quarters() {
        let mut vec: Vec<u32> = Vec::new();
        let mut capacities = Vec::new();
        for needed in 1..=1400 {
            reserve(&mut vec, needed, 1000);
            vec.push(0);
            if capacities.last() != Some(&vec.capacity()) {
                capacities.push(vec.capacity());
            }
        }
        assert_eq!(
            capacities,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1124, 1405]
        );
    }

    #[test]
    fn the_slack_covers_four_deviations_or_a_64th() {
        assert_eq!(slack(125_000), 1953);
        assert_eq!(slack(10_000), 400);
        assert_eq!(slack(0), 0);
    }

    #[test]
    fn an_unknown_expected_size_just_doubles() {
        assert_eq!(grown_capacity(64, 65, 0), 128);
        assert_eq!(grown_capacity(0, 5, 0), 5);
        assert_eq!(grown_capacity(64, 65, 100), 140);
        assert_eq!(grown_capacity(64, 65, 1000), 128);
        assert_eq!(grown_capacity(64, 65, 190), 242, "within a doubling: land");
    }
}
