//! The [`GridPoint`] trait: the small set of component-wise operations the grid needs from a
//! point type, implemented for [`glam::Vec2`] (cells are [`glam::IVec2`]) and
//! [`glam::Vec3`] (cells are [`glam::IVec3`]).
//!
//! Generic code in this crate works on `[f32; 3]` / `[i32; 3]` views of points and cells;
//! 2D types report `DIM = 2` and a constant `0` third component, which generic code never
//! reads (it loops over `0..DIM`).

use core::cmp::Ordering;
use core::fmt::Debug;
use core::hash::Hash;

use glam::{IVec2, IVec3, Vec2, Vec3};

mod sealed {
    /// Prevents implementations outside this crate: the grid's correctness depends on the
    /// exact rounding behaviour of [`super::GridPoint::cell`].
    pub trait Sealed {}
    impl Sealed for glam::Vec2 {}
    impl Sealed for glam::Vec3 {}
}

/// A point type the [`SpatialGrid`](crate::SpatialGrid) can index: [`glam::Vec2`] or
/// [`glam::Vec3`].
///
/// The trait is sealed. Its methods are public so that callers can reason about cells with
/// exactly the same arithmetic as the grid (for example to key per-cell data of their own).
pub trait GridPoint: sealed::Sealed + Copy + PartialEq + Debug + Send + Sync + 'static {
    /// The integer cell coordinate type ([`glam::IVec2`] or [`glam::IVec3`]).
    type Cell: Copy + Eq + Hash + Debug + Send + Sync + 'static;

    /// Number of dimensions (2 or 3).
    const DIM: usize;

    /// The cell containing `self`: `floor(self * inv_cell_size)` per component, saturated to
    /// the `i32` range. Monotone in every component, which the queries rely on.
    fn cell(self, inv_cell_size: f32) -> Self::Cell;

    /// `true` if every component is finite (not NaN, not infinite).
    fn is_finite(self) -> bool;

    /// Squared Euclidean distance in `f32` (exactly `glam`'s `distance_squared`). This is
    /// the predicate of every radius query: a point is a hit iff
    /// `p.dist_sq(center) <= radius * radius`.
    fn dist_sq(self, other: Self) -> f32;

    /// `true` if `min <= self <= max` in every component (inclusive box test).
    fn in_box(self, min: Self, max: Self) -> bool;

    /// The components as `[x, y, z]`; `z` is `0.0` for 2D points.
    fn to_xyz(self) -> [f32; 3];

    /// Builds a point from `[x, y, z]`; `z` is ignored for 2D points.
    fn from_xyz(xyz: [f32; 3]) -> Self;

    /// The cell's components as `[x, y, z]`; `z` is `0` for 2D cells.
    fn cell_to_xyz(cell: Self::Cell) -> [i32; 3];

    /// Builds a cell from `[x, y, z]`; `z` is ignored for 2D cells.
    fn cell_from_xyz(xyz: [i32; 3]) -> Self::Cell;

    /// Coordinate order of cells: lexicographic on `(x, y, z)`. Every list of cells this
    /// crate produces from a region is sorted by this order.
    #[inline]
    fn cell_cmp(a: Self::Cell, b: Self::Cell) -> Ordering {
        Self::cell_to_xyz(a).cmp(&Self::cell_to_xyz(b))
    }
}

/// `x.floor() as i32` (saturating, NaN to 0) without a call to `floorf`, which x86-64
/// without SSE4.1 does not inline: truncate, then step down if truncation rounded up.
/// Exact: for `|x| < 2^23` the truncated value converts back exactly, and above that every
/// `f32` is an integer.
#[inline]
pub(crate) fn floor_i32(x: f32) -> i32 {
    let t = x as i32;
    t.saturating_sub(i32::from(t as f32 > x))
}

impl GridPoint for Vec2 {
    type Cell = IVec2;
    const DIM: usize = 2;

    #[inline]
    fn cell(self, inv_cell_size: f32) -> IVec2 {
        let v = self * inv_cell_size;
        IVec2::new(floor_i32(v.x), floor_i32(v.y))
    }

    #[inline]
    fn is_finite(self) -> bool {
        Vec2::is_finite(self)
    }

    #[inline]
    fn dist_sq(self, other: Self) -> f32 {
        self.distance_squared(other)
    }

    #[inline]
    fn in_box(self, min: Self, max: Self) -> bool {
        (self.cmpge(min) & self.cmple(max)).all()
    }

    #[inline]
    fn to_xyz(self) -> [f32; 3] {
        [self.x, self.y, 0.0]
    }

    #[inline]
    fn from_xyz(xyz: [f32; 3]) -> Self {
        Vec2::new(xyz[0], xyz[1])
    }

    #[inline]
    fn cell_to_xyz(cell: IVec2) -> [i32; 3] {
        [cell.x, cell.y, 0]
    }

    #[inline]
    fn cell_from_xyz(xyz: [i32; 3]) -> IVec2 {
        IVec2::new(xyz[0], xyz[1])
    }
}

impl GridPoint for Vec3 {
    type Cell = IVec3;
    const DIM: usize = 3;

    #[inline]
    fn cell(self, inv_cell_size: f32) -> IVec3 {
        let v = self * inv_cell_size;
        IVec3::new(floor_i32(v.x), floor_i32(v.y), floor_i32(v.z))
    }

    #[inline]
    fn is_finite(self) -> bool {
        Vec3::is_finite(self)
    }

    #[inline]
    fn dist_sq(self, other: Self) -> f32 {
        self.distance_squared(other)
    }

    #[inline]
    fn in_box(self, min: Self, max: Self) -> bool {
        (self.cmpge(min) & self.cmple(max)).all()
    }

    #[inline]
    fn to_xyz(self) -> [f32; 3] {
        self.to_array()
    }

    #[inline]
    fn from_xyz(xyz: [f32; 3]) -> Self {
        Vec3::from_array(xyz)
    }

    #[inline]
    fn cell_to_xyz(cell: IVec3) -> [i32; 3] {
        cell.to_array()
    }

    #[inline]
    fn cell_from_xyz(xyz: [i32; 3]) -> IVec3 {
        IVec3::from_array(xyz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_floors_negative_coordinates() {
        assert_eq!(Vec2::new(-0.5, 0.5).cell(1.0), IVec2::new(-1, 0));
        assert_eq!(
            Vec3::new(-10.0, 9.99, 10.0).cell(10.0),
            IVec3::new(-100, 99, 100)
        );
    }

    #[test]
    fn cell_saturates_huge_coordinates() {
        assert_eq!(
            Vec2::new(1e30, -1e30).cell(1.0),
            IVec2::new(i32::MAX, i32::MIN)
        );
    }

    #[test]
    fn floor_i32_matches_std_floor() {
        let mut specials = vec![
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            1.5,
            -1.5,
            8388607.5,
            -8388607.5,
            8388608.0,
            -8388609.0,
            2147483520.0,
            -2147483648.0,
            2147483648.0,
            -2147483904.0,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut s = 0x9E37_79B9u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            specials.push(f32::from_bits(s));
        }
        for x in specials {
            assert_eq!(floor_i32(x), x.floor() as i32, "x = {x:e}");
        }
    }

    #[test]
    fn cell_order_is_lexicographic() {
        let a = IVec2::new(0, 5);
        let b = IVec2::new(1, -5);
        assert_eq!(Vec2::cell_cmp(a, b), Ordering::Less);
        assert_eq!(
            Vec3::cell_cmp(IVec3::new(1, 2, 3), IVec3::new(1, 2, 3)),
            Ordering::Equal
        );
    }
}
