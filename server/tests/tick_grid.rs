//! The fixed tick keeps its promises on a virtual clock: with wake-ups that jitter, stalls
//! that cause catch-up bursts, and stalls long enough for the overrun policy to skip ticks,
//! every tick that runs has its own exact grid timestamp (first + k · dt), timestamps only go
//! up, `Interval(dt)` fires in every tick that runs, and a slower interval fires on exact
//! multiples of its period.

#![allow(missing_docs)]

use std::time::Duration;

use orrery_engine::prelude::*;
use orrery_engine::{Engine, EngineConfig, SystemsExecutor};
use orrery_netcode::PrivateKey;
use orrery_server::{ServerConfig, ServerCore};
use orrery_tick::OverrunPolicy;
use rand::{RngExt, SeedableRng};

/// Fires every tick (at 20 Hz) or every second.
#[table(name = beat, scheduled(on_beat))]
#[derive(Clone, Debug, PartialEq)]
pub struct Beat {
    #[primary_key]
    #[auto_inc]
    pub scheduled_id: u64,
    pub scheduled_at: ScheduleAt,
}

/// One row per firing: which beat, at which tick timestamp.
#[table(name = fired)]
#[derive(Clone, Debug, PartialEq)]
pub struct Fired {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    pub beat: u64,
    pub at: Timestamp,
}

/// Tick timestamps as the systems saw them, with `dt`.
#[table(name = seen)]
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    pub at: Timestamp,
    pub dt_micros: u64,
}

#[reducer(init)]
pub fn init(ctx: &mut ReducerContext) -> Result<(), String> {
    for every in [50, 1_000] {
        ctx.db.beat().insert(Beat {
            scheduled_id: 0,
            scheduled_at: ScheduleAt::Interval(Duration::from_millis(every)),
        })?;
    }
    Ok(())
}

#[reducer]
pub fn on_beat(ctx: &mut ReducerContext, beat: Beat) -> Result<(), String> {
    let at = ctx.timestamp;
    ctx.db.fired().insert(Fired {
        id: 0,
        beat: beat.scheduled_id,
        at,
    })?;
    Ok(())
}

fn record(
    info: orrery_engine::bevy_ecs::prelude::Res<TickInfo>,
    mut commands: orrery_engine::bevy_ecs::prelude::Commands,
) {
    commands.spawn(Seen {
        id: 0,
        at: info.timestamp,
        dt_micros: info.dt.as_micros() as u64,
    });
}

fn core(policy: OverrunPolicy, start: Duration) -> ServerCore {
    let module = Module::builder("grid")
        .table::<Beat>()
        .table::<Fired>()
        .table::<Seen>()
        .reducers(reducers![init, on_beat])
        .add_systems(record)
        .build()
        .unwrap();
    let engine = Engine::new(
        module,
        EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.overrun = policy;
    ServerCore::new(
        engine,
        true,
        &config,
        PrivateKey::generate().unwrap(),
        vec!["127.0.0.1:40000".parse().unwrap()],
        start,
    )
    .unwrap()
}

const DT: i64 = 50_000;

/// Drives `core` for `polls` wake-ups: each one 0–4 ms late (jitter), and every 97th one a
/// stall of `stall` (a catch-up burst, or skipped ticks when it is longer than the burst cap).
/// Returns how many ticks ran and how many the clock skipped.
fn drive(core: &mut ServerCore, start: Duration, polls: u32, stall: Duration) -> (u64, u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut now = start;
    let mut ran = 0;
    for poll in 0..polls {
        let next = core.next_tick();
        let jitter = Duration::from_micros(rng.random_range(0..4_000));
        now = now.max(next) + jitter;
        if poll % 97 == 96 {
            now += stall;
        }
        ran += u64::from(core.poll(now));
    }
    let skipped = core
        .metrics()
        .ticks_skipped
        .load(std::sync::atomic::Ordering::Relaxed);
    (ran, skipped)
}

fn check(core: &ServerCore, ran: u64, skipped: u64) {
    let engine = core.tick_core().engine();
    let mut seen: Vec<Seen> = engine.rows::<Seen>();
    seen.sort_by_key(|s| s.id);
    assert_eq!(seen.len() as u64, ran);
    let first = seen[0].at.as_micros();
    assert_eq!(first % DT, 0, "the grid is made of multiples of dt");
    let mut gaps = 0;
    for pair in seen.windows(2) {
        let step = pair[1].at.as_micros() - pair[0].at.as_micros();
        assert!(
            step > 0 && step % DT == 0,
            "ticks {pair:?} are {step} µs apart"
        );
        gaps += step / DT - 1;
    }
    assert_eq!(
        gaps as u64, skipped,
        "only skipped ticks leave gaps in the grid"
    );
    assert!(seen.iter().all(|s| s.dt_micros == DT as u64));

    let fired: Vec<Fired> = engine.rows::<Fired>();
    let every_tick: Vec<i64> = fired
        .iter()
        .filter(|f| f.beat == 1)
        .map(|f| f.at.as_micros())
        .collect();
    let tick_times: Vec<i64> = seen.iter().map(|s| s.at.as_micros()).collect();
    assert_eq!(
        every_tick, tick_times,
        "Interval(dt) fires in every tick that runs"
    );
    let every_second: Vec<i64> = fired
        .iter()
        .filter(|f| f.beat == 2)
        .map(|f| f.at.as_micros())
        .collect();
    assert!(every_second.len() >= 2);
    for at in &every_second {
        // In the first tick that ran at or after a whole second: exactly on it unless that
        // tick was skipped.
        let second = at - at % 1_000_000;
        let previous = tick_times.iter().rev().find(|t| *t < at).copied();
        assert!(previous.is_none_or(|p| p < second), "late firing at {at}");
        if skipped == 0 {
            assert_eq!(
                at % 1_000_000,
                0,
                "the 1 s interval fires on whole seconds: {at}"
            );
        }
    }
    let seconds: std::collections::BTreeSet<i64> =
        every_second.iter().map(|at| at - at % 1_000_000).collect();
    assert_eq!(seconds.len(), every_second.len(), "once per period");
}

#[test]
fn jittered_wakeups_and_catch_up_bursts_keep_every_tick_on_its_grid_time() {
    let start = Duration::from_micros(1_800_000_000_123_456);
    let mut core = core(
        OverrunPolicy::Burst {
            max_ticks_per_poll: 3,
        },
        start,
    );
    // 120 ms stalls: 2–3 ticks overdue, within the burst cap: nothing is skipped.
    let (ran, skipped) = drive(&mut core, start, 600, Duration::from_millis(120));
    assert_eq!(skipped, 0);
    assert!(ran >= 600);
    check(&core, ran, skipped);
}

#[test]
fn skipped_ticks_leave_gaps_but_every_tick_that_runs_keeps_its_grid_time() {
    let start = Duration::from_micros(1_800_000_000_000_001);
    let mut core = core(
        OverrunPolicy::Burst {
            max_ticks_per_poll: 3,
        },
        start,
    );
    // 400 ms stalls: 8 ticks overdue, 3 run back to back, 5 skipped each time.
    let (ran, skipped) = drive(&mut core, start, 600, Duration::from_millis(400));
    assert!(skipped > 0);
    check(&core, ran, skipped);

    let mut core = self::core(OverrunPolicy::Skip, start);
    let (ran, skipped) = drive(&mut core, start, 300, Duration::from_millis(400));
    assert!(skipped > 0);
    check(&core, ran, skipped);
}
