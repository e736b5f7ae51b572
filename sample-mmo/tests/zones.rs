//! The module's half of zones on a virtual clock: four zone engines of one world, and a
//! relay played by the test that delivers every handoff like the server's relay does, but
//! also delivers some twice and loses some acknowledgements (as a crash between the two
//! steps would). Characters walk across borders for a minute of world time; at the end every
//! character and every item exists exactly once.

use std::collections::BTreeMap;

use orrery_engine::glam::Vec2;
use orrery_engine::prelude::OrreryType as _;
use orrery_engine::{Caller, ConnectionId, Engine, EngineConfig, Identity, Timestamp};
use sample_mmo::zone::{HandoffCharacter, ZoneRegion, ZoneRules, zoned_id};
use sample_mmo::{
    Avatar, HandoffIn, HandoffOut, InventoryItem, ItemKind, Npc, Player, Town, WorldSettings,
    ZoneRedirect,
};

#[path = "support/dice.rs"]
mod dice;
use dice::Dice;

const TICK_MICROS: i64 = 50_000;
const RELAY: Identity = Identity([0xEE; 32]);
/// Half the world's edge: zones split it at x = 0 and y = 0.
const HALF: f32 = 100.0;

fn ts(n: i64) -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000 + n * TICK_MICROS)
}

fn regions() -> Vec<ZoneRegion> {
    let quadrant = |zone: u16, x: f32, y: f32| ZoneRegion {
        zone,
        min: Vec2::new(x.min(0.0), y.min(0.0)),
        max: Vec2::new(x.max(0.0), y.max(0.0)),
    };
    vec![
        quadrant(0, -HALF, -HALF),
        quadrant(1, HALF, -HALF),
        quadrant(2, -HALF, HALF),
        quadrant(3, HALF, HALF),
    ]
}

fn settings(zone: u16) -> WorldSettings {
    WorldSettings {
        npc_count: 40,
        world_size: 2.0 * HALF,
        town_spacing: 0.0,
        zone: Some(ZoneRules {
            zone,
            regions: regions(),
            relay: RELAY,
        }),
        ..WorldSettings::default()
    }
}

struct Zones {
    engines: Vec<Engine>,
    tick: i64,
    dice: Dice,
    /// Deliveries made, counting repeats.
    deliveries: u64,
    /// Deliveries repeated on purpose.
    repeats: u64,
    /// Acknowledgements dropped on purpose.
    lost_acks: u64,
}

impl Zones {
    fn new() -> Zones {
        let engines = (0..4)
            .map(|zone| {
                let mut engine = Engine::new(
                    sample_mmo::module_with(settings(zone)),
                    EngineConfig::default(),
                )
                .unwrap();
                engine.init(ts(0)).unwrap();
                engine
            })
            .collect();
        Zones {
            engines,
            tick: 0,
            dice: Dice(0x9E37_79B9_7F4A_7C15),
            deliveries: 0,
            repeats: 0,
            lost_acks: 0,
        }
    }

    fn step(&mut self) {
        self.step_without_relay();
        self.relay(true);
    }

    fn step_without_relay(&mut self) {
        self.tick += 1;
        for engine in &mut self.engines {
            engine.step(ts(self.tick));
        }
    }

    /// Delivers every zone's outbox; with `faults`, repeats some deliveries and drops some
    /// acknowledgements (those handoffs are delivered again next time).
    fn relay(&mut self, faults: bool) {
        for source in 0..self.engines.len() {
            let mut outbox = self.engines[source].rows::<HandoffOut>();
            outbox.sort_by_key(|row| row.id);
            for row in outbox {
                let target = row.target_zone as usize;
                let times = if faults && self.dice.below(5) == 0 {
                    2
                } else {
                    1
                };
                self.repeats += times - 1;
                for _ in 0..times {
                    self.deliveries += 1;
                    self.engines[target]
                        .call_reducer(
                            "accept_handoff",
                            Caller::from(RELAY),
                            (source as u32, row.id, row.started_at, row.character.clone()),
                        )
                        .unwrap_or_else(|e| {
                            panic!("zone {target} refused handoff {}: {e}", row.id)
                        });
                }
                if faults && self.dice.below(4) == 0 {
                    self.lost_acks += 1;
                    continue;
                }
                self.engines[source]
                    .call_reducer("handoff_delivered", Caller::from(RELAY), (row.id,))
                    .unwrap();
            }
        }
    }

    /// Character `n` (no items) arrives in zone 0 from zone 1 (as the relay would bring it).
    fn arrive_in_zone_0(&mut self, n: u64) -> Identity {
        self.engines[0]
            .call_reducer(
                "accept_handoff",
                Caller::from(RELAY),
                (1u32, 5u64, ts(0), character(n, 0).to_bytes()),
            )
            .unwrap();
        Identity::from_u64(n)
    }

