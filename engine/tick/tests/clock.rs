//! The fixed-step clock, driven by a virtual clock (`start + offset`).

use std::time::{Duration, Instant};

use orrery_tick::{ClockError, FixedClock, OverrunPolicy, TicksDue};
use proptest::prelude::*;

const TICK: Duration = Duration::from_millis(50);

/// A virtual clock: instants are `start + offset`, with room before `start` for negative offsets.
struct VirtualTime {
    start: Instant,
}

impl VirtualTime {
    fn new() -> Self {
        VirtualTime {
            start: Instant::now() + Duration::from_secs(3600),
        }
    }

    fn ms(&self, millis: u64) -> Instant {
        self.start + Duration::from_millis(millis)
    }

    fn nanos(&self, nanos: i64) -> Instant {
        let magnitude = Duration::from_nanos(nanos.unsigned_abs());
        if nanos >= 0 {
            self.start + magnitude
        } else {
            self.start - magnitude
        }
    }

    fn clock(&self, tick: Duration, policy: OverrunPolicy) -> FixedClock {
        FixedClock::new(tick, self.start, policy).expect("valid clock")
    }
}

/// Deterministic pseudo-random jitter without pulling in a dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn due(run: u32, skipped: u64) -> TicksDue {
    TicksDue { run, skipped }
}

const BURST_16: OverrunPolicy = OverrunPolicy::Burst {
    max_ticks_per_poll: 16,
};

#[test]
fn rejects_zero_tick_duration_and_zero_burst_cap() {
    let start = Instant::now();
    let zero_tick = FixedClock::new(Duration::ZERO, start, OverrunPolicy::Skip);
    assert_eq!(zero_tick.unwrap_err(), ClockError::ZeroTickDuration);
    let zero_cap = FixedClock::new(
        TICK,
        start,
        OverrunPolicy::Burst {
            max_ticks_per_poll: 0,
        },
    );
    assert_eq!(zero_cap.unwrap_err(), ClockError::ZeroBurstCap);
    assert_eq!(
        ClockError::ZeroTickDuration.to_string(),
        "tick duration must be greater than zero"
    );
    let as_error: Box<dyn std::error::Error> = Box::new(ClockError::ZeroBurstCap);
    assert!(as_error.to_string().contains("at least one tick"));
}

#[test]
fn reports_its_configuration() {
    let time = VirtualTime::new();
    let clock = time.clock(TICK, BURST_16);
    assert_eq!(clock.tick_duration(), TICK);
    assert_eq!(clock.policy(), BURST_16);
    assert_eq!(clock.next_deadline(), time.start);
    assert_eq!((clock.ticks_run(), clock.ticks_skipped()), (0, 0));
}

#[test]
fn first_tick_is_due_at_start_and_each_tick_one_duration_later() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, OverrunPolicy::Skip);
    assert_eq!(clock.poll(time.nanos(-1)), due(0, 0));
    assert_eq!(clock.poll(time.start), due(1, 0));
    assert_eq!(clock.poll(time.start), due(0, 0));
    assert_eq!(clock.next_deadline(), time.ms(50));
    assert_eq!(clock.poll(time.nanos(49_999_999)), due(0, 0));
    assert_eq!(clock.poll(time.ms(50)), due(1, 0));
    assert_eq!(clock.next_deadline(), time.ms(100));
    assert_eq!(clock.poll(time.ms(99)), due(0, 0));
    assert_eq!(clock.ticks_run(), 2);
}

