//! Row format conformance between macro-generated code and schema-driven code, now that one
//! codec (`orrery_row`) serves the engine, the publisher and every client:
//!
//! - the schema JSON the engine serves parses back to an equal schema, and its tables agree
//!   with the derives' type descriptors (column names, types and order, quantization);
//! - the bytes `#[table]`/`OrreryType` produce for a row with a column of every type decode by
//!   schema (`decode_row`) into values that re-encode to the same bytes and round-trip through
//!   JSON (`row_to_json`/`row_values_from_json`) when every float is finite; corrupted bytes are
//!   accepted or refused alike by the derive and by the schema;
//! - JSON reducer arguments encoded by `encode_args_json` equal the derive's argument bytes and
//!   have the expected effect when the engine's reducer decodes them;
//! - a client mirror fed by the publisher equals a reference decoder built on
//!   `orrery_row::wire`, and holds exactly the engine's rows (quantized columns as the engine's
//!   values quantized).

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use orrery_client::{Mirror, MirrorChange};
use orrery_engine::glam::{Vec2, Vec3};
use orrery_engine::prelude::*;
use orrery_engine::{ReducerArgs, SystemsExecutor};
use orrery_row::wire::{RowHandles, WireLayout, WireRecord, WireRow};
use orrery_row::{ColumnSchema, IndexKind, ModuleSchema, TableSchema, TypeDesc, Value};
use orrery_subscription::{PublishConfig, Publisher};
use proptest::collection::vec as vec_of;
use proptest::option::of as option_of;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::json;

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub enum Shape {
    Dot,
    Circle(f32),
    Rect { w: u16, h: u16 },
}

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub struct Inner {
    pub tag: u8,
    pub labels: Vec<String>,
}

/// A column of every type, exact and quantized.
#[table(name = everything, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Everything {
    #[primary_key]
    pub id: u64,
    pub b: bool,
    pub u_8: u8,
    pub u_16: u16,
    pub u_32: u32,
    pub i_8: i8,
    pub i_16: i16,
    pub i_32: i32,
    pub i_64: i64,
    pub f_32: f32,
    pub f_64: f64,
    pub text: String,
    pub who: Identity,
    pub conn: ConnectionId,
    pub at: Timestamp,
    pub span: Duration,
    pub when: ScheduleAt,
    pub v2: Vec2,
    pub v3: Vec3,
    pub maybe: Option<i32>,
    pub blob: Vec<u8>,
    pub inner: Inner,
    pub shape: Shape,
    pub nested: Option<Vec<Option<Shape>>>,
    #[quantize(0.01)]
    pub q_f32: f32,
    #[quantize(0.5)]
    pub q_f64: f64,
    #[quantize(0.1)]
    pub q_v2: Vec2,
    #[quantize(0.25)]
    pub q_v3: Vec3,
}

#[table(name = mob, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Mob {
    #[primary_key]
    pub id: u32,
    #[spatial(cell = 25.0)]
    #[quantize(0.01)]
    pub pos: Vec2,
    pub hp: i32,
    pub name: String,
}

#[table(name = blast, public, event)]
#[derive(Clone, Debug, PartialEq)]
pub struct Blast {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    #[quantize(0.5)]
    pub at: Vec3,
    pub power: f32,
}

#[derive(OrreryType, Clone, Debug)]
pub enum Op {
    PutMob { id: u32, x: f32, y: f32, hp: i32 },
    DropMob { id: u32 },
    Blast { x: f32, y: f32, power: f32 },
    PutEverything(Box<Everything>),
    DropEverything { id: u64 },
}

