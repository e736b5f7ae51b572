//! Zones: the sample world split over several processes, each owning a rectangle of it.
//!
//! This module owns the module's half of a handoff: what a character is when it travels
//! ([`HandoffCharacter`]: its avatar, player row and inventory), starting a handoff when its
//! avatar crosses the border (`hand_off_border_crossers`, every tick: a `handoff_out` row with
//! a copy of the character, which stays here frozen), applying it in the next zone exactly
//! once (`accept_handoff`, deduplicated by `handoff_in`), and ending it here once the next
//! zone holds it durably (`handoff_delivered` deletes the character's rows) or refused it
//! (`handoff_refused` lets it go on here). Carrying `handoff_out` rows to the next zone is the
//! server's relay (`orrery_server::zone::relay`); the protocol is in `docs/zones.md`.
//!
//! A character is live in the zone that holds it without a `handoff_out` row: in exactly one
//! zone at any time, whatever crashes. Keys that cross zones carry their zone: avatar ids,
//! handoff ids and inventory item ids are [`zoned_id`]s.

use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;

use crate::WorldSettings;
use crate::tables::*;

/// A handoff's character at most, bytes (a character with a full inventory is a few KiB).
pub const MAX_HANDOFF_BYTES: usize = 64 * 1024;
/// Items a travelling character may carry at most; a larger inventory stays behind whole
/// (the avatar does not cross) rather than travel in part.
pub const MAX_HANDOFF_ITEMS: usize = 1_000;
/// Characters one zone hands over in one tick at most; the rest go in the next ticks.
pub const MAX_HANDOFFS_PER_TICK: usize = 256;
/// How far from a border a zone's avatars are mirrored in the zone across it, metres: the
/// widest radius the sample clients see avatars in (100 m).
pub const BORDER_BAND: f32 = 100.0;
/// Border avatars one `sync_border` call carries at most.
pub const MAX_BORDER_ROWS: usize = 1_000;
/// A border avatar not sent again for this long is dropped (its zone stopped sending).
pub const BORDER_STALE: std::time::Duration = std::time::Duration::from_secs(1);
/// How often `hand_off_border_crossers` looks (every tick at the default 20 Hz).
pub const BORDER_WATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

/// One zone's rectangle (`min` inclusive, `max` exclusive, like `orrery_server::zone`).
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneRegion {
    /// The zone owning it.
    pub zone: u16,
    /// Lower corner.
    pub min: Vec2,
    /// Upper corner.
    pub max: Vec2,
}

impl ZoneRegion {
    /// Whether `point` lies in the region.
    pub fn contains(&self, point: Vec2) -> bool {
        point.cmpge(self.min).all() && point.cmplt(self.max).all()
    }
}

/// What a zone process knows of the zoned world (`WorldSettings::zone`).
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneRules {
    /// This process's zone.
    pub zone: u16,
    /// Every zone's region, this one's included.
    pub regions: Vec<ZoneRegion>,
    /// The identity the zones' relays act as (the only caller of the handoff reducers).
    pub relay: Identity,
}

impl ZoneRules {
    /// The zone owning `point`: the one whose region holds it, or this one when none does.
    pub fn owner_of(&self, point: Vec2) -> u16 {
        self.regions
            .iter()
            .find(|region| region.contains(point))
            .map_or(self.zone, |region| region.zone)
    }

    /// This zone's region, if the map gives it one.
    pub fn own_region(&self) -> Option<&ZoneRegion> {
        self.regions.iter().find(|region| region.zone == self.zone)
    }
}

/// A key that crosses zones: the zone in the top 16 bits, the zone's own number below
/// (row ids stay far below 2^48). Zone 0's keys are its plain numbers, so an unzoned world's
/// ids are unchanged.
pub fn zoned_id(zone: u16, local: u64) -> u64 {
    (u64::from(zone) << 48) | (local & ((1 << 48) - 1))
}

/// A character travelling between zones.
#[derive(OrreryType, Clone, Debug, PartialEq)]
pub struct HandoffCharacter {
    /// Its avatar as it crossed (the next zone gives it a new row id).
    pub avatar: Avatar,
    /// Its private side.
    pub player: Player,
    /// What it carries.
    pub inventory: Vec<InventoryItem>,
}

fn rules(ctx: &ReducerContext) -> Result<ZoneRules, String> {
    ctx.setting::<WorldSettings>()
        .and_then(|settings| settings.zone.clone())
        .ok_or_else(|| "this world is not zoned".to_owned())
}

fn relay_only(ctx: &ReducerContext) -> Result<ZoneRules, String> {
    let rules = rules(ctx)?;
    if ctx.sender != rules.relay {
        return Err("only the zone relay hands characters over".into());
    }
    Ok(rules)
}