/// Polls at jittered instants that never fall a whole tick behind, and checks that the tick
/// count is exactly the number of grid points passed: late polls must not push later deadlines.
fn assert_no_drift(tick: Duration, policy: OverrunPolicy) {
    let time = VirtualTime::new();
    let mut clock = time.clock(tick, policy);
    let tick_nanos = u64::try_from(tick.as_nanos()).expect("small tick");
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let ticks: u64 = 100_000;
    let mut ran: u64 = 0;
    for k in 0..ticks {
        // Poll at tick k's deadline plus up to 99% of a tick of jitter, sometimes twice.
        let deadline = i64::try_from(k * tick_nanos).expect("fits");
        let jitter = i64::try_from(rng.below(tick_nanos * 99 / 100)).expect("fits");
        let now = deadline + jitter;
        let polled = clock.poll(time.nanos(now));
        assert_eq!(polled, due(1, 0), "tick {k} polled at +{jitter}ns");
        ran += u64::from(polled.run);
        if rng.below(4) == 0 {
            assert_eq!(clock.poll(time.nanos(now)), due(0, 0));
        }
    }
    let end = i64::try_from(ticks * tick_nanos).expect("fits");
    assert_eq!(clock.poll(time.nanos(end - 1)), due(0, 0));
    assert_eq!(ran, ticks);
    assert_eq!(clock.ticks_run(), ticks);
    assert_eq!(clock.ticks_skipped(), 0);
    assert_eq!(clock.next_deadline(), time.nanos(end));
    assert_eq!(clock.poll(time.nanos(end)), due(1, 0));
}

#[test]
fn burst_does_not_drift_with_jitter() {
    assert_no_drift(TICK, BURST_16);
    // 60 Hz: a tick that is not a whole number of milliseconds.
    assert_no_drift(Duration::from_nanos(16_666_667), BURST_16);
}

#[test]
fn skip_does_not_drift_with_jitter() {
    assert_no_drift(TICK, OverrunPolicy::Skip);
    assert_no_drift(Duration::from_nanos(16_666_667), OverrunPolicy::Skip);
}

#[test]
fn burst_catches_up_on_irregular_polls_without_losing_ticks() {
    let time = VirtualTime::new();
    let mut clock = time.clock(
        TICK,
        OverrunPolicy::Burst {
            max_ticks_per_poll: u32::MAX,
        },
    );
    let mut rng = XorShift(12345);
    let mut now: u64 = 0;
    let mut ran: u64 = 0;
    while now < 3_600_000 {
        now += rng.below(170);
        ran += u64::from(clock.poll(time.ms(now)).run);
        assert_eq!(ran, now / 50 + 1, "at {now} ms");
    }
    assert_eq!(clock.ticks_skipped(), 0);
}

/// Polls at 0 ms, then not again until 520 ms: the deadlines at 50, 100, ..., 500 ms (ten
/// ticks) have all passed.
fn stall_ten_ticks(policy: OverrunPolicy) -> (VirtualTime, FixedClock, TicksDue) {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, policy);
    assert_eq!(clock.poll(time.ms(0)), due(1, 0));
    let after_stall = clock.poll(time.ms(520));
    (time, clock, after_stall)
}

#[test]
fn burst_runs_the_whole_ten_tick_backlog_within_its_cap() {
    let (time, mut clock, after_stall) = stall_ten_ticks(BURST_16);
    assert_eq!(after_stall, due(10, 0));
    assert_eq!(clock.next_deadline(), time.ms(550));
    assert_eq!(clock.poll(time.ms(549)), due(0, 0));
    assert_eq!(clock.poll(time.ms(550)), due(1, 0));
    assert_eq!((clock.ticks_run(), clock.ticks_skipped()), (12, 0));
}

#[test]
fn burst_drops_backlog_beyond_its_cap_and_keeps_phase() {
    let cap_4 = OverrunPolicy::Burst {
        max_ticks_per_poll: 4,
    };
    let (time, mut clock, after_stall) = stall_ten_ticks(cap_4);
    assert_eq!(after_stall, due(4, 6));
    // The dropped excess is not carried over to the next poll.
    assert_eq!(clock.poll(time.ms(520)), due(0, 0));
    assert_eq!(clock.next_deadline(), time.ms(550));
    assert_eq!(clock.poll(time.ms(550)), due(1, 0));
    assert_eq!((clock.ticks_run(), clock.ticks_skipped()), (6, 6));
}

