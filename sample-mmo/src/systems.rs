//! What the world does by itself every tick: avatars move by their owners' input at the speed
//! limit, NPCs wander, wolves chase and bite players, deer flee, knocked-out avatars wake up
//! in the nearest town, and every online player's subscription focus follows its avatar.
//!
//! The systems run in that order (`chain`), single pass each, and decide nothing by hash or
//! iteration order of floating-point data: the nearest player is chosen by distance, ties by
//! avatar id.

use orrery_engine::TableStore;
use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;

use crate::WorldSettings;
use crate::reducers::{TOWN, TOWN_RADIUS};
use crate::tables::{Avatar, Config, HandoffOut, Npc, NpcKind, Player, Town};

/// Wolves run at this speed, m/s (a running player is faster).
pub const WOLF_SPEED: f32 = 6.5;
/// Fleeing deer run at this speed, m/s.
pub const DEER_FLEE_SPEED: f32 = 7.0;
/// A wolf bites from this close, m.
pub const WOLF_BITE_RANGE: f32 = 2.0;
/// Time between a wolf's bites, ms.
pub const WOLF_BITE_COOLDOWN_MS: u64 = 1_500;

/// The owners of characters in transit to another zone (frozen here: no system moves, bites
/// or revives them). Usually none, so the check costs nothing.
fn in_transit(handoffs: &Query<&HandoffOut>) -> Vec<Identity> {
    let mut owners: Vec<Identity> = handoffs.iter().map(|handoff| handoff.owner).collect();
    owners.sort_unstable();
    owners
}

fn config_of(config: &Query<&Config>) -> Config {
    config.iter().next().cloned().unwrap_or_default()
}

/// Clamps `position` into `min..=max`, turning `velocity` back on every axis it left by.
fn keep_inside(position: Vec2, velocity: Vec2, (min, max): (Vec2, Vec2)) -> (Vec2, Vec2) {
    let (mut position, mut velocity) = (position, velocity);
    for axis in 0..2 {
        if position[axis] < min[axis] || position[axis] > max[axis] {
            position[axis] = position[axis].clamp(min[axis], max[axis]);
            velocity[axis] = -velocity[axis];
        }
    }
    (position, velocity)
}

/// Integrates avatar velocities, never faster than `run_speed`, stopping `move_to` walks at
/// their destination.
pub fn move_avatars(
    info: Res<TickInfo>,
    settings: Res<WorldSettings>,
    config: Query<&Config>,
    handoffs: Query<&HandoffOut>,
    mut avatars: Query<&mut Avatar>,
) {
    let dt = info.dt.as_secs_f32();
    let limit = config_of(&config).run_speed;
    let world = Vec2::splat(settings.world_size / 2.0);
    let leaving = in_transit(&handoffs);
    for mut avatar in &mut avatars {
        if avatar.velocity == Vec2::ZERO || avatar.hp <= 0 {
            continue;
        }
        if !leaving.is_empty() && leaving.binary_search(&avatar.owner).is_ok() {
            continue;
        }
        let velocity = avatar.velocity.clamp_length_max(limit);
        let step = velocity * dt;
        if avatar.seeking && avatar.position.distance(avatar.destination) <= step.length() {
            avatar.position = avatar.destination;
            avatar.velocity = Vec2::ZERO;
            avatar.seeking = false;
            continue;
        }
        let (position, _) = keep_inside(avatar.position + step, velocity, (-world, world));
        avatar.position = position;
        if velocity != avatar.velocity {
            avatar.velocity = velocity;
        }
    }
}

