//! The sample module runs: NPCs spawn to target, wander, players connect and move.

use orrery_engine::glam::Vec2;
use orrery_engine::{Caller, ConnectionId, Engine, EngineConfig, Identity, Timestamp};
use sample_mmo::{Npc, Player, WORLD_HALF_EXTENT};

fn ts(n: i64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000 + n * 50_000)
}

#[test]
fn world_populates_and_players_move() {
    let mut engine = Engine::new(sample_mmo::module(), EngineConfig::default()).unwrap();
    engine.init(ts(0)).unwrap();
    for n in 1..=60 {
        engine.step(ts(n));
    }
    // The spawner fires every 500 ms, 500 at a time, up to 2,000.
    assert_eq!(engine.count::<Npc>(), 2_000);
    assert!(
        engine
            .rows::<Npc>()
            .iter()
            .all(|n| n.position.abs().max_element() <= WORLD_HALF_EXTENT)
    );
    engine.check_integrity().unwrap();

    let who = Caller::client(Identity::from_u64(9), ConnectionId(1));
    engine.client_connected(who).unwrap();
    engine
        .call_reducer("move_to", who, (Vec2::new(10.0, -20.0),))
        .unwrap();
    let err = engine
        .call_reducer("move_to", who, (Vec2::new(f32::NAN, 0.0),))
        .unwrap_err();
    assert!(err.client_message().contains("finite"), "{err}");
    let player = engine.rows::<Player>().pop().unwrap();
    assert_eq!(
        (player.position, player.online),
        (Vec2::new(10.0, -20.0), true)
    );
    engine.client_disconnected(who).unwrap();
    assert!(!engine.rows::<Player>()[0].online);
    // Reconnecting reuses the character.
    engine.client_connected(who).unwrap();
    assert_eq!(engine.count::<Player>(), 1);
}
