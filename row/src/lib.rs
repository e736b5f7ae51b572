//! # orrery-row
//!
//! The Orrery data model, shared by the server and every client: who is calling
//! ([`Identity`], [`ConnectionId`]), simulation time ([`Timestamp`], [`ScheduleAt`]), type
//! descriptors ([`TypeDesc`]) and the [`OrreryType`] codec, schema-driven [`Value`]s and their
//! JSON mapping, the module schema ([`ModuleSchema`]) and the published-row records of
//! subscription updates ([`WireLayout`], [`WireRecord`], [`WireRow`]).
//!
//! It is the single owner of the row format specified in `netcode/ROW_FORMAT.md`: nothing else
//! in the workspace defines a value, a type descriptor or a schema type. The engine encodes rows
//! and decodes reducer arguments with it; the publisher builds wire records with it; the Rust
//! client, the FFI and the CLI decode them with it.
//!
//! Dependency rule: this crate is a leaf. It depends on serde, serde_json, glam, smallvec and
//! thiserror only, never on the engine, bevy, netcode, tokio or any I/O, so a client can use it
//! without pulling in the server (see `docs/architecture.md`; `tests/tests/layering.rs` checks it).
//!
//! Every decoder takes hostile input: it returns a [`RowDecodeError`], never panics, and
//! never allocates more than the input could describe.
//!
//! ```
//! use orrery_row::{OrreryType, TypeDesc, Value};
//!
//! let bytes = (300u32, -3i32).0.to_bytes();
//! assert_eq!(bytes, [0xac, 0x02]);
//! assert_eq!(Value::from_bytes(&TypeDesc::U32, &bytes), Ok(Value::Unsigned(300)));
//! ```

pub mod codec;
pub mod identity;
pub mod schema;
pub mod time;
pub mod value;
pub mod wire;

pub use codec::{FieldDesc, OrreryType, RowDecodeError, TypeDesc, VariantDesc};
pub use identity::{ConnectionId, Identity};
pub use schema::{
    ColumnSchema, Durability, IndexKind, IndexSchema, ModuleSchema, ParamSchema, ReducerKind,
    ReducerSchema, ScheduleSchema, TableSchema, Visibility,
};
pub use time::{ScheduleAt, Timestamp};
pub use value::{
    Value, ValueError, decode_args, decode_row, encode_args_json, encode_row, row_to_json,
    row_values_from_json, values_to_json,
};
pub use wire::{
    ColumnChange, DecodedPayload, HandleRecord, RowHandles, WireColumn, WireLayout, WireRecord,
    WireRow,
};
