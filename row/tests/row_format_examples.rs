//! The worked examples of `netcode/ROW_FORMAT.md`, byte for byte, run on the one codec the
//! engine, the publisher and every client share.

#![allow(missing_docs)]

use orrery_row::wire::{RowHandles, WireLayout, WireRecord};
use orrery_row::{ModuleSchema, TypeDesc, Value, encode_args_json, encode_row};
use serde_json::json;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn enc(ty: serde_json::Value, v: serde_json::Value) -> String {
    let ty: TypeDesc = serde_json::from_value(ty).unwrap();
    let value = Value::from_json(&ty, &v, "v").unwrap();
    let bytes = value.to_bytes(&ty).unwrap();
    assert_eq!(Value::from_bytes(&ty, &bytes).unwrap(), value);
    hex(&bytes)
}

#[test]
fn value_examples() {
    let cases = [
        (json!({"kind": "u64"}), json!(0), "00"),
        (json!({"kind": "u64"}), json!(127), "7f"),
        (json!({"kind": "u64"}), json!(128), "80 01"),
        (json!({"kind": "u32"}), json!(300), "ac 02"),
        (
            json!({"kind": "u64"}),
            json!("18446744073709551615"),
            "ff ff ff ff ff ff ff ff ff 01",
        ),
        (json!({"kind": "i32"}), json!(-1), "01"),
        (json!({"kind": "i32"}), json!(1), "02"),
        (json!({"kind": "i64"}), json!(-300), "d7 04"),
        (json!({"kind": "bool"}), json!(true), "01"),
        (json!({"kind": "u8"}), json!(200), "c8"),
        (json!({"kind": "i8"}), json!(-2), "fe"),
        (json!({"kind": "f32"}), json!(1.5), "00 00 c0 3f"),
        (
            json!({"kind": "f64"}),
            json!(-2.0),
            "00 00 00 00 00 00 00 c0",
        ),
        (json!({"kind": "string"}), json!("hé"), "03 68 c3 a9"),
        (json!({"kind": "connection_id"}), json!(1000), "e8 07"),
        (
            json!({"kind": "timestamp"}),
            json!(1_700_000_000_000_000i64),
            "80 80 f2 81 83 89 85 06",
        ),
        (json!({"kind": "timestamp"}), json!(-1), "01"),
        (json!({"kind": "duration"}), json!(1_500_000), "e0 c6 5b"),
        (
            json!({"kind": "schedule_at"}),
            json!({"interval": 1_000_000}),
            "00 c0 84 3d",
        ),
        (
            json!({"kind": "schedule_at"}),
            json!({"at": 1_700_000_000_000_000i64}),
            "01 80 80 f2 81 83 89 85 06",
        ),
        (
            json!({"kind": "vec2"}),
            json!([1.0, -2.0]),
            "00 00 80 3f 00 00 00 c0",
        ),
        (
            json!({"kind": "vec3"}),
            json!([0.5, 0, 1]),
            "00 00 00 3f 00 00 00 00 00 00 80 3f",
        ),
        (
            json!({"kind": "option", "of": {"kind": "u32"}}),
            json!(null),
            "00",
        ),
        (
            json!({"kind": "option", "of": {"kind": "u32"}}),
            json!(5),
            "01 05",
        ),
        (
            json!({"kind": "array", "of": {"kind": "u16"}}),
            json!([1, 300]),
            "02 01 ac 02",
        ),
        (
            json!({"kind": "array", "of": {"kind": "u8"}}),
            json!([222, 173]),
            "02 de ad",
        ),
    ];
    for (ty, v, expected) in cases {
        assert_eq!(enc(ty.clone(), v.clone()), expected, "{ty} {v}");
    }
    let identity = format!("{}01", "00".repeat(31));
    assert_eq!(
        enc(json!({"kind": "identity"}), json!(identity)),
        format!("{}01", "00 ".repeat(31))
    );
}

#[test]
fn struct_and_enum_examples() {
    let inner = json!({"kind": "struct", "name": "Inner", "fields": [
        {"name": "tag", "type": {"kind": "u8"}},
        {"name": "labels", "type": {"kind": "array", "of": {"kind": "string"}}}]});
    assert_eq!(
        enc(inner.clone(), json!({"tag": 7, "labels": ["a"]})),
        "07 01 01 61"
    );
    assert_eq!(enc(inner, json!([7, ["a"]])), "07 01 01 61");
    let shape = json!({"kind": "enum", "name": "Shape", "variants": [
        {"name": "Dot", "fields": []},
        {"name": "Circle", "fields": [{"name": "0", "type": {"kind": "f32"}}]},
        {"name": "Rect", "fields": [{"name": "w", "type": {"kind": "u16"}},
                                    {"name": "h", "type": {"kind": "u16"}}]}]});
    assert_eq!(enc(shape.clone(), json!("Dot")), "00");
    assert_eq!(
        enc(shape.clone(), json!({"Circle": [2.5]})),
        "01 00 00 20 40"
    );
    assert_eq!(
        enc(shape.clone(), json!({"Rect": {"w": 3, "h": 300}})),
        "02 03 ac 02"
    );
    let ty: TypeDesc = serde_json::from_value(shape).unwrap();
    let v = Value::from_json(&ty, &json!({"Rect": [3, 300]}), "v").unwrap();
    assert_eq!(v.to_json(&ty), json!({"Rect": [3, 300]}));
    assert_eq!(
        Value::F32(0.1).to_json(&TypeDesc::F32),
        json!(0.10000000149011612)
    );
    assert_eq!(Value::F32(f32::NAN).to_json(&TypeDesc::F32), json!(null));
}

