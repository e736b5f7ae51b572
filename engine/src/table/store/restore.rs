//! Writes that bypass transactions, for durability: dumping every row (snapshots), loading rows
//! (snapshot recovery), applying one tick's logged changes (log replay), restoring sequences and
//! rebuilding a schedule table's due queue from its rows. None of these touch the undo log or
//! the tick's change log, and all of them keep the primary index, the secondary indexes and
//! `RowKeys` exact.

use bevy_ecs::entity::Entity;
use bevy_ecs::world::World;

use super::{RowSlot, TableStore};
use crate::changes::{ChangeKind, RowChange};
use crate::codec::OrreryType;
use crate::table::{RemovedRows, RowKeys, Table, TableIndexes};
use crate::time::Timestamp;

impl<T: Table> TableStore<T> {
    /// The auto-increment sequences (next value per `#[auto_inc]` column).
    pub(crate) fn sequence_values(&self) -> &[u64] {
        &self.sequences
    }

    /// Restores the auto-increment sequences. Extra values are ignored, missing ones keep their
    /// current value.
    pub(crate) fn restore_sequences(&mut self, values: &[u64]) {
        for (slot, &value) in self.sequences.iter_mut().zip(values) {
            *slot = value;
        }
    }

    /// Calls `f` with every row's encoded primary key and encoded row, in storage order.
    pub(crate) fn for_each_row_bytes(&mut self, world: &World, f: &mut dyn FnMut(&[u8], &[u8])) {
        let (mut pk, mut row) = (Vec::new(), Vec::new());
        for value in self.rows_query.iter(world) {
            pk.clear();
            row.clear();
            value.pk().encode(&mut pk);
            value.encode(&mut row);
            f(&pk, &row);
        }
    }

    /// Loads `count` rows in the snapshot layout (each a `u32` little-endian length and the
    /// row-format bytes).
    pub(crate) fn load_rows(
        &mut self,
        world: &mut World,
        count: u64,
        mut rows: &[u8],
    ) -> Result<(), String> {
        self.pk
            .reserve(usize::try_from(count).unwrap_or(0).min(rows.len() / 4));
        for i in 0..count {
            if rows.len() < 4 {
                return Err(format!("row {i} of {count}: truncated length"));
            }
            let len = u32::from_le_bytes([rows[0], rows[1], rows[2], rows[3]]) as usize;
            if rows.len() - 4 < len {
                return Err(format!("row {i} of {count}: length {len} past the end"));
            }
            let row = T::from_bytes(&rows[4..4 + len]).map_err(|e| format!("row {i}: {e}"))?;
            rows = &rows[4 + len..];
            self.spawn_loaded(world, row)?;
        }
        if !rows.is_empty() {
            return Err(format!("{} bytes after the last row", rows.len()));
        }
        Ok(())
    }

    fn spawn_loaded(&mut self, world: &mut World, row: T) -> Result<Entity, String> {
        let keys = row.keys();
        let pk = T::keys_pk(&keys);
        if self.pk.contains_key(pk) {
            return Err(format!("duplicate primary key {pk:?}"));
        }
        self.indexes
            .check_insert(&keys)
            .map_err(|e| e.to_string())?;
        let pk = pk.clone();
        let entity = world.spawn((row, RowKeys::<T>(keys.clone()))).id();
        self.indexes.insert(&keys, entity);
        self.pk.insert(pk, RowSlot::new(entity));
        Ok(entity)
    }

    /// Applies one tick's net changes of this table. All old index entries of updated and
    /// deleted rows are removed before any new one is added, so a tick that swapped unique
    /// values between rows replays without a false conflict.
    pub(crate) fn apply_changes(
        &mut self,
        world: &mut World,
        changes: &[RowChange<'_>],
    ) -> Result<(), String> {
        let mut decoded = Vec::with_capacity(changes.len());
        for change in changes {
            let pk = T::Pk::from_bytes(change.pk).map_err(|e| format!("primary key: {e}"))?;
            let row = match (change.kind, change.row) {
                (ChangeKind::Delete, _) => None,
                (_, Some(bytes)) => {
                    let row = T::from_bytes(bytes).map_err(|e| format!("row {pk:?}: {e}"))?;
                    if *row.pk() != pk {
                        return Err(format!("row {:?} logged under key {pk:?}", row.pk()));
                    }
                    Some(row)
                }
                (_, None) => return Err(format!("{:?} of {pk:?} without a row", change.kind)),
            };
            decoded.push((change.kind, pk, row));
        }
        for (kind, pk, _) in &decoded {
            if *kind == ChangeKind::Insert {
                continue;
            }
            let Some(&RowSlot { entity, .. }) = self.pk.get(pk) else {
                return Err(format!("{kind:?} of missing row {pk:?}"));
            };
            if let Some(keys) = world.get::<RowKeys<T>>(entity).map(|k| k.0.clone()) {
                self.indexes.remove(&keys, entity);
            }
            if *kind == ChangeKind::Delete {
                self.pk.remove(pk);
                world.despawn(entity);
            }
        }
        for (kind, pk, row) in decoded {
            let Some(row) = row else { continue };
            let keys = row.keys();
            self.indexes
                .check_insert(&keys)
                .map_err(|e| format!("{kind:?} of {pk:?}: {e}"))?;
            let entity = if kind == ChangeKind::Insert {
                if self.pk.contains_key(&pk) {
                    return Err(format!("insert of existing row {pk:?}"));
                }
                let entity = world.spawn((row, RowKeys::<T>(keys.clone()))).id();
                self.pk.insert(pk, RowSlot::new(entity));
                entity
            } else {
                let Some(&RowSlot { entity, .. }) = self.pk.get(&pk) else {
                    return Err(format!("update of missing row {pk:?}"));
                };
                if let Some(mut slot) = world.get_mut::<T>(entity) {
                    *slot = row;
                }
                if let Some(mut shadow) = world.get_mut::<RowKeys<T>>(entity) {
                    shadow.0 = keys.clone();
                }
                entity
            };
            self.indexes.insert(&keys, entity);
        }
        // Despawns above ran the discard hook; those rows were unindexed here already.
        world.resource_mut::<RemovedRows<T>>().0.clear();
        Ok(())
    }

    /// Rebuilds the due queue of a schedule table from its rows: an `Interval(d)` row is next
    /// due at `now + d`, an `At(t)` row at `t`.
    pub(crate) fn rebuild_schedule(&mut self, world: &World, now: Timestamp) {
        let Some(queue) = self.schedule.as_mut() else {
            return;
        };
        queue.due.clear();
        queue.by_pk.clear();
        for (pk, &RowSlot { entity, .. }) in self.pk.iter() {
            if let Some(at) = world.get::<T>(entity).and_then(T::schedule_at) {
                queue.set(pk.clone(), at.first_due(now));
            }
        }
    }
}
