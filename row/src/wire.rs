//! The published-row wire format: how subscription updates reach clients
//! (`ServerMessage::TableUpdate.rows` and `SubscriptionApplied.tables[..].rows`).
//!
//! A table update payload is a sequence of records, each
//!
//! ```text
//! handle: varint  the client's handle for the row (per connection and table, see below)
//! header: varint  = kind | (column_mask << 2)     kind: 0 upsert, 1 delta, 2 delete
//! pk:     upsert only: the primary key in the row format
//! body:   upsert → every column in wire form
//!         delta  → only the columns whose bit is set in column_mask, in column order;
//!                  quantized columns as the zigzag varint *difference* of their quantized
//!                  units from the previous value the client holds, others in wire form
//!         delete → nothing
//! ```
//!
//! Wire form is the row format except for `#[quantize(step)]` float columns (`f32`, `f64`,
//! `Vec2`, `Vec3`): each component is the zigzag varint of `round(value / step)` (non-finite
//! results as 0). Tables with more than [`MAX_DELTA_COLUMNS`] columns only ever get upserts.
//!
//! A row is named by its primary key once, in the upsert that brings it to a client, and by a
//! small per-client **handle** after that: deltas and deletes carry no key, so a moving row
//! costs a few bytes whatever its key (a 32-byte identity key was most of a moving avatar's
//! record). The server gives a row the lowest free handle of the client's table (LIFO reuse of
//! freed ones, so handles stay below the most rows the client ever held at once) and frees it
//! with the delete; [`RowHandles`] is the client's side. Event tables bind no handles (every
//! record is an upsert with handle 0).
//!
//! A delta record is only sent to a client that holds exactly the previous version of the row,
//! so a delta's header and body are shared by every such client ([`WireLayout::delta_body`]);
//! only the handle in front is the client's own. Others get an upsert. The publisher encodes with
//! [`WireLayout::encode_row`] and the record builders; clients decode with
//! [`WireLayout::decode_records`] (records carry keys) or [`WireLayout::decode_payload`]
//! (records carry handles, into reused buffers), and [`WireRow`] keeps each quantized column's units so
//! deltas apply exactly. Specified for client authors in `netcode/ROW_FORMAT.md`.

use std::ops::Range;

use smallvec::SmallVec;

use crate::codec::{
    OrreryType, RowDecodeError, TypeDesc, read_varint, unzigzag, write_varint, zigzag,
};
use crate::schema::TableSchema;
use crate::value::{Value, ValueError};

/// Record kind: the whole row (new to the client, or replacing what it holds).
pub const UPSERT: u64 = 0;
/// Record kind: changed columns of a row the client holds.
pub const DELTA: u64 = 1;
/// Record kind: the row is gone (deleted, or out of the client's view).
pub const DELETE: u64 = 2;
/// Record kind: the columns of a row the client holds that changed since the version it
/// holds, with their whole values (quantized ones as absolute units, as in a full row): for a
/// client too far behind for a delta, without the columns that never changed (keys, names).
pub const REBASE: u64 = 3;

/// The handle every event-table record carries (event rows are never held, so bind nothing).
pub const EVENT_HANDLE: u32 = 0;

/// Most columns a delta mask can name (a `u64` varint header keeps 62 bits for the mask).
pub const MAX_DELTA_COLUMNS: usize = 62;

/// A quantized column's units: one per float component (unused components are 0).
pub type Units = [i64; 3];

/// `round(value / step)` for an `f32` component (in `f32` arithmetic; ties away from zero;
/// out-of-range results saturate to `i64::MIN`/`i64::MAX`; a non-finite result is 0).
pub fn quantize_f32(value: f32, step: f32) -> i64 {
    let q = value / step;
    if !q.is_finite() {
        return 0;
    }
    // Round half away from zero exactly like `f32::round`, without its libm call on baseline
    // x86-64: truncate (one instruction), then look at the fraction, which is exact (below
    // 2^23 the subtraction is exact; above it every float is an integer). Saturates.
    let t = q as i64;
    let frac = q - t as f32;
    if frac >= 0.5 {
        t.saturating_add(1)
    } else if frac <= -0.5 {
        t.saturating_sub(1)
    } else {
        t
    }
}

/// `round(value / step)` for an `f64` column (in `f64` arithmetic with the step widened to
/// `f64`; otherwise as [`quantize_f32`]).
pub fn quantize_f64(value: f64, step: f32) -> i64 {
    let q = (value / f64::from(step)).round();
    if q.is_finite() { q as i64 } else { 0 }
}

/// One column of a [`WireLayout`].
#[derive(Clone, Debug, PartialEq)]
pub struct WireColumn {
    /// The column's type.
    pub ty: TypeDesc,
    /// Quantization step, only for float columns (`f32`, `f64`, `Vec2`, `Vec3`) whose schema
    /// sets `quantize`; `quantize` on other types is ignored.
    pub step: Option<f32>,
}

/// A table's wire layout: column types and quantization steps, and the primary key column.
#[derive(Clone, Debug, PartialEq)]
pub struct WireLayout {
    columns: Vec<WireColumn>,
    pk_column: usize,
    /// [`WireLayout::quantized_columns`], computed once: every decoded row carries it.
    quantized: u64,
}

/// A row as a client holds it: each column decoded (quantized columns dequantized), plus the
/// quantized units the next delta is relative to.
#[derive(Debug, PartialEq)]
pub struct WireRow {
    /// Column values in declaration order.
    pub columns: Vec<Value>,
    /// Bit `i` set for each quantized column `i` (of the first 64: wider tables get no deltas).
    quantized: u64,
    /// The units of each quantized column, in column order: kept inline for up to two such
    /// columns, so copying a row (a client's snapshot per update) allocates only its values.
    units: SmallVec<[Units; 2]>,
}

