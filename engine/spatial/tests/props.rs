//! Property tests: random insert / update / remove sequences on `Vec2` and `Vec3` grids with
//! several cell sizes; afterwards every query must equal a brute-force scan of a model
//! `BTreeMap`.

mod common;

use std::collections::{BTreeMap, BTreeSet, btree_map};

use common::{brute_aabb, brute_nearest, brute_radius, brute_region, sorted};
use glam::{Vec2, Vec3};
use orrery_spatial::{CellChange, GridPoint, SpatialError, SpatialGrid};
use proptest::prelude::*;

/// Cell sizes under test.
const CELL_SIZES: [f32; 5] = [0.5, 1.0, 3.7, 10.0, 50.0];

#[derive(Debug, Clone)]
enum Op {
    Insert(u32, [f32; 3]),
    /// Small move of an existing handle (index into the model), by a delta.
    Nudge(usize, [f32; 3]),
    /// Move anywhere (usually across many cells).
    Teleport(usize, [f32; 3]),
    Remove(usize),
    /// Update or insert with a handle that may not exist.
    UpdateAny(u32, [f32; 3]),
}

/// One coordinate: uniform, near a cell border (for any of `CELL_SIZES`), negative, or
/// occasionally very large.
fn coord(s: f32) -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -300.0f32..300.0,
        3 => (-40i32..40, prop::sample::select(vec![-1e-3f32, -1e-5, 0.0, 1e-5, 1e-3]))
            .prop_map(move |(k, eps)| k as f32 * s + eps),
        1 => (-40i32..40).prop_map(move |k| k as f32 * s),
        1 => prop::sample::select(vec![-1e4f32, 2.5e4, 1e9, -3e9, 5e12]),
    ]
}

fn xyz(s: f32) -> impl Strategy<Value = [f32; 3]> {
    [coord(s), coord(s), coord(s)]
}

fn small_delta() -> impl Strategy<Value = [f32; 3]> {
    [-2.0f32..2.0, -2.0f32..2.0, -2.0f32..2.0]
}

fn op(s: f32) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..80, xyz(s)).prop_map(|(h, p)| Op::Insert(h, p)),
        4 => (any::<usize>(), small_delta()).prop_map(|(i, d)| Op::Nudge(i, d)),
        2 => (any::<usize>(), xyz(s)).prop_map(|(i, p)| Op::Teleport(i, p)),
        2 => any::<usize>().prop_map(Op::Remove),
        1 => (0u32..80, xyz(s)).prop_map(|(h, p)| Op::UpdateAny(h, p)),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    s: f32,
    ops: Vec<Op>,
    /// Query centers.
    centers: Vec<[f32; 3]>,
    /// Radii.
    radii: Vec<f32>,
    /// Box half-extents.
    extents: Vec<[f32; 3]>,
}

fn case() -> impl Strategy<Value = Case> {
    prop::sample::select(CELL_SIZES.to_vec()).prop_flat_map(|s| {
        (
            prop::collection::vec(op(s), 0..160),
            prop::collection::vec(xyz(s), 1..6),
            prop::collection::vec(
                prop_oneof![
                    Just(0.0f32),
                    0.0f32..3.0,
                    0.0f32..60.0,
                    Just(s),
                    (1u32..40).prop_map(move |k| k as f32 * s),
                    Just(1e6f32),
                    Just(1e30f32),
                ],
                1..5,
            ),
            prop::collection::vec([0.0f32..80.0, 0.0f32..80.0, 0.0f32..80.0], 1..4),
        )
            .prop_map(move |(ops, centers, radii, extents)| Case {
                s,
                ops,
                centers,
                radii,
                extents,
            })
    })
}

