//! Smoke test of the whole tool: the `load-test` binary, a hundred bots over real UDP
//! against a `sample-mmo` server started in this process (a small world), a few seconds of
//! mixed play, verification on; the report's invariants must hold: every bot connected, no
//! unanswered call, no divergent row, the tick within its budget, downstream bytes per bot
//! within the publish budget plus protocol overhead (reducer replies, packet headers and acks:
//! 50% is allowed: the per-bot rate is measured over short wall-clock windows). Timing targets
//! (tick p99, skipped ticks, input-to-observed latency) are not checked here: this is a debug
//! build sharing two cores with the rest of the test suite; they belong to the release-build
//! runs in `docs/load-test.md`. The budget itself is checked exactly, tick by tick, in the
//! publisher's tests.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use load_test::report::Report;
use orrery_server::{RateLimit, ServerConfig};
use sample_mmo::WorldSettings;

const BOTS: usize = 100;

#[test]
fn a_hundred_bots_connect_play_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let plenty = RateLimit {
        calls_per_second: 100_000.0,
        burst: 100_000,
    };
    let config = ServerConfig {
        metrics_bind: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        max_pending_per_ip: 65_536,
        // Bots spread over two network workers (tokens name each bot's worker).
        net_workers: 2,
        identities_per_address: plenty,
        connect_tokens_per_address: plenty,
        ..ServerConfig::for_tests(dir.path())
    };
    let world = WorldSettings {
        npc_count: 400,
        world_size: 800.0,
        ..WorldSettings::default()
    };
    let server = runtime
        .block_on(orrery_server::start(sample_mmo::module_with(world), config))
        .unwrap();
    let metrics = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let report_dir = dir.path().join("report");
    let output = Command::new(env!("CARGO_BIN_EXE_load-test"))
        .args(["--server", &server.http_url, "--metrics-url", &metrics])
        .args(["--server-pid", &std::process::id().to_string()])
        .args(["--bots", &BOTS.to_string(), "--ramp", "50"])
        .args([
            "--duration",
            "4s",
            "--behavior",
            "mixed",
            "--input-hz",
            "10",
        ])
        .args(["--verify", "--settle", "2s", "--verify-timeout", "20s"])
        .args(["--threads", "2", "--observe-budget-ms", "60000"])
        .args([
            "--tick-budget-ms",
            "60000",
            "--skipped-ticks-budget",
            "1000000",
        ])
        .args(["--bytes-budget", &(8192.0 * 1.5).to_string()])
        .arg("--report")
        .arg(&report_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(report_dir.join("report.json"))
        .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let report: Report = serde_json::from_str(&text).unwrap();
    let html = std::fs::read_to_string(report_dir.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "the page has plots");
    let s = &report.summary;
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("{}: {} {} {}", c.name, c.value, c.op, c.limit))
        .collect();
    assert!(
        report.pass && output.status.success(),
        "failed checks {failed:?}\nverify: {:#?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        report.verify
    );
    // The invariants, spelled out (the checks above cover them; these name them).
    assert_eq!(s.connected_at_stop, BOTS as u64);
    assert_eq!(s.never_connected, 0);
    assert_eq!(s.call_errors, 0);
    assert!(s.calls > 0 && s.rtt.count > 0);
    let verify = report.verify.as_ref().expect("verification results");
    assert_eq!(verify.bots, BOTS as u64);
    assert_eq!(verify.divergent_rows, 0, "{:?}", verify.examples);
    assert!(verify.rows_compared > 0);
    let tick = s.server.as_ref().expect("server metrics were scraped");
    assert!(tick.tick_p99_ms > 0.0, "tick times were scraped");
    assert!(s.bytes_in_per_bot_s.bots > 0);
    assert!(s.bytes_in_per_bot_s.max <= report.budgets.bytes_in_per_bot_s);
    assert!(!report.series.is_empty());
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), server.shutdown()).await })
        .expect("the server stops")
        .unwrap();
}
