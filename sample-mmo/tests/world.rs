//! The sample module in-process on a virtual clock (no server, no sockets): the world is
//! generated as configured, movement keeps to the speed limit however a client asks, wolves
//! hunt, fights end in loot and a scheduled respawn, and knocked-out players wake up in town.

use orrery_engine::glam::Vec2;
use orrery_engine::{Caller, ConnectionId, Engine, EngineConfig, Identity, Timestamp};
use sample_mmo::{
    Avatar, Config, Item, Npc, NpcKind, NpcRespawn, Player, Town, WorldSettings, town_sites,
};

const TICK_MICROS: i64 = 50_000;

fn ts(n: i64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000 + n * TICK_MICROS)
}

struct World {
    engine: Engine,
    tick: i64,
}

impl World {
    fn new(settings: WorldSettings) -> World {
        let mut engine =
            Engine::new(sample_mmo::module_with(settings), EngineConfig::default()).unwrap();
        engine.init(ts(0)).unwrap();
        World { engine, tick: 0 }
    }

    fn step(&mut self, ticks: i64) {
        for _ in 0..ticks {
            self.tick += 1;
            self.engine.step(ts(self.tick));
        }
    }

    fn avatar(&self, name: &str) -> Avatar {
        self.engine
            .rows::<Avatar>()
            .into_iter()
            .find(|a| a.name == name)
            .unwrap()
    }

    fn join(&mut self, n: u64, name: &str) -> Caller {
        let who = Caller::client(Identity::from_u64(n), ConnectionId(n));
        self.engine.client_connected(who).unwrap();
        self.engine
            .call_reducer("enter_world", who, (name.to_owned(),))
            .unwrap();
        who
    }
}

fn small() -> WorldSettings {
    WorldSettings {
        npc_count: 300,
        world_size: 600.0,
        ..WorldSettings::default()
    }
}

#[test]
fn the_default_world_has_ten_thousand_npcs_on_four_kilometres() {
    let mut world = World::new(WorldSettings::default());
    let npcs = world.engine.rows::<Npc>();
    assert_eq!(npcs.len(), 10_000);
    assert!(
        npcs.iter()
            .all(|n| n.position.abs().max_element() <= 2_000.0 + 30.0)
    );
    let wolves = npcs.iter().filter(|n| n.kind == NpcKind::Wolf).count();
    assert!((1_000..4_000).contains(&wolves), "{wolves} wolves");
    world.engine.check_integrity().unwrap();
}

#[test]
fn movement_keeps_to_the_speed_limit_however_it_is_asked() {
    let mut world = World::new(small());
    let who = world.join(1, "runner");
    let start = world.avatar("runner").position;
    let run_speed = Config::default().run_speed;

    // A far target is walked to, not teleported to.
    world
        .engine
        .call_reducer("move_to", who, (Vec2::new(250.0, 0.0), true))
        .unwrap();
    world.step(20);
    let after = world.avatar("runner").position;
    let moved = after.distance(start);
    assert!(
        moved > 0.9 * run_speed && moved <= run_speed + 0.05,
        "{moved} m in 1 s"
    );

    // An oversized input direction is normalized: still at most run speed.
    world
        .engine
        .call_reducer("set_input", who, (Vec2::new(1e6, 0.0), true))
        .unwrap();
    world.step(20);
    let moved = world.avatar("runner").position.distance(after);
    assert!(moved <= run_speed + 0.05, "{moved} m in 1 s");

    // Bad input is refused with a reason and changes nothing.
    let before = world.avatar("runner");
    for args in [Vec2::new(f32::NAN, 0.0), Vec2::new(0.0, f32::INFINITY)] {
        let err = world
            .engine
            .call_reducer("set_input", who, (args, false))
            .unwrap_err();
        assert!(err.client_message().contains("finite"), "{err}");
    }
    assert_eq!(world.avatar("runner"), before);

    // A short walk stops at its destination.
    let here = world.avatar("runner").position;
    world
        .engine
        .call_reducer("move_to", who, (here + Vec2::new(0.0, 3.0), false))
        .unwrap();
    world.step(40);
    let stopped = world.avatar("runner");
    assert!(stopped.position.distance(here + Vec2::new(0.0, 3.0)) < 0.02);
    assert_eq!((stopped.velocity, stopped.seeking), (Vec2::ZERO, false));
}

