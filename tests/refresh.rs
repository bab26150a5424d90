//! Read-through with refresh: XFetch's early refresh follows its distribution,
//! stale-while-revalidate serves stale values while exactly one refresh runs, and failures
//! keep what they should.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::runtime;
use larder::patterns::Refresh;
use larder::{BuildError, Cache, Clock, ManualClock};

const TTL: Duration = Duration::from_secs(10);

/// Waits (up to 5 s) for a background refresh to land.
fn eventually(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(done(), "timed out");
}

#[test]
fn early_refresh_happens_with_probability_exp_of_minus_gap_over_delta() {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let loaded_at = Arc::new(AtomicU64::new(0));
    let delta = Duration::from_millis(100);
    let cache = {
        let (clock, loads, loaded_at) = (clock.clone(), Arc::clone(&loads), Arc::clone(&loaded_at));
        Cache::<u64, usize>::builder()
            .max_entries(100)
            .default_ttl(TTL)
            .clock(clock.clone())
            .loader(move |_key: &u64| {
                // The "query" takes 100 ms of the cache's clock: that is the entry's delta.
                clock.advance(delta);
                loaded_at.store(clock.now_nanos(), Ordering::SeqCst);
                Ok::<_, ()>(loads.fetch_add(1, Ordering::SeqCst))
            })
            .refresh(Refresh::Early { beta: 1.0 })
            .seed(7)
            .build()
            .unwrap()
    };
    cache.get(&1).unwrap();
    let ttl = TTL.as_nanos() as u64;
    for gap_ms in [20u64, 100, 250] {
        let trials = 2000;
        let before = cache.stats().refreshes;
        for _ in 0..trials {
            let expiry = loaded_at.load(Ordering::SeqCst) + ttl;
            clock.set_nanos(expiry - gap_ms * 1_000_000);
            cache.get(&1).unwrap();
        }
        let measured = (cache.stats().refreshes - before) as f64 / trials as f64;
        let expected = (-(gap_ms as f64) / 100.0).exp();
        println!("gap {gap_ms} ms: refreshed {measured:.3}, expected {expected:.3}");
        assert!(
            (measured - expected).abs() < 0.04,
            "gap {gap_ms}: {measured} vs {expected}"
        );
    }
    // Far from expiry, never.
    let before = cache.stats().refreshes;
    clock.set_nanos(loaded_at.load(Ordering::SeqCst));
    (0..1000).for_each(|_| {
        cache.get(&1).unwrap();
    });
    assert_eq!(cache.stats().refreshes, before);
}

#[test]
fn stale_while_revalidate_serves_stale_while_exactly_one_refresh_runs() {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = {
        let loads = Arc::clone(&loads);
        Cache::<u64, usize>::builder()
            .max_entries(100)
            .default_ttl(TTL)
            .clock(clock.clone())
            .loader(move |_key: &u64| {
                let n = loads.fetch_add(1, Ordering::SeqCst);
                if n > 0 {
                    std::thread::sleep(Duration::from_millis(50)); // a slow refresh
                }
                Ok::<_, ()>(n)
            })
            .refresh(Refresh::StaleWhileRevalidate {
                grace: Duration::from_secs(5),
            })
            .build()
            .unwrap()
    };
    assert_eq!(cache.get(&1), Ok(0));
    clock.advance(Duration::from_secs(12)); // past the TTL, within the grace period
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| assert_eq!(cache.get(&1), Ok(0), "stale value served at once"));
        }
    });
    eventually(|| cache.get(&1) == Ok(1));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "one refresh for 16 stale readers"
    );
    let stats = cache.stats();
    assert_eq!((stats.refreshes, stats.loads), (1, 2));
    assert!(stats.stale_served >= 16);
}

