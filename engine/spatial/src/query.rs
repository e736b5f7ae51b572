//! Queries on a [`SpatialGrid`]: radius, axis-aligned box and k-nearest, as buffer-filling
//! methods and as visitors.
//!
//! All query methods **append** to the output buffer (they never clear it), so one buffer
//! can collect several queries; the usual pattern is `out.clear()` then query. Once the
//! buffer has grown, queries do not allocate. Non-finite inputs give no results.
//!
//! Cell visits are conservative against `f32` rounding: a cell is skipped (or accepted
//! without per-point tests) only when that is certain with a margin, so results are
//! exactly those of a linear scan with the same predicate.

use core::cmp::Ordering;
use core::fmt::Debug;
use core::hash::Hash;

use crate::grid::{Bucket, Entry};
use crate::point::floor_i32;
use crate::{GridPoint, SpatialGrid};

/// Relative margin applied to squared distances when classifying cells.
const REL_MARGIN: f32 = 1e-5;
/// Absolute margin per unit of coordinate magnitude, covering the rounding of
/// `floor(x * inv_cell_size)` and of cell bounds.
const ABS_MARGIN: f32 = 1e-6;
/// Cells resolved before scanning, in radius queries.
const BATCH: usize = 16;

/// How a cell relates to a query region.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// No point of the cell can match.
    Outside,
    /// Every point of the cell matches.
    Inside,
    /// Points must be tested one by one.
    Partial,
}

/// An inclusive range of cells, as `[x, y, z]` bounds (unused axes are `[0, 0]`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CellRange {
    pub(crate) lo: [i32; 3],
    pub(crate) hi: [i32; 3],
}

impl CellRange {
    /// Number of cells in the range, saturating.
    pub(crate) fn count(&self) -> u64 {
        (0..3).fold(1u64, |acc, a| {
            let n = (i64::from(self.hi[a]) - i64::from(self.lo[a]) + 1).max(0) as u64;
            acc.saturating_mul(n)
        })
    }

    #[inline]
    pub(crate) fn contains(&self, c: [i32; 3]) -> bool {
        (0..3).all(|a| self.lo[a] <= c[a] && c[a] <= self.hi[a])
    }

    /// Calls `f` for every cell in lexicographic `(x, y, z)` order.
    #[inline]
    pub(crate) fn for_each(&self, mut f: impl FnMut([i32; 3])) {
        for x in self.lo[0]..=self.hi[0] {
            for y in self.lo[1]..=self.hi[1] {
                for z in self.lo[2]..=self.hi[2] {
                    f([x, y, z]);
                }
            }
        }
    }
}

/// Where query results go: a handle buffer or a visitor closure.
trait Sink<P, H> {
    /// Every entry matches.
    fn all(&mut self, entries: &[Entry<P, H>]);
    /// The entries whose point passes `pred` match.
    fn filter(&mut self, entries: &[Entry<P, H>], pred: impl Fn(P) -> bool);
}

struct VecSink<'a, H>(&'a mut Vec<H>);

impl<P: Copy, H: Copy> Sink<P, H> for VecSink<'_, H> {
    #[inline]
    fn all(&mut self, entries: &[Entry<P, H>]) {
        self.0.extend(entries.iter().map(|e| e.handle));
    }

    /// Branch-free: every handle is written to the next free slot, which only advances on a
    /// match (about a third of the scanned points match, a branch would mispredict often).
    #[inline]
    fn filter(&mut self, entries: &[Entry<P, H>], pred: impl Fn(P) -> bool) {
        let Some(first) = entries.first() else {
            return;
        };
        let base = self.0.len();
        self.0.resize(base + entries.len(), first.handle);
        let dst = &mut self.0[base..];
        let mut n = 0;
        for e in entries {
            if let Some(slot) = dst.get_mut(n) {
                *slot = e.handle;
            }
            n += usize::from(pred(e.point));
        }
        self.0.truncate(base + n);
    }
}

struct FnSink<F>(F);

impl<P: Copy, H: Copy, F: FnMut(H, P)> Sink<P, H> for FnSink<F> {
    #[inline]
    fn all(&mut self, entries: &[Entry<P, H>]) {
        for e in entries {
            (self.0)(e.handle, e.point);
        }
    }
    #[inline]
    fn filter(&mut self, entries: &[Entry<P, H>], pred: impl Fn(P) -> bool) {
        for e in entries {
            if pred(e.point) {
                (self.0)(e.handle, e.point);
            }
        }
    }
}