/// The next number of `name` in this zone's [`Sequence`] (from 1).
pub fn next_number(ctx: &mut ReducerContext, name: &str) -> Result<u64, String> {
    let name = name.to_owned();
    match ctx.db.sequence().name().find(&name) {
        Some(row) => {
            let number = row.next;
            ctx.db.sequence().name().update(Sequence {
                next: number + 1,
                ..row
            })?;
            Ok(number)
        }
        None => {
            ctx.db.sequence().insert(Sequence { name, next: 2 })?;
            Ok(1)
        }
    }
}

/// Starts a handoff for every avatar that stands in another zone's region: a `handoff_out`
/// row with a copy of the character. The character stays here, frozen (systems skip it, its
/// owner's calls are refused), until the next zone holds it. Avatars are taken in id order,
/// at most [`MAX_HANDOFFS_PER_TICK`] a tick.
#[reducer]
pub fn hand_off_border_crossers(
    ctx: &mut ReducerContext,
    _watch: BorderWatch,
) -> Result<(), String> {
    let Ok(rules) = rules(ctx) else {
        return Ok(());
    };
    let stale_before = ctx.timestamp - BORDER_STALE;
    let stale: Vec<u64> = ctx
        .db
        .border_avatar()
        .iter()
        .filter(|row| row.synced_at < stale_before)
        .map(|row| row.id)
        .collect();
    for id in stale {
        ctx.db.border_avatar().id().delete(&id);
    }
    let mut leaving: Vec<(Avatar, u16)> = ctx
        .db
        .avatar()
        .iter()
        .filter_map(|avatar| {
            let owner = rules.owner_of(avatar.position);
            (owner != rules.zone).then_some((avatar, owner))
        })
        .collect();
    leaving.sort_by_key(|(avatar, _)| avatar.id);
    let mut started = 0;
    for (avatar, target) in leaving {
        if started == MAX_HANDOFFS_PER_TICK {
            break;
        }
        let identity = avatar.owner;
        if ctx.db.handoff_out().owner().find(&identity).is_some() {
            continue;
        }
        let Some(player) = ctx.db.player().identity().find(&identity) else {
            tracing::warn!(avatar = avatar.id, "an avatar without a player row stays");
            continue;
        };
        let inventory: Vec<InventoryItem> = ctx.db.inventory().owner().filter(&identity).collect();
        if inventory.len() > MAX_HANDOFF_ITEMS {
            tracing::warn!(
                avatar = avatar.id,
                items = inventory.len(),
                "too much to carry across"
            );
            continue;
        }
        let character = HandoffCharacter {
            avatar,
            player,
            inventory,
        };
        ctx.db.handoff_out().insert(HandoffOut {
            id: 0,
            relay: rules.relay,
            owner: identity,
            target_zone: u32::from(target),
            started_at: ctx.timestamp,
            character: character.to_bytes(),
        })?;
        started += 1;
    }
    Ok(())
}

/// Applies a character handed over by `source_zone` (relay only). Idempotent: a handoff
/// applied before (`handoff_in`) succeeds without writing anything.
#[reducer]
pub fn accept_handoff(
    ctx: &mut ReducerContext,
    source_zone: u32,
    handoff: u64,
    started_at: Timestamp,
    character: Vec<u8>,
) -> Result<(), String> {
    let rules = relay_only(ctx)?;
    let source = u16::try_from(source_zone)
        .ok()
        .filter(|&zone| zone != rules.zone)
        .ok_or_else(|| format!("zone {source_zone} cannot hand over to zone {}", rules.zone))?;
    let id = zoned_id(source, handoff);
    if ctx.db.handoff_in().id().find(&id).is_some() {
        return Ok(());
    }
    if character.len() > MAX_HANDOFF_BYTES {
        return Err(format!(
            "a handoff of {} bytes is over the {MAX_HANDOFF_BYTES} allowed",
            character.len()
        ));
    }
    let HandoffCharacter {
        avatar,
        player,
        inventory,
    } = HandoffCharacter::from_bytes(&character).map_err(|e| format!("bad character: {e}"))?;
    let identity = player.identity;
    if avatar.owner != identity
        || player.avatar_id != avatar.id
        || inventory.iter().any(|item| item.owner != identity)
    {
        return Err("the character's rows belong to different identities".into());
    }
    if inventory.len() > MAX_HANDOFF_ITEMS {
        return Err(format!(
            "{} items is more than a character carries",
            inventory.len()
        ));
    }
    if ctx.db.player().identity().find(&identity).is_some() {
        return Err(format!(
            "{identity} already has a character in zone {}",
            rules.zone
        ));
    }
    // A connection that reached this zone before its character (it was sent here early)
    // plays it from now on.
    let waiting = ctx.db.waiting_connection().identity().find(&identity);
    ctx.db.waiting_connection().identity().delete(&identity);
    let connection = waiting.map_or(0, |w| w.connection);
    let avatar = ctx.db.avatar().insert(Avatar {
        online: connection != 0,
        ..avatar
    })?;
    ctx.db.player().insert(Player {
        connection,
        ..player
    })?;
    if connection != 0 {
        ctx.set_focus(ConnectionId(connection), avatar.position);
    }
    for item in inventory {
        ctx.db.inventory().insert(item)?;
    }
    ctx.db.forward().identity().delete(&identity);
    ctx.db.zone_redirect().identity().delete(&identity);
    ctx.db.border_avatar().id().delete(&avatar.id);
    ctx.db.handoff_in().insert(HandoffIn {
        id,
        relay: rules.relay,
        character: identity,
        started_at,
        arrived_at: ctx.timestamp,
    })?;
    Ok(())
}

