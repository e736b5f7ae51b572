//! The async `Client` end to end over loopback: a tiny axum control plane implementing the
//! three endpoints the client uses, and the fake game server on a real UDP socket.

#![allow(missing_docs)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use orrery_client::netcode::sim::LinkConditions;
use orrery_client::row::Value;
use orrery_client::{CallError, Client, ClientError, ClientOptions, Event};
use orrery_netcode::udp::TokioUdpEndpoint;
use orrery_netcode::{
    ConnectTokenIssuer, DEFAULT_PROTOCOL_ID, DisconnectReason, PrivateKey, ServerSession,
    ServerSessionConfig, unix_now,
};
use serde_json::json;
use support::FakeGame;
use tokio::sync::{mpsc, watch};

struct ControlState {
    issuer: ConnectTokenIssuer,
    tokens: Mutex<HashMap<String, [u8; 32]>>,
    next: Mutex<u64>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn create_identity(State(s): State<Arc<ControlState>>) -> Json<serde_json::Value> {
    let n = {
        let mut next = s.next.lock().unwrap();
        *next += 1;
        *next
    };
    let mut identity = [0u8; 32];
    identity[..8].copy_from_slice(&n.to_le_bytes());
    identity[31] = 0xc1;
    let token = format!("token-{n}");
    s.tokens.lock().unwrap().insert(token.clone(), identity);
    Json(json!({"identity": hex(&identity), "token": token}))
}

async fn connect_token(State(s): State<Arc<ControlState>>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(identity) = bearer.and_then(|t| s.tokens.lock().unwrap().get(t).copied()) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid or missing identity token"})),
        )
            .into_response();
    };
    let client_id = {
        let mut next = s.next.lock().unwrap();
        *next += 1;
        *next
    };
    let token = s
        .issuer
        .issue(
            &orrery_netcode::Identity(identity),
            orrery_netcode::ConnectionId(client_id),
            unix_now(),
        )
        .unwrap();
    Json(json!({
        "connect_token": base64::engine::general_purpose::STANDARD.encode(token.to_bytes()),
        "server_addresses": s.issuer.server_addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "identity": hex(&identity),
        "client_id": client_id,
    }))
    .into_response()
}

async fn schema() -> Json<serde_json::Value> {
    Json(serde_json::from_str(support::schema_json()).unwrap())
}

struct TestServer {
    http_base: String,
    /// Number of client disconnects the game has seen.
    disconnects: watch::Receiver<usize>,
}

