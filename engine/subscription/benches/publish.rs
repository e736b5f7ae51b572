//! The publish phase at MMO scale: 4,000 clients, 20,000 moving entities in a 4 km × 4 km
//! world, each client subscribed to `within(position, :focus, 100)` around its own (moving)
//! focus, default budget (8 KiB/s per client) and hysteresis. One iteration is one tick of the
//! publish phase: fold the tick's change set into the publisher and produce every client's
//! payloads. The simulation tick that produces the change set runs outside the timing.
//! Reports bytes per client per second and bytes per moving-entity update.
//!
//! Measured in the same run, interleaved in blocks of ticks so that the machine's drift hits
//! all alike: the phase with 1 publish worker and with `WORKERS` (default 2) workers, and the floor
//! of its work: appending each client's visible, already-encoded deltas to its buffer with no
//! spatial refresh, ranking or budget (`Publisher::publish_floor`). The ratios are the numbers
//! to compare across days; this machine's speed varies 2-3x from one day to the next.
//!
//! Spatial refreshes are timed apart (`refresh`, inside the clients' time), and views are
//! refreshed incrementally and in full on alternate pairs of ticks (same output; see
//! `PublishConfig::incremental_refresh`).
//!
//! Environment overrides for other shapes of the same workload: `BUDGET` (bytes per client
//! per second), `ENTITIES`, `WORLD` (side in metres), `RADIUS` (metres), `MOVING` (share of the
//! entities that move, default 1), `STILL` (share of the clients whose focus stays put,
//! default 0). E.g. the server's 4,096-client UDP load test is
//! `ENTITIES=4096 WORLD=580 RADIUS=50` (~95 rows in view).
//!
//! And for the sampling: `ROUNDS` (sampled ticks, default 160, a quarter per variant) and
//! `BLOCK` (ticks in a row with one worker count and refresh mode, default 10). Switching the
//! worker count every tick (`BLOCK=1`, this bench's first method) starves the two-worker ticks
//! on this VM: the same binary measured 0.95-1.08x for `apply` switching every tick and
//! 1.46-1.53x switching every ten, and a server never switches.