/// Total order of nearest-k candidates: distance, then handle.
#[inline]
fn cand_cmp<H: Ord>(a: &(H, f32), b: &(H, f32)) -> Ordering {
    a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0))
}

/// Largest absolute component among the first `P::DIM`.
#[inline]
fn max_abs<P: GridPoint>(xyz: [f32; 3]) -> f32 {
    xyz[..P::DIM].iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Candidate buffer of a k-nearest search: `out[start..]`, pruned to the best `k` whenever
/// it reaches `2k`, so it never grows past `start + 2k`.
struct Candidates<'a, H> {
    out: &'a mut Vec<(H, f32)>,
    start: usize,
    k: usize,
    /// Distance of the k-th best candidate after the last prune (`inf` before).
    bound: f32,
}

impl<H: Copy + Ord> Candidates<'_, H> {
    #[inline]
    fn offer(&mut self, h: H, d: f32) {
        if d <= self.bound {
            self.out.push((h, d));
            if self.out.len() - self.start >= self.k.saturating_mul(2) {
                self.prune();
            }
        }
    }

    fn count(&self) -> usize {
        self.out.len() - self.start
    }

    /// Keeps the best `k` (unordered) and sets `bound` to the k-th distance.
    fn prune(&mut self) {
        if self.count() >= self.k {
            let cands = &mut self.out[self.start..];
            let (_, kth, _) = cands.select_nth_unstable_by(self.k - 1, cand_cmp);
            self.bound = kth.1;
            self.out.truncate(self.start + self.k);
        }
    }

    fn finish(mut self) {
        self.prune();
        self.out[self.start..].sort_unstable_by(cand_cmp);
    }
}