/// A small integer hash (splitmix64) so NPC wandering is random-looking but a pure function
/// of (NPC, tick).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// NPC behaviour: wolves chase the nearest awake player within their aggro radius and bite
/// it, deer flee from the nearest one within theirs, the rest wander and turn now and then.
#[allow(clippy::too_many_arguments)]
pub fn npc_behaviour(
    info: Res<TickInfo>,
    settings: Res<WorldSettings>,
    config: Query<&Config>,
    avatar_store: Res<TableStore<Avatar>>,
    mut avatars: Query<&mut Avatar>,
    mut npcs: Query<&mut Npc>,
    handoffs: Query<&HandoffOut>,
) {
    let dt = info.dt.as_secs_f32();
    let now = info.timestamp;
    let leaving = in_transit(&handoffs);
    let config = config_of(&config);
    // NPCs stay in this zone's region: only characters cross zones.
    let home = settings.home_bounds();
    let index = avatar_store.indexes().position();
    for mut npc in &mut npcs {
        let radius = match npc.kind {
            NpcKind::Wolf => config.wolf_aggro_radius,
            NpcKind::Deer => config.deer_flee_radius,
        };
        let mut nearest: Option<(f32, u64, Entity, Vec2)> = None;
        if !avatar_store.is_empty() {
            index.for_each_in_radius(npc.position, radius, |entity, position| {
                let Ok(avatar) = avatars.get(entity) else {
                    return;
                };
                if !avatar.online || avatar.hp <= 0 {
                    return;
                }
                if !leaving.is_empty() && leaving.binary_search(&avatar.owner).is_ok() {
                    return;
                }
                let distance = position.distance(npc.position);
                let closer = nearest.is_none_or(|(d, id, _, _)| (distance, avatar.id) < (d, id));
                if closer {
                    nearest = Some((distance, avatar.id, entity, position));
                }
            });
        }
        let mut velocity = npc.velocity;
        match (npc.kind, nearest) {
            (NpcKind::Wolf, Some((distance, _, entity, target))) => {
                velocity = (target - npc.position).normalize_or_zero() * WOLF_SPEED;
                if distance <= WOLF_BITE_RANGE {
                    velocity = Vec2::ZERO;
                    if now >= npc.attack_ready_at {
                        if let Ok(mut avatar) = avatars.get_mut(entity) {
                            avatar.hp -= config.wolf_damage;
                        }
                        npc.attack_ready_at =
                            now + std::time::Duration::from_millis(WOLF_BITE_COOLDOWN_MS);
                    }
                }
            }
            (NpcKind::Deer, Some((_, _, _, threat))) => {
                velocity = (npc.position - threat).normalize_or(Vec2::X) * DEER_FLEE_SPEED;
            }
            (_, None) => {
                // Calm: slow down to a wander and turn about every ten seconds.
                let roll = mix(npc.id ^ (u64::from(info.tick.get()) << 20));
                if velocity.length_squared() > 4.0 || roll.is_multiple_of(200) {
                    let angle = (roll >> 8) as f32 / (1u64 << 56) as f32 * std::f32::consts::TAU;
                    velocity = Vec2::from_angle(angle) * 1.5;
                }
            }
        }
        let (position, velocity) = keep_inside(npc.position + velocity * dt, velocity, home);
        npc.position = position;
        if velocity != npc.velocity {
            npc.velocity = velocity;
        }
    }
}

/// Knocked-out avatars wake up in the nearest town (the lowest id among equals), healed.
pub fn revive_avatars(
    info: Res<TickInfo>,
    towns: Query<&Town>,
    handoffs: Query<&HandoffOut>,
    mut avatars: Query<&mut Avatar>,
) {
    let leaving = in_transit(&handoffs);
    for mut avatar in &mut avatars {
        if avatar.hp > 0 {
            continue;
        }
        if !leaving.is_empty() && leaving.binary_search(&avatar.owner).is_ok() {
            continue;
        }
        let town = towns
            .iter()
            .min_by(|a, b| {
                let (da, db) = (
                    a.position.distance_squared(avatar.position),
                    b.position.distance_squared(avatar.position),
                );
                da.total_cmp(&db).then(a.id.cmp(&b.id))
            })
            .map_or(TOWN, |town| town.position);
        let roll = mix(avatar.id ^ (u64::from(info.tick.get()) << 24));
        let angle = (roll >> 8) as f32 / (1u64 << 56) as f32 * std::f32::consts::TAU;
        avatar.position = town + Vec2::from_angle(angle) * TOWN_RADIUS * 0.5;
        avatar.velocity = Vec2::ZERO;
        avatar.seeking = false;
        avatar.hp = avatar.max_hp;
    }
}

/// Points each online player's subscription focus (`:focus`) at its avatar.
pub fn follow_focus(
    players: Query<&Player>,
    avatar_store: Res<TableStore<Avatar>>,
    avatars: Query<Ref<Avatar>>,
    mut focus: ResMut<FocusUpdates>,
) {
    for player in &players {
        if player.connection == 0 {
            continue;
        }
        let Some(avatar) = avatar_store
            .entity(&player.avatar_id)
            .and_then(|e| avatars.get(e).ok())
        else {
            continue;
        };
        // Only avatars that moved this tick: focus updates cost the publisher a view refresh.
        if avatar.is_changed() {
            focus.set(ConnectionId(player.connection), avatar.position);
        }
    }
}
