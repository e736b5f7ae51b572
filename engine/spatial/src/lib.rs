//! `orrery-spatial`: the spatial index of Orrery, a uniform hash grid over entity handles
//! for 2D ([`glam::Vec2`]) and 3D ([`glam::Vec3`]) positions.
//!
//! This crate owns spatial indexing only: storing `handle -> position`, moving handles
//! between cells, radius / box / k-nearest queries, and the cell-region helpers that
//! spatial interest management is built on. It depends on `glam` (plus `rustc-hash` and
//! `thiserror`) and must not depend on ECS (`bevy_ecs`), async runtimes (`tokio`) or
//! networking: the engine adapts it (handles are `bevy_ecs::entity::Entity` there), the
//! grid only requires `H: Copy + Eq + Hash + Ord + Debug`.
//!
//! * [`SpatialGrid`] — the grid: [`insert`](SpatialGrid::insert),
//!   [`update`](SpatialGrid::update) (O(1) within a cell, reports a [`CellChange`]),
//!   [`update_batch`](SpatialGrid::update_batch), [`remove`](SpatialGrid::remove), and the
//!   queries
//!   [`query_radius`](SpatialGrid::query_radius),
//!   [`query_aabb`](SpatialGrid::query_aabb), [`nearest_k`](SpatialGrid::nearest_k),
//!   [`for_each_in_radius`](SpatialGrid::for_each_in_radius); for interest management,
//!   [`cells_in_radius`](SpatialGrid::cells_in_radius) and
//!   [`cell_region_diff`](SpatialGrid::cell_region_diff).
//! * [`GridPoint`] — the point types the grid accepts.
//! * [`SpatialError`] — refused operations (non-finite coordinates, duplicate or unknown
//!   handles, bad cell size).
//!
//! Conventions: every method that fills a `&mut Vec` appends (clear it first); queries
//! never allocate once buffers have grown; non-finite query inputs yield nothing; results
//! are deterministic for a given sequence of operations.

mod error;
mod grid;
mod handles;
mod point;
mod query;
mod region;

pub use error::SpatialError;
pub use grid::{CellChange, SpatialGrid};
pub use handles::{DenseHandles, HandleIndex, HashedHandles, Loc};
pub use point::GridPoint;
pub use region::MAX_REGION_CELLS;
