//! Durability throughput and recovery time.
//!
//! - `commit_log/*`: sustained ticks in which a system updates 10,000 rows (about 40 bytes
//!   each), with the commit log fsynced every tick or never, against the same ticks without
//!   durability (`in_memory`). A tick's time includes waiting for the writer when it falls
//!   behind (the queue is bounded), so ticks/s is the sustained rate; criterion's throughput is
//!   in log bytes, so its MB/s is the log's write rate.
//! - `recovery/*`: `Engine::open` of a database of 1,000,000 rows, from a snapshot alone,
//!   from the log alone (100 records of 10,000 inserts), and from a snapshot plus 64 MiB of
//!   update records (the worst moment of the default policy: the next snapshot is due).
//! - `snapshot_cost/*`: ticks of 10,000 updates over 1,000,000 rows with a snapshot every 60
//!   ticks against none: what snapshots add to the tick thread (max and p99 step time), and
//!   the materializer's memory against the snapshot's size.
//! - `input_log/*`: ticks of 10,000 system updates plus 200 queued reducer calls, on two
//!   durable engines in the same run, one recording the input log and maintaining the state
//!   hash, one not; their steps alternate, so both see the same machine (`docs/replay.md`).

#![allow(missing_docs)]
// A benchmark binary reports what it measured on stderr, next to criterion's output.
#![allow(clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::prelude::*;
use orrery_engine::{DurabilityConfig, FsyncPolicy, Phase, SystemsExecutor};

#[table(name = player)]
#[derive(Clone, Debug)]
pub struct Player {
    #[primary_key]
    pub id: u64,
    pub x: f32,
    pub y: f32,
    pub z: f32,
    pub hp: i32,
    pub gold: i64,
    pub name: String,
}

/// Pays `count` players from `first` one gold each (10,000 updates a tick in the benches).
#[reducer]
pub fn pay(ctx: &mut ReducerContext, first: u64, count: u64) -> Result<(), String> {
    for id in first..first + count {
        if let Some(mut player) = ctx.db.player().id().find(&id) {
            player.gold += 1;
            ctx.db.player().id().update(player)?;
        }
    }
    Ok(())
}

#[reducer]
pub fn seed_players(ctx: &mut ReducerContext, first: u64, count: u64) -> Result<(), String> {
    for id in first..first + count {
        ctx.db.player().insert(Player {
            id,
            x: id as f32,
            y: -(id as f32),
            z: 0.5,
            hp: 100,
            gold: (id * 7) as i64,
            name: format!("player{id:07}"),
        })?;
    }
    Ok(())
}

// Benchmarks run with the allocator the server binaries use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn walk(mut players: Query<&mut Player>) {
    for mut p in &mut players {
        p.x += 0.25;
        p.gold += 1;
    }
}

const UPDATES_PER_TICK: u64 = 10_000;

fn module(with_system: bool) -> Module {
    let builder = Module::builder("bench")
        .table::<Player>()
        .reducers(reducers![seed_players, pay]);
    let builder = if with_system {
        builder.add_systems(walk)
    } else {
        builder
    };
    builder.build().unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        executor: SystemsExecutor::SingleThreaded,
        ..EngineConfig::default()
    }
}