/// Ends a handoff the next zone holds durably (relay only): the character's rows here go
/// with the `handoff_out` row. A repeat finds nothing to do.
#[reducer]
pub fn handoff_delivered(ctx: &mut ReducerContext, handoff: u64) -> Result<(), String> {
    let rules = relay_only(ctx)?;
    let Some(row) = ctx.db.handoff_out().id().find(&handoff) else {
        return Ok(());
    };
    let identity = row.owner;
    if let Some(player) = ctx.db.player().identity().find(&identity) {
        ctx.db.avatar().id().delete(&player.avatar_id);
        ctx.db.player().identity().delete(&identity);
        // A connection here may have come up after the relay moved the character's
        // connections (it then missed the move): send it on too. A repeat move reaches a
        // client through a connection it has left, which ignores it. Until the relay moves it,
        // it waits here: if the character comes back first, it plays it again.
        if player.connection != 0 {
            send_on(ctx, &rules, identity, row.target_zone)?;
            wait_here(ctx, identity, player.connection)?;
        }
    }
    let items: Vec<u64> = ctx
        .db
        .inventory()
        .owner()
        .filter(&identity)
        .map(|item| item.id)
        .collect();
    for item in items {
        ctx.db.inventory().id().delete(&item);
    }
    ctx.db.handoff_out().id().delete(&handoff);
    let forward = Forward {
        identity,
        zone: row.target_zone,
    };
    if ctx.db.forward().identity().find(&identity).is_some() {
        ctx.db.forward().identity().update(forward)?;
    } else {
        ctx.db.forward().insert(forward)?;
    }
    Ok(())
}

/// Sends a connection whose character is not here on to the zone it went to, if it left
/// from here (`client_connected` of a player without a character). Zone moves reach a client
/// through the connection it has when the character leaves; one that was still on its way
/// then (its character crossed twice quickly) lands here and is sent on.
pub fn send_on_if_gone(ctx: &mut ReducerContext) -> Result<(), String> {
    let Ok(rules) = rules(ctx) else {
        return Ok(());
    };
    let identity = ctx.sender;
    if let Some(connection) = ctx.connection_id {
        wait_here(ctx, identity, connection.0)?;
    }
    let Some(forward) = ctx.db.forward().identity().find(&identity) else {
        return Ok(());
    };
    send_on(ctx, &rules, identity, forward.zone)
}

/// Notes `connection` as `identity`'s connection here without a character
/// ([`WaitingConnection`], replacing any earlier one): `accept_handoff` binds it.
fn wait_here(ctx: &mut ReducerContext, identity: Identity, connection: u64) -> Result<(), String> {
    let waiting = WaitingConnection {
        identity,
        connection,
    };
    if ctx
        .db
        .waiting_connection()
        .identity()
        .find(&identity)
        .is_some()
    {
        ctx.db.waiting_connection().identity().update(waiting)?;
    } else {
        ctx.db.waiting_connection().insert(waiting)?;
    }
    Ok(())
}

/// Asks the relay to send `identity`'s connections here on to `zone` (a [`ZoneRedirect`],
/// replacing any earlier one).
fn send_on(
    ctx: &mut ReducerContext,
    rules: &ZoneRules,
    identity: Identity,
    zone: u32,
) -> Result<(), String> {
    let redirect = ZoneRedirect {
        identity,
        relay: rules.relay,
        zone,
        requested_at: ctx.timestamp,
    };
    if ctx.db.zone_redirect().identity().find(&identity).is_some() {
        ctx.db.zone_redirect().identity().update(redirect)?;
    } else {
        ctx.db.zone_redirect().insert(redirect)?;
    }
    Ok(())
}

