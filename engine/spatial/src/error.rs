//! [`SpatialError`]: every way a grid operation can be refused. Errors carry the offending
//! value; handles are carried as their `Debug` text so the error type stays non-generic.

use thiserror::Error;

/// Why a [`SpatialGrid`](crate::SpatialGrid) operation was refused. A refused operation
/// leaves the grid unchanged.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpatialError {
    /// The cell size was not finite or not strictly positive.
    #[error("invalid cell size {0}: must be finite and > 0")]
    InvalidCellSize(f32),

    /// A position had a NaN or infinite component. `coords` holds the components as
    /// `[x, y, z]`; only the first `dims` are meaningful (`z` is `0.0` for 2D points).
    #[error("non-finite coordinates {:?}", &coords[..*dims])]
    NonFinite {
        /// The rejected components, `[x, y, z]`.
        coords: [f32; 3],
        /// Number of meaningful components (2 or 3).
        dims: usize,
    },

    /// `insert` was called with a handle that is already in the grid.
    #[error("handle {0} is already in the grid")]
    DuplicateHandle(String),

    /// `update` was called with a handle that is not in the grid.
    #[error("handle {0} is not in the grid")]
    UnknownHandle(String),

    /// A cell-region helper was asked for a region spanning more cells than it enumerates
    /// (see [`MAX_REGION_CELLS`](crate::MAX_REGION_CELLS)).
    #[error("cell region spans {cells} cells, more than the limit of {limit}")]
    RegionTooLarge {
        /// Cells in the region's bounding range.
        cells: u64,
        /// The limit, [`MAX_REGION_CELLS`](crate::MAX_REGION_CELLS).
        limit: u64,
    },
}

impl SpatialError {
    /// Builds [`SpatialError::NonFinite`] from a point.
    pub(crate) fn non_finite<P: crate::GridPoint>(p: P) -> Self {
        SpatialError::NonFinite {
            coords: p.to_xyz(),
            dims: P::DIM,
        }
    }
}
