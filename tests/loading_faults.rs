//! Single-flight loading: faults session 22's review showed, each test failing before its
//! fix (waker lists that grew without bound, waiters left hanging by a key whose `Drop`
//! panics, `LoadingCache::remove` deadlocking a current-thread runtime, and a plain
//! `insert`, `remove` or `clear` racing a load of the same key undone by the load's value).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Wake, Waker};

use larder::Cache;

/// A waker whose live clones can be counted (`Arc::strong_count`).
struct Counted;
impl Wake for Counted {
    fn wake(self: Arc<Self>) {}
}

fn poll_once<F: Future>(future: std::pin::Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(waker))
}

/// Two tasks waiting on one load, each polled again without having been woken (as a
/// `select!` with a ticking timer, or a `join!` with another branch making progress, does):
/// each repoll of one after the other pushes one more waker clone onto the slot, which
/// grows without bound for as long as the load runs.
#[test]
fn repolled_waiters_do_not_grow_the_slots_waker_list() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let mut leader = pin!(cache.get_or_insert_async(1, std::future::pending::<u64>()));
    assert!(poll_once(leader.as_mut(), Waker::noop()).is_pending());

    let (a, b) = (Arc::new(Counted), Arc::new(Counted));
    let (wa, wb) = (Waker::from(Arc::clone(&a)), Waker::from(Arc::clone(&b)));
    let mut wait_a = pin!(cache.get_or_insert_async(1, async { 2 }));
    let mut wait_b = pin!(cache.get_or_insert_async(1, async { 3 }));
    for _ in 0..1000 {
        assert!(poll_once(wait_a.as_mut(), &wa).is_pending());
        assert!(poll_once(wait_b.as_mut(), &wb).is_pending());
    }
    // Held here: `a`, `wa`; at most one clone of each in the slot.
    let (held_a, held_b) = (Arc::strong_count(&a) - 2, Arc::strong_count(&b) - 2);
    println!("wakers held by the slot: {held_a} of task a, {held_b} of task b");
    assert!(
        held_a <= 1 && held_b <= 1,
        "the slot holds {held_a} + {held_b} wakers for 2 waiting tasks"
    );
}

/// Waiters cancelled by a timeout (and retried, as callers do) leave their wakers in the
/// slot until the load ends: each holds its task's allocation alive, without bound while
/// the load hangs.
#[test]
fn cancelled_waiters_do_not_leave_their_wakers_behind() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let mut leader = pin!(cache.get_or_insert_async(1, std::future::pending::<u64>()));
    assert!(poll_once(leader.as_mut(), Waker::noop()).is_pending());

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    struct Tracked;
    impl Wake for Tracked {
        fn wake(self: Arc<Self>) {}
    }
    impl Drop for Tracked {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }
    for _ in 0..1000 {
        // Each attempt is a task of its own (a request handler), with its own waker.
        LIVE.fetch_add(1, Ordering::SeqCst);
        let waker = Waker::from(Arc::new(Tracked));
        let mut waiter = pin!(cache.get_or_insert_async(1, async { 2 }));
        assert!(poll_once(waiter.as_mut(), &waker).is_pending());
        // Dropped here with its task: cancelled (timed out).
    }
    let held = LIVE.load(Ordering::SeqCst);
    println!("wakers of 1000 cancelled waiters still held: {held}");
    assert_eq!(held, 0, "{held} wakers of cancelled waiters are still held");
}

/// `Cache::insert` while a `get_or_insert_with` load of the same key runs: the load's
/// (older) value replaces the inserted one.
#[test]
fn an_insert_during_a_load_is_not_undone_by_it() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let loading = Barrier::new(2);
    let inserted = Barrier::new(2);
    std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            cache.get_or_insert_with(1, || {
                loading.wait();
                inserted.wait();
                10 // read from the database before the insert
            })
        });
        loading.wait();
        cache.insert(1, 20).unwrap();
        inserted.wait();
        assert_eq!(loader.join().unwrap(), 10);
    });
    assert_eq!(cache.get(&1), Some(20), "the insert was undone by the load");
}

