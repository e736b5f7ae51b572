//! The mirror cache: the rows a client's subscriptions cover, rebuilt from table update
//! payloads, and the callbacks fired on inserts, updates and deletes.
//!
//! [`Mirror`] needs no network: feed it `(table_id, payload)` pairs with [`Mirror::apply`]
//! and it returns what changed ([`MirrorChange`]); [`Callbacks::dispatch`] runs the callbacks
//! registered for those tables. Rows are found by their encoded primary key. Event tables
//! (`"event": true`) are never stored: their upserts come back as inserts only.
//!
//! Records name rows by per-connection handles after their first upsert
//! (`netcode/ROW_FORMAT.md` §7): the mirror keeps each table's [`RowHandles`] and stores rows
//! by handle, so a delta resolves its row with one index and copies no key (a moving crowd is
//! mostly deltas); one mirror follows one connection (a new connection starts from
//! [`Mirror::clear`]). An update costs one copy of the row (its old version stays valid for
//! the callbacks), into a spare row when the changes came back through [`Mirror::recycle`]:
//! `benches/mirror.rs` counts no allocation per delta of an avatar-shaped row that way, three
//! without recycling (the row, its values and its one string), six before rows were kept by
//! handle.
//!
//! A payload is applied all or nothing: if any record fails to decode or names a handle the
//! connection was not given, the mirror is left unchanged and an error returned. A delta or delete for a row the mirror does not hold
//! (which a correct server never sends) is skipped, logged and counted in
//! [`MirrorStats::skipped_records`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use orrery_row::wire::{DecodedPayload, HandleRecord, RowHandles, WireLayout, WireRow};
use orrery_row::{ModuleSchema, RowDecodeError, TableSchema, Value, values_to_json};
use serde::de::DeserializeOwned;

use crate::error::MirrorError;

/// A table's schema and wire layout, shared by its rows.
#[derive(Debug)]
struct TableInfo {
    schema: TableSchema,
    layout: WireLayout,
}

#[derive(Debug)]
struct RowData {
    /// Shared with the table's key index and with the row's later versions.
    pk: Arc<[u8]>,
    wire: WireRow,
}

/// A row of the mirror: a cheap-to-clone snapshot (reference-counted), still valid after the
/// mirror changes.
#[derive(Clone)]
pub struct Row {
    table: Arc<TableInfo>,
    data: Arc<RowData>,
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("table", &self.table.schema.name)
            .field("values", &self.data.wire.columns)
            .finish()
    }
}

impl Row {
    /// The row's table.
    pub fn table(&self) -> &TableSchema {
        &self.table.schema
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table.schema.name
    }

    /// The table's id.
    pub fn table_id(&self) -> u32 {
        self.table.schema.id
    }

    /// The encoded primary key (row format): the mirror's key for this row.
    pub fn pk_bytes(&self) -> &[u8] {
        &self.data.pk
    }

    /// Column values in declaration order (quantized columns dequantized).
    pub fn values(&self) -> &[Value] {
        &self.data.wire.columns
    }

    /// The value of the column named `column`.
    pub fn get(&self, column: &str) -> Option<&Value> {
        let (i, _) = self.table.schema.column(column)?;
        self.data.wire.columns.get(i)
    }

    /// The row as decoded from the wire, with the quantized units deltas apply to.
    pub fn wire_row(&self) -> &WireRow {
        &self.data.wire
    }

    /// The row as a JSON object, column name → value (the engine's JSON mapping).
    pub fn to_json(&self) -> serde_json::Value {
        values_to_json(&self.table.schema, &self.data.wire.columns)
    }

