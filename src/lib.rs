//! larder: an in-process cache engine for latency-critical services.
//!
//! # Usage
//!
//! ```
//! use std::time::Duration;
//! use larder::Cache;
//!
//! let cache = Cache::<u64, String>::builder()
//!     .max_entries(10_000)
//!     .default_ttl(Duration::from_secs(60))
//!     .build()
//!     .expect("valid settings");
//!
//! cache.insert(1, "one".to_string()).unwrap();
//! assert_eq!(cache.get(&1).as_deref(), Some("one"));
//!
//! // Single-flight: concurrent callers for one key share one load.
//! let two = cache.get_or_insert_with(2, || "two".to_string());
//! assert_eq!(two, "two");
//!
//! assert_eq!(cache.remove(&1).as_deref(), Some("one"));
//! assert_eq!(cache.stats().hits, 1);
//! ```
//!
//! # Design
//!
//! * **Shards.** A power-of-two number of shards, chosen by the top bits of the key's hash.
//!   No lock spans shards.
//! * **Lock-free reads.** `get` pins an epoch guard, probes the shard's open-addressing table
//!   through atomic loads, compares the full key, checks expiry, bumps a lossy access counter
//!   in the entry and clones the value. Writers take only their shard's mutex, publish whole
//!   entries with release stores, and retire replaced or removed entries through
//!   `crossbeam-epoch`, so a reader never sees freed memory.
//! * **Policy.** W-TinyLFU over CLOCK: a 1% window ring absorbs bursts; its victims duel the
//!   main ring's CLOCK victim on a 4-bit count-min sketch with a doorkeeper, aged by halving.
//!   Losers with a high frequency are admitted at random 1 time in 128, so flooding keys that
//!   collide with a hot one cannot pin it out.
//! * **TTL.** A hierarchical timing wheel per shard (≈1 s, 1 min, 1 h, 1 day spans plus an
//!   overflow bucket), advanced with bounded work on writes and by
//!   [`Cache::run_pending_tasks`]. Reads check the entry's expiry themselves, so an expired
//!   entry is never returned, wheel or not. No background thread.
//! * **Budget.** One global budget. In byte mode every entry is charged its weigher's figure
//!   plus larder's own per-entry overhead, so the budget tracks real memory.
//!
//! # Consistency
//!
//! Each operation on one key is linearizable: a `get` returns the latest completed write of
//! that key or nothing (it may also miss a write that completes concurrently). Replaced and
//! removed values are dropped once no reader can still hold them, on whichever thread
//! reclaims them; dropping the last handle drops every live key and value.
//!
//! Under concurrent inserts the weighted size can exceed the budget by at most the weights of
//! the inserts in flight (each insert charges its weight, then evicts until the total is back
//! within the budget); at rest it is always within budget.
//!
//! # Bad input
//!
//! Bad settings are refused by [`CacheBuilder::build`] with a [`BuildError`]; an entry
//! heavier than the whole budget by [`Cache::insert`] with an [`InsertError`] that hands the
//! key and value back. A panic in user code (weigher, loader, `Eq`, `Clone`, listener)
//! reaches the caller of the call that ran it, and leaves the cache consistent and every other
//! entry in place; a panic in a key's or value's `Drop` is contained where larder drops
//! entries (it would otherwise unwind through the epoch collector on some unrelated thread).
//! Keys and values larder drops on the caller's thread without caching them (a single-flight
//! load's key, a value refused as too heavy) are dropped last, once the cache is settled:
//! their `Drop`'s panic reaches the caller and leaves the cache consistent.
//! Keys whose `Hash` and `Eq` disagree cannot be found again but corrupt nothing. A key's
//! `Eq` runs under its shard's lock during a write, so it must not call back into the same
//! cache's write methods (it would wait for that lock for good). The default
//! hasher is seeded at random per cache, so keys chosen to collide under a known hash do not
//! slow it down; a fixed [`CacheBuilder::hasher`] gives that up. The README's "Bad input"
//! table lists each case with its test.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `test-util` | `ManualClock`, a clock tests move by hand, and `Cache::validate` |

#![warn(rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod cache;
mod error;
#[cfg(any(fuzzing, feature = "test-util"))]
#[doc(hidden)]
pub mod fuzzing;
mod growth;
mod load;
pub mod patterns;
mod policy;
mod raw;
mod stats;
mod sync;
#[cfg(feature = "redis")]
pub mod tier;
mod time;

pub use builder::{CacheBuilder, MAX_SHARDS};
pub use cache::{Cache, RemovalCause};
pub use error::{BuildError, InsertError, InsertErrorKind, LoadError};
pub use stats::Stats;
#[cfg(any(test, feature = "test-util"))]
pub use time::ManualClock;
pub use time::{Clock, MonotonicClock};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
