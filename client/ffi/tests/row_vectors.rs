//! The shared row-format vectors (`tests/vectors/row_vectors.json`) against the reference
//! codec, `orrery-row`: every vector decodes to its value (or fails), and canonical ones encode
//! back to their bytes. The C# and C++ decoders pass the same file (`csharp.rs`, `cpp.rs`).

use orrery_client::row::{TypeDesc, Value};
use serde_json::Value as J;

/// The vectors file, parsed.
fn vectors() -> Vec<J> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/row_vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("read row_vectors.json");
    let doc: J = serde_json::from_str(&text).expect("row_vectors.json is JSON");
    doc["vectors"].as_array().expect("vectors").clone()
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// JSON equality with numbers compared by value (1 equals 1.0; 64-bit integers exactly).
fn same(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Number(x), J::Number(y)) => {
            (x.as_u64().is_some() && x.as_u64() == y.as_u64())
                || (x.as_i64().is_some() && x.as_i64() == y.as_i64())
                || x.as_f64() == y.as_f64()
        }
        (J::Array(x), J::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (J::Object(x), J::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn the_reference_codec_passes_every_vector() {
    let vectors = vectors();
    assert!(vectors.len() >= 60, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for v in &vectors {
        let name = v["name"].as_str().expect("name");
        let ty: TypeDesc = serde_json::from_value(v["type"].clone()).expect("type");
        let bytes = unhex(v["hex"].as_str().expect("hex"));
        let decoded = Value::from_bytes(&ty, &bytes);
        match (decoded, v.get("error")) {
            (Ok(value), None) => {
                let json = value.to_json(&ty);
                if !same(&json, &v["value"]) {
                    failures.push(format!("{name}: decoded {json}, expected {}", v["value"]));
                }
                let canonical = v.get("canonical").and_then(J::as_bool).unwrap_or(true);
                let encoded = value.to_bytes(&ty).expect("re-encode");
                if canonical && encoded != bytes {
                    failures.push(format!("{name}: re-encoded {encoded:02x?}"));
                }
            }
            (Ok(value), Some(why)) => {
                failures.push(format!(
                    "{name}: decoded {value:?}, expected an error ({why})"
                ));
            }
            (Err(e), None) => failures.push(format!("{name}: {e}")),
            (Err(_), Some(_)) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