    /// The row as a Rust type, through [`Row::to_json`] (field names = column names).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, MirrorError> {
        serde_json::from_value(self.to_json()).map_err(|e| MirrorError::Deserialize {
            table: self.table.schema.name.clone(),
            error: e.to_string(),
        })
    }

    /// The row in the exact row format (columns in declaration order; quantized columns as
    /// their dequantized floats): what crosses the FFI boundary with the table id.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.data.wire.to_row_bytes(&self.table.layout) {
            Ok(bytes) => bytes,
            Err(error) => {
                // Unreachable: the values were decoded with these very types.
                tracing::error!(table = self.table.schema.name, %error, "row does not re-encode");
                Vec::new()
            }
        }
    }
}

/// One change a payload made to the mirror.
#[derive(Clone, Debug)]
pub enum MirrorChange {
    /// A row the mirror did not hold (for event tables: every row; not stored).
    Insert(Row),
    /// A row the mirror held, replaced by an upsert or changed by a delta.
    Update {
        /// The row before.
        old: Row,
        /// The row after.
        new: Row,
    },
    /// A row removed (deleted on the server, or out of the client's view).
    Delete(Row),
}

impl MirrorChange {
    /// The table id of the changed row.
    pub fn table_id(&self) -> u32 {
        match self {
            MirrorChange::Insert(r)
            | MirrorChange::Delete(r)
            | MirrorChange::Update { new: r, .. } => r.table_id(),
        }
    }
}

/// Mirror counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Payloads applied.
    pub payloads: u64,
    /// Payloads refused (undecodable or for an unknown table).
    pub rejected_payloads: u64,
    /// Upsert records applied.
    pub upserts: u64,
    /// Delta records applied.
    pub deltas: u64,
    /// Delete records applied.
    pub deletes: u64,
    /// Records skipped: deltas or deletes through a handle whose row the mirror does not hold
    /// (a hostile server's: see the module docs), deltas that do not fit their row.
    pub skipped_records: u64,
    /// Bytes of payloads applied.
    pub bytes: u64,
}

/// One table's rows, stored by the handle the connection names them with (records resolve
/// with one index, and a delta never touches the key index), plus the key index for lookups
/// and ordered iteration.
#[derive(Debug)]
struct MirrorTable {
    info: Arc<TableInfo>,
    by_handle: Vec<Option<Arc<RowData>>>,
    by_pk: BTreeMap<Arc<[u8]>, u32>,
    handles: RowHandles,
    /// Old versions given back by [`Mirror::recycle`] that nobody else holds: the next
    /// updates copy into them instead of allocating.
    spare: Vec<Arc<RowData>>,
    /// Rows of the previous connection not yet sent again by the current one
    /// ([`Mirror::detach`]): still visible, by key, until sent again or dropped.
    detached: BTreeMap<Arc<[u8]>, Arc<RowData>>,
}

/// Spare rows kept per table: enough for a payload's updates, without holding on to memory a
/// burst once needed.
const MAX_SPARE_ROWS: usize = 128;

impl MirrorTable {
    fn new(table: &TableSchema) -> Self {
        MirrorTable {
            info: Arc::new(TableInfo {
                layout: WireLayout::new(table),
                schema: table.clone(),
            }),
            by_handle: Vec::new(),
            by_pk: BTreeMap::new(),
            handles: RowHandles::new(table.event),
            spare: Vec::new(),
            detached: BTreeMap::new(),
        }
    }

    /// A copy of `current` with `change` made to it: a spare row overwritten in place if
    /// there is one, else a new one.
    fn changed_copy(
        spare: &mut Vec<Arc<RowData>>,
        current: &RowData,
        change: impl FnOnce(&mut WireRow) -> Result<(), RowDecodeError>,
    ) -> Result<Arc<RowData>, RowDecodeError> {
        while let Some(mut row) = spare.pop() {
            if let Some(data) = Arc::get_mut(&mut row) {
                data.pk.clone_from(&current.pk);
                data.wire.clone_from(&current.wire);
                change(&mut data.wire)?;
                return Ok(row);
            }
        }
        let mut wire = current.wire.clone();
        change(&mut wire)?;
        Ok(Arc::new(RowData {
            pk: current.pk.clone(),
            wire,
        }))
    }

