//! Schema-driven values: decode any row or argument bytes by their [`TypeDesc`] without the
//! Rust type, encode them back, and convert between the row format and JSON.
//!
//! This is what lets the control plane accept reducer arguments as JSON, answer one-off SQL
//! reads as JSON, evaluate subscription predicates on encoded rows, and lets clients (the Rust
//! SDK, the CLI, the FFI) read rows from the schema alone.
//!
//! JSON mapping: integers and floats are numbers (64-bit integers may also be given as decimal
//! strings, since JavaScript numbers lose precision above 2^53); `Identity` is 64 hex
//! characters; `Timestamp` and `Duration` are integer microseconds; `ScheduleAt` is
//! `{"interval": µs}` or `{"at": µs}`; `Vec2`/`Vec3` are `[x, y(, z)]`; an `Option` is `null` or
//! its value; arrays are arrays; structs are objects keyed by field name (or arrays, by
//! position, on input); enum values are the variant name for unit variants and
//! `{"Variant": [fields..]}` otherwise (named fields may be given as an object on input).

use std::time::Duration;

use glam::{Vec2, Vec3};

use crate::codec::{
    FieldDesc, OrreryType, RowDecodeError, TypeDesc, read_len, read_varint, write_varint,
};
use crate::identity::{ConnectionId, Identity};
use crate::schema::{ParamSchema, TableSchema};
use crate::time::{ScheduleAt, Timestamp};

/// A decoded value of any column type.
#[derive(Debug, PartialEq)]
pub enum Value {
    /// `bool`.
    Bool(bool),
    /// Any unsigned integer column.
    Unsigned(u64),
    /// Any signed integer column.
    Signed(i64),
    /// `f32`.
    F32(f32),
    /// `f64`.
    F64(f64),
    /// `String`.
    String(String),
    /// `Identity`.
    Identity(Identity),
    /// `ConnectionId`.
    ConnectionId(ConnectionId),
    /// `Timestamp`.
    Timestamp(Timestamp),
    /// `Duration`.
    Duration(Duration),
    /// `ScheduleAt`.
    ScheduleAt(ScheduleAt),
    /// `Vec2`.
    Vec2(Vec2),
    /// `Vec3`.
    Vec3(Vec3),
    /// `Option<T>`.
    Option(Option<Box<Value>>),
    /// `Vec<T>`.
    Array(Vec<Value>),
    /// A struct's fields in declaration order.
    Struct(Vec<Value>),
    /// An enum variant and its fields.
    Enum {
        /// Variant index.
        tag: u32,
        /// The variant's fields.
        fields: Vec<Value>,
    },
}

/// A value that does not fit its type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// JSON of the wrong shape or out of range for the type.
    #[error("{path}: expected {expected}, got {got}")]
    Mismatch {
        /// Where in the value (`args[1].position[0]`).
        path: String,
        /// What the type needs.
        expected: String,
        /// What was given (JSON text, shortened).
        got: String,
    },
    /// Reducer arguments given as an object lack a parameter.
    #[error("missing argument `{0}`")]
    MissingArgument(String),
    /// Reducer arguments given as an object have an unknown key.
    #[error("unknown argument `{0}`")]
    UnknownArgument(String),
    /// Reducer arguments given as an array have the wrong length.
    #[error("expected {expected} argument(s), got {got}")]
    ArgumentCount {
        /// Parameters.
        expected: usize,
        /// Arguments.
        got: usize,
    },
}

impl Clone for Value {
    fn clone(&self) -> Self {
        match self {
            Value::Bool(v) => Value::Bool(*v),
            Value::Unsigned(v) => Value::Unsigned(*v),
            Value::Signed(v) => Value::Signed(*v),
            Value::F32(v) => Value::F32(*v),
            Value::F64(v) => Value::F64(*v),
            Value::String(v) => Value::String(v.clone()),
            Value::Identity(v) => Value::Identity(*v),
            Value::ConnectionId(v) => Value::ConnectionId(*v),
            Value::Timestamp(v) => Value::Timestamp(*v),
            Value::Duration(v) => Value::Duration(*v),
            Value::ScheduleAt(v) => Value::ScheduleAt(*v),
            Value::Vec2(v) => Value::Vec2(*v),
            Value::Vec3(v) => Value::Vec3(*v),
            Value::Option(v) => Value::Option(v.clone()),
            Value::Array(v) => Value::Array(v.clone()),
            Value::Struct(v) => Value::Struct(v.clone()),
            Value::Enum { tag, fields } => Value::Enum {
                tag: *tag,
                fields: fields.clone(),
            },
        }
    }