#[test]
fn a_failed_revalidation_keeps_the_stale_value_until_the_grace_period_ends() {
    let clock = ManualClock::new();
    let database_up = Arc::new(AtomicBool::new(true));
    let cache = {
        let up = Arc::clone(&database_up);
        Cache::<u64, u64>::builder()
            .max_entries(100)
            .default_ttl(TTL)
            .clock(clock.clone())
            .loader(move |key: &u64| {
                if up.load(Ordering::SeqCst) {
                    Ok(*key * 10)
                } else {
                    Err("database down")
                }
            })
            .refresh(Refresh::StaleWhileRevalidate {
                grace: Duration::from_secs(5),
            })
            .build()
            .unwrap()
    };
    assert_eq!(cache.get(&3), Ok(30));
    database_up.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    for _ in 0..20 {
        assert_eq!(cache.get(&3), Ok(30), "stale, while refreshes fail");
        std::thread::sleep(Duration::from_millis(2));
    }
    eventually(|| cache.stats().refresh_failures >= 1);
    clock.advance(Duration::from_secs(5)); // the grace period is over
    assert_eq!(
        cache.get(&3),
        Err("database down"),
        "gone: the next caller loads"
    );
    database_up.store(true, Ordering::SeqCst);
    assert_eq!(cache.get(&3), Ok(30));
}

#[test]
fn read_through_loads_once_and_caches_no_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = {
        let calls = Arc::clone(&calls);
        Cache::<u64, u64>::builder()
            .max_entries(100)
            .loader(move |key: &u64| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                if *key == 0 {
                    Err("no such user")
                } else {
                    Ok(*key + 1)
                }
            })
            .build()
            .unwrap()
    };
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| assert_eq!(cache.get(&5), Ok(6)));
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(&0), Err("no such user"));
    assert_eq!(
        cache.get(&0),
        Err("no such user"),
        "the failure was not cached"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    cache.remove(&5);
    assert_eq!(cache.get(&5), Ok(6));
    assert_eq!(cache.stats().loads, 4, "two of key 5, two failed of key 0");
}

#[test]
fn refresh_settings_are_checked() {
    let loader = |_: &u64| Ok::<u64, ()>(0);
    let early = |beta| {
        Cache::<u64, u64>::builder()
            .max_entries(10)
            .default_ttl(TTL)
            .loader(loader)
            .refresh(Refresh::Early { beta })
            .build()
            .map(|_| ())
    };
    assert_eq!(early(0.0), Err(BuildError::BadRefreshBeta));
    assert_eq!(early(f64::NAN), Err(BuildError::BadRefreshBeta));
    assert_eq!(early(1.0), Ok(()));
    let no_ttl = Cache::<u64, u64>::builder()
        .max_entries(10)
        .loader(loader)
        .refresh(Refresh::StaleWhileRevalidate {
            grace: Duration::from_secs(1),
        })
        .build();
    assert_eq!(no_ttl.map(|_| ()), Err(BuildError::RefreshWithoutTtl));
}

#[test]
fn an_async_loader_loads_once_for_a_thousand_tasks_and_caches_no_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = {
        let calls = Arc::clone(&calls);
        Cache::<u64, u64>::builder()
            .max_entries(100)
            .async_loader(move |key: &u64| {
                let (key, calls) = (*key, Arc::clone(&calls));
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if key == 0 {
                        Err("no such user")
                    } else {
                        Ok(key * 3)
                    }
                }
            })
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get_async(&4).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(12));
        }
        assert_eq!(cache.get_async(&0).await, Err("no such user"));
        assert_eq!(cache.get_async(&0).await, Err("no such user"));
        assert_eq!(cache.preload_async(1..4).await, 0);
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1 + 2 + 3);
    assert_eq!(cache.cache_stats().loads_joined, 999);
}

