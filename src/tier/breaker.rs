//! A circuit breaker in front of Redis, so a dead server costs callers nothing after the
//! first few timeouts.
//!
//! Closed, it counts consecutive failures; at `threshold` it opens and refuses every call
//! for `cooldown`. Then it lets one probe through: a success closes it, a failure opens it
//! for another cooldown. A probe whose caller gave up (its future dropped) never reports, so
//! after a further cooldown the breaker lets another probe through rather than stay shut.
//! A cooldown too long for the clock to count (`Duration::MAX`) lasts for good: once open,
//! the breaker stays open, rather than panic in the call that opened it.

use std::time::{Duration, Instant};

use crate::sync::{lock, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    Probing { since: Instant },
}

/// What `record` did, for statistics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    Opened,
    Closed,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// `threshold` is at least 1.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call to Redis may go ahead now.
    pub(crate) fn allow(&self, now: Instant) -> bool {
        let mut state = lock(&self.state);
        match *state {
            State::Closed { .. } => true,
            State::Open { until } | State::Probing { since: until } if now >= until => {
                *state = State::Probing {
                    since: later(now, self.cooldown),
                };
                true
            }
            State::Open { .. } | State::Probing { .. } => false,
        }
    }

    /// Reports how an allowed call went.
    pub(crate) fn record(&self, ok: bool, now: Instant) -> Transition {
        let mut state = lock(&self.state);
        match (*state, ok) {
            (State::Closed { .. }, true) => {
                *state = State::Closed { failures: 0 };
                Transition::None
            }
            (State::Closed { failures }, false) => {
                if failures + 1 >= self.threshold {
                    *state = State::Open {
                        until: later(now, self.cooldown),
                    };
                    Transition::Opened
                } else {
                    *state = State::Closed {
                        failures: failures + 1,
                    };
                    Transition::None
                }
            }
            (State::Open { .. } | State::Probing { .. }, true) => {
                *state = State::Closed { failures: 0 };
                Transition::Closed
            }
            (State::Probing { .. }, false) => {
                *state = State::Open {
                    until: later(now, self.cooldown),
                };
                Transition::Opened
            }
            // A call allowed before the breaker opened, failing late: already open.
            (State::Open { .. }, false) => Transition::None,
        }
    }

    /// Whether a call made at `now` would be refused (open within its cooldown, or a probe
    /// in flight).
    pub(crate) fn is_open(&self, now: Instant) -> bool {
        match *lock(&self.state) {
            State::Closed { .. } => false,
            State::Open { until } | State::Probing { since: until } => now < until,
        }
    }
}

/// `now + by`, or if the clock cannot count that far, about as late as it can (within a
/// factor of two). The cooldown is the user's, and `Instant + Duration` panics on overflow:
/// a failed read, which is only a miss, would panic instead.
fn later(now: Instant, mut by: Duration) -> Instant {
    loop {
        if let Some(then) = now.checked_add(by) {
            return then;
        }
        // Ends: `now + 0` is `now`.
        by /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_millis(100);

    #[test]
    fn opens_after_threshold_failures_and_probes_after_the_cooldown() {
        let breaker = Breaker::new(3, COOLDOWN);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(breaker.allow(t0));
            assert_eq!(breaker.record(false, t0), Transition::None);
        }
        assert!(breaker.allow(t0));
        assert_eq!(breaker.record(false, t0), Transition::Opened);
        assert!(!breaker.allow(t0 + COOLDOWN / 2), "open: no calls");
        let later = t0 + COOLDOWN;
        assert!(breaker.allow(later), "one probe after the cooldown");
        assert!(!breaker.allow(later), "only one probe at a time");
        assert_eq!(breaker.record(false, later), Transition::Opened);
        assert!(!breaker.allow(later + COOLDOWN / 2));
        let again = later + COOLDOWN;
        assert!(breaker.allow(again));
        assert_eq!(breaker.record(true, again), Transition::Closed);
        assert!(breaker.allow(again) && !breaker.is_open(again));
    }

    #[test]
    fn a_success_resets_the_count_and_a_lost_probe_is_replaced() {
        let breaker = Breaker::new(2, COOLDOWN);
        let t0 = Instant::now();
        breaker.record(false, t0);
        breaker.record(true, t0);
        assert_eq!(
            breaker.record(false, t0),
            Transition::None,
            "count was reset"
        );
        assert_eq!(breaker.record(false, t0), Transition::Opened);
        assert!(breaker.is_open(t0) && !breaker.is_open(t0 + COOLDOWN));
        let probe = t0 + COOLDOWN;
        assert!(breaker.allow(probe));
        // The probe's caller gave up and never reports: another probe later.
        assert!(!breaker.allow(probe + COOLDOWN / 2));
        assert!(breaker.allow(probe + COOLDOWN));
    }

    #[test]
    fn a_cooldown_too_long_for_the_clock_keeps_the_breaker_open_without_panicking() {
        let breaker = Breaker::new(1, Duration::MAX);
        let t0 = Instant::now();
        assert_eq!(breaker.record(false, t0), Transition::Opened);
        let years = t0 + Duration::from_secs(10 * 365 * 86_400);
        assert!(!breaker.allow(years) && breaker.is_open(years));
        // At the far end of the clock the probe's own cooldown saturates too.
        let end = later(t0, Duration::MAX);
        assert!(breaker.allow(end), "probe at the end of time");
        assert!(!breaker.allow(end));
        assert_eq!(breaker.record(false, end), Transition::Opened);
        assert!(breaker.is_open(end));
    }
}