#[reducer]
pub fn run(ctx: &mut ReducerContext, ops: Vec<Op>) -> Result<(), String> {
    for op in ops {
        match op {
            Op::PutMob { id, x, y, hp } => {
                let (pos, name) = (Vec2::new(x, y), format!("mob{id}"));
                let row = Mob { id, pos, hp, name };
                if ctx.db.mob().id().find(&id).is_some() {
                    ctx.db.mob().id().update(row)?;
                } else {
                    ctx.db.mob().insert(row)?;
                }
            }
            Op::DropMob { id } => {
                ctx.db.mob().id().delete(&id);
            }
            Op::Blast { x, y, power } => {
                let at = Vec3::new(x, y, 1.0);
                ctx.db.blast().insert(Blast { id: 0, at, power })?;
            }
            Op::PutEverything(row) => {
                if ctx.db.everything().id().find(&row.id).is_some() {
                    ctx.db.everything().id().update(*row)?;
                } else {
                    ctx.db.everything().insert(*row)?;
                }
            }
            Op::DropEverything { id } => {
                ctx.db.everything().id().delete(&id);
            }
        }
    }
    Ok(())
}

fn engine() -> Engine {
    let module = Module::builder("conformance")
        .table::<Everything>()
        .table::<Mob>()
        .table::<Blast>()
        .reducers(reducers![run])
        .build()
        .unwrap();
    let config = EngineConfig {
        executor: SystemsExecutor::SingleThreaded,
        ..Default::default()
    };
    Engine::new(module, config).unwrap()
}

/// The module schema as a client reads it: the JSON the engine serves, parsed.
fn schema() -> &'static ModuleSchema {
    static SCHEMA: OnceLock<ModuleSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let served = engine().schema().to_json().to_string();
        ModuleSchema::from_json_str(&served).unwrap()
    })
}

fn table(name: &str) -> &'static TableSchema {
    schema().table(name).unwrap()
}

/// Each table's wire layout, by table id.
fn layout(table: u32) -> &'static WireLayout {
    static LAYOUTS: OnceLock<Vec<WireLayout>> = OnceLock::new();
    &LAYOUTS.get_or_init(|| schema().tables.iter().map(WireLayout::new).collect())[table as usize]
}

#[test]
fn served_schema_json_reads_back_equal_and_matches_the_derives() {
    let engine = engine();
    let served = serde_json::to_string_pretty(&engine.schema().to_json()).unwrap();
    let parsed = ModuleSchema::from_json_str(&served).unwrap();
    assert_eq!(&parsed, engine.schema());
    assert_eq!(schema(), engine.schema());
    // The table's columns are the row type's fields, in order, with the same types.
    let TypeDesc::Struct { fields, .. } = Everything::type_desc() else {
        panic!("not a struct")
    };
    let cols = &table("everything").columns;
    let names_types = |c: &ColumnSchema| (c.name.clone(), c.ty.clone());
    let fields: Vec<_> = fields.into_iter().map(|f| (f.name, f.ty)).collect();
    assert_eq!(cols.iter().map(names_types).collect::<Vec<_>>(), fields);
    assert_eq!(cols.len(), 28);
    let steps: Vec<_> = cols.iter().filter_map(|c| c.quantize).collect();
    assert_eq!(steps, [0.01, 0.5, 0.1, 0.25]);
    assert!(table("blast").event);
    let spatial = IndexKind::Spatial { cell: 25.0 };
    assert_eq!(table("mob").indexes[1].kind, spatial);
    let run = &schema().reducer("run").unwrap().params;
    let ops = TypeDesc::Array {
        of: Box::new(Op::type_desc()),
    };
    assert_eq!((run.len(), &run[0].ty), (1, &ops));
}

fn shape(finite: bool) -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Dot),
        f32s(finite).prop_map(Shape::Circle),
        (any::<u16>(), any::<u16>()).prop_map(|(w, h)| Shape::Rect { w, h }),
    ]
}

/// Floats: mostly ordinary, sometimes anything (extremes, subnormals, and unless `finite`,
/// NaN and infinities).
fn f32s(finite: bool) -> BoxedStrategy<f32> {
    let extreme = any::<f32>().prop_filter("finite", move |f| !finite || f.is_finite());
    prop_oneof![4 => -1.0e4f32..1.0e4, 1 => extreme].boxed()
}

