//! [`FixedClock`]: a sans-IO fixed-step accumulator that says how many ticks are due.
//!
//! The clock never reads the system time. The tick loop passes `now` to [`FixedClock::poll`],
//! runs the ticks it is told to, then sleeps until [`FixedClock::next_deadline`]. Tests drive it
//! with a virtual clock (`start + Duration`).

use std::error::Error;
use std::fmt;
use std::time::{Duration, Instant};

/// What the clock does when the loop is late by more than one tick (a stall, a slow tick, a
/// suspended process).
///
/// Tick `k` is first due at `start + k * tick_duration`; the policy decides what happens to
/// deadlines that have already passed by the time the loop polls. The examples below use a
/// 50 ms tick and a loop that polls at 0 ms, then stalls and polls next at 520 ms, when ten
/// deadlines (50, 100, ..., 500 ms) have passed.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum OverrunPolicy {
    /// Catch up by running missed ticks back to back, at most `max_ticks_per_poll` per poll.
    /// A backlog beyond the cap is dropped (counted as skipped), and the tick grid keeps its
    /// phase.
    ///
    /// With `max_ticks_per_poll: 4`, the poll at 520 ms runs 4 ticks and skips 6; the next tick is
    /// due at 550 ms. With a cap of 10 or more it runs all 10.
    Burst {
        /// The most ticks one poll may ask for; must be at least 1.
        max_ticks_per_poll: u32,
    },
    /// Run one tick, drop the missed ones, keep the original phase grid.
    ///
    /// The poll at 520 ms runs 1 tick and skips 9; the next tick is due at 550 ms.
    Skip,
    /// Run one tick and restart the grid from the poll time, shifting every later deadline.
    ///
    /// The poll at 520 ms runs 1 tick and skips 9 (the old grid's deadlines that will never
    /// run); the next tick is due at 570 ms, then 620 ms, and so on. Even a slightly late poll
    /// shifts the grid, so this policy drifts by design.
    Delay,
}

/// Why a [`FixedClock`] could not be built or reconfigured.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum ClockError {
    /// The tick duration was zero; a zero-length tick would be due infinitely often.
    ZeroTickDuration,
    /// [`OverrunPolicy::Burst`] had `max_ticks_per_poll: 0`; the clock would never run a tick.
    ZeroBurstCap,
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClockError::ZeroTickDuration => "tick duration must be greater than zero",
            ClockError::ZeroBurstCap => {
                "burst overrun policy must allow at least one tick per poll"
            }
        })
    }
}

impl Error for ClockError {}

/// The answer of one [`FixedClock::poll`].
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct TicksDue {
    /// How many ticks the caller must run now, back to back.
    pub run: u32,
    /// How many deadlines passed that the overrun policy dropped; these ticks will never run.
    pub skipped: u64,
}

/// A fixed-step clock: tick `k` is due at `start + k * tick_duration`, adjusted by the
/// [`OverrunPolicy`] when the loop falls behind.
///
/// Deadlines are computed from the grid, not from when the previous poll happened, so polling
/// late or early never accumulates drift (except under [`OverrunPolicy::Delay`], which
/// re-phases on purpose).
///
/// ```
/// use std::time::{Duration, Instant};
/// use orrery_tick::{FixedClock, OverrunPolicy};
///
/// let start = Instant::now();
/// let tick = Duration::from_millis(50);
/// let mut clock = FixedClock::new(tick, start, OverrunPolicy::Skip).unwrap();
/// assert_eq!(clock.poll(start).run, 1); // tick 0 is due at start
/// assert_eq!(clock.poll(start + Duration::from_millis(49)).run, 0);
/// assert_eq!(clock.next_deadline(), start + tick);
/// assert_eq!(clock.poll(start + Duration::from_millis(51)).run, 1);
/// ```
#[derive(Clone, Debug)]
pub struct FixedClock {
    tick_duration: Duration,
    policy: OverrunPolicy,
    next_deadline: Instant,
    /// The grid point of the most recently consumed (run or skipped) deadline; `None` before the
    /// first tick, when the grid is anchored at `start` instead.
    last_deadline: Option<Instant>,
    /// The latest `now` seen, so a clock that goes backwards reads as no time passing.
    latest_now: Option<Instant>,
    ticks_run: u64,
    ticks_skipped: u64,
}