impl<P, H, I> SpatialGrid<P, H, I>
where
    P: GridPoint,
    H: Copy + Eq + Hash + Ord + Debug,
    I: crate::HandleIndex<H>,
{
    /// Appends every handle whose position `p` satisfies
    /// `p.dist_sq(center) <= radius * radius` (in `f32`) to `out`.
    ///
    /// `out` is not cleared: call `out.clear()` first unless you mean to accumulate.
    /// `radius == 0` matches only points exactly at `center`; a negative or non-finite
    /// radius, or a non-finite center, matches nothing. Order: see the type's
    /// determinism notes. While scanning a cell, `out` temporarily holds one slot per entry
    /// of that cell, so its capacity settles at the result size plus one cell's entries.
    pub fn query_radius(&self, center: P, radius: f32, out: &mut Vec<H>) {
        self.visit_radius(center, radius, &mut VecSink(out));
    }

    /// Calls `f(handle, position)` for every point [`SpatialGrid::query_radius`] would
    /// return, in the same order, without a buffer.
    pub fn for_each_in_radius(&self, center: P, radius: f32, f: impl FnMut(H, P)) {
        self.visit_radius(center, radius, &mut FnSink(f));
    }

    /// Appends every handle whose position lies in the box `min <= p <= max` (inclusive,
    /// per component) to `out`. `out` is not cleared. An empty box (`min > max` on some
    /// axis) or non-finite bounds match nothing.
    pub fn query_aabb(&self, min: P, max: P, out: &mut Vec<H>) {
        self.visit_aabb(min, max, &mut VecSink(out));
    }

    /// Calls `f(handle, position)` for every point [`SpatialGrid::query_aabb`] would
    /// return, in the same order.
    pub fn for_each_in_aabb(&self, min: P, max: P, f: impl FnMut(H, P)) {
        self.visit_aabb(min, max, &mut FnSink(f));
    }

    /// Appends the `k` points nearest to `center` to `out` as `(handle, distance)`,
    /// ascending by distance (`dist_sq(center).sqrt()` in `f32`), ties broken by ascending
    /// handle, so the result depends only on the grid's contents. Fewer than `k` if the
    /// grid holds fewer points; nothing for `k == 0` or a non-finite center.
    ///
    /// Searches rings of cells outward from the center's cell and stops once the k-th best
    /// distance is certainly inside the searched cube; if the rings would visit more cells
    /// than the grid has buckets (points far away), it scans the buckets instead, so the
    /// cost is bounded by a full scan. `out` is not cleared; the entries from
    /// `out.len()` on are the result. Needs up to `2k` entries of spare capacity.
    pub fn nearest_k(&self, center: P, k: usize, out: &mut Vec<(H, f32)>) {
        if k == 0 || self.is_empty() || !center.is_finite() {
            return;
        }
        let mut cands = Candidates {
            start: out.len(),
            out,
            k,
            bound: f32::INFINITY,
        };
        if k >= self.len() || !self.nearest_rings(center, &mut cands) {
            cands.out.truncate(cands.start);
            cands.bound = f32::INFINITY;
            for b in &self.store.buckets {
                Self::offer_bucket(b, center, &mut cands);
            }
        }
        cands.finish();
    }

    #[inline]
    fn offer_bucket(b: &Bucket<P, H>, center: P, cands: &mut Candidates<'_, H>) {
        for e in &b.entries {
            cands.offer(e.handle, e.point.dist_sq(center).sqrt());
        }
    }

    /// Ring search of `nearest_k`. Returns `false` if it gave up (the caller then scans
    /// everything from scratch).
    fn nearest_rings(&self, center: P, cands: &mut Candidates<'_, H>) -> bool {
        let c = center.to_xyz();
        let cc = P::cell_to_xyz(self.cell_of(center)).map(i64::from);
        let dim = P::DIM;
        let s = f64::from(self.cell_size);
        // Past this many cells, scanning every bucket is cheaper than more rings.
        let budget = (self.store.buckets.len() as u64).saturating_mul(2).max(27);
        let cmag = f64::from(max_abs::<P>(c));
        let mut seen = 0usize;
        for n in 0i64.. {
            let side = (2 * n + 1) as u64;
            let cube = (0..dim).fold(1u64, |acc, _| acc.saturating_mul(side));
            if cube > budget
                || (0..dim)
                    .any(|a| cc[a] - n <= i64::from(i32::MIN) || cc[a] + n >= i64::from(i32::MAX))
            {
                return false;
            }
            for_each_ring_cell(cc, n, dim, |cell| {
                let cell = P::cell_from_xyz(cell.map(|v| v as i32));
                if let Some(b) = self.store.bucket_of(cell) {
                    seen += b.entries.len();
                    Self::offer_bucket(b, center, cands);
                }
            });
            if seen == self.len() {
                return true;
            }
            if cands.count() >= cands.k {
                cands.prune();
                // Every unvisited point is in a cell outside the cube of half-side n around
                // `cc`, hence at least `searched` away from `center` (minus rounding slack).
                let searched = (0..dim).fold(f64::INFINITY, |m, a| {
                    let lo = (cc[a] - n) as f64 * s;
                    let hi = (cc[a] + n + 1) as f64 * s;
                    let ca = f64::from(c[a]);
                    m.min(ca - lo).min(hi - ca)
                });
                let slack = (cmag + (n + 1) as f64 * s) * 1e-6;
                if f64::from(cands.bound) * (1.0 + 1e-5) < searched - slack {
                    return true;
                }
            }
        }
        true
    }

    /// Inclusive cell range covering `[c - r - e, c + r + e]` on the grid's axes.
    #[inline]
    fn radius_range(&self, c: [f32; 3], r: f32, e: f32) -> CellRange {
        let mut range = CellRange {
            lo: [0; 3],
            hi: [0; 3],
        };
        for (a, &ca) in c.iter().enumerate().take(P::DIM) {
            range.lo[a] = floor_i32((ca - r - e) * self.inv_cell_size);
            range.hi[a] = floor_i32((ca + r + e) * self.inv_cell_size);
        }
        range
    }

    /// Conservative classification of `cell` against the ball `(c, r2)`; `e` widens the
    /// cell's bounds to cover rounding of cell assignment.
    #[inline]
    fn classify_ball(&self, cell: [i32; 3], c: [f32; 3], r2: f32, e: f32) -> Class {
        let s = self.cell_size;
        let mut near2 = 0.0f32;
        let mut far2 = 0.0f32;
        for a in 0..P::DIM {
            let k = cell[a];
            if k == i32::MIN || k == i32::MAX {
                // A saturated cell holds everything beyond the i32 range.
                return Class::Partial;
            }
            let lo = k as f32 * s - e;
            let hi = (k as f32 + 1.0) * s + e;
            let dlo = c[a] - lo;
            let dhi = hi - c[a];
            let near = if dlo < 0.0 {
                -dlo
            } else if dhi < 0.0 {
                -dhi
            } else {
                0.0
            };
            let far = dlo.abs().max(dhi.abs());
            near2 += near * near;
            far2 += far * far;
        }
        if near2 * (1.0 - REL_MARGIN) > r2 {
            Class::Outside
        } else if far2 * (1.0 + REL_MARGIN) <= r2 {
            Class::Inside
        } else {
            Class::Partial
        }
    }

    fn visit_radius<S: Sink<P, H>>(&self, center: P, radius: f32, sink: &mut S) {
        if !(center.is_finite() && radius.is_finite() && radius >= 0.0) || self.is_empty() {
            return;
        }
        let c = center.to_xyz();
        let r2 = radius * radius;
        let e = (max_abs::<P>(c) + radius + self.cell_size) * ABS_MARGIN;
        let range = self.radius_range(c, radius, e);
        let visit = |b: &Bucket<P, H>, class: Class, sink: &mut S| match class {
            Class::Outside => {}
            Class::Inside => sink.all(&b.entries),
            Class::Partial => sink.filter(&b.entries, |p| p.dist_sq(center) <= r2),
        };
        if range.count() > self.store.buckets.len() as u64 {
            for b in &self.store.buckets {
                let cell = P::cell_to_xyz(b.cell);
                if !b.entries.is_empty() && range.contains(cell) {
                    visit(b, self.classify_ball(cell, c, r2, e), sink);
                }
            }
        } else {
            // Two phases per batch of cells: resolve every cell to its entries first (the
            // lookups are independent, so their cache misses overlap), then scan.
            let mut batch: [(&[Entry<P, H>], Class); BATCH] = [(&[], Class::Outside); BATCH];
            let mut n = 0;
            let flush = |batch: &[(&[Entry<P, H>], Class)], sink: &mut S| {
                for &(entries, class) in batch {
                    match class {
                        Class::Outside => {}
                        Class::Inside => sink.all(entries),
                        Class::Partial => sink.filter(entries, |p| p.dist_sq(center) <= r2),
                    }
                }
            };
            self.store.for_each_occupied(&range, |cell, b| {
                let class = self.classify_ball(cell, c, r2, e);
                if class != Class::Outside {
                    batch[n] = (&b.entries, class);
                    n += 1;
                    if n == BATCH {
                        flush(&batch, sink);
                        n = 0;
                    }
                }
            });
            flush(&batch[..n], sink);
        }
    }

    fn visit_aabb<S: Sink<P, H>>(&self, min: P, max: P, sink: &mut S) {
        if !(min.is_finite() && max.is_finite() && min.in_box(min, max)) || self.is_empty() {
            return;
        }
        let range = CellRange {
            lo: P::cell_to_xyz(self.cell_of(min)),
            hi: P::cell_to_xyz(self.cell_of(max)),
        };
        // Cells strictly inside the range on every axis hold only points inside the box:
        // `cell_of` is monotone, so cell(p) > cell(min) implies p > min (same for max).
        let interior =
            |cell: [i32; 3]| (0..P::DIM).all(|a| range.lo[a] < cell[a] && cell[a] < range.hi[a]);
        let visit = |b: &Bucket<P, H>, cell: [i32; 3], sink: &mut S| {
            if interior(cell) {
                sink.all(&b.entries);
            } else {
                sink.filter(&b.entries, |p| p.in_box(min, max));
            }
        };
        if range.count() > self.store.buckets.len() as u64 {
            for b in &self.store.buckets {
                let cell = P::cell_to_xyz(b.cell);
                if !b.entries.is_empty() && range.contains(cell) {
                    visit(b, cell, sink);
                }
            }
        } else {
            self.store
                .for_each_occupied(&range, |cell, b| visit(b, cell, sink));
        }
    }
}

/// Calls `f` for every cell at Chebyshev distance exactly `n` from `cc` (on the first
/// `dim` axes), in lexicographic order.
fn for_each_ring_cell(cc: [i64; 3], n: i64, dim: usize, mut f: impl FnMut([i64; 3])) {
    let [cx, cy, cz] = cc;
    if n == 0 {
        f(cc);
        return;
    }
    for x in cx - n..=cx + n {
        let x_edge = (x - cx).abs() == n;
        if dim == 2 {
            if x_edge {
                for y in cy - n..=cy + n {
                    f([x, y, cz]);
                }
            } else {
                f([x, cy - n, cz]);
                f([x, cy + n, cz]);
            }
            continue;
        }
        for y in cy - n..=cy + n {
            if x_edge || (y - cy).abs() == n {
                for z in cz - n..=cz + n {
                    f([x, y, z]);
                }
            } else {
                f([x, y, cz - n]);
                f([x, y, cz + n]);
            }
        }
    }
}
