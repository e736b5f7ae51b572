//! The schema fingerprint: which module schema wrote a log segment or a snapshot. Segment and
//! snapshot headers carry it (a CRC32C of what decides the stored row format: per table, in
//! id order, its name, columns and their types, primary key, durability and event flag), and
//! the data directory keeps each schema it has been opened with as
//! `schemas/<fingerprint>.json`, so that opening it with a different schema is an error that
//! names the tables that differ instead of a decode failure deep in recovery.
//!
//! A module may add tables at the end (their ids are new); every table the data was written
//! with must be unchanged.

use std::fs;
use std::path::{Path, PathBuf};

use super::DurabilityError;
use super::log::sync_dir;
use crate::schema::{ModuleSchema, Visibility};

const DIR: &str = "schemas";

/// The part of a schema the stored bytes depend on: per table its id, name, columns and their
/// types, primary key, durability and event flag (not indexes, visibility or reducers).
fn stored_form(schema: &ModuleSchema) -> ModuleSchema {
    let mut stored = ModuleSchema {
        name: String::new(),
        tables: schema.tables.clone(),
        reducers: Vec::new(),
    };
    for table in &mut stored.tables {
        table.rust_type.clear();
        table.indexes.clear();
        table.visibility = Visibility::Public;
        table.scheduled = None;
    }
    stored
}

/// The fingerprint of `schema` (never 0, which marks files written before fingerprints).
pub(crate) fn fingerprint(schema: &ModuleSchema) -> u32 {
    let text = stored_form(schema).to_json().to_string();
    crc32c::crc32c(text.as_bytes()).max(1)
}

fn schema_path(dir: &Path, fingerprint: u32) -> PathBuf {
    dir.join(DIR).join(format!("{fingerprint:08x}.json"))
}

/// Records `schema` in the data directory (once per fingerprint; written atomically).
pub(crate) fn save(dir: &Path, schema: &ModuleSchema) -> Result<(), DurabilityError> {
    let path = schema_path(dir, fingerprint(schema));
    if path.exists() {
        return Ok(());
    }
    let folder = dir.join(DIR);
    fs::create_dir_all(&folder).map_err(|e| DurabilityError::io("create", &folder, e))?;
    let temp = path.with_extension("json.tmp");
    let text = stored_form(schema).to_json().to_string();
    fs::write(&temp, text).map_err(|e| DurabilityError::io("write", &temp, e))?;
    fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| DurabilityError::io("fsync", &temp, e))?;
    fs::rename(&temp, &path).map_err(|e| DurabilityError::io("rename", &temp, e))?;
    sync_dir(&folder).map_err(|e| DurabilityError::io("fsync", &folder, e))
}

/// Checks that `file`, written under schema `written`, can be read by `schema`: the same
/// fingerprint, or an older schema whose every table is unchanged in `schema`. 0 (a file from
/// before fingerprints) is accepted.
pub(crate) fn check(
    dir: &Path,
    written: u32,
    schema: &ModuleSchema,
    file: &Path,
) -> Result<(), DurabilityError> {
    if written == 0 || written == fingerprint(schema) {
        return Ok(());
    }
    let mismatch = |tables: Vec<String>, detail: String| DurabilityError::SchemaMismatch {
        path: file.to_owned(),
        tables,
        detail,
    };
    let path = schema_path(dir, written);
    let Ok(text) = fs::read_to_string(&path) else {
        return Err(mismatch(
            Vec::new(),
            format!(
                "written by schema {written:08x}, of which {} holds no copy",
                dir.join(DIR).display()
            ),
        ));
    };
    let old = ModuleSchema::from_json_str(&text).map_err(|e| {
        mismatch(
            Vec::new(),
            format!("schema file {} is unreadable: {e}", path.display()),
        )
    })?;
    let new = stored_form(schema);
    let mut differ = Vec::new();
    for (id, old_table) in old.tables.iter().enumerate() {
        let name = &old_table.name;
        match new.tables.get(id) {
            Some(new_table) if new_table == old_table => {}
            Some(new_table) if new_table.name == old_table.name => {
                differ.push(format!("{name} (columns, key or durability changed)"))
            }
            Some(new_table) => {
                differ.push(format!("{name} (table {id} is now {})", new_table.name))
            }
            None => differ.push(format!("{name} (removed)")),
        }
    }
    if differ.is_empty() {
        // The module only added tables at the end.
        return Ok(());
    }
    Err(mismatch(
        differ,
        format!(
            "written by schema {written:08x}, the module's is {:08x}; migrate the data or \
             open it with the module that wrote it",
            fingerprint(schema)
        ),
    ))
}
