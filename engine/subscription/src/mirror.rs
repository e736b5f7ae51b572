//! The publisher's mirror of one table: every row clients may read, by slot, encoded once per
//! change in wire form, with a short history of earlier versions so that a client holding any
//! of them gets a (shared) delta record instead of the whole row, and a grid per position
//! column for spatial views.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use bevy_ecs::entity::Entity;
use glam::Vec3;
use orrery_row::wire::WireLayout;
use orrery_row::{ColumnSchema, IndexKind, TableSchema, TypeDesc, Value, Visibility};
use std::collections::HashMap;

use crate::grid::MirrorGrid;
use crate::moves::Moves;
use crate::shared::SharedKey;

/// How many earlier versions of a row are kept to encode deltas from. A client more than this
/// many changes behind gets the full row.
pub(crate) const HISTORY: usize = 7;

/// An earlier version of a row, in wire form.
pub(crate) struct Version {
    pub(crate) version: u64,
    pub(crate) wire: Vec<u8>,
    pub(crate) bounds: Vec<Range<u32>>,
}

/// Longest delta record stored inline in [`SlotMeta`].
pub(crate) const INLINE_DELTA: usize = 22;
/// `SlotMeta::delta_len` when the latest delta is not stored inline.
pub(crate) const NO_INLINE_DELTA: u8 = u8::MAX;

/// The part of a mirrored row every view update reads, kept dense (16 bytes) so that the
/// per-client loops touch one small array instead of the rows' bytes.
#[derive(Default)]
pub(crate) struct SlotMeta {
    /// Tick sequence of the newest change (0: unused slot).
    pub(crate) version: u64,
    /// The newest version that changed a column other than the quantized ones: an event (a
    /// turn, a hit, a new state) rather than motion a client can follow by interpolating.
    /// A client holding an older version is owed news, which the flush ranks first.
    pub(crate) salient: u64,
    /// Client view entries that reference this slot: counted atomically because clients are
    /// published in parallel, and a row enters and leaves views of clients on several workers.
    views: AtomicU32,
    pub(crate) live: bool,
}

impl SlotMeta {
    /// One more view entry holds this slot.
    pub(crate) fn add_view(&self) {
        self.views.fetch_add(1, Ordering::Relaxed);
    }

    /// One view entry let go of this slot.
    pub(crate) fn drop_view(&self) {
        self.views.fetch_sub(1, Ordering::Relaxed);
    }

    /// How many view entries hold this slot (exact once the workers are joined).
    pub(crate) fn views(&self) -> u32 {
        self.views.load(Ordering::Relaxed)
    }
}

/// The delta from a row's previous version to its current one (what an up-to-date client
/// needs), stored inline in a dense array when small so that sending it reads nothing else.
#[derive(Clone, Copy)]
pub(crate) struct InlineDelta {
    /// The version it starts from.
    pub(crate) from: u64,
    /// Length of `bytes` (0: nothing visible changed), or [`NO_INLINE_DELTA`].
    pub(crate) len: u8,
    pub(crate) bytes: [u8; INLINE_DELTA],
}

impl Default for InlineDelta {
    fn default() -> Self {
        InlineDelta {
            from: 0,
            len: NO_INLINE_DELTA,
            bytes: [0; INLINE_DELTA],
        }
    }
}

/// A primary key as a hash-map key without a pointer to chase: inline when short (every integer
/// key), boxed otherwise.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum PkKey {
    Inline(u8, [u8; 23]),
    Boxed(Box<[u8]>),
}

impl PkKey {
    pub(crate) fn new(pk: &[u8]) -> Self {
        if pk.len() <= 23 {
            let mut bytes = [0u8; 23];
            bytes[..pk.len()].copy_from_slice(pk);
            PkKey::Inline(pk.len() as u8, bytes)
        } else {
            PkKey::Boxed(pk.into())
        }
    }
}