/// One changed column of a delta record.
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnChange {
    /// An unquantized column's new value.
    Value {
        /// Column index.
        column: usize,
        /// The new value.
        value: Value,
    },
    /// A quantized column's change in units (added to the units the client holds, wrapping).
    Units {
        /// Column index.
        column: usize,
        /// Per-component differences.
        diff: Units,
    },
    /// A quantized column's new units (a [`REBASE`] record: replacing what the client holds).
    UnitsSet {
        /// Column index.
        column: usize,
        /// Per-component units.
        units: Units,
    },
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum WireRecord {
    /// The row (new to the client, or replacing what it holds).
    Upsert {
        /// Encoded primary key (row format).
        pk: Vec<u8>,
        /// The row.
        row: WireRow,
    },
    /// Changes to a row the client holds.
    Delta {
        /// Encoded primary key (row format).
        pk: Vec<u8>,
        /// The mask of changed columns (bit `i` = column `i`).
        mask: u64,
        /// The changed columns, in column order.
        changes: Vec<ColumnChange>,
    },
    /// The row is gone (deleted, or out of the client's view).
    Delete {
        /// Encoded primary key (row format).
        pk: Vec<u8>,
    },
}

impl WireRecord {
    /// The record's encoded primary key.
    pub fn pk(&self) -> &[u8] {
        match self {
            WireRecord::Upsert { pk, .. }
            | WireRecord::Delta { pk, .. }
            | WireRecord::Delete { pk } => pk,
        }
    }
}

impl WireLayout {
    /// The layout of `table`.
    pub fn new(table: &TableSchema) -> Self {
        let columns: Vec<WireColumn> = table
            .columns
            .iter()
            .map(|c| WireColumn {
                step: c.quantize.filter(|_| c.ty.float_components().is_some()),
                ty: c.ty.clone(),
            })
            .collect();
        let quantized = columns
            .iter()
            .enumerate()
            .filter(|(i, column)| *i < 64 && column.step.is_some())
            .fold(0, |mask, (i, _)| mask | 1 << i);
        WireLayout {
            columns,
            pk_column: table.primary_key,
            quantized,
        }
    }

    /// The columns.
    pub fn columns(&self) -> &[WireColumn] {
        &self.columns
    }

    /// The primary key column's index.
    pub fn pk_column(&self) -> usize {
        self.pk_column
    }

    /// Whether delta records can describe this table (at most [`MAX_DELTA_COLUMNS`] columns).
    pub fn supports_delta(&self) -> bool {
        self.columns.len() <= MAX_DELTA_COLUMNS
    }

    // ---- encoding (server side; tests) ----

    /// Transcodes an exact row (row format) into wire form, appending it to `out` and
    /// returning the byte range of each column inside `out` relative to where the row starts.
    pub fn encode_row(
        &self,
        exact: &[u8],
        out: &mut Vec<u8>,
        bounds: &mut Vec<Range<u32>>,
    ) -> Result<(), RowDecodeError> {
        self.encode_row_offsets(exact, out, bounds, &mut Vec::new())
    }

    /// [`WireLayout::encode_row`], also recording where each column starts in `exact`.
    pub fn encode_row_offsets(
        &self,
        exact: &[u8],
        out: &mut Vec<u8>,
        bounds: &mut Vec<Range<u32>>,
        exact_starts: &mut Vec<u32>,
    ) -> Result<(), RowDecodeError> {
        bounds.clear();
        exact_starts.clear();
        let base = out.len();
        let mut input = exact;
        for column in &self.columns {
            exact_starts.push((exact.len() - input.len()) as u32);
            let start = (out.len() - base) as u32;
            match column.step {
                Some(step) => {
                    let n = column.ty.float_components().unwrap_or(0);
                    for unit in read_units(&column.ty, step, &mut input)?.iter().take(n) {
                        write_varint(out, zigzag(*unit));
                    }
                }
                None => {
                    let before = input;
                    Value::skip(&column.ty, &mut input)?;
                    out.extend_from_slice(&before[..before.len() - input.len()]);
                }
            }
            bounds.push(start..(out.len() - base) as u32);
        }
        if !input.is_empty() {
            return Err(RowDecodeError::TrailingBytes(input.len()));
        }
        Ok(())
    }

    /// Appends an upsert record for the row the client knows as `handle` (`pk` in row format,
    /// `wire_row` from [`WireLayout::encode_row`]).
    pub fn upsert_record(&self, handle: u32, pk: &[u8], wire_row: &[u8], out: &mut Vec<u8>) {
        write_varint(out, u64::from(handle));
        write_varint(out, UPSERT);
        out.extend_from_slice(pk);
        out.extend_from_slice(wire_row);
    }

    /// Appends a delete record for the row the client knows as `handle`.
    pub fn delete_record(handle: u32, out: &mut Vec<u8>) {
        write_varint(out, u64::from(handle));
        write_varint(out, DELETE);
    }

    /// Appends a delta record for the row the client knows as `handle`, taking it from `old`
    /// to `new` (see [`WireLayout::delta_body`]). Returns false, appending nothing, if no column
    /// changed or the table is too wide for a mask.
    pub fn delta_record(
        &self,
        handle: u32,
        old: (&[u8], &[Range<u32>]),
        new: (&[u8], &[Range<u32>]),
        out: &mut Vec<u8>,
    ) -> bool {
        let start = out.len();
        write_varint(out, u64::from(handle));
        let appended = self.delta_body(old, new, out);
        if !appended {
            out.truncate(start);
        }
        appended
    }

    /// Appends the part of a delta record after the handle (header and changed columns)
    /// taking a client from `old` to `new` (wire rows with their column bounds, from
    /// [`WireLayout::encode_row`]): the same bytes for every client holding `old`. Returns
    /// false, appending nothing, if no column changed or the table is too wide for a mask.
    pub fn delta_body(
        &self,
        old: (&[u8], &[Range<u32>]),
        new: (&[u8], &[Range<u32>]),
        out: &mut Vec<u8>,
    ) -> bool {
        self.delta_body_mask(old, new, out) != 0
    }

    /// Appends a [`REBASE`] record's header and body (all but the client's handle): the
    /// columns in `mask` of `row` (a wire row with its column bounds) with their whole values.
    /// Returns false, appending nothing, if `mask` is empty or names columns the table lacks,
    /// or the table is too wide for a mask.
    pub fn rebase_body(&self, row: (&[u8], &[Range<u32>]), mask: u64, out: &mut Vec<u8>) -> bool {
        if mask == 0
            || !self.supports_delta()
            || mask >> self.columns.len() != 0
            || row.1.len() != self.columns.len()
        {
            return false;
        }
        write_varint(out, REBASE | (mask << 2));
        for i in 0..self.columns.len() {
            if mask & (1 << i) != 0 {
                out.extend_from_slice(column_bytes(row, i));
            }
        }
        true
    }

    /// Bit `i` set for each quantized column `i` (`#[quantize]`: positions and other
    /// continuous values, sent as differences in units).
    pub fn quantized_columns(&self) -> u64 {
        self.quantized
    }

    /// [`WireLayout::delta_body`], returning the mask of the columns that changed (0 when
    /// nothing was appended).
    pub fn delta_body_mask(
        &self,
        old: (&[u8], &[Range<u32>]),
        new: (&[u8], &[Range<u32>]),
        out: &mut Vec<u8>,
    ) -> u64 {
        if !self.supports_delta()
            || old.1.len() != self.columns.len()
            || new.1.len() != self.columns.len()
        {
            return 0;
        }
        let mut mask = 0u64;
        for i in 0..self.columns.len() {
            if column_bytes(old, i) != column_bytes(new, i) {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            return 0;
        }
        write_varint(out, DELTA | (mask << 2));
        for (i, column) in self.columns.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            match column.step {
                Some(_) => {
                    let (mut a, mut b) = (column_bytes(old, i), column_bytes(new, i));
                    for _ in 0..column.ty.float_components().unwrap_or(0) {
                        let before = read_varint(&mut a, "quantized").map(unzigzag).unwrap_or(0);
                        let after = read_varint(&mut b, "quantized").map(unzigzag).unwrap_or(0);
                        write_varint(out, zigzag(after.wrapping_sub(before)));
                    }
                }
                None => out.extend_from_slice(column_bytes(new, i)),
            }
        }
        mask
    }

    // ---- decoding (client side) ----

    fn column(&self, i: usize) -> Result<&WireColumn, RowDecodeError> {
        self.columns.get(i).ok_or_else(|| RowDecodeError::Invalid {
            what: "table layout",
            detail: format!("column {i} of {}", self.columns.len()),
        })
    }

    /// The value of quantized `units` for a column of type `ty` and `step`, as the engine
    /// computes it: `units * step` per component (in `f32`; in `f64` for `f64` columns).
    pub fn dequantize(ty: &TypeDesc, step: f32, units: Units) -> Value {
        let f = |u: i64| u as f32 * step;
        match ty {
            TypeDesc::F32 => Value::F32(f(units[0])),
            TypeDesc::F64 => Value::F64(units[0] as f64 * f64::from(step)),
            TypeDesc::Vec2 => Value::Vec2(glam::Vec2::new(f(units[0]), f(units[1]))),
            _ => Value::Vec3(glam::Vec3::new(f(units[0]), f(units[1]), f(units[2]))),
        }
    }

    fn read_column(&self, i: usize, input: &mut &[u8]) -> Result<(Value, Units), RowDecodeError> {
        let column = self.column(i)?;
        match column.step {
            Some(step) => {
                let units = read_unit_varints(&column.ty, input)?;
                Ok((Self::dequantize(&column.ty, step, units), units))
            }
            None => Ok((Value::decode(&column.ty, input)?, [0; 3])),
        }
    }

    fn read_pk(&self, input: &mut &[u8]) -> Result<Vec<u8>, RowDecodeError> {
        let before = *input;
        Value::skip(&self.column(self.pk_column)?.ty, input)?;
        Ok(before[..before.len() - input.len()].to_vec())
    }

    /// Decodes one full wire row from the front of `input`.
    pub fn decode_row(&self, input: &mut &[u8]) -> Result<WireRow, RowDecodeError> {
        let quantized = self.quantized_columns();
        let mut row = WireRow {
            columns: Vec::with_capacity(self.columns.len()),
            quantized,
            units: SmallVec::new(),
        };
        for i in 0..self.columns.len() {
            let (value, units) = self.read_column(i, input)?;
            row.columns.push(value);
            if WireRow::holds_units(quantized, i) {
                row.units.push(units);
            }
        }
        Ok(row)
    }

    /// Decodes a delta record's body (the columns named by `mask`) from the front of `input`.
    pub fn decode_delta(
        &self,
        mask: u64,
        input: &mut &[u8],
    ) -> Result<Vec<ColumnChange>, RowDecodeError> {
        let mut changes = Vec::with_capacity(mask.count_ones() as usize);
        self.decode_changes(mask, false, input, &mut changes)?;
        Ok(changes)
    }

    /// Appends to `out` the columns of a delta (`absolute` false: quantized ones as
    /// differences) or a [`REBASE`] record (`absolute` true: quantized ones as units).
    fn decode_changes(
        &self,
        mask: u64,
        absolute: bool,
        input: &mut &[u8],
        out: &mut Vec<ColumnChange>,
    ) -> Result<(), RowDecodeError> {
        if !self.supports_delta() {
            return Err(RowDecodeError::Invalid {
                what: "delta record",
                detail: format!(
                    "table has {} columns; deltas name at most {MAX_DELTA_COLUMNS}",
                    self.columns.len()
                ),
            });
        }
        if mask >> self.columns.len() != 0 {
            return Err(RowDecodeError::Invalid {
                what: "delta record",
                detail: format!(
                    "mask {mask:#x} names columns the table ({} columns) lacks",
                    self.columns.len()
                ),
            });
        }
        let mut rest = mask;
        while rest != 0 {
            let i = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let column = &self.columns[i];
            out.push(match column.step {
                Some(_) if absolute => ColumnChange::UnitsSet {
                    column: i,
                    units: read_unit_varints(&column.ty, input)?,
                },
                Some(_) => ColumnChange::Units {
                    column: i,
                    diff: read_unit_varints(&column.ty, input)?,
                },
                None => ColumnChange::Value {
                    column: i,
                    value: Value::decode(&column.ty, input)?,
                },
            });
        }
        Ok(())
    }

    /// Decodes a whole table update payload into its records, resolving row handles through
    /// `handles` (the client's handles for this table, updated as the records bind and free
    /// them). Either every record decodes and `handles` moves on, or the payload is refused and
    /// `handles` is unchanged; never panics on any input, and `handles` grows by at most one
    /// entry per record.
    ///
    /// Each delta and delete carries its row's key, copied out of `handles`; a client that keeps
    /// its rows by handle decodes with [`WireLayout::decode_payload`] instead, which copies
    /// nothing per delta.
    pub fn decode_records(
        &self,
        handles: &mut RowHandles,
        input: &[u8],
    ) -> Result<Vec<WireRecord>, RowDecodeError> {
        let mut records = Vec::new();
        let mut changes = Vec::new();
        self.decode_each(handles, input, &mut changes, |record, handles, changes| {
            records.push(match record {
                HandleRecord::Upsert { pk, row, .. } => WireRecord::Upsert { pk, row },
                HandleRecord::Delta {
                    handle,
                    mask,
                    changes: range,
                } => WireRecord::Delta {
                    pk: handles.named(handle.into()).unwrap_or_default().to_vec(),
                    mask,
                    changes: changes.drain(range).collect(),
                },
                HandleRecord::Delete { pk, .. } => WireRecord::Delete { pk },
            })
        })?;
        Ok(records)
    }

    /// [`WireLayout::decode_records`] for a client that keeps its rows by handle: the records
    /// name rows by handle and deltas' changes go to one buffer, so with `out` reused from
    /// payload to payload a delta allocates nothing. On error `out` holds no records and
    /// `handles` is unchanged.
    pub fn decode_payload(
        &self,
        handles: &mut RowHandles,
        input: &[u8],
        out: &mut DecodedPayload,
    ) -> Result<(), RowDecodeError> {
        out.records.clear();
        out.changes.clear();
        let records = &mut out.records;
        let result = self.decode_each(handles, input, &mut out.changes, |record, _, _| {
            records.push(record)
        });
        if result.is_err() {
            out.records.clear();
            out.changes.clear();
        }
        result
    }

    /// The one decoding loop: hands each record to `record` with the handles as they stand
    /// after it and the change buffer its delta's range points into.
    fn decode_each(
        &self,
        handles: &mut RowHandles,
        mut input: &[u8],
        changes: &mut Vec<ColumnChange>,
        mut record: impl FnMut(HandleRecord, &RowHandles, &mut Vec<ColumnChange>),
    ) -> Result<(), RowDecodeError> {
        let mut undo = Vec::new();
        let result = (|| {
            while !input.is_empty() {
                let handle = read_varint(&mut input, "row handle")?;
                let header = read_varint(&mut input, "record header")?;
                match header & 3 {
                    UPSERT => {
                        let pk = self.read_pk(&mut input)?;
                        let row = self.decode_row(&mut input)?;
                        handles.bind(handle, &pk, &mut undo)?;
                        let handle = handle as u32;
                        record(HandleRecord::Upsert { handle, pk, row }, handles, changes);
                    }
                    kind @ (DELTA | REBASE) => {
                        handles.named(handle)?;
                        let start = changes.len();
                        self.decode_changes(header >> 2, kind == REBASE, &mut input, changes)?;
                        let delta = HandleRecord::Delta {
                            handle: handle as u32,
                            mask: header >> 2,
                            changes: start..changes.len(),
                        };
                        record(delta, handles, changes);
                    }
                    DELETE => {
                        let pk = handles.free(handle, &mut undo)?;
                        let handle = handle as u32;
                        record(HandleRecord::Delete { handle, pk }, handles, changes);
                    }
                    kind => {
                        return Err(RowDecodeError::InvalidTag {
                            what: "record kind",
                            tag: kind,
                        });
                    }
                }
            }
            Ok(())
        })();
        if result.is_err() {
            handles.undo(undo);
        }
        result
    }
}

/// One record of a payload decoded by [`WireLayout::decode_payload`], naming its row by the
/// client's handle (valid: the decoder checked it against the client's [`RowHandles`]).
#[derive(Clone, Debug, PartialEq)]
pub enum HandleRecord {
    /// The row (new to the client, or replacing what it holds), now named by `handle`.
    Upsert {
        /// The row's handle.
        handle: u32,
        /// Encoded primary key (row format).
        pk: Vec<u8>,
        /// The row.
        row: WireRow,
    },
    /// Changes to the row the client holds as `handle`.
    Delta {
        /// The row's handle.
        handle: u32,
        /// The mask of changed columns (bit `i` = column `i`).
        mask: u64,
        /// Where the changed columns are in [`DecodedPayload::changes`], in column order.
        changes: Range<usize>,
    },
    /// The row the client held as `handle` is gone; the handle is free again.
    Delete {
        /// The handle it had.
        handle: u32,
        /// Encoded primary key (row format).
        pk: Vec<u8>,
    },
}

/// A payload's records decoded by [`WireLayout::decode_payload`]; keep one and reuse it, so
/// its buffers stop growing.
#[derive(Clone, Debug, Default)]
pub struct DecodedPayload {
    records: Vec<HandleRecord>,
    changes: Vec<ColumnChange>,
}

impl DecodedPayload {
    /// The records, in payload order.
    pub fn records(&self) -> &[HandleRecord] {
        &self.records
    }

    /// The changed columns of every delta; a [`HandleRecord::Delta`] names its range.
    pub fn changes(&self) -> &[ColumnChange] {
        &self.changes
    }

    /// Takes the records out in order (upserts' rows by move), with the change buffer their
    /// ranges point into.
    pub fn drain(&mut self) -> (std::vec::Drain<'_, HandleRecord>, &[ColumnChange]) {
        (self.records.drain(..), &self.changes)
    }
}

/// A client's row handles for one table of one connection: the primary key each handle names
/// (see the module docs). Start a fresh one per connection.
#[derive(Clone, Debug, Default)]
pub struct RowHandles {
    pks: Vec<Option<Box<[u8]>>>,
    event: bool,
}

/// How to take back one handle change of a refused payload.
enum HandleUndo {
    /// The handle was new: drop it from the end.
    Pushed,
    /// The handle named this key (or nothing) before.
    Was(u32, Option<Box<[u8]>>),
}

impl RowHandles {
    /// No handles yet, for a table whose rows are held (`event: false`) or an event table, whose
    /// records are upserts with handle [`EVENT_HANDLE`] that bind nothing.
    pub fn new(event: bool) -> Self {
        RowHandles {
            pks: Vec::new(),
            event,
        }
    }

    /// How many handles were given so far (bound or freed): the length of the table, which a
    /// payload grows by at most one per record.
    pub fn given(&self) -> usize {
        self.pks.len()
    }

    /// How many handles are bound.
    pub fn bound(&self) -> usize {
        self.pks.iter().filter(|p| p.is_some()).count()
    }

    fn invalid(handle: u64, detail: &str) -> RowDecodeError {
        RowDecodeError::Invalid {
            what: "row handle",
            detail: format!("handle {handle} {detail}"),
        }
    }

    fn bind(
        &mut self,
        handle: u64,
        pk: &[u8],
        undo: &mut Vec<HandleUndo>,
    ) -> Result<(), RowDecodeError> {
        if self.event {
            return if handle == u64::from(EVENT_HANDLE) {
                Ok(())
            } else {
                Err(Self::invalid(handle, "in an event table (must be 0)"))
            };
        }
        let len = self.pks.len() as u64;
        if handle == len && handle <= u64::from(u32::MAX) {
            self.pks.push(Some(pk.into()));
            undo.push(HandleUndo::Pushed);
            return Ok(());
        }
        let Some(slot) = usize::try_from(handle)
            .ok()
            .and_then(|h| self.pks.get_mut(h))
        else {
            return Err(Self::invalid(
                handle,
                &format!("skips ahead of the {len} handles given so far"),
            ));
        };
        match slot {
            Some(held) if **held != *pk => Err(Self::invalid(handle, "already names another row")),
            Some(_) => Ok(()),
            None => {
                *slot = Some(pk.into());
                undo.push(HandleUndo::Was(handle as u32, None));
                Ok(())
            }
        }
    }

    fn named(&self, handle: u64) -> Result<&[u8], RowDecodeError> {
        if self.event {
            return Err(Self::invalid(
                handle,
                "in a delta or delete of an event table",
            ));
        }
        usize::try_from(handle)
            .ok()
            .and_then(|h| self.pks.get(h))
            .and_then(|p| p.as_deref())
            .ok_or_else(|| Self::invalid(handle, "names no row"))
    }

    fn free(&mut self, handle: u64, undo: &mut Vec<HandleUndo>) -> Result<Vec<u8>, RowDecodeError> {
        let pk = self.named(handle)?.to_vec();
        let held = self.pks[handle as usize].take();
        undo.push(HandleUndo::Was(handle as u32, held));
        Ok(pk)
    }

    fn undo(&mut self, undo: Vec<HandleUndo>) {
        for step in undo.into_iter().rev() {
            match step {
                HandleUndo::Pushed => {
                    self.pks.pop();
                }
                HandleUndo::Was(handle, held) => self.pks[handle as usize] = held,
            }
        }
    }
}

/// Column `i` of a wire row with its column bounds (empty if the bounds do not fit the row).
fn column_bytes<'r>((row, bounds): (&'r [u8], &[Range<u32>]), i: usize) -> &'r [u8] {
    let r = &bounds[i];
    row.get(r.start as usize..r.end as usize).unwrap_or(&[])
}

