//! Per-phase timing: `TickTiming`, `PhaseTimer` and the `TickStats` window.

use std::time::{Duration, Instant};

use orrery_tick::{Phase, PhaseSummary, PhaseTimer, TickStats, TickTiming};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn timing_with(phase: Phase, duration: Duration) -> TickTiming {
    let mut timing = TickTiming::new();
    timing.set(phase, duration);
    timing
}

#[test]
fn tick_timing_keeps_total_in_step_with_phases() {
    let mut timing = TickTiming::new();
    assert_eq!(timing, TickTiming::default());
    assert_eq!(timing.total(), Duration::ZERO);

    timing.set(Phase::Systems, ms(10));
    timing.set(Phase::Commit, ms(3));
    assert_eq!(timing.get(Phase::Systems), ms(10));
    assert_eq!(timing.get(Phase::Commit), ms(3));
    assert_eq!(timing.get(Phase::Input), Duration::ZERO);
    assert_eq!(timing.total(), ms(13));

    timing.set(Phase::Systems, ms(4));
    assert_eq!(timing.get(Phase::Systems), ms(4));
    assert_eq!(timing.total(), ms(7));

    timing.add(Phase::Commit, ms(2));
    assert_eq!(timing.get(Phase::Commit), ms(5));
    assert_eq!(timing.total(), ms(9));
}

#[test]
fn tick_timing_saturates_instead_of_overflowing() {
    let mut timing = TickTiming::new();
    timing.add(Phase::Flush, Duration::MAX);
    timing.add(Phase::Flush, ms(1));
    assert_eq!(timing.get(Phase::Flush), Duration::MAX);
    assert_eq!(timing.total(), Duration::MAX);
}

#[test]
fn phase_timer_attributes_time_between_laps() {
    let t0 = Instant::now();
    let mut timer = PhaseTimer::start_at(t0);
    timer.lap_at(Phase::Input, t0 + ms(2));
    timer.lap_at(Phase::Reducers, t0 + ms(7));
    timer.lap_at(Phase::Systems, t0 + ms(17));
    // A phase run in two pieces accumulates.
    timer.lap_at(Phase::Reducers, t0 + ms(18));
    // An instant before the previous lap counts as zero and does not rewind the timer.
    timer.lap_at(Phase::Capture, t0 + ms(1));
    timer.lap_at(Phase::Flush, t0 + ms(20));
    let timing = timer.finish_at(t0 + ms(23));

    assert_eq!(timing.get(Phase::Input), ms(2));
    assert_eq!(timing.get(Phase::Reducers), ms(6));
    assert_eq!(timing.get(Phase::Systems), ms(10));
    assert_eq!(timing.get(Phase::Capture), Duration::ZERO);
    assert_eq!(timing.get(Phase::Flush), ms(2));
    assert_eq!(timing.get(Phase::Scheduled), Duration::ZERO);
    // The 3 ms after the last lap belong to no phase but to the tick.
    assert_eq!(timing.total(), ms(23));
}

#[test]
fn phase_timer_with_the_real_clock_accounts_for_every_phase() {
    let mut timer = PhaseTimer::start();
    for phase in Phase::ALL {
        std::hint::black_box(phase.name());
        timer.lap(phase);
    }
    let timing = timer.finish();
    let phase_sum: Duration = Phase::ALL.iter().map(|&phase| timing.get(phase)).sum();
    assert!(timing.total() >= phase_sum);
}

#[test]
fn empty_window_summarizes_to_zero() {
    let stats = TickStats::new(ms(50));
    assert!(stats.is_empty());
    assert_eq!(stats.capacity(), TickStats::DEFAULT_CAPACITY);
    assert_eq!(TickStats::DEFAULT_CAPACITY, 1024);
    let summary = stats.summary();
    assert_eq!(summary.ticks, 0);
    assert_eq!(summary.overruns, 0);
    assert_eq!(summary.total, PhaseSummary::default());
    for phase in Phase::ALL {
        assert_eq!(summary.phase(phase), PhaseSummary::default());
    }
}