    /// A value of the same kind as `source` is overwritten in place: scalars are copied and
    /// strings, arrays and fields keep their allocations (a client copying a row into a spare
    /// one for each update would otherwise free and allocate every column).
    fn clone_from(&mut self, source: &Self) {
        match (&mut *self, source) {
            (Value::Bool(v), Value::Bool(s)) => *v = *s,
            (Value::Unsigned(v), Value::Unsigned(s)) => *v = *s,
            (Value::Signed(v), Value::Signed(s)) => *v = *s,
            (Value::F32(v), Value::F32(s)) => *v = *s,
            (Value::F64(v), Value::F64(s)) => *v = *s,
            (Value::String(v), Value::String(s)) => v.clone_from(s),
            (Value::Identity(v), Value::Identity(s)) => *v = *s,
            (Value::ConnectionId(v), Value::ConnectionId(s)) => *v = *s,
            (Value::Timestamp(v), Value::Timestamp(s)) => *v = *s,
            (Value::Duration(v), Value::Duration(s)) => *v = *s,
            (Value::ScheduleAt(v), Value::ScheduleAt(s)) => *v = *s,
            (Value::Vec2(v), Value::Vec2(s)) => *v = *s,
            (Value::Vec3(v), Value::Vec3(s)) => *v = *s,
            (Value::Option(v), Value::Option(s)) => v.clone_from(s),
            (Value::Array(v), Value::Array(s)) | (Value::Struct(v), Value::Struct(s)) => {
                v.clone_from(s)
            }
            (
                Value::Enum { tag, fields },
                Value::Enum {
                    tag: source_tag,
                    fields: source_fields,
                },
            ) => {
                *tag = *source_tag;
                fields.clone_from(source_fields);
            }
            (value, source) => *value = source.clone(),
        }
    }
}

