//! Several network workers over real UDP: a server started in-process with
//! `ServerConfig::net_workers` > 1, clients (one socket each) with tokens from the HTTP
//! control plane. Clients land on different workers (each its own port); calls, subscriptions
//! and admin actions work across them; a token names only its worker and is refused at another.

mod common;

use std::net::SocketAddr;
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
use orrery_server::{ServerConfig, ServerHandle};
use serde_json::Value;
use tower::ServiceExt as _;

/// A token as the control plane hands it out.
struct Token {
    bytes: Vec<u8>,
    client_id: u64,
    server_addresses: Vec<SocketAddr>,
}

fn request(method: &str, uri: &str, token: Option<&str>) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::empty()).unwrap()
}

async fn json(router: &axum::Router, req: Request<Body>) -> Value {
    let resp = router.clone().oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn connect_token(router: &axum::Router) -> Token {
    let id = json(router, request("POST", "/v1/identity", None)).await;
    let ct = json(
        router,
        request("POST", "/v1/connect-token", id["token"].as_str()),
    )
    .await;
    Token {
        bytes: base64::engine::general_purpose::STANDARD
            .decode(ct["connect_token"].as_str().unwrap())
            .unwrap(),
        client_id: ct["client_id"].as_u64().unwrap(),
        server_addresses: ct["server_addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect(),
    }
}

struct Client {
    session: ClientSession,
    udp: UdpEndpoint,
    connected: bool,
    disconnected: bool,
    replies: Vec<(u32, Result<(), String>)>,
    applied: u32,
    updates: u32,
}

impl Client {
    fn new(token: &Token) -> Self {
        Client {
            session: ClientSession::from_token_bytes(
                ClientSessionConfig::default(),
                &token.bytes,
                unix_now(),
            )
            .unwrap(),
            udp: UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap(),
            connected: false,
            disconnected: false,
            replies: Vec::new(),
            applied: 0,
            updates: 0,
        }
    }

    fn pass(&mut self) {
        let now = unix_now();
        self.udp.recv(&mut self.session, now).unwrap();
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Connected { .. } => self.connected = true,
                ClientEvent::Disconnected { .. } => self.disconnected = true,
                ClientEvent::Message { msg, .. } => match msg {
                    ServerMessage::ReducerReply {
                        request_id, result, ..
                    } => self.replies.push((request_id, result)),
                    ServerMessage::SubscriptionApplied { .. } => self.applied += 1,
                    ServerMessage::TableUpdate { .. } => self.updates += 1,
                    _ => {}
                },
            }
        }
        self.session.update(now);
        self.udp.flush(&mut self.session).unwrap();
    }

    fn call(&mut self, request_id: u32, reducer: &str, args: Vec<u8>) {
        self.session
            .send(&ClientMessage::CallReducer {
                request_id,
                reducer: reducer.into(),
                args,
                durable: false,
            })
            .unwrap();
    }
}

