//! The sample MMO module: players, wandering NPCs kept at a target population by a schedule
//! table, and chat as an event table. It is the reference game for Orrery's tests, load tests
//! and benchmarks.
//!
//! It depends only on `orrery-engine`'s module API; the binary runs it on `orrery-server`.
//! A connection's subscription focus follows its player, so a client can subscribe to
//! `SELECT * FROM npc WHERE within(position, :focus, 100)`.

use std::time::Duration;

use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;

/// Half the edge of the square world, in metres.
pub const WORLD_HALF_EXTENT: f32 = 2_000.0;

/// A player character, visible only to its owner.
#[table(name = player, owner = identity)]
#[derive(Clone, Debug, PartialEq)]
pub struct Player {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// The owning identity.
    #[unique]
    pub identity: Identity,
    /// Display name.
    pub name: String,
    /// Position in metres.
    #[spatial(cell = 50.0)]
    pub position: Vec2,
    /// Whether a connection is currently driving this player.
    pub online: bool,
}

/// What kind of creature an NPC is.
#[derive(OrreryType, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NpcKind {
    /// Harmless.
    Deer,
    /// Dangerous.
    Wolf,
}

/// A wandering NPC.
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
    /// Hit points; zero means dead (reaped by a system).
    pub hp: i32,
}

/// Keeps the NPC population topped up.
#[table(name = spawner, scheduled(spawn_npcs))]
#[derive(Clone, Debug, PartialEq)]
pub struct Spawner {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub scheduled_id: u64,
    /// How often the spawner runs.
    pub scheduled_at: ScheduleAt,
    /// Target NPC count.
    pub target: u32,
    /// At most this many spawned per firing.
    pub per_firing: u32,
}

/// A chat line, published the tick it is said and never stored.
#[table(name = chat, public, event)]
#[derive(Clone, Debug, PartialEq)]
pub struct Chat {
    /// Row id.
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    /// Who said it.
    pub from: Identity,
    /// What was said.
    pub text: String,
}

/// World settings, inserted as a resource.
#[derive(Resource, Clone, Copy, Debug)]
pub struct WorldConfig {
    /// NPC population the spawner maintains.
    pub npc_target: u32,
    /// Fastest a player may move, metres per second.
    pub max_player_speed: f32,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            npc_target: 2_000,
            max_player_speed: 8.0,
        }
    }
}

fn random_point(ctx: &mut ReducerContext) -> Vec2 {
    use orrery_engine::rand::RngExt;
    Vec2::new(
        ctx.rng.random_range(-WORLD_HALF_EXTENT..WORLD_HALF_EXTENT),
        ctx.rng.random_range(-WORLD_HALF_EXTENT..WORLD_HALF_EXTENT),
    )
}

/// Centres the calling connection's spatial subscriptions (`within(position, :focus, r)`)
/// on `position`.
fn focus_on(ctx: &mut ReducerContext, position: Vec2) {
    if let Some(connection) = ctx.connection_id {
        ctx.set_focus(connection, position);
    }
}

/// Creates the NPC spawner for a new world.
#[reducer(init)]
pub fn init(ctx: &mut ReducerContext) -> Result<(), String> {
    ctx.db.spawner().insert(Spawner {
        scheduled_id: 0,
        scheduled_at: ScheduleAt::Interval(Duration::from_millis(500)),
        target: WorldConfig::default().npc_target,
        per_firing: 500,
    })?;
    Ok(())
}

/// Spawns NPCs until the population reaches the spawner's target.
#[reducer]
pub fn spawn_npcs(ctx: &mut ReducerContext, spawner: Spawner) -> Result<(), String> {
    use orrery_engine::rand::RngExt;
    let missing = spawner.target.saturating_sub(ctx.db.npc().count() as u32);
    for _ in 0..missing.min(spawner.per_firing) {
        let position = random_point(ctx);
        let kind = if ctx.rng.random_bool(0.2) {
            NpcKind::Wolf
        } else {
            NpcKind::Deer
        };
        let angle = ctx.rng.random_range(0.0..std::f32::consts::TAU);
        let speed = ctx.rng.random_range(0.5..3.0);
        ctx.db.npc().insert(Npc {
            id: 0,
            kind,
            position,
            velocity: Vec2::from_angle(angle) * speed,
            hp: 20,
        })?;
    }
    Ok(())
}