impl Value {
    /// Decodes one value of type `ty` from the front of `input`.
    pub fn decode(ty: &TypeDesc, input: &mut &[u8]) -> Result<Value, RowDecodeError> {
        Ok(match ty {
            TypeDesc::Bool => Value::Bool(bool::decode(input)?),
            TypeDesc::U8 => Value::Unsigned(u64::from(u8::decode(input)?)),
            TypeDesc::U16 => Value::Unsigned(u64::from(u16::decode(input)?)),
            TypeDesc::U32 => Value::Unsigned(u64::from(u32::decode(input)?)),
            TypeDesc::U64 => Value::Unsigned(u64::decode(input)?),
            TypeDesc::I8 => Value::Signed(i64::from(i8::decode(input)?)),
            TypeDesc::I16 => Value::Signed(i64::from(i16::decode(input)?)),
            TypeDesc::I32 => Value::Signed(i64::from(i32::decode(input)?)),
            TypeDesc::I64 => Value::Signed(i64::decode(input)?),
            TypeDesc::F32 => Value::F32(f32::decode(input)?),
            TypeDesc::F64 => Value::F64(f64::decode(input)?),
            TypeDesc::String => Value::String(String::decode(input)?),
            TypeDesc::Identity => Value::Identity(Identity::decode(input)?),
            TypeDesc::ConnectionId => Value::ConnectionId(ConnectionId::decode(input)?),
            TypeDesc::Timestamp => Value::Timestamp(Timestamp::decode(input)?),
            TypeDesc::Duration => Value::Duration(Duration::decode(input)?),
            TypeDesc::ScheduleAt => Value::ScheduleAt(ScheduleAt::decode(input)?),
            TypeDesc::Vec2 => Value::Vec2(Vec2::decode(input)?),
            TypeDesc::Vec3 => Value::Vec3(Vec3::decode(input)?),
            TypeDesc::Option { of } => match u8::decode(input)? {
                0 => Value::Option(None),
                1 => Value::Option(Some(Box::new(Value::decode(of, input)?))),
                tag => {
                    return Err(RowDecodeError::InvalidTag {
                        what: "Option",
                        tag: u64::from(tag),
                    });
                }
            },
            TypeDesc::Array { of } => {
                let len = read_len(input, 1, "Vec")?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(Value::decode(of, input)?);
                }
                Value::Array(items)
            }
            TypeDesc::Struct { fields, .. } => Value::Struct(decode_fields(fields, input)?),
            TypeDesc::Enum { variants, .. } => {
                let tag = read_varint(input, "enum")?;
                let variant = usize::try_from(tag)
                    .ok()
                    .and_then(|i| variants.get(i))
                    .ok_or(RowDecodeError::InvalidTag { what: "enum", tag })?;
                Value::Enum {
                    tag: tag as u32,
                    fields: decode_fields(&variant.fields, input)?,
                }
            }
        })
    }

    /// Decodes a value of type `ty` that must span all of `bytes`.
    pub fn from_bytes(ty: &TypeDesc, bytes: &[u8]) -> Result<Value, RowDecodeError> {
        let mut input = bytes;
        let value = Value::decode(ty, &mut input)?;
        if input.is_empty() {
            Ok(value)
        } else {
            Err(RowDecodeError::TrailingBytes(input.len()))
        }
    }

    /// Skips one value of type `ty` at the front of `input` without building it.
    pub fn skip(ty: &TypeDesc, input: &mut &[u8]) -> Result<(), RowDecodeError> {
        match ty {
            TypeDesc::Bool | TypeDesc::U8 | TypeDesc::I8 => {
                crate::codec::take_bytes(input, 1, "byte")?;
            }
            TypeDesc::F32 => {
                crate::codec::take_bytes(input, 4, "f32")?;
            }
            TypeDesc::F64 => {
                crate::codec::take_bytes(input, 8, "f64")?;
            }
            TypeDesc::Vec2 => {
                crate::codec::take_bytes(input, 8, "Vec2")?;
            }
            TypeDesc::Vec3 => {
                crate::codec::take_bytes(input, 12, "Vec3")?;
            }
            TypeDesc::Identity => {
                crate::codec::take_bytes(input, 32, "Identity")?;
            }
            TypeDesc::U16
            | TypeDesc::U32
            | TypeDesc::U64
            | TypeDesc::I16
            | TypeDesc::I32
            | TypeDesc::I64
            | TypeDesc::ConnectionId
            | TypeDesc::Timestamp
            | TypeDesc::Duration => {
                read_varint(input, "varint")?;
            }
            TypeDesc::String => {
                let len = read_len(input, 1, "String")?;
                crate::codec::take_bytes(input, len, "String")?;
            }
            _ => {
                Value::decode(ty, input)?;
            }
        }
        Ok(())
    }

    /// Appends the value's bytes; fails if it does not match `ty`.
    pub fn encode(&self, ty: &TypeDesc, out: &mut Vec<u8>) -> Result<(), ValueError> {
        let mismatch = || ValueError::Mismatch {
            path: String::new(),
            expected: ty.display_name(),
            got: format!("{self:?}"),
        };
        match (ty, self) {
            (TypeDesc::Bool, Value::Bool(b)) => b.encode(out),
            (TypeDesc::U8, Value::Unsigned(v)) => {
                u8::try_from(*v).map_err(|_| mismatch())?.encode(out)
            }
            (TypeDesc::U16, Value::Unsigned(v)) => {
                u16::try_from(*v).map_err(|_| mismatch())?.encode(out)
            }
            (TypeDesc::U32, Value::Unsigned(v)) => {
                u32::try_from(*v).map_err(|_| mismatch())?.encode(out)
            }
            (TypeDesc::U64, Value::Unsigned(v)) => v.encode(out),
            (TypeDesc::I8, Value::Signed(v)) => {
                i8::try_from(*v).map_err(|_| mismatch())?.encode(out)
            }
            (TypeDesc::I16, Value::Signed(v)) => {
                i16::try_from(*v).map_err(|_| mismatch())?.encode(out)
            }
            (TypeDesc::I32, Value::Signed(v)) => {
                i32::try_from(*v).map_err(|_| mismatch())?.encode(out)
            }
            (TypeDesc::I64, Value::Signed(v)) => v.encode(out),
            (TypeDesc::F32, Value::F32(v)) => v.encode(out),
            (TypeDesc::F64, Value::F64(v)) => v.encode(out),
            (TypeDesc::String, Value::String(v)) => v.encode(out),
            (TypeDesc::Identity, Value::Identity(v)) => v.encode(out),
            (TypeDesc::ConnectionId, Value::ConnectionId(v)) => v.encode(out),
            (TypeDesc::Timestamp, Value::Timestamp(v)) => v.encode(out),
            (TypeDesc::Duration, Value::Duration(v)) => v.encode(out),
            (TypeDesc::ScheduleAt, Value::ScheduleAt(v)) => v.encode(out),
            (TypeDesc::Vec2, Value::Vec2(v)) => v.encode(out),
            (TypeDesc::Vec3, Value::Vec3(v)) => v.encode(out),
            (TypeDesc::Option { .. }, Value::Option(None)) => out.push(0),
            (TypeDesc::Option { of }, Value::Option(Some(v))) => {
                out.push(1);
                v.encode(of, out)?;
            }
            (TypeDesc::Array { of }, Value::Array(items)) => {
                write_varint(out, items.len() as u64);
                for item in items {
                    item.encode(of, out)?;
                }
            }
            (TypeDesc::Struct { fields, .. }, Value::Struct(values))
                if fields.len() == values.len() =>
            {
                for (field, value) in fields.iter().zip(values) {
                    value.encode(&field.ty, out)?;
                }
            }
            (
                TypeDesc::Enum { variants, .. },
                Value::Enum {
                    tag,
                    fields: values,
                },
            ) => {
                let variant = variants.get(*tag as usize).ok_or_else(mismatch)?;
                if variant.fields.len() != values.len() {
                    return Err(mismatch());
                }
                write_varint(out, u64::from(*tag));
                for (field, value) in variant.fields.iter().zip(values) {
                    value.encode(&field.ty, out)?;
                }
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }

    /// Encodes into a fresh buffer; fails if the value does not match `ty`.
    pub fn to_bytes(&self, ty: &TypeDesc) -> Result<Vec<u8>, ValueError> {
        let mut out = Vec::new();
        self.encode(ty, &mut out)?;
        Ok(out)
    }

    /// The value as a `u64` if it is an unsigned integer or a connection id.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Unsigned(v) => Some(*v),
            Value::ConnectionId(c) => Some(c.0),
            _ => None,
        }
    }

    /// The value as an `i64` if it is a signed integer or a timestamp (microseconds).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Signed(v) => Some(*v),
            Value::Timestamp(t) => Some(t.as_micros()),
            _ => None,
        }
    }

    /// The value as an `f64` if it is a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F32(v) => Some(f64::from(*v)),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a string slice if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as JSON (see the module docs for the mapping).
    pub fn to_json(&self, ty: &TypeDesc) -> serde_json::Value {
        use serde_json::{Value as J, json};
        match (ty, self) {
            (_, Value::Bool(b)) => J::Bool(*b),
            (_, Value::Unsigned(v)) => json!(v),
            (_, Value::Signed(v)) => json!(v),
            (_, Value::F32(v)) => json!(v),
            (_, Value::F64(v)) => json!(v),
            (_, Value::String(s)) => J::String(s.clone()),
            (_, Value::Identity(id)) => J::String(id.to_hex()),
            (_, Value::ConnectionId(c)) => json!(c.0),
            (_, Value::Timestamp(t)) => json!(t.as_micros()),
            (_, Value::Duration(d)) => json!(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            (_, Value::ScheduleAt(ScheduleAt::Interval(d))) => {
                json!({ "interval": u64::try_from(d.as_micros()).unwrap_or(u64::MAX) })
            }
            (_, Value::ScheduleAt(ScheduleAt::At(t))) => json!({ "at": t.as_micros() }),
            (_, Value::Vec2(v)) => json!([v.x, v.y]),
            (_, Value::Vec3(v)) => json!([v.x, v.y, v.z]),
            (TypeDesc::Option { of }, Value::Option(v)) => {
                v.as_ref().map_or(J::Null, |v| v.to_json(of))
            }
            (TypeDesc::Array { of }, Value::Array(items)) => {
                J::Array(items.iter().map(|v| v.to_json(of)).collect())
            }
            (TypeDesc::Struct { fields, .. }, Value::Struct(values)) => J::Object(
                fields
                    .iter()
                    .zip(values)
                    .map(|(f, v)| (f.name.clone(), v.to_json(&f.ty)))
                    .collect(),
            ),
            (TypeDesc::Enum { variants, .. }, Value::Enum { tag, fields }) => {
                match variants.get(*tag as usize) {
                    Some(variant) if variant.fields.is_empty() => J::String(variant.name.clone()),
                    Some(variant) => {
                        let inner = J::Array(
                            variant
                                .fields
                                .iter()
                                .zip(fields)
                                .map(|(f, v)| v.to_json(&f.ty))
                                .collect(),
                        );
                        json!({ variant.name.clone(): inner })
                    }
                    None => J::Null,
                }
            }
            _ => J::Null,
        }
    }

    /// Parses JSON as a value of type `ty`; `path` names the value in errors.
    pub fn from_json(
        ty: &TypeDesc,
        json: &serde_json::Value,
        path: &str,
    ) -> Result<Value, ValueError> {
        use serde_json::Value as J;
        let mismatch = || ValueError::Mismatch {
            path: path.to_owned(),
            expected: ty.display_name(),
            got: shorten(json),
        };
        let unsigned = |max: u64| -> Result<u64, ValueError> {
            let v = match json {
                J::Number(n) => n.as_u64(),
                J::String(s) => s.parse().ok(),
                _ => None,
            };
            v.filter(|v| *v <= max).ok_or_else(mismatch)
        };
        let signed = |min: i64, max: i64| -> Result<i64, ValueError> {
            let v = match json {
                J::Number(n) => n.as_i64(),
                J::String(s) => s.parse().ok(),
                _ => None,
            };
            v.filter(|v| (min..=max).contains(v)).ok_or_else(mismatch)
        };
        let float = || json.as_f64().ok_or_else(mismatch);
        let floats = |n: usize| -> Result<Vec<f32>, ValueError> {
            match json {
                J::Array(items) if items.len() == n => items
                    .iter()
                    .map(|v| v.as_f64().map(|f| f as f32).ok_or_else(mismatch))
                    .collect(),
                _ => Err(mismatch()),
            }
        };
        Ok(match ty {
            TypeDesc::Bool => Value::Bool(json.as_bool().ok_or_else(mismatch)?),
            TypeDesc::U8 => Value::Unsigned(unsigned(u64::from(u8::MAX))?),
            TypeDesc::U16 => Value::Unsigned(unsigned(u64::from(u16::MAX))?),
            TypeDesc::U32 => Value::Unsigned(unsigned(u64::from(u32::MAX))?),
            TypeDesc::U64 => Value::Unsigned(unsigned(u64::MAX)?),
            TypeDesc::I8 => Value::Signed(signed(i64::from(i8::MIN), i64::from(i8::MAX))?),
            TypeDesc::I16 => Value::Signed(signed(i64::from(i16::MIN), i64::from(i16::MAX))?),
            TypeDesc::I32 => Value::Signed(signed(i64::from(i32::MIN), i64::from(i32::MAX))?),
            TypeDesc::I64 => Value::Signed(signed(i64::MIN, i64::MAX)?),
            TypeDesc::F32 => Value::F32(float()? as f32),
            TypeDesc::F64 => Value::F64(float()?),
            TypeDesc::String => Value::String(json.as_str().ok_or_else(mismatch)?.to_owned()),
            TypeDesc::Identity => Value::Identity(
                json.as_str()
                    .and_then(|s| Identity::from_hex(s).ok())
                    .ok_or_else(mismatch)?,
            ),
            TypeDesc::ConnectionId => Value::ConnectionId(ConnectionId(unsigned(u64::MAX)?)),
            TypeDesc::Timestamp => {
                Value::Timestamp(Timestamp::from_micros(signed(i64::MIN, i64::MAX)?))
            }
            TypeDesc::Duration => Value::Duration(Duration::from_micros(unsigned(u64::MAX)?)),
            TypeDesc::ScheduleAt => {
                let object = json
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .ok_or_else(mismatch)?;
                if let Some(v) = object.get("interval") {
                    Value::ScheduleAt(ScheduleAt::Interval(Duration::from_micros(
                        v.as_u64().ok_or_else(mismatch)?,
                    )))
                } else if let Some(v) = object.get("at") {
                    Value::ScheduleAt(ScheduleAt::At(Timestamp::from_micros(
                        v.as_i64().ok_or_else(mismatch)?,
                    )))
                } else {
                    return Err(mismatch());
                }
            }
            TypeDesc::Vec2 => {
                let v = floats(2)?;
                Value::Vec2(Vec2::new(v[0], v[1]))
            }
            TypeDesc::Vec3 => {
                let v = floats(3)?;
                Value::Vec3(Vec3::new(v[0], v[1], v[2]))
            }
            TypeDesc::Option { of } => match json {
                J::Null => Value::Option(None),
                other => Value::Option(Some(Box::new(Value::from_json(of, other, path)?))),
            },
            TypeDesc::Array { of } => {
                let items = json.as_array().ok_or_else(mismatch)?;
                Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| Value::from_json(of, item, &format!("{path}[{i}]")))
                        .collect::<Result<_, _>>()?,
                )
            }
            TypeDesc::Struct { fields, .. } => {
                Value::Struct(fields_from_json(fields, json, path, mismatch)?)
            }
            TypeDesc::Enum { variants, .. } => {
                let (name, inner) = match json {
                    J::String(name) => (name.as_str(), None),
                    J::Object(o) if o.len() == 1 => {
                        let (k, v) = o.iter().next().ok_or_else(mismatch)?;
                        (k.as_str(), Some(v))
                    }
                    _ => return Err(mismatch()),
                };
                let (tag, variant) = variants
                    .iter()
                    .enumerate()
                    .find(|(_, v)| v.name == name)
                    .ok_or_else(mismatch)?;
                let fields = match inner {
                    None if variant.fields.is_empty() => Vec::new(),
                    None => return Err(mismatch()),
                    Some(inner) => {
                        let path = format!("{path}.{name}");
                        fields_from_json(&variant.fields, inner, &path, mismatch)?
                    }
                };
                Value::Enum {
                    tag: tag as u32,
                    fields,
                }
            }
        })
    }
}

