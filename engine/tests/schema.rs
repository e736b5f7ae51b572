//! The schema export.

mod common;

use serde_json::json;

#[test]
fn schema_exports_tables_indexes_visibility_and_reducers() {
    let engine = common::engine();
    let schema = engine.schema().to_json();
    let account = &schema["tables"][0];
    assert_eq!(account["name"], "account");
    assert_eq!(account["id"], 0);
    assert_eq!(account["visibility"], json!({"kind": "public"}));
    assert_eq!(account["durability"], "durable");
    assert_eq!(account["primary_key"], 0);
    assert_eq!(
        account["columns"][0],
        json!({"name": "id", "type": {"kind": "u64"}, "auto_inc": true})
    );
    assert_eq!(account["columns"][3]["type"], json!({"kind": "identity"}));
    assert_eq!(
        account["indexes"],
        json!([
            {"column": "id", "kind": "primary"},
            {"column": "name", "kind": "unique"},
            {"column": "level", "kind": "btree"},
        ])
    );
    let npc = &schema["tables"][1];
    assert_eq!(
        npc["columns"][1]["type"],
        json!({"kind": "enum", "name": "Faction", "variants": [
            {"name": "Neutral", "fields": []},
            {"name": "Red", "fields": []},
            {"name": "Blue", "fields": []},
        ]})
    );
    let respawn = &schema["tables"][2];
    assert_eq!(respawn["visibility"], json!({"kind": "private"}));
    assert_eq!(
        respawn["scheduled"],
        json!({"reducer": "respawn_npc", "at_column": "scheduled_at"})
    );
    let hit = &schema["tables"][3];
    assert_eq!(
        (hit["event"].clone(), hit["durability"].clone()),
        (json!(true), json!("transient"))
    );

    let reducers = schema["reducers"].as_array().unwrap();
    let transfer = reducers.iter().find(|r| r["name"] == "transfer").unwrap();
    assert_eq!(
        transfer,
        &json!({"name": "transfer", "kind": "user", "params": [
            {"name": "from", "type": {"kind": "u64"}},
            {"name": "to", "type": {"kind": "u64"}},
            {"name": "amount", "type": {"kind": "i64"}},
        ]})
    );
    let kinds: Vec<(&str, &str)> = reducers
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["kind"].as_str().unwrap()))
        .filter(|(_, k)| *k != "user")
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("init", "init"),
            ("connected", "client_connected"),
            ("disconnected", "client_disconnected"),
            ("respawn_npc", "scheduled")
        ]
    );
    // The JSON round-trips into the typed schema.
    let back: orrery_engine::schema::ModuleSchema = serde_json::from_value(schema).unwrap();
    assert_eq!(&back, engine.schema());
}

#[test]
fn invalid_modules_are_rejected_with_a_reason() {
    use common::*;
    use orrery_engine::{Module, ModuleError};
    let err = Module::builder("m")
        .table::<Account>()
        .table::<Account>()
        .build()
        .err()
        .unwrap();
    assert_eq!(err, ModuleError::DuplicateTable("account".into()));
    let err = Module::builder("m")
        .table::<Respawn>()
        .build()
        .err()
        .unwrap();
    assert_eq!(
        err,
        ModuleError::MissingScheduledReducer {
            table: "respawn".into(),
            reducer: "respawn_npc".into()
        }
    );
    let err = Module::builder("m")
        .reducers(orrery_engine::reducers![transfer, transfer])
        .build()
        .err()
        .unwrap();
    assert_eq!(err, ModuleError::DuplicateReducer("transfer".into()));
}
