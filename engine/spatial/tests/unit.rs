//! Unit tests of the grid's contract: validation, errors, cell changes, edge-case queries,
//! determinism and region diffs.

mod common;

use std::collections::BTreeMap;

use common::{brute_region, cell_touches};
use glam::{IVec2, IVec3, Vec2, Vec3};
use orrery_spatial::{CellChange, GridPoint, SpatialError, SpatialGrid};

type Grid2 = SpatialGrid<Vec2, u32>;
type Grid3 = SpatialGrid<Vec3, u64>;

#[test]
fn invalid_cell_sizes_are_rejected() {
    for s in [0.0, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-45] {
        match Grid2::new(s) {
            Err(SpatialError::InvalidCellSize(v)) => assert!(v.to_bits() == s.to_bits()),
            other => panic!("cell size {s}: {other:?}"),
        }
    }
    let g = Grid2::with_capacity(2.5, 100).unwrap();
    assert_eq!(g.cell_size(), 2.5);
    assert!(g.is_empty());
}

#[test]
fn non_finite_insert_is_rejected_and_not_inserted() {
    let mut g = Grid2::new(10.0).unwrap();
    for p in [
        Vec2::new(f32::NAN, 0.0),
        Vec2::new(0.0, f32::INFINITY),
        Vec2::new(f32::NEG_INFINITY, f32::NAN),
    ] {
        match g.insert(1, p) {
            Err(SpatialError::NonFinite { coords, dims }) => {
                assert_eq!(dims, 2);
                assert_eq!(coords[0].to_bits(), p.x.to_bits());
                assert_eq!(coords[1].to_bits(), p.y.to_bits());
            }
            other => panic!("{other:?}"),
        }
        assert!(!g.contains(1));
        assert_eq!(g.len(), 0);
        assert_eq!(g.occupied_cells(), 0);
    }
    let mut g3 = Grid3::new(1.0).unwrap();
    let err = g3.insert(9, Vec3::new(1.0, 2.0, f32::NAN)).unwrap_err();
    assert!(matches!(err, SpatialError::NonFinite { dims: 3, .. }));
    assert!(err.to_string().contains("NaN"), "{err}");
    assert!(g3.is_empty());
}

#[test]
fn duplicate_insert_is_an_error_and_keeps_the_old_position() {
    let mut g = Grid2::new(10.0).unwrap();
    g.insert(7, Vec2::new(1.0, 1.0)).unwrap();
    let err = g.insert(7, Vec2::new(50.0, 50.0)).unwrap_err();
    assert_eq!(err, SpatialError::DuplicateHandle("7".into()));
    assert_eq!(err.to_string(), "handle 7 is already in the grid");
    assert_eq!(g.get(7), Some(Vec2::new(1.0, 1.0)));
    assert_eq!(g.len(), 1);
}

#[test]
fn update_errors_keep_state() {
    let mut g = Grid2::new(10.0).unwrap();
    assert_eq!(
        g.update(3, Vec2::ZERO),
        Err(SpatialError::UnknownHandle("3".into()))
    );
    g.insert(3, Vec2::new(5.0, 5.0)).unwrap();
    assert!(matches!(
        g.update(3, Vec2::new(f32::NAN, 1.0)),
        Err(SpatialError::NonFinite { .. })
    ));
    assert_eq!(g.get(3), Some(Vec2::new(5.0, 5.0)));
    let mut out = Vec::new();
    g.query_radius(Vec2::new(5.0, 5.0), 0.0, &mut out);
    assert_eq!(out, [3]);
}

#[test]
fn update_reports_cell_changes() {
    let mut g = Grid2::new(10.0).unwrap();
    g.insert(1, Vec2::new(5.0, 5.0)).unwrap();
    assert_eq!(g.update(1, Vec2::new(9.99, 0.0)), Ok(CellChange::Same));
    assert_eq!(
        g.update(1, Vec2::new(10.0, 0.0)),
        Ok(CellChange::Moved {
            from: IVec2::new(0, 0),
            to: IVec2::new(1, 0)
        })
    );
    assert_eq!(
        g.update(1, Vec2::new(-0.001, -25.0)),
        Ok(CellChange::Moved {
            from: IVec2::new(1, 0),
            to: IVec2::new(-1, -3)
        })
    );
    assert!(!g.update(1, Vec2::new(-9.0, -21.0)).unwrap().is_moved());
    assert_eq!(g.get(1), Some(Vec2::new(-9.0, -21.0)));
    assert_eq!(g.occupied_cells(), 1);

    let mut g3 = Grid3::new(2.0).unwrap();
    g3.insert(u64::MAX, Vec3::new(1.0, 1.0, 1.0)).unwrap();
    assert_eq!(
        g3.update(u64::MAX, Vec3::new(1.0, 1.0, -1.0)),
        Ok(CellChange::Moved {
            from: IVec3::new(0, 0, 0),
            to: IVec3::new(0, 0, -1)
        })
    );
    assert_eq!(g3.cell_of(Vec3::new(1.0, 1.0, -1.0)), IVec3::new(0, 0, -1));
}

