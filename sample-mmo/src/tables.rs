//! The sample world's tables: what every player sees (`avatar`, `npc`, `item`, `town`,
//! `spawn_point`, `chat`), what only its owner sees (`player`, `inventory`), what nobody sees (`config`) and
//! the two schedule tables (`npc_respawn`, `world_event`).

use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;

/// A character as everyone sees it.
#[table(name = avatar, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Avatar {
    /// Row id, the same in every zone the character visits: a [`crate::zone::zoned_id`] of
    /// the zone it was created in.
    #[primary_key]
    pub id: u64,
    /// The owning identity.
    #[unique]
    pub owner: Identity,
    /// Display name, unique in the world.
    #[unique]
    pub name: String,
    /// Position in metres.
    #[spatial(cell = 50.0)]
    #[quantize(0.01)]
    pub position: Vec2,
    /// Velocity in metres per second, set by the owner's input and integrated by a system.
    pub velocity: Vec2,
    /// Where `move_to` is walking (meaningful while `seeking`).
    pub destination: Vec2,
    /// Whether the avatar walks to `destination` and stops there.
    pub seeking: bool,
    /// Hit points; at zero the avatar is knocked out and respawns in town.
    pub hp: i32,
    /// Hit points when healed fully.
    pub max_hp: i32,
    /// Experience level.
    pub level: u32,
    /// Whether a connection is driving the avatar.
    pub online: bool,
}

/// The owner's private side of a character.
#[table(name = player, owner = identity)]
#[derive(Clone, Debug, PartialEq)]
pub struct Player {
    /// The owning identity.
    #[primary_key]
    pub identity: Identity,
    /// The avatar's row id.
    pub avatar_id: u64,
    /// The connection driving the character (0: offline).
    pub connection: u64,
    /// Experience points.
    pub xp: u32,
    /// NPCs killed.
    pub kills: u32,
    /// The next attack is allowed from this time.
    pub attack_ready_at: Timestamp,
    /// Chat lines the player may say now (refilled at one per second, up to five).
    pub chat_allowance: f32,
    /// When `chat_allowance` was last refilled.
    pub chat_refilled_at: Timestamp,
}

/// What kind of creature an NPC is.
#[derive(OrreryType, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NpcKind {
    /// Flees from players.
    Deer,
    /// Chases and bites players.
    Wolf,
}

/// A creature.
#[table(name = npc, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Npc {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// Creature kind.
    #[index(btree)]
    pub kind: NpcKind,
    /// Position in metres.
    #[spatial(cell = 50.0)]
    #[quantize(0.01)]
    pub position: Vec2,
    /// Velocity in metres per second.
    pub velocity: Vec2,
    /// Hit points.
    pub hp: i32,
    /// Hit points at spawn.
    pub max_hp: i32,
    /// The spawn point that respawns it.
    pub spawn_point: u64,
    /// The next bite is allowed from this time (wolves).
    pub attack_ready_at: Timestamp,
}

/// What an item is.
#[derive(OrreryType, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    /// Heals when used.
    Potion,
    /// Dropped by wolves.
    Pelt,
    /// Dropped by deer.
    Antler,
}

/// An item lying on the ground, visible to everyone near it.
#[table(name = item, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// What it is.
    pub kind: ItemKind,
    /// Where it lies.
    #[spatial(cell = 50.0)]
    #[quantize(0.01)]
    pub position: Vec2,
}

/// An item carried by a player, visible only to its owner.
#[table(name = inventory, owner = owner)]
#[derive(Clone, Debug, PartialEq)]
pub struct InventoryItem {
    /// Row id (the item's id while it lay on the ground).
    #[primary_key]
    pub id: u64,
    /// Who carries it.
    #[index(btree)]
    pub owner: Identity,
    /// What it is.
    pub kind: ItemKind,
}

/// A chat line, published the tick it is said and never stored.
#[table(name = chat, public, event)]
#[derive(Clone, Debug, PartialEq)]
pub struct Chat {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// Who said it ([`Identity::ZERO`]: the world itself).
    pub from: Identity,
    /// The speaker's name.
    pub name: String,
    /// Heard everywhere (`true`) or only near `position`.
    pub global: bool,
    /// Where it was said: local chat is `within(position, :focus, r)`.
    #[spatial(cell = 50.0)]
    pub position: Vec2,
    /// What was said.
    pub text: String,
}