fn read_unit_varints(ty: &TypeDesc, input: &mut &[u8]) -> Result<Units, RowDecodeError> {
    let mut units = [0i64; 3];
    for unit in units.iter_mut().take(ty.float_components().unwrap_or(0)) {
        *unit = unzigzag(read_varint(input, "quantized")?);
    }
    Ok(units)
}

fn read_units(ty: &TypeDesc, step: f32, input: &mut &[u8]) -> Result<Units, RowDecodeError> {
    let mut units = [0i64; 3];
    match ty {
        TypeDesc::F32 => units[0] = quantize_f32(f32::decode(input)?, step),
        TypeDesc::F64 => units[0] = quantize_f64(f64::decode(input)?, step),
        TypeDesc::Vec2 | TypeDesc::Vec3 => {
            for unit in units.iter_mut().take(ty.float_components().unwrap_or(0)) {
                *unit = quantize_f32(f32::decode(input)?, step);
            }
        }
        _ => {}
    }
    Ok(units)
}

impl Clone for WireRow {
    fn clone(&self) -> Self {
        WireRow {
            columns: self.columns.clone(),
            quantized: self.quantized,
            units: self.units.clone(),
        }
    }

    /// Copies `source` into this row's buffers: strings and the column list keep their
    /// allocations when they are large enough (a client copying rows into spare ones).
    fn clone_from(&mut self, source: &Self) {
        // Element by element (`Value::clone_from`): strings keep their buffers.
        self.columns.clone_from(&source.columns);
        self.quantized = source.quantized;
        self.units.clone_from(&source.units);
    }
}