/// The bytes of a mirrored row.
#[derive(Default)]
pub(crate) struct SlotData {
    pub(crate) pk: Box<[u8]>,
    pub(crate) allocated: bool,
    pub(crate) entity: Option<Entity>,
    pub(crate) exact: Vec<u8>,
    pub(crate) wire: Vec<u8>,
    pub(crate) bounds: Vec<Range<u32>>,
    /// Earlier versions, newest first.
    pub(crate) history: VecDeque<Version>,
    /// The version each column last changed in (by its wire bytes): what a client holding an
    /// older version than the history keeps is owed, as a rebase record.
    pub(crate) changed_at: Vec<u64>,
    /// Delta records from an earlier version to the current one, encoded when first needed and
    /// shared by every client holding that version (behind a lock: the first client to need one
    /// may be on any publish worker). Empty bytes: nothing visible changed.
    pub(crate) deltas: Mutex<Vec<(u64, Vec<u8>)>>,
    /// The row decoded, for query conditions; decoded once by whichever worker needs it first.
    pub(crate) values: OnceLock<Vec<Value>>,
}

pub(crate) struct MirrorTable {
    pub(crate) schema: TableSchema,
    pub(crate) layout: WireLayout,
    /// `layout.quantized_columns()`: changes to these alone are motion, not news.
    pub(crate) quantized_columns: u64,
    /// Probed only, never iterated; keyed (seeded foldhash) because primary keys may be
    /// client-chosen strings, which an unkeyed hash would let an attacker make collide.
    pub(crate) by_pk: HashMap<PkKey, u32, foldhash::fast::RandomState>,
    /// Slot by the row's entity index, checked against the full entity: changes arrive
    /// roughly in entity order, so this is a near-sequential load where the key map is a
    /// random probe. A row on a new entity (a rolled-back delete) falls back to the key map.
    pub(crate) by_entity: Vec<Option<(Entity, u32)>>,
    pub(crate) meta: Vec<SlotMeta>,
    pub(crate) inline: Vec<InlineDelta>,
    pub(crate) data: Vec<SlotData>,
    pub(crate) free: Vec<u32>,
    /// One grid per `Vec2`/`Vec3` column, positions of live rows.
    pub(crate) grids: Vec<(usize, MirrorGrid)>,
    /// Rows that changed since the last publish, by grid (same order as `grids`).
    pub(crate) moves: Vec<Moves>,
    pub(crate) changed: Vec<u32>,
    pub(crate) shared: Vec<SharedKey>,
    pub(crate) owner_column: Option<usize>,
    /// Slots whose last view may have gone; freed after the loop that released them.
    pub(crate) release: Vec<u32>,
    /// Event rows of the tick being published: live (in the grids, so spatial views find
    /// them) until the publish that delivers them ends.
    pub(crate) events: Vec<u32>,
    /// By slot: the batch of changes being applied that has the slot (see `apply`).
    pub(crate) batch_marks: Vec<u64>,
    /// The batch being applied.
    pub(crate) batch_epoch: u64,
}

/// Buffers reused by every [`MirrorTable::upsert`].
#[derive(Default)]
pub(crate) struct EncodeScratch {
    wire: Vec<u8>,
    bounds: Vec<Range<u32>>,
    starts: Vec<u32>,
    delta: Vec<u8>,
}

/// Grids whose positions [`MirrorTable::upsert`] keeps on the stack (tables have one or two
/// position columns).
const MAX_INLINE_GRIDS: usize = 4;

/// One row's storage in the dense per-slot arrays, borrowed together: what storing a version
/// writes, and nothing another row's storage shares (so rows are stored in parallel).
pub(crate) struct SlotParts<'s> {
    pub(crate) data: &'s mut SlotData,
    pub(crate) meta: &'s mut SlotMeta,
    pub(crate) inline: &'s mut InlineDelta,
}

/// A run of consecutive slots of a table's dense per-slot arrays, from slot `base`: split
/// in two, each half can be written by another worker.
pub(crate) struct SlotArrays<'s> {
    base: u32,
    data: &'s mut [SlotData],
    meta: &'s mut [SlotMeta],
    inline: &'s mut [InlineDelta],
}

