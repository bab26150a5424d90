//! Single-flight loading under stampedes, sync and async, and every way a load can end:
//! value, error, panic, cancellation, timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

mod common;
use common::runtime;
use larder::{Cache, ManualClock};

/// A hot key that has just expired, asked for by `callers` threads at once: how many loads
/// ran with larder's single-flight, and with plain cache-aside (get, load on a miss, insert).
fn expired_hot_key_stampede(callers: usize) -> (usize, usize) {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(1000)
        .clock(clock.clone())
        .build()
        .unwrap();
    let loads = AtomicUsize::new(0);
    let slow_load = || {
        loads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        42
    };
    let mut counts = [0; 2];
    for (protected, count) in [true, false].into_iter().zip(&mut counts) {
        cache
            .insert_with_ttl(7, 41, Duration::from_secs(1))
            .unwrap();
        clock.advance(Duration::from_secs(2));
        loads.store(0, Ordering::SeqCst);
        let barrier = Barrier::new(callers);
        std::thread::scope(|scope| {
            for _ in 0..callers {
                scope.spawn(|| {
                    barrier.wait();
                    let value = if protected {
                        cache.get_or_insert_with(7, slow_load)
                    } else {
                        cache.get(&7).unwrap_or_else(|| {
                            let value = slow_load();
                            cache.insert(7, value).unwrap();
                            value
                        })
                    };
                    assert_eq!(value, 42);
                });
            }
        });
        *count = loads.load(Ordering::SeqCst);
    }
    (counts[0], counts[1])
}

#[test]
fn sixty_four_threads_on_an_expired_hot_key_run_one_load() {
    let (protected, unprotected) = expired_hot_key_stampede(64);
    println!(
        "64 threads, expired hot key: {protected} load(s) single-flight, {unprotected} cache-aside"
    );
    assert_eq!(protected, 1);
    // Without protection the stampede is real (every thread misses within the 50 ms load).
    assert!(unprotected > 1, "cache-aside ran {unprotected} loads");
}

#[test]
fn a_thousand_tasks_on_an_expired_hot_key_run_one_load() {
    let clock = ManualClock::new();
    let cache: Cache<u64, u64> = Cache::builder()
        .max_entries(1000)
        .clock(clock.clone())
        .build()
        .unwrap();
    cache
        .insert_with_ttl(7, 41, Duration::from_secs(1))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    let loads = Arc::new(AtomicUsize::new(0));
    runtime().block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (cache, loads) = (cache.clone(), Arc::clone(&loads));
                tokio::spawn(async move {
                    cache
                        .get_or_insert_async(7, async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            42
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), 42);
        }
    });
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(&7), Some(42));
    let stats = cache.stats();
    println!(
        "1000 tasks: {} load(s), {} joined",
        stats.loads, stats.loads_joined
    );
    assert_eq!(stats.loads, 1);
    assert!(stats.loads_joined > 0 && stats.loads_joined <= 999);
}

#[test]
fn a_cancelled_leader_hands_the_load_to_a_waiter() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    runtime().block_on(async {
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_insert_async(1, std::future::pending::<u64>())
                    .await
            })
        };
        // Let the leader register before the waiter arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_or_insert_async(1, async { 11 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the waiter must wait for the leader");
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        assert_eq!(waiter.await.unwrap(), 11, "the waiter took over");
    });
    assert_eq!(cache.get(&1), Some(11));
}

#[test]
fn a_timed_out_load_caches_nothing_and_the_next_call_loads_again() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    runtime().block_on(async {
        let slow = cache.get_or_insert_async(1, async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            1
        });
        assert!(tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err());
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get_or_insert_async(1, async { 2 }).await, 2);
    });
}

#[test]
fn a_failing_async_loader_caches_nothing_and_releases_waiters() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    runtime().block_on(async {
        let failing = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .try_get_or_insert_async(1, async {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Err::<u64, &str>("database down")
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .try_get_or_insert_async(1, async { Ok::<u64, &str>(5) })
                    .await
            })
        };
        assert_eq!(failing.await.unwrap(), Err("database down"));
        assert_eq!(waiter.await.unwrap(), Ok(5), "the waiter loaded for itself");
    });
    assert_eq!(cache.get(&1), Some(5));
}

#[test]
fn a_panicking_async_loader_releases_its_waiters() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    runtime().block_on(async {
        let panicking = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_insert_async(1, async {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        panic!("loader panicked")
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_or_insert_async(1, async { 6 }).await })
        };
        assert!(panicking.await.unwrap_err().is_panic());
        assert_eq!(waiter.await.unwrap(), 6);
    });
    cache.validate();
}

#[test]
fn sync_and_async_callers_share_one_load() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let runtime = runtime();
    std::thread::scope(|scope| {
        let (cache, loads) = (&cache, &loads);
        // A blocking caller leads; async callers join its load.
        scope.spawn(move || {
            cache.get_or_insert_with(3, || {
                loads.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
                9
            })
        });
        std::thread::sleep(Duration::from_millis(10));
        runtime.block_on(async {
            let tasks: Vec<_> = (0..50)
                .map(|_| {
                    let (cache, loads) = (cache.clone(), Arc::clone(loads));
                    tokio::spawn(async move {
                        cache
                            .get_or_insert_async(3, async move {
                                loads.fetch_add(1, Ordering::SeqCst);
                                0
                            })
                            .await
                    })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.unwrap(), 9);
            }
        });
    });
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[test]
fn a_blocking_caller_stops_waiting_at_its_timeout() {
    use larder::LoadError;
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| {
            cache.get_or_insert_with(1, || {
                std::thread::sleep(Duration::from_millis(200));
                1
            })
        });
        std::thread::sleep(Duration::from_millis(20));
        let started = std::time::Instant::now();
        let waited =
            cache.try_get_or_insert_with_timeout(1, Duration::from_millis(30), || Ok::<u64, ()>(2));
        assert_eq!(
            waited,
            Err(LoadError::TimedOut),
            "the leader is still loading"
        );
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "gave up in time"
        );
        assert_eq!(leader.join().unwrap(), 1);
    });
    assert_eq!(cache.get(&1), Some(1), "the leader's load still landed");
    assert_eq!(
        cache.try_get_or_insert_with_timeout(2, Duration::from_millis(30), || Err::<u64, _>("db")),
        Err(LoadError::Failed("db"))
    );
}

#[test]
fn a_waiter_that_takes_over_an_abandoned_load_counts_one_miss() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| {
            cache.try_get_or_insert_with(1, || {
                std::thread::sleep(Duration::from_millis(50));
                Err::<u64, &str>("failed")
            })
        });
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(cache.get_or_insert_with(1, || 5), 5);
        assert_eq!(leader.join().unwrap(), Err("failed"));
    });
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.loads),
        (2, 2),
        "one miss per caller: {stats:?}"
    );
}
