//! The sample MMO module: a small but complete persistent world, and the reference workload
//! for Orrery's load tests, profiler sessions and engine clients.
//!
//! - **Characters.** A client connects, then calls `enter_world(name)`: its public `avatar`
//!   (name, position, velocity, health, level) appears in town, its private `player` row
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
//!   Knocked-out players wake up in town.
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

pub use local::{LocalServer, LocalServerError};
pub use tables::*;

/// What a world is made with: fixed for the life of a process, passed on the command line.
/// Reducers read it with `ctx.setting::<WorldSettings>()`, systems with `Res<WorldSettings>`.
/// `npc_count` and `world_size` shape a new world only (`init`); a recovered world keeps its
/// own NPCs.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct WorldSettings {
    /// NPCs a new world starts with.
    pub npc_count: u32,
    /// Edge of the square world, metres (centred on the origin).
    pub world_size: f32,
    /// Time between supply drops.
    pub supply_drop_every: Duration,
    /// Identities that may call `set_config`.
    pub admins: Vec<Identity>,
}

impl Default for WorldSettings {
    /// 10,000 NPCs on 4 km × 4 km, a supply drop every minute, no admins.
    fn default() -> Self {
        WorldSettings {
            npc_count: 10_000,
            world_size: 4_000.0,
            supply_drop_every: Duration::from_secs(60),
            admins: Vec::new(),
        }
    }
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
        .table::<SpawnPoint>()
        .table::<NpcRespawn>()
        .table::<WorldEvent>()
        .table::<Config>()
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
            respawn_npc,
            supply_drop,
        ])
        .resource(settings)
        .add_systems((move_avatars, npc_behaviour, revive_avatars, follow_focus).chain())
        .build()
        .expect("the sample module is valid")
}