#[test]
fn names_are_checked_and_unique() {
    let mut world = World::new(small());
    world.join(1, "alice");
    let bob = Caller::client(Identity::from_u64(2), ConnectionId(2));
    world.engine.client_connected(bob).unwrap();
    for (name, expected) in [
        ("alice", "taken"),
        ("al", "3-16 characters"),
        ("a name with spaces", "3-16"),
        ("bob\u{0}", "not '\\0'"),
    ] {
        let err = world
            .engine
            .call_reducer("enter_world", bob, (name.to_owned(),))
            .unwrap_err();
        assert!(err.client_message().contains(expected), "{name:?}: {err}");
    }
    let err = world
        .engine
        .call_reducer("set_input", bob, (Vec2::X, false))
        .unwrap_err();
    assert!(err.client_message().contains("enter_world"), "{err}");
}

#[test]
fn a_wolf_hunts_and_a_fight_ends_in_loot_and_a_scheduled_respawn() {
    let mut world = World::new(small());
    let who = world.join(1, "hunter");
    // Walk next to the nearest wolf's den; the wolf comes the rest of the way.
    let wolf = world
        .engine
        .rows::<Npc>()
        .into_iter()
        .filter(|n| n.kind == NpcKind::Wolf)
        .min_by(|a, b| a.position.length().total_cmp(&b.position.length()))
        .unwrap();
    let npcs_before = world.engine.count::<Npc>();
    world
        .engine
        .call_reducer("move_to", who, (wolf.position, true))
        .unwrap();
    let mut dead = false;
    let mut bitten = false;
    for _ in 0..2_000 {
        world.step(1);
        let me = world.avatar("hunter");
        bitten |= me.hp < me.max_hp;
        let Some(target) = world
            .engine
            .rows::<Npc>()
            .into_iter()
            .filter(|n| n.kind == NpcKind::Wolf && n.position.distance(me.position) <= 3.0)
            .min_by_key(|n| n.id)
        else {
            continue;
        };
        let _ = world.engine.call_reducer("attack", who, (target.id,));
        if world.engine.find::<Npc>(&target.id).is_none() {
            dead = true;
            break;
        }
    }
    assert!(dead, "the wolf never died");
    assert!(bitten, "the wolf never bit");
    let player = world.engine.rows::<Player>().pop().unwrap();
    assert_eq!((player.kills, player.xp), (1, 25));
    assert!(
        world
            .engine
            .rows::<Item>()
            .iter()
            .any(|i| i.kind == sample_mmo::ItemKind::Pelt)
    );
    assert_eq!(world.engine.count::<NpcRespawn>(), 1);
    assert_eq!(world.engine.count::<Npc>(), npcs_before - 1);
    // Back after the respawn time (30 s), at its spawn point.
    world.step(31 * 20);
    assert_eq!(world.engine.count::<Npc>(), npcs_before);
    assert_eq!(world.engine.count::<NpcRespawn>(), 0);

    // A second attack right away is refused by the cooldown; one from afar by the reach.
    let far = world
        .engine
        .rows::<Npc>()
        .into_iter()
        .max_by(|a, b| a.position.length().total_cmp(&b.position.length()))
        .unwrap();
    let err = world
        .engine
        .call_reducer("attack", who, (far.id,))
        .unwrap_err();
    assert!(err.client_message().contains("away"), "{err}");
}

/// A world of `settings` where a wolf bite knocks a player out and wolves hunt from 200 m.
fn deadly(mut settings: WorldSettings) -> World {
    let admin = Identity::from_u64(77);
    settings.admins = vec![admin];
    let mut world = World::new(settings);
    let root = Caller::client(admin, ConnectionId(77));
    for (key, value) in [("wolf_damage", 1_000.0), ("wolf_aggro_radius", 200.0)] {
        world
            .engine
            .call_reducer("set_config", root, (key.to_owned(), value))
            .unwrap();
    }
    world
}

#[test]
fn knocked_out_players_wake_up_in_town() {
    // Wolves deadly and everyone aggressive; then the player stands in a den.
    let mut world = deadly(small());
    let who = world.join(1, "victim");
    let den = world
        .engine
        .rows::<Npc>()
        .into_iter()
        .find(|n| n.kind == NpcKind::Wolf)
        .unwrap()
        .position;
    world
        .engine
        .call_reducer("move_to", who, (den, true))
        .unwrap();
    let mut revived = false;
    for _ in 0..4_000 {
        world.step(1);
        let me = world.avatar("victim");
        if me.position.length() <= 10.0 && me.hp == me.max_hp && world.tick > 40 {
            revived = me.velocity == Vec2::ZERO;
            if revived {
                break;
            }
        }
    }
    assert!(revived, "never knocked out and revived in town");
}