#[test]
fn remove_fixes_up_swapped_entries() {
    let mut g = Grid2::new(100.0).unwrap();
    for h in 0..10 {
        g.insert(h, Vec2::new(h as f32, 0.0)).unwrap();
    }
    assert_eq!(g.remove(0), Some(Vec2::new(0.0, 0.0)));
    assert_eq!(g.remove(0), None);
    assert_eq!(g.remove(5), Some(Vec2::new(5.0, 0.0)));
    for h in [1, 2, 3, 4, 6, 7, 8, 9] {
        assert_eq!(g.get(h), Some(Vec2::new(h as f32, 0.0)));
        g.update(h, Vec2::new(h as f32, 1.0)).unwrap();
        assert_eq!(g.get(h), Some(Vec2::new(h as f32, 1.0)));
    }
    // Move everything out and back: the emptied bucket is freed and reused.
    for h in [1, 2, 3, 4, 6, 7, 8, 9] {
        g.update(h, Vec2::new(-50.0, 0.0)).unwrap();
    }
    assert_eq!(g.occupied_cells(), 1);
    g.clear();
    assert!(g.is_empty());
    assert_eq!(g.occupied_cells(), 0);
    assert_eq!(g.iter().count(), 0);
    g.insert(4, Vec2::new(3.0, 3.0)).unwrap();
    assert_eq!(g.iter().collect::<Vec<_>>(), [(4, Vec2::new(3.0, 3.0))]);
}

#[test]
fn non_finite_and_degenerate_queries_return_nothing() {
    let mut g = Grid2::new(10.0).unwrap();
    for h in 0..100u32 {
        g.insert(h, Vec2::new((h % 10) as f32 * 7.0, (h / 10) as f32 * 7.0))
            .unwrap();
    }
    let nan = Vec2::new(f32::NAN, 0.0);
    let inf = Vec2::new(0.0, f32::INFINITY);
    let mut out = Vec::new();
    let mut out_k = Vec::new();
    let mut cells = Vec::new();
    for (c, r) in [
        (nan, 10.0),
        (inf, 10.0),
        (Vec2::ZERO, f32::NAN),
        (Vec2::ZERO, f32::INFINITY),
        (Vec2::ZERO, -1.0),
        (Vec2::ZERO, f32::NEG_INFINITY),
    ] {
        g.query_radius(c, r, &mut out);
        g.for_each_in_radius(c, r, |_, _| panic!("visited"));
        g.cells_in_radius(c, r, &mut cells).unwrap();
    }
    g.query_aabb(nan, Vec2::ONE, &mut out);
    g.query_aabb(Vec2::ZERO, inf, &mut out);
    g.query_aabb(Vec2::ONE, Vec2::ZERO, &mut out); // min > max
    g.nearest_k(nan, 5, &mut out_k);
    g.nearest_k(inf, 5, &mut out_k);
    g.nearest_k(Vec2::ZERO, 0, &mut out_k);
    assert!(out.is_empty() && out_k.is_empty() && cells.is_empty());
    assert!(!g.cell_in_radius(IVec2::ZERO, nan, 1.0));
}

#[test]
fn zero_radius_matches_only_exact_positions() {
    let mut g = Grid2::new(1.0).unwrap();
    g.insert(1, Vec2::new(2.0, 2.0)).unwrap();
    g.insert(2, Vec2::new(2.0, 2.0 + f32::EPSILON * 2.0))
        .unwrap();
    g.insert(3, Vec2::new(3.0, 3.0)).unwrap(); // exactly on a cell corner
    let mut out = Vec::new();
    g.query_radius(Vec2::new(2.0, 2.0), 0.0, &mut out);
    assert_eq!(out, [1]);
    out.clear();
    g.query_radius(Vec2::new(3.0, 3.0), 0.0, &mut out);
    assert_eq!(out, [3]);
    out.clear();
    g.query_radius(Vec2::new(2.5, 2.5), 0.0, &mut out);
    assert!(out.is_empty());
}

