//! [`TableStore`]: one table's primary and secondary indexes, auto-increment sequences, the undo
//! log of the running transaction, the tick's net changes and (for schedule tables) the queue of
//! due rows.
//!
//! Reducer writes go through the store, which records an undo entry per write; commit folds the
//! undo log into the tick's net changes, rollback replays it backwards. Systems mutate row
//! components directly; [`TableStore::capture`] finds those mutations through change detection
//! and the `RowKeys` shadow and re-indexes them.

mod restore;

use std::any::Any;
use std::collections::BTreeSet;
use std::hash::BuildHasher;

use bevy_ecs::archetype::ArchetypeGeneration;
use bevy_ecs::change_detection::{DetectChanges, DetectChangesMut, Ref, Tick as EcsTick};
use bevy_ecs::component::ComponentId;
use bevy_ecs::entity::Entity;
use bevy_ecs::query::{Changed, QueryState, With, Without};
use bevy_ecs::resource::Resource;
use bevy_ecs::world::World;

use super::guard::{GuardTx, RowMut};
use super::key_map::KeyMap;
use super::pk_index::PkIndex;
use super::{CellMove, RemovedRows, RowKeys, Table, TableError, TableId, TableIndexes};
use crate::changes::{ChangeKind, ChangeLog, LogMark, LogSlot, TableChanges};
use crate::schema::TableSchema;
use crate::time::{ScheduleAt, Timestamp};

/// A write that the running transaction made, with what is needed to undo it. An update's
/// entity is where the row lived right after the write (commit reads a schedule row there);
/// rollback looks rows up by key instead, because an undone delete re-creates a row on a new
/// entity.
pub(crate) enum Undo<T: Table> {
    Insert { pk: T::Pk },
    Update { entity: Entity, old: T },
    Delete { old: T },
}

/// A primary-index entry: the row's entity and where this tick's change log holds the row's
/// entry, so that writing the row again in the tick merges into it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowSlot {
    pub(crate) entity: Entity,
    pub(crate) logged: LogSlot,
}

impl RowSlot {
    /// A row not written this tick.
    pub(crate) fn new(entity: Entity) -> Self {
        RowSlot {
            entity,
            logged: LogSlot::NONE,
        }
    }
}

/// Due times of a schedule table's rows, ordered by (due, primary key).
struct ScheduleQueue<P: super::IndexKey> {
    due: BTreeSet<(Timestamp, P)>,
    by_pk: KeyMap<P, Timestamp>,
}

impl<P: super::IndexKey> ScheduleQueue<P> {
    fn new() -> Self {
        ScheduleQueue {
            due: BTreeSet::new(),
            by_pk: KeyMap::default(),
        }
    }

    fn set(&mut self, pk: P, at: Timestamp) {
        if let Some(old) = self.by_pk.insert(pk.clone(), at) {
            self.due.remove(&(old, pk.clone()));
        }
        self.due.insert((at, pk));
    }

    fn remove(&mut self, pk: &P) {
        if let Some(old) = self.by_pk.remove(pk) {
            self.due.remove(&(old, pk.clone()));
        }
    }
}

/// A due schedule-table row found by the scheduled phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DueFire {
    pub(crate) due: Timestamp,
    pub(crate) table: usize,
    /// Position in the store's stash of due primary keys, which are in key order.
    pub(crate) ordinal: u32,
}

/// What capture found in one table after the systems phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Rows systems mutated in place.
    pub updated: u64,
    /// Rows systems spawned.
    pub inserted: u64,
    /// Rows systems despawned.
    pub deleted: u64,
    /// Mutations that broke a constraint and were reverted (key columns restored, or the spawned
    /// row's component removed).
    pub rejected: u64,
}

impl std::ops::AddAssign for CaptureStats {
    fn add_assign(&mut self, rhs: Self) {
        self.updated += rhs.updated;
        self.inserted += rhs.inserted;
        self.deleted += rhs.deleted;
        self.rejected += rhs.rejected;
    }
}

type CaptureQuery<T> =
    QueryState<(Entity, &'static mut T, Option<&'static mut RowKeys<T>>), Changed<T>>;
type NewRowsQuery<T> = QueryState<Entity, (With<T>, Without<RowKeys<T>>)>;

/// The hasher of a table's primary index (seeded per table), also used for the change log.
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// The parts of a store that recording a system's in-place change needs, borrowed separately
/// from the capture query that is iterating the rows.
struct Changes<'a, T: Table> {
    hasher: &'a KeyHasher,
    indexes: &'a mut T::Indexes,
    log: &'a mut ChangeLog,
    stats: &'a mut CaptureStats,
    rescheduled: Option<&'a mut Vec<T::Pk>>,
}

