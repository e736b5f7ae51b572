//! `orrery_server::agones` against a stand-in for the Agones SDK sidecar.
//!
//! The stand-in serves the SDK's own gRPC protocol (the `agones` crate's generated server
//! stubs, its `server` feature) on 127.0.0.1 and records every call. A real server runs
//! in-process with the test module, a real `orrery_client::Client` connects over UDP, and the
//! tests wait for conditions on the recorded calls (polling with a deadline, no sleeps as
//! synchronisation).

#![cfg(feature = "agones")]

mod common;

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agones::proto::alpha::sdk_server::{Sdk as AlphaSdk, SdkServer as AlphaSdkServer};
use agones::proto::sdk::sdk_server::{Sdk, SdkServer};
use agones::proto::{alpha, sdk};
use orrery_client::{Client, ClientOptions};
use orrery_server::ServerConfig;
use orrery_server::agones::{Agones, AgonesConfig, AgonesState, ZONE_LABEL};
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// One call the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    GetGameServer,
    WatchGameServer,
    Ready,
    Allocate,
    Shutdown,
    Health,
    SetLabel(String, String),
    SetAnnotation(String, String),
    Reserve(i64),
    PlayerConnect(String),
    PlayerDisconnect(String),
    SetPlayerCapacity(i64),
    Other(&'static str),
}

/// The stand-in's state: every call with when it came, and the players it was told about.
#[derive(Clone, Default)]
struct Sidecar {
    calls: Arc<Mutex<Vec<(Instant, Call)>>>,
    players: Arc<Mutex<BTreeSet<String>>>,
}

impl Sidecar {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push((Instant::now(), call));
    }

    fn calls(&self) -> Vec<(Instant, Call)> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, call: &Call) -> usize {
        self.calls().iter().filter(|(_, c)| c == call).count()
    }

    /// When `call` was first received.
    fn first(&self, call: &Call) -> Option<Instant> {
        self.calls()
            .into_iter()
            .find(|(_, c)| c == call)
            .map(|(at, _)| at)
    }

    fn game_server(&self) -> sdk::GameServer {
        sdk::GameServer {
            object_meta: Some(sdk::game_server::ObjectMeta {
                name: "orrery-zone-0-abcde".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            spec: None,
            status: Some(sdk::game_server::Status {
                state: "Scheduled".into(),
                address: "127.0.0.1".into(),
                ..Default::default()
            }),
        }
    }
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<sdk::GameServer, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Sdk for Sidecar {
    async fn ready(&self, _: Request<sdk::Empty>) -> Result<Response<sdk::Empty>, Status> {
        self.record(Call::Ready);
        Ok(Response::new(sdk::Empty {}))
    }

    async fn allocate(&self, _: Request<sdk::Empty>) -> Result<Response<sdk::Empty>, Status> {
        self.record(Call::Allocate);
        Ok(Response::new(sdk::Empty {}))
    }

    async fn shutdown(&self, _: Request<sdk::Empty>) -> Result<Response<sdk::Empty>, Status> {
        self.record(Call::Shutdown);
        Ok(Response::new(sdk::Empty {}))
    }

    async fn health(
        &self,
        request: Request<Streaming<sdk::Empty>>,
    ) -> Result<Response<sdk::Empty>, Status> {
        let mut stream = request.into_inner();
        while let Some(_ping) = stream.message().await? {
            self.record(Call::Health);
        }
        Ok(Response::new(sdk::Empty {}))
    }

    async fn get_game_server(
        &self,
        _: Request<sdk::Empty>,
    ) -> Result<Response<sdk::GameServer>, Status> {
        self.record(Call::GetGameServer);
        Ok(Response::new(self.game_server()))
    }

    type WatchGameServerStream = WatchStream;

    async fn watch_game_server(
        &self,
        _: Request<sdk::Empty>,
    ) -> Result<Response<WatchStream>, Status> {
        self.record(Call::WatchGameServer);
        let first = self.game_server();
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(first)))))
    }

    async fn set_label(
        &self,
        request: Request<sdk::KeyValue>,
    ) -> Result<Response<sdk::Empty>, Status> {
        let kv = request.into_inner();
        self.record(Call::SetLabel(kv.key, kv.value));
        Ok(Response::new(sdk::Empty {}))
    }

    async fn set_annotation(
        &self,
        request: Request<sdk::KeyValue>,
    ) -> Result<Response<sdk::Empty>, Status> {
        let kv = request.into_inner();
        self.record(Call::SetAnnotation(kv.key, kv.value));
        Ok(Response::new(sdk::Empty {}))
    }

    async fn reserve(
        &self,
        request: Request<sdk::Duration>,
    ) -> Result<Response<sdk::Empty>, Status> {
        self.record(Call::Reserve(request.into_inner().seconds));
        Ok(Response::new(sdk::Empty {}))
    }
}