/// Applies the ops to a grid and the model, checking every op's result on the way.
fn run<P: GridPoint>(case: &Case) -> (SpatialGrid<P, u32>, BTreeMap<u32, P>) {
    let mut grid = SpatialGrid::<P, u32>::new(case.s).unwrap();
    let mut model = BTreeMap::<u32, P>::new();
    let nth = |model: &BTreeMap<u32, P>, i: usize| {
        if model.is_empty() {
            None
        } else {
            model.keys().nth(i % model.len()).copied()
        }
    };
    let check_update =
        |grid: &mut SpatialGrid<P, u32>, model: &mut BTreeMap<u32, P>, h: u32, p: P| {
            let r = grid.update(h, p);
            match model.get(&h).copied() {
                Some(old) => {
                    let (from, to) = (grid.cell_of(old), grid.cell_of(p));
                    let expect = if from == to {
                        CellChange::Same
                    } else {
                        CellChange::Moved { from, to }
                    };
                    assert_eq!(r, Ok(expect));
                    model.insert(h, p);
                }
                None => assert!(matches!(r, Err(SpatialError::UnknownHandle(_)))),
            }
        };
    for op in &case.ops {
        match *op {
            Op::Insert(h, p) => {
                let p = P::from_xyz(p);
                let r = grid.insert(h, p);
                match model.entry(h) {
                    btree_map::Entry::Occupied(_) => {
                        assert!(matches!(r, Err(SpatialError::DuplicateHandle(_))));
                    }
                    btree_map::Entry::Vacant(v) => {
                        assert_eq!(r, Ok(()));
                        v.insert(p);
                    }
                }
            }
            Op::Nudge(i, d) => {
                if let Some(h) = nth(&model, i) {
                    let old = model[&h].to_xyz();
                    let p = P::from_xyz([old[0] + d[0], old[1] + d[1], old[2] + d[2]]);
                    check_update(&mut grid, &mut model, h, p);
                }
            }
            Op::Teleport(i, p) => {
                if let Some(h) = nth(&model, i) {
                    check_update(&mut grid, &mut model, h, P::from_xyz(p));
                }
            }
            Op::UpdateAny(h, p) => check_update(&mut grid, &mut model, h, P::from_xyz(p)),
            Op::Remove(i) => {
                if let Some(h) = nth(&model, i) {
                    assert_eq!(grid.remove(h), model.remove(&h));
                    assert_eq!(grid.remove(h), None);
                }
            }
        }
    }
    (grid, model)
}

fn check_contents<P: GridPoint>(grid: &SpatialGrid<P, u32>, model: &BTreeMap<u32, P>) {
    assert_eq!(grid.len(), model.len());
    assert_eq!(grid.is_empty(), model.is_empty());
    for (&h, &p) in model {
        assert_eq!(grid.get(h), Some(p));
        assert!(grid.contains(h));
    }
    let mut all: Vec<(u32, [f32; 3])> = grid.iter().map(|(h, p)| (h, p.to_xyz())).collect();
    all.sort_by_key(|e| e.0);
    let expect: Vec<(u32, [f32; 3])> = model.iter().map(|(&h, p)| (h, p.to_xyz())).collect();
    assert_eq!(all, expect);
}

fn check_queries<P: GridPoint>(case: &Case, grid: &SpatialGrid<P, u32>, model: &BTreeMap<u32, P>) {
    // Query centers: the generated ones, plus some stored points (hits on exact positions),
    // plus a far-away one (forces the nearest-k ring search to go wide or fall back).
    let mut centers: Vec<P> = case.centers.iter().map(|&c| P::from_xyz(c)).collect();
    centers.extend(model.values().take(3).copied());
    centers.push(P::from_xyz([7.5e3, -6.25e3, 4.0e3]));

    let mut out = Vec::new();
    let mut out_k = Vec::new();
    for &c in &centers {
        for &r in &case.radii {
            out.clear();
            grid.query_radius(c, r, &mut out);
            let mut visited = Vec::new();
            grid.for_each_in_radius(c, r, |h, p| {
                assert_eq!(model[&h], p);
                visited.push(h);
            });
            assert_eq!(visited, out, "visitor order differs from buffer order");
            assert_eq!(
                sorted(out.clone()),
                brute_radius(model, c, r),
                "radius {c:?} r={r}"
            );
        }
        for e in &case.extents {
            let cx = c.to_xyz();
            let min = P::from_xyz([cx[0] - e[0], cx[1] - e[1], cx[2] - e[2]]);
            let max = P::from_xyz([cx[0] + e[0], cx[1] + e[1], cx[2] + e[2]]);
            out.clear();
            grid.query_aabb(min, max, &mut out);
            assert_eq!(
                sorted(out.clone()),
                brute_aabb(model, min, max),
                "aabb {min:?}..{max:?}"
            );
            // Reversed box is empty.
            if min != max {
                out.clear();
                grid.query_aabb(max, min, &mut out);
                assert!(out.is_empty() || min.in_box(max, min));
            }
        }
        for k in [0usize, 1, 2, 5, 17, 200] {
            out_k.clear();
            grid.nearest_k(c, k, &mut out_k);
            let expect = brute_nearest(model, c, k);
            assert_eq!(out_k.len(), expect.len());
            for (got, want) in out_k.iter().zip(&expect) {
                assert_eq!(got.0, want.0, "nearest_k({c:?}, {k}) handle order");
                assert_eq!(got.1.to_bits(), want.1.to_bits());
            }
        }
    }
}