impl<'s> SlotArrays<'s> {
    /// The storage of `slot`, which must be in this run.
    pub(crate) fn parts(&mut self, slot: u32) -> SlotParts<'_> {
        let i = (slot - self.base) as usize;
        SlotParts {
            data: &mut self.data[i],
            meta: &mut self.meta[i],
            inline: &mut self.inline[i],
        }
    }

    /// The slots below `slot` and those from `slot` on (`slot` within the run or at its end).
    pub(crate) fn split_at(self, slot: u32) -> (SlotArrays<'s>, SlotArrays<'s>) {
        let i = (slot - self.base) as usize;
        let (data, data_after) = self.data.split_at_mut(i);
        let (meta, meta_after) = self.meta.split_at_mut(i);
        let (inline, inline_after) = self.inline.split_at_mut(i);
        (
            SlotArrays {
                base: self.base,
                data,
                meta,
                inline,
            },
            SlotArrays {
                base: slot,
                data: data_after,
                meta: meta_after,
                inline: inline_after,
            },
        )
    }
}

/// The read-only part of a table that storing a row's version needs.
pub(crate) struct StoreContext<'t> {
    name: &'t str,
    columns: &'t [ColumnSchema],
    layout: &'t WireLayout,
    quantized_columns: u64,
    grids: &'t [(usize, MirrorGrid)],
    /// The version being stored (at least 1).
    tick: u64,
}

impl StoreContext<'_> {
    /// Encodes `exact` into `scratch` (wire form, column bounds, column starts in `exact`);
    /// false (logged) if it does not match the table's schema.
    pub(crate) fn encode(&self, exact: &[u8], scratch: &mut EncodeScratch) -> bool {
        scratch.wire.clear();
        match self.layout.encode_row_offsets(
            exact,
            &mut scratch.wire,
            &mut scratch.bounds,
            &mut scratch.starts,
        ) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(table = self.name, %error, "row does not match its table's schema");
                false
            }
        }
    }

    /// Grids of the table (the length of a row's `positions`).
    pub(crate) fn grids(&self) -> usize {
        self.grids.len()
    }

    /// Encodes `exact` and stores it as its row's newest version (see
    /// [`StoreContext::store_encoded`]); false (logged) if it does not match the schema, in
    /// which case nothing was stored.
    pub(crate) fn store(
        &self,
        exact: &[u8],
        slot: SlotParts<'_>,
        scratch: &mut EncodeScratch,
        positions: &mut [Option<Vec3>],
    ) -> bool {
        if !self.encode(exact, scratch) {
            return false;
        }
        self.store_encoded(exact, slot, scratch, positions);
        true
    }

    /// Stores `exact`, already encoded in `scratch`, as its row's newest version: the delta
    /// from the version before (inline when short), which becomes history, and writes the
    /// row's position in each grid's column to `positions` (by grid) for [`MirrorTable::place`].
    pub(crate) fn store_encoded(
        &self,
        exact: &[u8],
        slot: SlotParts<'_>,
        scratch: &mut EncodeScratch,
        positions: &mut [Option<Vec3>],
    ) {
        let (t, tick) = (self, self.tick);
        let SlotParts {
            data: d,
            meta,
            inline,
        } = slot;
        d.deltas_mut().clear();
        let was_live = meta.live;
        inline.len = NO_INLINE_DELTA;
        if was_live {
            scratch.delta.clear();
            let mask = t.layout.delta_body_mask(
                (&d.wire, &d.bounds),
                (&scratch.wire, &scratch.bounds),
                &mut scratch.delta,
            );
            let changed_columns = mask != 0;
            if mask & !t.quantized_columns != 0 {
                meta.salient = tick;
            }
            // A set mask means the table takes deltas, so `changed_at` has a slot per column.
            for (i, at) in d.changed_at.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *at = tick;
                }
            }
            if scratch.delta.len() <= INLINE_DELTA && (changed_columns || d.wire == scratch.wire) {
                inline.bytes[..scratch.delta.len()].copy_from_slice(&scratch.delta);
                inline.len = scratch.delta.len() as u8;
                inline.from = meta.version;
            }
            // The current version becomes history; the oldest one's buffers are reused.
            let (old_wire, old_bounds) = if d.history.len() >= HISTORY {
                d.history
                    .pop_back()
                    .map(|v| (v.wire, v.bounds))
                    .unwrap_or_default()
            } else {
                Default::default()
            };
            let previous = Version {
                version: meta.version,
                wire: std::mem::replace(&mut d.wire, old_wire),
                bounds: std::mem::replace(&mut d.bounds, old_bounds),
            };
            d.history.push_front(previous);
        } else {
            d.history.clear();
            d.changed_at.clear();
            // A table too wide for a delta mask gets no rebase records either: full rows only.
            if t.layout.supports_delta() {
                d.changed_at.resize(t.layout.columns().len(), tick);
            }
        }
        d.exact.clear();
        d.exact.extend_from_slice(exact);
        std::mem::swap(&mut d.wire, &mut scratch.wire);
        std::mem::swap(&mut d.bounds, &mut scratch.bounds);
        d.values = OnceLock::new();
        meta.version = tick;
        meta.live = true;
        for ((column, _), position) in t.grids.iter().zip(positions) {
            *position = read_position(&t.columns[*column].ty, exact, scratch.starts[*column]);
        }
    }
}

