//! Spatial grid benchmark, the workload of `docs/reference-numbers.md`: 100,000 entities placed
//! uniformly in a 4,000 m × 4,000 m world; each tick 10,000 of them move by a random vector
//! of length ≤ 5 m, then 2,000 radius-50 m queries run at random centers.
//!
//! Groups: `tick/*` (moves + queries: one whole tick), `moves/*` (the queries still run,
//! untimed, so moves meet a realistic cache), `queries/*` (throughput in queries), and
//! `tick/brute_force` (the same tick with a linear scan per query). Variants: cells of
//! 32 m and 50 m moved with `update`, and 50 m moved with one `update_batch` per tick.
//! Every measured iteration is exactly one tick of a persistent simulation: the tick's
//! random input is generated outside the timed region (`iter_custom`), positions change
//! tick over tick, and query outputs go through `black_box`. A median-based summary
//! (per tick, per query, hits per query, brute-force ratio) is printed at the end.

#![allow(missing_docs)]
// The setup prints the workload's sanity numbers (hits per query) next to criterion's.
#![allow(clippy::print_stderr)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use glam::Vec2;
use orrery_spatial::SpatialGrid;

#[path = "support/workload.rs"]
mod workload;

use workload::*;

/// What a tick runs against: the grid, or the brute-force position array.
trait Index {
    fn apply_moves(&mut self, moves: &[(usize, Vec2)]);
    fn query(&self, center: Vec2, out: &mut Vec<Handle>);
}

/// The grid, moved either by `update` per entity or by one `update_batch` per tick.
struct Grid {
    grid: SpatialGrid<Vec2, Handle>,
    batch: bool,
}

impl Grid {
    fn new(cell: f32, pos: &[Vec2], batch: bool) -> Self {
        let mut grid = SpatialGrid::with_capacity(cell, pos.len()).unwrap();
        for (i, &p) in pos.iter().enumerate() {
            grid.insert(handle(i), p).unwrap();
        }
        Grid { grid, batch }
    }
}

impl Index for Grid {
    #[inline]
    fn apply_moves(&mut self, moves: &[(usize, Vec2)]) {
        if self.batch {
            let items = moves.iter().map(|&(i, p)| (handle(i), p));
            self.grid.update_batch(items, |_, r| {
                black_box(r.unwrap());
            });
        } else {
            for &(i, p) in moves {
                black_box(self.grid.update(handle(i), p).unwrap());
            }
        }
    }
    #[inline]
    fn query(&self, center: Vec2, out: &mut Vec<Handle>) {
        self.grid.query_radius(center, RADIUS, out);
    }
}

struct Brute(Vec<Vec2>);

impl Index for Brute {
    fn apply_moves(&mut self, moves: &[(usize, Vec2)]) {
        for &(i, p) in moves {
            self.0[i] = p;
        }
    }
    fn query(&self, center: Vec2, out: &mut Vec<Handle>) {
        let r2 = RADIUS * RADIUS;
        for (i, p) in self.0.iter().enumerate() {
            if p.distance_squared(center) <= r2 {
                out.push(handle(i));
            }
        }
    }
}

fn run_queries<I: Index>(index: &I, centers: &[Vec2], out: &mut Vec<Handle>) -> usize {
    let mut hits = 0;
    for &c in centers {
        out.clear();
        index.query(c, out);
        hits += out.len();
        black_box(&*out);
    }
    hits
}

#[derive(Clone, Copy)]
enum Part {
    Tick,
    Moves,
    Queries,
}

/// Runs `iters` ticks of a persistent simulation and times `part` of each.
fn timed_ticks<I: Index>(
    sim: &mut Sim,
    index: &mut I,
    out: &mut Vec<Handle>,
    part: Part,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        sim.next_tick();
        let input = &sim.input;
        match part {
            Part::Tick => {
                let t = Instant::now();
                index.apply_moves(&input.moves);
                black_box(run_queries(index, &input.centers, out));
                total += t.elapsed();
            }
            Part::Moves => {
                let t = Instant::now();
                index.apply_moves(&input.moves);
                total += t.elapsed();
                // Untimed, so the next tick's moves meet the cache state of a real tick.
                black_box(run_queries(index, &input.centers, out));
            }
            Part::Queries => {
                index.apply_moves(&input.moves);
                let t = Instant::now();
                black_box(run_queries(index, &input.centers, out));
                total += t.elapsed();
            }
        }
    }
    total
}

