//! A player walks across a zone border over real UDP: two in-process zone servers with their
//! relays, and an `orrery_client::Client` that connected to the first. The character is
//! handed over, the client is moved to the second zone through its connection
//! (`ZoneMove`), and the player does not notice: its avatar never leaves its mirror, keeps
//! its id, its calls work in the new zone, and the mirror ends equal to what the new zone
//! shows it. Before it crosses, it already sees the character standing across the border.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orrery_client::http::ControlPlane;
use orrery_client::{Client, ClientOptions, Event};
use orrery_engine::Identity;
use orrery_engine::glam::Vec2;
use orrery_server::zone::{BorderSync, Relay, RelayConfig, ZoneMap, ZoneSpec};
use orrery_server::{Secrets, ServerConfig, ServerHandle};
use sample_mmo::WorldSettings;
use sample_mmo::zone::{ZoneRegion, ZoneRules};

/// Half the world's edge; zone 0 is x < 0, zone 1 is x ≥ 0.
const HALF: f32 = 50.0;

fn regions() -> Vec<ZoneRegion> {
    vec![
        ZoneRegion {
            zone: 0,
            min: Vec2::new(-HALF, -HALF),
            max: Vec2::new(0.0, HALF),
        },
        ZoneRegion {
            zone: 1,
            min: Vec2::new(0.0, -HALF),
            max: Vec2::new(HALF, HALF),
        },
    ]
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

async fn start_zone(dir: &std::path::Path, secrets: &std::path::Path, zone: u16) -> ServerHandle {
    let relay = Secrets::load_or_create(secrets).unwrap().zone_peer();
    let world = WorldSettings {
        npc_count: 0,
        world_size: 2.0 * HALF,
        town_spacing: 0.0,
        zone: Some(ZoneRules {
            zone,
            regions: regions(),
            relay,
        }),
        ..WorldSettings::default()
    };
    let config = ServerConfig {
        secret_dir: Some(secrets.to_owned()),
        // Longer than `eventually` waits: a connection the client left ends at once (its
        // disconnect packets), never by timing out here.
        connection_timeout: Duration::from_secs(120),
        ..ServerConfig::for_tests(dir.join(format!("zone-{zone}")))
    };
    orrery_server::start(sample_mmo::module_with(world), config)
        .await
        .unwrap()
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_walks_into_the_next_zone_without_noticing() {
    let tmp = tempfile::tempdir().unwrap();
    let zones = [
        start_zone(tmp.path(), tmp.path(), 0).await,
        start_zone(tmp.path(), tmp.path(), 1).await,
    ];
    let map = ZoneMap::new(
        zones
            .iter()
            .zip(regions())
            .map(|(server, region)| ZoneSpec {
                id: region.zone,
                min: region.min.into(),
                max: region.max.into(),
                http: server.http_addr,
                udp: server.udp_addr,
            })
            .collect(),
    )
    .unwrap();
    let border = BorderSync {
        table: "avatar".into(),
        position: "position".into(),
        band: sample_mmo::zone::BORDER_BAND,
        period: Duration::from_millis(100),
        reducer: "sync_border".into(),
        rows_per_call: 150,
    };
    let relays = [
        Relay::start(
            &zones[0],
            RelayConfig::new(0, map.clone()).with_border(border.clone()),
        ),
        Relay::start(
            &zones[1],
            RelayConfig::new(1, map.clone()).with_border(border),
        ),
    ];

    let secrets = Secrets::load_or_create(tmp.path()).unwrap();
    let me = Identity::from_u64(77);
    let token = secrets.issue(&me, now(), Duration::from_secs(3600));
    let client = Client::connect(
        &zones[0].http_url,
        ClientOptions {
            token: Some(token.clone()),
            zone_move_settle: Duration::from_millis(500),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    let mut events = client.events();
    client
        .call("enter_world", serde_json::json!(["mover"]))
        .await
        .unwrap();
    client.subscribe("SELECT * FROM avatar").await.unwrap();
    client.subscribe("SELECT * FROM player").await.unwrap();
    let mine = |row: &serde_json::Value| row["owner"].as_str() == Some(&me.to_hex());
    let avatar = eventually("my avatar in the mirror", async || {
        client
            .rows::<serde_json::Value>("avatar")
            .unwrap()
            .into_iter()
            .find(|row| mine(row))
    })
    .await;
    let avatar_id = avatar["id"].as_u64().unwrap();
    assert!(avatar["position"][0].as_f64().unwrap() < 0.0);

    // Border interest: a character standing in zone 1 is seen from zone 0 before anyone
    // crosses (zone 1 sends the avatars near its border to zone 0's `border_avatar`).
    let stander = Identity::from_u64(78);
    let stander_token = secrets.issue(&stander, now(), Duration::from_secs(3600));
    let zone1 = ControlPlane::new(&zones[1].http_url).unwrap();
    zone1
        .call(
            &stander_token,
            "enter_world",
            &serde_json::json!(["stander"]),
        )
        .await
        .unwrap();
    client
        .subscribe("SELECT * FROM border_avatar WHERE within(position, :focus, 60)")
        .await
        .unwrap();
    let across = eventually("the avatar across the border", async || {
        client
            .rows::<serde_json::Value>("border_avatar")
            .unwrap()
            .into_iter()
            .find(|row| row["owner"].as_str() == Some(&stander.to_hex()))
    })
    .await;
    assert_eq!(across["zone"].as_u64(), Some(1));
    assert!(across["position"][0].as_f64().unwrap() >= 0.0);

    // Count every moment the avatar or the player row leaves the mirror.
    let vanished = Arc::new(AtomicU64::new(0));
    for table in ["avatar", "player"] {
        let vanished = vanished.clone();
        let me = me.to_hex();
        client
            .on_delete(table, move |row| {
                let json = row.to_json();
                if json["owner"].as_str() == Some(&me) || json["identity"].as_str() == Some(&me) {
                    vanished.fetch_add(1, Relaxed);
                }
            })
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                match event {
                    Event::ZoneMove { zone } => seen.lock().unwrap().push(format!("move {zone}")),
                    Event::Connected { .. } => seen.lock().unwrap().push("connected".into()),
                    Event::Disconnected { reason } => {
                        seen.lock().unwrap().push(format!("disconnected: {reason}"));
                    }
                    _ => {}
                }
            }
        })
    };

    // Walk east across x = 0.
    client
        .call("move_to", serde_json::json!([[20.0, 0.0], true]))
        .await
        .unwrap();
    eventually("the move to zone 1", async || {
        let seen = seen.lock().unwrap();
        (seen.iter().any(|e| e == "move 1") && seen.last().is_some_and(|e| e == "connected"))
            .then_some(())
    })
    .await;
    assert!(client.is_connected());

    // The player's calls now go to zone 1, which holds the character.
    client
        .call("move_to", serde_json::json!([[25.0, 5.0], true]))
        .await
        .unwrap();
    let zone0 = ControlPlane::new(&zones[0].http_url).unwrap();
    // Zone 0 forgot the character; zone 1 has it, with the same id.
    eventually("zone 0 to forget the character", async || {
        let rows = zone0
            .sql(&token, "SELECT * FROM avatar", None)
            .await
            .unwrap()
            .rows;
        rows.iter().all(|row| !mine(row)).then_some(())
    })
    .await;
    let there = zone1
        .sql(&token, "SELECT * FROM avatar", None)
        .await
        .unwrap()
        .rows;
    let there: Vec<_> = there.iter().filter(|row| mine(row)).collect();
    assert_eq!(there.len(), 1);
    assert_eq!(there[0]["id"].as_u64(), Some(avatar_id));

    // The mirror converges on zone 1's view, and the character never left it.
    eventually("the mirror to equal zone 1's view", async || {
        let mirror: BTreeSet<u64> = client
            .rows::<serde_json::Value>("avatar")
            .unwrap()
            .iter()
            .map(|row| row["id"].as_u64().unwrap())
            .collect();
        let rows = zone1
            .sql(&token, "SELECT * FROM avatar", None)
            .await
            .unwrap()
            .rows;
        let server: BTreeSet<u64> = rows.iter().map(|row| row["id"].as_u64().unwrap()).collect();
        let players = client.count("player").unwrap();
        (mirror == server && players == 1).then_some(())
    })
    .await;
    let mirrored = client
        .rows::<serde_json::Value>("avatar")
        .unwrap()
        .into_iter()
        .find(|row| mine(row))
        .unwrap();
    assert_eq!(mirrored["id"].as_u64(), Some(avatar_id));
    assert!(mirrored["position"][0].as_f64().unwrap() >= 0.0);
    assert_eq!(vanished.load(Relaxed), 0, "the character left the mirror");
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|e| e.starts_with("disconnected")),
        "events: {seen:?}"
    );
    let moved = relays[0].stats().moved.load(Relaxed);
    assert_eq!(moved, 1);
    // The client told zone 0 it left: zone 0 holds no connection of it.
    eventually("zone 0 to see the client leave", async || {
        (zones[0].metrics().clients.load(Relaxed) == 0).then_some(())
    })
    .await;

    recorder.abort();
    drop(client);
    for relay in relays {
        relay.stop().await;
    }
    for zone in zones {
        zone.shutdown().await.unwrap();
    }
}
