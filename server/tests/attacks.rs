//! Hostile input against a live server (real HTTP and UDP sockets): after each attack the
//! server must still run, its ticks must have kept their budget, and a well-behaved client,
//! calling a reducer over UDP throughout, must have kept getting replies. What the server
//! answered, the worst tick and the good client's reply p99 are printed per attack
//! (`--nocapture`).

#![allow(missing_docs, clippy::print_stderr)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orrery_client::http::ControlPlane;
use orrery_client::{Client, ClientOptions};
use orrery_server::{ServerConfig, ServerHandle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn or_chain(terms: usize) -> String {
    let mut sql = String::from("SELECT * FROM note WHERE level = 0");
    for i in 1..terms {
        sql.push_str(&format!(" OR level = {i}"));
    }
    sql
}

fn nested(depth: usize) -> String {
    format!(
        "SELECT * FROM note WHERE {}level = 1{}",
        "(".repeat(depth),
        ")".repeat(depth)
    )
}

/// A raw HTTP/1.1 POST (the body is sent whatever its size); the status code and body.
async fn raw_post(server: &ServerHandle, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(server.http_addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before the whole body is written.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// `count` POSTs to `path` over 8 keep-alive connections; how many got each status.
async fn flood(
    server: &ServerHandle,
    path: &str,
    token: &str,
    count: usize,
) -> std::collections::BTreeMap<u16, usize> {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (addr, path, token) = (server.http_addr, path.to_owned(), token.to_owned());
        let n = count / 8 + usize::from(worker < count % 8);
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::with_capacity(n);
            let mut stream = tokio::io::BufReader::new(TcpStream::connect(addr).await.unwrap());
            let auth = if token.is_empty() {
                String::new()
            } else {
                format!("authorization: Bearer {token}\r\n")
            };
            let request =
                format!("POST {path} HTTP/1.1\r\nhost: test\r\n{auth}content-length: 0\r\n\r\n");
            for _ in 0..n {
                stream
                    .get_mut()
                    .write_all(request.as_bytes())
                    .await
                    .unwrap();
                statuses.push(read_response(&mut stream).await);
            }
            statuses
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        for status in task.await.unwrap() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    counts
}

/// Reads one HTTP/1.1 response with a content-length; its status.
async fn read_response(stream: &mut tokio::io::BufReader<TcpStream>) -> u16 {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    status
}

/// An error message without the (long) query it quotes.
fn shorten(message: &str) -> String {
    match message.rsplit_once("failed: ") {
        Some((_, reason)) => reason.to_owned(),
        None => message.chars().take(160).collect(),
    }
}

/// The good client's round trips, and a switch to stop it.
struct GoodClient {
    latencies: Arc<Mutex<Vec<Duration>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl GoodClient {
    async fn start(base: &str) -> GoodClient {
        let client = Client::connect(base, ClientOptions::default())
            .await
            .unwrap();
        client
            .wait_connected(Duration::from_secs(10))
            .await
            .unwrap();
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (latencies, failures, stop) = (latencies.clone(), failures.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match client.call("add", json!([1])).await {
                        Ok(_) => latencies.lock().unwrap().push(started.elapsed()),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        GoodClient {
            latencies,
            failures,
            stop,
            task,
        }
    }

    /// Replies since the last call, and their p99, once at least two more replies came (or
    /// ten seconds passed): the good client must keep being answered during and after an
    /// attack, however short the attack was.
    async fn take(&self) -> (usize, Duration) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.latencies.lock().unwrap().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut latencies = std::mem::take(&mut *self.latencies.lock().unwrap());
        latencies.sort_unstable();
        let p99 = latencies
            .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default();
        (latencies.len(), p99)
    }
}

/// The tick budget and the p99 and maximum of the whole tick over the server's recent window.
async fn tick_times(server: &ServerHandle) -> (f64, f64) {
    let mut stream = TcpStream::connect(server.http_addr).await.unwrap();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        server.admin_token().trim()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let text = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let metrics = common::parse_metrics(text);
    let get = |q: &str| {
        metrics[&format!("orrery_tick_duration_seconds{{phase=\"total\",quantile=\"{q}\"}}")]
    };
    (get("0.99"), get("1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queries_cannot_crash_stall_or_lock_out_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::for_tests(dir.path());
    let budget = config.tick_duration().as_secs_f64();
    let server = orrery_server::start(common::module(), config)
        .await
        .unwrap();
    let base = format!("http://{}", server.http_addr);
    let cp = ControlPlane::new(&base).unwrap();
    let good = GoodClient::start(&base).await;
    let attacker = cp.create_identity().await.unwrap();
    let token = attacker.token.clone();

    let mut report = Vec::new();
    let check = |name: &str, answer: String, report: &mut Vec<String>| {
        report.push(format!("{name}: {answer}"));
    };

    // 1. SQL over HTTP.
    let http_attacks: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "100,000-term OR chain (1.4 MB)",
            or_chain(100_000).into_bytes(),
            413,
            "",
        ),
        (
            "100,000-term AND chain",
            or_chain(100_000).replace(" OR ", " AND ").into_bytes(),
            413,
            "",
        ),
        (
            "300-term OR chain (4 KB)",
            or_chain(300)
                .chars()
                .take(4000)
                .collect::<String>()
                .into_bytes(),
            400,
            "predicates",
        ),
        (
            "10,000-deep parentheses",
            nested(10_000).into_bytes(),
            400,
            "sql_bytes",
        ),
        (
            "1,000-deep parentheses",
            nested(1_000).into_bytes(),
            400,
            "nesting_depth",
        ),
        ("8 MB body", vec![b'('; 8 << 20], 413, ""),
        (
            "huge radius",
            b"SELECT * FROM mob WHERE within(pos, :focus, 1e30)".to_vec(),
            400,
            "within_radius",
        ),
    ];
    for (name, body, status, names) in http_attacks {
        let started = Instant::now();
        let mut answers = std::collections::BTreeMap::new();
        for _ in 0..20 {
            let (got, text) = raw_post(&server, "/v1/sql", &token, &body).await;
            assert_eq!(got, status, "{name}: {text}");
            assert!(text.contains(names), "{name}: {text}");
            *answers
                .entry(format!(
                    "{got} {}",
                    text.chars().take(90).collect::<String>()
                ))
                .or_insert(0) += 1;
        }
        assert!(!server.is_finished(), "{name} stopped the server");
        let (p99, max) = tick_times(&server).await;
        let (replies, good_p99) = good.take().await;
        assert!(
            p99 <= budget,
            "{name}: tick p99 {p99}s over the {budget}s budget"
        );
        assert!(replies > 0, "{name}: the good client got no reply");
        check(
            name,
            format!(
                "20× over HTTP in {:?}; answered {answers:?}; tick p99 {:.2} ms, max {:.2} ms; good client {replies} replies, p99 {good_p99:?}",
                started.elapsed(),
                p99 * 1e3,
                max * 1e3
            ),
            &mut report,
        );
    }

    // 2. The same over UDP `Subscribe`, from a connected client.
    let hostile = Client::connect(&base, ClientOptions::default())
        .await
        .unwrap();
    hostile
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let udp_attacks = [
        (
            "UDP: 300-term OR chain",
            or_chain(300).chars().take(4000).collect::<String>(),
            "predicates",
        ),
        (
            "UDP: 1,000-deep parentheses",
            nested(1_000),
            "nesting_depth",
        ),
        (
            "UDP: huge radius",
            "SELECT * FROM mob WHERE within(pos, :focus, 1e30)".to_owned(),
            "within_radius",
        ),
    ];
    for (name, sql, names) in udp_attacks {
        let err = hostile.subscribe(&sql).await.unwrap_err().to_string();
        assert!(err.contains(names), "{name}: {err}");
        check(name, shorten(&err), &mut report);
    }
    // A hundred subscriptions from one connection: the first ones are accepted (the
    // per-client query and predicate budgets), the rest refused, the server unaffected.
    let (mut accepted, mut refused, mut last_error) = (0, 0, String::new());
    for i in 0..100 {
        match hostile
            .subscribe(&format!(
                "SELECT * FROM note WHERE level = {i} OR level > {}",
                i + 1000
            ))
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => {
                refused += 1;
                last_error = e.to_string();
            }
        }
    }
    assert!(accepted <= 32 && refused >= 68, "{accepted} accepted");
    assert!(!server.is_finished());
    let (p99, max) = tick_times(&server).await;
    let (replies, good_p99) = good.take().await;
    assert!(p99 <= budget, "subscription flood: tick p99 {p99}s");
    assert!(
        replies > 0,
        "subscription flood: the good client got no reply"
    );
    check(
        "UDP: 100 subscriptions from one connection",
        format!(
            "{accepted} accepted, {refused} refused ({}); tick p99 {:.2} ms, max {:.2} ms; good client {replies} replies, p99 {good_p99:?}",
            shorten(&last_error),
            p99 * 1e3,
            max * 1e3
        ),
        &mut report,
    );

    // 3. Credential floods from one address, over real sockets (keep-alive connections, as a
    // scripted attacker would).
    for (name, path, auth, count) in [
        ("10,000 identity requests", "/v1/identity", "", 10_000usize),
        (
            "5,000 connect tokens",
            "/v1/connect-token",
            token.as_str(),
            5_000,
        ),
    ] {
        let started = Instant::now();
        let statuses = flood(&server, path, auth, count).await;
        let ok = statuses.get(&200).copied().unwrap_or(0);
        let limited = statuses.get(&429).copied().unwrap_or(0);
        assert_eq!(ok + limited, count, "{name}: {statuses:?}");
        assert!(ok <= 40, "{name}: {ok} admitted");
        assert!(!server.is_finished());
        let (p99, max) = tick_times(&server).await;
        let (replies, good_p99) = good.take().await;
        assert!(p99 <= budget, "{name}: tick p99 {p99}s");
        assert!(replies > 0, "{name}: the good client got no reply");
        check(
            name,
            format!(
                "in {:?}: {ok}× 200, {limited}× 429; tick p99 {:.2} ms, max {:.2} ms; good client {replies} replies, p99 {good_p99:?}",
                started.elapsed(),
                p99 * 1e3,
                max * 1e3
            ),
            &mut report,
        );
    }
    // The limit is per address: the good client's control plane (also 127.0.0.1 here) is
    // throttled with the attacker, so this checks the HTTP path still answers (429 or 200).
    let mut idle = Vec::new();
    for _ in 0..1_000 {
        idle.push(TcpStream::connect(server.http_addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read = cp
        .sql(&token, "SELECT * FROM note WHERE level >= 0", None)
        .await;
    assert!(read.is_ok(), "{read:?}");
    let (p99, max) = tick_times(&server).await;
    let (replies, good_p99) = good.take().await;
    assert!(p99 <= budget && replies > 0);
    check(
        "1,000 idle HTTP connections",
        format!(
            "a read still answered; tick p99 {:.2} ms, max {:.2} ms; good client {replies} replies, p99 {good_p99:?}",
            p99 * 1e3,
            max * 1e3
        ),
        &mut report,
    );
    drop(idle);

    // A well-formed query still works for everyone afterwards.
    let read = cp
        .sql(&token, "SELECT * FROM note WHERE level >= 0", None)
        .await
        .unwrap();
    assert_eq!(read.table, "note");

    good.stop.store(true, Ordering::Relaxed);
    good.task.await.unwrap();
    let failures = good.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "the good client's calls failed: {failures:?}"
    );
    for line in &report {
        eprintln!("{line}");
    }
    server.shutdown().await.unwrap();
}

/// Idle connections hold their place under the HTTP connection cap only until the idle
/// timeout: a client that opens the cap's worth and leaves them idle delays others by that
/// long, never locks them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_hold_the_http_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.max_http_connections = 16;
    config.http_idle_timeout = Duration::from_millis(500);
    let server = orrery_server::start(common::module(), config)
        .await
        .unwrap();
    let cp = ControlPlane::new(&format!("http://{}", server.http_addr)).unwrap();
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(TcpStream::connect(server.http_addr).await.unwrap());
    }
    // Over the cap: closed at once, so the request fails fast instead of hanging.
    let started = Instant::now();
    let refused = loop {
        match cp.create_identity().await {
            Err(e) => break e,
            Ok(_) if started.elapsed() > Duration::from_secs(5) => {
                panic!("the cap never refused a connection")
            }
            // Raced the listener before all 16 were accepted: try again.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert!(
        server
            .metrics()
            .http_connections_refused
            .load(Ordering::Relaxed)
            > 0,
        "{refused}"
    );
    // The idle ones are closed by the server after the idle timeout; then requests pass.
    let started = Instant::now();
    loop {
        if cp.create_identity().await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "idle connections kept the cap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut closed = 0;
    for mut stream in idle {
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte).await, Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 16, "every idle connection was closed by the server");
    server.shutdown().await.unwrap();
}
