//! What clients (and the world's schedules) can do. Every reducer checks its input and the
//! caller's right to act and fails with a message a player can read; a failure rolls back
//! everything it wrote.

use std::time::Duration;

use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;

use crate::WorldSettings;
use crate::tables::*;

/// The first town, at the origin; every world has it (`crate::town_sites`).
pub const TOWN: Vec2 = Vec2::ZERO;
/// Radius around a town's centre avatars appear in.
pub const TOWN_RADIUS: f32 = 10.0;
/// Online avatars this close to a town are its crowd (`WorldSettings::town_capacity`).
pub const TOWN_CROWD_RADIUS: f32 = 100.0;
/// Wolves' spawn points keep at least this far from every town.
pub const WOLF_FREE_RADIUS: f32 = 150.0;
/// NPCs per spawn point in the default world.
pub const NPCS_PER_SPAWN_POINT: u32 = 25;
/// Longest chat line, in characters.
pub const MAX_CHAT_CHARS: usize = 200;
/// Chat lines a player may say in a burst; one more is allowed every second.
pub const CHAT_BURST: f32 = 5.0;
/// Items on the ground at most; supply drops stop above it.
pub const MAX_GROUND_ITEMS: u64 = 5_000;
/// Hit points of a new avatar.
pub const AVATAR_HP: i32 = 100;
/// Hit points a potion heals.
pub const POTION_HEAL: i32 = 40;

fn settings(ctx: &ReducerContext) -> WorldSettings {
    ctx.setting::<WorldSettings>().cloned().unwrap_or_default()
}

fn config(ctx: &mut ReducerContext) -> Config {
    ctx.db.config().id().find(&0).unwrap_or_default()
}

fn random_point_in(ctx: &mut ReducerContext, center: Vec2, radius: f32) -> Vec2 {
    let angle = ctx.rng.random_range(0.0..std::f32::consts::TAU);
    let distance = radius * ctx.rng.random_range(0.0f32..1.0).sqrt();
    center + Vec2::from_angle(angle) * distance
}

/// The caller's character, or the error a client sees before `enter_world`.
fn my_character(ctx: &mut ReducerContext) -> Result<(Player, Avatar), String> {
    let identity = ctx.sender;
    let player = ctx
        .db
        .player()
        .identity()
        .find(&identity)
        .ok_or("you have no character: call enter_world(name) first")?;
    let avatar = ctx
        .db
        .avatar()
        .id()
        .find(&player.avatar_id)
        .ok_or("your character has no avatar")?;
    if let Some(leaving) = ctx.db.handoff_out().owner().find(&identity) {
        return Err(format!(
            "your character is moving to zone {}",
            leaving.target_zone
        ));
    }
    Ok((player, avatar))
}

fn spawn_npc_at(ctx: &mut ReducerContext, point: &SpawnPoint) -> Result<(), String> {
    let (min, max) = settings(ctx).home_bounds();
    let position = random_point_in(ctx, point.position, point.radius).clamp(min, max);
    let angle = ctx.rng.random_range(0.0..std::f32::consts::TAU);
    let speed = ctx.rng.random_range(0.5..2.0);
    let max_hp = match point.kind {
        NpcKind::Deer => 20,
        NpcKind::Wolf => 40,
    };
    ctx.db.npc().insert(Npc {
        id: 0,
        kind: point.kind,
        position,
        velocity: Vec2::from_angle(angle) * speed,
        hp: max_hp,
        max_hp,
        spawn_point: point.id,
        attack_ready_at: Timestamp::UNIX_EPOCH,
    })?;
    Ok(())
}