impl<T: Table> Changes<'_, T> {
    /// Re-indexes a row a system changed in place (reverting its key columns if the change
    /// breaks a constraint) and logs it as an update.
    fn mutated(self, entity: Entity, row: &mut T, shadow: &mut T::Keys) {
        self.stats.updated += 1;
        if !row.same_keys(shadow) {
            let new_keys = row.keys();
            let check = if T::keys_pk(&new_keys) != T::keys_pk(shadow) {
                Err(TableError::InvalidValue {
                    table: T::NAME,
                    column: T::PRIMARY_KEY,
                    detail: format!(
                        "systems may not change a primary key ({:?} -> {:?})",
                        T::keys_pk(shadow),
                        T::keys_pk(&new_keys)
                    ),
                })
            } else {
                self.indexes.check_update(shadow, &new_keys, entity)
            };
            match check {
                Ok(()) => {
                    self.indexes.update(shadow, &new_keys, entity);
                    if let Some(rescheduled) = self.rescheduled {
                        rescheduled.push(T::keys_pk(&new_keys).clone());
                    }
                    *shadow = new_keys;
                }
                Err(error) => {
                    tracing::warn!(table = T::NAME, %error, "system mutation reverted");
                    row.restore_keys(shadow);
                    self.stats.rejected += 1;
                }
            }
        }
        let hash = self.hasher.hash_one(row.pk());
        self.log
            .push_row(ChangeKind::Update, hash, &*row, Some(entity));
    }
}

/// One table's indexes and transactional state. During the systems phase it is a bevy resource,
/// so systems can look rows up with `Res<TableStore<T>>`.
#[derive(Resource)]
pub struct TableStore<T: Table> {
    id: TableId,
    schema: TableSchema,
    pub(crate) pk: PkIndex<T::Pk>,
    pub(crate) indexes: T::Indexes,
    sequences: Vec<u64>,
    saved_sequences: Vec<u64>,
    undo: Vec<Undo<T>>,
    in_tx: bool,
    /// Where the running transaction's change-log entries begin.
    tx_mark: LogMark,
    /// A constraint violation found when a [`RowMut`](super::RowMut) guard was dropped: it
    /// fails the running transaction.
    pub(crate) deferred_error: Option<TableError>,
    /// New keys of rows whose key columns a guard changed, to write into their `RowKeys`
    /// shadows before anything reads one (see [`RowMut`]).
    stale_shadows: Vec<(Entity, T::Keys)>,
    pub(crate) log: ChangeLog,
    schedule: Option<ScheduleQueue<T::Pk>>,
    due_stash: Vec<(Timestamp, T::Pk)>,
    pub(crate) rows_query: QueryState<&'static T>,
    /// The look-ahead reads rows with their change ticks through this cached query, kept up to
    /// date with `rows_query` (a world lookup by type costs a component-id hash probe per row).
    touch_query: QueryState<Ref<'static, T>>,
    /// The archetype generation `rows_query` was last brought up to date with.
    rows_generation: ArchetypeGeneration,
    capture_query: CaptureQuery<T>,
    new_rows_query: NewRowsQuery<T>,
}

impl<T: Table> TableStore<T> {
    pub(crate) fn new(world: &mut World, id: TableId, schema: TableSchema) -> Self {
        world.insert_resource(RemovedRows::<T>(Vec::new()));
        let schedule = schema.scheduled.is_some().then(ScheduleQueue::new);
        TableStore {
            id,
            schema,
            pk: PkIndex::default(),
            indexes: T::Indexes::default(),
            sequences: vec![1; T::AUTO_INC_COLUMNS],
            saved_sequences: Vec::with_capacity(T::AUTO_INC_COLUMNS),
            undo: Vec::new(),
            in_tx: false,
            tx_mark: LogMark::default(),
            deferred_error: None,
            stale_shadows: Vec::new(),
            log: ChangeLog::default(),
            schedule,
            due_stash: Vec::new(),
            rows_query: QueryState::new(world),
            touch_query: QueryState::new(world),
            rows_generation: ArchetypeGeneration::initial(),
            capture_query: QueryState::new(world),
            new_rows_query: QueryState::new(world),
        }
    }

    /// The table's id.
    pub fn id(&self) -> TableId {
        self.id
    }

