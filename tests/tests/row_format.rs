//! Conformance of the engine-free row codec (`orrery_netcode::row`) and the client mirror
//! (`orrery_client::Mirror`) with the engine, the format's source of truth: the schema JSON
//! reads losslessly, every column type decodes to the same values and JSON, JSON reducer
//! arguments encode to the same bytes (or fail with the same message), published-row records
//! from the engine's encoder decode identically (and the netcode encoder writes the same
//! bytes), and a client mirror fed by the engine's publisher equals the reference decoder's.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use orrery_client::{Mirror, RowChange};
use orrery_engine::glam::{Vec2, Vec3};
use orrery_engine::prelude::*;
use orrery_engine::schema::{ModuleSchema as EngineSchema, TableSchema as EngineTable};
use orrery_engine::subscription::wire::{
    WireLayout as EngineLayout, WireRecord as EngineRecord, WireRow as EngineRow,
};
use orrery_engine::subscription::{ClientId, PublishConfig, Publisher};
use orrery_engine::value::{Value as EngineValue, encode_args_json as engine_args};
use orrery_engine::{ConnectionId, SystemsExecutor, TypeDesc as EngineType};
use orrery_netcode::row::wire::{WireLayout, WireRecord};
use orrery_netcode::row::{self, ModuleSchema, TableSchema, TypeDesc, Value};
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

#[table(name = stash, owner = owner)]
#[derive(Clone, Debug, PartialEq)]
pub struct Stash {
    #[primary_key]
    #[auto_inc]
    pub id: u32,
    pub owner: Identity,
    pub gold: i64,
}

#[table(name = respawn, scheduled(respawn_mob))]
#[derive(Clone, Debug, PartialEq)]
pub struct Respawn {
    #[primary_key]
    #[auto_inc]
    pub scheduled_id: u64,
    pub scheduled_at: ScheduleAt,
    pub mob: u32,
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
                let row = Mob {
                    id,
                    pos: Vec2::new(x, y),
                    hp,
                    name: format!("mob{id}"),
                };
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
                ctx.db.blast().insert(Blast {
                    id: 0,
                    at: Vec3::new(x, y, 1.0),
                    power,
                })?;
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

#[reducer]
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    _ctx: &mut ReducerContext,
    id: u32,
    at: Vec2,
    name: String,
    tags: Vec<String>,
    shape: Option<Shape>,
    who: Identity,
    when: ScheduleAt,
    big: u64,
    delta: i16,
) -> Result<(), String> {
    let _ = (id, at, name, tags, shape, who, when, big, delta);
    Ok(())
}

#[reducer]
pub fn respawn_mob(_ctx: &mut ReducerContext, _row: Respawn) -> Result<(), String> {
    Ok(())
}

#[reducer(init)]
pub fn init(_ctx: &mut ReducerContext) -> Result<(), String> {
    Ok(())
}

fn engine() -> Engine {
    let module = Module::builder("conformance")
        .table::<Everything>()
        .table::<Mob>()
        .table::<Blast>()
        .table::<Stash>()
        .table::<Respawn>()
        .reducers(reducers![init, run, spawn, respawn_mob])
        .build()
        .unwrap();
    Engine::new(
        module,
        EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The engine's schema and the same schema read by the netcode types.
fn schemas() -> &'static (EngineSchema, ModuleSchema) {
    static SCHEMAS: OnceLock<(EngineSchema, ModuleSchema)> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let engine_schema = engine().schema().clone();
        let netcode_schema = serde_json::from_value(engine_schema.to_json()).unwrap();
        (engine_schema, netcode_schema)
    })
}

fn tables(name: &str) -> (&'static EngineTable, &'static TableSchema) {
    let (e, n) = schemas();
    (e.table(name).unwrap(), n.table(name).unwrap())
}

fn netcode_type(ty: &EngineType) -> TypeDesc {
    serde_json::from_value(serde_json::to_value(ty).unwrap()).unwrap()
}