/// `Cache::remove` (an invalidation: the database changed) while a load that read the old
/// row runs: the old value is cached after the removal, and stays until its TTL.
#[test]
fn a_remove_during_a_load_is_not_undone_by_it() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let database = AtomicUsize::new(10);
    let loading = Barrier::new(2);
    let removed = Barrier::new(2);
    std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            cache.get_or_insert_with(1, || {
                let row = database.load(Ordering::SeqCst) as u64;
                loading.wait();
                removed.wait();
                row
            })
        });
        loading.wait();
        database.store(20, Ordering::SeqCst);
        cache.remove(&1);
        removed.wait();
        assert_eq!(loader.join().unwrap(), 10);
    });
    assert_ne!(
        cache.get(&1),
        Some(10),
        "the value the remove invalidated was cached after it"
    );
}

/// The same with `clear`.
#[test]
fn a_clear_during_a_load_is_not_undone_by_it() {
    let cache: Cache<u64, u64> = Cache::builder().max_entries(100).build().unwrap();
    let loading = Barrier::new(2);
    let cleared = Barrier::new(2);
    std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            cache.get_or_insert_with(1, || {
                loading.wait();
                cleared.wait();
                10
            })
        });
        loading.wait();
        cache.clear();
        cleared.wait();
        loader.join().unwrap();
    });
    assert_eq!(cache.get(&1), None, "the clear was undone by the load");
}

/// A key whose `Drop` panics, dropped when its failed loader's registration is: the panic
/// leaves `Registration::drop` before it ends the slot, so the waiters are never released
/// (a blocking waiter without a timeout hangs for good).
#[test]
fn a_key_whose_drop_panics_after_a_failed_load_still_releases_the_waiters() {
    #[derive(Clone)]
    struct Key {
        id: u64,
        panic_on_drop: bool,
    }
    impl PartialEq for Key {
        fn eq(&self, other: &Self) -> bool {
            self.id == other.id
        }
    }
    impl Eq for Key {}
    impl std::hash::Hash for Key {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.id.hash(state);
        }
    }
    impl Drop for Key {
        fn drop(&mut self) {
            if self.panic_on_drop && !std::thread::panicking() {
                panic!("key drop");
            }
        }
    }
    let cache: Cache<Key, u64> = Cache::builder().max_entries(100).build().unwrap();
    let loading = Barrier::new(2);
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| {
            let key = Key {
                id: 1,
                panic_on_drop: true,
            };
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cache.try_get_or_insert_with(key, || {
                    loading.wait();
                    // Let the waiter join this load.
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    Err::<u64, _>("database down")
                })
            }));
        });
        loading.wait();
        let key = Key {
            id: 1,
            panic_on_drop: false,
        };
        let got =
            cache.try_get_or_insert_with_timeout(key, std::time::Duration::from_secs(3), || {
                Ok::<_, ()>(7)
            });
        leader.join().unwrap();
        assert_eq!(got, Ok(7), "the waiter was never released");
    });
}

/// `LoadingCache::remove` is the only removal an async read-through cache has, and it
/// blocks its thread on a condition variable until a load of the key in flight ends. On a
/// current-thread runtime (or with every worker so blocked) the load it waits for is never
/// polled again: the remove never returns.
#[test]
fn removing_from_an_async_loading_cache_does_not_deadlock_its_runtime() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let cache = Cache::<u64, u64>::builder()
            .max_entries(100)
            .async_loader(|key: &u64| {
                let key = *key;
                async move {
                    tokio::task::yield_now().await;
                    Ok::<_, ()>(key * 10)
                }
            })
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let reader = {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get_async(&1).await })
            };
            // Let the reader register its load and yield inside the loader.
            tokio::task::yield_now().await;
            cache.remove_async(&1).await;
            assert_eq!(reader.await.unwrap(), Ok(10));
        });
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx
            .recv_timeout(std::time::Duration::from_secs(3))
            .is_ok(),
        "remove blocked the runtime's only thread on the load it waits for"
    );
}