impl WireRow {
    /// A row from column values (quantized columns' units recomputed from the values with
    /// [`quantize_f32`]/[`quantize_f64`]).
    pub fn from_values(layout: &WireLayout, columns: Vec<Value>) -> Self {
        let quantized = layout.quantized_columns();
        let units = layout
            .columns
            .iter()
            .zip(&columns)
            .enumerate()
            .filter(|(i, _)| Self::holds_units(quantized, *i))
            .map(|(_, (c, v))| match (c.step, v) {
                (Some(step), Value::F32(x)) => [quantize_f32(*x, step), 0, 0],
                (Some(step), Value::F64(x)) => [quantize_f64(*x, step), 0, 0],
                (Some(step), Value::Vec2(v)) => {
                    [quantize_f32(v.x, step), quantize_f32(v.y, step), 0]
                }
                (Some(step), Value::Vec3(v)) => [
                    quantize_f32(v.x, step),
                    quantize_f32(v.y, step),
                    quantize_f32(v.z, step),
                ],
                _ => [0; 3],
            })
            .collect();
        WireRow {
            columns,
            quantized,
            units,
        }
    }

    fn holds_units(quantized: u64, i: usize) -> bool {
        i < 64 && quantized & (1 << i) != 0
    }

    /// Where column `i`'s units are kept, if it is quantized.
    fn units_slot(&self, i: usize) -> Option<usize> {
        Self::holds_units(self.quantized, i)
            .then(|| (self.quantized & ((1u64 << i) - 1)).count_ones() as usize)
    }

