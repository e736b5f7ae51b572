//! [`SpatialGrid`]: the storage of the uniform hash grid and its mutations (insert, update,
//! remove). Queries live in [`crate::query`], cell regions in [`crate::region`].
//!
//! Layout:
//! * cells are grouped in tiles of 8 consecutive cells along the last axis; a tile map
//!   (`FxHashMap`) gives each tile's bucket ids, so a query needs one hash lookup per run
//!   of up to 8 cells;
//! * bucket ids index a dense `Vec` of buckets; a bucket keeps its cell and one vector of
//!   `(position, handle)` entries, so a query reads one contiguous stream per cell;
//! * `handle -> (bucket, slot)` (a [`HandleIndex`]: a hash map, or an array for dense handles) finds an entry in O(1): an update
//!   that stays in its cell is one handle lookup and one store, the cell map untouched;
//! * removal is `swap_remove` plus one fix-up of the entry that moved into the hole;
//!   emptied buckets (and tiles) go to free lists, keeping their allocations for the next
//!   cell that needs one.

use core::fmt;
use core::hash::Hash;
use std::collections::hash_map::Entry as MapEntry;

use rustc_hash::FxHashMap;

use crate::handles::{HandleIndex, HashedHandles, Loc};
use crate::{GridPoint, SpatialError};

/// Whether an [`SpatialGrid::update`] moved the point to another cell.
///
/// Interest management uses this to learn, for a moved row, which cell it left and which it
/// entered, without recomputing cells itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellChange<C> {
    /// The point stayed in its cell; only its stored position was overwritten.
    Same,
    /// The point left cell `from` and entered cell `to`.
    Moved {
        /// The cell the point was in before the update.
        from: C,
        /// The cell the point is in after the update.
        to: C,
    },
}

impl<C> CellChange<C> {
    /// `true` for [`CellChange::Moved`].
    #[inline]
    pub fn is_moved(&self) -> bool {
        matches!(self, CellChange::Moved { .. })
    }
}

/// One stored point: its position inline next to its handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<P, H> {
    pub(crate) point: P,
    pub(crate) handle: H,
}

/// All entries of one occupied cell.
#[derive(Clone)]
pub(crate) struct Bucket<P: GridPoint, H> {
    /// The cell this bucket holds (stale while the bucket sits on the free list).
    pub(crate) cell: P::Cell,
    /// The cell's entries, in insertion order as modified by swap-removes.
    pub(crate) entries: Vec<Entry<P, H>>,
}

/// Cells per tile along the last axis (`y` in 2D, `z` in 3D), as a power of two.
const TILE_BITS: u32 = 3;
/// Cells per tile.
pub(crate) const TILE: usize = 1 << TILE_BITS;
/// Marks an unoccupied cell in a tile.
const NO_BUCKET: u32 = u32::MAX;

/// A run of `TILE` consecutive cells along the last axis: the bucket id of each occupied
/// cell. Queries scan runs of cells along that axis, so one hash lookup serves up to
/// `TILE` cells.
#[derive(Clone, Debug)]
pub(crate) struct Tile {
    /// Bucket id per cell of the run, `NO_BUCKET` if the cell is empty.
    slots: [u32; TILE],
    /// Number of occupied cells in the run.
    occupied: u32,
}

impl Tile {
    /// The bucket id of the cell at `offset` (`0..TILE`) in the run, if occupied.
    #[inline]
    pub(crate) fn bucket(&self, offset: usize) -> Option<u32> {
        let id = self.slots[offset % TILE];
        (id != NO_BUCKET).then_some(id)
    }
}

/// Splits a cell into its tile key (last axis divided by `TILE`, rounding down) and its
/// offset within the tile.
#[inline]
pub(crate) fn tile_key<P: GridPoint>(cell: [i32; 3]) -> (P::Cell, usize) {
    let mut key = cell;
    let last = P::DIM - 1;
    let offset = (cell[last] & (TILE as i32 - 1)) as usize;
    key[last] = cell[last] >> TILE_BITS;
    (P::cell_from_xyz(key), offset)
}

