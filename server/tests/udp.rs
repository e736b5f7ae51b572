//! Real UDP over loopback: clients (one socket each, `UdpEndpoint`) against a server started
//! in-process with `orrery_server::start` on port 0, tokens from the HTTP control plane.
//!
//! CI runs 1,100 clients on two network workers. `cargo test --release -p orrery-server --test
//! udp -- --ignored --nocapture` runs 4,096 (the default worker count, then one worker with
//! and without batched I/O, in one run; `UDP_RUNS=2:on,1:off` picks the runs, `UDP_PIPELINE=0`
//! publishes on the tick thread instead of the publish thread, `UDP_ACK_DELAY_MS` sets the clients' ack delay)
//! and 10,000 (connect time, idle CPU per tick, memory per client) and prints the numbers.
//! The test binary uses the allocator the shipped server (`sample-mmo`) uses, so that the
//! server's CPU per tick is what a deployment would see.

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use orrery_netcode::udp::UdpEndpoint;
use orrery_netcode::{
    ClientEvent, ClientMessage, ClientSession, ClientSessionConfig, ServerMessage, unix_now,
};
use orrery_row::ModuleSchema;
use orrery_row::wire::{RowHandles, WireLayout, WireRecord};
use orrery_server::ServerConfig;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt as _;

/// What one run measured (printed by the `--ignored` runs).
#[derive(Debug)]
#[allow(dead_code)]
struct Report {
    clients: usize,
    net_workers: usize,
    udp_batching: bool,
    pipeline: bool,
    /// Until every client got its `Connected` (tokens were fetched before).
    connect_time: Duration,
    /// Until the server ran `client_connected` for every client.
    server_connected_time: Duration,
    /// Server CPU time per tick with idle clients (keep-alives only): all server threads, and
    /// the tick thread alone (the rest is the network task and the HTTP runtime).
    idle_cpu_per_tick: Duration,
    idle_tick_thread_cpu_per_tick: Duration,
    /// The network workers' threads alone.
    idle_net_cpu_per_tick: Duration,
    idle_ticks: u64,
    /// Server CPU time per tick while every client moves its walker every 200 ms (a reducer
    /// call and its reply), no subscriptions.
    replies_cpu_per_tick: Duration,
    replies_tick_thread_cpu_per_tick: Duration,
    replies_net_cpu_per_tick: Duration,
    replies_ticks: u64,
    replies_calls: u64,
    /// The same, and every client receives the walkers within 55 m of it (a spatial
    /// subscription around its focus: about 95 rows in view, each moving 5 times a second).
    load_cpu_per_tick: Duration,
    load_tick_thread_cpu_per_tick: Duration,
    load_net_cpu_per_tick: Duration,
    load_ticks: u64,
    load_calls: u64,
    /// Share of the load phase the thread driving every client was running (1.0: it had no
    /// time left, so the clients fell behind their 5 moves a second and acked late).
    load_client_thread_busy: f64,
    /// Published-row bytes per record (upsert, delta or delete) in the load phase: each
    /// walker's move reaches the clients that see it as one record.
    load_bytes_per_record: f64,
    /// Records per client per second in the load phase.
    load_records_per_client_second: f64,
    /// UDP bytes sent per client per second in the load phase (records, envelopes, acks,
    /// replies, netcode and encryption overhead).
    load_udp_bytes_per_client_second: f64,
    /// UDP datagrams received per client per second in the load phase (calls and acks).
    load_datagrams_in_per_client_second: f64,
    /// UDP datagrams sent per client per tick period in the load phase: one send pass per tick
    /// puts a client's updates, replies and acks in one datagram while they fit.
    load_datagrams_out_per_client_tick: f64,
    replies: u64,
    updates: u64,
    /// Walker records the clients decoded over the whole run: upserts, deltas, deletes.
    walker_records: [u64; 3],
    /// Their payload bytes.
    walker_record_bytes: u64,
    /// Tick time in the steady load phase (after the subscribes' initial rows), p50 / p99.
    tick_total: (Duration, Duration),
    tick_reducers: (Duration, Duration),
    tick_publish: (Duration, Duration),
    tick_flush: (Duration, Duration),
    /// Ticks the clock dropped, over the whole run and in the steady load phase.
    ticks_skipped: u64,
    load_ticks_skipped: u64,
    /// Ticks of the steady load phase longer than the tick (50 ms).
    load_overruns: usize,
}