fn check_regions<P: GridPoint>(case: &Case, grid: &SpatialGrid<P, u32>) {
    let mut cells = Vec::new();
    let (mut left, mut entered) = (Vec::new(), Vec::new());
    let centers: Vec<P> = case.centers.iter().map(|&c| P::from_xyz(c)).collect();
    for &r in &case.radii {
        // Keep regions small enough to enumerate.
        let r = r.min(if P::DIM == 2 { 8.0 } else { 4.0 } * case.s);
        for (i, &c) in centers.iter().enumerate() {
            if c.to_xyz().iter().any(|v| v.abs() > 1e6) {
                continue;
            }
            cells.clear();
            grid.cells_in_radius(c, r, &mut cells).unwrap();
            let got: Vec<[i32; 3]> = cells.iter().map(|&c| P::cell_to_xyz(c)).collect();
            let want = brute_region(c, r, case.s);
            assert_eq!(got, want, "cells_in_radius({c:?}, {r})");
            for &cell in &cells {
                assert!(grid.cell_in_radius(cell, c, r));
            }

            let next = centers[(i + 1) % centers.len()];
            if next.to_xyz().iter().any(|v| v.abs() > 1e6) {
                continue;
            }
            let new = brute_region(next, r, case.s);
            left.clear();
            entered.clear();
            grid.cell_region_diff(c, next, r, &mut left, &mut entered)
                .unwrap();
            let left: Vec<[i32; 3]> = left.iter().map(|&c| P::cell_to_xyz(c)).collect();
            let entered: Vec<[i32; 3]> = entered.iter().map(|&c| P::cell_to_xyz(c)).collect();
            let (old_set, new_set): (BTreeSet<_>, BTreeSet<_>) = (
                want.iter().copied().collect(),
                new.iter().copied().collect(),
            );
            let want_left: Vec<[i32; 3]> = want
                .iter()
                .filter(|c| !new_set.contains(*c))
                .copied()
                .collect();
            let want_entered: Vec<[i32; 3]> = new
                .iter()
                .filter(|c| !old_set.contains(*c))
                .copied()
                .collect();
            assert_eq!(left, want_left, "left {c:?} -> {next:?} r={r}");
            assert_eq!(entered, want_entered, "entered {c:?} -> {next:?} r={r}");
        }
    }
}