    fn keep_spare(&mut self, row: Row) {
        let mut data = row.data;
        if self.spare.len() < MAX_SPARE_ROWS && Arc::get_mut(&mut data).is_some() {
            self.spare.push(data);
        }
    }

    fn snapshot(&self, data: Arc<RowData>) -> Row {
        Row {
            table: self.info.clone(),
            data,
        }
    }

    fn rows(&self) -> Box<dyn Iterator<Item = Row> + '_> {
        let bound = self.by_pk.iter().filter_map(|(pk, &handle)| {
            let data = self.by_handle.get(handle as usize)?.clone()?;
            Some((pk.clone(), data))
        });
        if self.detached.is_empty() {
            return Box::new(bound.map(|(_, data)| self.snapshot(data)));
        }
        // Between connections (rare, short): both sets, merged in key order.
        let mut all: Vec<(Arc<[u8]>, Arc<RowData>)> = bound
            .chain(
                self.detached
                    .iter()
                    .map(|(pk, data)| (pk.clone(), data.clone())),
            )
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Box::new(all.into_iter().map(|(_, data)| self.snapshot(data)))
    }

    fn len(&self) -> usize {
        self.by_pk.len() + self.detached.len()
    }

    fn get(&self, pk: &[u8]) -> Option<Row> {
        let data = match self.by_pk.get(pk) {
            Some(&handle) => self.by_handle.get(handle as usize)?.clone()?,
            None => self.detached.get(pk)?.clone(),
        };
        Some(self.snapshot(data))
    }

    /// Moves every row to `detached` and forgets the handles (see [`Mirror::detach`]).
    fn detach(&mut self) {
        for (pk, handle) in std::mem::take(&mut self.by_pk) {
            if let Some(data) = self
                .by_handle
                .get_mut(handle as usize)
                .and_then(Option::take)
            {
                self.detached.insert(pk, data);
            }
        }
        self.by_handle.clear();
        self.handles = RowHandles::new(self.info.schema.event);
    }

    /// Stores `wire` as the row named `pk`, now held under `handle`; returns the version it
    /// replaces. A correct server names a held row by one handle at a time; should a hostile
    /// one bind a second handle to it, the row moves to the new handle and the old one names
    /// nothing the mirror holds.
    fn upsert(
        &mut self,
        handle: u32,
        pk: Vec<u8>,
        wire: WireRow,
    ) -> (Arc<RowData>, Option<Arc<RowData>>) {
        let index = handle as usize;
        if self.by_handle.len() <= index {
            self.by_handle.resize(index + 1, None);
        }
        let stale = self.by_handle[index].take();
        let (key, old) = match self.by_pk.get_key_value(pk.as_slice()) {
            Some((key, &held)) => {
                let old = if held == handle {
                    stale.clone()
                } else {
                    self.by_handle[held as usize].take()
                };
                (key.clone(), old)
            }
            None => match self.detached.remove_entry(pk.as_slice()) {
                // Sent again by the connection after a zone move: the same row.
                Some((key, old)) => (key, Some(old)),
                None => (Arc::from(pk), None),
            },
        };
        if let Some(stale) = stale.filter(|s| s.pk != key) {
            self.by_pk.remove(&stale.pk);
        }
        self.by_pk.insert(key.clone(), handle);
        let data = Arc::new(RowData { pk: key, wire });
        self.by_handle[index] = Some(data.clone());
        (data, old)
    }

    fn clear(&mut self) {
        self.by_handle.clear();
        self.by_pk.clear();
        self.spare.clear();
        self.detached.clear();
        self.handles = RowHandles::new(self.info.schema.event);
    }
}

/// The client's cache of subscribed rows (see the module docs).
#[derive(Debug)]
pub struct Mirror {
    schema: Arc<ModuleSchema>,
    tables: Vec<MirrorTable>,
    by_id: HashMap<u32, usize>,
    by_name: HashMap<String, usize>,
    stats: MirrorStats,
    /// Reused by every payload, so decoding stops allocating once it has grown.
    decoded: DecodedPayload,
    /// A change list given back by [`Mirror::recycle`], for the next payload.
    spare_changes: Vec<MirrorChange>,
}