#[test]
fn burst_with_backlog_exactly_at_cap_skips_nothing() {
    let cap_10 = OverrunPolicy::Burst {
        max_ticks_per_poll: 10,
    };
    let (_, _, after_stall) = stall_ten_ticks(cap_10);
    assert_eq!(after_stall, due(10, 0));
    let cap_9 = OverrunPolicy::Burst {
        max_ticks_per_poll: 9,
    };
    let (_, _, after_stall) = stall_ten_ticks(cap_9);
    assert_eq!(after_stall, due(9, 1));
}

#[test]
fn skip_runs_one_tick_and_keeps_the_original_grid() {
    let (time, mut clock, after_stall) = stall_ten_ticks(OverrunPolicy::Skip);
    assert_eq!(after_stall, due(1, 9));
    assert_eq!(clock.next_deadline(), time.ms(550));
    assert_eq!(clock.poll(time.ms(550)), due(1, 0));
    assert_eq!(clock.poll(time.ms(600)), due(1, 0));
    assert_eq!((clock.ticks_run(), clock.ticks_skipped()), (4, 9));
}

#[test]
fn delay_runs_one_tick_and_restarts_the_grid_from_the_poll() {
    let (time, mut clock, after_stall) = stall_ten_ticks(OverrunPolicy::Delay);
    assert_eq!(after_stall, due(1, 9));
    assert_eq!(clock.next_deadline(), time.ms(570));
    assert_eq!(clock.poll(time.ms(569)), due(0, 0));
    assert_eq!(clock.poll(time.ms(570)), due(1, 0));
    assert_eq!(clock.next_deadline(), time.ms(620));
    // A slightly late poll shifts the grid again.
    assert_eq!(clock.poll(time.ms(623)), due(1, 0));
    assert_eq!(clock.next_deadline(), time.ms(673));
    assert_eq!((clock.ticks_run(), clock.ticks_skipped()), (4, 9));
}

#[test]
fn delay_on_time_polls_keep_the_grid() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, OverrunPolicy::Delay);
    for k in 0..100 {
        assert_eq!(clock.poll(time.ms(k * 50)), due(1, 0));
    }
    assert_eq!(clock.next_deadline(), time.ms(5000));
}

#[test]
fn time_going_backwards_counts_as_no_time_passing() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, BURST_16);
    assert_eq!(clock.poll(time.ms(100)), due(3, 0));
    assert_eq!(clock.poll(time.ms(20)), due(0, 0));
    assert_eq!(clock.poll(time.nanos(-5_000_000_000)), due(0, 0));
    assert_eq!(clock.next_deadline(), time.ms(150));
    assert_eq!(clock.poll(time.ms(149)), due(0, 0));
    assert_eq!(clock.poll(time.ms(150)), due(1, 0));
    assert_eq!(clock.ticks_run(), 4);
}

#[test]
fn backwards_poll_still_sees_deadlines_passed_by_the_latest_now() {
    let time = VirtualTime::new();
    let mut clock = time.clock(Duration::from_millis(100), OverrunPolicy::Skip);
    assert_eq!(clock.poll(time.ms(0)), due(1, 0));
    assert_eq!(clock.poll(time.ms(90)), due(0, 0));
    // Shortening the tick moves the next deadline to 50 ms, already behind the latest now (90).
    clock.set_tick_duration(TICK).unwrap();
    assert_eq!(clock.next_deadline(), time.ms(50));
    // A poll from the past reads as 90 ms, when the 50 ms tick is due.
    assert_eq!(clock.poll(time.ms(10)), due(1, 0));
    assert_eq!(clock.next_deadline(), time.ms(100));
}

