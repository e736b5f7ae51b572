//! Schema-driven values: every column type round-trips bytes → Value → bytes and
//! bytes → JSON → bytes; JSON reducer arguments are checked with errors naming the path.

#![allow(missing_docs)]

use std::time::Duration;

use orrery_engine::TypeDesc;
use orrery_engine::glam::{Vec2, Vec3};
use orrery_engine::prelude::*;
use orrery_engine::schema::ParamSchema;
use orrery_engine::value::{Value, ValueError, encode_args_json};
use proptest::prelude::*;
use serde_json::json;

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub enum Shape {
    Dot,
    Circle(f32),
    Rect { w: u16, h: u16 },
}

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub struct Everything {
    pub flag: bool,
    pub a: u8,
    pub b: u16,
    pub c: u32,
    pub d: u64,
    pub e: i8,
    pub f: i16,
    pub g: i32,
    pub h: i64,
    pub x: f32,
    pub y: f64,
    pub name: String,
    pub who: Identity,
    pub conn: ConnectionId,
    pub when: Timestamp,
    pub wait: Duration,
    pub schedule: ScheduleAt,
    pub p2: Vec2,
    pub p3: Vec3,
    pub maybe: Option<i32>,
    pub list: Vec<String>,
    pub bytes: Vec<u8>,
    pub shapes: Vec<Shape>,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Dot),
        (-1e6f32..1e6).prop_map(Shape::Circle),
        (any::<u16>(), any::<u16>()).prop_map(|(w, h)| Shape::Rect { w, h }),
    ]
}

prop_compose! {
    fn everything()(
        flag in any::<bool>(), a in any::<u8>(), b in any::<u16>(), c in any::<u32>(), d in any::<u64>(),
        e in any::<i8>(), f in any::<i16>(), g in any::<i32>(), h in any::<i64>(),
        x in -1e30f32..1e30, y in -1e300f64..1e300, name in ".{0,12}", who in any::<[u8; 32]>(),
        conn in any::<u64>(), when in any::<i64>(), wait in any::<u32>(), interval in any::<bool>(),
        p2 in (-1e6f32..1e6, -1e6f32..1e6), p3 in (-1e6f32..1e6, -1e6f32..1e6, -1e6f32..1e6),
        maybe in proptest::option::of(any::<i32>()), list in proptest::collection::vec(".{0,5}", 0..4),
        bytes in proptest::collection::vec(any::<u8>(), 0..8), shapes in proptest::collection::vec(shape(), 0..4),
    ) -> Everything {
        Everything {
            flag, a, b, c, d, e, f, g, h, x, y, name, who: Identity::from_bytes(who), conn: ConnectionId(conn),
            when: Timestamp::from_micros(when), wait: Duration::from_micros(u64::from(wait)),
            schedule: if interval { ScheduleAt::Interval(Duration::from_micros(u64::from(wait))) } else { ScheduleAt::At(Timestamp::from_micros(when)) },
            p2: Vec2::new(p2.0, p2.1), p3: Vec3::new(p3.0, p3.1, p3.2), maybe, list, bytes, shapes,
        }
    }
}

proptest! {
    #[test]
    fn every_type_round_trips_through_values_and_json(v in everything()) {
        let ty = Everything::type_desc();
        let bytes = v.to_bytes();
        let value = Value::decode(&ty, &mut bytes.as_slice()).unwrap();
        let mut again = Vec::new();
        value.encode(&ty, &mut again).unwrap();
        prop_assert_eq!(&again, &bytes);

        let json = value.to_json(&ty);
        // Through text too, as the HTTP API sees it.
        let json: serde_json::Value = serde_json::from_str(&json.to_string()).unwrap();
        let parsed = Value::from_json(&ty, &json, "v").unwrap();
        let mut from_json = Vec::new();
        parsed.encode(&ty, &mut from_json).unwrap();
        prop_assert_eq!(Everything::from_bytes(&from_json).unwrap(), v);

        let mut skipped = bytes.as_slice();
        Value::skip(&ty, &mut skipped).unwrap();
        prop_assert!(skipped.is_empty());
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let ty = Everything::type_desc();
        let _ = Value::decode(&ty, &mut bytes.as_slice());
        let _ = Value::skip(&ty, &mut bytes.as_slice());
    }
}

fn params() -> Vec<ParamSchema> {
    vec![
        ParamSchema {
            name: "to".into(),
            ty: TypeDesc::U64,
        },
        ParamSchema {
            name: "shape".into(),
            ty: Shape::type_desc(),
        },
        ParamSchema {
            name: "where".into(),
            ty: TypeDesc::Vec2,
        },
    ]
}

#[test]
fn json_arguments_by_position_or_name_encode_like_typed_ones() {
    let mut expected = 7u64.to_bytes();
    Shape::Rect { w: 3, h: 4 }.encode(&mut expected);
    Vec2::new(1.5, -2.0).encode(&mut expected);
    let by_position = encode_args_json(
        &params(),
        &json!([7, {"Rect": {"w": 3, "h": 4}}, [1.5, -2.0]]),
    )
    .unwrap();
    let by_name = encode_args_json(
        &params(),
        &json!({"where": [1.5, -2.0], "to": "7", "shape": {"Rect": [3, 4]}}),
    )
    .unwrap();
    assert_eq!(by_position, expected);
    assert_eq!(by_name, expected);
}

#[test]
fn bad_json_arguments_name_the_problem() {
    let err = encode_args_json(&params(), &json!([7, "Dot"])).unwrap_err();
    assert_eq!(
        err,
        ValueError::ArgumentCount {
            expected: 3,
            got: 2
        }
    );
    let err = encode_args_json(&params(), &json!({"to": 1, "shape": "Dot"})).unwrap_err();
    assert_eq!(err, ValueError::MissingArgument("where".into()));
    let err = encode_args_json(
        &params(),
        &json!({"to": 1, "shape": "Dot", "where": [0, 0], "extra": 1}),
    )
    .unwrap_err();
    assert_eq!(err, ValueError::UnknownArgument("extra".into()));
    let err = encode_args_json(&params(), &json!([-1, "Dot", [0, 0]])).unwrap_err();
    assert_eq!(err.to_string(), "to: expected u64, got -1");
    let err = encode_args_json(
        &params(),
        &json!([1, {"Rect": {"w": 70000, "h": 1}}, [0, 0]]),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "shape.Rect.w: expected u16, got 70000");
    let err = encode_args_json(&params(), &json!([1, "Triangle", [0, 0]])).unwrap_err();
    assert!(
        err.to_string().starts_with("shape: expected Shape"),
        "{err}"
    );
    let err = encode_args_json(&params(), &json!([1, "Dot", [0]])).unwrap_err();
    assert_eq!(err.to_string(), "where: expected Vec2, got [0]");
}