fn f64s(finite: bool) -> BoxedStrategy<f64> {
    let extreme = any::<f64>().prop_filter("finite", move |f| !finite || f.is_finite());
    prop_oneof![4 => -1.0e6f64..1.0e6, 1 => extreme].boxed()
}

fn vec2s(finite: bool) -> impl Strategy<Value = Vec2> {
    (f32s(finite), f32s(finite)).prop_map(|(x, y)| Vec2::new(x, y))
}

fn vec3s(finite: bool) -> impl Strategy<Value = Vec3> {
    (f32s(finite), f32s(finite), f32s(finite)).prop_map(|(x, y, z)| Vec3::new(x, y, z))
}

/// A random `Everything` row with primary key `id` (built from boxed parts: one flat
/// strategy of 28 inputs overflows the test thread's stack in debug builds).
fn everything(id: u64, finite: bool) -> BoxedStrategy<Everything> {
    let ints = any::<(bool, u8, u16, u32, i8, i16, i32, i64)>().boxed();
    let times = any::<([u8; 32], u64, i64, u64, bool)>();
    let misc = (f32s(finite), f64s(finite), ".{0,10}", times).boxed();
    let geo = (
        vec2s(finite),
        vec3s(finite),
        option_of(any::<i32>()),
        vec_of(any::<u8>(), 0..6),
    );
    let shapes = option_of(vec_of(option_of(shape(finite)), 0..3));
    let composite = (any::<u8>(), vec_of(".{0,4}", 0..3), shape(finite), shapes).boxed();
    let quantized = (f32s(finite), f64s(finite), vec2s(finite), vec3s(finite)).boxed();
    (ints, misc, geo.boxed(), composite, quantized)
        .prop_map(move |(ints, misc, geo, composite, quantized)| {
            let (b, u_8, u_16, u_32, i_8, i_16, i_32, i_64) = ints;
            let (f_32, f_64, text, (who, conn, at, span, interval)) = misc;
            let (v2, v3, maybe, blob) = geo;
            let (tag, labels, shape, nested) = composite;
            let (q_f32, q_f64, q_v2, q_v3) = quantized;
            let (at, span) = (Timestamp::from_micros(at), Duration::from_micros(span));
            Everything {
                id,
                b,
                u_8,
                u_16,
                u_32,
                i_8,
                i_16,
                i_32,
                i_64,
                f_32,
                f_64,
                text,
                who: Identity::from_bytes(who),
                conn: ConnectionId(conn),
                at,
                span,
                when: if interval {
                    ScheduleAt::Interval(span)
                } else {
                    ScheduleAt::At(at)
                },
                v2,
                v3,
                maybe,
                blob,
                inner: Inner { tag, labels },
                shape,
                nested,
                q_f32,
                q_f64,
                q_v2,
                q_v3,
            }
        })
        .boxed()
}