#[test]
fn async_stale_while_revalidate_refreshes_once_and_serves_stale_meanwhile() {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = {
        let loads = Arc::clone(&loads);
        Cache::<u64, usize>::builder()
            .max_entries(100)
            .default_ttl(TTL)
            .clock(clock.clone())
            .async_loader(move |_key: &u64| {
                let loads = Arc::clone(&loads);
                async move {
                    let n = loads.fetch_add(1, Ordering::SeqCst);
                    if n > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok::<_, ()>(n)
                }
            })
            .refresh(Refresh::StaleWhileRevalidate {
                grace: Duration::from_secs(5),
            })
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        assert_eq!(cache.get_async(&1).await, Ok(0));
        clock.advance(Duration::from_secs(12));
        let refresher = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_async(&1).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..16 {
            assert_eq!(
                cache.get_async(&1).await,
                Ok(0),
                "stale while the refresh runs"
            );
        }
        assert_eq!(
            refresher.await.unwrap(),
            Ok(1),
            "the first stale reader refreshed"
        );
        assert_eq!(cache.get_async(&1).await, Ok(1));
    });
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().refreshes, 1);
}

#[test]
fn a_remove_during_a_load_is_not_undone_by_it() {
    // The "database" row, and a loader that reads it and then takes a while to answer.
    let row = Arc::new(AtomicU64::new(1));
    let cache = {
        let row = Arc::clone(&row);
        Cache::<u64, u64>::builder()
            .max_entries(100)
            .loader(move |_: &u64| {
                let value = row.load(Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                Ok::<_, ()>(value)
            })
            .build()
            .unwrap()
    };
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| cache.get(&1));
        std::thread::sleep(Duration::from_millis(10));
        // The row changes and the cached copy is invalidated while the load is in flight.
        row.store(2, Ordering::SeqCst);
        cache.remove(&1);
        assert_eq!(reader.join().unwrap(), Ok(1));
    });
    assert_eq!(
        cache.get(&1),
        Ok(2),
        "the old value was not put back after the remove"
    );
}

/// A value is stamped fresh when its loader returns, and the engine's TTL starts at the
/// insert, a moment later. In that moment a policy without a grace period must neither
/// count a stale read nor start a refresh. Here the weigher stretches the moment (it
/// advances the manual clock by 5 ms), and the read falls 2 ms past the stamp's TTL.
#[test]
fn without_a_grace_period_nothing_is_served_stale_between_the_stamp_and_the_engine_ttl() {
    for refresh in [Refresh::Never, Refresh::Early { beta: 1.0 }] {
        let clock = ManualClock::new();
        let weigher_clock = clock.clone();
        let cache = Cache::<u64, u64>::builder()
            .max_bytes(1 << 20)
            .weigher(move |_, _| {
                weigher_clock.advance(Duration::from_millis(5));
                8
            })
            .clock(clock.clone())
            .default_ttl(Duration::from_secs(1))
            .loader(|k: &u64| Ok::<_, ()>(*k))
            .refresh(refresh)
            .build()
            .unwrap();
        assert_eq!(cache.get(&1), Ok(1));
        clock.set_nanos(1_002_000_000);
        assert_eq!(cache.get(&1), Ok(1));
        // A refresh, had one started, runs on a thread of its own.
        std::thread::sleep(Duration::from_millis(50));
        let stats = cache.stats();
        assert_eq!(
            (stats.loads, stats.refreshes, stats.stale_served),
            (1, 0, 0),
            "{refresh:?}: {stats:?}"
        );
        // Once the engine's TTL ends too, the next read loads again.
        clock.set_nanos(1_010_000_000);
        assert_eq!(cache.get(&1), Ok(1));
        assert_eq!(cache.stats().loads, 2, "{refresh:?}");
    }
}

/// Set to make [`FragileKey`]'s `Clone` panic.
static KEY_CLONE_PANICS: AtomicBool = AtomicBool::new(false);

#[derive(Debug, PartialEq, Eq, Hash)]
struct FragileKey(u64);

impl Clone for FragileKey {
    fn clone(&self) -> Self {
        assert!(
            !KEY_CLONE_PANICS.load(Ordering::SeqCst),
            "the key's clone panics"
        );
        Self(self.0)
    }
}

