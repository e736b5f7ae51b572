//! The sample MMO on a live `orrery-server` (real HTTP and UDP sockets) played by real
//! `orrery-client` clients: players see who and what is near them and not what is far,
//! movement keeps to the speed limit, chat carries as far as it should, fights end in loot
//! and a respawn, picked-up items are their owner's alone, config is for admins, and a
//! restart keeps players, inventories and the world.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orrery_client::{Client, ClientOptions};
use orrery_engine::Identity;
use orrery_engine::glam::Vec2;
use orrery_server::{Secrets, ServerConfig, ServerHandle, Storage};
use sample_mmo::WorldSettings;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, Debug, Clone, PartialEq)]
struct AvatarView {
    id: u64,
    name: String,
    position: [f32; 2],
    online: bool,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
struct NpcView {
    id: u64,
    kind: String,
    position: [f32; 2],
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
struct ItemView {
    id: u64,
    kind: String,
    position: [f32; 2],
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
struct InventoryView {
    id: u64,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
struct PlayerView {
    avatar_id: u64,
    kills: u32,
}

const SIGHT: f32 = 100.0;
const NPC_SIGHT: f32 = 60.0;
const CHAT_RADIUS: f32 = 40.0;
const ADMIN: u64 = 1;

fn v(p: [f32; 2]) -> Vec2 {
    Vec2::from_array(p)
}

fn world() -> WorldSettings {
    WorldSettings {
        npc_count: 400,
        world_size: 800.0,
        admins: vec![Identity::from_u64(ADMIN)],
        ..WorldSettings::default()
    }
}

fn config(dir: &std::path::Path, disk: bool) -> ServerConfig {
    let mut config = ServerConfig::for_tests(dir);
    if disk {
        config.storage = Storage::Disk {
            fsync: orrery_engine::FsyncPolicy::Never,
            snapshot_every_ticks: 0,
        };
    }
    config
}

async fn start(dir: &std::path::Path, disk: bool) -> ServerHandle {
    orrery_server::start(sample_mmo::module_with(world()), config(dir, disk))
        .await
        .unwrap()
}

/// A bearer token for the admin identity, signed with the data directory's secret.
fn admin_token(dir: &std::path::Path) -> String {
    let secrets = Secrets::load_or_create(dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    secrets.issue(&Identity::from_u64(ADMIN), now, Duration::from_secs(3600))
}

/// Joins as `name` (with `token`'s identity, or a new one), subscribed to what a game client
/// shows: avatars, NPCs and items around it, local and global chat, its own rows.
async fn join(server: &ServerHandle, name: &str, token: Option<String>) -> Client {
    let options = ClientOptions {
        token,
        ..ClientOptions::default()
    };
    let client = Client::connect(&server.http_url, options).await.unwrap();
    client
        .call("enter_world", json!([name]))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for sql in [
        format!("SELECT * FROM avatar WHERE within(position, :focus, {SIGHT})"),
        format!("SELECT * FROM npc WHERE within(position, :focus, {NPC_SIGHT})"),
        format!("SELECT * FROM item WHERE within(position, :focus, {NPC_SIGHT})"),
        format!("SELECT * FROM chat WHERE within(position, :focus, {CHAT_RADIUS})"),
        "SELECT * FROM chat WHERE global = true".to_owned(),
        "SELECT * FROM player".to_owned(),
        "SELECT * FROM inventory".to_owned(),
    ] {
        client.subscribe(&sql).await.unwrap();
    }
    client
}

/// Chat lines a client hears, as (speaker, text).
fn listen(client: &Client) -> Arc<Mutex<Vec<(String, String)>>> {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    client
        .on_insert("chat", move |row| {
            let text = |c: &str| row.get(c).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            sink.lock().unwrap().push((text("name"), text("text")));
        })
        .unwrap();
    heard
}

/// Waits (at most `limit`) until `done` holds, polling the client's mirror.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn avatars(client: &Client) -> Vec<AvatarView> {
    client.rows("avatar").unwrap()
}

fn me(client: &Client, name: &str) -> AvatarView {
    avatars(client)
        .into_iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("{name} does not see itself"))
}

fn reducer_error(result: Result<orrery_client::Reply, orrery_client::CallError>) -> String {
    match result {
        Err(e) => e
            .reducer_error()
            .map(str::to_owned)
            .unwrap_or_else(|| e.to_string()),
        Ok(reply) => panic!("expected a refusal, got {reply:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_see_what_is_near_and_hear_chat_in_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), false).await;
    let admin = join(&server, "warden", Some(admin_token(dir.path()))).await;
    let ann = join(&server, "ann", None).await;
    let bob = join(&server, "bob", None).await;
    let bob_heard = listen(&bob);
    let ann_heard = listen(&ann);

    // Everyone starts in town: each sees the others.
    until(
        "players in town to see each other",
        Duration::from_secs(10),
        || {
            let names = |c: &Client| {
                let mut n: Vec<String> = avatars(c).into_iter().map(|a| a.name).collect();
                n.sort();
                n
            };
            names(&ann) == ["ann", "bob", "warden"] && names(&bob) == ["ann", "bob", "warden"]
        },
    )
    .await;
    // NPCs and items in view are the near ones only.
    let total_npcs = 400;
    until("NPCs near ann", Duration::from_secs(5), || {
        ann.count("npc").unwrap() > 0 || ann.count("avatar").unwrap() == 3
    })
    .await;
    let here = v(me(&ann, "ann").position);
    let npcs: Vec<NpcView> = ann.rows("npc").unwrap();
    assert!(npcs.len() < total_npcs);
    for npc in &npcs {
        assert!(
            v(npc.position).distance(here) <= NPC_SIGHT + 15.0,
            "{npc:?} seen from {here}"
        );
    }

    // Non-admins cannot change the rules; the admin can, within range.
    let refused = reducer_error(bob.call("set_config", json!(["run_speed", 50.0])).await);
    assert!(refused.contains("admins only"), "{refused}");
    let refused = reducer_error(admin.call("set_config", json!(["run_speed", 1e9])).await);
    assert!(refused.contains("run_speed must be in"), "{refused}");
    let refused = reducer_error(admin.call("set_config", json!(["gravity", 1.0])).await);
    assert!(refused.contains("no setting"), "{refused}");
    admin
        .call("set_config", json!(["run_speed", 50.0]))
        .await
        .unwrap();

    // Bob runs 250 m east (at the new speed limit, not at once) and out of ann's sight.
    let start_at = Instant::now();
    let bob_start = v(me(&bob, "bob").position);
    bob.call("move_to", json!([[250.0, 0.0], true]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = v(me(&bob, "bob").position).distance(bob_start);
    let elapsed = start_at.elapsed().as_secs_f32();
    assert!(
        moved <= 50.0 * (elapsed + 0.15),
        "{moved} m in {elapsed} s is over the speed limit"
    );
    until("bob to leave ann's sight", Duration::from_secs(15), || {
        !avatars(&ann).iter().any(|a| a.name == "bob")
    })
    .await;
    until("bob to arrive", Duration::from_secs(15), || {
        v(me(&bob, "bob").position).distance(Vec2::new(250.0, 0.0)) < 0.5
    })
    .await;
    assert!(
        avatars(&bob).iter().all(|a| a.name == "bob"),
        "bob still sees town"
    );
    // Each sees only the NPCs and items around itself now: none in common, 250 m apart.
    let there = v(me(&bob, "bob").position);
    let bob_npcs: Vec<NpcView> = bob.rows("npc").unwrap();
    let ann_npcs: Vec<NpcView> = ann.rows("npc").unwrap();
    for (npcs, focus) in [(&bob_npcs, there), (&ann_npcs, here)] {
        for npc in npcs {
            assert!(
                v(npc.position).distance(focus) <= NPC_SIGHT + 15.0,
                "{npc:?}"
            );
        }
    }
    assert!(
        !bob_npcs
            .iter()
            .any(|b| ann_npcs.iter().any(|a| a.id == b.id))
    );
    for (client, focus) in [(&bob, there), (&ann, here)] {
        for item in client.rows::<ItemView>("item").unwrap() {
            assert!(
                v(item.position).distance(focus) <= NPC_SIGHT + 15.0,
                "{item:?}"
            );
        }
    }

    // Local chat reaches players in range only; global chat reaches everyone.
    ann.call("say", json!(["hello town", false])).await.unwrap();
    ann.call("say", json!(["hello world", true])).await.unwrap();
    until(
        "bob to hear the global line",
        Duration::from_secs(5),
        || {
            bob_heard
                .lock()
                .unwrap()
                .iter()
                .any(|(_, t)| t == "hello world")
        },
    )
    .await;
    until("ann to hear herself", Duration::from_secs(5), || {
        ann_heard
            .lock()
            .unwrap()
            .iter()
            .any(|(_, t)| t == "hello town")
    })
    .await;
    // Both lines were published in the same tick, so bob has had every chance to hear it.
    assert!(
        !bob_heard
            .lock()
            .unwrap()
            .iter()
            .any(|(_, t)| t == "hello town"),
        "local chat carried 250 m"
    );
    // Chat is checked and rate limited.
    let refused = reducer_error(ann.call("say", json!(["", false])).await);
    assert!(refused.contains("1-200"), "{refused}");
    let mut limited = false;
    for i in 0..8 {
        if let Err(e) = ann.call("say", json!([format!("spam {i}"), false])).await {
            assert!(e.to_string().contains("too fast"), "{e}");
            limited = true;
        }
    }
    assert!(limited, "eight lines at once were not rate limited");

    for client in [&admin, &ann, &bob] {
        client.disconnect();
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fight_drops_loot_its_finder_keeps_and_a_restart_keeps_the_world() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), true).await;
    let admin_token = admin_token(dir.path());
    let hunter = join(&server, "hunter", Some(admin_token.clone())).await;
    let watcher = join(&server, "watcher", None).await;
    // Quick fights for a test: fast legs, no wolf bites, short cooldowns and respawns.
    for (key, value) in [
        ("run_speed", 50.0),
        ("wolf_damage", 0.0),
        ("attack_cooldown_ms", 100.0),
        ("npc_respawn_seconds", 2.0),
    ] {
        hunter
            .call("set_config", json!([key, value]))
            .await
            .unwrap();
    }

    // Both run to the spawn point nearest town.
    let npc_total = 400;
    let target_area = {
        // The spawn points are public: pick the nearest one.
        hunter.subscribe("SELECT * FROM spawn_point").await.unwrap();
        until("spawn points", Duration::from_secs(5), || {
            hunter.count("spawn_point").unwrap() > 0
        })
        .await;
        #[derive(Deserialize)]
        struct Point {
            position: [f32; 2],
        }
        let points: Vec<Point> = hunter.rows("spawn_point").unwrap();
        points
            .into_iter()
            .map(|p| v(p.position))
            .min_by(|a, b| a.length().total_cmp(&b.length()))
            .unwrap()
    };
    for client in [&hunter, &watcher] {
        client
            .call("move_to", json!([[target_area.x, target_area.y], true]))
            .await
            .unwrap();
    }
    until(
        "the hunter to reach the spawn point",
        Duration::from_secs(20),
        || v(me(&hunter, "hunter").position).distance(target_area) < 1.0,
    )
    .await;

    // Chase the nearest NPC and hit it until it dies.
    let mut killed = None;
    let end = Instant::now() + Duration::from_secs(40);
    while killed.is_none() {
        assert!(Instant::now() < end, "no NPC died");
        let at = v(me(&hunter, "hunter").position);
        let npcs: Vec<NpcView> = hunter.rows("npc").unwrap();
        let Some(npc) = npcs.iter().min_by(|a, b| {
            v(a.position)
                .distance(at)
                .total_cmp(&v(b.position).distance(at))
        }) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if v(npc.position).distance(at) > 2.5 {
            let p = v(npc.position);
            hunter
                .call("move_to", json!([[p.x, p.y], true]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if hunter.call("attack", json!([npc.id])).await.is_ok()
            && !hunter
                .rows::<NpcView>("npc")
                .unwrap()
                .iter()
                .any(|n| n.id == npc.id)
        {
            killed = Some(npc.clone());
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let killed = killed.unwrap();
    let player: Vec<PlayerView> = hunter.rows("player").unwrap();
    assert_eq!(player.len(), 1, "a player sees its own player row only");
    assert_eq!(player[0].kills, 1);

    // The loot lies where the NPC fell; the watcher, nearby, sees it too.
    let loot_kind = if killed.kind == "Wolf" {
        "Pelt"
    } else {
        "Antler"
    };
    let mut loot = None;
    until("the loot to appear", Duration::from_secs(5), || {
        loot = hunter
            .rows::<ItemView>("item")
            .unwrap()
            .into_iter()
            .find(|i| i.kind == loot_kind && v(i.position).distance(v(killed.position)) < 3.0);
        loot.is_some()
    })
    .await;
    let loot = loot.unwrap();
    until(
        "the watcher to see the loot",
        Duration::from_secs(10),
        || {
            watcher
                .rows::<ItemView>("item")
                .unwrap()
                .iter()
                .any(|i| i.id == loot.id)
        },
    )
    .await;
    let p = v(loot.position);
    hunter
        .call("move_to", json!([[p.x, p.y], true]))
        .await
        .unwrap();
    until(
        "the hunter to reach the loot",
        Duration::from_secs(5),
        || v(me(&hunter, "hunter").position).distance(p) < 0.5,
    )
    .await;
    hunter.call("pick_up", json!([loot.id])).await.unwrap();
    until(
        "the loot in the hunter's inventory",
        Duration::from_secs(5),
        || {
            hunter
                .rows::<InventoryView>("inventory")
                .unwrap()
                .iter()
                .any(|i| i.id == loot.id)
        },
    )
    .await;
    until(
        "the loot to leave the ground for the watcher",
        Duration::from_secs(5),
        || {
            !watcher
                .rows::<ItemView>("item")
                .unwrap()
                .iter()
                .any(|i| i.id == loot.id)
        },
    )
    .await;
    assert_eq!(
        watcher.count("inventory").unwrap(),
        0,
        "the watcher sees someone else's inventory"
    );
    let refused = reducer_error(watcher.call("pick_up", json!([loot.id])).await);
    assert!(refused.contains("no item"), "{refused}");
    let refused = reducer_error(hunter.call("use_item", json!([loot.id])).await);
    assert!(refused.contains("cannot be used"), "{refused}");

    // The dead NPC respawns on schedule (2 s): the whole world is back to its population.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let read = hunter
            .control_plane()
            .sql(&admin_token, "SELECT * FROM npc", None)
            .await
            .unwrap();
        if read.rows.len() == npc_total {
            break;
        }
        assert!(
            Instant::now() < end,
            "{} NPCs, not {npc_total}",
            read.rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A restart keeps the player, the inventory and the world.
    let hunter_before = me(&hunter, "hunter");
    hunter.disconnect();
    watcher.disconnect();
    server.shutdown().await.unwrap();
    let server = start(dir.path(), true).await;
    assert!(
        !server.fresh,
        "the world was recreated instead of recovered"
    );
    let options = ClientOptions {
        token: Some(admin_token.clone()),
        ..ClientOptions::default()
    };
    let hunter = Client::connect(&server.http_url, options).await.unwrap();
    hunter.call("enter_world", json!(["hunter"])).await.unwrap();
    hunter.subscribe("SELECT * FROM inventory").await.unwrap();
    hunter.subscribe("SELECT * FROM player").await.unwrap();
    hunter
        .subscribe(&format!(
            "SELECT * FROM avatar WHERE within(position, :focus, {SIGHT})"
        ))
        .await
        .unwrap();
    until(
        "the hunter's rows after the restart",
        Duration::from_secs(5),
        || hunter.count("inventory").unwrap() == 1 && hunter.count("player").unwrap() == 1,
    )
    .await;
    let player: Vec<PlayerView> = hunter.rows("player").unwrap();
    assert_eq!(
        (player[0].kills, player[0].avatar_id),
        (1, hunter_before.id)
    );
    let after = me(&hunter, "hunter");
    assert!(v(after.position).distance(v(hunter_before.position)) < 0.5);
    assert!(after.online);
    // The watcher, who did not come back, is shown offline (whether or not its disconnect
    // was processed before the shutdown: the restart ends connections left open).
    until("the watcher's avatar", Duration::from_secs(5), || {
        avatars(&hunter).iter().any(|a| a.name == "watcher")
    })
    .await;
    assert!(
        avatars(&hunter)
            .iter()
            .all(|a| a.name == "hunter" || !a.online)
    );
    let read = hunter
        .control_plane()
        .sql(&admin_token, "SELECT * FROM npc", None)
        .await
        .unwrap();
    assert_eq!(read.rows.len(), npc_total);
    hunter.disconnect();
    server.shutdown().await.unwrap();
}