#[test]
fn a_poll_before_start_does_not_make_the_first_tick_due() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, OverrunPolicy::Skip);
    assert_eq!(clock.poll(time.nanos(-3_000_000_000)), due(0, 0));
    assert_eq!(clock.next_deadline(), time.start);
    assert_eq!(clock.poll(time.start), due(1, 0));
}

const THOUSAND_YEARS: Duration = Duration::from_secs(1000 * 365 * 86_400);

#[test]
fn huge_stall_under_burst_saturates_counters_without_panicking() {
    let time = VirtualTime::new();
    let mut clock = time.clock(
        Duration::from_nanos(1),
        OverrunPolicy::Burst {
            max_ticks_per_poll: u32::MAX,
        },
    );
    assert_eq!(clock.poll(time.start), due(1, 0));
    let now = time.start + THOUSAND_YEARS;
    // 3.15e19 one-nanosecond ticks passed: more than a u64 can count.
    assert_eq!(clock.poll(now), due(u32::MAX, u64::MAX));
    assert_eq!(clock.ticks_run(), u64::from(u32::MAX) + 1);
    assert_eq!(clock.ticks_skipped(), u64::MAX);
    assert_eq!(clock.next_deadline(), now + Duration::from_nanos(1));
    assert_eq!(clock.poll(now + THOUSAND_YEARS), due(u32::MAX, u64::MAX));
    assert_eq!(clock.ticks_skipped(), u64::MAX);
}

#[test]
fn huge_stall_under_skip_counts_exactly() {
    let time = VirtualTime::new();
    let mut clock = time.clock(Duration::from_millis(1), OverrunPolicy::Skip);
    assert_eq!(clock.poll(time.start), due(1, 0));
    let now = time.start + THOUSAND_YEARS + Duration::from_micros(300);
    let passed_ms = THOUSAND_YEARS.as_secs() * 1000;
    assert_eq!(clock.poll(now), due(1, passed_ms - 1));
    assert_eq!(
        clock.next_deadline(),
        time.start + THOUSAND_YEARS + Duration::from_millis(1)
    );
}

#[test]
fn huge_stall_under_delay_runs_one_tick() {
    let time = VirtualTime::new();
    let mut clock = time.clock(Duration::from_nanos(1), OverrunPolicy::Delay);
    assert_eq!(clock.poll(time.start), due(1, 0));
    let now = time.start + THOUSAND_YEARS;
    assert_eq!(clock.poll(now), due(1, u64::MAX));
    assert_eq!(clock.next_deadline(), now + Duration::from_nanos(1));
}

#[test]
fn set_tick_duration_continues_from_the_last_deadline() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, OverrunPolicy::Skip);
    assert_eq!(clock.poll(time.ms(0)), due(1, 0));
    assert_eq!(clock.poll(time.ms(60)), due(1, 0));
    clock.set_tick_duration(Duration::from_millis(20)).unwrap();
    assert_eq!(clock.tick_duration(), Duration::from_millis(20));
    assert_eq!(clock.next_deadline(), time.ms(70));
    assert_eq!(clock.poll(time.ms(69)), due(0, 0));
    assert_eq!(clock.poll(time.ms(70)), due(1, 0));
    // The new grid is 70, 90, 110, 130, ...
    assert_eq!(clock.poll(time.ms(135)), due(1, 2));
    assert_eq!(clock.next_deadline(), time.ms(150));

    clock.set_tick_duration(Duration::from_millis(100)).unwrap();
    assert_eq!(clock.next_deadline(), time.ms(230));
}

#[test]
fn set_tick_duration_before_the_first_tick_keeps_it_at_start() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, BURST_16);
    clock.set_tick_duration(Duration::from_millis(10)).unwrap();
    assert_eq!(clock.next_deadline(), time.start);
    assert_eq!(clock.poll(time.ms(25)), due(3, 0));
}

