//! A tick's change set: per table, the net inserts, updates and deletes of that tick, keyed by
//! primary key, with rows already encoded in the Orrery row format so durability and
//! publishing can share the bytes.

use std::ops::Range;

use bevy_ecs::entity::Entity;
use hashbrown::{HashTable, hash_table};

use orrery_tick::Tick;

use crate::codec::{OrreryType, RowDecodeError};
use crate::table::{Table, TableId};
use crate::time::Timestamp;

/// What happened to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The row did not exist when the tick began and exists now.
    Insert,
    /// The row existed and exists, with new contents.
    Update,
    /// The row existed and is gone.
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: ChangeKind,
    pk: Range<u32>,
    row: Range<u32>,
    entity: Option<Entity>,
}

/// A row's change over a whole tick, relative to its state when the tick began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NetChange {
    Inserted,
    Updated,
    Deleted,
    /// Inserted then deleted within the tick: nothing to report.
    Cancelled,
}

impl NetChange {
    pub(crate) fn first(op: ChangeKind) -> NetChange {
        match op {
            ChangeKind::Insert => NetChange::Inserted,
            ChangeKind::Update => NetChange::Updated,
            ChangeKind::Delete => NetChange::Deleted,
        }
    }

    pub(crate) fn then(self, op: ChangeKind) -> NetChange {
        use NetChange::*;
        match (self, op) {
            (Inserted, ChangeKind::Update) => Inserted,
            (Inserted, ChangeKind::Delete) => Cancelled,
            (Updated, ChangeKind::Update) => Updated,
            (Updated, ChangeKind::Delete) => Deleted,
            (Deleted, ChangeKind::Insert) => Updated,
            (Cancelled, ChangeKind::Insert) => Inserted,
            // The remaining pairs contradict the row's existence and cannot be produced by the
            // store; keep the newest operation's view rather than guessing.
            (_, ChangeKind::Insert) => Inserted,
            (_, ChangeKind::Update) => Updated,
            (_, ChangeKind::Delete) => Deleted,
        }
    }

    fn kind(self) -> Option<ChangeKind> {
        match self {
            NetChange::Inserted => Some(ChangeKind::Insert),
            NetChange::Updated => Some(ChangeKind::Update),
            NetChange::Deleted => Some(ChangeKind::Delete),
            NetChange::Cancelled => None,
        }
    }
}

/// One write, in write order. Entries of the running transaction are dropped again if it
/// rolls back.
#[derive(Clone, Debug)]
struct LogEntry {
    op: ChangeKind,
    /// The primary key's hash, taken with the table's seeded hasher when the row was written, so
    /// folding never hashes key bytes.
    hash: u64,
    pk: Range<u32>,
    /// The row right after the write; `None` for deletes.
    row: Option<Range<u32>>,
    /// The row's entity (for deletes: the one it had).
    entity: Option<Entity>,
}

/// Where a row's entry is in a table's change log, kept with the row in the primary index so
/// that a second write of the row in the same tick merges into that entry (see
/// [`ChangeLog::write_row`]). It may be stale (from an earlier tick, or a rolled-back write):
/// it is used only if it is of the log's current tick and the entry it names holds the same
/// entity. The tick check comes first so that a row's first write of a tick does not load a
/// stale entry (a cache miss) only to find it belongs to another row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogSlot {
    at: u32,
    /// The log's [`ChangeLog::epoch`] when the entry was written.
    epoch: u32,
}

impl LogSlot {
    /// No entry.
    pub(crate) const NONE: LogSlot = LogSlot {
        at: u32::MAX,
        epoch: 0,
    };
}

/// Where a transaction's entries begin, to drop them again on rollback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogMark {
    entries: usize,
    bytes: usize,
}

