//! `kill -9` through a whole server: the `server-crash-harness` process serves the ledger
//! module over real UDP and HTTP; four `orrery-client` clients record unique numbers as fast
//! as they can, alternating durable calls (`call_durable`: answered once the tick is on disk)
//! and plain ones (answered when the tick ran). At a random moment the server is killed with
//! SIGKILL, then restarted on the same data directory. After every restart:
//!
//! - every number whose call was answered as durable is in the ledger (no durable reply was
//!   ever sent for a tick that was lost);
//! - numbers answered without durability may be missing (counted, not required);
//! - nobody is shown online: the connections the killed process had were ended by the
//!   restart (`client_disconnected` ran for each) before any client was admitted.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orrery_client::http::ControlPlane;
use orrery_client::{Client, ClientOptions};
use serde_json::json;

/// Starts the harness on `dir`; returns the process and its control-plane URL.
fn spawn(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server-crash-harness"))
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the harness starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    let url = ready
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("harness said {ready:?}"))
        .trim()
        .to_owned();
    (child, url)
}

#[derive(Default, Debug)]
struct Acked {
    durable: BTreeSet<u64>,
    plain: BTreeSet<u64>,
}

/// One client recording numbers `base, base + 1, ...` until its calls fail (the server died).
async fn record_until_killed(url: String, base: u64) -> Acked {
    let options = ClientOptions {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let mut acked = Acked::default();
    let Ok(client) = Client::connect(&url, options).await else {
        return acked;
    };
    for i in 0..1_000_000u64 {
        let n = base + i;
        let durable = i % 2 == 0;
        let result = if durable {
            client.call_durable("record", json!([n])).await
        } else {
            client.call("record", json!([n])).await
        };
        match result {
            Ok(_) if durable => {
                acked.durable.insert(n);
            }
            Ok(_) => {
                acked.plain.insert(n);
            }
            Err(_) => break,
        }
    }
    acked
}

async fn ledger_rows(url: &str, table: &str) -> Vec<serde_json::Value> {
    let cp = ControlPlane::new(url).unwrap();
    let me = cp.create_identity().await.unwrap();
    cp.sql(&me.token, &format!("SELECT * FROM {table}"), None)
        .await
        .unwrap()
        .rows
}

async fn crash_test(kills: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Acked::default();
    let mut lost_plain = 0;
    let mut life_ms = 600;
    for round in 0..kills {
        let (mut child, url) = spawn(dir.path());
        if round > 0 {
            // The previous process was killed with clients connected: none is online now,
            // and nothing acknowledged as durable is missing.
            let presence = ledger_rows(&url, "presence").await;
            assert!(!presence.is_empty());
            for row in &presence {
                assert_eq!(row["online"], json!(false), "after kill {round}: {row}");
            }
            let present: BTreeSet<u64> = ledger_rows(&url, "entry")
                .await
                .iter()
                .map(|row| row["n"].as_u64().unwrap())
                .collect();
            let missing: Vec<u64> = all.durable.difference(&present).copied().collect();
            assert!(
                missing.is_empty(),
                "after kill {round}: durable-acknowledged numbers lost: {missing:?}"
            );
            lost_plain += all.plain.difference(&present).count();
        }
        let clients: Vec<_> = (0..4u64)
            .map(|c| tokio::spawn(record_until_killed(url.clone(), (round * 4 + c) << 32)))
            .collect();
        // The moment of the kill is the test's input (varied per round), not a synchronization.
        tokio::time::sleep(Duration::from_millis(life_ms)).await;
        life_ms += 370;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for client in clients {
            let acked = client.await.unwrap();
            all.durable.extend(acked.durable);
            all.plain.extend(acked.plain);
        }
    }
    // A last restart checks the last kill; then a clean stop (stdin closed).
    let (mut child, url) = spawn(dir.path());
    let present: BTreeSet<u64> = ledger_rows(&url, "entry")
        .await
        .iter()
        .map(|row| row["n"].as_u64().unwrap())
        .collect();
    assert!(
        all.durable.is_subset(&present),
        "durable-acknowledged numbers lost"
    );
    for row in ledger_rows(&url, "presence").await {
        assert_eq!(row["online"], json!(false), "{row}");
    }
    lost_plain += all.plain.difference(&present).count();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success(), "clean shutdown");
    assert!(
        all.durable.len() > 20,
        "too few durable replies to test anything: {}",
        all.durable.len()
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "server crash test: {kills} kills; {} durable replies, all found; {} plain replies, {} \
         of them lost with their tick",
        all.durable.len(),
        all.plain.len(),
        lost_plain
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_replies_survive_kill_9_and_presence_is_reset() {
    crash_test(3).await;
}