fn durability(dir: &Path, fsync: FsyncPolicy, snapshot_every_ticks: u64) -> DurabilityConfig {
    let defaults = DurabilityConfig::new(dir);
    DurabilityConfig {
        fsync,
        snapshot_every_ticks,
        // No snapshot at all when none is asked for by ticks.
        snapshot_every_log_bytes: if snapshot_every_ticks == 0 {
            0
        } else {
            defaults.snapshot_every_log_bytes
        },
        ..defaults
    }
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn bench_commit_log(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_log");
    group.measurement_time(Duration::from_secs(10));
    for (name, fsync) in [
        ("in_memory", None),
        ("fsync_every_tick", Some(FsyncPolicy::EveryTick)),
        ("fsync_never", Some(FsyncPolicy::Never)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = match fsync {
            Some(fsync) => {
                Engine::open(module(true), config(), durability(dir.path(), fsync, 0))
                    .unwrap()
                    .0
            }
            None => Engine::new(module(true), config()).unwrap(),
        };
        engine
            .call_reducer("seed_players", Identity::ZERO, (0u64, UPDATES_PER_TICK))
            .unwrap();
        let mut tick = 1i64;
        let seeded = engine.step(Timestamp::from_micros(tick * 50_000)).seq;
        if let Some(handle) = engine.durability() {
            assert!(handle.wait_durable(seeded, Duration::from_secs(10)));
        }
        // One tick to learn the record size.
        tick += 1;
        let before = log_bytes(dir.path());
        let out = engine.step(Timestamp::from_micros(tick * 50_000));
        assert_eq!(out.changes.len() as u64, UPDATES_PER_TICK);
        let seq = out.seq;
        if let Some(handle) = engine.durability() {
            assert!(handle.wait_durable(seq, Duration::from_secs(10)));
        }
        let record = log_bytes(dir.path()) - before;
        group.throughput(if fsync.is_some() {
            Throughput::Bytes(record)
        } else {
            Throughput::Elements(1)
        });
        let mut ticks = 0u64;
        let mut spent = Duration::ZERO;
        group.bench_function(BenchmarkId::new("10k_updates_per_tick", name), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut last = 0;
                for _ in 0..iters {
                    tick += 1;
                    last = engine.step(Timestamp::from_micros(tick * 50_000)).seq;
                }
                if let Some(handle) = engine.durability() {
                    assert!(handle.wait_durable(last, Duration::from_secs(60)));
                }
                let elapsed = start.elapsed();
                ticks += iters;
                spent += elapsed;
                elapsed
            })
        });
        let rate = ticks as f64 / spent.as_secs_f64();
        let commit = engine.stats().phase(Phase::Commit);
        eprintln!(
            "commit_log/{name}: {rate:.0} ticks/s sustained, {record} log bytes per tick, \
             {:.1} MB/s written; commit phase on the tick thread: mean {:?}, max {:?}",
            rate * record as f64 / 1e6,
            commit.mean,
            commit.max,
        );
        if fsync.is_some() {
            engine.close().unwrap();
        }
    }
    group.finish();
}

const ROWS: u64 = 1_000_000;

/// A database of `ROWS` players written in ticks of 10,000 inserts, with or without a final
/// snapshot.
fn database(dir: &Path, snapshot: bool) {
    let every = if snapshot { ROWS / 10_000 } else { 0 };
    let (mut engine, _) = Engine::open(
        module(false),
        config(),
        durability(dir, FsyncPolicy::Never, every),
    )
    .unwrap();
    let mut last = 0;
    for chunk in 0..ROWS / 10_000 {
        engine
            .call_reducer("seed_players", Identity::ZERO, (chunk * 10_000, 10_000u64))
            .unwrap();
        last = engine
            .step(Timestamp::from_micros(chunk as i64 * 50_000))
            .seq;
    }
    let handle = engine.durability().unwrap();
    engine.close().unwrap();
    if snapshot {
        assert_eq!(handle.last_snapshot(), last);
    }
}

fn snapshot_file_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snapshot"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap_or(0)
}