/// The cell side of the grid: tile map, tiles, dense buckets and their free lists.
#[derive(Clone)]
pub(crate) struct CellStore<P: GridPoint, H> {
    /// Tile key -> index into `tiles`. Only ever used for point lookups, never iterated by
    /// queries (its iteration order must not leak into results).
    map: FxHashMap<P::Cell, u32>,
    /// Tiles; those on `free_tiles` are all-empty.
    tiles: Vec<Tile>,
    /// Ids of empty tiles available for reuse.
    free_tiles: Vec<u32>,
    /// Dense bucket storage; empty buckets are on `free`.
    pub(crate) buckets: Vec<Bucket<P, H>>,
    /// Ids of empty buckets available for reuse (LIFO, deterministic).
    free: Vec<u32>,
    /// Number of occupied cells.
    pub(crate) occupied: usize,
}

impl<P: GridPoint, H: Copy + Eq + Hash> CellStore<P, H> {
    fn new() -> Self {
        CellStore {
            map: FxHashMap::default(),
            tiles: Vec::new(),
            free_tiles: Vec::new(),
            buckets: Vec::new(),
            free: Vec::new(),
            occupied: 0,
        }
    }

    /// The tile with key `key` (see [`tile_key`]), if any of its cells is occupied.
    #[inline]
    pub(crate) fn tile(&self, key: P::Cell) -> Option<&Tile> {
        self.map.get(&key).map(|&t| &self.tiles[t as usize])
    }

    /// The bucket of an occupied cell.
    #[inline]
    pub(crate) fn bucket_of(&self, cell: P::Cell) -> Option<&Bucket<P, H>> {
        let (key, offset) = tile_key::<P>(P::cell_to_xyz(cell));
        let id = self.tile(key)?.bucket(offset)?;
        Some(&self.buckets[id as usize])
    }