impl Mirror {
    /// An empty mirror for `schema`.
    pub fn new(schema: Arc<ModuleSchema>) -> Self {
        let tables: Vec<MirrorTable> = schema.tables.iter().map(MirrorTable::new).collect();
        let by_id = schema
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id, i))
            .collect();
        let by_name = schema
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Mirror {
            schema,
            tables,
            by_id,
            by_name,
            stats: MirrorStats::default(),
            decoded: DecodedPayload::default(),
            spare_changes: Vec::new(),
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<ModuleSchema> {
        &self.schema
    }

    /// Counters.
    pub fn stats(&self) -> MirrorStats {
        self.stats
    }

    /// The id of the table named `table`.
    pub fn table_id(&self, table: &str) -> Result<u32, MirrorError> {
        Ok(self.table(table)?.info.schema.id)
    }

    fn table(&self, name: &str) -> Result<&MirrorTable, MirrorError> {
        self.by_name
            .get(name)
            .map(|&i| &self.tables[i])
            .ok_or_else(|| MirrorError::UnknownTable(name.to_owned()))
    }

    fn table_by_id(&self, id: u32) -> Result<&MirrorTable, MirrorError> {
        self.by_id
            .get(&id)
            .map(|&i| &self.tables[i])
            .ok_or(MirrorError::UnknownTableId(id))
    }

    /// Applies one table update payload (published-row records) to table `table_id` and
    /// returns the changes, in record order. All or nothing: on error the mirror is unchanged.
    pub fn apply(
        &mut self,
        table_id: u32,
        payload: &[u8],
    ) -> Result<Vec<MirrorChange>, MirrorError> {
        let Some(&index) = self.by_id.get(&table_id) else {
            self.stats.rejected_payloads += 1;
            return Err(MirrorError::UnknownTableId(table_id));
        };
        let table = &mut self.tables[index];
        let layout = &table.info.layout;
        if let Err(error) = layout.decode_payload(&mut table.handles, payload, &mut self.decoded) {
            self.stats.rejected_payloads += 1;
            return Err(MirrorError::Decode {
                table: table.info.schema.name.clone(),
                table_id,
                len: payload.len(),
                error,
            });
        }
        self.stats.payloads += 1;
        self.stats.bytes += payload.len() as u64;
        let event = table.info.schema.event;
        let rebinding = !table.detached.is_empty();
        let (records, column_changes) = self.decoded.drain();
        let mut changes = std::mem::take(&mut self.spare_changes);
        changes.reserve(records.len());
        for record in records {
            match record {
                HandleRecord::Upsert { handle, pk, row } => {
                    self.stats.upserts += 1;
                    if event {
                        let data = Arc::new(RowData {
                            pk: pk.into(),
                            wire: row,
                        });
                        changes.push(MirrorChange::Insert(table.snapshot(data)));
                        continue;
                    }
                    match table.upsert(handle, pk, row) {
                        // A row sent again after a zone move, unchanged: nothing happened.
                        (new, Some(old)) if rebinding && new.wire == old.wire => {}
                        (new, Some(old)) => changes.push(MirrorChange::Update {
                            old: table.snapshot(old),
                            new: table.snapshot(new),
                        }),
                        (new, None) => changes.push(MirrorChange::Insert(table.snapshot(new))),
                    }
                }
                HandleRecord::Delta {
                    handle,
                    changes: range,
                    ..
                } => {
                    let Some(slot) = table
                        .by_handle
                        .get_mut(handle as usize)
                        .and_then(Option::as_mut)
                    else {
                        self.stats.skipped_records += 1;
                        tracing::warn!(
                            table = table.info.schema.name,
                            handle,
                            "delta for a row the mirror does not hold; skipped"
                        );
                        continue;
                    };
                    let delta = column_changes.get(range).unwrap_or_default();
                    let layout = &table.info.layout;
                    let new = match MirrorTable::changed_copy(&mut table.spare, slot, |wire| {
                        wire.apply_delta(layout, delta)
                    }) {
                        Ok(new) => new,
                        Err(error) => {
                            self.stats.skipped_records += 1;
                            tracing::warn!(table = table.info.schema.name, %error, "delta skipped");
                            continue;
                        }
                    };
                    self.stats.deltas += 1;
                    let old = std::mem::replace(slot, new.clone());
                    changes.push(MirrorChange::Update {
                        old: table.snapshot(old),
                        new: table.snapshot(new),
                    });
                }
                HandleRecord::Delete { handle, pk } => {
                    let held = table
                        .by_handle
                        .get_mut(handle as usize)
                        .and_then(Option::take);
                    match held {
                        Some(old) => {
                            self.stats.deletes += 1;
                            table.by_pk.remove(&old.pk);
                            changes.push(MirrorChange::Delete(table.snapshot(old)));
                        }
                        None => {
                            // (Not an event table's: the decoder refuses deletes there.)
                            self.stats.skipped_records += 1;
                            tracing::warn!(
                                table = table.info.schema.name,
                                pk = ?pk,
                                "delete for a row the mirror does not hold; skipped"
                            );
                        }
                    }
                }
            }
        }
        Ok(changes)
    }

    /// Gives back changes returned by [`Mirror::apply`] once their callbacks ran: the
    /// replaced and removed rows no one else holds (a [`Row`] kept by a callback stays valid)
    /// become spare rows that later updates overwrite instead of allocating, so a mirror
    /// following a moving crowd stops allocating per delta. Optional: changes simply dropped
    /// cost an allocation per update instead.
    pub fn recycle(&mut self, mut changes: Vec<MirrorChange>) {
        for change in changes.drain(..) {
            let old = match change {
                MirrorChange::Update { old, new } => {
                    drop(new);
                    old
                }
                MirrorChange::Delete(old) => old,
                MirrorChange::Insert(_) => continue,
            };
            if let Some(&index) = self.by_id.get(&old.table_id())
                && Arc::ptr_eq(&self.tables[index].info, &old.table)
            {
                self.tables[index].keep_spare(old);
            }
        }
        if changes.capacity() > self.spare_changes.capacity() {
            self.spare_changes = changes;
        }
    }

    /// Rows held for the table named `table`.
    pub fn count(&self, table: &str) -> Result<usize, MirrorError> {
        Ok(self.table(table)?.len())
    }

    /// Rows held across all tables.
    pub fn total_rows(&self) -> usize {
        self.tables.iter().map(MirrorTable::len).sum()
    }

    /// Prepares to mirror a new connection to the same world (a zone move): the rows stay
    /// visible, the row handles of the old connection are forgotten. A row the new
    /// connection sends again replaces its detached version (an update, or no change when
    /// equal); [`Mirror::drop_detached`] removes the rest.
    pub fn detach(&mut self) {
        for table in &mut self.tables {
            table.detach();
        }
    }

    /// Rows detached by [`Mirror::detach`] and not sent again since.
    pub fn detached_rows(&self) -> usize {
        self.tables.iter().map(|t| t.detached.len()).sum()
    }

    /// Removes the rows the new connection did not send again (out of view there, or gone)
    /// and returns their deletions, per table id.
    pub fn drop_detached(&mut self) -> Vec<(u32, Vec<MirrorChange>)> {
        let mut dropped = Vec::new();
        for table in &mut self.tables {
            if table.detached.is_empty() {
                continue;
            }
            let rows = std::mem::take(&mut table.detached);
            self.stats.deletes += rows.len() as u64;
            let changes = rows
                .into_values()
                .map(|data| MirrorChange::Delete(table.snapshot(data)))
                .collect();
            dropped.push((table.info.schema.id, changes));
        }
        dropped
    }

    /// The rows of the table named `table`, ordered by encoded primary key.
    pub fn iter(&self, table: &str) -> Result<impl Iterator<Item = Row> + '_, MirrorError> {
        Ok(self.table(table)?.rows())
    }

    /// The rows of table `table_id` (for the FFI layer, which speaks table ids).
    pub fn iter_by_id(&self, table_id: u32) -> Result<impl Iterator<Item = Row> + '_, MirrorError> {
        Ok(self.table_by_id(table_id)?.rows())
    }

    /// Every row of `table` deserialized into `T` (see [`Row::deserialize`]).
    pub fn rows<T: DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, MirrorError> {
        self.iter(table)?.map(|r| r.deserialize()).collect()
    }

    /// The row of `table` whose primary key encodes to `pk` (row format).
    pub fn get_by_pk_bytes(&self, table_id: u32, pk: &[u8]) -> Result<Option<Row>, MirrorError> {
        Ok(self.table_by_id(table_id)?.get(pk))
    }

    /// The row of `table` whose primary key is `pk` (JSON, in the key column's mapping:
    /// `5`, `"alice"`, a 64-hex identity, ...).
    pub fn find_row(
        &self,
        table: &str,
        pk: &serde_json::Value,
    ) -> Result<Option<Row>, MirrorError> {
        let t = self.table(table)?;
        let key = pk_bytes(&t.info.schema, pk)?;
        Ok(t.get(&key))
    }

    /// [`Mirror::find_row`] deserialized into `T`.
    pub fn find<T: DeserializeOwned>(
        &self,
        table: &str,
        pk: &serde_json::Value,
    ) -> Result<Option<T>, MirrorError> {
        self.find_row(table, pk)?
            .map(|r| r.deserialize())
            .transpose()
    }

    /// Forgets every row and row handle (before mirroring a new connection).
    pub fn clear(&mut self) {
        for t in &mut self.tables {
            t.clear();
        }
    }
}

