//! Property tests of the schema-driven row codec: values of random types round-trip through
//! bytes and JSON, and no decoder panics on random bytes (agreement with the derive macros is
//! checked in `tests/tests/row_format.rs`).

#![allow(missing_docs)]

use std::time::Duration;

use orrery_row::wire::{DecodedPayload, HandleRecord, RowHandles, WireLayout, WireRecord};
use orrery_row::{
    ColumnSchema, ConnectionId, Durability, FieldDesc, Identity, ScheduleAt, TableSchema,
    Timestamp, TypeDesc, Value, VariantDesc, Visibility, decode_row, encode_row,
};
use proptest::prelude::*;

fn leaf() -> impl Strategy<Value = TypeDesc> {
    prop_oneof![
        Just(TypeDesc::Bool),
        Just(TypeDesc::U8),
        Just(TypeDesc::U16),
        Just(TypeDesc::U32),
        Just(TypeDesc::U64),
        Just(TypeDesc::I8),
        Just(TypeDesc::I16),
        Just(TypeDesc::I32),
        Just(TypeDesc::I64),
        Just(TypeDesc::F32),
        Just(TypeDesc::F64),
        Just(TypeDesc::String),
        Just(TypeDesc::Identity),
        Just(TypeDesc::ConnectionId),
        Just(TypeDesc::Timestamp),
        Just(TypeDesc::Duration),
        Just(TypeDesc::ScheduleAt),
        Just(TypeDesc::Vec2),
        Just(TypeDesc::Vec3),
    ]
}

fn fields(inner: impl Strategy<Value = TypeDesc>) -> impl Strategy<Value = Vec<FieldDesc>> {
    prop::collection::vec(inner, 0..4).prop_map(|tys| {
        tys.into_iter()
            .enumerate()
            .map(|(i, ty)| FieldDesc {
                name: format!("f{i}"),
                ty,
            })
            .collect()
    })
}

fn type_desc() -> impl Strategy<Value = TypeDesc> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            inner
                .clone()
                .prop_map(|t| TypeDesc::Option { of: Box::new(t) }),
            inner
                .clone()
                .prop_map(|t| TypeDesc::Array { of: Box::new(t) }),
            // Non-empty structs: an array of zero-byte items cannot be decoded (the engine's
            // length check assumes every item takes at least one byte).
            fields(inner.clone())
                .prop_filter("non-empty", |f| !f.is_empty())
                .prop_map(|fields| TypeDesc::Struct {
                    name: "S".into(),
                    fields
                }),
            prop::collection::vec(fields(inner), 1..4).prop_map(|vs| TypeDesc::Enum {
                name: "E".into(),
                variants: vs
                    .into_iter()
                    .enumerate()
                    .map(|(i, fields)| VariantDesc {
                        name: format!("V{i}"),
                        fields,
                    })
                    .collect(),
            }),
        ]
    })
}

