//! The timing wheel against a map of expiry times: an id comes out of `advance` exactly once,
//! never before its time, and every due id has come out once `advance` reports it caught up.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use larder::fuzzing::Wheel;
use libfuzzer_sys::fuzz_target;

/// Delays spanning every level of the wheel and the overflow list, in nanoseconds.
const SPANS: [u64; 7] = [
    1,
    1_000_000,                // 1 ms
    1_000_000_000,            // 1 s
    60_000_000_000,           // 1 min
    3_600_000_000_000,        // 1 h
    86_400_000_000_000 * 400, // 400 days: beyond the top level
    1 << 60,                  // about 36.5 years
];

#[derive(Arbitrary, Debug)]
enum Op {
    /// Schedule (or move) id `id` to expire `amount * SPANS[span]` from now.
    Schedule {
        id: u8,
        span: u8,
        amount: u16,
    },
    Deschedule {
        id: u8,
    },
    /// Move time forward by `amount * SPANS[span]` (or back, to test the no-op), then
    /// advance with at most `work` steps.
    Advance {
        span: u8,
        amount: u16,
        back: bool,
        work: u8,
    },
    /// Calls `advance` at the current time with at most `work` steps until it reports
    /// caught up: every call makes progress, so that takes a bounded number of calls, and
    /// then nothing due is left (if the time is the wheel's latest).
    Drain {
        work: u8,
    },
    /// Sets the time to `u64::MAX - back` (the clock's end) and advances fully.
    ToEnd {
        back: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    start: u64,
    ops: Vec<Op>,
}

fn delay(span: u8, amount: u16) -> u64 {
    SPANS[usize::from(span) % SPANS.len()].saturating_mul(u64::from(amount))
}

/// Advances at `now` with `work` steps a call until caught up, within a bounded number of
/// calls; checks what comes out, and that nothing due is left when `now` is the latest time.
fn drain(wheel: &mut Wheel, due: &mut BTreeMap<u32, u64>, now: u64, wheel_time: u64, work: usize) {
    // At least two steps a call; each id costs at most a bucket visit and a filing per
    // level (5), and each call may pass up to 166 heads for free.
    let limit = 10 * (due.len() + 1) * 6 + 16;
    let mut calls = 0;
    loop {
        let mut expired = Vec::new();
        let caught_up = wheel.advance(now, work, &mut expired);
        for id in expired {
            let at = due
                .remove(&id)
                .unwrap_or_else(|| panic!("id {id} returned twice or never scheduled"));
            assert!(at <= now, "id {id} due at {at} returned at {now}");
        }
        calls += 1;
        if caught_up {
            break;
        }
        assert!(
            calls < limit,
            "{calls} calls of {work} steps did not catch up"
        );
    }
    if now == wheel_time {
        if let Some((id, at)) = due.iter().find(|(_, &at)| at <= now) {
            panic!("id {id} due at {at} still scheduled at {now} after draining");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut now = input.start;
    let mut wheel = Wheel::new(now);
    let mut due: BTreeMap<u32, u64> = BTreeMap::new();
    let mut wheel_time = now;
    for op in input.ops {
        match op {
            Op::Schedule { id, span, amount } => {
                // `u64::MAX` would mean "never": the cache never schedules it.
                let at = now.saturating_add(delay(span, amount)).min(u64::MAX - 1);
                wheel.schedule(u32::from(id), at);
                due.insert(u32::from(id), at);
            }
            Op::Deschedule { id } => {
                wheel.deschedule(u32::from(id));
                due.remove(&u32::from(id));
            }
            Op::Advance {
                span,
                amount,
                back,
                work,
            } => {
                let step = delay(span, amount);
                now = if back {
                    now.saturating_sub(step)
                } else {
                    now.saturating_add(step)
                };
                let mut expired = Vec::new();
                let caught_up = wheel.advance(now, usize::from(work), &mut expired);
                wheel_time = wheel_time.max(now);
                for id in expired {
                    let at = due
                        .remove(&id)
                        .unwrap_or_else(|| panic!("id {id} returned twice or never scheduled"));
                    assert!(at <= now, "id {id} due at {at} returned at {now}");
                }
                if caught_up {
                    // Caught up with the latest time it accepted (a backward `now` is a no-op).
                    if let Some((id, at)) = due.iter().find(|(_, &at)| at <= wheel_time) {
                        if now == wheel_time {
                            panic!("id {id} due at {at} still scheduled at {now}");
                        }
                    }
                }
            }
            Op::Drain { work } => drain(&mut wheel, &mut due, now, wheel_time, usize::from(work)),
            Op::ToEnd { back } => {
                now = u64::MAX - u64::from(back);
                wheel_time = wheel_time.max(now);
                drain(&mut wheel, &mut due, now, wheel_time, 4096);
            }
        }
        assert_eq!(wheel.len(), due.len(), "scheduled count");
        for (&id, _) in &due {
            assert!(wheel.is_scheduled(id), "id {id} lost");
        }
    }
});