/// CPU time (from schedstat, so time preempted by other threads is not counted) of every
/// thread of this process but `except`, of the tick thread alone and of the network workers.
fn process_cpu_except(except: &str) -> (Duration, Duration, Duration) {
    let (mut total, mut tick, mut net) = (0u64, 0u64, 0u64);
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if task.file_name().to_string_lossy() == except {
                continue;
            }
            let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let ns = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            total += ns;
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == "orrery-tick" {
                tick += ns;
            } else if comm.trim().starts_with("orrery-net") {
                net += ns;
            }
        }
    }
    (
        Duration::from_nanos(total),
        Duration::from_nanos(tick),
        Duration::from_nanos(net),
    )
}

/// CPU time (schedstat) of the calling thread: the one driving every client.
fn this_thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Resident memory of this process, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn this_thread_id() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// A client's decoding of the walker table's records: checks every row handle the server
/// uses (a payload breaking the handle rules fails the test) and counts records by kind.
struct WalkerRecords {
    table_id: u32,
    layout: Arc<WireLayout>,
    handles: RowHandles,
    /// Upserts, deltas, deletes.
    kinds: [u64; 3],
    bytes: u64,
}

impl WalkerRecords {
    fn apply(&mut self, rows: &[u8]) {
        let records = self
            .layout
            .decode_records(&mut self.handles, rows)
            .expect("walker records decode under the connection's handles");
        for r in records {
            self.kinds[match r {
                WireRecord::Upsert { .. } => 0,
                WireRecord::Delta { .. } => 1,
                WireRecord::Delete { .. } => 2,
            }] += 1;
        }
        self.bytes += rows.len() as u64;
    }
}

struct Client {
    session: ClientSession,
    udp: UdpEndpoint,
    connected: bool,
    replies: Vec<u32>,
    updates: u64,
    walkers: Option<WalkerRecords>,
    next_call: Instant,
    sent: u32,
    pos: (f32, f32),
    rng: u64,
}

impl Client {
    /// A client session for `token` on its own loopback socket; `rng` seeds its walk.
    fn new(token: &[u8], rng: u64) -> Client {
        Client {
            session: ClientSession::from_token_bytes(client_config(), token, unix_now()).unwrap(),
            udp: UdpEndpoint::bind("127.0.0.1:0".parse().unwrap())
                .expect("a client socket (raise `ulimit -n` above the client count)"),
            connected: false,
            replies: Vec::new(),
            updates: 0,
            walkers: None,
            next_call: Instant::now(),
            sent: 0,
            pos: (0.0, 0.0),
            rng: splitmix(rng),
        }
    }
}

/// The clients' session settings: the defaults, but `UDP_ACK_DELAY_MS` overrides how long they
/// may hold an acknowledgement (`ClientSessionConfig::ack_delay`).
fn client_config() -> ClientSessionConfig {
    let mut config = ClientSessionConfig::default();
    if let Some(ms) = std::env::var("UDP_ACK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.ack_delay = Duration::from_millis(ms);
    }
    config
}

/// Starts a server with `config` and fetches `n` connect tokens from its control plane.
async fn start_with_tokens(
    config: ServerConfig,
    n: usize,
) -> (orrery_server::ServerHandle, Vec<Vec<u8>>) {
    let server = orrery_server::start(common::module(), config)
        .await
        .unwrap();
    let router = server.router();
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        tokens.push(connect_token(&router).await);
    }
    (server, tokens)
}