/// A stale read claims the entry's refresh, then clones the key for the refreshing thread.
/// If that clone panics, the claim is released: the next stale read refreshes, rather than
/// none until the grace period ends.
#[test]
fn a_panic_while_starting_a_background_refresh_releases_the_claim() {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = {
        let loads = Arc::clone(&loads);
        Cache::<FragileKey, usize>::builder()
            .max_entries(100)
            .default_ttl(TTL)
            .clock(clock.clone())
            .loader(move |_key: &FragileKey| Ok::<_, ()>(loads.fetch_add(1, Ordering::SeqCst)))
            .refresh(Refresh::StaleWhileRevalidate {
                grace: Duration::from_secs(5),
            })
            .build()
            .unwrap()
    };
    assert_eq!(cache.get(&FragileKey(1)), Ok(0));
    clock.advance(Duration::from_secs(12)); // past the TTL, within the grace period
    KEY_CLONE_PANICS.store(true, Ordering::SeqCst);
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.get(&FragileKey(1))));
    KEY_CLONE_PANICS.store(false, Ordering::SeqCst);
    assert!(read.is_err(), "the clone's panic reaches the reader");
    assert_eq!(cache.get(&FragileKey(1)), Ok(0), "still served stale");
    eventually(|| cache.get(&FragileKey(1)) == Ok(1));
    assert_eq!(cache.stats().refreshes, 1);
}

/// Session 21's review: `get_async` lacked `get`'s check for a value the engine still holds
/// past its stamp (the insert comes a moment after the stamp), so `Refresh::Never` refreshed
/// it in line and counted it as served stale.
#[test]
fn async_reads_past_the_stamp_refresh_only_under_stale_while_revalidate() {
    let clock = ManualClock::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let cache = {
        let (ticker, loads) = (clock.clone(), Arc::clone(&loads));
        Cache::<u64, String>::builder()
            .max_bytes(1 << 20)
            .default_ttl(Duration::from_secs(10))
            .clock(clock.clone())
            // Widens the moment between the value's stamp and its insert to a second.
            .weigher(move |_, _| {
                ticker.advance(Duration::from_secs(1));
                0
            })
            .async_loader(move |key: &u64| {
                let n = loads.fetch_add(1, Ordering::SeqCst);
                let key = *key;
                async move { Ok::<_, ()>(format!("{key} #{n}")) }
            })
            .refresh(Refresh::Never)
            .build()
            .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let start = clock.now_nanos();
    assert_eq!(runtime.block_on(cache.get_async(&1)).unwrap(), "1 #0");
    // Past the stamp's 10 s, within the engine's TTL, which began at the insert.
    clock.set_nanos(start + Duration::from_millis(10_500).as_nanos() as u64);
    assert_eq!(runtime.block_on(cache.get_async(&1)).unwrap(), "1 #0");
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes, stats.stale_served, stats.loads),
        (0, 0, 1),
        "Refresh::Never refreshed"
    );
}

/// A loader whose database may be down.
type Query = Box<dyn Fn(&u64) -> Result<u64, &'static str> + Send + Sync>;

/// A loading cache whose database answers `key * 10` while `up`, taking `query_time` of
/// the cache's clock, and fails at once otherwise, counting every call.
fn flaky_database(
    clock: &ManualClock,
    refresh: Refresh,
    query_time: Duration,
) -> (
    larder::patterns::LoadingCache<u64, u64, Query>,
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
) {
    let up = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = {
        let (up, calls, time) = (Arc::clone(&up), Arc::clone(&calls), clock.clone());
        let query: Query = Box::new(move |key: &u64| {
            calls.fetch_add(1, Ordering::SeqCst);
            if up.load(Ordering::SeqCst) {
                time.advance(query_time);
                Ok(*key * 10)
            } else {
                Err("database down")
            }
        });
        Cache::<u64, u64>::builder()
            .max_entries(100)
            .default_ttl(TTL)
            .clock(clock.clone())
            .loader(query)
            .refresh(refresh)
            .seed(7)
            .build()
            .unwrap()
    };
    (cache, up, calls)
}