/// Appends update ticks (10,000 updates each, no snapshot) until the log holds `bytes` more.
fn grow_log(dir: &Path, bytes: u64) -> u64 {
    let (mut engine, report) = Engine::open(
        module(false),
        config(),
        durability(dir, FsyncPolicy::Never, 0),
    )
    .unwrap();
    let start = log_bytes(dir);
    let mut tick = report.last_tick as i64 + 1;
    let mut ticks = 0;
    while log_bytes(dir) - start < bytes {
        let first = (ticks * UPDATES_PER_TICK) % ROWS;
        engine
            .call_reducer("pay", Identity::ZERO, (first, UPDATES_PER_TICK))
            .unwrap();
        let seq = engine.step(Timestamp::from_micros(tick * 50_000)).seq;
        engine
            .durability()
            .unwrap()
            .wait_durable(seq, Duration::from_secs(10));
        tick += 1;
        ticks += 1;
    }
    engine.close().unwrap();
    ticks
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (nanoseconds): unlike wall
/// time it does not count time the thread waited for a core, so it shows the tick thread's own
/// work on a machine shared with other jobs.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn bench_snapshot_cost(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_cost");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    for (name, every) in [("no_snapshots", 0u64), ("snapshot_every_60_ticks", 60)] {
        let dir = tempfile::tempdir().unwrap();
        database(dir.path(), false);
        let (mut engine, report) = Engine::open(
            module(false),
            config(),
            durability(dir.path(), FsyncPolicy::Never, every),
        )
        .unwrap();
        let mut tick = report.last_tick as i64 + 1;
        let mut steps: Vec<Duration> = Vec::new();
        let mut cpu: Vec<Duration> = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = (tick as u64 * UPDATES_PER_TICK) % ROWS;
                    let start = Instant::now();
                    let cpu_start = thread_cpu();
                    engine
                        .call_reducer("pay", Identity::ZERO, (first, UPDATES_PER_TICK))
                        .unwrap();
                    engine.step(Timestamp::from_micros(tick * 50_000));
                    cpu.push(thread_cpu().saturating_sub(cpu_start));
                    let elapsed = start.elapsed();
                    steps.push(elapsed);
                    total += elapsed;
                    tick += 1;
                }
                total
            })
        });
        let handle = engine.durability().unwrap();
        let commit = engine.stats().phase(Phase::Commit);
        let copy = handle.snapshot_copy_bytes();
        let snapshots = handle.last_snapshot();
        engine.close().unwrap();
        if steps.is_empty() {
            // Filtered out on the command line: nothing was measured.
            continue;
        }
        steps.sort();
        cpu.sort();
        let p99 = steps[steps.len() * 99 / 100];
        let max = steps[steps.len() - 1];
        let (cpu_p99, cpu_max) = (cpu[cpu.len() * 99 / 100], cpu[cpu.len() - 1]);
        let snapshot = snapshot_file_bytes(dir.path());
        eprintln!(
            "snapshot_cost/{name}: {} ticks (10k updates of 1M rows each): step p99 {p99:?}, \
             max {max:?}; tick-thread CPU per step p99 {cpu_p99:?}, max {cpu_max:?}; commit \
             phase mean {:?}, max {:?}; newest snapshot at tick {snapshots}, {:.1} MB; \
             materializer copy {:.1} MB ({:.2}x the snapshot)",
            steps.len(),
            commit.mean,
            commit.max,
            snapshot as f64 / 1e6,
            copy as f64 / 1e6,
            copy as f64 / snapshot.max(1) as f64,
        );
    }
    group.finish();
}

fn bench_recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(ROWS));
    for (name, snapshot, extra_log) in [
        ("1m_rows_snapshot", true, 0),
        ("1m_rows_log_replay", false, 0),
        ("1m_rows_snapshot_plus_64mib_log", true, 64 << 20),
    ] {
        let dir = tempfile::tempdir().unwrap();
        database(dir.path(), snapshot);
        if extra_log > 0 {
            let ticks = grow_log(dir.path(), extra_log);
            eprintln!("recovery/{name}: {ticks} ticks of 10k updates after the snapshot");
        }
        let mut load = Duration::ZERO;
        let mut replay = Duration::ZERO;
        let mut opens = 0u32;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let (engine, report) = Engine::open(
                        module(false),
                        config(),
                        durability(dir.path(), FsyncPolicy::Never, 0),
                    )
                    .unwrap();
                    total += start.elapsed();
                    assert_eq!(report.rows, ROWS);
                    load += report.snapshot_load;
                    replay += report.replay;
                    opens += 1;
                    drop(engine);
                }
                total
            })
        });
        eprintln!(
            "recovery/{name}: snapshot load {:?}, log replay {:?} (means over {opens} opens)",
            load / opens.max(1),
            replay / opens.max(1)
        );
    }
    group.finish();
}