#[test]
fn queries_append_to_the_buffer() {
    let mut g = Grid2::new(4.0).unwrap();
    g.insert(10, Vec2::new(1.0, 1.0)).unwrap();
    g.insert(11, Vec2::new(2.0, 2.0)).unwrap();
    let mut out = vec![99];
    g.query_radius(Vec2::ZERO, 5.0, &mut out);
    assert_eq!(out[0], 99);
    assert_eq!(out.len(), 3);
    let mut out = vec![98];
    g.query_aabb(Vec2::ZERO, Vec2::splat(2.0), &mut out); // inclusive max
    assert_eq!(out[0], 98);
    assert_eq!(out.len(), 3);
    let mut out_k = vec![(97, -1.0)];
    g.nearest_k(Vec2::ZERO, 1, &mut out_k);
    assert_eq!(out_k, [(97, -1.0), (10, 2.0f32.sqrt())]);
}

#[test]
fn nearest_k_far_away_and_few_points() {
    let mut g = Grid2::new(1.0).unwrap();
    g.insert(5, Vec2::new(1.0e6, -2.0e6)).unwrap();
    g.insert(6, Vec2::new(1.0e6, -2.0e6 + 1.0)).unwrap();
    let mut out = Vec::new();
    g.nearest_k(Vec2::ZERO, 1, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 6);
    out.clear();
    g.nearest_k(Vec2::ZERO, 10, &mut out);
    assert_eq!(out.iter().map(|e| e.0).collect::<Vec<_>>(), [6, 5]);

    // A dense cluster plus one far point, k larger than the cluster.
    let mut g3 = Grid3::new(2.0).unwrap();
    for h in 0..20u64 {
        g3.insert(h, Vec3::new(h as f32 * 0.1, 0.0, 0.0)).unwrap();
    }
    g3.insert(100, Vec3::new(0.0, 0.0, -900.0)).unwrap();
    let mut out3 = Vec::new();
    g3.nearest_k(Vec3::ZERO, 21, &mut out3);
    assert_eq!(out3.len(), 21);
    assert_eq!(out3[20], (100, 900.0));
    out3.clear();
    g3.nearest_k(Vec3::new(0.0, 0.0, -800.0), 2, &mut out3);
    assert_eq!(out3[0], (100, 100.0));
    assert_eq!(out3[1].0, 0);
}

#[test]
fn nearest_k_breaks_ties_by_handle() {
    let mut g = Grid2::new(1.0).unwrap();
    // Four points at distance 1, inserted in scrambled handle order, in four cells.
    for (h, p) in [
        (40, (1.0, 0.0)),
        (10, (0.0, 1.0)),
        (30, (-1.0, 0.0)),
        (20, (0.0, -1.0)),
    ] {
        g.insert(h, Vec2::new(p.0, p.1)).unwrap();
    }
    g.insert(5, Vec2::new(2.0, 0.0)).unwrap();
    let mut out = Vec::new();
    g.nearest_k(Vec2::ZERO, 3, &mut out);
    assert_eq!(out, [(10, 1.0), (20, 1.0), (30, 1.0)]);
    out.clear();
    g.nearest_k(Vec2::ZERO, 5, &mut out);
    assert_eq!(
        out.iter().map(|e| e.0).collect::<Vec<_>>(),
        [10, 20, 30, 40, 5]
    );
}

#[test]
fn radius_results_come_in_cell_coordinate_order() {
    let mut g = Grid2::new(1.0).unwrap();
    // 20 x 20 occupied cells, inserted in an order unrelated to coordinates.
    for i in 0..400u32 {
        let j = (i * 149) % 400;
        let p = Vec2::new((j % 20) as f32 - 9.5, (j / 20) as f32 - 9.5);
        g.insert(i, p).unwrap();
        g.insert(1000 + i, p * 0.999).unwrap();
    }
    let mut out = Vec::new();
    g.query_radius(Vec2::new(0.3, -0.2), 3.0, &mut out);
    assert!(out.len() > 40);
    let cells: Vec<IVec2> = out.iter().map(|&h| g.cell_of(g.get(h).unwrap())).collect();
    let mut sorted = cells.clone();
    sorted.sort_by(|&a, &b| Vec2::cell_cmp(a, b));
    assert_eq!(cells, sorted);
    // The visitor sees the same order.
    let mut seen = Vec::new();
    g.for_each_in_radius(Vec2::new(0.3, -0.2), 3.0, |h, _| seen.push(h));
    assert_eq!(seen, out);
    // So does the box query.
    out.clear();
    g.query_aabb(Vec2::new(-3.0, -2.0), Vec2::new(4.0, 1.0), &mut out);
    let cells: Vec<IVec2> = out.iter().map(|&h| g.cell_of(g.get(h).unwrap())).collect();
    let mut sorted = cells.clone();
    sorted.sort_by(|&a, &b| Vec2::cell_cmp(a, b));
    assert_eq!(cells, sorted);
}

