//! Spatial indexes: a `#[spatial(cell = ..)]` column of type `Vec2` or `Vec3` is kept in a
//! [`SpatialIndex`], an `orrery-spatial` grid over row entities.
//!
//! The index is maintained by the same paths as every other index (reducer writes, rollbacks,
//! capture of system writes), so it always holds exactly the table's rows at their current
//! positions. It also records which rows changed grid cell during the tick, for interest
//! management.

use bevy_ecs::entity::Entity;
use orrery_spatial::{CellChange, GridPoint, HandleIndex, Loc, SpatialError, SpatialGrid};

use super::TableError;

/// A row that moved from one grid cell to another during the tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellMove<C> {
    /// The row's entity.
    pub entity: Entity,
    /// The cell it left.
    pub from: C,
    /// The cell it entered.
    pub to: C,
}

/// The grid's `entity -> location` map: an array indexed by entity index (entities are dense
/// small integers), checked against the full entity so a reused index never aliases. Saves a
/// hash probe per update compared with a hash map.
#[derive(Clone, Default)]
pub struct EntityHandles {
    slots: Vec<Option<(Entity, Loc)>>,
    len: usize,
}

impl HandleIndex<Entity> for EntityHandles {
    #[inline]
    fn get(&self, h: Entity) -> Option<Loc> {
        match self.slots.get(h.index_u32() as usize) {
            Some(Some((e, loc))) if *e == h => Some(*loc),
            _ => None,
        }
    }
    #[inline]
    fn get_mut(&mut self, h: Entity) -> Option<&mut Loc> {
        match self.slots.get_mut(h.index_u32() as usize) {
            Some(Some((e, loc))) if *e == h => Some(loc),
            _ => None,
        }
    }
    fn insert_new(&mut self, h: Entity, loc: Loc) -> bool {
        let i = h.index_u32() as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        match self.slots[i] {
            Some((e, _)) if e == h => false,
            // The store unindexes rows before despawning them, so a despawned entity's entry
            // here is an engine bug; take the index over and say so.
            Some((stale, _)) => {
                tracing::error!(?stale, new = ?h, "spatial index held a despawned entity");
                self.slots[i] = Some((h, loc));
                true
            }
            None => {
                self.slots[i] = Some((h, loc));
                self.len += 1;
                true
            }
        }
    }
    fn remove(&mut self, h: Entity) -> Option<Loc> {
        let slot = self.slots.get_mut(h.index_u32() as usize)?;
        match *slot {
            Some((e, loc)) if e == h => {
                *slot = None;
                self.len -= 1;
                Some(loc)
            }
            _ => None,
        }
    }
    fn len(&self) -> usize {
        self.len
    }
    fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
    fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
    }
}

/// The spatial index of one column. Systems read it through `Res<TableStore<T>>`
/// (`store.indexes().position()`); reducers use the column's typed accessor
/// (`ctx.db.npc().position().within(center, radius)`).
pub struct SpatialIndex<P: GridPoint> {
    grid: SpatialGrid<P, Entity, EntityHandles>,
    cell_moves: Vec<CellMove<P::Cell>>,
    /// While capture re-indexes system writes, moves wait here and are applied in one batch:
    /// a tight loop of grid updates overlaps their cache misses, one update per row of a long
    /// capture loop does not.
    deferred: Option<Vec<(Entity, P)>>,
}

impl<P: GridPoint> SpatialIndex<P> {
    /// An empty index with cells of edge `cell_size`.
    ///
    /// # Panics
    /// If `cell_size` is not finite and positive. `#[spatial(cell = ..)]` rejects such sizes at
    /// compile time, so this only fires for hand-written indexes, when the engine is built.
    pub fn new(cell_size: f32) -> Self {
        let grid = SpatialGrid::new(cell_size)
            .unwrap_or_else(|error| panic!("invalid spatial cell size: {error}"));
        SpatialIndex {
            grid,
            cell_moves: Vec::new(),
            deferred: None,
        }
    }

    /// The underlying grid, for queries this type does not wrap.
    pub fn grid(&self) -> &SpatialGrid<P, Entity, EntityHandles> {
        &self.grid
    }

    /// Number of indexed rows.
    pub fn len(&self) -> usize {
        self.grid.len()
    }

    /// Whether no row is indexed.
    pub fn is_empty(&self) -> bool {
        self.grid.is_empty()
    }

    /// The grid's cell edge length.
    pub fn cell_size(&self) -> f32 {
        self.grid.cell_size()
    }

    /// The indexed position of a row.
    pub fn get(&self, entity: Entity) -> Option<P> {
        self.grid.get(entity)
    }

