//! The module schema: tables, columns, indexes, visibility and reducers, exported as JSON for
//! the control plane and client code generators.

use serde::{Deserialize, Serialize};

use crate::codec::TypeDesc;

/// Who may see a table's rows. Stored now; enforced by the subscription layer.
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
    /// Quantization step for floats sent to clients (`#[quantize(step)]`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub quantize: Option<f32>,
}

/// One index over one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSchema {
    /// The indexed column.
    pub column: String,
    /// The index kind.
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
    /// Event table: rows live for the tick they are inserted in.
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
    /// of range, as a hostile server could send).
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
    /// What it is for.
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
    /// The schema as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Parses the schema JSON the server serves (`GET /v1/schema`). Unknown fields are
    /// ignored, so older clients read newer schemas.
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
