//! The Done-when of profiling: `sample-mmo` built with `--features tracy`, played by a few
//! `walk` bots, captured by `orrery-profiler capture --seconds 5`: at least 50 frames, a zone for
//! every tick phase, zones for named reducers and for the module's systems, and the server's
//! plots.
//!
//! The instrumented build goes into a target directory of its own (under this build's
//! `CARGO_TARGET_TMPDIR`), so the `tracy` feature never reaches the workspace's own test build
//! (a dev-dependency on sample-mmo with the feature would turn Tracy on for every test). That
//! build takes minutes the first time, so the test is `#[ignore]`d; run it with
//! `cargo nextest run -p orrery-profiler --run-ignored all` (CI runs the in-process capture
//! test instead).

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orrery_profiler::Summary;
use orrery_tick::Phase;
use support::{Kill, free_port};

/// Reducers the walk bots call (and the lifecycle ones a connect runs).
const REDUCERS: [&str; 7] = [
    "client_connected",
    "enter_world",
    "say",
    "move_to",
    "attack",
    "pick_up",
    "use_item",
];

/// Builds sample-mmo (and the walk example) with the `tracy` feature into `target`.
fn build(target: &Path) -> (PathBuf, PathBuf) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args([
            "build",
            "--locked",
            "-p",
            "sample-mmo",
            "--features",
            "tracy",
            "--bin",
            "sample-mmo",
            "--example",
            "walk",
        ])
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p sample-mmo --features tracy failed"
    );
    (
        target.join("debug").join("sample-mmo"),
        target.join("debug").join("examples").join("walk"),
    )
}

/// Whether `GET /health` answers 200.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

#[test]
#[ignore = "builds sample-mmo with --features tracy in its own target directory (minutes the first time)"]
fn capture_of_sample_mmo_played_by_bots() {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tracy-target");
    let (server_bin, walk_bin) = build(&target);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (tracy_port, http_port) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
    let _server = Kill(
        Command::new(&server_bin)
            .args(["--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--http", &format!("127.0.0.1:{http_port}")])
            .args(["--udp", "127.0.0.1:0", "--strict-ports"])
            .args(["--npcs", "300", "--world-size", "300", "--duration", "300"])
            .env("TRACY_PORT", tracy_port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sample-mmo"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !healthy(http_port) {
        assert!(
            Instant::now() < deadline,
            "sample-mmo did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let json = dir.path().join("summary.json");
    let mut capture = Kill(
        Command::new(env!("CARGO_BIN_EXE_orrery-profiler"))
            .args(["capture", "--addr", &format!("127.0.0.1:{tracy_port}")])
            .args(["--seconds", "5", "--json"])
            .arg(&json)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start orrery-profiler capture"),
    );
    let url = format!("http://127.0.0.1:{http_port}");
    let _bots: Vec<Kill> = (0..3)
        .map(|i| {
            Kill(
                Command::new(&walk_bin)
                    .arg(&url)
                    .args(["--name", &format!("bot{i}"), "--seconds", "60"])
                    .arg("--token-file")
                    .arg(dir.path().join(format!("bot{i}.token")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a walk bot"),
            )
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = capture.0.try_wait().expect("capture status") {
            break status;
        }
        assert!(Instant::now() < deadline, "the capture did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut printed = String::new();
    if let Some(mut out) = capture.0.stdout.take() {
        let _ = out.read_to_string(&mut printed);
    }
    assert!(
        status.success(),
        "orrery-profiler capture failed:\n{printed}"
    );
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON summary"))
            .expect("a summary");

    assert!(summary.frame_count() >= 50, "{printed}");
    for phase in Phase::ALL {
        assert!(
            summary.zone(phase.name()).is_some(),
            "no zone for phase {phase}:\n{printed}"
        );
    }
    let reducers: Vec<&str> = REDUCERS
        .into_iter()
        .filter(|r| summary.zone(r).is_some_and(|z| z.function == "reducer"))
        .collect();
    assert!(!reducers.is_empty(), "no named reducer zone:\n{printed}");
    assert!(
        summary
            .zones
            .iter()
            .any(|z| z.function == "system" && z.name.contains("sample_mmo::systems")),
        "no system zone:\n{printed}"
    );
    for zone in ["tick", "net_commands", "net_send"] {
        assert!(summary.zone(zone).is_some(), "no {zone} zone:\n{printed}");
    }
    let tick = summary.plot("tick_time_ms").expect("the tick-time plot");
    assert!(tick.points >= 50 && tick.max > 0.0, "{tick:?}");
    for plot in ["clients_connected", "rows_changed", "bytes_out"] {
        assert!(summary.plot(plot).is_some(), "no {plot} plot:\n{printed}");
    }
    assert!(
        summary
            .messages
            .iter()
            .any(|m| m.text.starts_with("connect ")),
        "no connect message:\n{printed}"
    );
    assert!(
        summary
            .threads
            .iter()
            .any(|t| t.name == "orrery-tick" && t.zones > 0),
        "{printed}"
    );
}