/// Checks the workload is real: the grid agrees with brute force, and queries hit ~50.
fn sanity() {
    let mut sim = Sim::new();
    let mut grid = Grid::new(50.0, &sim.pos, false);
    let mut brute = Brute(sim.pos.clone());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut hits = 0usize;
    let ticks = 5;
    for _ in 0..ticks {
        sim.next_tick();
        grid.apply_moves(&sim.input.moves);
        brute.apply_moves(&sim.input.moves);
        for &c in sim.input.centers.iter().take(200) {
            a.clear();
            b.clear();
            grid.query(c, &mut a);
            brute.query(c, &mut b);
            a.sort_unstable();
            assert_eq!(a, b, "grid and brute force disagree at {c:?}");
        }
        hits += run_queries(&grid, &sim.input.centers, &mut a);
    }
    let avg = hits as f64 / (ticks * QUERIES_PER_TICK) as f64;
    eprintln!(
        "spatial bench: {ENTITIES} entities, {MOVES_PER_TICK} moves + {QUERIES_PER_TICK} \
         radius-{RADIUS} queries per tick, avg hits per query = {avg:.1}"
    );
    assert!(
        (40.0..=60.0).contains(&avg),
        "avg hits per query {avg} outside 40..60"
    );
}

/// Grid variants: (bench name, cell size, moves through `update_batch`).
const VARIANTS: [(&str, f32, bool); 3] = [
    ("grid_cell32", 32.0, false),
    ("grid_cell50", 50.0, false),
    ("grid_cell50_batch", 50.0, true),
];

fn bench_grid(c: &mut Criterion) {
    sanity();
    let mut out = Vec::with_capacity(1024);
    for (part, group_name) in [
        (Part::Tick, "tick"),
        (Part::Moves, "moves"),
        (Part::Queries, "queries"),
    ] {
        let mut group = c.benchmark_group(group_name);
        if let Part::Queries = part {
            group.throughput(Throughput::Elements(QUERIES_PER_TICK as u64));
        }
        for (name, cell, batch) in VARIANTS {
            if matches!(part, Part::Queries) && batch {
                continue; // same queries as the non-batch variant
            }
            let mut sim = Sim::new();
            let mut grid = Grid::new(cell, &sim.pos, batch);
            group.bench_function(name, |bencher| {
                bencher
                    .iter_custom(|iters| timed_ticks(&mut sim, &mut grid, &mut out, part, iters));
            });
        }
        group.finish();
    }

    let mut group = c.benchmark_group("tick");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    let mut sim = Sim::new();
    let mut brute = Brute(sim.pos.clone());
    group.bench_function("brute_force", |bencher| {
        bencher.iter_custom(|iters| timed_ticks(&mut sim, &mut brute, &mut out, Part::Tick, iters));
    });
    group.finish();
}

/// Median per-tick times measured outside criterion, printed as one summary block: per
/// tick, per query, hits per query and the brute-force ratio. Medians shrug off the
/// scheduling noise of a shared machine better than means.
fn summary(_c: &mut Criterion) {
    fn median_ticks<I: Index>(index: &mut I, ticks: usize, part: Part) -> f64 {
        let mut sim = Sim::new();
        let mut out = Vec::with_capacity(1024);
        let mut samples: Vec<f64> = (0..ticks)
            .map(|_| timed_ticks(&mut sim, index, &mut out, part, 1).as_secs_f64())
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    }
    let pos = Sim::new().pos;
    let brute = median_ticks(&mut Brute(pos.clone()), 7, Part::Tick);
    eprintln!("summary (median of 300 ticks; brute force: median of 7):");
    for (name, cell, batch) in VARIANTS {
        let tick = median_ticks(&mut Grid::new(cell, &pos, batch), 300, Part::Tick);
        let moves = median_ticks(&mut Grid::new(cell, &pos, batch), 300, Part::Moves);
        let queries = median_ticks(&mut Grid::new(cell, &pos, batch), 300, Part::Queries);
        eprintln!(
            "  {name:<17}: tick {:>7.1} µs | moves {:>6.1} µs | queries {:>7.1} µs \
             ({:.3} µs/query) | brute force {:.1} ms = {:.0}x the tick",
            tick * 1e6,
            moves * 1e6,
            queries * 1e6,
            queries * 1e6 / QUERIES_PER_TICK as f64,
            brute * 1e3,
            brute / tick,
        );
    }
}

criterion_group!(benches, bench_grid, summary);
criterion_main!(benches);
