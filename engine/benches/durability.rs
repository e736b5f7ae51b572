//! Durability throughput and recovery time.
//!
//! - `commit_log/*`: sustained ticks in which a system updates 10,000 rows (about 40 bytes
//!   each), with the commit log fsynced every tick or never, against the same ticks without
//!   durability (`in_memory`). A tick's time includes waiting for the writer when it falls
//!   behind (the queue is bounded), so ticks/s is the sustained rate; criterion's throughput is
//!   in log bytes, so its MB/s is the log's write rate.
//! - `recovery/*`: `Engine::open` of a database of 1,000,000 rows, from a snapshot alone and
//!   from the log alone (100 records of 10,000 inserts).

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
        .reducers(reducers![seed_players]);
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
    DurabilityConfig {
        fsync,
        snapshot_every_ticks,
        ..DurabilityConfig::new(dir)
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
    let commit = engine.stats().phase(Phase::Commit);
    engine.close().unwrap();
    if snapshot {
        assert_eq!(handle.last_snapshot(), last);
        // The tick that took the snapshot encoded all 1,000,000 rows on the tick thread.
        eprintln!(
            "snapshot of {ROWS} rows: commit phase of the snapshot tick {:?} (other ticks: mean {:?})",
            commit.max, commit.mean
        );
    }
}

fn bench_recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(ROWS));
    for (name, snapshot) in [("1m_rows_snapshot", true), ("1m_rows_log_replay", false)] {
        let dir = tempfile::tempdir().unwrap();
        database(dir.path(), snapshot);
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

criterion_group!(benches, bench_commit_log, bench_recovery);
criterion_main!(benches);