#[test]
fn summary_of_one_to_a_hundred_ms_has_exact_nearest_rank_percentiles() {
    let mut stats = TickStats::new(ms(50));
    // Record out of order so the summary must sort.
    for millis in (1..=100).map(|k| (k * 37) % 100 + 1) {
        let mut timing = timing_with(Phase::Systems, ms(millis));
        timing.set(Phase::Input, ms(1));
        stats.record(&timing);
    }
    let summary = stats.summary();
    assert_eq!(summary.ticks, 100);
    assert_eq!(
        summary.phase(Phase::Systems),
        PhaseSummary {
            min: ms(1),
            p50: ms(50),
            p99: ms(99),
            max: ms(100),
            mean: Duration::from_micros(50_500),
        }
    );
    assert_eq!(
        summary.phase(Phase::Input),
        PhaseSummary {
            min: ms(1),
            p50: ms(1),
            p99: ms(1),
            max: ms(1),
            mean: ms(1),
        }
    );
    assert_eq!(summary.phase(Phase::Flush), PhaseSummary::default());
    assert_eq!(
        summary.total,
        PhaseSummary {
            min: ms(2),
            p50: ms(51),
            p99: ms(100),
            max: ms(101),
            mean: Duration::from_micros(51_500),
        }
    );
    // Totals of 51..=101 ms exceed the 50 ms budget.
    assert_eq!(summary.overruns, 51);
    assert_eq!(
        summary.phases[Phase::Systems.index()],
        summary.phase(Phase::Systems)
    );
}

#[test]
fn nearest_rank_on_small_windows() {
    let summarize = |values: &[u64]| {
        let mut stats = TickStats::new(ms(50));
        for &millis in values {
            stats.record(&timing_with(Phase::Publish, ms(millis)));
        }
        stats.summary().phase(Phase::Publish)
    };

    let single = summarize(&[7]);
    assert_eq!(
        (single.min, single.p50, single.p99, single.max),
        (ms(7), ms(7), ms(7), ms(7))
    );

    // Three values: p50 is rank ceil(1.5) = 2, p99 is rank ceil(2.97) = 3.
    let three = summarize(&[3, 1, 2]);
    assert_eq!((three.p50, three.p99, three.mean), (ms(2), ms(3), ms(2)));

    // Ten values: p50 is rank 5, p99 is rank ceil(9.9) = 10.
    let ten = summarize(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    assert_eq!((ten.p50, ten.p99), (ms(50), ms(100)));

    // Two hundred values 1..=200: p50 is rank 100, p99 is rank 198.
    let many: Vec<u64> = (1..=200).rev().collect();
    let many = summarize(&many);
    assert_eq!((many.p50, many.p99, many.max), (ms(100), ms(198), ms(200)));
}

#[test]
fn mean_truncates_to_whole_nanoseconds() {
    let mut stats = TickStats::new(ms(50));
    stats.record(&timing_with(Phase::Commit, Duration::from_nanos(1)));
    stats.record(&timing_with(Phase::Commit, Duration::from_nanos(2)));
    assert_eq!(
        stats.summary().phase(Phase::Commit).mean,
        Duration::from_nanos(1)
    );
}

#[test]
fn full_window_evicts_the_oldest_ticks() {
    let mut stats = TickStats::with_capacity(4, ms(50));
    assert_eq!(stats.capacity(), 4);
    for millis in [100, 90, 1, 2, 3, 4] {
        stats.record(&timing_with(Phase::Systems, ms(millis)));
    }
    assert_eq!(stats.len(), 4);
    let summary = stats.summary();
    assert_eq!(summary.ticks, 4);
    // 100 and 90 were evicted.
    assert_eq!(summary.phase(Phase::Systems).max, ms(4));
    assert_eq!(summary.overruns, 0);

    for millis in [5, 6, 7] {
        stats.record(&timing_with(Phase::Systems, ms(millis)));
    }
    let systems = stats.summary().phase(Phase::Systems);
    assert_eq!((systems.min, systems.max), (ms(4), ms(7)));
}

#[test]
fn zero_capacity_holds_one_tick() {
    let mut stats = TickStats::with_capacity(0, ms(50));
    assert_eq!(stats.capacity(), 1);
    stats.record(&timing_with(Phase::Input, ms(1)));
    stats.record(&timing_with(Phase::Input, ms(2)));
    let summary = stats.summary();
    assert_eq!(summary.ticks, 1);
    assert_eq!(summary.phase(Phase::Input).min, ms(2));
}

#[test]
fn overruns_are_ticks_strictly_over_budget_in_the_window() {
    let mut stats = TickStats::with_capacity(4, ms(50));
    assert_eq!(stats.budget(), ms(50));
    for millis in [49, 50, 51, 100] {
        stats.record(&timing_with(Phase::Systems, ms(millis)));
    }
    assert_eq!(stats.summary().overruns, 2);

    stats.set_budget(ms(49));
    assert_eq!(stats.summary().overruns, 3);

    // Evicting the over-budget ticks removes them from the count.
    stats.set_budget(ms(50));
    stats.record(&timing_with(Phase::Systems, ms(1)));
    stats.record(&timing_with(Phase::Systems, ms(1)));
    stats.record(&timing_with(Phase::Systems, ms(1)));
    assert_eq!(stats.summary().overruns, 1);
}