fn decode_fields(fields: &[FieldDesc], input: &mut &[u8]) -> Result<Vec<Value>, RowDecodeError> {
    fields.iter().map(|f| Value::decode(&f.ty, input)).collect()
}

/// Fields from a JSON object (by name) or array (by position).
fn fields_from_json(
    fields: &[FieldDesc],
    json: &serde_json::Value,
    path: &str,
    mismatch: impl Fn() -> ValueError,
) -> Result<Vec<Value>, ValueError> {
    match json {
        serde_json::Value::Object(object) => {
            if let Some(unknown) = object
                .keys()
                .find(|k| !fields.iter().any(|f| &f.name == *k))
            {
                return Err(ValueError::Mismatch {
                    path: format!("{path}.{unknown}"),
                    expected: "no such field".into(),
                    got: shorten(&object[unknown]),
                });
            }
            fields
                .iter()
                .map(|f| {
                    let path = format!("{path}.{}", f.name);
                    let v = object.get(&f.name).ok_or_else(|| ValueError::Mismatch {
                        path: path.clone(),
                        expected: f.ty.display_name(),
                        got: "nothing".into(),
                    })?;
                    Value::from_json(&f.ty, v, &path)
                })
                .collect()
        }
        serde_json::Value::Array(items) if items.len() == fields.len() => fields
            .iter()
            .zip(items)
            .enumerate()
            .map(|(i, (f, v))| Value::from_json(&f.ty, v, &format!("{path}[{i}]")))
            .collect(),
        _ => Err(mismatch()),
    }
}

