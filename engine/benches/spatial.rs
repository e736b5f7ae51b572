//! The spatial workload of `docs/reference-numbers.md` (100,000 entities in 4 km × 4 km; per tick
//! 10,000 moves ≤ 5 m and 2,000 radius-50 m queries), run three ways in one binary so the
//! ratios are measured under the same machine conditions:
//!
//! - `spatial_tick/raw_grid`: `orrery_spatial::SpatialGrid` directly (moves by `update`).
//! - `spatial_tick/engine_systems`: a table with a `#[spatial(cell = 50.0)]` column; a system
//!   moves rows in place, capture re-indexes them and records their changes, and a system runs
//!   the queries through `Res<TableStore<Unit>>`. One iteration is one `Engine::step`.
//! - `spatial_tick/engine_reducer_api`: the same moves, with the queries made through the
//!   reducer API (`ctx.db.unit().pos().count_within(..)`) in a read transaction.

#![allow(missing_docs)]
#![allow(clippy::print_stderr)] // the benchmark reports hits per query next to criterion's output

#[path = "../spatial/benches/support/workload.rs"]
mod workload;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;
use orrery_engine::{SystemsExecutor, TableStore};
use orrery_spatial::SpatialGrid;
use workload::{ENTITIES, QUERIES_PER_TICK, RADIUS, Sim};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[table(name = unit)]
#[derive(Clone, Debug)]
pub struct Unit {
    #[primary_key]
    pub id: u32,
    #[spatial(cell = 50.0)]
    pub pos: Vec2,
}

#[reducer]
pub fn seed_units(
    ctx: &mut ReducerContext,
    first: u32,
    positions: Vec<Vec2>,
) -> Result<(), String> {
    for (i, pos) in positions.into_iter().enumerate() {
        ctx.db.unit().insert(Unit {
            id: first + i as u32,
            pos,
        })?;
    }
    Ok(())
}

/// This tick's input: which rows move where, and where to query.
#[derive(Resource, Default)]
pub struct Plan {
    pub moves: Vec<(Entity, Vec2)>,
    pub centers: Vec<Vec2>,
    pub query_in_system: bool,
    pub hits: usize,
    pub buf: Vec<Entity>,
}

fn run_queries(mut plan: ResMut<Plan>, units: Res<TableStore<Unit>>) {
    if !plan.query_in_system {
        return;
    }
    let plan = &mut *plan;
    let index = units.indexes().pos();
    for &c in &plan.centers {
        plan.buf.clear();
        index.query_radius(c, RADIUS, &mut plan.buf);
        plan.hits += plan.buf.len();
    }
}

fn apply_moves(plan: Res<Plan>, mut units: Query<&mut Unit>) {
    for &(entity, p) in &plan.moves {
        if let Ok(mut unit) = units.get_mut(entity) {
            unit.pos = p;
        }
    }
}

struct EngineSim {
    engine: Engine,
    entities: Vec<Entity>,
    sim: Sim,
    tick: i64,
}

impl EngineSim {
    fn new(query_in_system: bool) -> Self {
        let module = Module::builder("spatial-bench")
            .table::<Unit>()
            .reducers(reducers![seed_units])
            .resource(Plan {
                query_in_system,
                ..Plan::default()
            })
            .add_systems((run_queries, apply_moves).chain())
            .build()
            .unwrap();
        let config = EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..Default::default()
        };
        let mut engine = Engine::new(module, config).unwrap();
        let sim = Sim::new();
        for (chunk_index, chunk) in sim.pos.chunks(10_000).enumerate() {
            let first = (chunk_index * 10_000) as u32;
            engine
                .call_reducer("seed_units", Identity::ZERO, (first, chunk.to_vec()))
                .unwrap();
        }
        engine.step(Timestamp::from_micros(0));
        let entities = (0..ENTITIES as u32)
            .map(|id| engine.entity::<Unit>(&id).unwrap())
            .collect();
        EngineSim {
            engine,
            entities,
            sim,
            tick: 0,
        }
    }

    /// Draws the next tick's input (outside the timed region, as the raw-grid variant does).
    fn next_input(&mut self) {
        self.sim.next_tick();
    }

    /// One tick: hand the moves and query centers to the module, then `step` (plus reducer-API
    /// queries).
    fn tick(&mut self, query_through_reducer_api: bool) -> usize {
        {
            let mut plan = self.engine.resource_mut::<Plan>();
            plan.moves.clear();
            plan.moves.extend(
                self.sim
                    .input
                    .moves
                    .iter()
                    .map(|&(i, p)| (self.entities[i], p)),
            );
            plan.centers.clear();
            plan.centers.extend_from_slice(&self.sim.input.centers);
            plan.hits = 0;
        }
        let mut hits = 0;
        if query_through_reducer_api {
            let centers = &self.sim.input.centers;
            hits = self.engine.read(|db| {
                let mut units = db.unit();
                centers
                    .iter()
                    .map(|&c| units.pos().count_within(c, RADIUS))
                    .sum()
            });
        }
        self.tick += 1;
        let out = self.engine.step(Timestamp::from_micros(self.tick * 50_000));
        black_box(out);
        hits + self.engine.world().resource::<Plan>().hits
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("spatial_tick");
    group.measurement_time(Duration::from_secs(8));

    let mut sim = Sim::new();
    let mut grid = SpatialGrid::<Vec2, Entity>::with_capacity(50.0, ENTITIES).unwrap();
    let handles: Vec<Entity> = (0..ENTITIES as u32)
        .map(|i| Entity::from_raw_u32(i).unwrap())
        .collect();
    for (i, &p) in sim.pos.iter().enumerate() {
        grid.insert(handles[i], p).unwrap();
    }
    let mut buf = Vec::with_capacity(1024);
    let mut raw_hits = 0usize;
    group.bench_function("raw_grid", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                sim.next_tick();
                let start = Instant::now();
                for &(i, p) in &sim.input.moves {
                    black_box(grid.update(handles[i], p).unwrap());
                }
                for &center in &sim.input.centers {
                    buf.clear();
                    grid.query_radius(center, RADIUS, &mut buf);
                    raw_hits += buf.len();
                }
                total += start.elapsed();
            }
            total
        })
    });

    for (name, in_system) in [("engine_systems", true), ("engine_reducer_api", false)] {
        let mut engine = EngineSim::new(in_system);
        let (mut hits, mut ticks) = (0usize, 0usize);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    engine.next_input();
                    let start = Instant::now();
                    hits += engine.tick(!in_system);
                    total += start.elapsed();
                    ticks += 1;
                }
                total
            })
        });
        let per_query = hits as f64 / (ticks * QUERIES_PER_TICK) as f64;
        eprintln!("{name}: {ticks} ticks, {per_query:.1} hits per query");
        assert!(
            (40.0..60.0).contains(&per_query),
            "the queries must find ~50 rows each"
        );
        engine.engine.check_integrity().unwrap();
    }
    group.finish();
    black_box(raw_hits);
}

criterion_group!(benches, bench);
criterion_main!(benches);
