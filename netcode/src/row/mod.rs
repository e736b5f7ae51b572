//! The Orrery row format, schema-driven: what non-engine code needs to read and write rows,
//! reducer arguments and published-row updates from the module schema alone.
//!
//! - [`schema`]: serde types for the schema JSON the server serves (`GET /v1/schema`).
//! - [`value`]: [`Value`], decoded and encoded by [`TypeDesc`], with the engine's JSON mapping
//!   ([`encode_args_json`] encodes reducer arguments exactly as `POST /v1/call` does).
//! - [`wire`]: [`WireLayout`], the published-row records (upsert / delta / delete, quantized
//!   columns) of `TableUpdate` payloads, and [`WireRow`], a row as a client mirror holds it.
//! - [`codec`]: varints, zigzag and [`RowDecodeError`].
//!
//! The format is specified in `netcode/ROW_FORMAT.md`. The engine (`orrery_engine::codec`,
//! `::value`, `::subscription::wire`) is the source of truth; this module does not depend on
//! it and `tests/tests/row_format.rs` checks the two agree byte for byte. Every decoder takes
//! hostile input: it returns an error, never panics, and never allocates more than the input
//! could describe.

pub mod codec;
pub mod schema;
pub mod value;
pub mod wire;

pub use codec::RowDecodeError;
pub use schema::{
    ColumnSchema, Durability, FieldDesc, IndexKind, IndexSchema, ModuleSchema, ParamSchema,
    ReducerKind, ReducerSchema, ScheduleSchema, TableSchema, TypeDesc, VariantDesc, Visibility,
};
pub use value::{
    ScheduleAt, Value, ValueError, decode_args, decode_row, encode_args_json, encode_row,
    row_to_json, row_values_from_json, values_to_json,
};
pub use wire::{ColumnChange, WireLayout, WireRecord, WireRow};