    /// Appends `(h, p)` to the bucket of `cell`, creating the bucket (and tile) if needed.
    fn attach(&mut self, cell: P::Cell, h: H, p: P) -> Loc {
        let (key, offset) = tile_key::<P>(P::cell_to_xyz(cell));
        let tile = match self.map.entry(key) {
            MapEntry::Occupied(e) => *e.get(),
            MapEntry::Vacant(v) => {
                let empty = Tile {
                    slots: [NO_BUCKET; TILE],
                    occupied: 0,
                };
                let id = match self.free_tiles.pop() {
                    Some(id) => id,
                    None => {
                        self.tiles.push(empty);
                        u32::try_from(self.tiles.len() - 1).expect("more than u32::MAX tiles")
                    }
                };
                *v.insert(id)
            }
        };
        let tile = &mut self.tiles[tile as usize];
        let bucket = match tile.slots[offset] {
            NO_BUCKET => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.buckets[id as usize].cell = cell;
                        id
                    }
                    None => {
                        self.buckets.push(Bucket {
                            cell,
                            entries: Vec::new(),
                        });
                        u32::try_from(self.buckets.len() - 1)
                            .ok()
                            .filter(|&id| id != NO_BUCKET)
                            .expect("too many occupied cells")
                    }
                };
                tile.slots[offset] = id;
                tile.occupied += 1;
                self.occupied += 1;
                id
            }
            id => id,
        };
        let b = &mut self.buckets[bucket as usize];
        let slot = u32::try_from(b.entries.len()).expect("more than u32::MAX entries in a cell");
        b.entries.push(Entry {
            point: p,
            handle: h,
        });
        Loc { bucket, slot }
    }

    /// Removes the entry at `loc` by swap-remove. Returns the handle that moved into
    /// `loc.slot` (its index entry must be fixed by the caller), if any. Frees the bucket
    /// (and its tile) when it becomes empty.
    fn detach(&mut self, loc: Loc) -> Option<H> {
        let b = &mut self.buckets[loc.bucket as usize];
        let slot = loc.slot as usize;
        b.entries.swap_remove(slot);
        if !b.entries.is_empty() {
            return b.entries.get(slot).map(|e| e.handle);
        }
        let (key, offset) = tile_key::<P>(P::cell_to_xyz(b.cell));
        self.free.push(loc.bucket);
        self.occupied -= 1;
        if let Some(&t) = self.map.get(&key) {
            let tile = &mut self.tiles[t as usize];
            tile.slots[offset] = NO_BUCKET;
            tile.occupied -= 1;
            if tile.occupied == 0 {
                self.map.remove(&key);
                self.free_tiles.push(t);
            }
        }
        None
    }

    fn clear(&mut self) {
        self.map.clear();
        self.free.clear();
        self.free_tiles.clear();
        for t in &mut self.tiles {
            t.slots = [NO_BUCKET; TILE];
            t.occupied = 0;
        }
        for b in &mut self.buckets {
            b.entries.clear();
        }
        self.occupied = 0;
        // Pop order hands out id 0 first again.
        self.free.extend((0..self.buckets.len() as u32).rev());
        self.free_tiles.extend((0..self.tiles.len() as u32).rev());
    }

    /// Calls `f(cell, bucket)` for every occupied cell of `range`, in coordinate order
    /// (lexicographic `(x, y, z)`), with one tile lookup per run of up to `TILE` cells.
    #[inline(always)]
    pub(crate) fn for_each_occupied<'s>(
        &'s self,
        range: &crate::query::CellRange,
        mut f: impl FnMut([i32; 3], &'s Bucket<P, H>),
    ) {
        let last = P::DIM - 1;
        let (lo, hi) = (i64::from(range.lo[last]), i64::from(range.hi[last]));
        // In 2D the lines run along y, one per x; in 3D along z, one per (x, y).
        let (y_lo, y_hi) = if last == 1 {
            (0, 0)
        } else {
            (range.lo[1], range.hi[1])
        };
        for x in range.lo[0]..=range.hi[0] {
            for y in y_lo..=y_hi {
                let mut cell = [x, y, 0];
                let mut k = lo;
                while k <= hi {
                    let tile_start = (k >> TILE_BITS) << TILE_BITS;
                    let end = hi.min(tile_start + TILE as i64 - 1);
                    cell[last] = k as i32;
                    let (key, _) = tile_key::<P>(cell);
                    if let Some(tile) = self.tile(key) {
                        for kk in k..=end {
                            if let Some(id) = tile.bucket((kk - tile_start) as usize) {
                                cell[last] = kk as i32;
                                f(cell, &self.buckets[id as usize]);
                            }
                        }
                    }
                    k = end + 1;
                }
            }
        }
    }
}

/// A uniform hash grid over entity handles, for 2D ([`glam::Vec2`]) or 3D ([`glam::Vec3`])
/// points.
///
/// * `P` is the point type; the grid's cells are `P::Cell` ([`glam::IVec2`] /
///   [`glam::IVec3`]), cell `k` covering `[k * cell_size, (k + 1) * cell_size)` per axis.
/// * `H` is the handle (in the engine, `bevy_ecs::entity::Entity`). Each handle is in the
///   grid at most once.
///
/// Updates that stay within a cell are O(1) and never touch the cell map. Queries visit
/// only the cells overlapping the query region, so their cost does not depend on the
/// number of entities elsewhere; they write into caller-provided buffers and do not
/// allocate once those buffers have grown.
///
/// # Determinism
///
/// For the same sequence of operations, every query returns the same results in the same
/// order: cells are visited in coordinate order (lexicographic `(x, y, z)`) or, for regions
/// covering more cells than the grid has buckets (occupied or recycled), in bucket order
/// (which also depends only on the operation sequence); hash-map iteration order never
/// reaches a result. Within a cell, entries are in insertion order as modified by
/// swap-removes. Callers that need an order independent of history (e.g. after a restore)
/// should sort; [`SpatialGrid::nearest_k`] is already canonical.
///
/// # Example
///
/// ```
/// use glam::Vec2;
/// use orrery_spatial::{CellChange, SpatialGrid};
///
/// let mut grid = SpatialGrid::<Vec2, u32>::new(50.0)?;
/// grid.insert(1, Vec2::new(10.0, 10.0))?;
/// grid.insert(2, Vec2::new(70.0, 10.0))?;
/// assert_eq!(grid.update(1, Vec2::new(12.0, 11.0))?, CellChange::Same);
///
/// let mut hits = Vec::new();
/// grid.query_radius(Vec2::new(0.0, 0.0), 20.0, &mut hits);
/// assert_eq!(hits, [1]);
/// # Ok::<(), orrery_spatial::SpatialError>(())
/// ```
#[derive(Clone)]
pub struct SpatialGrid<P: GridPoint, H, I = HashedHandles<H>> {
    pub(crate) cell_size: f32,
    pub(crate) inv_cell_size: f32,
    pub(crate) store: CellStore<P, H>,
    index: I,
}