    /// Walks `who` from zone `from` to `target` in zone `to`, relaying every tick, until zone
    /// `to` holds it.
    fn cross(&mut self, who: Identity, from: usize, to: usize, target: Vec2) {
        self.engines[from]
            .call_reducer("move_to", Caller::from(who), (target, true))
            .unwrap();
        for _ in 0..400 {
            self.step_without_relay();
            self.relay(false);
            if self.engines[to].find::<Player>(&who).is_some() {
                assert!(self.engines[from].find::<Player>(&who).is_none());
                return;
            }
        }
        panic!("the character never reached zone {to}");
    }

    /// Sends `who` walking to `target` in whichever zone holds it.
    fn walk(&mut self, who: Identity, target: Vec2) {
        for engine in &mut self.engines {
            if engine.find::<Player>(&who).is_some() {
                engine
                    .call_reducer("move_to", Caller::from(who), (target, true))
                    .unwrap();
            }
        }
    }

    /// Every character (by identity) with the zones it is live in (held and not in transit)
    /// and what it carries there.
    fn census(&self) -> BTreeMap<Identity, (Vec<usize>, Vec<u64>)> {
        let mut census: BTreeMap<Identity, (Vec<usize>, Vec<u64>)> = BTreeMap::new();
        for (zone, engine) in self.engines.iter().enumerate() {
            let players = engine.rows::<Player>();
            let avatars = engine.rows::<Avatar>();
            assert_eq!(players.len(), avatars.len(), "zone {zone}");
            let leaving: Vec<Identity> = engine
                .rows::<HandoffOut>()
                .iter()
                .map(|row| row.owner)
                .collect();
            for player in players {
                let avatar = engine.find::<Avatar>(&player.avatar_id).unwrap();
                assert_eq!(avatar.owner, player.identity);
                if !leaving.contains(&player.identity) {
                    census.entry(player.identity).or_default().0.push(zone);
                }
            }
            for item in engine.rows::<InventoryItem>() {
                if !leaving.contains(&item.owner) {
                    census.entry(item.owner).or_default().1.push(item.id);
                }
            }
        }
        for (_, items) in census.values_mut() {
            items.sort_unstable();
        }
        census
    }
}

fn character(n: u64, items: u64) -> HandoffCharacter {
    let identity = Identity::from_u64(n);
    HandoffCharacter {
        avatar: Avatar {
            id: zoned_id(9, n),
            owner: identity,
            name: format!("walker{n}"),
            position: Vec2::new(-50.0, -50.0),
            velocity: Vec2::ZERO,
            destination: Vec2::new(-50.0, -50.0),
            seeking: false,
            hp: 100,
            max_hp: 100,
            level: 1,
            online: false,
        },
        player: Player {
            identity,
            avatar_id: zoned_id(9, n),
            connection: 0,
            xp: 0,
            kills: 0,
            attack_ready_at: Timestamp::UNIX_EPOCH,
            chat_allowance: 5.0,
            chat_refilled_at: Timestamp::UNIX_EPOCH,
        },
        inventory: (0..items)
            .map(|i| InventoryItem {
                id: zoned_id(9, n * 10 + i),
                owner: identity,
                kind: ItemKind::Pelt,
            })
            .collect(),
    }
}