/// Session 22: a stale hot key whose database was down started a refresh (a thread and a
/// query) at every read once the last one had failed. Now a failed refresh waits 10 ms of
/// the cache's clock before the next, doubling with each failure in a row.
#[test]
fn a_database_that_is_down_is_retried_with_a_growing_wait_not_at_every_read() {
    let clock = ManualClock::new();
    let (cache, up, calls) = flaky_database(
        &clock,
        Refresh::StaleWhileRevalidate {
            grace: Duration::from_secs(60),
        },
        Duration::ZERO,
    );
    assert_eq!(cache.get(&3), Ok(30));
    up.store(false, Ordering::SeqCst);
    clock.advance(TTL + Duration::from_secs(1));
    let reads_while_the_clock_stands = |failures: u64| {
        for _ in 0..50 {
            assert_eq!(cache.get(&3), Ok(30), "stale, while refreshes fail");
            std::thread::sleep(Duration::from_millis(1));
        }
        eventually(|| cache.stats().refresh_failures >= failures);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            cache.stats().refresh_failures,
            failures,
            "{:?}",
            cache.stats()
        );
    };
    reads_while_the_clock_stands(1);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one load, one refresh");
    clock.advance(Duration::from_millis(10));
    reads_while_the_clock_stands(2);
    // The wait doubled: 10 ms more is not enough, 20 is.
    clock.advance(Duration::from_millis(10));
    reads_while_the_clock_stands(2);
    clock.advance(Duration::from_millis(10));
    reads_while_the_clock_stands(3);
    // Capped at a second.
    for failures in 4..12 {
        clock.advance(Duration::from_secs(1));
        reads_while_the_clock_stands(failures);
    }
    // Back up: the next refresh after the wait succeeds, and the fresh value starts over.
    up.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(1));
    cache.get(&3).unwrap();
    eventually(|| cache.stats().refreshes == 12);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(cache.stats().refresh_failures, 11);
    assert_eq!(calls.load(Ordering::SeqCst), 13);
}

/// The same wait after a failed early refresh, which runs in line: without it, every read
/// near expiry paid for a failing query while the database was down.
#[test]
fn a_failed_early_refresh_waits_before_the_next_one() {
    let clock = ManualClock::new();
    let query_time = Duration::from_millis(100);
    let (cache, up, calls) = flaky_database(&clock, Refresh::Early { beta: 1.0 }, query_time);
    assert_eq!(cache.get(&3), Ok(30));
    up.store(false, Ordering::SeqCst);
    // A microsecond before expiry, with a 100 ms query, all but one draw in 100,000
    // refresh.
    clock.advance(TTL - Duration::from_micros(1));
    for _ in 0..50 {
        assert_eq!(cache.get(&3), Ok(30));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one load, one refresh");
    assert_eq!(cache.stats().refresh_failures, 1);
}

/// The async form keeps the same wait.
#[test]
fn a_failed_async_refresh_waits_before_the_next_one() {
    let clock = ManualClock::new();
    let up = Arc::new(AtomicBool::new(true));
    let cache = {
        let up = Arc::clone(&up);
        Cache::<u64, u64>::builder()
            .max_entries(100)
            .default_ttl(TTL)
            .clock(clock.clone())
            .async_loader(move |key: &u64| {
                let (up, key) = (up.load(Ordering::SeqCst), *key);
                async move {
                    if up {
                        Ok(key * 10)
                    } else {
                        Err("database down")
                    }
                }
            })
            .refresh(Refresh::StaleWhileRevalidate {
                grace: Duration::from_secs(60),
            })
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        assert_eq!(cache.get_async(&3).await, Ok(30));
        up.store(false, Ordering::SeqCst);
        clock.advance(TTL + Duration::from_secs(1));
        for _ in 0..50 {
            assert_eq!(cache.get_async(&3).await, Ok(30));
        }
        assert_eq!(cache.stats().refresh_failures, 1, "{:?}", cache.stats());
        clock.advance(Duration::from_millis(10));
        for _ in 0..50 {
            assert_eq!(cache.get_async(&3).await, Ok(30));
        }
        assert_eq!(cache.stats().refresh_failures, 2, "{:?}", cache.stats());
    });
}