#[tonic::async_trait]
impl AlphaSdk for Sidecar {
    async fn player_connect(
        &self,
        request: Request<alpha::PlayerId>,
    ) -> Result<Response<alpha::Bool>, Status> {
        let id = request.into_inner().player_id;
        self.record(Call::PlayerConnect(id.clone()));
        let added = self.players.lock().unwrap().insert(id);
        Ok(Response::new(alpha::Bool { bool: added }))
    }

    async fn player_disconnect(
        &self,
        request: Request<alpha::PlayerId>,
    ) -> Result<Response<alpha::Bool>, Status> {
        let id = request.into_inner().player_id;
        self.record(Call::PlayerDisconnect(id.clone()));
        let removed = self.players.lock().unwrap().remove(&id);
        Ok(Response::new(alpha::Bool { bool: removed }))
    }

    async fn set_player_capacity(
        &self,
        request: Request<alpha::Count>,
    ) -> Result<Response<alpha::Empty>, Status> {
        self.record(Call::SetPlayerCapacity(request.into_inner().count));
        Ok(Response::new(alpha::Empty {}))
    }

    async fn get_player_capacity(
        &self,
        _: Request<alpha::Empty>,
    ) -> Result<Response<alpha::Count>, Status> {
        self.record(Call::Other("GetPlayerCapacity"));
        Ok(Response::new(alpha::Count { count: 0 }))
    }

    async fn get_player_count(
        &self,
        _: Request<alpha::Empty>,
    ) -> Result<Response<alpha::Count>, Status> {
        self.record(Call::Other("GetPlayerCount"));
        let count = self.players.lock().unwrap().len() as i64;
        Ok(Response::new(alpha::Count { count }))
    }

    async fn is_player_connected(
        &self,
        request: Request<alpha::PlayerId>,
    ) -> Result<Response<alpha::Bool>, Status> {
        self.record(Call::Other("IsPlayerConnected"));
        let id = request.into_inner().player_id;
        let bool = self.players.lock().unwrap().contains(&id);
        Ok(Response::new(alpha::Bool { bool }))
    }

    async fn get_connected_players(
        &self,
        _: Request<alpha::Empty>,
    ) -> Result<Response<alpha::PlayerIdList>, Status> {
        self.record(Call::Other("GetConnectedPlayers"));
        let list = self.players.lock().unwrap().iter().cloned().collect();
        Ok(Response::new(alpha::PlayerIdList { list }))
    }
}

