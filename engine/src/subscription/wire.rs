//! The published-row wire format: how subscription updates reach clients.
//!
//! A table update payload is a sequence of records; each record is
//!
//! ```text
//! header: varint  = kind | (column_mask << 2)     kind: 0 upsert, 1 delta, 2 delete
//! pk:     the primary key in the row format
//! body:   upsert → every column in wire form
//!         delta  → only the columns whose bit is set in column_mask, in column order;
//!                  quantized columns as the zigzag varint *difference* of their quantized
//!                  units from the previous value the client holds, others in wire form
//!         delete → nothing
//! ```
//!
//! Wire form is the Orrery row format except for `#[quantize(step)]` columns: each float
//! component is sent as the zigzag varint of `round(value / step)` (non-finite values as 0).
//! A delta record is only sent to a client that holds exactly the previous version of the row,
//! so deltas are shared by every such client; others get an upsert. Tables with more than 62
//! columns always use upserts. The format is specified for client authors in
//! `netcode/ROW_FORMAT.md`; [`WireLayout::decode_records`] is the reference decoder.

use std::ops::Range;

use crate::codec::{
    DecodeError, OrreryType, TypeDesc, read_varint, unzigzag, write_varint, zigzag,
};
use crate::schema::TableSchema;
use crate::value::Value;

/// Record kinds.
pub const UPSERT: u64 = 0;
/// A column delta.
pub const DELTA: u64 = 1;
/// A delete (or: left your view).
pub const DELETE: u64 = 2;

/// Most columns a delta mask can name.
pub const MAX_DELTA_COLUMNS: usize = 62;

/// Per-table wire layout: column types and quantization steps.
#[derive(Clone, Debug)]
pub struct WireLayout {
    columns: Vec<(TypeDesc, Option<f32>)>,
    pk_column: usize,
}

fn quantize(v: f32, step: f32) -> i64 {
    let q = v / step;
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

fn float_components(ty: &TypeDesc) -> Option<usize> {
    match ty {
        TypeDesc::F32 | TypeDesc::F64 => Some(1),
        TypeDesc::Vec2 => Some(2),
        TypeDesc::Vec3 => Some(3),
        _ => None,
    }
}

/// A column's quantized units: up to three components.
type Units = [i64; 3];

impl WireLayout {
    /// The layout of `table`.
    pub fn new(table: &TableSchema) -> Self {
        WireLayout {
            columns: table
                .columns
                .iter()
                .map(|c| {
                    let step = c.quantize.filter(|_| float_components(&c.ty).is_some());
                    (c.ty.clone(), step)
                })
                .collect(),
            pk_column: table.primary_key,
        }
    }

    /// Whether delta records can describe this table.
    pub fn supports_delta(&self) -> bool {
        self.columns.len() <= MAX_DELTA_COLUMNS
    }

    /// Transcodes an exact row (Orrery row format) into wire form, returning the byte range of
    /// each column inside `out` (relative to where the row starts).
    pub fn encode_row(
        &self,
        exact: &[u8],
        out: &mut Vec<u8>,
        bounds: &mut Vec<Range<u32>>,
    ) -> Result<(), DecodeError> {
        self.encode_row_offsets(exact, out, bounds, &mut Vec::new())
    }

    /// [`WireLayout::encode_row`], also recording where each column starts in `exact`.
    pub fn encode_row_offsets(
        &self,
        exact: &[u8],
        out: &mut Vec<u8>,
        bounds: &mut Vec<Range<u32>>,
        exact_starts: &mut Vec<u32>,
    ) -> Result<(), DecodeError> {
        bounds.clear();
        exact_starts.clear();
        let base = out.len();
        let mut input = exact;
        for (ty, step) in &self.columns {
            exact_starts.push((exact.len() - input.len()) as u32);
            let start = (out.len() - base) as u32;
            match step {
                Some(step) => {
                    for unit in read_units(ty, *step, &mut input)?
                        .iter()
                        .take(float_components(ty).unwrap_or(0))
                    {
                        write_varint(out, zigzag(*unit));
                    }
                }
                None => {
                    let before = input;
                    Value::skip(ty, &mut input)?;
                    out.extend_from_slice(&before[..before.len() - input.len()]);
                }
            }
            bounds.push(start..(out.len() - base) as u32);
        }
        if !input.is_empty() {
            return Err(DecodeError::TrailingBytes(input.len()));
        }
        Ok(())
    }

    /// Appends an upsert record.
    pub fn upsert_record(&self, pk: &[u8], wire_row: &[u8], out: &mut Vec<u8>) {
        write_varint(out, UPSERT);
        out.extend_from_slice(pk);
        out.extend_from_slice(wire_row);
    }

    /// Appends a delete record.
    pub fn delete_record(pk: &[u8], out: &mut Vec<u8>) {
        write_varint(out, DELETE);
        out.extend_from_slice(pk);
    }

    /// Appends a delta record taking a client from `old` to `new` (both wire rows with their
    /// column bounds). Returns false (appending nothing) if nothing changed or the table is too
    /// wide for a mask.
    pub fn delta_record(
        &self,
        pk: &[u8],
        old: (&[u8], &[Range<u32>]),
        new: (&[u8], &[Range<u32>]),
        out: &mut Vec<u8>,
    ) -> bool {
        if !self.supports_delta() {
            return false;
        }
        fn slice<'r>((row, bounds): (&'r [u8], &[Range<u32>]), i: usize) -> &'r [u8] {
            let r = &bounds[i];
            &row[r.start as usize..r.end as usize]
        }
        let mut mask = 0u64;
        for i in 0..self.columns.len() {
            if slice(old, i) != slice(new, i) {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            return false;
        }
        write_varint(out, DELTA | (mask << 2));
        out.extend_from_slice(pk);
        for (i, (ty, step)) in self.columns.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            match step {
                Some(_) => {
                    let (mut a, mut b) = (slice(old, i), slice(new, i));
                    for _ in 0..float_components(ty).unwrap_or(0) {
                        let before = read_varint(&mut a, "quantized").map(unzigzag).unwrap_or(0);
                        let after = read_varint(&mut b, "quantized").map(unzigzag).unwrap_or(0);
                        write_varint(out, zigzag(after.wrapping_sub(before)));
                    }
                }
                None => out.extend_from_slice(slice(new, i)),
            }
        }
        true
    }

    /// The primary key column.
    pub fn pk_column(&self) -> usize {
        self.pk_column
    }
}

