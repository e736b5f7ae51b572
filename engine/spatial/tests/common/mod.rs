//! Shared helpers for the integration tests: brute-force oracles over a model map.

#![allow(dead_code)]

use std::collections::BTreeMap;

use orrery_spatial::GridPoint;

/// Handles whose position is within `radius` of `center` (same f32 predicate as the grid).
pub fn brute_radius<P: GridPoint>(model: &BTreeMap<u32, P>, center: P, radius: f32) -> Vec<u32> {
    if !(center.is_finite() && radius.is_finite() && radius >= 0.0) {
        return Vec::new();
    }
    let r2 = radius * radius;
    model
        .iter()
        .filter(|(_, p)| p.dist_sq(center) <= r2)
        .map(|(&h, _)| h)
        .collect()
}

/// Handles whose position is in the inclusive box.
pub fn brute_aabb<P: GridPoint>(model: &BTreeMap<u32, P>, min: P, max: P) -> Vec<u32> {
    if !(min.is_finite() && max.is_finite()) {
        return Vec::new();
    }
    model
        .iter()
        .filter(|(_, p)| p.in_box(min, max))
        .map(|(&h, _)| h)
        .collect()
}

/// The `k` nearest by (distance, handle).
pub fn brute_nearest<P: GridPoint>(
    model: &BTreeMap<u32, P>,
    center: P,
    k: usize,
) -> Vec<(u32, f32)> {
    if !center.is_finite() {
        return Vec::new();
    }
    let mut all: Vec<(u32, f32)> = model
        .iter()
        .map(|(&h, p)| (h, p.dist_sq(center).sqrt()))
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// Independent re-statement of the region predicate: the closed box of `cell` is within
/// `radius` of `center`, in f64.
pub fn cell_touches<P: GridPoint>(cell: [i32; 3], center: P, radius: f32, s: f32) -> bool {
    let c = center.to_xyz();
    let s = f64::from(s);
    let mut d2 = 0.0f64;
    for a in 0..P::DIM {
        let lo = f64::from(cell[a]) * s;
        let hi = (f64::from(cell[a]) + 1.0) * s;
        let ca = f64::from(c[a]);
        let near = if ca < lo {
            lo - ca
        } else if ca > hi {
            ca - hi
        } else {
            0.0
        };
        d2 += near * near;
    }
    d2 <= f64::from(radius) * f64::from(radius)
}

/// Brute-force region: every cell of a generous bounding range passing `cell_touches`, in
/// lexicographic order.
pub fn brute_region<P: GridPoint>(center: P, radius: f32, s: f32) -> Vec<[i32; 3]> {
    let mut out = Vec::new();
    if !(center.is_finite() && radius.is_finite() && radius >= 0.0) {
        return out;
    }
    let c = center.to_xyz();
    let mut lo = [0i32; 3];
    let mut hi = [0i32; 3];
    for a in 0..P::DIM {
        lo[a] = ((f64::from(c[a]) - f64::from(radius)) / f64::from(s)).floor() as i32 - 3;
        hi[a] = ((f64::from(c[a]) + f64::from(radius)) / f64::from(s)).floor() as i32 + 3;
    }
    for x in lo[0]..=hi[0] {
        for y in lo[1]..=hi[1] {
            for z in lo[2]..=hi[2] {
                if cell_touches([x, y, z], center, radius, s) {
                    out.push([x, y, z]);
                }
            }
        }
    }
    out
}

/// Sorted copy.
pub fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}