/// Creates a new world: the rules, the spawn points with their NPCs (`WorldSettings`), and
/// the periodic supply drop.
#[reducer(init)]
pub fn init(ctx: &mut ReducerContext) -> Result<(), String> {
    let settings = settings(ctx);
    ctx.db.config().insert(Config::default())?;
    // A zone founds the towns and spawn points of its own region (the whole world unzoned).
    let (min, max) = settings.home_bounds();
    // In a zoned world a town keeps clear of the border, so that newcomers (who appear
    // within `TOWN_RADIUS` of it) start in this zone.
    let margin = if settings.zone.is_some() {
        Vec2::splat(TOWN_RADIUS + 1.0)
    } else {
        Vec2::ZERO
    };
    let inside = |point: Vec2| point.cmpge(min + margin).all() && point.cmplt(max - margin).all();
    let mut towns: Vec<Vec2> = crate::town_sites(settings.world_size, settings.town_spacing)
        .into_iter()
        .filter(|&site| inside(site))
        .collect();
    if towns.is_empty() {
        towns.push((min + max) / 2.0);
    }
    for &position in &towns {
        ctx.db.town().insert(Town {
            id: 0,
            position,
            arrivals: 0,
        })?;
    }
    let points = settings.npc_count.div_ceil(NPCS_PER_SPAWN_POINT);
    let mut left = settings.npc_count;
    for _ in 0..points {
        let kind = if ctx.rng.random_bool(0.25) {
            NpcKind::Wolf
        } else {
            NpcKind::Deer
        };
        let mut position = Vec2::new(
            ctx.rng.random_range(min.x..max.x),
            ctx.rng.random_range(min.y..max.y),
        );
        // Keep wolves out of towns, or nobody survives entering the world. Towns are at
        // least 500 m apart (`--town-spacing`), so pushing a den out of one cannot push it
        // into another.
        if kind == NpcKind::Wolf
            && let Some(&town) = towns
                .iter()
                .find(|town| position.distance(**town) < WOLF_FREE_RADIUS)
        {
            position = town + (position - town).normalize_or(Vec2::X) * WOLF_FREE_RADIUS;
        }
        let point = ctx.db.spawn_point().insert(SpawnPoint {
            id: 0,
            kind,
            position,
            radius: 30.0,
        })?;
        for _ in 0..left.min(NPCS_PER_SPAWN_POINT) {
            spawn_npc_at(ctx, &point)?;
        }
        left = left.saturating_sub(NPCS_PER_SPAWN_POINT);
    }
    ctx.db.world_event().insert(WorldEvent {
        scheduled_id: 0,
        scheduled_at: ScheduleAt::Interval(settings.supply_drop_every),
        potions: 20,
    })?;
    if settings.zone.is_some() {
        ctx.db.border_watch().insert(BorderWatch {
            scheduled_id: 0,
            scheduled_at: ScheduleAt::Interval(crate::zone::BORDER_WATCH_PERIOD),
        })?;
    }
    Ok(())
}

/// Brings a returning player's character online; a new player calls `enter_world`.
#[reducer(client_connected)]
pub fn client_connected(ctx: &mut ReducerContext) -> Result<(), String> {
    let Some(player) = ctx.db.player().identity().find(&ctx.sender) else {
        return crate::zone::send_on_if_gone(ctx);
    };
    let Some(connection) = ctx.connection_id else {
        return Ok(());
    };
    let Some(avatar) = ctx.db.avatar().id().find(&player.avatar_id) else {
        return Ok(());
    };
    // Also while the character is on its way to another zone: the handoff's end sends the
    // connection on (`handoff_delivered`), and a refused handoff leaves it playing here.
    ctx.db.player().identity().update(Player {
        connection: connection.0,
        ..player
    })?;
    let position = avatar.position;
    ctx.db.avatar().id().update(Avatar {
        online: true,
        ..avatar
    })?;
    ctx.set_focus(connection, position);
    Ok(())
}

/// Takes the character offline; it stays in the world where it stood.
#[reducer(client_disconnected)]
pub fn client_disconnected(ctx: &mut ReducerContext) -> Result<(), String> {
    let identity = ctx.sender;
    if let Some(waiting) = ctx.db.waiting_connection().identity().find(&identity)
        && ctx.connection_id.is_some_and(|c| c.0 == waiting.connection)
    {
        ctx.db.waiting_connection().identity().delete(&identity);
    }
    let Ok((player, avatar)) = my_character(ctx) else {
        return Ok(());
    };
    // Another connection of the same identity may have taken over.
    if ctx.connection_id.is_some_and(|c| c.0 != player.connection) {
        return Ok(());
    }
    ctx.db.player().identity().update(Player {
        connection: 0,
        ..player
    })?;
    ctx.db.avatar().id().update(Avatar {
        online: false,
        velocity: Vec2::ZERO,
        seeking: false,
        ..avatar
    })?;
    Ok(())
}