fn check_all<P: GridPoint>(case: &Case) {
    let (grid, model) = run::<P>(case);
    check_contents(&grid, &model);
    check_queries(case, &grid, &model);
    // Determinism: the same op sequence gives the same result order.
    let (again, _) = run::<P>(case);
    for c in &case.centers {
        let c = P::from_xyz(*c);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        grid.query_radius(c, 100.0, &mut a);
        again.query_radius(c, 100.0, &mut b);
        assert_eq!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn vec2_matches_brute_force(case in case()) {
        check_all::<Vec2>(&case);
    }

    #[test]
    fn vec3_matches_brute_force(case in case()) {
        check_all::<Vec3>(&case);
    }

    #[test]
    fn vec2_regions_match_brute_force(case in case()) {
        let grid = SpatialGrid::<Vec2, u32>::new(case.s).unwrap();
        check_regions(&case, &grid);
    }

    #[test]
    fn vec3_regions_match_brute_force(case in case()) {
        let grid = SpatialGrid::<Vec3, u32>::new(case.s).unwrap();
        check_regions(&case, &grid);
    }

    /// Dense clouds: many points in few cells, many cells per query, fully-inside cells.
    #[test]
    fn vec2_dense_cloud(
        s in prop::sample::select(CELL_SIZES.to_vec()),
        pts in prop::collection::vec([-40.0f32..40.0, -40.0f32..40.0], 0..400),
        moves in prop::collection::vec((any::<usize>(), [-3.0f32..3.0, -3.0f32..3.0]), 0..400),
        qs in prop::collection::vec(([-60.0f32..60.0, -60.0f32..60.0], 0.0f32..70.0), 1..8),
    ) {
        let mut grid = SpatialGrid::<Vec2, u32>::with_capacity(s, pts.len()).unwrap();
        let mut model = BTreeMap::new();
        for (h, p) in pts.iter().enumerate() {
            let p = Vec2::from_array(*p);
            grid.insert(h as u32, p).unwrap();
            model.insert(h as u32, p);
        }
        if !pts.is_empty() {
            for (i, d) in &moves {
                let h = (i % pts.len()) as u32;
                let p = model[&h] + Vec2::from_array(*d);
                grid.update(h, p).unwrap();
                model.insert(h, p);
            }
        }
        let mut out = Vec::new();
        let mut out_k = Vec::new();
        for (c, r) in &qs {
            let c = Vec2::from_array(*c);
            out.clear();
            grid.query_radius(c, *r, &mut out);
            prop_assert_eq!(sorted(out.clone()), brute_radius(&model, c, *r));
            out_k.clear();
            grid.nearest_k(c, 10, &mut out_k);
            prop_assert_eq!(&out_k, &brute_nearest(&model, c, 10));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `update_batch` behaves exactly like `update` in a loop: same results, same contents,
    /// same query order, even with duplicates, unknown handles, non-finite positions and
    /// relocations that swap entries referenced later in the same chunk.
    #[test]
    fn update_batch_equals_update_loop(
        s in prop::sample::select(CELL_SIZES.to_vec()),
        pts in prop::collection::vec([-30.0f32..30.0, -30.0f32..30.0], 1..120),
        batch in prop::collection::vec(
            (0u32..130, prop_oneof![
                8 => [-40.0f32..40.0, -40.0f32..40.0],
                1 => Just([f32::NAN, 0.0]),
            ]),
            0..200,
        ),
    ) {
        let mut a = SpatialGrid::<Vec2, u32>::new(s).unwrap();
        for (h, p) in pts.iter().enumerate() {
            a.insert(h as u32, Vec2::from_array(*p)).unwrap();
        }
        let mut b = a.clone();
        let items: Vec<(u32, Vec2)> =
            batch.iter().map(|&(h, p)| (h, Vec2::from_array(p))).collect();
        // Compared as Debug text: errors carry NaN, which is not equal to itself.
        let mut got = Vec::new();
        a.update_batch(items.iter().copied(), |h, r| got.push(format!("{h} {r:?}")));
        let want: Vec<_> = items
            .iter()
            .map(|&(h, p)| format!("{h} {:?}", b.update(h, p)))
            .collect();
        prop_assert_eq!(got, want);
        let mut ca: Vec<_> = a.iter().map(|(h, p)| (h, p.to_array())).collect();
        let mut cb: Vec<_> = b.iter().map(|(h, p)| (h, p.to_array())).collect();
        prop_assert_eq!(&ca, &cb);
        ca.sort_by_key(|e| e.0);
        cb.sort_by_key(|e| e.0);
        prop_assert_eq!(ca, cb);
        let (mut oa, mut ob) = (Vec::new(), Vec::new());
        a.query_radius(Vec2::ZERO, 25.0, &mut oa);
        b.query_radius(Vec2::ZERO, 25.0, &mut ob);
        prop_assert_eq!(oa, ob);
    }
}