/// Drives `clients` until `done` holds (panics after 20 s).
fn run_until(clients: &mut [Client], what: &str, mut done: impl FnMut(&[Client]) -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !done(clients) {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        for c in clients.iter_mut() {
            c.pass();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

async fn start(workers: usize) -> (ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.net_workers = workers;
    let server = orrery_server::start(common::module(), config)
        .await
        .unwrap();
    (server, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_workers_connect_call_and_see_each_others_rows() {
    let (server, _dir) = start(3).await;
    assert_eq!(server.udp_addrs.len(), 3);
    let mut ports: Vec<u16> = server.udp_addrs.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "each worker has its own port");
    assert_eq!(server.public_addresses, server.udp_addrs);
    let router = server.router();
    let mut tokens = Vec::new();
    for _ in 0..6 {
        tokens.push(connect_token(&router).await);
    }
    // Round-robin by connection id; each token names only its worker's address.
    for t in &tokens {
        let worker = (t.client_id % 3) as usize;
        assert_eq!(t.server_addresses, vec![server.udp_addrs[worker]]);
    }
    let metrics = server.metrics().clone();
    let admin = server.admin_token().to_owned();
    let clients = tokio::task::spawn_blocking(move || {
        let mut clients: Vec<Client> = tokens.iter().map(Client::new).collect();
        run_until(&mut clients, "connections", |cs| {
            cs.iter().all(|c| c.connected)
        });
        for c in clients.iter_mut() {
            c.session
                .send(&ClientMessage::Subscribe {
                    query_id: 1,
                    sql: "SELECT * FROM note".into(),
                })
                .unwrap();
        }
        run_until(&mut clients, "subscriptions", |cs| {
            cs.iter().all(|c| c.applied == 1)
        });
        // A note written by a client of worker 0 reaches the subscribers on every worker.
        clients[0].call(0, "note", common::note_args(1, "hello"));
        run_until(&mut clients, "the note's update", |cs| {
            cs.iter().all(|c| c.updates >= 1)
        });
        for c in clients.iter_mut() {
            c.call(1, "add", common::add_args(1));
        }
        run_until(&mut clients, "replies", |cs| {
            cs.iter().all(|c| c.replies.iter().any(|(id, _)| *id == 1))
        });
        assert_eq!(clients[0].replies, vec![(0, Ok(())), (1, Ok(()))]);
        for c in &clients[1..] {
            assert_eq!(c.replies, vec![(1, Ok(()))]);
        }
        for c in &clients {
            assert!(!c.disconnected);
        }
        assert_eq!(metrics.clients.load(Relaxed), 6);
        clients
    })
    .await
    .unwrap();

    // Every worker carried traffic, and the totals are their sums.
    let samples = server.metrics().net_worker_samples();
    assert_eq!(samples.len(), 3);
    for (i, s) in samples.iter().enumerate() {
        assert!(
            s.datagrams_in > 0 && s.datagrams_out > 0,
            "worker {i}: {s:?}"
        );
        assert_eq!(s.clients, 2, "worker {i}");
    }
    let total_in: u64 = samples.iter().map(|s| s.datagrams_in).sum();
    assert_eq!(server.metrics().datagrams_in.load(Relaxed), total_in);
    let text = server.metrics().render();
    for w in 0..3 {
        assert!(text.contains(&format!(
            "orrery_net_worker_busy_seconds_total{{worker=\"{w}\"}}"
        )));
        assert!(text.contains(&format!(
            "orrery_net_worker_datagrams_total{{worker=\"{w}\",direction=\"in\"}}"
        )));
    }
    // The admin list gathers the clients of every worker.
    let listed = json(&router, request("GET", "/v1/admin/clients", Some(&admin))).await;
    assert_eq!(listed["clients"].as_array().unwrap().len(), 6);
    drop(clients);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_worker_is_refused_at_another() {
    let (server, _dir) = start(2).await;
    let router = server.router();
    let token = connect_token(&router).await;
    let home = (token.client_id % 2) as usize;
    let other = 1 - home;
    let metrics = server.metrics().clone();
    let (udp_addrs, other_addr) = (server.udp_addrs.clone(), server.udp_addrs[other]);
    tokio::task::spawn_blocking(move || {
        // The client's datagrams go to the other worker instead of the one its token names.
        let mut client = Client::new(&token);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = Vec::new();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let now = unix_now();
            client.session.update(now);
            client.session.drain_transmits(&mut out);
            for t in out.drain(..) {
                assert_eq!(t.to, udp_addrs[home]);
                socket.send_to(&t.bytes, other_addr).unwrap();
            }
            let rejected = metrics.net_worker_samples()[other].rejections;
            if rejected > 0 {
                break;
            }
            assert!(
                Instant::now() < end,
                "the other worker never refused the token"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(metrics.net_worker_samples()[other].clients, 0);
        assert_eq!(metrics.connects.load(Relaxed), 0);
        // Refused there, the token is still good at its own worker.
        let mut clients = vec![Client::new(&token)];
        run_until(&mut clients, "connection at the token's worker", |cs| {
            cs[0].connected
        });
        assert_eq!(metrics.net_worker_samples()[home].clients, 1);
    })
    .await
    .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_on_one_worker_leaves_the_other_alone() {
    let (server, _dir) = start(2).await;
    let router = server.router();
    let (a, b) = (connect_token(&router).await, connect_token(&router).await);
    assert_ne!(
        a.client_id % 2,
        b.client_id % 2,
        "consecutive ids, different workers"
    );
    let (a_id, admin) = (a.client_id, server.admin_token().to_owned());
    let metrics = server.metrics().clone();
    let mut clients = tokio::task::spawn_blocking(move || {
        let mut clients = vec![Client::new(&a), Client::new(&b)];
        run_until(&mut clients, "connections", |cs| {
            cs.iter().all(|c| c.connected)
        });
        clients
    })
    .await
    .unwrap();
    let done = json(
        &router,
        request(
            "POST",
            &format!("/v1/admin/clients/{a_id}/disconnect"),
            Some(&admin),
        ),
    )
    .await;
    assert_eq!(done["disconnected"], true);
    let clients = tokio::task::spawn_blocking(move || {
        run_until(&mut clients, "the disconnect", |cs| cs[0].disconnected);
        run_until(&mut clients, "the server's disconnect", |_| {
            metrics.clients.load(Relaxed) == 1
        });
        // The other worker's client goes on: calls still get replies.
        clients[1].call(7, "add", common::add_args(2));
        run_until(&mut clients, "a reply", |cs| !cs[1].replies.is_empty());
        assert_eq!(clients[1].replies, vec![(7, Ok(()))]);
        assert!(clients[1].session.is_connected() && !clients[1].disconnected);
        clients
    })
    .await
    .unwrap();
    drop(clients);
    server.shutdown().await.unwrap();
}
