//! The publisher's own spatial index over mirrored rows, one per position column: a 2D grid
//! for `Vec2` columns and a 3D grid for `Vec3` columns behind one `Vec3` interface (2D
//! positions have `z = 0`, and a 2D column measures distance in the plane, whatever the
//! focus's `z`). A 2D grid for 2D data matters: a 3D grid would probe every empty `z` layer a
//! query's radius spans, about four times the cell lookups of the plane.

use glam::{Vec2, Vec3};
use orrery_spatial::{DenseHandles, GridPoint, SpatialError, SpatialGrid};

/// A grid of row slots by position.
pub(crate) enum MirrorGrid {
    /// A `Vec2` column.
    Flat(SpatialGrid<Vec2, u32, DenseHandles>),
    /// A `Vec3` column.
    Solid(SpatialGrid<Vec3, u32, DenseHandles>),
}

impl MirrorGrid {
    /// An empty grid with `cell` sized cells, planar if `planar`.
    pub(crate) fn new(planar: bool, cell: f32) -> Result<Self, SpatialError> {
        Ok(if planar {
            MirrorGrid::Flat(SpatialGrid::new(cell)?)
        } else {
            MirrorGrid::Solid(SpatialGrid::new(cell)?)
        })
    }

    /// Places `slot` at `p` (inserted or moved). Returns the cell it was in (`None`: it was
    /// not in the grid, or stayed in its cell) and the cell it is in, as `[x, y, z]`.
    pub(crate) fn set(
        &mut self,
        slot: u32,
        p: Vec3,
    ) -> Result<(Option<[i32; 3]>, [i32; 3]), SpatialError> {
        fn set<P: orrery_spatial::GridPoint>(
            grid: &mut SpatialGrid<P, u32, DenseHandles>,
            slot: u32,
            p: P,
        ) -> Result<(Option<[i32; 3]>, [i32; 3]), SpatialError> {
            let from = if grid.contains(slot) {
                match grid.update(slot, p)? {
                    orrery_spatial::CellChange::Moved { from, .. } => Some(P::cell_to_xyz(from)),
                    orrery_spatial::CellChange::Same => None,
                }
            } else {
                grid.insert(slot, p)?;
                None
            };
            Ok((from, P::cell_to_xyz(grid.cell_of(p))))
        }
        match self {
            MirrorGrid::Flat(g) => set(g, slot, p.truncate()),
            MirrorGrid::Solid(g) => set(g, slot, p),
        }
    }

    /// Takes `slot` out (no-op if absent); returns the cell it was in, as `[x, y, z]`.
    pub(crate) fn remove(&mut self, slot: u32) -> Option<[i32; 3]> {
        match self {
            MirrorGrid::Flat(g) => g.remove(slot).map(|p| Vec2::cell_to_xyz(g.cell_of(p))),
            MirrorGrid::Solid(g) => g.remove(slot).map(|p| Vec3::cell_to_xyz(g.cell_of(p))),
        }
    }

    /// The distance from `focus` to `slot`'s position, if it has one.
    pub(crate) fn distance(&self, slot: u32, focus: Vec3) -> Option<f32> {
        match self {
            MirrorGrid::Flat(g) => g.get(slot).map(|p| p.distance(focus.truncate())),
            MirrorGrid::Solid(g) => g.get(slot).map(|p| p.distance(focus)),
        }
    }

    /// Side of the grid's cells.
    pub(crate) fn cell_size(&self) -> f32 {
        match self {
            MirrorGrid::Flat(g) => g.cell_size(),
            MirrorGrid::Solid(g) => g.cell_size(),
        }
    }

    /// Whether this is a 2D grid.
    pub(crate) fn planar(&self) -> bool {
        matches!(self, MirrorGrid::Flat(_))
    }

    /// `slot`'s distance from `center` if [`MirrorGrid::for_each_within`] with the same
    /// `center` and `radius` would report it (the same membership test and the same distance),
    /// else `None`.
    pub(crate) fn within(&self, slot: u32, center: Vec3, radius: f32) -> Option<f32> {
        fn within<P: GridPoint>(
            p: P,
            c: P,
            radius: f32,
            distance: impl Fn(P) -> f32,
        ) -> Option<f32> {
            let valid = c.is_finite() && radius.is_finite() && radius >= 0.0;
            (valid && p.dist_sq(c) <= radius * radius).then(|| distance(p))
        }
        match self {
            MirrorGrid::Flat(g) => {
                let c = center.truncate();
                within(g.get(slot)?, c, radius, |p| c.distance(p))
            }
            MirrorGrid::Solid(g) => within(g.get(slot)?, center, radius, |p| center.distance(p)),
        }
    }

    /// Calls `f(slot, distance)` for every slot within `radius` of `center`.
    pub(crate) fn for_each_within(&self, center: Vec3, radius: f32, mut f: impl FnMut(u32, f32)) {
        match self {
            MirrorGrid::Flat(g) => {
                let c = center.truncate();
                g.for_each_in_radius(c, radius, |slot, p| f(slot, c.distance(p)));
            }
            MirrorGrid::Solid(g) => {
                g.for_each_in_radius(center, radius, |slot, p| f(slot, center.distance(p)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(grid: &MirrorGrid, center: Vec3, radius: f32) -> Vec<(u32, f32)> {
        let mut found = Vec::new();
        grid.for_each_within(center, radius, |slot, d| found.push((slot, d)));
        found.sort_by_key(|&(slot, _)| slot);
        found
    }

    #[test]
    fn planar_grids_ignore_the_focus_height() {
        let mut grid = MirrorGrid::new(true, 10.0).unwrap();
        grid.set(1, Vec3::new(3.0, 4.0, 0.0)).unwrap();
        grid.set(2, Vec3::new(30.0, 0.0, 0.0)).unwrap();
        assert_eq!(within(&grid, Vec3::new(0.0, 0.0, 50.0), 5.0), [(1, 5.0)]);
        assert_eq!(grid.distance(1, Vec3::new(0.0, 0.0, 50.0)), Some(5.0));
        grid.set(1, Vec3::new(29.0, 0.0, 0.0)).unwrap();
        assert_eq!(
            within(&grid, Vec3::new(30.0, 0.0, 0.0), 2.0),
            [(1, 1.0), (2, 0.0)]
        );
        grid.remove(2);
        grid.remove(2);
        assert_eq!(within(&grid, Vec3::new(30.0, 0.0, 0.0), 2.0), [(1, 1.0)]);
        assert_eq!(grid.distance(2, Vec3::ZERO), None);
        assert!(grid.set(3, Vec3::new(f32::NAN, 0.0, 0.0)).is_err());
    }

    #[test]
    fn solid_grids_measure_in_three_dimensions() {
        let mut grid = MirrorGrid::new(false, 10.0).unwrap();
        grid.set(1, Vec3::new(0.0, 0.0, 4.0)).unwrap();
        assert_eq!(within(&grid, Vec3::ZERO, 4.0), [(1, 4.0)]);
        assert!(within(&grid, Vec3::ZERO, 3.9).is_empty());
        assert_eq!(grid.distance(1, Vec3::new(0.0, 3.0, 0.0)), Some(5.0));
    }
}
