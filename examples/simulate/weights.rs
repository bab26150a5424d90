//! What each entry weighs in a replay (`--weights`): count mode, the default, or bytes
//! under a byte budget.
//!
//! Count mode (`unit`) gives every cache a capacity in entries, as issue 3's goals are
//! stated. Byte mode gives every cache the same budget in bytes and each key a size: one
//! size for every key (`--weights N`), or a size drawn from the key, log-uniform from LO
//! up to HI, HI itself excluded (`--weights LO-HI`; `varied` is 16 B to 16 KiB, so most
//! entries are small and a few large ones hold most of the bytes, as in caches of
//! objects). The draw is a hash of the key: the same in every run and every cache, and
//! independent of how often the key is read.
//!
//! Every cache is charged larder's own overhead per entry beside the key's size (larder
//! charges it itself, the peers' weighers add it), so all of them hold the same bytes. A
//! row of size N has a budget of N × (the mean size over the trace's keys + that
//! overhead): about N entries of the mean size, many more small ones.

use std::collections::HashSet;
use std::sync::OnceLock;

/// The smallest and largest sizes `varied` draws, in bytes.
const VARIED_MIN: u64 = 16;
const VARIED_MAX: u64 = 16384;
/// The largest size `--weights` takes, fixed or drawn.
const MAX_SIZE: u64 = 1 << 32;

/// How entries weigh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Count mode: capacities in entries.
    Unit,
    /// Byte mode, every key the same number of bytes.
    Fixed(u64),
    /// Byte mode, each key a size drawn from it, log-uniform from the first bound up to
    /// the second, which is never drawn (see the module docs).
    Drawn(u64, u64),
}

impl Weights {
    /// `varied`: 16 B to 16 KiB.
    pub const VARIED: Self = Self::Drawn(VARIED_MIN, VARIED_MAX);
}

impl std::str::FromStr for Weights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let size = |text: &str| {
            text.parse::<u64>()
                .ok()
                .filter(|&n| (1..=MAX_SIZE).contains(&n))
        };
        let error = || {
            format!(
                "--weights {s}: expected unit, varied, a size in bytes or a range of sizes \
                 LO-HI (each 1 to 2^32, HI at least LO + 2: HI is never drawn)"
            )
        };
        match s {
            "unit" => Ok(Self::Unit),
            "varied" => Ok(Self::VARIED),
            range if range.contains('-') => {
                let (low, high) = range.split_once('-').ok_or_else(error)?;
                match (size(low), size(high)) {
                    (Some(low), Some(high)) if low + 1 < high => Ok(Self::Drawn(low, high)),
                    _ => Err(error()),
                }
            }
            bytes => size(bytes).map(Self::Fixed).ok_or_else(error),
        }
    }
}

/// As `--weights` takes it: `unit`, `N` or `LO-HI`.
impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Unit => write!(f, "unit"),
            Self::Fixed(bytes) => write!(f, "{bytes}"),
            Self::Drawn(low, high) => write!(f, "{low}-{high}"),
        }
    }
}

impl Weights {
    /// Whether caches get a byte budget.
    pub fn in_bytes(self) -> bool {
        self != Self::Unit
    }

    /// The bytes of `key`'s entry, larder's overhead aside; 1 in count mode.
    pub fn of(self, key: u64) -> u64 {
        match self {
            Self::Unit => 1,
            Self::Fixed(bytes) => bytes,
            Self::Drawn(low, high) => {
                // splitmix64's finaliser: a key's bits spread over the whole word.
                let mut h = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                h ^= h >> 31;
                let uniform = (h >> 11) as f64 / (1u64 << 53) as f64;
                let (low, high) = (low as f64, high as f64);
                // `uniform` is below 1, so the draw is below `high`.
                (low * (high / low).powf(uniform)) as u64
            }
        }
    }

    /// What every cache is charged for `key`'s entry: its bytes and larder's overhead; 1 in
    /// count mode.
    pub fn charged(self, key: u64) -> u64 {
        match self {
            Self::Unit => 1,
            _ => self.of(key) + entry_overhead(),
        }
    }