#[test]
fn schema_json_reads_into_the_netcode_types_losslessly() {
    let (engine_schema, netcode_schema) = schemas();
    let json = engine_schema.to_json();
    assert_eq!(serde_json::to_value(netcode_schema).unwrap(), json);
    let (_, everything) = tables("everything");
    assert_eq!(everything.columns.len(), 28);
    assert_eq!(everything.column("q_v3").unwrap().1.quantize, Some(0.25));
    assert!(netcode_schema.table("blast").unwrap().event);
    assert_eq!(
        netcode_schema.table("stash").unwrap().visibility,
        row::Visibility::Owner {
            column: "owner".into()
        }
    );
    assert_eq!(
        netcode_schema.table("respawn").unwrap().scheduled,
        Some(row::ScheduleSchema {
            reducer: "respawn_mob".into(),
            at_column: "scheduled_at".into()
        })
    );
    assert_eq!(
        netcode_schema.table("mob").unwrap().indexes[1].kind,
        row::IndexKind::Spatial { cell: 25.0 }
    );
    assert_eq!(
        netcode_schema.reducer("init").unwrap().kind,
        row::ReducerKind::Init
    );
    assert_eq!(netcode_schema.reducer("spawn").unwrap().params.len(), 9);
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Dot),
        any::<f32>().prop_map(Shape::Circle),
        (any::<u16>(), any::<u16>()).prop_map(|(w, h)| Shape::Rect { w, h }),
    ]
}

/// Floats: mostly ordinary, sometimes anything (NaN, infinities, huge).
fn f32s() -> impl Strategy<Value = f32> {
    prop_oneof![4 => -1.0e4f32..1.0e4, 1 => any::<f32>()]
}

fn f64s() -> impl Strategy<Value = f64> {
    prop_oneof![4 => -1.0e6f64..1.0e6, 1 => any::<f64>()]
}

/// A random `Everything` row with primary key `id` (built from boxed parts: one flat
/// strategy of 28 inputs overflows the test thread's stack in debug builds).
fn everything(id: u64) -> BoxedStrategy<Everything> {
    let ints = (
        any::<bool>(),
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        any::<i8>(),
        any::<i16>(),
        any::<i32>(),
        any::<i64>(),
    )
        .boxed();
    let misc = (
        f32s(),
        f64s(),
        ".{0,10}",
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<i64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .boxed();
    let geo = (
        (f32s(), f32s()),
        (f32s(), f32s(), f32s()),
        proptest::option::of(any::<i32>()),
        proptest::collection::vec(any::<u8>(), 0..6),
    )
        .boxed();
    let composite = (
        any::<u8>(),
        proptest::collection::vec(".{0,4}", 0..3),
        shape(),
        proptest::option::of(proptest::collection::vec(
            proptest::option::of(shape()),
            0..3,
        )),
    )
        .boxed();
    let quantized = (f32s(), f64s(), (f32s(), f32s()), (f32s(), f32s(), f32s())).boxed();
    (ints, misc, geo, composite, quantized)
        .prop_map(move |(ints, misc, geo, composite, quantized)| {
            let (b, u_8, u_16, u_32, i_8, i_16, i_32, i_64) = ints;
            let (f_32, f_64, text, who, conn, at, span, interval) = misc;
            let (v2, v3, maybe, blob) = geo;
            let (tag, labels, shape, nested) = composite;
            let (q_f32, q_f64, q_v2, q_v3) = quantized;
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
                at: Timestamp::from_micros(at),
                span: Duration::from_micros(span),
                when: if interval {
                    ScheduleAt::Interval(Duration::from_micros(span))
                } else {
                    ScheduleAt::At(Timestamp::from_micros(at))
                },
                v2: Vec2::new(v2.0, v2.1),
                v3: Vec3::new(v3.0, v3.1, v3.2),
                maybe,
                blob,
                inner: Inner { tag, labels },
                shape,
                nested,
                q_f32,
                q_f64,
                q_v2: Vec2::new(q_v2.0, q_v2.1),
                q_v3: Vec3::new(q_v3.0, q_v3.1, q_v3.2),
            }
        })
        .boxed()
}

