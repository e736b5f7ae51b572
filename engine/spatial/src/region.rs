//! Cell regions for interest management: which cells a radius around a point of interest
//! touches, and which cells it left and entered when the point moved.
//!
//! A cell belongs to the region of `(center, radius)` iff its box
//! `[k * cell_size, (k + 1) * cell_size]` (closed, per axis) is within `radius` of
//! `center`, evaluated in `f64`. A non-finite center or a negative or non-finite radius
//! gives the empty region. Cells are produced in coordinate order (lexicographic
//! `(x, y, z)`), appended to the caller's buffer. The number of cells grows as
//! `(2 * radius / cell_size)^DIM`: these helpers are meant for radii of a few cells, and
//! refuse regions spanning more than [`MAX_REGION_CELLS`].

use core::fmt::Debug;
use core::hash::Hash;

use crate::query::CellRange;
use crate::{GridPoint, SpatialError, SpatialGrid};

/// Largest bounding range, in cells, that [`SpatialGrid::cells_in_radius`] and
/// [`SpatialGrid::cell_region_diff`] enumerate (radii up to about 500 cells in 2D, 49 in
/// 3D); beyond it they return [`SpatialError::RegionTooLarge`].
pub const MAX_REGION_CELLS: u64 = 1 << 20;

/// A ball in `f64` and the range of cells that may touch it.
#[derive(Clone, Copy, Debug)]
struct Region {
    c: [f64; 3],
    r2: f64,
    s: f64,
    dim: usize,
    /// `None` for the empty region.
    range: Option<CellRange>,
}

impl Region {
    fn new<P: GridPoint>(center: P, radius: f32, cell_size: f32) -> Self {
        let c = center.to_xyz().map(f64::from);
        let r = f64::from(radius);
        let s = f64::from(cell_size);
        let valid = center.is_finite() && radius.is_finite() && radius >= 0.0;
        let range = valid.then(|| {
            let mut range = CellRange {
                lo: [0; 3],
                hi: [0; 3],
            };
            let clamp = |v: f64| v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32;
            for (a, &ca) in c.iter().enumerate().take(P::DIM) {
                // One extra cell each side absorbs the rounding of the division; the exact
                // predicate in `contains` decides membership.
                range.lo[a] = clamp(((ca - r) / s).floor() - 1.0);
                range.hi[a] = clamp(((ca + r) / s).floor() + 1.0);
            }
            range
        });
        Region {
            c,
            r2: r * r,
            s,
            dim: P::DIM,
            range,
        }
    }

    /// Exact membership test (in `f64`).
    #[inline]
    fn contains(&self, cell: [i32; 3]) -> bool {
        if self.range.is_none() {
            return false;
        }
        let mut d2 = 0.0f64;
        for (&k, &ca) in cell.iter().zip(&self.c).take(self.dim) {
            let lo = f64::from(k) * self.s;
            let hi = (f64::from(k) + 1.0) * self.s;
            let near = (lo - ca).max(ca - hi).max(0.0);
            d2 += near * near;
        }
        d2 <= self.r2
    }

    /// Refuses regions whose bounding range exceeds [`MAX_REGION_CELLS`].
    fn check_size(&self) -> Result<(), SpatialError> {
        match self.range {
            Some(range) if range.count() > MAX_REGION_CELLS => Err(SpatialError::RegionTooLarge {
                cells: range.count(),
                limit: MAX_REGION_CELLS,
            }),
            _ => Ok(()),
        }
    }

    /// Calls `f` for every member cell, in coordinate order.
    fn for_each(&self, mut f: impl FnMut([i32; 3])) {
        if let Some(range) = self.range {
            range.for_each(|cell| {
                if self.contains(cell) {
                    f(cell);
                }
            });
        }
    }
}

impl<P, H, I> SpatialGrid<P, H, I>
where
    P: GridPoint,
    H: Copy + Eq + Hash + Ord + Debug,
    I: crate::HandleIndex<H>,
{
    /// `true` if `cell` belongs to the region of `(center, radius)` (see the module docs).
    /// Pairs with [`CellChange::Moved`](crate::CellChange::Moved) to decide whether a
    /// moved row entered or left a client's region.
    pub fn cell_in_radius(&self, cell: P::Cell, center: P, radius: f32) -> bool {
        Region::new(center, radius, self.cell_size).contains(P::cell_to_xyz(cell))
    }

    /// Appends every cell of the region of `(center, radius)` to `out`, in coordinate
    /// order. Occupied or not: this is geometry, not contents.
    ///
    /// Errors with [`SpatialError::RegionTooLarge`] (appending nothing) if the region's
    /// bounding range spans more than [`MAX_REGION_CELLS`] cells, so an absurd radius
    /// cannot stall the caller.
    pub fn cells_in_radius(
        &self,
        center: P,
        radius: f32,
        out: &mut Vec<P::Cell>,
    ) -> Result<(), SpatialError> {
        let region = Region::new(center, radius, self.cell_size);
        region.check_size()?;
        region.for_each(|c| out.push(P::cell_from_xyz(c)));
        Ok(())
    }

    /// For a point of interest that moved from `old_center` to `new_center` with a fixed
    /// `radius`, appends the cells of the old region that are not in the new one to `left`
    /// and the cells of the new region that are not in the old one to `entered`, each in
    /// coordinate order. Cost is proportional to the two regions' sizes, even for a
    /// teleport. A non-finite center counts as the empty region (so moving from a
    /// non-finite center enters the whole new region).
    ///
    /// Errors with [`SpatialError::RegionTooLarge`] (appending nothing) like
    /// [`SpatialGrid::cells_in_radius`].
    pub fn cell_region_diff(
        &self,
        old_center: P,
        new_center: P,
        radius: f32,
        left: &mut Vec<P::Cell>,
        entered: &mut Vec<P::Cell>,
    ) -> Result<(), SpatialError> {
        let old = Region::new(old_center, radius, self.cell_size);
        let new = Region::new(new_center, radius, self.cell_size);
        old.check_size()?;
        new.check_size()?;
        if old_center == new_center {
            return Ok(());
        }
        old.for_each(|c| {
            if !new.contains(c) {
                left.push(P::cell_from_xyz(c));
            }
        });
        new.for_each(|c| {
            if !old.contains(c) {
                entered.push(P::cell_from_xyz(c));
            }
        });
        Ok(())
    }
}