fn npc_schema() -> ModuleSchema {
    serde_json::from_value(json!({
        "name": "demo",
        "tables": [{
            "id": 0, "name": "npc", "rust_type": "Npc",
            "columns": [
                {"name": "id", "type": {"kind": "u64"}, "auto_inc": true},
                {"name": "name", "type": {"kind": "string"}, "auto_inc": false},
                {"name": "pos", "type": {"kind": "vec2"}, "auto_inc": false, "quantize": 0.01},
                {"name": "hp", "type": {"kind": "i32"}, "auto_inc": false}
            ],
            "primary_key": 0,
            "indexes": [{"column": "id", "kind": "primary"},
                        {"column": "pos", "kind": "spatial", "cell": 25.0}],
            "visibility": {"kind": "public"},
            "durability": "durable",
            "event": false
        }],
        "reducers": [{"name": "transfer", "kind": "user", "params": [
            {"name": "to", "type": {"kind": "identity"}},
            {"name": "amount", "type": {"kind": "u64"}},
            {"name": "memo", "type": {"kind": "option", "of": {"kind": "string"}}}
        ]}]
    }))
    .unwrap()
}

#[test]
fn row_and_record_examples() {
    let schema = npc_schema();
    let npc = &schema.tables[0];
    let row = |x: f32, hp: i64| {
        vec![
            Value::Unsigned(7),
            Value::String("orc".into()),
            Value::Vec2(glam::Vec2::new(x, -5.0)),
            Value::Signed(hp),
        ]
    };
    let exact = encode_row(npc, &row(1.234, 100)).unwrap();
    assert_eq!(hex(&exact), "07 03 6f 72 63 b6 f3 9d 3f 00 00 a0 c0 c8 01");
    let layout = WireLayout::new(npc);
    let (mut wire, mut bounds) = (Vec::new(), Vec::new());
    layout.encode_row(&exact, &mut wire, &mut bounds).unwrap();
    assert_eq!(hex(&wire), "07 03 6f 72 63 f6 01 e7 07 c8 01");
    let pk = [7u8];
    let mut upsert = Vec::new();
    layout.upsert_record(0, &pk, &wire, &mut upsert);
    assert_eq!(hex(&upsert), "00 00 07 07 03 6f 72 63 f6 01 e7 07 c8 01");

    let moved = encode_row(npc, &row(1.5, 90)).unwrap();
    let (mut wire2, mut bounds2) = (Vec::new(), Vec::new());
    layout.encode_row(&moved, &mut wire2, &mut bounds2).unwrap();
    let mut delta = Vec::new();
    assert!(layout.delta_record(0, (&wire, &bounds), (&wire2, &bounds2), &mut delta));
    assert_eq!(hex(&delta), "00 31 36 00 b4 01");
    let mut delete = Vec::new();
    WireLayout::delete_record(0, &mut delete);
    assert_eq!(hex(&delete), "00 02");

    let mut payload = upsert;
    payload.extend(&delta);
    payload.extend(&delete);
    let mut handles = RowHandles::new(false);
    let records = layout.decode_records(&mut handles, &payload).unwrap();
    let WireRecord::Upsert { row: mut held, .. } = records[0].clone() else {
        panic!("upsert")
    };
    assert_eq!(held.columns[2], Value::Vec2(glam::Vec2::new(1.23, -5.0)));
    assert_eq!(held.units(2), Some([123, -500, 0]));
    let WireRecord::Delta { mask, changes, .. } = &records[1] else {
        panic!("delta")
    };
    assert_eq!(*mask, 0b1100);
    held.apply_delta(&layout, changes).unwrap();
    assert_eq!(held.columns[2], Value::Vec2(glam::Vec2::new(1.5, -5.0)));
    assert_eq!(held.columns[3], Value::Signed(90));
    assert_eq!(records[2], WireRecord::Delete { pk: vec![7] });
}

#[test]
fn argument_example() {
    let schema = npc_schema();
    let params = &schema.reducer("transfer").unwrap().params;
    let to = format!("{}2a", "00".repeat(31));
    let by_name =
        encode_args_json(params, &json!({"to": to, "amount": 250, "memo": "rent"})).unwrap();
    let by_position = encode_args_json(params, &json!([to, "250", "rent"])).unwrap();
    assert_eq!(by_name, by_position);
    assert_eq!(
        hex(&by_name),
        format!("{}2a fa 01 01 04 72 65 6e 74", "00 ".repeat(31))
    );
    assert_eq!(
        hex(&encode_args_json(params, &json!([to, 1, null])).unwrap()[32..]),
        "01 00"
    );
}