    /// The cell containing `p`.
    pub fn cell_of(&self, p: P) -> P::Cell {
        self.grid.cell_of(p)
    }

    /// Appends the rows within `radius` of `center` to `out` (clear it first to reuse it).
    pub fn query_radius(&self, center: P, radius: f32, out: &mut Vec<Entity>) {
        self.grid.query_radius(center, radius, out);
    }

    /// Calls `f` with each row within `radius` of `center` and its position.
    pub fn for_each_in_radius(&self, center: P, radius: f32, f: impl FnMut(Entity, P)) {
        self.grid.for_each_in_radius(center, radius, f);
    }

    /// Appends the rows inside the box `[min, max]` (inclusive) to `out`.
    pub fn query_aabb(&self, min: P, max: P, out: &mut Vec<Entity>) {
        self.grid.query_aabb(min, max, out);
    }

    /// Appends the `k` rows nearest to `center` with their distances, nearest first (ties in
    /// entity order).
    pub fn nearest_k(&self, center: P, k: usize, out: &mut Vec<(Entity, f32)>) {
        self.grid.nearest_k(center, k, out);
    }

    /// Rows that changed cell since the cell moves were last taken, in the order they moved.
    pub fn cell_moves(&self) -> &[CellMove<P::Cell>] {
        &self.cell_moves
    }

    /// Takes the recorded cell moves.
    pub fn take_cell_moves(&mut self) -> Vec<CellMove<P::Cell>> {
        std::mem::take(&mut self.cell_moves)
    }

    /// Moves the recorded cell moves into `out`, tagged with `column`, cells as `[x, y, z]`.
    pub fn drain_cell_moves_into(
        &mut self,
        column: &'static str,
        out: &mut Vec<(&'static str, CellMove<[i32; 3]>)>,
    ) {
        out.extend(self.cell_moves.drain(..).map(|m| {
            let moved = CellMove {
                entity: m.entity,
                from: P::cell_to_xyz(m.from),
                to: P::cell_to_xyz(m.to),
            };
            (column, moved)
        }));
    }

    /// Clears the recorded cell moves, keeping the buffer.
    pub fn clear_cell_moves(&mut self) {
        self.cell_moves.clear();
    }

    /// Fails unless `p` can be indexed.
    pub fn check(p: P, table: &'static str, column: &'static str) -> Result<(), TableError> {
        if p.is_finite() {
            Ok(())
        } else {
            Err(TableError::InvalidValue {
                table,
                column,
                detail: format!("spatial coordinates must be finite, got {p:?}"),
            })
        }
    }

    /// Indexes a row (after [`SpatialIndex::check`]).
    pub fn insert(&mut self, entity: Entity, p: P) {
        if let Err(error) = self.grid.insert(entity, p) {
            report_invariant(&error);
        }
    }

    /// Unindexes a row.
    pub fn remove(&mut self, entity: Entity) {
        self.grid.remove(entity);
    }

    /// Moves a row (after [`SpatialIndex::check`]); O(1) when it stays in its cell.
    pub fn update(&mut self, entity: Entity, p: P) {
        if let Some(pending) = self.deferred.as_mut() {
            pending.push((entity, p));
            return;
        }
        let result = self.grid.update(entity, p);
        self.record(entity, result);
    }

    /// Starts or ends deferring moves; ending applies the deferred moves in one batch. Inserts
    /// and removals are never deferred (capture does them before and after its moves).
    pub fn set_deferred(&mut self, defer: bool) {
        match (defer, self.deferred.take()) {
            (true, pending) => self.deferred = Some(pending.unwrap_or_default()),
            (false, Some(mut pending)) => {
                let mut results = Vec::with_capacity(pending.len());
                self.grid.update_batch(pending.drain(..), |entity, result| {
                    results.push((entity, result))
                });
                for (entity, result) in results {
                    self.record(entity, result);
                }
            }
            (false, None) => {}
        }
    }

    fn record(&mut self, entity: Entity, result: Result<CellChange<P::Cell>, SpatialError>) {
        match result {
            Ok(CellChange::Same) => {}
            Ok(CellChange::Moved { from, to }) => {
                self.cell_moves.push(CellMove { entity, from, to })
            }
            Err(error) => report_invariant(&error),
        }
    }
}

/// The store checks values and membership before touching the grid, so a grid error means an
/// engine bug; it is logged rather than allowed to take the server down.
fn report_invariant(error: &SpatialError) {
    tracing::error!(%error, "spatial index out of step with its table");
}
