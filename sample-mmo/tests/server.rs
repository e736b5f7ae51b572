//! The sample MMO on `orrery-server`, end to end over real sockets: identity and connect token
//! over HTTP, a UDP client whose `client_connected` creates its player, subscriptions to its
//! player (owner-only table) and to the NPCs around it, a reducer call, and a restart that
//! recovers the world instead of re-running `init`.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use orrery_engine::value::Value;
use orrery_engine::{Engine, EngineConfig, FsyncPolicy, Table};
use orrery_netcode::udp::UdpEndpoint;
use orrery_netcode::{
    ClientEvent, ClientMessage, ClientSession, ClientSessionConfig, ServerMessage, unix_now,
};
use orrery_row::wire::{WireLayout, WireRecord};
use orrery_server::{ServerConfig, Storage};
use serde_json::Value as Json;

/// A POST over a real socket; returns the JSON body.
fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> Json {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {response}"))
}

struct Seen {
    players: Vec<Vec<Value>>,
    npcs: usize,
    applied: usize,
    replies: Vec<Result<(), String>>,
}

/// Connects with a fresh connect token for `bearer`, subscribes, calls `move_to(target)` (if
/// any) and collects what arrives until `done` holds (at most 30 s).
fn play(
    http: SocketAddr,
    bearer: &str,
    target: Option<[f32; 2]>,
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let ct = post(http, "/v1/connect-token", Some(bearer), "");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(ct["connect_token"].as_str().unwrap())
        .unwrap();
    let mut session =
        ClientSession::from_token_bytes(ClientSessionConfig::default(), &bytes, unix_now())
            .unwrap();
    let mut udp = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let schema = Engine::new(sample_mmo::module(), EngineConfig::default())
        .unwrap()
        .schema()
        .clone();
    let player_table = schema.table(sample_mmo::Player::NAME).unwrap().clone();
    let npc_table = schema.table(sample_mmo::Npc::NAME).unwrap().clone();
    let player_layout = WireLayout::new(&player_table);
    let npc_layout = WireLayout::new(&npc_table);
    for (query_id, sql) in [
        (1, "SELECT * FROM player"),
        (2, "SELECT * FROM npc WHERE within(position, :focus, 300)"),
    ] {
        session
            .send(&ClientMessage::Subscribe {
                query_id,
                sql: sql.into(),
            })
            .unwrap();
    }
    if let Some(target) = target {
        let mut args = Vec::new();
        for v in target {
            args.extend_from_slice(&v.to_le_bytes());
        }
        session
            .send(&ClientMessage::CallReducer {
                request_id: 1,
                reducer: "move_to".into(),
                args,
                durable: true,
            })
            .unwrap();
    }
    let mut seen = Seen {
        players: Vec::new(),
        npcs: 0,
        applied: 0,
        replies: Vec::new(),
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !done(&seen) {
        assert!(
            Instant::now() < end,
            "timed out; seen so far: {:?}",
            seen.players
        );
        let now = unix_now();
        udp.recv(&mut session, now).unwrap();
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Message { msg, .. } => match msg {
                    ServerMessage::SubscriptionApplied { .. } => seen.applied += 1,
                    ServerMessage::SubscriptionError { message, .. } => panic!("{message}"),
                    ServerMessage::ReducerReply { result, .. } => seen.replies.push(result),
                    ServerMessage::TableUpdate { table_id, rows, .. } => {
                        if table_id == player_table.id {
                            for r in player_layout.decode_records(&rows).unwrap() {
                                if let WireRecord::Upsert { row, .. } = r {
                                    seen.players.push(row.columns);
                                }
                            }
                        } else if table_id == npc_table.id {
                            seen.npcs += npc_layout.decode_records(&rows).unwrap().len();
                        }
                    }
                    _ => {}
                },
                ClientEvent::Connected { .. } => {}
                ClientEvent::Disconnected { reason } => panic!("disconnected: {reason}"),
            }
        }
        session.update(now);
        udp.flush(&mut session).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    session.disconnect();
    udp.flush(&mut session).unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_mmo_serves_a_udp_client_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::for_tests(dir.path());
    config.storage = Storage::Disk {
        fsync: FsyncPolicy::Never,
        snapshot_every_ticks: 0,
    };

    let server = orrery_server::start(sample_mmo::module(), config.clone())
        .await
        .unwrap();
    assert!(server.fresh);
    let http = server.http_addr;
    let bearer = tokio::task::spawn_blocking(move || {
        let id = post(http, "/v1/identity", None, "");
        id["token"].as_str().unwrap().to_owned()
    })
    .await
    .unwrap();
    let b = bearer.clone();
    let moved = |p: &Vec<Value>| p[3] == Value::Vec2(orrery_engine::glam::Vec2::new(12.5, -40.0));
    let seen = tokio::task::spawn_blocking(move || {
        play(http, &b, Some([12.5, -40.0]), |s| {
            s.applied == 2 && !s.replies.is_empty() && s.npcs > 0 && s.players.iter().any(moved)
        })
    })
    .await
    .unwrap();
    assert_eq!(seen.applied, 2);
    assert_eq!(seen.replies, vec![Ok(())]);
    // The player row: created by client_connected, online, then moved.
    let last = seen.players.last().expect("own player row");
    assert_eq!(last[4], Value::Bool(true), "online: {last:?}");
    assert!(seen.players.iter().any(moved), "moved: {:?}", seen.players);
    assert!(seen.npcs > 0, "NPCs around the player arrive");
    server.shutdown().await.unwrap();

    // Restart: the world is recovered, init does not run again, the player is still there.
    let server = orrery_server::start(sample_mmo::module(), config)
        .await
        .unwrap();
    assert!(!server.fresh);
    let http = server.http_addr;
    let seen =
        tokio::task::spawn_blocking(move || play(http, &bearer, None, |s| !s.players.is_empty()))
            .await
            .unwrap();
    let first = seen.players.first().expect("own player row");
    assert_eq!(
        first[0],
        Value::Unsigned(1),
        "the same player row, not a new one"
    );
    assert_eq!(
        first[3],
        Value::Vec2(orrery_engine::glam::Vec2::new(12.5, -40.0)),
        "the recovered player is where it was left: {:?}",
        seen.players
    );
    server.shutdown().await.unwrap();
}