/// One table's writes while a tick runs. A write encodes the row right away, while the reducer
/// has just touched it, so commit has nothing left to do and a rollback truncates. A reducer's
/// update of a row already in the log merges into the row's entry (the primary index keeps
/// where it is), so as long as the tick has no deletes and systems changed nothing, every key
/// has one entry and the tick-end fold only copies entries out. Otherwise the net change per
/// primary key is folded when the tick ends, over a table that stays in cache, by the hash
/// taken at write time; rows that only systems changed are not folded unless reducers also
/// touched them. The byte arena leaves with the tick's [`TableChanges`] (the fold copies no
/// key or row); the other buffers are reused tick after tick.
#[derive(Default)]
pub(crate) struct ChangeLog {
    bytes: Vec<u8>,
    entries: Vec<LogEntry>,
    /// Entries from this index on were written by capture (systems).
    systems_from: Option<usize>,
    /// Some key may have more than one entry (a delete was logged, which ends the row's entity
    /// and so its merging): the tick-end fold must probe by key.
    unmerged: bool,
    /// Where the running transaction's entries begin.
    tx_entries: usize,
    /// Entries of earlier transactions that this one merged into, as they were, to restore on
    /// rollback.
    merged: Vec<(usize, LogEntry)>,
    /// Scratch of `take`, kept for its capacity: folded position per key, by key hash.
    slots: HashTable<u32>,
    folded: Vec<Folded>,
    /// Counts the ticks the log was taken at, so that slots of earlier ticks are told apart
    /// without reading their entries. After wrapping around an old slot may match again, and
    /// then the entity check decides ([`LogSlot::NONE`] names no entry whatever the count).
    epoch: u32,
}

/// A primary key's net change while a log is folded.
#[derive(Clone, Debug)]
struct Folded {
    net: NetChange,
    hash: u64,
    pk: Range<u32>,
    row: Option<Range<u32>>,
    entity: Option<Entity>,
}

fn span(bytes: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Range<u32> {
    let start = bytes.len() as u32;
    write(bytes);
    start..bytes.len() as u32
}

fn slice<'a>(bytes: &'a [u8], range: &Range<u32>) -> &'a [u8] {
    &bytes[range.start as usize..range.end as usize]
}

impl ChangeLog {
    /// Appends one write; `hash` is the primary key's hash under the table's hasher (equal keys
    /// must give equal hashes; different keys may collide).
    #[inline]
    pub(crate) fn push<P: OrreryType, R: OrreryType>(
        &mut self,
        op: ChangeKind,
        hash: u64,
        pk: &P,
        row: Option<&R>,
        entity: Option<Entity>,
    ) {
        self.unmerged |= op == ChangeKind::Delete;
        let pk = span(&mut self.bytes, |out| pk.encode(out));
        let row = row.map(|row| span(&mut self.bytes, |out| row.encode(out)));
        self.entries.push(LogEntry {
            op,
            hash,
            pk,
            row,
            entity,
        });
    }

    /// Appends the write of a row of `T` (an insert or update), whose primary key's hash is
    /// `hash`; returns where its entry is.
    #[inline]
    pub(crate) fn push_row<T: Table>(
        &mut self,
        op: ChangeKind,
        hash: u64,
        value: &T,
        entity: Option<Entity>,
    ) -> LogSlot {
        debug_assert_ne!(op, ChangeKind::Delete);
        let (pk, row) = self.encode_row(value);
        let at = self.entries.len();
        self.entries.push(LogEntry {
            op,
            hash,
            pk,
            row: Some(row),
            entity,
        });
        LogSlot {
            at: at as u32,
            epoch: self.epoch,
        }
    }

    /// Logs a reducer's update of the row of `T` held by `entity`: merged into the row's entry
    /// if `logged` names one of this tick (the entry keeps its kind, an insert or an update,
    /// and takes the new contents), appended otherwise and `logged` pointed at it.
    #[inline]
    pub(crate) fn write_row<T: Table>(
        &mut self,
        hash: u64,
        value: &T,
        entity: Entity,
        logged: &mut LogSlot,
    ) {
        let at = logged.at as usize;
        // Only one row holds an entity at a time and a row's entity never changes, so an entry
        // with this entity is this row's entry of this tick (a delete, which ends an entity, is
        // never merged into).
        if logged.epoch == self.epoch
            && let Some(entry) = self.entries.get(at)
            && entry.entity == Some(entity)
            && entry.op != ChangeKind::Delete
        {
            let (pk, row) = self.encode_row(value);
            let entry = &mut self.entries[at];
            if at < self.tx_entries {
                self.merged.push((at, entry.clone()));
            }
            entry.pk = pk;
            entry.row = Some(row);
            return;
        }
        *logged = self.push_row(ChangeKind::Update, hash, value, Some(entity));
    }