impl FixedClock {
    /// A clock whose first tick is due at `start`.
    ///
    /// # Errors
    ///
    /// [`ClockError::ZeroTickDuration`] if `tick_duration` is zero, and
    /// [`ClockError::ZeroBurstCap`] for a burst policy with a cap of zero.
    pub fn new(
        tick_duration: Duration,
        start: Instant,
        policy: OverrunPolicy,
    ) -> Result<Self, ClockError> {
        check_tick_duration(tick_duration)?;
        if matches!(
            policy,
            OverrunPolicy::Burst {
                max_ticks_per_poll: 0
            }
        ) {
            return Err(ClockError::ZeroBurstCap);
        }
        Ok(FixedClock {
            tick_duration,
            policy,
            next_deadline: start,
            last_deadline: None,
            latest_now: None,
            ticks_run: 0,
            ticks_skipped: 0,
        })
    }

    /// Advances the clock to `now` and says how many ticks to run now and how many the policy
    /// dropped.
    ///
    /// A `now` earlier than one passed before is treated as no time having passed. After every
    /// poll, [`FixedClock::next_deadline`] is later than `now`.
    ///
    /// # Panics
    ///
    /// Only if the next deadline does not fit in an [`Instant`], which takes a tick duration of
    /// centuries; a stall of any length does not panic.
    #[must_use = "the caller must run the ticks that are due"]
    pub fn poll(&mut self, now: Instant) -> TicksDue {
        let now = match self.latest_now {
            Some(latest) => now.max(latest),
            None => now,
        };
        self.latest_now = Some(now);
        if now < self.next_deadline {
            return TicksDue::default();
        }

        let tick_nanos = self.tick_duration.as_nanos();
        let behind_nanos = now.duration_since(self.next_deadline).as_nanos();
        // Deadlines in [next_deadline, now]; u128 so even centuries of 1 ns ticks cannot overflow.
        let passed = behind_nanos / tick_nanos + 1;
        // Below tick_nanos, which came from a Duration, so it converts back without panicking.
        let since_last_grid_point = Duration::from_nanos_u128(behind_nanos % tick_nanos);
        let last_grid_point = now - since_last_grid_point;

        let run: u32 = match self.policy {
            OverrunPolicy::Burst { max_ticks_per_poll } => u32::try_from(passed)
                .map_or(max_ticks_per_poll, |passed| passed.min(max_ticks_per_poll)),
            OverrunPolicy::Skip | OverrunPolicy::Delay => 1,
        };
        let (last_deadline, next_deadline) = match self.policy {
            OverrunPolicy::Burst { .. } | OverrunPolicy::Skip => {
                (last_grid_point, last_grid_point + self.tick_duration)
            }
            OverrunPolicy::Delay => (now, now + self.tick_duration),
        };
        self.last_deadline = Some(last_deadline);
        self.next_deadline = next_deadline;

        let skipped = saturate_u64(passed - u128::from(run));
        self.ticks_run = self.ticks_run.saturating_add(u64::from(run));
        self.ticks_skipped = self.ticks_skipped.saturating_add(skipped);
        TicksDue { run, skipped }
    }

    /// When the next tick becomes due; the loop sleeps until then. Before the first poll this is
    /// `start`.
    #[must_use]
    pub fn next_deadline(&self) -> Instant {
        self.next_deadline
    }

    /// The length of one tick.
    #[must_use]
    pub fn tick_duration(&self) -> Duration {
        self.tick_duration
    }

    /// Changes the tick length from the next tick on: the next deadline becomes the last consumed
    /// deadline plus `tick_duration`, and the grid continues from there. Before any tick has
    /// been consumed the first tick stays due at `start`.
    ///
    /// # Errors
    ///
    /// [`ClockError::ZeroTickDuration`] if `tick_duration` is zero; the clock is unchanged.
    pub fn set_tick_duration(&mut self, tick_duration: Duration) -> Result<(), ClockError> {
        check_tick_duration(tick_duration)?;
        self.tick_duration = tick_duration;
        if let Some(last_deadline) = self.last_deadline {
            self.next_deadline = last_deadline + tick_duration;
        }
        Ok(())
    }

    /// How many ticks [`FixedClock::poll`] has asked the loop to run in total (saturating).
    #[must_use]
    pub fn ticks_run(&self) -> u64 {
        self.ticks_run
    }

    /// How many deadlines the overrun policy has dropped in total (saturating).
    #[must_use]
    pub fn ticks_skipped(&self) -> u64 {
        self.ticks_skipped
    }

    /// The overrun policy this clock was built with.
    #[must_use]
    pub fn policy(&self) -> OverrunPolicy {
        self.policy
    }
}

fn check_tick_duration(tick_duration: Duration) -> Result<(), ClockError> {
    if tick_duration.is_zero() {
        Err(ClockError::ZeroTickDuration)
    } else {
        Ok(())
    }
}

fn saturate_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}
