//! The module schema as the server serves it (`GET /v1/schema`): tables, columns and their
//! types, indexes, visibility, reducers and their parameters.
//!
//! These serde types read (and write) exactly the JSON the engine exports
//! (`orrery_engine::schema::ModuleSchema::to_json`); unknown fields are ignored so newer
//! servers stay readable. See `netcode/ROW_FORMAT.md` for the JSON shape.

use serde::{Deserialize, Serialize};

/// A value's type: drives the row codec ([`crate::row::Value::decode`]). JSON:
/// `{"kind": "u32"}`, `{"kind": "option", "of": {..}}`,
/// `{"kind": "struct", "name": "Item", "fields": [{"name": "id", "type": {..}}]}`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TypeDesc {
    /// One byte, 0 or 1.
    Bool,
    /// One raw byte.
    U8,
    /// LEB128 varint.
    U16,
    /// LEB128 varint.
    U32,
    /// LEB128 varint.
    U64,
    /// One raw byte, two's complement.
    I8,
    /// Zigzag LEB128 varint.
    I16,
    /// Zigzag LEB128 varint.
    I32,
    /// Zigzag LEB128 varint.
    I64,
    /// 4 bytes little-endian IEEE-754.
    F32,
    /// 8 bytes little-endian IEEE-754.
    F64,
    /// Varint byte length, then UTF-8 bytes.
    String,
    /// 32 raw bytes.
    Identity,
    /// LEB128 varint.
    ConnectionId,
    /// Zigzag varint microseconds since the Unix epoch.
    Timestamp,
    /// Varint microseconds.
    Duration,
    /// Tag byte (0 = interval, 1 = at) then a duration or a timestamp.
    ScheduleAt,
    /// Two f32 (x, y).
    Vec2,
    /// Three f32 (x, y, z).
    Vec3,
    /// Tag byte 0 (none) or 1 (some) then the value.
    Option {
        /// The inner type.
        of: Box<TypeDesc>,
    },
    /// Varint count then the items (an array of `u8` is a byte string).
    Array {
        /// The item type.
        of: Box<TypeDesc>,
    },
    /// Fields in declaration order.
    Struct {
        /// Rust type name.
        name: String,
        /// The fields.
        fields: Vec<FieldDesc>,
    },
    /// Varint variant index then that variant's fields in order.
    Enum {
        /// Rust type name.
        name: String,
        /// The variants in declaration order.
        variants: Vec<VariantDesc>,
    },
}

/// A named field of a struct type or enum variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDesc {
    /// Field name (`"0"`, `"1"`, … for tuple fields).
    pub name: String,
    /// Field type.
    #[serde(rename = "type")]
    pub ty: TypeDesc,
}

/// One variant of an enum type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantDesc {
    /// Variant name.
    pub name: String,
    /// Its fields (empty for unit variants).
    pub fields: Vec<FieldDesc>,
}

impl TypeDesc {
    /// A short human-readable name (`u64`, `Option<String>`, `Vec<u8>`, `Account`), as the
    /// engine's error messages use it.
    pub fn display_name(&self) -> String {
        match self {
            TypeDesc::Bool => "bool".into(),
            TypeDesc::U8 => "u8".into(),
            TypeDesc::U16 => "u16".into(),
            TypeDesc::U32 => "u32".into(),
            TypeDesc::U64 => "u64".into(),
            TypeDesc::I8 => "i8".into(),
            TypeDesc::I16 => "i16".into(),
            TypeDesc::I32 => "i32".into(),
            TypeDesc::I64 => "i64".into(),
            TypeDesc::F32 => "f32".into(),
            TypeDesc::F64 => "f64".into(),
            TypeDesc::String => "String".into(),
            TypeDesc::Identity => "Identity".into(),
            TypeDesc::ConnectionId => "ConnectionId".into(),
            TypeDesc::Timestamp => "Timestamp".into(),
            TypeDesc::Duration => "Duration".into(),
            TypeDesc::ScheduleAt => "ScheduleAt".into(),
            TypeDesc::Vec2 => "Vec2".into(),
            TypeDesc::Vec3 => "Vec3".into(),
            TypeDesc::Option { of } => format!("Option<{}>", of.display_name()),
            TypeDesc::Array { of } => format!("Vec<{}>", of.display_name()),
            TypeDesc::Struct { name, .. } | TypeDesc::Enum { name, .. } => name.clone(),
        }
    }

    /// How many `f32`/`f64` components a quantizable type has (`f32`/`f64`: 1, `Vec2`: 2,
    /// `Vec3`: 3); `None` for types `quantize` does not apply to.
    pub fn float_components(&self) -> Option<usize> {
        match self {
            TypeDesc::F32 | TypeDesc::F64 => Some(1),
            TypeDesc::Vec2 => Some(2),
            TypeDesc::Vec3 => Some(3),
            _ => None,
        }
    }
}

/// Who may see a table's rows (enforced by the server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Visibility {
    /// Never leaves the server.
    Private,
    /// Any subscriber may see every row.
    Public,
    /// A row is visible only to the connection whose identity equals `column`.
    Owner {
        /// The identity column.
        column: String,
    },
}

/// Whether a table's rows are written to the commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Written to the commit log and snapshots (the default).
    Durable,
    /// Simulation scratch state: never written, empty after a restart.
    Transient,
}