    /// The table's schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.pk.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.pk.is_empty()
    }

    /// The entity holding the row with primary key `pk`.
    pub fn entity(&self, pk: &T::Pk) -> Option<Entity> {
        self.pk.get(pk).map(|slot| slot.entity)
    }

    /// The generated secondary indexes, for lookups from systems.
    pub fn indexes(&self) -> &T::Indexes {
        &self.indexes
    }

    /// Starts recording undo entries; returns `true` if no transaction was open on this table.
    #[inline(always)]
    pub(crate) fn begin(&mut self) -> bool {
        if self.in_tx {
            return false;
        }
        self.begin_slow();
        true
    }

    /// The first open in a transaction: marks the logs and saves the sequences.
    #[inline(never)]
    fn begin_slow(&mut self) {
        self.in_tx = true;
        self.tx_mark = self.log.begin_tx();
        self.deferred_error = None;
        if T::AUTO_INC_COLUMNS > 0 {
            self.saved_sequences.clear();
            self.saved_sequences.extend_from_slice(&self.sequences);
        }
    }

    /// Brings the cached row query up to date with the world's archetypes, if any appeared
    /// (a generation compare when none did, which is nearly always).
    #[inline]
    pub(crate) fn refresh_rows_query(&mut self, world: &World) {
        let generation = world.archetypes().generation();
        if generation != self.rows_generation {
            self.rows_query.update_archetypes(world);
            self.touch_query.update_archetypes(world);
            self.rows_generation = generation;
        }
    }

    /// The row held by `entity`.
    #[inline]
    pub(crate) fn row<'w>(&self, world: &'w World, entity: Entity) -> Option<&'w T> {
        // The cached query skips `World::get`'s component-id lookup; it misses rows in an
        // archetype that appeared since it was refreshed, which the world lookup then finds.
        match self.rows_query.get_manual(world, entity) {
            Ok(row) => Some(row),
            Err(_) => world.get::<T>(entity),
        }
    }

    /// Writes the keys that guards changed into the rows' `RowKeys` shadows.
    #[inline]
    fn sync_shadows(&mut self, world: &mut World) {
        if !self.stale_shadows.is_empty() {
            self.sync_shadows_slow(world);
        }
    }

    #[cold]
    fn sync_shadows_slow(&mut self, world: &mut World) {
        for (entity, keys) in self.stale_shadows.drain(..) {
            if let Some(mut shadow) = world.get_mut::<RowKeys<T>>(entity) {
                shadow.0 = keys;
            }
        }
    }

    pub(crate) fn insert(&mut self, world: &mut World, mut row: T) -> Result<T, TableError> {
        debug_assert!(self.in_tx);
        self.sync_shadows(world);
        row.apply_auto_inc(&mut self.sequences)?;
        let keys = row.keys();
        let pk = T::keys_pk(&keys);
        if self.pk.contains_key(pk) {
            return Err(TableError::unique::<T>(T::PRIMARY_KEY, pk));
        }
        self.indexes.check_insert(&keys)?;
        let pk = pk.clone();
        let entity = world.spawn((row.clone(), RowKeys::<T>(keys.clone()))).id();
        self.indexes.insert(&keys, entity);
        let hash = self.hash(&pk);
        let logged = self
            .log
            .push_row(ChangeKind::Insert, hash, &row, Some(entity));
        self.pk.insert(pk.clone(), RowSlot { entity, logged });
        self.undo.push(Undo::Insert { pk });
        Ok(row)
    }

    /// The primary index's seeded hasher.
    #[inline]
    pub(crate) fn pk_hasher(&self) -> &KeyHasher {
        self.pk.hasher()
    }

    /// The primary key's hash under this table's seeded hasher.
    #[inline]
    pub(crate) fn hash(&self, pk: &T::Pk) -> u64 {
        self.pk.hash(pk)
    }

    /// Replaces the row whose primary key equals `row`'s with `row`; if `entity` is given, the
    /// row must be the one it holds.
    #[inline]
    pub(crate) fn update_row(
        &mut self,
        world: &mut World,
        row: T,
        entity: Option<Entity>,
    ) -> Result<T, TableError> {
        debug_assert!(self.in_tx);
        self.sync_shadows(world);
        let hash = self.pk.hash(row.pk());
        // The index entry stays borrowed for the whole write: it records where the row's
        // change-log entry is, so a later write in the tick merges into it.
        let Some(slot) = self.pk.get_mut_hashed(hash, row.pk()) else {
            return Err(not_found::<T>(T::PRIMARY_KEY, row.pk()));
        };
        if entity.is_some_and(|entity| entity != slot.entity) {
            return Err(not_found::<T>(T::PRIMARY_KEY, row.pk()));
        }
        let entity = slot.entity;
        let Some(mut stored) = world.get_mut::<T>(entity) else {
            return Err(not_found::<T>(T::PRIMARY_KEY, row.pk()));
        };
        if !row.same_keys_as(&stored) {
            let old_keys = stored.keys();
            let new_keys = row.keys();
            self.indexes.check_update(&old_keys, &new_keys, entity)?;
            self.indexes.update(&old_keys, &new_keys, entity);
            if let Some(mut shadow) = world.get_mut::<RowKeys<T>>(entity) {
                shadow.0 = new_keys;
            }
            let Some(again) = world.get_mut::<T>(entity) else {
                return Err(not_found::<T>(T::PRIMARY_KEY, row.pk()));
            };
            stored = again;
        }
        self.log.write_row(hash, &row, entity, &mut slot.logged);
        let old = std::mem::replace(&mut *stored, row.clone());
        self.undo.push(Undo::Update { entity, old });
        Ok(row)
    }

    /// Opens the row with primary key `pk`, or if `pk` is `None` the row held by `entity`, for
    /// writing through a guard.
    pub(crate) fn row_mut<'a>(
        &'a mut self,
        world: &'a mut World,
        pk: Option<&T::Pk>,
        entity: Option<Entity>,
    ) -> Option<RowMut<'a, T>> {
        debug_assert!(self.in_tx);
        self.sync_shadows(world);
        // The guard keeps the row's primary-index entry (found by key, or by the row's key
        // when opened through another index), which records where the row's change-log entry
        // is when the write is logged.
        let (row, hash, slot) = match (pk, entity) {
            (Some(pk), _) => {
                let hash = self.pk.hash(pk);
                let slot = self.pk.get_mut_hashed(hash, pk)?;
                (world.get_mut::<T>(slot.entity)?, hash, slot)
            }
            (None, Some(entity)) => {
                let row = world.get_mut::<T>(entity)?;
                let hash = self.pk.hash(row.pk());
                let slot = self.pk.get_mut_hashed(hash, row.pk())?;
                (row, hash, slot)
            }
            (None, None) => return None,
        };
        let entity = slot.entity;
        let tx = GuardTx {
            slot,
            hash,
            indexes: &mut self.indexes,
            undo: &mut self.undo,
            log: &mut self.log,
            deferred_error: &mut self.deferred_error,
            stale_shadows: &mut self.stale_shadows,
        };
        Some(RowMut::new(row, entity, tx))
    }

    /// Deletes the row held by `entity`; returns whether there was one.
    pub(crate) fn delete_entity(&mut self, world: &mut World, entity: Entity) -> bool {
        debug_assert!(self.in_tx);
        self.sync_shadows(world);
        let Some(old) = world.get::<T>(entity).cloned() else {
            return false;
        };
        self.pk.remove(old.pk());
        self.indexes.remove(&old.keys(), entity);
        world.despawn(entity);
        let hash = self.hash(old.pk());
        self.log
            .push(ChangeKind::Delete, hash, old.pk(), None::<&T>, Some(entity));
        self.undo.push(Undo::Delete { old });
        true
    }

    pub(crate) fn not_found(&self, column: &'static str, key: &dyn std::fmt::Debug) -> TableError {
        not_found::<T>(column, key)
    }

    /// Appends one change found by capture to the tick's change log; `row` is the row's state
    /// now (if it exists), encoded while it is hot in cache.
    fn record(&mut self, pk: T::Pk, op: ChangeKind, row: Option<&T>, entity: Entity) {
        let hash = self.hash(&pk);
        match row {
            Some(row) => {
                self.log.push_row(op, hash, row, Some(entity));
            }
            None => self.log.push(op, hash, &pk, None::<&T>, Some(entity)),
        }
    }

    fn reschedule_from_row(&mut self, world: &World, pk: &T::Pk, now: Timestamp) {
        let at = self
            .pk
            .get(pk)
            .and_then(|slot| world.get::<T>(slot.entity))
            .and_then(T::schedule_at);
        if let Some(queue) = self.schedule.as_mut() {
            match at {
                Some(at) => queue.set(pk.clone(), at.first_due(now)),
                None => queue.remove(pk),
            }
        }
    }

    fn commit_tx(&mut self, world: &mut World, now: Timestamp) {
        self.sync_shadows(world);
        // The writes are in the change log already; only schedule tables have more to do.
        if self.schedule.is_some() {
            let mut undo = std::mem::take(&mut self.undo);
            for op in &undo {
                match op {
                    Undo::Update { entity, old } => {
                        let row = world.get::<T>(*entity);
                        if row.and_then(T::schedule_at) != old.schedule_at() {
                            self.reschedule_from_row(world, old.pk(), now);
                        }
                    }
                    Undo::Insert { pk } => self.reschedule_from_row(world, pk, now),
                    Undo::Delete { old } => self.reschedule_from_row(world, old.pk(), now),
                }
            }
            undo.clear();
            self.undo = undo;
        } else {
            self.undo.clear();
        }
        self.in_tx = false;
    }

    fn rollback_tx(&mut self, world: &mut World) {
        self.sync_shadows(world);
        while let Some(op) = self.undo.pop() {
            match op {
                Undo::Insert { pk } => {
                    if let Some(RowSlot { entity, .. }) = self.pk.remove(&pk) {
                        if let Some(keys) = world.get::<RowKeys<T>>(entity).map(|k| k.0.clone()) {
                            self.indexes.remove(&keys, entity);
                        }
                        world.despawn(entity);
                    }
                }
                Undo::Update { old, .. } => {
                    // By key: a later delete in the transaction, undone first, respawned the
                    // row under another entity.
                    let Some(&RowSlot { entity, .. }) = self.pk.get(old.pk()) else {
                        continue;
                    };
                    // The shadows are in sync, so the row's keys are its shadow's; comparing
                    // with the row (just written, in cache) spares reading the shadow.
                    if let Some(mut row) = world.get_mut::<T>(entity)
                        && old.same_keys_as(&row)
                    {
                        *row = old;
                        continue;
                    }
                    if let Some(mut shadow) = world.get_mut::<RowKeys<T>>(entity)
                        && !old.same_keys(&shadow.0)
                    {
                        let old_keys = old.keys();
                        self.indexes.update(&shadow.0, &old_keys, entity);
                        shadow.0 = old_keys;
                    }
                    if let Some(mut slot) = world.get_mut::<T>(entity) {
                        *slot = old;
                    }
                }
                Undo::Delete { old } => {
                    let keys = old.keys();
                    let pk = old.pk().clone();
                    let entity = world.spawn((old, RowKeys::<T>(keys.clone()))).id();
                    self.pk.insert(pk, RowSlot::new(entity));
                    self.indexes.insert(&keys, entity);
                }
            }
        }
        self.log.truncate(self.tx_mark);
        self.deferred_error = None;
        std::mem::swap(&mut self.sequences, &mut self.saved_sequences);
        self.in_tx = false;
    }

    /// Re-indexes rows that systems spawned, mutated, replaced or despawned this tick.
    ///
    /// `scan` is set when some system may write `T` in place: then every row's change tick is
    /// checked. Otherwise only rows the hooks reported (despawned or replaced through
    /// `Commands`) and rows without `RowKeys` (spawned) are looked at, so tables no system
    /// writes cost nothing per row.
    fn capture_systems(
        &mut self,
        world: &mut World,
        systems_start: EcsTick,
        now: Timestamp,
        scan: bool,
    ) -> CaptureStats {
        let mut stats = CaptureStats::default();
        let mut rescheduled = Vec::new();
        self.log.start_systems();

        let discarded = std::mem::take(&mut world.resource_mut::<RemovedRows<T>>().0);
        let mut replaced = Vec::new();
        for (entity, keys) in discarded {
            let pk = T::keys_pk(&keys);
            // Rows deleted by reducers were unindexed already; only system changes remain.
            if self.pk.get(pk).map(|slot| slot.entity) != Some(entity) {
                continue;
            }
            if world.get::<T>(entity).is_some() {
                // Replaced (`insert` over an existing row), not removed: an in-place change.
                if !scan {
                    replaced.push(entity);
                }
                continue;
            }
            self.pk.remove(pk);
            self.indexes.remove(&keys, entity);
            if let Some(queue) = self.schedule.as_mut() {
                queue.remove(pk);
            }
            self.record(pk.clone(), ChangeKind::Delete, None, entity);
            stats.deleted += 1;
        }

        let mut spawned = Vec::new();
        self.indexes.defer_spatial_moves(true);
        if scan {
            let this_run = world.change_tick();
            for (entity, mut row, shadow) in self.capture_query.iter_mut(world) {
                // Reducer writes earlier in the tick are already recorded (and rolled-back ones
                // must not be reported), so only look at what the systems phase changed.
                if !row.last_changed().is_newer_than(systems_start, this_run) {
                    continue;
                }
                let Some(mut shadow) = shadow else {
                    spawned.push(entity);
                    continue;
                };
                let changes = Changes {
                    hasher: self.pk.hasher(),
                    indexes: &mut self.indexes,
                    log: &mut self.log,
                    stats: &mut stats,
                    rescheduled: self.schedule.as_ref().map(|_| &mut rescheduled),
                };
                changes.mutated(entity, row.bypass_change_detection(), &mut shadow.0);
            }
        } else {
            spawned.extend(self.new_rows_query.iter(world));
            for entity in replaced {
                let (Some(mut row), Some(mut shadow)) = (
                    world.get::<T>(entity).cloned(),
                    world.get::<RowKeys<T>>(entity).map(|k| k.0.clone()),
                ) else {
                    continue;
                };
                let changes = Changes {
                    hasher: self.pk.hasher(),
                    indexes: &mut self.indexes,
                    log: &mut self.log,
                    stats: &mut stats,
                    rescheduled: self.schedule.as_ref().map(|_| &mut rescheduled),
                };
                changes.mutated(entity, &mut row, &mut shadow);
                if let Some(mut slot) = world.get_mut::<T>(entity) {
                    *slot.bypass_change_detection() = row;
                }
                if let Some(mut slot) = world.get_mut::<RowKeys<T>>(entity) {
                    slot.0 = shadow;
                }
            }
        }
        self.indexes.defer_spatial_moves(false);
        for pk in rescheduled {
            self.reschedule_from_row(world, &pk, now);
        }

        for entity in spawned {
            match self.index_spawned(world, entity) {
                Ok(pk) => {
                    if self.schedule.is_some() {
                        self.reschedule_from_row(world, &pk, now);
                    }
                    let row = world.get::<T>(entity);
                    self.record(pk, ChangeKind::Insert, row, entity);
                    stats.inserted += 1;
                }
                Err(error) => {
                    tracing::warn!(table = T::NAME, %error, "row spawned by a system rejected");
                    world.entity_mut(entity).remove::<T>();
                    stats.rejected += 1;
                }
            }
        }
        // Rejections above removed components and fired the hook; those rows were never indexed.
        world.resource_mut::<RemovedRows<T>>().0.clear();
        stats
    }

    fn index_spawned(&mut self, world: &mut World, entity: Entity) -> Result<T::Pk, TableError> {
        let Some(mut row) = world.get_mut::<T>(entity) else {
            return Err(TableError::InvalidValue {
                table: T::NAME,
                column: T::PRIMARY_KEY,
                detail: "row vanished during capture".into(),
            });
        };
        let mut sequences = self.sequences.clone();
        let mut candidate = row.clone();
        candidate.apply_auto_inc(&mut sequences)?;
        let keys = candidate.keys();
        let pk = T::keys_pk(&keys).clone();
        if self.pk.contains_key(&pk) {
            return Err(TableError::unique::<T>(T::PRIMARY_KEY, &pk));
        }
        self.indexes.check_insert(&keys)?;
        // Only an accepted row consumes sequence values and sees its auto-inc columns filled in.
        self.sequences = sequences;
        *row.bypass_change_detection() = candidate;
        self.indexes.insert(&keys, entity);
        self.pk.insert(pk.clone(), RowSlot::new(entity));
        world.entity_mut(entity).insert(RowKeys::<T>(keys));
        Ok(pk)
    }

    fn drain_into(&mut self) -> Option<TableChanges> {
        self.log.take(self.id, T::NAME)
    }

    fn clear_event_rows(&mut self, world: &mut World) {
        // Despawn in entity order, not the map's (seeded) order, so that entity reuse, and so
        // every later iteration, is the same on every run.
        let mut entities: Vec<Entity> = self.pk.drain().map(|(_, slot)| slot.entity).collect();
        entities.sort_unstable();
        for entity in entities {
            if let Some(keys) = world.get::<RowKeys<T>>(entity).map(|k| k.0.clone()) {
                self.indexes.remove(&keys, entity);
            }
            world.despawn(entity);
        }
        world.resource_mut::<RemovedRows<T>>().0.clear();
    }

    fn stashed_row<'w>(
        &self,
        world: &'w World,
        ordinal: u32,
        fired_due: Timestamp,
    ) -> Option<&'w T> {
        let (due, pk) = self.due_stash.get(ordinal as usize)?;
        debug_assert_eq!(*due, fired_due);
        let queue = self.schedule.as_ref()?;
        // A reducer fired earlier in this phase may have cancelled or rescheduled the row.
        if queue.by_pk.get(pk) != Some(&fired_due) {
            return None;
        }
        world.get::<T>(self.pk.get(pk)?.entity)
    }

    fn check_integrity(&self, world: &mut World) -> Result<(), String> {
        for (pk, &RowSlot { entity, .. }) in self.pk.iter() {
            let row = world
                .get::<T>(entity)
                .ok_or_else(|| format!("{}: pk {pk:?} maps to an entity without a row", T::NAME))?;
            if row.pk() != pk {
                return Err(format!("{}: pk {pk:?} maps to row {:?}", T::NAME, row.pk()));
            }
            let shadow = world
                .get::<RowKeys<T>>(entity)
                .ok_or_else(|| format!("{}: row {pk:?} has no RowKeys", T::NAME))?;
            if !row.same_keys(&shadow.0) {
                return Err(format!("{}: row {pk:?} RowKeys out of date", T::NAME));
            }
            self.indexes.verify(&shadow.0, entity)?;
        }
        for (column, count) in self.indexes.entry_counts() {
            if count != self.pk.len() {
                return Err(format!(
                    "{}.{column}: {count} index entries for {} rows",
                    T::NAME,
                    self.pk.len()
                ));
            }
        }
        let mut query = world.query::<&T>();
        let rows = query.iter(world).count();
        if rows != self.pk.len() {
            return Err(format!(
                "{}: {rows} row components for {} primary keys",
                T::NAME,
                self.pk.len()
            ));
        }
        Ok(())
    }
}