/// Brings a connecting player online, creating the character on first visit.
#[reducer(client_connected)]
pub fn client_connected(ctx: &mut ReducerContext) -> Result<(), String> {
    let identity = ctx.sender;
    match ctx.db.player().identity().find(&identity) {
        Some(player) => {
            let position = player.position;
            ctx.db.player().id().update(Player {
                online: true,
                ..player
            })?;
            focus_on(ctx, position);
        }
        None => {
            let position = random_point(ctx);
            let name = format!("player-{}", &identity.to_hex()[..8]);
            ctx.db.player().insert(Player {
                id: 0,
                identity,
                name,
                position,
                online: true,
            })?;
            focus_on(ctx, position);
        }
    }
    Ok(())
}

/// Marks the player offline; the character stays in the world.
#[reducer(client_disconnected)]
pub fn client_disconnected(ctx: &mut ReducerContext) -> Result<(), String> {
    let identity = ctx.sender;
    if let Some(player) = ctx.db.player().identity().find(&identity) {
        ctx.db.player().id().update(Player {
            online: false,
            ..player
        })?;
    }
    Ok(())
}

/// Moves the caller's player towards `target`, no faster than the world allows per tick.
#[reducer]
pub fn move_to(ctx: &mut ReducerContext, target: Vec2) -> Result<(), String> {
    if !target.is_finite() {
        return Err(format!("target must be finite, got {target}"));
    }
    let identity = ctx.sender;
    let player = ctx
        .db
        .player()
        .identity()
        .find(&identity)
        .ok_or("no player for this identity")?;
    let bound = Vec2::splat(WORLD_HALF_EXTENT);
    let target = target.clamp(-bound, bound);
    focus_on(ctx, target);
    Ok(ctx
        .db
        .player()
        .id()
        .update(Player {
            position: target,
            ..player
        })
        .map(|_| ())?)
}

/// Says something to everyone subscribed to chat.
#[reducer]
pub fn say(ctx: &mut ReducerContext, text: String) -> Result<(), String> {
    let text = text.trim();
    if text.is_empty() || text.len() > 256 {
        return Err(format!(
            "chat lines must be 1-256 bytes, got {}",
            text.len()
        ));
    }
    let from = ctx.sender;
    ctx.db.chat().insert(Chat {
        id: 0,
        from,
        text: text.to_owned(),
    })?;
    Ok(())
}

/// Moves NPCs along their velocity and turns them around at the world's edge.
pub fn wander(info: Res<TickInfo>, mut npcs: Query<&mut Npc>) {
    let dt = info.delta.as_secs_f32();
    for mut npc in &mut npcs {
        let mut next = npc.position + npc.velocity * dt;
        let mut velocity = npc.velocity;
        for axis in 0..2 {
            if next[axis].abs() > WORLD_HALF_EXTENT {
                velocity[axis] = -velocity[axis];
                next[axis] = next[axis].clamp(-WORLD_HALF_EXTENT, WORLD_HALF_EXTENT);
            }
        }
        npc.position = next;
        npc.velocity = velocity;
    }
}

/// Despawns dead NPCs; the spawner replaces them.
pub fn reap(mut commands: Commands, npcs: Query<(Entity, &Npc)>) {
    for (entity, npc) in &npcs {
        if npc.hp <= 0 {
            commands.entity(entity).despawn();
        }
    }
}

/// The sample MMO module.
pub fn module() -> Module {
    Module::builder("sample-mmo")
        .table::<Player>()
        .table::<Npc>()
        .table::<Spawner>()
        .table::<Chat>()
        .reducers(reducers![
            init,
            spawn_npcs,
            client_connected,
            client_disconnected,
            move_to,
            say,
        ])
        .resource(WorldConfig::default())
        .add_systems((wander, reap).chain())
        .build()
        .expect("the sample module is valid")
}