impl<P: GridPoint, H, I: HandleIndex<H>> fmt::Debug for SpatialGrid<P, H, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpatialGrid")
            .field("cell_size", &self.cell_size)
            .field("len", &self.index.len())
            .field("occupied_cells", &self.store.occupied)
            .finish_non_exhaustive()
    }
}

impl<P, H, I> SpatialGrid<P, H, I>
where
    P: GridPoint,
    H: Copy + Eq + Hash + Ord + fmt::Debug,
    I: HandleIndex<H>,
{
    /// An empty grid with cells of side `cell_size`.
    ///
    /// A good cell size is about the most common query radius (in the benchmark, radius-50
    /// queries run fastest on 50 m cells). Errors with [`SpatialError::InvalidCellSize`]
    /// unless `cell_size` is finite and `> 0` (with a finite inverse).
    pub fn new(cell_size: f32) -> Result<Self, SpatialError> {
        Self::with_capacity(cell_size, 0)
    }

    /// Like [`SpatialGrid::new`], with room for `capacity` handles before the handle map
    /// reallocates.
    pub fn with_capacity(cell_size: f32, capacity: usize) -> Result<Self, SpatialError> {
        let inv_cell_size = 1.0 / cell_size;
        if !(cell_size.is_finite() && cell_size > 0.0 && inv_cell_size.is_finite()) {
            return Err(SpatialError::InvalidCellSize(cell_size));
        }
        let mut index = I::default();
        index.reserve(capacity);
        Ok(SpatialGrid {
            cell_size,
            inv_cell_size,
            store: CellStore::new(),
            index,
        })
    }

    /// The side length of a cell.
    #[inline]
    pub fn cell_size(&self) -> f32 {
        self.cell_size
    }

    /// Number of handles in the grid.
    #[inline]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// `true` if the grid holds no handles.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Number of cells holding at least one handle.
    #[inline]
    pub fn occupied_cells(&self) -> usize {
        self.store.occupied
    }

    /// Removes every handle, keeping allocations for reuse.
    pub fn clear(&mut self) {
        self.index.clear();
        self.store.clear();
    }

    /// The stored position of `h`.
    #[inline]
    pub fn get(&self, h: H) -> Option<P> {
        let loc = self.index.get(h)?;
        Some(self.store.buckets[loc.bucket as usize].entries[loc.slot as usize].point)
    }

    /// `true` if `h` is in the grid.
    #[inline]
    pub fn contains(&self, h: H) -> bool {
        self.index.get(h).is_some()
    }

    /// Every `(handle, position)`, bucket by bucket (deterministic for a given operation
    /// sequence, otherwise unspecified).
    pub fn iter(&self) -> impl Iterator<Item = (H, P)> + '_ {
        self.store
            .buckets
            .iter()
            .flat_map(|b| b.entries.iter().map(|e| (e.handle, e.point)))
    }

    /// The cell containing `p` (see [`GridPoint::cell`]). Meaningless for non-finite `p`.
    #[inline]
    pub fn cell_of(&self, p: P) -> P::Cell {
        p.cell(self.inv_cell_size)
    }

    /// Adds `h` at `p`.
    ///
    /// Errors (leaving the grid unchanged) with [`SpatialError::NonFinite`] if a component
    /// of `p` is NaN or infinite, or [`SpatialError::DuplicateHandle`] if `h` is already in
    /// the grid.
    pub fn insert(&mut self, h: H, p: P) -> Result<(), SpatialError> {
        if !p.is_finite() {
            return Err(SpatialError::non_finite(p));
        }
        if self.index.get(h).is_some() {
            return Err(SpatialError::DuplicateHandle(format!("{h:?}")));
        }
        let loc = self.store.attach(p.cell(self.inv_cell_size), h, p);
        self.index.insert_new(h, loc);
        Ok(())
    }

    /// Moves `h` to `p` and reports whether it changed cell.
    ///
    /// When the cell does not change this is one handle lookup and one store: the cell map
    /// is not touched. Errors (keeping the old position) with [`SpatialError::NonFinite`]
    /// or [`SpatialError::UnknownHandle`].
    #[inline]
    pub fn update(&mut self, h: H, p: P) -> Result<CellChange<P::Cell>, SpatialError> {
        if !p.is_finite() {
            return Err(SpatialError::non_finite(p));
        }
        let Some(loc) = self.index.get(h) else {
            return Err(SpatialError::UnknownHandle(format!("{h:?}")));
        };
        Ok(self.update_at(h, loc, p))
    }

    /// Applies many updates; `on_result(h, result)` receives what [`SpatialGrid::update`]
    /// would have returned for each, in order. Same semantics as calling `update` in a
    /// loop, but faster for large batches: handle lookups are issued a chunk at a time so
    /// their cache misses overlap.
    pub fn update_batch(
        &mut self,
        items: impl IntoIterator<Item = (H, P)>,
        mut on_result: impl FnMut(H, Result<CellChange<P::Cell>, SpatialError>),
    ) {
        const CHUNK: usize = 16;
        let mut items = items.into_iter();
        let mut chunk: [Option<(H, P, Option<Loc>)>; CHUNK] = [None; CHUNK];
        loop {
            let mut n = 0;
            for (slot, (h, p)) in chunk.iter_mut().zip(items.by_ref()) {
                *slot = Some((h, p, self.index.get(h)));
                n += 1;
            }
            if n == 0 {
                return;
            }
            for &(h, p, loc) in chunk[..n].iter().flatten() {
                // An earlier relocation in this chunk may have moved this entry: the
                // prefetched location is trusted only if it still holds `h`.
                let loc = loc.filter(|l| {
                    self.store.buckets[l.bucket as usize]
                        .entries
                        .get(l.slot as usize)
                        .is_some_and(|e| e.handle == h)
                });
                let result = match loc {
                    Some(loc) if p.is_finite() => Ok(self.update_at(h, loc, p)),
                    _ => self.update(h, p),
                };
                on_result(h, result);
            }
            if n < CHUNK {
                return;
            }
        }
    }

    /// `update` once the handle's location is known and `p` is finite.
    #[inline]
    fn update_at(&mut self, h: H, loc: Loc, p: P) -> CellChange<P::Cell> {
        let to = p.cell(self.inv_cell_size);
        let bucket = &mut self.store.buckets[loc.bucket as usize];
        if bucket.cell == to {
            bucket.entries[loc.slot as usize].point = p;
            return CellChange::Same;
        }
        let from = bucket.cell;
        self.relocate(h, loc, to, p);
        CellChange::Moved { from, to }
    }

    /// Cold path of `update`: moves the entry at `loc` to the bucket of `to`.
    #[inline(never)]
    fn relocate(&mut self, h: H, loc: Loc, to: P::Cell, p: P) {
        self.detach(loc);
        let new_loc = self.store.attach(to, h, p);
        if let Some(l) = self.index.get_mut(h) {
            *l = new_loc;
        }
    }

    /// Removes `h`, returning its last position, or `None` if it was not in the grid.
    pub fn remove(&mut self, h: H) -> Option<P> {
        let loc = self.index.remove(h)?;
        let p = self.store.buckets[loc.bucket as usize].entries[loc.slot as usize].point;
        self.detach(loc);
        Some(p)
    }

    /// Swap-removes the entry at `loc` and repoints the entry that filled the hole.
    fn detach(&mut self, loc: Loc) {
        if let Some(moved) = self.store.detach(loc)
            && let Some(l) = self.index.get_mut(moved)
        {
            l.slot = loc.slot;
        }
    }
}