/// Walkers start spread evenly over a 600 m square: at 4,096 clients about 83 others within
/// 50 m of each, and ~100 in each view (rows leave it only beyond the hysteresis margin).
const AREA: f32 = 600.0;

/// Spreads a seed over all 64 bits (splitmix64's finalizer). xorshift from seeds that differ
/// only in their low bits starts with nearly equal high bits: before this, every walker's
/// first x was the same and the walkers started on one line, ~700 in each view at 4,096
/// clients instead of ~95.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

fn next_rand(x: &mut u64) -> f32 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    (*x >> 40) as f32 / (1u64 << 24) as f32
}

/// The module schema, as clients fetch it.
async fn module_schema(router: &axum::Router) -> ModuleSchema {
    let request = Request::builder()
        .uri("/v1/schema")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    ModuleSchema::from_json_str(std::str::from_utf8(&bytes).unwrap()).unwrap()
}

async fn connect_token(router: &axum::Router) -> Vec<u8> {
    let post = |uri: &str, token: Option<&str>| {
        let mut r = Request::builder().method("POST").uri(uri);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(Body::empty()).unwrap()
    };
    let json = |resp: axum::response::Response| async move {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let id = json(
        router
            .clone()
            .oneshot(post("/v1/identity", None))
            .await
            .unwrap(),
    )
    .await;
    let token = id["token"].as_str().unwrap();
    let ct = json(
        router
            .clone()
            .oneshot(post("/v1/connect-token", Some(token)))
            .await
            .unwrap(),
    )
    .await;
    base64::engine::general_purpose::STANDARD
        .decode(ct["connect_token"].as_str().unwrap())
        .unwrap()
}

fn pass(clients: &mut [Client], calling: bool) {
    let now_i = Instant::now();
    for c in clients.iter_mut() {
        let now = unix_now();
        c.udp.recv(&mut c.session, now).unwrap();
        while let Some(ev) = c.session.poll_event() {
            match ev {
                ClientEvent::Connected { .. } => c.connected = true,
                ClientEvent::Message {
                    msg:
                        ServerMessage::ReducerReply {
                            request_id, result, ..
                        },
                    ..
                } => {
                    assert_eq!(result, Ok(()), "reply {request_id}");
                    c.replies.push(request_id);
                }
                ClientEvent::Message {
                    msg: ServerMessage::TableUpdate { table_id, rows, .. },
                    ..
                } => {
                    c.updates += 1;
                    if let Some(w) = c.walkers.as_mut().filter(|w| w.table_id == table_id) {
                        w.apply(&rows);
                    }
                }
                ClientEvent::Message { .. } => {}
                ClientEvent::Disconnected { reason } => panic!("client disconnected: {reason}"),
            }
        }
        if calling && c.connected && now_i >= c.next_call {
            c.next_call = now_i + Duration::from_millis(200);
            let (dx, dy) = (
                next_rand(&mut c.rng) * 4.0 - 2.0,
                next_rand(&mut c.rng) * 4.0 - 2.0,
            );
            c.pos = (
                (c.pos.0 + dx).clamp(0.0, AREA),
                (c.pos.1 + dy).clamp(0.0, AREA),
            );
            c.session
                .send(&ClientMessage::CallReducer {
                    request_id: c.sent,
                    reducer: "walk".into(),
                    args: common::walk_args(c.pos.0, c.pos.1),
                    durable: false,
                })
                .unwrap();
            c.sent += 1;
        }
        c.session.update(now);
        c.udp.flush(&mut c.session).unwrap();
    }
}

fn run_for(clients: &mut [Client], d: Duration, calling: bool) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        pass(clients, calling);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Drives `clients` until every one is connected (within `limit`) and the server has run
/// `client_connected` for all of them (within half of it); returns both times from the start.
fn connect_all(
    clients: &mut [Client],
    metrics: &orrery_server::metrics::Metrics,
    limit: Duration,
) -> (Duration, Duration) {
    let start = Instant::now();
    run_until(clients, limit, "connections", |cs| {
        cs.iter().all(|c| c.connected)
    });
    let connect_time = start.elapsed();
    let n = clients.len() as u64;
    run_until(clients, limit / 2, "client_connected", |_| {
        metrics.clients.load(Relaxed) == n
    });
    (connect_time, start.elapsed())
}

fn run_until(
    clients: &mut [Client],
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&[Client]) -> bool,
) {
    let end = Instant::now() + limit;
    while !done(clients) {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        pass(clients, false);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Logs to the test output as `RUST_LOG` says (e.g. `orrery_netcode=debug` shows why the
/// server dropped a client).
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn run_load(n: usize, steady: Duration, workers: usize, batching: bool) -> Report {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.net_workers = workers;
    config.udp_batching = batching;
    // `UDP_PIPELINE=0` publishes on the tick thread (`PublishConfig::pipeline`, on by default).
    config.publish.pipeline = std::env::var("UDP_PIPELINE").map_or(true, |v| v != "0");
    let pipeline = config.publish.pipeline;
    let tick_period = config.tick_duration();
    config.max_pending = n.max(4096);
    // Every client of this test shares one loopback address.
    config.max_pending_per_ip = n;
    config.connect_token_lifetime = Duration::from_secs(120);
    config.connection_timeout = Duration::from_secs(30);
    let (server, tokens) = start_with_tokens(config, n).await;
    let schema = module_schema(&server.router()).await;
    let mob = schema.table("mob").unwrap();
    let layout = Arc::new(WireLayout::new(mob));
    let mob_id = mob.id;
    let metrics = server.metrics().clone();
    let report = tokio::task::spawn_blocking(move || {
        let me = this_thread_id();
        let mut clients: Vec<Client> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut c = Client::new(t, 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                c.walkers = Some(WalkerRecords {
                    table_id: mob_id,
                    layout: layout.clone(),
                    handles: RowHandles::new(false),
                    kinds: [0; 3],
                    bytes: 0,
                });
                c
            })
            .collect();
        let (connect_time, server_connected_time) =
            connect_all(&mut clients, &metrics, Duration::from_secs(120));

        // Three calls each: every reply once, in order.
        for c in clients.iter_mut() {
            for _ in 0..3 {
                c.session
                    .send(&ClientMessage::CallReducer {
                        request_id: c.sent,
                        reducer: "add".into(),
                        args: common::add_args(1),
                        durable: false,
                    })
                    .unwrap();
                c.sent += 1;
            }
        }
        run_until(&mut clients, Duration::from_secs(60), "replies", |cs| {
            cs.iter().all(|c| c.replies.len() == 3)
        });
        assert!(clients.iter().all(|c| c.replies == [0, 1, 2]));

        // Idle.
        let (cpu0, ticks0) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));
        run_for(&mut clients, steady, false);
        let (cpu1, ticks1) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));

        // Replies: each client places its walker, then moves it every 200 ms.
        for (i, c) in clients.iter_mut().enumerate() {
            c.pos = (next_rand(&mut c.rng) * AREA, next_rand(&mut c.rng) * AREA);
            c.session
                .send(&ClientMessage::CallReducer {
                    request_id: c.sent,
                    reducer: "walk".into(),
                    args: common::walk_args(c.pos.0, c.pos.1),
                    durable: false,
                })
                .unwrap();
            c.sent += 1;
            c.next_call = Instant::now() + Duration::from_millis(200 + (i % 200) as u64);
        }
        let calls_a = metrics.calls.load(Relaxed);
        let (cpu_a, ticks_a) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));
        run_for(&mut clients, steady, true);
        let (cpu_b, ticks_b) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));
        let reply_calls = metrics.calls.load(Relaxed) - calls_a;
        let reply_ticks = (ticks_b - ticks_a).max(1);

        // Updates too: each client subscribes to the walkers within 50 m of its own.
        for c in clients.iter_mut() {
            c.session
                .send(&ClientMessage::Subscribe {
                    query_id: 1,
                    sql: "SELECT * FROM mob WHERE within(pos, :focus, 50)".into(),
                })
                .unwrap();
        }
        let calls0 = metrics.calls.load(Relaxed);
        // The publisher's record count is sampled once a second: read the counters right
        // after a sample (the first one after the subscribes' initial rows went out), so bytes
        // and records cover the same ticks.
        run_for(&mut clients, Duration::from_millis(1_200), true);
        let sent = |clients: &mut [Client]| {
            let records = metrics.publisher_records.load(Relaxed);
            while metrics.publisher_records.load(Relaxed) == records {
                pass(clients, true);
                std::thread::sleep(Duration::from_millis(1));
            }
            (
                metrics.publisher_bytes.load(Relaxed),
                metrics.publisher_records.load(Relaxed),
                metrics.bytes_out.load(Relaxed),
                metrics.datagrams_in.load(Relaxed),
                metrics.datagrams_out.load(Relaxed),
            )
        };
        let (sent2, at2) = (sent(&mut clients), Instant::now());
        // Tick times of the steady load only (the subscribes' initial rows are behind us).
        {
            let mut stats = metrics.tick_stats.lock().unwrap();
            *stats = orrery_tick::TickStats::with_capacity(stats.capacity(), stats.budget());
        }
        let skipped2 = metrics.ticks_skipped.load(Relaxed);
        let (cpu2, ticks2) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));
        let (client_cpu2, wall2) = (this_thread_cpu(), Instant::now());
        run_for(&mut clients, steady, true);
        let (cpu3, ticks3) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));
        let client_busy =
            (this_thread_cpu() - client_cpu2).as_secs_f64() / wall2.elapsed().as_secs_f64();
        let summary = metrics.tick_stats.lock().unwrap().summary();
        let load_ticks_skipped = metrics.ticks_skipped.load(Relaxed) - skipped2;
        let (sent3, load_seconds) = (sent(&mut clients), at2.elapsed().as_secs_f64());
        let per_client_second = |x: u64| x as f64 / n as f64 / load_seconds;
        let load_calls = metrics.calls.load(Relaxed) - calls0;
        run_until(
            &mut clients,
            Duration::from_secs(60),
            "load replies",
            |cs| cs.iter().all(|c| c.replies.len() == c.sent as usize),
        );
        for c in &clients {
            assert_eq!(c.replies, (0..c.sent).collect::<Vec<_>>());
            assert!(c.session.is_connected());
        }
        let pq = |p: orrery_tick::Phase| (summary.phase(p).p50, summary.phase(p).p99);
        let idle_ticks = (ticks1 - ticks0).max(1);
        let load_ticks = (ticks3 - ticks2).max(1);
        Report {
            clients: n,
            net_workers: workers,
            udp_batching: batching,
            pipeline,
            replies_cpu_per_tick: (cpu_b.0 - cpu_a.0) / reply_ticks as u32,
            replies_tick_thread_cpu_per_tick: (cpu_b.1 - cpu_a.1) / reply_ticks as u32,
            replies_net_cpu_per_tick: (cpu_b.2 - cpu_a.2) / reply_ticks as u32,
            replies_ticks: reply_ticks,
            replies_calls: reply_calls,
            connect_time,
            server_connected_time,
            idle_cpu_per_tick: (cpu1.0 - cpu0.0) / idle_ticks as u32,
            idle_tick_thread_cpu_per_tick: (cpu1.1 - cpu0.1) / idle_ticks as u32,
            idle_net_cpu_per_tick: (cpu1.2 - cpu0.2) / idle_ticks as u32,
            idle_ticks,
            load_cpu_per_tick: (cpu3.0 - cpu2.0) / load_ticks as u32,
            load_tick_thread_cpu_per_tick: (cpu3.1 - cpu2.1) / load_ticks as u32,
            load_net_cpu_per_tick: (cpu3.2 - cpu2.2) / load_ticks as u32,
            load_ticks,
            load_calls,
            load_client_thread_busy: client_busy,
            load_bytes_per_record: (sent3.0 - sent2.0) as f64 / (sent3.1 - sent2.1).max(1) as f64,
            load_records_per_client_second: per_client_second(sent3.1 - sent2.1),
            load_udp_bytes_per_client_second: per_client_second(sent3.2 - sent2.2),
            load_datagrams_in_per_client_second: per_client_second(sent3.3 - sent2.3),
            load_datagrams_out_per_client_tick: (sent3.4 - sent2.4) as f64
                / n as f64
                / (load_seconds / tick_period.as_secs_f64()),
            replies: clients.iter().map(|c| c.replies.len() as u64).sum(),
            updates: clients.iter().map(|c| c.updates).sum(),
            walker_records: clients.iter().filter_map(|c| c.walkers.as_ref()).fold(
                [0; 3],
                |sum, w| {
                    [
                        sum[0] + w.kinds[0],
                        sum[1] + w.kinds[1],
                        sum[2] + w.kinds[2],
                    ]
                },
            ),
            walker_record_bytes: clients
                .iter()
                .filter_map(|c| c.walkers.as_ref())
                .map(|w| w.bytes)
                .sum(),
            tick_total: (summary.total.p50, summary.total.p99),
            tick_reducers: pq(orrery_tick::Phase::Reducers),
            tick_publish: pq(orrery_tick::Phase::Publish),
            tick_flush: pq(orrery_tick::Phase::Flush),
            ticks_skipped: metrics.ticks_skipped.load(Relaxed),
            load_ticks_skipped,
            load_overruns: summary.overruns,
        }
    })
    .await
    .unwrap();
    assert_eq!(server.metrics().disconnects.load(Relaxed), 0);
    server.shutdown().await.unwrap();
    report
}