fn read_units(ty: &TypeDesc, step: f32, input: &mut &[u8]) -> Result<Units, DecodeError> {
    let mut units = [0i64; 3];
    match ty {
        TypeDesc::F32 => units[0] = quantize(f32::decode(input)?, step),
        TypeDesc::F64 => {
            let q = (f64::decode(input)? / f64::from(step)).round();
            units[0] = if q.is_finite() { q as i64 } else { 0 };
        }
        TypeDesc::Vec2 | TypeDesc::Vec3 => {
            for unit in units.iter_mut().take(float_components(ty).unwrap_or(0)) {
                *unit = quantize(f32::decode(input)?, step);
            }
        }
        _ => {}
    }
    Ok(units)
}

/// A client-side row as the reference decoder rebuilds it: each column's wire bytes, decoded
/// to a value (quantized columns dequantized).
#[derive(Clone, Debug, PartialEq)]
pub struct WireRow {
    /// Column values in declaration order.
    pub columns: Vec<Value>,
    units: Vec<Units>,
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum WireRecord {
    /// The row (new to the client, or replacing what it had).
    Upsert {
        /// Encoded primary key.
        pk: Vec<u8>,
        /// The row.
        row: WireRow,
    },
    /// Changes to a row the client holds.
    Delta {
        /// Encoded primary key.
        pk: Vec<u8>,
        /// The mask of changed columns.
        mask: u64,
        /// Raw body (applied with [`WireRow::apply_delta`]).
        body: Vec<u8>,
    },
    /// The row is gone (deleted, or out of the client's view).
    Delete {
        /// Encoded primary key.
        pk: Vec<u8>,
    },
}

impl WireLayout {
    fn read_column(&self, i: usize, input: &mut &[u8]) -> Result<(Value, Units), DecodeError> {
        let (ty, step) = &self.columns[i];
        match step {
            Some(step) => {
                let n = float_components(ty).unwrap_or(0);
                let mut units = [0i64; 3];
                for unit in units.iter_mut().take(n) {
                    *unit = unzigzag(read_varint(input, "quantized")?);
                }
                Ok((self.dequantize(ty, *step, units), units))
            }
            None => Ok((Value::decode(ty, input)?, [0; 3])),
        }
    }

    fn dequantize(&self, ty: &TypeDesc, step: f32, units: Units) -> Value {
        let f = |u: i64| u as f32 * step;
        match ty {
            TypeDesc::F32 => Value::F32(f(units[0])),
            TypeDesc::F64 => Value::F64(units[0] as f64 * f64::from(step)),
            TypeDesc::Vec2 => Value::Vec2(glam::Vec2::new(f(units[0]), f(units[1]))),
            _ => Value::Vec3(glam::Vec3::new(f(units[0]), f(units[1]), f(units[2]))),
        }
    }

    fn read_pk(&self, input: &mut &[u8]) -> Result<Vec<u8>, DecodeError> {
        let before = *input;
        Value::skip(&self.columns[self.pk_column].0, input)?;
        Ok(before[..before.len() - input.len()].to_vec())
    }