/// The relay sent `identity`'s connections on as asked at `requested_at` ([`ZoneRedirect`]);
/// relay only. A request made since (a connection that came up while the relay was sending,
/// and so missed it) stays for the relay's next poll; a repeat finds nothing.
#[reducer]
pub fn redirect_sent(
    ctx: &mut ReducerContext,
    identity: Identity,
    requested_at: Timestamp,
) -> Result<(), String> {
    relay_only(ctx)?;
    if ctx
        .db
        .zone_redirect()
        .identity()
        .find(&identity)
        .is_some_and(|row| row.requested_at == requested_at)
    {
        ctx.db.zone_redirect().identity().delete(&identity);
    }
    Ok(())
}

/// An avatar as a neighbouring zone sends it (`sync_border`): its `avatar` row's columns (the
/// relay passes the rows on as it reads them).
#[derive(OrreryType, Clone, Debug, PartialEq)]
pub struct AvatarSighting {
    /// Row id.
    pub id: u64,
    /// The owning identity.
    pub owner: Identity,
    /// Display name.
    pub name: String,
    /// Position in metres.
    pub position: Vec2,
    /// Velocity in metres per second.
    pub velocity: Vec2,
    /// Where a `move_to` walk goes.
    pub destination: Vec2,
    /// Whether it walks to `destination`.
    pub seeking: bool,
    /// Hit points.
    pub hp: i32,
    /// Hit points when healed fully.
    pub max_hp: i32,
    /// Experience level.
    pub level: u32,
    /// Whether a connection is driving the avatar.
    pub online: bool,
}

/// A neighbouring zone's avatars near this zone's border (relay only): `avatars` is one part
/// of its sync `generation`; with `last`, the avatars of `source_zone` that the generation did
/// not name go. Avatars held here (live, or frozen on their way out) are not mirrored.
#[reducer]
pub fn sync_border(
    ctx: &mut ReducerContext,
    source_zone: u32,
    generation: u64,
    last: bool,
    avatars: Vec<AvatarSighting>,
) -> Result<(), String> {
    let rules = relay_only(ctx)?;
    if source_zone == u32::from(rules.zone) {
        return Err(format!("zone {source_zone} is this zone"));
    }
    if avatars.len() > MAX_BORDER_ROWS {
        return Err(format!(
            "{} border avatars in one call, more than {MAX_BORDER_ROWS}",
            avatars.len()
        ));
    }
    for avatar in avatars {
        if ctx.db.avatar().id().find(&avatar.id).is_some() {
            continue;
        }
        let row = BorderAvatar {
            id: avatar.id,
            zone: source_zone,
            generation,
            synced_at: ctx.timestamp,
            owner: avatar.owner,
            name: avatar.name,
            position: avatar.position,
            velocity: avatar.velocity,
            hp: avatar.hp,
            max_hp: avatar.max_hp,
            level: avatar.level,
            online: avatar.online,
        };
        match ctx.db.border_avatar().id().find(&row.id) {
            // An older sync's version, or another zone's sync of an avatar that moved on.
            Some(held) if held.generation > generation && held.zone == source_zone => {}
            Some(_) => {
                ctx.db.border_avatar().id().update(row)?;
            }
            None => {
                ctx.db.border_avatar().insert(row)?;
            }
        }
    }
    if last {
        let gone: Vec<u64> = ctx
            .db
            .border_avatar()
            .zone()
            .filter(&source_zone)
            .filter(|row| row.generation < generation)
            .map(|row| row.id)
            .collect();
        for id in gone {
            ctx.db.border_avatar().id().delete(&id);
        }
    }
    Ok(())
}

/// Cancels a handoff the next zone refused for good (relay only): the character stays here,
/// stopped just inside this zone's border. A repeat finds nothing to do.
#[reducer]
pub fn handoff_refused(
    ctx: &mut ReducerContext,
    handoff: u64,
    reason: String,
) -> Result<(), String> {
    let rules = relay_only(ctx)?;
    let Some(row) = ctx.db.handoff_out().id().find(&handoff) else {
        return Ok(());
    };
    tracing::warn!(handoff, zone = row.target_zone, %reason, "handoff refused; the character stays");
    ctx.db.handoff_out().id().delete(&handoff);
    let Some(player) = ctx.db.player().identity().find(&row.owner) else {
        return Ok(());
    };
    let Some(avatar) = ctx.db.avatar().id().find(&player.avatar_id) else {
        return Ok(());
    };
    let position = match rules.own_region() {
        // Half a metre inside, so the next border check does not send it again at once.
        Some(region) if (region.max - region.min).min_element() > 1.0 => avatar
            .position
            .clamp(region.min + Vec2::splat(0.5), region.max - Vec2::splat(0.5)),
        _ => avatar.position,
    };
    ctx.db.avatar().id().update(Avatar {
        position,
        velocity: Vec2::ZERO,
        seeking: false,
        ..avatar
    })?;
    Ok(())
}