/// Engine and netcode give the same JSON for the same bytes; the netcode re-encodes them
/// exactly; JSON parses to the same bytes on both sides (or fails the same way).
fn check_value(engine_ty: &EngineType, bytes: &[u8]) -> Result<(), TestCaseError> {
    let ty = netcode_type(engine_ty);
    let engine_value = EngineValue::decode(engine_ty, &mut &bytes[..]).unwrap();
    let value = Value::from_bytes(&ty, bytes).unwrap();
    prop_assert_eq!(value.to_bytes(&ty).unwrap(), bytes);
    let json = engine_value.to_json(engine_ty);
    prop_assert_eq!(&value.to_json(&ty), &json);
    let mut skipped = bytes;
    Value::skip(&ty, &mut skipped).unwrap();
    prop_assert!(skipped.is_empty());
    let from_engine = EngineValue::from_json(engine_ty, &json, "v").map(|v| {
        let mut out = Vec::new();
        v.encode(engine_ty, &mut out).unwrap();
        out
    });
    let from_netcode = Value::from_json(&ty, &json, "v").map(|v| v.to_bytes(&ty).unwrap());
    match (from_engine, from_netcode) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
        (a, b) => prop_assert!(false, "engine {:?} vs netcode {:?}", a, b),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_column_type_decodes_identically(row in everything(7)) {
        let bytes = row.to_bytes();
        check_value(&Everything::type_desc(), &bytes)?;
        // Column by column through the table schema, and whole rows as JSON objects.
        let (engine_table, table) = tables("everything");
        let values = row::decode_row(table, &bytes).unwrap();
        prop_assert_eq!(values.len(), table.columns.len());
        prop_assert_eq!(
            row::row_to_json(table, &bytes).unwrap(),
            orrery_engine::value::row_to_json(engine_table, &bytes).unwrap()
        );
        prop_assert_eq!(row::encode_row(table, &values).unwrap(), bytes);
    }

    #[test]
    fn json_arguments_encode_identically(row in everything(3)) {
        let (engine_schema, schema) = schemas();
        let (engine_params, params) = (
            &engine_schema.reducer("run").unwrap().params,
            &schema.reducer("run").unwrap().params,
        );
        let ty = &Everything::type_desc();
        let row_json = EngineValue::decode(ty, &mut &row.to_bytes()[..]).unwrap().to_json(ty);
        let ops = json!([{"PutEverything": [row_json]}, {"DropMob": {"id": 3}}, {"Blast": [1.5, -2, 9]}]);
        for args in [json!([ops.clone()]), json!({"ops": ops})] {
            let a = engine_args(engine_params, &args).map_err(|e| e.to_string());
            let b = row::encode_args_json(params, &args).map_err(|e| e.to_string());
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn garbage_fails_on_both_sides(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let ty = Everything::type_desc();
        let engine = EngineValue::decode(&ty, &mut &bytes[..]).map(|_| ());
        let netcode = Value::decode(&netcode_type(&ty), &mut &bytes[..]).map(|_| ());
        prop_assert_eq!(engine.is_ok(), netcode.is_ok());
    }

    #[test]
    fn published_records_decode_identically(a in everything(42), b in everything(42)) {
        let (engine_table, table) = tables("everything");
        let engine_layout = EngineLayout::new(engine_table);
        let layout = WireLayout::new(table);
        let pk = 42u64.to_bytes();
        let (ea, eb) = (a.to_bytes(), b.to_bytes());
        // Encoders agree.
        let (mut wa, mut ba, mut wb, mut bb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        engine_layout.encode_row(&ea, &mut wa, &mut ba).unwrap();
        engine_layout.encode_row(&eb, &mut wb, &mut bb).unwrap();
        let (mut na, mut nba, mut nb, mut nbb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        layout.encode_row(&ea, &mut na, &mut nba).unwrap();
        layout.encode_row(&eb, &mut nb, &mut nbb).unwrap();
        prop_assert_eq!((&wa, &ba, &wb, &bb), (&na, &nba, &nb, &nbb));
        let mut payload = Vec::new();
        engine_layout.upsert_record(&pk, &wa, &mut payload);
        let has_delta = engine_layout.delta_record(&pk, (&wa, &ba), (&wb, &bb), &mut payload);
        EngineLayout::delete_record(&pk, &mut payload);
        let mut ours = Vec::new();
        layout.upsert_record(&pk, &na, &mut ours);
        prop_assert_eq!(layout.delta_record(&pk, (&na, &nba), (&nb, &nbb), &mut ours), has_delta);
        WireLayout::delete_record(&pk, &mut ours);
        prop_assert_eq!(&ours, &payload);

        // Decoders agree, record by record, after applying the delta.
        let engine_records = engine_layout.decode_records(&payload).unwrap();
        let records = layout.decode_records(&payload).unwrap();
        prop_assert_eq!(engine_records.len(), records.len());
        let (EngineRecord::Upsert { row: engine_row, .. }, WireRecord::Upsert { row: net_row, .. }) =
            (&engine_records[0], &records[0]) else {
            return Err(TestCaseError::fail("first record is not an upsert"));
        };
        let (mut engine_row, mut net_row) = (engine_row.clone(), net_row.clone());
        same_row(engine_table, &engine_row, table, &layout, &net_row)?;
        if has_delta {
            let (EngineRecord::Delta { mask, body, .. }, WireRecord::Delta { mask: m, changes, .. }) =
                (&engine_records[1], &records[1]) else {
                return Err(TestCaseError::fail("second record is not a delta"));
            };
            prop_assert_eq!(mask, m);
            engine_row.apply_delta(&engine_layout, *mask, body).unwrap();
            net_row.apply_delta(&layout, changes).unwrap();
            same_row(engine_table, &engine_row, table, &layout, &net_row)?;
        }
        let (EngineRecord::Delete { pk: a }, WireRecord::Delete { pk: b }) =
            (engine_records.last().unwrap(), records.last().unwrap()) else {
            return Err(TestCaseError::fail("last record is not a delete"));
        };
        prop_assert_eq!(a, b);
    }
}

/// The same row on both sides: identical JSON and identical exact bytes.
fn same_row(
    engine_table: &EngineTable,
    engine_row: &EngineRow,
    table: &TableSchema,
    layout: &WireLayout,
    row: &row::wire::WireRow,
) -> Result<(), TestCaseError> {
    let mut engine_bytes = Vec::new();
    for (c, v) in engine_table.columns.iter().zip(&engine_row.columns) {
        v.encode(&c.ty, &mut engine_bytes).unwrap();
        let (i, _) = table.column(&c.name).unwrap();
        prop_assert_eq!(
            row.columns[i].to_json(&table.columns[i].ty),
            v.to_json(&c.ty),
            "{}",
            c.name
        );
    }
    prop_assert_eq!(row.to_row_bytes(layout).unwrap(), engine_bytes);
    Ok(())
}

#[test]
fn json_argument_errors_match_the_engine() {
    let (engine_schema, schema) = schemas();
    let engine_params = &engine_schema.reducer("spawn").unwrap().params;
    let params = &schema.reducer("spawn").unwrap().params;
    let who = "ab".repeat(32);
    let cases = [
        json!([1, [0.5, 2], "orc", ["a", "b"], null, who, {"interval": 5}, "18446744073709551615", -7]),
        json!({"id": 1, "at": [0, 0], "name": "", "tags": [], "shape": "Dot", "who": who.to_uppercase(),
               "when": {"at": -1}, "big": 0, "delta": "12"}),
        json!([1, [0, 0], "x", [], {"Circle": [2.5]}, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], {"Rect": {"w": 3, "h": 4}}, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], {"Rect": [3, 4]}, who, {"at": 3}, 1, 1]),
        // Errors: out of range, wrong shapes, bad identity, unknown variant, counts, names.
        json!([-1, [0, 0], "x", [], null, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0, 0], "x", [], null, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], 5, [], null, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], {"Hexagon": []}, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], {"Rect": {"w": 3}}, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], {"Rect": {"w": 3, "h": 4, "d": 1}}, who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], "Circle", who, {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], null, "zz", {"at": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], null, who, {"at": 3, "interval": 1}, 1, 1]),
        json!([1, [0, 0], "x", [], null, who, {"never": 3}, 1, 1]),
        json!([1, [0, 0], "x", [], null, who, {"at": 3}, 1.5, 1]),
        json!([1, [0, 0], "x", [], null, who, {"at": 3}, 1, 40000]),
        json!([1, [0, 0], "x", [], null, who, {"at": 3}, 1]),
        json!({"id": 1}),
        json!({"id": 1, "bogus": 2}),
        json!("nope"),
        json!(null),
    ];
    for args in &cases {
        let a = engine_args(engine_params, args).map_err(|e| e.to_string());
        let b = row::encode_args_json(params, args).map_err(|e| e.to_string());
        assert_eq!(a, b, "{args}");
    }
}

