//! The `orrery` binary against a live sample-mmo server: `identity new`, `schema`, `call`
//! (committed and refused), `sql`, `generate`, and `subscribe` printing row changes live
//! while other commands change the world.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Server;

mod support;

/// Runs `orrery --server URL ARGS…`, waiting for it to exit.
fn orrery(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orrery"))
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("ORRERY_TOKEN")
        .env_remove("ORRERY_TOKEN_FILE")
        .output()
        .expect("run orrery")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "orrery failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn commands_against_a_live_server() {
    let server = Server::start();
    let url = server.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("walker.token");
    let token_arg = token_file.to_str().unwrap();

    // identity new --save
    let created = json_lines(&ok(&orrery(url, &["identity", "new", "--save", token_arg])));
    assert_eq!(created[0]["identity"].as_str().unwrap().len(), 64);
    let saved = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(saved.trim(), created[0]["token"].as_str().unwrap());

    // schema
    let schema: Value = serde_json::from_str(&ok(&orrery(url, &["schema"]))).unwrap();
    assert_eq!(schema["name"], "sample-mmo");
    assert!(
        schema["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "avatar")
    );

    // A live subscriber, started before the world changes.
    let mut subscriber = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(["--server", url, "subscribe", "SELECT * FROM avatar"])
        .env_remove("ORRERY_TOKEN")
        .env_remove("ORRERY_TOKEN_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start orrery subscribe");
    let (tx, lines) = mpsc::channel::<Value>();
    let stdout = subscriber.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    let wait_line = |what: &str, want: &dyn Fn(&Value) -> bool| -> Value {
        let until = Instant::now() + Duration::from_secs(20);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("`orrery subscribe` printed no {what}");
    };
    wait_line("subscribed line", &|l| l["event"] == "subscribed");

    // call: committed, then refused with the reducer's message.
    let with_token = |args: &[&str]| {
        let mut all = vec!["--token-file", token_arg];
        all.extend_from_slice(args);
        orrery(url, &all)
    };
    let entered = json_lines(&ok(&with_token(&[
        "call",
        "enter_world",
        r#"["cli_walker"]"#,
    ])));
    assert_eq!(entered[0]["ok"], true);
    assert!(entered[0]["tick"].as_u64().is_some());
    let inserted = wait_line("insert of the new avatar", &|l| {
        l["event"] == "insert" && l["row"]["name"] == "cli_walker"
    });
    assert_eq!(inserted["table"], "avatar");
    let start_x = inserted["row"]["position"][0].as_f64().unwrap();

    let refused = with_token(&["call", "enter_world", r#"["x"]"#]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("3-16 characters"), "{stderr}");
    let no_token = orrery(url, &["call", "say", r#"["hi", false]"#]);
    assert!(!no_token.status.success());
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("needs an identity"));

    // The move shows up live in the subscriber as updates of the avatar.
    ok(&with_token(&["call", "move_to", "[[250, 0], false]"]));
    wait_line("update moving the avatar east", &|l| {
        l["event"] == "update"
            && l["new"]["name"] == "cli_walker"
            && l["new"]["position"][0].as_f64().unwrap() > start_x + 0.5
    });
    let _ = subscriber.kill();
    let _ = subscriber.wait();

    // sql: the same row through a one-off read.
    let rows = json_lines(&ok(&with_token(&[
        "sql",
        "SELECT * FROM avatar WHERE name = 'cli_walker'",
    ])));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["owner"], created[0]["identity"]);
    let near = json_lines(&ok(&with_token(&[
        "sql",
        "SELECT * FROM npc WHERE within(position, :focus, 1000)",
        "--focus",
        "0,0",
    ])));
    assert_eq!(
        near.len(),
        200,
        "every NPC is within 1 km of the centre of a 600 m world"
    );
    let bad = with_token(&["sql", "SELECT * FROM npc", "--focus", "1"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--focus takes 2 or 3 numbers"));

    // generate, from the server and from a schema file.
    for (lang, file, needle) in [
        (
            "csharp",
            "SampleMmo.g.cs",
            "public sealed partial class Avatar",
        ),
        ("cpp", "sample_mmo.hpp", "struct Avatar {"),
        ("rust", "sample_mmo.rs", "pub struct Avatar {"),
    ] {
        let out = dir.path().join(lang);
        let printed = ok(&orrery(
            url,
            &["generate", "--lang", lang, "--out", out.to_str().unwrap()],
        ));
        assert_eq!(Path::new(printed.trim()), out.join(file));
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(text.contains(needle), "{lang}: {needle}");
    }
    let schema_file = dir.path().join("schema.json");
    std::fs::write(&schema_file, schema.to_string()).unwrap();
    let out = dir.path().join("offline");
    let args = [
        "generate",
        "--lang",
        "cpp",
        "--schema",
        schema_file.to_str().unwrap(),
        "--out",
    ];
    let mut args = args.to_vec();
    args.push(out.to_str().unwrap());
    ok(&orrery("http://127.0.0.1:1", &args));
    assert!(out.join("sample_mmo.hpp").exists());
}
