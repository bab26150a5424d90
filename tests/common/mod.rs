//! Helpers shared by the integration tests.

/// Lets the epoch collector run deferred drops until `done` holds (or 10 s pass). The
/// collector is process-wide and shared with tests running in parallel, so reclamation is
/// eventual: each flush moves this thread's garbage out and collects a few batches.
pub(crate) fn settle(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        for _ in 0..64 {
            crossbeam_epoch::pin().flush();
        }
        std::thread::yield_now();
    }
}