/// Encodes a primary key given as JSON for `table`.
fn pk_bytes(table: &TableSchema, pk: &serde_json::Value) -> Result<Vec<u8>, MirrorError> {
    let key_error = |error| MirrorError::Key {
        table: table.name.clone(),
        error,
    };
    let column = table.primary_key_column().ok_or_else(|| {
        key_error(orrery_row::ValueError::Mismatch {
            path: table.name.clone(),
            expected: format!("a primary key column (index {})", table.primary_key),
            got: format!("{} column(s)", table.columns.len()),
        })
    })?;
    Value::from_json(&column.ty, pk, &column.name)
        .and_then(|v| v.to_bytes(&column.ty))
        .map_err(key_error)
}

/// Identifies a registered callback (to remove it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallbackId(u64);

type InsertFn = Box<dyn FnMut(&Row) + Send>;
type UpdateFn = Box<dyn FnMut(&Row, &Row) + Send>;
type DeleteFn = Box<dyn FnMut(&Row) + Send>;

/// Insert, update and delete callbacks by table id.
#[derive(Default)]
pub struct Callbacks {
    next: u64,
    insert: HashMap<u32, Vec<(CallbackId, InsertFn)>>,
    update: HashMap<u32, Vec<(CallbackId, UpdateFn)>>,
    delete: HashMap<u32, Vec<(CallbackId, DeleteFn)>>,
    /// Removals of ids this registry did not hold (applied on [`Callbacks::merge`]).
    orphan_removals: Vec<CallbackId>,
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn count<T>(m: &HashMap<u32, Vec<T>>) -> usize {
            m.values().map(Vec::len).sum()
        }
        f.debug_struct("Callbacks")
            .field("insert", &count(&self.insert))
            .field("update", &count(&self.update))
            .field("delete", &count(&self.delete))
            .finish()
    }
}