/// Queues `calls` one-row `pay` calls (inputs to record) and steps.
fn input_log_tick(engine: &mut Engine, tick: i64, calls: u64) -> Duration {
    for i in 0..calls {
        engine.enqueue(orrery_engine::Input::Call {
            request_id: i,
            caller: Caller::client(
                Identity::from_u64(i + 1),
                orrery_engine::ConnectionId(i + 1),
            ),
            reducer: "pay".into(),
            args: {
                let mut bytes = Vec::new();
                orrery_engine::ReducerArgs::encode_args(
                    &(i * 37 % UPDATES_PER_TICK, 1u64),
                    &mut bytes,
                );
                bytes
            },
        });
    }
    let start = Instant::now();
    engine.step(Timestamp::from_micros(tick * 50_000));
    start.elapsed()
}

fn bench_input_log(c: &mut Criterion) {
    const CALLS: u64 = 200;
    let mut group = c.benchmark_group("input_log");
    group.measurement_time(Duration::from_secs(10));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut engines: Vec<Engine> = dirs
        .iter()
        .zip([false, true])
        .map(|(dir, record)| {
            let mut d = durability(dir.path(), FsyncPolicy::Never, 0);
            d.record_inputs = record;
            let mut engine = Engine::open(module(true), config(), d).unwrap().0;
            engine
                .call_reducer("seed_players", Identity::ZERO, (0u64, UPDATES_PER_TICK))
                .unwrap();
            engine.step(Timestamp::from_micros(50_000));
            engine
        })
        .collect();
    let mut tick = 1i64;
    // Interleaved: tick k runs on the plain engine, then on the recording one.
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..600 {
        tick += 1;
        for (i, engine) in engines.iter_mut().enumerate() {
            times[i].push(input_log_tick(engine, tick, CALLS));
        }
    }
    let hash = engines[1].state_hash();
    assert_eq!(hash, Some(engines[1].full_state_hash()));
    let bytes: Vec<u64> = engines
        .iter_mut()
        .zip(&dirs)
        .map(|(engine, dir)| {
            let seq = engine.tick_seq();
            assert!(
                engine
                    .durability()
                    .unwrap()
                    .wait_durable(seq, Duration::from_secs(60))
            );
            log_bytes(dir.path())
        })
        .collect();
    let stat = |t: &mut Vec<Duration>| {
        t.sort();
        let mean = t.iter().sum::<Duration>() / t.len() as u32;
        (mean, t[t.len() / 2], t[t.len() * 99 / 100])
    };
    let (off, on) = (stat(&mut times[0]), stat(&mut times[1]));
    eprintln!(
        "input_log (10k system updates + {CALLS} calls per tick, {} ticks each, interleaved): \
         off mean {:?} p50 {:?} p99 {:?}; on mean {:?} p50 {:?} p99 {:?}; on/off mean {:.3}, \
         p50 {:.3}; log bytes {} off, {} on ({:+.1}%)",
        times[0].len(),
        off.0,
        off.1,
        off.2,
        on.0,
        on.1,
        on.2,
        on.0.as_secs_f64() / off.0.as_secs_f64(),
        on.1.as_secs_f64() / off.1.as_secs_f64(),
        bytes[0],
        bytes[1],
        (bytes[1] as f64 / bytes[0] as f64 - 1.0) * 100.0,
    );
    for (engine, name) in engines.iter_mut().zip(["off", "on"]) {
        group.bench_function(BenchmarkId::new("10k_updates_200_calls", name), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    tick += 1;
                    spent += input_log_tick(engine, tick, CALLS);
                }
                spent
            })
        });
    }
    for engine in engines {
        engine.close().unwrap();
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_input_log,
    bench_commit_log,
    bench_recovery,
    bench_snapshot_cost
);
criterion_main!(benches);