async fn start_server() -> TestServer {
    let mut udp = TokioUdpEndpoint::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = udp.local_addr();
    let key = PrivateKey::generate().unwrap();
    let mut server = ServerSession::new(
        ServerSessionConfig::new(key.clone(), DEFAULT_PROTOCOL_ID, vec![addr]),
        unix_now(),
    )
    .unwrap();
    let (disconnects_tx, disconnects) = watch::channel(0usize);
    tokio::spawn(async move {
        let mut game = FakeGame::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                r = udp.readable() => r.unwrap(),
                _ = tick.tick() => {}
            }
            udp.recv(&mut server, unix_now()).unwrap();
            game.handle(&mut server);
            disconnects_tx.send_if_modified(|n| {
                let changed = *n != game.disconnected.len();
                *n = game.disconnected.len();
                changed
            });
            server.update(unix_now());
            udp.flush(&mut server).unwrap();
        }
    });

    let state = Arc::new(ControlState {
        issuer: ConnectTokenIssuer::new(key, DEFAULT_PROTOCOL_ID, vec![addr]),
        tokens: Mutex::new(HashMap::new()),
        next: Mutex::new(0),
    });
    let app = Router::new()
        .route("/v1/identity", post(create_identity))
        .route("/v1/connect-token", post(connect_token))
        .route("/v1/schema", get(schema))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestServer {
        http_base,
        disconnects,
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Npc {
    id: u64,
    name: String,
    pos: [f32; 2],
    hp: i32,
}

#[tokio::test]
async fn connect_call_subscribe_and_mirror() {
    let server = start_server().await;
    let client = Client::connect(&server.http_base, options()).await.unwrap();
    assert!(client.is_connected());
    let (identity, _) = client.identity().unwrap();
    assert_eq!(identity.0[31], 0xc1);
    assert_eq!(client.schema().name, "demo");
    let mut events = client.events();

    let (inserted_tx, mut inserted) = mpsc::unbounded_channel();
    client
        .on_insert("npc", move |row| {
            let _ = inserted_tx.send(row.get("id").cloned());
        })
        .unwrap();
    let (deleted_tx, mut deleted) = mpsc::unbounded_channel();
    client
        .on_delete("npc", move |row| {
            let _ = deleted_tx.send(row.get("id").cloned());
        })
        .unwrap();
    // A callback may call back into the client (here: read the mirror); removing it later
    // drops the clone it holds.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let inner = client.clone();
    let update_cb = client
        .on_update("npc", move |_, new| {
            let _ = seen_tx.send((inner.count("npc").unwrap(), new.get("hp").cloned()));
        })
        .unwrap();
    assert!(matches!(
        client.on_insert("nope", |_| {}),
        Err(ClientError::Mirror(_))
    ));

    let query = client.subscribe("SELECT * FROM npc").await.unwrap();
    match client.subscribe("SELECT * FROM nope").await {
        Err(ClientError::Subscription { message, sql, .. }) => {
            assert_eq!(sql, "SELECT * FROM nope");
            assert!(message.contains("unsupported"));
        }
        other => panic!("expected a subscription error, got {other:?}"),
    }

    let reply = client
        .call(
            "spawn_npc",
            json!({"id": 1, "name": "orc", "pos": [1.5, -2.25], "hp": 10}),
        )
        .await
        .unwrap();
    assert!(reply.tick > 0);
    // The update was published before the reply: it is in the mirror already.
    assert_eq!(client.count("npc").unwrap(), 1);
    assert_eq!(inserted.recv().await, Some(Some(Value::Unsigned(1))));
    client
        .call_durable("spawn_npc", json!([2, "elf", [0.0, 0.0], 20]))
        .await
        .unwrap();
    client.call("damage", json!([2, 5])).await.unwrap();
    assert_eq!(seen.recv().await, Some((2, Some(Value::Signed(15)))));
    assert!(client.remove_callback(update_cb));

    let npcs: Vec<Npc> = client.rows("npc").unwrap();
    assert_eq!(
        npcs,
        vec![
            Npc {
                id: 1,
                name: "orc".into(),
                pos: [1.5, -2.25],
                hp: 10
            },
            Npc {
                id: 2,
                name: "elf".into(),
                pos: [0.0, 0.0],
                hp: 15
            },
        ]
    );
    let elf: Option<Npc> = client.find("npc", &json!(2)).unwrap();
    assert_eq!(elf.unwrap().name, "elf");
    assert_eq!(
        client.find::<Npc>("npc", &json!("2")).unwrap().unwrap().id,
        2
    );
    assert!(matches!(
        client.find::<Npc>("npc", &json!("two")),
        Err(ClientError::Mirror(_))
    ));
    let bytes = client.with_mirror(|m| {
        m.find_row("npc", &json!(1))
            .unwrap()
            .map(|r| (r.table_id(), r.to_bytes()))
    });
    assert_eq!(bytes.map(|(t, b)| (t, b.len())), Some((0, 1 + 4 + 8 + 1)));

    match client.call("fail", json!(null)).await {
        Err(e @ CallError::Reducer { .. }) => {
            assert_eq!(e.reducer_error(), Some("insufficient funds"));
            assert_eq!(e.to_string(), "reducer `fail` failed: insufficient funds");
        }
        other => panic!("expected a reducer error, got {other:?}"),
    }
    match client.call("nope", json!([])).await {
        Err(CallError::Client(ClientError::UnknownReducer(name))) => assert_eq!(name, "nope"),
        other => panic!("expected an unknown reducer, got {other:?}"),
    }

    // The event stream saw the updates and replies.
    let mut saw_update = false;
    let mut saw_reply = false;
    while let Ok(e) = events.try_recv() {
        saw_update |= matches!(e, Event::TableUpdate { table_id: 0, .. });
        saw_reply |= matches!(e, Event::ReducerReply { .. });
    }
    assert!(saw_update && saw_reply);

    client.unsubscribe(&query).unwrap();
    let mut gone = vec![deleted.recv().await.unwrap(), deleted.recv().await.unwrap()];
    gone.sort_by_key(|v| v.as_ref().and_then(Value::as_u64));
    assert_eq!(gone, [Some(Value::Unsigned(1)), Some(Value::Unsigned(2))]);
    assert_eq!(client.count("npc").unwrap(), 0);

    client.disconnect();
    assert_eq!(client.closed().await, DisconnectReason::ByClient);
    assert!(matches!(
        client.call("fail", json!(null)).await,
        Err(CallError::Client(ClientError::Disconnected(_)))
    ));
}

#[tokio::test]
async fn saved_tokens_reconnect_as_the_same_identity_and_bad_tokens_are_refused() {
    let server = start_server().await;
    let first = Client::connect(&server.http_base, options()).await.unwrap();
    let token = first.token().to_owned();
    let again = Client::connect(
        &server.http_base,
        ClientOptions {
            token: Some(token),
            ..options()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        first.identity().unwrap().0,
        again.identity().unwrap().0,
        "same identity"
    );
    assert_ne!(
        first.identity().unwrap().1,
        again.identity().unwrap().1,
        "another connection"
    );

    match Client::connect(
        &server.http_base,
        ClientOptions {
            token: Some("bogus".into()),
            ..options()
        },
    )
    .await
    {
        Err(ClientError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 401);
            assert_eq!(message, "invalid or missing identity token");
        }
        other => panic!("expected 401, got {other:?}"),
    }

    // Nothing listens there (the port of a socket just closed).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    assert!(matches!(
        Client::connect(&dead, options()).await,
        Err(ClientError::Http { .. })
    ));
}