#![allow(missing_docs)]
#![allow(clippy::print_stderr)] // reports workload numbers next to criterion's output

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orrery_engine::SystemsExecutor;
use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::glam::{Vec2, Vec3};
use orrery_engine::prelude::*;
use orrery_subscription::{PublishConfig, Publisher};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: u64 = 4_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether any workload override is set (the default workload's sanity checks then do not
/// apply).
fn overridden() -> bool {
    ["BUDGET", "ENTITIES", "WORLD", "RADIUS", "MOVING", "STILL"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

static WORLD_SIDE: std::sync::OnceLock<f32> = std::sync::OnceLock::new();

fn world() -> f32 {
    *WORLD_SIDE.get_or_init(|| env_or("WORLD", 4_000.0))
}

static MOVING: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Entities with `id % 1000` below this move.
fn moving_permille() -> u32 {
    *MOVING.get_or_init(|| (env_or("MOVING", 1.0f32).clamp(0.0, 1.0) * 1000.0).round() as u32)
}

#[table(name = npc, public)]
#[derive(Clone, Debug)]
pub struct Npc {
    #[primary_key]
    pub id: u32,
    #[spatial(cell = 100.0)]
    #[quantize(0.01)]
    pub pos: Vec2,
    pub vel: Vec2,
    pub kind: u8,
}

#[reducer]
pub fn seed(ctx: &mut ReducerContext, count: u32) -> Result<(), String> {
    let mut state = 7u64;
    for id in 0..count {
        let x = unit(&mut state) * world();
        let y = unit(&mut state) * world();
        let angle = unit(&mut state) * std::f32::consts::TAU;
        let speed = 0.5 + unit(&mut state) * 2.5;
        ctx.db.npc().insert(Npc {
            id,
            pos: Vec2::new(x, y),
            vel: Vec2::from_angle(angle) * speed,
            kind: 0,
        })?;
    }
    Ok(())
}

fn unit(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

fn wander(info: Res<TickInfo>, mut npcs: Query<&mut Npc>) {
    let dt = info.dt.as_secs_f32();
    for mut npc in &mut npcs {
        if npc.id % 1000 >= moving_permille() {
            continue;
        }
        let mut next = npc.pos + npc.vel * dt;
        let mut vel = npc.vel;
        for axis in 0..2 {
            if !(0.0..=world()).contains(&next[axis]) {
                vel[axis] = -vel[axis];
                next[axis] = next[axis].clamp(0.0, world());
            }
        }
        npc.pos = next;
        npc.vel = vel;
    }
}

struct Scenario {
    engine: Engine,
    publisher: Publisher,
    focus: Vec<(Vec3, Vec3)>,
    tick: i64,
    out: Vec<orrery_subscription::Outgoing>,
}

impl Scenario {
    fn new() -> Self {
        let module = Module::builder("publish-bench")
            .table::<Npc>()
            .reducers(reducers![seed])
            .add_systems(wander)
            .build()
            .unwrap();
        let config = EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..Default::default()
        };
        let mut engine = Engine::new(module, config).unwrap();
        engine
            .call_reducer("seed", Identity::ZERO, (env_or("ENTITIES", 20_000u32),))
            .unwrap();
        let first = engine.step(Timestamp::from_micros(50_000));
        let schema = engine.schema().clone();
        let mut publisher = Publisher::new(
            &schema,
            PublishConfig {
                budget_bytes_per_second: env_or("BUDGET", 8192),
                ..PublishConfig::default()
            },
        );
        publisher.apply(&first.changes);
        let mut state = 99u64;
        let mut focus = Vec::new();
        let query = format!(
            "SELECT * FROM npc WHERE within(pos, :focus, {})",
            env_or("RADIUS", 100.0f32)
        );
        let still = (env_or("STILL", 0.0f32).clamp(0.0, 1.0) * CLIENTS as f32).round() as u64;
        for c in 0..CLIENTS {
            let id = ConnectionId(c);
            publisher.connect(id, Identity::from_u64(c));
            publisher.subscribe(&schema, id, 1, &query).unwrap();
            let p = Vec3::new(unit(&mut state) * world(), unit(&mut state) * world(), 0.0);
            let mut v = Vec3::new(unit(&mut state) - 0.5, unit(&mut state) - 0.5, 0.0) * 6.0;
            if c < still {
                v = Vec3::ZERO;
            }
            publisher.set_focus(id, p);
            focus.push((p, v));
        }
        Scenario {
            engine,
            publisher,
            focus,
            tick: 1,
            out: Vec::new(),
        }
    }

    /// Runs the simulation tick (untimed) and returns its change set.
    fn simulate(&mut self) -> orrery_engine::ChangeSet {
        self.tick += 1;
        for (c, (p, v)) in self.focus.iter_mut().enumerate() {
            if *v == Vec3::ZERO {
                continue;
            }
            *p = (*p + *v * 0.05).clamp(Vec3::ZERO, Vec3::new(world(), world(), 0.0));
            self.publisher.set_focus(ConnectionId(c as u64), *p);
        }
        self.engine
            .step(Timestamp::from_micros(self.tick * 50_000))
            .changes
    }

    /// The publish phase (timed) on `workers` workers.
    fn publish(&mut self, changes: &orrery_engine::ChangeSet, workers: usize) -> Duration {
        self.publisher.set_workers(workers);
        let start = Instant::now();
        self.publisher.apply(changes);
        self.out.clear();
        self.publisher
            .publish(Duration::from_millis(50), &mut self.out);
        let elapsed = start.elapsed();
        black_box(&self.out);
        elapsed
    }

    /// One tick's phases timed apart: (apply, the floor, the clients' publish on `workers`).
    fn phases(
        &mut self,
        changes: &orrery_engine::ChangeSet,
        workers: usize,
        buffers: &mut Vec<Vec<u8>>,
    ) -> [Duration; 3] {
        self.publisher.set_workers(workers);
        let start = Instant::now();
        self.publisher.apply(changes);
        let applied = Instant::now();
        black_box(self.publisher.publish_floor(buffers));
        let floored = Instant::now();
        self.out.clear();
        self.publisher
            .publish(Duration::from_millis(50), &mut self.out);
        let published = Instant::now();
        black_box(&self.out);
        [applied - start, floored - applied, published - floored]
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench(c: &mut Criterion) {
    // The comparison needs a second worker count; 1 is always measured.
    let workers: usize = env_or("WORKERS", 2usize).max(2);
    let mut scenario = Scenario::new();
    // Let every client's initial view drain through its budget.
    for _ in 0..60 {
        let changes = scenario.simulate();
        scenario.publish(&changes, workers);
    }
    // Per-tick samples outside criterion, worker counts alternating every `block` ticks and full
    // and incremental refreshes every two blocks: medians shrug off preemption on a shared
    // machine better than a mean.
    let mut buffers = Vec::new();
    scenario.publisher.set_refresh_timing(true);
    // By [full, incremental] then [1 worker, `workers`].
    let mut apply: [[Vec<Duration>; 2]; 2] = Default::default();
    let mut floor: [Vec<Duration>; 2] = Default::default();
    let mut clients: [[Vec<Duration>; 2]; 2] = Default::default();
    let mut refresh: [[Vec<Duration>; 2]; 2] = Default::default();
    let (full_before, incremental_before) = scenario.publisher.refreshes();
    let mut busy = vec![Duration::ZERO; workers];
    let block: usize = env_or("BLOCK", 10usize).max(1);
    let rounds: usize = env_or("ROUNDS", 160usize).max(4 * block);
    for round in 0..rounds {
        let many = (round / block) % 2;
        let incremental = (round / (2 * block)) % 2;
        let count = if many == 0 { 1 } else { workers };
        scenario.publisher.set_incremental_refresh(incremental == 1);
        let changes = scenario.simulate();
        let busy_before = scenario.publisher.worker_busy();
        let refresh_before: Duration = scenario.publisher.refresh_busy().iter().sum();
        let [a, f, p] = scenario.phases(&changes, count, &mut buffers);
        let refreshed = scenario.publisher.refresh_busy().iter().sum::<Duration>() - refresh_before;
        apply[incremental][many].push(a);
        floor[incremental].push(f);
        clients[incremental][many].push(p);
        refresh[incremental][many].push(refreshed);
        if many == 1 {
            let busy_after = scenario.publisher.worker_busy();
            for (total, (after, before)) in busy.iter_mut().zip(busy_after.iter().zip(&busy_before))
            {
                *total += *after - *before;
            }
        }
    }
    scenario.publisher.set_refresh_timing(false);
    scenario.publisher.set_incremental_refresh(true);
    let (full_after, incremental_after) = scenario.publisher.refreshes();
    for (incremental, name) in [(0, "full"), (1, "incremental")] {
        let apply_one = median(&mut apply[incremental][0]);
        let apply_many = median(&mut apply[incremental][1]);
        let floor = median(&mut floor[incremental]);
        let one = median(&mut clients[incremental][0]);
        let many = median(&mut clients[incremental][1]);
        let refresh_one = median(&mut refresh[incremental][0]);
        let refresh_many = median(&mut refresh[incremental][1]);
        let (full_one, full_many) = (apply_one + one, apply_many + many);
        eprintln!(
            "publish, {name} refresh (medians of {} ticks each): apply on 1 worker {:.2} ms, on \
             {workers} workers {:.2} ms; clients on 1 worker {:.2} ms (refresh {:.2}), on \
             {workers} workers {:.2} ms (refresh {:.2} summed over workers); whole phase {:.2} ms \
             vs {:.2} ms",
            rounds / 4,
            ms(apply_one),
            ms(apply_many),
            ms(one),
            ms(refresh_one),
            ms(many),
            ms(refresh_many),
            ms(full_one),
            ms(full_many),
        );
        eprintln!(
            "publish scaling, {name} refresh: apply {:.2}x, clients {:.2}x, whole phase {:.2}x \
             on {workers} workers; per client {:.2} us on 1 worker (refresh {:.2} us); floor \
             {:.2} ms = {:.2} of the 1-worker phase",
            apply_one.as_secs_f64() / apply_many.as_secs_f64(),
            one.as_secs_f64() / many.as_secs_f64(),
            full_one.as_secs_f64() / full_many.as_secs_f64(),
            one.as_secs_f64() * 1e6 / CLIENTS as f64,
            refresh_one.as_secs_f64() * 1e6 / CLIENTS as f64,
            ms(floor),
            floor.as_secs_f64() / full_one.as_secs_f64(),
        );
    }
    eprintln!(
        "publish refreshes while sampling: {} full, {} incremental (an incremental tick refreshes \
         in full the clients whose focus moved, or every view when over a quarter of the rows \
         changed)",
        full_after - full_before,
        incremental_after - incremental_before,
    );
    eprintln!(
        "publish workers: busy per tick {:?} ms",
        busy.iter()
            .map(|b| format!("{:.2}", ms(*b) / (rounds / 2) as f64))
            .collect::<Vec<_>>(),
    );
    let before = scenario.publisher.stats().sent;
    let mut ticks = 0u64;
    let mut group = c.benchmark_group("publish");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(20));
    for count in [1, workers] {
        group.bench_function(format!("4000_clients_20000_moving/workers_{count}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let changes = scenario.simulate();
                    total += scenario.publish(&changes, count);
                    ticks += 1;
                }
                total
            })
        });
    }
    group.bench_function("4000_clients_20000_moving/floor", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let changes = scenario.simulate();
                total += scenario.phases(&changes, workers, &mut buffers)[1];
                ticks += 1;
            }
            total
        })
    });
    group.finish();
    let stats = scenario.publisher.stats();
    let sent = stats.sent;
    let bytes = sent.bytes - before.bytes;
    let updates = sent.deltas - before.deltas + sent.upserts - before.upserts;
    let seconds = ticks as f64 * 0.05;
    eprintln!(
        "publish: {ticks} ticks; {:.0} bytes per client per second; {:.2} bytes per entity update \
         ({} deltas, {} upserts, {} deletes); {} dirty entries waiting",
        bytes as f64 / CLIENTS as f64 / seconds,
        bytes as f64 / updates.max(1) as f64,
        sent.deltas - before.deltas,
        sent.upserts - before.upserts,
        sent.deletes - before.deletes,
        stats.dirty,
    );
    let visible_per_client = updates as f64 / ticks.max(1) as f64 / CLIENTS as f64;
    eprintln!("publish: {visible_per_client:.1} entity updates per client per tick");
    assert!(
        overridden() || visible_per_client > 20.0,
        "clients must actually see moving entities"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