/// A town: new characters start in the one that has welcomed the fewest, knocked-out ones
/// wake up in the nearest. A large world has several (`WorldSettings::town_spacing`), so a
/// crowd of new players is spread over them instead of filling one square.
#[table(name = town, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Town {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// Its centre.
    pub position: Vec2,
    /// Characters that started here.
    pub arrivals: u64,
}

/// Where NPCs live and come back after dying.
#[table(name = spawn_point, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct SpawnPoint {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// The creature it spawns.
    pub kind: NpcKind,
    /// Its centre.
    pub position: Vec2,
    /// NPCs spawn up to this far from the centre.
    pub radius: f32,
}

/// A dead NPC coming back: fires once at its due time.
#[table(name = npc_respawn, scheduled(respawn_npc))]
#[derive(Clone, Debug, PartialEq)]
pub struct NpcRespawn {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub scheduled_id: u64,
    /// When.
    pub scheduled_at: ScheduleAt,
    /// Where.
    pub spawn_point: u64,
}

/// The periodic world event (a supply drop of potions, announced in global chat).
#[table(name = world_event, scheduled(supply_drop))]
#[derive(Clone, Debug, PartialEq)]
pub struct WorldEvent {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub scheduled_id: u64,
    /// How often.
    pub scheduled_at: ScheduleAt,
    /// Potions dropped each time.
    pub potions: u32,
}

/// Game rules an admin may tune while the world runs (`set_config`); one row, id 0.
#[table(name = config)]
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Always 0.
    #[primary_key]
    pub id: u32,
    /// Walking speed, m/s.
    pub walk_speed: f32,
    /// Running speed, m/s: the fastest any avatar moves.
    pub run_speed: f32,
    /// Damage of a player's attack.
    pub attack_damage: i32,
    /// Farthest a player can hit, m.
    pub attack_range: f32,
    /// Time between a player's attacks, ms.
    pub attack_cooldown_ms: u32,
    /// Farthest a player can pick an item up from, m.
    pub pickup_range: f32,
    /// Damage of a wolf bite.
    pub wolf_damage: i32,
    /// How far wolves notice players, m.
    pub wolf_aggro_radius: f32,
    /// How far deer notice players, m.
    pub deer_flee_radius: f32,
    /// Time from an NPC's death to its respawn, s.
    pub npc_respawn_seconds: u32,
    /// How far local chat carries, m (clients use it as their chat subscription radius).
    pub chat_radius: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 0,
            walk_speed: 4.0,
            run_speed: 8.0,
            attack_damage: 10,
            attack_range: 3.0,
            attack_cooldown_ms: 800,
            pickup_range: 3.0,
            wolf_damage: 4,
            wolf_aggro_radius: 20.0,
            deer_flee_radius: 15.0,
            npc_respawn_seconds: 30,
            chat_radius: 40.0,
        }
    }
}

/// A character on its way to another zone: written in the tick its avatar crossed the
/// border, with a copy of the character; deleted with the character's rows here once the
/// next zone holds it durably (`handoff_delivered`), or alone if the next zone refuses it
/// (`handoff_refused`). Only the zones' relay identity sees it (`docs/zones.md`).
#[table(name = handoff_out, owner = relay)]
#[derive(Clone, Debug, PartialEq)]
pub struct HandoffOut {
    /// The handoff's number in this zone (with the zone, its id across the world).
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// The zones' relay identity (`orrery_server::Secrets::zone_peer`).
    pub relay: Identity,
    /// The travelling character's identity; while the row exists the character is in
    /// transit here: frozen, its owner's calls refused.
    #[unique]
    pub owner: Identity,
    /// The zone that takes the character.
    pub target_zone: u32,
    /// When the avatar crossed the border.
    pub started_at: Timestamp,
    /// The character ([`crate::zone::HandoffCharacter`] in the row format).
    pub character: Vec<u8>,
}