    /// The quantized units column `i` holds (zeros for unquantized columns, and for columns
    /// from the 65th on, which keep none: tables that wide get no deltas); `None` past the
    /// last column.
    pub fn units(&self, i: usize) -> Option<Units> {
        if i >= self.columns.len() {
            return None;
        }
        Some(match self.units_slot(i) {
            Some(slot) => self.units.get(slot).copied().unwrap_or_default(),
            None => [0; 3],
        })
    }

    /// Applies a delta record's changes. Fails (changing nothing) if a change names a column
    /// this row lacks.
    pub fn apply_delta(
        &mut self,
        layout: &WireLayout,
        changes: &[ColumnChange],
    ) -> Result<(), RowDecodeError> {
        let n = self.columns.len();
        if let Some(bad) = changes.iter().find_map(|c| {
            let i = match c {
                ColumnChange::Value { column, .. }
                | ColumnChange::Units { column, .. }
                | ColumnChange::UnitsSet { column, .. } => *column,
            };
            (i >= n || i >= layout.columns.len()).then_some(i)
        }) {
            return Err(RowDecodeError::Invalid {
                what: "delta record",
                detail: format!("column {bad} of a {n}-column row"),
            });
        }
        for change in changes {
            match change {
                ColumnChange::Value { column, value } => self.columns[*column] = value.clone(),
                ColumnChange::Units { column, diff } => {
                    let mut units = self.units(*column).unwrap_or_default();
                    for (unit, d) in units.iter_mut().zip(diff) {
                        *unit = unit.wrapping_add(*d);
                    }
                    self.set_units(layout, *column, units);
                }
                ColumnChange::UnitsSet { column, units } => self.set_units(layout, *column, *units),
            }
        }
        Ok(())
    }