#[test]
fn characters_walking_across_borders_exist_once_with_all_they_carry() {
    let mut zones = Zones::new();
    // Each zone founded its own region only.
    for (zone, engine) in zones.engines.iter().enumerate() {
        let region = &regions()[zone];
        let towns = engine.rows::<Town>();
        assert_eq!(towns.len(), 1);
        assert!(region.contains(towns[0].position));
        assert!(engine.rows::<Npc>().iter().all(|npc| {
            npc.position.cmpge(region.min).all() && npc.position.cmple(region.max).all()
        }));
    }
    // Forty characters arrive in zone 0 from a zone outside the map, carrying 0-3 items.
    let walkers: Vec<u64> = (1..=40).collect();
    for &n in &walkers {
        let arrival = character(n, n % 4);
        zones.engines[0]
            .call_reducer(
                "accept_handoff",
                Caller::from(RELAY),
                (9u32, n, ts(0), arrival.to_bytes()),
            )
            .unwrap();
    }
    let before = zones.census();
    assert_eq!(before.len(), walkers.len());

    // A minute of world time; every ten seconds everyone heads somewhere new.
    for second in 0..60 {
        if second % 10 == 0 {
            for &n in &walkers {
                let target = Vec2::new(zones.dice.coordinate(95.0), zones.dice.coordinate(95.0));
                zones.walk(Identity::from_u64(n), target);
            }
        }
        for _ in 0..20 {
            zones.step();
        }
        if second % 15 == 14 {
            let census = zones.census();
            for (who, (held_by, items)) in &census {
                assert_eq!(held_by.len(), 1, "{who} is held by zones {held_by:?}");
                assert_eq!(items, &before[who].1, "{who}'s inventory changed");
            }
        }
    }
    // The last handoffs arrive; the outboxes empty.
    zones.step();
    zones.relay(false);
    for engine in &zones.engines {
        assert!(engine.rows::<HandoffOut>().is_empty());
    }
    let after = zones.census();
    assert_eq!(after.len(), before.len());
    for (who, (held_by, items)) in &after {
        assert_eq!(held_by.len(), 1, "{who} is held by zones {held_by:?}");
        assert_eq!(items, &before[who].1, "{who}'s inventory changed");
        // Each is held by the zone its avatar stands in.
        let zone = held_by[0];
        let engine = &zones.engines[zone];
        let player = engine.find::<Player>(who).unwrap();
        let avatar = engine.find::<Avatar>(&player.avatar_id).unwrap();
        assert_eq!(
            usize::from(settings(0).zone.unwrap().owner_of(avatar.position)),
            zone
        );
    }
    let arrivals: usize = zones
        .engines
        .iter()
        .map(|engine| engine.rows::<HandoffIn>().len())
        .sum();
    // Forty first arrivals, then the crossings (about two per walk here).
    assert!(arrivals > 200, "only {arrivals} handoffs");
    assert!(zones.repeats > 20 && zones.lost_acks > 20);
    for engine in &mut zones.engines {
        engine.check_integrity().unwrap();
    }
}

#[test]
fn only_the_relay_hands_over_and_a_bad_character_is_refused_whole() {
    let mut zones = Zones::new();
    let arrival = character(1, 2);
    let call = |engine: &mut Engine, who: Identity, bytes: Vec<u8>| {
        engine
            .call_reducer(
                "accept_handoff",
                Caller::from(who),
                (1u32, 5u64, ts(0), bytes),
            )
            .map_err(|e| e.client_message())
    };
    let zone0 = &mut zones.engines[0];
    let err = call(zone0, Identity::from_u64(1), arrival.to_bytes()).unwrap_err();
    assert!(err.contains("only the zone relay"), "{err}");
    let err = zone0
        .call_reducer(
            "handoff_delivered",
            Caller::from(Identity::from_u64(1)),
            (1u64,),
        )
        .unwrap_err()
        .client_message();
    assert!(err.contains("only the zone relay"), "{err}");
    let mut truncated = arrival.to_bytes();
    truncated.pop();
    let err = call(zone0, RELAY, truncated).unwrap_err();
    assert!(err.contains("bad character"), "{err}");
    let mut stolen = arrival.clone();
    stolen.inventory[1].owner = Identity::from_u64(2);
    let err = call(zone0, RELAY, stolen.to_bytes()).unwrap_err();
    assert!(err.contains("different identities"), "{err}");
    // A zone does not take a handoff from itself.
    let err = zone0
        .call_reducer(
            "accept_handoff",
            Caller::from(RELAY),
            (0u32, 5u64, ts(0), arrival.to_bytes()),
        )
        .unwrap_err()
        .client_message();
    assert!(err.contains("cannot hand over"), "{err}");
    // Nothing of the refused calls stayed.
    assert!(zone0.rows::<Player>().is_empty() && zone0.rows::<InventoryItem>().is_empty());
    // The good one applies once, however often it comes.
    for _ in 0..3 {
        call(zone0, RELAY, arrival.to_bytes()).unwrap();
    }
    assert_eq!(zone0.rows::<Player>().len(), 1);
    assert_eq!(zone0.rows::<InventoryItem>().len(), 2);
    assert_eq!(zone0.rows::<HandoffIn>().len(), 1);
    // A character in transit is frozen and its owner's calls refused until the handoff ends;
    // a refused handoff lets it go on where it is, just inside the border.
    let who = Caller::from(Identity::from_u64(1));
    zone0
        .call_reducer("move_to", who, (Vec2::new(10.0, -50.0), true))
        .unwrap();
    for _ in 0..200 {
        zones.step_without_relay();
        if !zones.engines[0].rows::<HandoffOut>().is_empty() {
            break;
        }
    }
    let zone0 = &mut zones.engines[0];
    let leaving = zone0.rows::<HandoffOut>();
    assert_eq!(leaving.len(), 1);
    assert_eq!(leaving[0].target_zone, 1);
    let frozen = zone0.rows::<Avatar>()[0].clone();
    zones.step_without_relay();
    let zone0 = &mut zones.engines[0];
    assert_eq!(
        zone0.rows::<Avatar>()[0],
        frozen,
        "a character in transit moved"
    );
    let err = zone0
        .call_reducer("set_input", who, (Vec2::X, false))
        .unwrap_err()
        .client_message();
    assert!(err.contains("moving to zone 1"), "{err}");
    zone0
        .call_reducer(
            "handoff_refused",
            Caller::from(RELAY),
            (leaving[0].id, "test".to_owned()),
        )
        .unwrap();
    let resumed = zone0.rows::<Avatar>()[0].clone();
    assert!(resumed.position.x < 0.0 && resumed.velocity == Vec2::ZERO);
    assert!(zone0.rows::<HandoffOut>().is_empty());
    zone0
        .call_reducer("set_input", who, (Vec2::X, false))
        .unwrap();

    // Only admins give items.
    let err = zones.engines[0]
        .call_reducer(
            "give_item",
            Caller::from(Identity::from_u64(1)),
            (Identity::from_u64(1), ItemKind::Potion),
        )
        .unwrap_err()
        .client_message();
    assert!(err.contains("admins only"), "{err}");

    // An unzoned world has no handoffs at all.
    let mut plain = Engine::new(sample_mmo::module(), EngineConfig::default()).unwrap();
    let err = plain
        .call_reducer("handoff_delivered", Caller::from(RELAY), (1u64,))
        .unwrap_err()
        .client_message();
    assert!(err.contains("not zoned"), "{err}");
}