/// A random value of `ty`; `finite` keeps floats finite (JSON has no NaN or infinity).
fn value(ty: &TypeDesc, finite: bool) -> BoxedStrategy<Value> {
    let f32s = move || {
        if finite {
            (-1.0e6f32..1.0e6).boxed()
        } else {
            any::<f32>().boxed()
        }
    };
    match ty {
        TypeDesc::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
        TypeDesc::U8 => any::<u8>().prop_map(|v| Value::Unsigned(v.into())).boxed(),
        TypeDesc::U16 => any::<u16>().prop_map(|v| Value::Unsigned(v.into())).boxed(),
        TypeDesc::U32 => any::<u32>().prop_map(|v| Value::Unsigned(v.into())).boxed(),
        TypeDesc::U64 => any::<u64>().prop_map(Value::Unsigned).boxed(),
        TypeDesc::I8 => any::<i8>().prop_map(|v| Value::Signed(v.into())).boxed(),
        TypeDesc::I16 => any::<i16>().prop_map(|v| Value::Signed(v.into())).boxed(),
        TypeDesc::I32 => any::<i32>().prop_map(|v| Value::Signed(v.into())).boxed(),
        TypeDesc::I64 => any::<i64>().prop_map(Value::Signed).boxed(),
        TypeDesc::F32 => f32s().prop_map(Value::F32).boxed(),
        TypeDesc::F64 => {
            if finite {
                (-1.0e12f64..1.0e12).prop_map(Value::F64).boxed()
            } else {
                any::<f64>().prop_map(Value::F64).boxed()
            }
        }
        TypeDesc::String => ".{0,8}".prop_map(Value::String).boxed(),
        TypeDesc::Identity => any::<[u8; 32]>()
            .prop_map(|b| Value::Identity(Identity(b)))
            .boxed(),
        TypeDesc::ConnectionId => any::<u64>()
            .prop_map(|c| Value::ConnectionId(ConnectionId(c)))
            .boxed(),
        TypeDesc::Timestamp => any::<i64>()
            .prop_map(|t| Value::Timestamp(Timestamp::from_micros(t)))
            .boxed(),
        TypeDesc::Duration => any::<u64>()
            .prop_map(|us| Value::Duration(Duration::from_micros(us)))
            .boxed(),
        TypeDesc::ScheduleAt => prop_oneof![
            any::<u64>().prop_map(|us| ScheduleAt::Interval(Duration::from_micros(us))),
            any::<i64>().prop_map(|t| ScheduleAt::At(Timestamp::from_micros(t))),
        ]
        .prop_map(Value::ScheduleAt)
        .boxed(),
        TypeDesc::Vec2 => [f32s(), f32s()].prop_map(|v| Value::Vec2(v.into())).boxed(),
        TypeDesc::Vec3 => [f32s(), f32s(), f32s()]
            .prop_map(|v| Value::Vec3(v.into()))
            .boxed(),
        TypeDesc::Option { of } => prop::option::of(value(of, finite))
            .prop_map(|v| Value::Option(v.map(Box::new)))
            .boxed(),
        TypeDesc::Array { of } => prop::collection::vec(value(of, finite), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        TypeDesc::Struct { fields, .. } => {
            field_values(fields, finite).prop_map(Value::Struct).boxed()
        }
        TypeDesc::Enum { variants, .. } => {
            let arms: Vec<BoxedStrategy<Value>> = variants
                .iter()
                .enumerate()
                .map(|(tag, v)| {
                    field_values(&v.fields, finite)
                        .prop_map(move |fields| Value::Enum {
                            tag: tag as u32,
                            fields,
                        })
                        .boxed()
                })
                .collect();
            prop::strategy::Union::new(arms).boxed()
        }
    }
}

fn field_values(fields: &[FieldDesc], finite: bool) -> BoxedStrategy<Vec<Value>> {
    fields
        .iter()
        .map(|f| value(&f.ty, finite))
        .collect::<Vec<_>>()
        .boxed()
}

fn typed_value(finite: bool) -> impl Strategy<Value = (TypeDesc, Value)> {
    type_desc().prop_flat_map(move |ty| {
        let v = value(&ty, finite);
        (Just(ty), v)
    })
}

fn table(types: Vec<(TypeDesc, Option<f32>)>) -> TableSchema {
    TableSchema {
        id: 0,
        name: "t".into(),
        rust_type: "T".into(),
        columns: types
            .into_iter()
            .enumerate()
            .map(|(i, (ty, quantize))| ColumnSchema {
                name: format!("c{i}"),
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

fn column_types() -> impl Strategy<Value = Vec<(TypeDesc, Option<f32>)>> {
    prop::collection::vec(
        (
            type_desc(),
            prop::option::of(prop_oneof![Just(0.01f32), Just(0.5), Just(1.0)]),
        ),
        1..6,
    )
}

fn nested_option(ty: &TypeDesc) -> bool {
    match ty {
        TypeDesc::Option { of } => matches!(**of, TypeDesc::Option { .. }) || nested_option(of),
        TypeDesc::Array { of } => nested_option(of),
        TypeDesc::Struct { fields, .. } => fields.iter().any(|f| nested_option(&f.ty)),
        TypeDesc::Enum { variants, .. } => variants
            .iter()
            .any(|v| v.fields.iter().any(|f| nested_option(&f.ty))),
        _ => false,
    }
}

/// A random table and two random rows of it.
fn two_rows() -> impl Strategy<Value = (TableSchema, Vec<Value>, Vec<Value>)> {
    column_types().prop_flat_map(|columns| {
        let t = table(columns);
        let row = || {
            t.columns
                .iter()
                .map(|c| value(&c.ty, false))
                .collect::<Vec<_>>()
        };
        (Just(t.clone()), row(), row())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn values_round_trip_through_bytes((ty, v) in typed_value(false)) {
        let bytes = v.to_bytes(&ty).unwrap();
        let back = Value::from_bytes(&ty, &bytes).unwrap();
        // Compare by bytes: NaN payloads must survive, and NaN != NaN.
        prop_assert_eq!(back.to_bytes(&ty).unwrap(), bytes);
    }

    #[test]
    fn values_round_trip_through_json((ty, v) in typed_value(true)) {
        // `Some(None)` of an `Option<Option<T>>` and `None` are both `null` in JSON.
        prop_assume!(!nested_option(&ty));
        let json = v.to_json(&ty);
        let back = Value::from_json(&ty, &json, "v").unwrap();
        prop_assert_eq!(back.to_bytes(&ty).unwrap(), v.to_bytes(&ty).unwrap());
    }

    #[test]
    fn value_decoders_never_panic(ty in type_desc(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Value::from_bytes(&ty, &bytes);
        let _ = Value::skip(&ty, &mut bytes.as_slice());
    }

    #[test]
    fn record_decoder_never_panics(
        columns in column_types(),
        event in any::<bool>(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..96), 1..4),
    ) {
        let layout = WireLayout::new(&table(columns));
        // Several payloads through one handle table, as a connection receives them; the same
        // payloads through a second one decoded by handle must agree record for record.
        let mut handles = RowHandles::new(event);
        let mut by_handle = RowHandles::new(event);
        let mut decoded = DecodedPayload::default();
        for bytes in payloads {
            let before = format!("{handles:?}");
            let given = handles.given();
            let result = layout.decode_records(&mut handles, &bytes);
            let by_handle_result = layout.decode_payload(&mut by_handle, &bytes, &mut decoded);
            prop_assert_eq!(result.is_ok(), by_handle_result.is_ok());
            prop_assert_eq!(format!("{handles:?}"), format!("{by_handle:?}"));
            let Ok(records) = result else {
                // A refused payload leaves the handles as they were.
                prop_assert_eq!(format!("{handles:?}"), before);
                prop_assert!(decoded.records().is_empty());
                continue;
            };
            // Handles grow by at most one per record.
            prop_assert!(handles.given() <= given + records.len());
            prop_assert_eq!(records.len(), decoded.records().len());
            for (r, h) in records.iter().zip(decoded.records()) {
                match (r, h) {
                    (WireRecord::Upsert { pk, row }, HandleRecord::Upsert { pk: p, row: w, .. }) => {
                        prop_assert_eq!(pk, p);
                        prop_assert_eq!(row, w);
                    }
                    (
                        WireRecord::Delta { mask, changes, .. },
                        HandleRecord::Delta { mask: m, changes: range, .. },
                    ) => {
                        prop_assert_eq!(mask, m);
                        prop_assert_eq!(&changes[..], &decoded.changes()[range.clone()]);
                    }
                    (WireRecord::Delete { pk }, HandleRecord::Delete { pk: p, .. }) => {
                        prop_assert_eq!(pk, p);
                    }
                    (r, h) => prop_assert!(false, "{r:?} decoded by handle as {h:?}"),
                }
            }
            // Whatever decoded can be applied without panicking.
            let mut held = None;
            for r in records {
                match r {
                    WireRecord::Upsert { row, .. } => held = Some(row),
                    WireRecord::Delta { changes, .. } => {
                        if let Some(row) = held.as_mut() {
                            let _ = row.apply_delta(&layout, &changes);
                        }
                    }
                    WireRecord::Delete { .. } => held = None,
                }
            }
        }
    }

    #[test]
    fn records_round_trip((t, a, mut b) in two_rows()) {
        let layout = WireLayout::new(&t);
        // Two rows with the same primary key, through an upsert then a delta.
        b[0] = a[0].clone();
        let (ea, eb) = (encode_row(&t, &a).unwrap(), encode_row(&t, &b).unwrap());
        prop_assert_eq!(decode_row(&t, &ea).unwrap().len(), t.columns.len());
        let pk = a[0].to_bytes(&t.columns[0].ty).unwrap();
        let (mut wa, mut ba, mut wb, mut bb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        layout.encode_row(&ea, &mut wa, &mut ba).unwrap();
        layout.encode_row(&eb, &mut wb, &mut bb).unwrap();
        let mut payload = Vec::new();
        layout.upsert_record(0, &pk, &wa, &mut payload);
        let has_delta = layout.delta_record(0, (&wa, &ba), (&wb, &bb), &mut payload);
        let records = layout.decode_records(&mut RowHandles::new(false), &payload).unwrap();
        let WireRecord::Upsert { row, pk: got_pk } = &records[0] else {
            return Err(TestCaseError::fail("first record is not an upsert"));
        };
        prop_assert_eq!(got_pk, &pk);
        let mut row = row.clone();
        if has_delta {
            let WireRecord::Delta { changes, .. } = &records[1] else {
                return Err(TestCaseError::fail("second record is not a delta"));
            };
            row.apply_delta(&layout, changes).unwrap();
        }
        // The applied row equals a fresh upsert of the new version.
        let mut fresh = Vec::new();
        layout.upsert_record(0, &pk, &wb, &mut fresh);
        let WireRecord::Upsert { row: expected, .. } =
            &layout.decode_records(&mut RowHandles::new(false), &fresh).unwrap()[0]
        else {
            return Err(TestCaseError::fail("not an upsert"));
        };
        prop_assert_eq!(row.to_row_bytes(&layout).unwrap(), expected.to_row_bytes(&layout).unwrap());
        for i in 0..t.columns.len() {
            prop_assert_eq!(row.units(i), expected.units(i));
        }
    }
}
