//! `deploy/fleet.yaml` against the Agones Fleet schema (`deploy/schema/fleet.schema.json`, the
//! `openAPIV3Schema` of the `fleets.agones.dev` CRD of Agones 1.61, see
//! `deploy/schema/README.md`), and the facts the Agones integration relies on.

use std::path::PathBuf;

use serde::Deserialize as _;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of a multi-document YAML file, as JSON values.
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(deploy_dir().join("schema/fleet.schema.json")).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).expect("the Fleet schema compiles")
}

fn fleets(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["kind"] == "Fleet" && d["apiVersion"] == "agones.dev/v1")
        .collect()
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_fleet_validates_against_the_agones_schema() {
    let docs = documents("fleet.yaml");
    let fleets = fleets(&docs);
    assert!(fleets.len() >= 2, "one Fleet per zone expected");
    let validator = validator();
    for fleet in &fleets {
        let errors = errors(&validator, fleet);
        assert!(
            errors.is_empty(),
            "{}: {errors:#?}",
            fleet["metadata"]["name"]
        );
    }
}

#[test]
fn broken_fleets_are_refused() {
    let docs = documents("fleet.yaml");
    let fleet = fleets(&docs)[0].clone();
    let validator = validator();

    let mut wrong_type = fleet.clone();
    wrong_type["spec"]["replicas"] = Value::String("one".into());
    assert!(!errors(&validator, &wrong_type).is_empty());

    let mut negative = fleet.clone();
    negative["spec"]["replicas"] = Value::from(-1);
    assert!(!errors(&validator, &negative).is_empty());

    let mut no_template = fleet.clone();
    no_template["spec"]
        .as_object_mut()
        .unwrap()
        .remove("template");
    assert!(!errors(&validator, &no_template).is_empty());

    let mut bad_policy = fleet.clone();
    bad_policy["spec"]["template"]["spec"]["ports"][0]["portPolicy"] = "Sometimes".into();
    assert!(!errors(&validator, &bad_policy).is_empty());

    let mut bad_protocol = fleet;
    bad_protocol["spec"]["template"]["spec"]["ports"][0]["protocol"] = "SCTP-ish".into();
    assert!(!errors(&validator, &bad_protocol).is_empty());
}

#[test]
fn fleets_run_sample_mmo_under_agones_one_zone_each() {
    let docs = documents("fleet.yaml");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(kinds.contains(&"ConfigMap"), "{kinds:?}");
    let config_map = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let zones_toml = config_map["data"]["zones.toml"].as_str().unwrap();

    let mut zones = Vec::new();
    for fleet in fleets(&docs) {
        let template = &fleet["spec"]["template"];
        let zone = template["metadata"]["labels"]["orrery.dev/zone"]
            .as_str()
            .expect("the zone label on the GameServer template")
            .to_owned();
        let spec = &template["spec"];
        // Health: pings every 2 s (AgonesConfig::default) fit the period several times over.
        let period = spec["health"]["periodSeconds"].as_i64().unwrap();
        assert!(period >= 4, "periodSeconds {period} vs 2 s pings");
        assert!(spec["health"]["failureThreshold"].as_i64().unwrap() >= 2);
        // Ports: the game over UDP, the control plane over TCP.
        let ports = spec["ports"].as_array().unwrap();
        let protocols: Vec<&str> = ports
            .iter()
            .map(|p| p["protocol"].as_str().unwrap())
            .collect();
        assert!(
            protocols.contains(&"UDP") && protocols.contains(&"TCP"),
            "{protocols:?}"
        );
        for port in ports {
            assert!(port["portPolicy"].is_string(), "{port}");
        }
        let container = &spec["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--agones"), "{args:?}");
        let at = args.iter().position(|a| *a == "--zone").unwrap();
        assert_eq!(args[at + 1], "$(ZONE)");
        let env = container["env"].as_array().unwrap();
        let zone_env = env.iter().find(|e| e["name"] == "ZONE").unwrap();
        assert_eq!(zone_env["value"].as_str().unwrap(), zone);
        assert!(args.contains(&"--secret-dir"), "{args:?}");
        assert!(
            zones_toml.contains(&format!("id = {zone}")),
            "zone {zone} is not in zones.toml"
        );
        zones.push(zone);
    }
    zones.sort();
    zones.dedup();
    assert!(zones.len() >= 2, "{zones:?}");
}