fn read_position(ty: &TypeDesc, exact: &[u8], start: u32) -> Option<Vec3> {
    let dims = match ty {
        TypeDesc::Vec2 => 2,
        TypeDesc::Vec3 => 3,
        _ => return None,
    };
    let bytes = exact.get(start as usize..start as usize + 4 * dims)?;
    let f = |i: usize| {
        f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    let p = Vec3::new(f(0), f(1), if dims == 3 { f(2) } else { 0.0 });
    p.is_finite().then_some(p)
}

impl MirrorTable {
    pub(crate) fn new(schema: &TableSchema) -> Self {
        let grids: Vec<(usize, MirrorGrid)> = schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.ty, TypeDesc::Vec2 | TypeDesc::Vec3))
            .map(|(i, _)| {
                let cell = schema
                    .indexes
                    .iter()
                    .find_map(|ix| match ix.kind {
                        IndexKind::Spatial { cell } if ix.column == schema.columns[i].name => {
                            Some(cell)
                        }
                        _ => None,
                    })
                    .unwrap_or(32.0);
                let planar = schema.columns[i].ty == TypeDesc::Vec2;
                let grid = MirrorGrid::new(planar, cell)
                    .or_else(|_| MirrorGrid::new(planar, 32.0))
                    .unwrap_or_else(|e| panic!("a 32.0 grid is valid: {e}"));
                (i, grid)
            })
            .collect();
        let moves = grids
            .iter()
            .map(|(_, grid)| Moves::new(grid.cell_size(), grid.planar()))
            .collect();
        let owner_column = match &schema.visibility {
            Visibility::Owner { column } => schema.column(column).map(|(i, _)| i),
            _ => None,
        };
        let layout = WireLayout::new(schema);
        MirrorTable {
            quantized_columns: layout.quantized_columns(),
            layout,
            schema: schema.clone(),
            by_pk: HashMap::default(),
            by_entity: Vec::new(),
            meta: Vec::new(),
            inline: Vec::new(),
            data: Vec::new(),
            free: Vec::new(),
            grids,
            moves,
            changed: Vec::new(),
            shared: Vec::new(),
            owner_column,
            release: Vec::new(),
            events: Vec::new(),
            batch_marks: Vec::new(),
            batch_epoch: 0,
        }
    }

    pub(crate) fn values<'d>(data: &'d [SlotData], schema: &TableSchema, slot: u32) -> &'d [Value] {
        let d = &data[slot as usize];
        d.values
            .get_or_init(|| orrery_row::decode_row(schema, &d.exact).unwrap_or_default())
    }

    pub(crate) fn free_if_unused(&mut self, slot: u32) {
        let meta = &mut self.meta[slot as usize];
        let data = &mut self.data[slot as usize];
        if !meta.live && meta.views() == 0 && data.allocated {
            let pk = std::mem::take(&mut data.pk);
            self.by_pk.remove(&PkKey::new(&pk));
            if let Some(entity) = data.entity
                && let Some(mapped) = self.by_entity.get_mut(entity.index_u32() as usize)
                && *mapped == Some((entity, slot))
            {
                *mapped = None;
            }
            *data = SlotData::default();
            *meta = SlotMeta::default();
            self.inline[slot as usize] = InlineDelta::default();
            self.free.push(slot);
        }
    }

    /// Most records [`Moves`] keeps between publishes: past a quarter of the table, a
    /// publish refreshes its views in full anyway (see `INCREMENTAL_MAX_SHARE`), so recording
    /// stops there.
    fn moves_cap(&self) -> usize {
        self.data.len() / 4 + 64
    }

    /// Takes `slot` out of every grid (deleted, or an event row that ended), recording it
    /// for incremental refreshes.
    pub(crate) fn remove_from_grids(&mut self, slot: u32) {
        let cap = self.moves_cap();
        for ((_, grid), moves) in self.grids.iter_mut().zip(&mut self.moves) {
            let old = grid.remove(slot);
            moves.record(slot, old, None, cap);
        }
    }

    pub(crate) fn release_pending(&mut self) {
        let mut release = std::mem::take(&mut self.release);
        for slot in release.drain(..) {
            self.free_if_unused(slot);
        }
        self.release = release;
    }

    /// Stores `exact` as the row's newest version (stamped `tick`): encodes its wire form and
    /// the delta from the version before, keeps that one as history, and moves the row in the
    /// grids. `changed` queues it for re-evaluation against the shared queries.
    pub(crate) fn upsert(
        &mut self,
        pk: &[u8],
        exact: &[u8],
        changed: bool,
        entity: Option<Entity>,
        tick: u64,
        scratch: &mut EncodeScratch,
    ) {
        if !self.split(tick).0.encode(exact, scratch) {
            return;
        }
        let slot = self.resolve(pk, entity);
        let mut inline_positions = [None; MAX_INLINE_GRIDS];
        let mut spilled = Vec::new();
        let positions = if self.grids.len() <= MAX_INLINE_GRIDS {
            &mut inline_positions[..self.grids.len()]
        } else {
            spilled.resize(self.grids.len(), None);
            &mut spilled[..]
        };
        let (store, mut slots) = self.split(tick);
        store.store_encoded(exact, slots.parts(slot), scratch, positions);
        self.place(slot, positions);
        if changed {
            self.changed.push(slot);
        }
    }

    /// The table split into what storing rows' versions reads (shared by every worker) and the
    /// per-slot arrays it writes.
    pub(crate) fn split(&mut self, tick: u64) -> (StoreContext<'_>, SlotArrays<'_>) {
        (
            StoreContext {
                name: &self.schema.name,
                columns: &self.schema.columns,
                layout: &self.layout,
                quantized_columns: self.quantized_columns,
                grids: &self.grids,
                tick: tick.max(1),
            },
            SlotArrays {
                base: 0,
                data: &mut self.data,
                meta: &mut self.meta,
                inline: &mut self.inline,
            },
        )
    }

    /// The slot of the row with primary key `pk` on `entity`, allocated if the row is new (not
    /// live until a version is stored).
    pub(crate) fn resolve(&mut self, pk: &[u8], entity: Option<Entity>) -> u32 {
        let by_entity = self.by_entity(entity);
        let t = self;
        let slot = match by_entity.or_else(|| t.by_pk.get(&PkKey::new(pk)).copied()) {
            Some(slot) => slot,
            None => {
                let slot = t.free.pop().unwrap_or(t.data.len() as u32);
                if slot as usize == t.data.len() {
                    t.data.push(SlotData::default());
                    t.meta.push(SlotMeta::default());
                    t.inline.push(InlineDelta::default());
                }
                let d = &mut t.data[slot as usize];
                d.pk = pk.into();
                d.allocated = true;
                t.by_pk.insert(PkKey::new(pk), slot);
                slot
            }
        };
        if let Some(e) = entity
            && by_entity.is_none()
        {
            let index = e.index_u32() as usize;
            if index >= t.by_entity.len() {
                t.by_entity.resize(index + 1, None);
            }
            t.by_entity[index] = Some((e, slot));
            t.data[slot as usize].entity = Some(e);
        }
        slot
    }

    /// The slot of the live or owed row with primary key `pk` on `entity`, if any.
    pub(crate) fn find(&self, pk: &[u8], entity: Option<Entity>) -> Option<u32> {
        self.by_entity(entity)
            .or_else(|| self.by_pk.get(&PkKey::new(pk)).copied())
    }

    /// The slot the entity map gives for a row on `entity`, if any.
    pub(crate) fn by_entity(&self, entity: Option<Entity>) -> Option<u32> {
        entity.and_then(|e| match self.by_entity.get(e.index_u32() as usize) {
            Some(Some((mapped, slot))) if *mapped == e => Some(*slot),
            _ => None,
        })
    }

    /// Moves `slot` in the grids to `positions` (by grid; `None`: no valid position, taken
    /// out), recording the cells it left and entered for incremental refreshes.
    pub(crate) fn place(&mut self, slot: u32, positions: &[Option<Vec3>]) {
        let cap = self.moves_cap();
        for (((_, grid), moves), position) in
            self.grids.iter_mut().zip(&mut self.moves).zip(positions)
        {
            let Some(p) = *position else {
                let old = grid.remove(slot);
                moves.record(slot, old, None, cap);
                continue;
            };
            match grid.set(slot, p) {
                Ok((old, new)) => moves.record(slot, old, Some(new), cap),
                Err(error) => {
                    tracing::error!(%error, "publisher grid out of step");
                    moves.invalidate();
                }
            }
        }
    }

    /// Marks the row in `slot` deleted at `tick` (no-op if it is not live); its slot lives on
    /// while a client still holds it.
    pub(crate) fn delete_slot(&mut self, slot: u32, tick: u64) {
        let t = self;
        let meta = &mut t.meta[slot as usize];
        if !meta.live {
            return;
        }
        meta.live = false;
        meta.version = tick;
        let d = &mut t.data[slot as usize];
        d.deltas_mut().clear();
        d.history.clear();
        t.remove_from_grids(slot);
        t.changed.push(slot);
    }
}