/// Checks a character name: 3–16 characters, letters, digits, `_` and `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if !(3..=16).contains(&chars) {
        return Err(format!("a name has 3-16 characters, {name:?} has {chars}"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "a name may hold letters, digits, '_' and '-', not {bad:?}"
        ));
    }
    Ok(())
}

/// Creates the caller's character called `name` in the first town (by id) whose crowd, the
/// online avatars within [`TOWN_CROWD_RADIUS`], is under `WorldSettings::town_capacity`, or
/// the least crowded when none is; for a caller who has one already under that name, does
/// nothing. So a handful of players meet in the first town, and a launch-day wave spills
/// over into the others instead of packing one square.
#[reducer]
pub fn enter_world(ctx: &mut ReducerContext, name: String) -> Result<(), String> {
    check_name(&name)?;
    if ctx.db.player().identity().find(&ctx.sender).is_some() {
        let (_, avatar) = my_character(ctx)?;
        return if avatar.name == name {
            Ok(())
        } else {
            Err(format!("you already play {:?}", avatar.name))
        };
    }
    if ctx.db.avatar().name().find(&name).is_some() {
        return Err(format!("the name {name:?} is taken"));
    }
    let identity = ctx.sender;
    let capacity = settings(ctx).town_capacity as usize;
    let mut towns: Vec<Town> = ctx.db.town().iter().collect();
    towns.sort_by_key(|town| town.id);
    let mut least_crowded: Option<(usize, Town)> = None;
    for town in towns {
        let mut crowd = 0;
        ctx.db
            .avatar()
            .position()
            .for_each_within(town.position, TOWN_CROWD_RADIUS, |avatar| {
                crowd += usize::from(avatar.online);
            });
        if crowd < capacity {
            least_crowded = Some((crowd, town));
            break;
        }
        if least_crowded
            .as_ref()
            .is_none_or(|(fewest, _)| crowd < *fewest)
        {
            least_crowded = Some((crowd, town));
        }
    }
    let (_, town) = least_crowded.ok_or("the world has no town")?;
    let position = random_point_in(ctx, town.position, TOWN_RADIUS);
    ctx.db.town().id().update(Town {
        arrivals: town.arrivals + 1,
        ..town
    })?;
    let connection = ctx.connection_id;
    ctx.db.waiting_connection().identity().delete(&identity);
    let zone = settings(ctx).zone.map_or(0, |rules| rules.zone);
    let number = crate::zone::next_number(ctx, "avatar")?;
    let avatar = ctx.db.avatar().insert(Avatar {
        id: crate::zone::zoned_id(zone, number),
        owner: identity,
        name,
        position,
        velocity: Vec2::ZERO,
        destination: position,
        seeking: false,
        hp: AVATAR_HP,
        max_hp: AVATAR_HP,
        level: 1,
        online: connection.is_some(),
    })?;
    ctx.db.player().insert(Player {
        identity,
        avatar_id: avatar.id,
        connection: connection.map_or(0, |c| c.0),
        xp: 0,
        kills: 0,
        attack_ready_at: Timestamp::UNIX_EPOCH,
        chat_allowance: CHAT_BURST,
        chat_refilled_at: ctx.timestamp,
    })?;
    if let Some(connection) = connection {
        ctx.set_focus(connection, position);
    }
    Ok(())
}

/// Steers the caller's avatar: `direction` (length up to 1; longer is normalized) at walking
/// or running speed. A zero direction stops. The position itself only ever changes by the
/// movement system, at the speed limit: there is no way to teleport.
#[reducer]
pub fn set_input(ctx: &mut ReducerContext, direction: Vec2, run: bool) -> Result<(), String> {
    if !direction.is_finite() {
        return Err(format!("direction must be finite, got {direction}"));
    }
    let config = config(ctx);
    let (_, avatar) = my_character(ctx)?;
    let direction = if direction.length_squared() > 1.0 {
        direction.normalize()
    } else {
        direction
    };
    let speed = if run {
        config.run_speed
    } else {
        config.walk_speed
    };
    ctx.db.avatar().id().update(Avatar {
        velocity: direction * speed,
        seeking: false,
        ..avatar
    })?;
    Ok(())
}