/// A `NotFound` error for `key` in `T.column`.
#[cold]
fn not_found<T: Table>(column: &'static str, key: &dyn std::fmt::Debug) -> TableError {
    TableError::NotFound {
        table: T::NAME,
        column,
        key: format!("{key:?}"),
    }
}

/// The due time after an interval row fired (due `fired_due`, fired in the tick at `now`): the
/// next multiple of the interval after both, so missed periods are skipped and the phase is
/// the interval's wall-clock phase ([`ScheduleAt::Interval`]).
fn next_interval_due(
    fired_due: Timestamp,
    every: std::time::Duration,
    now: Timestamp,
) -> Timestamp {
    if every.is_zero() {
        return Timestamp::from_micros(now.as_micros().saturating_add(1));
    }
    ScheduleAt::Interval(every).first_due(now.max(fired_due))
}

/// Type-erased access to a [`TableStore`] for the engine's per-table loops.
pub(crate) trait ErasedStore: Any + Send + Sync {
    fn begin(&mut self) -> bool;
    /// The constraint violation a dropped row guard left for the running transaction.
    fn take_error(&mut self) -> Option<TableError>;
    /// The look-ahead's probe stage: the entity each hash most likely keys.
    fn guess_entities(
        &self,
        named: &[crate::prefetch::Named],
        out: &mut Vec<crate::prefetch::Found>,
    );
    /// Brings rows and their change ticks into cache (batched look-ahead).
    fn touch_rows(&self, world: &World, rows: &[crate::prefetch::Found]);
    fn commit(&mut self, world: &mut World, now: Timestamp);
    /// Commits, unless a dropped row guard left a constraint violation: then returns it and
    /// commits nothing (the caller rolls back).
    fn commit_unless_error(&mut self, world: &mut World, now: Timestamp) -> Option<TableError>;
    fn rollback(&mut self, world: &mut World);
    fn capture(
        &mut self,
        world: &mut World,
        systems_start: EcsTick,
        now: Timestamp,
        scan: bool,
    ) -> CaptureStats;
    fn component_id(&self, world: &World) -> Option<ComponentId>;
    fn drain_cell_moves(&mut self, out: &mut Vec<(&'static str, CellMove<[i32; 3]>)>);
    fn drain_changes(&mut self) -> Option<TableChanges>;
    fn end_tick(&mut self, world: &mut World);
    fn collect_due(&mut self, now: Timestamp, table: usize, out: &mut Vec<DueFire>);
    fn due_row_bytes(&self, world: &World, ordinal: u32, fired_due: Timestamp) -> Option<Vec<u8>>;
    fn after_fire(&mut self, world: &mut World, ordinal: u32, fired_due: Timestamp, now: Timestamp);
    fn move_into_world(self: Box<Self>, world: &mut World);
    fn check_integrity(&self, world: &mut World) -> Result<(), String>;
    // Durability (see `restore.rs`): no undo log, no change log.
    fn schema(&self) -> &TableSchema;
    fn row_count(&self) -> usize;
    fn sequences(&self) -> &[u64];
    fn restore_sequences(&mut self, values: &[u64]);
    fn for_each_row_bytes(&mut self, world: &World, f: &mut dyn FnMut(&[u8], &[u8]));
    fn load_rows(&mut self, world: &mut World, count: u64, rows: &[u8]) -> Result<(), String>;
    fn apply_changes(
        &mut self,
        world: &mut World,
        changes: &[crate::changes::RowChange<'_>],
    ) -> Result<(), String>;
    fn rebuild_schedule(&mut self, world: &World, now: Timestamp);
}

impl<T: Table> ErasedStore for TableStore<T> {
    fn begin(&mut self) -> bool {
        TableStore::begin(self)
    }
    fn take_error(&mut self) -> Option<TableError> {
        self.deferred_error.take()
    }
    fn guess_entities(
        &self,
        named: &[crate::prefetch::Named],
        out: &mut Vec<crate::prefetch::Found>,
    ) {
        // Three loops: every key's control bytes, then every key's bucket address (control
        // bytes in cache), then every bucket's contents. No iteration waits on a miss of its
        // own, and the loop that reads buckets is short, so the misses of a whole batch overlap.
        for key in named {
            self.pk.touch_control(key.hash);
        }
        let mut buckets = Vec::with_capacity(named.len());
        for key in named {
            if let Some(bucket) = self.pk.bucket_guess(key.hash) {
                buckets.push((key, bucket));
            }
        }
        for (key, bucket) in buckets {
            if let Some(entity) = self.pk.entity_in(bucket, key.hash) {
                out.push(crate::prefetch::Found::new(key.table, entity));
            }
        }
    }
    fn touch_rows(&self, world: &World, rows: &[crate::prefetch::Found]) {
        // Two loops, as in `guess_entities`: where each row and change tick is (entity
        // records in cache), then reading them.
        let mut refs = Vec::with_capacity(rows.len());
        for found in rows {
            match self.touch_query.get_manual(world, found.entity()) {
                Ok(row) => refs.push(row),
                // A row in an archetype that appeared since the query was last refreshed.
                Err(_) => crate::prefetch::touch_row::<T>(world, found.entity(), self.pk.hasher()),
            }
        }
        for row in &refs {
            crate::prefetch::touch_ref(row, self.pk.hasher());
        }
    }
    fn commit(&mut self, world: &mut World, now: Timestamp) {
        self.commit_tx(world, now);
    }
    fn commit_unless_error(&mut self, world: &mut World, now: Timestamp) -> Option<TableError> {
        if let Some(error) = self.deferred_error.take() {
            return Some(error);
        }
        self.commit_tx(world, now);
        None
    }
    fn rollback(&mut self, world: &mut World) {
        self.rollback_tx(world);
    }
    fn capture(
        &mut self,
        world: &mut World,
        systems_start: EcsTick,
        now: Timestamp,
        scan: bool,
    ) -> CaptureStats {
        self.capture_systems(world, systems_start, now, scan)
    }
    fn component_id(&self, world: &World) -> Option<ComponentId> {
        world.component_id::<T>()
    }
    fn drain_cell_moves(&mut self, out: &mut Vec<(&'static str, CellMove<[i32; 3]>)>) {
        self.indexes.drain_cell_moves(out);
    }
    fn drain_changes(&mut self) -> Option<TableChanges> {
        self.drain_into()
    }
    fn end_tick(&mut self, world: &mut World) {
        if self.schema.event {
            self.clear_event_rows(world);
        }
    }
    fn collect_due(&mut self, now: Timestamp, table: usize, out: &mut Vec<DueFire>) {
        self.due_stash.clear();
        let Some(queue) = self.schedule.as_ref() else {
            return;
        };
        for (due, pk) in queue.due.iter().take_while(|(due, _)| *due <= now) {
            out.push(DueFire {
                due: *due,
                table,
                ordinal: self.due_stash.len() as u32,
            });
            self.due_stash.push((*due, pk.clone()));
        }
    }
    fn due_row_bytes(&self, world: &World, ordinal: u32, fired_due: Timestamp) -> Option<Vec<u8>> {
        self.stashed_row(world, ordinal, fired_due)
            .map(crate::codec::OrreryType::to_bytes)
    }
    fn after_fire(
        &mut self,
        world: &mut World,
        ordinal: u32,
        fired_due: Timestamp,
        now: Timestamp,
    ) {
        let Some(row) = self.stashed_row(world, ordinal, fired_due) else {
            return;
        };
        let schedule = row.schedule_at();
        let pk = row.pk().clone();
        match schedule {
            Some(ScheduleAt::Interval(every)) => {
                if let Some(queue) = self.schedule.as_mut() {
                    queue.set(pk, next_interval_due(fired_due, every, now));
                }
            }
            Some(ScheduleAt::At(_)) => {
                if let Some(&RowSlot { entity, .. }) = self.pk.get(&pk) {
                    self.delete_entity(world, entity);
                }
            }
            None => {}
        }
    }
    fn move_into_world(self: Box<Self>, world: &mut World) {
        world.insert_resource(*self);
    }
    fn check_integrity(&self, world: &mut World) -> Result<(), String> {
        TableStore::check_integrity(self, world)
    }
    fn schema(&self) -> &TableSchema {
        &self.schema
    }
    fn row_count(&self) -> usize {
        self.len()
    }
    fn sequences(&self) -> &[u64] {
        self.sequence_values()
    }
    fn restore_sequences(&mut self, values: &[u64]) {
        TableStore::restore_sequences(self, values);
    }
    fn for_each_row_bytes(&mut self, world: &World, f: &mut dyn FnMut(&[u8], &[u8])) {
        TableStore::for_each_row_bytes(self, world, f)
    }
    fn load_rows(&mut self, world: &mut World, count: u64, rows: &[u8]) -> Result<(), String> {
        TableStore::load_rows(self, world, count, rows)
    }
    fn apply_changes(
        &mut self,
        world: &mut World,
        changes: &[crate::changes::RowChange<'_>],
    ) -> Result<(), String> {
        TableStore::apply_changes(self, world, changes)
    }
    fn rebuild_schedule(&mut self, world: &World, now: Timestamp) {
        TableStore::rebuild_schedule(self, world, now);
    }
}

/// Takes a table's store back out of the world after the systems phase.
pub(crate) fn take_store_from_world<T: Table>(world: &mut World) -> Option<Box<dyn ErasedStore>> {
    world
        .remove_resource::<TableStore<T>>()
        .map(|store| Box::new(store) as Box<dyn ErasedStore>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_rescheduling_keeps_phase_and_fires_once_per_tick() {
        let ms = |n: i64| Timestamp::from_micros(n * 1000);
        let every = std::time::Duration::from_millis(100);
        assert_eq!(next_interval_due(ms(100), every, ms(100)), ms(200));
        // Fell 350 ms behind: skip the missed periods but stay on the 100 ms grid.
        assert_eq!(next_interval_due(ms(100), every, ms(450)), ms(500));
        assert_eq!(
            next_interval_due(ms(100), std::time::Duration::ZERO, ms(450)),
            Timestamp::from_micros(450_001)
        );
    }
}
