//! Helpers shared by the integration tests.

/// Lets the epoch collector run deferred drops until `done` holds (or 10 s pass). The
/// collector is process-wide and shared with tests running in parallel, so reclamation is
/// eventual: each flush moves this thread's garbage out and collects a few batches.
#[allow(dead_code)] // Not every test file that includes `common` settles garbage.
pub(crate) fn settle(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        for _ in 0..64 {
            crossbeam_epoch::pin().flush();
        }
        std::thread::yield_now();
    }
}

/// A two-worker tokio runtime with timers, for the async tests (none of which runs in the
/// `larder_lean` builds of Miri and the sanitizers, which have no tokio; see Cargo.toml).
#[allow(dead_code)] // Not every test file that includes `common` is async.
#[cfg(not(larder_lean))]
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

/// A xorshift generator: seeded, so random test runs repeat.
#[allow(dead_code)] // Only the randomised checks use it.
pub(crate) struct Rng(pub(crate) u64);

#[allow(dead_code)]
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// splitmix64: seeded, and unlike [`Rng`] any seed, 0 included, gives a full sequence.
#[allow(dead_code)] // Only some randomised checks use it.
pub(crate) struct SplitMix(pub(crate) u64);

#[allow(dead_code)]
impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Hashes a `u64` key to itself, so a test picks each key's shard (the top bits of the
/// hash) and its short hash (the low 32 bits).
#[allow(dead_code)] // Not every test file that includes `common` picks shards.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyAsHash(u64);

impl std::hash::Hasher for KeyAsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0 << 8 | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The hasher of a cache whose `u64` keys are their own hashes (see [`KeyAsHash`]).
#[allow(dead_code)]
pub(crate) type KeyIsHash = std::hash::BuildHasherDefault<KeyAsHash>;