    /// The budget of a row of `entries` entries on a trace whose keys' mean size is
    /// `mean`: `entries` itself in count mode.
    pub fn budget(self, entries: usize, mean: f64) -> u64 {
        let entries = entries as u64;
        match self {
            Self::Unit => entries,
            _ => (entries as f64 * (mean + entry_overhead() as f64)).round() as u64,
        }
    }

    /// The mean size of the distinct `keys` (1 in count mode).
    pub fn mean(self, keys: &[u64]) -> f64 {
        let unique: HashSet<u64> = keys.iter().copied().collect();
        if unique.is_empty() {
            return 1.0;
        }
        unique.iter().map(|&key| self.of(key) as f64).sum::<f64>() / unique.len() as f64
    }
}

/// What larder charges a `u64 → u64` entry beyond its weigher's figure, measured once on a
/// real cache (a byte-mode cache whose weigher says 0, after one insert).
pub fn entry_overhead() -> u64 {
    static OVERHEAD: OnceLock<u64> = OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        let cache = larder::Cache::<u64, u64>::builder()
            .max_bytes(1 << 20)
            .weigher(|_, _| 0)
            .build()
            .expect("a 1 MiB byte budget builds");
        cache
            .insert(1, 1)
            .expect("one entry fits a 1 MiB byte budget");
        cache.weighted_size()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_by_name_or_size() {
        assert_eq!("unit".parse(), Ok(Weights::Unit));
        assert_eq!("varied".parse(), Ok(Weights::Drawn(16, 16384)));
        assert_eq!("100".parse(), Ok(Weights::Fixed(100)));
        assert_eq!("100-120".parse(), Ok(Weights::Drawn(100, 120)));
        for text in ["unit", "100", "100-120", "16-16384"] {
            assert_eq!(text.parse::<Weights>().unwrap().to_string(), text);
        }
        for bad in [
            "0", "heavy", "120-100", "0-10", "5-5", "5-6", "1-", "-4", "1-2-3",
        ] {
            assert!(bad.parse::<Weights>().is_err(), "{bad}");
        }
    }

    #[test]
    fn varied_sizes_stay_in_range_and_spread_log_uniformly() {
        let sizes: Vec<u64> = (0..100_000u64).map(|key| Weights::VARIED.of(key)).collect();
        assert!(sizes.iter().all(|&s| (16..=16384).contains(&s)));
        assert_eq!(Weights::VARIED.of(42), Weights::VARIED.of(42));
        let narrow: Vec<u64> = (0..10_000u64)
            .map(|key| Weights::Drawn(100, 120).of(key))
            .collect();
        assert!(narrow.iter().all(|&s| (100..120).contains(&s)));
        assert!(narrow.contains(&100) && narrow.contains(&119));
        let pair: std::collections::HashSet<u64> = (0..1_000u64)
            .map(|key| Weights::Drawn(7, 9).of(key))
            .collect();
        assert_eq!(pair, [7, 8].into());
        // Log-uniform: each factor of 2 holds a tenth of the keys.
        let below_32 = sizes.iter().filter(|&&s| s < 32).count();
        let from_8k = sizes.iter().filter(|&&s| s >= 8192).count();
        for count in [below_32, from_8k] {
            assert!((9_000..11_000).contains(&count), "{count}");
        }
    }

    #[test]
    fn a_row_budget_holds_its_entries_at_the_mean_size_with_overhead() {
        let overhead = entry_overhead();
        assert!((32..=256).contains(&overhead), "{overhead}");
        assert_eq!(Weights::Unit.budget(10, 1.0), 10);
        assert_eq!(Weights::Fixed(100).budget(10, 100.0), 10 * (100 + overhead));
        assert_eq!(Weights::Fixed(100).charged(7), 100 + overhead);
        assert_eq!(Weights::Unit.charged(7), 1);
        assert_eq!(Weights::Fixed(100).mean(&[1, 2, 2, 3]), 100.0);
    }
}