    /// Encodes a row's key and contents into the arena. When the key is the row's first column,
    /// the row's encoding begins with the key's, so the key is encoded once and its span is the
    /// start of the row's.
    #[inline(always)]
    fn encode_row<T: Table>(&mut self, value: &T) -> (Range<u32>, Range<u32>) {
        let start = self.bytes.len() as u32;
        value.pk().encode(&mut self.bytes);
        let pk = start..self.bytes.len() as u32;
        let row = if value.encode_after_pk(&mut self.bytes) {
            start..self.bytes.len() as u32
        } else {
            span(&mut self.bytes, |out| value.encode(out))
        };
        debug_assert_eq!(slice(&self.bytes, &row), value.to_bytes().as_slice());
        (pk, row)
    }

    /// Starts a transaction at the current end of the log; returns the mark to roll back to.
    #[inline]
    pub(crate) fn begin_tx(&mut self) -> LogMark {
        self.tx_entries = self.entries.len();
        self.merged.clear();
        LogMark {
            entries: self.entries.len(),
            bytes: self.bytes.len(),
        }
    }

    /// Drops the entries written since `mark` (a rolled-back transaction's) and restores the
    /// earlier entries it merged into.
    #[inline]
    pub(crate) fn truncate(&mut self, mark: LogMark) {
        while let Some((at, entry)) = self.merged.pop() {
            self.entries[at] = entry;
        }
        self.entries.truncate(mark.entries);
        self.bytes.truncate(mark.bytes);
    }

    /// Marks where capture's entries begin.
    pub(crate) fn start_systems(&mut self) {
        self.systems_from = Some(self.entries.len());
    }

    /// Folds the tick's writes into net changes per primary key, moves them out as a
    /// [`TableChanges`] (in first-touch order) over the log's own bytes and clears the log.
    pub(crate) fn take(&mut self, table: TableId, name: &'static str) -> Option<TableChanges> {
        self.epoch = self.epoch.wrapping_add(1);
        if self.entries.is_empty() {
            self.systems_from = None;
            self.unmerged = false;
            return None;
        }
        let systems_from = self.systems_from.take().unwrap_or(self.entries.len());
        self.merged.clear();
        self.tx_entries = 0;
        let mut out = TableChanges::new(table, name);
        if !std::mem::take(&mut self.unmerged) && systems_from == self.entries.len() {
            // Merged at write time: one entry per key already, in first-touch order.
            out.entries
                .extend(self.entries.drain(..).map(|entry| Entry {
                    kind: entry.op,
                    pk: entry.pk,
                    row: entry.row.unwrap_or(0..0),
                    entity: entry.entity,
                }));
            return Some(self.hand_over_bytes(out));
        }
        let bytes = &self.bytes;
        let slots = &mut self.slots;
        let folded = &mut self.folded;
        // Clearing costs the table's capacity; one huge tick (a bulk load) must not make every
        // later one pay for its size.
        if slots.capacity() > 4 * self.entries.len().max(1024) {
            *slots = HashTable::new();
        }
        slots.clear();
        folded.clear();
        slots.reserve(self.entries.len(), |&s| folded[s as usize].hash);
        folded.reserve(self.entries.len());
        for (i, entry) in self.entries.iter().enumerate() {
            let pk = slice(bytes, &entry.pk);
            let same_key = |&slot: &u32| slice(bytes, &folded[slot as usize].pk) == pk;
            // A system's in-place update of a row no reducer touched is final as it is.
            if i >= systems_from
                && entry.op == ChangeKind::Update
                && (slots.is_empty() || slots.find(entry.hash, same_key).is_none())
            {
                folded.push(Folded {
                    net: NetChange::Updated,
                    hash: entry.hash,
                    pk: entry.pk.clone(),
                    row: entry.row.clone(),
                    entity: entry.entity,
                });
                continue;
            }
            // One probe per entry: fold into the key's slot, or open one.
            match slots.entry(entry.hash, same_key, |&s| folded[s as usize].hash) {
                hash_table::Entry::Occupied(slot) => {
                    let f = &mut folded[*slot.get() as usize];
                    f.net = f.net.then(entry.op);
                    if entry.row.is_some() {
                        f.row.clone_from(&entry.row);
                    }
                    if entry.entity.is_some() {
                        f.entity = entry.entity;
                    }
                }
                hash_table::Entry::Vacant(slot) => {
                    // Growing rehashes by the hashes taken at write time, never by key bytes
                    // (and the table was sized for every entry, so it does not grow).
                    slot.insert(folded.len() as u32);
                    folded.push(Folded {
                        net: NetChange::first(entry.op),
                        hash: entry.hash,
                        pk: entry.pk.clone(),
                        row: entry.row.clone(),
                        entity: entry.entity,
                    });
                }
            }
        }
        out.entries.reserve(folded.len());
        for Folded {
            net,
            pk,
            row,
            entity,
            ..
        } in folded.drain(..)
        {
            let Some(kind) = net.kind() else { continue };
            let row = match (kind, row) {
                (ChangeKind::Delete, _) | (_, None) => 0..0,
                (_, Some(row)) => row,
            };
            out.entries.push(Entry {
                kind,
                pk,
                row,
                entity,
            });
        }
        self.entries.clear();
        if out.entries.is_empty() {
            // Every key's changes cancelled out: the arena stays, emptied.
            self.bytes.clear();
            return None;
        }
        Some(self.hand_over_bytes(out))
    }