#[test]
fn set_tick_duration_under_delay_continues_from_the_late_poll() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, OverrunPolicy::Delay);
    assert_eq!(clock.poll(time.ms(7)), due(1, 0));
    clock.set_tick_duration(Duration::from_millis(30)).unwrap();
    assert_eq!(clock.next_deadline(), time.ms(37));
}

#[test]
fn set_tick_duration_rejects_zero_and_leaves_the_clock_unchanged() {
    let time = VirtualTime::new();
    let mut clock = time.clock(TICK, OverrunPolicy::Skip);
    assert_eq!(clock.poll(time.ms(0)), due(1, 0));
    assert_eq!(
        clock.set_tick_duration(Duration::ZERO),
        Err(ClockError::ZeroTickDuration)
    );
    assert_eq!(clock.tick_duration(), TICK);
    assert_eq!(clock.next_deadline(), time.ms(50));
}

/// Grid points `start + k * tick` at or before `offset`.
fn grid_points_passed(offset: i64, tick_nanos: i64) -> u64 {
    if offset < 0 {
        0
    } else {
        u64::try_from(offset / tick_nanos + 1).expect("non-negative")
    }
}

fn policy_strategy() -> impl Strategy<Value = OverrunPolicy> {
    prop_oneof![
        Just(OverrunPolicy::Skip),
        (1u32..20).prop_map(|max_ticks_per_poll| OverrunPolicy::Burst { max_ticks_per_poll }),
    ]
}

proptest! {
    /// For grid-keeping policies every passed deadline is accounted for exactly once, as run or
    /// skipped, however irregular (or backwards) the polls are.
    #[test]
    fn burst_and_skip_account_for_every_grid_point(
        tick_nanos in 1i64..200_000_000,
        policy in policy_strategy(),
        steps in prop::collection::vec(-300_000_000i64..1_000_000_000, 1..200),
    ) {
        let time = VirtualTime::new();
        let tick = Duration::from_nanos(tick_nanos.unsigned_abs());
        let mut clock = time.clock(tick, policy);
        let mut offset: i64 = -500_000_000;
        let mut latest = offset;
        let mut accounted: u64 = 0;
        for step in steps {
            offset += step;
            latest = latest.max(offset);
            let polled = clock.poll(time.nanos(offset));
            if let OverrunPolicy::Burst { max_ticks_per_poll } = policy {
                prop_assert!(polled.run <= max_ticks_per_poll);
            } else {
                prop_assert!(polled.run <= 1);
            }
            accounted += u64::from(polled.run) + polled.skipped;
            let passed = grid_points_passed(latest, tick_nanos);
            prop_assert_eq!(accounted, passed);
            prop_assert_eq!(clock.ticks_run() + clock.ticks_skipped(), passed);
            // The next deadline is the first grid point still in the future.
            let next = i64::try_from(passed).unwrap() * tick_nanos;
            prop_assert_eq!(clock.next_deadline(), time.nanos(next));
        }
    }

    /// Delay runs at most one tick per poll, runs one exactly when a deadline has passed, and
    /// always leaves the next deadline one tick after the latest tick it ran.
    #[test]
    fn delay_runs_one_tick_per_due_poll(
        tick_nanos in 1i64..200_000_000,
        steps in prop::collection::vec(-300_000_000i64..1_000_000_000, 1..200),
    ) {
        let time = VirtualTime::new();
        let tick = Duration::from_nanos(tick_nanos.unsigned_abs());
        let mut clock = time.clock(tick, OverrunPolicy::Delay);
        let mut offset: i64 = -500_000_000;
        let mut latest = time.nanos(offset);
        for step in steps {
            offset += step;
            latest = latest.max(time.nanos(offset));
            let was_due = clock.next_deadline() <= latest;
            let polled = clock.poll(time.nanos(offset));
            prop_assert_eq!(polled.run, u32::from(was_due));
            prop_assert!(clock.next_deadline() > latest);
            if was_due {
                prop_assert_eq!(clock.next_deadline(), latest + tick);
            }
        }
    }
}