impl SlotData {
    fn deltas_mut(&mut self) -> &mut Vec<(u64, Vec<u8>)> {
        self.deltas
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The columns that changed after `version` (bit per column), or `None` when that is not
    /// known (a table too wide for a mask keeps no `changed_at`).
    pub(crate) fn changed_since(&self, version: u64) -> Option<u64> {
        if self.changed_at.is_empty() {
            return None;
        }
        Some(
            self.changed_at
                .iter()
                .enumerate()
                .filter(|(_, at)| **at > version)
                .fold(0, |mask, (i, _)| mask | 1 << i),
        )
    }

    /// Appends the delta record's header and body (all but the client's handle) taking a
    /// client holding `version` to the row's current version,
    /// if that version is still in the row's history. Returns whether a record was appended
    /// (nothing is appended when nothing visible changed), or `None` when only the full row
    /// describes the change.
    pub(crate) fn append_delta_from(
        &self,
        layout: &WireLayout,
        version: u64,
        payload: &mut Vec<u8>,
    ) -> Option<bool> {
        if version == 0 {
            return None;
        }
        let mut deltas = self.deltas.lock().unwrap_or_else(PoisonError::into_inner);
        let index = match deltas.iter().position(|(from, _)| *from == version) {
            Some(index) => index,
            None => {
                let old = self.history.iter().find(|v| v.version == version)?;
                let mut bytes = Vec::new();
                layout.delta_body(
                    (&old.wire, &old.bounds),
                    (&self.wire, &self.bounds),
                    &mut bytes,
                );
                if bytes.is_empty() && old.wire != self.wire {
                    // Too wide a table for a mask: only a full row describes the change.
                    return None;
                }
                deltas.push((version, bytes));
                deltas.len() - 1
            }
        };
        let bytes = &deltas[index].1;
        payload.extend_from_slice(bytes);
        Some(!bytes.is_empty())
    }
}