    /// Decodes a full wire row.
    pub fn decode_row(&self, input: &mut &[u8]) -> Result<WireRow, DecodeError> {
        let mut row = WireRow {
            columns: Vec::with_capacity(self.columns.len()),
            units: Vec::with_capacity(self.columns.len()),
        };
        for i in 0..self.columns.len() {
            let (value, units) = self.read_column(i, input)?;
            row.columns.push(value);
            row.units.push(units);
        }
        Ok(row)
    }

    /// Reference decoder for a table update payload.
    pub fn decode_records(&self, mut input: &[u8]) -> Result<Vec<WireRecord>, DecodeError> {
        let mut records = Vec::new();
        while !input.is_empty() {
            let header = read_varint(&mut input, "record header")?;
            let pk = self.read_pk(&mut input)?;
            match header & 3 {
                UPSERT => {
                    let row = self.decode_row(&mut input)?;
                    records.push(WireRecord::Upsert { pk, row });
                }
                DELTA => {
                    let mask = header >> 2;
                    if !self.supports_delta() {
                        return Err(DecodeError::Invalid {
                            what: "delta record",
                            detail: format!(
                                "table has {} columns; deltas only exist for up to {MAX_DELTA_COLUMNS}",
                                self.columns.len()
                            ),
                        });
                    }
                    let start = input;
                    for i in 0..self.columns.len() {
                        if mask & (1 << i) != 0 {
                            self.read_column(i, &mut input)?;
                        }
                    }
                    if mask >> self.columns.len() != 0 {
                        return Err(DecodeError::Invalid {
                            what: "delta record",
                            detail: format!("mask {mask:#x} names columns the table lacks"),
                        });
                    }
                    let body = start[..start.len() - input.len()].to_vec();
                    records.push(WireRecord::Delta { pk, mask, body });
                }
                DELETE => records.push(WireRecord::Delete { pk }),
                kind => {
                    return Err(DecodeError::InvalidTag {
                        what: "record kind",
                        tag: kind,
                    });
                }
            }
        }
        Ok(records)
    }
}

impl WireRow {
    /// Applies a delta record body to this row.
    pub fn apply_delta(
        &mut self,
        layout: &WireLayout,
        mask: u64,
        mut body: &[u8],
    ) -> Result<(), DecodeError> {
        if !layout.supports_delta() {
            return Err(DecodeError::Invalid {
                what: "delta record",
                detail: "table too wide for deltas".into(),
            });
        }
        for i in 0..layout.columns.len() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let (ty, step) = &layout.columns[i];
            match step {
                Some(step) => {
                    let mut units = self.units[i];
                    for unit in units.iter_mut().take(float_components(ty).unwrap_or(0)) {
                        *unit = unit.wrapping_add(unzigzag(read_varint(&mut body, "delta")?));
                    }
                    self.units[i] = units;
                    self.columns[i] = layout.dequantize(ty, *step, units);
                }
                None => self.columns[i] = Value::decode(ty, &mut body)?,
            }
        }
        if body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(body.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnSchema, Durability, TableSchema, Visibility};

    fn wide_table(columns: usize) -> TableSchema {
        TableSchema {
            id: 0,
            name: "wide".into(),
            rust_type: "Wide".into(),
            columns: (0..columns)
                .map(|i| ColumnSchema {
                    name: format!("c{i}"),
                    ty: TypeDesc::U8,
                    auto_inc: false,
                    quantize: None,
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
            assert_eq!(quantize(q, 1.0), q.round() as i64, "{q}");
        }
        assert_eq!(quantize(f32::NAN, 0.01), 0);
        assert_eq!(quantize(f32::INFINITY, 0.01), 0);
    }

    proptest::proptest! {
        #[test]
        fn quantize_equals_round_for_any_value(bits in proptest::prelude::any::<u32>(), step in 0.001f32..10.0) {
            let v = f32::from_bits(bits);
            let q = v / step;
            let expected = if q.is_finite() { q.round() as i64 } else { 0 };
            proptest::prop_assert_eq!(quantize(v, step), expected);
        }
    }

    #[test]
    fn delta_records_for_tables_too_wide_for_a_mask_are_errors_not_panics() {
        for columns in [63, 64, 65, 100] {
            let layout = WireLayout::new(&wide_table(columns));
            // header: delta, mask with bit 1 set; pk byte; one column byte.
            let payload = [(DELTA | (1 << 3)) as u8, 0, 7];
            assert!(
                layout.decode_records(&payload).is_err(),
                "{columns} columns"
            );
        }
        // 62 columns still take deltas.
        let layout = WireLayout::new(&wide_table(62));
        let records = layout
            .decode_records(&[(DELTA | (1 << 3)) as u8, 0, 7])
            .unwrap();
        assert!(matches!(
            records.as_slice(),
            [WireRecord::Delta { mask: 2, .. }]
        ));
    }
}