#[test]
fn huge_radius_and_huge_coordinates() {
    let mut g = Grid2::new(0.5).unwrap();
    let pts = [
        Vec2::new(3e9, -3e9),
        Vec2::new(-1e12, 0.0),
        Vec2::new(1.0, 1.0),
        Vec2::new(f32::MAX, f32::MIN),
    ];
    for (h, p) in pts.iter().enumerate() {
        g.insert(h as u32, *p).unwrap();
    }
    let mut out = Vec::new();
    g.query_radius(Vec2::ZERO, 1e30, &mut out);
    out.sort_unstable();
    assert_eq!(out, [0, 1, 2, 3]);
    out.clear();
    g.query_radius(Vec2::new(3e9, -3e9), 1.0, &mut out);
    assert_eq!(out, [0]);
    out.clear();
    g.query_aabb(Vec2::splat(f32::MIN), Vec2::splat(f32::MAX), &mut out);
    assert_eq!(out.len(), 4);
    let mut out_k = Vec::new();
    g.nearest_k(Vec2::new(-1e12, 5.0), 2, &mut out_k);
    assert_eq!(out_k[0], (1, 5.0));
    assert_eq!(out_k[1].0, 2);
}

#[test]
fn cell_region_diff_matches_brute_force() {
    let g = Grid2::new(10.0).unwrap();
    let r = 25.0;
    let (a, b) = (Vec2::new(3.0, 4.0), Vec2::new(17.0, -6.0));
    let (mut left, mut entered) = (Vec::new(), Vec::new());
    g.cell_region_diff(a, b, r, &mut left, &mut entered)
        .unwrap();
    let old: BTreeMap<[i32; 3], ()> = brute_region(a, r, 10.0)
        .into_iter()
        .map(|c| (c, ()))
        .collect();
    let new: BTreeMap<[i32; 3], ()> = brute_region(b, r, 10.0)
        .into_iter()
        .map(|c| (c, ()))
        .collect();
    let want_left: Vec<IVec2> = old
        .keys()
        .filter(|c| !new.contains_key(*c))
        .map(|c| IVec2::new(c[0], c[1]))
        .collect();
    let want_entered: Vec<IVec2> = new
        .keys()
        .filter(|c| !old.contains_key(*c))
        .map(|c| IVec2::new(c[0], c[1]))
        .collect();
    assert!(!want_left.is_empty() && !want_entered.is_empty());
    assert_eq!(left, want_left);
    assert_eq!(entered, want_entered);

    // No move, no diff; teleport: everything left and entered.
    let (mut l2, mut e2) = (Vec::new(), Vec::new());
    g.cell_region_diff(a, a, r, &mut l2, &mut e2).unwrap();
    assert!(l2.is_empty() && e2.is_empty());
    let far = Vec2::new(1e5, 1e5);
    g.cell_region_diff(a, far, r, &mut l2, &mut e2).unwrap();
    assert_eq!(l2.len(), old.len());
    assert_eq!(e2.len(), brute_region(far, r, 10.0).len());
    // From a non-finite center: enter the whole new region.
    let (mut l3, mut e3) = (Vec::new(), Vec::new());
    g.cell_region_diff(Vec2::NAN, a, r, &mut l3, &mut e3)
        .unwrap();
    assert!(l3.is_empty());
    assert_eq!(e3.len(), old.len());
}

