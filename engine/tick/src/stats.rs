//! Per-phase tick timing: [`PhaseTimer`] measures one tick into a [`TickTiming`], and
//! [`TickStats`] keeps a window of recent timings and summarizes it ([`TickStatsSummary`]).
//!
//! This is wall-clock *measurement* of work done, unrelated to the scheduling done by
//! [`FixedClock`](crate::FixedClock).

use std::time::{Duration, Instant};

use crate::Phase;

/// How long each phase of one tick took, and the tick's total.
///
/// The total is the sum of the phases plus any time a [`PhaseTimer`] measured but did not
/// attribute to a phase; [`TickTiming::set`] and [`TickTiming::add`] keep it in step with the
/// phases, so a timing built by hand has `total == sum of phases`.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TickTiming {
    phases: [Duration; Phase::COUNT],
    total: Duration,
}

impl TickTiming {
    /// A timing with every phase and the total at zero.
    #[must_use]
    pub const fn new() -> Self {
        TickTiming {
            phases: [Duration::ZERO; Phase::COUNT],
            total: Duration::ZERO,
        }
    }

    /// How long `phase` took.
    #[must_use]
    pub fn get(&self, phase: Phase) -> Duration {
        self.phases[phase.index()]
    }

    /// Sets how long `phase` took, replacing the previous value; the total changes by the same
    /// amount.
    pub fn set(&mut self, phase: Phase, duration: Duration) {
        let slot = &mut self.phases[phase.index()];
        // The total always includes the slot's old value, so this cannot underflow; saturate
        // anyway so absurd inputs clamp rather than panic.
        self.total = self.total.saturating_sub(*slot).saturating_add(duration);
        *slot = duration;
    }

    /// Adds `duration` to `phase` (a phase that runs in several pieces) and to the total.
    pub fn add(&mut self, phase: Phase, duration: Duration) {
        let slot = &mut self.phases[phase.index()];
        *slot = slot.saturating_add(duration);
        self.total = self.total.saturating_add(duration);
    }

    /// How long the whole tick took.
    #[must_use]
    pub fn total(&self) -> Duration {
        self.total
    }
}

/// Measures the phases of one tick: each [`PhaseTimer::lap`] attributes the time since the
/// previous lap (or the start) to a phase.
///
/// ```
/// use orrery_tick::{Phase, PhaseTimer};
///
/// let mut timer = PhaseTimer::start();
/// for phase in Phase::ALL {
///     // ... run the phase ...
///     timer.lap(phase);
/// }
/// let timing = timer.finish();
/// assert!(timing.total() >= timing.get(Phase::Systems));
/// ```
///
/// The `_at` variants take the current instant explicitly, for deterministic tests.
#[derive(Clone, Debug)]
pub struct PhaseTimer {
    last_lap: Instant,
    timing: TickTiming,
}

impl PhaseTimer {
    /// Starts timing a tick now.
    #[must_use]
    pub fn start() -> Self {
        Self::start_at(Instant::now())
    }

    /// Starts timing a tick at `now`.
    #[must_use]
    pub fn start_at(now: Instant) -> Self {
        PhaseTimer {
            last_lap: now,
            timing: TickTiming::new(),
        }
    }

    /// Attributes the time since the previous lap (or the start) to `phase`. Lapping the same
    /// phase twice adds both pieces.
    pub fn lap(&mut self, phase: Phase) {
        self.lap_at(phase, Instant::now());
    }

    /// Like [`PhaseTimer::lap`], at `now`. A `now` before the previous lap counts as zero time.
    pub fn lap_at(&mut self, phase: Phase, now: Instant) {
        self.timing
            .add(phase, now.saturating_duration_since(self.last_lap));
        self.last_lap = self.last_lap.max(now);
    }

    /// Stops timing and returns the tick's timing. Time since the last lap is not attributed to
    /// any phase but counts towards the total.
    #[must_use]
    pub fn finish(self) -> TickTiming {
        self.finish_at(Instant::now())
    }

    /// Like [`PhaseTimer::finish`], at `now`.
    #[must_use]
    pub fn finish_at(self, now: Instant) -> TickTiming {
        let mut timing = self.timing;
        timing.total = timing
            .total
            .saturating_add(now.saturating_duration_since(self.last_lap));
        timing
    }
}

/// Summary statistics of one duration (a phase, or the tick total) over a window of ticks.
///
/// Percentiles use the nearest-rank method: `pN` is the smallest recorded value such that at
/// least N% of the window is less than or equal to it, so it is always a value that was actually
/// recorded. An empty window gives all zeros.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PhaseSummary {
    /// The shortest duration in the window.
    pub min: Duration,
    /// The median (nearest-rank 50th percentile).
    pub p50: Duration,
    /// The nearest-rank 99th percentile.
    pub p99: Duration,
    /// The longest duration in the window.
    pub max: Duration,
    /// The arithmetic mean, truncated to whole nanoseconds.
    pub mean: Duration,
}

