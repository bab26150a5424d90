//! The one place atomics, locks and the epoch collector come from.
//!
//! Under `--cfg larder_loom` every primitive is loom's, so the loom models in `tests/loom.rs`
//! explore the same code that ships. Nothing else in the crate names `std::sync` or `loom`
//! directly.

#[cfg(not(larder_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};

#[cfg(larder_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex, MutexGuard,
};

pub(crate) use crossbeam_epoch::{Atomic, Guard, Owned, Shared};

/// Pins the current thread to the epoch collector.
///
/// Outside loom this is the process-wide default collector, whose per-thread handle makes
/// pinning a few instructions. Under loom each model execution needs fresh state, so the
/// collector lives in a loom `lazy_static` that loom resets between executions.
#[cfg(not(larder_loom))]
#[inline]
pub(crate) fn pin() -> Guard {
    crossbeam_epoch::pin()
}

/// Pins the current thread to the model-local epoch collector (see the std version).
#[cfg(larder_loom)]
pub(crate) fn pin() -> Guard {
    use crossbeam_epoch::{Collector, LocalHandle};
    loom::lazy_static! {
        static ref COLLECTOR: Collector = Collector::new();
    }
    loom::thread_local! {
        static HANDLE: LocalHandle = COLLECTOR.register();
    }
    HANDLE.with(|handle| handle.pin())
}

/// The lock a shard's writers take: parking_lot's, whose lock and unlock are one
/// compare-and-swap each with no poison flag to check (std's checked the thread's panic
/// state on both, about 12 instructions per write under cachegrind); loom's under loom.
#[cfg(not(larder_loom))]
pub(crate) use parking_lot::{Mutex as ShardMutex, MutexGuard as ShardGuard};

#[cfg(larder_loom)]
pub(crate) use loom::sync::{Mutex as ShardMutex, MutexGuard as ShardGuard};

/// Locks a shard's mutex. A panic never leaves a shard's state torn (see [`lock`]), so
/// there is no poison to observe.
#[inline]
pub(crate) fn lock_shard<T>(mutex: &ShardMutex<T>) -> ShardGuard<'_, T> {
    #[cfg(not(larder_loom))]
    return mutex.lock();
    #[cfg(larder_loom)]
    return lock(mutex);
}

/// Locks `mutex`, ignoring poison.
///
/// Every critical section in larder leaves its state valid before any call that can panic
/// (user hashers, `Eq`, weighers run where a panic cannot tear a structure half-way), so a
/// poisoned lock carries no broken invariant and refusing it would only wedge the cache.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Asks the CPU to start loading the cache line at `ptr`, to be used soon: a hint that
/// changes nothing the program computes, so `ptr` may be anything, even dangling. It lets
/// a miss the write path knows is coming overlap with the work before it. A no-op off
/// x86-64 and under Miri and loom.
#[inline(always)]
pub(crate) fn prefetch<T>(ptr: *const T) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(larder_loom)))]
    // SAFETY: `prefetcht0` needs only SSE, which every x86-64 CPU has (it is in the target's
    // baseline), and it never faults or reads memory architecturally, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(larder_loom))))]
    let _ = ptr;
}