fn four_kilometres(town_capacity: u32) -> WorldSettings {
    WorldSettings {
        npc_count: 2_000,
        town_capacity,
        ..WorldSettings::default()
    }
}

/// The index in `sites` of the town `position` lies in.
fn town_of(sites: &[Vec2], position: Vec2) -> usize {
    sites
        .iter()
        .position(|t| t.distance(position) <= 10.0)
        .unwrap_or_else(|| panic!("{position} is in no town"))
}

#[test]
fn a_large_world_spreads_new_characters_over_its_towns() {
    assert_eq!(town_sites(600.0, 1_000.0), vec![Vec2::ZERO]);
    assert_eq!(town_sites(4_000.0, 0.0), vec![Vec2::ZERO]);
    let sites = town_sites(4_000.0, 1_000.0);
    assert_eq!(sites.len(), 9);
    assert_eq!(sites[0], Vec2::ZERO, "the origin's town comes first");
    assert_eq!(town_sites(100_000.0, 500.0).len(), 81, "capped");

    let mut world = World::new(four_kilometres(3));
    let towns = world.engine.rows::<Town>();
    assert_eq!(
        towns.iter().map(|t| t.position).collect::<Vec<_>>(),
        sites,
        "a town on every site"
    );
    // No wolf den within reach of any town.
    for npc in world.engine.rows::<Npc>() {
        if npc.kind == NpcKind::Wolf {
            let nearest = sites
                .iter()
                .map(|t| t.distance(npc.position))
                .fold(f32::INFINITY, f32::min);
            assert!(
                nearest > 150.0 - 30.0 - 0.01,
                "wolf {nearest} m from a town"
            );
        }
    }
    let town_of_player =
        |world: &World, n: u64| town_of(&sites, world.avatar(&format!("player{n}")).position);
    // Each town takes three online newcomers, in order; when all are full, the least
    // crowded (the first among equals) takes the next.
    let mut callers = Vec::new();
    for n in 1..=28 {
        callers.push(world.join(n, &format!("player{n}")));
    }
    for n in 1..=27 {
        assert_eq!(town_of_player(&world, n), (n as usize - 1) / 3, "player{n}");
    }
    assert_eq!(town_of_player(&world, 28), 0);
    // Someone in the fifth town logs off: the fifth town has room again.
    world.engine.client_disconnected(callers[13]).unwrap();
    world.join(29, "player29");
    assert_eq!(town_of_player(&world, 29), 4);
    let arrivals: Vec<u64> = world
        .engine
        .rows::<Town>()
        .iter()
        .map(|t| t.arrivals)
        .collect();
    assert_eq!(arrivals, vec![4, 3, 3, 3, 4, 3, 3, 3, 3]);
    world.engine.check_integrity().unwrap();
}

#[test]
fn knocked_out_players_wake_up_in_the_nearest_town() {
    let mut world = deadly(four_kilometres(1));
    // One newcomer fills a town here: the second starts in the second town.
    world.join(1, "first");
    let who = world.join(2, "victim");
    let start = world.avatar("victim").position;
    let sites = town_sites(4_000.0, 1_000.0);
    assert_eq!(town_of(&sites, start), 1);
    let den = world
        .engine
        .rows::<Npc>()
        .into_iter()
        .filter(|n| n.kind == NpcKind::Wolf)
        .min_by(|a, b| {
            a.position
                .distance(start)
                .total_cmp(&b.position.distance(start))
        })
        .unwrap()
        .position;
    world
        .engine
        .call_reducer("move_to", who, (den, true))
        .unwrap();
    let nearest_town = |p: Vec2| {
        *sites
            .iter()
            .min_by(|a, b| a.distance(p).total_cmp(&b.distance(p)))
            .unwrap()
    };
    let mut last = world.avatar("victim");
    for _ in 0..4_000 {
        world.step(1);
        let me = world.avatar("victim");
        if me.hp == me.max_hp && me.velocity == Vec2::ZERO && last.velocity != Vec2::ZERO {
            let expected = nearest_town(last.position);
            assert!(
                me.position.distance(expected) <= 10.0,
                "knocked out at {} and woke up at {}, not in the town at {expected}",
                last.position,
                me.position
            );
            return;
        }
        last = me;
    }
    panic!("never knocked out and revived");
}