    /// Moves the arena into `out`, whose entries point into it.
    fn hand_over_bytes(&mut self, mut out: TableChanges) -> TableChanges {
        // The arena itself becomes the change set's buffer, its entries pointing at the keys
        // and rows where the writes encoded them: nothing is copied. It keeps the bytes of
        // overwritten versions (a row written twice in the tick), a small price against a copy
        // of every live one. The next tick's arena starts with room for half as much again as
        // this one held, so a tick a little larger than the last does not regrow (and copy) it.
        let size = self.bytes.len();
        out.bytes = std::mem::replace(&mut self.bytes, Vec::with_capacity(size + size / 2));
        out
    }
}

/// One table's changes in one tick. Rows and keys live in one buffer; entries index into it
/// (the buffer may also hold bytes no entry points at, so equality compares the changes).
#[derive(Clone, Debug)]
pub struct TableChanges {
    table: TableId,
    name: &'static str,
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

/// One change, borrowed from a [`TableChanges`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowChange<'a> {
    /// What happened.
    pub kind: ChangeKind,
    /// The encoded primary key.
    pub pk: &'a [u8],
    /// The encoded row, for inserts and updates.
    pub row: Option<&'a [u8]>,
    /// The row's entity (for a delete, the one it had), when the change came from this engine.
    /// A hint for consumers that index rows densely; the primary key is the identity.
    pub entity: Option<Entity>,
}

impl PartialEq for TableChanges {
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table && self.name == other.name && self.iter().eq(other.iter())
    }
}

impl Eq for TableChanges {}

/// A decoded change of a typed table.
#[derive(Clone, Debug, PartialEq)]
pub enum RowOp<T: Table> {
    /// A new row.
    Insert(T),
    /// A row's new contents.
    Update(T),
    /// The primary key of a deleted row.
    Delete(T::Pk),
}

impl TableChanges {
    pub(crate) fn new(table: TableId, name: &'static str) -> Self {
        TableChanges {
            table,
            name,
            bytes: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// The table's id.
    pub fn table(&self) -> TableId {
        self.table
    }

    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Number of changed rows.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total encoded bytes of keys and rows.
    pub fn encoded_len(&self) -> usize {
        self.iter()
            .map(|c| c.pk.len() + c.row.map_or(0, <[u8]>::len))
            .sum()
    }

    /// The changes, in a deterministic order (first touch within the tick, reducer writes before
    /// system writes).
    pub fn iter(&self) -> impl Iterator<Item = RowChange<'_>> + '_ {
        self.entries.iter().map(|e| RowChange {
            kind: e.kind,
            pk: &self.bytes[e.pk.start as usize..e.pk.end as usize],
            row: (e.kind != ChangeKind::Delete)
                .then(|| &self.bytes[e.row.start as usize..e.row.end as usize]),
            entity: e.entity,
        })
    }

    /// Decodes the changes as rows of `T`.
    pub fn decode<T: Table>(&self) -> Result<Vec<RowOp<T>>, RowDecodeError> {
        self.iter()
            .map(|change| {
                Ok(match (change.kind, change.row) {
                    (ChangeKind::Insert, Some(row)) => RowOp::Insert(T::from_bytes(row)?),
                    (ChangeKind::Update, Some(row)) => RowOp::Update(T::from_bytes(row)?),
                    _ => RowOp::Delete(T::Pk::from_bytes(change.pk)?),
                })
            })
            .collect()
    }
}

/// Everything one tick changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The tick.
    pub tick: Tick,
    /// The tick's timestamp.
    pub timestamp: Timestamp,
    /// Tables with at least one change, in table-id order.
    pub tables: Vec<TableChanges>,
}

impl ChangeSet {
    /// The changes of table `T`, if any.
    pub fn table<T: Table>(&self) -> Option<&TableChanges> {
        self.tables.iter().find(|t| t.name == T::NAME)
    }