/// A connection that comes up in a zone its character has left is sent on (`zone_redirect`);
/// one that comes up while the relay is sending an earlier request on is not lost when the
/// relay reports that request done (`redirect_sent` names the request it sent).
#[test]
fn a_connection_that_comes_up_while_the_relay_sends_others_on_is_sent_on_too() {
    let mut zones = Zones::new();
    let me = zones.arrive_in_zone_0(1);
    zones.cross(me, 0, 1, Vec2::new(10.0, -50.0));
    let zone0 = &mut zones.engines[0];
    zone0
        .client_connected(Caller::client(me, ConnectionId(7)))
        .unwrap();
    let first = zone0.rows::<ZoneRedirect>();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].identity, first[0].zone), (me, 1));
    zones.step_without_relay();
    // The relay moves the identity's connections (only connection 7 so far); connection 8
    // comes up before the relay reports the request done.
    let zone0 = &mut zones.engines[0];
    zone0
        .client_connected(Caller::client(me, ConnectionId(8)))
        .unwrap();
    zone0
        .call_reducer(
            "redirect_sent",
            Caller::from(RELAY),
            (me, first[0].requested_at),
        )
        .unwrap();
    let second = zone0.rows::<ZoneRedirect>();
    assert_eq!(second.len(), 1, "the later request was lost");
    assert!(second[0].requested_at > first[0].requested_at);
    // Only the relay reports, and reporting the later request ends it.
    let err = zone0
        .call_reducer(
            "redirect_sent",
            Caller::from(me),
            (me, second[0].requested_at),
        )
        .unwrap_err()
        .client_message();
    assert!(err.contains("only the zone relay"), "{err}");
    zone0
        .call_reducer(
            "redirect_sent",
            Caller::from(RELAY),
            (me, second[0].requested_at),
        )
        .unwrap();
    assert!(zone0.rows::<ZoneRedirect>().is_empty());
}

/// A connection playing a character that leaves stays connected until the relay moves it;
/// if the character comes back first, that connection plays it again (online, bound).
#[test]
fn a_connection_left_behind_plays_its_character_again_when_it_comes_back() {
    let mut zones = Zones::new();
    let me = zones.arrive_in_zone_0(1);
    zones.engines[0]
        .client_connected(Caller::client(me, ConnectionId(7)))
        .unwrap();
    assert_eq!(zones.engines[0].find::<Player>(&me).unwrap().connection, 7);
    zones.cross(me, 0, 1, Vec2::new(10.0, -50.0));
    // Zone 0 asks the relay to send connection 7 on; before it does, the character is back.
    assert_eq!(zones.engines[0].rows::<ZoneRedirect>().len(), 1);
    zones.cross(me, 1, 0, Vec2::new(-10.0, -50.0));
    let zone0 = &zones.engines[0];
    let player = zone0.find::<Player>(&me).unwrap();
    assert_eq!(player.connection, 7, "the connection here does not play it");
    assert!(zone0.find::<Avatar>(&player.avatar_id).unwrap().online);
    assert!(zone0.rows::<ZoneRedirect>().is_empty());
}
