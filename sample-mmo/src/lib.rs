//! The sample MMO module: a small but complete persistent world, and the reference workload
//! for Orrery's load tests, profiler sessions and engine clients.
//!
//! - **Characters.** A client connects, then calls `enter_world(name)`: its public `avatar`
//!   (name, position, velocity, health, level) appears in the first town with room (a 4 km
//!   world has nine, 1 km apart: [`town_sites`]), its private `player` row
//!   (experience, cooldowns, chat allowance) is visible to it alone. Reconnecting resumes the
//!   character.
//! - **Movement is server-authoritative.** Clients send intent, `set_input(direction, run)`
//!   or `move_to(target, run)`; the `move_avatars` system moves avatars at the rules' speed
//!   limits. No reducer sets a position. Each player's subscription focus follows its avatar,
//!   so `SELECT * FROM npc WHERE within(position, :focus, 60)` shows what is around it.
//! - **NPCs.** Deer and wolves live around spawn points (10,000 NPCs on 4 km × 4 km by
//!   default). Wolves chase and bite players in range, deer flee, the rest wander
//!   (`npc_behaviour`). `attack(npc)` has a reach and a cooldown; a kill drops loot on the
//!   ground (`item`) and schedules the NPC's respawn (`npc_respawn`, a one-shot schedule).
//!   Knocked-out players wake up in the nearest town.
//! - **Items.** `pick_up(item)` moves an item within reach from the ground into the caller's
//!   `inventory`, which only its owner sees; `use_item` drinks a potion. A periodic
//!   `world_event` drops potions around the world and announces it in global chat.
//! - **Chat.** `say(text, global)`: `chat` is an event table with a position, so local chat
//!   is a `within` subscription and global chat is `WHERE global = true`. Lines are
//!   length-checked and rate-limited.
//! - **Admin.** The rules live in the private `config` table; `set_config(key, value)` is for
//!   the identities in [`WorldSettings::admins`] only.
//!
//! It depends only on `orrery-engine`'s module API; the binary runs it on `orrery-server`.

use std::time::Duration;

use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::prelude::*;

mod local;
pub mod reducers;
pub mod systems;
pub mod tables;
pub mod zone;

pub use local::{LocalServer, LocalServerError};
pub use tables::*;

/// What a world is made with: fixed for the life of a process, passed on the command line.
/// Reducers read it with `ctx.setting::<WorldSettings>()`, systems with `Res<WorldSettings>`.
/// `npc_count`, `world_size` and `town_spacing` shape a new world only (`init`); a recovered world keeps its
/// own NPCs.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct WorldSettings {
    /// NPCs a new world starts with.
    pub npc_count: u32,
    /// Edge of the square world, metres (centred on the origin).
    pub world_size: f32,
    /// Distance between towns, metres: a new world has a town at the origin and one at every
    /// point of a grid this wide that lies at least 500 m inside the edge (see
    /// [`town_sites`]); 0 keeps the one at the origin. The command line allows 0 or 500+.
    pub town_spacing: f32,
    /// New characters start in the first town (the origin's, then the others in id order)
    /// with fewer than this many online avatars within [`reducers::TOWN_CROWD_RADIUS`];
    /// when every town is that crowded, in the least crowded.
    pub town_capacity: u32,
    /// Time between supply drops.
    pub supply_drop_every: Duration,
    /// Identities that may call `set_config`.
    pub admins: Vec<Identity>,
    /// The zoned world this process is one zone of (`--zone-map`, `--zone`); `None`: the
    /// whole world is this process's.
    pub zone: Option<zone::ZoneRules>,
}

impl WorldSettings {
    /// The rectangle this process's NPCs, towns and spawn points keep to: the world, cut to
    /// this zone's region in a zoned world.
    pub fn home_bounds(&self) -> (orrery_engine::glam::Vec2, orrery_engine::glam::Vec2) {
        let half = orrery_engine::glam::Vec2::splat(self.world_size / 2.0);
        let (min, max) = (-half, half);
        match self.zone.as_ref().and_then(zone::ZoneRules::own_region) {
            Some(region) => {
                let (lo, hi) = (min.max(region.min), max.min(region.max));
                if lo.cmplt(hi).all() {
                    (lo, hi)
                } else {
                    (min, max)
                }
            }
            None => (min, max),
        }
    }
}

impl Default for WorldSettings {
    /// 10,000 NPCs on 4 km × 4 km, towns 1 km apart (nine) taking 100 newcomers' crowd
    /// each, a supply drop every minute, no admins.
    fn default() -> Self {
        WorldSettings {
            npc_count: 10_000,
            world_size: 4_000.0,
            town_spacing: 1_000.0,
            town_capacity: 100,
            supply_drop_every: Duration::from_secs(60),
            admins: Vec::new(),
            zone: None,
        }
    }
}

/// Towns along one edge of the grid at most (see [`town_sites`]).
pub const MAX_TOWNS_PER_SIDE: i32 = 9;

/// Where a new world's towns stand: the origin first, then every other point of a
/// `spacing`-wide grid through it at least 500 m inside the edge of a `world_size` square
/// world, in row order.
/// So worlds under 3 km (or `spacing` 0) have one town, a 4 km world with 1 km spacing nine;
/// at most [`MAX_TOWNS_PER_SIDE`]² (81): `enter_world` looks at every town.
pub fn town_sites(world_size: f32, spacing: f32) -> Vec<orrery_engine::glam::Vec2> {
    let reach = world_size / 2.0 - 500.0;
    let steps = if spacing.is_finite() && spacing > 0.0 && reach >= spacing {
        ((reach / spacing).floor() as i32).min(MAX_TOWNS_PER_SIDE / 2)
    } else {
        0
    };
    let grid = (-steps..=steps).flat_map(|y| (-steps..=steps).map(move |x| (x, y)));
    std::iter::once((0, 0))
        .chain(grid.filter(|&step| step != (0, 0)))
        .map(|(x, y)| orrery_engine::glam::Vec2::new(x as f32 * spacing, y as f32 * spacing))
        .collect()
}

/// The sample MMO module with default settings.
pub fn module() -> Module {
    module_with(WorldSettings::default())
}

/// The sample MMO module with `settings`.
pub fn module_with(settings: WorldSettings) -> Module {
    use crate::reducers::*;
    use crate::systems::*;
    Module::builder("sample-mmo")
        .table::<Avatar>()
        .table::<Player>()
        .table::<Npc>()
        .table::<Item>()
        .table::<InventoryItem>()
        .table::<Chat>()
        .table::<Town>()
        .table::<SpawnPoint>()
        .table::<NpcRespawn>()
        .table::<WorldEvent>()
        .table::<Config>()
        .table::<HandoffOut>()
        .table::<HandoffIn>()
        .table::<BorderWatch>()
        .table::<Sequence>()
        .table::<Forward>()
        .table::<ZoneRedirect>()
        .table::<BorderAvatar>()
        .table::<WaitingConnection>()
        .reducers(reducers![
            init,
            client_connected,
            client_disconnected,
            enter_world,
            set_input,
            move_to,
            attack,
            pick_up,
            use_item,
            say,
            set_config,
            give_item,
            respawn_npc,
            supply_drop,
            crate::zone::hand_off_border_crossers,
            crate::zone::accept_handoff,
            crate::zone::handoff_delivered,
            crate::zone::handoff_refused,
            crate::zone::redirect_sent,
            crate::zone::sync_border,
        ])
        .resource(settings)
        .add_systems((move_avatars, npc_behaviour, revive_avatars, follow_focus).chain())
        .build()
        .expect("the sample module is valid")
}