/// A running stand-in.
struct RunningSidecar {
    sidecar: Sidecar,
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSidecar {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Serves a stand-in on `listener` (127.0.0.1).
fn serve_sidecar(listener: tokio::net::TcpListener) -> RunningSidecar {
    let port = listener.local_addr().unwrap().port();
    let sidecar = Sidecar::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = sidecar.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SdkServer::new(service.clone()))
            .add_service(AlphaSdkServer::new(service))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    RunningSidecar {
        sidecar,
        port,
        stop: Some(stop),
        task,
    }
}

async fn start_sidecar() -> RunningSidecar {
    serve_sidecar(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// Intervals short enough for a test.
fn test_config(port: u16) -> AgonesConfig {
    AgonesConfig {
        port: Some(port),
        health_interval: Duration::from_millis(100),
        players_interval: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(500),
        connect_retry: Duration::from_millis(100),
        call_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(5),
        ..AgonesConfig::default()
    }
}

/// Polls `done` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_health_players_and_shutdown_reach_the_sidecar() {
    let sidecar = start_sidecar().await;
    let dir = tempfile::tempdir().unwrap();
    let server = orrery_server::start(common::module(), ServerConfig::for_tests(dir.path()))
        .await
        .unwrap();
    let serving = Instant::now();

    let agones = Agones::start(&server, test_config(sidecar.port).with_zone(7)).unwrap();
    let s = sidecar.sidecar.clone();

    // Ready, once, after the server serves and after the zone label.
    wait_for("Ready", LIMIT, || s.count(&Call::Ready) == 1).await;
    let label = Call::SetLabel(ZONE_LABEL.into(), "7".into());
    let ready_at = s.first(&Call::Ready).unwrap();
    assert!(ready_at > serving);
    assert!(s.first(&label).expect("the zone label was set") <= ready_at);
    assert!(s.first(&Call::GetGameServer).unwrap() <= ready_at);
    wait_for("the Ready state", LIMIT, || {
        agones.status().state == AgonesState::Ready
    })
    .await;

    // Health pings keep arriving.
    wait_for("3 health pings", LIMIT, || s.count(&Call::Health) >= 3).await;
    let pings = s.count(&Call::Health);
    wait_for("3 more health pings", LIMIT, || {
        s.count(&Call::Health) >= pings + 3
    })
    .await;

    // A real client over UDP is a player while connected.
    let client = Client::connect(&server.http_url, ClientOptions::default())
        .await
        .unwrap();
    let (identity, _) = client.identity().expect("connected");
    let player = identity.to_hex();
    assert_eq!(player.len(), 64);
    wait_for("PlayerConnect", LIMIT, || {
        s.count(&Call::PlayerConnect(player.clone())) == 1
    })
    .await;
    wait_for("the player count", LIMIT, || agones.status().players == 1).await;
    assert_eq!(
        s.players
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        vec![player.clone()]
    );
    assert_eq!(s.count(&Call::PlayerDisconnect(player.clone())), 0);

    client.disconnect();
    wait_for("PlayerDisconnect", LIMIT, || {
        s.count(&Call::PlayerDisconnect(player.clone())) == 1
    })
    .await;
    assert!(s.players.lock().unwrap().is_empty());
    // Reported once each, not every round.
    assert_eq!(s.count(&Call::PlayerConnect(player.clone())), 1);

    // Shutdown on stop, after which nothing more is sent.
    assert_eq!(s.count(&Call::Shutdown), 0);
    let status = agones.shutdown().await.unwrap();
    assert!(status.shutdown_sent, "{status:?}");
    assert_eq!(status.state, AgonesState::Stopped);
    assert_eq!(status.call_failures, 0, "{status:?}");
    assert_eq!(s.count(&Call::Shutdown), 1);
    assert_eq!(s.count(&Call::Ready), 1);
    // After Shutdown at most pings still in flight on the health stream.
    let shutdown_at = s.first(&Call::Shutdown).unwrap();
    let after: Vec<Call> = s
        .calls()
        .into_iter()
        .filter(|(at, c)| *at > shutdown_at && *c != Call::Shutdown)
        .map(|(_, c)| c)
        .collect();
    assert!(after.iter().all(|c| *c == Call::Health), "{after:?}");

    server.shutdown().await.unwrap();
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_comes_late_is_waited_for() {
    // A port with nothing listening (yet).
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);

    let dir = tempfile::tempdir().unwrap();
    let server = orrery_server::start(common::module(), ServerConfig::for_tests(dir.path()))
        .await
        .unwrap();
    let agones = Agones::start(&server, test_config(port)).unwrap();

    // It keeps trying (and logging) while nobody answers.
    wait_for("2 failed connection attempts", LIMIT, || {
        agones.status().connect_failures >= 2
    })
    .await;
    assert_eq!(agones.status().state, AgonesState::Connecting);

    // The sidecar appears; Ready follows and health pings start.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the reserved port is still free");
    let sidecar = serve_sidecar(listener);
    let s = sidecar.sidecar.clone();
    wait_for("Ready from the late sidecar", LIMIT, || {
        s.count(&Call::Ready) == 1
    })
    .await;
    wait_for("health pings", LIMIT, || s.count(&Call::Health) >= 2).await;

    let status = agones.shutdown().await.unwrap();
    assert!(status.shutdown_sent, "{status:?}");
    assert_eq!(s.count(&Call::Shutdown), 1);
    server.shutdown().await.unwrap();
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_before_the_sidecar_answers_ends_promptly() {
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let dir = tempfile::tempdir().unwrap();
    let server = orrery_server::start(common::module(), ServerConfig::for_tests(dir.path()))
        .await
        .unwrap();
    let agones = Agones::start(&server, test_config(port)).unwrap();
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), agones.shutdown())
        .await
        .expect("shutdown does not wait for an absent sidecar")
        .unwrap();
    assert!(!status.shutdown_sent);
    assert_eq!(status.state, AgonesState::Stopped);
    assert!(started.elapsed() < Duration::from_secs(5));
    server.shutdown().await.unwrap();
}