/// What an index does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IndexKind {
    /// The primary key: unique, hashed.
    Primary,
    /// Unique, hashed.
    Unique,
    /// Ordered, non-unique, supports range filters.
    Btree,
    /// Spatial hash grid over a `Vec2`/`Vec3` column.
    Spatial {
        /// Grid cell edge length, in world units.
        cell: f32,
    },
}

/// One column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSchema {
    /// Column (field) name.
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub ty: TypeDesc,
    /// Whether a zero written on insert is replaced by the next sequence value.
    pub auto_inc: bool,
    /// Quantization step for floats sent to clients (`#[quantize(step)]`); absent when the
    /// column is sent exactly.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub quantize: Option<f32>,
}

/// One index over one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSchema {
    /// The indexed column.
    pub column: String,
    /// The index kind (flattened: `{"column": "pos", "kind": "spatial", "cell": 25.0}`).
    #[serde(flatten)]
    pub kind: IndexKind,
}

/// A schedule table's firing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSchema {
    /// The reducer fired with each due row.
    pub reducer: String,
    /// The `ScheduleAt` column.
    pub at_column: String,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    /// Position of the table in the module; the table id on the wire.
    pub id: u32,
    /// Table name (`#[table(name = ..)]`).
    pub name: String,
    /// The Rust row type.
    pub rust_type: String,
    /// Columns in declaration (= wire) order.
    pub columns: Vec<ColumnSchema>,
    /// Index of the primary key in `columns`.
    pub primary_key: usize,
    /// All indexes, the primary key's first.
    pub indexes: Vec<IndexSchema>,
    /// Who may see rows.
    pub visibility: Visibility,
    /// Whether rows are written to the commit log.
    pub durability: Durability,
    /// Event table: rows live for the tick they are inserted in (clients see inserts only).
    pub event: bool,
    /// Set for schedule tables.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scheduled: Option<ScheduleSchema>,
}

impl TableSchema {
    /// The column named `name` and its position.
    pub fn column(&self, name: &str) -> Option<(usize, &ColumnSchema)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
    }

    /// The primary key column (`None` only for a malformed schema whose `primary_key` is out
    /// of range).
    pub fn primary_key_column(&self) -> Option<&ColumnSchema> {
        self.columns.get(self.primary_key)
    }
}

/// What a reducer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReducerKind {
    /// Callable by clients.
    User,
    /// Runs once when a new database is created.
    Init,
    /// Runs when a client connects; an error refuses the connection.
    ClientConnected,
    /// Runs when a client disconnects.
    ClientDisconnected,
    /// Fired by a schedule table; not callable by clients.
    Scheduled,
}

/// One reducer parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSchema {
    /// Parameter name.
    pub name: String,
    /// Parameter type.
    #[serde(rename = "type")]
    pub ty: TypeDesc,
}

/// One reducer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReducerSchema {
    /// Reducer name.
    pub name: String,
    /// What it is for (only [`ReducerKind::User`] reducers are callable by clients).
    pub kind: ReducerKind,
    /// Parameters in call order (excluding the context).
    pub params: Vec<ParamSchema>,
}

/// The whole module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleSchema {
    /// Module name.
    pub name: String,
    /// Tables in id order.
    pub tables: Vec<TableSchema>,
    /// Reducers in registration order.
    pub reducers: Vec<ReducerSchema>,
}

impl ModuleSchema {
    /// Parses the schema JSON the server serves.
    pub fn from_json_str(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The table with wire id `id`.
    pub fn table_by_id(&self, id: u32) -> Option<&TableSchema> {
        self.tables
            .get(id as usize)
            .filter(|t| t.id == id)
            .or_else(|| self.tables.iter().find(|t| t.id == id))
    }

    /// The reducer named `name`.
    pub fn reducer(&self, name: &str) -> Option<&ReducerSchema> {
        self.reducers.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_engine_json_shape() {
        let json = r#"{
          "name": "demo",
          "tables": [{
            "id": 0, "name": "npc", "rust_type": "Npc",
            "columns": [
              {"name": "id", "type": {"kind": "u64"}, "auto_inc": true},
              {"name": "pos", "type": {"kind": "vec2"}, "auto_inc": false, "quantize": 0.01},
              {"name": "tags", "type": {"kind": "array", "of": {"kind": "string"}}, "auto_inc": false}
            ],
            "primary_key": 0,
            "indexes": [{"column": "id", "kind": "primary"},
                        {"column": "pos", "kind": "spatial", "cell": 25.0}],
            "visibility": {"kind": "owner", "column": "owner"},
            "durability": "transient",
            "event": false,
            "future_field": 1
          }],
          "reducers": [{"name": "spawn", "kind": "user",
                        "params": [{"name": "at", "type": {"kind": "option", "of": {"kind": "vec3"}}}]}]
        }"#;
        let schema = ModuleSchema::from_json_str(json).unwrap();
        let npc = schema.table("npc").unwrap();
        assert_eq!(npc.columns[1].quantize, Some(0.01));
        assert_eq!(npc.indexes[1].kind, IndexKind::Spatial { cell: 25.0 });
        assert_eq!(
            npc.visibility,
            Visibility::Owner {
                column: "owner".into()
            }
        );
        assert_eq!(npc.durability, Durability::Transient);
        assert_eq!(schema.table_by_id(0).unwrap().name, "npc");
        assert_eq!(
            schema.reducer("spawn").unwrap().params[0].ty.display_name(),
            "Option<Vec3>"
        );
    }
}