    /// Sets a quantized column's units and its dequantized value (a column the layout does not
    /// quantize keeps its value: its changes are sent as values).
    fn set_units(&mut self, layout: &WireLayout, i: usize, units: Units) {
        let (Some(slot), Some(column)) = (self.units_slot(i), layout.columns.get(i)) else {
            return;
        };
        if let (Some(held), Some(step)) = (self.units.get_mut(slot), column.step) {
            *held = units;
            self.columns[i] = WireLayout::dequantize(&column.ty, step, units);
        }
    }

    /// The row in the exact row format (quantized columns as their dequantized floats): what
    /// crosses the FFI boundary and what generated client code decodes.
    pub fn to_row_bytes(&self, layout: &WireLayout) -> Result<Vec<u8>, ValueError> {
        let mut out = Vec::new();
        for (c, v) in layout.columns.iter().zip(&self.columns) {
            v.encode(&c.ty, &mut out)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnSchema, Durability, Visibility};
    use crate::value::encode_row as encode_exact;
    use glam::Vec2;

    fn table(columns: Vec<(&str, TypeDesc, Option<f32>)>) -> TableSchema {
        TableSchema {
            id: 0,
            name: "t".into(),
            rust_type: "T".into(),
            columns: columns
                .into_iter()
                .map(|(name, ty, quantize)| ColumnSchema {
                    name: name.into(),
                    ty,
                    auto_inc: false,
                    quantize,
                })
                .collect(),
            primary_key: 0,
            indexes: Vec::new(),
            visibility: Visibility::Public,
            durability: Durability::Durable,
            event: false,
            scheduled: None,
        }
    }

    fn wire(layout: &WireLayout, exact: &[u8]) -> (Vec<u8>, Vec<Range<u32>>) {
        let (mut out, mut bounds) = (Vec::new(), Vec::new());
        layout.encode_row(exact, &mut out, &mut bounds).unwrap();
        (out, bounds)
    }

    #[test]
    fn upsert_delta_delete_round_trip_with_quantization() {
        let t = table(vec![
            ("id", TypeDesc::U32, None),
            ("pos", TypeDesc::Vec2, Some(0.5)),
            ("hp", TypeDesc::I32, None),
            ("name", TypeDesc::String, Some(0.5)), // ignored: not a float
        ]);
        let layout = WireLayout::new(&t);
        let v1 = vec![
            Value::Unsigned(7),
            Value::Vec2(Vec2::new(1.2, -3.0)),
            Value::Signed(10),
            Value::String("a".into()),
        ];
        let v2 = vec![
            Value::Unsigned(7),
            Value::Vec2(Vec2::new(1.2, 4.0)),
            Value::Signed(10),
            Value::String("a".into()),
        ];
        let (e1, e2) = (
            encode_exact(&t, &v1).unwrap(),
            encode_exact(&t, &v2).unwrap(),
        );
        let (w1, b1) = wire(&layout, &e1);
        let (w2, b2) = wire(&layout, &e2);
        let pk = [7u8];
        let mut payload = Vec::new();
        layout.upsert_record(0, &pk, &w1, &mut payload);
        assert!(layout.delta_record(0, (&w1, &b1), (&w2, &b2), &mut payload));
        WireLayout::delete_record(0, &mut payload);
        let mut handles = RowHandles::new(false);
        let records = layout.decode_records(&mut handles, &payload).unwrap();
        assert_eq!(handles.bound(), 0, "the delete freed the handle");
        assert_eq!(records.len(), 3);
        let WireRecord::Upsert { row, .. } = &records[0] else {
            panic!("upsert expected")
        };
        let mut row = row.clone();
        // 1.2 / 0.5 = 2.4 → 2 units → 1.0; -3.0 → -6 units.
        assert_eq!(row.columns[1], Value::Vec2(Vec2::new(1.0, -3.0)));
        assert_eq!(row.units(1), Some([2, -6, 0]));
        let WireRecord::Delta { mask, changes, .. } = &records[1] else {
            panic!("delta expected")
        };
        assert_eq!(*mask, 0b10);
        assert_eq!(
            changes,
            &[ColumnChange::Units {
                column: 1,
                diff: [0, 14, 0]
            }]
        );
        row.apply_delta(&layout, changes).unwrap();
        assert_eq!(row.columns[1], Value::Vec2(Vec2::new(1.0, 4.0)));
        assert_eq!(records[2], WireRecord::Delete { pk: pk.to_vec() });
        assert_eq!(
            row.to_row_bytes(&layout).unwrap(),
            encode_exact(
                &t,
                &[
                    Value::Unsigned(7),
                    Value::Vec2(Vec2::new(1.0, 4.0)),
                    Value::Signed(10),
                    Value::String("a".into())
                ]
            )
            .unwrap()
        );
    }

    /// A rebase brings a client holding any older version to the current one with the
    /// changed columns only, quantized ones as absolute units.
    #[test]
    fn a_rebase_replaces_the_changed_columns_whole() {
        let t = table(vec![
            ("id", TypeDesc::U32, None),
            ("pos", TypeDesc::Vec2, Some(0.5)),
            ("hp", TypeDesc::I32, None),
            ("name", TypeDesc::String, None),
        ]);
        let layout = WireLayout::new(&t);
        assert_eq!(layout.quantized_columns(), 0b10);
        let old = vec![
            Value::Unsigned(7),
            Value::Vec2(Vec2::new(1.0, -3.0)),
            Value::Signed(10),
            Value::String("a long unchanged name".into()),
        ];
        let new = vec![
            Value::Unsigned(7),
            Value::Vec2(Vec2::new(250.0, 4.0)),
            Value::Signed(9),
            Value::String("a long unchanged name".into()),
        ];
        let (w1, _) = wire(&layout, &encode_exact(&t, &old).unwrap());
        let (w2, b2) = wire(&layout, &encode_exact(&t, &new).unwrap());
        let mut payload = Vec::new();
        layout.upsert_record(0, &[7], &w1, &mut payload);
        let upsert_len = payload.len();
        write_varint(&mut payload, 0);
        assert!(layout.rebase_body((&w2, &b2), 0b110, &mut payload));
        let rebase_len = payload.len() - upsert_len;
        assert!(rebase_len < 10, "{rebase_len} bytes");
        assert!(
            !layout.rebase_body((&w2, &b2), 0, &mut payload),
            "nothing to say"
        );
        assert!(
            !layout.rebase_body((&w2, &b2), 1 << 4, &mut payload),
            "no such column"
        );
        let mut handles = RowHandles::new(false);
        let records = layout.decode_records(&mut handles, &payload).unwrap();
        let WireRecord::Upsert { row, .. } = &records[0] else {
            panic!("upsert expected")
        };
        let mut row = row.clone();
        let WireRecord::Delta { changes, .. } = &records[1] else {
            panic!("rebase expected")
        };
        assert_eq!(
            changes[0],
            ColumnChange::UnitsSet {
                column: 1,
                units: [500, 8, 0]
            }
        );
        row.apply_delta(&layout, changes).unwrap();
        assert_eq!(row.columns, new);
        assert_eq!(row.units(1), Some([500, 8, 0]));
    }

    #[test]
    fn bad_records_are_errors() {
        let layout = WireLayout::new(&table(vec![("id", TypeDesc::U8, None)]));
        let mut handles = RowHandles::new(false);
        // Handle 0 names the row with key 9.
        layout.decode_records(&mut handles, &[0, 0, 9, 9]).unwrap();
        // A rebase (kind 3) to an unbound handle, or naming a column the table lacks.
        assert!(
            layout
                .decode_records(&mut handles, &[1, 3 | 1 << 2, 5])
                .is_err()
        );
        assert!(
            layout
                .decode_records(&mut handles, &[0, 3 | 0b10 << 2, 5])
                .is_err()
        );
        assert_eq!(
            layout
                .decode_records(&mut handles, &[0, 3 | 1 << 2, 5])
                .unwrap(),
            vec![WireRecord::Delta {
                pk: vec![9],
                mask: 1,
                changes: vec![ColumnChange::Value {
                    column: 0,
                    value: Value::Unsigned(5)
                }]
            }]
        );
        // Delta naming column 1 of a one-column table.
        assert!(matches!(
            layout.decode_records(&mut handles, &[0, 1 | (2 << 2), 1]),
            Err(RowDecodeError::Invalid { .. })
        ));
        assert!(matches!(
            layout.decode_records(&mut handles, &[1, 0, 1]),
            Err(RowDecodeError::UnexpectedEof { .. })
        ));
        // A schema whose primary key is out of range decodes to an error, not a panic.
        let mut t = table(vec![("id", TypeDesc::U8, None)]);
        t.primary_key = 5;
        assert!(
            WireLayout::new(&t)
                .decode_records(&mut RowHandles::new(false), &[0, 0, 1])
                .is_err()
        );
    }

    #[test]
    fn wide_tables_refuse_deltas() {
        let cols = (0..70)
            .map(|i| (if i == 0 { "id" } else { "c" }, TypeDesc::U8, None))
            .collect();
        let layout = WireLayout::new(&table(cols));
        assert!(!layout.supports_delta());
        let mut handles = RowHandles::new(false);
        let mut upsert = vec![0, 0];
        upsert.extend([0; 71]);
        layout.decode_records(&mut handles, &upsert).unwrap();
        assert!(
            layout
                .decode_records(&mut handles, &[0, 1 | (1 << 2), 0])
                .is_err()
        );
    }

    fn upsert(handle: u8, key: u8) -> [u8; 4] {
        [handle, UPSERT as u8, key, key]
    }

    #[test]
    fn handles_bind_in_order_and_name_rows_until_deleted() {
        let layout = WireLayout::new(&table(vec![("id", TypeDesc::U8, None)]));
        let mut handles = RowHandles::new(false);
        let mut payload = Vec::new();
        payload.extend(upsert(0, 5));
        payload.extend(upsert(1, 6));
        payload.extend([1, DELETE as u8]); // frees handle 1 (key 6)
        payload.extend(upsert(1, 7)); // and reuses it for key 7
        payload.extend(upsert(0, 5)); // the same row again under its handle: a replacement
        let records = layout.decode_records(&mut handles, &payload).unwrap();
        let keys: Vec<_> = records.iter().map(|r| r.pk()[0]).collect();
        assert_eq!(keys, [5, 6, 6, 7, 5]);
        assert!(matches!(records[2], WireRecord::Delete { .. }));
        assert_eq!(handles.bound(), 2);
        let delete = layout
            .decode_records(&mut handles, &[1, DELETE as u8])
            .unwrap();
        assert_eq!(delete, [WireRecord::Delete { pk: vec![7] }]);
    }

    #[test]
    fn bad_handles_refuse_the_whole_payload_and_change_nothing() {
        let layout = WireLayout::new(&table(vec![("id", TypeDesc::U8, None)]));
        let mut handles = RowHandles::new(false);
        layout.decode_records(&mut handles, &upsert(0, 5)).unwrap();
        let bad: [&[u8]; 5] = [
            &[3, 0, 1, 1],                            // skips handle 2
            &[2, 1 | (1 << 2), 3],                    // delta for an unbound handle
            &[2, DELETE as u8],                       // delete of an unbound handle
            &[0, 0, 6, 6],                            // handle 0 already names key 8
            &[0xff, 0xff, 0xff, 0xff, 0x7f, 0, 1, 1], // far beyond any handle given
        ];
        for bytes in bad {
            // Valid records first (handle 0 now names key 8, handle 1 key 9): they must be taken
            // back with the bad one.
            let mut payload = Vec::new();
            payload.extend([0, DELETE as u8]);
            payload.extend(upsert(0, 8));
            payload.extend(upsert(1, 9));
            payload.extend_from_slice(bytes);
            assert!(
                matches!(
                    layout.decode_records(&mut handles, &payload),
                    Err(RowDecodeError::Invalid {
                        what: "row handle",
                        ..
                    })
                ),
                "{bytes:?}"
            );
            assert_eq!(
                layout
                    .decode_records(&mut handles, &[0, DELETE as u8])
                    .unwrap(),
                [WireRecord::Delete { pk: vec![5] }],
                "handle 0 still names key 5 after {bytes:?}"
            );
            layout.decode_records(&mut handles, &upsert(0, 5)).unwrap();
            assert_eq!(handles.bound(), 1);
        }
    }

    #[test]
    fn event_tables_bind_no_handles() {
        let layout = WireLayout::new(&table(vec![("id", TypeDesc::U8, None)]));
        let mut handles = RowHandles::new(true);
        let mut payload = Vec::new();
        payload.extend(upsert(0, 5));
        payload.extend(upsert(0, 6));
        assert_eq!(
            layout.decode_records(&mut handles, &payload).unwrap().len(),
            2
        );
        assert_eq!(handles.bound(), 0);
        assert!(layout.decode_records(&mut handles, &upsert(1, 5)).is_err());
        assert!(
            layout
                .decode_records(&mut handles, &[0, DELETE as u8])
                .is_err()
        );
    }

    #[test]
    fn quantization_rounds_and_zeroes_non_finite() {
        assert_eq!(quantize_f32(0.25, 0.5), 1); // 0.5 rounds away from zero
        assert_eq!(quantize_f32(-0.25, 0.5), -1);
        assert_eq!(quantize_f32(f32::NAN, 0.5), 0);
        assert_eq!(quantize_f32(f32::INFINITY, 0.5), 0);
        assert_eq!(quantize_f32(1e30, 1e-5), i64::MAX); // saturates
        assert_eq!(quantize_f32(1e30, 1e-10), 0); // 1e40 overflows f32: non-finite
        assert_eq!(quantize_f64(2.5, 1.0), 3);
    }

    #[test]
    fn quantize_rounds_half_away_from_zero_like_f32_round() {
        let edges = [
            0.0f32,
            0.49999997,
            -0.49999997,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            8_388_609.0,
            -8_388_609.0,
            16_777_217.0,
            1e30,
            -1e30,
        ];
        for q in edges {
            assert_eq!(quantize_f32(q, 1.0), q.round() as i64, "{q}");
        }
    }

    proptest::proptest! {
        #[test]
        fn quantize_equals_round_for_any_value(bits in proptest::prelude::any::<u32>(), step in 0.001f32..10.0) {
            let v = f32::from_bits(bits);
            let q = v / step;
            let expected = if q.is_finite() { q.round() as i64 } else { 0 };
            proptest::prop_assert_eq!(quantize_f32(v, step), expected);
        }
    }
}