fn shorten(json: &serde_json::Value) -> String {
    let mut text = json.to_string();
    if text.len() > 64 {
        let cut = (0..=61)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Encodes reducer arguments given as JSON: an array (positional) or an object (by name).
pub fn encode_args_json(
    params: &[ParamSchema],
    json: &serde_json::Value,
) -> Result<Vec<u8>, ValueError> {
    let mut out = Vec::new();
    match json {
        serde_json::Value::Array(items) => {
            if items.len() != params.len() {
                return Err(ValueError::ArgumentCount {
                    expected: params.len(),
                    got: items.len(),
                });
            }
            for (p, item) in params.iter().zip(items) {
                Value::from_json(&p.ty, item, &p.name)?.encode(&p.ty, &mut out)?;
            }
        }
        serde_json::Value::Object(object) => {
            if let Some(unknown) = object
                .keys()
                .find(|k| !params.iter().any(|p| &p.name == *k))
            {
                return Err(ValueError::UnknownArgument(unknown.clone()));
            }
            for p in params {
                let item = object
                    .get(&p.name)
                    .ok_or_else(|| ValueError::MissingArgument(p.name.clone()))?;
                Value::from_json(&p.ty, item, &p.name)?.encode(&p.ty, &mut out)?;
            }
        }
        serde_json::Value::Null if params.is_empty() => {}
        other => {
            return Err(ValueError::Mismatch {
                path: "args".into(),
                expected: "an array or object of arguments".into(),
                got: shorten(other),
            });
        }
    }
    Ok(out)
}

/// Decodes reducer arguments (the parameters' values back to back) into values.
pub fn decode_args(params: &[ParamSchema], bytes: &[u8]) -> Result<Vec<Value>, RowDecodeError> {
    let mut input = bytes;
    let values = params
        .iter()
        .map(|p| Value::decode(&p.ty, &mut input))
        .collect::<Result<Vec<_>, _>>()?;
    if !input.is_empty() {
        return Err(RowDecodeError::TrailingBytes(input.len()));
    }
    Ok(values)
}

/// Decodes an encoded row of `table` (columns in declaration order) into its column values.
pub fn decode_row(table: &TableSchema, bytes: &[u8]) -> Result<Vec<Value>, RowDecodeError> {
    let mut input = bytes;
    let values = table
        .columns
        .iter()
        .map(|c| Value::decode(&c.ty, &mut input))
        .collect::<Result<Vec<_>, _>>()?;
    if !input.is_empty() {
        return Err(RowDecodeError::TrailingBytes(input.len()));
    }
    Ok(values)
}

/// Encodes column values (declaration order) as a row of `table`.
pub fn encode_row(table: &TableSchema, values: &[Value]) -> Result<Vec<u8>, ValueError> {
    if values.len() != table.columns.len() {
        return Err(ValueError::Mismatch {
            path: table.name.clone(),
            expected: format!("{} column(s)", table.columns.len()),
            got: format!("{} value(s)", values.len()),
        });
    }
    let mut out = Vec::new();
    for (c, v) in table.columns.iter().zip(values) {
        v.encode(&c.ty, &mut out).map_err(|e| match e {
            ValueError::Mismatch { expected, got, .. } => ValueError::Mismatch {
                path: format!("{}.{}", table.name, c.name),
                expected,
                got,
            },
            other => other,
        })?;
    }
    Ok(out)
}

/// Column values as a JSON object keyed by column name.
pub fn values_to_json(table: &TableSchema, values: &[Value]) -> serde_json::Value {
    serde_json::Value::Object(
        table
            .columns
            .iter()
            .zip(values)
            .map(|(c, v)| (c.name.clone(), v.to_json(&c.ty)))
            .collect(),
    )
}

/// An encoded row of `table` as a JSON object keyed by column name.
pub fn row_to_json(table: &TableSchema, bytes: &[u8]) -> Result<serde_json::Value, RowDecodeError> {
    Ok(values_to_json(table, &decode_row(table, bytes)?))
}

/// A row of `table` from JSON (an object keyed by column name, or an array in column order),
/// as column values.
pub fn row_values_from_json(
    table: &TableSchema,
    json: &serde_json::Value,
) -> Result<Vec<Value>, ValueError> {
    let fields: Vec<FieldDesc> = table
        .columns
        .iter()
        .map(|c| FieldDesc {
            name: c.name.clone(),
            ty: c.ty.clone(),
        })
        .collect();
    fields_from_json(&fields, json, &table.name, || ValueError::Mismatch {
        path: table.name.clone(),
        expected: format!("a {} row", table.name),
        got: shorten(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `clone_from` between any two kinds of value gives the source, and a string overwritten
    /// by a string keeps its buffer.
    #[test]
    fn clone_from_gives_the_source_and_keeps_string_buffers() {
        let values = vec![
            Value::Bool(true),
            Value::Unsigned(7),
            Value::Signed(-7),
            Value::F32(1.5),
            Value::F64(-2.5),
            Value::String("a long enough string".into()),
            Value::String(String::new()),
            Value::Identity(Identity([9; 32])),
            Value::ConnectionId(ConnectionId(3)),
            Value::Timestamp(Timestamp::from_micros(5)),
            Value::Duration(Duration::from_micros(6)),
            Value::ScheduleAt(ScheduleAt::Interval(Duration::from_millis(50))),
            Value::Vec2(Vec2::new(1.0, 2.0)),
            Value::Vec3(Vec3::new(1.0, 2.0, 3.0)),
            Value::Option(None),
            Value::Option(Some(Box::new(Value::String("inner".into())))),
            Value::Array(vec![Value::Unsigned(1), Value::String("x".into())]),
            Value::Array(Vec::new()),
            Value::Struct(vec![Value::F32(0.5), Value::Option(None)]),
            Value::Enum {
                tag: 2,
                fields: vec![Value::String("field".into())],
            },
            Value::Enum {
                tag: 0,
                fields: Vec::new(),
            },
        ];
        for from in &values {
            for to in &values {
                let mut value = from.clone();
                value.clone_from(to);
                assert_eq!(&value, to, "{from:?} overwritten by {to:?}");
            }
        }
        let mut held = Value::String(String::with_capacity(64));
        let Value::String(buffer) = &held else {
            unreachable!()
        };
        let before = buffer.as_ptr();
        held.clone_from(&Value::String("short".into()));
        let Value::String(buffer) = &held else {
            unreachable!()
        };
        assert_eq!((buffer.as_ptr(), buffer.as_str()), (before, "short"));
    }

    fn bytes(ty: &TypeDesc, json: serde_json::Value) -> Vec<u8> {
        Value::from_json(ty, &json, "v")
            .unwrap()
            .to_bytes(ty)
            .unwrap()
    }

    #[test]
    fn primitive_encodings() {
        assert_eq!(bytes(&TypeDesc::U32, json!(300)), [0xac, 0x02]);
        assert_eq!(bytes(&TypeDesc::I32, json!(-3)), [0x05]);
        assert_eq!(
            bytes(&TypeDesc::U64, json!("18446744073709551615")).len(),
            10
        );
        assert_eq!(bytes(&TypeDesc::I8, json!(-1)), [0xff]);
        assert_eq!(bytes(&TypeDesc::F32, json!(1.5)), 1.5f32.to_le_bytes());
        assert_eq!(bytes(&TypeDesc::String, json!("hé")), [3, b'h', 0xc3, 0xa9]);
        assert_eq!(
            bytes(&TypeDesc::ScheduleAt, json!({"at": -1})),
            [1, 0x01],
            "tag byte then zigzag micros"
        );
        let opt = TypeDesc::Option {
            of: Box::new(TypeDesc::Bool),
        };
        assert_eq!(bytes(&opt, json!(null)), [0]);
        assert_eq!(bytes(&opt, json!(true)), [1, 1]);
    }

    #[test]
    fn json_errors_carry_the_path_and_value() {
        let err = Value::from_json(&TypeDesc::U8, &json!(256), "amount").unwrap_err();
        assert_eq!(
            err,
            ValueError::Mismatch {
                path: "amount".into(),
                expected: "u8".into(),
                got: "256".into()
            }
        );
        let params = vec![ParamSchema {
            name: "n".into(),
            ty: TypeDesc::U8,
        }];
        assert_eq!(
            encode_args_json(&params, &json!({"m": 1})),
            Err(ValueError::UnknownArgument("m".into()))
        );
        assert_eq!(
            encode_args_json(&params, &json!({})),
            Err(ValueError::MissingArgument("n".into()))
        );
        assert_eq!(
            encode_args_json(&params, &json!([1, 2])),
            Err(ValueError::ArgumentCount {
                expected: 1,
                got: 2
            })
        );
        assert_eq!(encode_args_json(&[], &json!(null)), Ok(vec![]));
        assert_eq!(
            decode_args(&params, &encode_args_json(&params, &json!([7])).unwrap()),
            Ok(vec![Value::Unsigned(7)])
        );
    }

    #[test]
    fn accessors_read_the_matching_variants() {
        assert_eq!(Value::ConnectionId(ConnectionId(9)).as_u64(), Some(9));
        assert_eq!(
            Value::Timestamp(Timestamp::from_micros(-4)).as_i64(),
            Some(-4)
        );
        assert_eq!(Value::F32(0.5).as_f64(), Some(0.5));
        assert_eq!(Value::String("a".into()).as_str(), Some("a"));
        assert_eq!(Value::Bool(true).as_u64(), None);
    }
}