/// Walks (or runs) the caller's avatar to `target` and stops there; the movement system
/// moves it at the speed limit, so a far target takes its time.
#[reducer]
pub fn move_to(ctx: &mut ReducerContext, target: Vec2, run: bool) -> Result<(), String> {
    if !target.is_finite() {
        return Err(format!("target must be finite, got {target}"));
    }
    let half = settings(ctx).world_size / 2.0;
    let target = target.clamp(Vec2::splat(-half), Vec2::splat(half));
    let config = config(ctx);
    let (_, avatar) = my_character(ctx)?;
    let speed = if run {
        config.run_speed
    } else {
        config.walk_speed
    };
    let velocity = (target - avatar.position).normalize_or_zero() * speed;
    ctx.db.avatar().id().update(Avatar {
        velocity,
        destination: target,
        seeking: true,
        ..avatar
    })?;
    Ok(())
}

/// Hits NPC `target` if it is within reach and the caller's attack is ready. A kill drops
/// loot, gives experience and schedules the NPC's respawn.
#[reducer]
pub fn attack(ctx: &mut ReducerContext, target: u64) -> Result<(), String> {
    let config = config(ctx);
    let (player, avatar) = my_character(ctx)?;
    if avatar.hp <= 0 {
        return Err("you are knocked out".into());
    }
    if ctx.timestamp < player.attack_ready_at {
        let wait = player
            .attack_ready_at
            .saturating_duration_since(ctx.timestamp);
        return Err(format!(
            "attack not ready: {} ms left",
            wait.as_millis().max(1)
        ));
    }
    let npc = ctx
        .db
        .npc()
        .id()
        .find(&target)
        .ok_or_else(|| format!("no NPC {target}"))?;
    let distance = npc.position.distance(avatar.position);
    if distance > config.attack_range {
        return Err(format!(
            "NPC {target} is {distance:.1} m away; reach is {} m",
            config.attack_range
        ));
    }
    let ready_at = ctx.timestamp + Duration::from_millis(config.attack_cooldown_ms.into());
    let hp = npc.hp - config.attack_damage;
    let mut player = Player {
        attack_ready_at: ready_at,
        ..player
    };
    if hp > 0 {
        ctx.db.npc().id().update(Npc { hp, ..npc })?;
    } else {
        ctx.db.npc().id().delete(&target);
        let loot = match npc.kind {
            NpcKind::Wolf => ItemKind::Pelt,
            NpcKind::Deer => ItemKind::Antler,
        };
        ctx.db.item().insert(Item {
            id: 0,
            kind: loot,
            position: npc.position,
        })?;
        if ctx.rng.random_bool(0.3) {
            ctx.db.item().insert(Item {
                id: 0,
                kind: ItemKind::Potion,
                position: npc.position + Vec2::new(0.5, 0.0),
            })?;
        }
        let respawn_at = ctx.timestamp + Duration::from_secs(config.npc_respawn_seconds.into());
        ctx.db.npc_respawn().insert(NpcRespawn {
            scheduled_id: 0,
            scheduled_at: ScheduleAt::At(respawn_at),
            spawn_point: npc.spawn_point,
        })?;
        player.kills += 1;
        player.xp += match npc.kind {
            NpcKind::Wolf => 25,
            NpcKind::Deer => 10,
        };
        let level = 1 + player.xp / 100;
        if level != avatar.level {
            ctx.db.avatar().id().update(Avatar {
                level,
                max_hp: AVATAR_HP + 10 * (level as i32 - 1),
                ..avatar
            })?;
        }
    }
    ctx.db.player().identity().update(player)?;
    Ok(())
}