    /// Decoded changes of table `T` (empty if it did not change).
    pub fn rows<T: Table>(&self) -> Result<Vec<RowOp<T>>, RowDecodeError> {
        self.table::<T>()
            .map_or_else(|| Ok(Vec::new()), TableChanges::decode::<T>)
    }

    /// Total number of changed rows.
    pub fn len(&self) -> usize {
        self.tables.iter().map(TableChanges::len).sum()
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_changes_fold_to_the_tick_level_effect() {
        use ChangeKind::*;
        let fold = |ops: &[ChangeKind]| {
            ops[1..]
                .iter()
                .fold(NetChange::first(ops[0]), |acc, &op| acc.then(op))
        };
        assert_eq!(fold(&[Insert, Update, Update]), NetChange::Inserted);
        assert_eq!(fold(&[Insert, Delete]), NetChange::Cancelled);
        assert_eq!(fold(&[Insert, Delete, Insert]), NetChange::Inserted);
        assert_eq!(fold(&[Update, Delete]), NetChange::Deleted);
        assert_eq!(fold(&[Delete, Insert]), NetChange::Updated);
        assert_eq!(fold(&[Delete, Insert, Delete]), NetChange::Deleted);
        assert_eq!(fold(&[Update, Update]), NetChange::Updated);
    }

    #[test]
    fn the_log_folds_reducer_writes_drops_rolled_back_ones_and_passes_system_updates_through() {
        let mut log = ChangeLog::default();
        // Every key hashes alike: folding must tell keys apart by their bytes.
        let h = 7;
        log.push(ChangeKind::Insert, h, &1u32, Some(&10u32), None);
        log.push(ChangeKind::Update, h, &1u32, Some(&11u32), None);
        log.push(ChangeKind::Update, h, &2u32, Some(&20u32), None);
        let mark = log.begin_tx();
        log.push(ChangeKind::Delete, h, &2u32, None::<&u32>, None);
        log.truncate(mark);
        log.push(ChangeKind::Delete, h, &3u32, None::<&u32>, None);
        log.push(ChangeKind::Insert, h, &3u32, Some(&30u32), None);
        log.start_systems();
        log.push(ChangeKind::Update, h, &1u32, Some(&12u32), None);
        log.push(ChangeKind::Update, h, &4u32, Some(&40u32), None);
        let out = log.take(TableId(0), "t").unwrap();
        let got: Vec<(ChangeKind, u32, Option<u32>)> = out
            .iter()
            .map(|c| {
                (
                    c.kind,
                    u32::from_bytes(c.pk).unwrap(),
                    c.row.map(|r| u32::from_bytes(r).unwrap()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (ChangeKind::Insert, 1, Some(12)),
                (ChangeKind::Update, 2, Some(20)),
                (ChangeKind::Update, 3, Some(30)),
                (ChangeKind::Update, 4, Some(40)),
            ]
        );
        assert!(log.take(TableId(0), "t").is_none(), "taking clears the log");
    }

    #[test]
    fn a_tick_whose_changes_cancel_out_leaves_an_empty_log() {
        let mut log = ChangeLog::default();
        log.push(ChangeKind::Insert, 7, &1u32, Some(&10u32), None);
        log.push(ChangeKind::Delete, 7, &1u32, None::<&u32>, None);
        assert!(log.take(TableId(0), "t").is_none());
        assert!(log.bytes.is_empty() && log.entries.is_empty());
    }
}