#[test]
fn cells_in_radius_includes_touching_cells() {
    let g = Grid2::new(10.0).unwrap();
    let mut cells = Vec::new();
    // Radius exactly reaching the neighbouring cells' edges.
    g.cells_in_radius(Vec2::new(5.0, 5.0), 5.0, &mut cells)
        .unwrap();
    assert_eq!(
        cells,
        [
            IVec2::new(-1, 0),
            IVec2::new(0, -1),
            IVec2::new(0, 0),
            IVec2::new(0, 1),
            IVec2::new(1, 0)
        ]
    );
    // r = 0 on a corner touches four cells.
    cells.clear();
    g.cells_in_radius(Vec2::new(10.0, 10.0), 0.0, &mut cells)
        .unwrap();
    assert_eq!(cells.len(), 4);
    for &c in &cells {
        assert!(cell_touches(
            Vec2::cell_to_xyz(c),
            Vec2::new(10.0, 10.0),
            0.0,
            10.0
        ));
    }
    // Every point within the radius lies in a listed cell.
    cells.clear();
    let center = Vec2::new(-13.0, 27.5);
    g.cells_in_radius(center, 31.0, &mut cells).unwrap();
    for i in 0..400 {
        let ang = i as f32 * 0.1;
        let p = center + Vec2::new(ang.cos(), ang.sin()) * (i as f32 * 0.077).min(30.99);
        assert!(cells.contains(&g.cell_of(p)), "{p:?}");
    }
}

#[test]
fn errors_display_their_values() {
    assert_eq!(
        SpatialError::InvalidCellSize(-2.0).to_string(),
        "invalid cell size -2: must be finite and > 0"
    );
    assert_eq!(
        SpatialError::UnknownHandle("Entity(3v1)".into()).to_string(),
        "handle Entity(3v1) is not in the grid"
    );
    let e = SpatialError::NonFinite {
        coords: [1.0, f32::INFINITY, 0.0],
        dims: 2,
    };
    assert_eq!(e.to_string(), "non-finite coordinates [1.0, inf]");
}

#[test]
fn steady_state_queries_reuse_their_buffers() {
    // The query paths allocate nothing of their own (stack batches, in-place selection and
    // sorting); the only growable memory is the caller's buffer, which must settle.
    let mut g = Grid2::new(8.0).unwrap();
    for h in 0..5_000u32 {
        let f = h as f32;
        g.insert(h, Vec2::new((f * 7.31) % 400.0, (f * 3.17) % 400.0))
            .unwrap();
    }
    let centers: Vec<Vec2> = (0..50)
        .map(|i| Vec2::new(i as f32 * 8.1, 400.0 - i as f32 * 7.7))
        .collect();
    let mut out = Vec::new();
    let mut out_k = Vec::new();
    let run = |out: &mut Vec<u32>, out_k: &mut Vec<(u32, f32)>| {
        for &c in &centers {
            out.clear();
            g.query_radius(c, 30.0, out);
            out.clear();
            g.query_aabb(c - Vec2::splat(20.0), c + Vec2::splat(20.0), out);
            out_k.clear();
            g.nearest_k(c, 16, out_k);
        }
    };
    run(&mut out, &mut out_k);
    let (cap, ptr, cap_k, ptr_k) = (
        out.capacity(),
        out.as_ptr(),
        out_k.capacity(),
        out_k.as_ptr(),
    );
    for _ in 0..3 {
        run(&mut out, &mut out_k);
    }
    assert_eq!((out.capacity(), out.as_ptr()), (cap, ptr));
    assert_eq!((out_k.capacity(), out_k.as_ptr()), (cap_k, ptr_k));
}

#[test]
fn oversized_regions_are_refused_not_enumerated() {
    let g = Grid2::new(1.0).unwrap();
    let mut cells = vec![IVec2::ONE];
    let err = g.cells_in_radius(Vec2::ZERO, 1e30, &mut cells).unwrap_err();
    assert!(
        matches!(err, SpatialError::RegionTooLarge { limit, .. } if limit == orrery_spatial::MAX_REGION_CELLS)
    );
    assert_eq!(cells, [IVec2::ONE]);
    let (mut left, mut entered) = (Vec::new(), Vec::new());
    assert!(
        g.cell_region_diff(Vec2::ZERO, Vec2::ONE, 5e3, &mut left, &mut entered)
            .is_err()
    );
    assert!(left.is_empty() && entered.is_empty());
    // Just under the limit still works.
    g.cells_in_radius(Vec2::ZERO, 500.0, &mut cells).unwrap();
    assert!(cells.len() > 700_000);
    let g3 = Grid3::new(1.0).unwrap();
    let mut cells3 = Vec::new();
    assert!(g3.cells_in_radius(Vec3::ZERO, 60.0, &mut cells3).is_err());
}
