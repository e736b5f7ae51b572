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
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<(usize, &ColumnSchema)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
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

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The reducer named `name`.
    pub fn reducer(&self, name: &str) -> Option<&ReducerSchema> {
        self.reducers.iter().find(|r| r.name == name)
    }
}