impl Callbacks {
    /// No callbacks.
    pub fn new() -> Self {
        Self::default()
    }

    fn id(&mut self) -> CallbackId {
        self.next += 1;
        CallbackId(self.next)
    }

    /// Calls `f` for every row inserted into table `table_id` (every row of an event table).
    pub fn on_insert(&mut self, table_id: u32, f: impl FnMut(&Row) + Send + 'static) -> CallbackId {
        let id = self.id();
        self.insert
            .entry(table_id)
            .or_default()
            .push((id, Box::new(f)));
        id
    }

    /// Calls `f(old, new)` for every row of table `table_id` that changes.
    pub fn on_update(
        &mut self,
        table_id: u32,
        f: impl FnMut(&Row, &Row) + Send + 'static,
    ) -> CallbackId {
        let id = self.id();
        self.update
            .entry(table_id)
            .or_default()
            .push((id, Box::new(f)));
        id
    }

    /// Calls `f` for every row removed from table `table_id`.
    pub fn on_delete(&mut self, table_id: u32, f: impl FnMut(&Row) + Send + 'static) -> CallbackId {
        let id = self.id();
        self.delete
            .entry(table_id)
            .or_default()
            .push((id, Box::new(f)));
        id
    }

    /// Removes a callback; false if no callback has this id.
    pub fn remove(&mut self, id: CallbackId) -> bool {
        let found = self.remove_held(id);
        if !found {
            self.orphan_removals.push(id);
        }
        found
    }