impl PhaseSummary {
    fn of_sorted(sorted: &[Duration]) -> Self {
        let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
            return PhaseSummary::default();
        };
        let count = sorted.len() as u128;
        let sum_nanos: u128 = sorted.iter().map(Duration::as_nanos).sum();
        PhaseSummary {
            min,
            p50: nearest_rank(sorted, 50),
            p99: nearest_rank(sorted, 99),
            max,
            // A mean never exceeds the max, so it fits a Duration.
            mean: Duration::from_nanos_u128(sum_nanos / count),
        }
    }
}

/// Summarizes `values`, sorting them in `scratch` (reused across calls to avoid reallocating).
fn summarize(scratch: &mut Vec<Duration>, values: impl Iterator<Item = Duration>) -> PhaseSummary {
    scratch.clear();
    scratch.extend(values);
    scratch.sort_unstable();
    PhaseSummary::of_sorted(scratch)
}

/// The nearest-rank `percent`th percentile of a non-empty sorted slice: the value at rank
/// `ceil(percent / 100 * len)`, counting ranks from 1.
fn nearest_rank(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A summary of a [`TickStats`] window.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TickStatsSummary {
    /// Per-phase summaries, indexed by [`Phase::index`]; see also [`TickStatsSummary::phase`].
    pub phases: [PhaseSummary; Phase::COUNT],
    /// Summary of the tick totals.
    pub total: PhaseSummary,
    /// How many ticks the window holds.
    pub ticks: usize,
    /// How many ticks in the window took longer than the budget.
    pub overruns: usize,
}

impl TickStatsSummary {
    /// The summary of `phase`.
    #[must_use]
    pub fn phase(&self, phase: Phase) -> PhaseSummary {
        self.phases[phase.index()]
    }
}

/// A window of the most recent [`TickTiming`]s, summarized on demand.
///
/// Recording never allocates: the window's storage is allocated up front, and once full each
/// new timing overwrites the oldest.
#[derive(Clone, Debug)]
pub struct TickStats {
    window: Vec<TickTiming>,
    capacity: usize,
    /// Where the next record goes once the window is full: the oldest entry.
    oldest: usize,
    budget: Duration,
}

impl TickStats {
    /// The window size used by [`TickStats::new`].
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// A window of the last [`TickStats::DEFAULT_CAPACITY`] ticks; a tick whose total exceeds
    /// `budget` (typically the tick duration) counts as an overrun.
    #[must_use]
    pub fn new(budget: Duration) -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY, budget)
    }

    /// A window of the last `capacity` ticks (a capacity of 0 is treated as 1); a tick whose
    /// total exceeds `budget` counts as an overrun.
    #[must_use]
    pub fn with_capacity(capacity: usize, budget: Duration) -> Self {
        let capacity = capacity.max(1);
        TickStats {
            window: Vec::with_capacity(capacity),
            capacity,
            oldest: 0,
            budget,
        }
    }

    /// Adds one tick's timing, evicting the oldest if the window is full.
    pub fn record(&mut self, timing: &TickTiming) {
        if self.window.len() < self.capacity {
            self.window.push(*timing);
        } else {
            self.window[self.oldest] = *timing;
            self.oldest = (self.oldest + 1) % self.capacity;
        }
    }

    /// Summarizes the window. Allocates a scratch buffer of the window's size.
    #[must_use]
    pub fn summary(&self) -> TickStatsSummary {
        let mut scratch = Vec::with_capacity(self.window.len());
        let phases = Phase::ALL.map(|phase| {
            summarize(
                &mut scratch,
                self.window.iter().map(|timing| timing.get(phase)),
            )
        });
        let total = summarize(&mut scratch, self.window.iter().map(TickTiming::total));
        TickStatsSummary {
            phases,
            total,
            ticks: self.window.len(),
            overruns: self
                .window
                .iter()
                .filter(|timing| timing.total() > self.budget)
                .count(),
        }
    }

    /// How many ticks the window currently holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// Whether no tick has been recorded yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// The most ticks the window holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The per-tick budget above which a tick counts as an overrun.
    #[must_use]
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Changes the overrun budget, for example after the tick duration changed. Applies to the
    /// whole window at the next [`TickStats::summary`].
    pub fn set_budget(&mut self, budget: Duration) {
        self.budget = budget;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_past_capacity_reuses_the_initial_allocation() {
        let mut stats = TickStats::with_capacity(16, Duration::from_millis(50));
        let storage = (stats.window.as_ptr(), stats.window.capacity());
        let mut timing = TickTiming::new();
        for i in 0..1000 {
            timing.set(Phase::Systems, Duration::from_micros(i));
            stats.record(&timing);
            assert_eq!((stats.window.as_ptr(), stats.window.capacity()), storage);
        }
        assert_eq!(stats.len(), 16);
    }
}