/// Picks item `item` up off the ground into the caller's inventory (only its owner sees it
/// there).
#[reducer]
pub fn pick_up(ctx: &mut ReducerContext, item: u64) -> Result<(), String> {
    let config = config(ctx);
    let (player, avatar) = my_character(ctx)?;
    let found = ctx
        .db
        .item()
        .id()
        .find(&item)
        .ok_or_else(|| format!("no item {item} on the ground"))?;
    let distance = found.position.distance(avatar.position);
    if distance > config.pickup_range {
        return Err(format!(
            "item {item} is {distance:.1} m away; reach is {} m",
            config.pickup_range
        ));
    }
    ctx.db.item().id().delete(&item);
    // An inventory item may travel to other zones with its owner: its id carries this zone.
    let zone = settings(ctx).zone.map_or(0, |rules| rules.zone);
    ctx.db.inventory().insert(InventoryItem {
        id: crate::zone::zoned_id(zone, found.id),
        owner: player.identity,
        kind: found.kind,
    })?;
    Ok(())
}

/// Uses an item from the caller's inventory (a potion heals).
#[reducer]
pub fn use_item(ctx: &mut ReducerContext, item: u64) -> Result<(), String> {
    let (_, avatar) = my_character(ctx)?;
    let carried = ctx
        .db
        .inventory()
        .id()
        .find(&item)
        .filter(|i| i.owner == ctx.sender)
        .ok_or_else(|| format!("you carry no item {item}"))?;
    match carried.kind {
        ItemKind::Potion => {
            if avatar.hp <= 0 {
                return Err("you are knocked out".into());
            }
            ctx.db.inventory().id().delete(&item);
            ctx.db.avatar().id().update(Avatar {
                hp: (avatar.hp + POTION_HEAL).min(avatar.max_hp),
                ..avatar
            })?;
            Ok(())
        }
        kind => Err(format!("a {kind:?} cannot be used")),
    }
}