/// More clients than renet_netcode's 1,024 cap on one server process, through the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stderr)] // the numbers go to the test log
async fn eleven_hundred_clients_over_real_udp() {
    let r = run_load(1_100, Duration::from_millis(600), 2, true).await;
    eprintln!("{r:#?}");
    assert!(r.replies >= 3 * 1_100);
    assert!(r.updates > 0, "subscribed rows were published");
    assert!(r.connect_time < Duration::from_secs(60), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load: run with --release -- --ignored --nocapture"]
#[allow(clippy::print_stderr)] // reports the measured numbers
async fn four_thousand_ninety_six_clients_over_real_udp() {
    // Several workers, one worker with batched I/O, then one worker with one syscall per
    // datagram (the server before network workers). `UDP_RUNS=workers:on|off,..` overrides.
    let workers = orrery_server::config::default_net_workers().max(2);
    let runs: Vec<(usize, bool)> = match std::env::var("UDP_RUNS") {
        Ok(list) => list
            .split(',')
            .map(|run| {
                let (w, b) = run.split_once(':').expect("UDP_RUNS: workers:on|off,..");
                (w.parse().expect("UDP_RUNS: a worker count"), b == "on")
            })
            .collect(),
        Err(_) => vec![(workers, true), (1, true), (1, false)],
    };
    for (w, batching) in runs {
        let r = run_load(4_096, Duration::from_secs(5), w, batching).await;
        eprintln!("{r:#?}");
        assert!(r.replies >= 3 * 4_096);
    }
}

/// What the 10,000-client run measured.
#[derive(Debug)]
#[allow(dead_code)]
struct ConnectReport {
    clients: usize,
    net_workers: usize,
    /// Until every client got its `Connected` (tokens were fetched before).
    connect_time: Duration,
    /// Until the server ran `client_connected` for every client.
    server_connected_time: Duration,
    /// Server CPU per tick with idle clients (keep-alives only): every thread but the
    /// clients', the tick thread, the network workers.
    idle_cpu_per_tick: Duration,
    idle_tick_thread_cpu_per_tick: Duration,
    idle_net_cpu_per_tick: Duration,
    idle_ticks: u64,
    /// Resident memory growth from before the first connect (client sessions and sockets
    /// already made) to every client connected, per client: the server's per-connection state
    /// plus the in-process clients' growth once connected.
    rss_growth_per_client: u64,
    rss_before: u64,
    rss_after: u64,
    /// Busy time per network worker during the idle phase, per tick.
    idle_busy_per_worker_per_tick: Vec<Duration>,
}

async fn run_connect_idle(n: usize, workers: usize, idle: Duration) -> ConnectReport {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.net_workers = workers;
    config.max_clients = n.max(config.max_clients);
    config.max_pending = n;
    // Every client of this test shares one loopback address.
    config.max_pending_per_ip = n;
    config.connect_token_lifetime = Duration::from_secs(300);
    config.connection_timeout = Duration::from_secs(60);
    let (server, tokens) = start_with_tokens(config, n).await;
    let metrics = server.metrics().clone();
    let report = tokio::task::spawn_blocking(move || {
        let me = this_thread_id();
        let mut clients: Vec<Client> = tokens.iter().map(|t| Client::new(t, 1)).collect();
        drop(tokens);
        let rss_before = resident_bytes();
        let (connect_time, server_connected_time) =
            connect_all(&mut clients, &metrics, Duration::from_secs(300));
        run_for(&mut clients, Duration::from_secs(1), false);
        let rss_after = resident_bytes();
        let busy0: Vec<u64> = metrics
            .net_worker_samples()
            .iter()
            .map(|s| s.busy_us)
            .collect();
        let (cpu0, ticks0) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));
        run_for(&mut clients, idle, false);
        let (cpu1, ticks1) = (process_cpu_except(&me), metrics.ticks.load(Relaxed));
        let busy1: Vec<u64> = metrics
            .net_worker_samples()
            .iter()
            .map(|s| s.busy_us)
            .collect();
        let ticks = (ticks1 - ticks0).max(1);
        for c in &clients {
            assert!(c.session.is_connected());
        }
        ConnectReport {
            clients: n,
            net_workers: workers,
            connect_time,
            server_connected_time,
            idle_cpu_per_tick: (cpu1.0 - cpu0.0) / ticks as u32,
            idle_tick_thread_cpu_per_tick: (cpu1.1 - cpu0.1) / ticks as u32,
            idle_net_cpu_per_tick: (cpu1.2 - cpu0.2) / ticks as u32,
            idle_ticks: ticks,
            rss_growth_per_client: rss_after.saturating_sub(rss_before) / n as u64,
            rss_before,
            rss_after,
            idle_busy_per_worker_per_tick: busy0
                .iter()
                .zip(&busy1)
                .map(|(a, b)| Duration::from_micros((b - a) / ticks))
                .collect(),
        }
    })
    .await
    .unwrap();
    assert_eq!(server.metrics().disconnects.load(Relaxed), 0);
    server.shutdown().await.unwrap();
    report
}

/// 10,000 clients connected to one process (each with its own socket: needs `ulimit -n`
/// above 10,000), one network worker and then the default count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load: run with --release -- --ignored --nocapture"]
#[allow(clippy::print_stderr)] // reports the measured numbers
async fn ten_thousand_clients_connected_to_one_process() {
    let workers = orrery_server::config::default_net_workers();
    for w in [1, workers.max(2)] {
        let r = run_connect_idle(10_000, w, Duration::from_secs(5)).await;
        eprintln!("{r:#?}");
        assert!(r.idle_ticks > 0);
    }
}