/// Whether every float in `value` is finite (JSON has no NaN or infinity).
fn all_finite(value: &Value) -> bool {
    match value {
        Value::F32(f) => f.is_finite(),
        Value::F64(f) => f.is_finite(),
        Value::Vec2(v) => v.is_finite(),
        Value::Vec3(v) => v.is_finite(),
        Value::Option(v) => v.as_deref().is_none_or(all_finite),
        Value::Array(items) | Value::Struct(items) | Value::Enum { fields: items, .. } => {
            items.iter().all(all_finite)
        }
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn derived_bytes_decode_by_schema_and_round_trip(row in everything(7, false)) {
        let bytes = row.to_bytes();
        let t = table("everything");
        let values = orrery_row::decode_row(t, &bytes).unwrap();
        prop_assert_eq!(values.len(), t.columns.len());
        prop_assert_eq!(orrery_row::encode_row(t, &values).unwrap(), &bytes[..]);
        // The whole row as one struct value of the derive's type descriptor, too.
        let ty = Everything::type_desc();
        let whole = Value::from_bytes(&ty, &bytes).unwrap();
        prop_assert_eq!(whole.to_bytes(&ty).unwrap(), &bytes[..]);
        prop_assert_eq!(Value::Struct(values.clone()).to_bytes(&ty).unwrap(), &bytes[..]);
        // JSON: an object keyed by column name, back to the same bytes (floats permitting).
        let json = orrery_row::row_to_json(t, &bytes).unwrap();
        prop_assert_eq!(&json, &orrery_row::values_to_json(t, &values));
        let back = orrery_row::row_values_from_json(t, &json);
        if values.iter().all(all_finite) {
            prop_assert_eq!(orrery_row::encode_row(t, &back.unwrap()).unwrap(), &bytes[..]);
            prop_assert_eq!(Everything::from_bytes(&bytes).unwrap(), row);
            prop_assert_eq!(whole, Value::Struct(values));
        } else {
            prop_assert!(back.is_err(), "a non-finite float read back from {}", json);
        }
    }

    #[test]
    fn corrupted_bytes_are_judged_alike(
        row in everything(9, false),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        cut in any::<bool>(),
    ) {
        let mut bytes = row.to_bytes();
        let i = at.index(bytes.len());
        if cut { bytes.truncate(i) } else { bytes[i] ^= flip }
        let derived = Everything::from_bytes(&bytes).map(|r| r.to_bytes());
        let by_schema = orrery_row::decode_row(table("everything"), &bytes)
            .map(|v| orrery_row::encode_row(table("everything"), &v).unwrap());
        let as_struct = Value::from_bytes(&Everything::type_desc(), &bytes).map(|_| ());
        prop_assert_eq!(derived.is_ok(), by_schema.is_ok(), "{:?} vs {:?}", derived, by_schema);
        prop_assert_eq!(by_schema.is_ok(), as_struct.is_ok());
        if let (Ok(a), Ok(b)) = (derived, by_schema) {
            prop_assert_eq!(a, b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn json_arguments_reach_the_reducer(
        row in everything(3, true),
        x in f32s(true),
        hp in any::<i32>(),
    ) {
        let params = &schema().reducer("run").unwrap().params;
        let row_json = orrery_row::row_to_json(table("everything"), &row.to_bytes()).unwrap();
        // Variant fields by position and by name; a u64 as a decimal string.
        let ops = json!([
            {"PutEverything": [row_json]},
            {"PutMob": {"id": 5, "x": x, "y": -2.5, "hp": hp}},
            {"Blast": [1.5, -2, 9]},
            {"DropEverything": {"id": "77"}},
        ]);
        let positional = orrery_row::encode_args_json(params, &json!([ops])).unwrap();
        let named = orrery_row::encode_args_json(params, &json!({"ops": ops})).unwrap();
        prop_assert_eq!(&positional, &named);
        let typed = (vec![
            Op::PutEverything(Box::new(row.clone())),
            Op::PutMob { id: 5, x, y: -2.5, hp },
            Op::Blast { x: 1.5, y: -2.0, power: 9.0 },
            Op::DropEverything { id: 77 },
        ],);
        let mut derived = Vec::new();
        typed.encode_args(&mut derived);
        prop_assert_eq!(&positional, &derived);

        let mut engine = engine();
        engine.call_reducer_bytes("run", Identity::ZERO, &named).unwrap();
        let out = engine.step(Timestamp::from_micros(50_000));
        let stored = engine.find::<Everything>(&3).unwrap();
        prop_assert_eq!(stored.to_bytes(), row.to_bytes());
        let mob = Mob { id: 5, pos: Vec2::new(x, -2.5), hp, name: "mob5".into() };
        prop_assert_eq!(engine.find::<Mob>(&5).unwrap(), mob);
        prop_assert_eq!(out.changes.len(), 3, "everything, mob and blast rows");
    }
}

/// A client's rows (table → pk → row) through the reference decoder: the `orrery_row::wire`
/// records of each payload applied in order, with the connection's row handles per table.
type Reference = BTreeMap<u32, (RowHandles, BTreeMap<Vec<u8>, WireRow>)>;

fn apply_reference(reference: &mut Reference, table: u32, payload: &[u8]) {
    let layout = layout(table);
    let event = schema().tables[table as usize].event;
    let (handles, rows) = reference
        .entry(table)
        .or_insert_with(|| (RowHandles::new(event), BTreeMap::new()));
    for record in layout.decode_records(handles, payload).unwrap() {
        match record {
            WireRecord::Upsert { .. } if event => {}
            WireRecord::Upsert { pk, row } => {
                rows.insert(pk, row);
            }
            WireRecord::Delta { pk, changes, .. } => {
                let row = rows.get_mut(&pk).unwrap();
                row.apply_delta(layout, &changes).unwrap();
            }
            WireRecord::Delete { pk } => assert!(rows.remove(&pk).is_some()),
        }
    }
}

/// pk → exact row bytes.
fn reference_rows(reference: &Reference, table: u32) -> Rows {
    let rows = reference.get(&table).into_iter().flat_map(|(_, rows)| rows);
    let bytes = |row: &WireRow| row.to_row_bytes(layout(table)).unwrap();
    rows.map(|(pk, row)| (pk.clone(), bytes(row))).collect()
}

type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

fn client_rows(mirror: &Mirror, table: &str) -> Rows {
    let rows = mirror.iter(table).unwrap();
    rows.map(|r| (r.pk_bytes().to_vec(), r.to_bytes()))
        .collect()
}

/// The engine's `everything` rows as a client holding all of them must see them: exact
/// columns as they are, quantized ones as their quantized units times the step.
fn engine_rows_as_published(engine: &Engine) -> Rows {
    let t = table("everything");
    let layout = layout(t.id);
    let mut rows = BTreeMap::new();
    for row in engine.rows::<Everything>() {
        let values = orrery_row::decode_row(t, &row.to_bytes()).unwrap();
        let units = WireRow::from_values(layout, values.clone());
        let mut bytes = Vec::new();
        for (i, (column, value)) in layout.columns().iter().zip(values).enumerate() {
            let value = match column.step {
                Some(step) => WireLayout::dequantize(&column.ty, step, units.units(i).unwrap()),
                None => value,
            };
            value.encode(&column.ty, &mut bytes).unwrap();
        }
        rows.insert(row.id.to_bytes(), bytes);
    }
    rows
}

#[test]
fn client_mirror_equals_the_reference_decoder_fed_by_the_publisher() {
    let mut engine = engine();
    let schema = engine.schema().clone();
    let config = PublishConfig {
        budget_bytes_per_second: 1 << 20,
        max_banked: Duration::from_secs(1),
        ..PublishConfig::default()
    };
    let mut publisher = Publisher::new(&schema, config);
    let id = |name: &str| schema.table(name).unwrap().id;
    let (mob, blast, everything_id) = (id("mob"), id("blast"), id("everything"));
    // Client 1 sees everything; client 2 mobs near its focus (enter/leave: upserts and
    // deletes) and the event table.
    let (c1, c2) = (ConnectionId(1), ConnectionId(2));
    publisher.connect(c1, Identity::from_u64(1));
    publisher.connect(c2, Identity::from_u64(2));
    let near = "SELECT * FROM mob WHERE within(pos, :focus, 40)";
    for (c, query_id, sql) in [
        (c1, 0, "SELECT * FROM mob"),
        (c1, 1, "SELECT * FROM blast"),
        (c1, 2, "SELECT * FROM everything"),
        (c2, 1, near),
        (c2, 2, "SELECT * FROM blast"),
    ] {
        publisher.subscribe(&schema, c, query_id, sql).unwrap();
    }
    publisher.set_focus(c2, Vec3::ZERO);

    let mut reference: BTreeMap<ConnectionId, Reference> = BTreeMap::new();
    let mut mirrors: BTreeMap<ConnectionId, Mirror> = [c1, c2]
        .into_iter()
        .map(|c| (c, Mirror::new(Arc::new(schema.clone()))))
        .collect();
    let mut blasts_seen: BTreeMap<ConnectionId, usize> = BTreeMap::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut blasts_sent = 0;
    for tick in 1..=60i64 {
        let mut ops = Vec::new();
        for id in 0..12u32 {
            let phase = (tick as f32 * 0.15 + id as f32).sin();
            // Mobs wander across the client's 40-unit focus radius, a few die and come back.
            if (tick + i64::from(id)) % 17 == 0 {
                ops.push(Op::DropMob { id });
            } else {
                let (x, y) = (id as f32 * 6.0 - 30.0 + phase * 25.0, phase * 3.333);
                let hp = 100 - (tick as i32 % 50);
                ops.push(Op::PutMob { id, x, y, hp });
            }
        }
        if tick % 3 == 0 {
            let (x, y, power) = (tick as f32, 0.3, 1.5);
            ops.push(Op::Blast { x, y, power });
            blasts_sent += 1;
        }
        let id = (tick % 4) as u64;
        if tick % 11 == 0 {
            ops.push(Op::DropEverything { id });
        } else {
            let tree = everything(id, false).new_tree(&mut runner);
            let row = tree.unwrap().current();
            ops.push(Op::PutEverything(Box::new(row)));
        }
        engine.call_reducer("run", Identity::ZERO, (ops,)).unwrap();
        let out = engine.step(Timestamp::from_micros(tick * 50_000));
        publisher.apply(&out.changes);
        let mut sent = Vec::new();
        publisher.publish(Duration::from_millis(50), &mut sent);
        for message in sent {
            let (client, table, payload) = (message.client, message.table, &message.payload);
            apply_reference(reference.entry(client).or_default(), table, payload);
            let mirror = mirrors.get_mut(&client).unwrap();
            let changes = mirror.apply(table, payload).unwrap();
            *blasts_seen.entry(client).or_default() += changes
                .iter()
                .filter(|c| matches!(c, MirrorChange::Insert(r) if r.table_id() == blast))
                .count();
        }
        for c in [c1, c2] {
            let mirror = &mirrors[&c];
            let reference = reference.entry(c).or_default();
            for (name, table) in [("mob", mob), ("everything", everything_id)] {
                let expected = reference_rows(reference, table);
                assert_eq!(client_rows(mirror, name), expected, "{c} {name} {tick}");
            }
            assert_eq!(mirror.count("blast").unwrap(), 0, "events are not stored");
            assert_eq!(mirror.stats().skipped_records, 0);
        }
        // Client 1 holds the engine's rows after every tick (its budget covers them).
        let held = client_rows(&mirrors[&c1], "everything");
        assert_eq!(held, engine_rows_as_published(&engine), "{tick}");
    }
    assert_eq!(blasts_seen[&c1], blasts_sent);
    assert_eq!(blasts_seen[&c2], blasts_sent);
    let (s1, s2) = (mirrors[&c1].stats(), mirrors[&c2].stats());
    assert!(s1.deltas > 100, "{s1:?}");
    assert!(s1.deletes > 0 && s2.deletes > 0, "{s1:?} {s2:?}");
    assert_eq!(mirrors[&c1].count("mob").unwrap(), engine.count::<Mob>());
    // Client 2 only ever held mobs near its focus.
    for row in mirrors[&c2].iter("mob").unwrap() {
        let Some(Value::Vec2(pos)) = row.get("pos") else {
            panic!("pos")
        };
        assert!(pos.length() <= 40.0 + 5.0 + 0.01);
    }
}