/// A client's view through the engine's reference decoder.
#[derive(Default)]
struct ReferenceMirror {
    tables: BTreeMap<u32, BTreeMap<Vec<u8>, EngineRow>>,
}

impl ReferenceMirror {
    fn apply(&mut self, layouts: &[EngineLayout], table: u32, payload: &[u8]) {
        let layout = &layouts[table as usize];
        let rows = self.tables.entry(table).or_default();
        for record in layout.decode_records(payload).unwrap() {
            match record {
                EngineRecord::Upsert { pk, row } => {
                    rows.insert(pk, row);
                }
                EngineRecord::Delta { pk, mask, body } => {
                    rows.get_mut(&pk)
                        .unwrap()
                        .apply_delta(layout, mask, &body)
                        .unwrap();
                }
                EngineRecord::Delete { pk } => {
                    rows.remove(&pk).unwrap();
                }
            }
        }
    }

    /// pk → exact row bytes.
    fn rows(&self, schema: &EngineSchema, table: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let t = &schema.tables[table as usize];
        self.tables
            .get(&table)
            .map(|rows| {
                rows.iter()
                    .map(|(pk, row)| {
                        let mut bytes = Vec::new();
                        for (c, v) in t.columns.iter().zip(&row.columns) {
                            v.encode(&c.ty, &mut bytes).unwrap();
                        }
                        (pk.clone(), bytes)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn client_rows(mirror: &Mirror, table: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    mirror
        .iter(table)
        .unwrap()
        .map(|r| (r.pk_bytes().to_vec(), r.to_bytes()))
        .collect()
}

#[test]
fn client_mirror_equals_the_reference_decoder_fed_by_the_engine_publisher() {
    let mut engine = engine();
    let schema = engine.schema().clone();
    let netcode_schema = std::sync::Arc::new(schemas().1.clone());
    let layouts: Vec<EngineLayout> = schema.tables.iter().map(EngineLayout::new).collect();
    let mut publisher = Publisher::new(
        &schema,
        PublishConfig {
            budget_bytes_per_second: 1 << 20,
            max_banked: Duration::from_secs(1),
            ..PublishConfig::default()
        },
    );
    let ids = schema
        .tables
        .iter()
        .map(|t| (t.name.clone(), t.id))
        .collect::<BTreeMap<_, _>>();
    let (mob, blast, everything_id) = (ids["mob"], ids["blast"], ids["everything"]);
    // Client 1 sees everything; client 2 mobs near its focus (enter/leave: upserts and
    // deletes) and the event table.
    let (c1, c2) = (ConnectionId(1), ConnectionId(2));
    publisher.connect(c1, Identity::from_u64(1));
    publisher.connect(c2, Identity::from_u64(2));
    for (query_id, sql) in [
        "SELECT * FROM mob",
        "SELECT * FROM blast",
        "SELECT * FROM everything",
    ]
    .into_iter()
    .enumerate()
    {
        publisher
            .subscribe(&schema, c1, query_id as u32, sql)
            .unwrap();
    }
    publisher
        .subscribe(
            &schema,
            c2,
            1,
            "SELECT * FROM mob WHERE within(pos, :focus, 40)",
        )
        .unwrap();
    publisher
        .subscribe(&schema, c2, 2, "SELECT * FROM blast")
        .unwrap();
    publisher.set_focus(c2, Vec3::ZERO);

    let mut reference: BTreeMap<ClientId, ReferenceMirror> = BTreeMap::new();
    let mut mirrors: BTreeMap<ClientId, Mirror> = [c1, c2]
        .into_iter()
        .map(|c| (c, Mirror::new(netcode_schema.clone())))
        .collect();
    let mut blasts_seen: BTreeMap<ClientId, usize> = BTreeMap::new();
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
                ops.push(Op::PutMob {
                    id,
                    x: id as f32 * 6.0 - 30.0 + phase * 25.0,
                    y: phase * 3.333,
                    hp: 100 - (tick as i32 % 50),
                });
            }
        }
        if tick % 3 == 0 {
            ops.push(Op::Blast {
                x: tick as f32,
                y: 0.3,
                power: 1.5,
            });
            blasts_sent += 1;
        }
        let id = (tick % 4) as u64;
        if tick % 11 == 0 {
            ops.push(Op::DropEverything { id });
        } else {
            let row = everything(id).new_tree(&mut runner).unwrap().current();
            ops.push(Op::PutEverything(Box::new(row)));
        }
        engine.call_reducer("run", Identity::ZERO, (ops,)).unwrap();
        let out = engine.step(Timestamp::from_micros(tick * 50_000));
        publisher.apply(&out.changes);
        let mut sent = Vec::new();
        publisher.publish(Duration::from_millis(50), &mut sent);
        for message in sent {
            reference.entry(message.client).or_default().apply(
                &layouts,
                message.table,
                &message.payload,
            );
            let changes = mirrors
                .get_mut(&message.client)
                .unwrap()
                .apply(message.table, &message.payload)
                .unwrap();
            *blasts_seen.entry(message.client).or_default() += changes
                .iter()
                .filter(|c| matches!(c, RowChange::Insert(r) if r.table_id() == blast))
                .count();
        }
        for c in [c1, c2] {
            let mirror = &mirrors[&c];
            let reference = reference.entry(c).or_default();
            for (name, table) in [("mob", mob), ("everything", everything_id)] {
                assert_eq!(
                    client_rows(mirror, name),
                    reference.rows(&schema, table),
                    "client {c} table {name} tick {tick}"
                );
            }
            assert_eq!(
                mirror.count("blast").unwrap(),
                0,
                "event rows are not stored"
            );
            assert_eq!(mirror.stats().skipped_records, 0);
        }
    }
    assert_eq!(blasts_seen[&c1], blasts_sent);
    assert_eq!(blasts_seen[&c2], blasts_sent);
    let (s1, s2) = (mirrors[&c1].stats(), mirrors[&c2].stats());
    assert!(s1.deltas > 100, "{s1:?}");
    assert!(s1.deletes > 0 && s2.deletes > 0, "{s1:?} {s2:?}");
    // Client 2 only ever held mobs near its focus.
    for row in mirrors[&c2].iter("mob").unwrap() {
        let Some(Value::Vec2([x, y])) = row.get("pos") else {
            panic!("pos")
        };
        assert!((x * x + y * y).sqrt() <= 40.0 + 5.0 + 0.01);
    }
}