/// A handoff this zone has applied: a delivery repeated after a crash or a lost reply finds
/// it here and is acknowledged without applying the character twice.
#[table(name = handoff_in, owner = relay)]
#[derive(Clone, Debug, PartialEq)]
pub struct HandoffIn {
    /// The handoff's id across the world ([`crate::zone::zoned_id`] of the source zone and
    /// its `handoff_out` id).
    #[primary_key]
    pub id: u64,
    /// The zones' relay identity.
    pub relay: Identity,
    /// Whose character arrived.
    pub character: Identity,
    /// When its avatar crossed the border in the source zone.
    pub started_at: Timestamp,
    /// When this zone applied it.
    pub arrived_at: Timestamp,
}

/// Looks for avatars outside this zone's region every tick (zoned worlds only).
#[table(name = border_watch, scheduled(hand_off_border_crossers))]
#[derive(Clone, Debug, PartialEq)]
pub struct BorderWatch {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub scheduled_id: u64,
    /// Every tick.
    pub scheduled_at: ScheduleAt,
}

/// Numbers this zone hands out for keys that cross zones ([`crate::zone::zoned_id`]), by
/// what they number.
#[table(name = sequence)]
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    /// What the numbers are for (`"avatar"`).
    #[primary_key]
    pub name: String,
    /// The next number.
    pub next: u64,
}

/// Where a character that left this zone went (written when the next zone holds it, deleted
/// when it comes back): a client that reaches this zone after its character left is sent on.
/// Its identity sees it.
#[table(name = forward, owner = identity)]
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// The character's identity.
    #[primary_key]
    pub identity: Identity,
    /// The zone it went to.
    pub zone: u32,
}

/// A connection of this zone to send to the zone holding its character (the relay gets a
/// connect token there and sends it through the connection, then deletes the row with
/// `redirect_sent`, unless a later request replaced it meanwhile). Only the zones' relay
/// identity sees it.
#[table(name = zone_redirect, owner = relay)]
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneRedirect {
    /// The character's identity.
    #[primary_key]
    pub identity: Identity,
    /// The zones' relay identity.
    pub relay: Identity,
    /// The zone holding the character.
    pub zone: u32,
    /// When the module asked (its tick's time): `redirect_sent` names it, so a request made
    /// while the relay was sending an earlier one stays for the next poll.
    pub requested_at: Timestamp,
}

/// An avatar of a neighbouring zone standing near this zone's border, as that zone last sent
/// it (`sync_border`, a few times a second): clients near the border see across it, so
/// nothing pops into view when either side crosses. Read-only here; gone when the neighbour
/// stops sending it (out of the border band, or the neighbour down for a second).
#[table(name = border_avatar, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct BorderAvatar {
    /// The avatar's id (the same in every zone).
    #[primary_key]
    pub id: u64,
    /// The zone holding the avatar.
    #[index(btree)]
    pub zone: u32,
    /// The neighbour's sync this version came with (its time, µs): older versions go.
    pub generation: u64,
    /// When this zone received it.
    pub synced_at: Timestamp,
    /// The owning identity.
    pub owner: Identity,
    /// Display name.
    pub name: String,
    /// Position in metres.
    #[spatial(cell = 50.0)]
    #[quantize(0.01)]
    pub position: Vec2,
    /// Velocity in metres per second (for the client to extrapolate between syncs).
    pub velocity: Vec2,
    /// Hit points.
    pub hp: i32,
    /// Hit points when healed fully.
    pub max_hp: i32,
    /// Experience level.
    pub level: u32,
    /// Whether a connection is driving the avatar.
    pub online: bool,
}

/// A connection of an identity that has no character in this zone (yet, or any more: the
/// character left while it was connected, and the relay has not moved it yet): if its
/// character arrives while it is connected, `accept_handoff` brings it online on this
/// connection. Its identity sees it.
#[table(name = waiting_connection, owner = identity)]
#[derive(Clone, Debug, PartialEq)]
pub struct WaitingConnection {
    /// The identity.
    #[primary_key]
    pub identity: Identity,
    /// Its connection.
    pub connection: u64,
}