/// Says `text` to players near the caller (`global = false`) or to everyone.
#[reducer]
pub fn say(ctx: &mut ReducerContext, text: String, global: bool) -> Result<(), String> {
    let text = text.trim();
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_CHAT_CHARS {
        return Err(format!(
            "a chat line has 1-{MAX_CHAT_CHARS} characters, got {chars}"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("a chat line may not hold control characters".into());
    }
    let (player, avatar) = my_character(ctx)?;
    let refill = ctx
        .timestamp
        .saturating_duration_since(player.chat_refilled_at)
        .as_secs_f32();
    let allowance = (player.chat_allowance + refill).min(CHAT_BURST);
    if allowance < 1.0 {
        return Err("you are chatting too fast: one line a second".into());
    }
    ctx.db.player().identity().update(Player {
        chat_allowance: allowance - 1.0,
        chat_refilled_at: ctx.timestamp,
        ..player
    })?;
    ctx.db.chat().insert(Chat {
        id: 0,
        from: player.identity,
        name: avatar.name,
        global,
        position: avatar.position,
        text: text.to_owned(),
    })?;
    Ok(())
}

/// Puts a new item into a player's inventory here (admins only: a game master's tool, and
/// how tests give characters something to carry across zones).
#[reducer]
pub fn give_item(ctx: &mut ReducerContext, to: Identity, kind: ItemKind) -> Result<(), String> {
    if !settings(ctx).admins.contains(&ctx.sender) {
        return Err("give_item is for admins only".into());
    }
    if ctx.db.player().identity().find(&to).is_none() {
        return Err(format!("{to} has no character here"));
    }
    if ctx.db.inventory().owner().filter(&to).count() >= crate::zone::MAX_HANDOFF_ITEMS {
        return Err(format!(
            "{to} carries {} items already",
            crate::zone::MAX_HANDOFF_ITEMS
        ));
    }
    // The item takes a number from the ground items' sequence, as if dropped and picked up
    // at once, so its inventory id is unique like a picked-up item's.
    let dropped = ctx.db.item().insert(Item {
        id: 0,
        kind,
        position: Vec2::ZERO,
    })?;
    ctx.db.item().id().delete(&dropped.id);
    let zone = settings(ctx).zone.map_or(0, |rules| rules.zone);
    ctx.db.inventory().insert(InventoryItem {
        id: crate::zone::zoned_id(zone, dropped.id),
        owner: to,
        kind,
    })?;
    Ok(())
}

/// Changes a game rule (a [`Config`] field by name). Only identities listed as admins in the
/// module's [`WorldSettings`] may.
#[reducer]
pub fn set_config(ctx: &mut ReducerContext, key: String, value: f64) -> Result<(), String> {
    if !settings(ctx).admins.contains(&ctx.sender) {
        return Err("set_config is for admins only".into());
    }
    if !value.is_finite() {
        return Err(format!("{key} must be finite, got {value}"));
    }
    let mut config = config(ctx);
    let ranged = |low: f64, high: f64| -> Result<f64, String> {
        if (low..=high).contains(&value) {
            Ok(value)
        } else {
            Err(format!("{key} must be in {low}..={high}, got {value}"))
        }
    };
    match key.as_str() {
        "walk_speed" => config.walk_speed = ranged(0.0, 50.0)? as f32,
        "run_speed" => config.run_speed = ranged(0.0, 50.0)? as f32,
        "attack_damage" => config.attack_damage = ranged(0.0, 10_000.0)? as i32,
        "attack_range" => config.attack_range = ranged(0.0, 100.0)? as f32,
        "attack_cooldown_ms" => config.attack_cooldown_ms = ranged(0.0, 60_000.0)? as u32,
        "pickup_range" => config.pickup_range = ranged(0.0, 100.0)? as f32,
        "wolf_damage" => config.wolf_damage = ranged(0.0, 10_000.0)? as i32,
        "wolf_aggro_radius" => config.wolf_aggro_radius = ranged(0.0, 200.0)? as f32,
        "deer_flee_radius" => config.deer_flee_radius = ranged(0.0, 200.0)? as f32,
        "npc_respawn_seconds" => config.npc_respawn_seconds = ranged(1.0, 86_400.0)? as u32,
        "chat_radius" => config.chat_radius = ranged(1.0, 500.0)? as f32,
        _ => return Err(format!("no setting called {key:?}")),
    }
    if config.walk_speed > config.run_speed {
        return Err(format!(
            "walk_speed {} would exceed run_speed {}",
            config.walk_speed, config.run_speed
        ));
    }
    ctx.db.config().id().update(config)?;
    Ok(())
}

/// Brings a dead NPC back at its spawn point.
#[reducer]
pub fn respawn_npc(ctx: &mut ReducerContext, row: NpcRespawn) -> Result<(), String> {
    let point = ctx
        .db
        .spawn_point()
        .id()
        .find(&row.spawn_point)
        .ok_or_else(|| format!("spawn point {} is gone", row.spawn_point))?;
    spawn_npc_at(ctx, &point)
}

/// Drops potions at random places and says so in global chat.
#[reducer]
pub fn supply_drop(ctx: &mut ReducerContext, event: WorldEvent) -> Result<(), String> {
    if ctx.db.item().count() >= MAX_GROUND_ITEMS {
        return Ok(());
    }
    let (min, max) = settings(ctx).home_bounds();
    let towns: Vec<Vec2> = ctx.db.town().iter().map(|town| town.position).collect();
    let near = ctx.rng.random_range(0..event.potions.max(1));
    for i in 0..event.potions {
        // One potion lands near a town, so new players find some.
        let position = if i == near && !towns.is_empty() {
            let town = towns[ctx.rng.random_range(0..towns.len())];
            random_point_in(ctx, town, 50.0)
        } else {
            Vec2::new(
                ctx.rng.random_range(min.x..max.x),
                ctx.rng.random_range(min.y..max.y),
            )
        };
        ctx.db.item().insert(Item {
            id: 0,
            kind: ItemKind::Potion,
            position,
        })?;
    }
    ctx.db.chat().insert(Chat {
        id: 0,
        from: Identity::ZERO,
        name: "world".into(),
        global: true,
        position: TOWN,
        text: format!("A supply drop scattered {} potions", event.potions),
    })?;
    Ok(())
}