#[tokio::test]
async fn a_kicked_client_sees_the_reason_and_its_pending_call_fails() {
    let server = start_server().await;
    let client = Client::connect(&server.http_base, options()).await.unwrap();
    match client.call("kick_me", json!([])).await {
        Err(CallError::Client(ClientError::Disconnected(reason))) => assert_eq!(
            reason,
            DisconnectReason::ByServer("kicked: asked for it".into())
        ),
        other => panic!("expected a disconnect, got {other:?}"),
    }
    assert_eq!(
        client.closed().await,
        DisconnectReason::ByServer("kicked: asked for it".into())
    );
    assert!(!client.is_connected());
}

#[tokio::test]
async fn dropping_the_last_handle_disconnects() {
    let mut server = start_server().await;
    let client = Client::connect(&server.http_base, options()).await.unwrap();
    let clone = client.clone();
    drop(client);
    clone
        .call("spawn_npc", json!([9, "x", [0, 0], 1]))
        .await
        .unwrap();
    drop(clone);
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        server.disconnects.wait_for(|n| *n == 1),
    )
    .await
    .expect("the server saw the disconnect")
    .map(|n| *n)
    .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_simulated_lossy_link_delays_and_drops_datagrams_yet_every_call_is_answered() {
    let mut server = start_server().await;
    let link = LinkConditions::lossy(0.2, Duration::from_millis(15), Duration::from_millis(10));
    let client = Client::connect(
        &server.http_base,
        ClientOptions {
            link: Some(link),
            link_seed: 11,
            ..options()
        },
    )
    .await
    .unwrap();
    client.subscribe("SELECT * FROM npc").await.unwrap();
    for id in 1..=40u64 {
        client
            .call("spawn_npc", json!([id, "wolf", [id as f32, 0.0], 10]))
            .await
            .unwrap();
    }
    // Every reply came back in spite of the losses, and the mirror holds every row.
    assert_eq!(client.count("npc").unwrap(), 40);
    let stats = client.stats();
    let sim = stats.link.expect("link counters with a simulated link");
    assert!(sim.lost_out > 0 && sim.lost_in > 0, "{sim:?}");
    assert!(sim.sent_in >= stats.datagrams_in);
    assert!(stats.bytes_in > 0 && stats.bytes_out > 0);
    // Held datagrams went out when the client closed: the server sees the disconnect.
    client.disconnect();
    client.closed().await;
    tokio::time::timeout(
        Duration::from_secs(5),
        server.disconnects.wait_for(|n| *n == 1),
    )
    .await
    .expect("the server saw the disconnect")
    .unwrap();

    // Without a simulated link there are no link counters.
    let plain = Client::connect(&server.http_base, options()).await.unwrap();
    assert_eq!(plain.stats().link, None);
}