    fn remove_held(&mut self, id: CallbackId) -> bool {
        let mut found = false;
        for list in self.insert.values_mut() {
            list.retain(|(i, _)| {
                found |= *i == id;
                *i != id
            });
        }
        for list in self.update.values_mut() {
            list.retain(|(i, _)| {
                found |= *i == id;
                *i != id
            });
        }
        for list in self.delete.values_mut() {
            list.retain(|(i, _)| {
                found |= *i == id;
                *i != id
            });
        }
        found
    }

    /// Whether any callback is registered for `table_id`.
    pub fn has_any(&self, table_id: u32) -> bool {
        [
            self.insert.get(&table_id).map(Vec::len),
            self.update.get(&table_id).map(Vec::len),
            self.delete.get(&table_id).map(Vec::len),
        ]
        .iter()
        .any(|n| n.unwrap_or(0) > 0)
    }

    /// Runs the callbacks registered for each change, in order.
    pub fn dispatch(&mut self, changes: &[MirrorChange]) {
        for change in changes {
            let table = change.table_id();
            match change {
                MirrorChange::Insert(row) => {
                    for (_, f) in self.insert.get_mut(&table).into_iter().flatten() {
                        f(row);
                    }
                }
                MirrorChange::Update { old, new } => {
                    for (_, f) in self.update.get_mut(&table).into_iter().flatten() {
                        f(old, new);
                    }
                }
                MirrorChange::Delete(row) => {
                    for (_, f) in self.delete.get_mut(&table).into_iter().flatten() {
                        f(row);
                    }
                }
            }
        }
    }

    /// Moves `other`'s callbacks into `self` and applies the removals `other` could not
    /// (ids it did not hold). Ids stay unique when `other` took them from `self` (the async
    /// client swaps an empty registry in while callbacks run, so callbacks may register more).
    pub fn merge(&mut self, mut other: Callbacks) {
        for (table, list) in other.insert.drain() {
            self.insert.entry(table).or_default().extend(list);
        }
        for (table, list) in other.update.drain() {
            self.update.entry(table).or_default().extend(list);
        }
        for (table, list) in other.delete.drain() {
            self.delete.entry(table).or_default().extend(list);
        }
        for id in other.orphan_removals.drain(..) {
            self.remove_held(id);
        }
        self.next = self.next.max(other.next);
    }

    /// An empty registry whose ids continue after this one's (to register into while this
    /// one is busy dispatching).
    pub fn continuation(&self) -> Callbacks {
        Callbacks {
            next: self.next,
            ..Callbacks::default()
        }
    }
}
