//! [`RowMut`]: a row borrowed for writing inside a transaction, so a read-modify-write costs one
//! index probe and one row lookup. The first mutable access saves the row for the undo log;
//! dropping the guard (or [`RowMut::save`]) re-indexes changed key columns and records the
//! write. A guard that was only read records nothing.
//!
//! The guard holds the row component only, not the entity's `RowKeys` shadow (borrowing both
//! costs a query per guard); a key change leaves the new keys in the store's `stale_shadows`,
//! which every store operation that reads shadows writes back first.

use std::fmt;
use std::ops::{Deref, DerefMut};

use bevy_ecs::change_detection::Mut;
use bevy_ecs::entity::Entity;

use super::store::{RowSlot, Undo};
use super::{Table, TableError, TableIndexes};
use crate::changes::ChangeLog;

/// The parts of a table's store that recording a guard's write needs, borrowed apart from the
/// row itself.
pub(super) struct GuardTx<'a, T: Table> {
    /// The row's primary-index entry, which records where its change-log entry is.
    pub(super) slot: &'a mut RowSlot,
    /// The row's primary key's hash.
    pub(super) hash: u64,
    pub(super) indexes: &'a mut T::Indexes,
    pub(super) undo: &'a mut Vec<Undo<T>>,
    pub(super) log: &'a mut ChangeLog,
    pub(super) deferred_error: &'a mut Option<TableError>,
    pub(super) stale_shadows: &'a mut Vec<(Entity, T::Keys)>,
}

/// A row opened for writing by `find_mut`. Derefs to the row; write its fields in place.
///
/// The write is recorded when the guard is dropped. A write that breaks a constraint (a changed
/// primary key, a unique value another row holds, an invalid spatial value) is undone and fails
/// the whole reducer call with that error; call [`RowMut::save`] instead of dropping the guard to
/// handle the error in the reducer.
pub struct RowMut<'a, T: Table> {
    row: Mut<'a, T>,
    entity: Entity,
    /// The row before the first write through the guard; `None` while nothing was written.
    old: Option<T>,
    tx: GuardTx<'a, T>,
}

impl<'a, T: Table> RowMut<'a, T> {
    pub(super) fn new(row: Mut<'a, T>, entity: Entity, tx: GuardTx<'a, T>) -> Self {
        RowMut {
            row,
            entity,
            old: None,
            tx,
        }
    }

    /// Records the write now. On a constraint violation the row is restored to what it was
    /// when the guard was opened and the error is returned; the call goes on.
    pub fn save(mut self) -> Result<(), TableError> {
        self.finish()
    }

    /// Re-indexes and records the write, if there was one.
    fn finish(&mut self) -> Result<(), TableError> {
        let Some(old) = self.old.take() else {
            return Ok(());
        };
        if !self.row.same_keys_as(&old) {
            // The row as it was is the row as indexed: every write in a transaction re-indexes.
            let old_keys = old.keys();
            let new_keys = self.row.keys();
            let check = if T::keys_pk(&new_keys) != T::keys_pk(&old_keys) {
                Err(TableError::PrimaryKeyChanged {
                    table: T::NAME,
                    column: T::PRIMARY_KEY,
                    old: format!("{:?}", old.pk()),
                    new: format!("{:?}", self.row.pk()),
                })
            } else {
                self.tx
                    .indexes
                    .check_update(&old_keys, &new_keys, self.entity)
            };
            if let Err(error) = check {
                *self.row = old;
                return Err(error);
            }
            self.tx.indexes.update(&old_keys, &new_keys, self.entity);
            self.tx.stale_shadows.push((self.entity, new_keys));
        }
        let row: &T = &self.row;
        self.tx
            .log
            .write_row(self.tx.hash, row, self.entity, &mut self.tx.slot.logged);
        self.tx.undo.push(Undo::Update {
            entity: self.entity,
            old,
        });
        Ok(())
    }
}

impl<T: Table> Deref for RowMut<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.row
    }
}

impl<T: Table> DerefMut for RowMut<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        if self.old.is_none() {
            self.old = Some(T::clone(&self.row));
        }
        &mut self.row
    }
}

impl<T: Table> Drop for RowMut<'_, T> {
    fn drop(&mut self) {
        if let Err(error) = self.finish() {
            // The first violation is the one reported; the engine fails the call with it.
            self.tx.deferred_error.get_or_insert(error);
        }
    }
}

impl<T: Table> fmt::Debug for RowMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RowMut").field(&*self.row).finish()
    }
}
